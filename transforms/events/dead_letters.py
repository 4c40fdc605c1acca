"""Dead letters: inputs that did not become valid events, with the reason and where they came from."""
from __future__ import annotations

from typing import NamedTuple

import pyarrow as pa

# Tags of the multi-output transforms. DEAD_LETTER elements are pa.RecordBatches of DEAD_LETTER_SCHEMA
# (one per parsed chunk): per-element dead letters would cost Beam a pickle of their type each.
VALID = "valid"
DEAD_LETTER = "dead_letter"
COUNTS = "counts"

MALFORMED_JSON = "MALFORMED_JSON"
UNKNOWN_SCHEMA_VERSION = "UNKNOWN_SCHEMA_VERSION"
SCHEMA_MISMATCH = "SCHEMA_MISMATCH"
MISSING_FIELD = "MISSING_FIELD"
UNKNOWN_LABEL = "UNKNOWN_LABEL"
BAD_TIMESTAMP = "BAD_TIMESTAMP"
EVENT_ID_CONFLICT = "EVENT_ID_CONFLICT"
# The event is well-formed but belongs to another dataset than the one being built.
DATASET_MISMATCH = "DATASET_MISMATCH"
# Streaming ingest only: the event's hour of the curated log had closed (the watermark passed its end plus
# the allowed lateness) before the event arrived. Dead-lettered, never dropped (transforms/ingest.py).
TOO_LATE = "TOO_LATE"

REASONS = (MALFORMED_JSON, UNKNOWN_SCHEMA_VERSION, SCHEMA_MISMATCH, MISSING_FIELD, UNKNOWN_LABEL,
           BAD_TIMESTAMP, EVENT_ID_CONFLICT, DATASET_MISMATCH, TOO_LATE)


class DeadLetter(NamedTuple):
    """One rejected input. Field names and order follow schemas/dead_letter.v1.avsc."""
    reason: str
    detail: str
    raw: bytes
    raw_format: str
    schema_version: int | None
    source: str
    offset: int
    event_id: str | None = None


DEAD_LETTER_SCHEMA = pa.schema([
    pa.field("reason", pa.string(), nullable=False),
    pa.field("detail", pa.string(), nullable=False),
    pa.field("raw", pa.binary(), nullable=False),
    pa.field("raw_format", pa.string(), nullable=False),
    pa.field("schema_version", pa.int32()),
    pa.field("source", pa.string(), nullable=False),
    pa.field("offset", pa.int64(), nullable=False),
    pa.field("event_id", pa.string()),
])
SORT_ORDER = [(name, "ascending") for name in ("source", "offset", "reason", "raw", "detail")]


def to_record_batch(letters: list[DeadLetter]) -> pa.RecordBatch:
    return pa.RecordBatch.from_pylist([letter._asdict() for letter in letters], schema=DEAD_LETTER_SCHEMA)


def from_record_batch(batch: pa.RecordBatch | pa.Table) -> list[DeadLetter]:
    return [DeadLetter(**row) for row in batch.to_pylist()]
