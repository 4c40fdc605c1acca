"""What a published version holds and how it gets there: one table per folder, no raw annotator id in any
published file, keyed pseudonyms without configuration, dead letters quarantined beside the version,
the publish gate, and no duplicate version after a crash before `_latest` moved."""
import datetime as dt
import hashlib
import io
import json
import os
import pathlib
import stat

import duckdb
import fastavro
import orjson
import pandas as pd
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
from event_builders import DATASET, NOW_MS, event, lines

from labelbeam.pipelines.build import PSEUDONYM_KEY_VARIABLE, run_build
from labelbeam.pipelines.generate import write_sample
from labelbeam.pipelines.options import BuildConfig
from labelbeam.transforms.events.conservation import GateError, PublishGateError
from labelbeam.transforms.inference.annotator_stats import key_id
from labelbeam.transforms.storage import version_store

BEAM_ARGS = ["--runner=FnApiRunner"]
NOW = dt.datetime.fromtimestamp(NOW_MS / 1000, tz=dt.timezone.utc)


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    directory = tmp_path_factory.mktemp("sample")
    return directory, write_sample(str(directory), 3_000, seed=5)


@pytest.fixture
def no_key_variable(monkeypatch):
    monkeypatch.delenv(PSEUDONYM_KEY_VARIABLE, raising=False)


def sample_config(sample, output, **overrides) -> BuildConfig:
    directory, description = sample
    fields = dict(inputs=(str(directory / "events"),), output=str(output), dataset=description["dataset"],
                  labels=tuple(description["labels"]))
    fields.update(overrides)
    return BuildConfig(**fields)


@pytest.fixture(scope="module")
def unkeyed_build(sample, tmp_path_factory):
    """A build of the sample with LABELBEAM_PSEUDONYM_KEY unset, 200 label rows per shard."""
    output = tmp_path_factory.mktemp("out")
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv(PSEUDONYM_KEY_VARIABLE, raising=False)
        return output, run_build(sample_config(sample, output, rows_per_shard=200), BEAM_ARGS)


def sample_annotator_ids(sample) -> set[str]:
    """Every annotator id in the sample's events, broken lines included."""
    events_dir = sample[0] / "events"
    ids = set()
    for path in sorted(events_dir.iterdir()):
        if path.suffix == ".jsonl":
            for line in path.read_bytes().splitlines():
                try:
                    record = orjson.loads(line)
                except orjson.JSONDecodeError:
                    continue
                if isinstance(record, dict) and isinstance(record.get("annotator_id"), str):
                    ids.add(record["annotator_id"])
        elif path.suffix == ".avro":
            with open(path, "rb") as stream:
                ids.update(record["annotator_id"] for record in fastavro.reader(stream))
    return ids


def decoded_text(path: pathlib.Path) -> str:
    """A published file's content as text, decompressed and decoded by its format."""
    data = path.read_bytes()
    if path.suffix == ".parquet":
        return json.dumps(pq.read_table(io.BytesIO(data)).to_pylist(), default=repr)
    if path.suffix == ".avro":
        return repr(list(fastavro.reader(io.BytesIO(data))))
    if path.suffix in (".json", ".jsonl", ".md") or path.name == version_store.CLAIM:
        return data.decode("utf-8")
    raise AssertionError(f"{path}: a published file of a kind this test cannot decode")


# 4a / 4b: no raw annotator id in what dataset readers receive

def test_no_published_file_of_a_version_holds_a_raw_annotator_id(sample, unkeyed_build):
    _, outcome = unkeyed_build
    annotator_ids = sample_annotator_ids(sample)
    assert len(annotator_ids) > 10 and "annotator-00000" in annotator_ids
    published = [path for path in pathlib.Path(outcome.version_dir).rglob("*") if path.is_file()]
    assert {path.suffix for path in published} >= {".parquet", ".avro", ".json"}
    for path in published:
        text, data = decoded_text(path), path.read_bytes()
        leaked = sorted(a for a in annotator_ids if a in text or a.encode() in data)
        assert not leaked, f"{path} holds raw annotator ids {leaked[:3]}"


def test_dead_letters_with_raw_bytes_are_quarantined_beside_the_version(sample, unkeyed_build):
    output, outcome = unkeyed_build
    dataset_dir = pathlib.Path(version_store.dataset_root(str(output), outcome.manifest["dataset"]))
    section = outcome.manifest["dead_letters"]
    expected = sample[1]["expected"]
    assert section["rows"] == expected["invalid"] and section["by_reason"] == expected["invalid_by_reason"]
    assert not any(entry["path"].startswith("rejected/") or "dead_letters" in entry["path"]
                   for entry in outcome.manifest["files"])
    [quarantined] = section["quarantine"]
    path = dataset_dir / quarantined["path"]
    assert path.parent == dataset_dir / "quarantine" / "1"  # beside versions/1, not inside it
    data = path.read_bytes()
    assert (len(data), hashlib.sha256(data).hexdigest()) == (quarantined["bytes"], quarantined["sha256"])
    letters = list(fastavro.reader(io.BytesIO(data)))
    assert len(letters) == quarantined["rows"] == expected["invalid"]
    # Replayable: the raw line of a JSON dead letter is exactly the line at its offset in its source.
    letter = next(letter for letter in letters if letter["raw_format"] == "json")
    with open(letter["source"], "rb") as stream:
        stream.seek(letter["offset"])
        assert stream.readline().rstrip(b"\n") == letter["raw"]


