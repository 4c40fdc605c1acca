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
from labelbeam.transforms.sources import fetch_raw_events

VOTES = "votes"
DEFAULT_BUCKETS = 16


def _bucket_table(rows: list, schema: pa.Schema) -> pa.Table:
    tables = [pa.Table.from_batches([r]) if isinstance(r, pa.RecordBatch) else r for r in rows]
    return pa.concat_tables(tables) if tables else schema.empty_table()


def conflict_dead_letters(conflicts: pa.Table) -> list[dl.DeadLetter]:
    """EVENT_ID_CONFLICT dead letters for every copy, with raw bytes re-read from their sources."""
    rows = conflicts.select(["event_id", "schema_version", "source", "raw_format", "offset"]).to_pylist()
    copies: dict[str, int] = {}
    offsets_by_source: dict[tuple[str, str], list[int]] = {}
    for row in rows:
        copies[row["event_id"]] = copies.get(row["event_id"], 0) + 1
        offsets_by_source.setdefault((row["source"], row["raw_format"]), []).append(row["offset"])
    raw = {key: fetch_raw_events(key[0], key[1], offsets) for key, offsets in sorted(offsets_by_source.items())}
    return [dl.DeadLetter(dl.EVENT_ID_CONFLICT,
                          f"event_id: {copies[row['event_id']]} copies of {row['event_id']!r} differ in content",
                          raw[(row["source"], row["raw_format"])][row["offset"]], row["raw_format"],
                          row["schema_version"], row["source"], row["offset"], row["event_id"])
            for row in rows]


class DeduplicateFn(beam.DoFn):
    def process(self, bucket_and_batches):
        _, batches = bucket_and_batches
        result = deduplicate(_bucket_table(list(batches), EVENT_SCHEMA))
        for letter in conflict_dead_letters(result.conflicts):
            yield pvalue.TaggedOutput(dl.DEAD_LETTER, letter)
        yield pvalue.TaggedOutput(dl.COUNTS, {"invalid": result.conflicts.num_rows, "duplicates": result.duplicates,
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
                | "KeyByEventId" >> beam.FlatMap(lambda b: split_by_bucket(b, "event_id_hash", num_buckets))
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
                | "KeyByItem" >> beam.FlatMap(lambda t: split_by_bucket(t, "item_id_hash", num_buckets))
                | "GroupByItem" >> beam.GroupByKey()
                | "ResolveLatest" >> beam.ParDo(ResolveLifecycleFn()).with_outputs(dl.COUNTS, main=VOTES))
