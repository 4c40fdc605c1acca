"""The consensus step: a pluggable ConsensusMethod turns votes into one row per item.

A method receives a PCollection of vote tables in which every table holds all votes of the items
it contains. It computes a posterior over each item's class - vote shares for majority vote, the
fitted model's posterior for the annotator models - and returns consensus tables (CONSENSUS_SCHEMA)
plus partial per-annotator statistics (annotator_stats.PARTIAL_SCHEMA) that add up across buckets.
Methods whose answer for an item depends only on that item's votes subclass PerItemMethod and run
per bucket; the annotator models fit over all votes, in process or as a Beam EM.

Besides single-label classes, three other kinds of answer have methods (rules in each class):
- multi-label (`multilabel`): per-class binary majority (transforms/multi_label.py), row column `labels`;
- numeric ratings (`mean`, `median` per item, `bias_corrected` over all votes; transforms/ratings.py),
  row column `score`;
- pairwise preferences (`bradley_terry`, transforms/preferences.py): `label` is the strongest response,
  and the build also exports prompt/chosen/rejected records (output PREFERENCES).
Every row has every column: `labels` is [] and `score` null where a method does not fill them.
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
from typing import Any, ClassVar, NamedTuple

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam import pvalue

from labelbeam.transforms import arrow_coder
from labelbeam.transforms import multi_label, preferences
from labelbeam.transforms.annotator_stats import PARTIAL_SCHEMA, decision_cells, partial_annotator_stats
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
from labelbeam.transforms.ratings import (Ratings, bias_corrected_scores, canonical_ratings, group_means,
                                          mean_scores, median_scores)

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
    answers = Answers(item_idx[labeled], worker_idx, label_idx[:with_label.num_rows], len(item_ids),
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


# Multi-label -------------------------------------------------------------------------------------

def _class_names(names: pa.ChunkedArray, suffix: str) -> pa.Array:
    return pc.binary_join_element_wise(names, pa.scalar(suffix), "=")


class MultiLabel(PerItemMethod):
    """Per-class binary majority of multi-label votes (transforms/multi_label.py has the rules).

    Votes taking part: every vote except pure ratings (a score with no label and no labels). A vote's
    classes are its `labels` plus its `label` if set, so a single-label answer "cat" is the set {cat};
    a vote with neither says "none of them". Classes in question: the dataset's label set when given
    (`label_set`), else the classes some vote of the item named. A class is included iff its yes share
    is > 0.5; exactly 0.5 excludes it and makes the item's status `tie`. Row: `labels` = the included
    classes, sorted; `label` null; `confidence` = min over classes of max(share, 1 - share);
    `num_votes` = the multi-label votes; `agreement` = mean over classes of the per-class Fleiss P_i.
    Annotator statistics: every (vote, class) is a decision "<class>=yes"/"<class>=no" scored
    against the consensus decision (annotator_stats module docstring).
    """
    name = "multilabel"
    row_schema_file = "consensus_row.v2.avsc"
    supports_gold = False
    votes_taking_part = "votes other than pure ratings; classes = labels plus label"

    def __init__(self, min_votes: int = 1, gold: dict[str, str] | None = None, label_set=None):
        super().__init__(min_votes, gold)
        self.label_set = tuple(sorted(set(label_set))) if label_set else None

    def params(self) -> dict:
        return {**super().params(), "classes": "label_set" if self.label_set else "named_on_item"}

    def consensus_of(self, votes: pa.Table) -> BucketConsensus:
        if votes.num_rows == 0:
            return BucketConsensus(CONSENSUS_SCHEMA.empty_table(), PARTIAL_SCHEMA.empty_table())
        item_idx, item_ids = factorize_sorted(votes.column("item_id"))
        label_column, labels_column = votes.column("label"), votes.column("labels")
        pure_rating = (pc.is_valid(votes.column("score")).to_numpy(zero_copy_only=False)
                       & pc.is_null(label_column).to_numpy(zero_copy_only=False)
                       & (pc.list_value_length(labels_column).to_numpy(zero_copy_only=False) == 0))
        taking_part = np.flatnonzero(~pure_rating)
        voted = votes.take(pa.array(taking_part))
        listed = voted.column("labels").combine_chunks()
        single = pc.is_valid(voted.column("label")).to_numpy(zero_copy_only=False)
        answer_vote = np.concatenate([pc.list_parent_indices(listed).to_numpy(zero_copy_only=False),
                                      np.flatnonzero(single)]).astype(np.int64)
        answer_names = concatenated([pc.list_flatten(listed), voted.column("label").filter(pa.array(single))],
                                    pa.string())
        known = pa.array(self.label_set or (), pa.string())
        class_idx, class_names = factorize_sorted(concatenated([answer_names, known], pa.string()))
        sparse = multi_label.MultiLabelVotes(item_idx[taking_part], answer_vote, class_idx[:len(answer_vote)],
                                             len(item_ids), len(class_names))
        result = multi_label.multi_label_consensus(sparse, all_classes=self.label_set is not None)
        included = np.flatnonzero(result.pair_included)
        offsets = np.zeros(len(item_ids) + 1, dtype=np.int32)
        np.cumsum(np.bincount(result.pair_item[included], minlength=len(item_ids)), out=offsets[1:])
        labels = pa.ListArray.from_arrays(pa.array(offsets), class_names.take(pa.array(result.pair_class[included])))
        rows = consensus_table(item_ids, None, result.confidence, result.num_votes, result.agreement,
                               vote_status(result.num_votes, self.min_votes, result.is_tie), labels=labels)
        return BucketConsensus(rows, self.decision_stats(voted, sparse, result, class_names))

    @staticmethod
    def decision_stats(voted: pa.Table, sparse: multi_label.MultiLabelVotes,
                       result: multi_label.MultiLabelConsensus, class_names: pa.Array) -> pa.Table:
        decided = multi_label.decisions(sparse, result)
        yes_names, no_names = _class_names(class_names, "yes"), _class_names(class_names, "no")
        pair_class = result.pair_class[decided.pair]
        classes = pa.array(pair_class, pa.int64())
        answered = pc.if_else(pa.array(decided.said_yes, pa.bool_()), yes_names.take(classes), no_names.take(classes))
        annotators = voted.column("annotator_id").take(pa.array(decided.vote))
        included = result.pair_included[decided.pair]
        share = result.pair_share[decided.pair]
        # Two rows per decision: the truth is yes (mass = share) or no (mass = 1 - share).
        return decision_cells(pa.concat_arrays([annotators.combine_chunks()] * 2),
                              pa.concat_arrays([yes_names.take(classes), no_names.take(classes)]),
                              pa.concat_arrays([answered, answered]),
                              np.concatenate([share, 1.0 - share]),
                              np.concatenate([included, ~included]).astype(np.int64))


# Numeric ratings ---------------------------------------------------------------------------------

RATING_WITHIN, RATING_OUTSIDE = "score=within", "score=outside"
RATING_TOLERANCE = 1e-9   # relative: scores this close count as equal whatever the noise scale


class RatingVotes(NamedTuple):
    item_ids: pa.Array        # sorted; every item of the votes, with or without a rating
    annotator_ids: pa.Array   # sorted; annotators with a rating vote
    ratings: Ratings          # canonical (sorted by item, worker, score)


def rating_votes(votes: pa.Table) -> RatingVotes:
    """The votes with a finite score as sparse ratings."""
    item_idx, item_ids = factorize_sorted(votes.column("item_id"))
    score = pc.fill_null(votes.column("score"), np.nan).to_numpy(zero_copy_only=False).astype(np.float64)
    rated = np.isfinite(score)
    worker_idx, annotator_ids = factorize_sorted(votes.filter(pa.array(rated)).column("annotator_id"))
    ratings = canonical_ratings(Ratings(item_idx[rated], worker_idx, score[rated], len(item_ids), len(annotator_ids)))
    return RatingVotes(item_ids, annotator_ids, ratings)


def rating_spread(ratings: Ratings) -> tuple[np.ndarray, int]:
    """(per item with >= 2 ratings: sum of squared deviations from its mean, degrees of freedom)."""
    ratings = canonical_ratings(ratings)
    counts = np.bincount(ratings.item, minlength=ratings.n_items)
    means = group_means(ratings.item, ratings.score, ratings.n_items)
    squares = np.bincount(ratings.item, weights=(ratings.score - means[ratings.item]) ** 2, minlength=ratings.n_items)
    several = counts >= 2
    return squares[several], int((counts[several] - 1).sum())


def pooled_noise_scale(spreads: list[tuple[np.ndarray, int]]) -> float:
    """sqrt(sum of squared deviations / degrees of freedom) over every item: the pooled within-item
    standard deviation. math.fsum over per-item terms is exact, so buckets in any grouping and order give
    the same bits. NaN when no item has two ratings."""
    dof = sum(part[1] for part in spreads)
    if dof == 0:
        return float("nan")
    return math.sqrt(math.fsum(value for part in spreads for value in np.asarray(part[0]).tolist()) / dof)


def within_scale(difference: np.ndarray, scale: float, magnitude: np.ndarray) -> np.ndarray:
    """|difference| <= one noise scale (0 if unknown), plus RATING_TOLERANCE * max(1, magnitude) so
    rounding never separates equal scores."""
    allowed = (scale if math.isfinite(scale) else 0.0) + RATING_TOLERANCE * np.maximum(1.0, magnitude)
    return np.abs(difference) <= allowed


class RatingFields(NamedTuple):
    within: np.ndarray       # [n_answers] the answer lies within one scale of its item's consensus
    confidence: np.ndarray   # [n_items] share of the item's answers within; 0 without answers
    agreement: np.ndarray    # [n_items] share of ordered pairs of answers within one scale of each other


def rating_fields(item: np.ndarray, corrected: np.ndarray, consensus: np.ndarray, n_items: int,
                  scale: float) -> RatingFields:
    """Confidence and agreement of rating consensus. corrected[j]: answer j minus its annotator's bias
    (the raw score for mean / median); consensus[i]: item i's score."""
    item = np.asarray(item, dtype=np.int64)
    counts = np.bincount(item, minlength=n_items)
    target = consensus[item]
    within = within_scale(corrected - target, scale, np.maximum(np.abs(corrected), np.abs(target)))
    with np.errstate(invalid="ignore", divide="ignore"):
        confidence = np.where(counts > 0, np.bincount(item, weights=within, minlength=n_items) / counts, 0.0)
    # Every ordered pair (a, b), a != b, of answers of one item.
    order = np.argsort(item, kind="stable")
    starts = np.cumsum(counts) - counts
    per_answer = counts[item[order]]
    a = np.repeat(order, per_answer)
    b_within = np.arange(len(a)) - np.repeat(np.cumsum(per_answer) - per_answer, per_answer)
    b = order[starts[item[a]] + b_within] if len(a) else np.zeros(0, dtype=np.int64)
    distinct = a != b
    a, b = a[distinct], b[distinct]
    close = within_scale(corrected[a] - corrected[b], scale, np.maximum(np.abs(corrected[a]), np.abs(corrected[b])))
    with np.errstate(invalid="ignore", divide="ignore"):
        agreement = np.where(counts >= 2, np.bincount(item[a], weights=close, minlength=n_items)
                             / (counts * (counts - 1.0)), np.nan)
    return RatingFields(within, confidence, agreement)


