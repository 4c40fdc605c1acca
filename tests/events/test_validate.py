"""Parse + validate: every raw event becomes a valid row (latest schema layout) or a dead letter."""
import datetime as dt
import io

import apache_beam as beam
import fastavro
import orjson
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from event_builders import DROP, PETS_EVENT_TIME_MS, v1_event

from labelbeam.schemas import registry
from labelbeam.transforms.events import dead_letters as dl
from labelbeam.transforms.events.parser import CLOCK_SKEW_MS, Accepted, EventParser, Rejected, ValidationRules
from labelbeam.transforms.events.raw_chunks import RawChunk
from labelbeam.transforms.storage.event_files import ByteRange, read_avro_records
from labelbeam.transforms.validate import ValidateEvents

NOW_MS = 1_700_000_000_000  # 2023-11-14T22:13:20Z, the build's clock
EVENT_TIME_MS = PETS_EVENT_TIME_MS  # an hour before NOW_MS
ONE_DAY_MS = 24 * 3600 * 1000
ALLOWANCE_MS = CLOCK_SKEW_MS  # how far past the cutoff an event may lie
Y2K_MS = 946_684_800_000  # 2000-01-01T00:00:00Z
LABELS = frozenset({"cat", "dog", "bird"})
RULES = ValidationRules.at("pets", NOW_MS, LABELS)
LATEST_FIELDS = tuple(f["name"] for f in registry.event_schema(2)["fields"])
event = v1_event


def event_v2(**overrides):
    return event(schema_version=2, **overrides)


def line(obj) -> bytes:
    return orjson.dumps(obj)


def parse(payload: bytes, rules: ValidationRules = RULES):
    return EventParser(rules).parse_one(payload, None, None, "json")


def accepted(payload: bytes, rules: ValidationRules = RULES) -> tuple[dict, int]:
    """(field -> value in the latest layout, schema version) of a payload that must be valid, with no
    unknown fields."""
    result = parse(payload, rules)
    assert isinstance(result, Accepted), result
    assert result.unknown_fields == ()
    assert len(result.values) == len(LATEST_FIELDS)
    return dict(zip(LATEST_FIELDS, result.values)), result.version


def rejected(payload: bytes, rules: ValidationRules = RULES) -> Rejected:
    result = parse(payload, rules)
    assert isinstance(result, Rejected), f"accepted: {result}"
    assert result.reason in dl.REASONS
    return result


def json_chunk(payloads, source="drop/events.jsonl", offsets=None) -> RawChunk:
    if offsets is None:
        offsets, position = [], 0
        for payload in payloads:
            offsets.append(position)
            position += len(payload) + 1
    return RawChunk(source, "json", list(offsets), list(payloads))


def avro_chunk(writer_schema_json, records, source="drop/events.avro") -> RawChunk:
    """A chunk as the Avro reader makes it: records decoded by fastavro from a real container file."""
    buf = io.BytesIO()
    fastavro.writer(buf, writer_schema_json, records)
    buf.seek(0)
    reader = fastavro.reader(buf)
    writer_schema = reader.writer_schema
    decoded = list(reader)
    parsed = fastavro.parse_schema(writer_schema)
    payloads = []
    for record in decoded:
        datum = io.BytesIO()
        fastavro.schemaless_writer(datum, parsed, record)
        payloads.append(datum.getvalue())
    return RawChunk(source, "avro", list(range(len(decoded))), payloads, decoded, writer_schema)


def v1_avro_record(**overrides):
    return event(**overrides)


def v2_avro_record(**overrides):
    record = event(revision=0, labels=[], score=None, duration_ms=None, confidence=None, metadata={})
    record.update(overrides)
    return record


def valid_rows(columns) -> list[dict]:
    batch = columns.to_record_batch()
    return batch.to_pylist()


# --- MALFORMED_JSON -------------------------------------------------------------------------------

def test_truncated_line_is_malformed_json():
    assert rejected(line(event())[:-10]).reason == dl.MALFORMED_JSON


def test_garbage_line_is_malformed_json():
    assert rejected(b"this is not json").reason == dl.MALFORMED_JSON


def test_invalid_utf8_line_is_malformed_json():
    assert rejected(b'{"event_id": "\xff\xfe"}').reason == dl.MALFORMED_JSON


def test_trailing_content_after_the_object_is_malformed_json():
    assert rejected(line(event()) + b" {}").reason == dl.MALFORMED_JSON


def test_malformed_json_has_no_schema_version():
    assert rejected(b"{oops").schema_version is None


