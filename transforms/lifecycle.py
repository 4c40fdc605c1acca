"""Pure pyarrow/numpy cores of the event lifecycle rules (DESIGN.md, rules 1-4).

Neither function depends on input row order: both sort by their full keys first.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

LATEST_WINS_ORDER = [("dataset", "ascending"), ("item_id", "ascending"), ("annotator_id", "ascending"),
                     ("revision", "ascending"), ("event_time", "ascending"), ("event_id", "ascending")]


class DedupResult(NamedTuple):
    kept: pa.Table        # one row per event_id whose copies are all identical
    conflicts: pa.Table   # every copy of each event_id seen with different contents
    duplicates: int       # identical copies dropped


class LifecycleResult(NamedTuple):
    votes: pa.Table       # the latest UPSERT per (dataset, item_id, annotator_id), sorted by that key
    superseded: int       # events that a later event of the same annotator on the same item replaced
    deleted: int          # latest events that are DELETEs: the annotator withdrew the vote


def starts_of_runs(table: pa.Table, columns: list[str]) -> np.ndarray:
    """Boolean mask: row i starts a new run of equal values in `columns` (row 0 always does)."""
    n = table.num_rows
    starts = np.zeros(n, dtype=bool)
    if n == 0:
        return starts
    starts[0] = True
    for name in columns:
        column = table.column(name)
        changed = pc.not_equal(column.slice(1), column.slice(0, n - 1))
        starts[1:] |= changed.to_numpy(zero_copy_only=False)
    return starts


def deduplicate(events: pa.Table) -> DedupResult:
    """Rules 1 and 2: identical copies of an event_id collapse to one, differing copies all conflict.

    Content identity is the `fingerprint` column. Among identical copies the one read first by
    (source, offset) is kept.
    """
    order = pc.sort_indices(events, sort_keys=[("event_id", "ascending"), ("fingerprint", "ascending"),
                                               ("source", "ascending"), ("offset", "ascending")])
    events = events.take(order)
    first_of_id = starts_of_runs(events, ["event_id"])
    first_of_content = starts_of_runs(events, ["event_id", "fingerprint"])
    group = np.cumsum(first_of_id) - 1
    # A group conflicts if any row starts a new content without starting a new event_id.
    conflicting_group = np.bincount(group, weights=first_of_content & ~first_of_id,
                                    minlength=group[-1] + 1 if len(group) else 0) > 0
    conflict = conflicting_group[group] if len(group) else np.zeros(0, dtype=bool)
    keep = first_of_id & ~conflict
    duplicates = int(np.count_nonzero(~first_of_id & ~conflict))
    return DedupResult(events.filter(pa.array(keep)), events.filter(pa.array(conflict)), duplicates)


def resolve_latest(events: pa.Table) -> LifecycleResult:
    """Rules 3 and 4: per (dataset, item_id, annotator_id) the greatest (revision, event_time, event_id) wins.

    A winning DELETE leaves no vote. Event ids must already be unique (see `deduplicate`).
    """
    events = events.take(pc.sort_indices(events, sort_keys=LATEST_WINS_ORDER))
    n = events.num_rows
    starts = starts_of_runs(events, ["dataset", "item_id", "annotator_id"])
    last_of_group = np.empty(n, dtype=bool)
    last_of_group[:-1] = starts[1:]
    if n:
        last_of_group[-1] = True
    winners = events.filter(pa.array(last_of_group))
    is_delete = pc.equal(winners.column("action"), "DELETE")
    deleted = int(pc.sum(is_delete).as_py() or 0)
    votes = winners.filter(pc.invert(is_delete))
    return LifecycleResult(votes, n - winners.num_rows, deleted)
