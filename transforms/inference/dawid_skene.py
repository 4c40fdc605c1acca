"""Dawid-Skene truth inference: pure numpy EM over sparse answers. No Beam here.

Model: each item has a true class k with prior pi_k; annotator w answers l with probability
theta[w, k, l]. EM alternates the E-step (posterior over each item's class) and the M-step
(priors and confusion matrices from expected counts), in log space.

Choices (documented contracts, not tuned to any dataset):
- Initialisation from soft majority vote (each item's vote shares), so EM starts from the answer a
  plain vote gives and only moves where the annotators' estimated skills say so.
- Dirichlet smoothing: `smoothing` pseudo-answers are added to every confusion cell and prior, so
  an annotator seen once does not get a confusion row of exact zeros and ones.
- Convergence on parameters, not likelihood: stop when the largest change of any prior or
  confusion probability is below `tol`, or after `max_iter` iterations.
- Gold items keep a one-hot posterior on their known class at every E-step (clamping), so they
  anchor the annotators' confusion matrices.
- Ties in the final posterior take the smallest class index, as majority vote does.
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar, NamedTuple

import numpy as np
from scipy import sparse

from labelbeam.transforms.inference.em import Answers, EMModel, answer_counts, clamp_gold, fit_em, largest_change


class DawidSkeneResult(NamedTuple):
    posteriors: np.ndarray    # [n_items, n_labels], rows sum to 1
    priors: np.ndarray        # [n_labels]
    confusions: np.ndarray    # [n_workers, n_labels (true), n_labels (answered)], rows sum to 1
    iterations: int
    converged: bool
    log_likelihood: float     # of the observed answers under the final parameters


def expected_counts(answers: Answers, posteriors: np.ndarray,
                    counts: sparse.csr_array | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(class counts [K], confusion counts [W, K, L]): the M-step's sufficient statistics.

    Sums over answers, so statistics of disjoint sets of items add up: a distributed M-step
    sums them across workers, then calls `parameters_from_counts` once. `counts` is
    answer_counts(answers), built when not given.
    """
    n_labels = answers.n_labels
    counts = answer_counts(answers) if counts is None else counts
    # confusion[w, k, l] = sum over answers (w, l) of P(item's class = k)
    by_cell = counts.T @ posteriors
    confusion = by_cell.reshape(answers.n_workers, n_labels, n_labels).transpose(0, 2, 1)  # [w, l, k] -> [w, k, l]
    return posteriors.sum(axis=0), confusion


def parameters_from_counts(class_counts: np.ndarray, confusion_counts: np.ndarray,
                           smoothing: float) -> tuple[np.ndarray, np.ndarray]:
    """(log priors, log confusions) from summed expected counts, with Dirichlet smoothing."""
    confusions = confusion_counts + smoothing
    confusions /= confusions.sum(axis=2, keepdims=True)
    priors = class_counts + smoothing
    priors /= priors.sum()
    with np.errstate(divide="ignore"):  # without smoothing, an unseen cell has probability 0
        return np.log(priors), np.log(confusions)


def m_step(answers: Answers, posteriors: np.ndarray, smoothing: float) -> tuple[np.ndarray, np.ndarray]:
    """(log priors, log confusions) maximising the expected complete likelihood, with Dirichlet smoothing."""
    return parameters_from_counts(*expected_counts(answers, posteriors), smoothing)


def parameter_change(old: tuple[np.ndarray, np.ndarray], new: tuple[np.ndarray, np.ndarray]) -> float:
    """Largest absolute change of any prior or confusion probability (the stopping rule)."""
    return largest_change(tuple(map(np.exp, old)), tuple(map(np.exp, new)))


def e_step(answers: Answers, log_priors: np.ndarray, log_confusions: np.ndarray,
           gold: np.ndarray | None = None, counts: sparse.csr_array | None = None) -> tuple[np.ndarray, float]:
    """(posteriors [n_items, K], log-likelihood of the answers). gold[i] >= 0 clamps item i to that class.

    `counts` is answer_counts(answers), built when not given."""
    n_labels = log_confusions.shape[1]
    counts = answer_counts(answers) if counts is None else counts
    # by_cell[w * L + l, k] = log P(answer l | class k) for annotator w, summed over each item's answers.
    by_cell = np.ascontiguousarray(log_confusions.transpose(0, 2, 1)).reshape(-1, n_labels)
    log_joint = log_priors[None, :] + counts @ by_cell
    top = log_joint.max(axis=1, keepdims=True)
    log_evidence = top + np.log(np.exp(log_joint - top).sum(axis=1, keepdims=True))
    return clamp_gold(np.exp(log_joint - log_evidence), gold), float(log_evidence.sum())


@dataclasses.dataclass(frozen=True)
class DawidSkeneModel(EMModel):
    """Dawid-Skene as an EMModel: statistics are expected_counts, parameters (log priors, log confusions)."""
    name: ClassVar[str] = "ds"
    needs_counts: ClassVar[bool] = True
    smoothing: float = 0.01

    def statistics(self, answers, posteriors, parameters, counts):
        return expected_counts(answers, posteriors, counts)

    def parameters(self, statistics):
        return parameters_from_counts(*statistics, self.smoothing)

    def e_step(self, answers, parameters, gold, counts=None):
        return e_step(answers, *parameters, gold, counts)

    def change(self, old, new):
        return parameter_change(old, new)


def dawid_skene(answers: Answers, max_iter: int = 100, tol: float = 1e-5, smoothing: float = 0.01,
                gold: np.ndarray | None = None) -> DawidSkeneResult:
    """Fit Dawid-Skene by EM; see the module docstring for initialisation, smoothing and stopping."""
    if answers.n_labels < 1:
        raise ValueError("Dawid-Skene needs at least one class")
    if smoothing < 0:
        raise ValueError(f"smoothing must be >= 0, got {smoothing}")
    fit = fit_em(DawidSkeneModel(smoothing), answers, gold, max_iter, tol)
    log_priors, log_confusions = fit.parameters
    return DawidSkeneResult(fit.posteriors, np.exp(log_priors), np.exp(log_confusions), fit.iterations,
                            fit.converged, fit.log_likelihood)