def test_empty_object_is_not_malformed_but_missing_field():
    result = rejected(b"{}")
    assert result.reason == dl.MISSING_FIELD
    assert result.detail.startswith("event_id")


# --- UNKNOWN_SCHEMA_VERSION -----------------------------------------------------------------------

@pytest.mark.parametrize("version", [3, 0, "2", None, True, 2.0], ids=["3", "0", "str", "null", "bool", "float"])
def test_schema_version_other_than_int_1_or_2_is_unknown_schema_version(version):
    result = rejected(line(event(schema_version=version)))
    assert result.reason == dl.UNKNOWN_SCHEMA_VERSION
    assert result.schema_version is None


# --- SCHEMA_MISMATCH ------------------------------------------------------------------------------

def test_label_as_number_is_schema_mismatch_at_label():
    result = rejected(line(event(label=7)))
    assert result.reason == dl.SCHEMA_MISMATCH
    assert result.detail.startswith("label")
    assert result.schema_version == 1


@pytest.mark.parametrize("payload, path, version", [
    (event_v2(label=None, labels=["cat", 5]), "labels[1]", 2),
    (event_v2(labels="cat"), "labels", 2),
    (event_v2(metadata={"tool": "ls", "k": 5}), "metadata.k", 2),
    (event(event_time="2023-11-14T21:13:20Z"), "event_time", 1),
    (event(event_time=True), "event_time", 1),  # a bool is not a long
    (event(event_time=float(EVENT_TIME_MS)), "event_time", 1),
    (event(event_time=2**64 - 1), "event_time", 1),  # beyond the long range
    (event_v2(revision=2**31), "revision", 2),  # beyond the int range
], ids=["labels-element", "labels-not-list", "metadata-value", "time-string", "time-bool", "time-float",
        "time-beyond-long", "revision-beyond-int"])
def test_wrong_type_is_schema_mismatch_at_the_field_path(payload, path, version):
    result = rejected(line(payload))
    assert result.reason == dl.SCHEMA_MISMATCH
    assert result.detail.startswith(path)
    assert result.schema_version == version


def test_v2_field_without_schema_version_2_is_schema_mismatch_unknown_field():
    result = rejected(line(event(revision=1)))
    assert result.reason == dl.SCHEMA_MISMATCH
    assert result.detail.startswith("revision")
    assert result.schema_version == 1


# Avro schema resolution ignores fields the writer has and the reader lacks: so do we, and count them.

def test_unknown_field_in_v2_is_ignored_and_the_event_is_valid():
    result = parse(line(event_v2(colour="red")))
    assert isinstance(result, Accepted), result
    assert (result.values, result.version) == parse(line(event_v2()))[:2]
    assert result.unknown_fields == ("colour",)


def test_unknown_fields_in_v1_are_ignored_and_named_in_order():
    result = parse(line(event(zeta={"nested": [1]}, alpha=None)))
    assert isinstance(result, Accepted), result
    assert (result.values, result.version) == parse(line(event()))[:2]
    assert result.unknown_fields == ("alpha", "zeta")


def test_unknown_field_does_not_hide_another_problem():
    result = rejected(line(event(colour="red", label=7)))
    assert result.reason == dl.SCHEMA_MISMATCH
    assert result.detail.startswith("label")


def test_parse_chunk_counts_the_valid_events_that_had_unknown_fields():
    payloads = [line(event(event_id="a")), line(event(event_id="b", colour="red")),
                line(event_v2(event_id="c", colour="red", size=3)), line(event(event_id="d", colour="red", label="fish"))]
    parsed = EventParser(RULES).parse_chunk_with_counts(json_chunk(payloads))
    assert sorted(valid_rows(parsed.columns), key=lambda r: r["event_id"])[1]["event_id"] == "b"
    assert len(parsed.columns) == 3
    assert [d.reason for d in parsed.dead] == [dl.UNKNOWN_LABEL]
    assert parsed.unknown_fields_dropped == 2


def test_parse_chunk_with_counts_agrees_with_parse_chunk():
    payloads = [line(event(event_id="a", colour="red")), b"nope"]
    columns, dead = EventParser(RULES).parse_chunk(json_chunk(payloads))
    parsed = EventParser(RULES).parse_chunk_with_counts(json_chunk(payloads))
    assert (valid_rows(columns), dead) == (valid_rows(parsed.columns), parsed.dead)


def test_json_array_instead_of_object_is_schema_mismatch():
    assert rejected(line([event()])).reason == dl.SCHEMA_MISMATCH


def test_json_scalar_instead_of_object_is_schema_mismatch():
    assert rejected(b"42").reason == dl.SCHEMA_MISMATCH


