"""Dawid-Skene EM as a Beam computation, for vote sets larger than one machine.

    votes (item buckets) -> IndexAnswers -> [EStep_i -> SumCounts_i -> MStep_i] x max_iter -> Posteriors

Each element is one item bucket's answers, items indexed locally and annotators/labels globally.
The E-step runs per bucket against the parameters of the previous iteration (a side input) and
emits that bucket's M-step statistics (`expected_counts`); a CombineGlobally sums them, and the
M-step turns the sums into the next parameters (`parameters_from_counts`). The iterations are
unrolled in the graph; once the parameters stop moving (the same rule as the in-process
`dawid_skene`), the remaining iterations pass them through without touching the data.
The numeric core is shared with the in-process path, so both give the same answers (tested).
"""
from __future__ import annotations

from typing import NamedTuple

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam import pvalue

from labelbeam.transforms import arrow_coder  # noqa: F401 - registers the Arrow coder
from labelbeam.transforms.dawid_skene import (Answers, clamp_gold, e_step, expected_counts, parameter_change,
                                              parameters_from_counts, vote_shares)
from labelbeam.transforms.factorize import factorize_sorted


class AnswerBucket(NamedTuple):
    item_ids: pa.Array        # sorted item ids of this bucket
    answers: Answers          # items indexed within the bucket; annotators and labels globally
    gold: np.ndarray | None   # per item: gold class index, or -1


class EMState(NamedTuple):
    log_priors: np.ndarray
    log_confusions: np.ndarray
    iterations: int
    converged: bool


class AnswerIndex(NamedTuple):
    annotators: list[str]     # sorted: an annotator's global index is its position
    labels: list[str]         # sorted, gold labels included


def annotators_and_labels(votes: pa.Table) -> tuple[set[str], set[str]]:
    labeled = votes.filter(pc.is_valid(votes.column("label")))
    return set(labeled.column("annotator_id").to_pylist()), set(labeled.column("label").to_pylist())


def union_of_indexes(parts) -> tuple[set[str], set[str]]:
    annotators, labels = set(), set()
    for part_annotators, part_labels in parts:
        annotators |= part_annotators
        labels |= part_labels
    return annotators, labels


def index_answers(votes: pa.Table, index: AnswerIndex, gold: dict[str, str]) -> AnswerBucket:
    item_idx, item_ids = factorize_sorted(votes.column("item_id"))
    labeled = pc.is_valid(votes.column("label")).to_numpy(zero_copy_only=False)
    with_label = votes.filter(pa.array(labeled))
    worker = pc.index_in(with_label.column("annotator_id"), value_set=pa.array(index.annotators)).to_numpy()
    label = pc.index_in(with_label.column("label"), value_set=pa.array(index.labels)).to_numpy()
    answers = Answers(item_idx[labeled], worker.astype(np.int64), label.astype(np.int64), len(item_ids),
                      len(index.annotators), len(index.labels))
    gold_idx = None
    if gold:
        position = {name: i for i, name in enumerate(index.labels)}
        gold_idx = np.array([position[gold[item]] if item in gold else -1 for item in item_ids.to_pylist()])
    return AnswerBucket(item_ids, answers, gold_idx)


class SumCountsFn(beam.CombineFn):
    """Adds (class counts, confusion counts) pairs; None when there is nothing to add."""

    def create_accumulator(self):
        return None

    def add_input(self, accumulator, counts):
        if accumulator is None:
            return (counts[0].copy(), counts[1].copy())
        return (accumulator[0] + counts[0], accumulator[1] + counts[1])

    def merge_accumulators(self, accumulators):
        total = None
        for accumulator in accumulators:
            if accumulator is not None:
                total = self.add_input(total, accumulator)
        return total

    def extract_output(self, accumulator):
        return accumulator


def initial_counts(bucket: AnswerBucket):
    return expected_counts(bucket.answers, clamp_gold(vote_shares(bucket.answers), bucket.gold))


def e_step_counts(bucket: AnswerBucket, state: EMState):
    if state.converged:
        return
    posteriors, _ = e_step(bucket.answers, state.log_priors, state.log_confusions, bucket.gold)
    yield expected_counts(bucket.answers, posteriors)


def initial_state(counts, smoothing: float) -> EMState:
    return EMState(*parameters_from_counts(*counts, smoothing), 0, False)


def m_step_state(counts, previous: EMState, smoothing: float, tol: float) -> EMState:
    if previous.converged or counts is None:
        return previous
    parameters = parameters_from_counts(*counts, smoothing)
    change = parameter_change((previous.log_priors, previous.log_confusions), parameters)
    return EMState(*parameters, previous.iterations + 1, change < tol)


def bucket_posteriors(bucket: AnswerBucket, state: EMState) -> tuple[AnswerBucket, np.ndarray]:
    posteriors, _ = e_step(bucket.answers, state.log_priors, state.log_confusions, bucket.gold)
    return bucket, posteriors


class FitDawidSkeneOnBeam(beam.PTransform):
    """Vote tables (each holding all votes of its items) -> (AnswerBucket, posteriors), plus the index.

    Returns {"posteriors": PCollection[(AnswerBucket, np.ndarray)], "index": PCollection[AnswerIndex],
    "state": PCollection[EMState]}.
    """

    def __init__(self, gold: dict[str, str] | None = None, max_iter: int = 100, tol: float = 1e-5,
                 smoothing: float = 0.01):
        super().__init__()
        self._gold = dict(sorted((gold or {}).items()))
        self._max_iter, self._tol, self._smoothing = max_iter, tol, smoothing

    def expand(self, votes):
        gold, smoothing, tol = self._gold, self._smoothing, self._tol
        gold_labels = set(gold.values())
        index = (votes
                 | "ListAnnotatorsAndLabels" >> beam.Map(annotators_and_labels)
                 | "UnionIndexes" >> beam.CombineGlobally(union_of_indexes)
                 | "SortIndex" >> beam.Map(lambda pair: AnswerIndex(sorted(pair[0]), sorted(pair[1] | gold_labels))))
        buckets = votes | "IndexAnswers" >> beam.Map(index_answers, pvalue.AsSingleton(index), gold)
        state = (buckets
                 | "InitialCounts" >> beam.Map(initial_counts)
                 | "SumInitialCounts" >> beam.CombineGlobally(SumCountsFn())
                 | "InitialParameters" >> beam.Map(initial_state, smoothing))
        for iteration in range(1, self._max_iter + 1):
            state = (buckets
                     | f"EStep{iteration}" >> beam.FlatMap(e_step_counts, pvalue.AsSingleton(state))
                     | f"SumCounts{iteration}" >> beam.CombineGlobally(SumCountsFn())
                     | f"MStep{iteration}" >> beam.Map(m_step_state, pvalue.AsSingleton(state), smoothing, tol))
        posteriors = buckets | "Posteriors" >> beam.Map(bucket_posteriors, pvalue.AsSingleton(state))
        return {"posteriors": posteriors, "index": index, "state": state}
