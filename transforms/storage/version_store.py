"""Where versions live and the three atomic operations publishing needs.

ROOT/<dataset>/versions/<N>/...      N claimed create-only by `.claim`, exists iff manifest.json exists;
                                     each table in a folder of its own (labels/, labels_avro/, ...)
ROOT/<dataset>/quarantine/<N>/...    dead letters of build N with their raw bytes, never inside a version
ROOT/<dataset>/_latest               {"version": N}, changed only by compare-and-swap
ROOT/.labelbeam/pseudonym.key        the root's pseudonym key (mode 0600) when LABELBEAM_PSEUDONYM_KEY is unset

Only create-only writes and compare-and-swap are used, so the same protocol maps onto object stores
with preconditions (GCS ifGenerationMatch=0 / ifGenerationMatch=<generation>). This module
implements it for local filesystems.
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import secrets
import shutil
import uuid
from collections.abc import Callable
from typing import Any, BinaryIO

MANIFEST = "manifest.json"
CLAIM = ".claim"
CANDIDATE = ".candidate.json"  # the manifest a pipeline proposes; the launcher publishes or refuses it
LATEST = "_latest"
QUARANTINE = "quarantine"
ROOT_KEY_FILE = ".labelbeam/pseudonym.key"
# Table folders of a version: each holds one table's shards and nothing else.
LABELS_TABLE = "labels"
LABELS_AVRO_TABLE = "labels_avro"
ANNOTATORS_TABLE = "annotators"
PREFERENCES_TABLE = "preferences"


class StoreError(RuntimeError):
    """The store cannot do what was asked (unsupported scheme, lost race, unreadable file)."""


class AlreadyExists(StoreError):
    pass


class BrokenManifest(StoreError):
    """A version's manifest.json exists but is not a JSON object (empty, truncated, not UTF-8 JSON)."""


def _local(path: str) -> str:
    if "://" in path and not path.startswith("file://"):
        scheme = path.split("://", 1)[0]
        raise StoreError(f"publishing to {scheme}:// is not supported yet; use a local --output ROOT")
    return path[len("file://"):] if path.startswith("file://") else path


def dataset_root(root: str, dataset: str) -> str:
    return os.path.join(_local(root), dataset)


def version_dir(root: str, dataset: str, version: int) -> str:
    return os.path.join(dataset_root(root, dataset), "versions", str(version))


def quarantine_dir(root: str, dataset: str, version: int) -> str:
    """Where build `version` keeps its dead letters (raw bytes included): beside the version, not in it."""
    return os.path.join(dataset_root(root, dataset), QUARANTINE, str(version))


def _write_whole(stream: BinaryIO, data: bytes) -> None:
    stream.write(data)


