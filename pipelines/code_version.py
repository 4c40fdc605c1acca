"""The code version recorded in manifests: package version + a digest of the installed sources.

Any change to a module or schema changes it, so an edited pipeline never reuses a stale version.
"""
from __future__ import annotations

import functools
import hashlib
from importlib import metadata, resources

_PACKAGES = ("labelbeam.pipelines", "labelbeam.schemas", "labelbeam.transforms")


@functools.cache
def code_version() -> str:
    digest = hashlib.sha256()
    for package in _PACKAGES:
        root = resources.files(package)
        for entry in sorted(root.iterdir(), key=lambda e: e.name):
            if entry.name.endswith((".py", ".avsc")):
                digest.update(f"{package}/{entry.name}\0".encode())
                digest.update(entry.read_bytes())
    try:
        version = metadata.version("labelbeam")
    except metadata.PackageNotFoundError:
        version = "0+unknown"
    return f"{version}+{digest.hexdigest()[:12]}"
