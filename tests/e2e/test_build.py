"""End-to-end builds on generated samples with known truth: counts, idempotency, determinism, CLI."""
import collections
import csv
import hashlib
import json
import os
import pathlib
import random
import subprocess
import sys

import fastavro
import pandas as pd
import pyarrow.parquet as pq
import pytest

from labelbeam.pipelines.build import BuildConfig, accuracy_against, run_build
from labelbeam.pipelines.generate import write_sample
from labelbeam.transforms.storage import version_store

SAMPLE_EVENTS = 4_000
BEAM_ARGS = ["--runner=FnApiRunner"]


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    directory = tmp_path_factory.mktemp("sample")
    description = write_sample(str(directory), SAMPLE_EVENTS, seed=11)
    return directory, description


def config_for(sample_dir, description, output, **overrides) -> BuildConfig:
    fields = dict(inputs=(str(sample_dir / "events"),), output=str(output), dataset=description["dataset"],
                  labels=tuple(description["labels"]), truth_path=str(sample_dir / "truth.csv"))
    fields.update(overrides)
    return BuildConfig(**fields)


def sha256(path) -> str:
    return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def first_build(sample, tmp_path_factory):
    sample_dir, description = sample
    output = tmp_path_factory.mktemp("out")
    config = config_for(sample_dir, description, output)
    return config, run_build(config, BEAM_ARGS)


def test_build_counts_equal_the_generators_expectations(sample, first_build):
    _, description = sample
    _, outcome = first_build
    counts = outcome.manifest["counts"]
    expected = description["expected"]
    assert outcome.published and outcome.version == 1
    for key in ("read", "valid", "invalid", "duplicates", "superseded", "deleted", "votes", "items"):
        assert counts[key] == expected[key], key
    assert counts["read"] == counts["valid"] + counts["invalid"] + counts["duplicates"]
    assert counts["valid"] == counts["votes"] + counts["superseded"] + counts["deleted"]


def test_dead_letters_carry_each_reason_the_generator_injected(sample, first_build):
    _, description = sample
    _, outcome = first_build
    # Dead letters keep their raw bytes, so they are quarantined beside the version (ROOT/<dataset>/quarantine/N).
    [rejected] = outcome.manifest["dead_letters"]["quarantine"]
    dataset_dir = os.path.dirname(os.path.dirname(outcome.version_dir))
    with open(os.path.join(dataset_dir, rejected["path"]), "rb") as stream:
        letters = list(fastavro.reader(stream))
    assert dict(collections.Counter(letter["reason"] for letter in letters)) == \
        description["expected"]["invalid_by_reason"]
    conflict = next(letter for letter in letters if letter["reason"] == "EVENT_ID_CONFLICT")
    # The raw bytes re-read for a conflict are exactly the line at that offset of its source.
    with open(conflict["source"], "rb") as stream:
        stream.seek(conflict["offset"])
        assert stream.readline().rstrip(b"\n") == conflict["raw"]
    assert json.loads(conflict["raw"])["event_id"] == conflict["event_id"]


def test_consensus_beats_chance_by_far_against_known_truth(first_build):
    config, outcome = first_build
    accuracy, compared = accuracy_against(config.truth_path, outcome)
    assert compared == outcome.manifest["counts"]["items"]
    assert accuracy > 0.8  # 4 classes: chance is about 0.3


