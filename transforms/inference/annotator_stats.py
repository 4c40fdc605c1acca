"""Per-annotator quality from a consensus: pure numpy/pyarrow, no Beam.

Every consensus method yields, per item, a posterior over classes (vote shares for majority vote,
the model's posterior for Dawid-Skene and friends) and a consensus class. Per bucket of items,
`partial_annotator_stats` turns them into additive cell counts per (annotator, true class,
answered class):
- `expected`: the posterior mass of the true class summed over the annotator's answers,
- `consensus`: answers whose item's consensus class is the true class,
- `gold`: answers on gold items whose gold class is the true class.
Partial counts of disjoint item sets add up, so a pipeline sums them across buckets;
`summarize_annotators` then gives one row per annotator:
- `votes`: single-label answers;
- `accuracy`: expected share of correct answers under the posteriors (diagonal of `expected`);
- `agreement`: share of answers equal to the item's consensus class;
- `gold_votes`, `gold_accuracy`: answers on gold items and the share that match gold (null without gold);
- `confusion`: row-normalised `expected`, rows = true class, columns = answered class, classes in
  the order of `summarize_annotators`' label list; a class never estimated true for the annotator is
  a null row;
- `bias`, `noise_scale`: per-annotator parameters of a global fit that has them (`bias_corrected`
  ratings: additive bias and robust noise standard deviation); null for every other method. They are
  not counts: a partial table carries an annotator's value on its rows, and combining keeps the
  largest non-null value (one global fit writes one value per annotator, so that is the value).

Methods whose answers are not one class per vote describe them as binary decisions in the same
cells, with "<what>=<answer>" names (see `decision_cells`):
- `multilabel`: every (vote, class) is a decision "<class>=yes" or "<class>=no"; the true label is the
  consensus decision, `expected` puts the class's yes share on "<class>=yes" and the rest on
  "<class>=no". So `votes` counts decisions (votes x classes of the item), not votes.
- ratings: every vote is one decision, true "score=within", answered "score=within" when the
  (bias-corrected) score lies within one pooled noise scale of the consensus score, else
  "score=outside" (`expected` 1 on "score=within"); accuracy = agreement = the share within.
- `bradley_terry`: every usable comparison is one decision about the pair; true
  "preferred=higher_ranked", answered "preferred=higher_ranked" when the annotator preferred the
  response the ranking puts first, else "preferred=lower_ranked"; `expected` puts the fitted
  probability that the higher-ranked response wins on "preferred=higher_ranked".
The sums are deterministic: rows are sorted by key and value before they are added, so the
order in which buckets arrive never changes the bits.
"""
from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from labelbeam.transforms.arrays.factorize import concatenated, factorize_sorted
from labelbeam.transforms.arrays.fixed_point import from_fixed, on_grid, to_fixed

PARTIAL_SCHEMA = pa.schema([
    pa.field("annotator_id", pa.string(), nullable=False),
    pa.field("true_label", pa.string(), nullable=False),
    pa.field("answered_label", pa.string(), nullable=False),
    pa.field("expected", pa.int64(), nullable=False),   # fixed point: units of 2**-30 (fixed_point.py)
    pa.field("consensus", pa.int64(), nullable=False),
    pa.field("gold", pa.int64(), nullable=False),
    pa.field("bias", pa.float64()),
    pa.field("noise_scale", pa.float64()),
])

ANNOTATOR_SCHEMA = pa.schema([
    pa.field("annotator", pa.string(), nullable=False),
    pa.field("votes", pa.int64(), nullable=False),
    pa.field("accuracy", pa.float64()),
    pa.field("agreement", pa.float64()),
    pa.field("gold_votes", pa.int64(), nullable=False),
    pa.field("gold_accuracy", pa.float64()),
    pa.field("confusion", pa.list_(pa.list_(pa.float64()))),
    pa.field("bias", pa.float64()),
    pa.field("noise_scale", pa.float64()),
    # The class order of `confusion`'s rows and columns, in every row, so the table explains itself.
    pa.field("confusion_labels", pa.list_(pa.string())),
    # 95% Wilson intervals: on the model's accuracy (its expected correct share of the annotator's votes)
    # and on gold accuracy; null without votes or gold.
    pa.field("accuracy_low", pa.float64()),
    pa.field("accuracy_high", pa.float64()),
    pa.field("gold_accuracy_low", pa.float64()),
    pa.field("gold_accuracy_high", pa.float64()),
    # True when even the interval's upper end (gold's when the annotator answered gold items) is below the
    # median annotator's accuracy: low with enough evidence to route their work, not on thin data.
    pa.field("low_accuracy", pa.bool_(), nullable=False),
])
WILSON_Z = 1.959963984540054  # the standard normal's 97.5% quantile: two-sided 95%


