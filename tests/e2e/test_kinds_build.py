"""End-to-end builds of the other kinds of answer: multi-label, ratings and pairwise preferences.

Each writes JSON Lines v2 events (with a malformed line, a retried duplicate, a superseded edit and a
DELETE, so every count is exercised), runs `run_build`, and checks the manifest's counts, the rows in
Parquet and Avro, and for bradley_terry the DPO export file and its manifest entry."""
import datetime as dt
import hashlib
import json
import os

import fastavro
import pyarrow.parquet as pq
import pytest
from event_builders import DATASET, NOW_MS, T0, event, lines

from labelbeam.pipelines.build import format_summary, run_build
from labelbeam.pipelines.errors import UserError
from labelbeam.pipelines.options import BuildConfig

BEAM_ARGS = ["--runner=FnApiRunner"]
NOW = dt.datetime.fromtimestamp(NOW_MS / 1000, tz=dt.timezone.utc)


def write_events(directory, events: list[dict]) -> str:
    """events.jsonl with every event, then a malformed line and a retried copy of the first event."""
    directory.mkdir(parents=True)
    payload = b"".join(line + b"\n" for line in lines(events)) + b"{not json\n" + lines(events[:1])[0] + b"\n"
    (directory / "events.jsonl").write_bytes(payload)
    return str(directory)


def lifecycle_events(first_id: str, item: str, annotator: str, **answer) -> list[dict]:
    """An earlier edit (superseded by the standing vote, made elsewhere) and a vote withdrawn by DELETE."""
    return [event(f"{first_id}-old", item=item, annotator=annotator, time_ms=T0 - 1000, **answer),
            event(f"{first_id}-gone", item=item, annotator="quitter", time_ms=T0, **answer),
            event(f"{first_id}-del", item=item, annotator="quitter", label=None, action="DELETE", time_ms=T0 + 1000)]


def build(tmp_path, events, method, beam_args=(), **overrides):
    inputs = write_events(tmp_path / "events", events)
    config = BuildConfig(inputs=(inputs,), output=str(tmp_path / "out"), dataset=DATASET, method=method, **overrides)
    return run_build(config, BEAM_ARGS + list(beam_args), now=NOW)


def check_counts(outcome, events: list[dict], votes: int, items: int):
    counts = outcome.manifest["counts"]
    assert counts["read"] == len(events) + 2
    assert counts == {"read": len(events) + 2, "valid": len(events), "invalid": 1, "duplicates": 1, "superseded": 2,
                      "deleted": 1, "votes": votes, "items": items, "unknown_fields_dropped": 0,
                      "after_as_of": 0}
    assert counts["read"] == counts["valid"] + counts["invalid"] + counts["duplicates"]
    assert counts["valid"] == counts["votes"] + counts["superseded"] + counts["deleted"]


def rows_of(outcome) -> dict:
    parquet = pq.read_table(os.path.join(outcome.version_dir, "labels/labels-00000-of-00001.parquet")).to_pylist()
    with open(os.path.join(outcome.version_dir, "labels_avro/labels-00000-of-00001.avro"), "rb") as stream:
        assert list(fastavro.reader(stream)) == parquet
    [entry] = [f for f in outcome.manifest["files"] if f["path"] == "labels/labels-00000-of-00001.parquet"]
    assert entry["rows"] == len(parquet) == outcome.manifest["counts"]["items"]
    return {row["item_id"]: row for row in parquet}


def annotators_of(outcome) -> list[dict]:
    return pq.read_table(os.path.join(outcome.version_dir, outcome.manifest["annotators"]["file"])).to_pylist()


def test_multilabel_build(tmp_path):
    def ml(event_id, item, annotator, labels):
        return event(event_id, item=item, annotator=annotator, label=None, labels=labels)
    events = [ml("m1", "i1", "a1", ["cat", "dog"]), ml("m2", "i1", "a2", ["cat"]), ml("m3", "i1", "a3", ["cat", "dog"]),
              ml("m4", "i2", "a1", ["dog"]), ml("m5", "i2", "a2", ["cat"]),
              event("m6", item="i3", annotator="a1", label=None, score=4.0)]      # a rating: takes no part
    events += lifecycle_events("m7", "i1", "a1", label=None, labels=["fox"])
    outcome = build(tmp_path, events, "multilabel")
    check_counts(outcome, events, votes=6, items=3)
    rows = rows_of(outcome)
    assert rows["i1"]["labels"] == ["cat", "dog"] and rows["i1"]["label"] is None and rows["i1"]["num_votes"] == 3
    assert rows["i1"]["confidence"] == pytest.approx(2 / 3) and rows["i1"]["status"] == "ok"
    assert rows["i2"]["labels"] == [] and rows["i2"]["status"] == "tie"
    assert rows["i3"]["num_votes"] == 0 and rows["i3"]["status"] == "needs_more_votes"
    assert outcome.manifest["consensus"] == {"votes_taking_part": "votes other than pure ratings; classes = labels "
                                                                  "plus label", "votes_used": 5, "votes_unused": 1}
    assert outcome.manifest["params"]["method"] == "multilabel"
    assert [f["name"] for f in outcome.manifest["schema"]["fields"]][-2:] == ["labels", "score"]
    decisions = sum(row["votes"] for row in annotators_of(outcome))
    assert decisions == 3 * 2 + 2 * 2             # votes x classes in question per item
    assert outcome.manifest["annotators"]["confusion_labels"] == ["cat=no", "cat=yes", "dog=no", "dog=yes"]


