"""One-coin Dawid-Skene truth inference: pure numpy EM over sparse answers. No Beam here.

Model: each item has a true class k with prior pi_k; annotator w gives the true class with
probability p_w (their accuracy) and otherwise one of the other n_labels - 1 classes uniformly.
It is Dawid-Skene with every confusion matrix tied to one number, so it needs far fewer answers
per annotator than full confusion matrices do.

The module also holds the building blocks that every "answer is right, or else comes from an error
distribution" model shares (GLAD and MACE import them): a canonical answer order, the per-item class
log-likelihoods, and posteriors with gold clamping.

Choices (documented contracts, not tuned to any dataset):
- Initialisation from soft majority vote (`vote_shares`), as in `dawid_skene`.
- Smoothing means what it means in `dawid_skene`: `smoothing` pseudo-answers in every confusion cell
  and every class prior. Tied to one coin, that is n_labels * smoothing pseudo-answers right and
  n_labels * (n_labels - 1) * smoothing wrong: a prior centred on a random annotator (accuracy
  1 / n_labels) that assumes no competence. Default 0.01, the `dawid_skene` default, so the two
  models differ only in the model.
- Convergence on parameters: stop when the largest change of any accuracy or prior is below `tol`,
  or after `max_iter` iterations.
- Gold items keep a one-hot posterior on their known class at every E-step (clamping).
- Items without answers (and without gold) get uniform posteriors and do not inform the priors.
- The result does not depend on answer order: answers are sorted by (item, worker, label) first, so
  every float sum runs in the same order and the output is byte-identical.
- Consensus is `posteriors.argmax(axis=1)`: ties take the smallest class index.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from labelbeam.transforms.dawid_skene import Answers, clamp_gold, largest_change, run_em, vote_shares


class OneCoinResult(NamedTuple):
    posteriors: np.ndarray    # [n_items, n_labels], rows sum to 1
    priors: np.ndarray        # [n_labels], sums to 1
    accuracy: np.ndarray      # [n_workers], P(annotator gives the true class)
    iterations: int
    converged: bool
    log_likelihood: float     # of the observed answers under the final parameters


def canonical_answers(answers: Answers) -> Answers:
    """The same answers as int64 arrays sorted by (item, worker, label); raises ValueError if malformed.

    Fits run on this order so that results are byte-identical whatever order the answers came in.
    """
    item, worker, label = (np.asarray(a, dtype=np.int64) for a in (answers.item, answers.worker, answers.label))
    if not item.shape == worker.shape == label.shape or item.ndim != 1:
        raise ValueError("answers.item, answers.worker and answers.label must be 1-d arrays of equal length")
    if answers.n_labels < 1:
        raise ValueError(f"n_labels must be >= 1, got {answers.n_labels}")
    for name, codes, bound in (("item", item, answers.n_items), ("worker", worker, answers.n_workers),
                               ("label", label, answers.n_labels)):
        if len(codes) and (codes.min() < 0 or codes.max() >= bound):
            raise ValueError(f"answers.{name} must lie in [0, {bound}); index the {name}s before fitting")
    n_items, n_workers, n_labels = int(answers.n_items), int(answers.n_workers), int(answers.n_labels)
    if len(item) and n_items * n_workers * n_labels < 2 ** 62:   # one packed int64 key sorts ~50x faster
        key = (item * n_workers + worker) * n_labels + label
        key.sort()
        item, rest = np.divmod(key, n_workers * n_labels)
        worker, label = np.divmod(rest, n_labels)
    else:
        order = np.lexsort((label, worker, item))
        item, worker, label = item[order], worker[order], label[order]
    return Answers(item, worker, label, n_items, n_workers, n_labels)


def checked_gold(gold: np.ndarray | None, n_items: int, n_labels: int) -> np.ndarray | None:
    """`gold` as int64 [n_items] with -1 for unknown; raises ValueError on a bad shape or class."""
    if gold is None:
        return None
    gold = np.asarray(gold, dtype=np.int64)
    if gold.shape != (n_items,):
        raise ValueError(f"gold must have shape ({n_items},), got {gold.shape}; use -1 for items without gold")
    if len(gold) and gold.max() >= n_labels:
        raise ValueError(f"gold classes must be < n_labels={n_labels}, got {gold.max()}")
    return gold


def fixed_log_priors(class_priors: np.ndarray | None, n_labels: int) -> np.ndarray:
    """Log of `class_priors` normalised to sum 1; uniform when None. Raises ValueError unless n_labels positive."""
    if class_priors is None:
        return np.full(n_labels, -np.log(n_labels))
    class_priors = np.asarray(class_priors, dtype=np.float64)
    if class_priors.shape != (n_labels,) or not (class_priors > 0).all():
        raise ValueError(f"class_priors must be {n_labels} positive numbers, got {class_priors!r}")
    return np.log(class_priors / class_priors.sum())


def class_log_likelihoods(answers: Answers, log_if_true: np.ndarray, log_if_other: np.ndarray) -> np.ndarray:
    """[n_items, n_labels]: sum over item i's answers j of log P(answer j | item's class is k).

    Answer j contributes log_if_true[j] to the class it names and log_if_other[j] to every other
    class. Never subtracts, so -inf entries (impossible answers, without smoothing) give -inf, not NaN.
    Memory is O(n_answers + n_items * n_labels).
    """
    n_items, n_labels = answers.n_items, answers.n_labels
    cell = answers.item * n_labels + answers.label
    named = np.bincount(cell, weights=log_if_true, minlength=n_items * n_labels).reshape(n_items, n_labels)
    if n_labels == 1:
        return named
    others = np.bincount(cell, weights=log_if_other, minlength=n_items * n_labels).reshape(n_items, n_labels)
    # not_named[i, k] = sum over l != k of others[i, l], as prefix + suffix sums.
    not_named = np.zeros_like(others)
    not_named[:, 1:] += np.cumsum(others[:, :-1], axis=1)
    not_named[:, :-1] += np.cumsum(others[:, :0:-1], axis=1)[:, ::-1]
    return named + not_named


def posteriors_from_log_joint(answers: Answers, log_joint: np.ndarray,
                              gold: np.ndarray | None) -> tuple[np.ndarray, float]:
    """(posteriors [n_items, K], log-likelihood) from log P(class k, item i's answers).

    Items without answers get uniform posteriors; gold[i] >= 0 clamps item i one-hot. The
    log-likelihood is that of the observed answers, gold or not.
    """
    n_labels = answers.n_labels
    top = log_joint.max(axis=1, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)   # a row of -inf: every class impossible (no smoothing)
    weights = np.exp(log_joint - top)
    totals = weights.sum(axis=1, keepdims=True)
    posteriors = np.divide(weights, totals, out=np.full_like(weights, 1.0 / n_labels), where=totals > 0)
    answered = np.bincount(answers.item, minlength=answers.n_items) > 0
    posteriors[~answered] = 1.0 / n_labels
    with np.errstate(divide="ignore"):
        log_evidence = top[answered, 0] + np.log(totals[answered, 0])
    return clamp_gold(posteriors, gold), float(log_evidence.sum())


def e_step(answers: Answers, log_priors: np.ndarray, accuracy: np.ndarray,
           gold: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """(posteriors [n_items, K], log-likelihood of the answers). gold[i] >= 0 clamps item i to that class."""
    with np.errstate(divide="ignore"):   # accuracy 0 or 1 only without smoothing
        log_if_true = np.log(accuracy)
        log_if_other = np.log1p(-accuracy) - np.log(max(answers.n_labels - 1, 1))
    log_joint = log_priors[None, :] + class_log_likelihoods(answers, log_if_true[answers.worker],
                                                            log_if_other[answers.worker])
    return posteriors_from_log_joint(answers, log_joint, gold)


def m_step(answers: Answers, posteriors: np.ndarray, smoothing: float) -> tuple[np.ndarray, np.ndarray]:
    """(log priors [K], accuracy [n_workers]) maximising the expected complete likelihood, smoothed.

    Accuracy is (expected right + K s) / (answers + K^2 s) with s = smoothing; an annotator without
    answers (or with s = 0 and no answers) gets 1 / K. Priors count only items that have answers.
    """
    n_labels = answers.n_labels
    expected_right = np.bincount(answers.worker, weights=posteriors[answers.item, answers.label],
                                 minlength=answers.n_workers)
    n_answers = np.bincount(answers.worker, minlength=answers.n_workers).astype(np.float64)
    numerator = expected_right + n_labels * smoothing
    denominator = n_answers + n_labels * n_labels * smoothing
    accuracy = np.divide(numerator, denominator, out=np.full(answers.n_workers, 1.0 / n_labels),
                         where=denominator > 0)
    answered = np.bincount(answers.item, minlength=answers.n_items) > 0
    priors = posteriors[answered].sum(axis=0) + smoothing
    total = priors.sum()
    priors = priors / total if total > 0 else np.full(n_labels, 1.0 / n_labels)
    with np.errstate(divide="ignore"):  # without smoothing, an unseen class has prior 0
        return np.log(priors), accuracy


def one_coin(answers: Answers, max_iter: int = 100, tol: float = 1e-5, smoothing: float = 0.01,
             gold: np.ndarray | None = None) -> OneCoinResult:
    """Fit one-coin Dawid-Skene by EM; see the module docstring for initialisation, smoothing and stopping."""
    if smoothing < 0:
        raise ValueError(f"smoothing must be >= 0, got {smoothing}")
    answers = canonical_answers(answers)
    gold = checked_gold(gold, answers.n_items, answers.n_labels)
    (log_priors, accuracy), iterations, converged = run_em(
        m_step(answers, clamp_gold(vote_shares(answers), gold), smoothing),
        lambda params: e_step(answers, *params, gold)[0],
        lambda posteriors, _: m_step(answers, posteriors, smoothing),
        lambda old, new: largest_change((np.exp(old[0]), old[1]), (np.exp(new[0]), new[1])), max_iter, tol)
    posteriors, log_likelihood = e_step(answers, log_priors, accuracy, gold)
    return OneCoinResult(posteriors, np.exp(log_priors), accuracy, iterations, converged, log_likelihood)
