"""Bradley-Terry core: recovers simulated strengths, stays finite without a loss, the vectorised grouped
fit equals a plain per-prompt reference bit for bit, deterministic and order-independent."""
import numpy as np
import pytest

from labelbeam.transforms.inference.bradley_terry import (
    NEWTON_STEPS,
    best_shift,
    bradley_terry,
    canonical_comparisons,
    components,
    fit_grouped,
    group_means,
    mm_update,
    ranking,
    win_probability,
)


def simulate(seed: int, log_strength: np.ndarray, n_comparisons: int, offset: int = 0):
    """(winner, loser) from random pairs of distinct candidates, each outcome drawn from the model."""
    rng = np.random.default_rng(seed)
    n = len(log_strength)
    a = rng.integers(0, n, n_comparisons)
    b = (a + rng.integers(1, n, n_comparisons)) % n
    a_wins = rng.random(n_comparisons) < 1 / (1 + np.exp(log_strength[b] - log_strength[a]))
    return np.where(a_wins, a, b) + offset, np.where(a_wins, b, a) + offset


def rank_correlation(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.corrcoef(np.argsort(np.argsort(x)), np.argsort(np.argsort(y)))[0, 1])


def test_recovers_simulated_strengths():
    truth = np.linspace(-2, 2, 20)
    winner, loser = simulate(0, truth, 4_000)
    result = bradley_terry(winner, loser, 20)
    assert result.converged
    assert abs(result.log_strength.mean()) < 1e-12
    assert np.abs(result.log_strength - truth).max() < 0.3
    assert rank_correlation(result.log_strength, truth) > 0.97


def test_mle_fixed_point_when_prior_is_negligible():
    # With a tiny prior the fit solves the likelihood equations: expected wins = observed wins.
    truth = np.array([0.5, -0.3, 0.1, -0.3])
    winner, loser = simulate(1, truth, 2_000)
    s = bradley_terry(winner, loser, 4, prior=1e-9, tol=1e-12).log_strength
    expected = np.zeros(4)
    np.add.at(expected, winner, win_probability(s, winner, loser))
    np.add.at(expected, loser, win_probability(s, loser, winner))
    assert np.allclose(expected, np.bincount(winner, minlength=4), atol=1e-4)


def test_weights_count_as_repeated_comparisons():
    winner, loser = np.array([0, 1, 2, 0]), np.array([1, 2, 0, 2])
    weight = np.array([3.0, 1.0, 2.0, 0.5])
    weighted = bradley_terry(winner, loser, 3, weight=weight * 2, tol=1e-12)
    repeated = bradley_terry(np.repeat(winner, (weight * 2).astype(int)), np.repeat(loser, (weight * 2).astype(int)),
                             3, tol=1e-12)
    assert np.allclose(weighted.log_strength, repeated.log_strength, atol=1e-9)
    zero = bradley_terry(np.append(winner, 1), np.append(loser, 0), 3, weight=np.append(weight, 0.0), tol=1e-12)
    assert np.allclose(zero.log_strength, bradley_terry(winner, loser, 3, weight=weight, tol=1e-12).log_strength,
                       atol=1e-9)


def test_a_candidate_that_always_wins_stays_finite_and_ranks_first():
    truth = np.zeros(6)
    winner, loser = simulate(2, truth, 300)
    keep = (winner != 3) & (loser != 3)
    rng = np.random.default_rng(3)
    opponents = rng.choice([0, 1, 2, 4, 5], 40)
    winner = np.concatenate([winner[keep], np.full(40, 3)])   # candidate 3 beats everyone it meets
    loser = np.concatenate([loser[keep], opponents])
    result = bradley_terry(winner, loser, 6)
    assert result.converged and np.isfinite(result.log_strength).all()
    assert ranking(result.log_strength)[0] == 3
    assert 1 < result.log_strength[3] < 10


def test_a_candidate_that_always_loses_or_never_plays_stays_finite():
    winner, loser = np.array([0, 1, 0, 1, 2]), np.array([2, 2, 1, 0, 3])   # 3 never wins; 4 never plays
    result = bradley_terry(winner, loser, 5)
    assert result.converged and np.isfinite(result.log_strength).all()
    assert ranking(result.log_strength)[-1] == 3
    # Never compared: it sits on the prior's reference level, between the winners and the losers.
    assert result.log_strength[3] < result.log_strength[4] < result.log_strength[0]