def test_without_the_key_variable_a_root_key_file_keys_the_pseudonyms(sample, unkeyed_build):
    output, outcome = unkeyed_build
    key_file = output / version_store.ROOT_KEY_FILE
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert not str(key_file.resolve()).startswith(str(pathlib.Path(outcome.version_dir).parent.resolve()))
    key = key_file.read_bytes().strip()
    section = outcome.manifest["annotators"]
    assert (section["keyed"], section["key_source"], section["key_id"]) == (True, "root-key-file", key_id(key))
    assert section["key_id"] != key_id(b"")
    assert key.decode() not in json.dumps(outcome.manifest)


def test_a_later_build_of_the_same_root_reuses_the_root_key(sample, tmp_path, no_key_variable):
    first = run_build(sample_config(sample, tmp_path), BEAM_ARGS)
    key = (tmp_path / version_store.ROOT_KEY_FILE).read_bytes()
    again = run_build(sample_config(sample, tmp_path, force=True), BEAM_ARGS)
    assert (tmp_path / version_store.ROOT_KEY_FILE).read_bytes() == key
    assert again.manifest["annotators"]["key_id"] == first.manifest["annotators"]["key_id"]
    names = [pq.read_table(pathlib.Path(outcome.version_dir, outcome.manifest["annotators"]["file"]))
             .column("annotator").to_pylist() for outcome in (first, again)]
    assert names[0] == names[1]


def test_with_the_key_variable_the_manifest_says_env_and_no_root_key_is_made(sample, tmp_path, monkeypatch):
    monkeypatch.setenv(PSEUDONYM_KEY_VARIABLE, "a-secret")
    outcome = run_build(sample_config(sample, tmp_path), BEAM_ARGS)
    section = outcome.manifest["annotators"]
    assert (section["keyed"], section["key_source"], section["key_id"]) == (True, "env", key_id(b"a-secret"))
    assert not (tmp_path / version_store.ROOT_KEY_FILE).exists()


# 12: one table per folder

def test_each_table_sits_in_its_own_folder_and_the_manifest_is_at_the_version_root(unkeyed_build):
    _, outcome = unkeyed_build
    version_dir = pathlib.Path(outcome.version_dir)
    # The store's own .claim marker is a dot file, which pyarrow, pandas and DuckDB skip.
    assert sorted(path.name for path in version_dir.iterdir() if path.name != version_store.CLAIM) == [
        "README.md", "annotators", "item_agreement", "labels", "labels_avro", "manifest.json"]
    assert {path.suffix for path in (version_dir / "labels").iterdir()} == {".parquet"}
    assert {path.suffix for path in (version_dir / "labels_avro").iterdir()} == {".avro"}
    assert [path.name for path in (version_dir / "annotators").iterdir()] == ["annotators-00000-of-00001.parquet"]
    assert outcome.manifest["annotators"]["file"] == "annotators/annotators-00000-of-00001.parquet"
    files = {entry["path"]: entry for entry in outcome.manifest["files"]}
    assert set(files) == {str(path.relative_to(version_dir)) for path in version_dir.rglob("*")
                          if path.is_file() and path.name not in ("manifest.json", version_store.CLAIM)}
    for path, entry in files.items():
        data = (version_dir / path).read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (entry["bytes"], entry["sha256"])


