"""Bundled Avro schemas: they load, v2 reads v1 data, and the registry's compatibility checks."""
import copy
import io

import fastavro
import pytest
from event_builders import PETS_EVENT_TIME_MS, v1_event

from labelbeam.schemas import registry

EVENT_TIME_MS = PETS_EVENT_TIME_MS


v1_record = v1_event


def write_then_read(writer_schema_json, records, reader_schema=None):
    """Records written to an Avro container with writer_schema_json, read back (optionally resolved)."""
    buf = io.BytesIO()
    fastavro.writer(buf, writer_schema_json, records)
    buf.seek(0)
    return list(fastavro.reader(buf, reader_schema=reader_schema))


def test_v1_event_schema_loads_and_parses_with_fastavro():
    schema_json = registry.load_schema_json("annotation_event.v1.avsc")
    parsed = fastavro.parse_schema(schema_json)
    assert parsed["name"] == "labelbeam.events.AnnotationEvent"
    assert [f["name"] for f in schema_json["fields"]] == [
        "event_id", "dataset", "item_id", "annotator_id", "label", "action", "event_time"]


def test_v2_event_schema_loads_and_parses_with_fastavro():
    schema_json = registry.load_schema_json("annotation_event.v2.avsc")
    parsed = fastavro.parse_schema(schema_json)
    assert parsed["name"] == "labelbeam.events.AnnotationEvent"
    assert [f["name"] for f in schema_json["fields"]] == [
        "event_id", "dataset", "item_id", "annotator_id", "label", "action", "event_time",
        "revision", "labels", "score", "duration_ms", "confidence", "metadata"]


def test_load_schema_json_returns_a_fresh_dict_each_call():
    first = registry.load_schema_json("annotation_event.v1.avsc")
    first["fields"].clear()
    assert len(registry.load_schema_json("annotation_event.v1.avsc")["fields"]) == 7


def test_event_schema_by_version_matches_its_file():
    for version in (1, 2):
        from_file = fastavro.parse_schema(registry.load_schema_json(f"annotation_event.v{version}.avsc"))
        assert registry.schema_fingerprint(registry.event_schema(version)) == \
            registry.schema_fingerprint(from_file)


def test_event_schema_of_unknown_version_raises_key_error():
    with pytest.raises(KeyError, match="3"):
        registry.event_schema(3)


def test_consensus_row_schema_loads_and_parses_with_fastavro():
    schema_json = registry.load_schema_json(registry.CONSENSUS_ROW_SCHEMA_FILE)
    fastavro.parse_schema(schema_json)
    names = {f["name"] for f in schema_json["fields"]}
    assert {"item_id", "label", "confidence", "num_votes", "agreement", "status"} <= names


def test_dead_letter_schema_loads_and_parses_with_fastavro():
    schema_json = registry.load_schema_json(registry.DEAD_LETTER_SCHEMA_FILE)
    fastavro.parse_schema(schema_json)
    assert [f["name"] for f in schema_json["fields"]] == [
        "reason", "detail", "raw", "raw_format", "schema_version", "source", "offset", "event_id"]


def test_v2_resolves_v1_with_no_problems():
    assert registry.resolution_problems(registry.event_schema(2), registry.event_schema(1)) == []


def test_v2_resolves_itself_with_no_problems():
    assert registry.resolution_problems(registry.event_schema(2), registry.event_schema(2)) == []


def test_v1_records_read_with_v2_reader_get_v2_defaults():
    records = write_then_read(registry.load_schema_json("annotation_event.v1.avsc"), [v1_record()],
                              reader_schema=registry.load_schema_json("annotation_event.v2.avsc"))
    [record] = records
    assert record["label"] == "cat"
    assert record["action"] == "UPSERT"
    assert record["revision"] == 0
    assert record["labels"] == []
    assert record["score"] is None
    assert record["duration_ms"] is None
    assert record["confidence"] is None
    assert record["metadata"] == {}


def test_v1_records_read_with_v2_reader_keep_event_time_in_ms():
    [record] = write_then_read(registry.load_schema_json("annotation_event.v1.avsc"), [v1_record()],
                               reader_schema=registry.load_schema_json("annotation_event.v2.avsc"))
    event_time = record["event_time"]  # timestamp-millis decodes to an aware datetime
    assert int(event_time.timestamp() * 1000) == EVENT_TIME_MS


def test_v1_delete_with_null_label_round_trips_through_v2_reader():
    delete = v1_record(action="DELETE", label=None)
    [record] = write_then_read(registry.load_schema_json("annotation_event.v1.avsc"), [delete],
                               reader_schema=registry.load_schema_json("annotation_event.v2.avsc"))
    assert record["action"] == "DELETE"
    assert record["label"] is None
    assert record["event_id"] == "e1"
    assert record["labels"] == []


