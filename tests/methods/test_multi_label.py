"""Multi-label consensus: the numpy core by hand, then the `multilabel` method on event tables."""
import math

import numpy as np
import pyarrow as pa
import pytest
from event_builders import event, event_table

from labelbeam.transforms.inference.annotator_stats import summarize_annotators
from labelbeam.transforms.inference.multi_label import MultiLabelVotes, decisions, multi_label_consensus
from labelbeam.transforms.methods.base import CONSENSUS_SCHEMA
from labelbeam.transforms.methods.multi_label import MultiLabel
from labelbeam.transforms.methods.registry import METHODS


def sparse(vote_sets: list[tuple[int, list[int]]], n_items: int, n_classes: int) -> MultiLabelVotes:
    """[(item, [classes])] per vote -> MultiLabelVotes."""
    answer_vote = [v for v, (_, classes) in enumerate(vote_sets) for _ in classes]
    answer_class = [c for _, classes in vote_sets for c in classes]
    return MultiLabelVotes(np.array([item for item, _ in vote_sets]), np.array(answer_vote, dtype=np.int64),
                           np.array(answer_class, dtype=np.int64), n_items, n_classes)


def test_per_class_shares_inclusion_confidence_and_agreement_by_hand():
    # item 0: votes {0,1}, {0}, {0,2}: class 0 3/3, class 1 1/3, class 2 1/3
    result = multi_label_consensus(sparse([(0, [0, 1]), (0, [0]), (0, [0, 2])], 1, 3))
    assert result.pair_class.tolist() == [0, 1, 2]
    assert result.pair_yes.tolist() == [3, 1, 1]
    assert result.pair_share == pytest.approx([1.0, 1 / 3, 1 / 3])
    assert result.pair_included.tolist() == [True, False, False]
    assert result.num_votes.tolist() == [3]
    assert result.confidence[0] == pytest.approx(2 / 3)        # min(1, 2/3, 2/3)
    # per-class Fleiss P_i: class 0 (3*2)/(3*2) = 1; classes 1, 2: (0 + 2*1)/6 = 1/3
    assert result.agreement[0] == pytest.approx((1 + 1 / 3 + 1 / 3) / 3)
    assert not result.is_tie[0]


def test_share_of_exactly_one_half_excludes_the_class_and_flags_a_tie():
    result = multi_label_consensus(sparse([(0, [0, 1]), (0, [0])], 1, 2))
    assert result.pair_share.tolist() == [1.0, 0.5]
    assert result.pair_included.tolist() == [True, False]
    assert result.is_tie.tolist() == [True]
    assert result.confidence[0] == 0.5


def test_empty_vote_says_no_to_every_class():
    # item 0: {0}, {} , {} -> class 0 share 1/3, excluded; item 1: only "none of them" votes
    result = multi_label_consensus(sparse([(0, [0]), (0, []), (0, []), (1, []), (1, [])], 2, 1))
    assert result.pair_item.tolist() == [0] and result.pair_share[0] == pytest.approx(1 / 3)
    assert result.pair_included.tolist() == [False]
    assert result.num_votes.tolist() == [3, 2]
    # No class in question on item 1: everyone agreed on the empty set.
    assert result.confidence[1] == 1.0 and result.agreement[1] == 1.0
    with_label_set = multi_label_consensus(sparse([(1, []), (1, [])], 2, 1), all_classes=True)
    assert with_label_set.pair_item.tolist() == [1] and with_label_set.pair_share.tolist() == [0.0]
    assert with_label_set.confidence.tolist() == [0.0, 1.0]   # item 0 has no votes


def test_label_set_puts_every_class_in_question_and_changes_agreement():
    votes = sparse([(0, [0]), (0, [0])], 1, 3)
    seen = multi_label_consensus(votes)
    every = multi_label_consensus(votes, all_classes=True)
    assert seen.pair_class.tolist() == [0] and every.pair_class.tolist() == [0, 1, 2]
    assert every.pair_share.tolist() == [1.0, 0.0, 0.0]
    assert seen.agreement[0] == every.agreement[0] == 1.0


def test_single_vote_has_no_agreement_and_repeated_classes_count_once():
    result = multi_label_consensus(sparse([(0, [1, 1])], 1, 2))
    assert result.pair_yes.tolist() == [1]
    assert math.isnan(result.agreement[0]) and result.confidence[0] == 1.0


def test_decisions_cover_every_vote_and_class_in_question():
    votes = sparse([(0, [0, 1]), (1, [1]), (0, [])], 2, 2)
    result = multi_label_consensus(votes)
    decided = decisions(votes, result)
    triples = sorted(zip(decided.vote.tolist(), result.pair_class[decided.pair].tolist(), decided.said_yes.tolist()))
    assert triples == [(0, 0, True), (0, 1, True), (1, 1, True), (2, 0, False), (2, 1, False)]


