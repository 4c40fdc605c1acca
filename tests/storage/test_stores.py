"""The storage seam: the same contract tests against LocalStore (tmp_path) and GcsStore (fake-gcs-server),
then GCS retries through the faults seam, and Beam's FileSystems on the emulator."""
import base64
import hashlib
import os
import pickle
import stat
import threading

import pytest
import requests
from apache_beam.io.filesystems import FileSystems
from google.api_core import exceptions as api_exceptions
from google.auth.credentials import AnonymousCredentials

from labelbeam.transforms.storage import stores
from labelbeam.transforms.storage.stores import (
    AlreadyExists,
    GcsStore,
    LocalStore,
    ObjectInfo,
    RetryPolicy,
    StoreError,
    join,
    store_for,
)

BINARY = bytes(range(256)) * 3 + b"\r\n\x00\xff"


class Crash(Exception):
    """A process dying at the injected point (not a transient error: never retried)."""


class ScriptedFaults:
    """Raises each scripted exception once, at its (when, op), after running its side effect; records
    every call as (when, op)."""

    def __init__(self, *script):
        self.script = [entry if len(entry) == 4 else (*entry, None) for entry in script]
        self.calls = []

    def _hit(self, when, op):
        self.calls.append((when, op))
        for index, (at, at_op, error, side_effect) in enumerate(self.script):
            if (at, at_op) == (when, op):
                del self.script[index]
                if side_effect is not None:
                    side_effect()
                raise error

    def before(self, op, path):
        self._hit("before", op)

    def after(self, op, path):
        self._hit("after", op)

    def attempts(self, op):
        return self.calls.count(("before", op))


class AlwaysUnavailable(ScriptedFaults):
    def before(self, op, path):
        self.calls.append(("before", op))
        raise api_exceptions.ServiceUnavailable("injected 503")


class Backend:
    """A store kind and a fresh ROOT for it; `store(faults)` builds a store that never really sleeps."""

    def __init__(self, kind, root):
        self.kind, self.root = kind, root
        self.sleeps = []

    def store(self, faults=None):
        if self.kind == "local":
            return LocalStore(faults=faults)
        return GcsStore(faults=faults, sleep=self.sleeps.append)

    def path(self, *parts):
        return join(self.root, *parts)


@pytest.fixture(params=["local", "gcs"])
def backend(request, tmp_path):
    if request.param == "local":
        return Backend("local", str(tmp_path / "root"))
    emulator = request.getfixturevalue("gcs_emulator")
    return Backend("gcs", f"gs://{emulator.new_bucket()}/datasets")


@pytest.fixture
def gcs(gcs_emulator):
    return Backend("gcs", f"gs://{gcs_emulator.new_bucket()}/datasets")


# ---------------------------------------------------------------------------------------------------
# One contract, both stores


def test_create_only_writes_once_and_refuses_a_second_time(backend):
    store, path = backend.store(), backend.path("ds", "versions", "1", "manifest.json")
    store.create_only(path, b"first")
    with pytest.raises(AlreadyExists):
        store.create_only(path, b"second")
    assert store.read(path) == b"first"


def test_compare_and_swap_from_absent_succeeds_once(backend):
    store, path = backend.store(), backend.path("ds", "_latest")
    assert store.read_versioned(path) == (None, None)
    assert store.compare_and_swap(path, None, b"1")
    assert not store.compare_and_swap(path, None, b"2")
    assert store.read(path) == b"1"


def test_compare_and_swap_with_the_current_token_replaces(backend):
    store, path = backend.store(), backend.path("ds", "_latest")
    store.compare_and_swap(path, None, b"1")
    _, token = store.read_versioned(path)
    assert store.compare_and_swap(path, token, b"2")
    assert store.read_versioned(path)[0] == b"2"


def test_compare_and_swap_with_a_stale_token_loses(backend):
    store, path = backend.store(), backend.path("ds", "_latest")
    store.compare_and_swap(path, None, b"1")
    _, stale = store.read_versioned(path)
    assert store.compare_and_swap(path, stale, b"2")
    assert not store.compare_and_swap(path, stale, b"3")
    assert store.read(path) == b"2"


def test_concurrent_compare_and_swap_has_exactly_one_winner_per_round(backend):
    store, path = backend.store(), backend.path("ds", "_latest")
    store.write(path, b"start")
    rounds, writers = 8, 2
    read_done, round_done = threading.Barrier(writers), threading.Barrier(writers)
    wins = [[None] * writers for _ in range(rounds)]
    errors = []

    def writer(index):
        try:
            for number in range(rounds):
                _, token = store.read_versioned(path)
                read_done.wait()  # both hold the same token before either swaps
                wins[number][index] = store.compare_and_swap(path, token, f"{number}-{index}".encode())
                round_done.wait()
        except BaseException as err:  # surfaced below; a dead thread would otherwise hang the barrier
            errors.append(err)
            read_done.abort()
            round_done.abort()

    threads = [threading.Thread(target=writer, args=(index,)) for index in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)
    assert errors == []
    assert [sum(round_wins) for round_wins in wins] == [1] * rounds
    last_winner = wins[-1].index(True)
    assert store.read(path) == f"{rounds - 1}-{last_winner}".encode()


