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
  `max_iter` MM updates. In `fit_grouped` every group stops by this test on its own log-strengths (and
  the level shift's Newton steps too), so a group's result does not depend on which groups share the fit.
- Many groups, one fit: `fit_grouped` runs the MM updates of all groups still iterating as whole-array
  operations (bincount sums over the flat comparisons) and drops a group from the arrays once it stops,
  so the numpy calls per iteration do not grow with the number of groups (a loop calling
  `bradley_terry` per prompt pays them once per prompt). Its result is bit for bit what `bradley_terry`
  gives on each group alone.
- Order independence: comparisons are sorted by (winner, loser, weight) first, so every float sum runs in
  the same order and the output is byte-identical whatever order the comparisons came in. `fit_grouped`
  numbers each group's candidates consecutively in their original order before sorting, so each group's
  sums run in the order a fit of that group alone would use.
- Ranking ties (equal log-strengths) break by the smallest candidate index.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

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


def _checked(winner: np.ndarray, loser: np.ndarray, n_candidates: int,
             weight: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """int64 winner/loser and float64 weight; ValueError on bad shapes, indices, weights or self-comparisons."""
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
    return winner, loser, weight


def canonical_comparisons(winner: np.ndarray, loser: np.ndarray, n_candidates: int,
                          weight: np.ndarray | None = None) -> Comparisons:
    """The comparisons in canonical order; ValueError on bad shapes, indices, weights or self-comparisons."""
    winner, loser, weight = _checked(winner, loser, n_candidates, weight)
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


def group_max(values: np.ndarray, group_start: np.ndarray) -> np.ndarray:
    """[n_groups] largest value of each group's run values[group_start[g]:group_start[g + 1]] (none empty)."""
    if len(values) == 0:
        return np.zeros(len(group_start) - 1)
    return np.maximum.reduceat(values, group_start[:-1])


def best_shift(log_strength: np.ndarray, component: np.ndarray,
               group_start: np.ndarray | None = None) -> np.ndarray:
    """The log-strengths shifted, per connected component, to maximise the prior's term.

    Within a component the likelihood ignores a common shift c, so only the prior's games against the
    reference choose it: c solves sum_i (1 - 2 sigmoid(s_i + c)) = 0. This exact line search along a
    direction MM barely moves (the prior is weak) turns thousands of MM steps into tens. Newton's method
    from c = 0, with steps clipped to +-1 so a far start cannot overshoot.

    With `group_start` (group g is candidates group_start[g]:group_start[g + 1], none empty, and no
    component spans two groups) each group stops stepping by its own test, so the result is what a call
    per group would give; without it all candidates are one group.
    """
    n = len(log_strength)
    group_start = np.array([0, n]) if group_start is None else group_start
    shift = np.zeros(n)
    stepping = True   # every group steps; once one stops, per candidate: does its group still step
    for _ in range(NEWTON_STEPS):
        p = np.exp(-np.logaddexp(0.0, -(log_strength + shift[component])))
        gradient = np.bincount(component, weights=1 - 2 * p, minlength=n)
        curvature = 2 * np.bincount(component, weights=p * (1 - p), minlength=n)
        step = np.clip(np.divide(gradient, curvature, out=np.zeros(n), where=(curvature > 0) & stepping),
                       -1.0, 1.0)
        shift += step
        still = group_max(np.abs(step), group_start) >= 1e-14
        if not still.all():
            if not still.any():
                break
            stepping = np.repeat(still, np.diff(group_start))
    return log_strength + shift[component]


def _check_options(prior: float, max_iter: int, tol: float) -> None:
    if not prior > 0:
        raise ValueError(f"prior must be > 0 (it keeps the strengths finite), got {prior}")
    if max_iter < 1 or not tol > 0:
        raise ValueError(f"max_iter must be >= 1 and tol > 0, got {max_iter}, {tol}")


class _Running(NamedTuple):
    """The groups still iterating, their candidates renumbered 0.. in the original order (so the
    comparisons stay in canonical order and every sum keeps its order when groups drop out)."""
    comparisons: Comparisons
    component: np.ndarray       # component labels, renumbered like the candidates
    group_start: np.ndarray     # [n_running + 1] each running group's run of candidates
    candidates: np.ndarray      # original index of each running candidate
    groups: np.ndarray          # original index of each running group


def _keep(running: _Running, keep: np.ndarray) -> tuple[_Running, np.ndarray]:
    """(`running` restricted to the groups where keep [n_running] is True, which running candidates stay)."""
    sizes = np.diff(running.group_start)
    kept = np.repeat(keep, sizes)
    renumber = np.cumsum(kept) - 1
    comparisons = running.comparisons
    played = kept[comparisons.winner]   # both candidates of a comparison are in one group
    return _Running(Comparisons(renumber[comparisons.winner[played]], renumber[comparisons.loser[played]],
                                comparisons.weight[played], int(kept.sum())),
                    renumber[running.component[kept]], np.concatenate(([0], np.cumsum(sizes[keep]))),
                    running.candidates[kept], running.groups[keep]), kept


def _fit(comparisons: Comparisons, group_start: np.ndarray, prior: float, max_iter: int,
         tol: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(MAP log-strengths relative to the reference, [n_groups] iterations, [n_groups] converged).

    The candidates of group g are group_start[g]:group_start[g + 1] (none empty) and no comparison leaves
    its group. Each group runs MM updates until its own largest change is below `tol` (then it is
    dropped from the running arrays, so its values stay as they were at that iteration) or `max_iter`.
    """
    n_groups = len(group_start) - 1
    log_strength = np.zeros(comparisons.n_candidates)
    iterations, converged = np.full(n_groups, max_iter), np.zeros(n_groups, dtype=bool)
    running = _Running(comparisons, components(comparisons), group_start, np.arange(comparisons.n_candidates),
                       np.arange(n_groups))
    current = np.zeros(comparisons.n_candidates)   # the running candidates' values
    for iteration in range(1, max_iter + 1):
        new = best_shift(mm_update(running.comparisons, current, prior), running.component, running.group_start)
        done = group_max(np.abs(new - current), running.group_start) < tol
        current = new
        if done.any():
            log_strength[running.candidates] = current
            iterations[running.groups[done]] = iteration
            converged[running.groups[done]] = True
            running, kept = _keep(running, ~done)
            current = current[kept]
            if len(running.groups) == 0:
                break
    log_strength[running.candidates] = current   # groups stopped by max_iter
    return log_strength, iterations, converged


def group_means(values: np.ndarray, group_start: np.ndarray) -> np.ndarray:
    """[n_groups] mean of each group's run of values, bit for bit what values[a:b].mean() gives.

    numpy sums a 1-d array pairwise, which a bincount (a running sum) does not reproduce from 8 values
    on; summing the rows of a [groups, size] array does, so the groups are taken one size at a time.
    """
    sizes = np.diff(group_start)
    means = np.empty(len(sizes))
    for size in np.unique(sizes):   # one pass per distinct group size, not per group
        of_size = np.flatnonzero(sizes == size)
        means[of_size] = values[group_start[of_size, None] + np.arange(size)].sum(axis=1) / size
    return means


def bradley_terry(winner: np.ndarray, loser: np.ndarray, n_candidates: int, weight: np.ndarray | None = None,
                  prior: float = 1.0, max_iter: int = 1000, tol: float = 1e-8) -> BradleyTerryResult:
    """Fit Bradley-Terry log-strengths (mean 0) by MM; see the module docstring for prior and stopping."""
    _check_options(prior, max_iter, tol)
    comparisons = canonical_comparisons(winner, loser, n_candidates, weight)
    if n_candidates == 0:
        return BradleyTerryResult(np.zeros(0), 0, True)
    log_strength, iterations, converged = _fit(comparisons, np.array([0, n_candidates]), prior, max_iter, tol)
    return BradleyTerryResult(log_strength - log_strength.mean(), int(iterations[0]), bool(converged[0]))


def fit_grouped(group: np.ndarray, winner: np.ndarray, loser: np.ndarray, n_candidates: int,
                weight: np.ndarray | None = None, prior: float = 1.0, max_iter: int = 1000,
                tol: float = 1e-8) -> BradleyTerryResult:
    """Bradley-Terry for many groups at once (e.g. responses within prompts) in one vectorised fit.

    group[c] is candidate c's group (any integers, shape [n_candidates]); both candidates of every
    comparison must be in the same group (ValueError otherwise). Log-strengths have mean 0 within each
    group and equal, bit for bit, what `bradley_terry` gives on each group alone, its candidates numbered
    in their original order: each group stops by its own test. `iterations` is the most any group ran,
    `converged` whether every group converged.
    """
    _check_options(prior, max_iter, tol)
    group = np.asarray(group)
    if group.shape != (n_candidates,):
        raise ValueError(f"group must have shape ({n_candidates},), one group per candidate, got {group.shape}")
    winner, loser, weight = _checked(winner, loser, n_candidates, weight)
    if (group[winner] != group[loser]).any():
        raise ValueError("every comparison must be between two candidates of the same group")
    if n_candidates == 0:
        return BradleyTerryResult(np.zeros(0), 0, True)
    _, index = np.unique(group, return_inverse=True)
    by_group = np.argsort(index, kind="stable")   # each group's candidates consecutive, in their order
    position = np.empty(n_candidates, dtype=np.int64)
    position[by_group] = np.arange(n_candidates)
    group_start = np.concatenate(([0], np.cumsum(np.bincount(index))))
    comparisons = canonical_comparisons(position[winner], position[loser], n_candidates, weight)
    log_strength, iterations, converged = _fit(comparisons, group_start, prior, max_iter, tol)
    log_strength -= np.repeat(group_means(log_strength, group_start), np.diff(group_start))
    return BradleyTerryResult(log_strength[position], int(iterations.max()), bool(converged.all()))


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
