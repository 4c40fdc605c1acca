"""Numeric ratings aggregation: per-item mean, median and an annotator-bias-corrected robust mean.

Pure numpy over sparse answers. No Beam here.

Model of `bias_corrected_scores`: answer j = truth[item_j] + bias[worker_j] + noise_j, where the
noise of annotator w has scale noise_scale[w] and heavier tails than a Gaussian (a few wild answers).
The fit alternates, one sweep at a time: robust weights from the current residuals, then every
annotator's bias from its answers minus the current truths, then every item's truth from its answers
minus the biases, then the noise scales from the new residuals.

Choices (documented contracts, not tuned to any dataset):
- Items without answers get NaN from every estimator here.
- Median of an even number of answers: the average of the two middle ones.
- Robust means are Huber M-estimates with c = `huber_c` noise scales (default 1.345: 95% as
  efficient as the mean under Gaussian noise), fitted by iteratively reweighted least squares. An
  answer within c scales of its fitted value has Huber weight 1, one further out has c * scale / |residual|.
- Identifiability: adding a constant to every truth and subtracting it from every bias changes nothing,
  so after each bias update the biases are centred: the answer-weighted median bias is 0 ("the annotator
  behind the typical answer is unbiased"; a few extreme annotators cannot move the centre). Centring sets
  the level of all scores together, never their order or spacing.
- Shrinkage: an annotator's bias is the Huber-weighted mean of its residuals plus `bias_prior`
  pseudo-answers of residual 0 at full weight (default 2), so an annotator seen once or twice gets a bias
  near 0 instead of absorbing its own noise. Annotators without answers have bias 0.
- Noise scales: Huber's "proposal 2", the classical companion of the Huber mean: an annotator's
  residuals are winsorised at huber_c times its current scale and their mean square divided by
  E[min(Z^2, huber_c^2)] (unbiased under Gaussian noise). It is a smooth function of the residuals; a
  median-based scale re-estimated every sweep makes the fit cycle instead of settling, so the MAD
  (1.4826 * median |residual|) is used only for the starting scales. A residual on an item with n answers
  is inflated by sqrt(n / (n - 1)), as the item's own fit absorbed part of it; answers on single-answer
  items (residual 0 by construction) are skipped. Variances shrink to the pooled one (the same over all
  answers) with `scale_prior` pseudo-answers (default 5: a spread needs more answers than a location).
  Annotators without usable answers get the pooled scale; if no item has two answers, noise is not
  identifiable and every noise scale is NaN.
- Weighting: with `weight_by_noise` (default) an answer counts in its item's mean with weight
  huber_weight / noise_scale**2 (the Gaussian maximum-likelihood weighting: careful annotators count
  more); without it, with its Huber weight alone. Scales are floored at 1e-6 * (max - min score) so a
  zero spread never gives an infinite weight.
- Initialisation: truth = per-item median, bias = 0, noise scales from the MAD of those residuals.
- Convergence on parameters: stop when the largest change of any truth, bias or (floored) noise scale is
  below `tol` (in score units), or after `max_iter` sweeps (generous: IRLS sweeps converge linearly).
- Order independence: answers are sorted by (item, worker, score) first, so every float sum runs in the
  same order and the output is byte-identical whatever order the answers came in. Repeated answers of one
  annotator on one item count as separate answers.
- Degenerate cases: no answers -> all scores NaN, biases 0, scales NaN, 0 iterations, converged. One
  answer -> its score, bias 0. One annotator -> its bias is 0 by the centring, so the scores are Huber
  means of its answers. Annotators who all share one bias (or give identical answers) -> biases 0 and
  scores on their common level. All scores equal -> that score, biases 0, noise scales 0.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from labelbeam.transforms.inference.em import largest_change, run_em

MAD_TO_SIGMA = 1.4826   # median |x| of a standard Gaussian is 1 / 1.4826
SCALE_FLOOR = 1e-6      # relative to the score range


class Ratings(NamedTuple):
    """Sparse numeric answers: answer j says annotator worker[j] gave item[j] the score score[j]."""
    item: np.ndarray
    worker: np.ndarray
    score: np.ndarray
    n_items: int
    n_workers: int


class BiasCorrectedResult(NamedTuple):
    scores: np.ndarray        # [n_items] estimated truths, NaN for items without answers
    bias: np.ndarray          # [n_workers] additive bias, answer-weighted median 0
    noise_scale: np.ndarray   # [n_workers] robust noise standard deviation, NaN if not identifiable
    iterations: int
    converged: bool


def canonical_ratings(ratings: Ratings) -> Ratings:
    """The same answers as int64/float64 arrays sorted by (item, worker, score); ValueError if malformed."""
    item, worker = (np.asarray(a, dtype=np.int64) for a in (ratings.item, ratings.worker))
    score = np.asarray(ratings.score, dtype=np.float64)
    if not item.shape == worker.shape == score.shape or item.ndim != 1:
        raise ValueError("ratings.item, ratings.worker and ratings.score must be 1-d arrays of equal length")
    for name, codes, bound in (("item", item, ratings.n_items), ("worker", worker, ratings.n_workers)):
        if len(codes) and (codes.min() < 0 or codes.max() >= bound):
            raise ValueError(f"ratings.{name} must lie in [0, {bound}); index the {name}s before fitting")
    if not np.isfinite(score).all():
        raise ValueError("ratings.score must be finite; drop missing answers before fitting")
    order = np.lexsort((score, worker, item))
    return Ratings(item[order], worker[order], score[order], int(ratings.n_items), int(ratings.n_workers))


def group_means(group: np.ndarray, values: np.ndarray, n_groups: int) -> np.ndarray:
    """[n_groups] mean of `values` per group; NaN for empty groups."""
    counts = np.bincount(group, minlength=n_groups)
    sums = np.bincount(group, weights=values, minlength=n_groups)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / counts, np.nan)


def group_medians(group: np.ndarray, values: np.ndarray, n_groups: int) -> np.ndarray:
    """[n_groups] median of `values` per group (even count: mean of the two middle ones); NaN if empty."""
    order = np.lexsort((values, group))
    ordered = values[order]
    counts = np.bincount(group, minlength=n_groups)
    starts = np.cumsum(counts) - counts
    medians = np.full(n_groups, np.nan)
    has = counts > 0
    low = starts[has] + (counts[has] - 1) // 2
    high = starts[has] + counts[has] // 2
    medians[has] = (ordered[low] + ordered[high]) / 2
    return medians


def weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    """Smallest value whose cumulative weight reaches half the total; if it reaches exactly half, the
    average with the next value (so equal weights give the ordinary median). 0.0 for no values."""
    if len(values) == 0:
        return 0.0
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    cumulative = np.cumsum(weights[order])
    half = cumulative[-1] / 2
    k = int(np.searchsorted(cumulative, half))
    if cumulative[k] == half and k + 1 < len(ordered):   # exact with integer weights, as used here
        return float((ordered[k] + ordered[k + 1]) / 2)
    return float(ordered[k])


def mean_scores(ratings: Ratings) -> np.ndarray:
    """[n_items] mean score per item; NaN for items without answers."""
    ratings = canonical_ratings(ratings)
    return group_means(ratings.item, ratings.score, ratings.n_items)


def median_scores(ratings: Ratings) -> np.ndarray:
    """[n_items] median score per item (even count: mean of the two middle scores); NaN without answers."""
    ratings = canonical_ratings(ratings)
    return group_medians(ratings.item, ratings.score, ratings.n_items)


def huber_weights(residual: np.ndarray, scale: np.ndarray, huber_c: float) -> np.ndarray:
    """1 within huber_c * scale of 0, else huber_c * scale / |residual| (the IRLS weights of Huber's loss)."""
    limit = huber_c * scale
    magnitude = np.abs(residual)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(magnitude <= limit, 1.0, limit / magnitude)


def winsorised_variance_factor(huber_c: float) -> float:
    """E[min(Z^2, c^2)] for a standard Gaussian Z: makes a winsorised mean square estimate sigma^2."""
    tail = 0.5 * math.erfc(huber_c / math.sqrt(2))              # P(Z > c)
    density = math.exp(-huber_c ** 2 / 2) / math.sqrt(2 * math.pi)
    return (1 - 2 * tail) - 2 * huber_c * density + 2 * huber_c ** 2 * tail


def _usable_residuals(ratings: Ratings, residual: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mask of answers on items with >= 2 answers, their |residuals| inflated by sqrt(n / (n - 1)))."""
    per_item = np.bincount(ratings.item, minlength=ratings.n_items)[ratings.item]
    usable = per_item >= 2
    # The item's own fit absorbed about 1/n of each residual's variance: undo that.
    return usable, np.abs(residual[usable]) * np.sqrt(per_item[usable] / (per_item[usable] - 1))


def _shrunk_scales(worker: np.ndarray, own_variance: np.ndarray, pooled_variance: float, n_workers: int,
                   scale_prior: float) -> np.ndarray:
    """Per-annotator scales: variances shrunk to the pooled one with scale_prior pseudo-answers."""
    count = np.bincount(worker, minlength=n_workers)
    with np.errstate(invalid="ignore", divide="ignore"):
        variance = (count * np.nan_to_num(own_variance) + scale_prior * pooled_variance) / (count + scale_prior)
    return np.sqrt(np.where(count > 0, variance, pooled_variance))


def initial_noise_scales(ratings: Ratings, residual: np.ndarray, scale_prior: float) -> np.ndarray:
    """[n_workers] starting scales: 1.4826 * median |residual| (MAD around 0), shrunk; NaN if no item
    has two answers. Robust without a scale to start from, but too jumpy to re-estimate every sweep."""
    usable, spread = _usable_residuals(ratings, residual)
    if not usable.any():
        return np.full(ratings.n_workers, np.nan)
    own = MAD_TO_SIGMA * group_medians(ratings.worker[usable], spread, ratings.n_workers)
    pooled = MAD_TO_SIGMA * float(np.median(spread))
    return _shrunk_scales(ratings.worker[usable], own ** 2, pooled ** 2, ratings.n_workers, scale_prior)


def noise_scales(ratings: Ratings, residual: np.ndarray, scale: np.ndarray, huber_c: float,
                 scale_prior: float) -> np.ndarray:
    """[n_workers] Huber's "proposal 2" scales: each residual winsorised at huber_c times its annotator's
    current scale, mean square / E[min(Z^2, c^2)] (unbiased under Gaussian noise), shrunk to the pooled
    value over all answers. A smooth function of the residuals, so the sweeps settle. NaN if no item has
    two answers."""
    usable, spread = _usable_residuals(ratings, residual)
    if not usable.any():
        return np.full(ratings.n_workers, np.nan)
    worker = ratings.worker[usable]
    squares = np.minimum(spread, huber_c * scale[worker]) ** 2 / winsorised_variance_factor(huber_c)
    own = group_means(worker, squares, ratings.n_workers)
    return _shrunk_scales(worker, own, float(squares.mean()), ratings.n_workers, scale_prior)


def _check_options(bias_prior: float, scale_prior: float, huber_c: float, max_iter: int, tol: float) -> None:
    if bias_prior < 0 or scale_prior < 0:
        raise ValueError(f"bias_prior and scale_prior must be >= 0, got {bias_prior}, {scale_prior}")
    if not huber_c > 0:
        raise ValueError(f"huber_c must be > 0, got {huber_c}")
    if max_iter < 1 or not tol > 0:
        raise ValueError(f"max_iter must be >= 1 and tol > 0, got {max_iter}, {tol}")


def bias_corrected_scores(ratings: Ratings, bias_prior: float = 2.0, scale_prior: float = 5.0,
                          huber_c: float = 1.345, weight_by_noise: bool = True, max_iter: int = 1000,
                          tol: float = 1e-6) -> BiasCorrectedResult:
    """Fit truth[item] + bias[worker] + noise by robust alternating updates; see the module docstring."""
    _check_options(bias_prior, scale_prior, huber_c, max_iter, tol)
    ratings = canonical_ratings(ratings)
    item, worker, score = ratings.item, ratings.worker, ratings.score
    n_items, n_workers = ratings.n_items, ratings.n_workers
    if len(score) == 0:
        return BiasCorrectedResult(np.full(n_items, np.nan), np.zeros(n_workers), np.full(n_workers, np.nan), 0, True)

    answered = np.bincount(item, minlength=n_items) > 0
    answers_per_worker = np.bincount(worker, minlength=n_workers)
    has_answers = answers_per_worker > 0
    score_range = float(score.max() - score.min())
    floor = SCALE_FLOOR * score_range if score_range > 0 else 1.0

    def residuals(truth: np.ndarray, bias: np.ndarray) -> np.ndarray:
        return score - truth[item] - bias[worker]

    def working(scale: np.ndarray) -> np.ndarray:
        return np.where(np.isfinite(scale), np.maximum(scale, floor), floor)   # NaN: noise unidentifiable

    def weights(parameters: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
        truth, bias, scale = parameters
        return huber_weights(residuals(truth, bias), scale[worker], huber_c)

    def update(huber: np.ndarray, parameters: tuple[np.ndarray, np.ndarray, np.ndarray]):
        truth, _, scale = parameters
        # Biases: shrunk Huber means of (score - truth), then centred on the answer-weighted median.
        offset = score - truth[item]
        total = np.bincount(worker, weights=huber * offset, minlength=n_workers)
        mass = np.bincount(worker, weights=huber, minlength=n_workers) + bias_prior
        raw = np.divide(total, mass, out=np.zeros(n_workers), where=mass > 0)
        centre = weighted_median(raw[has_answers], answers_per_worker[has_answers])
        bias = np.where(has_answers, raw - centre, 0.0)
        # Truths: weighted means of (score - bias); 0 internally for items without answers.
        weight = huber / scale[worker] ** 2 if weight_by_noise else huber
        total = np.bincount(item, weights=weight * (score - bias[worker]), minlength=n_items)
        mass = np.bincount(item, weights=weight, minlength=n_items)
        truth = np.divide(total, mass, out=np.zeros(n_items), where=mass > 0)
        return truth, bias, working(noise_scales(ratings, residuals(truth, bias), scale, huber_c, scale_prior))

    truth = np.nan_to_num(group_medians(item, score, n_items))
    bias = np.zeros(n_workers)
    start = (truth, bias, working(initial_noise_scales(ratings, residuals(truth, bias), scale_prior)))
    (truth, bias, scale), iterations, converged = run_em(start, weights, update, largest_change, max_iter, tol)
    noise = noise_scales(ratings, residuals(truth, bias), scale, huber_c, scale_prior)
    return BiasCorrectedResult(np.where(answered, truth, np.nan), bias, noise, iterations, converged)


# Confidence and agreement of rating consensus ----------------------------------------------------

RATING_TOLERANCE = 1e-9   # relative: scores this close count as equal whatever the noise scale


def rating_spread(ratings: Ratings) -> tuple[np.ndarray, int]:
    """(per item with >= 2 ratings: sum of squared deviations from its mean, degrees of freedom)."""
    ratings = canonical_ratings(ratings)
    counts = np.bincount(ratings.item, minlength=ratings.n_items)
    means = group_means(ratings.item, ratings.score, ratings.n_items)
    squares = np.bincount(ratings.item, weights=(ratings.score - means[ratings.item]) ** 2, minlength=ratings.n_items)
    several = counts >= 2
    return squares[several], int((counts[several] - 1).sum())


def pooled_noise_scale(spreads: list[tuple[np.ndarray, int]]) -> float:
    """sqrt(sum of squared deviations / degrees of freedom) over every item: the pooled within-item
    standard deviation. math.fsum over per-item terms is exact, so buckets in any grouping and order give
    the same bits. NaN when no item has two ratings."""
    dof = sum(part[1] for part in spreads)
    if dof == 0:
        return float("nan")
    return math.sqrt(math.fsum(value for part in spreads for value in np.asarray(part[0]).tolist()) / dof)


def within_scale(difference: np.ndarray, scale: float, magnitude: np.ndarray) -> np.ndarray:
    """|difference| <= one noise scale (0 if unknown), plus RATING_TOLERANCE * max(1, magnitude) so
    rounding never separates equal scores."""
    allowed = (scale if math.isfinite(scale) else 0.0) + RATING_TOLERANCE * np.maximum(1.0, magnitude)
    return np.abs(difference) <= allowed


class RatingFields(NamedTuple):
    within: np.ndarray       # [n_answers] the answer lies within one scale of its item's consensus
    confidence: np.ndarray   # [n_items] share of the item's answers within; 0 without answers
    agreement: np.ndarray    # [n_items] share of ordered pairs of answers within one scale of each other


def rating_fields(item: np.ndarray, corrected: np.ndarray, consensus: np.ndarray, n_items: int,
                  scale: float) -> RatingFields:
    """Confidence and agreement of rating consensus. corrected[j]: answer j minus its annotator's bias
    (the raw score for mean / median); consensus[i]: item i's score."""
    item = np.asarray(item, dtype=np.int64)
    counts = np.bincount(item, minlength=n_items)
    target = consensus[item]
    within = within_scale(corrected - target, scale, np.maximum(np.abs(corrected), np.abs(target)))
    with np.errstate(invalid="ignore", divide="ignore"):
        confidence = np.where(counts > 0, np.bincount(item, weights=within, minlength=n_items) / counts, 0.0)
    # Every ordered pair (a, b), a != b, of answers of one item.
    order = np.argsort(item, kind="stable")
    starts = np.cumsum(counts) - counts
    per_answer = counts[item[order]]
    a = np.repeat(order, per_answer)
    b_within = np.arange(len(a)) - np.repeat(np.cumsum(per_answer) - per_answer, per_answer)
    b = order[starts[item[a]] + b_within] if len(a) else np.zeros(0, dtype=np.int64)
    distinct = a != b
    a, b = a[distinct], b[distinct]
    close = within_scale(corrected[a] - corrected[b], scale, np.maximum(np.abs(corrected[a]), np.abs(corrected[b])))
    with np.errstate(invalid="ignore", divide="ignore"):
        agreement = np.where(counts >= 2, np.bincount(item[a], weights=close, minlength=n_items)
                             / (counts * (counts - 1.0)), np.nan)
    return RatingFields(within, confidence, agreement)
