"""One object-store seam for a dataset ROOT, with a local and a Google Cloud Storage implementation.

    store = store_for(root)                      # LocalStore for paths and file://, GcsStore for gs://
    store.create_only(join(root, "ds", "versions", "3", "manifest.json"), data)
    data, token = store.read_versioned(join(root, "ds", "_latest"))
    store.compare_and_swap(join(root, "ds", "_latest"), token, new_data)

Paths are whole paths or URIs (root joined by the caller with `join`); a store keeps no root.
Publishing needs two atomic primitives and both stores give them:

- `create_only`: the object is written whole or not at all, and only if it is absent. Local: a
  temporary file in the same directory, fsynced, then hard-linked to the name (the link fails if the
  name exists). GCS: an upload with `ifGenerationMatch=0`.
- `compare_and_swap`: replaced only if it still is what `read_versioned` saw. Local: under an
  exclusive lock file, the content's digest is compared and a fsynced temporary file renamed over it.
  GCS: an upload with `ifGenerationMatch=<generation read>` (0 when it was absent).

GcsStore retries transient failures (429, 408, 5xx, dropped connections) with bounded exponential
backoff and full jitter. A retried create-only or compare-and-swap may meet its own earlier attempt,
which landed although its response was lost: a 412 after a retry reads the object back, and identical
bytes count as this call's success, so a retry never fails or duplicates a version. (A concurrent
writer of byte-identical content is indistinguishable from such an attempt, and counts as success too.)

Faults: every store calls `faults.before(op, path)` just before the step that makes `op` take effect
(the upload or request; locally the link or rename, after the temporary file is written) and
`faults.after(op, path)` just after it. Raising in `before` is a crash or failure before the step;
raising in `after` is one after it landed, its response lost. Tests use this seam; production passes none.

google-cloud-storage (the `gcp` extra) is imported when the first gs:// client is built, not at import:
`labelbeam --help` stays fast and local use does not need it.
"""
from __future__ import annotations

import abc
import contextlib
import datetime as dt
import fcntl
import hashlib
import os
import random
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from stat import S_ISREG
from typing import Any, Protocol

GCS_SCHEME = "gs://"
FILE_SCHEME = "file://"
# The GCP project an emulator client claims (any name works there) unless GOOGLE_CLOUD_PROJECT is set.
EMULATOR_PROJECT = "labelbeam-emulator"

# LocalStore's own files beside an object: `.<name>.tmp-<hex>` (a crash can leave one) and
# `.<name>.lock` (write, compare-and-swap, delete). `list` never returns them.
_LOCAL_INTERNAL_NAME = re.compile(r"\..+\.(tmp-[0-9a-f]{32}|lock)")


class StoreError(RuntimeError):
    """The store cannot do what was asked (unsupported scheme, lost race, unreadable file)."""


class AlreadyExists(StoreError):
    """create_only found something at the path already."""


@dataclass(frozen=True)
class ObjectInfo:
    """What a store knows about one object without reading it.

    `updated` is timezone-aware UTC (GCS: last write; local: mtime). `generation`, `md5` and `crc32c`
    are GCS's (the digests base64, as GCS reports them); None where the store has no such thing.
    """
    size: int
    updated: dt.datetime
    generation: int | None = None
    md5: str | None = None
    crc32c: str | None = None


class Faults(Protocol):
    """Fault-injection seam: called around the step that makes an operation take effect (see module doc).

    `op` is the Store method's name ("read", "read_versioned", "write", "create_only",
    "compare_and_swap", "list", "delete", "stat"); `path` its argument.
    """

    def before(self, op: str, path: str) -> None: ...

    def after(self, op: str, path: str) -> None: ...


class NoFaults:
    """The production `Faults`: does nothing."""

    def before(self, op: str, path: str) -> None:
        pass

    def after(self, op: str, path: str) -> None:
        pass


