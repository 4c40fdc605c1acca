"""Streaming ingest: RawChunks -> a validated, deduplicated, hourly partitioned event log (+ dead letters, counts).

    chunks -> Validate -> PartitionByHour -> DeduplicateAndLog -> LOG_ROOT/events/dt=/hr=/part-*.avro    (LOGGED)
                 |                                 |
                 +------ dead letters -------------+-> WriteDeadLetters -> LOG_ROOT/rejected/dt=/hr=/... (REJECTED)

Parse and validation are the batch build's (ValidateEvents); within-batch deduplication is
lifecycle.deduplicate; the streaming rules (hours, lateness, the TTL) are the pure cores of
events/event_log.py, whose docstring states them. Batched: a bundle's validated rows are joined, then split
into Arrow RecordBatches of one (event_id bucket, event hour); that pair is the key of the stateful writer.

Windows by hand. Everything stays in the global window, so the runner never drops late data itself, and
each (bucket, hour) key is the writer of one hour: it holds only that hour's rows and remembered ids, and
its one timer steps through the hour's end (on-time rows are written), its close (late rows are written;
later ones are dead-lettered TOO_LATE) and its TTL (its ids are forgotten): at most three firings, each
costing what the hour holds. Identical copies of an event share its event time, so they meet in one key;
copies that differ across hours reach the log both, and the nightly build dead-letters them all, as it
would from raw. Files are written with create-only writes under names unique per key, flush and contents
(event_log.part_path), so a late flush never overwrites an on-time file (stock fileio naming can,
BEAM_NOTES.md), a retried bundle rewrites identical bytes, and a second run adds files beside the first.
Dead letters are partitioned by the hour of their element's timestamp: the event's hour for those decided
here, the source's timestamp for ValidateEvents' (dt=unknown/hr=unknown when it has none).

Counts: read (ValidateEvents) = valid (rows written) + invalid (every dead letter) + duplicates, once
every hour has closed (at the end of a bounded or drained run). `late` (rows written in a late file) and
`too_late` (TOO_LATE dead letters, part of invalid) are details.

Watermark (apache-beam 2.77, `--runner=BundleBasedDirectRunner --streaming`, the only local runner with
streaming semantics):
- A DoFn cannot read the watermark. A key learns it from timer firings: its own, and the latest firing the
  DoFn has seen for any key (a lower bound of the stage's watermark, kept per process since the runner
  unpickles a fresh DoFn per bundle). So a writer's view is at most one firing stale: a new hour's first
  rows arriving long after a quiet spell may be judged on time rather than late (written, not lost).
- A timer set before the current watermark fires at once with its own (earlier) timestamp, and timers
  hold no watermark (direct_userstate.py TODO); outputs are timestamped explicitly and nothing is
  windowed downstream, so neither loses data.
- Pipelines end only when no timer is left: a key stops re-arming after its TTL point. Its small
  KeyProgress stays (a few bytes an hour and bucket), so the hour stays closed and file names unique.
"""
from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Iterator

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam import pvalue
from apache_beam.coders import BooleanCoder, PickleCoder, TupleCoder, VarIntCoder
from apache_beam.transforms import userstate, window
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.utils.timestamp import Timestamp
from apache_beam.utils.windowed_value import WindowedValue

from labelbeam.schemas import registry
from labelbeam.transforms.coders import ArrowCoder
from labelbeam.transforms.events import dead_letters as dl
from labelbeam.transforms.events import event_log as el
from labelbeam.transforms.events.parser import MIN_EVENT_TIME_MS
from labelbeam.transforms.events.record_batches import key_hash
from labelbeam.transforms.read_stream import RAW_CHUNKS
from labelbeam.transforms.storage import stores
from labelbeam.transforms.storage.table_files import FileEntry, avro_table_bytes
from labelbeam.transforms.validate import RulesSource, ValidateEvents

LOGGED = "logged"
REJECTED = "rejected"
DEFAULT_BUCKETS = 16
DEFAULT_BATCH_ROWS = 100_000


def _timestamp(ms: int) -> Timestamp:
    return Timestamp(micros=ms * 1000)


def _ms(timestamp: Timestamp) -> int:
    return timestamp.micros // 1000


def _rows_among(rows: pa.Table, event_ids: list[pa.Array]) -> int:
    """How many of `rows` have an event_id in `event_ids`."""
    if not event_ids:
        return 0
    return int(pc.sum(pc.is_in(rows.column("event_id"), value_set=pa.concat_arrays(event_ids))).as_py() or 0)


