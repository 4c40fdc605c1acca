"""Streaming sources: Pub/Sub messages or dropped files -> RawChunks for the shared parser.

- `ReadMessages(subscription)`: ReadFromPubSub with attributes (for the message ids; attributes are not carried
  into chunks), then `DecodeMessages`.
- `DecodeMessages(subscription)`: PubsubMessages -> {RAW_CHUNKS: RawChunk, DEAD_LETTER: RecordBatch,
  COUNTS: dict}, one chunk or one dead letter per message (rules in transforms/events/messages.py).
- `ReadDroppedFiles(pattern)`: the files matching a glob, read once as the batch build reads them. A bounded
  source: on `--runner=BundleBasedDirectRunner --streaming` the pipeline ends by itself once they are read
  (MatchFiles + ReadMatches; no splittable-DoFn source runs on that runner).
- `WatchDroppedFiles(endpoint)`: an unbounded local source for development: the paths a `DropDirectoryFeed`
  serves over Beam's TestStreamService (the direct runner's only live-fed source without an emulator) as
  files appear in a directory, read as ReadDroppedFiles reads them. The watermark follows the wall clock,
  as Pub/Sub's publish times do; when the feed stops it passes every hour, so the run drains and ends.
"""
from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable, Iterator

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.io import fileio
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.gcp.pubsub import PubsubMessage, ReadFromPubSub
from apache_beam.portability.api import beam_runner_api_pb2
from apache_beam.testing.test_stream import TestStream
from apache_beam.utils.timestamp import MAX_TIMESTAMP, Timestamp

from labelbeam.transforms import coders  # noqa: F401 - registers the Arrow coder
from labelbeam.transforms.events import dead_letters as dl
from labelbeam.transforms.events.messages import decode_message, message_source
from labelbeam.transforms.events.raw_chunks import RawChunk
from labelbeam.transforms.read import ReadRangeFn  # importing read also registers RawChunkCoder
from labelbeam.transforms.storage.event_files import DEFAULT_CHUNK_EVENTS, DEFAULT_RANGE_BYTES, ByteRange, plan_ranges
from labelbeam.transforms.storage.inputs import AVRO_MAGIC, InputFile

RAW_CHUNKS = "raw_chunks"
TestStreamEvent = beam_runner_api_pb2.TestStreamPayload.Event
TimestampedElement = beam_runner_api_pb2.TestStreamPayload.TimestampedElement
_SUBSCRIPTION = re.compile(r"projects/[^/]+/subscriptions/[^/]+")


def _check_subscription(subscription: str) -> None:
    if not isinstance(subscription, str) or not _SUBSCRIPTION.fullmatch(subscription):
        raise ValueError(f"subscription {subscription!r} is not a full Pub/Sub subscription path; "
                         "write it as projects/<project>/subscriptions/<name>")


@beam.typehints.with_input_types(PubsubMessage)
class DecodeMessageFn(beam.DoFn):
    def __init__(self, subscription: str):
        super().__init__()
        self._subscription = subscription

    def setup(self):
        self._decoded = beam.metrics.Metrics.counter("labelbeam", "messages_decoded")
        self._undecodable = beam.metrics.Metrics.counter("labelbeam", "messages_undecodable")

    def process(self, message: PubsubMessage):
        data = message.data or b""
        decoded = decode_message(data, message_source(self._subscription, message.message_id, data))
        if isinstance(decoded, RawChunk):
            self._decoded.inc()
            yield decoded
            return
        self._undecodable.inc()
        yield pvalue.TaggedOutput(dl.DEAD_LETTER, dl.to_record_batch([decoded]))
        yield pvalue.TaggedOutput(dl.COUNTS, {"read": 1, "invalid": 1})