class RatingFit(NamedTuple):
    scores: np.ndarray               # [n_items] NaN without ratings
    bias: np.ndarray | None          # [n_workers] (bias_corrected) or None
    noise_scale: np.ndarray | None   # [n_workers] (bias_corrected) or None
    scale: float                     # the pooled noise scale of confidence and agreement


class RatingMethod(ConsensusMethod):
    """A consensus score per item from numeric ratings (votes with a finite `score`).

    Row: `score` = the consensus score (null without ratings); `label` null; `num_votes` = rating
    votes; `confidence` = share of the item's scores - each minus its annotator's estimated bias for
    bias_corrected - within one pooled noise scale of the consensus score; `agreement` = share of
    ordered pairs of those scores within one pooled noise scale of each other (null below two);
    status needs_more_votes (fewer than min_votes ratings, or none) or ok; ratings never tie.
    The pooled noise scale: for mean and median, the pooled within-item standard deviation of all
    items with two or more ratings, sqrt(sum (s - item mean)^2 / sum (n_i - 1)); for bias_corrected,
    the root mean square of the fitted noise scales over the answers. Unknown (no item has two
    ratings) counts as 0. "Within" allows 1e-9 * max(1, |value|) more, so equal scores are always
    within. A single rating is its own consensus: confidence 1, agreement null (use --min-votes 2 to
    flag such items). Annotator statistics: each rating is a decision "score=within"/"score=outside".
    """
    supports_gold = False
    votes_taking_part = "votes with a finite score"
    row_schema_file = "consensus_row.v2.avsc"

    def fit_ratings(self, ratings: Ratings, scale: float | None) -> RatingFit:
        raise NotImplementedError

    def consensus_of(self, votes: pa.Table, scale: float | None = None) -> BucketConsensus:
        if votes.num_rows == 0:
            return BucketConsensus(CONSENSUS_SCHEMA.empty_table(), PARTIAL_SCHEMA.empty_table())
        rated = rating_votes(votes)
        ratings = rated.ratings
        fit = self.fit_ratings(ratings, scale)
        bias = fit.bias[ratings.worker] if fit.bias is not None else np.zeros(len(ratings.score))
        fields = rating_fields(ratings.item, ratings.score - bias, fit.scores, ratings.n_items, fit.scale)
        num_votes = np.bincount(ratings.item, minlength=ratings.n_items)
        rows = consensus_table(rated.item_ids, None, fields.confidence, num_votes, fields.agreement,
                               vote_status(num_votes, self.min_votes), score=fit.scores)
        n = len(ratings.score)
        stats = decision_cells(rated.annotator_ids.take(pa.array(ratings.worker)), pa.array([RATING_WITHIN] * n),
                               pa.array(np.where(fields.within, RATING_WITHIN, RATING_OUTSIDE).tolist(), pa.string()),
                               np.ones(n), np.ones(n, dtype=np.int64),
                               None if fit.bias is None else fit.bias[ratings.worker],
                               None if fit.noise_scale is None else fit.noise_scale[ratings.worker])
        return BucketConsensus(rows, stats)


