"""Pub/Sub payloads -> RawChunks or dead letters: JSON, Avro single-object encoding (v1, v2), and bad bytes."""
import hashlib

import numpy as np
import orjson
import pytest
from event_builders import RULES, T0, event

from labelbeam.schemas import registry
from labelbeam.transforms.events import dead_letters as dl
from labelbeam.transforms.events.messages import (
    SINGLE_OBJECT_HEADER_BYTES,
    decode_message,
    message_source,
    single_object_encode,
)
from labelbeam.transforms.events.parser import EventParser
from labelbeam.transforms.events.raw_chunks import RawChunk

SUBSCRIPTION = "projects/labelbeam-test/subscriptions/ingest"
SOURCE = f"pubsub://{SUBSCRIPTION}#1234"
V1_SCHEMA = registry.load_schema_json(registry.event_schema_file(1))
V2_SCHEMA = registry.load_schema_json(registry.event_schema_file(2))
# Avro spec test vectors: CRC-64-AVRO fingerprints of the schemas "null" and "int", as signed longs.
NULL_FINGERPRINT = 7195948357588979594
INT_FINGERPRINT = 8247732601305521295


def v1_record(event_id: str = "e1") -> dict:
    return {"event_id": event_id, "dataset": "pets", "item_id": "i1", "annotator_id": "a1", "label": "cat",
            "action": "UPSERT", "event_time": T0}


def v2_record(event_id: str = "e2") -> dict:
    return {**v1_record(event_id), "label": None, "revision": 3, "labels": ["cat", "dog"], "score": None,
            "duration_ms": 1500, "confidence": 0.5, "metadata": {"tool": "labelstudio"}}


def parsed_event_ids(chunk: RawChunk) -> list[str]:
    """Event ids of the chunk's rows through the shared parser, which must accept every one."""
    columns, dead = EventParser(RULES).parse_chunk(chunk)
    assert dead == []
    return columns.to_record_batch().column("event_id").to_pylist()


def test_message_source_names_the_subscription_and_message_id():
    assert message_source(SUBSCRIPTION, "1234", b"{}") == SOURCE


def test_message_without_an_id_is_named_by_the_sha256_of_its_payload():
    digest = hashlib.sha256(b"{}").hexdigest()
    assert message_source(SUBSCRIPTION, None, b"{}") == f"pubsub://{SUBSCRIPTION}#sha256:{digest}"


def test_json_payload_becomes_a_chunk_of_one_event_at_offset_zero():
    payload = orjson.dumps(event("e1"))
    assert decode_message(payload, SOURCE) == RawChunk(SOURCE, "json", [0], [payload])


def test_json_v1_and_v2_payloads_parse_as_valid_events():
    v1 = decode_message(orjson.dumps(event("e1")), SOURCE)
    v2 = decode_message(orjson.dumps(event("e2", revision=1, labels=["cat"])), SOURCE)
    assert parsed_event_ids(v1) + parsed_event_ids(v2) == ["e1", "e2"]


def test_json_payload_loses_a_leading_utf8_bom_as_a_file_does():
    payload = orjson.dumps(event("e1"))
    assert decode_message(b"\xef\xbb\xbf" + payload, SOURCE).payloads == [payload]


def test_malformed_json_is_left_to_the_parser_which_dead_letters_it():
    chunk = decode_message(b"{not json", SOURCE)
    assert chunk == RawChunk(SOURCE, "json", [0], [b"{not json"])
    _, dead = EventParser(RULES).parse_chunk(chunk)
    assert [(letter.reason, letter.raw, letter.source, letter.offset) for letter in dead] == \
        [(dl.MALFORMED_JSON, b"{not json", SOURCE, 0)]


def test_single_object_encoding_matches_the_avro_spec_test_vector():
    # marker C3 01, the fingerprint of "int" little-endian, then the zigzag varint of 1.
    assert single_object_encode(1, "int") == b"\xc3\x01" + INT_FINGERPRINT.to_bytes(8, "little") + b"\x02"
    assert single_object_encode(None, "null") == b"\xc3\x01" + NULL_FINGERPRINT.to_bytes(8, "little")


