"""`labelbeam build` with gs:// inputs and a gs:// output root, against a real GCS emulator process
(fake-gcs-server, started by the gcs_emulator fixture): the same versions, byte for byte, as on disk."""
import hashlib
import json
import pathlib

import pytest

from labelbeam.pipelines.build import run_build
from labelbeam.pipelines.generate import write_sample
from labelbeam.pipelines.options import BuildConfig
from labelbeam.transforms.storage import version_store
from labelbeam.transforms.storage.stores import GcsStore, join

BEAM_ARGS = ["--runner=FnApiRunner"]


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    directory = tmp_path_factory.mktemp("sample")
    description = write_sample(str(directory), 3_000, seed=5)
    return directory, description


def upload_events(sample_dir: pathlib.Path, bucket: str) -> str:
    store = GcsStore()
    events = f"gs://{bucket}/incoming/events/"
    for path in sorted((sample_dir / "events").iterdir()):
        store.write(join(events, path.name), path.read_bytes())
    return events


def config(inputs: str, output: str, description, **overrides) -> BuildConfig:
    return BuildConfig(inputs=(inputs,), output=output, dataset=description["dataset"],
                       labels=tuple(description["labels"]), **overrides)


def digests(outcome) -> dict[str, str]:
    return {entry["path"]: entry["sha256"] for entry in outcome.manifest["files"]}


def test_a_gcs_build_publishes_the_same_files_as_a_local_build(gcs_emulator, sample, tmp_path):
    sample_dir, description = sample
    bucket = gcs_emulator.new_bucket()
    root = f"gs://{bucket}/datasets"
    remote = run_build(config(upload_events(sample_dir, bucket), root, description), BEAM_ARGS)
    local = run_build(config(str(sample_dir / "events"), str(tmp_path / "out"), description), BEAM_ARGS)
    assert remote.published and remote.version == 1
    assert remote.manifest["counts"] == local.manifest["counts"] == {
        **{key: description["expected"][key] for key in ("read", "valid", "invalid", "duplicates", "superseded",
                                                          "deleted", "votes", "items")},
        "unknown_fields_dropped": 0, "after_as_of": 0}
    # Pseudonyms are keyed per root, so only the annotators table may differ between the two roots.
    remote_files = {path: sha for path, sha in digests(remote).items() if not path.startswith("annotators/")}
    local_files = {path: sha for path, sha in digests(local).items() if not path.startswith("annotators/")}
    assert {p: s for p, s in remote_files.items() if p != "README.md"} == \
        {p: s for p, s in local_files.items() if p != "README.md"}
    store = GcsStore()
    manifest = json.loads(store.read(join(root, "sample", "versions", "1", "manifest.json")))
    for entry in manifest["files"]:
        data = store.read(join(root, "sample", "versions", "1", entry["path"]))
        assert hashlib.sha256(data).hexdigest() == entry["sha256"]
    assert version_store.read_latest(root, "sample") == 1
    assert store.read(join(root, "sample", "versions", "1", version_store.CANDIDATE)) is None
    assert [entry["fingerprint"] for entry in remote.manifest["inputs"]] == ["object-metadata"] * \
        len(remote.manifest["inputs"])
    assert all("generation" in entry and "crc32c" in entry for entry in remote.manifest["inputs"])


def test_a_second_gcs_build_of_the_same_inputs_is_up_to_date(gcs_emulator, sample):
    sample_dir, description = sample
    bucket = gcs_emulator.new_bucket()
    events, root = upload_events(sample_dir, bucket), f"gs://{bucket}/datasets"
    first = run_build(config(events, root, description), BEAM_ARGS)
    again = run_build(config(events, root, description), BEAM_ARGS)
    assert first.published and not again.published and again.version == 1
    forced = run_build(config(events, root, description, force=True), BEAM_ARGS)
    assert forced.version == 2
    assert digests(forced) == digests(first)
    assert version_store.version_numbers(root, "sample") == [1, 2]
    assert version_store.read_latest(root, "sample") == 2
