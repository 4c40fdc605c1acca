"""The publishing protocol: create-only writes, version claims and the compare-and-swap pointer."""
import json

import pytest

from labelbeam.transforms.publish import ConservationError, check_conservation
from labelbeam.transforms.storage import version_store as store
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
