"""Streaming sources: DecodeMessages on PubsubMessages, ReadDroppedFiles on BundleBased --streaming, and
ReadMessages end to end against the real Pub/Sub emulator (gcloud's google-cloud-cli-pubsub-emulator)."""
import gzip
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid

import apache_beam as beam
import fastavro
import orjson
import pytest
from apache_beam.io.gcp.pubsub import PubsubMessage
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.direct.test_stream_impl import _TestStream
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.test_stream import ElementEvent
from apache_beam.testing.util import assert_that, equal_to
from event_builders import RULES, T0, event
from google.cloud import pubsub_v1

from labelbeam.schemas import registry
from labelbeam.transforms.events import dead_letters as dl
from labelbeam.transforms.events.messages import single_object_encode
from labelbeam.transforms.events.parser import EventParser
from labelbeam.transforms.read_stream import (
    RAW_CHUNKS,
    DecodeMessages,
    DropDirectoryFeed,
    ReadDroppedFiles,
    ReadMessages,
    is_dropped_file,
)

PROJECT = "labelbeam-test"
SUBSCRIPTION = f"projects/{PROJECT}/subscriptions/ingest"
STREAMING = ["--runner=BundleBasedDirectRunner", "--streaming"]
V1_SCHEMA = registry.load_schema_json(registry.event_schema_file(1))
V2_SCHEMA = registry.load_schema_json(registry.event_schema_file(2))
FOREIGN_SCHEMA = {"type": "record", "name": "Click", "fields": [{"name": "url", "type": "string"}]}
PIPELINE_TIMEOUT_S = 45


def avro_record(event_id: str, **v2_fields) -> dict:
    record = {"event_id": event_id, "dataset": "pets", "item_id": "i1", "annotator_id": "a1", "label": "cat",
              "action": "UPSERT", "event_time": T0}
    return {**record, **v2_fields}


def summary(chunk) -> list[tuple]:
    """(source, raw_format, offset, the event's JSON bytes or event_id) per event of a chunk."""
    if chunk.raw_format == "json":
        return [(chunk.source, "json", offset, payload) for offset, payload in zip(chunk.offsets, chunk.payloads)]
    return [(chunk.source, "avro", offset, record["event_id"]) for offset, record in zip(chunk.offsets, chunk.records)]


def source(message_id: str) -> str:
    return f"pubsub://{SUBSCRIPTION}#{message_id}"


def dead_letter_summary(batch) -> list[tuple]:
    return [(letter.source, letter.reason, letter.raw) for letter in dl.from_record_batch(batch)]


def run_until_finished(pipeline: beam.Pipeline, timeout_s: float = PIPELINE_TIMEOUT_S) -> None:
    """Run a pipeline that must end by itself; cancel it and fail if it is still running after timeout_s."""
    result = pipeline.run()
    errors = []

    def wait():
        try:
            result.wait_until_finish()
        except Exception as err:  # re-raised in the test's thread below
            errors.append(err)

    waiter = threading.Thread(target=wait, daemon=True)
    waiter.start()
    waiter.join(timeout_s)
    if waiter.is_alive():
        result.cancel()
        pytest.fail(f"the pipeline was still running after {timeout_s} s: a bounded source must end by itself")
    if errors:
        raise errors[0]


# --- DecodeMessages on PubsubMessage objects ------------------------------------------------------------------