def ml_votes(*votes):
    """(item, annotator, labels list or a single label str) -> event table."""
    events = []
    for i, (item, annotator, answer) in enumerate(votes):
        if isinstance(answer, str):
            events.append(event(f"e{i}", item=item, annotator=annotator, label=answer))
        else:
            events.append(event(f"e{i}", item=item, annotator=annotator, label=None, labels=answer))
    return event_table(events)


def test_multilabel_method_rows():
    table = MultiLabel(min_votes=2).aggregate(ml_votes(
        ("i1", "a1", ["cat", "dog"]), ("i1", "a2", ["dog", "cat"]), ("i1", "a3", ["cat"]),
        ("i2", "a1", ["dog"]), ("i2", "a2", ["cat"]),
        ("i3", "a1", "bird")))
    assert table.schema == CONSENSUS_SCHEMA
    rows = {row["item_id"]: row for row in table.to_pylist()}
    assert rows["i1"]["labels"] == ["cat", "dog"] and rows["i1"]["label"] is None
    assert rows["i1"]["status"] == "ok" and rows["i1"]["num_votes"] == 3
    assert rows["i1"]["confidence"] == pytest.approx(2 / 3)
    assert rows["i1"]["agreement"] == pytest.approx((1 + 1 / 3) / 2)
    assert rows["i2"]["labels"] == [] and rows["i2"]["status"] == "tie" and rows["i2"]["agreement"] == 0.0
    # A single label is the set of that one class; one vote is below --min-votes 2.
    assert rows["i3"]["labels"] == ["bird"] and rows["i3"]["status"] == "needs_more_votes"
    assert rows["i3"]["agreement"] is None


def test_multilabel_with_a_label_set_and_votes_that_take_no_part():
    votes = ml_votes(("i1", "a1", ["cat"]), ("i1", "a2", ["cat"]))
    rating = event_table([event("r1", item="i2", annotator="a1", label=None, score=3.0)])
    table = MultiLabel(label_set=["cat", "dog", "fox"]).aggregate(pa.concat_tables([votes, rating]))
    rows = {row["item_id"]: row for row in table.to_pylist()}
    assert rows["i1"]["labels"] == ["cat"] and rows["i1"]["confidence"] == 1.0 and rows["i1"]["agreement"] == 1.0
    # A pure rating is not a multi-label vote: the item keeps a row with no votes.
    assert rows["i2"] == {"item_id": "i2", "label": None, "confidence": 0.0, "num_votes": 0, "agreement": None,
                          "status": "needs_more_votes", "labels": [], "score": None, "probabilities": None}


def test_a_vote_with_no_class_at_all_is_none_of_them():
    # The validator does not let such an UPSERT through yet; the method still reads it as "none".
    votes = ml_votes(("i1", "a1", ["cat"]), ("i1", "a2", "dog"), ("i1", "a3", "dog"))
    labels = votes.column("label").to_pylist()
    votes = votes.set_column(votes.schema.get_field_index("label"), "label",
                             pa.array([labels[0], labels[1], None], pa.string()))
    [row] = MultiLabel().aggregate(votes).to_pylist()
    assert row["labels"] == [] and row["num_votes"] == 3 and row["confidence"] == pytest.approx(2 / 3)


def test_multilabel_annotator_stats_score_yes_no_decisions():
    method = METHODS["multilabel"]()
    result = method.consensus_of(ml_votes(("i1", "a1", ["cat", "dog"]), ("i1", "a2", ["cat"]),
                                          ("i1", "a3", ["cat"])))
    stats, classes = summarize_annotators([result.annotator_stats], lambda annotator: annotator)
    assert classes == ["cat=yes", "dog=no", "dog=yes"]  # cat=no: share 1, so no mass and no answer
    rows = {row["annotator"]: row for row in stats.to_pylist()}
    # a1: cat yes (consensus yes), dog yes (consensus no): 2 decisions, 1 agrees.
    assert rows["a1"]["votes"] == 2 and rows["a1"]["agreement"] == 0.5
    assert rows["a1"]["accuracy"] == pytest.approx((1.0 + 1 / 3) / 2)
    assert rows["a2"]["agreement"] == 1.0 and rows["a2"]["accuracy"] == pytest.approx((1.0 + 2 / 3) / 2)
    assert rows["a2"]["bias"] is None and rows["a2"]["noise_scale"] is None


def test_multilabel_does_not_take_gold():
    with pytest.raises(ValueError, match="gold"):
        MultiLabel(gold={"i1": "cat"})


def test_multilabel_reads_tables_of_several_chunks_like_one():
    first = ml_votes(("i1", "a1", ["x"]), ("i1", "a2", "y"))
    second = event_table([event("f1", item="i1", annotator="a3", label=None, labels=["x", "y"]),
                          event("f2", item="i2", annotator="a2", label="y")])
    chunked = pa.concat_tables([first, second])
    assert chunked.column("labels").num_chunks == 2
    table = MultiLabel().aggregate(chunked)
    assert table.equals(MultiLabel().aggregate(chunked.combine_chunks()))
    assert table.column("labels").to_pylist() == [["x", "y"], ["y"]]
