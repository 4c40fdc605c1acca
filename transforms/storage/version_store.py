"""Where versions live, and the atomic operations publishing needs, on any Store (local disk or gs://).

ROOT/<dataset>/versions/<N>/...      N claimed create-only by `.claim`, exists iff manifest.json exists;
                                     each table in a folder of its own (labels/, labels_avro/, ...)
ROOT/<dataset>/quarantine/<N>/...    dead letters of build N with their raw bytes, never inside a version
ROOT/<dataset>/_latest               {"version": N}, changed only by compare-and-swap
ROOT/.labelbeam/pseudonym.key        the root's pseudonym key (private) when LABELBEAM_PSEUDONYM_KEY is unset

Only create-only writes and compare-and-swap change shared state, so the protocol holds on local disk
and on object stores with preconditions alike (stores.py maps them to GCS ifGenerationMatch).
"""
from __future__ import annotations

import json
import re
import secrets
import shutil
from typing import Any

from labelbeam.transforms.storage.stores import AlreadyExists, LocalStore, StoreError, join, store_for

MANIFEST = "manifest.json"
CLAIM = ".claim"
CANDIDATE = ".candidate.json"  # the manifest a pipeline proposes; the launcher publishes or refuses it
LATEST = "_latest"
VERSIONS = "versions"
QUARANTINE = "quarantine"
# ROOT/<dataset>/publishing/<digest>: the version that publishes one (inputs, params, code), so two
# identical builds that overlap end with one version and one "up to date".
PUBLISHING = "publishing"
ROOT_KEY_FILE = ".labelbeam/pseudonym.key"
# Table folders of a version: each holds one table's shards and nothing else.
LABELS_TABLE = "labels"
LABELS_AVRO_TABLE = "labels_avro"
ANNOTATORS_TABLE = "annotators"
PREFERENCES_TABLE = "preferences"
ITEM_AGREEMENT_TABLE = "item_agreement"
_NUMBER = re.compile(r"[1-9][0-9]*")

__all__ = ["AlreadyExists", "StoreError"]  # re-exported: callers catch version_store.StoreError


class BrokenManifest(StoreError):
    """A version's manifest.json exists but is not a JSON object (empty, truncated, not UTF-8 JSON)."""


def dataset_root(root: str, dataset: str) -> str:
    return join(root, dataset)


def version_dir(root: str, dataset: str, version: int) -> str:
    return join(root, dataset, VERSIONS, str(version))


def quarantine_dir(root: str, dataset: str, version: int) -> str:
    """Where build `version` keeps its dead letters (raw bytes included): beside the version, not in it."""
    return join(root, dataset, QUARANTINE, str(version))


def create_only(path: str, data: bytes, private: bool = False) -> None:
    """Write `data` at `path`, whole, unless something is there already (then AlreadyExists)."""
    store_for(path).create_only(path, data, private=private)


def read_bytes(path: str) -> bytes | None:
    return store_for(path).read(path)


def compare_and_swap(path: str, expected: bytes | None, new: bytes) -> bool:
    """Replace the content at `path` with `new` iff it currently equals `expected` (None: absent)."""
    store = store_for(path)
    current, token = store.read_versioned(path)
    if current != expected:
        return False
    return store.compare_and_swap(path, token, new)


def _numbered_folders(store, folder: str) -> dict[int, set[str]]:
    """{N: names of the objects under folder/N/, relative to it} for every numbered subfolder."""
    found: dict[int, set[str]] = {}
    prefix = folder.rstrip("/") + "/"
    for path in store.list(folder):
        number, _, relative = path[len(prefix):].partition("/")
        if _NUMBER.fullmatch(number) and relative:
            found.setdefault(int(number), set()).add(relative)
    return found


def version_numbers(root: str, dataset: str, published_only: bool = True) -> list[int]:
    """Versions under ROOT/<dataset>/versions, ascending; claimed-but-unpublished ones if asked."""
    folder = join(root, dataset, VERSIONS)
    versions = _numbered_folders(store_for(folder), folder)
    return sorted(n for n, names in versions.items() if not published_only or MANIFEST in names)

def _quarantined_numbers(root: str, dataset: str) -> list[int]:
    folder = join(root, dataset, QUARANTINE)
    return sorted(_numbered_folders(store_for(folder), folder))


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
            create_only(join(version_dir(root, dataset, candidate), CLAIM), owner.encode())
            return candidate
        except AlreadyExists:
            candidate += 1


def read_manifest(root: str, dataset: str, version: int) -> dict[str, Any] | None:
    """The version's manifest, None if it has none; BrokenManifest if the file is not a JSON object."""
    path = join(version_dir(root, dataset, version), MANIFEST)
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
    return read_bytes(join(version_dir(root, dataset, version), CANDIDATE))


def publish_candidate(root: str, dataset: str, version: int, data: bytes) -> None:
    """Publish `version`: its manifest.json, created atomically and only if absent, then drop the candidate.

    A manifest already there with the same bytes is this build's own, written before a crash or by a
    retry: fine. Different bytes raise AlreadyExists.
    """
    directory = version_dir(root, dataset, version)
    path = join(directory, MANIFEST)
    try:
        create_only(path, data)
    except AlreadyExists:
        if read_bytes(path) != data:
            raise
    store_for(directory).delete(join(directory, CANDIDATE))


