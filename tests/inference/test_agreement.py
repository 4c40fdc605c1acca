"""Agreement statistics: published worked examples, exact additivity of partials, hand-made cases."""
import math
from fractions import Fraction

import numpy as np
import pytest

from labelbeam.transforms.inference.agreement import (
    METRICS,
    PAIRWISE_SCHEMA,
    IntervalStatistics,
    alpha_from_coincidences,
    class_counts,
    coincidences,
    fleiss_kappa,
    fleiss_statistics,
    interval_alpha,
    interval_statistics,
    pairwise_agreement,
    sum_coincidences,
    sum_fleiss_statistics,
    sum_interval_statistics,
    vote_entropy,
)

# Krippendorff, K. (2011). "Computing Krippendorff's Alpha-Reliability", Annenberg School for Communication
# Departmental Papers 43 (repository.upenn.edu/asc_papers/43): reliability data of 4 observers x 12 units,
# values 1..5, None = not coded. Published: nominal 0.743, ordinal 0.815, interval 0.849, ratio 0.797.
# The matrix as also used in the tests of the `krippendorff` PyPI package (pln-fing-udelar/fast-krippendorff,
# tests/test_krippendorff.py: ordinal 0.815, ratio 0.797).
KRIPPENDORFF_2011 = [
    # units: 1     2  3  4  5  6  7  8  9  10    11    12
    [1,    2, 3, 3, 2, 1, 4, 1, 2, None, None, None],   # observer A
    [1,    2, 3, 3, 2, 2, 4, 1, 2, 5,    None, 3],      # observer B
    [None, 3, 3, 3, 2, 3, 4, 2, 2, 5,    1,    None],   # observer C
    [1,    2, 3, 3, 2, 4, 4, 1, 2, 5,    1,    None],   # observer D
]
# The paper's coincidence matrix (values 1..5), times 3: o_11 = 7, o_12 = 4/3, ...
KRIPPENDORFF_2011_COINCIDENCES_X3 = [
    [21, 4, 1, 1, 0],
    [4, 30, 4, 1, 0],
    [1, 4, 24, 1, 0],
    [1, 1, 1, 12, 0],
    [0, 0, 0, 0, 9],
]

# Wikipedia, "Krippendorff's alpha", section "A computational example": 3 coders x 15 units, values 1..4,
# nominal alpha 0.691. The same data (sample.py there) in the `krippendorff` package's tests pins nominal
# 0.691358 and interval 0.810845 (pln-fing-udelar/fast-krippendorff, tests/test_krippendorff.py).
WIKIPEDIA_KRIPPENDORFF = [
    [None, None, None, None, None, 3, 4, 1, 2, 1, 1, 3, 3, None, 3],      # coder A
    [1, None, 2, 1, 3, 3, 4, 3, None, None, None, None, None, None, None],  # coder B
    [None, None, 2, 1, 3, 4, 4, None, 2, 1, 1, 3, 3, None, 4],            # coder C
]

# Wikipedia, "Fleiss' kappa", section "Worked example" (after Fleiss 1971): 10 subjects, 14 raters each,
# 5 categories; cell = raters who put the subject in the category. Published: P_bar = 0.378,
# P_e = 0.213, kappa = 0.210.
FLEISS_WIKIPEDIA = [
    [0, 0, 0, 0, 14],
    [0, 2, 6, 4, 2],
    [0, 0, 3, 5, 6],
    [0, 3, 9, 2, 0],
    [2, 2, 8, 1, 1],
    [7, 7, 0, 0, 0],
    [3, 2, 6, 3, 0],
    [2, 5, 3, 2, 2],
    [6, 5, 2, 1, 0],
    [0, 2, 2, 3, 7],
]


def votes_of(matrix):
    """(item, annotator, value) arrays of an observers x units reliability matrix; None = missing."""
    rows = [(unit, observer, value) for observer, row in enumerate(matrix)
            for unit, value in enumerate(row) if value is not None]
    item, annotator, value = (np.array(column) for column in zip(*rows))
    return item, annotator, value


def votes_of_counts(table):
    """(item, label) arrays of an items x classes count table."""
    counts = np.asarray(table)
    item = np.repeat(np.arange(counts.shape[0]), counts.sum(axis=1))
    label = np.concatenate([np.repeat(np.arange(counts.shape[1]), row) for row in counts])
    return item, label


