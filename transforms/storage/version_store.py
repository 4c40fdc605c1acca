"""Where versions live and the three atomic operations publishing needs.

ROOT/<dataset>/versions/<N>/...      N claimed create-only by `.claim`, exists iff manifest.json exists
ROOT/<dataset>/_latest               {"version": N}, changed only by compare-and-swap

Only create-only writes and compare-and-swap are used, so the same protocol maps onto object stores
with preconditions (GCS ifGenerationMatch=0 / ifGenerationMatch=<generation>). This module
implements it for local filesystems.
"""
from __future__ import annotations

import fcntl
import json
import os
import re
from typing import Any

MANIFEST = "manifest.json"
CLAIM = ".claim"
LATEST = "_latest"


class StoreError(RuntimeError):
    """The store cannot do what was asked (unsupported scheme, lost race, unreadable file)."""


class AlreadyExists(StoreError):
    pass


def _local(path: str) -> str:
    if "://" in path and not path.startswith("file://"):
        scheme = path.split("://", 1)[0]
        raise StoreError(f"publishing to {scheme}:// is not supported yet; use a local --output ROOT")
    return path[len("file://"):] if path.startswith("file://") else path


def dataset_root(root: str, dataset: str) -> str:
    return os.path.join(_local(root), dataset)


def version_dir(root: str, dataset: str, version: int) -> str:
    return os.path.join(dataset_root(root, dataset), "versions", str(version))


def create_only(path: str, data: bytes) -> None:
    """Write `data` at `path` unless something is there already (then AlreadyExists)."""
    path = _local(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        raise AlreadyExists(f"{path} already exists") from None
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        os.unlink(path)
        raise


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


def claim_next_version(root: str, dataset: str, owner: str) -> int:
    """Atomically reserve the next version number: one past every version ever claimed."""
    candidate = max(version_numbers(root, dataset, published_only=False), default=0) + 1
    while True:
        try:
            create_only(os.path.join(version_dir(root, dataset, candidate), CLAIM), owner.encode())
            return candidate
        except AlreadyExists:
            candidate += 1


def read_manifest(root: str, dataset: str, version: int) -> dict[str, Any] | None:
    data = read_bytes(os.path.join(version_dir(root, dataset, version), MANIFEST))
    return None if data is None else json.loads(data)


def read_latest(root: str, dataset: str) -> int | None:
    """The version _latest points at; without a pointer, the highest published version."""
    data = read_bytes(os.path.join(dataset_root(root, dataset), LATEST))
    if data is not None:
        return int(json.loads(data)["version"])
    published = version_numbers(root, dataset)
    return published[-1] if published else None


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
