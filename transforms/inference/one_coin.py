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

import dataclasses
from typing import ClassVar, NamedTuple

import numpy as np

from labelbeam.transforms.inference.em import (
    Answers,
    EMModel,
    canonical_answers,
    checked_gold,
    class_log_likelihoods,
    fit_em,
    largest_change,
    posteriors_from_log_joint,
)


class OneCoinResult(NamedTuple):
    posteriors: np.ndarray    # [n_items, n_labels], rows sum to 1
    priors: np.ndarray        # [n_labels], sums to 1
    accuracy: np.ndarray      # [n_workers], P(annotator gives the true class)
    iterations: int
    converged: bool
    log_likelihood: float     # of the observed answers under the final parameters


def e_step(answers: Answers, log_priors: np.ndarray, accuracy: np.ndarray,
           gold: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """(posteriors [n_items, K], log-likelihood of the answers). gold[i] >= 0 clamps item i to that class."""
    with np.errstate(divide="ignore"):   # accuracy 0 or 1 only without smoothing
        log_if_true = np.log(accuracy)
        log_if_other = np.log1p(-accuracy) - np.log(max(answers.n_labels - 1, 1))
    log_joint = log_priors[None, :] + class_log_likelihoods(answers, log_if_true[answers.worker],
                                                            log_if_other[answers.worker])
    return posteriors_from_log_joint(answers, log_joint, gold)


def statistics(answers: Answers, posteriors: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(class counts of answered items [K], expected right answers [n_workers], answers [n_workers]):
    sums over answers and items, so disjoint item sets' statistics add up."""
    expected_right = np.bincount(answers.worker, weights=posteriors[answers.item, answers.label],
                                 minlength=answers.n_workers)
    n_answers = np.bincount(answers.worker, minlength=answers.n_workers).astype(np.float64)
    answered = np.bincount(answers.item, minlength=answers.n_items) > 0
    return posteriors[answered].sum(axis=0), expected_right, n_answers


def parameters_from_statistics(class_counts: np.ndarray, expected_right: np.ndarray, n_answers: np.ndarray,
                               smoothing: float) -> tuple[np.ndarray, np.ndarray]:
    """(log priors [K], accuracy [n_workers]) maximising the expected complete likelihood, smoothed.

    Accuracy is (expected right + K s) / (answers + K^2 s) with s = smoothing; an annotator without
    answers (or with s = 0 and no answers) gets 1 / K. Priors count only items that have answers.
    """
    n_labels = len(class_counts)
    numerator = expected_right + n_labels * smoothing
    denominator = n_answers + n_labels * n_labels * smoothing
    accuracy = np.divide(numerator, denominator, out=np.full(len(n_answers), 1.0 / n_labels),
                         where=denominator > 0)
    priors = class_counts + smoothing
    total = priors.sum()
    priors = priors / total if total > 0 else np.full(n_labels, 1.0 / n_labels)
    with np.errstate(divide="ignore"):  # without smoothing, an unseen class has prior 0
        return np.log(priors), accuracy


def m_step(answers: Answers, posteriors: np.ndarray, smoothing: float) -> tuple[np.ndarray, np.ndarray]:
    """(log priors [K], accuracy [n_workers]): parameters_from_statistics of these answers' statistics."""
    return parameters_from_statistics(*statistics(answers, posteriors), smoothing)


@dataclasses.dataclass(frozen=True)
class OneCoinModel(EMModel):
    """One-coin Dawid-Skene as an EMModel: parameters (log priors, accuracy)."""
    name: ClassVar[str] = "one_coin"
    smoothing: float = 0.01

    def statistics(self, answers, posteriors, parameters, counts):
        return statistics(answers, posteriors)

    def parameters(self, statistics):
        return parameters_from_statistics(*statistics, self.smoothing)

    def e_step(self, answers, parameters, gold, counts=None):
        return e_step(answers, *parameters, gold)

    def change(self, old, new):
        return largest_change((np.exp(old[0]), old[1]), (np.exp(new[0]), new[1]))


def one_coin(answers: Answers, max_iter: int = 100, tol: float = 1e-5, smoothing: float = 0.01,
             gold: np.ndarray | None = None) -> OneCoinResult:
    """Fit one-coin Dawid-Skene by EM; see the module docstring for initialisation, smoothing and stopping."""
    if smoothing < 0:
        raise ValueError(f"smoothing must be >= 0, got {smoothing}")
    answers = canonical_answers(answers)
    gold = checked_gold(gold, answers.n_items, answers.n_labels)
    fit = fit_em(OneCoinModel(smoothing), answers, gold, max_iter, tol)
    log_priors, accuracy = fit.parameters
    return OneCoinResult(fit.posteriors, np.exp(log_priors), accuracy, fit.iterations, fit.converged,
                         fit.log_likelihood)
