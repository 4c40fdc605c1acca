"""Property tests: parsing never raises on bad input, and every input lands in exactly one output."""
import json
import os
import tempfile

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from labelbeam.schemas import registry
from labelbeam.transforms.events import dead_letters as dl
from labelbeam.transforms.events.parser import Accepted, EventParser, Rejected, ValidationRules
from labelbeam.transforms.events.raw_chunks import RawChunk
from labelbeam.transforms.storage.event_files import ByteRange, read_json_lines

NOW_MS = 1_700_000_000_000
EVENT_TIME_MS = NOW_MS - 3_600_000
RULES_WITH_LABELS = ValidationRules.at("pets", NOW_MS, frozenset({"cat", "dog"}))
RULES_ANY_LABEL = ValidationRules.at("pets", NOW_MS)
PARSERS = {"labels": EventParser(RULES_WITH_LABELS), "any": EventParser(RULES_ANY_LABEL)}
LATEST_FIELDS = tuple(f["name"] for f in registry.event_schema(2)["fields"])
# 200 random cases per property in the suite; benchmarks/fuzz_parse.py sets LABELBEAM_FUZZ_CASES for a
# large derandomized (repeatable) run of the same properties.
FUZZ_CASES = int(os.environ.get("LABELBEAM_FUZZ_CASES", "0"))
FUZZ = settings(max_examples=FUZZ_CASES or 200, derandomize=bool(FUZZ_CASES), deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])

VALID_V1 = {
    "event_id": "e1", "dataset": "pets", "item_id": "item-1", "annotator_id": "ann-1",
    "label": "cat", "action": "UPSERT", "event_time": EVENT_TIME_MS,
}
VALID_V2 = dict(VALID_V1, schema_version=2, revision=1, labels=["cat"], score=2.5, duration_ms=800,
                confidence=0.5, metadata={"tool": "ls"})
MUTABLE_KEYS = sorted(set(VALID_V2) | {"colour", ""})
BOM = b"\xef\xbb\xbf"
# Keys that no event schema version defines (Avro resolution ignores them), and keys some version does.
UNKNOWN_KEYS = st.text(max_size=6).filter(lambda key: key not in set(LATEST_FIELDS) | {"schema_version"})

json_scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
                | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8)
                | st.sampled_from(["", "cat", "dog", "fish", "UPSERT", "DELETE", "pets", 1, 2, 3,
                                   EVENT_TIME_MS, NOW_MS + 2 * 86_400_000, 2**31, 2**63]))
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=4), children, max_size=3),
    max_leaves=6)


@st.composite
def mutated_events(draw):
    """A valid v1 or v2 event with some fields dropped, some replaced by random JSON values."""
    obj = dict(draw(st.sampled_from([VALID_V1, VALID_V2])))
    for key in draw(st.lists(st.sampled_from(MUTABLE_KEYS), max_size=4, unique=True)):
        if draw(st.booleans()):
            obj.pop(key, None)
        else:
            obj[key] = draw(json_values)
    return obj


@st.composite
def events_with_unknown_fields(draw):
    """A mutated event with fields no schema defines added, and the same event without them."""
    obj = draw(mutated_events())
    extra = draw(st.dictionaries(UNKNOWN_KEYS, json_values, min_size=1, max_size=3))
    return {**obj, **extra}, obj


def event_line(obj) -> bytes:
    # The stdlib encoder writes integers of any size, which orjson then has to cope with.
    return json.dumps(obj).encode()


payloads = st.one_of(
    st.binary(max_size=120),
    st.text(max_size=60).map(str.encode),
    mutated_events().map(event_line),
    events_with_unknown_fields().map(lambda pair: event_line(pair[0])),
    mutated_events().map(lambda obj: BOM + event_line(obj)),  # a BOM inside a file is not stripped
    json_values.map(event_line),
)


def assert_valid_or_rejected(result, rules):
    if isinstance(result, Rejected):
        assert result.reason in dl.REASONS, result
        assert isinstance(result.detail, str)
        assert result.schema_version in (None, 1, 2)
        return
    assert isinstance(result, Accepted), result
    values, version, unknown_fields = result
    assert version in (1, 2)
    assert len(values) == len(LATEST_FIELDS)
    assert not set(unknown_fields) & set(LATEST_FIELDS) and list(unknown_fields) == sorted(unknown_fields)
    event = dict(zip(LATEST_FIELDS, values))
    assert event["dataset"] == rules.dataset
    assert all(isinstance(event[k], str) and event[k] for k in ("event_id", "item_id", "annotator_id"))
    assert rules.min_event_time_ms <= event["event_time"] <= rules.max_event_time_ms
    assert event["action"] in ("UPSERT", "DELETE")
    assert event["label"] != "" and "" not in event["labels"]  # an empty label is never valid
    if rules.labels is not None:
        assert event["label"] is None or event["label"] in rules.labels
        assert set(event["labels"]) <= rules.labels