def _one_batch(table: pa.Table) -> pa.RecordBatch:
    return table.combine_chunks().to_batches()[0]


class LogFiles:
    """Writes the Avro files of the log under LOG_ROOT, create-only, named by event_log.part_path."""

    def __init__(self, log_root: str):
        self._root = log_root
        self._store = stores.store_for(log_root)

    def write(self, kind: str, hour_ms: int, bucket: int, sequence: int, rows: pa.Table,
              file_bytes: Callable[[pa.Table, str], bytes]) -> FileEntry:
        """Writes file_bytes(rows, name) (an Avro file of the rows) under the name its bytes give it."""
        data = file_bytes(rows, el.part_path(kind, hour_ms, bucket, sequence, ""))
        digest = hashlib.sha256(data).hexdigest()
        relative_path = el.part_path(kind, hour_ms, bucket, sequence, digest)
        path = stores.join(self._root, *relative_path.split("/"))
        try:
            self._store.create_only(path, data)
        except stores.AlreadyExists:
            pass  # the same name holds the same bytes: a retried bundle wrote it before
        return FileEntry(relative_path, rows.num_rows, len(data), digest)


def dead_letter_file_bytes(letters: pa.Table, name: str) -> bytes:
    return avro_table_bytes(registry.load_schema_json(registry.DEAD_LETTER_SCHEMA_FILE), letters, name)


HourKey = tuple[int, int]   # (bucket, hour_ms): one writer per bucket of event ids and event hour


def split_into_hours(events: pa.RecordBatch, num_buckets: int) -> Iterator[window.TimestampedValue]:
    for bucket, hour_ms, rows in el.split_by_bucket_and_hour(events, num_buckets):
        yield window.TimestampedValue(((bucket, hour_ms), rows), _timestamp(hour_ms))


class CoalesceBatchesFn(beam.DoFn):
    """RecordBatches -> the same rows in fewer batches of up to `max_rows`, within a bundle.

    The keyed stage costs about 3 ms an element whatever its size (its Arrow calls and state coding), and a
    Pub/Sub message is an element of one event: joined first, a bundle's events reach each hour's writer
    as one element. Measured on 1M events over 6 h: 20k-event chunks 38 s, joined to 100k 29 s. A joined
    batch carries the earliest timestamp of its parts (it only matters for the watermark hold).
    """

    def __init__(self, max_rows: int):
        super().__init__()
        if max_rows < 1:
            raise ValueError(f"max_rows must be positive, got {max_rows}")
        self._max_rows = max_rows

    def start_bundle(self):
        self._batches: list[pa.RecordBatch] = []
        self._rows = 0
        self._earliest: Timestamp | None = None

    def process(self, batch: pa.RecordBatch, timestamp=beam.DoFn.TimestampParam):
        if batch.num_rows == 0:
            return
        self._batches.append(batch)
        self._rows += batch.num_rows
        self._earliest = timestamp if self._earliest is None else min(self._earliest, timestamp)
        if self._rows >= self._max_rows:
            yield window.TimestampedValue(*self._take())

    def finish_bundle(self):
        if self._batches:
            batch, timestamp = self._take()
            yield WindowedValue(batch, timestamp, [window.GlobalWindow()])

    def _take(self) -> tuple[pa.RecordBatch, Timestamp]:
        batch = _one_batch(pa.Table.from_batches(self._batches))
        timestamp = self._earliest
        self.start_bundle()
        return batch, timestamp


class PartitionByHour(beam.PTransform):
    """VALID RecordBatches -> ((bucket, hour_ms), RecordBatch of that hour's rows), in the global window.

    bucket = event_id_hash % num_buckets, so every identical copy of an event (same event_time, so same
    hour) meets in one key; each element is timestamped with its hour's start.
    """

    def __init__(self, num_buckets: int = DEFAULT_BUCKETS, max_batch_rows: int = DEFAULT_BATCH_ROWS):
        super().__init__()
        self._num_buckets = _checked_buckets(num_buckets)
        self._max_batch_rows = max_batch_rows

    def expand(self, batches):
        return (batches
                | "InGlobalWindow" >> beam.WindowInto(window.GlobalWindows())
                | "Coalesce" >> beam.ParDo(CoalesceBatchesFn(self._max_batch_rows)).with_output_types(pa.RecordBatch)
                | "SplitByBucketAndHour" >> beam.FlatMap(split_into_hours, self._num_buckets).with_output_types(
                    tuple[HourKey, pa.RecordBatch]))


