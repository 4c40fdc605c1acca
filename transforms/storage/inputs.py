"""Finds event files (local or any Beam FileSystem, e.g. gs://) and describes them for the manifest."""
from __future__ import annotations

import dataclasses
import hashlib
import os

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

AVRO_MAGIC = b"Obj\x01"


EVENT_FILE_SUFFIXES = (".jsonl", ".json", ".ndjson", ".avro", ".jsonl.gz", ".json.gz", ".ndjson.gz")


class InputError(ValueError):
    """An --input that names nothing readable."""


@dataclasses.dataclass(frozen=True)
class InputFile:
    path: str
    size_bytes: int
    raw_format: str  # "json" | "avro"
    sha256: str

    def manifest_entry(self) -> dict:
        return {"path": self.path, "bytes": self.size_bytes, "sha256": self.sha256, "format": self.raw_format}


def _is_dir(pattern: str) -> bool:
    if "://" in pattern:
        return pattern.endswith("/")
    return os.path.isdir(pattern)


def match_inputs(patterns: list[str]) -> list[InputFile]:
    """Every event file named by the patterns (a file, a glob, or a directory searched recursively).

    Sorted by path and de-duplicated. Raises InputError for a pattern that matches no file.
    """
    paths: dict[str, int] = {}
    for pattern in map(_canonical, patterns):
        if _is_dir(pattern):
            glob = FileSystems.join(pattern, "**")
            found = [m for m in _match(glob) if m.path.endswith(EVENT_FILE_SUFFIXES)]
            if not found:
                raise InputError(f"directory {pattern} holds no event files ({', '.join(EVENT_FILE_SUFFIXES)})")
        else:
            found = _match(pattern)
            if not found:
                raise InputError(f"no file matches {pattern}")
        for metadata in found:
            paths[_canonical(metadata.path)] = metadata.size_in_bytes
    return [_describe(path, size) for path, size in sorted(paths.items())]


def _canonical(path: str) -> str:
    """One spelling per file or pattern: ./a.jsonl, a.jsonl and /abs/a.jsonl must not be read three times."""
    return path if "://" in path else os.path.abspath(path)


def _match(pattern: str):
    try:
        return FileSystems.match([pattern])[0].metadata_list
    except Exception as err:  # Beam raises BeamIOError for missing paths and bad schemes alike.
        if "No files found" in str(err) or "not found" in str(err).lower():
            return []
        raise InputError(f"cannot list {pattern}: {err}") from err


def _describe(path: str, size_bytes: int) -> InputFile:
    digest = hashlib.sha256()
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as stream:
        head = stream.read(1 << 20)
        raw_format = "avro" if head.startswith(AVRO_MAGIC) else "json"
        while head:
            digest.update(head)
            head = stream.read(1 << 20)
    return InputFile(path, size_bytes, raw_format, digest.hexdigest())
