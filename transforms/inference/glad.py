"""GLAD truth inference (Whitehill et al., NIPS 2009): pure numpy EM over sparse answers. No Beam here.

Model: annotator w has ability alpha_w (any real; negative means adversarial), item i has inverse
difficulty beta_i = exp(b_i) > 0. Annotator w gives item i its true class with probability
sigmoid(alpha_w * beta_i) and otherwise one of the other n_labels - 1 classes uniformly. The paper's
difficulty is 1 / beta_i: near 0 every annotator is right, and as it grows every answer tends to
a coin flip. True classes have fixed priors (uniform by default), as in the paper.

Choices (documented contracts, not tuned to any dataset):
- Gaussian priors alpha_w ~ N(1, 1) and b_i = log beta_i ~ N(1, 1): the values in Whitehill et
  al.'s released code and in crowd-kit's GLAD. They keep abilities and difficulties finite when an
  annotator or item has few answers.
- Initialisation from soft majority vote (`vote_shares`), then an M-step from the prior means.
- The M-step takes `m_step_iterations` rounds of gradient ascent on the expected complete
  log-posterior Q: first every alpha_w, then every b_i. Given the b's, Q splits into one term per
  annotator (and given the alphas, one per item), so each parameter takes its own step of
  gradient / curvature (Newton for alpha, where Q is concave; Fisher scoring for b), halved until
  its term of Q does not decrease. Q never decreases, so this is a generalised EM.
- Convergence on parameters: stop when no alpha_w or b_i moved by `tol` or more in an iteration,
  or after `max_iter` iterations.
- Gold items keep a one-hot posterior on their known class (clamping); items without answers get
  uniform posteriors; answers are put in (item, worker, label) order first, so the result does not
  depend on the order they came in. Consensus is `posteriors.argmax(axis=1)`: ties take the smallest
  class index.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from labelbeam.transforms.inference.em import (
    Answers,
    canonical_answers,
    checked_gold,
    clamp_gold,
    class_log_likelihoods,
    fixed_log_priors,
    largest_change,
    posteriors_from_log_joint,
    run_em,
    vote_shares,
)

_MAX_HALVINGS = 30
_ROUNDING = 1e-12   # a step that changes a term of Q by less than this (relative) is not a decrease


class GladResult(NamedTuple):
    posteriors: np.ndarray           # [n_items, n_labels], rows sum to 1
    ability: np.ndarray              # [n_workers], alpha
    difficulty: np.ndarray           # [n_items], 1 / beta > 0; larger is harder
    inverse_difficulty: np.ndarray   # [n_items], beta; P(right) = sigmoid(ability * inverse_difficulty)
    iterations: int
    converged: bool
    log_likelihood: float            # of the observed answers under the final parameters


class GaussianPrior(NamedTuple):
    mean: float
    variance: float


def _log_sigmoid(x: np.ndarray) -> np.ndarray:
    """log sigmoid(x) = min(x, 0) - log1p(exp(-|x|)): no overflow, and ~4x faster than -logaddexp(0, -x)."""
    tail = np.abs(x)
    np.negative(tail, out=tail)
    np.exp(tail, out=tail)
    np.log1p(tail, out=tail)
    return np.minimum(x, 0.0) - tail


def answer_log_likelihoods(answers: Answers, ability: np.ndarray,
                           log_beta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(log P(answer right), log P(this particular wrong answer)) per answer; stable for any alpha * beta."""
    logit = ability[answers.worker] * np.exp(log_beta[answers.item])
    log_if_other = _log_sigmoid(-logit) - np.log(max(answers.n_labels - 1, 1))
    return _log_sigmoid(logit), log_if_other


