"""Is an annotator model's fit degenerate? Pure numpy, no Beam.

An EM fit can end in a label-switched optimum (the model's class k is what annotators call another
class: the likelihood is the same under a permutation of the classes) or collapse onto one class.
Votes alone cannot tell which labelling is true, so the classes are anchored on what annotators mean
by them, in two checks:

- switched: on the items with a strict majority, some permutation of the fit's classes agrees with
  the majority on more items than the fit's own classes do (exact over all permutations up to 8
  classes; above that a greedy matching, which can only find fewer switches);
- collapsed: a class that a strict majority gives at least `MIN_MAJORITY_ITEMS` items, of which the
  fit keeps fewer than a tenth, has been folded into others (a fit that overrides a noisy vote moves
  some items, not nearly all of a class).

Measured on the eight shared datasets: no fit of ds, one_coin, glad or mace trips either check. On
synthetic crowds built to mislead EM (adversarial and biased annotators, few votes per item), both
fire, and some crowds remain that no vote-anchored check can tell from sane ones (a consistent
adversarial bloc as large as the honest one): see tests/inference/test_degenerate.py.
"""
from __future__ import annotations

import itertools
import re
from typing import NamedTuple

import numpy as np

from labelbeam.transforms.inference.em import Answers

MIN_MAJORITY_ITEMS = 20   # a class needs this many majority items before its vanishing says anything
VANISHED_RATIO = 10       # ... and vanishes when the fit keeps fewer than a tenth of them
EXACT_MATCHING_MAX_CLASSES = 8   # 8! = 40,320 permutations


def vanished_classes(by_vote: np.ndarray, by_fit: np.ndarray,
                     min_items: int = MIN_MAJORITY_ITEMS) -> dict[int, tuple[int, int]]:
    """class -> (items a strict majority gives it, items the fit gives it), for the classes that a
    strict majority gives at least `min_items` items and the fit fewer than a tenth as many; from the
    per-class item counts."""
    return {label: (int(by_vote[label]), int(by_fit[label])) for label in range(len(by_vote))
            if by_vote[label] >= min_items and by_fit[label] * VANISHED_RATIO < by_vote[label]}


def vote_counts(answers: Answers) -> np.ndarray:
    """[n_items, n_labels] each item's votes per class."""
    n_labels = answers.n_labels
    return np.bincount(answers.item * n_labels + answers.label,
                       minlength=answers.n_items * n_labels).reshape(answers.n_items, n_labels)


def best_matching_gain(agreement: np.ndarray) -> int:
    """How many more items the best permutation of rows onto columns of a [K, K] agreement matrix
    puts on its diagonal than the identity does (0 when the identity is best)."""
    n = len(agreement)
    identity = int(np.trace(agreement))
    if n <= EXACT_MATCHING_MAX_CLASSES:
        rows = np.arange(n)
        best = max(int(agreement[rows, list(order)].sum()) for order in itertools.permutations(range(n)))
    else:
        best, used_rows, used_columns = 0, set(), set()
        for cell in np.argsort(-agreement, axis=None, kind="stable"):
            row, column = divmod(int(cell), n)
            if row not in used_rows and column not in used_columns:
                best += int(agreement[row, column])
                used_rows.add(row)
                used_columns.add(column)
    return max(best - identity, 0)


class FitAgreement(NamedTuple):
    """What the checks read of a fit, summed over items: statistics of disjoint item sets add up, so a
    distributed fit sums its buckets' (as it sums its EM statistics) and decides once."""
    agreement: np.ndarray   # [K, K] int64: items with a strict majority, by (fit class, majority class)
    by_fit: np.ndarray      # [K] int64: items by fit class


def fit_agreement(answers: Answers, labels: np.ndarray) -> FitAgreement:
    """The checks' statistics of a fit's labels [n_items] against its items' votes."""
    counts = vote_counts(answers)
    top_two = np.sort(counts, axis=1)[:, -2:] if answers.n_labels > 1 else np.c_[np.zeros(len(counts)), counts]
    decided = top_two[:, 1] > top_two[:, 0]   # a strict majority: a tied vote says nothing about the classes
    n_labels = answers.n_labels
    cells = labels[decided] * n_labels + counts.argmax(axis=1)[decided]
    agreement = np.bincount(cells, minlength=n_labels * n_labels).reshape(n_labels, n_labels).astype(np.int64)
    return FitAgreement(agreement, np.bincount(labels, minlength=n_labels).astype(np.int64))


def degeneracy_of(statistics: FitAgreement, min_items: int = MIN_MAJORITY_ITEMS) -> str | None:
    """Why a fit is degenerate, naming classes by index ("class 2"), or None if it is sane."""
    if len(statistics.by_fit) == 0:
        return None
    gain = best_matching_gain(statistics.agreement)
    if gain:
        return f"label switching: permuting its classes agrees with majority vote on {gain} more items"
    vanished = vanished_classes(statistics.agreement.sum(axis=0), statistics.by_fit, min_items)
    if vanished:
        found = ", ".join(f"class {label} on {fit} items where the majority has {vote}"
                          for label, (vote, fit) in sorted(vanished.items()))
        return f"collapse: classes the majority gives many items all but vanish from the fit ({found})"
    return None


def degeneracy(answers: Answers, labels: np.ndarray, min_items: int = MIN_MAJORITY_ITEMS) -> str | None:
    """Why a fit's labels [n_items] are degenerate, naming classes by index, or None if they are sane."""
    return degeneracy_of(fit_agreement(answers, labels), min_items)


def named_classes(reason: str, label_names: list[str]) -> str:
    """A degeneracy reason with "class N" replaced by the class's name."""
    return re.sub(r"class (\d+)", lambda match: repr(label_names[int(match[1])]), reason)
