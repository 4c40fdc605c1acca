"""Inter-annotator agreement of a dataset version from its votes: pure numpy/pyarrow, no Beam.

Input: equal-length integer arrays `item` (0..n_items-1), `annotator` (0..n_annotators-1) and `label`
(0..n_classes-1), one row per standing vote, an annotator voting at most once per item; for interval
data, float `value` ratings instead of labels.

- Krippendorff's alpha (Krippendorff 2011, "Computing Krippendorff's Alpha-Reliability"), from the
  coincidence matrix: `coincidences` of a set of items, `sum_coincidences` of disjoint sets,
  `alpha_from_coincidences` (nominal, ordinal, interval or ratio metric over the class values).
  Items with fewer than two votes are not pairable and are left out, as Krippendorff prescribes.
- Interval alpha of float ratings: `interval_statistics`, `sum_interval_statistics`, `interval_alpha`.
  With n pairable values x, m_u of them in unit u and SS_u = sum over u of (x - mean_u)^2,
      sum_ck o_ck (c - k)^2    = sum_u sum_{i != j in u} (x_i - x_j)^2 / (m_u - 1) = 2 sum_u m_u SS_u / (m_u - 1)
      sum_ck n_c n_k (c - k)^2 = sum_{i, j} (x_i - x_j)^2                         = 2 (n sum x^2 - (sum x)^2)
  so alpha = 1 - D_o / D_e = 1 - (n - 1) W / (n sum x^2 - (sum x)^2) with W = sum_u m_u SS_u / (m_u - 1):
  n, W, sum x and sum x^2 over pairable values add up across disjoint item sets.
- Fleiss' kappa (Fleiss 1971): `fleiss_statistics`, `sum_fleiss_statistics`, `fleiss_kappa`; defined
  only when every item has the same number n >= 2 of votes, else None and the reason.
- `pairwise_agreement`: per annotator pair, shared items and the share of them labelled alike.
- `class_counts` and `vote_entropy`: per-item vote entropy in bits (log base 2).

Partials are exact, so the sum of the partials of disjoint item sets equals the partial of their union
bit for bit, in any grouping and order, and so does every statistic computed from it; the order of the
votes inside a partial changes no bit either. A partial must hold all votes of its items (a pipeline
buckets by item). Exactness by construction:
- coincidences are int64 counts of 2**-31: each (unit, class) share n_uc / (m_u - 1) is rounded once
  to 2**-30 (a function of n_uc and m_u alone) and multiplied by integer counts; the pairable counts
  n_c are exact integers;
- interval sums are Python ints in units of 2**-40 (each term rounded once to that grid); the per-unit
  sums behind W are exact on that grid before one rounding to float64;
- Fleiss' statistics are integer counts.
Limits: int64 coincidences hold fewer than 2**32 pairable values; interval sums see ratings on the
2**-40 grid (about 1e-12).
"""
from __future__ import annotations

import functools
import operator
from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction
from typing import NamedTuple

import numpy as np
import pyarrow as pa

SHARE_BITS = 30         # each unit's share n_uc / (m_u - 1) is rounded to 2**-30
COINCIDENCE_BITS = 31   # coincidences: int64 counts of 2**-31 (sums of two 2**-30 products)
EXACT_BITS = 40         # interval sums: integers in units of 2**-40
_LIMB_BITS = 30         # digits below 2**30 sum exactly in int64 over fewer than 2**33 terms
_INT64_MAX = np.iinfo(np.int64).max

METRICS = ("nominal", "ordinal", "interval", "ratio")

PAIRWISE_SCHEMA = pa.schema([
    pa.field("annotator_a", pa.int64(), nullable=False),   # annotator_a < annotator_b
    pa.field("annotator_b", pa.int64(), nullable=False),
    pa.field("shared", pa.int64(), nullable=False),        # items both voted on
    pa.field("agreed", pa.int64(), nullable=False),        # of those, items with the same label
    pa.field("agreement", pa.float64(), nullable=False),   # agreed / shared
])


# ---------------------------------------------------------------------------------------------------
# Validation and grouping helpers