class DecodeMessages(beam.PTransform):
    """PubsubMessages -> {RAW_CHUNKS: RawChunk, DEAD_LETTER: pa.RecordBatch (DEAD_LETTER_SCHEMA), COUNTS: dict}.

    Every message becomes exactly one output: a RawChunk of its one event, named
    pubsub://<subscription>#<message id>, or a dead letter with the message's bytes
    (UNKNOWN_SCHEMA_VERSION, SCHEMA_MISMATCH) and a COUNTS element {"read": 1, "invalid": 1}. Decoded
    messages are counted where ValidateEvents parses their chunk. Element timestamps pass through.
    """

    def __init__(self, subscription: str):
        super().__init__()
        _check_subscription(subscription)
        self._subscription = subscription

    def expand(self, messages):
        decoded = messages | "Decode" >> beam.ParDo(DecodeMessageFn(self._subscription)).with_output_types(
            RawChunk).with_outputs(dl.DEAD_LETTER, dl.COUNTS, main=RAW_CHUNKS)
        return {RAW_CHUNKS: decoded[RAW_CHUNKS], dl.DEAD_LETTER: decoded[dl.DEAD_LETTER], dl.COUNTS: decoded[dl.COUNTS]}


class ReadMessages(beam.PTransform):
    """A Pub/Sub subscription -> DecodeMessages' outputs. Unbounded: needs a streaming pipeline.

    Elements carry the message's publish time as their timestamp (no timestamp attribute); event time
    is assigned downstream, from `event_time`.
    """

    def __init__(self, subscription: str):
        super().__init__()
        _check_subscription(subscription)
        self._subscription = subscription

    def expand(self, pbegin):
        messages = pbegin | "ReadFromPubSub" >> ReadFromPubSub(
            subscription=self._subscription, with_attributes=True, timestamp_attribute=None)
        return messages | "DecodeMessages" >> DecodeMessages(self._subscription)


def plan_dropped_file(readable: fileio.ReadableFile, range_bytes: int = DEFAULT_RANGE_BYTES) -> list[ByteRange]:
    """The byte ranges of one matched file, its format sniffed from its first bytes as `match_inputs` does."""
    with readable.open(compression_type=CompressionTypes.UNCOMPRESSED) as stream:
        magic = stream.read(len(AVRO_MAGIC))
    raw_format = "avro" if magic == AVRO_MAGIC else "json"
    return plan_ranges([InputFile(readable.metadata.path, readable.metadata.size_in_bytes, raw_format)], range_bytes)


class ReadFiles(beam.PTransform):
    """FileMetadata -> RawChunks of at most `chunk_events` events, read as the batch build reads files.

    JSON Lines (blank lines skipped, a leading BOM dropped, offsets are byte offsets), Avro container files
    (offsets are record indexes), compressed files whole. A truncated or corrupt file raises
    CorruptInputError naming it, as in the build: it is never read in part.
    """

    def __init__(self, chunk_events: int = DEFAULT_CHUNK_EVENTS, range_bytes: int = DEFAULT_RANGE_BYTES):
        super().__init__()
        if range_bytes < 1 or chunk_events < 1:
            raise ValueError(f"range_bytes and chunk_events must be positive, got {range_bytes} and {chunk_events}")
        self._chunk_events = chunk_events
        self._range_bytes = range_bytes

    def expand(self, matched):
        return (matched
                | "ReadMatches" >> fileio.ReadMatches()
                | "PlanRanges" >> beam.FlatMap(plan_dropped_file, self._range_bytes)
                | "ReadRanges" >> beam.ParDo(ReadRangeFn(self._chunk_events)))


class ReadDroppedFiles(beam.PTransform):
    """Files matching a glob -> RawChunks (see ReadFiles). Bounded, so it ends by itself."""

    def __init__(self, pattern: str, chunk_events: int = DEFAULT_CHUNK_EVENTS,
                 range_bytes: int = DEFAULT_RANGE_BYTES):
        super().__init__()
        if not pattern:
            raise ValueError("ReadDroppedFiles needs a file pattern, e.g. 'drop/*.jsonl'")
        self._pattern = pattern
        self._read = ReadFiles(chunk_events, range_bytes)

    def expand(self, pbegin):
        return pbegin | "MatchFiles" >> fileio.MatchFiles(self._pattern) | "Read" >> self._read


def is_dropped_file(name: str) -> bool:
    """Whether a watched directory's file is complete: writers drop a file whole, by writing it under a
    hidden (.name) or .tmp/.part name and renaming it."""
    return not name.startswith(".") and not name.endswith((".tmp", ".part"))