def random_votes(rng, n_items=400, n_annotators=30, n_classes=4, max_votes=7):
    """Votes with 0..max_votes distinct annotators per item and a label that usually follows a truth."""
    items, annotators = [], []
    for i in range(n_items):
        chosen = rng.choice(n_annotators, size=rng.integers(0, max_votes + 1), replace=False)
        items.append(np.full(len(chosen), i))
        annotators.append(chosen)
    item, annotator = np.concatenate(items), np.concatenate(annotators)
    truth = rng.integers(0, n_classes, n_items)
    noise = rng.random(len(item)) < 0.35
    label = np.where(noise, rng.integers(0, n_classes, len(item)), truth[item])
    return item, annotator, label


# ---------------------------------------------------------------------------------------------------
# Published worked examples


def test_krippendorff_2011_coincidences_and_alphas():
    item, _, value = votes_of(KRIPPENDORFF_2011)
    table = coincidences(item, value - 1, n_classes=5)   # classes 0..4 stand for values 1..5
    # Unit 12 has one value: not pairable, so n = 40 of the 41 values.
    assert table.pairable.tolist() == [9, 13, 10, 5, 3]
    np.testing.assert_allclose(table.matrix * 3, KRIPPENDORFF_2011_COINCIDENCES_X3, atol=1e-7)
    assert np.array_equal(table.units, table.units.T)

    values = np.arange(1, 6)
    nominal = alpha_from_coincidences(table, "nominal")
    assert round(nominal, 3) == 0.743
    # The paper's arithmetic: 1 - (n - 1) * sum_{c != k} o_ck / (n^2 - sum n_c^2) = 1 - 39 * 8 / 1216.
    assert nominal == pytest.approx(float(1 - Fraction(39 * 8, 1216)), abs=1e-9)
    assert round(alpha_from_coincidences(table, "ordinal", values), 3) == 0.815
    assert round(alpha_from_coincidences(table, "interval", values), 3) == 0.849
    assert round(alpha_from_coincidences(table, "ratio", values), 3) == 0.797


def test_krippendorff_2011_interval_alpha_of_float_ratings():
    item, _, value = votes_of(KRIPPENDORFF_2011)
    statistics = interval_statistics(item, value.astype(np.float64))
    assert statistics.n == 40
    alpha = interval_alpha(statistics)
    assert round(alpha, 3) == 0.849
    # Both routes agree: sufficient statistics and the coincidence matrix with the interval metric.
    table = coincidences(item, value - 1, n_classes=5)
    assert alpha == pytest.approx(alpha_from_coincidences(table, "interval", np.arange(1, 6)), abs=1e-9)


def test_wikipedia_krippendorff_example():
    item, _, value = votes_of(WIKIPEDIA_KRIPPENDORFF)
    table = coincidences(item, value - 1, n_classes=4)
    assert round(alpha_from_coincidences(table, "nominal"), 3) == 0.691
    assert alpha_from_coincidences(table, "nominal") == pytest.approx(0.691358, abs=1e-6)
    assert round(interval_alpha(interval_statistics(item, value)), 3) == 0.811
    assert interval_alpha(interval_statistics(item, value)) == pytest.approx(0.810845, abs=1e-6)


def test_fleiss_1971_wikipedia_worked_example():
    item, label = votes_of_counts(FLEISS_WIKIPEDIA)
    statistics = fleiss_statistics(item, label, n_classes=5)
    assert (statistics.items, statistics.min_votes, statistics.max_votes) == (10, 14, 14)
    assert statistics.class_totals.tolist() == [20, 28, 39, 21, 32]   # the example's column sums
    result = fleiss_kappa(statistics)
    assert result.reason is None
    assert round(result.kappa, 3) == 0.210
    # The example's intermediates: P_bar = 0.378 and P_e = 0.213.
    n, total = 14, 140
    p_bar = (statistics.sum_squares - 10 * n) / (10 * n * (n - 1))
    p_e = sum((t / total) ** 2 for t in statistics.class_totals)
    assert (round(p_bar, 3), round(p_e, 3)) == (0.378, 0.213)
    assert result.kappa == pytest.approx((p_bar - p_e) / (1 - p_e), rel=1e-12)


