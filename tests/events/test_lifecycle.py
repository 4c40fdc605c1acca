"""Lifecycle rules 1-4 (DESIGN.md): pure cores, then the Beam transforms with shuffled and split input."""
import random

import apache_beam as beam
import pyarrow as pa
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from event_builders import T0, event, event_table, file_table, write_jsonl

from labelbeam.transforms.deduplicate import VOTES, DeduplicateEvents, ResolveLifecycle
from labelbeam.transforms.events import dead_letters as dl
from labelbeam.transforms.events.lifecycle import deduplicate, resolve_latest


def votes_of(result) -> list[tuple]:
    return sorted(zip(*(result.votes.column(c).to_pylist() for c in ("item_id", "annotator_id", "label"))))


# Rule 1 and 2: deduplicate

def test_identical_copies_of_an_event_id_keep_one_and_count_the_rest_as_duplicates():
    result = deduplicate(event_table([event("e1"), event("e1"), event("e1"), event("e2", annotator="a2")]))
    assert sorted(result.kept.column("event_id").to_pylist()) == ["e1", "e2"]
    assert result.duplicates == 2
    assert result.conflicts.num_rows == 0


def test_same_event_id_different_content_conflicts_every_copy():
    result = deduplicate(event_table([event("e1", label="cat"), event("e1", label="dog"), event("e1", label="cat")]))
    assert result.kept.num_rows == 0
    assert result.duplicates == 0
    assert result.conflicts.column("event_id").to_pylist() == ["e1"] * 3


def test_conflict_in_a_v2_only_field_is_detected():
    result = deduplicate(event_table([event("e1", metadata={"k": "1"}), event("e1", metadata={"k": "2"})]))
    assert result.conflicts.num_rows == 2


def test_map_entry_order_does_not_make_content_differ():
    result = deduplicate(event_table([event("e1", metadata={"a": "1", "b": "2"}),
                                      event("e1", metadata={"b": "2", "a": "1"})]))
    assert (result.kept.num_rows, result.duplicates) == (1, 1)


def test_v1_event_and_its_v2_encoding_with_defaults_are_identical():
    result = deduplicate(event_table([event("e1"), event("e1", revision=0)]))
    assert (result.kept.num_rows, result.duplicates, result.conflicts.num_rows) == (1, 1, 0)


def test_kept_copy_is_the_first_read_by_source_and_offset_whatever_the_input_order():
    copies = [event("e1")] * 3
    table = event_table(copies)
    reversed_table = table.take(pa.array([2, 1, 0]))
    for candidate in (table, reversed_table):
        assert deduplicate(candidate).kept.column("offset").to_pylist() == [0]


def test_nulls_compare_equal_when_deduplicating():
    result = deduplicate(event_table([event("e1", score=None, revision=1), event("e1", score=None, revision=1)]))
    assert result.duplicates == 1


# Rules 3 and 4: resolve_latest

def test_latest_event_time_wins_and_earlier_events_are_superseded():
    result = resolve_latest(event_table([event("e1", label="cat", time_ms=T0),
                                         event("e2", label="dog", time_ms=T0 + 5)]))
    assert votes_of(result) == [("i1", "a1", "dog")]
    assert (result.superseded, result.deleted) == (1, 0)


def test_higher_revision_wins_over_a_later_event_time():
    result = resolve_latest(event_table([event("e1", label="cat", time_ms=T0 + 999, revision=1),
                                         event("e2", label="dog", time_ms=T0, revision=2)]))
    assert votes_of(result) == [("i1", "a1", "dog")]


def test_equal_revision_and_time_are_settled_by_the_greater_event_id():
    result = resolve_latest(event_table([event("e9", label="cat"), event("e10", label="dog"),
                                         event("e5", label="bird")]))
    assert votes_of(result) == [("i1", "a1", "cat")]  # "e9" > "e5" > "e10" as strings
    assert result.superseded == 2


def test_winning_delete_withdraws_the_vote():
    result = resolve_latest(event_table([event("e1", label="cat", time_ms=T0),
                                         event("e2", label=None, action="DELETE", time_ms=T0 + 1)]))
    assert votes_of(result) == []
    assert (result.superseded, result.deleted) == (1, 1)


def test_upsert_after_a_delete_restores_a_vote():
    result = resolve_latest(event_table([event("e1", label="cat", time_ms=T0),
                                         event("e2", label=None, action="DELETE", time_ms=T0 + 1),
                                         event("e3", label="dog", time_ms=T0 + 2)]))
    assert votes_of(result) == [("i1", "a1", "dog")]
    assert (result.superseded, result.deleted) == (2, 0)


def test_delete_of_one_annotator_leaves_other_votes_on_the_item():
    result = resolve_latest(event_table([event("e1", annotator="a1"), event("e2", annotator="a2", label="dog"),
                                         event("e3", annotator="a1", label=None, action="DELETE", time_ms=T0 + 1)]))
    assert votes_of(result) == [("i1", "a2", "dog")]