class PerItemRatingMethod(RatingMethod, PerItemMethod):
    """A per-item estimator; the pooled noise scale of confidence comes from all items (side input)."""

    @staticmethod
    def estimate(ratings: Ratings) -> np.ndarray:
        raise NotImplementedError

    def fit_ratings(self, ratings, scale):
        if scale is None:
            scale = pooled_noise_scale([rating_spread(ratings)])
        return RatingFit(self.estimate(ratings), None, None, scale)

    @staticmethod
    def spread_of(votes: pa.Table) -> tuple[np.ndarray, int]:
        return rating_spread(rating_votes(votes).ratings) if votes.num_rows else (np.zeros(0), 0)

    def expand_votes(self, votes):
        scale = (votes
                 | "RatingSpread" >> beam.Map(self.spread_of)
                 | "GatherSpreads" >> beam.combiners.ToList()
                 | "PooledNoiseScale" >> beam.Map(pooled_noise_scale))
        outputs = (votes
                   | "AggregatePerItem" >> beam.Map(lambda table, s: self.consensus_of(table, s),
                                                    pvalue.AsSingleton(scale)).with_output_types(BucketConsensus)
                   | "SplitOutputs" >> SplitConsensus())
        return outputs


class MeanScore(PerItemRatingMethod):
    """The mean of the item's ratings."""
    name = "mean"

    @staticmethod
    def estimate(ratings):
        return mean_scores(ratings)


