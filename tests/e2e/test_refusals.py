"""Inputs that must not become a version, through the real CLI: one line on stderr, the right exit code,
nothing published, `_latest` untouched, the dead letters kept where a user can inspect them."""
import gzip
import json
import os
import subprocess
import sys

import fastavro
import pytest

from labelbeam.pipelines.errors import EXIT_PUBLISH_GATE, EXIT_USAGE
from labelbeam.pipelines.generate import write_sample
from labelbeam.transforms.storage import version_store

LABELS = "bird,cat,dog,fish"


def labelbeam(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "labelbeam.pipelines.cli", *args], capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    directory = tmp_path_factory.mktemp("sample")
    write_sample(str(directory), 2_000, seed=13)
    return directory


def random_bytes(tmp_path, sample):
    path = tmp_path / "junk.jsonl"
    path.write_bytes(os.urandom(20_000).replace(b"\n", b"x") + b"\n" + os.urandom(5_000))
    return str(path), "sample", []


def foreign_avro(tmp_path, sample):
    path = tmp_path / "foreign.avro"
    schema = {"type": "record", "name": "Reading", "fields": [{"name": "sensor", "type": "string"},
                                                              {"name": "value", "type": "double"}]}
    with open(path, "wb") as out:
        fastavro.writer(out, schema, [{"sensor": f"s{i}", "value": float(i)} for i in range(500)])
    return str(path), "sample", []


def dataset_typo(tmp_path, sample):
    return str(sample / "events"), "sampel", []


def ratings_method_on_categorical_votes(tmp_path, sample):
    return str(sample / "events"), "sample", ["--method", "mean"]


@pytest.mark.parametrize("case", [random_bytes, foreign_avro, dataset_typo, ratings_method_on_categorical_votes])
def test_a_run_without_usable_votes_exits_3_in_one_line_and_publishes_nothing(case, sample, tmp_path):
    events, dataset, extra = case(tmp_path, sample)
    root = str(tmp_path / "out")
    result = labelbeam("build", "--input", events, "--output", root, "--dataset", dataset, "--labels", LABELS, *extra)
    assert result.returncode == EXIT_PUBLISH_GATE, result.stderr
    [line] = [line for line in result.stderr.splitlines() if line.strip()]
    assert line.startswith("labelbeam: publish gate failed, nothing published: ")
    assert "read" in line and "quarantine" in line
    assert result.stdout == ""
    assert version_store.version_numbers(root, dataset, published_only=False) == []
    assert version_store.read_bytes(os.path.join(root, dataset, version_store.LATEST)) is None
    quarantined = os.listdir(os.path.join(root, dataset, version_store.QUARANTINE, "1"))
    assert quarantined == ["dead_letters-00000-of-00001.avro"]


def test_a_mostly_invalid_run_passes_when_the_threshold_allows_it(sample, tmp_path):
    # Half garbage, half good events: refused at the default 0.5 only if more than half is invalid.
    events = tmp_path / "events"
    events.mkdir()
    good = (sample / "events" / "events-000.jsonl").read_bytes()
    lines = good.count(b"\n")
    (events / "a.jsonl").write_bytes(good)
    (events / "b.jsonl").write_bytes(b"{not json\n" * (2 * lines))
    root = str(tmp_path / "out")
    refused = labelbeam("build", "--input", str(events), "--output", root, "--dataset", "sample", "--labels", LABELS)
    assert refused.returncode == EXIT_PUBLISH_GATE
    assert "is above --max-invalid-share 0.5" in refused.stderr
    allowed = labelbeam("build", "--input", str(events), "--output", root, "--dataset", "sample", "--labels", LABELS,
                        "--max-invalid-share", "0.9")
    assert allowed.returncode == 0, allowed.stderr
    manifest = json.loads(open(os.path.join(root, "sample", "versions", "2", "manifest.json")).read())
    assert manifest["publish_gate"]["max_invalid_share"] == 0.9
    assert 0.5 < manifest["publish_gate"]["invalid_share"] <= 0.9


def test_a_truncated_gzip_input_is_an_input_error_naming_the_file(sample, tmp_path):
    whole = gzip.compress((sample / "events" / "events-000.jsonl").read_bytes())
    path = tmp_path / "events.jsonl.gz"
    path.write_bytes(whole[: len(whole) // 2])
    root = str(tmp_path / "out")
    result = labelbeam("build", "--input", str(path), "--output", root, "--dataset", "sample", "--labels", LABELS)
    assert result.returncode == EXIT_USAGE, result.stderr
    [line] = [line for line in result.stderr.splitlines() if line.strip()]
    assert str(path) in line and "truncated or corrupt" in line
    assert not os.path.exists(os.path.join(root, "sample", "versions"))


def test_quality_gates_refuse_with_exit_3_naming_the_gate_and_record_what_they_measured(sample, tmp_path):
    root, events = str(tmp_path / "out"), str(sample / "events")
    build = ("build", "--input", events, "--output", root, "--dataset", "sample", "--labels", LABELS)
    strict = labelbeam(*build, "--min-agreement", "0.99", "--max-dead-letter-share", "MALFORMED_JSON=0")
    assert strict.returncode == EXIT_PUBLISH_GATE, strict.stderr
    [line] = [line for line in strict.stderr.splitlines() if line.strip()]
    assert "is below --min-agreement 0.99" in line and "above --max-dead-letter-share MALFORMED_JSON=0" in line
    assert version_store.version_numbers(root, "sample") == []
    passed = labelbeam(*build, "--min-agreement", "0.2", "--max-label-drift", "0.01")   # drift: no earlier version
    assert passed.returncode == 0, passed.stderr
    gate = json.loads(open(os.path.join(root, "sample", "versions", "2", "manifest.json")).read())["publish_gate"]
    assert gate["agreement"]["min"] == 0.2 and 0.2 <= gate["agreement"]["value"] <= 1
    assert "label_drift" not in gate
    part = str(sample / "events" / "events-000.jsonl")   # other votes: another label distribution
    drifted = labelbeam("build", "--input", part, "--output", root, "--dataset", "sample", "--labels", LABELS,
                        "--max-label-drift", "0")
    assert drifted.returncode == EXIT_PUBLISH_GATE, drifted.stderr
    assert "drifted" in drifted.stderr and "from the previous version, above --max-label-drift 0" in drifted.stderr
    assert version_store.version_numbers(root, "sample") == [2]


def test_a_dead_letter_share_of_an_unknown_reason_is_a_usage_error(sample, tmp_path):
    result = labelbeam("build", "--input", str(sample / "events"), "--output", str(tmp_path / "out"),
                       "--dataset", "sample", "--max-dead-letter-share", "TYPO=0.1")
    assert result.returncode == EXIT_USAGE
    assert "TYPO is not a dead-letter reason" in result.stderr