def wilson_interval(successes: np.ndarray, trials: np.ndarray, z: float = WILSON_Z) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) of the Wilson score interval for successes out of trials (soft counts allowed); NaN where
    trials is 0. Unlike the normal approximation it stays inside [0, 1] and is sensible for few trials."""
    successes, trials = np.asarray(successes, np.float64), np.asarray(trials, np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = successes / trials
        denominator = 1 + z * z / trials
        center = (share + z * z / (2 * trials)) / denominator
        half = z * np.sqrt(share * (1 - share) / trials + z * z / (4 * trials * trials)) / denominator
    empty = ~(trials > 0)
    low, high = np.clip(center - half, 0.0, 1.0), np.clip(center + half, 0.0, 1.0)
    low[empty], high[empty] = np.nan, np.nan
    return low, high


def low_accuracy_flags(accuracy: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """True where the upper end of an annotator's interval is below the median annotator's accuracy."""
    known = accuracy[~np.isnan(accuracy)]
    if len(known) < 2:  # no peers to compare with
        return np.zeros(len(accuracy), dtype=bool)
    with np.errstate(invalid="ignore"):
        return np.nan_to_num(upper, nan=np.inf) < np.median(known)


def partial_annotator_stats(annotator_ids: pa.Array, answer_annotator: np.ndarray, answer_item: np.ndarray,
                            answer_label: np.ndarray, label_names: pa.Array, posteriors: np.ndarray,
                            consensus: np.ndarray, gold: np.ndarray | None = None) -> pa.Table:
    """Additive per-(annotator, true, answered) counts of some items' answers (PARTIAL_SCHEMA).

    Answer j: annotator annotator_ids[answer_annotator[j]] gave item answer_item[j] the class
    label_names[answer_label[j]]. posteriors [n_items, K]; consensus and gold per item (-1: none).
    Only non-zero cells are kept.
    """
    n_workers, n_labels = len(annotator_ids), len(label_names)
    cells = n_workers * n_labels * n_labels
    base = answer_annotator * (n_labels * n_labels) + answer_label  # + true * n_labels
    # Posteriors on the fixed-point grid sum exactly (below 2**23 answers per cell), so a bucket's
    # counts, and their total over buckets, do not depend on how items were split into buckets.
    grid = on_grid(posteriors)
    expected = np.zeros(cells)
    for true in range(n_labels):
        expected += np.bincount(base + true * n_labels, weights=grid[answer_item, true], minlength=cells)

    def counted(per_item_class: np.ndarray | None) -> np.ndarray:
        if per_item_class is None:
            return np.zeros(cells, dtype=np.int64)
        true = per_item_class[answer_item]
        known = true >= 0
        return np.bincount(base[known] + true[known] * n_labels, minlength=cells).astype(np.int64)

    consensus_counts, gold_counts = counted(consensus), counted(gold)
    keep = np.flatnonzero((expected > 0) | (consensus_counts > 0) | (gold_counts > 0))
    worker, rest = np.divmod(keep, n_labels * n_labels)
    true, answered = np.divmod(rest, n_labels)
    return pa.table([annotator_ids.take(pa.array(worker)), label_names.take(pa.array(true)),
                     label_names.take(pa.array(answered)), pa.array(to_fixed(expected[keep])),
                     pa.array(consensus_counts[keep]), pa.array(gold_counts[keep]),
                     pa.nulls(len(keep), pa.float64()), pa.nulls(len(keep), pa.float64())], schema=PARTIAL_SCHEMA)


def decision_cells(annotator_id: pa.Array, true_label: pa.Array, answered_label: pa.Array, expected: np.ndarray,
                   consensus: np.ndarray, bias: np.ndarray | None = None,
                   noise_scale: np.ndarray | None = None) -> pa.Table:
    """PARTIAL_SCHEMA cells from one row per (decision, candidate true label), summed per cell.

    Row r: annotator annotator_id[r] answered answered_label[r]; if the truth is true_label[r], the
    posterior puts expected[r] on it; consensus[r] is 1 on the row whose true label is the consensus
    decision. bias / noise_scale: per row, NaN for none. Cells with nothing in them are dropped.
    """
    def floats(values: np.ndarray | None) -> pa.Array:
        if values is None:
            return pa.nulls(len(annotator_id), pa.float64())
        values = np.asarray(values, dtype=np.float64)
        return pa.array(values, mask=np.isnan(values), type=pa.float64())

    rows = pa.table([pa.array(annotator_id, pa.string()), pa.array(true_label, pa.string()),
                     pa.array(answered_label, pa.string()), pa.array(to_fixed(expected)),
                     pa.array(np.asarray(consensus, dtype=np.int64)), pa.array(np.zeros(len(annotator_id), np.int64)),
                     floats(bias), floats(noise_scale)], schema=PARTIAL_SCHEMA)
    cells = sum_partial_stats([rows])
    keep = pc.or_(pc.greater(cells.column("expected"), 0), pc.greater(cells.column("consensus"), 0))
    return cells.filter(keep)


def _sorted_sums(table: pa.Table, keys: list[str], values: list[str],
                 largest: tuple[str, ...] = ()) -> tuple[pa.Table, dict[str, np.ndarray]]:
    """(one row of keys per group, per group: the sum of each of `values`, the largest non-NaN value of
    each of `largest`). Summed in a fixed order (rows sorted by keys and values), so always the same bits."""
    if table.num_rows == 0:
        return table.select(keys), {name: np.zeros(0) for name in (*values, *largest)}
    # One integer key per row (codes in string order) sorts much faster than the strings themselves.
    key = np.zeros(table.num_rows, dtype=np.int64)
    for name in keys:
        codes, uniques = factorize_sorted(table.column(name))
        key = key * len(uniques) + codes
    columns = [table.column(value).to_numpy() for value in values]
    # Floating-point sums would depend on order, so rows of a key are summed in value order; integer
    # columns (all of PARTIAL_SCHEMA's) add up exactly in any order and need no sorting.
    floating = [column for column in columns if column.dtype.kind == "f"]
    order = np.lexsort([*reversed(floating), key]) if floating else np.argsort(key, kind="stable")
    ordered_key = key[order]
    starts = np.flatnonzero(np.concatenate([[True], ordered_key[1:] != ordered_key[:-1]]))
    sums = {value: np.add.reduceat(column[order], starts) for value, column in zip(values, columns)}
    sums.update({name: np.fmax.reduceat(_nan_filled(table.column(name))[order], starts) for name in largest})
    return table.select(keys).take(pa.array(order[starts])), sums


def _nan_filled(column) -> np.ndarray:
    return pc.fill_null(column, np.nan).to_numpy(zero_copy_only=False).astype(np.float64)


def _nullable(values: np.ndarray) -> pa.Array:
    return pa.array(values, mask=~np.isfinite(values), type=pa.float64())


def sum_partial_stats(partials: list[pa.Table]) -> pa.Table:
    """The partial tables of all buckets -> one row per (annotator, true, answered) cell.

    Counts add up; `bias` and `noise_scale` keep the largest non-null value of the cell (order-free).
    """
    table = pa.concat_tables(partials) if partials else PARTIAL_SCHEMA.empty_table()
    keys, sums = _sorted_sums(table, ["annotator_id", "true_label", "answered_label"],
                              ["expected", "consensus", "gold"], largest=("bias", "noise_scale"))
    return pa.table([*keys.columns, pa.array(sums["expected"], pa.int64()), pa.array(sums["consensus"], pa.int64()),
                     pa.array(sums["gold"], pa.int64()), _nullable(sums["bias"]), _nullable(sums["noise_scale"])],
                    schema=PARTIAL_SCHEMA)


def summarize_annotators(partials: list[pa.Table], pseudonym: Callable[[str], str]) -> tuple[pa.Table, list[str]]:
    """(ANNOTATOR_SCHEMA rows sorted by pseudonym, the class order of `confusion`)."""
    cells = sum_partial_stats(partials)
    if cells.num_rows == 0:
        return ANNOTATOR_SCHEMA.empty_table(), []
    annotator_idx, annotator_ids = factorize_sorted(cells.column("annotator_id"))
    label_idx, label_names = factorize_sorted(concatenated([cells.column("true_label"),
                                                            cells.column("answered_label")], pa.string()))
    true, answered = label_idx[:cells.num_rows], label_idx[cells.num_rows:]
    n, n_labels = len(annotator_ids), len(label_names)
    flat = (annotator_idx * n_labels + true) * n_labels + answered

    def dense(column: str) -> np.ndarray:  # cells are unique, so this places values without adding any
        return np.bincount(flat, weights=cells.column(column).to_numpy(), minlength=n * n_labels ** 2) \
            .reshape(n, n_labels, n_labels)

    expected, consensus, gold = from_fixed(dense("expected")), dense("consensus"), dense("gold")
    diagonal = np.arange(n_labels)
    votes = consensus.sum(axis=(1, 2))
    gold_votes = gold.sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = expected[:, diagonal, diagonal].sum(axis=1) / expected.sum(axis=(1, 2))
        agreement = consensus[:, diagonal, diagonal].sum(axis=1) / votes
        gold_accuracy = gold[:, diagonal, diagonal].sum(axis=1) / gold_votes
        row_mass = expected.sum(axis=2, keepdims=True)
        confusion = expected / row_mass
    accuracy_low, accuracy_high = wilson_interval(expected[:, diagonal, diagonal].sum(axis=1),
                                                  expected.sum(axis=(1, 2)))
    gold_low, gold_high = wilson_interval(gold[:, diagonal, diagonal].sum(axis=1), gold_votes)
    low_accuracy = low_accuracy_flags(accuracy, np.where(gold_votes > 0, gold_high, accuracy_high))
    # confusion as list<list<double>>, built from flat arrays: a row without mass is null.
    rows = pa.ListArray.from_arrays(pa.array(np.arange(0, n * n_labels ** 2 + 1, n_labels, dtype=np.int32)),
                                    pa.array(confusion.ravel()), mask=pa.array(row_mass.ravel() <= 0))
    confusion_rows = pa.ListArray.from_arrays(pa.array(np.arange(0, n * n_labels + 1, n_labels, dtype=np.int32)),
                                              rows)
    names = [pseudonym(annotator) for annotator in annotator_ids.to_pylist()]

    def per_annotator(column: str) -> np.ndarray:  # the largest non-null value of the annotator's cells
        values = np.full(n, np.nan)
        np.fmax.at(values, annotator_idx, _nan_filled(cells.column(column)))
        return values

    nullable = _nullable
    table = pa.table([pa.array(names, pa.string()), pa.array(votes.astype(np.int64)), nullable(accuracy),
                      nullable(agreement), pa.array(gold_votes.astype(np.int64)), nullable(gold_accuracy),
                      confusion_rows.cast(ANNOTATOR_SCHEMA.field("confusion").type),
                      nullable(per_annotator("bias")), nullable(per_annotator("noise_scale")),
                      pa.array([label_names.to_pylist()] * n, pa.list_(pa.string())),
                      nullable(accuracy_low), nullable(accuracy_high), nullable(gold_low), nullable(gold_high),
                      pa.array(low_accuracy)],
                     schema=ANNOTATOR_SCHEMA)
    return table.sort_by("annotator"), label_names.to_pylist()


def keyed_pseudonym(key: bytes) -> Callable[[str], str]:
    """annotator_id -> "a" + 20 hex digits of HMAC-SHA256(key, id): stable per key, not reversible without it.

    Only a secret key makes it so: publishing (transforms/publish.py) refuses an empty key, and a build
    without LABELBEAM_PSEUDONYM_KEY uses its output root's key file (version_store.root_pseudonym_key).
    """
    def pseudonym(annotator_id: str) -> str:
        return "a" + hmac.new(key, annotator_id.encode("utf-8"), hashlib.sha256).hexdigest()[:20]
    return pseudonym


def key_id(key: bytes) -> str:
    """A short fingerprint telling versions pseudonymized with the same key apart; reveals nothing usable."""
    return hashlib.sha256(b"labelbeam pseudonym key id\0" + key).hexdigest()[:12]