def test_symmetric_data_gives_equal_strengths():
    # A cycle 0 > 1 > 2 > 0, twice, and a balanced pair 3 vs 4.
    winner, loser = np.array([0, 1, 2, 0, 1, 2, 3, 4]), np.array([1, 2, 0, 1, 2, 0, 4, 3])
    result = bradley_terry(winner, loser, 5)
    assert np.allclose(result.log_strength, 0.0, atol=1e-9)
    assert ranking(np.round(result.log_strength, 6)).tolist() == [0, 1, 2, 3, 4]   # ties: smallest index


def test_no_comparisons_and_no_candidates():
    result = bradley_terry(np.array([], dtype=int), np.array([], dtype=int), 3)
    assert result.log_strength.tolist() == [0.0, 0.0, 0.0] and result.converged
    empty = bradley_terry(np.array([], dtype=int), np.array([], dtype=int), 0)
    assert empty.log_strength.shape == (0,) and (empty.iterations, empty.converged) == (0, True)


# --- groups and disconnected components -------------------------------------------------------


def test_disconnected_components_are_fitted_independently():
    first, second = np.array([1.0, 0.0, -1.0]), np.array([0.5, -0.5])
    w1, l1 = simulate(4, first, 200)
    w2, l2 = simulate(5, second, 100, offset=3)
    winner, loser = np.concatenate([w1, w2]), np.concatenate([l1, l2])
    canonical = canonical_comparisons(winner, loser, 6)
    assert components(canonical).tolist() == [0, 0, 0, 3, 3, 5]
    joint = bradley_terry(winner, loser, 6, tol=1e-12)
    alone_first = bradley_terry(w1, l1, 3, tol=1e-12).log_strength
    alone_second = bradley_terry(w2 - 3, l2 - 3, 2, tol=1e-12).log_strength
    # Within a component the differences are what the component alone gives.
    assert np.allclose(np.diff(joint.log_strength[:3]), np.diff(alone_first), atol=1e-8)
    assert np.allclose(np.diff(joint.log_strength[3:5]), np.diff(alone_second), atol=1e-8)
    assert np.isfinite(joint.log_strength).all()


def test_grouped_fit_equals_separate_fits_per_group():
    rng = np.random.default_rng(6)
    sizes = [4, 2, 3, 5, 1]
    winner, loser, start = [], [], 0
    expected = []
    for g, size in enumerate(sizes):
        truth = rng.normal(0, 1, size)
        w, l = simulate(10 + g, truth, 30 * size if size > 1 else 0)
        winner.append(w + start)
        loser.append(l + start)
        expected.append(bradley_terry(w, l, size, tol=1e-12).log_strength)
        start += size
    group = np.repeat(np.arange(len(sizes))[::-1], sizes)   # group ids need not follow candidate order
    result = fit_grouped(group, np.concatenate(winner), np.concatenate(loser), start, tol=1e-12)
    assert result.converged
    assert np.array_equal(result.log_strength, np.concatenate(expected))   # each group stops on its own
    means = np.bincount(group, weights=result.log_strength) / np.bincount(group)
    assert np.allclose(means, 0.0, atol=1e-12)
    order = ranking(result.log_strength, group)
    assert (np.diff(group[order]) >= 0).all()   # each group's ranking is one contiguous run
    for g in range(len(sizes)):
        run = order[group[order] == g]
        assert (np.diff(result.log_strength[run]) <= 0).all()


