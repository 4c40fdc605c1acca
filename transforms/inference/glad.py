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
- The M-step ascends the expected complete log-posterior Q in two blocks. Given the alphas, Q splits
  into one term per item: each b_i takes `m_step_iterations` steps of Fisher scoring, halved until
  its term does not decrease. Then, given the b's, Q splits into one term per annotator, which is
  concave in alpha_w: each alpha_w takes one Newton step, kept unless it lowers its term (by more
  than ABILITY_SLACK, 1e-6 nats: see there), and otherwise moves to the maximum of the
  Jaakkola-Jordan quadratic lower bound of its term (tight at the current alpha_w, so that move never
  decreases it). Q never decreases beyond that slack, so this is a generalised EM; and every alpha
  step reads two sums over answers per annotator (`ability_statistics`,
  then `ability_terms` at the Newton candidate), which is what lets the distributed EM
  (transforms/distributed_glad.py) run the same M-step over item buckets: an item's b_i only reads
  that item's answers.
- Convergence on parameters: stop when no alpha_w or b_i moved by `tol` or more in an iteration,
  or after `max_iter` iterations.
- Gold items keep a one-hot posterior on their known class (clamping); items without answers get
  uniform posteriors; answers are put in (item, worker, label) order first, so the result does not
  depend on the order they came in. Consensus is `posteriors.argmax(axis=1)`: ties take the smallest
  class index.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import numpy as np

from labelbeam.transforms.inference.em import (
    Answers,
    canonical_answers,
    checked_gold,
    clamp_gold,
    class_log_likelihoods,
    fixed_log_priors,
    item_offsets,
    item_ranges,
    largest_change,
    posteriors_from_log_joint,
    run_em,
    vote_shares,
)

_MAX_HALVINGS = 30
_ROUNDING = 1e-12   # a step that changes a term of Q by less than this (relative) is not a decrease
# An ability step lowering its annotator's term of Q by less than this (nats) is still kept. The
# distributed EM sums those terms over buckets rounded to 2**-30 each, so it knows them to ~1e-8;
# near convergence, Newton's true gain is smaller than that, and without this margin the rounding,
# not the model, decided the steps (a distributed fit took 24 iterations where the in-process took 29).
# Overshoots worth refusing lower the term by far more.
ABILITY_SLACK = 1e-6


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


def _item_ascent(value: np.ndarray, prior: GaussianPrior, group: np.ndarray, p_right: np.ndarray,
                 alpha: np.ndarray) -> np.ndarray:
    """One safeguarded Fisher-scoring step on every item's log beta (`value`), each on its own term of Q.

    Answer j (of item group[j], by an annotator of ability alpha[j]) has logit alpha[j] * exp(value),
    whose derivative by log beta is the logit itself. A step that would lower an item's term of Q is
    halved until it does not; after _MAX_HALVINGS the item stays where it was.
    """
    n = len(value)

    def logit_of(candidate: np.ndarray) -> np.ndarray:
        return alpha * np.exp(candidate)[group]

    def terms(candidate: np.ndarray, logit: np.ndarray, log_sigmoid: np.ndarray) -> np.ndarray:
        return (np.bincount(group, weights=_answer_terms(p_right, logit, log_sigmoid), minlength=n)
                - _penalty(candidate, prior))

    logit = logit_of(value)
    log_sigmoid = _log_sigmoid(logit)
    s = np.exp(log_sigmoid)
    slope = logit
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


def item_step(answers: Answers, p_right: np.ndarray, ability: np.ndarray, log_beta: np.ndarray,
              log_beta_prior: GaussianPrior, iterations: int) -> np.ndarray:
    """log beta after `iterations` safeguarded Fisher-scoring steps on each item's term of Q, alphas fixed.
    Item i's step reads only item i's answers."""
    alpha = ability[answers.worker]
    for _ in range(iterations):
        log_beta = _item_ascent(log_beta, log_beta_prior, answers.item, p_right, alpha)
    return log_beta


class AbilityStatistics(NamedTuple):
    """Per-annotator sums over answers (priors not included) that one alpha step reads."""
    gradient: np.ndarray          # sum of (r - s) beta: dQ/dalpha
    curvature: np.ndarray         # sum of s (1 - s) beta**2: -d2Q/dalpha2
    bound_slope: np.ndarray       # sum of (r - 1/2) beta: the Jaakkola-Jordan bound's linear coefficient
    bound_curvature: np.ndarray   # sum of tanh(x/2) / (2x) beta**2 at the current logits x: its curvature
    term: np.ndarray              # sum of r log s + (1 - r) log(1 - s): the annotator's term of Q


