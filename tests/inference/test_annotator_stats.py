"""Per-annotator quality: counts add up across buckets, accuracy/confusion/gold match hand counts."""
import numpy as np
import pyarrow as pa
import pytest

from labelbeam.transforms.inference.annotator_stats import (
    ANNOTATOR_SCHEMA,
    key_id,
    keyed_pseudonym,
    partial_annotator_stats,
    summarize_annotators,
)

LABELS = pa.array(["cat", "dog"])
ANNOTATORS = pa.array(["ann", "bob", "cy"])


def identity(annotator_id: str) -> str:
    return annotator_id


def test_hand_counted_example():
    # items 0 and 1; item 0 is gold "cat".  posteriors: item0 (1, 0), item1 (0.25, 0.75)
    answer_annotator = np.array([0, 1, 2, 0, 1])
    answer_item = np.array([0, 0, 0, 1, 1])
    answer_label = np.array([0, 0, 1, 1, 0])
    posteriors = np.array([[1.0, 0.0], [0.25, 0.75]])
    partial = partial_annotator_stats(ANNOTATORS, answer_annotator, answer_item, answer_label, LABELS, posteriors,
                                      consensus=np.array([0, 1]), gold=np.array([0, -1]))
    table, labels = summarize_annotators([partial], identity)
    assert labels == ["cat", "dog"]
    assert table.schema == ANNOTATOR_SCHEMA
    rows = {row["annotator"]: row for row in table.to_pylist()}
    assert rows["ann"]["votes"] == 2 and rows["ann"]["accuracy"] == pytest.approx((1.0 + 0.75) / 2)
    assert rows["ann"]["agreement"] == 1.0 and rows["ann"]["gold_votes"] == 1 and rows["ann"]["gold_accuracy"] == 1.0
    assert rows["ann"]["confusion"] == [pytest.approx([1.0 / 1.25, 0.25 / 1.25]), [0.0, 1.0]]
    assert rows["bob"]["accuracy"] == pytest.approx((1.0 + 0.25) / 2) and rows["bob"]["agreement"] == 0.5
    assert rows["cy"]["accuracy"] == 0.0 and rows["cy"]["gold_accuracy"] == 0.0
    assert rows["cy"]["confusion"] == [[0.0, 1.0], None]  # never estimated to see a dog


def test_no_gold_gives_null_gold_accuracy():
    partial = partial_annotator_stats(ANNOTATORS[:1], np.array([0]), np.array([0]), np.array([1]), LABELS,
                                      np.array([[0.5, 0.5]]), consensus=np.array([0]))
    row = summarize_annotators([partial], identity)[0].to_pylist()[0]
    assert row["gold_votes"] == 0 and row["gold_accuracy"] is None and row["votes"] == 1


def random_bucket(rng, n_items, label_names, annotator_names):
    n_answers = n_items * 3
    posteriors = rng.dirichlet(np.ones(len(label_names)), n_items)
    return (pa.array(annotator_names), rng.integers(0, len(annotator_names), n_answers),
            rng.integers(0, n_items, n_answers), rng.integers(0, len(label_names), n_answers), pa.array(label_names),
            posteriors, posteriors.argmax(axis=1), np.where(rng.random(n_items) < 0.3, 0, -1))