def test_parquet_and_avro_shards_hold_the_same_rows_and_load_with_pandas(first_build):
    _, outcome = first_build
    files = {f["path"]: f for f in outcome.manifest["files"]}
    parquet = pq.read_table(os.path.join(outcome.version_dir, "labels/labels-00000-of-00001.parquet"))
    frame = pd.read_parquet(os.path.join(outcome.version_dir, "labels/labels-00000-of-00001.parquet"))
    with open(os.path.join(outcome.version_dir, "labels_avro/labels-00000-of-00001.avro"), "rb") as stream:
        avro_rows = list(fastavro.reader(stream))
    assert parquet.to_pylist() == avro_rows
    # A single-label method publishes single.v2 rows (v1 plus its soft labels): no labels/score columns,
    # which would only hold [] and null.
    assert list(frame.columns) == ["item_id", "label", "confidence", "num_votes", "agreement", "status",
                                   "probabilities"]
    assert outcome.manifest["schema"]["doc"].startswith("The consensus label of one item")
    assert [field["name"] for field in outcome.manifest["schema"]["fields"]] == list(frame.columns)
    assert frame["item_id"].is_monotonic_increasing and frame["item_id"].is_unique
    assert ((frame["confidence"] > 0) & (frame["confidence"] <= 1)).all()
    assert set(frame["status"]) <= {"ok", "tie", "needs_more_votes"}
    for path, entry in files.items():
        full = os.path.join(outcome.version_dir, path)
        assert (os.path.getsize(full), sha256(full)) == (entry["bytes"], entry["sha256"])
    assert files["labels/labels-00000-of-00001.parquet"]["rows"] == len(frame) == outcome.manifest["counts"]["items"]


def test_manifest_records_params_inputs_code_and_schema(first_build):
    _, outcome = first_build
    manifest = outcome.manifest
    assert manifest["params"]["method"] == "mv"
    assert [entry["path"] for entry in manifest["inputs"]] == sorted(entry["path"] for entry in manifest["inputs"])
    assert {entry["format"] for entry in manifest["inputs"]} == {"json", "avro"}
    assert manifest["code_version"].startswith("0.1.0+")
    assert [f["name"] for f in manifest["schema"]["fields"]][:2] == ["item_id", "label"]
    assert version_store.read_latest(os.path.dirname(os.path.dirname(os.path.dirname(outcome.version_dir))),
                                     manifest["dataset"]) == 1


def test_unchanged_build_publishes_nothing_and_force_publishes_identical_bytes(sample, tmp_path):
    sample_dir, description = sample
    config = config_for(sample_dir, description, tmp_path)
    first = run_build(config, BEAM_ARGS)
    again = run_build(config, BEAM_ARGS)
    assert (again.published, again.version) == (False, 1)
    assert version_store.version_numbers(str(tmp_path), config.dataset) == [1]
    forced = run_build(BuildConfig(**{**config.__dict__, "force": True}), BEAM_ARGS)
    assert (forced.published, forced.version) == (True, 2)
    first_files = {f["path"]: f["sha256"] for f in first.manifest["files"]}
    forced_files = {f["path"]: f["sha256"] for f in forced.manifest["files"]}
    assert first_files == forced_files
    for path in first_files:
        assert pathlib.Path(first.version_dir, path).read_bytes() == pathlib.Path(forced.version_dir, path).read_bytes()


def test_changed_params_publish_a_new_version(sample, tmp_path):
    sample_dir, description = sample
    config = config_for(sample_dir, description, tmp_path)
    run_build(config, BEAM_ARGS)
    changed = run_build(BuildConfig(**{**config.__dict__, "min_votes": 3}), BEAM_ARGS)
    assert (changed.published, changed.version) == (True, 2)
    assert changed.manifest["status"].get("needs_more_votes", 0) > 0


def test_labels_are_identical_when_the_same_events_are_shuffled_and_split_differently(sample, first_build, tmp_path):
    sample_dir, description = sample
    _, outcome = first_build
    json_lines = []
    for name in sorted(os.listdir(sample_dir / "events")):
        if name.endswith(".jsonl"):
            json_lines += (sample_dir / "events" / name).read_bytes().splitlines(keepends=True)
    random.Random(3).shuffle(json_lines)
    resplit = tmp_path / "events"
    resplit.mkdir()
    for i in range(5):
        (resplit / f"part-{i}.jsonl").write_bytes(b"".join(json_lines[i::5]))
    (resplit / "events-v2.avro").write_bytes((sample_dir / "events" / "events-v2.avro").read_bytes())
    config = config_for(sample_dir, description, tmp_path / "out", inputs=(str(resplit),))
    again = run_build(config, BEAM_ARGS + ["--num_buckets=3", "--chunk_events=97"])
    assert again.manifest["counts"] == outcome.manifest["counts"]
    for name in ("labels/labels-00000-of-00001.parquet", "labels_avro/labels-00000-of-00001.avro"):
        assert sha256(os.path.join(again.version_dir, name)) == sha256(os.path.join(outcome.version_dir, name))


