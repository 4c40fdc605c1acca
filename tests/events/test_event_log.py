"""The curated event log's pure cores: hours and paths, Avro rows, lateness, and deduplication with a TTL."""
import hashlib
import io

import fastavro
import numpy as np
import pyarrow as pa
import pytest
from event_builders import T0, event, event_table

from labelbeam.schemas import registry
from labelbeam.transforms.events import dead_letters as dl
from labelbeam.transforms.events import event_log as el
from labelbeam.transforms.events.record_batches import key_hash

HOUR = el.HOUR_MS
H0 = 1_779_998_400_000  # 2026-05-28T20:00:00Z, an hour boundary
POLICY = el.LogPolicy(allowed_lateness_ms=HOUR, ttl_ms=2 * HOUR)


def at(hour: int, minute: int = 0) -> int:
    return H0 + hour * HOUR + minute * 60_000


def ids(table: pa.Table) -> list[str]:
    return sorted(table.column("event_id").to_pylist())


def seen_rows(seen: pa.Table) -> dict[str, tuple]:
    return {row["event_id"]: (row["hour_ms"], row["conflict"], row["pending"]) for row in seen.to_pylist()}


# Hours, partitions, paths

def test_hour_of_floors_times_to_the_start_of_their_utc_hour():
    assert el.hour_of(at(3, 59) + 59_999) == at(3)
    assert el.hour_of(at(3)) == at(3)
    assert el.hour_of(np.array([at(0, 1), at(1)])).tolist() == [at(0), at(1)]


def test_partition_dir_names_the_utc_day_and_hour():
    assert el.partition_dir(el.EVENTS_DIR, at(0)) == "events/dt=2026-05-28/hr=20"
    assert el.partition_dir(el.REJECTED_DIR, at(5)) == "rejected/dt=2026-05-29/hr=01"


def test_times_before_2000_have_the_unknown_partition():
    assert el.partition_hour(0) == el.UNKNOWN_HOUR
    assert el.partition_hour(at(2, 30)) == at(2)
    assert el.partition_dir(el.REJECTED_DIR, el.UNKNOWN_HOUR) == "rejected/dt=unknown/hr=unknown"


def test_part_path_names_the_bucket_the_writers_file_sequence_and_the_contents():
    digest = "0123456789abcdef" * 4
    assert el.part_path(el.EVENTS_DIR, at(0), 3, 12, digest) == \
        "events/dt=2026-05-28/hr=20/part-00003-000012-0123456789ab.avro"


def test_split_by_bucket_and_hour_puts_every_copy_of_an_id_in_one_bucket_and_hour():
    events = [event(f"e{i}", time_ms=at(i % 3, i)) for i in range(12)] + [event("e4", time_ms=at(1, 4))]
    parts = list(el.split_by_bucket_and_hour(event_table(events).to_batches()[0], 4))
    assert [(bucket, hour) for bucket, hour, _ in parts] == sorted({(b, h) for b, h, _ in parts})
    placed = {}
    for bucket, hour, rows in parts:
        assert set(el.hour_of(rows.column("event_time").to_numpy()).tolist()) == {hour}
        for event_id in rows.column("event_id").to_pylist():
            assert key_hash(event_id) % 4 == bucket
            placed.setdefault(event_id, set()).add((bucket, hour))
    assert sum(rows.num_rows for _, _, rows in parts) == 13
    assert all(len(places) == 1 for places in placed.values())


# Avro rows and dead letters

def test_log_files_hold_v2_records_sorted_by_event_id_with_sorted_metadata():
    table = event_table([event("e2", metadata={"b": "2", "a": "1"}), event("e1")], source="s.jsonl")
    with io.BytesIO(el.log_file_bytes(table, "part.avro")) as stream:
        reader = fastavro.reader(stream)
        assert reader.writer_schema == registry.event_schema(2)
        records = list(reader)
    assert [r["event_id"] for r in records] == ["e1", "e2"]
    assert list(records[1]["metadata"].items()) == [("a", "1"), ("b", "2")]
    assert set(records[0]) == {f["name"] for f in registry.load_schema_json(el.LOG_SCHEMA_FILE)["fields"]}
    assert records[0]["revision"] == 0 and records[0]["labels"] == [] and records[0]["score"] is None
    assert el.log_file_bytes(table.take([1, 0]), "part.avro") == el.log_file_bytes(table, "part.avro")


