"""The consensus step: a pluggable ConsensusMethod turns votes into one row per item.

A method receives a PCollection of vote tables in which every table holds all votes of the items
it contains. It computes a posterior over each item's class - vote shares for majority vote, the
fitted model's posterior for the annotator models - and returns consensus tables (CONSENSUS_SCHEMA)
plus partial per-annotator statistics (annotator_stats.PARTIAL_SCHEMA) that add up across buckets.
Methods whose answer for an item depends only on that item's votes subclass PerItemMethod and run
per bucket; the annotator models fit over all votes, in process or as a Beam EM.

This module holds the base classes and the single-label methods. Three other kinds of answer have
methods in their own modules, built on these (`methods.METHODS` lists them all):
- multi-label (`multilabel`, multi_label_method.py): per-class binary majority, row column `labels`;
- numeric ratings (`mean`, `median`, `bias_corrected`; rating_methods.py), row column `score`;
- pairwise preferences (`bradley_terry`, preference_method.py): `label` is the strongest response,
  and the build also exports prompt/chosen/rejected records (output PREFERENCES).
In memory every row has every column (`labels` [] and `score` null where a method does not fill
them); a method publishes the columns of its `row_schema_file`.
`num_votes` counts the votes that took part; the rest of an item's votes (another kind of answer, an
unusable comparison) are not in it, and the manifest reports votes_used / votes_unused.
"""
from __future__ import annotations

import abc
import csv
import hashlib
import io
import json
import math
import operator
from typing import ClassVar, NamedTuple

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam import pvalue

from labelbeam.transforms import arrow_coder
from labelbeam.transforms.annotator_stats import PARTIAL_SCHEMA, partial_annotator_stats
from labelbeam.transforms.calibration import calibrated_with_gold
from labelbeam.transforms.dawid_skene import Answers, dawid_skene
from labelbeam.transforms.dawid_skene import e_step as dawid_skene_e_step
from labelbeam.transforms.factorize import concatenated, factorize_sorted
from labelbeam.transforms.glad import e_step as glad_e_step
from labelbeam.transforms.glad import glad
from labelbeam.transforms.mace import e_step as mace_e_step
from labelbeam.transforms.mace import mace
from labelbeam.transforms.majority_vote import VoteTally, majority_vote
from labelbeam.transforms.one_coin import e_step as one_coin_e_step
from labelbeam.transforms.one_coin import fixed_log_priors, one_coin

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
    pa.field("labels", pa.list_(pa.string()), nullable=False),   # multilabel: included classes, sorted
    pa.field("score", pa.float64()),                              # ratings: the consensus score
])

# The vote columns consensus methods read.
VOTE_COLUMNS = pa.schema([pa.field("item_id", pa.string()), pa.field("annotator_id", pa.string()),
                          pa.field("label", pa.string())])


LABELS, ANNOTATOR_STATS, PREFERENCES = "labels", "annotator_stats", "preferences"


class IndexedVotes(NamedTuple):
    """Some items' votes as integer answers, with the names behind the indexes."""
    item_ids: pa.Array          # sorted; every item of the votes, with or without a single-label vote
    label_names: pa.Array       # sorted; the votes' labels and the gold labels
    annotator_ids: pa.Array     # sorted; annotators with a single-label vote
    answers: Answers
    gold: np.ndarray | None     # per item: gold class index or -1; None without gold


def index_votes(votes: pa.Table, gold: dict[str, str]) -> IndexedVotes:
    item_idx, item_ids = factorize_sorted(votes.column("item_id"))
    # Only single-label votes are answers; an item whose votes are all multi-label or ratings still
    # gets a row (label null, needs_more_votes), so no item silently disappears.
    labeled = pc.is_valid(votes.column("label")).to_numpy(zero_copy_only=False)
    with_label = votes.filter(pa.array(labeled))
    # Gold labels nobody voted for are classes too.
    label_values = concatenated([with_label.column("label"), pa.array(sorted(set(gold.values())), pa.string())],
                                pa.string())
    label_idx, label_names = factorize_sorted(label_values)
    worker_idx, annotator_ids = factorize_sorted(with_label.column("annotator_id"))
    item_of_answer, label_of_answer = item_idx[labeled], label_idx[:with_label.num_rows]
    # Canonical order (item, annotator), whatever order the votes came in: float sums over answers
    # (EM statistics, weighted votes) then give the same bits for any bucketing or arrival order.
    order = np.lexsort((worker_idx, item_of_answer))
    answers = Answers(item_of_answer[order], worker_idx[order], label_of_answer[order], len(item_ids),
                      len(annotator_ids), len(label_names))
    gold_idx = None
    if gold:
        label_position = {name: i for i, name in enumerate(label_names.to_pylist())}
        gold_idx = np.array([label_position[gold[item]] if item in gold else -1 for item in item_ids.to_pylist()],
                            dtype=np.int64)
    return IndexedVotes(item_ids, label_names, annotator_ids, answers, gold_idx)


