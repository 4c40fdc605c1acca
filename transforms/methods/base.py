"""What every consensus method is: a strategy object that binds a pure core to an execution shape.

A method turns a table of votes (all votes of the items it holds) into consensus rows plus partial
per-annotator statistics. Its `shape` tells `ComputeConsensus` how to run it on Beam (per item,
gather and fit, or the distributed EM); the shapes themselves live in transforms/consensus.py, so
nothing here imports Beam.
"""
from __future__ import annotations

import abc
import dataclasses
import hashlib
import json
from collections.abc import Callable
from typing import ClassVar, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from labelbeam.schemas import registry
from labelbeam.schemas.arrow import arrow_schema
from labelbeam.transforms.arrays.factorize import concatenated, factorize_sorted
from labelbeam.transforms.inference.annotator_stats import PARTIAL_SCHEMA, partial_annotator_stats
from labelbeam.transforms.inference.em import Answers
from labelbeam.transforms.inference.majority_vote import VoteTally, majority_vote

EM_IN_PROCESS, EM_BEAM = "in_process", "beam"


@dataclasses.dataclass(frozen=True)
class MethodRequest:
    """Everything a user may ask of a method; each method class takes what applies to it
    (`from_request`) and raises ValueError, in one sentence, for what does not."""
    min_votes: int = 1
    gold: dict[str, str] = dataclasses.field(default_factory=dict)
    em: str = EM_IN_PROCESS                      # where an annotator model fits
    label_set: tuple[str, ...] | None = None     # the dataset's classes, when given
    weights: dict[str, float] | None = None      # per-annotator vote weights (wmv)
    weights_key: Callable[[str], str] | None = None  # raw annotator id -> the id the weights use
    weights_source: dict | None = None           # where the weights came from (manifest)


# Execution shapes (transforms/consensus.py has one PTransform per shape).
PER_ITEM = "per_item"                # an item's answer depends on its own votes only: runs per bucket
GATHER_AND_FIT = "gather_and_fit"    # a model fitted over all votes at once, in one process
DISTRIBUTED_EM = "distributed_em"    # the EM as Beam transforms over item buckets


STATUS_OK = "ok"


STATUS_TIE = "tie"


STATUS_NEEDS_MORE_VOTES = "needs_more_votes"


# Every consensus row column in memory (v2); a method publishes those of its row_schema_file.
CONSENSUS_SCHEMA = arrow_schema(registry.load_schema_json(registry.CONSENSUS_ROW_SCHEMA_FILE))


# The vote columns consensus methods read.
VOTE_COLUMNS = pa.schema([pa.field("item_id", pa.string()), pa.field("annotator_id", pa.string()),
                          pa.field("label", pa.string())])


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
                            min_votes, soft_labels(posteriors, has_votes, indexed.label_names))
    stats = partial_annotator_stats(indexed.annotator_ids, answers.worker, answers.item, answers.label,
                                    indexed.label_names, posteriors, label, indexed.gold)
    return BucketConsensus(labels, stats)


