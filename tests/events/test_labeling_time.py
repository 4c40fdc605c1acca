"""Labeling time: per-annotator sums of duration_ms over valid events, additive across buckets."""
import pyarrow as pa
import pytest

from labelbeam.transforms.events.labeling_time import (
    labeling_summary,
    labeling_time,
    sum_labeling_time,
)

EVENTS = pa.table({"annotator_id": ["b", "a", "a", "b", "c", "a"],
                   "duration_ms": pa.array([1_000, 2_000, None, 3_600_000, -5, 500], pa.int64())})


def test_sums_durations_per_annotator_and_counts_missing_or_negative_ones_apart():
    table = labeling_time(EVENTS)
    assert table.to_pylist() == [
        {"annotator_id": "a", "events": 3, "duration_ms": 2_500, "without_duration": 1},
        {"annotator_id": "b", "events": 2, "duration_ms": 3_601_000, "without_duration": 0},
        {"annotator_id": "c", "events": 1, "duration_ms": 0, "without_duration": 1},  # negative: not time spent
    ]
    summary = labeling_summary(table)
    assert summary == {"hours": round(3_603_500 / 3_600_000, 3), "duration_ms": 3_603_500, "events": 6,
                       "events_without_duration": 2, "share_without_duration": round(2 / 6, 6), "annotators": 3}


@pytest.mark.parametrize("split", [1, 2, 4, 5])
def test_partials_of_any_split_sum_to_the_whole(split):
    partials = [labeling_time(EVENTS.slice(start, split)) for start in range(0, EVENTS.num_rows, split)]
    assert sum_labeling_time(partials).equals(labeling_time(EVENTS))


def test_no_events_is_zero_hours_and_no_share():
    empty = sum_labeling_time([])
    assert empty.num_rows == 0
    assert labeling_summary(empty) == {"hours": 0.0, "duration_ms": 0, "events": 0, "events_without_duration": 0,
                                       "share_without_duration": None, "annotators": 0}


def test_the_annotator_table_gains_time_columns_and_a_row_for_work_whose_votes_were_all_withdrawn():
    from labelbeam.transforms.inference.annotator_stats import ANNOTATOR_SCHEMA
    from labelbeam.transforms.publish import with_labeling_time
    stats = pa.table({"annotator": ["pa", "pb"], "votes": [2, 1], "accuracy": [1.0, None],
                      "agreement": [0.5, 1.0], "gold_votes": [0, 0], "gold_accuracy": [None, None],
                      "confusion": [[[1.0]], None], "bias": [None, None], "noise_scale": [None, None],
                      "confusion_labels": [["cat"], ["cat"]], "accuracy_low": [0.3, None],
                      "accuracy_high": [1.0, None], "gold_accuracy_low": [None, None],
                      "gold_accuracy_high": [None, None], "low_accuracy": [False, False]},
                     schema=ANNOTATOR_SCHEMA)
    table = with_labeling_time(stats, labeling_time(EVENTS), lambda name: "p" + name)
    rows = {row["annotator"]: row for row in table.to_pylist()}
    assert list(rows) == ["pa", "pb", "pc"]
    assert (rows["pa"]["events"], rows["pa"]["labeling_hours"], rows["pa"]["events_without_duration"]) == \
        (3, 2_500 / 3_600_000, 1)
    assert rows["pa"]["confusion"] == [[1.0]] and rows["pa"]["votes"] == 2  # the stats are kept
    assert rows["pc"]["votes"] == 0 and rows["pc"]["events"] == 1 and rows["pc"]["accuracy"] is None
