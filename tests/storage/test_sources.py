"""Reading event files: patterns, directories, byte ranges, compression and Avro detection."""
import gzip
import hashlib
import io

import fastavro
import pytest
from event_builders import event, lines, write_jsonl

from labelbeam.schemas import registry
from labelbeam.transforms.events.raw_chunks import avro_datum
from labelbeam.transforms.storage.event_files import (
    ByteRange,
    fetch_raw_events,
    plan_ranges,
    read_avro_records,
    read_json_lines,
)
from labelbeam.transforms.storage.inputs import (
    CorruptInputError,
    InputError,
    corrupt_input_in,
    match_inputs,
    partition_start_ms,
)


def read_all(byte_ranges):
    return [(chunk.offsets[i], chunk.payloads[i]) for r in byte_ranges for chunk in read_json_lines(r, chunk_events=3)
            for i in range(len(chunk.payloads))]


def test_byte_ranges_read_every_line_exactly_once_with_its_offset(tmp_path):
    events = [event(f"e{i}", item="x" * (i % 17)) for i in range(200)]
    path = write_jsonl(tmp_path / "events.jsonl", events)
    [described] = match_inputs([path])
    data = open(path, "rb").read()
    expected = []
    offset = 0
    for line in data.split(b"\n")[:-1]:
        expected.append((offset, line))
        offset += len(line) + 1
    for range_bytes in (1, 7, 64, 1000, 10**9):
        assert read_all(plan_ranges([described], range_bytes)) == expected


def test_blank_lines_are_skipped_and_crlf_is_stripped(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_bytes(b'{"a":1}\r\n\n   \n{"b":2}\n')
    assert read_all([ByteRange(str(path), "json", 0, -1)]) == [(0, b'{"a":1}'), (14, b'{"b":2}')]


def test_gzip_files_are_read_whole(tmp_path):
    path = tmp_path / "events.jsonl.gz"
    path.write_bytes(gzip.compress(b"\n".join(lines([event("e1"), event("e2")])) + b"\n"))
    [described] = match_inputs([str(path)])
    assert plan_ranges([described], range_bytes=1) == [ByteRange(str(path), "json", 0, -1)]
    assert [p for _, p in read_all(plan_ranges([described]))] == lines([event("e1"), event("e2")])


def test_directory_input_finds_event_files_recursively_and_skips_others(tmp_path):
    (tmp_path / "day=1").mkdir()
    write_jsonl(tmp_path / "day=1" / "a.jsonl", [event("e1")])
    write_jsonl(tmp_path / "b.json", [event("e2")])
    (tmp_path / "README.txt").write_text("not events")
    found = [f.path for f in match_inputs([str(tmp_path)])]
    assert found == sorted([str(tmp_path / "b.json"), str(tmp_path / "day=1" / "a.jsonl")])


def test_glob_and_file_inputs_are_merged_without_repeats(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [event("e1")])
    write_jsonl(tmp_path / "b.jsonl", [event("e2")])
    assert [f.path for f in match_inputs([a, str(tmp_path / "*.jsonl")])] == [a, str(tmp_path / "b.jsonl")]


def test_one_file_spelled_several_ways_is_read_once(tmp_path, monkeypatch):
    write_jsonl(tmp_path / "a.jsonl", [event("e1")])
    monkeypatch.chdir(tmp_path)
    found = match_inputs(["a.jsonl", "./a.jsonl", str(tmp_path / "a.jsonl"), "*.jsonl", "."])
    assert [f.path for f in found] == [str(tmp_path / "a.jsonl")]


def test_missing_input_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="no file matches"):
        match_inputs([str(tmp_path / "nope-*.jsonl")])
    with pytest.raises(InputError, match="holds no event files"):
        match_inputs([str(tmp_path)])


