"""Finds event files (local or any Beam FileSystem, e.g. gs://) and reads them as raw chunks.

JSON Lines files are split into byte ranges so large files spread over workers; a line belongs to
the range its first byte falls in. Avro container files and compressed files are read whole.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import itertools
import json
import os
from typing import Iterator, NamedTuple

import apache_beam as beam
import fastavro
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from labelbeam.transforms.arrow_coder import PickledCoder
from labelbeam.transforms.gc_pause import gc_paused

AVRO_MAGIC = b"Obj\x01"
EVENT_FILE_SUFFIXES = (".jsonl", ".json", ".ndjson", ".avro", ".jsonl.gz", ".json.gz", ".ndjson.gz")
DEFAULT_RANGE_BYTES = 64 << 20
DEFAULT_CHUNK_EVENTS = 20_000


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


class ByteRange(NamedTuple):
    path: str
    raw_format: str
    start: int
    end: int  # exclusive; -1 means to the end of the file


class RawChunk(NamedTuple):
    """Consecutive raw events of one source: JSON lines, or decoded Avro records.

    Avro payloads are empty placeholders; see `avro_datum` for a record's raw bytes.
    """
    source: str
    raw_format: str
    offsets: list[int]
    payloads: list[bytes]
    records: list[dict] | None = None
    writer_schema: dict | None = None

    def __len__(self) -> int:
        return len(self.offsets)


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


def plan_ranges(files: list[InputFile], range_bytes: int = DEFAULT_RANGE_BYTES) -> list[ByteRange]:
    ranges = []
    for f in files:
        splittable = f.raw_format == "json" and CompressionTypes.detect_compression_type(f.path) == \
            CompressionTypes.UNCOMPRESSED
        if not splittable or f.size_bytes <= range_bytes:
            ranges.append(ByteRange(f.path, f.raw_format, 0, -1))
            continue
        for start in range(0, f.size_bytes, range_bytes):
            ranges.append(ByteRange(f.path, f.raw_format, start, min(start + range_bytes, f.size_bytes)))
    return ranges


def read_json_lines(byte_range: ByteRange, chunk_events: int = DEFAULT_CHUNK_EVENTS) -> Iterator[RawChunk]:
    """Lines starting inside the range, in chunks; blank lines are not events and are skipped.

    The range is read as one block and split in C, which is several times faster than iterating
    lines in Python.
    """
    path, _, start, end = byte_range
    with FileSystems.open(path) as stream:
        position = 0
        if start > 0:
            # The line that straddles `start` belongs to the previous range.
            stream.seek(start - 1)
            position = start - 1 + len(stream.readline())
        if end < 0:
            block = stream.read()
        elif position >= end:
            return
        else:
            block = stream.read(end - position)
            if block and not block.endswith(b"\n"):
                block += stream.readline()  # finish the last line, which started inside the range
    lines = block.split(b"\n")
    if lines and not lines[-1]:
        lines.pop()
    offsets = list(itertools.accumulate(map((1).__add__, map(len, lines)), initial=position))[:-1]
    # The smallest line starts above b" " only if no line is empty or starts with whitespace.
    if lines and (min(lines)[:1] <= b" " or b"\r" in block):
        kept = [(offset, line.rstrip(b"\r")) for offset, line in zip(offsets, lines) if line.strip()]
        offsets, lines = [offset for offset, _ in kept], [line for _, line in kept]
    for first in range(0, len(lines), chunk_events):
        yield RawChunk(path, "json", offsets[first:first + chunk_events], lines[first:first + chunk_events])


def _without_logical_types(schema):
    """The schema with every logicalType annotation removed, so values decode as their base type.

    Timestamps then stay the wire's integers: a value outside Python's datetime range becomes a
    BAD_TIMESTAMP dead letter instead of an OverflowError that fails the whole file.
    """
    if isinstance(schema, dict):
        return {key: _without_logical_types(value) for key, value in schema.items() if key != "logicalType"}
    if isinstance(schema, list):
        return [_without_logical_types(branch) for branch in schema]
    return schema


class _PrefixedStream(io.RawIOBase):
    """Reads `prefix` first, then the rest of `stream`: an Avro file under a replacement header."""

    def __init__(self, prefix: bytes, stream):
        super().__init__()
        self._prefix = memoryview(prefix)
        self._stream = stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self._prefix:
            n = min(len(buffer), len(self._prefix))
            buffer[:n] = self._prefix[:n]
            self._prefix = self._prefix[n:]
            return n
        data = self._stream.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)


def _plain_avro_reader(stream) -> tuple[fastavro.reader, dict]:
    """(reader, writer schema): the file's records, decoded with logical types stripped.

    Logical types do not change the binary encoding, so the file's blocks are read as they are,
    under a rewritten header, by fastavro's C reader. Timestamps stay the wire's integers.
    """
    original = fastavro.reader(stream)
    header_end = stream.tell()
    writer_schema = original.writer_schema
    plain_schema = _without_logical_types(writer_schema)
    header = io.BytesIO()
    fastavro.writer(header, plain_schema, [], codec=original.codec,
                    sync_marker=original._header["sync"])  # same marker: the blocks end with it
    prefixed = io.BufferedReader(_PrefixedStream(header.getvalue(), stream))  # a container of no blocks: a header
    stream.seek(header_end)
    return fastavro.reader(prefixed), writer_schema


def read_avro_records(byte_range: ByteRange, chunk_events: int = DEFAULT_CHUNK_EVENTS) -> Iterator[RawChunk]:
    """Records of an Avro container file under their writer schema; offset is the record index.

    Payloads are empty: a record's raw datum is re-encoded (exactly) only when a dead letter
    needs it, see `avro_datum`.
    """
    path = byte_range.path
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as stream:
        reader, writer_schema = _plain_avro_reader(stream)
        first = 0
        while True:
            with gc_paused():  # decoding builds many dicts, no cycles
                records = list(itertools.islice(reader, chunk_events))
            if not records:
                return
            offsets = list(range(first, first + len(records)))
            yield RawChunk(path, "avro", offsets, [b""] * len(records), records, writer_schema)
            first += len(records)


@functools.lru_cache(maxsize=16)
def _parsed_writer_schema(schema_json: str) -> dict:
    return fastavro.parse_schema(json.loads(schema_json))


def avro_datum(writer_schema: dict, record: dict) -> bytes:
    """The record's Avro binary datum, as it was in the file (the encoding of given values is canonical).

    Timestamps may be wire integers or datetimes: fastavro's logical writers accept both.
    """
    datum = io.BytesIO()
    fastavro.schemaless_writer(datum, _parsed_writer_schema(json.dumps(writer_schema, sort_keys=True)), record)
    return datum.getvalue()


def fetch_raw_events(source: str, raw_format: str, offsets: list[int]) -> dict[int, bytes]:
    """Raw bytes of the events at `offsets` of one source (line offsets for JSON, record indexes for Avro).

    For the rare dead letters decided after the shuffle, which does not carry raw bytes.
    """
    wanted = set(offsets)
    found: dict[int, bytes] = {}
    if raw_format == "avro":
        for chunk in read_avro_records(ByteRange(source, raw_format, 0, -1)):
            found.update((o, avro_datum(chunk.writer_schema, r)) for o, r in zip(chunk.offsets, chunk.records)
                         if o in wanted)
        return found
    with FileSystems.open(source) as stream:
        for offset in sorted(wanted):
            stream.seek(offset)
            found[offset] = stream.readline().rstrip(b"\r\n")
    return found


class RawChunkCoder(PickledCoder):
    """Estimates a chunk's size from its payload bytes (or record count for Avro), not by encoding it."""

    def estimate_size(self, value: RawChunk) -> int:
        return sum(map(len, value.payloads)) if value.raw_format == "json" else 200 * len(value.offsets)


