"""IngestEvents on the BundleBasedDirectRunner in streaming mode, driven by TestStream with explicit watermarks.

Each test asserts the exact files written under a temporary LOG_ROOT (read back with fastavro) and the
exact counts. Times: H0 is 2026-05-28T20:00:00Z, an hour boundary; `at(h, m)` is an event time (ms) and
`arrive(h, m)` an element timestamp (s) h hours and m minutes after it.
"""
import hashlib
import io
import pathlib

import apache_beam as beam
import fastavro
import pyarrow as pa
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import BeamAssertException, assert_that
from apache_beam.transforms.window import TimestampedValue
from event_builders import RULES, chunk, event, lines

from labelbeam.schemas import registry
from labelbeam.transforms.events import dead_letters as dl
from labelbeam.transforms.events import event_log as el
from labelbeam.transforms.events.conservation import sum_counts
from labelbeam.transforms.events.lifecycle import deduplicate
from labelbeam.transforms.events.parser import EventParser
from labelbeam.transforms.events.raw_chunks import RawChunk
from labelbeam.transforms.events.record_batches import key_hash
from labelbeam.transforms.ingest import LOGGED, REJECTED, IngestEvents
from labelbeam.transforms.read import RawChunkCoder
from labelbeam.transforms.storage.event_files import ByteRange, read_avro_records

STREAMING = ["--runner=BundleBasedDirectRunner", "--streaming"]
HOUR = el.HOUR_MS
H0_S = 1_779_998_400
POLICY = el.LogPolicy(allowed_lateness_ms=HOUR, ttl_ms=2 * HOUR)
HR20, HR21, HR22 = "dt=2026-05-28/hr=20", "dt=2026-05-28/hr=21", "dt=2026-05-28/hr=22"


def at(hour: int, minute: int = 0) -> int:
    return (H0_S + hour * 3600 + minute * 60) * 1000


def arrive(hour: int, minute: int = 0) -> int:
    return H0_S + hour * 3600 + minute * 60


def stream() -> TestStream:
    return TestStream(coder=RawChunkCoder())


def send(test_stream: TestStream, events: list, source: str, hour: int, minute: int = 0) -> TestStream:
    """Adds one raw chunk of JSON lines (dicts are encoded, bytes sent as they are) arriving at (hour, minute)."""
    payloads = [e if isinstance(e, bytes) else lines([e])[0] for e in events]
    raw = RawChunk(source, "json", list(range(len(payloads))), payloads)
    return test_stream.add_elements([TimestampedValue(raw, arrive(hour, minute))])


def finish(test_stream: TestStream, hour: int = 12) -> TestStream:
    """A finite watermark past everything first, then infinity (BEAM_NOTES.md: never jump straight to it)."""
    return test_stream.advance_watermark_to(arrive(hour)).advance_watermark_to_infinity()


def outputs_match(root: pathlib.Path, expected_counts: dict[str, int], files_before: frozenset[str] = frozenset()):
    """A matcher of the tagged outputs: COUNTS sum to `expected_counts` (and add up), and LOGGED / REJECTED
    name exactly the files on disk when the pipeline ends, other than `files_before`."""
    def check(tagged):
        total = {key: value for key, value in sum_counts(v for tag, v in tagged if tag == "counts").items() if value}
        if total != expected_counts:
            raise BeamAssertException(f"counts {total} != expected {expected_counts}")
        if total.get("read", 0) != total.get("valid", 0) + total.get("invalid", 0) + total.get("duplicates", 0):
            raise BeamAssertException(f"counts do not add up: {total}")
        for kind in (el.EVENTS_DIR, el.REJECTED_DIR):
            entries = sorted(path for tag, path in tagged if tag == kind)
            on_disk = sorted(str(path.relative_to(root)) for path in (root / kind).rglob("*.avro")
                             if str(path.relative_to(root)) not in files_before)
            if entries != on_disk:
                raise BeamAssertException(f"{kind}: entries {entries} != files {on_disk}")
    return check


