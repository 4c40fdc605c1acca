"""Multi-label consensus: one binary majority vote per (item, class). Pure numpy, no Beam.

A multi-label vote is a set of classes ("these apply"); an empty set means "none of them". For
every class in question on an item, each vote on the item is a binary decision: yes (the class is
in the vote's set) or no. Rules (documented contracts):
- Classes in question: with a given label set (`all_classes=True`), every class for every item that
  has a vote; otherwise the classes some vote of the item named. A class nobody named is then not
  in question (every vote said no to it, so it would be excluded with full certainty anyway).
- Per (item, class): share = yes votes / the item's votes. The class is included iff share > 0.5.
  A share of exactly 0.5 (compared in integers: 2 * yes == votes) excludes the class and flags the
  item as a tie.
- Per item: `confidence` = the least certain per-class decision, min over classes of
  max(share, 1 - share), in [0.5, 1]; `agreement` = mean over classes of the per-class Fleiss P_i,
  (yes (yes - 1) + no (no - 1)) / (n (n - 1)), NaN below two votes.
- An item whose votes are all "none of them" and with no class in question: confidence 1 (all votes
  agree on the empty set), agreement 1 with two or more votes. An item without votes: confidence 0,
  no classes, agreement NaN.
- A class repeated within one vote counts once.
- Determinism: pairs are ordered by (item, class) and every mean runs in that order.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np


class MultiLabelVotes(NamedTuple):
    """Sparse multi-label votes: vote v is on item vote_item[v]; answer a says vote answer_vote[a]
    includes class answer_class[a]. A vote without answers says "none of them"."""
    vote_item: np.ndarray
    answer_vote: np.ndarray
    answer_class: np.ndarray
    n_items: int
    n_classes: int


class MultiLabelConsensus(NamedTuple):
    pair_item: np.ndarray      # [n_pairs] (item, class) pairs in question, sorted by (item, class)
    pair_class: np.ndarray
    pair_yes: np.ndarray       # [n_pairs] votes of the item that include the class
    pair_share: np.ndarray     # [n_pairs] yes share
    pair_included: np.ndarray  # [n_pairs] share > 0.5
    num_votes: np.ndarray      # [n_items]
    confidence: np.ndarray     # [n_items]
    agreement: np.ndarray      # [n_items], NaN below two votes
    is_tie: np.ndarray         # [n_items] some class has share exactly 0.5


class Decisions(NamedTuple):
    """Every (vote, class in question on its item) as a binary decision, ordered by (pair, vote)."""
    vote: np.ndarray
    pair: np.ndarray
    said_yes: np.ndarray


def _unique_answers(votes: MultiLabelVotes) -> tuple[np.ndarray, np.ndarray]:
    key = np.unique(np.asarray(votes.answer_vote, dtype=np.int64) * max(votes.n_classes, 1)
                    + np.asarray(votes.answer_class, dtype=np.int64))
    return np.divmod(key, max(votes.n_classes, 1))


def multi_label_consensus(votes: MultiLabelVotes, all_classes: bool = False) -> MultiLabelConsensus:
    """Per-class majority of some items' multi-label votes; see the module docstring for the rules."""
    vote_item = np.asarray(votes.vote_item, dtype=np.int64)
    n_items, n_classes = votes.n_items, votes.n_classes
    answer_vote, answer_class = _unique_answers(votes)
    num_votes = np.bincount(vote_item, minlength=n_items).astype(np.int64)
    if all_classes:
        voted = np.flatnonzero(num_votes > 0)
        pair_item = np.repeat(voted, n_classes)
        pair_class = np.tile(np.arange(n_classes, dtype=np.int64), len(voted))
    else:
        keys = np.unique(vote_item[answer_vote] * max(n_classes, 1) + answer_class)
        pair_item, pair_class = np.divmod(keys, max(n_classes, 1))
    pair_key = pair_item * max(n_classes, 1) + pair_class          # sorted
    answer_pair = np.searchsorted(pair_key, vote_item[answer_vote] * max(n_classes, 1) + answer_class)
    yes = np.bincount(answer_pair, minlength=len(pair_key)).astype(np.int64)
    n = num_votes[pair_item]
    share = yes / n if len(n) else np.zeros(0)
    included = 2 * yes > n
    pair_tie = 2 * yes == n

    confidence = np.where(num_votes > 0, 1.0, 0.0)
    np.minimum.at(confidence, pair_item, np.maximum(share, 1.0 - share))
    pairs = np.bincount(pair_item, minlength=n_items)
    with np.errstate(invalid="ignore", divide="ignore"):
        p_i = (yes * (yes - 1) + (n - yes) * (n - yes - 1)) / (n * (n - 1.0))
        mean_p = np.bincount(pair_item, weights=p_i, minlength=n_items) / pairs
    agreement = np.where(num_votes < 2, np.nan, np.where(pairs > 0, mean_p, 1.0))
    is_tie = np.bincount(pair_item, weights=pair_tie, minlength=n_items) > 0
    return MultiLabelConsensus(pair_item, pair_class, yes, share, included, num_votes, confidence, agreement, is_tie)


def decisions(votes: MultiLabelVotes, consensus: MultiLabelConsensus) -> Decisions:
    """Every vote's yes/no on every class in question on its item."""
    vote_item = np.asarray(votes.vote_item, dtype=np.int64)
    votes_by_item = np.argsort(vote_item, kind="stable")
    vote_start = np.cumsum(consensus.num_votes) - consensus.num_votes
    per_pair = consensus.num_votes[consensus.pair_item]               # decisions of each pair
    pair = np.repeat(np.arange(len(per_pair)), per_pair)
    within = np.arange(len(pair)) - np.repeat(np.cumsum(per_pair) - per_pair, per_pair)
    vote = votes_by_item[vote_start[consensus.pair_item[pair]] + within] if len(pair) else np.zeros(0, np.int64)
    answer_vote, answer_class = _unique_answers(votes)
    width = max(votes.n_classes, 1)
    said_yes = np.isin(vote * width + consensus.pair_class[pair], answer_vote * width + answer_class)
    return Decisions(vote.astype(np.int64), pair.astype(np.int64), said_yes)