class BucketConsensus(NamedTuple):
    labels: pa.Table             # CONSENSUS_SCHEMA rows of some items
    annotator_stats: pa.Table    # their answers' partial annotator statistics (annotator_stats.PARTIAL_SCHEMA)


beam.coders.registry.register_coder(BucketConsensus, arrow_coder.SizedCoder)


def consensus_from_posteriors(indexed: IndexedVotes, posteriors: np.ndarray, min_votes: int) -> BucketConsensus:
    """Consensus rows (label = the posterior's arg-max, smallest class on ties) and annotator statistics."""
    answers = indexed.answers
    tally = majority_vote(answers.item, answers.label, answers.n_items, answers.n_labels)
    has_votes = tally.num_votes > 0
    if answers.n_labels > 1:
        top_two = np.sort(posteriors, axis=1)[:, -2:]
        is_tie = top_two[:, 0] == top_two[:, 1]
    else:
        is_tie = np.zeros(answers.n_items, dtype=bool)
    label = np.where(has_votes, posteriors.argmax(axis=1), -1) if answers.n_labels else \
        np.full(answers.n_items, -1)
    confidence = np.where(has_votes, posteriors.max(axis=1), 0.0) if answers.n_labels else \
        np.zeros(answers.n_items)
    labels = tally_to_table(indexed.item_ids, indexed.label_names,
                            VoteTally(label, confidence, tally.num_votes, tally.agreement, is_tie & has_votes),
                            min_votes)
    stats = partial_annotator_stats(indexed.annotator_ids, answers.worker, answers.item, answers.label,
                                    indexed.label_names, posteriors, label, indexed.gold)
    return BucketConsensus(labels, stats)


class SplitConsensus(beam.PTransform):
    """PCollection[a NamedTuple of tables] -> {field name: PCollection[pa.Table]}.

    Typed Maps rather than tagged outputs: Beam types tagged outputs as Any and would pickle, and
    sample sizes by encoding, every table; typed, they get the Arrow coder. The Maps fuse with
    their producer, so nothing is encoded between them.
    """

    def __init__(self, fields: tuple[str, ...] = ("labels", "annotator_stats")):
        super().__init__()
        self._fields = fields

    def expand(self, results):
        return {field: results | f"Take_{field}" >> beam.Map(operator.attrgetter(field)).with_output_types(pa.Table)
                for field in self._fields}


class ConsensusMethod(abc.ABC):
    """A truth-inference method. `name` is what --method selects.

    Gold items (item_id -> label) score the annotators (gold accuracy) with every method; the
    annotator models also keep them at their label while fitting.
    """
    name: ClassVar[str]
    # The published row schema: single-label methods publish v1 rows (no labels/score columns,
    # which would only ever hold [] and null and cost writing); multi-label and ratings publish v2.
    row_schema_file: ClassVar[str] = "consensus_row.v1.avsc"
    supports_gold: ClassVar[bool] = True   # False: --gold does not apply (answers are not one class)
    votes_taking_part: ClassVar[str] = "votes with a single label"

    def __init__(self, min_votes: int = 1, gold: dict[str, str] | None = None):
        if min_votes < 1:
            raise ValueError(f"min_votes must be at least 1, got {min_votes}")
        if gold and not self.supports_gold:
            raise ValueError(f"--method {self.name} does not take gold labels")
        self.min_votes = min_votes
        self.gold = dict(sorted((gold or {}).items()))

    def params(self) -> dict:
        """What the manifest records about this method; equal params give equal results."""
        return {"method": self.name, "min_votes": self.min_votes, "gold_items": len(self.gold),
                "gold_sha256": hashlib.sha256(json.dumps(self.gold).encode()).hexdigest() if self.gold else None}

    def posteriors(self, indexed: IndexedVotes) -> np.ndarray:
        """[n_items, n_labels] probability of each item's class (single-label methods; the others
        override consensus_of instead)."""
        raise NotImplementedError(f"{type(self).__name__} has no class posterior")

    def consensus_of(self, votes: pa.Table) -> BucketConsensus:
        if votes.num_rows == 0:
            return BucketConsensus(CONSENSUS_SCHEMA.empty_table(), PARTIAL_SCHEMA.empty_table())
        indexed = index_votes(votes, self.gold)
        return consensus_from_posteriors(indexed, self.posteriors(indexed), self.min_votes)

    def aggregate(self, votes: pa.Table) -> pa.Table:
        """The consensus of these votes (all votes of their items; for a global method, all votes it
        fits on) -> one CONSENSUS_SCHEMA row per item, sorted by item_id."""
        return self.consensus_of(votes).labels

    @abc.abstractmethod
    def expand_votes(self, votes: beam.PCollection) -> dict[str, beam.PCollection]:
        """PCollection[pa.Table of votes] -> {LABELS: consensus tables, ANNOTATOR_STATS: partial stats tables}."""