def reference_fit(winner, loser, n, weight, prior=1.0, max_iter=1000, tol=1e-8):
    """One prompt fitted the plain way, as before the grouped fit was vectorised: canonical order, then per
    MM iteration the update, a Newton level shift per connected component (found by union-find), and a
    stop on the largest change. (log-strengths with mean 0, iterations, converged)."""
    order = np.lexsort((weight, loser, winner))
    winner, loser, weight = winner[order], loser[order], weight[order]
    parent = list(range(n))

    def root(i):
        while parent[i] != i:
            i = parent[i]
        return i

    for w, l in zip(winner.tolist(), loser.tolist()):
        a, b = sorted((root(w), root(l)))
        parent[b] = a   # the root is the component's smallest candidate
    component = np.array([root(i) for i in range(n)], dtype=np.int64)
    s = np.zeros(n)
    for iteration in range(1, max_iter + 1):
        wins = np.bincount(winner, weights=weight, minlength=n) + prior
        per_game = weight * np.exp(-np.logaddexp(s[winner], s[loser]))
        games = (np.bincount(winner, weights=per_game, minlength=n) + np.bincount(loser, weights=per_game, minlength=n)
                 + 2 * prior * np.exp(-np.logaddexp(s, 0.0)))
        new = np.log(wins) - np.log(games)
        shift = np.zeros(n)
        for _ in range(NEWTON_STEPS):
            p = np.exp(-np.logaddexp(0.0, -(new + shift[component])))
            gradient = np.bincount(component, weights=1 - 2 * p, minlength=n)
            curvature = 2 * np.bincount(component, weights=p * (1 - p), minlength=n)
            step = np.clip(np.divide(gradient, curvature, out=np.zeros(n), where=curvature > 0), -1.0, 1.0)
            shift += step
            if np.abs(step).max(initial=0.0) < 1e-14:
                break
        new = new + shift[component]
        moved, s = np.abs(new - s).max(initial=0.0), new
        if moved < tol:
            return s - s.mean(), iteration, True
    return s - s.mean(), max_iter, False


def random_prompts(seed: int):
    """Prompts of 1-12 candidates (flat, each prompt's candidates consecutive) with the awkward cases every
    time: a 3-cycle (exact ties), a draw entered as two half-weight comparisons, a prompt whose candidates
    never win (no comparisons), one whose only comparison has weight 0, a candidate that always loses, a
    single comparison, a lone candidate, and two pairs that never meet within a prompt (these eight
    first, in this order, then random ones)."""
    rng = np.random.default_rng(seed)
    fixed = [  # (n_candidates, winners, losers, weights), in local indices
        (3, [0, 1, 2], [1, 2, 0], [1.0, 1.0, 1.0]),
        (2, [0, 1], [1, 0], [0.5, 0.5]),
        (4, [], [], []),
        (2, [1], [0], [0.0]),
        (3, [0, 1, 0, 1], [2, 2, 1, 0], [1.0, 1.0, 1.0, 1.0]),
        (2, [1], [0], [1.0]),
        (1, [], [], []),
        (4, [0, 2, 2], [1, 3, 3], [1.0, 2.0, 1.0]),
    ]
    prompts = list(fixed)
    for _ in range(int(rng.integers(4, 10))):
        n = int(rng.integers(2, 13))
        m = int(rng.integers(1, 5 * n))
        a = rng.integers(0, n, m)
        b = (a + rng.integers(1, n, m)) % n
        truth = rng.normal(0, 1.5, n)
        a_wins = rng.random(m) < 1 / (1 + np.exp(truth[b] - truth[a]))
        weight = np.where(rng.random(m) < 0.2, 0.5, 1.0)
        prompts.append((n, np.where(a_wins, a, b), np.where(a_wins, b, a), weight))
    return [(n, np.asarray(w, dtype=np.int64), np.asarray(l, dtype=np.int64), np.asarray(wt, dtype=float))
            for n, w, l, wt in prompts]


@pytest.mark.parametrize("seed", range(8))
def test_grouped_fit_equals_the_plain_per_prompt_reference_bit_for_bit(seed):
    prompts = random_prompts(seed)
    rng = np.random.default_rng(100 + seed)
    sizes = np.array([n for n, *_ in prompts])
    n_total = int(sizes.sum())
    # Group ids in no particular order, and the prompts' candidates interleaved over the global indices:
    # a candidate's position among its prompt's candidates is kept, as the reference's local index.
    group_id = rng.permutation(len(prompts)) * 7 - 20
    slot = np.sort(rng.permutation(n_total))
    owner = rng.permutation(np.repeat(np.arange(len(prompts)), sizes))
    index_of = [slot[owner == g] for g in range(len(prompts))]   # global index of each local candidate
    group = np.empty(n_total, dtype=np.int64)
    winner, loser, weight, expected, iterations = [], [], [], np.empty(n_total), []
    prior, max_iter = (0.5, 1000) if seed % 2 else (1.0, 1000)
    for g, (n, w, l, wt) in enumerate(prompts):
        group[index_of[g]] = group_id[g]
        winner.append(index_of[g][w])
        loser.append(index_of[g][l])
        weight.append(wt)
        strength, its, converged = reference_fit(w, l, n, wt, prior=prior, max_iter=max_iter)
        assert converged
        expected[index_of[g]] = strength
        iterations.append(its)
        alone = bradley_terry(w, l, n, weight=wt, prior=prior)
        assert np.array_equal(alone.log_strength, strength) and alone.iterations == its
    winner, loser, weight = (np.concatenate(x) for x in (winner, loser, weight))
    shuffle = rng.permutation(len(winner))
    result = fit_grouped(group, winner[shuffle], loser[shuffle], n_total, weight=weight[shuffle], prior=prior)
    assert np.array_equal(result.log_strength, expected)
    assert (result.iterations, result.converged) == (max(iterations), True)
    # The awkward cases came out as the model says: ties where nothing tells the candidates apart.
    cycle, draw, never_compared, zero_weight, always_loses = (result.log_strength[index_of[g]] for g in range(5))
    assert np.allclose(cycle, 0.0, atol=1e-9) and np.allclose(draw, 0.0, atol=1e-9)
    assert (never_compared == 0).all() and (zero_weight == 0).all()
    assert ranking(always_loses)[-1] == 2 and np.isfinite(always_loses).all()