def test_unknown_action_is_schema_mismatch_at_action():
    result = rejected(line(event(action="MAYBE")))
    assert result.reason == dl.SCHEMA_MISMATCH
    assert result.detail.startswith("action")


def test_delete_with_a_label_is_schema_mismatch_at_label():
    result = rejected(line(event(action="DELETE", label="cat")))
    assert result.reason == dl.SCHEMA_MISMATCH
    assert result.detail.startswith("label")


def test_duration_ms_as_float_is_schema_mismatch():
    result = rejected(line(event_v2(duration_ms=1.5)))
    assert result.reason == dl.SCHEMA_MISMATCH
    assert result.detail.startswith("duration_ms")


def test_score_as_string_is_schema_mismatch():
    result = rejected(line(event_v2(score="4")))
    assert result.reason == dl.SCHEMA_MISMATCH
    assert result.detail.startswith("score")


# --- MISSING_FIELD --------------------------------------------------------------------------------

@pytest.mark.parametrize("field", ["event_id", "dataset", "item_id", "annotator_id", "event_time"])
def test_absent_required_field_is_missing_field_at_its_name(field):
    result = rejected(line(event(**{field: DROP})))
    assert result.reason == dl.MISSING_FIELD
    assert result.detail.startswith(field)


@pytest.mark.parametrize("field", ["event_id", "dataset", "item_id", "annotator_id"])
def test_empty_string_id_is_missing_field_at_its_name(field):
    result = rejected(line(event(**{field: ""})))
    assert result.reason == dl.MISSING_FIELD
    assert result.detail.startswith(field)


def test_upsert_with_null_label_is_missing_field():
    result = rejected(line(event(label=None)))
    assert result.reason == dl.MISSING_FIELD
    assert result.detail.startswith("label")


def test_upsert_without_label_key_is_missing_field():
    assert rejected(line(event(label=DROP))).reason == dl.MISSING_FIELD


def test_v2_upsert_with_null_label_empty_labels_and_no_score_is_missing_field():
    assert rejected(line(event_v2(label=None, labels=[], score=None))).reason == dl.MISSING_FIELD


@pytest.mark.parametrize("labels", [LABELS, None], ids=["label-set", "inferred"])
def test_empty_label_is_missing_field_with_or_without_a_label_set(labels):
    result = rejected(line(event(label="")), ValidationRules.at("pets", NOW_MS, labels))
    assert result.reason == dl.MISSING_FIELD
    assert result.detail.startswith("label:")


@pytest.mark.parametrize("labels", [LABELS, None], ids=["label-set", "inferred"])
def test_empty_string_in_labels_is_missing_field_at_its_index(labels):
    result = rejected(line(event_v2(label=None, labels=["cat", ""])), ValidationRules.at("pets", NOW_MS, labels))
    assert result.reason == dl.MISSING_FIELD
    assert result.detail.startswith("labels[1]")


def test_empty_label_beside_a_score_is_still_missing_field():
    result = rejected(line(event_v2(label="", score=2.0)), ValidationRules.at("pets", NOW_MS))
    assert result.reason == dl.MISSING_FIELD


def test_empty_label_in_a_chunk_is_a_dead_letter_without_a_label_set():
    payloads = [line(event(event_id="a", label="")), line(event_v2(event_id="b", label=None, labels=[""])),
                line(event(event_id="c"))]
    columns, dead = EventParser(ValidationRules.at("pets", NOW_MS)).parse_chunk(json_chunk(payloads))
    assert [r["event_id"] for r in valid_rows(columns)] == ["c"]
    assert sorted((d.event_id, d.reason) for d in dead) == [("a", dl.MISSING_FIELD), ("b", dl.MISSING_FIELD)]


def test_a_label_set_cannot_hold_the_empty_label():
    with pytest.raises(ValueError, match="empty"):
        ValidationRules.at("pets", NOW_MS, frozenset({"cat", ""}))


def test_v2_upsert_with_only_labels_is_valid():
    values, _ = accepted(line(event_v2(label=None, labels=["cat", "dog"])))
    assert values["label"] is None
    assert values["labels"] == ["cat", "dog"]


def test_v2_upsert_with_only_a_score_is_valid():
    values, _ = accepted(line(event_v2(label=None, score=3.5)))
    assert values["score"] == 3.5


# --- UNKNOWN_LABEL --------------------------------------------------------------------------------

def test_label_outside_the_label_set_is_unknown_label():
    result = rejected(line(event(label="fish")))
    assert result.reason == dl.UNKNOWN_LABEL
    assert "fish" in result.detail