def test_without_a_label_set_labels_are_inferred_and_recorded(sample, tmp_path):
    sample_dir, description = sample
    outcome = run_build(config_for(sample_dir, description, tmp_path, labels=None), BEAM_ARGS)
    expected = description["expected"]
    assert outcome.manifest["labels_source"] == "inferred"
    # The generator's unknown-label events are valid votes now: fewer invalid, more valid.
    assert outcome.manifest["counts"]["invalid"] == expected["invalid"] - expected["invalid_by_reason"]["UNKNOWN_LABEL"]
    assert set(description["labels"]) < set(outcome.manifest["labels"])


def test_weighted_majority_vote_records_a_digest_of_its_weights_never_the_annotator_ids(sample, tmp_path):
    sample_dir, description = sample
    weights = tmp_path / "weights.csv"
    weights.write_text("annotator_id,weight\nannotator-00001,3.5\n")
    outcome = run_build(config_for(sample_dir, description, tmp_path / "out", method="wmv",
                                   weights_path=str(weights)), BEAM_ARGS)
    params = outcome.manifest["params"]
    assert params["method"] == "wmv"
    assert params["weights_sha256"] == hashlib.sha256(json.dumps({"annotator-00001": 3.5}).encode()).hexdigest()
    assert params["weights_count"] == 1
    manifest_text = (pathlib.Path(outcome.version_dir) / "manifest.json").read_text()
    assert "annotator-00001" not in manifest_text
    weights.write_text("annotator_id,weight\nannotator-00001,2.0\n")
    changed = run_build(config_for(sample_dir, description, tmp_path / "out", method="wmv",
                                   weights_path=str(weights)), BEAM_ARGS)
    assert changed.published and changed.version == outcome.version + 1


