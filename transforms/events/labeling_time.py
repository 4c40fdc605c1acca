"""Labeling time: the hours of human work behind a version, from the events' `duration_ms`.

Every valid event counts, superseded revisions and deletes included: that work was done even if a later
answer replaced it. Duplicates and invalid events do not (a transport retry is not more work). Partials
are additive, one table per item bucket, summed per annotator where the version is written.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

LABELING_TIME_SCHEMA = pa.schema([
    pa.field("annotator_id", pa.string(), nullable=False),
    pa.field("events", pa.int64(), nullable=False),
    pa.field("duration_ms", pa.int64(), nullable=False),       # summed over the events that have one
    pa.field("without_duration", pa.int64(), nullable=False),  # events with no (or a negative) duration_ms
])
MS_PER_HOUR = 3_600_000
LABELING_TIME = "labeling_time"  # the tag of the per-bucket partials in the build's graph


def labeling_time(events: pa.Table) -> pa.Table:
    """Per annotator of `events` (annotator_id, duration_ms columns): events, summed duration, events without one.

    A negative duration is not time spent: it counts as missing rather than subtracting work."""
    duration = events.column("duration_ms")
    usable = pc.fill_null(pc.greater_equal(duration, 0), False)
    table = pa.table({"annotator_id": events.column("annotator_id"),
                      "duration_ms": pc.if_else(usable, duration, 0).cast(pa.int64()),
                      "without_duration": pc.invert(usable).cast(pa.int64()),
                      "events": pa.array(np.ones(events.num_rows, dtype=np.int64))})
    return _summed(table)


def sum_labeling_time(partials: list[pa.Table]) -> pa.Table:
    """The partials of all buckets -> one row per annotator, sorted by annotator_id."""
    return _summed(pa.concat_tables(partials) if partials else LABELING_TIME_SCHEMA.empty_table())


def _summed(table: pa.Table) -> pa.Table:
    if table.num_rows == 0:
        return LABELING_TIME_SCHEMA.empty_table()
    sums = table.group_by("annotator_id").aggregate(
        [("events", "sum"), ("duration_ms", "sum"), ("without_duration", "sum")])
    summed = pa.table([sums.column("annotator_id"), sums.column("events_sum"), sums.column("duration_ms_sum"),
                       sums.column("without_duration_sum")], schema=LABELING_TIME_SCHEMA)
    return summed.sort_by("annotator_id")


def labeling_summary(per_annotator: pa.Table) -> dict[str, Any]:
    """The manifest's `labeling_time` section: total hours, events, and how many lack a duration."""
    events = int(pc.sum(per_annotator.column("events")).as_py() or 0)
    duration_ms = int(pc.sum(per_annotator.column("duration_ms")).as_py() or 0)
    without = int(pc.sum(per_annotator.column("without_duration")).as_py() or 0)
    return {"hours": round(duration_ms / MS_PER_HOUR, 3), "duration_ms": duration_ms, "events": events,
            "events_without_duration": without,
            "share_without_duration": round(without / events, 6) if events else None,
            "annotators": per_annotator.num_rows}