# ---------------------------------------------------------------------------------------------------
# Additivity: partials of a random split of items sum to the whole, bit for bit


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_partials_of_a_random_split_sum_to_the_whole_exactly(seed):
    rng = np.random.default_rng(seed)
    item, _, label = random_votes(rng)
    rating = label + rng.normal(0.0, 0.37, len(item))   # not on any grid
    bucket = rng.integers(0, 5, item.max() + 1)[item]     # a bucket holds all votes of its items

    def shuffled(mask):
        order = rng.permutation(np.flatnonzero(mask))      # vote order inside a bucket is arbitrary
        return item[order], label[order], rating[order]

    parts = [shuffled(bucket == b) for b in range(5)]
    whole_c = coincidences(item, label, 4)
    whole_i = interval_statistics(item, rating)
    whole_f = fleiss_statistics(item, label, 4)
    summed_c = sum_coincidences(coincidences(i, lab, 4) for i, lab, _ in parts[::-1])
    summed_i = sum_interval_statistics(interval_statistics(i, r) for i, _, r in parts)
    summed_f = sum_fleiss_statistics(fleiss_statistics(i, lab, 4) for i, lab, _ in parts)

    assert np.array_equal(summed_c.units, whole_c.units) and np.array_equal(summed_c.pairable, whole_c.pairable)
    for metric in METRICS:
        values = np.arange(1, 5)
        assert alpha_from_coincidences(summed_c, metric, values) == alpha_from_coincidences(whole_c, metric, values)
    assert summed_i == whole_i
    assert interval_alpha(summed_i) == interval_alpha(whole_i)
    assert summed_f.items == whole_f.items and summed_f.sum_squares == whole_f.sum_squares
    assert np.array_equal(summed_f.class_totals, whole_f.class_totals)
    assert (summed_f.min_votes, summed_f.max_votes) == (whole_f.min_votes, whole_f.max_votes)


def test_interval_statistics_of_wide_ratings_are_exact_and_shift_invariant():
    # Ratings near 1e7: their squares leave the fast int64 path of the exact sums.
    rng = np.random.default_rng(5)
    item, _, label = random_votes(rng, n_items=200)
    rating = label + rng.normal(0.0, 0.5, len(item))
    shifted = rating + 1e7
    halves = item % 2 == 0
    whole = interval_statistics(item, shifted)
    assert interval_statistics(item[halves], shifted[halves]) + interval_statistics(item[~halves], shifted[~halves]) \
        == whole
    # Alpha depends on differences only; the shift costs float64 digits of the ratings themselves.
    assert interval_alpha(whole) == pytest.approx(interval_alpha(interval_statistics(item, rating)), abs=1e-6)


# ---------------------------------------------------------------------------------------------------
# Degenerate and edge cases


def test_alpha_is_one_on_perfect_agreement():
    # Items 0..3 with 2-4 agreeing votes, item 4 with a single vote (not pairable, ignored).
    item = np.array([0, 0, 1, 1, 1, 2, 2, 2, 2, 3, 3, 4])
    label = np.array([0, 0, 2, 2, 2, 1, 1, 1, 1, 0, 0, 2])
    table = coincidences(item, label, 3)
    for metric in METRICS:
        assert alpha_from_coincidences(table, metric, np.array([1.0, 2.0, 5.0])) == 1.0
    ratings = np.array([0.1, 2.7, 1e-3])[label]            # not representable in binary
    assert interval_alpha(interval_statistics(item, ratings)) == 1.0


def test_alpha_undefined_without_pairs_or_variation():
    assert math.isnan(alpha_from_coincidences(coincidences([0, 1, 2], [0, 1, 0], 2)))   # one vote per item
    assert math.isnan(alpha_from_coincidences(coincidences([0, 0, 1, 1], [1, 1, 1, 1], 2)))   # one value only
    assert math.isnan(alpha_from_coincidences(coincidences([], [], 3)))
    assert math.isnan(interval_alpha(interval_statistics([0, 0, 1, 1], [0.3, 0.3, 0.3, 0.3])))
    assert math.isnan(interval_alpha(interval_statistics([], [])))
    assert interval_statistics([0, 1], [1.0, 2.0]) == IntervalStatistics()


def test_alpha_is_below_zero_on_systematic_disagreement():
    # Two annotators who always disagree on a binary label: alpha = 1 - (n - 1) / (n / 2) < 0.
    item = np.repeat(np.arange(10), 2)
    label = np.tile([0, 1], 10)
    alpha = alpha_from_coincidences(coincidences(item, label, 2))
    assert alpha == pytest.approx(1 - 19 * 20 / (400 - 200), abs=1e-9)