def test_one_bad_element_of_labels_is_unknown_label():
    result = rejected(line(event_v2(label=None, labels=["cat", "fish"])))
    assert result.reason == dl.UNKNOWN_LABEL
    assert "fish" in result.detail


def test_without_a_label_set_any_label_is_accepted():
    rules = ValidationRules.at("pets", NOW_MS)
    values, _ = accepted(line(event_v2(label="fish", labels=["zebra"])), rules)
    assert values["label"] == "fish"
    assert values["labels"] == ["zebra"]


def test_delete_with_null_label_is_valid_under_a_label_set():
    values, _ = accepted(line(event(action="DELETE", label=None)))
    assert values["action"] == "DELETE"
    assert values["label"] is None


# --- BAD_TIMESTAMP --------------------------------------------------------------------------------

def test_event_time_before_2000_is_bad_timestamp():
    result = rejected(line(event(event_time=Y2K_MS - 1)))
    assert result.reason == dl.BAD_TIMESTAMP
    assert result.detail.startswith("event_time")


def test_event_time_at_2000_is_valid():
    values, _ = accepted(line(event(event_time=Y2K_MS)))
    assert values["event_time"] == Y2K_MS


def test_negative_event_time_is_bad_timestamp():
    assert rejected(line(event(event_time=-1))).reason == dl.BAD_TIMESTAMP


def test_event_time_past_the_cutoff_allowance_is_bad_timestamp():
    result = rejected(line(event(event_time=NOW_MS + ALLOWANCE_MS + 1)))
    assert result.reason == dl.BAD_TIMESTAMP
    assert result.detail.startswith("event_time")


def test_event_time_exactly_at_the_cutoff_allowance_is_valid():
    values, _ = accepted(line(event(event_time=NOW_MS + ALLOWANCE_MS)))
    assert values["event_time"] == NOW_MS + ALLOWANCE_MS


def test_bad_timestamp_detail_does_not_depend_on_the_build_clock():
    future = line(event(event_time=NOW_MS + 10 * ONE_DAY_MS))
    detail_now = rejected(future, ValidationRules.at("pets", NOW_MS, LABELS)).detail
    detail_later = rejected(future, ValidationRules.at("pets", NOW_MS + 1, LABELS)).detail
    assert detail_now == detail_later


# --- DATASET_MISMATCH -----------------------------------------------------------------------------

def test_event_of_another_dataset_is_dataset_mismatch():
    result = rejected(line(event(dataset="birds")))
    assert result.reason == dl.DATASET_MISMATCH
    assert result.detail.startswith("dataset")


# --- valid events ---------------------------------------------------------------------------------

def test_v1_event_gets_v2_defaults():
    values, version = accepted(line(event()))
    assert version == 1
    assert values == {
        "event_id": "e1", "dataset": "pets", "item_id": "item-1", "annotator_id": "ann-1",
        "label": "cat", "action": "UPSERT", "event_time": EVENT_TIME_MS,
        "revision": 0, "labels": [], "score": None, "duration_ms": None, "confidence": None,
        "metadata": {},
    }


def test_explicit_schema_version_1_is_the_same_as_absent():
    assert parse(line(event(schema_version=1))) == parse(line(event()))


def test_v1_event_without_action_defaults_to_upsert():
    values, _ = accepted(line(event(action=DROP)))
    assert values["action"] == "UPSERT"


def test_v1_defaults_are_fresh_containers_per_event():
    parser = EventParser(RULES)
    first = parser.parse_one(line(event(event_id="a")), None, None, "json").values
    first_event = dict(zip(LATEST_FIELDS, first))
    first_event["labels"].append("leak")
    first_event["metadata"]["leak"] = "x"
    second = parser.parse_one(line(event(event_id="b")), None, None, "json").values
    second_event = dict(zip(LATEST_FIELDS, second))
    assert second_event["labels"] == []
    assert second_event["metadata"] == {}


def test_v2_event_keeps_its_v2_fields():
    payload = line(event_v2(revision=3, labels=["cat", "dog"], score=4.5, duration_ms=1200,
                            confidence=0.75, metadata={"tool": "label-studio"}))
    values, version = accepted(payload)
    assert version == 2
    assert values["revision"] == 3
    assert values["labels"] == ["cat", "dog"]
    assert values["score"] == 4.5
    assert values["duration_ms"] == 1200
    assert values["confidence"] == 0.75
    assert values["metadata"] == {"tool": "label-studio"}


def test_v2_event_without_v2_fields_gets_defaults():
    values, version = accepted(line(event_v2()))
    assert version == 2
    assert (values["revision"], values["labels"], values["score"], values["metadata"]) == (0, [], None, {})