def test_event_dead_letters_carry_the_event_as_a_v2_avro_datum_and_its_provenance():
    table = event_table([event("e2", label="dog"), event("e1")], source="s.jsonl")
    letters = el.event_dead_letters(table, dl.EVENT_ID_CONFLICT, el.conflict_detail()).to_pylist()
    assert [(x["offset"], x["event_id"], x["source"]) for x in letters] == [(0, "e2", "s.jsonl"), (1, "e1", "s.jsonl")]
    assert letters[0]["detail"] == "event_id: copies of 'e2' differ in content"
    assert (letters[0]["raw_format"], letters[0]["schema_version"]) == ("avro", 2)
    decoded = fastavro.schemaless_reader(io.BytesIO(letters[0]["raw"]), registry.event_schema(2), None)
    assert (decoded["event_id"], decoded["label"], decoded["revision"]) == ("e2", "dog", 0)


def test_too_late_detail_names_the_hour_and_the_lateness():
    assert el.too_late_detail(at(0), POLICY) == \
        "event_time: its hour dt=2026-05-28/hr=20 had closed (allowed lateness 3600000 ms) before the event arrived"


def test_content_digests_ignore_provenance_and_map_order_but_see_every_event_field():
    same = event_table([event("e1", metadata={"a": "1", "b": "2"})], source="x").to_batches()[0]
    moved = event_table([event("x0"), event("e1", metadata={"b": "2", "a": "1"})], source="y").slice(1)
    assert el.content_digests(same)[0] == el.content_digests(moved)[0]
    variants = [event("e1", label="dog", metadata={"a": "1", "b": "2"}),
                event("e1", revision=1, metadata={"a": "1", "b": "2"}),
                event("e1", metadata={"a": "1", "b": "3"}), event("e1", score=1.0, metadata={"a": "1", "b": "2"})]
    assert el.content_digests(same)[0] not in el.content_digests(event_table(variants)).tolist()


def test_a_v1_event_and_its_v2_encoding_with_defaults_have_one_digest():
    digests = el.content_digests(event_table([event("e1"), event("e1", revision=0, labels=[], metadata={})]))
    assert digests[0] == digests[1]


# Lateness and timers

def test_rows_are_on_time_before_the_hour_ends_late_within_the_lateness_then_closed():
    assert el.arrival_state(at(0), None, POLICY) == el.ON_TIME
    assert el.arrival_state(at(0), at(1) - 1, POLICY) == el.ON_TIME
    assert el.arrival_state(at(0), at(1), POLICY) == el.LATE
    assert el.arrival_state(at(0), at(2) - 1, POLICY) == el.LATE
    assert el.arrival_state(at(0), at(2), POLICY) == el.CLOSED


def test_without_lateness_an_hour_closes_when_it_ends():
    strict = el.LogPolicy(allowed_lateness_ms=0, ttl_ms=HOUR)
    assert el.arrival_state(at(0), at(1) - 1, strict) == el.ON_TIME
    assert el.arrival_state(at(0), at(1), strict) == el.CLOSED


def test_on_time_rows_flush_at_the_hour_end_and_late_rows_when_the_hour_closes():
    assert el.flush_deadline_ms(at(0), False, POLICY) == at(1)
    assert el.flush_deadline_ms(at(0), True, POLICY) == at(2)


