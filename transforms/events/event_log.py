"""The curated event log's pure parts: hour partitions, paths, Avro rows, and deduplication with a TTL.

    LOG_ROOT/events/dt=YYYY-MM-DD/hr=HH/part-BBBBB-SSSSSS-DDDDDDDDDDDD.avro     annotation_event.v2 records, by event_id
    LOG_ROOT/rejected/dt=YYYY-MM-DD/hr=HH/part-BBBBB-SSSSSS-DDDDDDDDDDDD.avro   dead_letter.v1 records

BBBBB is the writer's bucket (of event_id hashes; of sources for dead letters), SSSSSS the writer's count
of files written in that hour, DDDDDDDDDDDD a digest of the file's bytes: every flush gets a name of its
own, a late flush never overwrites an on-time one, and a second run into the same log never collides. Hours are UTC
hours of event time. transforms/ingest.py is the Beam side; everything here works on Arrow tables and
plain values and is tested without Beam.

Lateness (per hour H, with end E = H + 1 h, judged by the watermark the writing key has seen):
- ON_TIME: rows arriving before the watermark passes E; written in one file when it does.
- LATE: rows arriving once it passed E but before E + allowed_lateness; written in one more file when the
  watermark passes E + allowed_lateness (the hour then closes), and counted as `late`.
- CLOSED: rows arriving after that are dead-lettered TOO_LATE, never dropped.

Deduplication per key (rules 1-2 of DESIGN.md, streamed): an event_id is remembered (`SEEN_SCHEMA`: its
hour, a digest of its content, whether it conflicted, whether its kept copy still waits in a buffer) until
the watermark passes its hour's end + ttl and no copy of it waits to be written. Within that time:
- a copy identical to the kept one counts as a duplicate and is not written;
- a copy that differs is dead-lettered EVENT_ID_CONFLICT, and so is every later copy. The kept copy is
  dead-lettered too if it still waits in a buffer; if it was already written (or dead-lettered TOO_LATE)
  it stays, since a log file is never rewritten. The nightly build then keeps that first copy;
- copies of one id inside one batch follow lifecycle.deduplicate exactly.
Ids older than the ttl are forgotten, so memory is bounded by the ids within the ttl (plus waiting rows);
a copy arriving later is treated as new, and the nightly build's DeduplicateEvents collapses the two.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
from collections.abc import Iterable, Iterator
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from labelbeam.schemas import registry
from labelbeam.transforms.arrays import avro_columns
from labelbeam.transforms.events import dead_letters as dl
from labelbeam.transforms.events.lifecycle import deduplicate
from labelbeam.transforms.events.parser import MIN_EVENT_TIME_MS
from labelbeam.transforms.events.record_batches import EVENT_FIELD_NAMES

HOUR_MS = 3_600_000
EVENTS_DIR = "events"
REJECTED_DIR = "rejected"
# The partition of dead letters whose element carries no usable time (e.g. a bounded read's minimum
# timestamp): LOG_ROOT/rejected/dt=unknown/hr=unknown/.
UNKNOWN_HOUR = -1
DIGEST_CHARS = 12
LOG_SCHEMA_FILE = registry.event_schema_file(registry.LATEST_EVENT_SCHEMA_VERSION)
_LOG_ENCODER = avro_columns.RowEncoder(registry.load_schema_json(LOG_SCHEMA_FILE))

ON_TIME, LATE, CLOSED = "on_time", "late", "closed"

SEEN_SCHEMA = pa.schema([
    pa.field("event_id", pa.string(), nullable=False),
    pa.field("hour_ms", pa.int64(), nullable=False),    # latest event hour among the id's copies
    pa.field("digest", pa.uint64(), nullable=False),    # content_digests of the kept copy (0 if none)
    pa.field("conflict", pa.bool_(), nullable=False),   # copies differed: every copy is dead-lettered
    pa.field("pending", pa.bool_(), nullable=False),    # the kept copy waits in a buffer, not yet written
    # digest is repr_content_digests': state written before content_digests hashed Avro datums (a job
    # updated in place keeps its state; those ids expire with their TTL).
    pa.field("legacy_digest", pa.bool_(), nullable=False),
])


@dataclasses.dataclass(frozen=True)
class LogPolicy:
    """When an hour of the log is written and closes, and how long event ids are remembered (milliseconds)."""
    allowed_lateness_ms: int = HOUR_MS
    ttl_ms: int = 24 * HOUR_MS

    def __post_init__(self):
        if self.allowed_lateness_ms < 0:
            raise ValueError(f"allowed_lateness_ms must be 0 or more, got {self.allowed_lateness_ms}")
        if self.ttl_ms < 1:
            raise ValueError(f"ttl_ms must be positive, got {self.ttl_ms}; it is how long event ids are remembered")


# --------------------------------------------------------------------------------------------------
# Hours, partitions and file names

def hour_of(time_ms):
    """The start of the UTC hour holding each time (ms since the epoch); int or int64 array alike."""
    return time_ms // HOUR_MS * HOUR_MS


def partition_hour(time_ms: int) -> int:
    """hour_of(time_ms), or UNKNOWN_HOUR for a time before 2000-01-01 (no event's hour can be there)."""
    return hour_of(time_ms) if time_ms >= MIN_EVENT_TIME_MS else UNKNOWN_HOUR


def partition_dir(kind: str, hour_ms: int) -> str:
    """e.g. "events/dt=2026-05-28/hr=20": the folder of one hour of `kind` (EVENTS_DIR or REJECTED_DIR)."""
    if hour_ms == UNKNOWN_HOUR:
        return f"{kind}/dt=unknown/hr=unknown"
    start = dt.datetime.fromtimestamp(hour_ms / 1000, tz=dt.timezone.utc)
    return f"{kind}/dt={start:%Y-%m-%d}/hr={start:%H}"


def part_path(kind: str, hour_ms: int, bucket: int, sequence: int, digest: str) -> str:
    """The path, relative to LOG_ROOT, of a writer's `sequence`-th file of one hour, `digest` naming its
    contents (the first hex digits of their sha256). The same rows always get the same name (a retried
    bundle rewrites the same file); other rows never do, so another run into the same log adds files
    beside earlier ones and never collides with them."""
    return f"{partition_dir(kind, hour_ms)}/part-{bucket:05d}-{sequence:06d}-{digest[:DIGEST_CHARS]}.avro"


def split_by_bucket_and_hour(events: pa.RecordBatch, num_buckets: int) -> Iterator[tuple[int, int, pa.RecordBatch]]:
    """(bucket, hour_ms, rows) for each non-empty (event_id_hash % num_buckets, event hour), in that order.

    Every copy of an event_id gets the same bucket. Rows keep their input order within a part.
    """
    if events.num_rows == 0:
        return
    buckets = events.column("event_id_hash").to_numpy().astype(np.int64) % num_buckets
    hours = hour_of(events.column("event_time").to_numpy())
    order = np.lexsort((hours, buckets))
    sorted_buckets, sorted_hours = buckets[order], hours[order]
    starts = np.flatnonzero(np.concatenate(([True], (np.diff(sorted_buckets) != 0) | (np.diff(sorted_hours) != 0))))
    ends = np.append(starts[1:], len(order))
    for start, end in zip(starts, ends):
        yield int(sorted_buckets[start]), int(sorted_hours[start]), events.take(pa.array(order[start:end]))


# --------------------------------------------------------------------------------------------------
# Rows of the log files

def log_rows(events: pa.Table) -> pa.Table:
    """The events sorted by (event_id, source, offset): a log file's row order, the same for the same events."""
    keys = pa.table({"event_id": events.column("event_id"), "source": events.column("source").cast(pa.string()),
                     "offset": events.column("offset")})
    return events.take(pc.sort_indices(keys, sort_keys=[(name, "ascending") for name in keys.column_names]))


def log_file_bytes(events: pa.Table, name: str) -> bytes:
    """An Avro file (LOG_SCHEMA_FILE, map entries sorted by key) of the events in log_rows order."""
    return avro_columns.table_file_bytes(registry.load_schema_json(LOG_SCHEMA_FILE), log_rows(events), name)


def _digests(byte_strings: Iterable[bytes], count: int) -> np.ndarray:
    """The 64-bit blake2b of each byte string (uint64)."""
    blake2b = hashlib.blake2b
    return np.fromiter((int.from_bytes(blake2b(data, digest_size=8).digest(), "little") for data in byte_strings),
                       dtype=np.uint64, count=count)


def content_digests(events: pa.Table | pa.RecordBatch) -> np.ndarray:
    """A 64-bit digest of each row's event fields (uint64): equal content gives equal digests.

    Content is what lifecycle.deduplicate compares: every event field, map entries in any order, not
    where the event was read from. It is the blake2b of the event's v2 Avro datum with map entries
    sorted by key: stable across processes and Python versions.
    """
    return _digests(_LOG_ENCODER.encode(events).rows(), events.num_rows)


def repr_content_digests(events: pa.Table | pa.RecordBatch) -> np.ndarray:
    """content_digests as state written before 2026-11-30 holds them: the blake2b of the repr of each row's
    event fields as Python values, a map as its (key, value) pairs sorted. Only compared with such state."""
    columns = []
    for name in EVENT_FIELD_NAMES:
        column = events.column(name)
        if pa.types.is_map(column.type):
            columns.append([sorted(entries) for entries in column.to_pylist()])
        else:
            columns.append(column.to_pylist())
    return _digests((repr(row).encode() for row in zip(*columns)), events.num_rows)


def event_dead_letters(events: pa.Table, reason: str, detail: str) -> pa.RecordBatch:
    """Dead letters (DEAD_LETTER_SCHEMA) of valid events rejected after validation, sorted as dl.SORT_ORDER.

    `detail` may hold "{event_id}". The wire bytes are not carried past parsing and a stream cannot be
    re-read, so `raw` is the validated event as an annotation_event.v2 Avro datum (raw_format "avro",
    schema_version 2): replayable. Source and offset stay the event's own.
    """
    provenance = events.select(["event_id", "source", "offset"]).to_pylist()
    letters = [dl.DeadLetter(reason, detail.format(event_id=repr(where["event_id"])), datum, "avro",
                             registry.LATEST_EVENT_SCHEMA_VERSION, where["source"], where["offset"], where["event_id"])
               for where, datum in zip(provenance, _LOG_ENCODER.encode(events).rows())]
    batch = dl.to_record_batch(letters)
    return pa.Table.from_batches([batch]).sort_by(dl.SORT_ORDER).combine_chunks().to_batches()[0] if letters else batch


def conflict_detail() -> str:
    return "event_id: copies of {event_id} differ in content"


def too_late_detail(hour_ms: int, policy: LogPolicy) -> str:
    return (f"event_time: its hour {partition_dir(EVENTS_DIR, hour_ms)[len(EVENTS_DIR) + 1:]} had closed "
            f"(allowed lateness {policy.allowed_lateness_ms} ms) before the event arrived")


# --------------------------------------------------------------------------------------------------
# Lateness and timers

def arrival_state(hour_ms: int, watermark_ms: int | None, policy: LogPolicy) -> str:
    """ON_TIME, LATE or CLOSED: how rows of the hour starting at `hour_ms` arriving now are handled."""
    hour_end = hour_ms + HOUR_MS
    if watermark_ms is None or watermark_ms < hour_end:
        return ON_TIME
    return LATE if watermark_ms < hour_end + policy.allowed_lateness_ms else CLOSED


def flush_deadline_ms(hour_ms: int, late: bool, policy: LogPolicy) -> int:
    """When buffered rows are written: on-time rows at the hour's end, late ones when the hour closes."""
    return hour_ms + HOUR_MS + (policy.allowed_lateness_ms if late else 0)


def timer_points_ms(hour_ms: int, policy: LogPolicy) -> list[int]:
    """When the writer of one hour must look at the watermark: the hour's end (on-time rows are written,
    later ones are late), its close (late rows are written, later ones are too late) and the TTL (its
    remembered ids are forgotten). Sorted, without repeats."""
    hour_end = hour_ms + HOUR_MS
    return sorted({hour_end, hour_end + policy.allowed_lateness_ms, expiry_ms(hour_ms, policy)})


def next_timer_ms(hour_ms: int, watermark_ms: int | None, policy: LogPolicy) -> int | None:
    """The hour writer's one timer: its first point after the watermark it has seen; None once all passed."""
    return next((point for point in timer_points_ms(hour_ms, policy)
                 if watermark_ms is None or point > watermark_ms), None)


class KeyProgress(NamedTuple):
    """An hour writer's small state: the watermark its timers have shown, the files it wrote, and which
    rows wait in its buffer (False: on-time rows, True: late rows). Kept after the hour's ids are
    forgotten, so the hour stays closed and file names stay unique."""
    watermark_ms: int | None = None
    files: int = 0
    buffered: frozenset[bool] = frozenset()


# --------------------------------------------------------------------------------------------------
# Deduplication with a TTL

class TtlDedupResult(NamedTuple):
    kept: pa.Table       # one copy of each event_id new to `seen`: to write (or dead-letter TOO_LATE)
    conflicts: pa.Table  # incoming copies to dead-letter EVENT_ID_CONFLICT
    duplicates: int      # incoming copies identical to a kept copy: not written
    seen: pa.Table       # the state after this batch (kept ids are `pending`)


def empty_seen() -> pa.Table:
    return SEEN_SCHEMA.empty_table()


def seen_from_state(state: pa.Table | None) -> pa.Table:
    """The SEEN_SCHEMA table a writer's state holds: empty when it holds none; state written before
    `legacy_digest` existed gets it, all true."""
    if state is None:
        return empty_seen()
    if "legacy_digest" not in state.schema.names:
        state = state.append_column(SEEN_SCHEMA.field("legacy_digest"),
                                    pa.array(np.ones(state.num_rows, dtype=bool)))
    return state.cast(SEEN_SCHEMA)


def _copies_per_id(events: pa.Table, event_ids: pa.Array) -> np.ndarray:
    counts = pc.value_counts(events.column("event_id"))
    positions = pc.index_in(event_ids, value_set=counts.field("values")).to_numpy(zero_copy_only=False)
    return counts.field("counts").to_numpy()[positions]


def _match(seen: pa.Table, event_ids: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(seen rows, positions in event_ids) of the ids present in both; both unique. Probes `seen` against
    the (small) incoming ids, so the hash table is built on the batch, not the state."""
    if seen.num_rows == 0 or len(event_ids) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    positions = pc.index_in(seen.column("event_id"), value_set=event_ids)
    seen_rows = np.flatnonzero(positions.is_valid().to_numpy(zero_copy_only=False))
    return seen_rows, pc.take(positions, pa.array(seen_rows)).to_numpy(zero_copy_only=False).astype(np.int64)


def deduplicate_with_ttl(seen: pa.Table, events: pa.Table) -> TtlDedupResult:
    """Rules 1-2 against the ids remembered in `seen` (SEEN_SCHEMA) and within `events` (EVENT_SCHEMA rows).

    Every incoming row is exactly one of: kept, a conflict, or a duplicate. Within the batch,
    lifecycle.deduplicate decides (identical copies collapse to the first by (source, offset)); the
    batch's copies of a remembered id are then all duplicates (same content) or all conflicts.
    """
    events, seen = events.combine_chunks(), seen.combine_chunks()
    within = deduplicate(events)
    candidates = within.kept.combine_chunks()
    candidate_ids = candidates.column("event_id").combine_chunks()
    copies = _copies_per_id(events, candidate_ids)
    digests = content_digests(candidates)
    candidate_hours = hour_of(candidates.column("event_time").to_numpy())

    hour = seen.column("hour_ms").to_numpy().copy()
    conflict = seen.column("conflict").to_numpy(zero_copy_only=False).copy()
    seen_rows, at = _match(seen, candidate_ids)
    seen_digest = seen.column("digest").to_numpy()[seen_rows]
    candidate_digest = digests[at]
    legacy = seen.column("legacy_digest").to_numpy(zero_copy_only=False)[seen_rows]
    if legacy.any():
        candidate_digest = candidate_digest.copy()
        candidate_digest[legacy] = repr_content_digests(candidates.take(pa.array(at[legacy])))
    conflicting = conflict[seen_rows] | (seen_digest != candidate_digest)
    hour[seen_rows] = np.maximum(hour[seen_rows], candidate_hours[at])
    conflict[seen_rows] |= conflicting
    is_new = np.ones(len(candidate_ids), dtype=bool)
    is_new[at] = False
    duplicates = int(copies[is_new].sum() - np.count_nonzero(is_new) + copies[at[~conflicting]].sum())

    # Ids whose copies differ within this batch: all copies conflict, remembered or not.
    conflict_copies = within.conflicts
    by_id = conflict_copies.group_by("event_id").aggregate([("event_time", "max")]) if conflict_copies.num_rows \
        else pa.table({"event_id": pa.array([], pa.string()), "event_time_max": pa.array([], pa.int64())})
    conflict_ids = by_id.column("event_id").combine_chunks()
    conflict_hours = hour_of(by_id.column("event_time_max").to_numpy())
    known_rows, known_at = _match(seen, conflict_ids)
    hour[known_rows] = np.maximum(hour[known_rows], conflict_hours[known_at])
    conflict[known_rows] = True
    unknown = np.ones(len(conflict_ids), dtype=bool)
    unknown[known_at] = False

    updated = pa.table({"event_id": seen.column("event_id"), "hour_ms": pa.array(hour, pa.int64()),
                        "digest": seen.column("digest"), "conflict": pa.array(conflict, pa.bool_()),
                        "pending": seen.column("pending"), "legacy_digest": seen.column("legacy_digest")},
                       schema=SEEN_SCHEMA)
    new_kept = pa.table({"event_id": candidate_ids.filter(pa.array(is_new)),
                         "hour_ms": pa.array(candidate_hours[is_new], pa.int64()),
                         "digest": pa.array(digests[is_new], pa.uint64()),
                         "conflict": pa.array(np.zeros(np.count_nonzero(is_new), dtype=bool)),
                         "pending": pa.array(np.ones(np.count_nonzero(is_new), dtype=bool)),
                         "legacy_digest": pa.array(np.zeros(np.count_nonzero(is_new), dtype=bool))}, schema=SEEN_SCHEMA)
    new_conflicts = pa.table({"event_id": conflict_ids.filter(pa.array(unknown)),
                              "hour_ms": pa.array(conflict_hours[unknown], pa.int64()),
                              "digest": pa.array(np.zeros(np.count_nonzero(unknown), dtype=np.uint64)),
                              "conflict": pa.array(np.ones(np.count_nonzero(unknown), dtype=bool)),
                              "pending": pa.array(np.zeros(np.count_nonzero(unknown), dtype=bool)),
                              "legacy_digest": pa.array(np.zeros(np.count_nonzero(unknown), dtype=bool))},
                             schema=SEEN_SCHEMA)
    seen = pa.concat_tables([updated, new_kept, new_conflicts]).combine_chunks()

    conflicting_ids = candidate_ids.take(pa.array(at[conflicting], pa.int64()))
    conflicts = pa.concat_tables([conflict_copies, events.filter(pc.is_in(events.column("event_id"),
                                                                          value_set=conflicting_ids))])
    return TtlDedupResult(candidates.filter(pa.array(is_new)), conflicts, duplicates, seen)


def settle_flush(seen: pa.Table, rows: pa.Table) -> tuple[pa.Table, pa.Table, pa.Table]:
    """(rows to write, rows to dead-letter EVENT_ID_CONFLICT, seen) for buffered rows about to be written.

    A buffered copy whose id conflicted after it arrived is dead-lettered, not written. The rows' ids
    stop being pending either way.
    """
    conflict_ids = seen.filter(seen.column("conflict")).column("event_id").combine_chunks()
    conflicted = pc.is_in(rows.column("event_id"), value_set=conflict_ids)
    settled = pc.is_in(seen.column("event_id"), value_set=rows.column("event_id").combine_chunks())
    pending = pc.and_not(seen.column("pending"), settled)
    seen = seen.set_column(SEEN_SCHEMA.get_field_index("pending"), SEEN_SCHEMA.field("pending"), pending)
    return rows.filter(pc.invert(conflicted)), rows.filter(conflicted), seen


def expiry_ms(hour_ms, policy: LogPolicy):
    """When an id of that event hour may be forgotten: the watermark passed the hour's end + ttl."""
    return hour_ms + HOUR_MS + policy.ttl_ms


def expire_seen(seen: pa.Table, watermark_ms: int, policy: LogPolicy) -> pa.Table:
    """`seen` without the ids past their expiry; ids whose kept copy is still pending are kept."""
    seen = seen.combine_chunks()
    expired = (expiry_ms(seen.column("hour_ms").to_numpy(), policy) <= watermark_ms) & \
        ~seen.column("pending").to_numpy(zero_copy_only=False)
    return seen.filter(pa.array(~expired)) if expired.any() else seen