@FUZZ
@given(payload=st.binary(max_size=200), rules_name=st.sampled_from(sorted(PARSERS)))
def test_parse_one_of_arbitrary_bytes_never_raises(payload, rules_name):
    parser = PARSERS[rules_name]
    assert_valid_or_rejected(parser.parse_one(payload, None, None, "json"), parser.rules)


@FUZZ
@given(obj=mutated_events(), rules_name=st.sampled_from(sorted(PARSERS)))
def test_parse_one_of_mutated_json_events_never_raises(obj, rules_name):
    parser = PARSERS[rules_name]
    assert_valid_or_rejected(parser.parse_one(event_line(obj), None, None, "json"), parser.rules)


@FUZZ
@given(value=json_values)
def test_parse_one_of_arbitrary_json_documents_never_raises(value):
    parser = PARSERS["labels"]
    assert_valid_or_rejected(parser.parse_one(event_line(value), None, None, "json"), parser.rules)


@FUZZ
@given(obj=mutated_events(), version=st.sampled_from([1, 2]))
def test_parse_one_of_mutated_decoded_records_never_raises(obj, version):
    obj.pop("schema_version", None)
    parser = PARSERS["labels"]
    assert_valid_or_rejected(parser.parse_one(b"", obj, version, "avro"), parser.rules)


@FUZZ
@given(lines=st.lists(payloads, max_size=12))
def test_parse_chunk_puts_every_line_in_exactly_one_output(lines):
    offsets = [10 * i for i in range(len(lines))]
    chunk = RawChunk("fuzz.jsonl", "json", offsets, lines)
    columns, dead = PARSERS["labels"].parse_chunk(chunk)
    assert len(columns) + len(dead) == len(lines)
    assert all(letter.reason in dl.REASONS for letter in dead)
    valid_offsets = columns.to_record_batch().column("offset").to_pylist() if len(columns) else []
    assert sorted(valid_offsets + [letter.offset for letter in dead]) == offsets
    for letter in dead:
        assert letter.raw == lines[offsets.index(letter.offset)]


@FUZZ
@given(lines=st.lists(payloads, min_size=1, max_size=12), rules=st.sampled_from(sorted(PARSERS)))
def test_parse_chunk_fast_path_agrees_with_parse_one_on_every_line(lines, rules):
    """parse_chunk takes an inline happy path; parse_one is the careful path. They must agree."""
    parser = PARSERS[rules]
    columns, dead = parser.parse_chunk(RawChunk("f.jsonl", "json", list(range(len(lines))), lines))
    accepted_by_chunk = dict(zip(columns.offsets, zip(columns.rows, columns.versions)))
    rejected_by_chunk = {letter.offset: letter.reason for letter in dead}
    with_unknown_fields = 0
    for offset, line in enumerate(lines):
        careful = parser.parse_one(line, None, None, "json")
        if isinstance(careful, Rejected):
            assert rejected_by_chunk.get(offset) == careful.reason
        else:
            assert accepted_by_chunk.get(offset) == (careful.values, careful.version)
            with_unknown_fields += bool(careful.unknown_fields)
    parsed = parser.parse_chunk_with_counts(RawChunk("f.jsonl", "json", list(range(len(lines))), lines))
    assert parsed.unknown_fields_dropped == with_unknown_fields


@FUZZ
@given(pair=events_with_unknown_fields(), rules=st.sampled_from(sorted(PARSERS)))
def test_fields_no_schema_defines_never_change_the_verdict(pair, rules):
    """Avro resolution ignores writer fields the reader lacks: adding such fields changes nothing but the count."""
    with_extra, without = pair
    parser = PARSERS[rules]
    extended = parser.parse_one(event_line(with_extra), None, None, "json")
    plain = parser.parse_one(event_line(without), None, None, "json")
    if isinstance(plain, Rejected):
        assert isinstance(extended, Rejected) and extended.reason == plain.reason
    else:
        assert isinstance(extended, Accepted), extended
        assert extended[:2] == plain[:2]
        assert set(extended.unknown_fields) == set(with_extra) - set(LATEST_FIELDS) - {"schema_version"}