def test_int_is_accepted_for_a_double_score():
    values, _ = accepted(line(event_v2(score=4)))
    assert values["score"] == 4.0
    assert type(values["score"]) is float


def test_int_is_accepted_for_a_float_confidence():
    values, _ = accepted(line(event_v2(confidence=1)))
    assert type(values["confidence"]) is float


def test_null_optionals_in_v2_are_valid():
    values, _ = accepted(line(event_v2(score=None, duration_ms=None, confidence=None)))
    assert (values["score"], values["duration_ms"], values["confidence"]) == (None, None, None)


# --- dead letter provenance -----------------------------------------------------------------------

def test_dead_letter_keeps_raw_bytes_source_offset_and_format():
    good, bad = line(event(event_id="ok")), line(event(event_id="e7", label="fish"))
    columns, dead = EventParser(RULES).parse_chunk(json_chunk([good, bad], source="drop/a.jsonl", offsets=[0, 120]))
    assert len(columns) == 1
    [letter] = dead
    assert letter.raw == bad
    assert letter.source == "drop/a.jsonl"
    assert letter.offset == 120
    assert letter.raw_format == "json"
    assert letter.reason == dl.UNKNOWN_LABEL


def test_dead_letter_keeps_the_event_id_when_readable():
    _, [letter] = EventParser(RULES).parse_chunk(json_chunk([line(event(event_id="e9", label=3))]))
    assert letter.event_id == "e9"


def test_dead_letter_of_malformed_json_has_no_event_id_and_no_schema_version():
    _, [letter] = EventParser(RULES).parse_chunk(json_chunk([b'{"event_id": "e9", "dat']))
    assert letter.reason == dl.MALFORMED_JSON
    assert letter.event_id is None
    assert letter.schema_version is None
    assert letter.raw == b'{"event_id": "e9", "dat'


def test_dead_letter_with_non_string_event_id_has_no_event_id():
    _, [letter] = EventParser(RULES).parse_chunk(json_chunk([line(event(event_id=17))]))
    assert letter.reason == dl.SCHEMA_MISMATCH
    assert letter.event_id is None


def test_dead_letter_records_the_schema_version_tried():
    payloads = [line(event(label=1)), line(event_v2(label=1)), line(event(schema_version=3))]
    _, dead = EventParser(RULES).parse_chunk(json_chunk(payloads))
    assert [d.schema_version for d in sorted(dead, key=lambda d: d.offset)] == [1, 2, None]


def test_parse_chunk_puts_each_line_in_exactly_one_output():
    payloads = [line(event(event_id="a")), b"nope", line(event_v2(event_id="b", labels=["dog"])),
                line(event(event_id="c", dataset="birds"))]
    columns, dead = EventParser(RULES).parse_chunk(json_chunk(payloads))
    assert len(columns) == 2
    assert sorted(d.reason for d in dead) == [dl.DATASET_MISMATCH, dl.MALFORMED_JSON]


def test_valid_rows_keep_source_offset_and_schema_version():
    chunk = json_chunk([line(event(event_id="a")), line(event_v2(event_id="b"))], source="s.jsonl", offsets=[0, 99])
    columns, dead = EventParser(RULES).parse_chunk(chunk)
    assert dead == []
    rows = sorted(valid_rows(columns), key=lambda r: r["offset"])
    assert [(r["event_id"], r["source"], r["offset"], r["schema_version"]) for r in rows] == [
        ("a", "s.jsonl", 0, 1), ("b", "s.jsonl", 99, 2)]


# --- Avro -----------------------------------------------------------------------------------------

def test_avro_v1_records_are_valid_with_event_time_in_ms():
    chunk = avro_chunk(registry.load_schema_json("annotation_event.v1.avsc"),
                       [v1_avro_record(event_id="a"), v1_avro_record(event_id="b", event_time=EVENT_TIME_MS + 1)])
    assert isinstance(chunk.records[0]["event_time"], dt.datetime)
    columns, dead = EventParser(RULES).parse_chunk(chunk)
    assert dead == []
    rows = sorted(valid_rows(columns), key=lambda r: r["event_id"])
    assert [(r["event_id"], r["event_time"]) for r in rows] == [("a", EVENT_TIME_MS), ("b", EVENT_TIME_MS + 1)]
    assert [r["schema_version"] for r in rows] == [1, 1]
    assert [r["revision"] for r in rows] == [0, 0]
    assert [r["labels"] for r in rows] == [[], []]


