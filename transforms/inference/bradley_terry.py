"""Bradley-Terry strengths from pairwise preferences: pure numpy MM (Hunter 2004). No Beam here.

Model: candidate i has strength gamma_i = exp(s_i) and beats candidate j with probability
gamma_i / (gamma_i + gamma_j) = sigmoid(s_i - s_j). Comparison k says winner[k] beat loser[k], with
weight weight[k] (default 1; a draw can be entered as two comparisons of weight 0.5, one each way).
The MM update (Hunter 2004, "MM algorithms for generalized Bradley-Terry models") is
gamma_i <- W_i / sum_k n_k / (gamma_i + gamma_opponent(k)), over the comparisons k of candidate i,
where W_i is i's weighted number of wins and n_k the weight of comparison k.

Choices (documented contracts, not tuned to any dataset):
- Regularisation: every candidate gets `prior` pseudo-wins and `prior` pseudo-losses (default 1) against
  a virtual reference candidate whose strength is fixed at 1. This is a MAP fit with a log-concave prior
  centred on the reference, so every strength stays finite and unique even when a candidate always wins or
  always loses, never plays, or the comparison graph is disconnected. `prior` must be > 0.
- Speed: the prior alone pins each connected component's overall level, which plain MM moves only
  slowly; after every MM update each component is shifted to the level that maximises the posterior (an
  exact 1-d line search: the likelihood ignores the shift). Still an ascent method, same fixed point.
- Normalisation: after the fit the log-strengths are shifted to mean 0 (geometric-mean strength 1); in
  `fit_grouped`, to mean 0 within each group. A shift changes no win probability.
- Disconnected candidates: components that never meet are tied together only by the prior (each sits
  around the reference), so their relative level carries no information from the data. For candidates
  that are never compared across groups (responses of different prompts), use `fit_grouped`: the MM
  updates of disjoint groups do not interact, so one grouped fit equals separate fits per group.
- Convergence on parameters: stop when the largest change of any log-strength is below `tol`, or after
  `max_iter` MM updates.
- Order independence: comparisons are sorted by (winner, loser, weight) first, so every float sum runs in
  the same order and the output is byte-identical whatever order the comparisons came in.
- Ranking ties (equal log-strengths) break by the smallest candidate index.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from labelbeam.transforms.inference.em import largest_change, run_em

NEWTON_STEPS = 50   # cap for the 1-d shift solve; it needs a handful


class BradleyTerryResult(NamedTuple):
    log_strength: np.ndarray   # [n_candidates], mean 0 (within each group for fit_grouped)
    iterations: int
    converged: bool


class Comparisons(NamedTuple):
    """Canonical comparisons: int64 winner/loser and float64 weight, sorted by (winner, loser, weight)."""
    winner: np.ndarray
    loser: np.ndarray
    weight: np.ndarray
    n_candidates: int


def canonical_comparisons(winner: np.ndarray, loser: np.ndarray, n_candidates: int,
                          weight: np.ndarray | None = None) -> Comparisons:
    """The comparisons in canonical order; ValueError on bad shapes, indices, weights or self-comparisons."""
    winner, loser = (np.asarray(a, dtype=np.int64) for a in (winner, loser))
    weight = np.ones(len(winner)) if weight is None else np.asarray(weight, dtype=np.float64)
    if not winner.shape == loser.shape == weight.shape or winner.ndim != 1:
        raise ValueError("winner, loser and weight must be 1-d arrays of equal length")
    for name, codes in (("winner", winner), ("loser", loser)):
        if len(codes) and (codes.min() < 0 or codes.max() >= n_candidates):
            raise ValueError(f"{name} must lie in [0, {n_candidates}); index the candidates before fitting")
    if (winner == loser).any():
        raise ValueError("a candidate cannot be compared with itself")
    if not (np.isfinite(weight) & (weight >= 0)).all():
        raise ValueError("weight must be finite and >= 0")
    order = np.lexsort((weight, loser, winner))
    return Comparisons(winner[order], loser[order], weight[order], int(n_candidates))


def mm_update(comparisons: Comparisons, log_strength: np.ndarray, prior: float) -> np.ndarray:
    """One MM step of every log-strength, including the prior's games against the reference (log 0)."""
    winner, loser, weight, n = comparisons
    wins = np.bincount(winner, weights=weight, minlength=n) + prior
    # weight / (gamma_winner + gamma_loser), in log space so large strengths cannot overflow
    per_game = weight * np.exp(-np.logaddexp(log_strength[winner], log_strength[loser]))
    games = (np.bincount(winner, weights=per_game, minlength=n) + np.bincount(loser, weights=per_game, minlength=n)
             + 2 * prior * np.exp(-np.logaddexp(log_strength, 0.0)))
    return np.log(wins) - np.log(games)


def components(comparisons: Comparisons) -> np.ndarray:
    """[n_candidates] connected-component label (its smallest candidate index) of the comparison graph."""
    label = np.arange(comparisons.n_candidates)
    while True:
        linked = np.minimum(label[comparisons.winner], label[comparisons.loser])
        new_label = label.copy()
        np.minimum.at(new_label, comparisons.winner, linked)
        np.minimum.at(new_label, comparisons.loser, linked)
        new_label = new_label[new_label]   # pointer jumping: labels point at smaller labels
        if np.array_equal(new_label, label):
            return label
        label = new_label


