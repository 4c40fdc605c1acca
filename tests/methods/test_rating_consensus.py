"""Rating consensus methods (mean, median, bias_corrected): confidence/agreement helpers by hand, the
methods on event tables, and bias correction beating the mean on biased annotators."""
import math

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from event_builders import event, event_table

from labelbeam.transforms.consensus import ANNOTATOR_STATS, LABELS, ComputeConsensus
from labelbeam.transforms.inference.annotator_stats import summarize_annotators
from labelbeam.transforms.inference.ratings import Ratings, pooled_noise_scale, rating_fields, rating_spread
from labelbeam.transforms.methods.base import CONSENSUS_SCHEMA
from labelbeam.transforms.methods.ratings import BiasCorrected, MeanScore, MedianScore, rating_votes
from labelbeam.transforms.methods.registry import METHODS


def ratings_table(*triples, start: int = 0) -> pa.Table:
    return event_table([event(f"e{start + i}", item=item, annotator=annotator, label=None, score=score)
                        for i, (item, annotator, score) in enumerate(triples)])


def by_item(table: pa.Table) -> dict:
    return {row["item_id"]: row for row in table.to_pylist()}


def test_pooled_noise_scale_is_the_pooled_within_item_standard_deviation():
    ratings = Ratings(np.array([0, 0, 0, 1, 1, 2]), np.array([0, 1, 2, 0, 1, 0]),
                      np.array([1.0, 2.0, 6.0, 4.0, 5.0, 9.0]), 3, 3)
    squares, dof = rating_spread(ratings)
    assert squares.tolist() == [14.0, 0.5] and dof == 3     # item 2 has one rating: no spread
    assert pooled_noise_scale([(squares, dof)]) == pytest.approx(math.sqrt(14.5 / 3))
    # Any split into parts and any order give the same bits (exact summation).
    parts = [(squares[:1], 2), (squares[1:], 1)]
    assert pooled_noise_scale(parts) == pooled_noise_scale(parts[::-1]) == pooled_noise_scale([(squares, dof)])
    assert math.isnan(pooled_noise_scale([(np.zeros(0), 0)]))


def test_rating_fields_count_scores_within_one_scale():
    item = np.array([0, 0, 0, 1])
    scores = np.array([1.0, 2.0, 6.0, 7.0])
    fields = rating_fields(item, scores, np.array([3.0, 7.0]), 2, scale=2.0)
    assert fields.within.tolist() == [True, True, False, True]
    assert fields.confidence.tolist() == pytest.approx([2 / 3, 1.0])
    # ordered pairs of item 0 within 2 of each other: (1,2) and (2,1) of 6
    assert fields.agreement[0] == pytest.approx(2 / 6) and math.isnan(fields.agreement[1])
    # An unknown scale counts as 0: only equal scores are within.
    unknown = rating_fields(np.array([0, 0]), np.array([0.1 + 0.2, 0.3]), np.array([0.3]), 1, float("nan"))
    assert unknown.within.tolist() == [True, True] and unknown.agreement[0] == 1.0


def test_mean_and_median_rows():
    votes = pa.concat_tables([
        ratings_table(("i1", "a1", 1.0), ("i1", "a2", 2.0), ("i1", "a3", 6.0), ("i2", "a1", 4.0), ("i2", "a2", 5.0),
                      ("i4", "a2", 7.0)),
        event_table([event("c1", item="i3", annotator="a1", label="cat")])])
    scale = math.sqrt(14.5 / 3)
    mean = by_item(MeanScore().aggregate(votes))
    median = by_item(MedianScore(min_votes=2).aggregate(votes))
    assert MeanScore().aggregate(votes).schema == CONSENSUS_SCHEMA
    assert mean["i1"]["score"] == 3.0 and median["i1"]["score"] == 2.0
    assert mean["i2"]["score"] == median["i2"]["score"] == 4.5
    assert mean["i1"]["label"] is None and mean["i1"]["labels"] == [] and mean["i1"]["num_votes"] == 3
    # |6 - 3| > scale: 2 of 3 scores within one pooled noise scale of the mean
    assert scale < 3 and mean["i1"]["confidence"] == pytest.approx(2 / 3)
    assert mean["i1"]["agreement"] == pytest.approx(2 / 6)   # only 1 and 2 are within `scale` of each other
    assert mean["i1"]["status"] == "ok"
    # A single rating is its own consensus: confidence 1, no agreement; min_votes flags it.
    assert mean["i4"]["confidence"] == 1.0 and mean["i4"]["agreement"] is None and mean["i4"]["status"] == "ok"
    assert median["i4"]["status"] == "needs_more_votes"
    # An item with no rating keeps a row.
    assert mean["i3"] == {"item_id": "i3", "label": None, "confidence": 0.0, "num_votes": 0, "agreement": None,
                          "status": "needs_more_votes", "labels": [], "score": None, "probabilities": None}