def test_avro_v2_records_are_valid_and_keep_v2_fields():
    record = v2_avro_record(revision=2, labels=["cat"], score=1.5, duration_ms=900, confidence=0.5,
                            metadata={"tool": "ls"})
    chunk = avro_chunk(registry.load_schema_json("annotation_event.v2.avsc"), [record])
    columns, dead = EventParser(RULES).parse_chunk(chunk)
    assert dead == []
    [row] = valid_rows(columns)
    assert row["event_time"] == EVENT_TIME_MS
    assert row["schema_version"] == 2
    assert (row["revision"], row["labels"], row["score"], row["duration_ms"], row["confidence"]) == \
        (2, ["cat"], 1.5, 900, 0.5)
    assert dict(row["metadata"]) == {"tool": "ls"}


def test_avro_v1_delete_with_null_label_is_valid():
    chunk = avro_chunk(registry.load_schema_json("annotation_event.v1.avsc"),
                       [v1_avro_record(action="DELETE", label=None)])
    columns, dead = EventParser(RULES).parse_chunk(chunk)
    assert dead == []
    [row] = valid_rows(columns)
    assert (row["action"], row["label"]) == ("DELETE", None)


def test_avro_event_time_matches_the_same_event_as_json():
    avro_columns, _ = EventParser(RULES).parse_chunk(
        avro_chunk(registry.load_schema_json("annotation_event.v1.avsc"), [v1_avro_record()]))
    json_values, _ = accepted(line(event()))
    [row] = valid_rows(avro_columns)
    assert {name: row[name] for name in LATEST_FIELDS if name != "metadata"} == \
        {name: json_values[name] for name in LATEST_FIELDS if name != "metadata"}


def test_avro_writer_lacking_a_required_field_dead_letters_every_record():
    writer = registry.load_schema_json("annotation_event.v1.avsc")
    writer["fields"] = [f for f in writer["fields"] if f["name"] != "event_time"]
    records = [v1_avro_record(event_id=i, event_time=DROP) for i in ("a", "b")]
    columns, dead = EventParser(RULES).parse_chunk(avro_chunk(writer, records))
    assert len(columns) == 0
    assert [d.reason for d in dead] == [dl.SCHEMA_MISMATCH] * 2
    assert all("event_time" in d.detail for d in dead)
    assert sorted(d.offset for d in dead) == [0, 1]
    assert all(d.raw_format == "avro" for d in dead)


def test_avro_dead_letter_from_an_unresolvable_writer_keeps_the_event_id():
    writer = registry.load_schema_json("annotation_event.v1.avsc")
    writer["fields"] = [f for f in writer["fields"] if f["name"] != "event_time"]
    _, [letter] = EventParser(RULES).parse_chunk(avro_chunk(writer, [v1_avro_record(event_time=DROP)]))
    assert letter.event_id == "e1"


def test_avro_writer_with_an_incompatible_type_dead_letters_with_the_field():
    writer = registry.load_schema_json("annotation_event.v2.avsc")
    for field in writer["fields"]:
        if field["name"] == "revision":
            field["type"], field["default"] = "string", "0"
    record = v2_avro_record(revision="1")
    _, dead = EventParser(RULES).parse_chunk(avro_chunk(writer, [record]))
    assert [d.reason for d in dead] == [dl.SCHEMA_MISMATCH]
    assert "revision" in dead[0].detail


def test_avro_unregistered_writer_that_resolves_is_read_as_latest():
    writer = registry.load_schema_json("annotation_event.v1.avsc")
    writer["fields"].append({"name": "client", "type": "string", "default": ""})
    columns, dead = EventParser(RULES).parse_chunk(avro_chunk(writer, [v1_avro_record(client="web")]))
    assert dead == []
    [row] = valid_rows(columns)
    assert (row["event_id"], row["label"], row["event_time"], row["revision"]) == ("e1", "cat", EVENT_TIME_MS, 0)


def test_avro_unregistered_writer_with_an_extra_field_counts_every_valid_record():
    writer = registry.load_schema_json("annotation_event.v1.avsc")
    writer["fields"].append({"name": "client", "type": "string"})
    records = [v1_avro_record(event_id="a", client="web"), v1_avro_record(event_id="b", client="app", label="fish")]
    parsed = EventParser(RULES).parse_chunk_with_counts(avro_chunk(writer, records))
    assert len(parsed.columns) == 1
    assert parsed.unknown_fields_dropped == 1  # valid events only


