"""The publishing protocol: create-only writes, version claims and the compare-and-swap pointer."""
import json
import shutil
import stat
import subprocess
import sys

import pytest

from labelbeam.transforms.events.conservation import (
    ConservationError,
    GateError,
    PublishGateError,
    check_conservation,
    publish_gate,
)
from labelbeam.transforms.storage import version_store as store
from labelbeam.transforms.storage.stores import LocalStore
from labelbeam.transforms.storage.table_files import num_shards_for, shard_names


def test_create_only_refuses_to_overwrite(tmp_path):
    path = str(tmp_path / "a" / "manifest.json")
    store.create_only(path, b"first")
    with pytest.raises(store.AlreadyExists):
        store.create_only(path, b"second")
    assert store.read_bytes(path) == b"first"


def test_claims_are_sequential_and_never_reused(tmp_path):
    root = str(tmp_path)
    assert [store.claim_next_version(root, "ds", "builder") for _ in range(3)] == [1, 2, 3]
    # Version 2 was claimed but never published: it does not exist, and is not handed out again.
    store.create_only(f"{store.version_dir(root, 'ds', 1)}/{store.MANIFEST}", b"{}")
    assert store.version_numbers(root, "ds") == [1]
    assert store.claim_next_version(root, "ds", "builder") == 4


def test_latest_pointer_never_moves_backwards(tmp_path):
    root = str(tmp_path)
    assert store.read_latest(root, "ds") is None
    assert store.advance_latest(root, "ds", 3)
    assert not store.advance_latest(root, "ds", 2)
    assert store.read_latest(root, "ds") == 3
    assert json.loads(store.read_bytes(f"{root}/ds/_latest")) == {"version": 3}


def test_compare_and_swap_fails_when_content_changed(tmp_path):
    path = str(tmp_path / "pointer")
    assert store.compare_and_swap(path, None, b"v1")
    assert not store.compare_and_swap(path, None, b"v2")
    assert not store.compare_and_swap(path, b"stale", b"v2")
    assert store.compare_and_swap(path, b"v1", b"v2")
    assert store.read_bytes(path) == b"v2"


def test_without_a_pointer_latest_is_the_highest_published_version(tmp_path):
    root = str(tmp_path)
    for version in (1, 2):
        store.create_only(f"{store.version_dir(root, 'ds', version)}/{store.MANIFEST}", b"{}")
    assert store.read_latest(root, "ds") == 2


def test_object_store_roots_are_refused_with_a_clear_error():
    with pytest.raises(store.StoreError, match="gs://"):
        store.read_latest("gs://bucket/root", "ds")


def test_conservation_check_accepts_consistent_counts_and_rejects_others():
    counts = {"read": 10, "valid": 7, "invalid": 2, "duplicates": 1, "votes": 5, "superseded": 1, "deleted": 1}
    check_conservation(counts)
    with pytest.raises(ConservationError):
        check_conservation({**counts, "read": 11})
    with pytest.raises(ConservationError):
        check_conservation({**counts, "votes": 4})


def test_shard_names_follow_the_layout():
    assert shard_names("labels", ".parquet", num_shards_for(2_500, 1_000)) == [
        "labels-00000-of-00003.parquet", "labels-00001-of-00003.parquet", "labels-00002-of-00003.parquet"]
    assert num_shards_for(0, 1_000) == 1


# Manifests are written atomically: a crash mid-write leaves no manifest.json, never a partial one.

class FailBefore:
    """A fault: the step that would make `op` take effect fails (the bytes are written, not yet linked)."""

    def __init__(self, op: str):
        self.op = op

    def before(self, op, path):
        if op == self.op:
            raise OSError("injected fault: disk gone before the manifest landed")

    def after(self, op, path):
        pass


def test_a_write_that_fails_before_it_lands_leaves_no_manifest_and_nothing_visible(tmp_path):
    path = tmp_path / "ds" / "versions" / "1" / store.MANIFEST
    with pytest.raises(OSError, match="injected fault"):
        LocalStore(faults=FailBefore("create_only")).create_only(str(path), b'{"version": 1}\n' * 100)
    assert not path.exists()
    assert LocalStore().list(str(path.parent)) == []
    store.create_only(str(path), b"whole")  # the name is still free
    assert path.read_bytes() == b"whole"


CRASHING_WRITER = """
import os, sys
from labelbeam.transforms.storage.stores import LocalStore

class Crash:
    def before(self, op, path):
        os._exit(9)  # the process dies with the bytes written but not linked: no except, no cleanup
    def after(self, op, path):
        pass

LocalStore(faults=Crash()).create_only(sys.argv[1], b'{"version": 1}\\n' * 100)
"""