beam.coders.registry.register_coder(RawChunk, RawChunkCoder)


@beam.typehints.with_output_types(RawChunk)
class ReadRangeFn(beam.DoFn):
    def __init__(self, chunk_events: int):
        super().__init__()
        self._chunk_events = chunk_events

    def process(self, byte_range: ByteRange) -> Iterator[RawChunk]:
        read = read_avro_records if byte_range.raw_format == "avro" else read_json_lines
        yield from read(byte_range, self._chunk_events)


class ReadEvents(beam.PTransform):
    """Input files -> RawChunks of at most `chunk_events` events each, spread over workers."""

    def __init__(self, files: list[InputFile], range_bytes: int = DEFAULT_RANGE_BYTES,
                 chunk_events: int = DEFAULT_CHUNK_EVENTS):
        super().__init__()
        if not files:
            raise ValueError("ReadEvents needs at least one input file")
        if range_bytes < 1 or chunk_events < 1:
            raise ValueError(f"range_bytes and chunk_events must be positive, got {range_bytes} and {chunk_events}")
        self._ranges = plan_ranges(files, range_bytes)
        self._chunk_events = chunk_events

    def expand(self, pbegin):
        # Create reshuffles its elements (reshuffle=True), so the ranges already spread over workers.
        return (pbegin
                | "PlanRanges" >> beam.Create(self._ranges, reshuffle=True)
                | "ReadRanges" >> beam.ParDo(ReadRangeFn(self._chunk_events)))
