"""Raw payloads -> validated event rows or dead letters: the build's rules on top of the Avro schemas.

Pure (no Beam): transforms/validate.py adapts EventParser to a DoFn.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import re
from collections.abc import Iterator
from typing import Any, NamedTuple
from zlib import crc32

import orjson

from labelbeam.schemas import registry
from labelbeam.schemas.conformance import EventValidator, SchemaViolation
from labelbeam.transforms.events import dead_letters as dl
from labelbeam.transforms.events.raw_chunks import RawChunk, avro_datum
from labelbeam.transforms.events.record_batches import EVENT_FIELD_NAMES, FIELD_POSITION, EventColumns

# Events older than this are clock bugs, not annotations.
MIN_EVENT_TIME_MS = int(dt.datetime(2000, 1, 1, tzinfo=dt.timezone.utc).timestamp() * 1000)


# Events may lie this far after the build's event-time cutoff. The default cutoff is the start of the
# build's UTC day, so two days past it leave annotators' clocks at least a day ahead of the build's
# clock. The cutoff is recorded in the manifest's params, never read from the wall clock while
# validating, so a rebuild with the same params accepts the same events.
CLOCK_SKEW_MS = 48 * 3600 * 1000
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
_ONE_MS = dt.timedelta(milliseconds=1)


def parse_event_time_cutoff(text: str) -> int:
    """Milliseconds since the epoch of an ISO 8601 date or date-time; UTC unless it has an offset.

    Finer than millisecond precision is truncated. Raises ValueError naming the text otherwise.
    """
    try:
        moment = dt.datetime.fromisoformat(text)
    except (TypeError, ValueError):
        raise ValueError(f"{text!r} is not an ISO 8601 date or date-time, e.g. 2026-03-05T00:00:00Z, nor a relative "
                         "time such as yesterday, today-1h or now-15m") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.timezone.utc)
    return (moment - _EPOCH) // _ONE_MS


_RELATIVE = re.compile(r"(now|today|yesterday)((?:[+-]\d+[smhd])*)")
_STEP = re.compile(r"([+-])(\d+)([smhd])")
_UNIT = {"s": dt.timedelta(seconds=1), "m": dt.timedelta(minutes=1), "h": dt.timedelta(hours=1),
         "d": dt.timedelta(days=1)}


def resolve_cutoff(text: str, now: dt.datetime) -> str:
    """An ISO 8601 cutoff as given, or a relative one resolved against `now` (UTC), in normal form.

    Relative: `today` (00:00 UTC of now's day), `yesterday` (a day before that) or `now` (to the second),
    each optionally followed by steps such as -1h, +30m, -2d: `yesterday`, `today-1h`, `now-15m`. A
    scheduler's nightly command then names its snapshot once, and the build records the resolved time.
    """
    match = _RELATIVE.fullmatch(text.strip().lower()) if isinstance(text, str) else None
    if match is None:
        return format_event_time_cutoff(parse_event_time_cutoff(text))
    now = now.astimezone(dt.timezone.utc)
    anchor, steps = match.groups()
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    moment = {"now": now.replace(microsecond=0), "today": midnight, "yesterday": midnight - _UNIT["d"]}[anchor]
    for sign, amount, unit in _STEP.findall(steps):
        moment += (1 if sign == "+" else -1) * int(amount) * _UNIT[unit]
    return format_event_time_cutoff((moment - _EPOCH) // _ONE_MS)


def format_event_time_cutoff(cutoff_ms: int) -> str:
    """ISO 8601 in UTC, e.g. 2026-03-05T00:00:00Z; milliseconds only when they are not zero."""
    moment = _EPOCH + cutoff_ms * _ONE_MS
    return moment.isoformat(timespec="milliseconds" if moment.microsecond else "seconds").replace("+00:00", "Z")


def day_event_time_cutoff(now: dt.datetime) -> str:
    """The default cutoff of a build started at `now`: the start of that UTC day.

    It changes once a day, so builds of the same inputs on one day have equal params (and the second
    is up to date). Events are accepted up to CLOCK_SKEW_MS (two days) after the cutoff, at least a
    day past the build's clock; an event stamped later is BAD_TIMESTAMP in this build.
    """
    return format_event_time_cutoff((now - _EPOCH) // dt.timedelta(days=1) * 24 * 3600 * 1000)


_ID_FIELDS = ("event_id", "dataset", "item_id", "annotator_id")


@dataclasses.dataclass(frozen=True)
class ValidationRules:
    """What makes a schema-valid event acceptable to this build."""
    dataset: str
    max_event_time_ms: int
    labels: frozenset[str] | None = None  # None: any label (the set is inferred and recorded)
    min_event_time_ms: int = MIN_EVENT_TIME_MS
    # An as-of snapshot: schema-valid events stamped after this are outside it (counted as after_as_of,
    # neither read nor dead-lettered), and max_event_time_ms equals it.
    as_of_ms: int | None = None

    def __post_init__(self):
        if not self.dataset:
            raise ValueError("ValidationRules needs a non-empty dataset name")
        if self.as_of_ms is not None and self.max_event_time_ms != self.as_of_ms:
            raise ValueError("an as-of snapshot accepts events up to its as-of time exactly")
        if self.labels is not None and "" in self.labels:
            raise ValueError("a label set cannot hold the empty label: an empty label is always MISSING_FIELD")

    @classmethod
    def at(cls, dataset: str, event_time_cutoff_ms: int, labels: frozenset[str] | None = None) -> ValidationRules:
        """Rules accepting event times up to CLOCK_SKEW_MS after the cutoff (ms since the epoch)."""
        return cls(dataset=dataset, max_event_time_ms=event_time_cutoff_ms + CLOCK_SKEW_MS, labels=labels)

    @classmethod
    def with_cutoff(cls, dataset: str, event_time_cutoff: str,
                    labels: frozenset[str] | None = None) -> ValidationRules:
        """Rules for an ISO 8601 cutoff, as a build's params record it; ValueError if it does not parse."""
        return cls.at(dataset, parse_event_time_cutoff(event_time_cutoff), labels)

    @classmethod
    def as_of(cls, dataset: str, as_of: str, labels: frozenset[str] | None = None) -> ValidationRules:
        """Rules of an as-of snapshot (ISO 8601): events stamped after it are left for later builds."""
        as_of_ms = parse_event_time_cutoff(as_of)
        return cls(dataset=dataset, max_event_time_ms=as_of_ms, labels=labels, as_of_ms=as_of_ms)

    @property
    def event_time_cutoff(self) -> str:
        """The cutoff in normal form (ISO 8601, UTC), the form a build's params record."""
        if self.as_of_ms is not None:
            return format_event_time_cutoff(self.as_of_ms)
        return format_event_time_cutoff(self.max_event_time_ms - CLOCK_SKEW_MS)

    day_cutoff = staticmethod(day_event_time_cutoff)  # the default cutoff of a build started at `now`


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
        if names != EVENT_FIELD_NAMES:  # the fast path indexes values by FIELD_POSITION
            raise RuntimeError(f"the latest validator's fields {names} are not the event layout {EVENT_FIELD_NAMES}")

    def parse_chunk(self, chunk: RawChunk) -> tuple[EventColumns, list[dl.DeadLetter]]:
        """Every payload of the chunk becomes exactly one valid row or one dead letter."""
        parsed = self.parse_chunk_with_counts(chunk)
        return parsed.columns, parsed.dead

    def parse_chunk_with_counts(self, chunk: RawChunk) -> ParsedChunk:
        """parse_chunk, and how many valid events had fields no event schema defines (ignored, as Avro
        resolution ignores them)."""
        columns, dead, unknown_fields_dropped, after_as_of = EventColumns(chunk.source, chunk.raw_format), [], 0, 0
        # The hot loop: the happy path inline; anything unusual goes to parse_one, which decides
        # the precise reason. Both paths accept exactly the same events (see the fuzz tests).
        loads, accepts, validators = orjson.loads, self._accepts, self._validate_by_version
        event_id_at, item_id_at = FIELD_POSITION["event_id"], FIELD_POSITION["item_id"]
        add_row, add_version, add_offset = columns.rows.append, columns.versions.append, columns.offsets.append
        add_event_hash, add_item_hash = columns.event_hashes.append, columns.item_hashes.append
        is_json = chunk.raw_format == "json"
        writer_has_unknown_fields = False
        if is_json:
            candidates = zip(chunk.offsets, chunk.payloads, chunk.payloads, itertools.repeat(None))
        else:
            # For Avro the payload slot holds the record as decoded, whose datum a dead letter keeps.
            objects, writer_has_unknown_fields = self._avro_objects(chunk)
            candidates = ((offset, record, obj, version) for offset, record, (obj, version)
                          in zip(chunk.offsets, chunk.records, objects))
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
                add_event_hash(crc32(values[event_id_at].encode()))
                add_item_hash(crc32(values[item_id_at].encode()))
                continue
            result = self.parse_one(payload, obj, version, chunk.raw_format)
            if result is AFTER_AS_OF:
                after_as_of += 1
            elif isinstance(result, Rejected):
                raw = payload if is_json else avro_datum(chunk.writer_schema, payload)
                dead.append(dl.DeadLetter(result.reason, result.detail, raw, chunk.raw_format,
                                          result.schema_version, chunk.source, offset,
                                          _event_id_of(obj, payload, chunk.raw_format)))
            else:
                columns.append(result.values, result.version, offset)
                unknown_fields_dropped += bool(result.unknown_fields)
        if writer_has_unknown_fields:  # every record of the file has the writer's extra fields
            unknown_fields_dropped = len(columns)
        return ParsedChunk(columns, dead, unknown_fields_dropped, after_as_of)

    def _avro_objects(self, chunk: RawChunk) -> tuple[Iterator[tuple[Any, int | None]], bool]:
        """(record or _Unresolvable, version) per record, and whether the writer schema has fields that
        no event schema defines (dropped from the records, as Avro resolution does)."""
        version = registry.event_version_of(chunk.writer_schema)
        if version is not None:
            return zip(chunk.records, itertools.repeat(version)), False
        # An unregistered writer schema: resolve its records to the latest schema if Avro rules allow.
        latest = registry.LATEST_EVENT_SCHEMA_VERSION
        problems = registry.resolution_problems(registry.event_schema(latest), chunk.writer_schema)
        if problems:
            return ((_Unresolvable(problems[0], record), None) for record in chunk.records), False
        known = set(self._latest.field_names)
        if all(field["name"] in known for field in chunk.writer_schema["fields"]):
            return zip(chunk.records, itertools.repeat(latest)), False
        return (({k: v for k, v in record.items() if k in known}, latest) for record in chunk.records), True

    def parse_one(self, payload: bytes, obj: Any, version: int | None,
                  raw_format: str) -> Accepted | Rejected | AfterAsOf:
        """Accepted(values, version, unknown fields ignored) for a valid event, else Rejected(reason,
        detail, version tried). For JSON `payload` is parsed; for Avro `obj` is the decoded record."""
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
            values, unknown_fields = self._validators[version].resolve(obj)
        except SchemaViolation as err:
            return Rejected(err.reason, str(err), version)
        as_of_ms = self.rules.as_of_ms
        if as_of_ms is not None and values[self._index["event_time"]] > as_of_ms:
            return AFTER_AS_OF  # outside the snapshot whatever else it holds: a later build judges it
        problem = self._semantic_problem(values)
        if problem is not None:
            return Rejected(*problem, version)
        return Accepted(values, version, unknown_fields)

    def _semantic_problem(self, values: tuple) -> tuple[str, str] | None:
        index, rules = self._index, self.rules
        for name in _ID_FIELDS:
            if not values[index[name]]:
                return dl.MISSING_FIELD, f"{name}: must be non-empty"
        event_time = values[index["event_time"]]
        if event_time < rules.min_event_time_ms:
            return dl.BAD_TIMESTAMP, f"event_time: {event_time} ms is before 2000-01-01T00:00:00Z"
        if event_time > rules.max_event_time_ms:
            # The bound moves with the cutoff (one a day); keep it out of the detail so dead letters of the
            # same events are equal bytes whatever the day. The manifest's params record the cutoff.
            return dl.BAD_TIMESTAMP, f"event_time: {event_time} ms is more than a day after the event_time_cutoff"
        label, labels = values[index["label"]], values[index["labels"]]
        if values[index["action"]] == "DELETE":
            if label is not None or labels:
                return dl.SCHEMA_MISMATCH, "label: must be null when action is DELETE"
        elif label is None and not labels and values[index["score"]] is None:
            return dl.MISSING_FIELD, "label: an UPSERT needs a label (or labels, or score)"
        elif label == "":
            return dl.MISSING_FIELD, "label: must be non-empty (null when the vote is labels or a score)"
        elif "" in labels:
            return dl.MISSING_FIELD, f"labels[{labels.index('')}]: must be non-empty"
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
    # Positions as locals: as fast as literal indexes in the closure, and they say which field is meant.
    event_id_at, dataset_at, item_id_at, annotator_id_at, label_at, action_at, event_time_at, labels_at, score_at = (
        FIELD_POSITION[name] for name in ("event_id", "dataset", "item_id", "annotator_id", "label", "action",
                                          "event_time", "labels", "score"))

    # An empty label is never valid; a label set cannot hold one (ValidationRules checks), so with a
    # set, membership alone decides.
    def accepts(values: tuple) -> bool:
        if not (values[event_id_at] and values[item_id_at] and values[annotator_id_at]
                and values[dataset_at] == dataset and low <= values[event_time_at] <= high):
            return False
        label, labels = values[label_at], values[labels_at]
        if values[action_at] == "DELETE":
            return label is None and not labels
        if label is None:
            if not labels and values[score_at] is None:
                return False
        elif not label if allowed is None else label not in allowed:
            return False
        return not labels or (all(labels) if allowed is None else all(x in allowed for x in labels))
    return accepts


class _Unresolvable(NamedTuple):
    """An Avro record whose writer schema cannot resolve to the latest event schema."""
    problem: str
    record: dict


class Rejected(NamedTuple):
    reason: str
    detail: str
    schema_version: int | None


class Accepted(NamedTuple):
    values: tuple  # in the latest event schema's field order
    version: int
    unknown_fields: tuple[str, ...] = ()  # ignored: no event schema version defines them


class ParsedChunk(NamedTuple):
    columns: EventColumns
    dead: list[dl.DeadLetter]
    unknown_fields_dropped: int  # valid events that had at least one unknown field
    after_as_of: int = 0         # schema-valid events stamped after the as-of time: not in this snapshot


class AfterAsOf(NamedTuple):
    """parse_one's verdict on an event stamped after an as-of snapshot's time."""


AFTER_AS_OF = AfterAsOf()


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