class PerItemMethod(ConsensusMethod):
    """A method whose answer for an item depends only on that item's votes: runs per bucket."""

    def expand_votes(self, votes):
        outputs = (votes
                   | "AggregatePerItem" >> beam.Map(self.consensus_of).with_output_types(BucketConsensus)
                   | "SplitOutputs" >> SplitConsensus())
        return outputs


def tally_to_table(item_ids: pa.Array, label_names: pa.Array, tally: VoteTally, min_votes: int) -> pa.Table:
    """Consensus rows from a tally, with status: needs_more_votes before tie before ok."""
    has_label = tally.label_idx >= 0
    labels = label_names.take(pa.array(np.where(has_label, tally.label_idx, 0), mask=~has_label)) \
        if len(label_names) else pa.nulls(len(item_ids), pa.string())
    status = np.where((tally.num_votes < min_votes) | ~has_label, STATUS_NEEDS_MORE_VOTES,
                      np.where(tally.is_tie, STATUS_TIE, STATUS_OK))
    return consensus_table(item_ids, labels, tally.confidence, tally.num_votes, tally.agreement, status)


def consensus_table(item_ids: pa.Array, label: pa.Array | None, confidence: np.ndarray, num_votes: np.ndarray,
                    agreement: np.ndarray, status: np.ndarray, labels: list[list[str]] | None = None,
                    score: np.ndarray | None = None) -> pa.Table:
    """CONSENSUS_SCHEMA rows; NaN agreement / score become null, missing label / labels / score are
    null / [] / null."""
    n = len(item_ids)
    agreement = np.asarray(agreement, dtype=np.float64)
    score_array = pa.nulls(n, pa.float64()) if score is None else \
        pa.array(score, mask=np.isnan(score), type=pa.float64())
    return pa.table([item_ids, pa.nulls(n, pa.string()) if label is None else label,
                     pa.array(np.asarray(confidence, dtype=np.float64), pa.float64()),
                     pa.array(np.asarray(num_votes, dtype=np.int64), pa.int64()),
                     pa.array(agreement, mask=np.isnan(agreement), type=pa.float64()), pa.array(status, pa.string()),
                     empty_lists(n) if labels is None else pa.array(labels, pa.list_(pa.string())),
                     score_array], schema=CONSENSUS_SCHEMA)


def empty_lists(n: int) -> pa.Array:
    return pa.ListArray.from_arrays(pa.array(np.zeros(n + 1, dtype=np.int32)), pa.array([], pa.string()))


def vote_status(num_votes: np.ndarray, min_votes: int, is_tie: np.ndarray | None = None) -> np.ndarray:
    """needs_more_votes (no vote took part, or fewer than min_votes) before tie before ok."""
    tie = np.zeros(len(num_votes), dtype=bool) if is_tie is None else is_tie
    return np.where((num_votes < min_votes) | (num_votes == 0), STATUS_NEEDS_MORE_VOTES,
                    np.where(tie, STATUS_TIE, STATUS_OK))


def weighted_shares(answers: Answers, weights: np.ndarray | None) -> np.ndarray:
    """[n_items, n_labels] each item's (weighted) share of votes per class; all zero without votes."""
    cells = answers.item * answers.n_labels + answers.label  # bincount: far faster than np.add.at
    scores = np.bincount(cells, weights=weights, minlength=answers.n_items * answers.n_labels) \
        .astype(np.float64).reshape(answers.n_items, answers.n_labels)
    totals = scores.sum(axis=1, keepdims=True)
    return np.divide(scores, totals, out=np.zeros_like(scores), where=totals > 0)


