"""The consensus step: a pluggable ConsensusMethod turns votes into one row per item.

A method receives a PCollection of vote tables (VOTE_SCHEMA) in which every table holds all votes
of the items it contains, and returns a PCollection of consensus tables (CONSENSUS_SCHEMA). Methods
whose answer for an item depends only on that item's votes subclass PerItemMethod and implement
`aggregate`; global methods (EM over annotators) implement `expand_votes` with their own shuffles.
"""
from __future__ import annotations

import abc
import csv
import hashlib
import io
import json
import math
from typing import ClassVar

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from labelbeam.transforms import arrow_coder  # noqa: F401 - registers the Arrow coder
from labelbeam.transforms.dawid_skene import Answers, dawid_skene
from labelbeam.transforms.factorize import factorize_sorted
from labelbeam.transforms.glad import glad
from labelbeam.transforms.mace import mace
from labelbeam.transforms.majority_vote import VoteTally, majority_vote
from labelbeam.transforms.one_coin import one_coin

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


class AnnotatorModelMethod(ConsensusMethod):
    """A model of annotators fitted over all votes at once; confidence is the label's posterior.

    This is the in-process path: all votes are gathered on one worker and fitted there, which
    suits datasets that fit in one machine's memory. Gold items (item_id -> label) are clamped to
    their label while fitting. Subclasses name the model and compute its posteriors.
    """
    max_iter: ClassVar[int] = 100
    tol: ClassVar[float] = 1e-5

    def __init__(self, min_votes: int = 1, gold: dict[str, str] | None = None):
        super().__init__(min_votes)
        self.gold = dict(sorted((gold or {}).items()))

    def params(self) -> dict:
        return {**super().params(), "max_iter": self.max_iter, "tol": self.tol, "gold_items": len(self.gold),
                "gold_sha256": hashlib.sha256(json.dumps(self.gold).encode()).hexdigest() if self.gold else None}

    @abc.abstractmethod
    def posteriors(self, answers: Answers, gold: np.ndarray | None) -> np.ndarray:
        """[n_items, n_labels] posterior of each item's class."""

    def expand_votes(self, votes):
        return (votes
                | "GatherVotes" >> beam.combiners.ToList()
                | "FitAnnotatorModel" >> beam.Map(self.fit).with_output_types(pa.Table))

    def fit(self, tables: list[pa.Table]) -> pa.Table:
        votes = pa.concat_tables(tables) if tables else None
        if votes is None or votes.num_rows == 0:
            return CONSENSUS_SCHEMA.empty_table()
        item_idx, item_ids = factorize_sorted(votes.column("item_id"))
        labeled = pc.is_valid(votes.column("label")).to_numpy(zero_copy_only=False)
        votes_with_label = votes.filter(pa.array(labeled))
        # Gold labels nobody voted for are classes too.
        label_values = pa.chunked_array([votes_with_label.column("label"),
                                         pa.array(sorted(set(self.gold.values())), pa.string())])
        label_idx, label_names = factorize_sorted(label_values)
        label_idx = label_idx[:votes_with_label.num_rows]
        worker_idx, worker_ids = factorize_sorted(votes_with_label.column("annotator_id"))
        answers = Answers(item_idx[labeled], worker_idx, label_idx, len(item_ids), len(worker_ids), len(label_names))
        gold = None
        if self.gold:
            label_position = {name: i for i, name in enumerate(label_names.to_pylist())}
            item_position = {name: i for i, name in enumerate(item_ids.to_pylist())}
            gold = np.full(len(item_ids), -1)
            for item, label in self.gold.items():
                if item in item_position:
                    gold[item_position[item]] = label_position[label]
        posteriors = self.posteriors(answers, gold)
        tally = majority_vote(answers.item, answers.label, answers.n_items, answers.n_labels)
        has_votes = tally.num_votes > 0
        if answers.n_labels > 1:
            top_two = np.sort(posteriors, axis=1)[:, -2:]
            is_tie = top_two[:, 0] == top_two[:, 1]
        else:
            is_tie = np.zeros(len(item_ids), dtype=bool)
        posterior_tally = VoteTally(np.where(has_votes, posteriors.argmax(axis=1), -1),
                                    np.where(has_votes, posteriors.max(axis=1), 0.0),
                                    tally.num_votes, tally.agreement, is_tie & has_votes)
        return tally_to_table(item_ids, label_names, posterior_tally, self.min_votes)


class DawidSkene(AnnotatorModelMethod):
    """Dawid-Skene: a full confusion matrix per annotator."""
    name = "ds"
    smoothing = 0.01

    def params(self) -> dict:
        return {**super().params(), "smoothing": self.smoothing}

    def posteriors(self, answers, gold):
        return dawid_skene(answers, self.max_iter, self.tol, self.smoothing, gold).posteriors


class OneCoin(AnnotatorModelMethod):
    """One-coin Dawid-Skene: one accuracy per annotator, errors spread evenly."""
    name = "one_coin"
    smoothing = 0.01

    def params(self) -> dict:
        return {**super().params(), "smoothing": self.smoothing}

    def posteriors(self, answers, gold):
        return one_coin(answers, self.max_iter, self.tol, self.smoothing, gold).posteriors


class Glad(AnnotatorModelMethod):
    """GLAD: annotator ability times item difficulty."""
    name = "glad"

    def posteriors(self, answers, gold):
        return glad(answers, self.max_iter, self.tol, gold=gold).posteriors


class Mace(AnnotatorModelMethod):
    """MACE: each annotator is a spammer with some probability, with their own spam distribution."""
    name = "mace"

    def posteriors(self, answers, gold):
        return mace(answers, self.max_iter, self.tol, gold=gold).posteriors


def read_gold_csv(text: str) -> dict[str, str]:
    """item_id,label rows (header optional) -> {item_id: label}."""
    gold = {}
    for line_number, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        if not row or (line_number == 1 and row[:2] in (["item_id", "label"], ["task", "label"])):
            continue
        if len(row) != 2 or not row[0]:
            raise ValueError(f"gold line {line_number}: expected item_id,label, got {row}")
        gold[row[0]] = row[1]
    return gold


METHODS: dict[str, type[ConsensusMethod]] = {
    m.name: m for m in (MajorityVote, WeightedMajorityVote, DawidSkene, OneCoin, Glad, Mace)}


class ComputeConsensus(beam.PTransform):
    """Vote tables -> consensus tables, by the chosen method."""

    def __init__(self, method: ConsensusMethod):
        super().__init__()
        self._method = method

    def expand(self, votes):
        return self._method.expand_votes(votes)
