"""Soft labels: every single-label method's per-class probabilities, put in the version's class order."""
import numpy as np
import pyarrow as pa
import pytest

from labelbeam.transforms.methods.base import classes_of
from labelbeam.transforms.methods.single_label import DawidSkene, Glad, Mace, MajorityVote, OneCoin
from labelbeam.transforms.publish import sorted_labels, version_classes
from labelbeam.transforms.storage.table_files import parquet_bytes

METHODS = [MajorityVote, DawidSkene, OneCoin, Glad, Mace]


def votes(rows) -> pa.Table:
    items, annotators, labels = zip(*rows)
    return pa.table({"item_id": list(items), "annotator_id": list(annotators), "label": pa.array(labels, pa.string())})


def random_votes(seed: int, labels=("ant", "bee", "cat", "dog"), n_items: int = 60) -> pa.Table:
    rng = np.random.default_rng(seed)
    rows = [(f"i{item:03d}", f"a{annotator}", labels[rng.integers(len(labels))] if rng.random() < 0.9 else None)
            for item in range(n_items) for annotator in rng.choice(8, rng.integers(1, 5), replace=False)]
    return votes(rows + [("i999", "a0", None)])   # an item without a single-label vote


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.name)
def test_probabilities_sum_to_one_and_agree_with_label_and_confidence(method):
    table = method().consensus_of(random_votes(seed=4)).labels
    classes = classes_of(table)
    assert classes == ["ant", "bee", "cat", "dog"]
    voted = table.filter(pa.compute.greater(table.column("num_votes"), 0))
    probabilities = np.array(voted.column("probabilities").to_pylist())
    assert probabilities.shape == (voted.num_rows, 4) and (probabilities >= 0).all()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-12)
    assert [classes[i] for i in probabilities.argmax(axis=1)] == voted.column("label").to_pylist()
    np.testing.assert_array_equal(probabilities.max(axis=1), voted.column("confidence").to_numpy())
    unvoted = table.filter(pa.compute.equal(table.column("num_votes"), 0))
    assert unvoted.num_rows > 0 and unvoted.column("probabilities").null_count == unvoted.num_rows


def test_buckets_with_different_classes_publish_one_order_whatever_their_order():
    first = MajorityVote().consensus_of(votes([("i1", "a", "cat"), ("i1", "b", "ant"), ("i2", "a", "cat")])).labels
    second = MajorityVote().consensus_of(votes([("i3", "a", "dog"), ("i3", "b", "dog"), ("i3", "c", "bee"),
                                                ("i4", "a", None)])).labels
    assert classes_of(first) == ["ant", "cat"] and classes_of(second) == ["bee", "dog"]
    classes = version_classes([first, second], given=["eel", "ant"])
    assert classes == ["ant", "bee", "cat", "dog", "eel"]
    table = sorted_labels([second, first], classes)
    assert classes_of(table) == classes
    assert table.column("probabilities").to_pylist() == [
        [0.5, 0.0, 0.5, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0, 0.0], [0.0, 1 / 3, 0.0, 2 / 3, 0.0], None]
    assert parquet_bytes(table) == parquet_bytes(sorted_labels([first, second], classes))


def test_methods_without_soft_labels_record_no_classes():
    from labelbeam.transforms.methods.multi_label import MultiLabel

    table = MultiLabel().consensus_of(pa.table({
        "item_id": ["i1"], "annotator_id": ["a"], "label": pa.array([None], pa.string()),
        "labels": pa.array([["x"]], pa.list_(pa.string())), "score": pa.array([None], pa.float64())})).labels
    assert version_classes([table], given=["x", "y"]) == []
    assert sorted_labels([table], []).column("probabilities").null_count == 1