# Crash-injection seam for end-to-end fault tests: "before|after:<op>:<path substring>" makes the process
# die (os._exit, no cleanup) at that step of any store operation or table-file write, as a killed build would.
CRASH_AT_VARIABLE = "LABELBEAM_CRASH_AT"
CRASH_EXIT_CODE = 97


class CrashAt:
    """Faults that end the process at one step: `when` ("before" | "after"), `op`, and a path substring."""

    def __init__(self, spec: str):
        self.when, self.op, self.path_part = spec.split(":", 2)
        if self.when not in ("before", "after"):
            raise ValueError(f"{CRASH_AT_VARIABLE}={spec!r}: expected before|after:<op>:<path substring>")

    def _maybe_crash(self, when: str, op: str, path: str) -> None:
        if when == self.when and op == self.op and self.path_part in path:
            os._exit(CRASH_EXIT_CODE)

    def before(self, op: str, path: str) -> None:
        self._maybe_crash("before", op, path)

    def after(self, op: str, path: str) -> None:
        self._maybe_crash("after", op, path)


def environment_faults() -> Faults:
    """CrashAt from LABELBEAM_CRASH_AT when set (fault tests), else NoFaults (production)."""
    spec = os.environ.get(CRASH_AT_VARIABLE)
    return CrashAt(spec) if spec else NoFaults()


@dataclass(frozen=True)
class RetryPolicy:
    """At most `tries` attempts; before attempt k+1 wait uniform(0, min(max_delay_s, initial_delay_s * 2**(k-1)))."""
    tries: int = 6
    initial_delay_s: float = 0.25
    max_delay_s: float = 8.0

    def __post_init__(self):
        if self.tries < 1:
            raise ValueError(f"RetryPolicy.tries={self.tries} must be at least 1")
        if self.initial_delay_s < 0 or self.max_delay_s < self.initial_delay_s:
            raise ValueError(f"RetryPolicy delays {self.initial_delay_s}..{self.max_delay_s} s must satisfy "
                             "0 <= initial_delay_s <= max_delay_s")

    def delay_cap_s(self, failed_attempts: int) -> float:
        """The most to wait after `failed_attempts` failures (before the next attempt)."""
        return min(self.max_delay_s, self.initial_delay_s * 2 ** (failed_attempts - 1))


def join(root: str, *parts: str) -> str:
    """`root` and path parts joined with "/" for URIs (gs://, file://) and os.path.join for local paths.

    Parts are relative: their leading and trailing slashes are dropped, so none replaces `root`. ".." is
    not resolved: callers check names (dataset names, table folders) before joining them.
    """
    if "://" not in root:
        return os.path.join(root, *(part.strip("/") for part in parts))
    pieces = [root.rstrip("/")] + [part.strip("/") for part in parts if part.strip("/")]
    return "/".join(pieces)


def store_for(path: str, *, faults: Faults | None = None, retry: RetryPolicy | None = None) -> Store:
    """The store for `path`'s scheme: GcsStore for gs://, LocalStore for file:// and plain paths.

    StoreError for any other scheme. `faults` and `retry` are for tests (retry only applies to GCS).
    """
    if path.startswith(GCS_SCHEME):
        return GcsStore(faults=faults, retry=retry or RetryPolicy())
    if "://" not in path or path.startswith(FILE_SCHEME):
        return LocalStore(faults=faults)
    scheme = path.split("://", 1)[0]
    raise StoreError(f"unsupported storage scheme {scheme}:// in {path}; use a local path, file:// or gs://")