def test_an_hour_writer_looks_at_the_watermark_at_its_end_its_close_and_its_ttl():
    assert el.timer_points_ms(at(0), POLICY) == [at(1), at(2), at(3)]
    assert el.timer_points_ms(at(0), el.LogPolicy(allowed_lateness_ms=0, ttl_ms=HOUR)) == [at(1), at(2)]
    assert el.timer_points_ms(at(0), el.LogPolicy(allowed_lateness_ms=HOUR, ttl_ms=HOUR)) == [at(1), at(2)]


def test_the_timer_is_the_hours_first_point_after_the_watermark_seen():
    assert el.next_timer_ms(at(0), None, POLICY) == at(1)
    assert el.next_timer_ms(at(0), at(0, 30), POLICY) == at(1)
    assert el.next_timer_ms(at(0), at(1), POLICY) == at(2)
    assert el.next_timer_ms(at(0), at(2, 59), POLICY) == at(3)
    assert el.next_timer_ms(at(0), at(3), POLICY) is None


@pytest.mark.parametrize("lateness, ttl", [(-1, HOUR), (0, 0)])
def test_a_policy_with_negative_lateness_or_no_ttl_is_refused(lateness, ttl):
    with pytest.raises(ValueError):
        el.LogPolicy(allowed_lateness_ms=lateness, ttl_ms=ttl)


# Deduplication with a TTL

def test_new_ids_are_kept_and_identical_copies_in_the_batch_are_duplicates():
    result = el.deduplicate_with_ttl(el.empty_seen(), event_table([event("e1"), event("e2"), event("e1")]))
    assert ids(result.kept) == ["e1", "e2"]
    assert result.kept.filter(pa.compute.equal(result.kept.column("event_id"), "e1")).column("offset").to_pylist() == [0]
    assert (result.duplicates, result.conflicts.num_rows) == (1, 0)
    assert seen_rows(result.seen) == {"e1": (el.hour_of(T0), False, True), "e2": (el.hour_of(T0), False, True)}


def test_every_copy_identical_to_a_remembered_id_is_a_duplicate():
    first = el.deduplicate_with_ttl(el.empty_seen(), event_table([event("e1")]))
    again = el.deduplicate_with_ttl(first.seen, event_table([event("e1"), event("e1"), event("e3")], source="b"))
    assert ids(again.kept) == ["e3"]
    assert (again.duplicates, again.conflicts.num_rows) == (2, 0)


def test_copies_differing_from_a_remembered_id_all_conflict_and_so_does_every_later_copy():
    first = el.deduplicate_with_ttl(el.empty_seen(), event_table([event("e1", label="cat")]))
    differing = el.deduplicate_with_ttl(first.seen, event_table([event("e1", label="dog"), event("e1", label="dog")]))
    assert (differing.kept.num_rows, differing.duplicates) == (0, 0)
    assert differing.conflicts.column("event_id").to_pylist() == ["e1", "e1"]
    assert seen_rows(differing.seen)["e1"][1:] == (True, True)  # conflicting; the kept copy still pending
    identical_to_first = el.deduplicate_with_ttl(differing.seen, event_table([event("e1", label="cat")]))
    assert (identical_to_first.kept.num_rows, identical_to_first.duplicates,
            identical_to_first.conflicts.num_rows) == (0, 0, 1)


def test_a_conflict_within_one_batch_is_remembered_even_for_a_new_id():
    result = el.deduplicate_with_ttl(el.empty_seen(), event_table([
        event("e1", label="cat", time_ms=at(0)), event("e1", label="dog", time_ms=at(2))]))
    assert (result.kept.num_rows, result.conflicts.num_rows, result.duplicates) == (0, 2, 0)
    assert seen_rows(result.seen) == {"e1": (at(2), True, False)}
    later = el.deduplicate_with_ttl(result.seen, event_table([event("e1", label="cat", time_ms=at(0))]))
    assert later.conflicts.num_rows == 1