class AbilityProposal(NamedTuple):
    """Per annotator: the Newton candidate, the bound's maximum (the fallback), and the term of Q now."""
    newton: np.ndarray
    bounded: np.ndarray
    before: np.ndarray


def _answer_terms(p_right: np.ndarray, logit: np.ndarray, log_sigmoid: np.ndarray) -> np.ndarray:
    # r log s + (1 - r) log(1 - s), with log(1 - s) = log s - logit: one log-sigmoid per answer.
    return log_sigmoid - (1.0 - p_right) * logit


def ability_statistics(answers: Answers, p_right: np.ndarray, ability: np.ndarray,
                       log_beta: np.ndarray) -> AbilityStatistics:
    beta = np.exp(log_beta)[answers.item]
    logit = ability[answers.worker] * beta
    log_sigmoid = _log_sigmoid(logit)
    s = np.exp(log_sigmoid)
    half_over = np.divide(np.tanh(0.5 * logit), 2.0 * logit, out=np.full_like(logit, 0.25),
                          where=np.abs(logit) > 1e-8)   # -> 1/4 as the logit -> 0

    def per_annotator(weights: np.ndarray) -> np.ndarray:
        return np.bincount(answers.worker, weights=weights, minlength=answers.n_workers)

    return AbilityStatistics(per_annotator((p_right - s) * beta), per_annotator(s * (1.0 - s) * beta ** 2),
                             per_annotator((p_right - 0.5) * beta), per_annotator(half_over * beta ** 2),
                             per_annotator(_answer_terms(p_right, logit, log_sigmoid)))


def _penalty(ability: np.ndarray, prior: GaussianPrior) -> np.ndarray:
    return 0.5 * (ability - prior.mean) ** 2 / prior.variance


def ability_proposal(statistics: AbilityStatistics, ability: np.ndarray, prior: GaussianPrior) -> AbilityProposal:
    """From summed statistics: each annotator's Newton candidate (their term is concave in alpha), and the
    maximum of the Jaakkola-Jordan lower bound of their term, which touches it at the current alpha."""
    gradient = statistics.gradient - (ability - prior.mean) / prior.variance
    newton = ability + gradient / (statistics.curvature + 1.0 / prior.variance)
    bounded = ((statistics.bound_slope + prior.mean / prior.variance)
               / (statistics.bound_curvature + 1.0 / prior.variance))
    return AbilityProposal(newton, bounded, statistics.term - _penalty(ability, prior))


def ability_terms(answers: Answers, p_right: np.ndarray, ability: np.ndarray, log_beta: np.ndarray) -> np.ndarray:
    """Per annotator: their term of Q at `ability` (prior not included), summed over the answers."""
    logit = ability[answers.worker] * np.exp(log_beta)[answers.item]
    return np.bincount(answers.worker, weights=_answer_terms(p_right, logit, _log_sigmoid(logit)),
                       minlength=answers.n_workers)


def accepted_ability(proposal: AbilityProposal, terms_at_newton: np.ndarray, prior: GaussianPrior) -> np.ndarray:
    """The Newton candidate where it does not lower the annotator's term of Q, else the bound's maximum."""
    after = terms_at_newton - _penalty(proposal.newton, prior)
    kept = after >= proposal.before - _ROUNDING * np.abs(proposal.before) - ABILITY_SLACK
    return np.where(kept, proposal.newton, proposal.bounded)


class ItemBlock(NamedTuple):
    """Items start..stop-1 and their answers, items re-indexed from 0."""
    start: int
    stop: int
    answers: Answers


# glad() runs its passes over blocks of items with about this many answers: numpy's passes cost twice
# as much per element on 10M-answer arrays as on blocks this size (measured: a log-sigmoid 10.2 vs 5.3
# ns), and a 10M-answer fit took 166 s in one block, 64 s in blocks of 250k (same iterations).
BLOCK_ANSWERS = 250_000


def item_blocks(answers: Answers, max_answers: int = BLOCK_ANSWERS) -> list[ItemBlock]:
    """Answers sorted by item (canonical_answers) cut into ItemBlocks of about max_answers answers."""
    offsets = item_offsets(answers)
    return [ItemBlock(start, stop, Answers(answers.item[offsets[start]:offsets[stop]] - start,
                                           answers.worker[offsets[start]:offsets[stop]],
                                           answers.label[offsets[start]:offsets[stop]], stop - start,
                                           answers.n_workers, answers.n_labels))
            for start, stop in item_ranges(offsets, max_answers)]


