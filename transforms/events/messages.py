"""One Pub/Sub message payload -> a RawChunk for the shared parser, or a DeadLetter; and the inverse for Avro.

A payload that starts with Avro's single-object marker (0xC3 0x01) is Avro single-object encoded: the
marker, the 8-byte little-endian CRC-64-AVRO fingerprint of the writer schema, then the binary datum
(Avro spec, "Single-object encoding"). Any other payload is one JSON event: judging the JSON is the
parser's job, so malformed JSON becomes its MALFORMED_JSON dead letter, as in files. (0xC3 0x01 is not
valid UTF-8, so no JSON text starts with it.) One message holds one event, at offset 0.

Pure: no Beam. transforms/read_stream.py adapts it to PubsubMessages.
"""
from __future__ import annotations

import functools
import hashlib
import io
import json
import struct
from typing import Any

import fastavro

from labelbeam.schemas import registry
from labelbeam.transforms.events import dead_letters as dl
from labelbeam.transforms.events.raw_chunks import RawChunk, _without_logical_types

SINGLE_OBJECT_MAGIC = b"\xc3\x01"
FINGERPRINT_BYTES = 8
SINGLE_OBJECT_HEADER_BYTES = len(SINGLE_OBJECT_MAGIC) + FINGERPRINT_BYTES
PUBSUB_SCHEME = "pubsub://"
# A message that starts with one is read as a file that starts with one is (see event_files.py).
UTF8_BOM = b"\xef\xbb\xbf"
# What fastavro raises for bytes that do not decode as the writer schema (truncated, wrong union or
# enum index, bad UTF-8, absurd lengths).
_DATUM_DECODE_ERRORS = (EOFError, ValueError, IndexError, KeyError, OverflowError, struct.error)


def message_source(subscription: str, message_id: str | None, data: bytes) -> str:
    """Where a message came from, for dead letters and provenance: pubsub://<subscription>#<message id>.

    A message without an id (never from Pub/Sub itself) is named by the sha256 of its payload instead,
    so the name stays deterministic.
    """
    fragment = message_id or "sha256:" + hashlib.sha256(data).hexdigest()
    return f"{PUBSUB_SCHEME}{subscription}#{fragment}"


def decode_message(data: bytes, source: str) -> RawChunk | dl.DeadLetter:
    """A RawChunk of the message's one event, or a DeadLetter keeping `data` whole; never raises for bad bytes.

    - JSON: RawChunk(raw_format="json", offsets=[0], payloads=[data]) (a leading UTF-8 BOM dropped).
    - Avro single-object: the fingerprint resolves through the schema registry, the datum decodes
      under that event schema (timestamps stay the wire's integers, as in Avro files): RawChunk(
      raw_format="avro", records=[record], writer_schema=the registry's schema JSON, shared: do not mutate).
      An unknown fingerprint is UNKNOWN_SCHEMA_VERSION; a truncated header, a datum that does not
      decode, or bytes left after it are SCHEMA_MISMATCH.
    """
    if not data.startswith(SINGLE_OBJECT_MAGIC):
        payload = data[len(UTF8_BOM):] if data.startswith(UTF8_BOM) else data
        return RawChunk(source, "json", [0], [payload])
    if len(data) < SINGLE_OBJECT_HEADER_BYTES:
        return _avro_dead_letter(data, source, dl.SCHEMA_MISMATCH, None,
                                 f"single-object header: {len(data)} bytes, needs {SINGLE_OBJECT_HEADER_BYTES}")
    fingerprint = data[len(SINGLE_OBJECT_MAGIC):SINGLE_OBJECT_HEADER_BYTES]
    resolved = _event_schema(fingerprint)
    if resolved is None:
        return _avro_dead_letter(data, source, dl.UNKNOWN_SCHEMA_VERSION, None,
                                 f"writer schema fingerprint {fingerprint.hex()} (CRC-64-AVRO, little-endian) is "
                                 f"not one of event schema versions {list(registry.EVENT_SCHEMA_VERSIONS)}")
    version, writer_schema, plain_schema = resolved
    datum = io.BytesIO(data)
    datum.seek(SINGLE_OBJECT_HEADER_BYTES)
    try:
        record = fastavro.schemaless_reader(datum, plain_schema, None)
    except _DATUM_DECODE_ERRORS as err:
        return _avro_dead_letter(data, source, dl.SCHEMA_MISMATCH, version,
                                 f"datum does not decode as event schema v{version} ({_describe(err)})")
    trailing = len(data) - datum.tell()
    if trailing:
        return _avro_dead_letter(data, source, dl.SCHEMA_MISMATCH, version,
                                 f"{trailing} bytes after the datum of event schema v{version}")
    return RawChunk(source, "avro", [0], [b""], [record], writer_schema)


def single_object_encode(record: dict[str, Any], schema: dict[str, Any]) -> bytes:
    """The record in Avro single-object encoding under `schema` (raw JSON or parsed): marker, fingerprint, datum.

    Timestamps may be wire integers or datetimes. Raises as fastavro does for a record the schema rejects.
    """
    parsed = _parsed_schema(json.dumps(schema, sort_keys=True))
    datum = io.BytesIO()
    datum.write(SINGLE_OBJECT_MAGIC)
    datum.write(bytes.fromhex(registry.schema_fingerprint(parsed)))
    fastavro.schemaless_writer(datum, parsed, record)
    return datum.getvalue()


def _describe(err: Exception) -> str:
    """"EOFError" or "UnicodeDecodeError: 'utf-8' codec ...": fastavro's EOFError has no message."""
    return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__


def _avro_dead_letter(data: bytes, source: str, reason: str, version: int | None, detail: str) -> dl.DeadLetter:
    return dl.DeadLetter(reason, detail, data, "avro", version, source, 0)


@functools.lru_cache(maxsize=64)
def _event_schema(fingerprint: bytes) -> tuple[int, dict[str, Any], dict[str, Any]] | None:
    """(version, raw schema JSON, schema parsed for reading with logical types stripped), or None.

    Cached: chunks of one version share the raw schema dict, as the chunks of one Avro file do.
    """
    resolved = registry.schema_by_fingerprint(fingerprint)
    if resolved is None:
        return None
    version, writer_schema = resolved
    return version, writer_schema, fastavro.parse_schema(_without_logical_types(writer_schema), _write_hint=False)


@functools.lru_cache(maxsize=16)
def _parsed_schema(schema_json: str) -> dict[str, Any]:
    return fastavro.parse_schema(json.loads(schema_json), _write_hint=False)