def test_decode_messages_turns_each_message_into_one_chunk_or_one_dead_letter():
    json_v1 = orjson.dumps(event("e1"))
    json_v2 = orjson.dumps(event("e2", revision=1))
    avro_v1 = single_object_encode(avro_record("e3"), V1_SCHEMA)
    avro_v2 = single_object_encode(avro_record("e4", revision=2, labels=["cat"]), V2_SCHEMA)
    foreign = single_object_encode({"url": "https://example.com"}, FOREIGN_SCHEMA)
    truncated = avro_v2[:-4]
    messages = [PubsubMessage(data, {"origin": "tool"}, message_id=message_id)
                for message_id, data in (("m1", json_v1), ("m2", json_v2), ("m3", avro_v1), ("m4", avro_v2),
                                         ("m5", foreign), ("m6", truncated))]
    with TestPipeline(runner="BundleBasedDirectRunner") as p:
        decoded = p | beam.Create(messages) | DecodeMessages(SUBSCRIPTION)
        assert_that(decoded[RAW_CHUNKS] | "Chunks" >> beam.FlatMap(summary),
                    equal_to([(source("m1"), "json", 0, json_v1), (source("m2"), "json", 0, json_v2),
                              (source("m3"), "avro", 0, "e3"), (source("m4"), "avro", 0, "e4")]),
                    label="OneChunkPerDecodedMessage")
        assert_that(decoded[dl.DEAD_LETTER] | "DeadLetters" >> beam.FlatMap(dead_letter_summary),
                    equal_to([(source("m5"), dl.UNKNOWN_SCHEMA_VERSION, foreign),
                              (source("m6"), dl.SCHEMA_MISMATCH, truncated)]),
                    label="OneDeadLetterPerUndecodableMessage")
        assert_that(decoded[dl.COUNTS], equal_to([{"read": 1, "invalid": 1}] * 2), label="CountsOfDeadLetters")


def valid_event_ids(chunk) -> list[str]:
    columns, dead = EventParser(RULES).parse_chunk(chunk)
    assert dead == []
    return columns.to_record_batch().column("event_id").to_pylist()


def test_decoded_messages_parse_as_valid_events():
    messages = [PubsubMessage(orjson.dumps(event("e1")), {}, message_id="m1"),
                PubsubMessage(single_object_encode(avro_record("e2"), V1_SCHEMA), {}, message_id="m2")]
    with TestPipeline(runner="BundleBasedDirectRunner") as p:
        chunks = (p | beam.Create(messages) | DecodeMessages(SUBSCRIPTION))[RAW_CHUNKS]
        event_ids = chunks | beam.FlatMap(valid_event_ids)
        assert_that(event_ids, equal_to(["e1", "e2"]))


@pytest.mark.parametrize("subscription", ["ingest", "projects/p/topics/t", "projects//subscriptions/s"])
def test_decode_messages_rejects_a_subscription_that_is_not_a_full_path(subscription):
    with pytest.raises(ValueError, match="projects/<project>/subscriptions/<name>"):
        DecodeMessages(subscription)


# --- ReadDroppedFiles on BundleBased --streaming --------------------------------------------------------------

def test_read_dropped_files_in_streaming_mode_ends_by_itself_and_yields_every_line(tmp_path):
    first = [orjson.dumps(event(f"a{i}")) for i in range(5)]
    second = [orjson.dumps(event(f"b{i}", revision=i)) for i in range(3)]
    # A BOM, a blank line and CRLF endings, as editors write them.
    (tmp_path / "a.jsonl").write_bytes(b"\xef\xbb\xbf" + b"\n".join(first[:2]) + b"\n\n" + b"\r\n".join(first[2:]))
    (tmp_path / "b.jsonl.gz").write_bytes(gzip.compress(b"\n".join(second) + b"\n"))
    with open(tmp_path / "c.avro", "wb") as out:
        fastavro.writer(out, fastavro.parse_schema(V2_SCHEMA), [avro_record(f"c{i}") for i in range(4)])
    a, b, c = (str(tmp_path / name) for name in ("a.jsonl", "b.jsonl.gz", "c.avro"))
    # File offsets: the BOM is not part of the first line, but its bytes still count.
    offsets_a = [0, 3 + len(first[0]) + 1] + [3 + len(first[0]) + len(first[1]) + 3 + i * (len(first[2]) + 2)
                                               for i in range(3)]
    offsets_b = [sum(len(line) + 1 for line in second[:i]) for i in range(3)]
    expected = ([(a, "json", offset, line) for offset, line in zip(offsets_a, first)]
                + [(b, "json", offset, line) for offset, line in zip(offsets_b, second)]
                + [(c, "avro", i, f"c{i}") for i in range(4)])
    p = beam.Pipeline(options=PipelineOptions(STREAMING))
    chunks = p | ReadDroppedFiles(str(tmp_path / "*"), chunk_events=2)
    assert_that(chunks | beam.FlatMap(summary), equal_to(expected))
    assert_that(chunks | "ChunkSizes" >> beam.Map(len), equal_to([2, 2, 1, 2, 1, 2, 2]), label="ChunksOfAtMostTwo")
    run_until_finished(p)