def test_the_labels_folder_reads_as_exactly_the_label_rows_with_pyarrow_pandas_and_duckdb(unkeyed_build):
    _, outcome = unkeyed_build
    labels_dir = os.path.join(outcome.version_dir, "labels")
    items = outcome.manifest["counts"]["items"]
    columns = [field["name"] for field in outcome.manifest["schema"]["fields"]]
    assert len(os.listdir(labels_dir)) == -(-items // 200) > 1  # several shards, read as one table
    table = pads.dataset(labels_dir).to_table()
    assert (table.num_rows, table.column_names) == (items, columns)
    frame = pd.read_parquet(labels_dir)
    assert (len(frame), list(frame.columns)) == (items, columns)
    rows = duckdb.sql(f"SELECT * FROM read_parquet('{labels_dir}/*.parquet') ORDER BY item_id").fetchall()
    assert len(rows) == items and [row[0] for row in rows] == sorted(table.column("item_id").to_pylist())
    first_avro = f"labels-00000-of-{-(-items // 200):05d}.avro"
    with open(os.path.join(outcome.version_dir, "labels_avro", first_avro), "rb") as stream:
        assert list(fastavro.reader(stream)) == table.slice(0, 200).to_pylist()


def test_the_annotators_folder_reads_as_the_annotator_rows_alone(unkeyed_build):
    _, outcome = unkeyed_build
    annotators = pads.dataset(os.path.join(outcome.version_dir, "annotators")).to_table()
    assert annotators.num_rows == outcome.manifest["annotators"]["rows"]
    assert "annotator" in annotators.column_names and "item_id" not in annotators.column_names


def test_latest_table_dir_finds_the_latest_labels_without_reading_the_pointer(unkeyed_build):
    output, outcome = unkeyed_build
    labels_dir = version_store.latest_table_dir(str(output), outcome.manifest["dataset"])
    assert labels_dir == os.path.join(outcome.version_dir, "labels")
    assert pd.read_parquet(labels_dir).shape[0] == outcome.manifest["counts"]["items"]


# 7: a crash after the manifest but before _latest moved

def test_a_build_after_a_crash_before_latest_moved_is_up_to_date_and_moves_latest(sample, tmp_path):
    config = sample_config(sample, tmp_path)
    root, dataset = str(tmp_path), config.dataset
    run_build(config, BEAM_ARGS)
    os.remove(os.path.join(version_store.dataset_root(root, dataset), version_store.LATEST))  # crashed before it
    again = run_build(config, BEAM_ARGS)
    assert (again.published, again.version) == (False, 1)
    assert version_store.version_numbers(root, dataset, published_only=False) == [1]
    assert json.loads(version_store.read_bytes(f"{root}/{dataset}/_latest")) == {"version": 1}


def test_a_build_after_latest_was_left_behind_is_up_to_date_with_the_newest_complete_version(sample, tmp_path):
    config = sample_config(sample, tmp_path)
    root, dataset = str(tmp_path), config.dataset
    run_build(config, BEAM_ARGS)
    run_build(BuildConfig(**{**config.__dict__, "force": True}), BEAM_ARGS)
    pathlib.Path(version_store.dataset_root(root, dataset), version_store.LATEST).write_text('{"version": 1}\n')
    again = run_build(config, BEAM_ARGS)
    assert (again.published, again.version) == (False, 2)
    assert version_store.version_numbers(root, dataset, published_only=False) == [1, 2]
    assert version_store.read_latest(root, dataset) == 2


# The publish gate

def gate_build(tmp_path, payload: bytes, method: str = "mv") -> BuildConfig:
    (tmp_path / "events").mkdir()
    (tmp_path / "events" / "events.jsonl").write_bytes(payload)
    return BuildConfig(inputs=(str(tmp_path / "events"),), output=str(tmp_path / "out"), dataset=DATASET,
                       method=method)


def assert_nothing_published(config: BuildConfig, invalid: int):
    root, dataset = config.output, config.dataset
    assert version_store.version_numbers(root, dataset, published_only=False) == []  # no orphan .claim
    assert not os.path.exists(os.path.join(version_store.dataset_root(root, dataset), version_store.LATEST))
    [quarantined] = pathlib.Path(version_store.quarantine_dir(root, dataset, 1)).iterdir()
    with open(quarantined, "rb") as stream:
        assert len(list(fastavro.reader(stream))) == invalid


def test_a_run_with_mostly_invalid_events_publishes_nothing_and_keeps_its_dead_letters(tmp_path):
    votes = lines([event("e1", annotator="a1"), event("e2", annotator="a2")])
    config = gate_build(tmp_path, b"".join(line + b"\n" for line in votes) + b"{broken\n" * 3)
    with pytest.raises(GateError, match="publish gate failed") as raised:
        run_build(config, BEAM_ARGS, now=NOW)
    assert isinstance(raised.value, PublishGateError)
    assert "invalid 3 of read 5" in str(raised.value) and "quarantine" in str(raised.value)
    assert_nothing_published(config, invalid=3)


def test_a_run_without_usable_votes_publishes_nothing(tmp_path):
    # `mean` aggregates scores: categorical votes leave every item at needs_more_votes.
    votes = lines([event("e1", annotator="a1"), event("e2", annotator="a2")])
    config = gate_build(tmp_path, b"".join(line + b"\n" for line in votes) + b"{broken\n", method="mean")
    with pytest.raises(PublishGateError, match="no usable votes"):
        run_build(config, BEAM_ARGS, now=NOW)
    assert_nothing_published(config, invalid=1)
    # The next build claims a fresh number: the quarantined dead letters of version 1 stay as they were.
    good = lines([event("e3", annotator="a1"), event("e4", annotator="a2")])
    (tmp_path / "events" / "events.jsonl").write_bytes(b"".join(line + b"\n" for line in good))
    outcome = run_build(BuildConfig(**{**config.__dict__, "method": "mv"}), BEAM_ARGS, now=NOW)
    assert (outcome.published, outcome.version) == (True, 2)
    assert len(list(pathlib.Path(version_store.quarantine_dir(config.output, DATASET, 1)).iterdir())) == 1