def _index_array(name: str, values, bound: int | None = None) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1 or (array.size and array.dtype.kind not in "iu"):
        raise ValueError(f"{name} must be a 1-d integer array")
    array = array.astype(np.int64, copy=False)
    if array.size and (array.min() < 0 or (bound is not None and array.max() >= bound)):
        limit = f"[0, {bound})" if bound is not None else "non-negative"
        raise ValueError(f"{name} must lie in {limit}")
    return array


def _same_length(**arrays: np.ndarray) -> None:
    if len({len(a) for a in arrays.values()}) > 1:
        raise ValueError(f"{', '.join(arrays)} must have equal lengths")


def _packable(*bounds: int) -> bool:
    """Whether a mixed-radix key with these digit bounds fits in int64 (Python ints: no overflow)."""
    product = 1
    for bound in bounds:
        product *= max(int(bound), 1)
    return product <= _INT64_MAX


def _segments(sorted_keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(starts, sizes) of the runs of equal values in a sorted array."""
    if len(sorted_keys) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
    return starts, np.diff(np.r_[starts, len(sorted_keys)])


class _Rows(NamedTuple):
    """Vote counts per voted (item, class), sorted by item then class; items numbered densely."""
    cls: np.ndarray            # class of each row
    count: np.ndarray          # votes of the row's item for its class
    unit_size: np.ndarray      # votes of the row's item, m_u
    unit_of_row: np.ndarray    # dense item number of each row
    unit_ends: np.ndarray      # one past the last row of each item
    sizes: np.ndarray          # m_u per item


def _floor_divide(keys: np.ndarray, divisor: int) -> np.ndarray:
    """keys // divisor for non-negative keys; through float64 (exact below 2**52), ~5x faster."""
    if len(keys) and int(keys.max()) >= 1 << 52:
        return keys // divisor
    return np.floor(keys / divisor).astype(np.int64)


def _unit_class_rows(item: np.ndarray, label: np.ndarray, n_classes: int) -> _Rows:
    """The votes grouped by (item, class). np.sort of one packed int64 key is ~7x faster than argsort
    or np.unique on 10M votes, and integer keys make the result independent of vote order."""
    if not _packable(int(item.max(initial=0)) + 1, n_classes):
        raise ValueError("item index * n_classes must fit in int64")
    sorted_keys = np.sort(item * n_classes + label)
    starts, count = _segments(sorted_keys)
    keys = sorted_keys[starts]
    unit = _floor_divide(keys, n_classes)
    cls = keys - unit * n_classes
    unit_starts, rows_per_unit = _segments(unit)
    sizes = np.add.reduceat(count, unit_starts) if len(count) else count
    unit_of_row = np.cumsum(np.r_[0, unit[1:] != unit[:-1]]) if len(unit) else unit
    return _Rows(cls, count, sizes[unit_of_row], unit_of_row, unit_starts + rows_per_unit, sizes)


def _grid_digits(values: np.ndarray):
    """(shift, int64 digits) pairs with sum(digits << shift) == rint(values * 2**EXACT_BITS), exactly.

    Digits stay below 2**31 in magnitude, so int64 sums of them are exact for < 2**32 terms.
    """
    scaled = np.multiply(values, 2.0 ** EXACT_BITS, dtype=np.float64)
    np.rint(scaled, out=scaled)
    top = max(float(scaled.max(initial=0.0)), -float(scaled.min(initial=0.0)))
    if not np.isfinite(top):
        raise ValueError("values too large for exact sums")
    if top < 2.0 ** 62:
        # Fast path (ratings below 2**22, squares below 2**22): one int64 split in two.
        low = scaled.astype(np.int64)
        high = low >> 31
        low &= (1 << 31) - 1
        return [(31, high), (0, low)]
    # Wide values: 30-bit digits of the magnitude. Power-of-two scaling, floor and subtracting the
    # digit are exact in float64 for integer-valued magnitudes.
    sign = np.sign(scaled).astype(np.int64)
    magnitude = np.abs(scaled)
    digits = []
    shift = _LIMB_BITS * (int(top).bit_length() // _LIMB_BITS)   # top < 2**(shift + 30)
    while shift >= 0:
        digit = np.floor(magnitude * 2.0 ** -shift)
        magnitude -= digit * 2.0 ** shift
        digits.append((shift, digit.astype(np.int64) * sign))
        shift -= _LIMB_BITS
    return digits


def _exact_sum(values: np.ndarray) -> int:
    """Exact sum of the values rounded to multiples of 2**-EXACT_BITS, in those units (a Python int).

    Unlike a float sum it does not depend on order or grouping, so partials add up bit for bit.
    """
    return sum(int(digits.sum()) << shift for shift, digits in _grid_digits(values))


def _exact_sum_of_squares(values: np.ndarray) -> int:
    """Exact sum of the squares on the 2**-EXACT_BITS grid, without rounding x*x to float64 first.

    x*x in float64 is off by up to ulp(x^2) / 2 (0.008 for ratings near 1e7), and D_e = n sum x^2 -
    (sum x)^2 cancels all leading digits. Veltkamp's split x = hi + lo (26-bit halves) makes
    hi^2, 2 hi lo and lo^2 exact float64 products whose grid sums add up to sum x^2.
    """
    values = np.asarray(values, dtype=np.float64)
    spread = values * float(2 ** 27 + 1)
    high = spread - (spread - values)
    low = values - high
    total = _exact_sum(high * high)
    if low.any():   # integer ratings below 2**26 have lo = 0
        total += _exact_sum(2.0 * high * low) + _exact_sum(low * low)
    return total


def _exact_group_sums(values: np.ndarray, group: np.ndarray, n_groups: int) -> np.ndarray:
    """float64 [n_groups]: per group, the exact sum of the values on the 2**-EXACT_BITS grid, rounded
    to float64 in one fixed order, so the result does not depend on the order of the values."""
    total = np.zeros(n_groups, dtype=np.float64)
    for shift, digits in _grid_digits(values):
        sums = np.zeros(n_groups, dtype=np.int64)
        np.add.at(sums, group, digits)
        total += sums * 2.0 ** (shift - EXACT_BITS)
    return total


# ---------------------------------------------------------------------------------------------------
# Krippendorff's alpha from coincidences


@dataclass(frozen=True, eq=False)
class Coincidences:
    """Additive coincidence statistics of a set of items (Krippendorff's o_ck and n_c).

    `units[c, k]`: o_ck in int64 units of 2**-COINCIDENCE_BITS; `pairable[c]`: n_c, exact.
    """
    units: np.ndarray
    pairable: np.ndarray

    @property
    def n_classes(self) -> int:
        return len(self.pairable)

    @property
    def matrix(self) -> np.ndarray:
        """o_ck as floats."""
        return self.units / 2.0 ** COINCIDENCE_BITS

    def __add__(self, other: Coincidences) -> Coincidences:
        if other.n_classes != self.n_classes:
            raise ValueError("coincidences of different class counts")
        return Coincidences(self.units + other.units, self.pairable + other.pairable)


def coincidences(item, label, n_classes: int) -> Coincidences:
    """Coincidence matrix (a partial) of the votes' items; items with fewer than 2 votes are skipped."""
    item, label = _index_array("item", item), _index_array("label", label, n_classes)
    _same_length(item=item, label=label)
    units = np.zeros(n_classes * n_classes, dtype=np.int64)
    pairable = np.zeros(n_classes, dtype=np.int64)
    if len(item) == 0:
        return Coincidences(units.reshape(n_classes, n_classes), pairable)
    rows = _unit_class_rows(item, label, n_classes)
    cls, count, unit_size = rows.cls, rows.count, rows.unit_size
    # A unit with one value has no pair, so Krippendorff leaves it out. Its single row gets share 0
    # and no pair below, so only the pairable counts need masking (cheaper than filtering every array).
    pairable += np.bincount(cls, weights=np.where(unit_size >= 2, count, 0), minlength=n_classes).astype(np.int64)
    # Each (unit, class) row's share n_uc / (m_u - 1), rounded once to 2**-30: a deterministic
    # function of (n_uc, m_u), so a unit contributes the same integers whichever partial holds it.
    share = np.where(unit_size >= 2, np.rint(count * 2.0 ** SHARE_BITS / np.maximum(unit_size - 1, 1)), 0)
    share = share.astype(np.int64)

    # o_cc = sum_u n_uc (n_uc - 1) / (m_u - 1): ordered pairs of distinct votes of class c.
    np.add.at(units, cls * (n_classes + 1), 2 * share * (count - 1))

    # o_ck = o_kc = sum_u n_uc n_uk / (m_u - 1), c < k: pair each row with the later rows of its unit
    # and add share_c n_k + share_k n_c, i.e. twice o_ck, which keeps the matrix exactly symmetric.
    index = np.arange(len(cls))
    later = rows.unit_ends[rows.unit_of_row] - index - 1
    before = np.cumsum(later) - later
    first = np.repeat(index, later)
    second = np.arange(len(first)) + np.repeat(index + 1 - before, later)
    upper = np.zeros_like(units)
    np.add.at(upper, cls[first] * n_classes + cls[second],
              share[first] * count[second] + share[second] * count[first])
    upper = upper.reshape(n_classes, n_classes)
    return Coincidences(units.reshape(n_classes, n_classes) + upper + upper.T, pairable)


def _sum_partials(parts: Iterable, what: str):
    """The exact sum of the partials of disjoint item sets (their `+`); at least one is needed."""
    parts = list(parts)
    if not parts:
        raise ValueError(f"no {what} to sum")
    return functools.reduce(operator.add, parts)


def sum_coincidences(parts: Iterable[Coincidences]) -> Coincidences:
    """Coincidences of the union of disjoint item sets: the exact sum of their partials."""
    return _sum_partials(parts, "coincidences")


def _squared_distances(metric: str, pairable: np.ndarray, values: np.ndarray | None) -> np.ndarray:
    """Krippendorff's delta^2 between classes (2011, section F)."""
    k = len(pairable)
    if values is None:
        values = np.arange(k, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    if values.shape != (k,):
        raise ValueError(f"values must hold one number per class ({k})")
    if metric == "ordinal":
        # Class order is value order; delta_ck = the pairable values from c through k, the two ends
        # counted half: sum_{g=c..k} n_g - (n_c + n_k) / 2.
        n = pairable.astype(np.float64)
        cumulative = np.cumsum(n)
        index = np.arange(k)
        low, high = np.minimum.outer(index, index), np.maximum.outer(index, index)
        between = cumulative[high] - cumulative[low] + n[low]
        return (between - (n[:, None] + n[None, :]) / 2) ** 2
    difference = values[:, None] - values[None, :]
    if metric == "interval":
        return difference ** 2
    if metric == "ratio":
        total = values[:, None] + values[None, :]
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(total != 0, (difference / np.where(total != 0, total, 1)) ** 2, 0.0)
    raise ValueError(f"metric must be one of {METRICS}")


def alpha_from_coincidences(coincidence: Coincidences, metric: str = "nominal",
                            values: np.ndarray | None = None) -> float:
    """Krippendorff's alpha = 1 - (n - 1) sum o_ck d2_ck / sum n_c n_k d2_ck; NaN when undefined.

    `values`: the number each class stands for (interval and ratio; default 0..n_classes-1).
    Undefined (NaN): fewer than 2 pairable values, or no expected disagreement (one value only).
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}")
    n = int(coincidence.pairable.sum())
    if n < 2:
        return float("nan")
    if metric == "nominal":
        # Exact integers: disagreeing coincidences over pairs of differing pairable values.
        observed = int(coincidence.units.sum()) - int(np.trace(coincidence.units))
        expected = n * n - sum(int(c) ** 2 for c in coincidence.pairable)
        if expected == 0:
            return float("nan")
        return 1.0 - ((n - 1) * observed) / (expected << COINCIDENCE_BITS)
    squared = _squared_distances(metric, coincidence.pairable, values)
    observed = float((coincidence.matrix * squared).sum())
    pairable = coincidence.pairable.astype(np.float64)
    expected = float(pairable @ squared @ pairable)
    if expected == 0:
        return float("nan")
    return 1.0 - (n - 1) * observed / expected


# ---------------------------------------------------------------------------------------------------
# Krippendorff's interval alpha of float ratings


@dataclass(frozen=True)
class IntervalStatistics:
    """Additive sufficient statistics of interval alpha over pairable values (sums in 2**-40 units)."""
    n: int = 0               # pairable values
    sum_x: int = 0           # sum x
    sum_x2: int = 0          # sum x^2
    within: int = 0          # W = sum_u m_u SS_u / (m_u - 1)
    low: float = float("inf")     # smallest and largest pairable value: alpha is undefined when equal
    high: float = float("-inf")

    def __add__(self, other: IntervalStatistics) -> IntervalStatistics:
        return IntervalStatistics(self.n + other.n, self.sum_x + other.sum_x, self.sum_x2 + other.sum_x2,
                                  self.within + other.within, min(self.low, other.low), max(self.high, other.high))


def interval_statistics(item, value) -> IntervalStatistics:
    """Interval-alpha statistics (a partial) of the ratings' items; items with < 2 ratings are skipped."""
    item = _index_array("item", item)
    value = np.asarray(value, dtype=np.float64)
    if value.ndim != 1:
        raise ValueError("value must be a 1-d array")
    _same_length(item=item, value=value)
    if not np.isfinite(value).all():
        raise ValueError("value must be finite; drop missing ratings first")
    if len(item) == 0:
        return IntervalStatistics()
    if int(item.max()) >= 4 * len(item) + (1 << 20):
        # Per-unit arrays are indexed by item: renumber sparse item ids (a bucket of a large dataset).
        item = np.unique(item, return_inverse=True)[1]
    n_units = int(item.max()) + 1
    size = np.bincount(item, minlength=n_units)
    pairable = size[item] >= 2   # a unit with one value has no pair: Krippendorff leaves it out
    item, value = item[pairable], value[pairable]
    if len(value) == 0:
        return IntervalStatistics()
    # Shift each unit by its smallest value: identical ratings give SS exactly 0, and a large common
    # offset costs no precision. Per-unit sums are exact (then rounded once), so vote order changes
    # no bit; sorting by (item, value) instead would cost more than all of this on 10M votes.
    low = np.full(n_units, np.inf)
    np.minimum.at(low, item, value)
    shifted = value - low[item]
    sums = _exact_group_sums(shifted, item, n_units)
    squares = _exact_group_sums(shifted * shifted, item, n_units)
    voted = size >= 2
    m, sums, squares = size[voted], sums[voted], squares[voted]
    spread = np.maximum(squares - sums * sums / m, 0.0)   # SS_u; rounding can leave -1e-17
    within = m * spread / (m - 1)
    return IntervalStatistics(n=len(value), sum_x=_exact_sum(value), sum_x2=_exact_sum_of_squares(value),
                              within=_exact_sum(within),
                              # + 0.0 turns -0.0 into 0.0, so the bits of low and high never depend on order.
                              low=float(value.min()) + 0.0, high=float(value.max()) + 0.0)


def sum_interval_statistics(parts: Iterable[IntervalStatistics]) -> IntervalStatistics:
    """Statistics of the union of disjoint item sets: the exact sum of their partials."""
    total = IntervalStatistics()
    for part in parts:
        total = total + part
    return total


def interval_alpha(statistics: IntervalStatistics) -> float:
    """Krippendorff's interval alpha = 1 - (n - 1) W / (n sum x^2 - (sum x)^2); NaN when undefined."""
    n = statistics.n
    if n < 2 or statistics.low == statistics.high:
        return float("nan")   # no pairable values, or no variation: D_e = 0
    # In units of 2**-80: both factors carry 2**-40 each.
    expected = n * (statistics.sum_x2 << EXACT_BITS) - statistics.sum_x ** 2
    if expected <= 0:
        return float("nan")
    return 1.0 - ((n - 1) * (statistics.within << EXACT_BITS)) / expected


# ---------------------------------------------------------------------------------------------------
# Fleiss' kappa


@dataclass(frozen=True, eq=False)
class FleissStatistics:
    """Additive Fleiss statistics of a set of voted items: N, sum_i sum_j n_ij^2, sum_i n_ij, vote range."""
    items: int                  # N, items with at least one vote
    sum_squares: int            # sum over items and classes of n_ij^2
    class_totals: np.ndarray    # int64 [n_classes]: sum over items of n_ij
    min_votes: int              # fewest and most votes on an item (0, 0 without items)
    max_votes: int

    def __add__(self, other: FleissStatistics) -> FleissStatistics:
        if len(other.class_totals) != len(self.class_totals):
            raise ValueError("Fleiss statistics of different class counts")
        if other.items == 0 or self.items == 0:
            low, high = (self.min_votes, self.max_votes) if other.items == 0 else (other.min_votes, other.max_votes)
        else:
            low, high = min(self.min_votes, other.min_votes), max(self.max_votes, other.max_votes)
        return FleissStatistics(self.items + other.items, self.sum_squares + other.sum_squares,
                                self.class_totals + other.class_totals, low, high)


class FleissKappa(NamedTuple):
    kappa: float | None
    reason: str | None      # why kappa is None; None when it is defined


def fleiss_statistics(item, label, n_classes: int) -> FleissStatistics:
    """Fleiss statistics (a partial) of the votes' items."""
    item, label = _index_array("item", item), _index_array("label", label, n_classes)
    _same_length(item=item, label=label)
    if len(item) == 0:
        return FleissStatistics(0, 0, np.zeros(n_classes, dtype=np.int64), 0, 0)
    rows = _unit_class_rows(item, label, n_classes)
    totals = np.bincount(rows.cls, weights=rows.count, minlength=n_classes).astype(np.int64)
    return FleissStatistics(items=len(rows.sizes), sum_squares=int((rows.count * rows.count).sum()),
                            class_totals=totals, min_votes=int(rows.sizes.min()), max_votes=int(rows.sizes.max()))


def sum_fleiss_statistics(parts: Iterable[FleissStatistics]) -> FleissStatistics:
    """Statistics of the union of disjoint item sets: the exact sum of their partials."""
    return _sum_partials(parts, "Fleiss statistics")


def fleiss_kappa(statistics: FleissStatistics) -> FleissKappa:
    """Fleiss' kappa (P_bar - P_e) / (1 - P_e), or None and the reason when it is not defined."""
    if statistics.items == 0:
        return FleissKappa(None, "no votes")
    if statistics.min_votes != statistics.max_votes:
        return FleissKappa(None, f"items have {statistics.min_votes} to {statistics.max_votes} votes; "
                                 "Fleiss' kappa needs the same number of votes on every item")
    n, items = statistics.max_votes, statistics.items
    if n < 2:
        return FleissKappa(None, "items have 1 vote each; Fleiss' kappa needs at least 2")
    # Fractions: the integer statistics give kappa with one rounding, however large the counts.
    observed = Fraction(statistics.sum_squares - items * n, items * n * (n - 1))
    chance = Fraction(sum(int(t) ** 2 for t in statistics.class_totals), (items * n) ** 2)
    if chance == 1:
        return FleissKappa(None, "every vote is in one class, so chance agreement is 1")
    return FleissKappa(float((observed - chance) / (1 - chance)), None)


# ---------------------------------------------------------------------------------------------------
# Pairwise annotator agreement


def pairwise_agreement(item, annotator, label, min_shared: int = 1, *,
                       pairs_per_chunk: int = 1 << 23) -> pa.Table:
    """Per pair of annotators with >= min_shared shared items: shared items and agreement share.

    Rows sorted by (annotator_a, annotator_b), annotator_a < annotator_b (PAIRWISE_SCHEMA). The
    votes are self-joined on item; pairs are made `pairs_per_chunk` at a time so an item with many
    votes cannot blow up memory (an item with m votes yields m (m - 1) / 2 pairs).
    """
    if min_shared < 1:
        raise ValueError("min_shared must be at least 1")
    item, annotator, label = (_index_array(name, a) for name, a in
                              (("item", item), ("annotator", annotator), ("label", label)))
    _same_length(item=item, annotator=annotator, label=label)
    if len(item) == 0:
        return PAIRWISE_SCHEMA.empty_table()
    # Bit fields instead of mixed radix: shifts and masks decode ~5x faster than integer division.
    label_bits = max(int(label.max()).bit_length(), 1)
    annotator_bits = max(int(annotator.max()).bit_length(), 1)
    if 2 * annotator_bits > 62 or annotator_bits + label_bits > 62:
        raise ValueError("annotator and label indices too large to pack in int64")
    vote_bits = annotator_bits + label_bits
    # Sort by (item, annotator): the pairs of an item then come out with annotator_a < annotator_b.
    if int(item.max()).bit_length() + vote_bits <= 62:
        keys = np.sort((item << vote_bits) | (annotator << label_bits) | label)
        vote, item = keys & ((1 << vote_bits) - 1), keys >> vote_bits
    else:
        order = np.lexsort((annotator, item))
        vote, item = (annotator[order] << label_bits) | label[order], item[order]
    if np.any((item[1:] == item[:-1]) & ((vote[1:] >> label_bits) == (vote[:-1] >> label_bits))):
        raise ValueError("an annotator votes at most once per item")

    starts, sizes = _segments(item)
    unit_of_vote = np.cumsum(np.r_[0, item[1:] != item[:-1]])
    later = (starts + sizes)[unit_of_vote] - np.arange(len(item)) - 1   # votes after this one on its item
    done = np.r_[0, np.cumsum(later)]
    n_keys = 1 << (2 * annotator_bits)
    dense = n_keys <= 1 << 22
    shared_dense = np.zeros(n_keys if dense else 0, dtype=np.int64)
    agreed_dense = np.zeros_like(shared_dense)
    sparse_keys, sparse_shared, sparse_agreed = [], [], []
    label_mask = (1 << label_bits) - 1
    begin = 0
    while begin < len(item):
        # The votes whose pairs fit in this chunk (at least one vote, so every chunk progresses).
        end = max(int(np.searchsorted(done, done[begin] + pairs_per_chunk, side="right")) - 1, begin + 1)
        counts = later[begin:end]
        first_vote = np.repeat(vote[begin:end], counts)
        before = np.cumsum(counts) - counts
        second_vote = vote[np.arange(len(first_vote)) + np.repeat(np.arange(begin + 1, end + 1) - before, counts)]
        pair = ((first_vote >> label_bits) << annotator_bits) | (second_vote >> label_bits)
        same = ((first_vote ^ second_vote) & label_mask) == 0
        if dense:
            shared_dense += np.bincount(pair, minlength=n_keys)
            agreed_dense += np.bincount(pair[same], minlength=n_keys)
        else:
            keys, shared = np.unique(pair, return_counts=True)
            agreed = np.bincount(np.searchsorted(keys, pair[same]), minlength=len(keys))
            sparse_keys.append(keys)
            sparse_shared.append(shared)
            sparse_agreed.append(agreed)
        begin = end
    if dense:
        keys = np.flatnonzero(shared_dense)
        shared, agreed = shared_dense[keys], agreed_dense[keys]
    else:
        all_keys = np.concatenate(sparse_keys)
        keys, inverse = np.unique(all_keys, return_inverse=True)
        shared = np.zeros(len(keys), dtype=np.int64)
        agreed = np.zeros(len(keys), dtype=np.int64)
        np.add.at(shared, inverse, np.concatenate(sparse_shared))
        np.add.at(agreed, inverse, np.concatenate(sparse_agreed))
    keep = shared >= min_shared
    keys, shared, agreed = keys[keep], shared[keep], agreed[keep]
    return pa.table({
        "annotator_a": pa.array(keys >> annotator_bits, pa.int64()),
        "annotator_b": pa.array(keys & ((1 << annotator_bits) - 1), pa.int64()),
        "shared": pa.array(shared, pa.int64()),
        "agreed": pa.array(agreed, pa.int64()),
        "agreement": pa.array(agreed / np.maximum(shared, 1), pa.float64()),
    }, schema=PAIRWISE_SCHEMA)


# ---------------------------------------------------------------------------------------------------
# Per-item vote entropy


def class_counts(item, label, n_items: int, n_classes: int) -> np.ndarray:
    """int64 [n_items, n_classes]: votes per item and class."""
    item, label = _index_array("item", item, n_items), _index_array("label", label, n_classes)
    _same_length(item=item, label=label)
    return np.bincount(item * n_classes + label, minlength=n_items * n_classes).reshape(n_items, n_classes)


def vote_entropy(counts) -> np.ndarray:
    """float64 [n_items]: entropy in bits (log base 2) of each item's vote distribution; NaN without votes.

    H = log2(m) - sum_c n_c log2(n_c) / m, with 0 log 0 = 0: no division per cell.
    """
    counts = np.asarray(counts)
    if counts.ndim != 2:
        raise ValueError("counts must be a 2-d array [n_items, n_classes]")
    counts = counts.astype(np.float64)
    if (counts < 0).any():
        raise ValueError("counts must be non-negative")
    total = counts.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        weighted = np.where(counts > 0, counts * np.log2(np.where(counts > 0, counts, 1.0)), 0.0).sum(axis=1)
        entropy = np.log2(total) - weighted / total
    # Rounding can leave -1e-16 for a one-class item; entropy is never negative.
    return np.where(total > 0, np.maximum(entropy, 0.0), np.nan)