def test_a_write_between_read_and_swap_makes_the_swap_lose(backend):
    store, path = backend.store(), backend.path("ds", "_latest")
    store.write(path, b"1")
    _, token = store.read_versioned(path)
    store.write(path, b"2")
    assert not store.compare_and_swap(path, token, b"3")
    assert store.read(path) == b"2"


def test_write_replaces_whatever_is_there(backend):
    store, path = backend.store(), backend.path("ds", "notes.txt")
    store.write(path, b"one")
    store.write(path, b"two")
    assert store.read(path) == b"two"


def test_list_returns_every_object_below_a_folder_recursively_sorted(backend):
    store = backend.store()
    for parts in [("ds", "versions", "2", "labels", "part-0.parquet"), ("ds", "versions", "10", "manifest.json"),
                  ("ds", "versions", "2", "manifest.json"), ("ds", "versions_old", "x"), ("ds", "_latest")]:
        store.write(backend.path(*parts), b"x")
    assert store.list(backend.path("ds", "versions")) == sorted([
        backend.path("ds", "versions", "10", "manifest.json"),
        backend.path("ds", "versions", "2", "labels", "part-0.parquet"),
        backend.path("ds", "versions", "2", "manifest.json")])
    assert store.list(backend.path("ds", "versions") + "/") == store.list(backend.path("ds", "versions"))
    assert store.list(backend.path("nothing", "here")) == []


def test_list_does_not_show_compare_and_swap_or_create_only_bookkeeping(backend):
    store = backend.store()
    store.compare_and_swap(backend.path("ds", "_latest"), None, b"1")
    store.create_only(backend.path("ds", "versions", "1", ".claim"), b"owner")
    assert store.list(backend.path("ds")) == [backend.path("ds", "_latest"),
                                              backend.path("ds", "versions", "1", ".claim")]


def test_delete_removes_the_object_and_tolerates_a_missing_one(backend):
    store, path = backend.store(), backend.path("ds", "versions", "1", ".claim")
    store.create_only(path, b"owner")
    store.delete(path)
    assert not store.exists(path)
    assert store.read(path) is None
    store.delete(path)
    store.create_only(path, b"again")
    assert store.read(path) == b"again"


def test_stat_reports_size_and_update_time_and_gcs_generation_and_digests(backend):
    store, path = backend.store(), backend.path("ds", "versions", "1", "manifest.json")
    store.create_only(path, BINARY)
    info = store.stat(path)
    assert isinstance(info, ObjectInfo)
    assert info.size == len(BINARY)
    assert info.updated.tzinfo is not None
    if backend.kind == "gcs":
        assert info.generation == store.read_versioned(path)[1]
        assert info.md5 == base64.b64encode(hashlib.md5(BINARY).digest()).decode()
        assert info.crc32c is not None
    else:
        assert (info.generation, info.md5, info.crc32c) == (None, None, None)


def test_missing_objects_read_and_stat_as_none(backend):
    store, path = backend.store(), backend.path("ds", "absent")
    assert store.read(path) is None
    assert store.read_versioned(path) == (None, None)
    assert store.stat(path) is None
    assert not store.exists(path)


def test_a_folder_is_not_an_object(backend):
    store = backend.store()
    store.write(backend.path("ds", "versions", "1", "manifest.json"), b"{}")
    assert store.stat(backend.path("ds", "versions", "1")) is None
    assert not store.exists(backend.path("ds", "versions"))


def test_binary_data_round_trips_unchanged(backend):
    store = backend.store()
    store.create_only(backend.path("a.bin"), BINARY)
    store.write(backend.path("b.bin"), BINARY)
    store.compare_and_swap(backend.path("c.bin"), None, BINARY)
    assert [store.read(backend.path(name)) for name in ("a.bin", "b.bin", "c.bin")] == [BINARY] * 3
    assert store.read_versioned(backend.path("c.bin"))[0] == BINARY


def test_crash_before_create_only_takes_effect_leaves_nothing(backend):
    path = backend.path("ds", "versions", "1", "manifest.json")
    with pytest.raises(Crash):
        backend.store(ScriptedFaults(("before", "create_only", Crash()))).create_only(path, b"{}")
    store = backend.store()
    assert not store.exists(path)
    assert store.list(backend.path("ds")) == []
    store.create_only(path, b"{}")
    assert store.read(path) == b"{}"