def test_every_incoming_row_is_kept_a_conflict_or_a_duplicate():
    rng = np.random.default_rng(7)
    seen = el.empty_seen()
    for round_ in range(5):
        events = [event(f"e{int(i)}", label=str(rng.choice(["cat", "cat", "cat", "dog"])), time_ms=at(int(i) % 2))
                  for i in rng.integers(0, 30, 40)]
        result = el.deduplicate_with_ttl(seen, event_table(events, source=f"s{round_}"))
        assert result.kept.num_rows + result.conflicts.num_rows + result.duplicates == len(events)
        assert not set(ids(result.kept)) & set(seen.column("event_id").to_pylist())
        seen = result.seen
        assert len(set(seen.column("event_id").to_pylist())) == seen.num_rows


def test_state_written_with_repr_digests_still_tells_duplicates_from_conflicts():
    """A job updated in place keeps the seen-ids state its previous version wrote: repr digests, no
    legacy_digest column. Copies of those ids must still count as duplicates, not conflicts."""
    old = event_table([event("e1", metadata={"b": "2", "a": "1"}), event("e2", label="cat")])
    old_state = pa.table({"event_id": old.column("event_id"), "hour_ms": pa.array([el.hour_of(T0)] * 2, pa.int64()),
                          "digest": pa.array(el.repr_content_digests(old), pa.uint64()),
                          "conflict": pa.array([False, False]), "pending": pa.array([False, False])})
    seen = el.seen_from_state(old_state)
    assert seen.column("legacy_digest").to_pylist() == [True, True]
    result = el.deduplicate_with_ttl(seen, event_table([event("e1", metadata={"a": "1", "b": "2"}),
                                                        event("e2", label="dog"), event("e3")], source="new"))
    assert (ids(result.kept), result.duplicates, ids(result.conflicts)) == (["e3"], 1, ["e2"])
    legacy = dict(zip(result.seen.column("event_id").to_pylist(), result.seen.column("legacy_digest").to_pylist()))
    assert legacy == {"e1": True, "e2": True, "e3": False}
    assert el.seen_from_state(None).num_rows == 0


def test_content_digest_is_the_blake2b_of_the_v2_avro_datum_with_metadata_sorted():
    """Pinned: the digests live in a running job's state, so changing them breaks in-place updates."""
    table = event_table([event("e1", label="dog", metadata={"z": "1", "a": "2"})])
    record = {**table.select(list(el.EVENT_FIELD_NAMES)).to_pylist()[0], "metadata": {"a": "2", "z": "1"}}
    datum = io.BytesIO()
    fastavro.schemaless_writer(datum, fastavro.parse_schema(registry.event_schema(2)), record)
    expected = int.from_bytes(hashlib.blake2b(datum.getvalue(), digest_size=8).digest(), "little")
    assert el.content_digests(table).tolist() == [expected]


def test_settle_flush_dead_letters_buffered_copies_that_conflicted_and_ends_pending():
    first = el.deduplicate_with_ttl(el.empty_seen(), event_table([event("e1", label="cat"), event("e2")]))
    later = el.deduplicate_with_ttl(first.seen, event_table([event("e1", label="dog")]))
    to_log, conflicted, seen = el.settle_flush(later.seen, first.kept)
    assert (ids(to_log), ids(conflicted)) == (["e2"], ["e1"])
    assert not any(seen.column("pending").to_pylist())


def test_expired_ids_are_forgotten_once_the_watermark_passes_their_hour_end_plus_the_ttl():
    result = el.deduplicate_with_ttl(el.empty_seen(), event_table([event("a", time_ms=at(0)),
                                                                   event("b", time_ms=at(1))]))
    _, _, seen = el.settle_flush(result.seen, result.kept.filter(pa.compute.equal(result.kept.column("event_id"), "a")))
    assert ids(el.expire_seen(seen, at(3) - 1, POLICY)) == ["a", "b"]
    assert ids(el.expire_seen(seen, at(10), POLICY)) == ["b"]  # pending ids wait for their flush
    _, _, settled = el.settle_flush(seen, result.kept)
    assert el.expire_seen(settled, at(10), POLICY).num_rows == 0
