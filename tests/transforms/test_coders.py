"""ArrowCoder round-trips every Arrow element type and encodes a slice by its own size."""
import pyarrow as pa
import pytest

from labelbeam.transforms.coders import ArrowCoder

TABLE = pa.table({"n": [1, 2, None], "s": ["x", "y", "z"]}).replace_schema_metadata({b"k": b"v"})


@pytest.mark.parametrize("value", [
    TABLE, TABLE.slice(1, 1), TABLE.schema.empty_table(), TABLE.to_batches()[0],
    pa.RecordBatch.from_pylist([], schema=TABLE.schema), pa.array(["a", None, "c"]), pa.array([], pa.int64()),
], ids=["table", "table slice", "empty table", "batch", "empty batch", "array", "empty array"])
def test_round_trip_keeps_type_values_and_schema_metadata(value):
    coder = ArrowCoder()
    decoded = coder.decode(coder.encode(value))
    assert type(decoded) is type(value)
    assert decoded.equals(value)
    if hasattr(value, "schema"):
        assert decoded.schema.metadata == value.schema.metadata


def test_a_slice_is_encoded_without_its_parent_buffers():
    parent = pa.array([f"item-{i:07d}" for i in range(100_000)])
    coder = ArrowCoder()
    whole = len(coder.encode(parent))
    for value in (parent.slice(10, 100), pa.table({"item_id": parent}).slice(10, 100)):
        assert len(coder.encode(value)) < whole / 100
        assert coder.decode(coder.encode(value)).equals(value)
