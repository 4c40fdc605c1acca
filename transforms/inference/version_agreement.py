"""A version's agreement statistics from its standing votes, as additive per-bucket partials.

Each item bucket's votes give one `AgreementPartial` (its class indexes named by its own sorted labels);
`version_agreement` aligns the partials on the union of the labels and sums them into the manifest's
`agreement` section: Krippendorff's alpha (nominal over single labels, interval over scores), Fleiss'
kappa where every item has the same number of votes, and the mean per-item vote entropy. The sums are
exact (agreement.py), and the entropy mean is an fsum, so any bucketing and order give the same bits.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from labelbeam.transforms.arrays.factorize import factorize_sorted
from labelbeam.transforms.inference.agreement import (
    Coincidences,
    FleissStatistics,
    IntervalStatistics,
    alpha_from_coincidences,
    class_counts,
    coincidences,
    fleiss_kappa,
    fleiss_statistics,
    interval_alpha,
    interval_statistics,
    sum_interval_statistics,
    vote_entropy,
)

AGREEMENT = "agreement"  # the tag of the per-bucket partials in the build's graph
ITEM_SCHEMA = pa.schema([pa.field("item_id", pa.string(), nullable=False),
                         pa.field("votes", pa.int64(), nullable=False),
                         pa.field("vote_entropy_bits", pa.float64(), nullable=False)])
PAIR_SCHEMA = pa.schema([pa.field("annotator_id", pa.string(), nullable=False),
                         pa.field("pairs", pa.int64(), nullable=False),
                         pa.field("agreed_pairs", pa.int64(), nullable=False)])


def annotator_pairs(annotator: pa.Array, item: np.ndarray, label: np.ndarray) -> pa.Table:
    """Per annotator: the other votes on the items they labelled (pairs), and how many of those gave the same
    label (agreed_pairs). Additive over item buckets; agreed / pairs is the annotator's pairwise agreement."""
    if len(item) == 0:
        return PAIR_SCHEMA.empty_table()
    n_classes = int(label.max()) + 1
    per_item = np.bincount(item)
    per_item_label = np.bincount(item * n_classes + label)
    table = pa.table({"annotator_id": annotator, "pairs": per_item[item] - 1,
                      "agreed_pairs": per_item_label[item * n_classes + label] - 1})
    return sum_annotator_pairs([table])


def sum_annotator_pairs(parts: list[pa.Table]) -> pa.Table:
    table = pa.concat_tables(parts) if parts else PAIR_SCHEMA.empty_table()
    sums = table.group_by("annotator_id").aggregate([("pairs", "sum"), ("agreed_pairs", "sum")])
    return pa.table([sums.column("annotator_id"), sums.column("pairs_sum").cast(pa.int64()),
                     sums.column("agreed_pairs_sum").cast(pa.int64())], schema=PAIR_SCHEMA).sort_by("annotator_id")


class AgreementPartial(NamedTuple):
    labels: tuple[str, ...]         # the class names of the partial's indexes, sorted
    coincidences: Coincidences      # single-label votes
    fleiss: FleissStatistics
    interval: IntervalStatistics    # score votes
    items: pa.Table                 # ITEM_SCHEMA: per item with a single-label vote, its votes and entropy
    annotator_pairs: pa.Table       # PAIR_SCHEMA: per annotator, vote pairs shared with others and agreed on


def agreement_partial(votes: pa.Table) -> AgreementPartial:
    """The partial of one bucket's standing votes (item_id, label, score columns), all votes of its items."""
    single = votes.filter(pc.is_valid(votes.column("label")))
    item, item_ids = factorize_sorted(single.column("item_id"))
    label, names = factorize_sorted(single.column("label"))
    n_classes = len(names)
    scored = votes.filter(pc.is_valid(votes.column("score")))
    score_item, _ = factorize_sorted(scored.column("item_id"))
    counts = class_counts(item, label, int(item.max()) + 1 if len(item) else 0, n_classes)
    return AgreementPartial(tuple(names.to_pylist()), coincidences(item, label, n_classes),
                            fleiss_statistics(item, label, n_classes),
                            interval_statistics(score_item, scored.column("score").to_numpy()),
                            pa.table([item_ids, pa.array(counts.sum(axis=1), pa.int64()),
                                      pa.array(vote_entropy(counts) if len(counts) else np.zeros(0), pa.float64())],
                                     schema=ITEM_SCHEMA),
                            annotator_pairs(single.column("annotator_id"), item, label))