class ConsensusMethod(abc.ABC):
    """A truth-inference method. `name` is what --method selects.

    Gold items (item_id -> label) score the annotators (gold accuracy) with every method; the
    annotator models also keep them at their label while fitting.
    """
    name: ClassVar[str]
    # The published row schema: single-label methods publish single.v2 rows (v1 plus probabilities; no
    # labels/score columns, which would only ever hold [] and null and cost writing); multi-label and
    # ratings publish v2.
    row_schema_file: ClassVar[str] = registry.SINGLE_LABEL_ROW_SCHEMA_FILE
    supports_gold: ClassVar[bool] = True   # False: --gold does not apply (answers are not one class)
    votes_taking_part: ClassVar[str] = "votes with a single label"
    shape: ClassVar[str] = GATHER_AND_FIT
    takes_weights: ClassVar[bool] = False  # per-annotator vote weights (--weights, --skills-from)
    # What consensus_of returns: its fields are the shape's outputs (LABELS, ANNOTATOR_STATS, ...).
    result_type: ClassVar[type] = BucketConsensus
    # Per-item methods whose rows also need one statistic of all votes (the rating methods' pooled
    # noise scale) set this, and implement bucket_statistic / corpus_statistic.
    needs_corpus_statistic: ClassVar[bool] = False

    def __init__(self, min_votes: int = 1, gold: dict[str, str] | None = None):
        if min_votes < 1:
            raise ValueError(f"min_votes must be at least 1, got {min_votes}")
        if gold and not self.supports_gold:
            raise ValueError(f"--method {self.name} does not take gold labels")
        self.min_votes = min_votes
        self.gold = dict(sorted((gold or {}).items()))

    @classmethod
    def from_request(cls, request: MethodRequest) -> ConsensusMethod:
        cls.refuse_unused(request)
        return cls(min_votes=request.min_votes, gold=request.gold)

    @classmethod
    def refuse_unused(cls, request: MethodRequest, takes_em: bool = False) -> None:
        if request.weights is not None and not cls.takes_weights:
            raise ValueError("--weights and --skills-from only apply to --method wmv")
        if request.em == EM_BEAM and not takes_em:
            raise ValueError("--em beam only applies to the annotator models (ds, one_coin, glad, mace)")
        if request.gold and not cls.supports_gold:
            raise ValueError(f"--gold only applies to single-label methods, not --method {cls.name}")

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

    def bucket_statistic(self, votes: pa.Table):
        """A partial statistic of some items' votes (needs_corpus_statistic methods only)."""
        raise NotImplementedError(f"{type(self).__name__} needs no corpus statistic")

    def corpus_statistic(self, partials: list):
        """The statistic of all votes from every bucket's partial, in any order (needs_corpus_statistic only)."""
        raise NotImplementedError(f"{type(self).__name__} needs no corpus statistic")

    def aggregate(self, votes: pa.Table) -> pa.Table:
        """The consensus of these votes (all votes of their items; for a global method, all votes it
        fits on) -> one CONSENSUS_SCHEMA row per item, sorted by item_id."""
        return self.consensus_of(votes).labels

class PerItemMethod(ConsensusMethod):
    """A method whose answer for an item depends only on that item's votes: runs per bucket."""
    shape = PER_ITEM


CLASSES_KEY = b"labelbeam.classes"   # field metadata of `probabilities`: the JSON list of its classes, in order
FIT_KEY = b"labelbeam.fit"           # table metadata of an annotator model's rows: its fit report, as JSON


def with_fit_report(table: pa.Table, report: dict) -> pa.Table:
    """Consensus rows carrying the fit report of the model that made them, to the publish step."""
    return table.replace_schema_metadata({**(table.schema.metadata or {}), FIT_KEY: json.dumps(report).encode()})


def fit_reports(tables: list[pa.Table]) -> list[dict]:
    """The distinct fit reports that consensus tables carry, in a fixed order."""
    found = {(table.schema.metadata or {}).get(FIT_KEY) for table in tables} - {None}
    return [json.loads(report) for report in sorted(found)]


def soft_labels(posteriors: np.ndarray, has_votes: np.ndarray, label_names: pa.Array) -> pa.ListArray | None:
    """Each item's posterior row as a list (null for items without a vote), for the `probabilities`
    column; its classes (label_names, this bucket's order) travel in the column's field metadata
    until the publish step puts every bucket in the version's class order (`in_class_order`)."""
    if not len(label_names):
        return None
    n_items, n_labels = posteriors.shape
    offsets = pa.array(np.arange(n_items + 1, dtype=np.int32) * n_labels)
    return pa.ListArray.from_arrays(offsets, pa.array(np.ascontiguousarray(posteriors, dtype=np.float64).ravel()),
                                    mask=pa.array(~has_votes))


def with_classes(table: pa.Table, classes: list[str], probabilities: pa.Array | None = None) -> pa.Table:
    """The table with `probabilities` (its own, or the one given) labelled with its classes, in order."""
    index = table.schema.get_field_index("probabilities")
    field = CONSENSUS_SCHEMA.field("probabilities").with_metadata({CLASSES_KEY: json.dumps(classes).encode()})
    return table.set_column(index, field, table.column(index) if probabilities is None else probabilities)