def _fsync_directory(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def create_only(path: str, data: bytes, mode: int = 0o644,
                write: Callable[[BinaryIO, bytes], None] = _write_whole) -> None:
    """Write `data` at `path` unless something is there already (then AlreadyExists).

    Atomic: the bytes go to a temporary file in the same directory, are fsynced, and are then linked
    to `path`, which fails if `path` exists; so `path` is either absent or complete, even if the
    process dies midway. `write(stream, data)` writes the bytes (a seam for fault-injection tests).
    A crash can leave a `.<name>.tmp-*` file behind; it never blocks a later write.
    """
    path = _local(path)
    directory, name = os.path.split(path)
    os.makedirs(directory, exist_ok=True)
    temporary = os.path.join(directory, f".{name}.tmp-{os.getpid()}-{uuid.uuid4().hex}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as out:
            write(out, data)
            out.flush()
            os.fsync(out.fileno())
        try:
            os.link(temporary, path)
        except FileExistsError:
            raise AlreadyExists(f"{path} already exists") from None
    finally:
        os.unlink(temporary)
    _fsync_directory(directory)


def read_bytes(path: str) -> bytes | None:
    try:
        with open(_local(path), "rb") as stream:
            return stream.read()
    except FileNotFoundError:
        return None


def compare_and_swap(path: str, expected: bytes | None, new: bytes) -> bool:
    """Replace the content at `path` with `new` iff it currently equals `expected` (None: absent)."""
    path = _local(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".lock", "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if read_bytes(path) != expected:
            return False
        temporary = f"{path}.tmp-{os.getpid()}"
        with open(temporary, "wb") as out:
            out.write(new)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
        return True


def version_numbers(root: str, dataset: str, published_only: bool = True) -> list[int]:
    """Versions under ROOT/<dataset>/versions, ascending; claimed-but-unpublished ones if asked."""
    versions_dir = os.path.join(dataset_root(root, dataset), "versions")
    try:
        names = os.listdir(versions_dir)
    except FileNotFoundError:
        return []
    numbers = sorted(int(n) for n in names if re.fullmatch(r"[1-9][0-9]*", n))
    if not published_only:
        return numbers
    return [n for n in numbers if os.path.exists(os.path.join(versions_dir, str(n), MANIFEST))]


def _quarantined_numbers(root: str, dataset: str) -> list[int]:
    try:
        names = os.listdir(os.path.join(dataset_root(root, dataset), QUARANTINE))
    except FileNotFoundError:
        return []
    return [int(n) for n in names if re.fullmatch(r"[1-9][0-9]*", n)]


def newest_complete_version(root: str, dataset: str) -> int | None:
    """The highest version with a manifest, wherever _latest points (it may lag after a crash)."""
    published = version_numbers(root, dataset)
    return published[-1] if published else None


def claim_next_version(root: str, dataset: str, owner: str) -> int:
    """Atomically reserve the next version number: one past every version ever claimed, and past every
    build that quarantined dead letters (a refused build releases its claim but keeps those)."""
    candidate = max(version_numbers(root, dataset, published_only=False) + _quarantined_numbers(root, dataset),
                    default=0) + 1
    while True:
        try:
            create_only(os.path.join(version_dir(root, dataset, candidate), CLAIM), owner.encode())
            return candidate
        except AlreadyExists:
            candidate += 1


def read_manifest(root: str, dataset: str, version: int) -> dict[str, Any] | None:
    """The version's manifest, None if it has none; BrokenManifest if the file is not a JSON object."""
    path = os.path.join(version_dir(root, dataset, version), MANIFEST)
    data = read_bytes(path)
    if data is None:
        return None
    if not data.strip():
        raise BrokenManifest(f"{path} is empty")
    try:
        manifest = json.loads(data)
    except ValueError as err:  # json.JSONDecodeError and UnicodeDecodeError
        raise BrokenManifest(f"{path} is not JSON ({err})") from None
    if not isinstance(manifest, dict):
        raise BrokenManifest(f"{path} is not a JSON object")
    return manifest


def read_candidate(root: str, dataset: str, version: int) -> bytes | None:
    """The candidate manifest a build's pipeline wrote for `version`, as bytes (None if it wrote none)."""
    return read_bytes(os.path.join(version_dir(root, dataset, version), CANDIDATE))


def publish_candidate(root: str, dataset: str, version: int, data: bytes) -> None:
    """Publish `version`: its manifest.json, created atomically and only if absent, then drop the candidate.

    A manifest already there with the same bytes is this build's own, written before a crash or by a
    retry: fine. Different bytes raise AlreadyExists.
    """
    directory = version_dir(root, dataset, version)
    path = os.path.join(directory, MANIFEST)
    try:
        create_only(path, data)
    except AlreadyExists:
        if read_bytes(path) != data:
            raise
    try:
        os.unlink(os.path.join(_local(directory), CANDIDATE))
    except FileNotFoundError:
        pass


def release_claim(root: str, dataset: str, version: int) -> bool:
    """Give up a claimed version that has no manifest: remove its directory (`.claim` and partial files).

    True if it was removed. A version with a manifest is published and stays; an absent one is a no-op.
    For a build that stops before publishing (failure, Ctrl-C); its quarantined dead letters stay.
    """
    directory = _local(version_dir(root, dataset, version))
    if not os.path.isdir(directory) or os.path.exists(os.path.join(directory, MANIFEST)):
        return False
    shutil.rmtree(directory)
    return True


def read_latest(root: str, dataset: str) -> int | None:
    """The version _latest points at; without a pointer, the highest published version."""
    data = read_bytes(os.path.join(dataset_root(root, dataset), LATEST))
    if data is not None:
        return int(json.loads(data)["version"])
    published = version_numbers(root, dataset)
    return published[-1] if published else None


def latest_version_dir(root: str, dataset: str) -> str:
    """The directory of the dataset's latest published version (StoreError if there is none).

    Readers use this instead of parsing `_latest`: tables are folders below it (`latest_table_dir`).
    """
    version = read_latest(root, dataset)
    if version is None:
        raise StoreError(f"dataset {dataset!r} has no published version under {root}")
    return version_dir(root, dataset, version)


def latest_table_dir(root: str, dataset: str, table: str = LABELS_TABLE) -> str:
    """The folder of one table (labels, annotators, preferences, ...) of the latest version, e.g. for
    `pandas.read_parquet(latest_table_dir(root, "sample"))`: it holds that table's shards and nothing else."""
    return os.path.join(latest_version_dir(root, dataset), table)


def advance_latest(root: str, dataset: str, version: int) -> bool:
    """Point _latest at `version` unless it already points at a newer one. True if it now points there."""
    path = os.path.join(dataset_root(root, dataset), LATEST)
    while True:
        current = read_bytes(path)
        if current is not None and int(json.loads(current)["version"]) >= version:
            return int(json.loads(current)["version"]) == version
        new = json.dumps({"version": version}, sort_keys=True).encode() + b"\n"
        if compare_and_swap(path, current, new):
            return True


def encode_manifest(manifest: dict[str, Any]) -> bytes:
    return json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False).encode("utf-8") + b"\n"


def read_root_pseudonym_key(root: str) -> bytes | None:
    """The root's pseudonym key, if one was made (see `root_pseudonym_key`)."""
    data = read_bytes(os.path.join(_local(root), ROOT_KEY_FILE))
    return None if data is None else data.strip()


def root_pseudonym_key(root: str) -> bytes:
    """The root's pseudonym key, made once: 32 random bytes as 64 hex digits in ROOT/.labelbeam/pseudonym.key
    (mode 0600, outside every dataset and version). Concurrent first builds agree: the first link wins.

    The key is the file's text, so `LABELBEAM_PSEUDONYM_KEY=$(cat ROOT/.labelbeam/pseudonym.key)` gives
    the same pseudonyms elsewhere.
    """
    existing = read_root_pseudonym_key(root)
    if existing:
        return existing
    path = os.path.join(_local(root), ROOT_KEY_FILE)
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    try:
        create_only(path, secrets.token_hex(32).encode("ascii") + b"\n", mode=0o600)
    except AlreadyExists:
        pass
    return read_root_pseudonym_key(root)