def test_lifecycle_counts_add_up():
    events = [event(f"e{i}", item=f"i{i % 3}", annotator=f"a{i % 4}", label=["cat", "dog"][i % 2], time_ms=T0 + i)
              for i in range(40)]
    events += [event("d1", item="i0", annotator="a0", label=None, action="DELETE", time_ms=T0 + 100)]
    result = resolve_latest(event_table(events))
    assert result.votes.num_rows + result.superseded + result.deleted == len(events)


def test_resolve_latest_does_not_depend_on_row_order():
    events = [event(f"e{i}", item=f"i{i % 5}", annotator=f"a{i % 3}", label=["cat", "dog", "bird"][i % 3],
                    time_ms=T0 + (i * 7919) % 13, revision=i % 2) for i in range(60)]
    table = event_table(events)
    expected = votes_of(resolve_latest(table))
    rng = random.Random(0)
    for _ in range(5):
        order = list(range(table.num_rows))
        rng.shuffle(order)
        assert votes_of(resolve_latest(table.take(pa.array(order)))) == expected


# Beam transforms: same answers whatever the batching and order

def _mixed_events() -> list[dict]:
    events = []
    for i in range(30):
        events.append(event(f"e{i}", item=f"i{i % 4}", annotator=f"a{i % 5}", label=["cat", "dog"][i % 2],
                            time_ms=T0 + i))
    events += [event("e3", item="i3", annotator="a3", label="dog", time_ms=T0 + 3)]   # duplicate of e3
    events += [event("e4", item="i0", annotator="a4", label="cat", time_ms=T0 + 99)]  # conflicts with e4
    events += [event("x1", item="i1", annotator="a1", label=None, action="DELETE", time_ms=T0 + 500)]
    return events


def _expected_votes(events: list[dict]) -> list[tuple]:
    table = event_table(events)
    return votes_of(resolve_latest(deduplicate(table).kept))


def test_dedup_and_lifecycle_in_beam_are_order_and_split_independent(tmp_path):
    events = _mixed_events()
    expected = _expected_votes(events)
    assert ("i1", "a1", "cat") not in expected  # the DELETE withdrew it
    rng = random.Random(7)
    for num_buckets, num_files, on_disk in ((1, 1, False), (4, 3, False), (16, 5, False), (4, 3, True)):
        shuffle_dir = str(tmp_path / f"shuffle-{num_buckets}") if on_disk else None
        shuffled = list(events)
        rng.shuffle(shuffled)
        # Split across several "files": copies of one event_id land in different batches.
        paths = [write_jsonl(tmp_path / f"{num_buckets}-part-{i}.jsonl", shuffled[i::num_files])
                 for i in range(num_files)]
        batches = [batch for path in paths for batch in file_table(path).to_batches()]
        with TestPipeline(runner="FnApiRunner") as pipeline:
            unique = pipeline | beam.Create(batches) | DeduplicateEvents(num_buckets, shuffle_dir)
            standing = unique[dl.VALID] | ResolveLifecycle()
            votes = standing[VOTES] | beam.FlatMap(
                lambda t: list(zip(*(t.column(c).to_pylist() for c in ("item_id", "annotator_id", "label")))))
            reasons = (unique[dl.DEAD_LETTER] | beam.FlatMap(dl.from_record_batch)
                       | beam.Map(lambda letter: (letter.reason, letter.event_id)))
            assert_that(votes, equal_to(expected), label="Votes")
            assert_that(reasons, equal_to([("EVENT_ID_CONFLICT", "e4")] * 2), label="Conflicts")
            duplicates = unique[dl.COUNTS] | beam.Map(lambda c: c["duplicates"]) | beam.CombineGlobally(sum)
            assert_that(duplicates, equal_to([1]), label="Duplicates")


def test_list_and_map_differences_are_found_among_many_repeated_ids():
    events = []
    for i in range(30):
        metadata = {"k": str(i % 3)} if i % 2 else {}
        events += [event(f"e{i}", labels=["cat"] * (i % 3), metadata=metadata, label=None if i % 3 else "cat")] * 2
    events += [event("e1", labels=["cat", "dog"], metadata={"k": "1"}, label=None),  # other labels
               event("e3", metadata={"k": "0", "x": "1"}),                          # extra map entry
               event("e5", labels=["dog", "dog"], metadata={"k": "2"}, label=None)]  # same length, other values
    result = deduplicate(event_table(events))
    assert sorted(set(result.conflicts.column("event_id").to_pylist())) == ["e1", "e3", "e5"]
    assert result.duplicates == 27


def test_event_id_hash_collisions_do_not_merge_different_ids():
    table = event_table([event("e1"), event("e2", annotator="a2"), event("e3"), event("e3")])
    collided = table.set_column(table.schema.get_field_index("event_id_hash"), "event_id_hash",
                                pa.array([7] * table.num_rows, pa.uint32()))
    result = deduplicate(collided)
    assert sorted(result.kept.column("event_id").to_pylist()) == ["e1", "e2", "e3"]
    assert (result.duplicates, result.conflicts.num_rows) == (1, 0)
