"""Majority vote: the numpy core against hand-computed numbers, then the consensus methods."""
import json
import math

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from event_builders import event, event_table

from labelbeam.transforms.arrays.factorize import factorize_sorted
from labelbeam.transforms.consensus import ANNOTATOR_STATS, LABELS, ComputeConsensus
from labelbeam.transforms.inference.majority_vote import majority_vote
from labelbeam.transforms.methods.base import CONSENSUS_SCHEMA
from labelbeam.transforms.methods.csv_inputs import read_weights_csv
from labelbeam.transforms.methods.single_label import MajorityVote, WeightedMajorityVote


def test_majority_label_share_and_agreement_by_hand():
    # item 0: labels 1,1,0 -> label 1, share 2/3, agreeing ordered pairs 2 of 6
    tally = majority_vote(np.array([0, 0, 0]), np.array([1, 1, 0]), n_items=1, n_labels=2)
    assert tally.label_idx.tolist() == [1]
    assert tally.confidence[0] == pytest.approx(2 / 3)
    assert tally.num_votes.tolist() == [3]
    assert tally.agreement[0] == pytest.approx(2 / 6)
    assert not tally.is_tie[0]


def test_tie_takes_the_smallest_label_index_and_is_flagged():
    tally = majority_vote(np.array([0, 0, 0, 0]), np.array([2, 1, 2, 1]), n_items=1, n_labels=3)
    assert tally.label_idx.tolist() == [1]
    assert tally.is_tie.tolist() == [True]
    assert tally.confidence[0] == pytest.approx(0.5)


def test_tie_rule_does_not_depend_on_vote_order():
    items, labels = np.array([0, 0, 0, 0, 1, 1]), np.array([3, 0, 3, 0, 2, 1])
    expected = majority_vote(items, labels, 2, 4)
    for seed in range(5):
        order = np.random.default_rng(seed).permutation(len(items))
        again = majority_vote(items[order], labels[order], 2, 4)
        assert again.label_idx.tolist() == expected.label_idx.tolist() == [0, 1]


def test_single_vote_has_full_confidence_and_no_agreement():
    tally = majority_vote(np.array([0]), np.array([0]), 1, 1)
    assert tally.confidence.tolist() == [1.0]
    assert math.isnan(tally.agreement[0])


def test_item_without_votes_has_no_label():
    tally = majority_vote(np.array([1]), np.array([0]), n_items=2, n_labels=1)
    assert tally.label_idx.tolist() == [-1, 0]
    assert tally.num_votes.tolist() == [0, 1]


def test_weights_can_outvote_a_majority():
    # two votes for label 0 at weight 1, one vote for label 1 at weight 3
    tally = majority_vote(np.array([0, 0, 0]), np.array([0, 0, 1]), 1, 2, weights=np.array([1.0, 1.0, 3.0]))
    assert tally.label_idx.tolist() == [1]
    assert tally.confidence[0] == pytest.approx(3 / 5)
    assert tally.agreement[0] == pytest.approx(2 / 6)  # agreement stays unweighted


def test_many_labels_and_items_match_a_dense_count():
    rng = np.random.default_rng(3)
    items, labels = rng.integers(0, 200, 5_000), rng.integers(0, 7, 5_000)
    tally = majority_vote(items, labels, 200, 7)
    dense = np.zeros((200, 7), dtype=int)
    np.add.at(dense, (items, labels), 1)
    assert tally.label_idx.tolist() == dense.argmax(axis=1).tolist()  # argmax also picks the first maximum
    assert tally.num_votes.tolist() == dense.sum(axis=1).tolist()
    assert tally.is_tie.tolist() == ((dense == dense.max(axis=1, keepdims=True)).sum(axis=1) > 1).tolist()


def test_factorize_sorted_codes_follow_string_order():
    codes, uniques = factorize_sorted(pa.array(["dog", "cat", "dog", "bird"]))
    assert uniques.to_pylist() == ["bird", "cat", "dog"]
    assert codes.tolist() == [2, 1, 2, 0]


def votes(*triples, **kwargs):
    return event_table([event(f"e{i}", item=item, annotator=annotator, label=label)
                        for i, (item, annotator, label) in enumerate(triples)])