def test_read_dropped_files_with_no_match_ends_with_no_chunks(tmp_path):
    p = beam.Pipeline(options=PipelineOptions(STREAMING))
    assert_that(p | ReadDroppedFiles(str(tmp_path / "*.jsonl")), equal_to([]))
    run_until_finished(p)


# --- ReadMessages against the real Pub/Sub emulator -----------------------------------------------------------

def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _emulator_command(gcloud: str, port: int) -> list[str]:
    """The emulator's own start script if the SDK has it (one JVM, quick to stop), else gcloud's wrapper."""
    sdk_root = subprocess.run([gcloud, "info", "--format=value(installation.sdk_root)"], capture_output=True,
                              text=True, check=True, timeout=60).stdout.strip()
    script = pathlib.Path(sdk_root) / "platform" / "pubsub-emulator" / "bin" / "cloud-pubsub-emulator"
    if script.exists():
        return [str(script), "--host=127.0.0.1", f"--port={port}"]
    return [gcloud, "beta", "emulators", "pubsub", "start", f"--host-port=127.0.0.1:{port}"]


@pytest.fixture(scope="module")
def pubsub_emulator(tmp_path_factory):
    """host:port of a Pub/Sub emulator running for this module; PUBSUB_EMULATOR_HOST points at it meanwhile."""
    gcloud = shutil.which("gcloud")
    if gcloud is None:
        pytest.skip("gcloud is not installed: the Pub/Sub emulator test needs gcloud with the "
                    "google-cloud-cli-pubsub-emulator component and Java")
    port = _free_loopback_port()
    host = f"127.0.0.1:{port}"
    log_path = tmp_path_factory.mktemp("pubsub-emulator") / "emulator.log"
    environment = {**os.environ, "JAVA_OPTS": "-Xmx256m"}
    with open(log_path, "wb") as log:
        # A session of its own, so teardown stops the JVM and any wrapper process as one group.
        process = subprocess.Popen(_emulator_command(gcloud, port), stdout=log, stderr=subprocess.STDOUT,
                                   env=environment, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while "Server started" not in log_path.read_text(errors="replace"):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the Pub/Sub emulator did not start on {host}: {log_path.read_text()}")
            time.sleep(0.1)
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("PUBSUB_EMULATOR_HOST", host)
            yield host
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


class WriteEachFn(beam.DoFn):
    """Writes each element to a file of its own in `folder` (atomically), for a test to poll while it runs."""

    def __init__(self, folder: str):
        super().__init__()
        self._folder = folder

    def process(self, element):
        path = os.path.join(self._folder, uuid.uuid4().hex)
        with open(path + ".tmp", "w", encoding="utf-8") as out:
            json.dump(element, out)
        os.replace(path + ".tmp", path + ".json")


def _collected(folder: pathlib.Path) -> list:
    return [json.loads(path.read_text(encoding="utf-8")) for path in sorted(folder.glob("*.json"))]


def _as_json(chunk) -> list:
    """[source, raw_format, payload texts (JSON) or records (Avro)]: what the collector writes of a chunk."""
    if chunk.raw_format == "avro":
        return [chunk.source, "avro", chunk.records]
    return [chunk.source, "json", [payload.decode() for payload in chunk.payloads]]


def test_read_messages_from_the_pubsub_emulator_decodes_every_message_exactly(pubsub_emulator, tmp_path):
    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    topic = publisher.topic_path(PROJECT, f"events-{uuid.uuid4().hex[:8]}")
    subscription = subscriber.subscription_path(PROJECT, f"ingest-{uuid.uuid4().hex[:8]}")
    publisher.create_topic(name=topic)
    subscriber.create_subscription(name=subscription, topic=topic)
    json_events = [event("j1"), event("j2", revision=1, labels=["cat"])]
    avro_v1, avro_v2 = avro_record("a1"), avro_record("a2", revision=2, score=0.5, metadata={"k": "v"})
    payloads = [orjson.dumps(obj) for obj in json_events] + [
        single_object_encode(avro_v1, V1_SCHEMA), single_object_encode(avro_v2, V2_SCHEMA),
        single_object_encode({"url": "https://example.com"}, FOREIGN_SCHEMA),
        single_object_encode(avro_v1, V1_SCHEMA)[:-2], b"{not json"]
    message_ids = [publisher.publish(topic, payload, origin="test").result(timeout=30) for payload in payloads]
    named = {message_id: f"pubsub://{subscription}#{message_id}" for message_id in message_ids}
    j1, j2, a1, a2, foreign, truncated, garbage = message_ids
    expected_chunks = sorted([
        [named[j1], "json", [payloads[0].decode()]], [named[j2], "json", [payloads[1].decode()]],
        [named[a1], "avro", [avro_v1]],
        [named[a2], "avro", [{**avro_v2, "labels": [], "duration_ms": None, "confidence": None}]],
        [named[garbage], "json", ["{not json"]]])
    expected_dead = sorted([[named[foreign], dl.UNKNOWN_SCHEMA_VERSION, payloads[4].hex()],
                            [named[truncated], dl.SCHEMA_MISMATCH, payloads[5].hex()]])
    chunks_dir, dead_dir = tmp_path / "chunks", tmp_path / "dead"
    chunks_dir.mkdir()
    dead_dir.mkdir()

    p = beam.Pipeline(options=PipelineOptions(STREAMING))
    decoded = p | ReadMessages(subscription)
    _ = decoded[RAW_CHUNKS] | "ChunkJson" >> beam.Map(_as_json) | "WriteChunks" >> beam.ParDo(WriteEachFn(str(chunks_dir)))
    _ = (decoded[dl.DEAD_LETTER]
         | "DeadJson" >> beam.FlatMap(lambda batch: [[s, r, raw.hex()] for s, r, raw in dead_letter_summary(batch)])
         | "WriteDead" >> beam.ParDo(WriteEachFn(str(dead_dir))))
    result = p.run()
    try:
        deadline = time.monotonic() + PIPELINE_TIMEOUT_S
        while len(_collected(chunks_dir)) + len(_collected(dead_dir)) < len(payloads):
            assert time.monotonic() < deadline, \
                f"only {_collected(chunks_dir)} and {_collected(dead_dir)} of {len(payloads)} messages arrived"
            time.sleep(0.2)
        chunks, dead = _collected(chunks_dir), _collected(dead_dir)
    finally:
        _cancel_pubsub_pipeline(result, publisher, topic)
    assert sorted(chunks) == expected_chunks
    assert sorted(dead) == expected_dead


def _cancel_pubsub_pipeline(result, publisher: pubsub_v1.PublisherClient, topic: str, timeout_s: float = 15) -> None:
    """Cancel a DirectRunner pipeline reading Pub/Sub, without waiting out the reader's pull.

    The DirectRunner's cancel() joins its one worker thread, which sits in a pull of up to 30 s while the
    subscription is idle (the emulator holds an empty pull ~29 s). Messages published meanwhile end the
    pull, so the worker sees the shutdown; they are decoded, but nothing reads them any more.
    """
    canceller = threading.Thread(target=result.cancel, daemon=True)
    canceller.start()
    deadline = time.monotonic() + timeout_s
    while canceller.is_alive() and time.monotonic() < deadline:
        publisher.publish(topic, b"{}", purpose="wake the reader up").result(timeout=10)
        canceller.join(0.5)
    assert not canceller.is_alive(), f"the pipeline did not stop within {timeout_s} s of cancel()"


# --------------------------------------------------------------------------------------------------
# DropDirectoryFeed: a watched directory's files as TestStream events


class FakeClock:
    def __init__(self, seconds: float):
        self.seconds = seconds

    def __call__(self) -> float:
        return self.seconds


def feed_events(events) -> list[tuple]:
    """("paths", [...], timestamp ms) or ("watermark", ms) for each event, decoded as the direct runner
    decodes a TestStreamService's events."""
    out = []
    for payload in events:
        decoded = _TestStream.test_stream_payload_to_events(payload, beam.coders.StrUtf8Coder())
        if isinstance(decoded, ElementEvent):
            [stamp] = {value.timestamp.micros // 1000 for value in decoded.timestamped_values}
            out.append(("paths", [value.value for value in decoded.timestamped_values], stamp))
        else:
            out.append(("watermark", decoded.new_watermark.micros // 1000))
    return out


def test_only_complete_files_are_dropped_files():
    assert is_dropped_file("events-1.jsonl") and is_dropped_file("v2.avro")
    assert not any(is_dropped_file(name) for name in (".events-1.jsonl.tmp", "a.jsonl.part", "b.tmp", ".hidden"))


def test_the_feed_serves_each_complete_file_once_in_path_order_and_skips_earlier_runs_files(tmp_path):
    for name in ("b.jsonl", "a.jsonl", ".c.jsonl.tmp", "done.jsonl"):
        (tmp_path / name).write_text("{}\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "d.jsonl").write_text("{}\n")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "e.jsonl").write_text("{}\n")
    feed = DropDirectoryFeed(str(tmp_path), skip=frozenset({str(tmp_path / "done.jsonl")}))
    assert feed.new_files() == [str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl"), str(tmp_path / "sub" / "d.jsonl")]
    assert feed.new_files() == []
    (tmp_path / ".c.jsonl.tmp").rename(tmp_path / "c.jsonl")  # the writer renames it when complete
    assert feed.new_files() == [str(tmp_path / "c.jsonl")]
    assert feed.served == [str(tmp_path / n) for n in ("a.jsonl", "b.jsonl", "sub/d.jsonl", "c.jsonl")]


def test_the_feed_follows_the_wall_clock_and_ends_with_a_watermark_past_every_hour(tmp_path):
    clock = FakeClock(1_800_000_000.0)
    feed = DropDirectoryFeed(str(tmp_path), poll_seconds=0.01, clock=clock)
    events = feed.read_multiple(None)
    (tmp_path / "a.jsonl").write_text("{}\n")
    first = feed_events([next(events), next(events)])
    assert first == [("paths", [str(tmp_path / "a.jsonl")], 1_800_000_000_000), ("watermark", 1_800_000_000_000)]
    # The clock stands still: the watermark still moves on, by a millisecond (it must strictly increase).
    assert feed_events([next(events)]) == [("watermark", 1_800_000_000_001)]
    clock.seconds += 5.5
    (tmp_path / "b.jsonl").write_text("{}\n")
    assert feed_events([next(events), next(events)]) == [("paths", [str(tmp_path / "b.jsonl")], 1_800_000_005_500),
                                                         ("watermark", 1_800_000_005_500)]
    (tmp_path / "c.jsonl").write_text("{}\n")
    feed.stop()
    rest = feed_events(list(events))
    assert rest[0] == ("paths", [str(tmp_path / "c.jsonl")], 1_800_000_005_500)   # a last look, then drain
    assert rest[1] == ("watermark", 1_800_000_005_500 + DropDirectoryFeed.FINAL_MARGIN_S * 1000)
    assert rest[2][0] == "watermark" and rest[2][1] > rest[1][1] and len(rest) == 3
    assert feed.error is None
