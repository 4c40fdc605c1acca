"""Reads event files (local or any Beam FileSystem, e.g. gs://) as raw chunks.

JSON Lines files are split into byte ranges so large files spread over workers; a line belongs to
the range its first byte falls in. Avro container files and compressed files are read whole.
"""
from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import NamedTuple

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from labelbeam.transforms.events.gc_pause import gc_paused
from labelbeam.transforms.events.raw_chunks import RawChunk, avro_datum, plain_avro_reader
from labelbeam.transforms.storage.inputs import InputFile

DEFAULT_RANGE_BYTES = 64 << 20
DEFAULT_CHUNK_EVENTS = 20_000


class ByteRange(NamedTuple):
    path: str
    raw_format: str
    start: int
    end: int  # exclusive; -1 means to the end of the file


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


def read_avro_records(byte_range: ByteRange, chunk_events: int = DEFAULT_CHUNK_EVENTS) -> Iterator[RawChunk]:
    """Records of an Avro container file under their writer schema; offset is the record index.

    Payloads are empty: a record's raw datum is re-encoded (exactly) only when a dead letter
    needs it, see `avro_datum`.
    """
    path = byte_range.path
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as stream:
        reader, writer_schema = plain_avro_reader(stream)
        first = 0
        while True:
            with gc_paused():  # decoding builds many dicts, no cycles
                records = list(itertools.islice(reader, chunk_events))
            if not records:
                return
            offsets = list(range(first, first + len(records)))
            yield RawChunk(path, "avro", offsets, [b""] * len(records), records, writer_schema)
            first += len(records)


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