def test_fleiss_kappa_is_none_with_a_reason_when_undefined():
    unequal = fleiss_statistics([0, 0, 0, 1, 1], [0, 1, 0, 1, 1], 2)
    result = fleiss_kappa(unequal)
    assert result.kappa is None and "2 to 3 votes" in result.reason
    assert fleiss_kappa(fleiss_statistics([0, 1, 2], [0, 1, 1], 2)).kappa is None   # one vote per item
    assert fleiss_kappa(fleiss_statistics([], [], 2)).reason == "no votes"
    one_class = fleiss_kappa(fleiss_statistics([0, 0, 1, 1], [1, 1, 1, 1], 2))
    assert one_class.kappa is None and "chance agreement is 1" in one_class.reason
    # Equal counts in every partial but different across partials: the sum knows.
    parts = [fleiss_statistics([0, 0], [0, 1], 2), fleiss_statistics([5, 5, 5], [0, 1, 1], 2)]
    assert fleiss_kappa(parts[0]).kappa is not None and fleiss_kappa(parts[1]).kappa is not None
    assert fleiss_kappa(sum_fleiss_statistics(parts)).kappa is None
    assert fleiss_kappa(sum_fleiss_statistics([fleiss_statistics([], [], 2), parts[0]])).kappa == \
        fleiss_kappa(parts[0]).kappa


def test_fleiss_kappa_matches_alpha_definition_on_complete_data():
    # With n votes on every item, kappa and nominal alpha differ only by the small-sample correction:
    # alpha = 1 - (1 - kappa) (N n - 1) / (N n).
    rng = np.random.default_rng(3)
    n_items, n = 300, 4
    item = np.repeat(np.arange(n_items), n)
    truth = rng.integers(0, 3, n_items)
    label = np.where(rng.random(len(item)) < 0.4, rng.integers(0, 3, len(item)), truth[item])
    kappa = fleiss_kappa(fleiss_statistics(item, label, 3)).kappa
    alpha = alpha_from_coincidences(coincidences(item, label, 3))
    total = n_items * n
    assert alpha == pytest.approx(1 - (1 - kappa) * (total - 1) / total, abs=1e-9)


def test_inputs_are_validated():
    with pytest.raises(ValueError, match="label"):
        coincidences([0, 0], [0, 3], 3)
    with pytest.raises(ValueError, match="equal lengths"):
        fleiss_statistics([0, 0, 1], [0, 1], 2)
    with pytest.raises(ValueError, match="integer"):
        coincidences([0.0, 1.0], [0, 1], 2)
    with pytest.raises(ValueError, match="finite"):
        interval_statistics([0, 0], [1.0, np.nan])
    with pytest.raises(ValueError, match="metric"):
        alpha_from_coincidences(coincidences([0, 0], [0, 1], 2), "cosine")
    with pytest.raises(ValueError, match="class counts"):
        coincidences([0, 0], [0, 1], 2) + coincidences([0, 0], [0, 1], 3)


# ---------------------------------------------------------------------------------------------------
# Pairwise agreement


def test_pairwise_agreement_hand_made():
    #          item 0        item 1      item 2      item 3
    votes = [(0, 0, 0), (0, 1, 0), (0, 2, 1), (1, 0, 1), (1, 1, 0), (2, 1, 2), (2, 2, 2), (3, 2, 0)]
    item, annotator, label = (np.array(column) for column in zip(*votes))
    # (0, 1): items 0 and 1, agree on item 0.  (0, 2): item 0, disagree.  (1, 2): items 0 and 2, agree on 2.
    expected = [
        {"annotator_a": 0, "annotator_b": 1, "shared": 2, "agreed": 1, "agreement": 0.5},
        {"annotator_a": 0, "annotator_b": 2, "shared": 1, "agreed": 0, "agreement": 0.0},
        {"annotator_a": 1, "annotator_b": 2, "shared": 2, "agreed": 1, "agreement": 0.5},
    ]
    table = pairwise_agreement(item, annotator, label)
    assert table.schema == PAIRWISE_SCHEMA
    assert table.to_pylist() == expected
    assert pairwise_agreement(item, annotator, label, min_shared=2).to_pylist() == [expected[0], expected[2]]
    order = np.random.default_rng(0).permutation(len(item))
    assert pairwise_agreement(item[order], annotator[order], label[order]).equals(table)
    assert pairwise_agreement(item, annotator, label, pairs_per_chunk=1).equals(table)