def run(test_stream: TestStream, root: pathlib.Path, counts: dict[str, int], policy: el.LogPolicy = POLICY,
        num_buckets: int = 1) -> None:
    """Runs IngestEvents, asserting its COUNTS and that LOGGED / REJECTED list exactly the files it added."""
    files_before = frozenset(str(path.relative_to(root)) for path in root.rglob("*.avro")) if root.exists() \
        else frozenset()
    with TestPipeline(options=PipelineOptions(STREAMING)) as p:
        out = p | test_stream | IngestEvents(RULES, str(root), policy, num_buckets)
        tagged = ((out[dl.COUNTS] | "TagCounts" >> beam.Map(lambda part: ("counts", part)),
                   out[LOGGED] | "TagLogged" >> beam.Map(lambda entry: (el.EVENTS_DIR, entry.path)),
                   out[REJECTED] | "TagRejected" >> beam.Map(lambda entry: (el.REJECTED_DIR, entry.path)))
                  | "AllOutputs" >> beam.Flatten())
        assert_that(tagged, outputs_match(root, counts, files_before))


def read_dir(root: pathlib.Path, kind: str) -> dict[str, list[dict]]:
    """Every file of `kind` under root: path relative to root/kind, without the digest of its bytes that
    ends its name (checked here), -> its records (fastavro)."""
    found = {}
    for path in sorted((root / kind).rglob("*.avro")) if (root / kind).exists() else []:
        stem, digest = path.name[:-len(".avro")].rsplit("-", 1)
        assert digest == hashlib.sha256(path.read_bytes()).hexdigest()[:el.DIGEST_CHARS]
        with open(path, "rb") as stream_:
            found[str(path.relative_to(root / kind).with_name(stem + ".avro"))] = list(fastavro.reader(stream_))
    return found


def logged_ids(root: pathlib.Path) -> dict[str, list[str]]:
    return {path: [r["event_id"] for r in records] for path, records in read_dir(root, "events").items()}


def rejected(root: pathlib.Path) -> dict[str, list[tuple]]:
    return {path: [(r["reason"], r["event_id"]) for r in records] for path, records in read_dir(root, "rejected").items()}


def test_out_of_order_events_are_written_to_their_hours_as_the_watermark_passes_each(tmp_path):
    test_stream = send(stream(), [event("c1", time_ms=at(2, 5)), event("a1", time_ms=at(0, 50)),
                                  event("b1", time_ms=at(1, 1)), event("a2", time_ms=at(0, 10))], "s1", 0, 1)
    test_stream = send(test_stream, [event("b2", time_ms=at(1, 30)), event("a3", time_ms=at(0, 0))], "s2", 0, 2)
    test_stream = test_stream.advance_watermark_to(arrive(1, 1))
    test_stream = send(test_stream, [event("c2", time_ms=at(2, 0)), event("b3", time_ms=at(1, 59))], "s3", 1, 2)
    test_stream = test_stream.advance_watermark_to(arrive(2, 1)).advance_watermark_to(arrive(3, 1))
    run(finish(test_stream), tmp_path, {"read": 8, "valid": 8})
    # One file per hour (each hour's writer counts its own files), rows sorted by event_id.
    assert logged_ids(tmp_path) == {f"{HR20}/part-00000-000000.avro": ["a1", "a2", "a3"],
                                    f"{HR21}/part-00000-000000.avro": ["b1", "b2", "b3"],
                                    f"{HR22}/part-00000-000000.avro": ["c1", "c2"]}
    assert rejected(tmp_path) == {}


def test_a_watermark_jump_across_several_hours_writes_each_hour_in_order(tmp_path):
    test_stream = send(stream(), [event("c", time_ms=at(2, 5)), event("a", time_ms=at(0, 5)),
                                  event("b", time_ms=at(1, 5))], "s1", 0, 1)
    test_stream = test_stream.advance_watermark_to(arrive(4, 30))
    # Late for hour 3, whose writer is new: it judges by the latest firing its DoFn saw (hour 2 closing at
    # 00:00, = hour 3's end), not by a watermark of its own.
    test_stream = send(test_stream, [event("d", time_ms=at(3, 30))], "s2", 4, 31)
    run(finish(test_stream), tmp_path, {"read": 4, "valid": 4, "late": 1})
    assert logged_ids(tmp_path) == {f"{HR20}/part-00000-000000.avro": ["a"], f"{HR21}/part-00000-000000.avro": ["b"],
                                    f"{HR22}/part-00000-000000.avro": ["c"],
                                    "dt=2026-05-28/hr=23/part-00000-000000.avro": ["d"]}