def classes_of(table: pa.Table) -> list[str]:
    """The classes of a table's `probabilities` column, in order ([] if it carries none)."""
    metadata = table.schema.field("probabilities").metadata or {}
    return json.loads(metadata[CLASSES_KEY]) if CLASSES_KEY in metadata else []


def in_class_order(table: pa.Table, classes: list[str]) -> pa.Table:
    """A consensus table with `probabilities` rearranged from its own classes into `classes` (a superset):
    classes the bucket never saw get probability 0. Rows keep their nulls."""
    own = classes_of(table)
    if own == classes or not own:   # already in order, or no soft labels (other kinds of methods)
        return table
    column = table.column("probabilities").combine_chunks()
    valid = column.is_valid().to_numpy(zero_copy_only=False)
    wide = np.zeros((int(valid.sum()), len(classes)))
    position = {name: i for i, name in enumerate(classes)}
    wide[:, [position[name] for name in own]] = column.flatten().to_numpy(zero_copy_only=False).reshape(-1, len(own))
    offsets = np.zeros(len(column) + 1, dtype=np.int32)
    np.cumsum(np.where(valid, len(classes), 0), out=offsets[1:])
    return with_classes(table, classes, pa.ListArray.from_arrays(pa.array(offsets), pa.array(wide.ravel()),
                                                                  mask=pa.array(~valid)))


def tally_to_table(item_ids: pa.Array, label_names: pa.Array, tally: VoteTally, min_votes: int,
                   probabilities: pa.ListArray | None = None) -> pa.Table:
    """Consensus rows from a tally, with status: needs_more_votes before tie before ok."""
    has_label = tally.label_idx >= 0
    labels = label_names.take(pa.array(np.where(has_label, tally.label_idx, 0), mask=~has_label)) \
        if len(label_names) else pa.nulls(len(item_ids), pa.string())
    status = np.where((tally.num_votes < min_votes) | ~has_label, STATUS_NEEDS_MORE_VOTES,
                      np.where(tally.is_tie, STATUS_TIE, STATUS_OK))
    table = consensus_table(item_ids, labels, tally.confidence, tally.num_votes, tally.agreement, status,
                            probabilities=probabilities)
    return with_classes(table, label_names.to_pylist()) if probabilities is not None else table


def consensus_table(item_ids: pa.Array, label: pa.Array | None, confidence: np.ndarray, num_votes: np.ndarray,
                    agreement: np.ndarray, status: np.ndarray, labels: list[list[str]] | None = None,
                    score: np.ndarray | None = None, probabilities: pa.ListArray | None = None) -> pa.Table:
    """CONSENSUS_SCHEMA rows; NaN agreement / score become null, missing label / labels / score /
    probabilities are null / [] / null / null."""
    n = len(item_ids)
    agreement = np.asarray(agreement, dtype=np.float64)
    score_array = pa.nulls(n, pa.float64()) if score is None else \
        pa.array(score, mask=np.isnan(score), type=pa.float64())
    return pa.table([item_ids, pa.nulls(n, pa.string()) if label is None else label,
                     pa.array(np.asarray(confidence, dtype=np.float64), pa.float64()),
                     pa.array(np.asarray(num_votes, dtype=np.int64), pa.int64()),
                     pa.array(agreement, mask=np.isnan(agreement), type=pa.float64()), pa.array(status, pa.string()),
                     empty_lists(n) if labels is None else pa.array(labels, pa.list_(pa.string())),
                     score_array, pa.nulls(n, pa.list_(pa.float64())) if probabilities is None else probabilities],
                    schema=CONSENSUS_SCHEMA)


def empty_lists(n: int) -> pa.Array:
    return pa.ListArray.from_arrays(pa.array(np.zeros(n + 1, dtype=np.int32)), pa.array([], pa.string()))


def vote_status(num_votes: np.ndarray, min_votes: int, is_tie: np.ndarray | None = None) -> np.ndarray:
    """needs_more_votes (no vote took part, or fewer than min_votes) before tie before ok."""
    tie = np.zeros(len(num_votes), dtype=bool) if is_tie is None else is_tie
    return np.where((num_votes < min_votes) | (num_votes == 0), STATUS_NEEDS_MORE_VOTES,
                    np.where(tie, STATUS_TIE, STATUS_OK))
