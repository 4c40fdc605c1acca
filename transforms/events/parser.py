"""Raw payloads -> validated event rows or dead letters: the build's rules on top of the Avro schemas.

Pure (no Beam): transforms/validate.py adapts EventParser to a DoFn.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
from collections.abc import Iterator
from typing import Any, NamedTuple
from zlib import crc32

import orjson

from labelbeam.schemas import registry
from labelbeam.schemas.conformance import EventValidator, SchemaViolation
from labelbeam.transforms.events import dead_letters as dl
from labelbeam.transforms.events.raw_chunks import RawChunk, avro_datum
from labelbeam.transforms.events.record_batches import EventColumns

# Events older than this are clock bugs, not annotations.
MIN_EVENT_TIME_MS = int(dt.datetime(2000, 1, 1, tzinfo=dt.timezone.utc).timestamp() * 1000)


# Annotators' clocks may run ahead of the build's clock by this much.
CLOCK_SKEW_MS = 24 * 3600 * 1000


_ID_FIELDS = ("event_id", "dataset", "item_id", "annotator_id")


@dataclasses.dataclass(frozen=True)
class ValidationRules:
    """What makes a schema-valid event acceptable to this build."""
    dataset: str
    max_event_time_ms: int
    labels: frozenset[str] | None = None  # None: any label (the set is inferred and recorded)
    min_event_time_ms: int = MIN_EVENT_TIME_MS

    def __post_init__(self):
        if not self.dataset:
            raise ValueError("ValidationRules needs a non-empty dataset name")

    @classmethod
    def at(cls, dataset: str, now_ms: int, labels: frozenset[str] | None = None) -> ValidationRules:
        return cls(dataset=dataset, max_event_time_ms=now_ms + CLOCK_SKEW_MS, labels=labels)


class EventParser:
    """Turns raw payloads into validated value tuples (latest schema layout) or DeadLetters.

    A pure helper: the DoFn below only adapts it to Beam.
    """

    def __init__(self, rules: ValidationRules):
        self.rules = rules
        self._validators = {v: EventValidator(v) for v in registry.EVENT_SCHEMA_VERSIONS}
        latest = registry.LATEST_EVENT_SCHEMA_VERSION
        self._latest = self._validators[latest]
        names = self._latest.field_names
        self._index = {name: names.index(name) for name in names}
        self._validate_by_version = {v: validator.validate for v, validator in self._validators.items()}
        self._accepts = _semantic_check(rules)
        # The fast path unpacks values by position: pin the layout it relies on.
        assert names[:10] == ("event_id", "dataset", "item_id", "annotator_id", "label", "action", "event_time",
                              "revision", "labels", "score"), names

    def parse_chunk(self, chunk: RawChunk) -> tuple[EventColumns, list[dl.DeadLetter]]:
        """Every payload of the chunk becomes exactly one valid row or one dead letter."""
        columns, dead = EventColumns(chunk.source, chunk.raw_format), []
        # The hot loop: the happy path inline; anything unusual goes to parse_one, which decides
        # the precise reason. Both paths accept exactly the same events (see the fuzz tests).
        loads, accepts, validators = orjson.loads, self._accepts, self._validate_by_version
        add_row, add_version, add_offset = columns.rows.append, columns.versions.append, columns.offsets.append
        add_event_hash, add_item_hash = columns.event_hashes.append, columns.item_hashes.append
        is_json = chunk.raw_format == "json"
        if is_json:
            candidates = zip(chunk.offsets, chunk.payloads, chunk.payloads, itertools.repeat(None))
        else:
            candidates = ((offset, payload, obj, version) for offset, payload, (obj, version)
                          in zip(chunk.offsets, chunk.payloads, self._avro_objects(chunk)))
        for offset, payload, obj, version in candidates:
            try:
                if is_json:
                    obj = loads(payload)
                    version = obj.get("schema_version", 1)
                values = validators[version](obj) if type(version) is int else None
            except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError, SchemaViolation):
                values = None
            if values is not None and accepts(values):
                add_row(values)
                add_version(version)
                add_offset(offset)
                add_event_hash(crc32(values[0].encode()))
                add_item_hash(crc32(values[2].encode()))
                continue
            result = self.parse_one(payload, obj, version, chunk.raw_format)
            if isinstance(result, Rejected):
                raw = payload if is_json else avro_datum(chunk.writer_schema, _record_of(obj))
                dead.append(dl.DeadLetter(result.reason, result.detail, raw, chunk.raw_format,
                                          result.schema_version, chunk.source, offset,
                                          _event_id_of(obj, payload, chunk.raw_format)))
            else:
                columns.append(*result, offset)
        return columns, dead

    def _avro_objects(self, chunk: RawChunk) -> Iterator[tuple[Any, int | None]]:
        version = registry.event_version_of(chunk.writer_schema)
        if version is not None:
            for record in chunk.records:
                yield record, version
            return
        # An unregistered writer schema: resolve its records to the latest schema if Avro rules allow.
        problems = registry.resolution_problems(registry.event_schema(registry.LATEST_EVENT_SCHEMA_VERSION),
                                                chunk.writer_schema)
        known = set(self._latest.field_names)
        for record in chunk.records:
            if problems:
                yield _Unresolvable(problems[0], record), None
            else:
                yield {k: v for k, v in record.items() if k in known}, registry.LATEST_EVENT_SCHEMA_VERSION

    def parse_one(self, payload: bytes, obj: Any, version: int | None, raw_format: str):
        """(values, version) for a valid event, else Rejected(reason, detail, version tried)."""
        if raw_format == "json":
            try:
                obj = orjson.loads(payload)
            except orjson.JSONDecodeError as err:
                return Rejected(dl.MALFORMED_JSON, str(err), None)
            if type(obj) is not dict:
                return Rejected(dl.SCHEMA_MISMATCH, f"$: expected object, got {type(obj).__name__}", None)
            version = obj.get("schema_version", 1)
            if type(version) is not int or version not in self._validators:
                return Rejected(dl.UNKNOWN_SCHEMA_VERSION, f"schema_version: {version!r} is not one of "
                                f"{list(registry.EVENT_SCHEMA_VERSIONS)}", None)
        elif isinstance(obj, _Unresolvable):
            return Rejected(dl.SCHEMA_MISMATCH, f"writer schema: {obj.problem}", None)
        try:
            values = self._validators[version].validate(obj)
        except SchemaViolation as err:
            return Rejected(err.reason, str(err), version)
        problem = self._semantic_problem(values)
        if problem is not None:
            return Rejected(*problem, version)
        return values, version

    def _semantic_problem(self, values: tuple) -> tuple[str, str] | None:
        index, rules = self._index, self.rules
        for name in _ID_FIELDS:
            if not values[index[name]]:
                return dl.MISSING_FIELD, f"{name}: must be non-empty"
        event_time = values[index["event_time"]]
        if event_time < rules.min_event_time_ms:
            return dl.BAD_TIMESTAMP, f"event_time: {event_time} ms is before 2000-01-01T00:00:00Z"
        if event_time > rules.max_event_time_ms:
            # The bound moves with the build's clock; keep it out of the detail so reruns write equal bytes.
            return dl.BAD_TIMESTAMP, f"event_time: {event_time} ms is more than a day after the build started"
        label, labels = values[index["label"]], values[index["labels"]]
        if values[index["action"]] == "DELETE":
            if label is not None or labels:
                return dl.SCHEMA_MISMATCH, "label: must be null when action is DELETE"
        elif label is None and not labels and values[index["score"]] is None:
            return dl.MISSING_FIELD, "label: an UPSERT needs a label (or labels, or score)"
        if values[index["dataset"]] != rules.dataset:
            return dl.DATASET_MISMATCH, f"dataset: {values[index['dataset']]!r} is not {rules.dataset!r}"
        if rules.labels is not None:
            for candidate in ([label] if label is not None else []) + labels:
                if candidate not in rules.labels:
                    return dl.UNKNOWN_LABEL, f"label: {candidate!r} is not in the label set"
        return None


def _semantic_check(rules: ValidationRules):
    """A fast predicate: do schema-valid values pass every semantic rule? (parse_one says why not.)"""
    dataset, low, high, allowed = rules.dataset, rules.min_event_time_ms, rules.max_event_time_ms, rules.labels

    def accepts(values: tuple) -> bool:
        if not (values[0] and values[2] and values[3] and values[1] == dataset and low <= values[6] <= high):
            return False
        label, labels = values[4], values[8]
        if values[5] == "DELETE":
            return label is None and not labels
        if label is None:
            if not labels and values[9] is None:
                return False
        elif allowed is not None and label not in allowed:
            return False
        return not labels or allowed is None or all(x in allowed for x in labels)
    return accepts


class _Unresolvable(NamedTuple):
    """An Avro record whose writer schema cannot resolve to the latest event schema."""
    problem: str
    record: dict


class Rejected(NamedTuple):
    reason: str
    detail: str
    schema_version: int | None


def _record_of(obj: Any) -> dict:
    return obj.record if isinstance(obj, _Unresolvable) else obj


def _event_id_of(obj: Any, payload: bytes, raw_format: str) -> str | None:
    if raw_format == "json":
        try:
            obj = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return None
    if isinstance(obj, _Unresolvable):
        obj = obj.record
    event_id = obj.get("event_id") if isinstance(obj, dict) else None
    return event_id if isinstance(event_id, str) else None