class MajorityVote(PerItemMethod):
    """The most frequent label; confidence is its share of the item's votes."""
    name = "mv"

    def answer_weights(self, indexed: IndexedVotes) -> np.ndarray | None:
        return None

    def posteriors(self, indexed):
        return weighted_shares(indexed.answers, self.answer_weights(indexed))


class WeightedMajorityVote(MajorityVote):
    """Majority vote where each vote counts its annotator's weight.

    Weights come from a CSV (annotator_id,weight) or from a previous build's annotator skills
    (keyed by pseudonym: `key` maps a raw annotator id to the key the weights use). Annotators
    without a weight weigh `default_weight`.
    """
    name = "wmv"

    def __init__(self, weights: dict[str, float], min_votes: int = 1, default_weight: float = 1.0,
                 gold: dict[str, str] | None = None, key=None, source: dict | None = None):
        super().__init__(min_votes, gold)
        for annotator, weight in weights.items():
            if not (math.isfinite(weight) and weight >= 0):
                raise ValueError(f"weight of annotator {annotator!r} must be a finite number >= 0, got {weight}")
        self.weights = dict(sorted(weights.items()))
        self.default_weight = default_weight
        self.key = key
        self.source = source

    def params(self) -> dict:
        weights = ({"weights_sha256": hashlib.sha256(json.dumps(self.weights).encode()).hexdigest(),
                    "weights_from": self.source} if self.source else {"weights": self.weights})
        return {**super().params(), **weights, "default_weight": self.default_weight}

    def answer_weights(self, indexed):
        key = self.key or (lambda annotator: annotator)
        per_annotator = np.array([self.weights.get(key(a), self.default_weight)
                                  for a in indexed.annotator_ids.to_pylist()], dtype=np.float64)
        return per_annotator[indexed.answers.worker]


def weights_from_skills(skills: pa.Table, n_labels: int, floor: float = 0.01) -> dict[str, float]:
    """annotator pseudonym -> log((K-1) p / (1 - p)), the optimal vote weight of an annotator whose
    answers are right with probability p (one-coin model), clipped at 0 (no better than chance).

    p is the previous build's estimated accuracy, kept within [floor, 1 - floor] so a perfect
    record gives a large finite weight. Annotators without an accuracy are left to the default.
    """
    weights = {}
    for row in skills.select(["annotator", "accuracy"]).to_pylist():
        if row["accuracy"] is None:
            continue
        p = min(max(row["accuracy"], floor), 1 - floor)
        weights[row["annotator"]] = max(0.0, math.log(max(n_labels - 1, 1) * p / (1 - p)))
    return weights


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


EM_IN_PROCESS, EM_BEAM = "in_process", "beam"


class AnnotatorModelMethod(ConsensusMethod):
    """A model of annotators fitted over all votes at once; confidence is the label's posterior.

    Two paths give the same answers (tested): `in_process` gathers all votes on one worker and
    fits there (fast for data that fits one machine); `beam` (Dawid-Skene only) runs the EM as
    Beam transforms over item buckets, so a managed runner spreads it across workers.
    Subclasses name the model and compute its posteriors.
    """
    max_iter: ClassVar[int] = 100
    tol: ClassVar[float] = 1e-5
    distributed: ClassVar[bool] = False  # whether the `beam` path exists for this model

    def __init__(self, min_votes: int = 1, gold: dict[str, str] | None = None, em: str = EM_IN_PROCESS):
        super().__init__(min_votes, gold)
        if em not in (EM_IN_PROCESS, EM_BEAM):
            raise ValueError(f"em must be {EM_IN_PROCESS} or {EM_BEAM}, got {em!r}")
        if em == EM_BEAM and not self.distributed:
            raise ValueError(f"--method {self.name} has no distributed EM; use --em {EM_IN_PROCESS}")
        self.em = em

    def params(self) -> dict:
        return {**super().params(), "max_iter": self.max_iter, "tol": self.tol, "em": self.em}

    def posteriors(self, indexed):
        """The model's posteriors; with gold, temperature-scaled on the gold items (calibration.py)."""
        answers, gold = indexed.answers, indexed.gold
        if answers.n_labels == 0:  # only multi-label or rating votes: no class to infer
            return np.zeros((answers.n_items, 0))
        fit = self.fit_model(answers, gold)
        if gold is None or not (gold >= 0).any():
            return fit.posteriors
        return calibrated_with_gold(self.posteriors_from_votes(answers, fit), gold)[0]

    @abc.abstractmethod
    def fit_model(self, answers: Answers, gold: np.ndarray | None):
        """The fitted model (a result with `posteriors`), gold items clamped while fitting."""

    @abc.abstractmethod
    def posteriors_from_votes(self, answers: Answers, fit) -> np.ndarray:
        """[n_items, n_labels] every item's posterior from its votes alone under the fitted model."""

    def expand_votes(self, votes):
        if self.em == EM_BEAM:
            return self.expand_on_beam(votes)
        outputs = (votes
                   | "GatherVotes" >> beam.combiners.ToList()
                   | "FitAnnotatorModel" >> beam.Map(self.fit).with_output_types(BucketConsensus)
                   | "SplitOutputs" >> SplitConsensus())
        return outputs

    def expand_on_beam(self, votes):
        raise NotImplementedError

    def fit(self, tables: list[pa.Table]) -> BucketConsensus:
        return self.consensus_of(pa.concat_tables(tables) if tables else VOTE_COLUMNS.empty_table())