def test_rows_per_shard_splits_parquet_and_avro_at_the_same_rows(sample, tmp_path):
    sample_dir, description = sample
    outcome = run_build(config_for(sample_dir, description, tmp_path, rows_per_shard=200), BEAM_ARGS)
    shards = sorted(f["path"] for f in outcome.manifest["files"] if f["path"].startswith("labels/"))
    parquet = [p for p in shards if p.endswith(".parquet")]
    assert len(parquet) == -(-outcome.manifest["counts"]["items"] // 200)
    parquet_rows = sum(pq.read_table(os.path.join(outcome.version_dir, p)).num_rows for p in parquet)
    assert parquet_rows == outcome.manifest["counts"]["items"]


@pytest.mark.parametrize("method", ["ds", "one_coin", "glad", "mace"])
def test_annotator_model_build_is_more_accurate_than_majority_vote_on_the_sample(
        method, sample, first_build, tmp_path):
    sample_dir, description = sample
    config, majority = first_build
    outcome = run_build(config_for(sample_dir, description, tmp_path, method=method), BEAM_ARGS)
    assert outcome.manifest["params"]["method"] == method
    assert outcome.manifest["counts"] == majority.manifest["counts"]
    ds_accuracy, _ = accuracy_against(config.truth_path, outcome)
    mv_accuracy, _ = accuracy_against(config.truth_path, majority)
    assert ds_accuracy > mv_accuracy
    table = pq.read_table(os.path.join(outcome.version_dir, "labels/labels-00000-of-00001.parquet"))
    assert all(0 < c <= 1 for c in table.column("confidence").to_pylist())


def test_dawid_skene_keeps_gold_items_at_their_gold_label(sample, tmp_path):
    sample_dir, description = sample
    truth = list(csv.DictReader((sample_dir / "truth.csv").read_text().splitlines()))[:30]
    # Gold that contradicts the truth must still win: it is what the user says is right.
    labels = description["labels"]
    gold = {row["item_id"]: labels[(labels.index(row["label"]) + 1) % len(labels)] for row in truth}
    gold_path = tmp_path / "gold.csv"
    gold_path.write_text("item_id,label\n" + "".join(f"{item},{label}\n" for item, label in gold.items()))
    outcome = run_build(config_for(sample_dir, description, tmp_path / "out", method="ds", gold_path=str(gold_path)),
                        BEAM_ARGS)
    rows = {r["item_id"]: r for r in pq.read_table(
        os.path.join(outcome.version_dir, "labels/labels-00000-of-00001.parquet")).to_pylist()}
    assert set(gold) <= set(rows)  # every gold item has votes in the sample, so a row
    for item, label in gold.items():
        assert (rows[item]["label"], rows[item]["confidence"]) == (label, 1.0)
    assert outcome.manifest["params"]["gold_items"] == len(gold)


# The CLI, as a user runs it

def labelbeam(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "labelbeam.pipelines.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_cli_build_versions_and_show(sample, tmp_path):
    sample_dir, description = sample
    args = ["build", "--input", str(sample_dir / "events"), "--output", str(tmp_path), "--dataset", "sample",
            "--labels", ",".join(description["labels"]), "--runner=FnApiRunner"]
    first = labelbeam(*args)
    assert first.returncode == 0, first.stderr
    assert "published sample version 1" in first.stdout
    assert f"read {description['expected']['read']} = valid" in first.stdout
    second = labelbeam(*args)
    assert second.returncode == 0 and second.stdout.startswith("up to date")
    versions = labelbeam("versions", str(tmp_path), "--dataset", "sample")
    assert versions.returncode == 0 and "1*" in versions.stdout
    show = labelbeam("show", str(tmp_path), "--dataset", "sample", "--json")
    assert json.loads(show.stdout)["counts"]["read"] == description["expected"]["read"]


@pytest.mark.parametrize("args, message", [
    (["build", "--input", "/nonexistent/*.jsonl", "--output", "o", "--dataset", "d"], "no file matches"),
    (["build", "--input", "x.jsonl", "--output", "o"], "--dataset"),
    (["build", "--method", "nope"], "--method 'nope'"),
    (["build", "--method", "wmv"], "needs either --weights"),
    (["build", "--method", "wmv", "--skills-from", "seven"], "give a version number or 'latest'"),
    (["build", "--method", "mv", "--weights", "w.csv"], "only apply to --method wmv"),
    (["build", "--em", "beam"], "--em beam only applies"),
    (["build", "--min-votes", "0"], "--min-votes"),
    (["build", "--labels", " , "], "--labels"),
    (["build", "--gold", "/nonexistent/g.csv"], "cannot read --gold"),
    (["build", "--chunk_events=0"], "--chunk_events"),
    (["build", "--min_votes", "3"], "did you mean --min-votes"),
    (["build", "--as-off", "2026-01-01"], "unknown option --as-off; did you mean --as-of?"),
    (["build", "--as-of", "yesterday-ish"], "--as-of"),
    (["generate", "--output", "o", "--events", "0"], "--events"),
    (["build", "--method", "ds", "--gold", "/nonexistent/gold.csv"], "cannot read --gold"),
    (["show", "/nonexistent-root", "--dataset", "d"], "no published versions"),
])
def test_cli_user_errors_exit_2_with_one_line_and_no_traceback(args, message, tmp_path):
    result = labelbeam(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len([line for line in result.stderr.splitlines() if line.startswith("labelbeam: error")]) == 1


def test_module_entry_point_prints_help():
    result = subprocess.run([sys.executable, "-m", "labelbeam.pipelines.build", "--help"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "--input" in result.stdout


@pytest.mark.parametrize("where", ["just after the claim", "inside the claim, before its number is known"])
def test_ctrl_c_right_at_the_claim_leaves_no_claim_behind(sample, tmp_path, monkeypatch, where):
    """Ctrl-C as the build claims its version (the CLI tests send it the moment the claim appears): the
    claim is released, by number, or by its owner id when the number was not known yet."""
    from labelbeam.pipelines import build as build_module
    from labelbeam.transforms.storage import version_store

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    if where == "just after the claim":
        monkeypatch.setattr(build_module.registry, "load_schema_json", interrupted)
    else:
        claim = version_store.claim_next_version

        def claim_then_interrupt(*args, **kwargs):
            claim(*args, **kwargs)
            raise KeyboardInterrupt
        monkeypatch.setattr(build_module.version_store, "claim_next_version", claim_then_interrupt)
    sample_dir, description = sample
    output = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        run_build(config_for(sample_dir, description, output), BEAM_ARGS)
    assert version_store.version_numbers(str(output), description["dataset"], published_only=False) == []
    monkeypatch.undo()
    assert run_build(config_for(sample_dir, description, output), BEAM_ARGS).version == 1


def test_embedded_default_build_runs_with_no_arguments(tmp_path):
    first = labelbeam("build", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "published sample version 1" in first.stdout
    assert "accuracy vs known truth" in first.stdout
    truth = list(csv.DictReader((tmp_path / "labelbeam-sample" / "truth.csv").read_text().splitlines()))
    assert len(truth) > 0
    manifest = json.loads((tmp_path / "labelbeam-data" / "sample" / "versions" / "1" / "manifest.json").read_text())
    expected = json.loads((tmp_path / "labelbeam-sample" / "expected.json").read_text())["expected"]
    assert {k: manifest["counts"][k] for k in manifest["counts"]} == {k: expected[k] for k in manifest["counts"]}
    second = labelbeam("build", cwd=tmp_path)
    versions = tmp_path / "labelbeam-data" / "sample" / "versions"
    if second.stdout.startswith("published sample version 2"):
        # The two builds straddled UTC midnight: the default event-time cutoff is the build's UTC day, so
        # the new day's build has new params (documented). The next build, on the same day, is up to date.
        cutoffs = [json.loads((versions / v / "manifest.json").read_text())["params"]["event_time_cutoff"]
                   for v in ("1", "2")]
        assert cutoffs[0] < cutoffs[1], cutoffs
        second = labelbeam("build", cwd=tmp_path)
    assert second.returncode == 0 and second.stdout.startswith("up to date")


def test_every_stage_reports_beam_metrics_that_agree_with_the_manifest_counts(first_build):
    from labelbeam.pipelines.build import format_summary
    config, outcome = first_build
    counts, metrics = outcome.manifest["counts"], outcome.manifest["metrics"]
    counters, distributions = metrics["counters"], metrics["distributions"]
    assert {name.split(".")[0] for name in counters} == {"read", "validate", "deduplicate", "lifecycle", "consensus",
                                                          "publish"}
    assert counters["read.events"] == counters["validate.read"] == counts["read"]
    assert counters["validate.invalid"] + counters["deduplicate.id_conflicts"] == counts["invalid"]
    assert counters["deduplicate.duplicates"] == counts["duplicates"]
    assert counters["deduplicate.kept"] == counts["valid"]
    assert (counters["lifecycle.votes"], counters["lifecycle.superseded"], counters["lifecycle.deleted"]) == \
        (counts["votes"], counts["superseded"], counts["deleted"])
    assert counters["consensus.items"] == counters["publish.label_rows"] == counts["items"]
    assert counters["publish.dead_letters"] == counts["invalid"]
    # Distributions: one value per unit of work, summing to the stage's total.
    assert distributions["read.chunk_events"]["sum"] == counts["read"]
    assert distributions["deduplicate.bucket_events"]["sum"] == counters["validate.parsed"]
    assert distributions["deduplicate.bucket_events"]["count"] <= 16
    assert distributions["consensus.table_items"]["sum"] == counts["items"]
    for data in distributions.values():
        assert data["min"] <= data["mean"] <= data["max"]
    summary = format_summary(config, outcome)
    assert f"deduplicate: duplicates {counts['duplicates']}," in summary
    assert f"consensus: items {counts['items']}" in summary
    assert len(summary.splitlines()) < 25  # one screen


def test_json_logs_carry_the_outcome_as_structured_fields_and_no_annotator_id(sample, tmp_path):
    sample_dir, description = sample
    result = labelbeam("build", "--input", str(sample_dir / "events"), "--output", str(tmp_path / "out"),
                       "--dataset", description["dataset"], "--labels", ",".join(description["labels"]),
                       "--log-format", "json", "--log-level", "INFO", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in result.stderr.splitlines() if line.strip()]  # every line is JSON
    assert all({"time", "level", "logger", "message"} <= set(record) for record in records)
    [outcome] = [record for record in records if record.get("event") == "build"]
    manifest = json.loads((tmp_path / "out" / "sample" / "versions" / "1" / "manifest.json").read_text())
    assert outcome["published"] is True and outcome["version"] == 1
    assert outcome["counts"] == manifest["counts"]
    assert outcome["metrics"]["counters"]["lifecycle.votes"] == manifest["counts"]["votes"]
    annotators = {row["annotator_id"] for path in (sample_dir / "events").rglob("*.jsonl")
                  for row in map(_json_or_none, path.read_text().splitlines()) if isinstance(row, dict)
                  and isinstance(row.get("annotator_id"), str) and len(row["annotator_id"]) > 3}
    assert annotators
    assert not [name for name in annotators if name in result.stderr]
    failed = labelbeam("build", "--input", str(tmp_path / "missing"), "--output", str(tmp_path / "out"),
                       "--dataset", "sample", "--log-format", "json", cwd=tmp_path)
    assert failed.returncode == 2
    [error] = [json.loads(line) for line in failed.stderr.splitlines() if line.strip()]
    assert error["level"] == "ERROR" and error["event"] == "error" and "no file matches" in error["message"]


def _json_or_none(line: str):
    try:
        return json.loads(line)
    except ValueError:
        return None


def test_labeling_hours_equal_the_durations_of_every_valid_event(sample, first_build):
    """Summed independently from the sample's files: unique event ids that are neither broken lines nor
    id conflicts, superseded and deleted ones included."""
    sample_dir, _ = sample
    _, outcome = first_build
    durations: dict[str, int | None] = {}
    for path in sorted((sample_dir / "events").rglob("*")):
        if path.suffix == ".avro":
            with open(path, "rb") as stream:
                rows = list(fastavro.reader(stream))
        elif path.suffix == ".jsonl":
            rows = [row for row in map(_json_or_none, path.read_text().splitlines()) if isinstance(row, dict)]
        else:
            continue
        for row in rows:
            event_id = row.get("event_id")
            if isinstance(event_id, str) and event_id.startswith("evt-"):
                durations[event_id] = row.get("duration_ms")
    present = [d for d in durations.values() if d is not None and d >= 0]
    section = outcome.manifest["labeling_time"]
    assert section["events"] == len(durations) == outcome.manifest["counts"]["valid"]
    assert section["duration_ms"] == sum(present) > 0
    assert section["events_without_duration"] == len(durations) - len(present)
    annotators = pq.read_table(outcome.version_dir + "/annotators/annotators-00000-of-00001.parquet")
    assert sum(annotators.column("events").to_pylist()) == section["events"]
    assert sum(annotators.column("labeling_hours").to_pylist()) == pytest.approx(section["duration_ms"] / 3.6e6)


def test_the_manifest_reports_krippendorffs_alpha_and_vote_entropy_of_the_standing_votes(first_build):
    _, outcome = first_build
    agreement = outcome.manifest["agreement"]
    assert 0 < agreement["krippendorff_alpha"] < agreement["mean"] < 1  # chance-corrected, so below raw agreement
    assert agreement["pairable_votes"] <= outcome.manifest["counts"]["votes"]
    assert agreement["fleiss_kappa"] is None and agreement["fleiss_kappa_undefined"]  # items have 1..n votes
    assert agreement["krippendorff_alpha_interval"] is None  # the sample has no scores
    assert 0 < agreement["vote_entropy_bits_mean"] < 2  # four labels: at most 2 bits


def test_the_annotator_table_names_its_confusion_order_and_brackets_accuracy_with_intervals(first_build):
    _, outcome = first_build
    rows = pq.read_table(outcome.version_dir + "/annotators/annotators-00000-of-00001.parquet").to_pylist()
    voting = [row for row in rows if row["votes"]]
    assert voting and all(row["confusion_labels"] == outcome.manifest["annotators"]["confusion_labels"]
                          for row in voting)
    for row in voting:
        assert row["accuracy_low"] <= row["accuracy"] <= row["accuracy_high"]
        assert row["gold_accuracy_low"] is None  # the sample has no gold
    flagged = [row for row in voting if row["low_accuracy"]]
    assert len(flagged) < len(voting) / 2  # below the median with evidence: a minority by construction
    # Pairwise agreement: every ordered pair of votes on an item is counted once, from its first vote's side.
    labels = pq.read_table(outcome.version_dir + "/labels/labels-00000-of-00001.parquet").to_pylist()
    assert sum(row["pairs"] for row in rows) == sum(row["num_votes"] * (row["num_votes"] - 1) for row in labels)
    assert all(0 <= row["pair_agreement"] <= 1 for row in voting if row["pairs"])


def test_opted_in_annotators_are_credited_by_name_in_the_card_and_nobody_else(sample, tmp_path):
    sample_dir, description = sample
    credit = tmp_path / "credit.csv"
    credit.write_text("annotator_id,name\nannotator-00001,Ada Lovelace\nannotator-00002,Grace Hopper\n"
                      "someone-who-did-not-label,Not Here\n")
    config = config_for(sample_dir, description, tmp_path / "out", credit_names_path=str(credit))
    outcome = run_build(config, BEAM_ARGS)
    manifest, card = outcome.manifest, (pathlib.Path(outcome.version_dir) / "README.md").read_text()
    assert manifest["annotators"]["credited_names"] == ["Ada Lovelace", "Grace Hopper"]
    assert "Credited by name, at their own request: Ada Lovelace, Grace Hopper." in card
    assert "Not Here" not in card
    published = json.dumps(manifest) + card
    assert "annotator-00001" not in published and "annotator-00002" not in published
    assert manifest["params"]["credit_names_sha256"]  # other names make another publication
    plain = run_build(config_for(sample_dir, description, tmp_path / "plain"), BEAM_ARGS)
    assert "credited_names" not in plain.manifest["annotators"] and "Credited by name" not in \
        (pathlib.Path(plain.version_dir) / "README.md").read_text()


def test_a_credit_names_file_with_a_nameless_row_is_a_usage_error(tmp_path):
    (tmp_path / "credit.csv").write_text("annotator-00001,\n")
    result = labelbeam("build", "--credit-names", str(tmp_path / "credit.csv"), cwd=tmp_path)
    assert result.returncode == 2 and "credit names line 1" in result.stderr and "Traceback" not in result.stderr


def test_the_item_agreement_table_gives_each_items_votes_entropy_and_whether_the_consensus_is_unsure(first_build):
    _, outcome = first_build
    items = pq.read_table(outcome.version_dir + "/item_agreement/items-00000-of-00001.parquet").to_pylist()
    labels = {row["item_id"]: row for row in
              pq.read_table(outcome.version_dir + "/labels/labels-00000-of-00001.parquet").to_pylist()}
    assert [row["item_id"] for row in items] == sorted(labels)  # every item of the sample has single labels
    assert all(row["votes"] == labels[row["item_id"]]["num_votes"] for row in items)
    mean = sum(row["vote_entropy_bits"] for row in items) / len(items)
    assert mean == pytest.approx(outcome.manifest["agreement"]["vote_entropy_bits_mean"], abs=1e-6)
    for row in items:
        consensus = labels[row["item_id"]]
        assert row["unsure"] == (consensus["status"] != "ok" or consensus["confidence"] < 0.5)
        assert (row["vote_entropy_bits"] == 0) == (consensus["agreement"] == 1.0 or row["votes"] == 1)