def test_schema_by_fingerprint_resolves_each_event_version_and_nothing_else():
    for version, schema in ((1, V1_SCHEMA), (2, V2_SCHEMA)):
        fingerprint = single_object_encode(v1_record(), schema)[2:SINGLE_OBJECT_HEADER_BYTES]
        assert registry.schema_by_fingerprint(fingerprint) == (version, schema)
    assert registry.schema_by_fingerprint(INT_FINGERPRINT.to_bytes(8, "little")) is None


def test_avro_v1_single_object_round_trips_to_a_chunk_under_the_v1_writer_schema():
    chunk = decode_message(single_object_encode(v1_record(), V1_SCHEMA), SOURCE)
    assert chunk == RawChunk(SOURCE, "avro", [0], [b""], [v1_record()], V1_SCHEMA)
    assert parsed_event_ids(chunk) == ["e1"]


def test_avro_v2_single_object_round_trips_every_v2_field():
    chunk = decode_message(single_object_encode(v2_record(), V2_SCHEMA), SOURCE)
    assert chunk == RawChunk(SOURCE, "avro", [0], [b""], [v2_record()], V2_SCHEMA)
    assert parsed_event_ids(chunk) == ["e2"]


def test_avro_timestamps_stay_the_wire_integers():
    chunk = decode_message(single_object_encode(v1_record(), V1_SCHEMA), SOURCE)
    assert chunk.records[0]["event_time"] == T0


def test_unknown_fingerprint_is_an_unknown_schema_version_dead_letter_keeping_the_bytes():
    foreign_schema = {"type": "record", "name": "Click", "fields": [{"name": "url", "type": "string"}]}
    message = single_object_encode({"url": "https://example.com"}, foreign_schema)
    letter = decode_message(message, SOURCE)
    assert isinstance(letter, dl.DeadLetter)
    assert (letter.reason, letter.raw, letter.raw_format, letter.schema_version, letter.source, letter.offset) == \
        (dl.UNKNOWN_SCHEMA_VERSION, message, "avro", None, SOURCE, 0)
    assert message[2:SINGLE_OBJECT_HEADER_BYTES].hex() in letter.detail


def test_truncated_datum_is_a_schema_mismatch_of_the_version_tried():
    message = single_object_encode(v2_record(), V2_SCHEMA)[:-3]
    letter = decode_message(message, SOURCE)
    assert (letter.reason, letter.raw, letter.schema_version) == (dl.SCHEMA_MISMATCH, message, 2)
    assert letter.detail.startswith("datum does not decode as event schema v2 (EOFError")


def test_bytes_after_the_datum_are_a_schema_mismatch():
    message = single_object_encode(v1_record(), V1_SCHEMA) + b"\x00"
    letter = decode_message(message, SOURCE)
    assert (letter.reason, letter.raw, letter.detail) == \
        (dl.SCHEMA_MISMATCH, message, "1 bytes after the datum of event schema v1")


def test_truncated_header_is_a_schema_mismatch_with_no_version():
    message = single_object_encode(v1_record(), V1_SCHEMA)[:7]
    letter = decode_message(message, SOURCE)
    assert (letter.reason, letter.raw, letter.schema_version) == (dl.SCHEMA_MISMATCH, message, None)


def test_garbage_never_raises_and_every_payload_becomes_one_chunk_or_one_dead_letter():
    rng = np.random.default_rng(0)
    v2_header = single_object_encode(v2_record(), V2_SCHEMA)[:SINGLE_OBJECT_HEADER_BYTES]
    reasons = set()
    for size in rng.integers(0, 64, size=2_000):
        body = rng.integers(0, 256, size=int(size), dtype=np.uint8).tobytes()
        for message in (body, b"\xc3\x01" + body, v2_header + body):
            decoded = decode_message(message, SOURCE)
            if isinstance(decoded, RawChunk):
                assert len(decoded) == 1
                assert decoded.payloads == [message] or decoded.records is not None
            else:
                assert decoded.raw == message and decoded.source == SOURCE
                reasons.add(decoded.reason)
    assert reasons == {dl.SCHEMA_MISMATCH, dl.UNKNOWN_SCHEMA_VERSION}


@pytest.mark.parametrize("schema", [V1_SCHEMA, registry.event_schema(1)], ids=["raw_json", "parsed"])
def test_single_object_encode_takes_a_raw_or_parsed_schema(schema):
    assert single_object_encode(v1_record(), schema) == single_object_encode(v1_record(), V1_SCHEMA)