def test_crash_after_create_only_took_effect_keeps_the_whole_object(backend):
    path = backend.path("ds", "versions", "1", "manifest.json")
    with pytest.raises(Crash):
        backend.store(ScriptedFaults(("after", "create_only", Crash()))).create_only(path, BINARY)
    store = backend.store()
    assert store.read(path) == BINARY
    with pytest.raises(AlreadyExists):
        store.create_only(path, BINARY)


def test_crash_before_compare_and_swap_takes_effect_keeps_the_old_value_and_token(backend):
    path = backend.path("ds", "_latest")
    store = backend.store()
    store.compare_and_swap(path, None, b"1")
    _, token = store.read_versioned(path)
    with pytest.raises(Crash):
        backend.store(ScriptedFaults(("before", "compare_and_swap", Crash()))).compare_and_swap(path, token, b"2")
    assert store.read_versioned(path) == (b"1", token)
    assert store.compare_and_swap(path, token, b"2")


def test_faults_see_each_operation_once_when_nothing_fails(backend):
    faults = ScriptedFaults()
    store, path = backend.store(faults), backend.path("ds", "x")
    store.create_only(path, b"x")
    store.read(path)
    store.stat(path)
    store.delete(path)
    assert faults.calls == [(when, op) for op in ("create_only", "read", "stat", "delete")
                            for when in ("before", "after")]


# ---------------------------------------------------------------------------------------------------
# GCS: retries and the preconditions under them


@pytest.mark.parametrize("error", [
    api_exceptions.TooManyRequests("429"), api_exceptions.InternalServerError("500"),
    api_exceptions.BadGateway("502"), api_exceptions.ServiceUnavailable("503"),
    api_exceptions.GatewayTimeout("504"), ConnectionResetError(104, "Connection reset by peer"),
    requests.exceptions.ConnectionError("connection aborted"),
], ids=["429", "500", "502", "503", "504", "reset", "requests-connection"])
def test_transient_failures_are_retried(gcs, error):
    faults = ScriptedFaults(("before", "write", error))
    store, path = gcs.store(faults), gcs.path("ds", "x")
    store.write(path, b"x")
    assert faults.attempts("write") == 2
    assert store.read(path) == b"x"
    assert len(gcs.sleeps) == 1


@pytest.mark.parametrize("op", ["read", "read_versioned", "stat", "list", "delete"])
def test_reads_listings_and_deletes_retry_a_503(gcs, op):
    gcs.store().write(gcs.path("ds", "x"), b"x")
    faults = ScriptedFaults(("before", op, api_exceptions.ServiceUnavailable("503")))
    store = gcs.store(faults)
    getattr(store, op)(gcs.path("ds") if op == "list" else gcs.path("ds", "x"))
    assert faults.attempts(op) == 2


def test_a_retried_create_only_that_had_landed_is_not_a_lost_race(gcs):
    faults = ScriptedFaults(("after", "create_only", api_exceptions.ServiceUnavailable("response lost")))
    store, path = gcs.store(faults), gcs.path("ds", "versions", "1", ".claim")
    store.create_only(path, b"owner-a")
    assert faults.attempts("create_only") == 2
    assert store.read(path) == b"owner-a"
    with pytest.raises(AlreadyExists):
        gcs.store().create_only(path, b"owner-a")


def test_a_retried_create_only_that_meets_other_bytes_raises_already_exists(gcs):
    path = gcs.path("ds", "versions", "1", ".claim")
    faults = ScriptedFaults(("before", "create_only", api_exceptions.ServiceUnavailable("503"),
                             lambda: gcs.store().create_only(path, b"owner-b")))
    with pytest.raises(AlreadyExists):
        gcs.store(faults).create_only(path, b"owner-a")
    assert faults.attempts("create_only") == 2
    assert gcs.store().read(path) == b"owner-b"


def test_a_retried_compare_and_swap_that_had_landed_reports_success(gcs):
    store, path = gcs.store(), gcs.path("ds", "_latest")
    store.compare_and_swap(path, None, b"1")
    _, token = store.read_versioned(path)
    faults = ScriptedFaults(("after", "compare_and_swap", api_exceptions.BadGateway("response lost")))
    assert gcs.store(faults).compare_and_swap(path, token, b"2")
    assert faults.attempts("compare_and_swap") == 2
    assert store.read(path) == b"2"


def test_retries_are_bounded_and_back_off_with_jitter_under_a_growing_cap(gcs):
    faults = AlwaysUnavailable()
    store = GcsStore(faults=faults, sleep=gcs.sleeps.append, retry=RetryPolicy(tries=6, initial_delay_s=0.5,
                                                                                max_delay_s=3))
    with pytest.raises(StoreError, match="still failing after 6 tries"):
        store.create_only(gcs.path("ds", "x"), b"x")
    assert faults.attempts("create_only") == 6
    caps = [0.5, 1, 2, 3, 3]
    assert len(gcs.sleeps) == len(caps)
    assert all(0 <= slept <= cap for slept, cap in zip(gcs.sleeps, caps))
    assert not gcs.store().exists(gcs.path("ds", "x"))