def item_agreement(partials: Iterable[AgreementPartial], labels: pa.Table) -> pa.Table:
    """The item agreement table: per item with a single-label vote, its votes, vote entropy in bits, and
    `unsure`: the consensus is not settled (status other than ok) or its confidence is below one half."""
    items = pa.concat_tables([partial.items for partial in partials]) if partials else ITEM_SCHEMA.empty_table()
    items = items.sort_by("item_id")
    row = pc.index_in(items.column("item_id"), value_set=labels.column("item_id"))
    confidence, status = pc.take(labels.column("confidence"), row), pc.take(labels.column("status"), row)
    unsure = pc.or_(pc.fill_null(pc.not_equal(status, "ok"), True), pc.fill_null(pc.less(confidence, 0.5), True))
    return items.append_column(pa.field("unsure", pa.bool_(), nullable=False), unsure)


def _widened(partial: AgreementPartial, position: dict[str, int], n_classes: int) -> tuple[Coincidences,
                                                                                          FleissStatistics]:
    """The partial's class statistics in the version's class order."""
    where = np.array([position[name] for name in partial.labels], dtype=np.int64)
    units = np.zeros((n_classes, n_classes), dtype=np.int64)
    units[np.ix_(where, where)] = partial.coincidences.units
    pairable = np.zeros(n_classes, dtype=np.int64)
    pairable[where] = partial.coincidences.pairable
    totals = np.zeros(n_classes, dtype=np.int64)
    totals[where] = partial.fleiss.class_totals
    fleiss = partial.fleiss
    return Coincidences(units, pairable), FleissStatistics(fleiss.items, fleiss.sum_squares, totals,
                                                           fleiss.min_votes, fleiss.max_votes)


def _number(value: float) -> float | None:
    return None if value is None or math.isnan(value) else round(float(value), 6)


def version_agreement(partials: Iterable[AgreementPartial]) -> dict[str, Any]:
    """The manifest's agreement statistics; a statistic that the votes do not define is null."""
    partials = list(partials)
    labels = sorted(set().union(*(partial.labels for partial in partials)))
    position = {name: index for index, name in enumerate(labels)}
    n_classes = len(labels)
    total_coincidences = Coincidences(np.zeros((n_classes, n_classes), np.int64), np.zeros(n_classes, np.int64))
    total_fleiss = FleissStatistics(0, 0, np.zeros(n_classes, np.int64), 0, 0)
    for partial in partials:
        part_coincidences, part_fleiss = _widened(partial, position, n_classes)
        total_coincidences = total_coincidences + part_coincidences
        total_fleiss = total_fleiss + part_fleiss
    kappa = fleiss_kappa(total_fleiss)
    interval = sum_interval_statistics(partial.interval for partial in partials)
    entropies = np.concatenate([partial.items.column("vote_entropy_bits").to_numpy() for partial in partials]) \
        if partials else np.zeros(0)
    return {
        "krippendorff_alpha": _number(alpha_from_coincidences(total_coincidences)) if n_classes else None,
        "pairable_votes": int(total_coincidences.pairable.sum()),
        "krippendorff_alpha_interval": _number(interval_alpha(interval)) if interval.n else None,
        "fleiss_kappa": _number(kappa.kappa) if kappa.kappa is not None else None,
        "fleiss_kappa_undefined": kappa.reason,
        "vote_entropy_bits_mean": round(math.fsum(entropies) / len(entropies), 6) if len(entropies) else None,
    }