def test_duplicates_within_the_ttl_are_counted_and_not_written(tmp_path):
    test_stream = send(stream(), [event("e1", time_ms=at(0, 5)), event("e1", time_ms=at(0, 5)),
                                  event("e2", time_ms=at(0, 6))], "s1", 0, 10)
    test_stream = send(test_stream, [event("e2", time_ms=at(0, 6))], "s2", 0, 20)  # before the hour is written
    test_stream = test_stream.advance_watermark_to(arrive(1, 1))
    test_stream = send(test_stream, [event("e1", time_ms=at(0, 5))], "s3", 1, 5)  # after: still remembered
    test_stream = test_stream.advance_watermark_to(arrive(2, 30))
    test_stream = send(test_stream, [event("e2", time_ms=at(0, 6))], "s4", 2, 31)  # hour closed, id remembered
    run(finish(test_stream), tmp_path, {"read": 6, "valid": 2, "duplicates": 4})
    assert logged_ids(tmp_path) == {f"{HR20}/part-00000-000000.avro": ["e1", "e2"]}
    assert rejected(tmp_path) == {}


def test_a_duplicate_beyond_the_ttl_is_written_again_and_the_nightly_dedup_collapses_it(tmp_path):
    # ttl 1 h, lateness 3 h: "e1" (hour 0) is forgotten when the watermark passes 02:00, its hour closes at 04:00.
    policy = el.LogPolicy(allowed_lateness_ms=3 * HOUR, ttl_ms=HOUR)
    test_stream = send(stream(), [event("e1", time_ms=at(0, 5))], "s1", 0, 10)
    test_stream = test_stream.advance_watermark_to(arrive(1, 30))
    test_stream = send(test_stream, [event("e1", time_ms=at(0, 5))], "s2", 1, 31)  # within the ttl
    test_stream = test_stream.advance_watermark_to(arrive(2, 30))
    test_stream = send(test_stream, [event("e1", time_ms=at(0, 5))], "s3", 2, 31)  # beyond it: late, written
    run(finish(test_stream), tmp_path, {"read": 3, "valid": 2, "duplicates": 1, "late": 1}, policy)
    assert logged_ids(tmp_path) == {f"{HR20}/part-00000-000000.avro": ["e1"], f"{HR20}/part-00000-000001.avro": ["e1"]}
    # The nightly build reads the log with the same parser and DeduplicateEvents' core: one event.
    parser, tables = EventParser(RULES), []
    for path in sorted((tmp_path / "events").rglob("*.avro")):
        for raw in read_avro_records(ByteRange(str(path), "avro", 0, -1)):
            columns, dead = parser.parse_chunk(raw)
            assert not dead
            tables.append(columns.to_record_batch())
    nightly = deduplicate(pa.Table.from_batches(tables))
    assert (nightly.kept.num_rows, nightly.duplicates, nightly.conflicts.num_rows) == (1, 1, 0)


def test_same_id_different_content_before_the_hour_is_written_dead_letters_every_copy(tmp_path):
    test_stream = send(stream(), [event("e1", label="cat", time_ms=at(0, 5)), event("e2", time_ms=at(0, 6))], "s1", 0, 10)
    test_stream = send(test_stream, [event("e1", label="dog", time_ms=at(0, 5))], "s2", 0, 20)
    run(finish(test_stream.advance_watermark_to(arrive(1, 1))), tmp_path, {"read": 3, "valid": 1, "invalid": 2})
    assert logged_ids(tmp_path) == {f"{HR20}/part-00000-000000.avro": ["e2"]}
    letters = read_dir(tmp_path, "rejected")
    # The differing copy is dead-lettered on arrival, the buffered one when its hour is written.
    assert [(r["reason"], r["event_id"], r["source"]) for records in letters.values() for r in records] == \
        [(dl.EVENT_ID_CONFLICT, "e1", "s2"), (dl.EVENT_ID_CONFLICT, "e1", "s1")]
    assert list(letters) == [f"{HR20}/part-00000-000000.avro", f"{HR20}/part-00000-000001.avro"]