def test_grouped_fit_stops_each_group_at_max_iter_like_the_reference():
    prompts = random_prompts(11)
    start = np.concatenate(([0], np.cumsum([n for n, *_ in prompts])))
    expected, iterations, converged = [], [], []
    for n, w, l, wt in prompts:
        strength, its, done = reference_fit(w, l, n, wt, max_iter=4)
        expected.append(strength)
        iterations.append(its)
        converged.append(done)
    assert not all(converged) and any(converged)   # some groups stop early, others hit the cap
    result = fit_grouped(np.repeat(np.arange(len(prompts)), np.diff(start)),
                         np.concatenate([w + s for (_, w, _, _), s in zip(prompts, start)]),
                         np.concatenate([l + s for (_, _, l, _), s in zip(prompts, start)]), int(start[-1]),
                         weight=np.concatenate([wt for *_, wt in prompts]), max_iter=4)
    assert np.array_equal(result.log_strength, np.concatenate(expected))
    assert (result.iterations, result.converged) == (4, False)


def test_grouped_best_shift_equals_a_call_per_group():
    rng = np.random.default_rng(14)
    sizes = np.array([3, 1, 5, 2, 9])
    start = np.concatenate(([0], np.cumsum(sizes)))
    log_strength = rng.normal(0, 4, start[-1])   # far from the level: Newton needs a different number of steps
    log_strength[start[1]:start[2]] += 30
    component = np.arange(start[-1])
    for a, b in zip(start[:-1], start[1:]):
        component[a:b] = a + (np.arange(b - a) >= 2) * 2 if b - a > 2 else a   # up to two components each
    grouped = best_shift(log_strength, component, start)
    alone = [best_shift(log_strength[a:b], component[a:b] - a) for a, b in zip(start[:-1], start[1:])]
    assert np.array_equal(grouped, np.concatenate(alone))


def test_group_means_equal_numpy_means_bit_for_bit():
    # numpy's 1-d mean sums pairwise from 8 values on; a running sum would differ in the last bits.
    rng = np.random.default_rng(15)
    sizes = np.concatenate([np.arange(1, 40), [127, 128, 129, 300], rng.integers(1, 20, 50)])
    start = np.concatenate(([0], np.cumsum(sizes)))
    values = rng.normal(0, 1, start[-1]) * rng.uniform(0.01, 100, start[-1])
    assert np.array_equal(group_means(values, start),
                          [values[a:b].mean() for a, b in zip(start[:-1], start[1:])])


def test_grouped_fit_rejects_comparisons_across_groups():
    with pytest.raises(ValueError, match="same group"):
        fit_grouped(np.array([0, 0, 1]), np.array([0, 1]), np.array([1, 2]), 3)
    with pytest.raises(ValueError, match="one group per candidate"):
        fit_grouped(np.array([0, 0]), np.array([0]), np.array([1]), 3)


# --- determinism and order --------------------------------------------------------------------


def test_comparison_order_does_not_change_the_output():
    winner, loser = simulate(7, np.linspace(-1, 1, 8), 500)
    weight = np.random.default_rng(8).uniform(0.5, 2.0, len(winner))
    first = bradley_terry(winner, loser, 8, weight=weight)
    order = np.random.default_rng(9).permutation(len(winner))
    again = bradley_terry(winner[order], loser[order], 8, weight=weight[order])
    assert np.array_equal(first.log_strength, again.log_strength)
    assert (first.iterations, first.converged) == (again.iterations, again.converged)
    repeat = bradley_terry(winner, loser, 8, weight=weight)
    assert np.array_equal(first.log_strength, repeat.log_strength)