def test_avro_dead_letter_from_a_writer_with_an_extra_field_keeps_the_files_bytes():
    writer = registry.load_schema_json("annotation_event.v1.avsc")
    writer["fields"].append({"name": "client", "type": "string", "default": ""})
    chunk = avro_chunk(writer, [v1_avro_record(event_id="b", label="fish", client="web")])
    _, [letter] = EventParser(RULES).parse_chunk(chunk)
    assert letter.reason == dl.UNKNOWN_LABEL
    assert letter.raw == chunk.payloads[0]
    assert fastavro.schemaless_reader(io.BytesIO(letter.raw), fastavro.parse_schema(chunk.writer_schema))["client"] \
        == "web"


def test_avro_dead_letter_keeps_datum_bytes_record_index_and_version():
    chunk = avro_chunk(registry.load_schema_json("annotation_event.v1.avsc"),
                       [v1_avro_record(event_id="a"), v1_avro_record(event_id="b", label="fish")],
                       source="drop/x.avro")
    _, [letter] = EventParser(RULES).parse_chunk(chunk)
    assert letter.reason == dl.UNKNOWN_LABEL
    assert (letter.source, letter.offset, letter.raw_format, letter.schema_version, letter.event_id) == \
        ("drop/x.avro", 1, "avro", 1, "b")
    assert letter.raw == chunk.payloads[1]
    parsed = fastavro.parse_schema(chunk.writer_schema)
    assert fastavro.schemaless_reader(io.BytesIO(letter.raw), parsed)["event_id"] == "b"


def test_avro_record_of_another_dataset_is_dataset_mismatch():
    chunk = avro_chunk(registry.load_schema_json("annotation_event.v2.avsc"), [v2_avro_record(dataset="birds")])
    _, dead = EventParser(RULES).parse_chunk(chunk)
    assert [d.reason for d in dead] == [dl.DATASET_MISMATCH]


# --- ValidateEvents (Beam) ------------------------------------------------------------------------

MIXED_LINES = [
    line(event(event_id="v1-a")),
    line(event(event_id="v1-b", label="dog")),
    line(event_v2(event_id="v2-a", revision=1, labels=["bird"], label=None)),
    b'{"event_id": "broken"',
    line(event(event_id="bad-label", label="fish")),
    line(event(event_id="bad-version", schema_version=7)),
    line(event(event_id="late", event_time=NOW_MS + ALLOWANCE_MS + ONE_DAY_MS)),
]


def num_rows(batches):
    return batches | "NumRows" >> beam.Map(lambda batch: batch.num_rows) | "SumRows" >> beam.CombineGlobally(sum)


def sum_counts(counts, key):
    return (counts
            | f"Pick{key.title()}" >> beam.Map(lambda c, k=key: c[k])
            | f"Sum{key.title()}" >> beam.CombineGlobally(sum))


def test_validate_events_splits_a_mixed_chunk_into_valid_rows_and_dead_letter_reasons():
    with TestPipeline(runner="FnApiRunner") as p:
        out = p | beam.Create([json_chunk(MIXED_LINES)]) | ValidateEvents(RULES)
        assert_that(num_rows(out[dl.VALID]), equal_to([3]), label="ThreeValid")
        assert_that(out[dl.DEAD_LETTER] | beam.FlatMap(dl.from_record_batch) | beam.Map(lambda d: (d.event_id, d.reason)),
                    equal_to([(None, dl.MALFORMED_JSON), ("bad-label", dl.UNKNOWN_LABEL),
                              ("bad-version", dl.UNKNOWN_SCHEMA_VERSION), ("late", dl.BAD_TIMESTAMP)]),
                    label="DeadReasons")
        assert_that(sum_counts(out[dl.COUNTS], "read"), equal_to([7]), label="ReadAll")
        assert_that(sum_counts(out[dl.COUNTS], "invalid"), equal_to([4]), label="InvalidFour")


def test_validate_events_valid_rows_are_the_valid_event_ids():
    with TestPipeline(runner="FnApiRunner") as p:
        out = p | beam.Create([json_chunk(MIXED_LINES)]) | ValidateEvents(RULES)
        ids = out[dl.VALID] | beam.FlatMap(lambda batch: batch.column("event_id").to_pylist())
        assert_that(ids, equal_to(["v1-a", "v1-b", "v2-a"]))


