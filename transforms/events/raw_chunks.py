"""Raw events as read from a source, before parsing: RawChunk, and exact Avro datum round trips."""
from __future__ import annotations

import functools
import io
import json
from typing import NamedTuple

import fastavro

SYNC_SIZE = 16  # bytes of an Avro container file's sync marker


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


def plain_avro_reader(stream) -> tuple[fastavro.reader, dict]:
    """(reader, writer schema): the file's records, decoded with logical types stripped.

    Logical types do not change the binary encoding, so the file's blocks are read as they are,
    under a rewritten header, by fastavro's C reader. Timestamps stay the wire's integers.
    """
    original = fastavro.reader(stream)
    header_end = stream.tell()
    # An Avro container header ends with its 16-byte sync marker (Avro spec, "Object Container
    # Files"); read it back from the stream rather than from fastavro's private header dict.
    stream.seek(header_end - SYNC_SIZE)
    sync_marker = stream.read(SYNC_SIZE)
    writer_schema = original.writer_schema
    plain_schema = _without_logical_types(writer_schema)
    header = io.BytesIO()
    fastavro.writer(header, plain_schema, [], codec=original.codec,
                    sync_marker=sync_marker)  # same marker: the blocks end with it
    prefixed = io.BufferedReader(_PrefixedStream(header.getvalue(), stream))  # a container of no blocks: a header
    stream.seek(header_end)
    return fastavro.reader(prefixed), writer_schema


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
