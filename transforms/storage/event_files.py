"""Reads event files (local or any Beam FileSystem, e.g. gs://) as raw chunks.

JSON Lines files are split into byte ranges so large files spread over workers; a line belongs to
the range its first byte falls in. Avro container files and compressed files are read whole.

A file that turns out truncated or corrupt while it is read raises CorruptInputError naming it: it is
never read in part. (match_inputs finds most such files before the pipeline starts.)
"""
from __future__ import annotations

import itertools
import lzma
import struct
import zlib
from collections.abc import Iterator
from typing import NamedTuple

import fastavro
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from labelbeam.transforms.events.gc_pause import gc_paused
from labelbeam.transforms.events.raw_chunks import RawChunk, avro_datum, plain_avro_reader
from labelbeam.transforms.storage.inputs import CorruptInputError, InputFile, iter_decompressed

DEFAULT_RANGE_BYTES = 64 << 20
DEFAULT_CHUNK_EVENTS = 20_000
# A UTF-8 byte order mark: some editors and Windows tools start text files with it. At file offset 0
# it is not part of the first line.
UTF8_BOM = b"\xef\xbb\xbf"
# What fastavro raises for bytes that are not a well-formed container file (bad header, truncated
# block, wrong sync marker, bytes that do not decode as the writer schema). MemoryError too: a damaged
# length prefix makes fastavro allocate that many bytes before it finds the file is shorter (found by
# the corrupted-file property in tests/events/test_validate_fuzz.py: a header's schema length).
_AVRO_DECODE_ERRORS = (EOFError, ValueError, IndexError, KeyError, OverflowError, struct.error, zlib.error,
                       lzma.LZMAError, fastavro.schema.SchemaParseException, MemoryError)


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

    A UTF-8 byte order mark at file offset 0 is not part of the first line (offsets stay file
    offsets). A compressed file is decompressed whole, to its end: CorruptInputError if it is
    truncated or corrupt. The range is read as one block and split in C, which is several times
    faster than iterating lines in Python.
    """
    path, _, start, end = byte_range
    compression = CompressionTypes.detect_compression_type(path)
    position = 0
    if compression != CompressionTypes.UNCOMPRESSED:
        if start != 0 or end >= 0:
            raise ValueError(f"{path}: a compressed file is read whole, not by byte range {start}..{end}")
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as stream:
            block = b"".join(iter_decompressed(stream.read, compression, path))
    else:
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as stream:
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
    if position == 0 and lines and lines[0].startswith(UTF8_BOM):
        lines[0] = lines[0][len(UTF8_BOM):]
    # The smallest line starts above b" " only if no line is empty or starts with whitespace.
    if lines and (min(lines)[:1] <= b" " or b"\r" in block):
        kept = [(offset, line.rstrip(b"\r")) for offset, line in zip(offsets, lines) if line.strip()]
        offsets, lines = [offset for offset, _ in kept], [line for _, line in kept]
    for first in range(0, len(lines), chunk_events):
        yield RawChunk(path, "json", offsets[first:first + chunk_events], lines[first:first + chunk_events])


def read_avro_records(byte_range: ByteRange, chunk_events: int = DEFAULT_CHUNK_EVENTS) -> Iterator[RawChunk]:
    """Records of an Avro container file under their writer schema; offset is the record index.

    Payloads are empty: a record's raw datum is re-encoded (exactly) only when a dead letter
    needs it, see `avro_datum`. Raises CorruptInputError, naming the file and the index of the
    first record that cannot be read, if the file is truncated or a block does not decode.
    """
    path = byte_range.path
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as stream:
        try:
            reader, writer_schema = plain_avro_reader(stream)
        except _AVRO_DECODE_ERRORS as err:
            raise CorruptInputError(path, f"its Avro header does not parse ({type(err).__name__}: {err})") from None
        first = 0
        while True:
            try:
                with gc_paused():  # decoding builds many dicts, no cycles
                    records = list(itertools.islice(reader, chunk_events))
            except _AVRO_DECODE_ERRORS as err:
                raise CorruptInputError(path, f"Avro record {_first_unreadable_record(path)} and after cannot be "
                                              f"read ({type(err).__name__}: {err})") from None
            if not records:
                return
            offsets = list(range(first, first + len(records)))
            yield RawChunk(path, "avro", offsets, [b""] * len(records), records, writer_schema)
            first += len(records)


def _first_unreadable_record(path: str) -> int:
    """Index of the first record of an Avro file that fails to decode (the file is decoded again)."""
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as stream:
        reader, _ = plain_avro_reader(stream)
        index = 0
        try:
            for _ in reader:
                index += 1
        except _AVRO_DECODE_ERRORS:
            pass
    return index


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
            line = stream.readline().rstrip(b"\r\n")
            found[offset] = line[len(UTF8_BOM):] if offset == 0 and line.startswith(UTF8_BOM) else line
    return found


