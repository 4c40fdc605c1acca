"""`--method mean|median|bias_corrected`: consensus scores of numeric ratings (pure cores: ratings.py)."""
from __future__ import annotations

import math
from typing import Any, ClassVar, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from labelbeam.transforms.arrays.factorize import factorize_sorted
from labelbeam.transforms.inference.annotator_stats import PARTIAL_SCHEMA, decision_cells
from labelbeam.transforms.inference.ratings import (
    Ratings,
    bias_corrected_scores,
    canonical_ratings,
    mean_scores,
    median_scores,
    pooled_noise_scale,
    rating_fields,
    rating_spread,
)
from labelbeam.transforms.methods.base import (
    CONSENSUS_SCHEMA,
    BucketConsensus,
    ConsensusMethod,
    PerItemMethod,
    consensus_table,
    vote_status,
)

RATING_WITHIN, RATING_OUTSIDE = "score=within", "score=outside"


class RatingVotes(NamedTuple):
    item_ids: pa.Array        # sorted; every item of the votes, with or without a rating
    annotator_ids: pa.Array   # sorted; annotators with a rating vote
    ratings: Ratings          # canonical (sorted by item, worker, score)


def rating_votes(votes: pa.Table) -> RatingVotes:
    """The votes with a finite score as sparse ratings."""
    item_idx, item_ids = factorize_sorted(votes.column("item_id"))
    score = pc.fill_null(votes.column("score"), np.nan).to_numpy(zero_copy_only=False).astype(np.float64)
    rated = np.isfinite(score)
    worker_idx, annotator_ids = factorize_sorted(votes.filter(pa.array(rated)).column("annotator_id"))
    ratings = canonical_ratings(Ratings(item_idx[rated], worker_idx, score[rated], len(item_ids), len(annotator_ids)))
    return RatingVotes(item_ids, annotator_ids, ratings)


class RatingFit(NamedTuple):
    scores: np.ndarray               # [n_items] NaN without ratings
    bias: np.ndarray | None          # [n_workers] (bias_corrected) or None
    noise_scale: np.ndarray | None   # [n_workers] (bias_corrected) or None
    scale: float                     # the pooled noise scale of confidence and agreement


class RatingMethod(ConsensusMethod):
    """A consensus score per item from numeric ratings (votes with a finite `score`).

    Row: `score` = the consensus score (null without ratings); `label` null; `num_votes` = rating
    votes; `confidence` = share of the item's scores - each minus its annotator's estimated bias for
    bias_corrected - within one pooled noise scale of the consensus score; `agreement` = share of
    ordered pairs of those scores within one pooled noise scale of each other (null below two);
    status needs_more_votes (fewer than min_votes ratings, or none) or ok; ratings never tie.
    The pooled noise scale: for mean and median, the pooled within-item standard deviation of all
    items with two or more ratings, sqrt(sum (s - item mean)^2 / sum (n_i - 1)); for bias_corrected,
    the root mean square of the fitted noise scales over the answers. Unknown (no item has two
    ratings) counts as 0. "Within" allows 1e-9 * max(1, |value|) more, so equal scores are always
    within. A single rating is its own consensus: confidence 1, agreement null (use --min-votes 2 to
    flag such items). Annotator statistics: each rating is a decision "score=within"/"score=outside".
    """
    supports_gold = False
    votes_taking_part = "votes with a finite score"
    row_schema_file = "consensus_row.v2.avsc"

    def fit_ratings(self, ratings: Ratings, scale: float | None) -> RatingFit:
        raise NotImplementedError

    def consensus_of(self, votes: pa.Table, scale: float | None = None) -> BucketConsensus:
        if votes.num_rows == 0:
            return BucketConsensus(CONSENSUS_SCHEMA.empty_table(), PARTIAL_SCHEMA.empty_table())
        rated = rating_votes(votes)
        ratings = rated.ratings
        fit = self.fit_ratings(ratings, scale)
        bias = fit.bias[ratings.worker] if fit.bias is not None else np.zeros(len(ratings.score))
        fields = rating_fields(ratings.item, ratings.score - bias, fit.scores, ratings.n_items, fit.scale)
        num_votes = np.bincount(ratings.item, minlength=ratings.n_items)
        rows = consensus_table(rated.item_ids, None, fields.confidence, num_votes, fields.agreement,
                               vote_status(num_votes, self.min_votes), score=fit.scores)
        n = len(ratings.score)
        stats = decision_cells(rated.annotator_ids.take(pa.array(ratings.worker)), pa.array([RATING_WITHIN] * n),
                               pa.array(np.where(fields.within, RATING_WITHIN, RATING_OUTSIDE).tolist(), pa.string()),
                               np.ones(n), np.ones(n, dtype=np.int64),
                               None if fit.bias is None else fit.bias[ratings.worker],
                               None if fit.noise_scale is None else fit.noise_scale[ratings.worker])
        return BucketConsensus(rows, stats)


class PerItemRatingMethod(RatingMethod, PerItemMethod):
    """A per-item estimator; the pooled noise scale of confidence comes from all items (side input)."""
    needs_corpus_statistic = True

    @staticmethod
    def estimate(ratings: Ratings) -> np.ndarray:
        raise NotImplementedError

    def fit_ratings(self, ratings, scale):
        if scale is None:
            scale = pooled_noise_scale([rating_spread(ratings)])
        return RatingFit(self.estimate(ratings), None, None, scale)

    def bucket_statistic(self, votes: pa.Table) -> tuple[np.ndarray, int]:
        return rating_spread(rating_votes(votes).ratings) if votes.num_rows else (np.zeros(0), 0)

    def corpus_statistic(self, partials: list) -> float:
        return pooled_noise_scale(partials)


class MeanScore(PerItemRatingMethod):
    """The mean of the item's ratings."""
    name = "mean"

    @staticmethod
    def estimate(ratings):
        return mean_scores(ratings)


class MedianScore(PerItemRatingMethod):
    """The median of the item's ratings (even count: mean of the two middle ones)."""
    name = "median"

    @staticmethod
    def estimate(ratings):
        return median_scores(ratings)


class BiasCorrected(RatingMethod):
    """Robust truth + annotator bias + annotator noise, fitted over all ratings at once
    (ratings.bias_corrected_scores); annotators' estimated bias and noise scale are published."""
    name = "bias_corrected"
    options: ClassVar[dict[str, Any]] = {"bias_prior": 2.0, "scale_prior": 5.0, "huber_c": 1.345,
                                         "weight_by_noise": True, "max_iter": 1000, "tol": 1e-6}

    def params(self) -> dict:
        return {**super().params(), **self.options}

    def fit_ratings(self, ratings, scale):
        result = bias_corrected_scores(ratings, **self.options)
        noise = result.noise_scale[ratings.worker]
        noise = noise[np.isfinite(noise)]
        pooled = math.sqrt(math.fsum((noise ** 2).tolist()) / len(noise)) if len(noise) else float("nan")
        return RatingFit(result.scores, result.bias, result.noise_scale, pooled)