def rows(table: pa.Table) -> list[dict]:
    return table.to_pylist()


def test_majority_vote_rows_have_the_contract_columns_and_statuses():
    table = MajorityVote(min_votes=2).aggregate(votes(
        ("i1", "a1", "cat"), ("i1", "a2", "cat"), ("i1", "a3", "dog"),
        ("i2", "a1", "dog"), ("i2", "a2", "cat"),
        ("i3", "a1", "bird")))
    assert table.schema == CONSENSUS_SCHEMA
    by_item = {row["item_id"]: row for row in rows(table)}
    assert by_item["i1"]["label"] == "cat" and by_item["i1"]["status"] == "ok"
    assert by_item["i1"]["confidence"] == pytest.approx(2 / 3)
    assert by_item["i2"] == {"item_id": "i2", "label": "cat", "confidence": 0.5, "num_votes": 2, "agreement": 0.0,
                             "status": "tie", "labels": [], "score": None,
                             "probabilities": [0.0, 0.5, 0.5]}
    assert by_item["i3"]["status"] == "needs_more_votes" and by_item["i3"]["agreement"] is None
    assert [row["item_id"] for row in rows(table)] == ["i1", "i2", "i3"]


def test_needs_more_votes_takes_precedence_over_tie():
    table = MajorityVote(min_votes=3).aggregate(votes(("i1", "a1", "cat"), ("i1", "a2", "dog")))
    assert rows(table)[0]["status"] == "needs_more_votes"


def test_weighted_majority_vote_uses_annotator_weights_and_default():
    method = WeightedMajorityVote({"expert": 5.0}, default_weight=1.0)
    table = method.aggregate(votes(("i1", "a1", "cat"), ("i1", "a2", "cat"), ("i1", "expert", "dog")))
    assert rows(table)[0]["label"] == "dog"
    assert rows(table)[0]["confidence"] == pytest.approx(5 / 7)
    assert method.params()["weights_count"] == 1
    assert "expert" not in json.dumps(method.params())  # weights are keyed by raw annotator ids


@pytest.mark.parametrize("weight", [float("nan"), -1.0, float("inf")])
def test_weighted_majority_vote_rejects_bad_weights(weight):
    with pytest.raises(ValueError, match="expert"):
        WeightedMajorityVote({"expert": weight})


def test_read_weights_csv_accepts_a_header_and_reports_bad_lines():
    assert read_weights_csv("annotator_id,weight\na1,0.5\na2,2\n") == {"a1": 0.5, "a2": 2.0}
    with pytest.raises(ValueError, match="line 2"):
        read_weights_csv("a1,0.5\na2,heavy\n")


def test_min_votes_below_one_is_rejected():
    with pytest.raises(ValueError, match="min_votes"):
        MajorityVote(min_votes=0)


def test_compute_consensus_in_beam_gives_one_row_per_item():
    table = votes(("i1", "a1", "cat"), ("i1", "a2", "cat"), ("i2", "a1", "dog"))
    with TestPipeline(runner="FnApiRunner") as pipeline:
        consensus = pipeline | beam.Create([table]) | ComputeConsensus(MajorityVote())
        labels = consensus[LABELS] | beam.FlatMap(
            lambda t: [(r["item_id"], r["label"], r["num_votes"]) for r in t.to_pylist()])
        assert_that(labels, equal_to([("i1", "cat", 2), ("i2", "dog", 1)]))
        stats = consensus[ANNOTATOR_STATS] | beam.FlatMap(
            lambda t: [(r["annotator_id"], r["true_label"], r["answered_label"], r["consensus"]) for r in t.to_pylist()])
        assert_that(stats, equal_to([("a1", "cat", "cat", 1), ("a2", "cat", "cat", 1), ("a1", "dog", "dog", 1)]),
                    label="AnnotatorStats")


def test_item_with_only_rating_votes_still_gets_a_row():
    table = MajorityVote().aggregate(event_table([event("e1", item="i1", label="cat"),
                                                  event("e2", item="i2", label=None, score=4.0)]))
    assert rows(table)[1] == {"item_id": "i2", "label": None, "confidence": 0.0, "num_votes": 0,
                              "agreement": None, "status": "needs_more_votes", "labels": [], "score": None,
                              "probabilities": None}