def _checked_buckets(num_buckets: int) -> int:
    if num_buckets < 1:
        raise ValueError(f"num_buckets must be positive, got {num_buckets}")
    return num_buckets


class _WatermarkFloor:
    """The latest timer firing seen by a DoFn's instances in this process, for any key: the stage's
    watermark has passed it (timers fire only then), so it bounds every key's watermark from below and is
    fresher than a key's own firings. New or idle hour writers judge lateness by it.

    Process-wide, by the DoFn's id: the direct runner unpickles a fresh DoFn for every bundle."""
    _latest_ms: dict[str, int] = {}

    def __init__(self, dofn_id: str):
        self._id = dofn_id

    def observe(self, ms: int) -> None:
        self._latest_ms[self._id] = max(ms, self._latest_ms.get(self._id, ms))

    def joined(self, key_ms: int | None) -> int | None:
        """The later of the floor and a key's own watermark (None if neither is known)."""
        known = [ms for ms in (self._latest_ms.get(self._id), key_ms) if ms is not None]
        return max(known, default=None)


class DeduplicateAndLogFn(beam.DoFn):
    """((bucket, hour), rows of that hour) -> LOGGED FileEntry, DEAD_LETTER RecordBatches, COUNTS dicts.

    Keyed by bucket AND hour in the global window: windows by hand, so each hour's writer holds only its
    own rows and ids (a flush costs what the hour holds) and the runner never drops late data itself.
    State: the hour's remembered ids (event_log.SEEN_SCHEMA), its waiting rows (late flag, rows), and
    KeyProgress. One timer, stepping through event_log.timer_points_ms: at most three firings per hour.
    """
    SEEN = userstate.ReadModifyWriteStateSpec("seen", ArrowCoder())
    BUFFER = userstate.BagStateSpec("buffer", TupleCoder((BooleanCoder(), ArrowCoder())))
    PROGRESS = userstate.ReadModifyWriteStateSpec("progress", PickleCoder())
    FLUSH = userstate.TimerSpec("flush", TimeDomain.WATERMARK)

    def __init__(self, log_root: str, policy: el.LogPolicy):
        super().__init__()
        self._log_root = log_root
        self._policy = policy
        self._id = uuid.uuid4().hex

    def setup(self):
        self._files = LogFiles(self._log_root)
        self._watermark = _WatermarkFloor(self._id)
        counter = beam.metrics.Metrics.counter
        self._logged, self._duplicates = counter("labelbeam", "logged"), counter("labelbeam", "duplicates")
        self._late, self._too_late = counter("labelbeam", "late"), counter("labelbeam", "too_late")
        self._conflicts = counter("labelbeam", "conflicts")

    def _save(self, hour_ms: int, seen: pa.Table, progress: el.KeyProgress, seen_state, progress_state, timer):
        if progress.watermark_ms is not None:
            seen = el.expire_seen(seen, progress.watermark_ms, self._policy)
        if seen.num_rows:
            seen_state.write(seen)
        else:
            seen_state.clear()
        progress_state.write(progress)
        at = el.next_timer_ms(hour_ms, progress.watermark_ms, self._policy)
        if at is not None:
            timer.set(_timestamp(at))

    def process(self, element: tuple[HourKey, pa.RecordBatch],
                seen_state=beam.DoFn.StateParam(SEEN), buffer=beam.DoFn.StateParam(BUFFER),
                progress_state=beam.DoFn.StateParam(PROGRESS), flush_timer=beam.DoFn.TimerParam(FLUSH)):
        (_, hour_ms), batch = element
        hour_start = _timestamp(hour_ms)
        progress = progress_state.read() or el.KeyProgress()
        progress = progress._replace(watermark_ms=self._watermark.joined(progress.watermark_ms))
        result = el.deduplicate_with_ttl(el.seen_from_state(seen_state.read()), pa.Table.from_batches([batch]))
        seen, invalid, too_late = result.seen, result.conflicts.num_rows, 0
        if invalid:
            self._conflicts.inc(invalid)
            yield pvalue.TaggedOutput(dl.DEAD_LETTER, window.TimestampedValue(
                el.event_dead_letters(result.conflicts, dl.EVENT_ID_CONFLICT, el.conflict_detail()), hour_start))
        if result.kept.num_rows:
            arrival = el.arrival_state(hour_ms, progress.watermark_ms, self._policy)
            if arrival == el.CLOSED:
                _, _, seen = el.settle_flush(seen, result.kept)  # remembered, so later copies are duplicates
                too_late = result.kept.num_rows
                self._too_late.inc(too_late)
                yield pvalue.TaggedOutput(dl.DEAD_LETTER, window.TimestampedValue(el.event_dead_letters(
                    result.kept, dl.TOO_LATE, el.too_late_detail(hour_ms, self._policy)), hour_start))
            else:
                late = arrival == el.LATE
                buffer.add((late, _one_batch(result.kept)))
                progress = progress._replace(buffered=progress.buffered | {late})
        self._save(hour_ms, seen, progress, seen_state, progress_state, flush_timer)
        self._duplicates.inc(result.duplicates)
        yield pvalue.TaggedOutput(dl.COUNTS, window.TimestampedValue(
            {"duplicates": result.duplicates, "invalid": invalid + too_late, "too_late": too_late}, hour_start))

    @userstate.on_timer(FLUSH)
    def flush(self, key=beam.DoFn.KeyParam, fired=beam.DoFn.TimestampParam,
              seen_state=beam.DoFn.StateParam(SEEN), buffer=beam.DoFn.StateParam(BUFFER),
              progress_state=beam.DoFn.StateParam(PROGRESS), flush_timer=beam.DoFn.TimerParam(FLUSH)):
        bucket, hour_ms = key
        self._watermark.observe(_ms(fired))
        progress = progress_state.read() or el.KeyProgress()
        watermark_ms = self._watermark.joined(progress.watermark_ms)
        seen = el.seen_from_state(seen_state.read())
        due = {late for late in progress.buffered if el.flush_deadline_ms(hour_ms, late, self._policy) <= watermark_ms}
        files, counts = progress.files, {"valid": 0, "late": 0, "invalid": 0}
        if due:
            waiting = [(late, rows) for late, rows in buffer.read()]
            buffer.clear()
            for late, rows in waiting:
                if late not in due:
                    buffer.add((late, rows))
            rows = pa.Table.from_batches([batch for late, batch in waiting if late in due])
            late_ids = [batch.column("event_id") for late, batch in waiting if late and late in due]
            to_log, conflicted, seen = el.settle_flush(seen, rows)
            if conflicted.num_rows:
                counts["invalid"] += conflicted.num_rows
                self._conflicts.inc(conflicted.num_rows)
                yield pvalue.TaggedOutput(dl.DEAD_LETTER, window.TimestampedValue(el.event_dead_letters(
                    conflicted, dl.EVENT_ID_CONFLICT, el.conflict_detail()), _timestamp(hour_ms)))
            if to_log.num_rows:
                yield self._files.write(el.EVENTS_DIR, hour_ms, bucket, files, to_log, el.log_file_bytes)
                files += 1
                late_rows = _rows_among(to_log, late_ids)
                counts["valid"] += to_log.num_rows
                counts["late"] += late_rows
                self._logged.inc(to_log.num_rows)
                self._late.inc(late_rows)
        progress = el.KeyProgress(watermark_ms, files, progress.buffered - due)
        self._save(hour_ms, seen, progress, seen_state, progress_state, flush_timer)
        if any(counts.values()):
            yield pvalue.TaggedOutput(dl.COUNTS, counts)