def test_buckets_add_up_to_the_whole_bit_for_bit_in_any_order():
    rng = np.random.default_rng(1)
    buckets = [random_bucket(rng, 30, ["a", "b", "c"], ["w1", "w2", "w3", "w4"]) for _ in range(6)]
    partials = [partial_annotator_stats(*bucket) for bucket in buckets]
    # The same answers as one bucket: items renumbered, bucket-local annotator indexes kept (same names).
    offsets = np.cumsum([0] + [len(b[5]) for b in buckets])
    whole = partial_annotator_stats(
        buckets[0][0], np.concatenate([b[1] for b in buckets]),
        np.concatenate([b[2] + o for b, o in zip(buckets, offsets)]), np.concatenate([b[3] for b in buckets]),
        buckets[0][4], np.concatenate([b[5] for b in buckets]), np.concatenate([b[6] for b in buckets]),
        np.concatenate([b[7] for b in buckets]))
    together, labels = summarize_annotators([whole], identity)
    apart, labels_apart = summarize_annotators(partials, identity)
    shuffled, _ = summarize_annotators([partials[i] for i in (3, 0, 5, 1, 4, 2)], identity)
    assert labels == labels_apart
    assert apart.equals(shuffled)
    for a, b in zip(together.to_pylist(), apart.to_pylist()):
        assert a["votes"] == b["votes"] and a["gold_votes"] == b["gold_votes"]
        # Posterior mass is summed in fixed point (2**-30 per bucket and cell): equal up to rounding.
        assert a["accuracy"] == pytest.approx(b["accuracy"], abs=1e-8)
        np.testing.assert_allclose(np.array(a["confusion"]), np.array(b["confusion"]), atol=1e-8)
    assert sum(row["votes"] for row in apart.to_pylist()) == sum(len(b[1]) for b in buckets)


def test_annotator_who_labels_everything_the_same_has_a_one_column_confusion():
    posteriors = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    partial = partial_annotator_stats(ANNOTATORS[:1], np.zeros(3, int), np.arange(3), np.zeros(3, int), LABELS,
                                      posteriors, consensus=posteriors.argmax(axis=1))
    row = summarize_annotators([partial], identity)[0].to_pylist()[0]
    assert row["confusion"] == [[1.0, 0.0], [1.0, 0.0]]
    assert row["accuracy"] == pytest.approx((0.9 + 0.2 + 0.6) / 3)


def test_no_votes_gives_an_empty_table():
    table, labels = summarize_annotators([], identity)
    assert table.num_rows == 0 and labels == [] and table.schema == ANNOTATOR_SCHEMA


def test_pseudonyms_are_keyed_stable_and_distinct():
    one, other = keyed_pseudonym(b"k1"), keyed_pseudonym(b"k2")
    assert one("alice") == one("alice") != one("bob")
    assert one("alice") != other("alice")
    assert "alice" not in one("alice") and len(one("alice")) == 21
    assert key_id(b"k1") != key_id(b"k2") and b"k1".hex() not in key_id(b"k1")


def test_wilson_interval_matches_a_worked_value_and_stays_in_the_unit_interval():
    import numpy as np

    from labelbeam.transforms.inference.annotator_stats import wilson_interval
    # 8 of 10 at 95%: (0.4902, 0.9433) (Wilson 1927; e.g. Newcombe 1998, Table I, method 3).
    low, high = wilson_interval(np.array([8.0, 0.0, 5.0, 3.0]), np.array([10.0, 0.0, 5.0, 1000.0]))
    assert round(low[0], 4) == 0.4902 and round(high[0], 4) == 0.9433
    assert np.isnan(low[1]) and np.isnan(high[1])          # no trials, no interval
    assert high[2] == 1.0 and 0.5 < low[2] < 0.6             # all right on 5: high, but not certain
    assert high[3] - low[3] < 0.01                          # 1,000 trials: narrow


def test_only_annotators_low_with_enough_evidence_are_flagged():
    import numpy as np

    from labelbeam.transforms.inference.annotator_stats import low_accuracy_flags, wilson_interval
    correct, votes = np.array([90.0, 85.0, 80.0, 30.0, 1.0]), np.array([100.0, 100.0, 100.0, 100.0, 2.0])
    _, high = wilson_interval(correct, votes)
    flags = low_accuracy_flags(correct / votes, high)
    # 30 of 100 is flagged; 1 of 2 is a low share too, but on thin data, so it is not.
    assert flags.tolist() == [False, False, False, True, False]
    assert not low_accuracy_flags(np.array([0.1]), np.array([0.2])).any()  # no peers: no median to fall below