def test_fit_is_the_map_of_the_documented_prior():
    # Log-posterior: sum_k w_k log sigmoid(s_winner - s_loser) + prior * sum_i [log sigmoid(s_i) + log sigmoid(-s_i)]
    # (prior pseudo-wins and pseudo-losses against a reference of log-strength 0). Its gradient must vanish
    # at the fit, once the mean-0 normalisation is undone by the optimal level shift.
    winner, loser = simulate(10, np.array([0.3, -0.2, 0.0, 1.5]), 60)
    weight = np.random.default_rng(13).uniform(0.2, 1.0, len(winner))
    comparisons = canonical_comparisons(winner, loser, 4, weight)
    prior = 1.5
    fitted = bradley_terry(winner, loser, 4, weight=weight, prior=prior, tol=1e-13).log_strength
    s = best_shift(fitted, components(comparisons))
    lose = weight * win_probability(s, loser, winner)    # d/ds_winner of w log sigmoid(s_winner - s_loser)
    gradient = (np.bincount(winner, weights=lose, minlength=4) - np.bincount(loser, weights=lose, minlength=4)
                + prior * (1 - 2 / (1 + np.exp(-s))))
    assert np.abs(gradient).max() < 1e-9
    assert np.allclose(mm_update(comparisons, s, prior), s, atol=1e-9)   # and MM's fixed point


def test_max_iter_cap_is_reported():
    winner, loser = simulate(11, np.linspace(-1, 1, 10), 500)
    result = bradley_terry(winner, loser, 10, max_iter=1, tol=1e-12)
    assert (result.iterations, result.converged) == (1, False)


# --- win probability and ranking --------------------------------------------------------------


def test_win_probability_is_in_open_unit_interval_and_complementary():
    winner, loser = simulate(12, np.linspace(-3, 3, 7), 400)
    s = bradley_terry(winner, loser, 7).log_strength
    a, b = np.meshgrid(np.arange(7), np.arange(7))
    p, q = win_probability(s, a, b), win_probability(s, b, a)
    assert ((p > 0) & (p < 1)).all()
    assert np.allclose(p + q, 1.0, atol=1e-15)
    assert np.allclose(np.diag(p), 0.5)
    assert win_probability(s, 6, 0) > 0.9
    assert win_probability(np.array([0.0, np.log(3.0)]), 1, 0) == pytest.approx(0.75)
    with np.errstate(all="raise"):   # no overflow at extreme differences
        assert 0 < win_probability(np.array([0.0, 700.0]), 0, 1) < 1e-300
        assert win_probability(np.array([0.0, 700.0]), 1, 0) == 1.0


def test_ranking_breaks_ties_by_smallest_index():
    assert ranking(np.array([1.0, 2.0, 2.0, 0.0, 2.0])).tolist() == [1, 2, 4, 0, 3]
    assert ranking(np.zeros(4)).tolist() == [0, 1, 2, 3]
    assert ranking(np.array([1.0, 2.0, 2.0, 0.0]), np.array([1, 1, 0, 0])).tolist() == [2, 3, 1, 0]


@pytest.mark.parametrize("winner, loser, weight, message", [
    ([0, 3], [1, 0], None, "winner"),
    ([0, 1], [1, -1], None, "loser"),
    ([0, 1], [0, 2], None, "itself"),
    ([0, 1], [1, 2], [1.0, -1.0], "weight"),
    ([0, 1], [1, 2], [1.0, np.nan], "weight"),
    ([0, 1], [1], None, "equal length"),
])
def test_malformed_comparisons_are_rejected(winner, loser, weight, message):
    with pytest.raises(ValueError, match=message):
        bradley_terry(np.array(winner), np.array(loser), 3, weight=None if weight is None else np.array(weight))


def test_prior_must_be_positive():
    with pytest.raises(ValueError, match="prior"):
        bradley_terry(np.array([0]), np.array([1]), 2, prior=0.0)
    with pytest.raises(ValueError, match="prior"):
        fit_grouped(np.zeros(0, dtype=int), np.array([], dtype=int), np.array([], dtype=int), 0, prior=-1.0)
