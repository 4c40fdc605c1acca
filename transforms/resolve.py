"""Beam glue for the lifecycle cores: DeduplicateEvents (rules 1-2) and ResolveLifecycle (rules 3-4).

Both shuffle Arrow batches by a stable hash bucket of their key, so every row of one key meets in
one place, then call the pure cores in lifecycle.py on each bucket.
"""
from __future__ import annotations

import apache_beam as beam
import pyarrow as pa
from apache_beam import pvalue

from labelbeam.transforms import dead_letters as dl
from labelbeam.transforms.lifecycle import deduplicate, resolve_latest
from labelbeam.transforms.record_batches import EVENT_SCHEMA, VOTE_SCHEMA, split_by_bucket

VOTES = "votes"
DEFAULT_BUCKETS = 16


def _bucket_table(rows: list, schema: pa.Schema) -> pa.Table:
    tables = [pa.Table.from_batches([r]) if isinstance(r, pa.RecordBatch) else r for r in rows]
    return pa.concat_tables(tables) if tables else schema.empty_table()


class DeduplicateFn(beam.DoFn):
    def process(self, bucket_and_batches):
        _, batches = bucket_and_batches
        result = deduplicate(_bucket_table(list(batches), EVENT_SCHEMA))
        conflicts = result.conflicts
        copies: dict[str, int] = {}
        for event_id in conflicts.column("event_id").to_pylist():
            copies[event_id] = copies.get(event_id, 0) + 1
        columns = {name: conflicts.column(name).to_pylist()
                   for name in ("event_id", "raw", "raw_format", "schema_version", "source", "offset")}
        for i, event_id in enumerate(columns["event_id"]):
            yield pvalue.TaggedOutput(dl.DEAD_LETTER, dl.DeadLetter(
                dl.EVENT_ID_CONFLICT,
                f"event_id: {copies[event_id]} copies of {event_id!r} differ in content",
                columns["raw"][i], columns["raw_format"][i], columns["schema_version"][i],
                columns["source"][i], columns["offset"][i], event_id))
        yield pvalue.TaggedOutput(dl.COUNTS, {"invalid": conflicts.num_rows, "duplicates": result.duplicates,
                                              "valid": result.kept.num_rows})
        if result.kept.num_rows:
            yield result.kept.select(VOTE_SCHEMA.names)


class DeduplicateEvents(beam.PTransform):
    """RecordBatches of events -> {VALID: pa.Table (VOTE_SCHEMA), DEAD_LETTER, COUNTS}.

    Output tables hold unique event_ids; provenance columns are dropped. Order is not meaningful.
    """

    def __init__(self, num_buckets: int = DEFAULT_BUCKETS):
        super().__init__()
        self._num_buckets = num_buckets

    def expand(self, batches):
        num_buckets = self._num_buckets
        return (batches
                | "KeyByEventId" >> beam.FlatMap(lambda b: split_by_bucket(b, "event_id", num_buckets))
                | "GroupByEventId" >> beam.GroupByKey()
                | "Deduplicate" >> beam.ParDo(DeduplicateFn()).with_outputs(
                    dl.DEAD_LETTER, dl.COUNTS, main=dl.VALID))


class ResolveLifecycleFn(beam.DoFn):
    def process(self, bucket_and_tables):
        _, tables = bucket_and_tables
        result = resolve_latest(_bucket_table(list(tables), VOTE_SCHEMA))
        yield pvalue.TaggedOutput(dl.COUNTS, {"superseded": result.superseded, "deleted": result.deleted,
                                              "votes": result.votes.num_rows})
        if result.votes.num_rows:
            yield result.votes


class ResolveLifecycle(beam.PTransform):
    """Unique events -> {VOTES: pa.Table, COUNTS}: the standing vote of each annotator on each item.

    Every output table holds all votes of the items it contains, so per-item consensus needs no
    further shuffle.
    """

    def __init__(self, num_buckets: int = DEFAULT_BUCKETS):
        super().__init__()
        self._num_buckets = num_buckets

    def expand(self, events):
        num_buckets = self._num_buckets
        return (events
                | "KeyByItem" >> beam.FlatMap(lambda t: split_by_bucket(t, "item_id", num_buckets))
                | "GroupByItem" >> beam.GroupByKey()
                | "ResolveLatest" >> beam.ParDo(ResolveLifecycleFn()).with_outputs(dl.COUNTS, main=VOTES))