class DropDirectoryFeed:
    """A directory's new files as TestStream events, for a TestStreamService (the `reader` it polls).

    Every `poll_seconds`: the paths of complete files not served before (read once each; later changes
    to a served file are not read), stamped with the wall clock, then the watermark at the wall clock, which
    also keeps the service's stream alive. `stop()` ends the feed: a last look at the directory, then a
    watermark past every hour (finite first, then the end of time; BEAM_NOTES.md), so the pipeline drains.
    """
    FINAL_MARGIN_S = 400 * 24 * 3600  # past any hour's close and TTL

    def __init__(self, directory: str, poll_seconds: float = 1.0, skip: frozenset[str] = frozenset(),
                 clock: Callable[[], float] = time.time):
        if poll_seconds <= 0:
            raise ValueError(f"poll_seconds must be positive, got {poll_seconds}")
        self.directory = os.path.abspath(directory)
        self._poll_seconds = poll_seconds
        self._clock = clock
        self._stopped = threading.Event()
        self._coder = beam.coders.StrUtf8Coder()
        self._watermark = Timestamp(micros=0)
        self.served: list[str] = []
        self.error: Exception | None = None
        self._known = set(skip)

    def stop(self) -> None:
        self._stopped.set()

    @property
    def stopped(self) -> bool:
        return self._stopped.is_set()

    def new_files(self) -> list[str]:
        """Complete files below the directory not served (or skipped) yet, in path order."""
        found = []
        for root, dirs, names in os.walk(self.directory):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            found.extend(os.path.join(root, name) for name in names if is_dropped_file(name))
        fresh = sorted(path for path in found if path not in self._known)
        self._known.update(fresh)
        self.served.extend(fresh)
        return fresh

    def _now(self, ahead_s: float = 0.0) -> Timestamp:
        return Timestamp(micros=int((self._clock() + ahead_s) * 1000) * 1000)  # whole ms, as TestStream keeps them

    # The events are built here in microseconds: the direct runner reads a TestStreamService's timestamps
    # as microseconds (test_stream_impl.py), while Beam's Event.to_runner_api writes milliseconds, which
    # would put every element and watermark in January 1970 (apache-beam 2.77).
    def _advance(self, to: Timestamp) -> TestStreamEvent:
        # The watermark must strictly increase.
        self._watermark = max(to, Timestamp(micros=self._watermark.micros + 1000))
        return TestStreamEvent(watermark_event=TestStreamEvent.AdvanceWatermark(new_watermark=self._watermark.micros))

    def _end(self) -> TestStreamEvent:
        return TestStreamEvent(watermark_event=TestStreamEvent.AdvanceWatermark(new_watermark=MAX_TIMESTAMP.micros))

    def _elements(self, paths: list[str]) -> TestStreamEvent:
        stamp = max(self._now(), self._watermark).micros
        return TestStreamEvent(element_event=TestStreamEvent.AddElements(elements=[
            TimestampedElement(encoded_element=self._coder.encode(path), timestamp=stamp) for path in paths]))

    def read_multiple(self, unused_tags) -> Iterator:
        try:
            while True:
                paths = self.new_files()
                if paths:
                    yield self._elements(paths)
                yield self._advance(self._now())
                if self._stopped.wait(self._poll_seconds):
                    break
            paths = self.new_files()
            if paths:
                yield self._elements(paths)
            yield self._advance(self._now(self.FINAL_MARGIN_S))
            yield self._end()
        except Exception as error:
            # The runner ends the stream quietly when its service fails: keep the error for the launcher.
            self.error = error
            raise


class WatchDroppedFiles(beam.PTransform):
    """The paths a DropDirectoryFeed serves at `endpoint` -> RawChunks (see ReadFiles). Unbounded until the
    feed stops; local runners only (the feed runs in the launching process)."""

    def __init__(self, endpoint: str, chunk_events: int = DEFAULT_CHUNK_EVENTS):
        super().__init__()
        self._endpoint = endpoint
        self._read = ReadFiles(chunk_events)

    def expand(self, pbegin):
        return (pbegin
                | "DroppedPaths" >> TestStream(coder=beam.coders.StrUtf8Coder(), endpoint=self._endpoint)
                | "Match" >> fileio.MatchAll()
                | "Read" >> self._read)