def test_avro_files_are_recognised_by_their_magic_and_read_as_records(tmp_path):
    path = tmp_path / "events.data"
    buffer = io.BytesIO()
    fastavro.writer(buffer, registry.load_schema_json(registry.event_schema_file(1)),
                    [{**event("e1"), "label": "cat"}, event("e2")])
    path.write_bytes(buffer.getvalue())
    [described] = match_inputs([str(path)])
    assert described.raw_format == "avro"
    [chunk] = read_avro_records(ByteRange(str(path), "avro", 0, -1))
    assert chunk.offsets == [0, 1]
    assert [r["event_id"] for r in chunk.records] == ["e1", "e2"]
    assert chunk.records[1]["event_time"] == event("e2")["event_time"]  # wire millis, not a datetime
    [(index, datum)] = fetch_raw_events(str(path), "avro", [1]).items()
    decoded = fastavro.schemaless_reader(io.BytesIO(datum), fastavro.parse_schema(chunk.writer_schema))
    assert index == 1 and datum == avro_datum(chunk.writer_schema, chunk.records[1])
    assert int(decoded.pop("event_time").timestamp() * 1000) == chunk.records[1]["event_time"]
    assert decoded == {k: v for k, v in chunk.records[1].items() if k != "event_time"}


def test_avro_timestamp_beyond_datetime_range_is_read_not_fatal(tmp_path):
    path = tmp_path / "events.avro"
    buffer = io.BytesIO()
    fastavro.writer(buffer, registry.load_schema_json(registry.event_schema_file(1)),
                    [{**event("e1"), "event_time": 2**62}])
    path.write_bytes(buffer.getvalue())
    [chunk] = read_avro_records(ByteRange(str(path), "avro", 0, -1))
    assert chunk.records[0]["event_time"] == 2**62


def test_fetch_raw_events_rereads_json_lines_by_offset(tmp_path):
    path = write_jsonl(tmp_path / "events.jsonl", [event("e1"), event("e2"), event("e3")])
    offsets_and_lines = read_all([ByteRange(path, "json", 0, -1)])
    wanted = {offsets_and_lines[2][0]: offsets_and_lines[2][1], offsets_and_lines[0][0]: offsets_and_lines[0][1]}
    assert fetch_raw_events(path, "json", sorted(wanted)) == wanted


def test_input_checksums_identify_content(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [event("e1")])
    before = match_inputs([a])[0]
    write_jsonl(tmp_path / "a.jsonl", [event("e2")])  # same size, other content
    after = match_inputs([a])[0]
    assert before.size_bytes == after.size_bytes and before.sha256 != after.sha256


def test_re_encoded_avro_datums_equal_the_bytes_in_the_file(tmp_path):
    """Dead letters of Avro events carry re-encoded datums: they must be the file's own bytes."""
    schema = registry.load_schema_json(registry.event_schema_file(2))
    records = [{**event(f"e{i}"), "revision": i, "labels": ["cat"] * (i % 3), "score": None if i % 2 else 0.5,
                "duration_ms": i, "confidence": 0.25, "metadata": {"k": str(i), "z": "a"}} for i in range(50)]
    path = tmp_path / "events.avro"
    buffer = io.BytesIO()
    fastavro.writer(buffer, schema, records, codec="deflate", sync_interval=200)  # several blocks
    path.write_bytes(buffer.getvalue())
    in_file = []
    with open(path, "rb") as stream:
        for block in fastavro.block_reader(stream):
            data, start = block.bytes_, block.bytes_.tell()
            for _ in range(block.num_records):
                fastavro.schemaless_reader(data, fastavro.parse_schema(schema), None)
                in_file.append(data.getvalue()[start:data.tell()])
                start = data.tell()
    chunks = list(read_avro_records(ByteRange(str(path), "avro", 0, -1), chunk_events=7))
    re_encoded = [avro_datum(c.writer_schema, r) for c in chunks for r in c.records]
    assert re_encoded == in_file
    assert [o for c in chunks for o in c.offsets] == list(range(50))


