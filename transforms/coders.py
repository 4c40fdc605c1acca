"""Beam coders for the hot path's big elements: Arrow record batches, tables and arrays.

Beam samples element sizes for its counters by encoding elements, even inside a fused stage. With few, large
elements that sampling cost more than the shuffle itself (measured: ~0.8 s per 1M events), so these coders
estimate size without encoding. Arrow data is encoded as an Arrow IPC stream, not pickled: pickle writes a
slice's whole parent buffers (a Parquet read of 625k rows pickled to 5x its size), while IPC writes only the
sliced rows and decodes without copying. Transforms declare the element types (with_output_types) so Beam
picks these coders; importing this module registers them."""
from __future__ import annotations

import pickle

import apache_beam as beam
import pyarrow as pa


class PickledCoder(beam.coders.Coder):
    """Pickle encoding; not deterministic, so never use these coders for keys."""

    def encode(self, value) -> bytes:
        return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)

    def decode(self, encoded: bytes):
        return pickle.loads(encoded)

    def is_deterministic(self) -> bool:
        return False

    def __eq__(self, other):
        return type(self) is type(other)

    def __hash__(self):
        return hash(type(self))


# The kind is padded to 8 bytes so the IPC buffers that follow stay 8-byte aligned when decoded in
# place (Arrow's compute engine warns about, and slows down on, misaligned buffers).
_TABLE, _BATCH, _ARRAY = (kind.ljust(8, b"\0") for kind in (b"T", b"B", b"A"))
_KIND_BYTES = 8


class ArrowCoder(PickledCoder):
    """pa.RecordBatch, pa.Table or pa.Array, as an 8-byte kind and an Arrow IPC stream."""

    def encode(self, value) -> bytes:
        if isinstance(value, pa.Table):
            kind, table = _TABLE, value
        elif isinstance(value, pa.RecordBatch):
            kind, table = _BATCH, pa.Table.from_batches([value])
        else:
            kind, table = _ARRAY, pa.table({"values": value})
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        return kind + sink.getvalue().to_pybytes()

    def decode(self, encoded: bytes):
        kind = encoded[:_KIND_BYTES]
        table = pa.ipc.open_stream(memoryview(encoded)[_KIND_BYTES:]).read_all()
        if kind == _TABLE:
            return table
        if kind == _BATCH:
            return table.combine_chunks().to_batches()[0] if table.num_rows else \
                pa.RecordBatch.from_pylist([], schema=table.schema)
        column = table.column(0)
        return column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)

    def estimate_size(self, value) -> int:
        return value.nbytes


for arrow_type in (pa.RecordBatch, pa.Table, pa.Array):
    beam.coders.registry.register_coder(arrow_type, ArrowCoder)


class SizedCoder(PickledCoder):
    """Pickle for the pipeline's own containers of arrays and tables (NamedTuples), with the size
    estimate taken from their `nbytes`, or the sum of their fields' `nbytes`, instead of encoding."""

    def estimate_size(self, value) -> int:
        if hasattr(value, "nbytes"):
            return value.nbytes
        return sum(getattr(part, "nbytes", 0) for part in value)