def test_resolution_problems_names_a_reader_field_without_default_missing_from_writer():
    reader = registry.load_schema_json("annotation_event.v2.avsc")
    reader["fields"].append({"name": "priority", "type": "int"})
    problems = registry.resolution_problems(fastavro.parse_schema(reader), registry.event_schema(1))
    assert len(problems) == 1
    assert problems[0].startswith("priority")


def test_resolution_problems_accepts_a_reader_field_with_default_missing_from_writer():
    reader = registry.load_schema_json("annotation_event.v2.avsc")
    reader["fields"].append({"name": "priority", "type": "int", "default": 3})
    assert registry.resolution_problems(fastavro.parse_schema(reader), registry.event_schema(1)) == []


def test_resolution_problems_names_a_field_whose_type_changed():
    reader = registry.load_schema_json("annotation_event.v2.avsc")
    field = next(f for f in reader["fields"] if f["name"] == "event_time")
    field["type"] = "string"
    problems = registry.resolution_problems(fastavro.parse_schema(reader), registry.event_schema(2))
    assert len(problems) == 1
    assert problems[0].startswith("event_time")


def test_resolution_problems_names_the_path_inside_an_array():
    writer = registry.load_schema_json("annotation_event.v2.avsc")
    field = next(f for f in writer["fields"] if f["name"] == "labels")
    field["type"] = {"type": "array", "items": "int"}
    problems = registry.resolution_problems(registry.event_schema(2), fastavro.parse_schema(writer))
    assert len(problems) == 1
    assert problems[0].startswith("labels[]")


def test_resolution_problems_rejects_narrowing_long_to_int():
    writer = registry.load_schema_json("annotation_event.v2.avsc")
    field = next(f for f in writer["fields"] if f["name"] == "revision")
    field["type"] = "long"
    problems = registry.resolution_problems(registry.event_schema(2), fastavro.parse_schema(writer))
    assert len(problems) == 1
    assert problems[0].startswith("revision")


def test_resolution_problems_accepts_promoting_int_to_long():
    assert registry.resolution_problems("long", "int") == []


def test_resolution_problems_rejects_a_nullable_writer_for_a_non_nullable_reader():
    writer = registry.load_schema_json("annotation_event.v2.avsc")
    field = next(f for f in writer["fields"] if f["name"] == "item_id")
    field["type"] = ["null", "string"]
    problems = registry.resolution_problems(registry.event_schema(2), fastavro.parse_schema(writer))
    assert len(problems) == 1
    assert problems[0].startswith("item_id")


def test_v1_reader_resolves_v2_writer_with_no_problems():
    # v1 as reader of v2 data: every v1 field exists in v2 with the same type.
    assert registry.resolution_problems(registry.event_schema(1), registry.event_schema(2)) == []


def test_resolution_problems_accepts_a_schema_with_a_boolean_field_reading_itself():
    # boolean is an Avro primitive and resolves to itself; a future event schema may add one.
    schema_json = registry.load_schema_json("annotation_event.v2.avsc")
    schema_json["fields"].append({"name": "is_gold", "type": "boolean", "default": False})
    parsed = fastavro.parse_schema(schema_json)
    assert registry.resolution_problems(parsed, parsed) == []


def test_event_version_of_identifies_the_v1_schema_json():
    assert registry.event_version_of(registry.load_schema_json("annotation_event.v1.avsc")) == 1


def test_event_version_of_identifies_the_v2_schema_json():
    assert registry.event_version_of(registry.load_schema_json("annotation_event.v2.avsc")) == 2


def test_event_version_of_identifies_the_writer_schema_of_an_avro_file():
    for version in (1, 2):
        buf = io.BytesIO()
        fastavro.writer(buf, registry.load_schema_json(f"annotation_event.v{version}.avsc"), [v1_record()])
        buf.seek(0)
        assert registry.event_version_of(fastavro.reader(buf).writer_schema) == version


def test_event_version_of_ignores_docs_and_defaults():
    schema_json = registry.load_schema_json("annotation_event.v1.avsc")
    schema_json.pop("doc")
    for field in schema_json["fields"]:
        field.pop("doc", None)
    assert registry.event_version_of(schema_json) == 1


def test_event_version_of_an_unknown_schema_is_none():
    schema_json = registry.load_schema_json("annotation_event.v1.avsc")
    schema_json["fields"].append({"name": "priority", "type": "int", "default": 0})
    assert registry.event_version_of(schema_json) is None


def test_event_version_of_an_unrelated_record_is_none():
    unrelated = {"type": "record", "name": "Other", "fields": [{"name": "x", "type": "string"}]}
    assert registry.event_version_of(unrelated) is None


def test_event_version_of_does_not_modify_its_argument():
    schema_json = registry.load_schema_json("annotation_event.v2.avsc")
    before = copy.deepcopy(schema_json)
    registry.event_version_of(schema_json)
    assert schema_json == before


def test_schema_fingerprint_differs_between_v1_and_v2():
    assert registry.schema_fingerprint(registry.event_schema(1)) != \
        registry.schema_fingerprint(registry.event_schema(2))
