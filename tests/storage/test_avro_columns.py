"""avro_columns writes, from Arrow columns, the bytes fastavro writes from the same rows as Python dicts."""
import io
import math

import fastavro
import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from labelbeam.schemas import registry
from labelbeam.schemas.arrow import arrow_schema
from labelbeam.transforms.arrays import avro_columns as ac
from labelbeam.transforms.storage.table_files import avro_table_bytes

BUNDLED = ["annotation_event.v1.avsc", "annotation_event.v2.avsc", "consensus_row.v1.avsc", "consensus_row.v2.avsc",
           "consensus_row.single.v2.avsc", "consensus_row.v3.avsc", "dead_letter.v1.avsc"]
INT32 = st.integers(-2**31, 2**31 - 1)
INT64 = st.integers(-2**63, 2**63 - 1)
TEXT = st.text(max_size=12)   # any code point, the empty string included


def value_strategy(avro_type):
    """Python values fastavro writes for one Avro type, in the shapes Arrow's to_pylist returns."""
    if isinstance(avro_type, list):
        branches = [branch for branch in avro_type if branch != "null"]
        return st.one_of(st.none(), value_strategy(branches[0])) if "null" in avro_type \
            else value_strategy(branches[0])
    if isinstance(avro_type, dict):
        kind = avro_type["type"]
        if kind == "enum":
            return st.sampled_from(avro_type["symbols"])
        if kind == "array":
            return st.lists(value_strategy(avro_type["items"]), max_size=4)
        if kind == "map":
            return st.dictionaries(TEXT, value_strategy(avro_type["values"]), max_size=4)
        return value_strategy(kind)
    return {"string": TEXT, "bytes": st.binary(max_size=12), "int": INT32, "long": INT64, "boolean": st.booleans(),
            "double": st.floats(allow_nan=False) | st.sampled_from([math.inf, -math.inf, -0.0]),
            "float": st.floats(width=32, allow_nan=False)}[avro_type]


def rows_strategy(schema, max_rows=30):
    return st.lists(st.fixed_dictionaries({f["name"]: value_strategy(f["type"]) for f in schema["fields"]}),
                    max_size=max_rows)


def fastavro_file(schema, records, codec="deflate", marker=b"m" * 16, metadata=None) -> bytes:
    sink = io.BytesIO()
    fastavro.writer(sink, schema, records, codec=codec, sync_marker=marker, metadata=metadata)
    return sink.getvalue()


def sorted_maps(schema, records):
    """The records with every map's entries sorted by key: what avro_columns writes."""
    maps = [f["name"] for f in schema["fields"] if isinstance(f["type"], dict) and f["type"]["type"] == "map"]
    return [{**r, **{name: dict(sorted(r[name].items())) for name in maps}} for r in records]


def as_arrow(schema, records) -> pa.Table:
    maps = [f["name"] for f in schema["fields"] if isinstance(f["type"], dict) and f["type"]["type"] == "map"]
    rows = [{**r, **{name: list(r[name].items()) for name in maps}} for r in records]
    return pa.Table.from_pylist(rows, schema=arrow_schema(schema))


@pytest.mark.parametrize("schema_file", BUNDLED)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_bundled_schema_gives_fastavros_bytes_for_generated_rows(schema_file, data):
    schema = registry.load_schema_json(schema_file)
    records = data.draw(rows_strategy(schema))
    table = as_arrow(schema, records)
    expected = sorted_maps(schema, records)
    encoded = ac.encode_rows(schema, table)
    for i, record in enumerate(expected):
        datum = io.BytesIO()
        fastavro.schemaless_writer(datum, fastavro.parse_schema(schema), record)
        assert encoded.data[encoded.offsets[i]:encoded.offsets[i + 1]].tobytes() == datum.getvalue()
    for codec in ("null", "deflate"):
        assert ac.container_bytes(schema, encoded, codec, b"m" * 16, {"k": "v"}) == \
            fastavro_file(schema, expected, codec, metadata={"k": "v"})


def test_files_of_many_blocks_are_cut_where_fastavro_cuts_them():
    schema = registry.event_schema(2)
    rng = np.random.default_rng(3)
    records = [{"event_id": f"e{i}", "dataset": "d", "item_id": "i" * int(rng.integers(0, 300)),
                "annotator_id": "a", "label": None if i % 5 == 0 else "cat", "action": "UPSERT",
                "event_time": int(rng.integers(-2**40, 2**40)), "revision": i % 3, "labels": ["x"] * (i % 4),
                "score": None, "duration_ms": i, "confidence": 0.5, "metadata": {f"k{j}": "v" for j in range(i % 3)}}
               for i in range(3000)]
    table = as_arrow(schema, records)
    data = avro_table_bytes(schema, table, "part.avro")
    assert data == fastavro_file(schema, sorted_maps(schema, records), marker=ac.sync_marker("part.avro", 3000))
    assert len(list(fastavro.block_reader(io.BytesIO(data)))) > 20


