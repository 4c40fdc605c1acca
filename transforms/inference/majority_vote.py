"""Pure numpy cores of (weighted) majority vote. No Beam here.

Tie rule: when several labels share the top (weighted) count, the item's status is "tie" and its
label is the smallest of them in label order (labels are indexed in sorted string order), so the
result never depends on input order.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np


class VoteTally(NamedTuple):
    """Per item (index 0..n_items-1): winning label index, its share, votes, agreement, tie flag."""
    label_idx: np.ndarray     # int64, -1 for items without votes
    confidence: np.ndarray    # float64, winning (weighted) share of the item's votes
    num_votes: np.ndarray     # int64
    agreement: np.ndarray     # float64, NaN below two votes
    is_tie: np.ndarray        # bool


def majority_vote(item_idx: np.ndarray, label_idx: np.ndarray, n_items: int, n_labels: int,
                  weights: np.ndarray | None = None) -> VoteTally:
    """Majority vote per item; with `weights`, each vote counts its annotator's weight.

    Sparse in (item, label) pairs, so memory grows with the votes, not with n_items * n_labels.
    Agreement is the share of agreeing ordered vote pairs (Fleiss' P_i), from unweighted counts.
    """
    item_idx = np.asarray(item_idx, dtype=np.int64)
    label_idx = np.asarray(label_idx, dtype=np.int64)
    pair_code, pair_of_vote = np.unique(item_idx * n_labels + label_idx, return_inverse=True)
    pair_item, pair_label = pair_code // n_labels, pair_code % n_labels
    pair_count = np.bincount(pair_of_vote, minlength=len(pair_code)).astype(np.float64)
    pair_score = pair_count if weights is None else np.bincount(
        pair_of_vote, weights=np.asarray(weights, dtype=np.float64), minlength=len(pair_code))

    num_votes = np.bincount(item_idx, minlength=n_items).astype(np.int64)
    total_score = np.bincount(pair_item, weights=pair_score, minlength=n_items)
    top_score = np.full(n_items, -np.inf)
    np.maximum.at(top_score, pair_item, pair_score)
    is_top = pair_score == top_score[pair_item]
    tops_per_item = np.bincount(pair_item, weights=is_top, minlength=n_items)

    label = np.full(n_items, -1, dtype=np.int64)
    # Pairs are sorted by (item, label): the first top pair of an item has its smallest top label.
    top_pairs = np.flatnonzero(is_top)
    first_items, first_at = np.unique(pair_item[top_pairs], return_index=True)
    label[first_items] = pair_label[top_pairs[first_at]]

    with np.errstate(invalid="ignore", divide="ignore"):
        confidence = np.where(total_score > 0, top_score / total_score, 0.0)
        agreeing_pairs = np.bincount(pair_item, weights=pair_count * (pair_count - 1), minlength=n_items)
        agreement = np.where(num_votes >= 2, agreeing_pairs / (num_votes * (num_votes - 1.0)), np.nan)
    return VoteTally(label, confidence, num_votes, agreement, tops_per_item > 1)
