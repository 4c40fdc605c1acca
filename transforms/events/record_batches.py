"""The Arrow layout of validated events on the hot path, a column builder, and stable bucketing.

Between parsing and writing, events travel as `pa.RecordBatch`es with EVENT_SCHEMA: the latest
event schema's fields, where each event came from (for dead letters), and crc32 hashes of event_id
and item_id that pick shuffle buckets. Raw bytes
are not carried: the few dead letters that need them after the shuffle re-read them from
(source, offset).
"""
from __future__ import annotations

import zlib
from collections.abc import Iterable

import numpy as np
import pyarrow as pa

from labelbeam.schemas import registry
from labelbeam.schemas.arrow import arrow_fields

# The latest event schema's fields, from its .avsc (schemas/arrow.py has the type mapping).
EVENT_FIELDS = tuple(arrow_fields(registry.load_schema_json(
    registry.event_schema_file(registry.LATEST_EVENT_SCHEMA_VERSION))))
PROVENANCE_FIELDS = (
    pa.field("schema_version", pa.int8(), nullable=False),
    pa.field("source", pa.dictionary(pa.int32(), pa.string()), nullable=False),
    pa.field("raw_format", pa.dictionary(pa.int32(), pa.string()), nullable=False),
    pa.field("offset", pa.int64(), nullable=False),
    pa.field("event_id_hash", pa.uint32(), nullable=False),
)
# Bucketing key of the item-level shuffles, carried from parsing through to consensus.
ITEM_HASH_FIELD = pa.field("item_id_hash", pa.uint32(), nullable=False)
EVENT_SCHEMA = pa.schema(EVENT_FIELDS + (ITEM_HASH_FIELD,) + PROVENANCE_FIELDS)
EVENT_FIELD_NAMES = tuple(f.name for f in EVENT_FIELDS)
# Where each field sits in a validated event's value tuple (the validators' output order).
FIELD_POSITION = {name: position for position, name in enumerate(EVENT_FIELD_NAMES)}
_EVENT_ID, _ITEM_ID = FIELD_POSITION["event_id"], FIELD_POSITION["item_id"]
# After deduplication only what lifecycle and consensus read is kept.
VOTE_SCHEMA = pa.schema(EVENT_FIELDS + (ITEM_HASH_FIELD,))


class EventColumns:
    """Accumulates the validated events of one source, then builds one RecordBatch.

    Rows are kept as the validator's tuples and transposed once at the end, which is much
    cheaper than appending to one Python list per column. The lists are public so the parser's
    hot loop can bind their append methods.
    """

    def __init__(self, source: str, raw_format: str) -> None:
        self.source = source
        self.raw_format = raw_format
        self.rows: list[tuple] = []
        self.versions: list[int] = []
        self.offsets: list[int] = []
        self.event_hashes: list[int] = []
        self.item_hashes: list[int] = []

    def __len__(self) -> int:
        return len(self.rows)

    def append(self, values: tuple, schema_version: int, offset: int) -> None:
        self.rows.append(values)
        self.versions.append(schema_version)
        self.offsets.append(offset)
        self.event_hashes.append(key_hash(values[_EVENT_ID]))
        self.item_hashes.append(key_hash(values[_ITEM_ID]))

    def to_record_batch(self) -> pa.RecordBatch:
        n = len(self.rows)
        columns = list(zip(*self.rows)) if n else [() for _ in EVENT_FIELDS]
        arrays = [_to_arrow(values, field.type) for values, field in zip(columns, EVENT_FIELDS)]
        zeros = pa.array(np.zeros(n, dtype=np.int32))
        arrays += [
            pa.array(self.item_hashes, pa.uint32()),
            pa.array(self.versions, pa.int8()),
            pa.DictionaryArray.from_arrays(zeros, pa.array([self.source])),
            pa.DictionaryArray.from_arrays(zeros, pa.array([self.raw_format])),
            pa.array(self.offsets, pa.int64()),
            pa.array(self.event_hashes, pa.uint32()),
        ]
        return pa.RecordBatch.from_arrays(arrays, schema=EVENT_SCHEMA)


def _to_arrow(values: tuple, arrow_type: pa.DataType) -> pa.Array:
    if pa.types.is_map(arrow_type):
        offsets = _offsets_of(values)
        keys = pa.array([key for entries in values for key in entries], pa.string())
        items = pa.array([item for entries in values for item in entries.values()], pa.string())
        return pa.MapArray.from_arrays(offsets, keys, items, type=arrow_type)
    if pa.types.is_list(arrow_type):
        flat = pa.array([item for items in values for item in items], arrow_type.value_type)
        return pa.ListArray.from_arrays(_offsets_of(values), flat, type=arrow_type)
    return pa.array(values, arrow_type)


def _offsets_of(values: tuple) -> pa.Array:
    offsets = np.zeros(len(values) + 1, dtype=np.int32)
    np.cumsum(np.fromiter(map(len, values), dtype=np.int32, count=len(values)), out=offsets[1:])
    return pa.array(offsets)


def key_hash(key: str) -> int:
    """Bucketing hash of a key: the same in every process and Python version (unlike hash())."""
    return zlib.crc32(key.encode("utf-8"))


def split_by_bucket(batch: pa.RecordBatch | pa.Table, hash_column: str,
                    num_buckets: int) -> Iterable[tuple[int, pa.RecordBatch | pa.Table]]:
    """(bucket, rows of that bucket) for each non-empty bucket; bucket = key_hash % num_buckets.

    `hash_column` holds key_hash of the key (computed once, while parsing).
    """
    if batch.num_rows == 0:
        return
    if num_buckets == 1:
        yield 0, batch
        return
    buckets = batch.column(hash_column).to_numpy().astype(np.int64) % num_buckets
    order = np.argsort(buckets, kind="stable")
    sorted_buckets = buckets[order]
    bounds = np.flatnonzero(np.diff(sorted_buckets)) + 1
    starts = np.concatenate(([0], bounds))
    ends = np.concatenate((bounds, [len(order)]))
    for start, end in zip(starts, ends):
        yield int(sorted_buckets[start]), batch.take(pa.array(order[start:end]))
