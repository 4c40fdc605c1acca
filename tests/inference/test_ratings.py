"""Ratings cores: mean/median against a naive reference, bias correction recovers known biases,
shift and order invariance, degenerate cases."""
import math
import statistics

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from labelbeam.transforms.inference.ratings import (
    Ratings,
    bias_corrected_scores,
    canonical_ratings,
    mean_scores,
    median_scores,
    weighted_median,
    winsorised_variance_factor,
)


def synthetic(seed: int, n_items: int = 300, n_workers: int = 20, per_item: int = 10, wild: float = 0.0):
    """Answers truth + bias + noise from annotators with biases evenly spread over [-20, 20] (median 0)
    and noise scales in [2, 10]; every annotator answers equally often, so the answer-weighted median
    bias of the truth is 0 and the truths are identifiable as generated. A share `wild` of the answers
    is replaced by uniform junk on [-50, 150]. Returns (ratings, truth, bias, noise scale)."""
    rng = np.random.default_rng(seed)
    truth = rng.uniform(0, 100, n_items)
    bias = np.linspace(-20, 20, n_workers)
    scale = rng.uniform(2, 10, n_workers)
    # Pairs of items split a random permutation of the annotators: equal answer counts per annotator.
    worker = np.concatenate([rng.permutation(n_workers) for _ in range(n_items * per_item // n_workers)])
    item = np.repeat(np.arange(n_items), per_item)
    score = truth[item] + bias[worker] + scale[worker] * rng.standard_normal(len(item))
    junk = rng.random(len(item)) < wild
    score[junk] = rng.uniform(-50, 150, junk.sum())
    return Ratings(item, worker, score, n_items, n_workers), truth, bias, scale


def mae(estimate: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean(np.abs(estimate - truth)))


# --- bias correction on synthetic data ---------------------------------------------------------


def test_bias_correction_recovers_known_biases_and_truth():
    ratings, truth, bias, scale = synthetic(seed=0)
    result = bias_corrected_scores(ratings)
    assert result.converged
    assert np.abs(result.bias - bias).max() < 2.0
    corrected, plain = mae(result.scores, truth), mae(mean_scores(ratings), truth)
    assert corrected < 2.0
    assert corrected < 0.6 * plain
    assert corrected < 0.6 * mae(median_scores(ratings), truth)
    # Noise scales: the right size and order (rank correlation), not exact from 150 answers each.
    assert np.abs(np.log(result.noise_scale / scale)).max() < np.log(1.4)
    assert np.corrcoef(np.argsort(np.argsort(result.noise_scale)), np.argsort(np.argsort(scale)))[0, 1] > 0.8


def test_bias_correction_resists_wild_answers():
    ratings, truth, _, _ = synthetic(seed=1, wild=0.05)
    result = bias_corrected_scores(ratings)
    assert result.converged
    assert mae(result.scores, truth) < 0.5 * mae(mean_scores(ratings), truth)
    assert mae(result.scores, truth) < 3.0


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("wild", [0.0, 0.05])
def test_sweeps_settle_well_before_the_cap(seed, wild):
    ratings, _, _, _ = synthetic(seed=seed, wild=wild)
    result = bias_corrected_scores(ratings)
    assert result.converged and result.iterations < 100


def test_noise_weighting_helps_when_annotators_differ_in_care():
    ratings, truth, _, _ = synthetic(seed=2)
    weighted = bias_corrected_scores(ratings, weight_by_noise=True)
    unweighted = bias_corrected_scores(ratings, weight_by_noise=False)
    assert mae(weighted.scores, truth) < mae(unweighted.scores, truth)


def test_biases_are_centred_on_their_answer_weighted_median():
    ratings, _, _, _ = synthetic(seed=3, n_items=100)
    keep = ratings.worker != 0
    ratings = ratings._replace(item=ratings.item[keep], worker=ratings.worker[keep], score=ratings.score[keep] + 7.0)
    result = bias_corrected_scores(ratings)
    counts = np.bincount(ratings.worker, minlength=ratings.n_workers)
    answered = counts > 0
    assert weighted_median(result.bias[answered], counts[answered]) == pytest.approx(0.0, abs=1e-9)
    assert result.bias[0] == 0.0   # no answers: the prior's bias


def test_bias_prior_shrinks_a_rarely_seen_annotator_toward_zero():
    # Five annotators agree on item 0 (score 10); a sixth answers once, 30 points high.
    ratings = Ratings(np.zeros(6, dtype=int), np.arange(6), np.array([10.0] * 5 + [40.0]), n_items=1, n_workers=6)
    shrunk = bias_corrected_scores(ratings, bias_prior=2.0)
    free = bias_corrected_scores(ratings, bias_prior=0.0)
    assert 0 < shrunk.bias[5] < free.bias[5]
    assert free.bias[5] == pytest.approx(30.0, abs=1e-4)      # no prior: the lone answer is all bias
    assert shrunk.scores[0] == pytest.approx(10.0, abs=1.0)   # Huber keeps the outlier from dragging it


# --- mean and median --------------------------------------------------------------------------


answers_strategy = st.lists(
    st.tuples(st.integers(0, 4), st.integers(0, 2), st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)),
    max_size=40)


@settings(max_examples=200, deadline=None)
@given(answers_strategy)
def test_mean_and_median_match_a_naive_reference(answers):
    n_items, n_workers = 5, 3
    ratings = Ratings(np.array([a[0] for a in answers], dtype=int), np.array([a[1] for a in answers], dtype=int),
                      np.array([a[2] for a in answers], dtype=float), n_items, n_workers)
    means, medians = mean_scores(ratings), median_scores(ratings)
    for i in range(n_items):
        scores = [a[2] for a in answers if a[0] == i]
        if not scores:
            assert math.isnan(means[i]) and math.isnan(medians[i])
            continue
        assert means[i] == pytest.approx(math.fsum(scores) / len(scores), rel=1e-9, abs=1e-6)
        assert medians[i] == pytest.approx(statistics.median(scores), rel=1e-12, abs=1e-9)


def test_median_by_hand():
    ratings = Ratings(np.array([0, 0, 0, 0, 1, 1, 1]), np.zeros(7, dtype=int),
                      np.array([4.0, 1.0, 3.0, 100.0, 5.0, -1.0, 2.0]), n_items=2, n_workers=1)
    assert median_scores(ratings).tolist() == [3.5, 2.0]   # even count: mean of the middle two
    assert mean_scores(ratings).tolist() == [27.0, 2.0]


def test_items_without_answers_are_nan():
    ratings = Ratings(np.array([0, 0, 2]), np.array([0, 1, 1]), np.array([1.0, 3.0, 5.0]), n_items=4, n_workers=2)
    for estimate in (mean_scores(ratings), median_scores(ratings), bias_corrected_scores(ratings).scores):
        assert np.isnan(estimate[[1, 3]]).all()
        assert np.isfinite(estimate[[0, 2]]).all()


# --- invariances ------------------------------------------------------------------------------


def test_shifting_every_score_shifts_every_estimate():
    ratings, _, _, _ = synthetic(seed=4, n_items=100)
    shift = 1234.5
    moved = ratings._replace(score=ratings.score + shift)
    assert np.allclose(mean_scores(moved), mean_scores(ratings) + shift, rtol=0, atol=1e-9)
    assert np.allclose(median_scores(moved), median_scores(ratings) + shift, rtol=0, atol=1e-9)
    before, after = bias_corrected_scores(ratings, tol=1e-9), bias_corrected_scores(moved, tol=1e-9)
    assert np.allclose(after.scores, before.scores + shift, rtol=0, atol=1e-6)
    assert np.allclose(after.bias, before.bias, rtol=0, atol=1e-6)
    assert np.allclose(after.noise_scale, before.noise_scale, rtol=0, atol=1e-6)


def test_answer_order_does_not_change_any_output():
    ratings, _, _, _ = synthetic(seed=5, n_items=100, wild=0.05)
    ratings = ratings._replace(n_items=ratings.n_items + 1)   # one item without answers: NaN both times
    order = np.random.default_rng(0).permutation(len(ratings.item))
    shuffled = ratings._replace(item=ratings.item[order], worker=ratings.worker[order], score=ratings.score[order])
    assert np.array_equal(mean_scores(ratings), mean_scores(shuffled), equal_nan=True)
    assert np.array_equal(median_scores(ratings), median_scores(shuffled), equal_nan=True)
    first, again = bias_corrected_scores(ratings), bias_corrected_scores(shuffled)
    for a, b in zip(first, again):
        assert np.array_equal(a, b, equal_nan=True)


def test_fit_is_deterministic():
    ratings, _, _, _ = synthetic(seed=6, n_items=100)
    first, again = bias_corrected_scores(ratings), bias_corrected_scores(ratings)
    for a, b in zip(first, again):
        assert np.array_equal(a, b, equal_nan=True)


# --- degenerate cases -------------------------------------------------------------------------


def test_no_answers():
    empty = Ratings(np.zeros(0, dtype=int), np.zeros(0, dtype=int), np.zeros(0), n_items=3, n_workers=2)
    result = bias_corrected_scores(empty)
    assert np.isnan(result.scores).all() and np.isnan(result.noise_scale).all()
    assert result.bias.tolist() == [0.0, 0.0]
    assert (result.iterations, result.converged) == (0, True)
    assert np.isnan(mean_scores(empty)).all() and np.isnan(median_scores(empty)).all()


def test_one_answer_is_its_own_score_with_zero_bias():
    one = Ratings(np.array([0]), np.array([1]), np.array([3.5]), n_items=2, n_workers=2)
    result = bias_corrected_scores(one)
    assert result.scores[0] == 3.5 and np.isnan(result.scores[1])
    assert result.bias.tolist() == [0.0, 0.0]
    assert np.isnan(result.noise_scale).all()   # no item has two answers: noise not identifiable
    assert result.converged


def test_one_annotator_has_zero_bias_and_huber_means():
    # Repeated answers of the only annotator; item 1 has one wild answer among five.
    item = np.array([0, 0, 0, 1, 1, 1, 1, 1])
    score = np.array([1.0, 2.0, 3.0, 10.0, 11.0, 9.0, 10.0, 90.0])
    result = bias_corrected_scores(Ratings(item, np.zeros(8, dtype=int), score, n_items=2, n_workers=1))
    assert result.converged
    assert result.bias.tolist() == [0.0]
    assert result.scores[0] == pytest.approx(2.0)
    assert 10.0 < result.scores[1] < 12.0    # the mean would be 26
    assert result.noise_scale[0] > 0


def test_annotators_sharing_one_bias_get_zero_bias():
    ratings, truth, _, _ = synthetic(seed=7, n_items=60)
    shared = ratings._replace(score=truth[ratings.item] + 5.0)   # every annotator 5 high, no noise
    result = bias_corrected_scores(shared)
    assert result.converged
    assert np.allclose(result.bias, 0.0, atol=1e-9)
    assert np.allclose(result.scores, truth + 5.0, atol=1e-9)   # a shared bias is not identifiable
    assert np.allclose(result.noise_scale, 0.0, atol=1e-9)


def test_identical_annotators_agree_with_the_mean():
    ratings, _, _, _ = synthetic(seed=8, n_items=50)
    same = ratings._replace(score=(ratings.item * 7 % 13).astype(float))   # everyone gives item i one score
    result = bias_corrected_scores(same)
    assert np.allclose(result.bias, 0.0, atol=1e-9)
    assert np.allclose(result.scores, mean_scores(same), atol=1e-9)


def test_all_scores_equal():
    ratings, _, _, _ = synthetic(seed=9, n_items=40)
    flat = ratings._replace(score=np.full(len(ratings.score), 42.0), n_items=41)
    result = bias_corrected_scores(flat)
    assert result.converged
    assert np.array_equal(result.scores[:40], np.full(40, 42.0)) and np.isnan(result.scores[40])
    assert np.array_equal(result.bias, np.zeros(flat.n_workers))
    assert np.array_equal(result.noise_scale, np.zeros(flat.n_workers))


# --- helpers and validation -------------------------------------------------------------------


def test_weighted_median_by_hand():
    assert weighted_median(np.array([3.0, 1.0, 2.0]), np.array([1, 1, 1])) == 2.0
    assert weighted_median(np.array([1.0, 2.0]), np.array([1, 1])) == 1.5     # exactly half: average
    assert weighted_median(np.array([1.0, 2.0, 10.0]), np.array([1, 5, 1])) == 2.0
    assert weighted_median(np.array([]), np.array([])) == 0.0


def test_winsorised_variance_factor_matches_numeric_integration():
    z = np.linspace(-12, 12, 400_001)
    density = np.exp(-z ** 2 / 2) / np.sqrt(2 * np.pi)
    for c in (0.5, 1.345, 3.0):
        expected = np.sum(np.minimum(z ** 2, c ** 2) * density) * (z[1] - z[0])
        assert winsorised_variance_factor(c) == pytest.approx(expected, rel=1e-6)
    assert winsorised_variance_factor(50.0) == pytest.approx(1.0)


@pytest.mark.parametrize("item, worker, score, message", [
    ([0, 3], [0, 0], [1.0, 2.0], "item"),
    ([0, 1], [0, -1], [1.0, 2.0], "worker"),
    ([0, 1], [0, 0], [1.0, np.nan], "finite"),
    ([0, 1], [0], [1.0, 2.0], "equal length"),
])
def test_malformed_ratings_are_rejected(item, worker, score, message):
    with pytest.raises(ValueError, match=message):
        canonical_ratings(Ratings(np.array(item), np.array(worker), np.array(score), n_items=2, n_workers=1))


def test_bad_options_are_rejected():
    ratings = Ratings(np.array([0]), np.array([0]), np.array([1.0]), 1, 1)
    for options in ({"bias_prior": -1.0}, {"scale_prior": -1.0}, {"huber_c": 0.0}, {"max_iter": 0}, {"tol": 0.0}):
        with pytest.raises(ValueError):
            bias_corrected_scores(ratings, **options)