# --- truncated or corrupt inputs are never read in part (issue 9, item 3) ---------------------------

EVENT_LINES = b"".join(line + b"\n" for line in lines([event(f"e{i}", item=f"i{i % 50}") for i in range(3000)]))


def compress(kind: str, data: bytes) -> bytes:
    import bz2
    import lzma
    import zlib

    import zstandard
    return {"gz": gzip.compress, "bz2": bz2.compress, "xz": lzma.compress, "deflate": zlib.compress,
            "zst": zstandard.ZstdCompressor().compress}[kind](data)


def flip_byte(data: bytes, position: int) -> bytes:
    damaged = bytearray(data)
    damaged[position] ^= 0x55
    return bytes(damaged)


@pytest.mark.parametrize("kind", ["gz", "bz2", "xz", "deflate", "zst"])
def test_truncated_compressed_file_is_a_corrupt_input_error_naming_it_when_matched(tmp_path, kind):
    path = tmp_path / f"events.jsonl.{kind}"
    data = compress(kind, EVENT_LINES)
    path.write_bytes(data[:len(data) // 2])
    with pytest.raises(CorruptInputError, match="events.jsonl." + kind) as caught:
        match_inputs([str(tmp_path)] if kind == "gz" else [str(path)])
    assert isinstance(caught.value, InputError)  # the launcher's exit-2 path
    assert caught.value.path == str(path)


@pytest.mark.parametrize("kind", ["gz", "bz2", "xz", "deflate", "zst"])
def test_truncated_compressed_file_is_never_read_in_part(tmp_path, kind):
    path = tmp_path / f"events.jsonl.{kind}"
    data = compress(kind, EVENT_LINES)
    path.write_bytes(data[:len(data) // 2])
    with pytest.raises(CorruptInputError, match="events.jsonl." + kind):
        list(read_json_lines(ByteRange(str(path), "json", 0, -1)))


def test_gzip_with_a_bad_crc_is_a_corrupt_input_error(tmp_path):
    path = tmp_path / "events.jsonl.gz"
    data = gzip.compress(EVENT_LINES)
    path.write_bytes(flip_byte(data, len(data) - 6))  # inside the CRC32 trailer
    with pytest.raises(CorruptInputError, match="events.jsonl.gz"):
        match_inputs([str(path)])
    with pytest.raises(CorruptInputError, match="events.jsonl.gz"):
        list(read_json_lines(ByteRange(str(path), "json", 0, -1)))


def test_gzip_of_several_members_is_read_whole(tmp_path):
    path = tmp_path / "events.jsonl.gz"
    first, second = lines([event("e1")])[0] + b"\n", lines([event("e2")])[0] + b"\n"
    path.write_bytes(gzip.compress(first) + gzip.compress(second))
    [described] = match_inputs([str(path)])
    assert [p for _, p in read_all([ByteRange(described.path, "json", 0, -1)])] == lines([event("e1"), event("e2")])


def test_empty_gzip_file_holds_no_events(tmp_path):
    path = tmp_path / "events.jsonl.gz"
    path.write_bytes(gzip.compress(b""))
    match_inputs([str(path)])
    assert read_all([ByteRange(str(path), "json", 0, -1)]) == []


def avro_file(path, records, codec="null", sync_interval=16000) -> bytes:
    buffer = io.BytesIO()
    fastavro.writer(buffer, registry.load_schema_json(registry.event_schema_file(1)), records, codec=codec,
                    sync_interval=sync_interval)
    path.write_bytes(buffer.getvalue())
    return buffer.getvalue()


AVRO_EVENTS = [event(f"e{i}") for i in range(400)]


@pytest.mark.parametrize("cut", [0.5, -1, -16, -17], ids=["half", "in-sync-marker", "whole-sync-marker", "in-block"])
def test_truncated_avro_file_is_a_corrupt_input_error(tmp_path, cut):
    path = tmp_path / "events.avro"
    data = avro_file(path, AVRO_EVENTS, sync_interval=2000)
    path.write_bytes(data[:int(len(data) * cut)] if isinstance(cut, float) else data[:cut])
    with pytest.raises(CorruptInputError, match="events.avro"):
        match_inputs([str(path)])
    with pytest.raises(CorruptInputError, match="events.avro"):
        list(read_avro_records(ByteRange(str(path), "avro", 0, -1)))


def test_avro_bad_sync_marker_is_a_corrupt_input_error(tmp_path):
    path = tmp_path / "events.avro"
    data = avro_file(path, AVRO_EVENTS, sync_interval=2000)
    sync_marker = data[-16:]
    second_block_end = data.index(sync_marker, data.index(sync_marker, len(sync_marker) + 4) + 16)
    path.write_bytes(flip_byte(data, second_block_end))
    with pytest.raises(CorruptInputError, match="sync marker"):
        match_inputs([str(path)])
    with pytest.raises(CorruptInputError, match="events.avro"):
        list(read_avro_records(ByteRange(str(path), "avro", 0, -1)))


def test_avro_block_that_fails_to_decode_names_the_file_and_record_index(tmp_path):
    path = tmp_path / "events.avro"
    data = avro_file(path, AVRO_EVENTS, codec="deflate", sync_interval=2000)
    path.write_bytes(flip_byte(data, len(data) // 2))  # inside a compressed block: framing stays intact
    match_inputs([str(path)])  # the framing check cannot see inside blocks
    with pytest.raises(CorruptInputError, match=r"events\.avro.*record \d+") as caught:
        list(read_avro_records(ByteRange(str(path), "avro", 0, -1), chunk_events=50))
    assert caught.value.path == str(path)
    index = int(caught.value.detail.split("record ")[1].split()[0])
    assert 0 < index < len(AVRO_EVENTS)


def test_avro_header_that_fails_to_parse_is_a_corrupt_input_error(tmp_path):
    path = tmp_path / "events.avro"
    path.write_bytes(b"Obj\x01\x04garbage")
    with pytest.raises(CorruptInputError, match="events.avro"):
        match_inputs([str(path)])
    with pytest.raises(CorruptInputError, match="events.avro"):
        list(read_avro_records(ByteRange(str(path), "avro", 0, -1)))


def test_whole_avro_files_of_every_codec_pass_the_framing_check(tmp_path):
    for codec in ("null", "deflate"):
        path = tmp_path / f"events-{codec}.avro"
        avro_file(path, AVRO_EVENTS, codec=codec, sync_interval=2000)
        [described] = match_inputs([str(path)])
        assert described.raw_format == "avro"
        assert described.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    empty = tmp_path / "empty.avro"
    avro_file(empty, [])
    assert match_inputs([str(empty)])[0].raw_format == "avro"


def test_corrupt_input_error_survives_beam_and_is_recognised_at_pipeline_exit(tmp_path):
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from labelbeam.transforms.read import ReadEvents
    from labelbeam.transforms.storage.inputs import InputFile

    path = tmp_path / "events.jsonl.gz"
    data = gzip.compress(EVENT_LINES)
    path.write_bytes(data[:len(data) // 2])
    files = [InputFile(str(path), path.stat().st_size, "json", "0" * 64)]  # as if matched before it was cut
    with pytest.raises(Exception) as caught:
        with beam.Pipeline(options=PipelineOptions(["--runner=FnApiRunner"])) as pipeline:
            _ = pipeline | ReadEvents(files)
    found = corrupt_input_in(caught.value)
    assert found is not None and found.path == str(path)
    assert "truncated" in str(found)


def test_corrupt_input_in_reads_a_remote_runners_error_message():
    remote = RuntimeError("Traceback (most recent call last):\n  ...\nlabelbeam.transforms.storage.inputs."
                          "CorruptInputError: input gs://b/e.jsonl.gz is truncated or corrupt: compressed data ends "
                          "early [while running 'ReadEvents/ReadRanges']\n")
    found = corrupt_input_in(remote)
    assert found is not None and found.path == "gs://b/e.jsonl.gz"
    assert corrupt_input_in(RuntimeError("something else")) is None


# --- a UTF-8 byte order mark at the start of a JSON Lines file (issue 9, item 8) ----------------------

BOM = b"\xef\xbb\xbf"


def test_utf8_bom_at_the_start_of_a_file_is_not_part_of_the_first_line(tmp_path):
    path = tmp_path / "events.jsonl"
    first, second = lines([event("e1"), event("e2")])
    path.write_bytes(BOM + first + b"\n" + second + b"\n")
    assert read_all([ByteRange(str(path), "json", 0, -1)]) == [(0, first), (len(BOM) + len(first) + 1, second)]
    assert fetch_raw_events(str(path), "json", [0]) == {0: first}


def test_utf8_bom_is_stripped_whatever_the_byte_ranges(tmp_path):
    path = tmp_path / "events.jsonl"
    payloads = lines([event(f"e{i}") for i in range(40)])
    path.write_bytes(BOM + b"".join(p + b"\n" for p in payloads))
    [described] = match_inputs([str(path)])
    for range_bytes in (1, 2, 3, 4, 50, 10**9):
        assert [p for _, p in read_all(plan_ranges([described], range_bytes))] == payloads


def test_utf8_bom_at_the_start_of_a_gzip_file_is_stripped(tmp_path):
    path = tmp_path / "events.jsonl.gz"
    [first] = lines([event("e1")])
    path.write_bytes(gzip.compress(BOM + first + b"\n"))
    assert read_all([ByteRange(str(path), "json", 0, -1)]) == [(0, first)]


def test_utf8_bom_before_a_blank_first_line_leaves_no_event(tmp_path):
    path = tmp_path / "events.jsonl"
    [first] = lines([event("e1")])
    path.write_bytes(BOM + b"\r\n" + first + b"\n")
    assert read_all([ByteRange(str(path), "json", 0, -1)]) == [(len(BOM) + 2, first)]


def test_utf8_bom_inside_a_file_is_kept(tmp_path):
    path = tmp_path / "events.jsonl"
    first, second = lines([event("e1"), event("e2")])
    path.write_bytes(first + b"\n" + BOM + second + b"\n")
    assert [p for _, p in read_all([ByteRange(str(path), "json", 0, -1)])] == [first, BOM + second]


def test_partitions_name_the_start_of_their_event_hour_or_day():
    assert partition_start_ms("/log/events/dt=2026-11-30/hr=05/part-0.avro") == 1796014800000
    assert partition_start_ms("gs://b/log/events/dt=2026-11-30/part-0.avro") == 1796014800000 - 5 * 3_600_000
    assert partition_start_ms("/data/2026-11-30/a.jsonl") is None
    assert partition_start_ms("/log/dt=2026-02-31/hr=05/a.jsonl") is None   # not a date: not a partition


def test_as_of_inputs_leave_out_partitions_that_start_at_or_after_it(tmp_path):
    for partition in ("dt=2026-11-29/hr=23", "dt=2026-11-30/hr=00", "dt=2026-11-30/hr=01"):
        (tmp_path / partition).mkdir(parents=True)
        write_jsonl(tmp_path / partition / "p.jsonl", [event("e")])
    write_jsonl(tmp_path / "loose.jsonl", [event("f")])   # not in a partition: always read
    cutoff = partition_start_ms(str(tmp_path / "dt=2026-11-30/hr=00") + "/")
    names = [f.path[len(str(tmp_path)) + 1:] for f in match_inputs([str(tmp_path)], before_ms=cutoff)]
    assert names == ["dt=2026-11-29/hr=23/p.jsonl", "loose.jsonl"]
    assert len(match_inputs([str(tmp_path)])) == 4
