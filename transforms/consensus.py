"""The consensus step: a pluggable ConsensusMethod turns votes into one row per item.

A method receives a PCollection of vote tables (VOTE_SCHEMA) in which every table holds all votes
of the items it contains, and returns a PCollection of consensus tables (CONSENSUS_SCHEMA). Methods
whose answer for an item depends only on that item's votes subclass PerItemMethod and implement
`aggregate`; global methods (EM over annotators) implement `expand_votes` with their own shuffles.
"""
from __future__ import annotations

import abc
import csv
import io
import math
from typing import ClassVar

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from labelbeam.transforms import arrow_coder  # noqa: F401 - registers the Arrow coder
from labelbeam.transforms.factorize import factorize_sorted
from labelbeam.transforms.majority_vote import VoteTally, majority_vote

STATUS_OK = "ok"
STATUS_TIE = "tie"
STATUS_NEEDS_MORE_VOTES = "needs_more_votes"

CONSENSUS_SCHEMA = pa.schema([
    pa.field("item_id", pa.string(), nullable=False),
    pa.field("label", pa.string()),
    pa.field("confidence", pa.float64(), nullable=False),
    pa.field("num_votes", pa.int64(), nullable=False),
    pa.field("agreement", pa.float64()),
    pa.field("status", pa.string(), nullable=False),
])


class ConsensusMethod(abc.ABC):
    """A truth-inference method. `name` is what --method selects."""
    name: ClassVar[str]

    def __init__(self, min_votes: int = 1):
        if min_votes < 1:
            raise ValueError(f"min_votes must be at least 1, got {min_votes}")
        self.min_votes = min_votes

    def params(self) -> dict:
        """What the manifest records about this method; equal params give equal results."""
        return {"method": self.name, "min_votes": self.min_votes}

    @abc.abstractmethod
    def expand_votes(self, votes: beam.PCollection) -> beam.PCollection:
        """PCollection[pa.Table of votes] -> PCollection[pa.Table of CONSENSUS_SCHEMA rows]."""


class PerItemMethod(ConsensusMethod):
    @abc.abstractmethod
    def aggregate(self, votes: pa.Table) -> pa.Table:
        """All votes of some items -> one CONSENSUS_SCHEMA row per item, sorted by item_id."""

    def expand_votes(self, votes):
        return votes | "AggregatePerItem" >> beam.Map(self.aggregate).with_output_types(pa.Table)


def tally_to_table(item_ids: pa.Array, label_names: pa.Array, tally: VoteTally, min_votes: int) -> pa.Table:
    """Consensus rows from a tally, with status: needs_more_votes before tie before ok."""
    has_label = tally.label_idx >= 0
    labels = label_names.take(pa.array(np.where(has_label, tally.label_idx, 0), mask=~has_label)) \
        if len(label_names) else pa.nulls(len(item_ids), pa.string())
    status = np.where((tally.num_votes < min_votes) | ~has_label, STATUS_NEEDS_MORE_VOTES,
                      np.where(tally.is_tie, STATUS_TIE, STATUS_OK))
    agreement = pa.array(tally.agreement, mask=np.isnan(tally.agreement), type=pa.float64())
    return pa.table([item_ids, labels, pa.array(tally.confidence, pa.float64()),
                     pa.array(tally.num_votes, pa.int64()), agreement, pa.array(status, pa.string())],
                    schema=CONSENSUS_SCHEMA)


class MajorityVote(PerItemMethod):
    """The most frequent label; confidence is its share of the item's votes."""
    name = "mv"

    def _weights(self, votes: pa.Table) -> np.ndarray | None:
        return None

    def aggregate(self, votes: pa.Table) -> pa.Table:
        # Only single-label votes count; an item whose votes are all multi-label or ratings still
        # gets a row (label null, needs_more_votes) so no item silently disappears.
        item_idx, item_ids = factorize_sorted(votes.column("item_id"))
        labeled = pc.is_valid(votes.column("label")).to_numpy(zero_copy_only=False)
        label_idx, label_names = factorize_sorted(votes.column("label").filter(pa.array(labeled)))
        weights = self._weights(votes)
        tally = majority_vote(item_idx[labeled], label_idx, len(item_ids), len(label_names),
                              None if weights is None else weights[labeled])
        return tally_to_table(item_ids, label_names, tally, self.min_votes)


class WeightedMajorityVote(MajorityVote):
    """Majority vote where each vote counts its annotator's weight (from a CSV annotator_id,weight).

    Annotators missing from the file weigh `default_weight`.
    """
    name = "wmv"

    def __init__(self, weights: dict[str, float], min_votes: int = 1, default_weight: float = 1.0):
        super().__init__(min_votes)
        for annotator, weight in weights.items():
            if not (math.isfinite(weight) and weight >= 0):
                raise ValueError(f"weight of annotator {annotator!r} must be a finite number >= 0, got {weight}")
        self.weights = dict(sorted(weights.items()))
        self.default_weight = default_weight

    def params(self) -> dict:
        return {**super().params(), "weights": self.weights, "default_weight": self.default_weight}

    def _weights(self, votes: pa.Table) -> np.ndarray:
        return np.array([self.weights.get(a, self.default_weight)
                         for a in votes.column("annotator_id").to_pylist()], dtype=np.float64)


def read_weights_csv(text: str) -> dict[str, float]:
    """annotator_id,weight rows (header optional) -> {annotator_id: weight}."""
    weights = {}
    for line_number, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        if not row or (line_number == 1 and row[0] == "annotator_id"):
            continue
        if len(row) != 2:
            raise ValueError(f"weights line {line_number}: expected annotator_id,weight, got {row}")
        try:
            weights[row[0]] = float(row[1])
        except ValueError:
            raise ValueError(f"weights line {line_number}: {row[1]!r} is not a number") from None
    return weights


METHODS: dict[str, type[ConsensusMethod]] = {m.name: m for m in (MajorityVote, WeightedMajorityVote)}


class ComputeConsensus(beam.PTransform):
    """Vote tables -> consensus tables, by the chosen method."""

    def __init__(self, method: ConsensusMethod):
        super().__init__()
        self._method = method

    def expand(self, votes):
        return self._method.expand_votes(votes)