class WriteDeadLettersFn(beam.DoFn):
    """((bucket, hour), DEAD_LETTER RecordBatch) -> FileEntry: one file per key each time the watermark
    passes the hour's end. Letters that come after go to the key's next file (nothing is too late here)."""
    BUFFER = userstate.BagStateSpec("buffer", ArrowCoder())
    FILES = userstate.ReadModifyWriteStateSpec("files", VarIntCoder())
    FLUSH = userstate.TimerSpec("flush", TimeDomain.WATERMARK)

    def __init__(self, log_root: str):
        super().__init__()
        self._log_root = log_root

    def setup(self):
        self._files = LogFiles(self._log_root)

    def process(self, element: tuple[HourKey, pa.RecordBatch], buffer=beam.DoFn.StateParam(BUFFER),
                flush_timer=beam.DoFn.TimerParam(FLUSH)):
        (_, hour_ms), letters = element
        buffer.add(letters)
        flush_timer.set(_timestamp(MIN_EVENT_TIME_MS if hour_ms == el.UNKNOWN_HOUR else hour_ms + el.HOUR_MS))

    @userstate.on_timer(FLUSH)
    def flush(self, key=beam.DoFn.KeyParam, buffer=beam.DoFn.StateParam(BUFFER),
              files_state=beam.DoFn.StateParam(FILES)):
        bucket, hour_ms = key
        letters = pa.Table.from_batches(list(buffer.read()), schema=dl.DEAD_LETTER_SCHEMA).sort_by(dl.SORT_ORDER)
        buffer.clear()
        if letters.num_rows:
            files = files_state.read() or 0
            yield self._files.write(el.REJECTED_DIR, hour_ms, bucket, files, letters, dead_letter_file_bytes)
            files_state.write(files + 1)


