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
  a null row.
The sums are deterministic: rows are sorted by key and value before they are added, so the
order in which buckets arrive never changes the bits.
"""
from __future__ import annotations

import hashlib
import hmac
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from labelbeam.transforms.factorize import factorize_sorted

PARTIAL_SCHEMA = pa.schema([
    pa.field("annotator_id", pa.string(), nullable=False),
    pa.field("true_label", pa.string(), nullable=False),
    pa.field("answered_label", pa.string(), nullable=False),
    pa.field("expected", pa.float64(), nullable=False),
    pa.field("consensus", pa.int64(), nullable=False),
    pa.field("gold", pa.int64(), nullable=False),
])

ANNOTATOR_SCHEMA = pa.schema([
    pa.field("annotator", pa.string(), nullable=False),
    pa.field("votes", pa.int64(), nullable=False),
    pa.field("accuracy", pa.float64()),
    pa.field("agreement", pa.float64()),
    pa.field("gold_votes", pa.int64(), nullable=False),
    pa.field("gold_accuracy", pa.float64()),
    pa.field("confusion", pa.list_(pa.list_(pa.float64()))),
])


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
    expected = np.zeros(cells)
    for true in range(n_labels):
        expected += np.bincount(base + true * n_labels, weights=posteriors[answer_item, true], minlength=cells)

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
                     label_names.take(pa.array(answered)), pa.array(expected[keep]),
                     pa.array(consensus_counts[keep]), pa.array(gold_counts[keep])], schema=PARTIAL_SCHEMA)


def _sorted_sums(table: pa.Table, keys: list[str], values: list[str]) -> tuple[pa.Table, dict[str, np.ndarray]]:
    """(one row of keys per group, summed values): summed in a fixed order, so always the same bits."""
    table = table.sort_by([(key, "ascending") for key in keys] + [(value, "ascending") for value in values])
    if table.num_rows == 0:
        return table.select(keys), {value: np.zeros(0) for value in values}
    same = np.ones(table.num_rows, dtype=bool)
    for key in keys:
        column = table.column(key)
        same[1:] &= pc.equal(column.slice(1), column.slice(0, table.num_rows - 1)).to_numpy(zero_copy_only=False)
    starts = np.flatnonzero(~same | (np.arange(table.num_rows) == 0))
    sums = {value: np.add.reduceat(table.column(value).to_numpy(), starts) for value in values}
    return table.select(keys).take(pa.array(starts)), sums


def sum_partial_stats(partials: list[pa.Table]) -> pa.Table:
    """The partial tables of all buckets -> one row per (annotator, true, answered) cell."""
    table = pa.concat_tables(partials) if partials else PARTIAL_SCHEMA.empty_table()
    keys, sums = _sorted_sums(table, ["annotator_id", "true_label", "answered_label"], ["expected", "consensus", "gold"])
    return pa.table([*keys.columns, pa.array(sums["expected"], pa.float64()), pa.array(sums["consensus"], pa.int64()),
                     pa.array(sums["gold"], pa.int64())], schema=PARTIAL_SCHEMA)


def summarize_annotators(partials: list[pa.Table], pseudonym: Callable[[str], str]) -> tuple[pa.Table, list[str]]:
    """(ANNOTATOR_SCHEMA rows sorted by pseudonym, the class order of `confusion`)."""
    cells = sum_partial_stats(partials)
    if cells.num_rows == 0:
        return ANNOTATOR_SCHEMA.empty_table(), []
    annotator_idx, annotator_ids = factorize_sorted(cells.column("annotator_id"))
    label_idx, label_names = factorize_sorted(pa.chunked_array([cells.column("true_label"),
                                                                cells.column("answered_label")]))
    true, answered = label_idx[:cells.num_rows], label_idx[cells.num_rows:]
    n, n_labels = len(annotator_ids), len(label_names)
    flat = (annotator_idx * n_labels + true) * n_labels + answered

    def dense(column: str) -> np.ndarray:  # cells are unique, so this places values without adding any
        return np.bincount(flat, weights=cells.column(column).to_numpy(), minlength=n * n_labels ** 2) \
            .reshape(n, n_labels, n_labels)

    expected, consensus, gold = dense("expected"), dense("consensus"), dense("gold")
    diagonal = np.arange(n_labels)
    votes = consensus.sum(axis=(1, 2))
    gold_votes = gold.sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = expected[:, diagonal, diagonal].sum(axis=1) / expected.sum(axis=(1, 2))
        agreement = consensus[:, diagonal, diagonal].sum(axis=1) / votes
        gold_accuracy = gold[:, diagonal, diagonal].sum(axis=1) / gold_votes
        row_mass = expected.sum(axis=2, keepdims=True)
        confusion = expected / row_mass
    confusion_rows = [[None if row_mass[a, k, 0] <= 0 else confusion[a, k].tolist() for k in range(n_labels)]
                      for a in range(n)]
    names = [pseudonym(annotator) for annotator in annotator_ids.to_pylist()]

    def nullable(values: np.ndarray) -> pa.Array:
        return pa.array(values, mask=~np.isfinite(values), type=pa.float64())

    table = pa.table([pa.array(names, pa.string()), pa.array(votes.astype(np.int64)), nullable(accuracy),
                      nullable(agreement), pa.array(gold_votes.astype(np.int64)), nullable(gold_accuracy),
                      pa.array(confusion_rows, ANNOTATOR_SCHEMA.field("confusion").type)], schema=ANNOTATOR_SCHEMA)
    return table.sort_by("annotator"), label_names.to_pylist()


def keyed_pseudonym(key: bytes) -> Callable[[str], str]:
    """annotator_id -> "a" + 20 hex digits of HMAC-SHA256(key, id): stable per key, not reversible without it."""
    def pseudonym(annotator_id: str) -> str:
        return "a" + hmac.new(key, annotator_id.encode("utf-8"), hashlib.sha256).hexdigest()[:20]
    return pseudonym


def key_id(key: bytes) -> str:
    """A short fingerprint telling versions pseudonymized with the same key apart; reveals nothing usable."""
    return hashlib.sha256(b"labelbeam pseudonym key id\0" + key).hexdigest()[:12]
