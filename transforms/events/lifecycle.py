"""Pure pyarrow/numpy cores of the event lifecycle rules (DESIGN.md, rules 1-4).

Neither function depends on input row order. Both do the common case (an event_id seen once, an
annotator with one event on an item) with vectorized work and only sort or hash the rest.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from labelbeam.transforms.arrays.factorize import factorize_sorted
from labelbeam.transforms.events.record_batches import EVENT_FIELD_NAMES

VOTE_KEY = ("dataset", "item_id", "annotator_id")


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


def _differs_from_previous(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """differs[i-1]: row i's value is not row i-1's (nulls equal each other, map entries in any order)."""
    n = len(column)
    if pa.types.is_list(column.type) or pa.types.is_map(column.type):
        array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
        lengths = np.diff(array.offsets.to_numpy())  # offsets honour slicing; lists here are never null
        differs = lengths[1:] != lengths[:-1]
        # Only pairs of equal, non-zero length need their entries compared (most lists are empty).
        pairs = np.flatnonzero(~differs & (lengths[1:] > 0))
        if len(pairs):
            current = column.take(pa.array(pairs + 1)).to_pylist()
            previous = column.take(pa.array(pairs)).to_pylist()
            if pa.types.is_map(column.type):
                current, previous = [sorted(v) for v in current], [sorted(v) for v in previous]
            differs[pairs] = np.fromiter((a != b for a, b in zip(current, previous)), dtype=bool, count=len(pairs))
        return differs
    current, previous = column.slice(1), column.slice(0, n - 1)
    both_null = pc.and_(pc.is_null(current), pc.is_null(previous))
    unequal = pc.fill_null(pc.not_equal(current, previous), True)
    return pc.and_not(unequal, both_null).to_numpy(zero_copy_only=False)


def deduplicate(events: pa.Table) -> DedupResult:
    """Rules 1 and 2: identical copies of an event_id collapse to one, differing copies all conflict.

    Content is every event field, not where it was read from, so the same event in JSON v1, JSON
    v2 or Avro is one event. Among identical copies the one read first by (source, offset) is
    kept. Only event_ids that occur more than once are sorted and compared.
    """
    events = events.combine_chunks()
    # Equal ids have equal hashes: only rows whose event_id_hash repeats can repeat an id, so the
    # string grouping runs on those few rows (hash collisions are sorted out by it).
    _, hash_group, hash_count = np.unique(events.column("event_id_hash").to_numpy(), return_inverse=True,
                                          return_counts=True)
    candidates = events.filter(pa.array(hash_count[hash_group] > 1))
    id_counts = candidates.select(["event_id"]).group_by("event_id").aggregate([([], "count_all")])
    repeated_ids = id_counts.filter(pc.greater(id_counts.column("count_all"), 1)).column("event_id")
    if len(repeated_ids) == 0:
        return DedupResult(events, events.slice(0, 0), 0)
    is_repeated = pc.is_in(events.column("event_id"), value_set=repeated_ids.combine_chunks())
    singles, repeated = events.filter(pc.invert(is_repeated)), events.filter(is_repeated)

    keys = pa.table({"event_id": repeated.column("event_id"), "source": repeated.column("source").cast(pa.string()),
                     "offset": repeated.column("offset")})
    repeated = repeated.take(pc.sort_indices(keys, sort_keys=[(name, "ascending") for name in keys.column_names]))
    first_of_id = starts_of_runs(repeated, ["event_id"])
    changed = np.zeros(repeated.num_rows, dtype=bool)
    for name in EVENT_FIELD_NAMES:
        changed[1:] |= _differs_from_previous(repeated.column(name))
    group = np.cumsum(first_of_id) - 1
    # Equality is transitive: an event_id is consistent iff each copy equals the one before it.
    conflicting_group = np.bincount(group, weights=changed & ~first_of_id) > 0
    conflict = conflicting_group[group]
    keep = first_of_id & ~conflict
    duplicates = int(np.count_nonzero(~first_of_id & ~conflict))
    kept = pa.concat_tables([singles, repeated.filter(pa.array(keep))])
    return DedupResult(kept, repeated.filter(pa.array(conflict)), duplicates)


def resolve_latest(events: pa.Table) -> LifecycleResult:
    """Rules 3 and 4: per (dataset, item_id, annotator_id) the greatest (revision, event_time, event_id) wins.

    A winning DELETE leaves no vote. Event ids must already be unique (see `deduplicate`).
    """
    events = events.combine_chunks()
    n = events.num_rows
    if n == 0:
        return LifecycleResult(events, 0, 0)
    key_codes = [factorize_sorted(events.column(name))[0] for name in VOTE_KEY]
    # One int64 key per (dataset, item, annotator) when it fits: lexsort then sorts 3 keys, not 5.
    sizes = [int(codes.max()) + 1 for codes in key_codes]
    if sizes[0] * sizes[1] * sizes[2] < 2 ** 62:
        key_codes = [(key_codes[0] * sizes[1] + key_codes[1]) * sizes[2] + key_codes[2]]
    revision = events.column("revision").to_numpy()
    event_time = events.column("event_time").to_numpy()
    order = np.lexsort((event_time, revision, *reversed(key_codes)))
    starts = np.zeros(n, dtype=bool)
    starts[0] = True
    for codes in key_codes:
        sorted_codes = codes[order]
        starts[1:] |= sorted_codes[1:] != sorted_codes[:-1]
    last = np.flatnonzero(np.append(starts[1:], True))  # sorted position of each group's last row
    first = np.flatnonzero(starts)
    winners = order[last]

    # Equal (revision, event_time) at the top of a group: the greatest event_id wins. Rare, so
    # settled in Python without sorting every event_id.
    previous = last - 1
    tied = (previous >= first) & (revision[order[np.maximum(previous, 0)]] == revision[winners]) & \
        (event_time[order[np.maximum(previous, 0)]] == event_time[winners])
    if tied.any():
        event_ids = events.column("event_id")
        for group in np.flatnonzero(tied):
            top = winners[group]
            candidates = [int(order[p]) for p in range(first[group], last[group] + 1)
                          if revision[order[p]] == revision[top] and event_time[order[p]] == event_time[top]]
            winners[group] = max(candidates, key=lambda row: event_ids[row].as_py())

    winner_rows = events.take(pa.array(winners))
    is_delete = pc.equal(winner_rows.column("action"), "DELETE")
    deleted = int(pc.sum(is_delete).as_py() or 0)
    return LifecycleResult(winner_rows.filter(pc.invert(is_delete)), n - len(winners), deleted)