def test_non_transient_http_errors_are_not_retried(gcs):
    faults = ScriptedFaults(("before", "write", api_exceptions.Forbidden("403 no access")))
    with pytest.raises(StoreError, match="403 no access"):
        gcs.store(faults).write(gcs.path("ds", "x"), b"x")
    assert faults.attempts("write") == 1
    assert gcs.sleeps == []


def test_a_missing_bucket_is_a_store_error(gcs_emulator):
    with pytest.raises(StoreError, match="write gs://no-such-bucket-here/x"):
        GcsStore().write("gs://no-such-bucket-here/x", b"x")


def test_a_gcs_store_pickles_without_its_clients(gcs):
    store, path = gcs.store(), gcs.path("ds", "x")
    store.write(path, b"x")
    assert pickle.loads(pickle.dumps(store)).read(path) == b"x"


def test_the_emulator_client_is_anonymous_with_a_project(gcs_emulator):
    client = stores.gcs_client()
    assert isinstance(client._credentials, AnonymousCredentials)
    assert client.project == "labelbeam-test"


# ---------------------------------------------------------------------------------------------------
# Local specifics, choosing a store, joining paths


def test_local_private_create_only_is_owner_only(tmp_path):
    path = tmp_path / "root" / ".labelbeam" / "pseudonym.key"
    LocalStore().create_only(str(path), b"secret", private=True)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path.parent).st_mode) & 0o077 == 0


def test_local_leftovers_of_a_killed_writer_are_invisible_and_block_nothing(tmp_path):
    folder = tmp_path / "ds" / "versions" / "1"
    folder.mkdir(parents=True)
    (folder / f".manifest.json.tmp-{'0' * 32}").write_bytes(b"partial")
    store = LocalStore()
    assert store.list(str(tmp_path)) == []
    store.create_only(str(folder / "manifest.json"), b"{}")
    assert store.list(str(tmp_path)) == [str(folder / "manifest.json")]


def test_local_delete_leaves_no_bookkeeping_files(tmp_path):
    store, path = LocalStore(), str(tmp_path / "ds" / "_latest")
    store.compare_and_swap(path, None, b"1")
    store.write(path, b"2")
    store.delete(path)
    assert os.listdir(tmp_path / "ds") == []


def test_file_uris_work_like_paths(tmp_path):
    root = f"file://{tmp_path}"
    store = store_for(root)
    store.create_only(join(root, "ds", "x"), b"x")
    assert (tmp_path / "ds" / "x").read_bytes() == b"x"
    assert store.list(root) == [f"file://{tmp_path}/ds/x"]


def test_store_for_chooses_by_scheme(tmp_path):
    assert type(store_for(str(tmp_path))) is LocalStore
    assert type(store_for(f"file://{tmp_path}")) is LocalStore
    assert type(store_for("gs://bucket/prefix")) is GcsStore


def test_store_for_rejects_other_schemes():
    with pytest.raises(StoreError, match=r"unsupported storage scheme s3:// .* use a local path, file:// or gs://"):
        store_for("s3://bucket/prefix")


def test_join_keeps_the_root_form():
    assert join("gs://b/prefix/", "ds", "/versions/", "1") == "gs://b/prefix/ds/versions/1"
    assert join("gs://b", "ds") == "gs://b/ds"
    assert join("file:///tmp/r", "ds") == "file:///tmp/r/ds"
    assert join("/tmp/r", "ds", "/x") == "/tmp/r/ds/x"


def test_retry_policy_rejects_no_tries():
    with pytest.raises(ValueError, match="tries=0"):
        RetryPolicy(tries=0)


# ---------------------------------------------------------------------------------------------------
# Beam's FileSystems on the emulator (gcsio with the session's dummy credentials: see conftest)


def test_beam_filesystems_create_open_and_match_gs_objects_on_the_emulator(gcs_emulator):
    root = f"gs://{gcs_emulator.new_bucket()}/beam"
    path = join(root, "labels", "part-0.bin")
    with FileSystems.create(path) as out:
        out.write(BINARY)
    with FileSystems.open(path) as stream:
        assert stream.read() == BINARY
    [result] = FileSystems.match([join(root, "labels", "*")])
    assert [(found.path, found.size_in_bytes) for found in result.metadata_list] == [(path, len(BINARY))]
    assert GcsStore().read(path) == BINARY
    GcsStore().create_only(join(root, "manifest.json"), b"{}")
    with FileSystems.open(join(root, "manifest.json")) as stream:
        assert stream.read() == b"{}"