class Store(abc.ABC):
    """Objects under full paths; the operations publishing needs, each atomic for one object.

    Readers never see a partly written object. Missing objects read as None; deleting one is a no-op.
    Stores are safe to share between threads and pickle without their connections (for Beam DoFns).
    """

    def __init__(self, faults: Faults | None = None):
        self._faults = faults or environment_faults()

    @contextlib.contextmanager
    def _step(self, op: str, path: str) -> Iterator[None]:
        self._faults.before(op, path)
        yield
        self._faults.after(op, path)

    def read(self, path: str) -> bytes | None:
        """The object's bytes, None if absent."""
        return self.read_versioned(path)[0]

    @abc.abstractmethod
    def read_versioned(self, path: str) -> tuple[bytes | None, Any]:
        """(bytes, token) for `compare_and_swap`; (None, None) if absent. The token is opaque."""

    @abc.abstractmethod
    def write(self, path: str, data: bytes) -> None:
        """Replace the object (or create it) with `data`, atomically: readers see old or new bytes."""

    @abc.abstractmethod
    def create_only(self, path: str, data: bytes, *, private: bool = False) -> None:
        """Create the object with `data` unless one exists (then AlreadyExists); whole or not at all.

        `private`: readable by the owner only (local: mode 0600 and new directories 0700; on GCS the
        bucket's IAM decides).
        """

    @abc.abstractmethod
    def compare_and_swap(self, path: str, token: Any, data: bytes) -> bool:
        """Replace the object with `data` iff it is unchanged since `read_versioned` returned `token`
        (token None: iff it is still absent). True if this call's bytes are there now, False if another
        write came first: read again and decide again.
        """

    @abc.abstractmethod
    def list(self, prefix: str) -> list[str]:
        """Every object below the folder `prefix`, recursively, as full paths, sorted. [] if none."""

    @abc.abstractmethod
    def delete(self, path: str) -> None:
        """Remove the object; an absent one is fine."""

    @abc.abstractmethod
    def stat(self, path: str) -> ObjectInfo | None:
        """The object's ObjectInfo, None if absent."""

    def exists(self, path: str) -> bool:
        return self.stat(path) is not None


# --------------------------------------------------------------------------------------------------
# Local filesystems


def _local_path(path: str) -> str:
    if path.startswith(FILE_SCHEME):
        return path[len(FILE_SCHEME):]
    if "://" in path:
        raise StoreError(f"LocalStore cannot use {path}; use store_for(path)")
    return path