def best_shift(log_strength: np.ndarray, component: np.ndarray) -> np.ndarray:
    """The log-strengths shifted, per connected component, to maximise the prior's term.

    Within a component the likelihood ignores a common shift c, so only the prior's games against the
    reference choose it: c solves sum_i (1 - 2 sigmoid(s_i + c)) = 0. This exact line search along a
    direction MM barely moves (the prior is weak) turns thousands of MM steps into tens. Newton's method
    from c = 0, with steps clipped to +-1 so a far start cannot overshoot.
    """
    n = len(log_strength)
    shift = np.zeros(n)
    for _ in range(NEWTON_STEPS):
        p = np.exp(-np.logaddexp(0.0, -(log_strength + shift[component])))
        gradient = np.bincount(component, weights=1 - 2 * p, minlength=n)
        curvature = 2 * np.bincount(component, weights=p * (1 - p), minlength=n)
        step = np.clip(np.divide(gradient, curvature, out=np.zeros(n), where=curvature > 0), -1.0, 1.0)
        shift += step
        if np.abs(step).max(initial=0.0) < 1e-14:
            break
    return log_strength + shift[component]


def _check_options(prior: float, max_iter: int, tol: float) -> None:
    if not prior > 0:
        raise ValueError(f"prior must be > 0 (it keeps the strengths finite), got {prior}")
    if max_iter < 1 or not tol > 0:
        raise ValueError(f"max_iter must be >= 1 and tol > 0, got {max_iter}, {tol}")


def _fit(comparisons: Comparisons, prior: float, max_iter: int, tol: float) -> tuple[np.ndarray, int, bool]:
    """(MAP log-strengths relative to the reference, iterations, converged)."""
    component = components(comparisons)
    (log_strength,), iterations, converged = run_em(
        (np.zeros(comparisons.n_candidates),),
        lambda parameters: parameters[0],
        lambda log_strength, _: (best_shift(mm_update(comparisons, log_strength, prior), component),),
        largest_change, max_iter, tol)
    return log_strength, iterations, converged


def bradley_terry(winner: np.ndarray, loser: np.ndarray, n_candidates: int, weight: np.ndarray | None = None,
                  prior: float = 1.0, max_iter: int = 1000, tol: float = 1e-8) -> BradleyTerryResult:
    """Fit Bradley-Terry log-strengths (mean 0) by MM; see the module docstring for prior and stopping."""
    _check_options(prior, max_iter, tol)
    comparisons = canonical_comparisons(winner, loser, n_candidates, weight)
    if n_candidates == 0:
        return BradleyTerryResult(np.zeros(0), 0, True)
    log_strength, iterations, converged = _fit(comparisons, prior, max_iter, tol)
    return BradleyTerryResult(log_strength - log_strength.mean(), iterations, converged)


def fit_grouped(group: np.ndarray, winner: np.ndarray, loser: np.ndarray, n_candidates: int,
                weight: np.ndarray | None = None, prior: float = 1.0, max_iter: int = 1000,
                tol: float = 1e-8) -> BradleyTerryResult:
    """Bradley-Terry for many groups at once (e.g. responses within prompts) in one vectorised fit.

    group[c] is candidate c's group (any integers, shape [n_candidates]); both candidates of every
    comparison must be in the same group (ValueError otherwise). Log-strengths have mean 0 within each
    group, and equal what `bradley_terry` gives on each group alone (to within the stopping tolerance:
    the joint fit runs until its slowest group converges).
    """
    _check_options(prior, max_iter, tol)
    group = np.asarray(group)
    if group.shape != (n_candidates,):
        raise ValueError(f"group must have shape ({n_candidates},), one group per candidate, got {group.shape}")
    comparisons = canonical_comparisons(winner, loser, n_candidates, weight)
    if (group[comparisons.winner] != group[comparisons.loser]).any():
        raise ValueError("every comparison must be between two candidates of the same group")
    if n_candidates == 0:
        return BradleyTerryResult(np.zeros(0), 0, True)
    log_strength, iterations, converged = _fit(comparisons, prior, max_iter, tol)
    _, index = np.unique(group, return_inverse=True)
    means = np.bincount(index, weights=log_strength) / np.bincount(index)
    return BradleyTerryResult(log_strength - means[index], iterations, converged)


def win_probability(log_strength: np.ndarray, a: np.ndarray | int, b: np.ndarray | int) -> np.ndarray:
    """P(candidate a beats candidate b) = sigmoid(s_a - s_b), elementwise over index arrays a and b."""
    log_strength = np.asarray(log_strength, dtype=np.float64)
    difference = log_strength[a] - log_strength[b]
    return np.exp(-np.logaddexp(0.0, -difference))   # sigmoid without overflow


def ranking(log_strength: np.ndarray, group: np.ndarray | None = None) -> np.ndarray:
    """Candidate indices from strongest to weakest; equal log-strengths break by smallest index.

    With `group`, candidates are ordered by group (ascending) first, so each group's ranking is a
    contiguous run.
    """
    log_strength = np.asarray(log_strength, dtype=np.float64)
    index = np.arange(len(log_strength))
    keys = (index, -log_strength) if group is None else (index, -log_strength, np.asarray(group))
    return np.lexsort(keys)