def test_sliced_and_chunked_tables_encode_only_their_own_rows():
    schema = registry.event_schema(2)
    records = [{"event_id": f"e{i}", "dataset": "d", "item_id": "x", "annotator_id": "a", "label": "cat",
                "action": "DELETE" if i % 2 else "UPSERT", "event_time": i, "revision": 0, "labels": [str(i)] * i,
                "score": float(i), "duration_ms": None, "confidence": None, "metadata": {str(i): "v", "a": str(i)}}
               for i in range(9)]
    table = as_arrow(schema, records)
    chunked = pa.concat_tables([table.slice(0, 4), table.slice(4)])
    whole = ac.encode_rows(schema, table)
    assert ac.encode_rows(schema, chunked).data.tobytes() == whole.data.tobytes()
    tail = ac.encode_rows(schema, table.to_batches()[0].slice(5))
    assert tail.data.tobytes() == whole.data[whole.offsets[5]:].tobytes()
    assert tail.lengths.tolist() == whole.lengths[5:].tolist()


def test_equal_map_keys_keep_the_last_value_in_sorted_order_as_a_dict_would():
    schema = registry.event_schema(2)
    record = {"event_id": "e", "dataset": "d", "item_id": "x", "annotator_id": "a", "label": "cat",
              "action": "UPSERT", "event_time": 1, "revision": 0, "labels": [], "score": None, "duration_ms": None,
              "confidence": None}
    table = pa.Table.from_pylist([{**record, "metadata": [("b", "2"), ("a", "9"), ("b", "1")]}],
                                 schema=arrow_schema(schema))
    [decoded] = fastavro.reader(io.BytesIO(avro_table_bytes(schema, table, "f")))
    assert list(decoded["metadata"].items()) == [("a", "9"), ("b", "2")]


def test_nested_records_enums_fixed_and_named_references():
    schema = {"type": "record", "name": "Outer", "namespace": "t", "fields": [
        {"name": "point", "type": {"type": "record", "name": "Point", "fields": [
            {"name": "x", "type": "int"}, {"name": "tag", "type": {"type": "fixed", "name": "Tag", "size": 2}}]}},
        {"name": "other", "type": ["null", "t.Point"]},
        {"name": "colour", "type": {"type": "enum", "name": "Colour", "symbols": ["RED", "GREEN"]}},
        {"name": "colours", "type": {"type": "array", "items": "Colour"}},
        {"name": "nothing", "type": "null"},
        {"name": "when", "type": {"type": "long", "logicalType": "timestamp-millis"}}]}
    records = [{"point": {"x": -5, "tag": b"ab"}, "other": None, "colour": "GREEN", "colours": ["RED", "GREEN"],
                "nothing": None, "when": 1_700_000_000_123},
               {"point": {"x": 2**31 - 1, "tag": b"\x00\xff"}, "other": {"x": 0, "tag": b"zz"}, "colour": "RED",
                "colours": [], "nothing": None, "when": -1}]
    point = pa.struct([pa.field("x", pa.int32(), nullable=False), pa.field("tag", pa.binary(2), nullable=False)])
    table = pa.table({"point": pa.array([r["point"] for r in records], point),
                      "other": pa.array([r["other"] for r in records], point),
                      "colour": pa.array([r["colour"] for r in records]).dictionary_encode(),
                      "colours": pa.array([r["colours"] for r in records], pa.list_(pa.string())),
                      "nothing": pa.nulls(2),
                      "when": pa.array([r["when"] for r in records], pa.timestamp("ms"))})
    encoded = ac.encode_rows(schema, table)
    assert ac.container_bytes(schema, encoded, "null", b"m" * 16) == fastavro_file(schema, records, "null")


def test_bad_values_and_unsupported_types_are_refused_clearly():
    schema = {"type": "record", "name": "R", "fields": [{"name": "s", "type": "string"}]}
    with pytest.raises(ValueError, match="null values for the non-null Avro type"):
        ac.encode_rows(schema, pa.table({"s": pa.array(["a", None])}))
    enum_schema = {"type": "record", "name": "E", "fields": [
        {"name": "e", "type": {"type": "enum", "name": "Kind", "symbols": ["A"]}}]}
    with pytest.raises(ValueError, match=r"\['B'\] are not symbols"):
        ac.encode_rows(enum_schema, pa.table({"e": ["A", "B"]}))
    with pytest.raises(ac.UnsupportedAvroType):
        ac.RowEncoder({"type": "record", "name": "U", "fields": [{"name": "u", "type": ["null", "int", "string"]}]})
    millis = {"type": "record", "name": "T", "fields": [
        {"name": "t", "type": {"type": "long", "logicalType": "timestamp-millis"}}]}
    with pytest.raises(TypeError, match="does not hold the integers"):   # micros would be written as millis
        ac.encode_rows(millis, pa.table({"t": pa.array([1], pa.timestamp("us"))}))
    with pytest.raises(ac.UnsupportedAvroType):
        ac.RowEncoder({"type": "record", "name": "D", "fields": [
            {"name": "d", "type": {"type": "bytes", "logicalType": "decimal", "precision": 4}}]})


def test_varints_match_avros_zig_zag_encoding_at_the_edges():
    values = [0, -1, 1, 63, -64, 64, 2**31 - 1, -2**31, 2**63 - 1, -2**63]
    encoded = ac.zigzag_varints(np.array(values, dtype=np.int64))
    offsets = encoded.offsets
    for i, value in enumerate(values):
        expected = io.BytesIO()
        fastavro.schemaless_writer(expected, "long", value)
        assert encoded.data[offsets[i]:offsets[i + 1]].tobytes() == expected.getvalue()


def test_an_empty_table_gives_fastavros_empty_file():
    schema = registry.event_schema(2)
    table = arrow_schema(schema).empty_table()
    assert avro_table_bytes(schema, table, "empty") == fastavro_file(schema, [], marker=ac.sync_marker("empty", 0))