def test_a_differing_copy_after_the_first_was_written_dead_letters_it_and_every_later_copy(tmp_path):
    test_stream = send(stream(), [event("e1", label="cat", time_ms=at(0, 5))], "s1", 0, 10)
    test_stream = test_stream.advance_watermark_to(arrive(1, 1))
    test_stream = send(test_stream, [event("e1", label="dog", time_ms=at(0, 5))], "s2", 1, 2)
    test_stream = send(test_stream, [event("e1", label="cat", time_ms=at(0, 5))], "s3", 1, 3)
    run(finish(test_stream), tmp_path, {"read": 3, "valid": 1, "invalid": 2})
    assert read_dir(tmp_path, "events")[f"{HR20}/part-00000-000000.avro"][0]["label"] == "cat"  # never rewritten
    # Each arrives after the dead letters of its hour were first written, so each gets a file of its own.
    assert rejected(tmp_path) == {f"{HR20}/part-00000-000000.avro": [(dl.EVENT_ID_CONFLICT, "e1")],
                                  f"{HR20}/part-00000-000001.avro": [(dl.EVENT_ID_CONFLICT, "e1")]}


def test_late_events_within_the_lateness_go_to_a_late_file_and_count_as_late(tmp_path):
    test_stream = send(stream(), [event("a", time_ms=at(0, 5)), event("b", time_ms=at(1, 5))], "s1", 0, 10)
    test_stream = test_stream.advance_watermark_to(arrive(1, 10))  # hour 0 written on time
    test_stream = send(test_stream, [event("late1", time_ms=at(0, 30)), event("c", time_ms=at(1, 30))], "s2", 1, 11)
    test_stream = send(test_stream, [event("late2", time_ms=at(0, 59))], "s3", 1, 50)
    test_stream = test_stream.advance_watermark_to(arrive(2, 10))  # hour 0 closes, hour 1 is written
    run(finish(test_stream), tmp_path, {"read": 5, "valid": 5, "late": 2})
    assert logged_ids(tmp_path) == {f"{HR20}/part-00000-000000.avro": ["a"],
                                    f"{HR20}/part-00000-000001.avro": ["late1", "late2"],
                                    f"{HR21}/part-00000-000000.avro": ["b", "c"]}


def test_too_late_events_are_dead_lettered_too_late_in_their_hour_and_replayable(tmp_path):
    test_stream = send(stream(), [event("a", time_ms=at(0, 5))], "s1", 0, 10)
    test_stream = test_stream.advance_watermark_to(arrive(2, 10))  # hour 0 closed at 02:00
    test_stream = send(test_stream, [event("old", label="dog", time_ms=at(0, 30)), event("c", time_ms=at(2, 20))],
                       "s2", 2, 11)
    run(finish(test_stream), tmp_path, {"read": 3, "valid": 2, "invalid": 1, "too_late": 1})
    assert logged_ids(tmp_path) == {f"{HR20}/part-00000-000000.avro": ["a"], f"{HR22}/part-00000-000000.avro": ["c"]}
    [[letter]] = read_dir(tmp_path, "rejected").values()
    assert list(read_dir(tmp_path, "rejected")) == [f"{HR20}/part-00000-000000.avro"]
    assert (letter["reason"], letter["event_id"], letter["source"], letter["offset"]) == (dl.TOO_LATE, "old", "s2", 0)
    assert letter["detail"] == el.too_late_detail(at(0), POLICY)
    replayed = fastavro.schemaless_reader(io.BytesIO(letter["raw"]), registry.event_schema(letter["schema_version"]),
                                          None)
    assert (replayed["event_id"], replayed["label"]) == ("old", "dog")