def test_rating_annotator_stats_share_within_and_no_bias_for_mean():
    result = MeanScore().consensus_of(ratings_table(("i1", "a1", 1.0), ("i1", "a2", 2.0), ("i1", "a3", 6.0),
                                                    ("i2", "a1", 4.0), ("i2", "a2", 5.0)))
    stats, classes = summarize_annotators([result.annotator_stats], lambda annotator: annotator)
    rows = {row["annotator"]: row for row in stats.to_pylist()}
    assert classes == ["score=outside", "score=within"]
    assert rows["a1"]["votes"] == 2 and rows["a1"]["agreement"] == 1.0
    assert rows["a3"]["agreement"] == 0.0 and rows["a3"]["accuracy"] == 0.0
    assert rows["a1"]["bias"] is None and rows["a1"]["noise_scale"] is None


def biased_panel(seed: int = 0):
    """40 items, 6 annotators with biases -2..+2 and noise 0.3, 3 random annotators per item."""
    rng = np.random.default_rng(seed)
    truth = rng.uniform(0, 10, 40)
    bias = np.array([-2.0, -1.0, 0.0, 0.0, 1.0, 2.0])
    triples = []
    for i, value in enumerate(truth):
        for a in rng.choice(6, 3, replace=False):
            triples.append((f"i{i:02d}", f"a{a}", float(value + bias[a] + rng.normal(0, 0.3))))
    return truth, bias, ratings_table(*triples)


def test_bias_corrected_recovers_biased_annotators_better_than_the_mean():
    truth, bias, votes = biased_panel()
    mean = np.array(MeanScore().aggregate(votes).column("score").to_pylist())
    result = BiasCorrected().consensus_of(votes)
    corrected = np.array(result.labels.column("score").to_pylist())

    def centred_rmse(estimate):   # the common level is not identifiable: compare after removing it
        error = estimate - truth
        return float(np.sqrt(np.mean((error - error.mean()) ** 2)))

    assert centred_rmse(corrected) < 0.5 * centred_rmse(mean)
    stats, _ = summarize_annotators([result.annotator_stats], lambda annotator: annotator)
    estimated = np.array(stats.column("bias").to_pylist())
    assert np.corrcoef(estimated, bias)[0, 1] > 0.95
    assert all(0 < scale < 1.0 for scale in stats.column("noise_scale").to_pylist())
    assert BiasCorrected().params()["huber_c"] == 1.345


def test_per_item_rating_methods_in_beam_use_the_global_scale():
    _, _, votes = biased_panel(seed=1)
    whole = MeanScore().aggregate(votes)
    halves = [votes.filter(pa.array([item < "i20" for item in votes.column("item_id").to_pylist()])),
              votes.filter(pa.array([item >= "i20" for item in votes.column("item_id").to_pylist()]))]
    expected = [(row["item_id"], row["score"], row["confidence"]) for row in whole.to_pylist()]
    with TestPipeline(runner="FnApiRunner") as pipeline:
        consensus = pipeline | beam.Create(halves) | ComputeConsensus(METHODS["mean"]())
        rows = consensus[LABELS] | beam.FlatMap(
            lambda table: [(r["item_id"], r["score"], r["confidence"]) for r in table.to_pylist()])
        assert_that(rows, equal_to(expected))
        votes_counted = consensus[ANNOTATOR_STATS] | beam.Map(lambda table: sum(table.column("consensus").to_pylist()))
        assert_that(votes_counted | beam.CombineGlobally(sum), equal_to([votes.num_rows]), label="AllVotes")


def test_rating_votes_skip_votes_without_a_finite_score():
    votes = pa.concat_tables([ratings_table(("i1", "a1", 2.0)),
                              event_table([event("x", item="i1", annotator="a2", label="cat")])])
    rated = rating_votes(votes)
    assert rated.annotator_ids.to_pylist() == ["a1"] and rated.ratings.score.tolist() == [2.0]
    assert rated.item_ids.to_pylist() == ["i1"]