def e_step(answers: Answers, log_priors: np.ndarray, ability: np.ndarray, log_beta: np.ndarray,
           gold: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """(posteriors [n_items, K], log-likelihood of the answers). gold[i] >= 0 clamps item i to that class."""
    log_if_true, log_if_other = answer_log_likelihoods(answers, ability, log_beta)
    log_joint = log_priors[None, :] + class_log_likelihoods(answers, log_if_true, log_if_other)
    return posteriors_from_log_joint(answers, log_joint, gold)


def _ascend(value: np.ndarray, prior: GaussianPrior, group: np.ndarray, p_right: np.ndarray,
            logit_of: Callable[[np.ndarray], np.ndarray],
            slope_of: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """One safeguarded Newton / Fisher-scoring step on every parameter in `value`, each on its own term of Q.

    Answer j depends on parameter group[j] only. `logit_of(value)` gives every answer's logit and
    `slope_of(logit)` its derivative by that parameter. A step that would lower a parameter's term
    of Q is halved until it does not; after _MAX_HALVINGS the parameter stays where it was.
    """
    n = len(value)

    def terms(candidate: np.ndarray, logit: np.ndarray, log_sigmoid: np.ndarray) -> np.ndarray:
        # r log s + (1 - r) log(1 - s), with log(1 - s) = log s - logit: one log-sigmoid per answer.
        per_answer = log_sigmoid - (1.0 - p_right) * logit
        penalty = 0.5 * (candidate - prior.mean) ** 2 / prior.variance
        return np.bincount(group, weights=per_answer, minlength=n) - penalty

    logit = logit_of(value)
    log_sigmoid = _log_sigmoid(logit)
    s = np.exp(log_sigmoid)
    slope = slope_of(logit)
    gradient = (np.bincount(group, weights=(p_right - s) * slope, minlength=n)
                - (value - prior.mean) / prior.variance)
    curvature = np.bincount(group, weights=s * (1.0 - s) * slope ** 2, minlength=n) + 1.0 / prior.variance
    step = gradient / curvature
    before = terms(value, logit, log_sigmoid)
    result = value.copy()
    pending = step != 0.0
    for _ in range(_MAX_HALVINGS):
        if not pending.any():
            break
        candidate = np.where(pending, value + step, value)
        candidate_logit = logit_of(candidate)
        after = terms(candidate, candidate_logit, _log_sigmoid(candidate_logit))
        better = pending & (after >= before - _ROUNDING * np.abs(before))
        result[better] = candidate[better]
        pending &= ~better
        step = step * 0.5
    return result


def expected_log_posterior(answers: Answers, posteriors: np.ndarray, ability: np.ndarray, log_beta: np.ndarray,
                           ability_prior: GaussianPrior = GaussianPrior(1.0, 1.0),
                           log_beta_prior: GaussianPrior = GaussianPrior(1.0, 1.0)) -> float:
    """Q: expected complete-data log-likelihood of the answers plus the Gaussian log-priors, up to constants.

    Constants dropped: the class priors' term and the Gaussians' normalisers. The -log(K - 1) of each
    wrong answer is kept, so Q is comparable across K.
    """
    p_right = posteriors[answers.item, answers.label]
    log_if_true, log_if_other = answer_log_likelihoods(answers, ability, log_beta)
    answer_part = np.sum(p_right * log_if_true + (1.0 - p_right) * log_if_other)
    prior_part = -0.5 * (np.sum((ability - ability_prior.mean) ** 2) / ability_prior.variance
                         + np.sum((log_beta - log_beta_prior.mean) ** 2) / log_beta_prior.variance)
    return float(answer_part + prior_part)


def m_step(answers: Answers, posteriors: np.ndarray, ability: np.ndarray, log_beta: np.ndarray,
           ability_prior: GaussianPrior, log_beta_prior: GaussianPrior,
           iterations: int) -> tuple[np.ndarray, np.ndarray]:
    """(ability, log beta) after `iterations` rounds of safeguarded ascent on Q. Q never decreases."""
    p_right = posteriors[answers.item, answers.label]
    for _ in range(iterations):
        beta = np.exp(log_beta)[answers.item]
        ability = _ascend(ability, ability_prior, answers.worker, p_right,
                          lambda a, beta=beta: a[answers.worker] * beta, lambda logit, beta=beta: beta)
        alpha = ability[answers.worker]
        log_beta = _ascend(log_beta, log_beta_prior, answers.item, p_right,
                           lambda b, alpha=alpha: alpha * np.exp(b)[answers.item], lambda logit: logit)
    return ability, log_beta


def glad(answers: Answers, max_iter: int = 100, tol: float = 1e-5,
         ability_prior: GaussianPrior = GaussianPrior(1.0, 1.0),
         log_beta_prior: GaussianPrior = GaussianPrior(1.0, 1.0),
         class_priors: np.ndarray | None = None, m_step_iterations: int = 5,
         gold: np.ndarray | None = None) -> GladResult:
    """Fit GLAD by (generalised) EM; see the module docstring for priors, M-step and stopping.

    `class_priors` [n_labels] are fixed, not learned (uniform when None), as in the paper.
    """
    ability_prior, log_beta_prior = GaussianPrior(*ability_prior), GaussianPrior(*log_beta_prior)
    if ability_prior.variance <= 0 or log_beta_prior.variance <= 0:
        raise ValueError("prior variances must be > 0; use a large variance for a weak prior")
    if m_step_iterations < 1:
        raise ValueError(f"m_step_iterations must be >= 1, got {m_step_iterations}")
    answers = canonical_answers(answers)
    gold = checked_gold(gold, answers.n_items, answers.n_labels)
    log_priors = fixed_log_priors(class_priors, answers.n_labels)
    ability = np.full(answers.n_workers, ability_prior.mean)
    log_beta = np.full(answers.n_items, log_beta_prior.mean)
    (ability, log_beta), iterations, converged = run_em(
        m_step(answers, clamp_gold(vote_shares(answers), gold), ability, log_beta, ability_prior, log_beta_prior,
               m_step_iterations),
        lambda params: e_step(answers, log_priors, *params, gold)[0],
        lambda posteriors, params: m_step(answers, posteriors, *params, ability_prior, log_beta_prior,
                                          m_step_iterations),
        largest_change, max_iter, tol)
    posteriors, log_likelihood = e_step(answers, log_priors, ability, log_beta, gold)
    return GladResult(posteriors, ability, np.exp(-log_beta), np.exp(log_beta), iterations, converged,
                      log_likelihood)