def test_rating_builds_mean_in_buckets_and_bias_corrected(tmp_path):
    def rating(event_id, item, annotator, score):
        return event(event_id, item=item, annotator=annotator, label=None, score=score)
    events = [rating("r1", "i1", "a1", 1.0), rating("r2", "i1", "a2", 2.0), rating("r3", "i1", "a3", 6.0),
              rating("r4", "i2", "a1", 4.0), rating("r5", "i2", "a2", 5.0), rating("r6", "i3", "a2", 7.0),
              event("r7", item="i4", annotator="a1", label="cat")]                # single label: takes no part
    events += lifecycle_events("r8", "i2", "a2", label=None, score=9.0)
    mean = build(tmp_path / "mean", events, "mean", beam_args=["--num_buckets=3"])
    check_counts(mean, events, votes=7, items=4)
    rows = rows_of(mean)
    assert [rows[i]["score"] for i in ("i1", "i2", "i3", "i4")] == [3.0, 4.5, 7.0, None]
    # The pooled noise scale sqrt(14.5 / 3) ~ 2.2 comes from all buckets: 6 is out, 1 and 2 are in.
    assert rows["i1"]["confidence"] == pytest.approx(2 / 3) and rows["i2"]["confidence"] == 1.0
    assert rows["i4"]["status"] == "needs_more_votes" and rows["i4"]["label"] is None
    assert mean.manifest["consensus"]["votes_used"] == 6 and mean.manifest["consensus"]["votes_unused"] == 1
    annotators = annotators_of(mean)
    assert sum(row["votes"] for row in annotators) == 6
    assert all(row["bias"] is None and row["noise_scale"] is None for row in annotators)

    corrected = build(tmp_path / "bias", events, "bias_corrected")
    check_counts(corrected, events, votes=7, items=4)
    assert corrected.manifest["params"]["bias_prior"] == 2.0
    annotators = annotators_of(corrected)
    voting = [row for row in annotators if row["votes"]]
    assert len(voting) == 3 and all(row["bias"] is not None and row["noise_scale"] > 0 for row in voting)
    # "quitter" withdrew their only vote: no vote, no bias, but the work is credited.
    [quitter] = [row for row in annotators if not row["votes"]]
    assert quitter["events"] == 2 and quitter["bias"] is None and len(annotators) == 4
    assert all(row["item_id"] == "i4" or row["score"] is not None for row in rows_of(corrected).values())


def test_bradley_terry_build_writes_the_dpo_export(tmp_path):
    def pref(event_id, item, annotator, chosen, rejected=None, **texts):
        metadata = dict(texts, **({"rejected": rejected} if rejected is not None else {}))
        return event(event_id, item=item, annotator=annotator, label=chosen, metadata=metadata)
    events = [pref("p1", "q1", "a1", "r1", "r2", prompt="Say hi", chosen_text="Hi!", rejected_text="Go away"),
              pref("p2", "q1", "a2", "r1", "r2"), pref("p3", "q1", "a3", "r2", "r1"),
              pref("p4", "q1", "a4", "r1"),                                  # no rejected: unusable
              pref("p5", "q2", "a1", "x", "y", prompt="Pick one ✓"), pref("p6", "q2", "a2", "x", "y"),
              pref("p7", "q3", "a1", "z", "z")]                              # rejected == label: unusable
    events += lifecycle_events("p8", "q2", "a2", label="y", metadata={"rejected": "x"})
    outcome = build(tmp_path, events, "bradley_terry")
    check_counts(outcome, events, votes=7, items=3)
    rows = rows_of(outcome)
    assert (rows["q1"]["label"], rows["q1"]["num_votes"], rows["q1"]["status"]) == ("r1", 3, "ok")
    assert (rows["q2"]["label"], rows["q2"]["num_votes"], rows["q2"]["agreement"]) == ("x", 2, 1.0)
    assert (rows["q3"]["label"], rows["q3"]["num_votes"], rows["q3"]["status"]) == (None, 0, "needs_more_votes")
    assert outcome.manifest["consensus"]["votes_used"] == 5 and outcome.manifest["consensus"]["votes_unused"] == 2
    summary = format_summary(BuildConfig(inputs=(), output="", dataset=DATASET), outcome)
    assert "consensus used 5 of 7 votes (2 not used; the method takes usable comparisons" in summary

    [entry] = [f for f in outcome.manifest["files"] if f["path"] == "preferences/preferences-00000-of-00001.jsonl"]
    with open(os.path.join(outcome.version_dir, entry["path"]), "rb") as stream:
        data = stream.read()
    assert entry["bytes"] == len(data) and entry["sha256"] == hashlib.sha256(data).hexdigest() and entry["rows"] == 2
    assert outcome.manifest["preferences"]["rows"] == 2
    records = [json.loads(line) for line in data.decode("utf-8").splitlines()]
    assert records == [
        {"item_id": "q1", "prompt": "Say hi", "chosen": "Hi!", "rejected": "Go away",
         "confidence": rows["q1"]["confidence"]},
        {"item_id": "q2", "prompt": "Pick one ✓", "chosen": "x", "rejected": "y",
         "confidence": rows["q2"]["confidence"]}]
    assert "✓".encode() in data and data.endswith(b"\n")
    # Same inputs, params and code: the export's bytes are the same again.
    again = build(tmp_path / "again", events, "bradley_terry")
    [again_entry] = [f for f in again.manifest["files"] if f["path"] == entry["path"]]
    assert again_entry["sha256"] == entry["sha256"]


def test_new_methods_refuse_gold(tmp_path):
    gold = tmp_path / "gold.csv"
    gold.write_text("item_id,label\ni1,cat\n")
    with pytest.raises(UserError, match="--gold only applies to single-label methods"):
        build(tmp_path, [event("e1")], "multilabel", gold_path=str(gold))