def key_dead_letters(letters: pa.RecordBatch, num_buckets: int, timestamp=beam.DoFn.TimestampParam) -> Iterator[
        tuple[HourKey, pa.RecordBatch]]:
    """((bucket of the first letter's source, hour of the element's timestamp), letters); empty batches
    are dropped."""
    if letters.num_rows:
        yield (key_hash(letters.column("source")[0].as_py()) % num_buckets, el.partition_hour(_ms(timestamp))), letters


class WriteDeadLetters(beam.PTransform):
    """DEAD_LETTER RecordBatches -> FileEntry of each file written under LOG_ROOT/rejected/dt=/hr=/."""

    def __init__(self, log_root: str, num_buckets: int = DEFAULT_BUCKETS):
        super().__init__()
        self._log_root = log_root
        self._num_buckets = _checked_buckets(num_buckets)

    def expand(self, letters):
        return (letters
                | "InGlobalWindow" >> beam.WindowInto(window.GlobalWindows())
                | "KeyBySourceAndHour" >> beam.FlatMap(key_dead_letters, self._num_buckets).with_output_types(
                    tuple[HourKey, pa.RecordBatch])
                | "Write" >> beam.ParDo(WriteDeadLettersFn(self._log_root)))


class IngestEvents(beam.PTransform):
    """RawChunks -> {LOGGED: FileEntry per event-log file, REJECTED: FileEntry per dead-letter file,
    DEAD_LETTER: pa.RecordBatch (DEAD_LETTER_SCHEMA), COUNTS: dict}.

    The input may also be a source's dict {RAW_CHUNKS: RawChunks, DEAD_LETTER: ..., COUNTS: ...} (a
    Pub/Sub source dead-letters undecodable messages itself): its dead letters and counts join these.

    Every raw event ends up written to the log once, dead-lettered once, or counted as a duplicate
    (once every hour it touched has closed). Paths in FileEntry are relative to `log_root`.
    """

    def __init__(self, rules: RulesSource, log_root: str, policy: el.LogPolicy = el.LogPolicy(),
                 num_buckets: int = DEFAULT_BUCKETS):
        super().__init__()
        _checked_buckets(num_buckets)
        self._rules = rules
        self._log_root = log_root
        self._policy = policy
        self._num_buckets = num_buckets

    def expand(self, source):
        chunks, source_dead_letters, source_counts = source, (), ()
        if isinstance(source, dict):
            chunks = source[RAW_CHUNKS]
            source_dead_letters, source_counts = (source[dl.DEAD_LETTER],), (source[dl.COUNTS],)
        validated = chunks | "Validate" >> ValidateEvents(self._rules)
        logged = (validated[dl.VALID]
                  | "PartitionByHour" >> PartitionByHour(self._num_buckets)
                  | "DeduplicateAndLog" >> beam.ParDo(DeduplicateAndLogFn(self._log_root, self._policy)).with_outputs(
                      dl.DEAD_LETTER, dl.COUNTS, main=LOGGED))
        dead_letters = (validated[dl.DEAD_LETTER], logged[dl.DEAD_LETTER], *source_dead_letters) | \
            "CollectDeadLetters" >> beam.Flatten()
        rejected = dead_letters | "WriteDeadLetters" >> WriteDeadLetters(self._log_root, self._num_buckets)
        counts = (validated[dl.COUNTS], logged[dl.COUNTS], *source_counts) | "CollectCounts" >> beam.Flatten()
        return {LOGGED: logged[LOGGED], REJECTED: rejected, dl.DEAD_LETTER: dead_letters, dl.COUNTS: counts}