def test_a_process_killed_while_writing_a_manifest_leaves_no_manifest(tmp_path):
    path = tmp_path / "ds" / "versions" / "1" / store.MANIFEST
    result = subprocess.run([sys.executable, "-c", CRASHING_WRITER, str(path)], capture_output=True, timeout=60)
    assert result.returncode == 9, result.stderr
    assert not path.exists()
    assert store.version_numbers(str(tmp_path), "ds") == []
    store.create_only(str(path), b"{}")  # a leftover temporary file does not block the next writer
    assert path.read_bytes() == b"{}"


def test_create_only_private_is_readable_by_the_owner_only(tmp_path):
    path = tmp_path / "secret"
    store.create_only(str(path), b"k", private=True)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


# The pseudonym key of a root: created once, 0600, outside every version, reused.

def test_a_root_key_is_created_once_with_mode_0600_and_then_reused(tmp_path):
    root = str(tmp_path)
    assert store.read_root_pseudonym_key(root) is None
    key = store.root_pseudonym_key(root)
    path = tmp_path / store.ROOT_KEY_FILE
    assert len(key) == 64 and bytes.fromhex(key.decode())  # 32 random bytes, as hex text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert store.root_pseudonym_key(root) == key == store.read_root_pseudonym_key(root)
    assert store.root_pseudonym_key(str(tmp_path / "other-root")) != key


# Reading the latest version without parsing _latest.

def publish(root: str, version: int) -> None:
    store.create_only(f"{store.version_dir(root, 'ds', version)}/{store.MANIFEST}", b"{}")


def test_latest_version_dir_follows_the_pointer_and_names_each_table_folder(tmp_path):
    root = str(tmp_path)
    with pytest.raises(store.StoreError, match="no published version"):
        store.latest_version_dir(root, "ds")
    publish(root, 1)
    publish(root, 2)
    assert store.latest_version_dir(root, "ds") == store.version_dir(root, "ds", 2)  # no pointer yet
    store.advance_latest(root, "ds", 1)
    assert store.latest_version_dir(root, "ds") == store.version_dir(root, "ds", 1)
    assert store.latest_table_dir(root, "ds") == f"{store.version_dir(root, 'ds', 1)}/labels"
    assert store.latest_table_dir(root, "ds", "annotators") == f"{store.version_dir(root, 'ds', 1)}/annotators"


def test_newest_complete_version_ignores_claims_without_a_manifest(tmp_path):
    root = str(tmp_path)
    assert store.newest_complete_version(root, "ds") is None
    publish(root, 1)
    store.claim_next_version(root, "ds", "builder")  # 2: claimed, never published
    assert store.newest_complete_version(root, "ds") == 1


def test_a_version_whose_dead_letters_were_quarantined_is_never_claimed_again(tmp_path):
    root = str(tmp_path)
    assert store.claim_next_version(root, "ds", "builder") == 1
    store.create_only(f"{store.quarantine_dir(root, 'ds', 1)}/dead_letters-00000-of-00001.avro", b"x")
    shutil.rmtree(store.version_dir(root, "ds", 1))  # the gate refused version 1 and released its claim
    assert store.claim_next_version(root, "ds", "builder") == 2


# The publish gate: a pure check of the run's counts and consensus statuses.

GOOD = {"read": 100, "valid": 80, "invalid": 20, "duplicates": 0, "votes": 80, "superseded": 0, "deleted": 0,
        "items": 20}


def test_publish_gate_passes_a_run_with_usable_votes_and_few_invalid_events():
    assert publish_gate(GOOD, 0.5, {"ok": 18, "tie": 1, "needs_more_votes": 1}) == []


def test_publish_gate_refuses_a_run_without_votes():
    counts = {**GOOD, "valid": 0, "invalid": 1, "read": 1, "votes": 0, "items": 0}
    assert any("no usable votes" in problem for problem in publish_gate(counts, 1.0, {}))


def test_publish_gate_refuses_a_run_where_no_item_was_decided():
    [problem] = publish_gate(GOOD, 0.5, {"needs_more_votes": 20})
    assert "no usable votes" in problem and "needs_more_votes 20" in problem


def test_publish_gate_refuses_a_run_whose_invalid_share_is_above_the_threshold():
    counts = {**GOOD, "valid": 40, "invalid": 60, "votes": 40}
    [problem] = publish_gate(counts, 0.5, {"ok": 20})
    assert "invalid 60 of read 100" in problem and "0.6" in problem and "0.5" in problem
    assert publish_gate(counts, 0.6, {"ok": 20}) == []  # at the threshold is fine


def test_gate_errors_share_one_base():
    assert issubclass(PublishGateError, GateError) and issubclass(ConservationError, GateError)