def blocked_e_step(blocks: list[ItemBlock], log_priors: np.ndarray, ability: np.ndarray, log_beta: np.ndarray,
                   gold: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """e_step over item blocks: (posteriors [n_items, K], log-likelihood of the answers)."""
    steps = [e_step(block.answers, log_priors, ability, log_beta[block.start:block.stop],
                    None if gold is None else gold[block.start:block.stop]) for block in blocks]
    if not steps:
        return np.zeros((0, len(log_priors))), 0.0
    return np.concatenate([posteriors for posteriors, _ in steps]), float(sum(ll for _, ll in steps))


def blocked_m_step(blocks: list[ItemBlock], posteriors: np.ndarray, ability: np.ndarray, log_beta: np.ndarray,
                   ability_prior: GaussianPrior, log_beta_prior: GaussianPrior,
                   iterations: int) -> tuple[np.ndarray, np.ndarray]:
    """m_step over item blocks: each block's item steps and its share of the ability sums, then one ability
    step from their totals (the distributed EM's M-step, with blocks for buckets)."""
    log_beta = log_beta.copy()
    statistics, p_rights = None, []
    for block in blocks:
        answers = block.answers
        p_right = posteriors[block.start:block.stop][answers.item, answers.label]
        p_rights.append(p_right)
        log_beta[block.start:block.stop] = item_step(answers, p_right, ability, log_beta[block.start:block.stop],
                                                     log_beta_prior, iterations)
        share = ability_statistics(answers, p_right, ability, log_beta[block.start:block.stop])
        statistics = share if statistics is None else AbilityStatistics(*map(np.add, statistics, share))
    if statistics is None:   # no items
        return ability, log_beta
    proposal = ability_proposal(statistics, ability, ability_prior)
    terms = sum(ability_terms(block.answers, p_right, proposal.newton, log_beta[block.start:block.stop])
                for block, p_right in zip(blocks, p_rights))
    return accepted_ability(proposal, terms, ability_prior), log_beta


def m_step(answers: Answers, posteriors: np.ndarray, ability: np.ndarray, log_beta: np.ndarray,
           ability_prior: GaussianPrior, log_beta_prior: GaussianPrior,
           iterations: int) -> tuple[np.ndarray, np.ndarray]:
    """(ability, log beta): `iterations` item steps, then one ability step (module docstring). Q never
    decreases, but by ABILITY_SLACK."""
    return blocked_m_step([ItemBlock(0, answers.n_items, answers)], posteriors, ability, log_beta,
                          ability_prior, log_beta_prior, iterations)


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
    blocks = item_blocks(answers, BLOCK_ANSWERS)
    (ability, log_beta), iterations, converged = run_em(
        blocked_m_step(blocks, clamp_gold(vote_shares(answers), gold), ability, log_beta, ability_prior,
                       log_beta_prior, m_step_iterations),
        lambda params: blocked_e_step(blocks, log_priors, *params, gold)[0],
        lambda posteriors, params: blocked_m_step(blocks, posteriors, *params, ability_prior, log_beta_prior,
                                                  m_step_iterations),
        largest_change, max_iter, tol)
    posteriors, log_likelihood = blocked_e_step(blocks, log_priors, ability, log_beta, gold)
    return GladResult(posteriors, ability, np.exp(-log_beta), np.exp(log_beta), iterations, converged,
                      log_likelihood)



@dataclass(frozen=True)
class GladModel:
    """GLAD as the distributed EM runs it (transforms/distributed_glad.py): the priors and item steps that
    glad() takes, and the E-step under (ability, log beta) with uniform class priors, as glad() fits."""
    name: ClassVar[str] = "glad"
    ability_prior: GaussianPrior = GaussianPrior(1.0, 1.0)
    log_beta_prior: GaussianPrior = GaussianPrior(1.0, 1.0)
    m_step_iterations: int = 5

    def e_step(self, answers: Answers, parameters: tuple[np.ndarray, np.ndarray], gold: np.ndarray | None,
               counts=None) -> tuple[np.ndarray, float]:
        ability, log_beta = parameters
        return e_step(answers, fixed_log_priors(None, answers.n_labels), ability, log_beta, gold)