def reserve_publication(root: str, dataset: str, digest: str, version: int) -> int | None:
    """Record that `version` publishes the build `digest` (create-only). None if it now does; else the
    version that already holds the reservation."""
    path = join(root, dataset, PUBLISHING, digest)
    try:
        create_only(path, str(version).encode())
        return None
    except AlreadyExists:
        holder = int(read_bytes(path) or b"0")
        return None if holder == version else holder


def take_over_publication(root: str, dataset: str, digest: str, holder: int, version: int) -> bool:
    """Move the reservation of `digest` from `holder` (which never published) to `version`; False if
    another build moved it first."""
    return compare_and_swap(join(root, dataset, PUBLISHING, digest), str(holder).encode(), str(version).encode())


def release_claim(root: str, dataset: str, version: int) -> bool:
    """Give up a claimed version that has no manifest: remove its objects (`.claim` and partial files).

    True if it was removed. A version with a manifest is published and stays; an absent one is a no-op.
    For a build that stops before publishing (failure, Ctrl-C); its quarantined dead letters stay.
    """
    directory = version_dir(root, dataset, version)
    store = store_for(directory)
    objects = store.list(directory)
    if not objects or join(directory, MANIFEST) in objects:
        return False
    for path in objects:
        store.delete(path)
    if isinstance(store, LocalStore):  # object stores have no folders to leave behind
        shutil.rmtree(directory.removeprefix("file://"), ignore_errors=True)
    return True


def release_claims_of(root: str, dataset: str, owner: str) -> list[int]:
    """release_claim every unpublished version whose claim names `owner` (a build stopped before it
    learnt the number it claimed); returns their numbers."""
    published = set(version_numbers(root, dataset))
    unpublished = sorted(set(version_numbers(root, dataset, published_only=False)) - published)
    owned = [version for version in unpublished
             if read_bytes(join(version_dir(root, dataset, version), CLAIM)) == owner.encode()]
    return [version for version in owned if release_claim(root, dataset, version)]


def read_latest(root: str, dataset: str) -> int | None:
    """The version _latest points at; without a pointer, the highest published version."""
    data = read_bytes(join(root, dataset, LATEST))
    if data is not None:
        return pointed_version(data)
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
    return join(latest_version_dir(root, dataset), table)


def pointed_version(data: bytes) -> int:
    """The version number in a _latest pointer's bytes; StoreError if they are not a pointer."""
    try:
        return int(json.loads(data)["version"])
    except (ValueError, KeyError, TypeError) as err:
        raise StoreError(f"_latest is not a version pointer ({err}); `labelbeam promote` repairs it") from None


def latest_pointer(version: int, chosen: bool = False) -> bytes:
    """_latest's bytes. `chosen`: a person pointed it here (rollback/promote), so a build that only finds
    itself up to date leaves it; a newly published version still moves it forward."""
    pointer = {"version": version, **({"chosen": True} if chosen else {})}
    return json.dumps(pointer, sort_keys=True).encode() + b"\n"


def advance_latest(root: str, dataset: str, version: int, published: bool = True) -> bool:
    """Point _latest at `version` unless it points at a newer one, by compare-and-swap (a concurrent
    build's move is never undone, so _latest never moves backwards). With published=False (an
    up-to-date build catching up after a crash) a pointer a person chose is left alone. True if it now
    points at `version`."""
    path = join(root, dataset, LATEST)
    store = store_for(path)
    while True:
        current, token = store.read_versioned(path)
        if current is not None:
            pointed = pointed_version(current)
            if pointed >= version or (not published and json.loads(current).get("chosen")):
                return pointed == version
        if store.compare_and_swap(path, token, latest_pointer(version)):
            return True


def set_latest(root: str, dataset: str, version: int, check=None) -> int | None:
    """Point _latest at the complete `version`, forwards or backwards (rollback, promote), by
    compare-and-swap; the previous version it pointed at (None without a pointer). `check(previous)`
    may raise to refuse the move; it runs again if a concurrent writer changed the pointer meanwhile."""
    if read_manifest(root, dataset, version) is None:
        raise StoreError(f"dataset {dataset!r} has no complete version {version} under {root}")
    path = join(root, dataset, LATEST)
    store = store_for(path)
    while True:
        current, token = store.read_versioned(path)
        try:
            previous = pointed_version(current) if current is not None else None
        except StoreError:
            previous = None  # an unreadable pointer: moving it repairs it
        if check is not None:
            check(previous)
        if store.compare_and_swap(path, token, latest_pointer(version, chosen=True)):
            return previous


def encode_manifest(manifest: dict[str, Any]) -> bytes:
    return json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False).encode("utf-8") + b"\n"


def read_root_pseudonym_key(root: str) -> bytes | None:
    """The root's pseudonym key, if one was made (see `root_pseudonym_key`)."""
    data = read_bytes(join(root, ROOT_KEY_FILE))
    return None if data is None else data.strip()


def root_pseudonym_key(root: str) -> bytes:
    """The root's pseudonym key, made once: 32 random bytes as 64 hex digits in ROOT/.labelbeam/pseudonym.key
    (private: mode 0600 locally, outside every dataset and version). Concurrent first builds agree: the
    first create wins.

    The key is the file's text, so `LABELBEAM_PSEUDONYM_KEY=$(cat ROOT/.labelbeam/pseudonym.key)` gives
    the same pseudonyms elsewhere.
    """
    existing = read_root_pseudonym_key(root)
    if existing:
        return existing
    try:
        create_only(join(root, ROOT_KEY_FILE), secrets.token_hex(32).encode("ascii") + b"\n", private=True)
    except AlreadyExists:
        pass
    return read_root_pseudonym_key(root)
