"""Beam coders for the hot path's big elements: Arrow record batches, tables and arrays.

Beam samples element sizes for its counters by encoding elements, even inside a fused stage.
With few, large elements that sampling cost more than the shuffle itself (measured: ~0.8 s per
1M events), so these coders estimate size without encoding. Encoding uses pickle, which pyarrow
implements with its IPC buffers. Transforms declare the element types (with_output_types) so
Beam picks these coders; importing this module registers them.
"""
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


class ArrowCoder(PickledCoder):
    """pa.RecordBatch, pa.Table or pa.Array."""

    def estimate_size(self, value) -> int:
        return value.nbytes


for arrow_type in (pa.RecordBatch, pa.Table, pa.Array):
    beam.coders.registry.register_coder(arrow_type, ArrowCoder)