class MedianScore(PerItemRatingMethod):
    """The median of the item's ratings (even count: mean of the two middle ones)."""
    name = "median"

    @staticmethod
    def estimate(ratings):
        return median_scores(ratings)


class BiasCorrected(RatingMethod):
    """Robust truth + annotator bias + annotator noise, fitted over all ratings at once
    (ratings.bias_corrected_scores); annotators' estimated bias and noise scale are published."""
    name = "bias_corrected"
    options: ClassVar[dict[str, Any]] = {"bias_prior": 2.0, "scale_prior": 5.0, "huber_c": 1.345,
                                         "weight_by_noise": True, "max_iter": 1000, "tol": 1e-6}

    def params(self) -> dict:
        return {**super().params(), **self.options}

    def fit_ratings(self, ratings, scale):
        result = bias_corrected_scores(ratings, **self.options)
        noise = result.noise_scale[ratings.worker]
        noise = noise[np.isfinite(noise)]
        pooled = math.sqrt(math.fsum((noise ** 2).tolist()) / len(noise)) if len(noise) else float("nan")
        return RatingFit(result.scores, result.bias, result.noise_scale, pooled)

    def expand_votes(self, votes):
        outputs = (votes
                   | "GatherVotes" >> beam.combiners.ToList()
                   | "FitRatings" >> beam.Map(lambda tables: self.consensus_of(
                       pa.concat_tables(tables) if tables else VOTE_COLUMNS.empty_table()))
                   .with_output_types(BucketConsensus)
                   | "SplitOutputs" >> SplitConsensus())
        return outputs


