"""Each Arrow schema of a record that has an .avsc is that .avsc's, field for field."""
import pyarrow as pa
import pytest

from labelbeam.schemas import registry
from labelbeam.schemas.arrow import arrow_schema, arrow_type
from labelbeam.transforms.events.dead_letters import DEAD_LETTER_SCHEMA
from labelbeam.transforms.events.record_batches import EVENT_FIELDS, EVENT_SCHEMA
from labelbeam.transforms.methods.base import CONSENSUS_SCHEMA


def schema_of(file_name: str) -> pa.Schema:
    return arrow_schema(registry.load_schema_json(file_name))


def test_event_fields_are_the_latest_event_schema():
    expected = schema_of(registry.event_schema_file(registry.LATEST_EVENT_SCHEMA_VERSION))
    assert pa.schema(list(EVENT_FIELDS)).equals(expected)
    assert EVENT_SCHEMA.names[:len(expected)] == expected.names


def test_consensus_rows_are_the_consensus_row_schema():
    assert CONSENSUS_SCHEMA.equals(schema_of(registry.CONSENSUS_ROW_SCHEMA_FILE))


def test_dead_letter_rows_are_the_dead_letter_schema():
    assert DEAD_LETTER_SCHEMA.equals(schema_of(registry.DEAD_LETTER_SCHEMA_FILE))


@pytest.mark.parametrize("avro_type, arrow, nullable", [
    ("string", pa.string(), False),
    (["null", "double"], pa.float64(), True),
    ({"type": "long", "logicalType": "timestamp-millis"}, pa.int64(), False),
    ({"type": "enum", "name": "Action", "symbols": ["UPSERT", "DELETE"]}, pa.string(), False),
    ({"type": "array", "items": "string"}, pa.list_(pa.string()), False),
    ({"type": "map", "values": "string"}, pa.map_(pa.string(), pa.string()), False),
    (["null", "float"], pa.float32(), True),
])
def test_avro_types_map_to_arrow_types(avro_type, arrow, nullable):
    assert arrow_type(avro_type) == (arrow, nullable)


def test_unions_of_two_non_null_types_are_refused():
    with pytest.raises(ValueError, match="unions"):
        arrow_type(["null", "string", "long"])


def test_fastavro_write_hint_false_leaves_no_parse_marker_and_reads_as_a_reader_schema():
    # registry.py relies on fastavro.parse_schema(..., _write_hint=False), an argument fastavro documents as
    # internal: pin that it leaves no "__fastavro_parsed" marker and that the result resolves records.
    import io

    import fastavro

    parsed = registry.event_schema(2)
    assert "__fastavro_parsed" not in parsed
    buffer = io.BytesIO()
    v1 = registry.load_schema_json(registry.event_schema_file(1))
    fastavro.writer(buffer, v1, [{"event_id": "e", "dataset": "d", "item_id": "i", "annotator_id": "a",
                                  "label": "cat", "action": "UPSERT", "event_time": 1}])
    buffer.seek(0)
    [record] = list(fastavro.reader(buffer, reader_schema=parsed))
    assert record["revision"] == 0 and record["labels"] == []