class DawidSkene(AnnotatorModelMethod):
    """Dawid-Skene: a full confusion matrix per annotator."""
    name = "ds"
    smoothing = 0.01
    distributed = True

    def params(self) -> dict:
        return {**super().params(), "smoothing": self.smoothing}

    def fit_model(self, answers, gold):
        return dawid_skene(answers, self.max_iter, self.tol, self.smoothing, gold)

    def posteriors_from_votes(self, answers, fit):
        return dawid_skene_e_step(answers, np.log(fit.priors), np.log(fit.confusions))[0]

    def expand_on_beam(self, votes):
        from labelbeam.transforms.distributed_em import FitDawidSkeneOnBeam, bucket_consensus

        fitted = votes | "FitDawidSkeneOnBeam" >> FitDawidSkeneOnBeam(self.gold, self.max_iter, self.tol,
                                                                      self.smoothing)
        outputs = (fitted["posteriors"]
                   | "ConsensusOfBuckets" >> beam.Map(bucket_consensus, pvalue.AsSingleton(fitted["index"]),
                                                      self.min_votes).with_output_types(BucketConsensus)
                   | "SplitOutputs" >> SplitConsensus())
        return outputs


class OneCoin(AnnotatorModelMethod):
    """One-coin Dawid-Skene: one accuracy per annotator, errors spread evenly."""
    name = "one_coin"
    smoothing = 0.01

    def params(self) -> dict:
        return {**super().params(), "smoothing": self.smoothing}

    def fit_model(self, answers, gold):
        return one_coin(answers, self.max_iter, self.tol, self.smoothing, gold)

    def posteriors_from_votes(self, answers, fit):
        with np.errstate(divide="ignore"):
            return one_coin_e_step(answers, np.log(fit.priors), fit.accuracy)[0]


class Glad(AnnotatorModelMethod):
    """GLAD: annotator ability times item difficulty."""
    name = "glad"

    def fit_model(self, answers, gold):
        return glad(answers, self.max_iter, self.tol, gold=gold)

    def posteriors_from_votes(self, answers, fit):
        # GLAD's class priors are fixed (uniform), as in glad().
        return glad_e_step(answers, fixed_log_priors(None, answers.n_labels), fit.ability,
                           np.log(fit.inverse_difficulty))[0]


class Mace(AnnotatorModelMethod):
    """MACE: each annotator is a spammer with some probability, with their own spam distribution."""
    name = "mace"

    def fit_model(self, answers, gold):
        return mace(answers, self.max_iter, self.tol, gold=gold)

    def posteriors_from_votes(self, answers, fit):
        # MACE's class priors are fixed (uniform), as in mace().
        return mace_e_step(answers, fixed_log_priors(None, answers.n_labels), fit.competence,
                           fit.spam_distribution)[0]


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


class ComputeConsensus(beam.PTransform):
    """Vote tables -> {LABELS: consensus tables, ANNOTATOR_STATS: partial annotator statistics}, plus
    PREFERENCES (DPO export records) for bradley_terry."""

    def __init__(self, method: ConsensusMethod):
        super().__init__()
        self._method = method

    def expand(self, votes):
        return self._method.expand_votes(votes)