def _fsync_directory(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_directories(directory: str, mode: int = 0o777) -> None:
    """Create `directory` and its missing parents, fsyncing each new one's parent so the names survive a crash."""
    missing = []
    while directory and not os.path.isdir(directory):
        missing.append(directory)
        parent = os.path.dirname(directory)
        if parent == directory:
            break
        directory = parent
    for created in reversed(missing):
        try:
            os.mkdir(created, mode)
        except FileExistsError:
            if not os.path.isdir(created):
                raise
        _fsync_directory(os.path.dirname(created) or ".")


def _content_token(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@contextlib.contextmanager
def _object_lock(local: str) -> Iterator[str]:
    """Hold the exclusive lock of one local object (flock on `.<name>.lock`, between processes and threads).

    Yields the lock file's path. Whoever holds the lock may unlink that file: a waiter that then gets the
    flock finds the path gone or a new file there, and starts over on the current one.
    """
    directory, name = os.path.split(local)
    lock_path = os.path.join(directory, f".{name}.lock")
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                current = os.stat(lock_path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                current = False
            if current:
                yield lock_path
                return
        finally:
            os.close(fd)  # releases the flock


class LocalStore(Store):
    """Local paths and file:// URIs, with the durability of fsync: a completed call survives a crash.

    write, compare_and_swap and delete of one object take its lock file, so none of them slips between
    a compare_and_swap's check and its rename (as GCS's generation preconditions guarantee there). The
    lock file stays beside a live object (hidden from `list`); delete removes it.
    """

    def read(self, path: str) -> bytes | None:
        with self._step("read", path):
            return self._read(_local_path(path))

    def read_versioned(self, path: str) -> tuple[bytes | None, str | None]:
        """The token is the content's SHA-256: compare_and_swap compares content, not write history."""
        with self._step("read_versioned", path):
            data = self._read(_local_path(path))
        return data, None if data is None else _content_token(data)

    @staticmethod
    def _read(local: str) -> bytes | None:
        try:
            with open(local, "rb") as stream:
                return stream.read()
        except FileNotFoundError:
            return None

    def _write_temporary(self, local: str, data: bytes, mode: int = 0o644) -> str:
        directory, name = os.path.split(local)
        temporary = os.path.join(directory, f".{name}.tmp-{uuid.uuid4().hex}")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
        except BaseException:
            os.unlink(temporary)
            raise
        return temporary

    def write(self, path: str, data: bytes) -> None:
        local = _local_path(path)
        _make_directories(os.path.dirname(local))
        temporary = self._write_temporary(local, data)
        try:
            with _object_lock(local), self._step("write", path):
                os.replace(temporary, local)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
            raise
        _fsync_directory(os.path.dirname(local) or ".")

    def create_only(self, path: str, data: bytes, *, private: bool = False) -> None:
        local = _local_path(path)
        directory = os.path.dirname(local) or "."
        _make_directories(directory, 0o700 if private else 0o777)
        temporary = self._write_temporary(local, data, 0o600 if private else 0o644)
        try:
            with self._step("create_only", path):
                try:
                    os.link(temporary, local)
                except FileExistsError:
                    raise AlreadyExists(f"{path} already exists") from None
        finally:
            os.unlink(temporary)
        _fsync_directory(directory)

    def compare_and_swap(self, path: str, token: str | None, data: bytes) -> bool:
        local = _local_path(path)
        directory = os.path.dirname(local)
        _make_directories(directory)
        with _object_lock(local):
            current = self._read(local)
            if (None if current is None else _content_token(current)) != token:
                return False
            temporary = self._write_temporary(local, data)
            try:
                with self._step("compare_and_swap", path):
                    os.replace(temporary, local)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temporary)
                raise
            _fsync_directory(directory or ".")
            return True

    def list(self, prefix: str) -> list[str]:
        with self._step("list", prefix):
            local = _local_path(prefix)
            found = []
            for directory, _, names in os.walk(local):
                relative = os.path.relpath(directory, local)
                for name in names:
                    if not _LOCAL_INTERNAL_NAME.fullmatch(name):
                        found.append(name if relative == "." else os.path.join(relative, name))
        return sorted(join(prefix, *relative.split(os.sep)) for relative in found)

    def leftovers(self, prefix: str) -> list[tuple[str, ObjectInfo]]:
        """The store's own files below `prefix` that nothing needs any more: temporary files a killed
        writer left (`.<name>.tmp-<hex>`) and lock files of absent objects. `list` hides them; gc
        removes them (remove_leftover) once older than its grace period."""
        found = []
        for directory, _, names in os.walk(_local_path(prefix)):
            for name in names:
                match = _LOCAL_INTERNAL_NAME.fullmatch(name)
                if match is None:
                    continue
                local = os.path.join(directory, name)
                if match.group(1) == "lock" and os.path.exists(os.path.join(directory, name[1:-len(".lock")])):
                    continue  # the lock of a live object
                with contextlib.suppress(FileNotFoundError):
                    status = os.stat(local)
                    found.append((local, ObjectInfo(size=status.st_size, updated=dt.datetime.fromtimestamp(
                        status.st_mtime_ns / 1e9, tz=dt.timezone.utc))))
        return sorted(found)

    def remove_leftover(self, path: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(_local_path(path))

    def delete(self, path: str) -> None:
        local = _local_path(path)
        directory = os.path.dirname(local) or "."
        if not os.path.isdir(directory):
            return
        with _object_lock(local) as lock_path:
            with self._step("delete", path), contextlib.suppress(FileNotFoundError):
                os.unlink(local)
            os.unlink(lock_path)
        _fsync_directory(directory)

    def stat(self, path: str) -> ObjectInfo | None:
        with self._step("stat", path):
            try:
                status = os.stat(_local_path(path))
            except (FileNotFoundError, NotADirectoryError):
                return None
        if not S_ISREG(status.st_mode):
            return None
        return ObjectInfo(size=status.st_size,
                          updated=dt.datetime.fromtimestamp(status.st_mtime_ns / 1e9, tz=dt.timezone.utc))


# --------------------------------------------------------------------------------------------------
# Google Cloud Storage

_TRANSIENT_STATUS_CODES = frozenset({408, 429, 500, 502, 503, 504})


def gcs_client(project: str | None = None) -> Any:
    """A google.cloud.storage.Client: anonymous against STORAGE_EMULATOR_HOST, else Application Default
    Credentials.

    Against an emulator the client gets AnonymousCredentials and a project (GOOGLE_CLOUD_PROJECT or
    EMULATOR_PROJECT), so google-auth never probes for GCE metadata (a ~20 s stall off GCP).
    """
    try:
        from google.cloud import storage  # the gcp extra; imported here to keep local use light
    except ImportError:
        raise StoreError("gs:// paths need google-cloud-storage: pip install 'labelbeam[gcp]'") from None

    if os.environ.get("STORAGE_EMULATOR_HOST"):
        from google.auth.credentials import AnonymousCredentials

        return storage.Client(project=project or os.environ.get("GOOGLE_CLOUD_PROJECT") or EMULATOR_PROJECT,
                              credentials=AnonymousCredentials())
    return storage.Client(project=project)


def _split_gcs(path: str) -> tuple[str, str]:
    bucket, _, key = path[len(GCS_SCHEME):].partition("/")
    if not path.startswith(GCS_SCHEME) or not bucket:
        raise StoreError(f"{path} is not a gs://bucket/... path")
    return bucket, key


def is_transient(err: BaseException) -> bool:
    """True for failures worth retrying: HTTP 408/429/5xx, dropped or timed-out connections."""
    import http.client

    import requests
    import urllib3
    from google.api_core import exceptions as api_exceptions
    from google.auth import exceptions as auth_exceptions

    if isinstance(err, api_exceptions.GoogleAPICallError):
        return err.code in _TRANSIENT_STATUS_CODES
    if isinstance(err, auth_exceptions.TransportError):  # a token refresh that could not connect
        return True
    if isinstance(err, (ConnectionError, TimeoutError, http.client.HTTPException,
                        requests.exceptions.ConnectionError, requests.exceptions.ChunkedEncodingError,
                        requests.exceptions.Timeout, urllib3.exceptions.ProtocolError,
                        urllib3.exceptions.TimeoutError, urllib3.exceptions.PoolError)):
        return True
    # google-resumable-media's InvalidResponse carries the HTTP response of a failed upload or download.
    status_code = getattr(getattr(err, "response", None), "status_code", None)
    return status_code in _TRANSIENT_STATUS_CODES


class GcsStore(Store):
    """gs://bucket/key objects through google-cloud-storage, with generation preconditions.

    create_only is an upload with ifGenerationMatch=0; compare_and_swap's token is the generation
    read_versioned saw, and its upload carries ifGenerationMatch=<token> (0 for absent). A 412 is the
    lost race (AlreadyExists / False) unless a retried call finds its own bytes there (module doc).
    Transient failures are retried per `retry`; other HTTP errors, and transient ones that outlast
    the retries, raise StoreError. Each thread gets its own client (from `client_factory`).
    """

    def __init__(self, *, retry: RetryPolicy | None = None, faults: Faults | None = None,
                 client_factory: Callable[[], Any] = gcs_client, sleep: Callable[[float], None] = time.sleep):
        super().__init__(faults)
        self._retry = retry or RetryPolicy()
        self._client_factory = client_factory
        self._sleep = sleep
        self._jitter = random.Random()
        self._clients = threading.local()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        del state["_clients"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._clients = threading.local()

    def _client(self) -> Any:
        client = getattr(self._clients, "client", None)
        if client is None:
            client = self._clients.client = self._client_factory()
        return client

    def _blob(self, path: str) -> Any:
        bucket, key = _split_gcs(path)
        if not key or key.endswith("/"):
            raise StoreError(f"{path} names a folder, not an object")
        return self._client().bucket(bucket).blob(key)

    def _retrying(self, op: str, path: str, attempt: Callable[[int], Any]) -> Any:
        """attempt(1), attempt(2), ... until one returns, a failure is not transient, or tries run out."""
        from google.api_core import exceptions as api_exceptions

        for number in range(1, self._retry.tries + 1):
            try:
                return attempt(number)
            except Exception as err:
                if not is_transient(err):
                    if isinstance(err, api_exceptions.GoogleAPICallError):
                        raise StoreError(f"{op} {path}: {err}") from err
                    raise
                if number == self._retry.tries:
                    raise StoreError(f"{op} {path}: still failing after {number} tries: {err}") from err
            self._sleep(self._jitter.uniform(0, self._retry.delay_cap_s(number)))
        raise AssertionError("unreachable")

    def _download(self, op: str, path: str) -> tuple[bytes | None, int | None]:
        from google.api_core import exceptions as api_exceptions

        def attempt(_: int) -> tuple[bytes | None, int | None]:
            blob = self._blob(path)
            try:
                with self._step(op, path):
                    data = blob.download_as_bytes(retry=None)
            except api_exceptions.NotFound:
                return None, None
            return data, int(blob.generation)

        return self._retrying(op, path, attempt)

    def read(self, path: str) -> bytes | None:
        return self._download("read", path)[0]

    def read_versioned(self, path: str) -> tuple[bytes | None, int | None]:
        """The token is the object's generation."""
        return self._download("read_versioned", path)

    def write(self, path: str, data: bytes) -> None:
        def attempt(_: int) -> None:
            blob = self._blob(path)
            with self._step("write", path):
                blob.upload_from_string(data, retry=None)

        self._retrying("write", path, attempt)

    def _conditional_upload(self, op: str, path: str, data: bytes, generation: int) -> bool:
        """Upload iff the object's generation is `generation` (0: absent). False on 412, unless a retried
        attempt finds `data` there: its earlier attempt landed."""
        from google.api_core import exceptions as api_exceptions

        def attempt(number: int) -> bool:
            blob = self._blob(path)
            try:
                with self._step(op, path):
                    blob.upload_from_string(data, if_generation_match=generation, retry=None)
            except api_exceptions.PreconditionFailed:
                return number > 1 and self.read(path) == data
            return True

        return self._retrying(op, path, attempt)

    def create_only(self, path: str, data: bytes, *, private: bool = False) -> None:
        if not self._conditional_upload("create_only", path, data, 0):
            raise AlreadyExists(f"{path} already exists")

    def compare_and_swap(self, path: str, token: int | None, data: bytes) -> bool:
        return self._conditional_upload("compare_and_swap", path, data, 0 if token is None else int(token))

    def list(self, prefix: str) -> list[str]:
        bucket, key = _split_gcs(prefix)
        key_prefix = key.strip("/") + "/" if key.strip("/") else ""

        def attempt(_: int) -> list[str]:
            with self._step("list", prefix):
                names = [blob.name for blob in self._client().list_blobs(bucket, prefix=key_prefix, retry=None)]
            return sorted(f"{GCS_SCHEME}{bucket}/{name}" for name in names if not name.endswith("/"))

        return self._retrying("list", prefix, attempt)

    def delete(self, path: str) -> None:
        from google.api_core import exceptions as api_exceptions

        def attempt(_: int) -> None:
            blob = self._blob(path)
            with contextlib.suppress(api_exceptions.NotFound), self._step("delete", path):
                blob.delete(retry=None)

        self._retrying("delete", path, attempt)

    def stat(self, path: str) -> ObjectInfo | None:
        bucket, key = _split_gcs(path)

        def attempt(_: int) -> ObjectInfo | None:
            with self._step("stat", path):
                blob = self._client().bucket(bucket).get_blob(key, retry=None)
            if blob is None:
                return None
            return ObjectInfo(size=int(blob.size), updated=blob.updated, generation=int(blob.generation),
                              md5=blob.md5_hash, crc32c=blob.crc32c)

        return self._retrying("stat", path, attempt) if key and not key.endswith("/") else None