@FUZZ
@given(obj=mutated_events(), label=st.sampled_from(["", None]), labels=st.lists(st.sampled_from(["", "cat"]),
                                                                                   max_size=3))
def test_an_empty_label_is_never_valid(obj, label, labels):
    for parser in PARSERS.values():
        event = {**obj, "label": label if label is not None else "cat", "schema_version": 2, "labels": labels}
        result = parser.parse_one(event_line(event), None, None, "json")
        if label == "" or "" in labels:
            assert isinstance(result, Rejected)
            assert result.reason in dl.REASONS
        columns, dead = parser.parse_chunk(RawChunk("f.jsonl", "json", [0], [event_line(event)]))
        assert (len(columns), len(dead)) == ((0, 1) if isinstance(result, Rejected) else (1, 0))


@FUZZ
@given(lines=st.lists(payloads, min_size=1, max_size=12), range_bytes=st.integers(min_value=1, max_value=400))
def test_a_bom_at_the_start_of_a_file_changes_nothing_but_offsets(lines, range_bytes):
    """Every line and verdict is the same with and without a UTF-8 BOM before the first line."""
    lines = [line.replace(b"\n", b" ").replace(b"\r", b" ") for line in lines]  # one event per line
    assume(not lines[0].startswith(BOM))  # only one BOM is stripped
    parser = PARSERS["labels"]

    def parsed(data: bytes):
        with tempfile.TemporaryDirectory() as directory:
            path = os.path.join(directory, "events.jsonl")
            with open(path, "wb") as out:
                out.write(data)
            size = len(data)
            ranges = [ByteRange(path, "json", start, min(start + range_bytes, size))
                      for start in range(0, size, range_bytes)]
            payloads, verdicts = [], []
            for byte_range in ranges:
                for chunk in read_json_lines(byte_range, chunk_events=5):
                    payloads += chunk.payloads
                    columns, dead = parser.parse_chunk(chunk)
                    verdicts += [(offset, "valid", row[0]) for offset, row in zip(columns.offsets, columns.rows)]
                    verdicts += [(letter.offset, letter.reason, letter.raw) for letter in dead]
            return payloads, [verdict[1:] for verdict in sorted(verdicts, key=lambda verdict: verdict[0])]

    data = b"".join(line + b"\n" for line in lines)
    assert parsed(BOM + data) == parsed(data)


def _avro_events_file(codec: str, count: int) -> bytes:
    """An Avro container file of `count` v2 events in small blocks, so a corruption hits one block of several."""
    import io

    import fastavro
    schema = fastavro.parse_schema(registry.event_schema(2))
    records = [dict(VALID_V2, event_id=f"e{i}", item_id=f"item-{i % 7}", label=("cat", "dog")[i % 2])
               for i in range(count)]
    out = io.BytesIO()
    fastavro.writer(out, schema, records, codec=codec, sync_interval=200)
    return out.getvalue()


AVRO_FILES = {codec: _avro_events_file(codec, 40) for codec in ("null", "deflate")}


@st.composite
def corrupted_avro_files(draw):
    """A valid Avro events file with bytes flipped, cut off, inserted or deleted at random places."""
    data = bytearray(AVRO_FILES[draw(st.sampled_from(sorted(AVRO_FILES)))])
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        kind = draw(st.sampled_from(["flip", "truncate", "insert", "delete"]))
        position = draw(st.integers(min_value=0, max_value=max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[position] ^= draw(st.integers(min_value=1, max_value=255))
        elif kind == "truncate":
            del data[position:]
        elif kind == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=8))
        elif data:
            del data[position:position + draw(st.integers(min_value=1, max_value=8))]
    return bytes(data)


@FUZZ
@given(data=corrupted_avro_files())
def test_a_corrupted_avro_file_is_read_whole_or_refused_by_name_never_crashed_on(data):
    """Each record read lands in exactly one output; what cannot be read stops the file with CorruptInputError
    naming it (the build's documented refusal, exit 2), never another exception."""
    from labelbeam.transforms.storage.event_files import read_avro_records
    from labelbeam.transforms.storage.inputs import CorruptInputError
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "events.avro")
        with open(path, "wb") as out:
            out.write(data)
        read = 0
        try:
            for chunk in read_avro_records(ByteRange(path, "avro", 0, -1), chunk_events=7):
                columns, dead = PARSERS["labels"].parse_chunk(chunk)
                assert len(columns) + len(dead) == len(chunk)
                assert all(letter.reason in dl.REASONS for letter in dead)
                read += len(chunk)
        except CorruptInputError as err:
            assert err.path == path and "truncated or corrupt" in str(err)