def test_pairwise_agreement_matches_a_brute_force_count_on_both_paths():
    rng = np.random.default_rng(7)
    item, annotator, label = random_votes(rng, n_items=150, n_annotators=12)
    brute = {}
    for i in np.unique(item):
        mine = sorted(zip(annotator[item == i], label[item == i]))
        for x, (a, la) in enumerate(mine):
            for b, lb in mine[x + 1:]:
                shared, agreed = brute.get((a, b), (0, 0))
                brute[(a, b)] = (shared + 1, agreed + (la == lb))
    table = pairwise_agreement(item, annotator, label, min_shared=3, pairs_per_chunk=50)
    rows = {(r["annotator_a"], r["annotator_b"]): (r["shared"], r["agreed"]) for r in table.to_pylist()}
    assert rows == {pair: counts for pair, counts in brute.items() if counts[0] >= 3}
    # Sparse annotator ids (2**13 of them) take the sorted-key path instead of dense counting.
    wide = pairwise_agreement(item, annotator * 700, label, min_shared=3)
    assert (wide["annotator_a"].to_numpy() // 700).tolist() == table["annotator_a"].to_pylist()
    assert (wide["annotator_b"].to_numpy() // 700).tolist() == table["annotator_b"].to_pylist()
    assert wide["shared"].equals(table["shared"]) and wide["agreed"].equals(table["agreed"])


def test_pairwise_agreement_rejects_repeated_votes_and_handles_no_votes():
    with pytest.raises(ValueError, match="at most once"):
        pairwise_agreement([0, 0], [1, 1], [0, 1])
    assert pairwise_agreement([], [], []).equals(PAIRWISE_SCHEMA.empty_table())
    assert pairwise_agreement([0, 1], [0, 1], [0, 0]).num_rows == 0   # nobody shares an item


# ---------------------------------------------------------------------------------------------------
# Entropy


def test_vote_entropy_in_bits():
    counts = np.array([[3, 3, 3, 3], [5, 0, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [2, 1, 1, 0]])
    entropy = vote_entropy(counts)
    assert entropy[0] == pytest.approx(math.log2(4))   # uniform over k classes: log2(k)
    assert entropy[1] == 0.0
    assert entropy[2] == pytest.approx(1.0)
    assert math.isnan(entropy[3])
    assert entropy[4] == pytest.approx(1.5)             # -(1/2 log2 1/2 + 2 * 1/4 log2 1/4)
    for k in (2, 3, 7, 64):
        assert vote_entropy(np.full((1, k), 9))[0] == pytest.approx(math.log2(k), rel=1e-14)


def test_class_counts_feed_vote_entropy():
    item, label = np.array([0, 0, 1, 1, 1, 3]), np.array([0, 1, 2, 2, 2, 1])
    counts = class_counts(item, label, n_items=4, n_classes=3)
    assert counts.tolist() == [[1, 1, 0], [0, 0, 3], [0, 0, 0], [0, 1, 0]]
    entropy = vote_entropy(counts)
    assert entropy[0] == 1.0 and entropy[1] == 0.0 and math.isnan(entropy[2]) and entropy[3] == 0.0


# ---------------------------------------------------------------------------------------------------
# Cross-check against the `krippendorff` package (optional, not a dependency of labelbeam)


@pytest.mark.parametrize("seed", [0, 1])
def test_alpha_matches_the_krippendorff_package_on_random_data(seed):
    krippendorff = pytest.importorskip(
        "krippendorff", reason="the optional `krippendorff` package (pip install krippendorff) is not installed")
    rng = np.random.default_rng(seed)
    item, _, label = random_votes(rng, n_items=300, n_classes=5)
    counts = class_counts(item, label, item.max() + 1, 5)   # its value_counts: units x values
    table = coincidences(item, label, 5)
    for metric in ("nominal", "ordinal", "interval"):
        expected = krippendorff.alpha(value_counts=counts, level_of_measurement=metric)
        assert alpha_from_coincidences(table, metric) == pytest.approx(expected, abs=1e-8), metric
    ratings = label.astype(np.float64)
    assert interval_alpha(interval_statistics(item, ratings)) == pytest.approx(
        krippendorff.alpha(value_counts=counts, level_of_measurement="interval"), abs=1e-10)
