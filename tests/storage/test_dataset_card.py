"""The dataset card: a YAML header that loaders read, the facts of the manifest, no clock reading."""
import yaml

from labelbeam.transforms.storage.dataset_card import dataset_card

MANIFEST = {
    "dataset": "pets", "version": 3, "created_at": "2026-11-30T12:00:00+00:00", "code_version": "0.1.0+abc",
    "counts": {"read": 10, "valid": 8, "invalid": 1, "duplicates": 1, "superseded": 1, "deleted": 1, "votes": 6,
               "items": 3},
    "params": {"method": "ds", "min_votes": 1},
    "inputs": [{"path": "a.jsonl", "bytes": 100}, {"path": "b.avro", "bytes": 50}],
    "files": [{"path": "labels/labels-00000-of-00001.parquet"}, {"path": "annotators/annotators-00000-of-00001.parquet"},
              {"path": "labels_avro/labels-00000-of-00001.avro"}],
    "label_distribution": {"cat": 2, "dog": 1}, "status": {"ok": 2, "tie": 1},
    "agreement": {"mean": 0.75, "items": 2}, "annotators": {"rows": 4}, "dead_letters": {"rows": 1},
}


def header_of(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_header_names_one_config_per_parquet_table():
    header = header_of(dataset_card(MANIFEST))
    assert header["configs"] == [
        {"config_name": "default", "data_files": [{"split": "train", "path": "labels/*.parquet"}]},
        {"config_name": "annotators", "data_files": [{"split": "train", "path": "annotators/*.parquet"}]}]
    assert "labelbeam" in header["tags"]


def test_card_gives_counts_labels_method_agreement_and_credit():
    card = dataset_card(MANIFEST)
    assert "| read | 10 |" in card and "| items | 3 |" in card
    assert "| cat | 2 |" in card and "| dog | 1 |" in card
    assert "`ds`" in card and "0.7500 over 2 items" in card
    assert "4 annotators made the votes" in card
    assert "2 files, 150 bytes" in card


def test_card_has_no_clock_reading_so_rebuilds_write_the_same_bytes():
    card = dataset_card(MANIFEST)
    assert "2026-11-30T12:00" not in card
    assert dataset_card({**MANIFEST, "created_at": "2030-01-01T00:00:00+00:00"}) == card


def test_card_credits_the_hours_of_labeling_work_when_the_manifest_has_them():
    assert "hours labeling" not in dataset_card(MANIFEST)  # versions built before labeling time was recorded
    timed = {**MANIFEST, "labeling_time": {"hours": 12.345, "duration_ms": 44_442_000, "events": 8,
                                           "events_without_duration": 2}}
    card = dataset_card(timed)
    assert "They spent 12.3 hours labeling" in card
    assert "Krippendorff" not in card
    alpha = dataset_card({**MANIFEST, "agreement": {"mean": 0.75, "items": 2, "krippendorff_alpha": 0.41234,
                                                    "pairable_votes": 6}})
    assert "Krippendorff's alpha (nominal, chance-corrected): 0.4123 over 6 pairable votes" in alpha and "all 8 valid events" in card
    assert "2 events carried no duration" in card and "2.00 standing votes" in card
