"""The Arrow layout of validated events on the hot path, and a column builder for it.

Between parsing and writing, events travel as `pa.RecordBatch`es with EVENT_SCHEMA: the latest
event schema's fields, plus where each event came from (for dead letters) and its content
fingerprint (for deduplication).
"""
from __future__ import annotations

import zlib
from typing import Iterable, Sequence

import pyarrow as pa

EVENT_FIELDS = (
    pa.field("event_id", pa.string(), nullable=False),
    pa.field("dataset", pa.string(), nullable=False),
    pa.field("item_id", pa.string(), nullable=False),
    pa.field("annotator_id", pa.string(), nullable=False),
    pa.field("label", pa.string()),
    pa.field("action", pa.string(), nullable=False),
    pa.field("event_time", pa.int64(), nullable=False),
    pa.field("revision", pa.int32(), nullable=False),
    pa.field("labels", pa.list_(pa.string()), nullable=False),
    pa.field("score", pa.float64()),
    pa.field("duration_ms", pa.int64()),
    pa.field("confidence", pa.float32()),
    pa.field("metadata", pa.map_(pa.string(), pa.string()), nullable=False),
)
PROVENANCE_FIELDS = (
    pa.field("schema_version", pa.int8(), nullable=False),
    pa.field("source", pa.string(), nullable=False),
    pa.field("offset", pa.int64(), nullable=False),
    pa.field("raw", pa.binary(), nullable=False),
    pa.field("raw_format", pa.string(), nullable=False),
    pa.field("fingerprint", pa.binary(16), nullable=False),
)
EVENT_SCHEMA = pa.schema(EVENT_FIELDS + PROVENANCE_FIELDS)
EVENT_FIELD_NAMES = tuple(f.name for f in EVENT_FIELDS)
# After deduplication only what lifecycle and consensus read is kept.
VOTE_SCHEMA = pa.schema(EVENT_FIELDS)


class EventColumns:
    """Accumulates validated events column by column, then builds one RecordBatch."""

    def __init__(self) -> None:
        self._columns: list[list] = [[] for _ in EVENT_SCHEMA]

    def __len__(self) -> int:
        return len(self._columns[0])

    def append(self, values: Sequence, schema_version: int, source: str, offset: int,
               raw: bytes, raw_format: str, fingerprint: bytes) -> None:
        columns = self._columns
        for column, value in zip(columns, values):
            column.append(value)
        n = len(values)
        columns[n].append(schema_version)
        columns[n + 1].append(source)
        columns[n + 2].append(offset)
        columns[n + 3].append(raw)
        columns[n + 4].append(raw_format)
        columns[n + 5].append(fingerprint)

    def to_record_batch(self) -> pa.RecordBatch:
        arrays = []
        for field, values in zip(EVENT_SCHEMA, self._columns):
            if pa.types.is_map(field.type):
                values = [list(m.items()) for m in values]
            arrays.append(pa.array(values, type=field.type))
        return pa.RecordBatch.from_arrays(arrays, schema=EVENT_SCHEMA)


def empty_events() -> pa.Table:
    return EVENT_SCHEMA.empty_table()


def stable_bucket(key: str, num_buckets: int) -> int:
    """Bucket of a key, the same in every process and Python version (unlike hash())."""
    return zlib.crc32(key.encode("utf-8")) % num_buckets


def split_by_bucket(batch: pa.RecordBatch | pa.Table, key_column: str,
                    num_buckets: int) -> Iterable[tuple[int, pa.RecordBatch | pa.Table]]:
    """(bucket, rows of that bucket) for each non-empty bucket, rows keyed by stable_bucket(key)."""
    if num_buckets == 1:
        if batch.num_rows:
            yield 0, batch
        return
    import numpy as np

    # Hash each distinct key once: items repeat across their votes.
    encoded = pa.chunked_array([batch.column(key_column)]).dictionary_encode().combine_chunks()
    distinct = encoded.dictionary.to_pylist()
    bucket_of_distinct = np.fromiter((stable_bucket(k, num_buckets) for k in distinct),
                                     dtype=np.int32, count=len(distinct))
    buckets = bucket_of_distinct[encoded.indices.to_numpy(zero_copy_only=False)]
    order = np.argsort(buckets, kind="stable")
    sorted_buckets = buckets[order]
    bounds = np.flatnonzero(np.diff(sorted_buckets)) + 1
    starts = np.concatenate(([0], bounds))
    ends = np.concatenate((bounds, [len(order)]))
    for start, end in zip(starts, ends):
        if end > start:
            yield int(sorted_buckets[start]), batch.take(pa.array(order[start:end]))