def test_validate_events_counts_conserve_read_equals_valid_plus_invalid():
    chunks = [
        json_chunk(MIXED_LINES, source="a.jsonl"),
        json_chunk([b"", line(event(event_id="x", item_id=""))], source="b.jsonl"),
        avro_chunk(registry.load_schema_json("annotation_event.v1.avsc"),
                   [v1_avro_record(event_id="y"), v1_avro_record(event_id="z", label="fish")]),
    ]

    def check_conservation(totals):
        by_name = dict(totals)
        assert by_name["read"] == 11
        assert by_name["read"] == by_name["valid"] + by_name["invalid"], by_name
        assert by_name["invalid"] == by_name["dead_letters"], by_name

    with TestPipeline(runner="FnApiRunner") as p:
        out = p | beam.Create(chunks) | ValidateEvents(RULES)
        valid = out[dl.VALID] | "ValidCount" >> beam.Map(lambda batch: ("valid", batch.num_rows))
        dead = (out[dl.DEAD_LETTER] | "DeadLetters" >> beam.FlatMap(dl.from_record_batch)
                | "DeadCount" >> beam.Map(lambda _: ("dead_letters", 1)))
        counts = out[dl.COUNTS] | "ReadInvalid" >> beam.FlatMap(
            lambda c: [("read", c["read"]), ("invalid", c["invalid"])])
        totals = (valid, dead, counts) | beam.Flatten() | beam.CombinePerKey(sum)
        assert_that(totals, check_conservation)


def test_validate_events_counts_unknown_fields_dropped_and_conserves_read():
    chunks = [json_chunk([line(event(event_id="a", colour="red")), line(event(event_id="b")), b"{"], source="a.jsonl"),
              json_chunk([line(event(event_id="c", colour="blue", size=1))], source="b.jsonl")]

    def check(totals):
        by_name = dict(totals)
        assert by_name == {"read": 4, "valid": 3, "invalid": 1, "unknown_fields_dropped": 2}, by_name

    with TestPipeline(runner="FnApiRunner") as p:
        out = p | beam.Create(chunks) | ValidateEvents(RULES)
        valid = out[dl.VALID] | "ValidCount" >> beam.Map(lambda batch: ("valid", batch.num_rows))
        counts = out[dl.COUNTS] | "CountItems" >> beam.FlatMap(lambda c: c.items())
        totals = (valid, counts) | beam.Flatten() | beam.CombinePerKey(sum)
        assert_that(totals, check)


@pytest.mark.parametrize("field, value", [
    ("score", float("nan")), ("score", float("inf")), ("confidence", 1e39), ("confidence", float("-inf")),
    ("score", 10**400),
])
def test_non_finite_or_out_of_range_numbers_are_schema_mismatch(field, value):
    # NaN != NaN would turn identical retries into conflicts; 1e39 would silently become float32 inf.
    # Passed as a decoded record: JSON cannot carry NaN or infinities, Avro can.
    result = EventParser(RULES).parse_one(b"", event_v2(**{field: value}), 2, "avro")
    assert isinstance(result, Rejected)
    assert result.reason == dl.SCHEMA_MISMATCH
    assert result.detail.startswith(field)


def test_avro_retries_with_a_nan_score_are_rejected_not_conflicting(tmp_path):
    schema = registry.load_schema_json(registry.event_schema_file(2))
    record = {**{k: v for k, v in event_v2().items() if k != "schema_version"}, "score": float("nan")}
    buffer = io.BytesIO()
    fastavro.writer(buffer, schema, [record, record])
    path = tmp_path / "nan.avro"
    path.write_bytes(buffer.getvalue())
    [chunk] = read_avro_records(ByteRange(str(path), "avro", 0, -1))
    columns, dead = EventParser(RULES).parse_chunk(chunk)
    assert len(columns) == 0
    assert [(d.reason, d.offset) for d in dead] == [(dl.SCHEMA_MISMATCH, 0), (dl.SCHEMA_MISMATCH, 1)]


def test_rules_given_as_a_function_are_read_for_each_chunk_so_a_long_running_stream_moves_its_cutoff():
    from labelbeam.transforms.validate import ParseEventsFn
    # Yesterday's rules reject an event stamped a week after their cutoff; today's accept it.
    later = PETS_EVENT_TIME_MS + 7 * 86_400_000
    clock = {"rules": ValidationRules.at("pets", PETS_EVENT_TIME_MS)}
    parse = ParseEventsFn(lambda: clock["rules"])
    parse.setup()
    chunk = RawChunk("s", "json", [0], [orjson.dumps(v1_event(event_time=later))])

    def outputs():
        return [o for o in parse.process(chunk) if not isinstance(o, beam.pvalue.TaggedOutput) or o.tag == dl.DEAD_LETTER]
    [rejected] = outputs()
    assert rejected.tag == dl.DEAD_LETTER and rejected.value.column("reason")[0].as_py() == dl.BAD_TIMESTAMP
    clock["rules"] = ValidationRules.at("pets", later)
    [accepted] = outputs()
    assert not isinstance(accepted, beam.pvalue.TaggedOutput) and accepted.num_rows == 1