def test_malformed_messages_become_dead_letters_partitioned_by_their_arrival_hour(tmp_path):
    bad = [b"{not json", b'{"schema_version": 9, "event_id": "x"}', lines([event("", time_ms=at(0))])[0],
           lines([event("t", time_ms=1)])[0]]
    test_stream = send(stream(), bad[:2] + [event("ok", time_ms=at(0, 5))], "s1", 0, 10)
    test_stream = test_stream.advance_watermark_to(arrive(1, 5))  # the 20:00 dead letters are written
    test_stream = send(test_stream, bad[2:], "s2", 0, 50)  # arrives stamped 20:50, after that hour was written
    test_stream = test_stream.add_elements([TimestampedValue(RawChunk("s3", "json", [7], [b"]"]), 0)])  # no time
    run(finish(test_stream), tmp_path, {"read": 6, "valid": 1, "invalid": 5})
    assert logged_ids(tmp_path) == {f"{HR20}/part-00000-000000.avro": ["ok"]}
    letters = read_dir(tmp_path, "rejected")
    assert {path: [(r["reason"], r["source"], r["offset"]) for r in records] for path, records in letters.items()} == {
        f"{HR20}/part-00000-000000.avro": [(dl.MALFORMED_JSON, "s1", 0), (dl.UNKNOWN_SCHEMA_VERSION, "s1", 1)],
        f"{HR20}/part-00000-000001.avro": [(dl.MISSING_FIELD, "s2", 0), (dl.BAD_TIMESTAMP, "s2", 1)],
        "dt=unknown/hr=unknown/part-00000-000000.avro": [(dl.MALFORMED_JSON, "s3", 7)]}
    assert letters[f"{HR20}/part-00000-000000.avro"][0]["raw"] == b"{not json"


def test_v1_and_v2_payloads_and_avro_records_are_logged_as_v2_records(tmp_path):
    v1_schema = registry.load_schema_json(registry.event_schema_file(1))
    avro_record = {"event_id": "avro1", "dataset": "pets", "item_id": "i9", "annotator_id": "a9", "label": "dog",
                   "action": "UPSERT", "event_time": at(0, 7)}
    test_stream = send(stream(), [event("v1", time_ms=at(0, 5)),
                                  event("v2", time_ms=at(0, 6), revision=3, labels=["cat", "dog"], score=0.5,
                                        metadata={"tool": "x", "a": "b"}),
                                  event("same", time_ms=at(0, 8))], "s1", 0, 10)
    # The same event once more, sent as v2 with default values: identical content, a duplicate.
    test_stream = send(test_stream, [event("same", time_ms=at(0, 8), revision=0, labels=[], metadata={})], "s2", 0, 11)
    test_stream = test_stream.add_elements([TimestampedValue(
        RawChunk("f.avro", "avro", [0], [b""], [avro_record], v1_schema), arrive(0, 12))])
    run(finish(test_stream.advance_watermark_to(arrive(1, 1))), tmp_path, {"read": 5, "valid": 4, "duplicates": 1})
    [records] = read_dir(tmp_path, "events").values()
    with open(next((tmp_path / "events").rglob("*.avro")), "rb") as stream_:
        assert fastavro.reader(stream_).writer_schema["name"] == "labelbeam.events.AnnotationEvent"
    by_id = {r["event_id"]: r for r in records}
    assert [r["event_id"] for r in records] == ["avro1", "same", "v1", "v2"]
    assert (by_id["v1"]["revision"], by_id["v1"]["labels"], by_id["v1"]["metadata"]) == (0, [], {})
    assert (by_id["v2"]["revision"], by_id["v2"]["labels"], by_id["v2"]["score"]) == (3, ["cat", "dog"], 0.5)
    assert list(by_id["v2"]["metadata"].items()) == [("a", "b"), ("tool", "x")]
    assert (by_id["avro1"]["label"], by_id["avro1"]["event_time"].timestamp() * 1000) == ("dog", at(0, 7))


