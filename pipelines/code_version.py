"""The code version recorded in manifests: package version + a digest of the installed sources.

Any change to a module or schema, at any depth of the packages, changes it, so an edited pipeline
never reuses a stale version.
"""
from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterator
from importlib import metadata, resources
from importlib.resources.abc import Traversable

PACKAGES = ("labelbeam.pipelines", "labelbeam.schemas", "labelbeam.transforms")
SOURCE_SUFFIXES = (".py", ".avsc")


def source_files(root: Traversable, prefix: str) -> Iterator[tuple[str, Traversable]]:
    """(relative name, file) of every source file below root, depth first, in name order."""
    for entry in sorted(root.iterdir(), key=lambda e: e.name):
        name = f"{prefix}/{entry.name}"
        if entry.is_dir():
            if entry.name != "__pycache__":
                yield from source_files(entry, name)
        elif entry.name.endswith(SOURCE_SUFFIXES):
            yield name, entry


@functools.cache
def code_version() -> str:
    digest = hashlib.sha256()
    for package in PACKAGES:
        for name, entry in source_files(resources.files(package), package):
            digest.update(f"{name}\0".encode())
            digest.update(entry.read_bytes())
    try:
        version = metadata.version("labelbeam")
    except metadata.PackageNotFoundError:
        version = "0+unknown"
    return f"{version}+{digest.hexdigest()[:12]}"
