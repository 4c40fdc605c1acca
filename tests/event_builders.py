"""Small builders of events for tests: JSON lines, RawChunks and Arrow event tables."""
from __future__ import annotations

import orjson
import pyarrow as pa

from labelbeam.transforms.events.parser import EventParser, ValidationRules
from labelbeam.transforms.events.raw_chunks import RawChunk
from labelbeam.transforms.events.record_batches import EventColumns
from labelbeam.transforms.storage.event_files import ByteRange, read_json_lines

NOW_MS = 1_780_000_000_000
T0 = 1_770_000_000_000
DATASET = "pets"
RULES = ValidationRules.at(DATASET, NOW_MS)


PETS_EVENT_TIME_MS = 1_699_996_400_000  # 2023-11-14T21:13:20Z
DROP = object()  # an override that removes the field


def v1_event(**overrides) -> dict:
    """A valid v1 wire event of dataset "pets" (no schema_version); DROP removes a field."""
    obj = {"event_id": "e1", "dataset": "pets", "item_id": "item-1", "annotator_id": "ann-1", "label": "cat",
           "action": "UPSERT", "event_time": PETS_EVENT_TIME_MS}
    obj.update(overrides)
    return {k: v for k, v in obj.items() if v is not DROP}


def event(event_id: str, item: str = "i1", annotator: str = "a1", label: str | None = "cat",
          action: str = "UPSERT", time_ms: int = T0, **v2_fields) -> dict:
    """A wire event; any v2 field (revision=..., metadata=...) makes it schema v2."""
    record = {"event_id": event_id, "dataset": DATASET, "item_id": item, "annotator_id": annotator,
              "label": label, "action": action, "event_time": time_ms}
    if v2_fields:
        record.update(schema_version=2, **v2_fields)
    return record


def lines(events: list[dict]) -> list[bytes]:
    return [orjson.dumps(e) for e in events]


def chunk(events: list[dict], source: str = "events.jsonl") -> RawChunk:
    payloads = lines(events)
    return RawChunk(source, "json", list(range(len(payloads))), payloads)


def event_table(events: list[dict], source: str = "events.jsonl", rules: ValidationRules = RULES) -> pa.Table:
    """Parse events through the real parser; every one must be valid. Offsets are list positions."""
    columns, dead = EventParser(rules).parse_chunk(chunk(events, source))
    assert not dead, dead
    return pa.Table.from_batches([columns.to_record_batch()])


def write_jsonl(path, events: list[dict]) -> str:
    with open(path, "wb") as out:
        out.write(b"".join(line + b"\n" for line in lines(events)))
    return str(path)


def file_table(path: str, rules: ValidationRules = RULES) -> pa.Table:
    """Read and parse a JSON Lines file with the real reader and parser; every event must be valid."""
    parser = EventParser(rules)
    batches = []
    for raw in read_json_lines(ByteRange(str(path), "json", 0, -1)):
        columns, dead = parser.parse_chunk(raw)
        assert not dead, dead
        batches.append(columns.to_record_batch())
    return pa.Table.from_batches(batches)


def event_batches(events: list[dict], source: str = "events.jsonl", rules: ValidationRules = RULES):
    return event_table(events, source, rules).to_batches()


__all__ = ["PETS_EVENT_TIME_MS", "DROP", "v1_event", "EventColumns", "NOW_MS", "T0", "DATASET", "RULES", "event", "lines", "chunk", "event_table",
           "event_batches", "write_jsonl", "file_table"]