def test_copies_of_an_event_id_meet_in_one_bucket_of_several(tmp_path):
    events = [event(f"e{i}", time_ms=at(i % 2, i)) for i in range(24)]
    test_stream = send(stream(), events[:12] + events[:3], "s1", 0, 1)
    test_stream = send(test_stream, events[12:] + events[3:6], "s2", 0, 2)
    run(finish(test_stream.advance_watermark_to(arrive(3))), tmp_path,
        {"read": 30, "valid": 24, "duplicates": 6}, num_buckets=4)
    written = logged_ids(tmp_path)
    assert sorted(i for ids in written.values() for i in ids) == sorted(f"e{i}" for i in range(24))
    for path, ids in written.items():
        bucket = int(path.split("/part-")[1][:5])
        assert {key_hash(i) % 4 for i in ids} == {bucket}
        assert path.startswith(HR20 if all(int(i[1:]) % 2 == 0 for i in ids) else HR21)


def test_the_same_stream_writes_byte_identical_files(tmp_path):
    def scenario():
        test_stream = send(stream(), [event(f"e{i}", time_ms=at(i % 3, i), metadata={"k": str(i), "a": "1"})
                                      for i in range(9)] + [b"oops"], "s1", 0, 1)
        test_stream = test_stream.advance_watermark_to(arrive(1, 1))
        return finish(send(test_stream, [event("x", time_ms=at(0, 40))], "s2", 1, 2))
    for name in ("first", "second"):
        run(scenario(), tmp_path / name, {"read": 11, "valid": 10, "invalid": 1, "late": 1})
    first = sorted(p.relative_to(tmp_path / "first") for p in (tmp_path / "first").rglob("*.avro"))
    assert first == sorted(p.relative_to(tmp_path / "second") for p in (tmp_path / "second").rglob("*.avro"))
    assert len(first) == 5
    for path in first:
        assert (tmp_path / "first" / path).read_bytes() == (tmp_path / "second" / path).read_bytes()


def test_ingest_events_steps_have_stable_labels():
    p = beam.Pipeline(options=PipelineOptions(STREAMING))
    _ = p | stream().add_elements([chunk([event("e1")])]) | "IngestEvents" >> IngestEvents(RULES, "/nowhere")
    labels = {transform.unique_name for transform in p.to_runner_api().components.transforms.values()}
    assert {"IngestEvents/Validate", "IngestEvents/PartitionByHour", "IngestEvents/DeduplicateAndLog",
            "IngestEvents/CollectDeadLetters", "IngestEvents/WriteDeadLetters", "IngestEvents/CollectCounts",
            "IngestEvents/WriteDeadLetters/Write"} <= labels


@pytest.mark.parametrize("num_buckets", [0, -1])
def test_ingest_events_refuses_a_bucket_count_below_one(num_buckets):
    with pytest.raises(ValueError, match="num_buckets"):
        IngestEvents(RULES, "/nowhere", POLICY, num_buckets)


def test_a_second_run_into_the_same_log_adds_files_beside_the_first_runs(tmp_path):
    def scenario(event_id):
        return finish(send(stream(), [event(event_id, time_ms=at(0, 5))], "s1", 0, 10).advance_watermark_to(
            arrive(1, 1)))
    run(scenario("first"), tmp_path / "one", {"read": 1, "valid": 1})
    run(scenario("second"), tmp_path / "two", {"read": 1, "valid": 1})
    [first] = (tmp_path / "one" / "events").rglob("*.avro")
    [second] = (tmp_path / "two" / "events").rglob("*.avro")
    # The same writer, hour and sequence; other rows, so another name: both fit in one log.
    assert first.name != second.name and first.name[:len("part-00000-000000")] == second.name[:len("part-00000-000000")]
    run(scenario("second"), tmp_path / "one", {"read": 1, "valid": 1})
    assert sorted(path.name for path in (tmp_path / "one" / "events").rglob("*.avro")) == \
        sorted([first.name, second.name])
