"""Dead letters: inputs that did not become valid events, with the reason and where they came from."""
from __future__ import annotations

from typing import NamedTuple

# Tags of the multi-output transforms.
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

REASONS = (MALFORMED_JSON, UNKNOWN_SCHEMA_VERSION, SCHEMA_MISMATCH, MISSING_FIELD, UNKNOWN_LABEL,
           BAD_TIMESTAMP, EVENT_ID_CONFLICT, DATASET_MISMATCH)


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

    def sort_key(self) -> tuple:
        return (self.source, self.offset, self.reason, self.raw, self.detail)