# Pairwise preferences ----------------------------------------------------------------------------

class PreferenceConsensus(NamedTuple):
    labels: pa.Table            # CONSENSUS_SCHEMA
    annotator_stats: pa.Table   # PARTIAL_SCHEMA
    preferences: pa.Table       # preferences.PREFERENCE_SCHEMA: the DPO export records


for result_type in (BucketConsensus, PreferenceConsensus):
    beam.coders.registry.register_coder(result_type, arrow_coder.SizedCoder)


class BradleyTerry(PerItemMethod):
    """Bradley-Terry strengths of each prompt's responses from pairwise preference votes.

    Encoding, unusable votes, ranking, tie and confidence rules: transforms/preferences.py. Each prompt
    is fitted alone (responses of different prompts are never compared). Besides the rows, emits the
    prompt/chosen/rejected export records (PREFERENCES), which PublishVersion writes as
    preferences-00000-of-00001.jsonl.
    """
    name = "bradley_terry"
    supports_gold = False
    votes_taking_part = "usable comparisons: label (chosen) and metadata.rejected naming another response"
    prior: ClassVar[float] = 1.0
    max_iter: ClassVar[int] = 1000
    tol: ClassVar[float] = 1e-8

    def params(self) -> dict:
        return {**super().params(), "prior": self.prior, "max_iter": self.max_iter, "tol": self.tol,
                "tie_decimals": preferences.TIE_DECIMALS}

    def consensus_parts(self, votes: pa.Table) -> PreferenceConsensus:
        item_ids, labels, confidence, num_votes, agreement, is_tie = [], [], [], [], [], []
        annotators, true, answered, expected, consensus, records = [], [], [], [], [], []
        for item_id, item_votes in preferences.votes_by_item(votes).items():
            fit = preferences.fit_item(item_id, item_votes, self.prior, self.max_iter, self.tol)
            fields = preferences.consensus_fields(fit)
            item_ids.append(item_id)
            labels.append(fields.label)
            confidence.append(fields.confidence)
            num_votes.append(fields.num_votes)
            agreement.append(fields.agreement)
            is_tie.append(fields.is_tie)
            for collected, part in zip((annotators, true, answered, expected, consensus),
                                       preferences.comparison_decisions(fit)):
                collected += part
            record = preferences.export_record(fit, item_votes)
            if record is not None:
                records.append(record)
        num_votes_array = np.array(num_votes, dtype=np.int64)
        rows = consensus_table(pa.array(item_ids, pa.string()), pa.array(labels, pa.string()),
                               np.array(confidence, dtype=np.float64), num_votes_array,
                               np.array(agreement, dtype=np.float64),
                               vote_status(num_votes_array, self.min_votes, np.array(is_tie, dtype=bool)))
        stats = decision_cells(pa.array(annotators, pa.string()), pa.array(true, pa.string()),
                               pa.array(answered, pa.string()), np.array(expected, dtype=np.float64),
                               np.array(consensus, dtype=np.int64))
        return PreferenceConsensus(rows, stats, preferences.export_table(records))

    def consensus_of(self, votes: pa.Table) -> BucketConsensus:
        parts = self.consensus_parts(votes)
        return BucketConsensus(parts.labels, parts.annotator_stats)

    def expand_votes(self, votes):
        outputs = (votes
                   | "AggregatePerItem" >> beam.Map(self.consensus_parts).with_output_types(PreferenceConsensus)
                   | "SplitOutputs" >> SplitConsensus(PreferenceConsensus._fields))
        return outputs


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
    m.name: m for m in (MajorityVote, WeightedMajorityVote, DawidSkene, OneCoin, Glad, Mace, MultiLabel, MeanScore,
                        MedianScore, BiasCorrected, BradleyTerry)}


class ComputeConsensus(beam.PTransform):
    """Vote tables -> {LABELS: consensus tables, ANNOTATOR_STATS: partial annotator statistics}, plus
    PREFERENCES (DPO export records) for bradley_terry."""

    def __init__(self, method: ConsensusMethod):
        super().__init__()
        self._method = method

    def expand(self, votes):
        return self._method.expand_votes(votes)
