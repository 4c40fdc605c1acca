"""An annotator model's EM as a Beam computation, for vote sets larger than one machine.

    votes (item buckets) -> IndexAnswers -> [EStep_i -> SumCounts_i -> MStep_i] x max_iter -> Posteriors

Each element is one item bucket's answers, items indexed locally and annotators/labels globally.
The E-step runs per bucket against the parameters of the previous iteration (a side input) and
emits that bucket's M-step statistics (the model's `EMModel.statistics`: Dawid-Skene's expected
counts, one-coin's expected right answers, MACE's expected known and spam answers); a CombineGlobally
sums them, and the M-step turns the sums into the next parameters (`EMModel.parameters`). The iterations are
unrolled in the graph, and the answers flow from each E-step to the next; once the parameters stop
moving (the same rule as the in-process fit, `em.fit_em`), the E-step stops passing the answers on, so
the remaining iterations have nothing to read and pass the parameters through.
The numeric core is shared with the in-process path, so both give the same answers (tested).

Every unrolled iteration re-reads the answers, so the iterated elements are compact
(`CompactAnswers`: answers sorted by item, items as offsets, annotators and labels in the smallest
integer type): ~9 bytes per answer instead of 24, which is what a runner moves per iteration.

With a spill directory (the build's scratch directory on the local runners, whose PCollections live in
their own memory), each bucket's answers are written to a file there once, and the iterations move only
its name: memory stays bounded by one bucket per worker, whatever the number of answers. Buckets are
indexed on their own (`AnswerShard`: bucket-local annotator and label codes), so nothing waits for the
global index before the answers are cut and spilled; the global codes are a small per-bucket map.
"""
from __future__ import annotations

import pickle
import uuid
from typing import NamedTuple

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam import pvalue
from apache_beam.io.filesystems import FileSystems
from scipy import sparse

from labelbeam.transforms import coders
from labelbeam.transforms.arrays import fixed_point
from labelbeam.transforms.arrays.factorize import concatenated
from labelbeam.transforms.inference.calibration import fit_temperature, tempered
from labelbeam.transforms.inference.degenerate import FitAgreement, degeneracy_of, fit_agreement
from labelbeam.transforms.inference.em import (
    Answers,
    EMModel,
    answer_counts,
    clamp_gold,
    item_offsets,
    item_ranges,
    vote_shares,
)
from labelbeam.transforms.methods.base import IndexedVotes, consensus_from_posteriors, index_votes, with_fit_report
from labelbeam.transforms.methods.single_label import fit_report, majority_vote_fallback


def smallest_index_dtype(size: int) -> np.dtype:
    """The smallest unsigned integer type that holds indexes 0..size-1."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if size <= np.iinfo(dtype).max + 1:
            return np.dtype(dtype)
    return np.dtype(np.uint64)


class CompactAnswers(NamedTuple):
    """One bucket's answers, sorted by item: item i's answers are [item_offsets[i], item_offsets[i+1])."""
    item_offsets: np.ndarray  # int64 [n_items + 1]
    worker: np.ndarray        # global annotator index, smallest unsigned type
    label: np.ndarray         # global label index, smallest unsigned type
    n_workers: int
    n_labels: int
    gold_items: np.ndarray    # local indexes of this bucket's gold items
    gold_labels: np.ndarray   # their classes

    @classmethod
    def from_answers(cls, answers: Answers, gold: np.ndarray | None) -> CompactAnswers:
        # Canonical order (item, annotator): sums over an item's answers never depend on input order.
        order = np.lexsort((answers.worker, answers.item))
        offsets = item_offsets(answers)
        gold_items = np.flatnonzero(gold >= 0) if gold is not None else np.zeros(0, dtype=np.int64)
        return cls(offsets, answers.worker[order].astype(smallest_index_dtype(answers.n_workers)),
                   answers.label[order].astype(smallest_index_dtype(answers.n_labels)),
                   answers.n_workers, answers.n_labels, gold_items,
                   gold[gold_items] if gold is not None else np.zeros(0, dtype=np.int64))

    @property
    def n_items(self) -> int:
        return len(self.item_offsets) - 1

    def answers(self) -> Answers:
        item = np.repeat(np.arange(self.n_items), np.diff(self.item_offsets))
        return Answers(item, self.worker.astype(np.int64), self.label.astype(np.int64), self.n_items,
                       self.n_workers, self.n_labels)

    def gold(self) -> np.ndarray | None:
        if not len(self.gold_items):
            return None
        gold = np.full(self.n_items, -1, dtype=np.int64)
        gold[self.gold_items] = self.gold_labels
        return gold

    @property
    def nbytes(self) -> int:
        return sum(array.nbytes for array in (self.item_offsets, self.worker, self.label, self.gold_items,
                                              self.gold_labels))

    def items(self, start: int, stop: int) -> CompactAnswers:
        """The answers of items start..stop-1, re-indexed from 0."""
        first, last = self.item_offsets[start], self.item_offsets[stop]
        in_range = (self.gold_items >= start) & (self.gold_items < stop)
        return CompactAnswers(self.item_offsets[start:stop + 1] - first, self.worker[first:last],
                              self.label[first:last], self.n_workers, self.n_labels,
                              self.gold_items[in_range] - start, self.gold_labels[in_range])

    def item_ranges(self, max_answers: int) -> list[tuple[int, int]]:
        """Consecutive item ranges of at most max_answers answers plus one item's (items are never split)."""
        return item_ranges(self.item_offsets, max_answers)


DEFAULT_ANSWERS_PER_ELEMENT = 50_000
DEFAULT_ANSWERS_PER_FILE = 1_000_000    # spilled: elements are file names, so fewer, larger files


class AnswerBucket(NamedTuple):
    item_ids: pa.Array        # sorted item ids of this bucket; CompactAnswers index them by position
    compact: CompactAnswers

    @property
    def nbytes(self) -> int:
        return self.item_ids.nbytes + self.compact.nbytes


class EMState(NamedTuple):
    parameters: tuple | None   # the model's (None when there was nothing to fit)
    iterations: int
    converged: bool


class AnswerIndex(NamedTuple):
    annotators: list[str]     # sorted: an annotator's global index is its position
    labels: list[str]         # sorted, gold labels included




def spill(bucket: AnswerBucket, directory: str) -> str:
    """Write a bucket to a new file under `directory` (any Beam filesystem); returns its name."""
    path = FileSystems.join(directory, f"em-answers-{uuid.uuid4().hex}.pickle")
    with FileSystems.create(path) as stream:
        stream.write(pickle.dumps(bucket, protocol=pickle.HIGHEST_PROTOCOL))
    return path


def unspill(path: str) -> AnswerBucket:
    with FileSystems.open(path) as stream:
        return pickle.loads(stream.read())


class AnswerShard(NamedTuple):
    """One item bucket's answers in bucket-local annotator and label codes, and where they are.

    `answers` is the AnswerBucket itself or the file it was spilled to. Once the global index is known
    (`with_global_codes`), worker_codes and label_codes map the local codes to global ones, and
    `bucket()` gives the answers in global codes.
    """
    annotators: tuple[str, ...]             # local annotator code -> name
    labels: tuple[str, ...]                 # local label code -> name, gold labels of its items included
    answers: AnswerBucket | str
    n_workers: int = 0                      # global sizes, 0 until with_global_codes
    n_labels: int = 0
    worker_codes: np.ndarray | None = None
    label_codes: np.ndarray | None = None

    @property
    def nbytes(self) -> int:
        return getattr(self.answers, "nbytes", 0) + sum(getattr(codes, "nbytes", 0)
                                                        for codes in (self.worker_codes, self.label_codes))

    def bucket(self) -> AnswerBucket:
        bucket = self.answers if isinstance(self.answers, AnswerBucket) else unspill(self.answers)
        compact = bucket.compact
        return bucket._replace(compact=compact._replace(
            worker=self.worker_codes[compact.worker], label=self.label_codes[compact.label],
            n_workers=self.n_workers, n_labels=self.n_labels, gold_labels=self.label_codes[compact.gold_labels]))


for compact_type in (CompactAnswers, AnswerBucket, AnswerShard):
    beam.coders.registry.register_coder(compact_type, coders.SizedCoder)


def local_shards(votes: pa.Table, gold: dict[str, str], max_answers: int, spill_dir: str | None):
    """A vote table -> AnswerShards of at most ~max_answers answers each, spilled to files with spill_dir.

    Indexed as the in-process path indexes a bucket (`index_votes`), codes local to the table.
    Runners move big elements slowly (measured on the local runner: 10M answers in 16 elements take
    twice the time and 3.6x the memory of the same answers in 256), and every iteration moves them
    again, so buckets are cut to a bounded size whatever the upstream bucketing.
    """
    indexed = index_votes(votes, gold)
    compact = CompactAnswers.from_answers(indexed.answers, indexed.gold)
    names = tuple(indexed.annotator_ids.to_pylist()), tuple(indexed.label_names.to_pylist())
    for start, stop in compact.item_ranges(max_answers):
        # concat_arrays copies the slice: a pickled Arrow slice would carry the whole buffer.
        bucket = AnswerBucket(pa.concat_arrays([indexed.item_ids.slice(start, stop - start)]),
                              compact.items(start, stop))
        yield AnswerShard(*names, spill(bucket, spill_dir) if spill_dir else bucket)


def names_of(shard: AnswerShard) -> tuple[set[str], set[str]]:
    return set(shard.annotators), set(shard.labels)


def union_of_indexes(parts) -> tuple[set[str], set[str]]:
    annotators, labels = set(), set()
    for part_annotators, part_labels in parts:
        annotators |= part_annotators
        labels |= part_labels
    return annotators, labels


def with_global_codes(shard: AnswerShard, index: AnswerIndex) -> AnswerShard:
    def codes(local: tuple[str, ...], everything: list[str]) -> np.ndarray:
        found = pc.index_in(pa.array(local, pa.string()), value_set=pa.array(everything, pa.string()))
        return found.to_numpy(zero_copy_only=False).astype(smallest_index_dtype(len(everything)))
    return shard._replace(n_workers=len(index.annotators), n_labels=len(index.labels),
                          worker_codes=codes(shard.annotators, index.annotators),
                          label_codes=codes(shard.labels, index.labels))


# Counts are summed in fixed point (fixed_point.py): the sum - and the published dataset - is
# bit-identical whatever order a runner combines bundles in. Floats would differ in the last bits.
FIXED_POINT_LIMIT = 2 ** 62  # partial sums stay below it, so adding two never overflows int64


def to_fixed_point(counts: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
    return tuple(fixed_point.to_fixed(part) for part in counts)


def exact_statistics(model: EMModel, answers: Answers, posteriors: np.ndarray, parameters,
                     counts: sparse.csr_array | None) -> tuple[np.ndarray, ...]:
    """The model's statistics in fixed point, so their total is the same in any combine order.

    Posteriors are rounded to the fixed-point grid first. Sums of grid values (Dawid-Skene's counts,
    one-coin's) stay exact in float64 while below 2**53 grid steps (2**23 answers per cell and
    element), so any bucketing of the items gives the same bits; statistics that weigh posteriors by
    the parameters (MACE's) are rounded once per element.
    """
    if len(answers.item) >= fixed_point.EXACT_FLOAT_UNITS:
        raise ValueError(f"an element of {len(answers.item)} answers is too large for exact counts "
                         f"(< {fixed_point.EXACT_FLOAT_UNITS})")
    return to_fixed_point(model.statistics(answers, fixed_point.on_grid(posteriors), parameters, counts))


def from_fixed_point(counts: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
    return tuple(fixed_point.from_fixed(part) for part in counts)


class SumCountsFn(beam.CombineFn):
    """Adds tuples of int64 statistics (fixed-point EM sums, the degeneracy checks' item counts); None when
    there is nothing to add."""

    def create_accumulator(self):
        return None

    def add_input(self, accumulator, counts):
        if accumulator is None:
            return tuple(part.copy() for part in counts)
        total = tuple(mine + theirs for mine, theirs in zip(accumulator, counts))
        if max(np.abs(part).max(initial=0) for part in total) >= FIXED_POINT_LIMIT:   # GLAD sums log terms (< 0)
            raise OverflowError(f"a summed statistic reached ±{FIXED_POINT_LIMIT / fixed_point.SCALE:.0f} (an expected "
                                "count, in answers), more than the distributed EM's fixed-point sums hold")
        return total

    def merge_accumulators(self, accumulators):
        total = None
        for accumulator in accumulators:
            if accumulator is not None:
                total = self.add_input(total, accumulator)
        return total

    def extract_output(self, accumulator):
        return accumulator


def initial_counts(shard: AnswerShard, model: EMModel):
    """This bucket's statistics of the vote shares (gold clamped), read under the model's start."""
    if shard.n_labels == 0:  # no single-label vote anywhere: nothing to fit
        return
    compact = shard.bucket().compact
    answers = compact.answers()
    counts = answer_counts(answers)
    yield exact_statistics(model, answers, clamp_gold(vote_shares(answers, counts), compact.gold()),
                           model.start(answers.n_workers, answers.n_labels), counts)


ANSWERS = "answers"


def e_step_counts(shard: AnswerShard, state: EMState, model: EMModel):
    """This bucket's M-step statistics, and the bucket itself for the next iteration.

    Once converged, nothing is emitted: the answers stop flowing, so the unrolled iterations left
    over after convergence cost a runner almost nothing.
    """
    if state.converged:
        return
    compact = shard.bucket().compact
    answers = compact.answers()
    counts = answer_counts(answers) if model.needs_counts else None
    posteriors, _ = model.e_step(answers, state.parameters, compact.gold(), counts)
    yield exact_statistics(model, answers, posteriors, state.parameters, counts)
    yield pvalue.TaggedOutput(ANSWERS, shard)


def initial_state(counts, model: EMModel) -> EMState:
    if counts is None:  # no answers at all: the EM has nothing to do
        return EMState(None, 0, True)
    return EMState(model.parameters(from_fixed_point(counts)), 0, False)


def m_step_state(counts, previous: EMState, model: EMModel, tol: float) -> EMState:
    if previous.converged or counts is None:
        return previous
    parameters = model.parameters(from_fixed_point(counts))
    return EMState(parameters, previous.iterations + 1, model.change(previous.parameters, parameters) < tol)


def bucket_posteriors(shard: AnswerShard, state: EMState, model: EMModel) -> tuple[AnswerBucket, np.ndarray]:
    bucket = shard.bucket()
    if bucket.compact.n_labels == 0 or state.parameters is None:
        return bucket, np.zeros((bucket.compact.n_items, 0))
    posteriors, _ = model.e_step(bucket.compact.answers(), state.parameters, bucket.compact.gold())
    return bucket, posteriors


def gold_posteriors_from_votes(shard: AnswerShard, state: EMState, model: EMModel):
    """(gold item ids, their posteriors from their votes alone, their gold classes) of a bucket."""
    bucket = shard.bucket()
    compact = bucket.compact
    if len(compact.gold_items) and state.parameters is not None:
        posteriors, _ = model.e_step(compact.answers(), state.parameters, None)
        yield bucket.item_ids.take(pa.array(compact.gold_items)), posteriors[compact.gold_items], compact.gold_labels


def temperature_of(parts: list) -> float:
    """The calibration temperature over every bucket's gold rows, taken in item id order (as the
    in-process path does), so neither bucketing nor arrival order changes its bits."""
    if not parts:
        return 1.0
    order = pc.sort_indices(concatenated([part[0] for part in parts], pa.string())).to_numpy()
    return fit_temperature(np.concatenate([part[1] for part in parts])[order],
                           np.concatenate([part[2] for part in parts])[order])


def fit_statistics(shard: AnswerShard, state: EMState, model: EMModel) -> FitAgreement:
    """A bucket's share of the degeneracy checks' statistics (inference/degenerate.py). Only these small
    sums leave the step: the buckets' posteriors are made again once the report is known, so they are
    never all held at once."""
    bucket, posteriors = bucket_posteriors(shard, state, model)
    n_labels = posteriors.shape[1]
    if n_labels == 0:
        return FitAgreement(np.zeros((0, 0), dtype=np.int64), np.zeros(0, dtype=np.int64))
    return fit_agreement(bucket.compact.answers(), posteriors.argmax(axis=1))


def summed_fit_report(statistics: tuple | None, index: AnswerIndex, model_name: str) -> dict:
    """The fit report the in-process path gives (AnnotatorModelMethod.checked_posteriors), from the
    buckets' summed statistics: on a degenerate fit every bucket publishes majority vote instead."""
    reason = degeneracy_of(FitAgreement(*statistics)) if statistics is not None else None
    return fit_report(model_name, reason, index.labels)


def majority_vote_posteriors(bucket: AnswerBucket) -> np.ndarray:
    return majority_vote_fallback(bucket.compact.answers(), bucket.compact.gold())


def reported_posteriors(shard: AnswerShard, state: EMState, report: dict,
                        model: EMModel) -> tuple[AnswerBucket, np.ndarray]:
    """The fit's posteriors of a bucket, or majority vote's if the fit is degenerate."""
    if report["degenerate"]:
        bucket = shard.bucket()
        return bucket, majority_vote_posteriors(bucket)
    return bucket_posteriors(shard, state, model)


def calibrated_bucket_posteriors(shard: AnswerShard, state: EMState, temperature: float, report: dict,
                                 model: EMModel):
    """As DawidSkene.posteriors does in process (calibration.calibrated_with_gold): tempered, gold clamped;
    majority vote if the fit is degenerate."""
    bucket = shard.bucket()
    if report["degenerate"] or state.parameters is None:
        return bucket, majority_vote_posteriors(bucket)
    from_votes, _ = model.e_step(bucket.compact.answers(), state.parameters, None)
    return bucket, clamp_gold(tempered(from_votes, temperature), bucket.compact.gold())


class IndexBuckets(beam.PTransform):
    """Vote tables -> {"buckets": AnswerShards in global codes, "index": the AnswerIndex (singleton)}."""

    def __init__(self, gold: dict[str, str], answers_per_element: int, spill_dir: str | None):
        super().__init__()
        self._gold, self._answers_per_element, self._spill_dir = gold, answers_per_element, spill_dir

    def expand(self, votes):
        gold_labels = set(self._gold.values())
        local = (votes
                 | "IndexAnswers" >> beam.FlatMap(local_shards, self._gold, self._answers_per_element,
                                                  self._spill_dir).with_output_types(AnswerShard))
        index = (local
                 | "ListAnnotatorsAndLabels" >> beam.Map(names_of)
                 | "UnionIndexes" >> beam.CombineGlobally(union_of_indexes)
                 | "SortIndex" >> beam.Map(lambda pair: AnswerIndex(sorted(pair[0]), sorted(pair[1] | gold_labels))))
        buckets = (local
                   | "GlobalCodes" >> beam.Map(with_global_codes, pvalue.AsSingleton(index))
                   .with_output_types(AnswerShard))
        return {"buckets": buckets, "index": index}


class PosteriorsOfFit(beam.PTransform):
    """A fitted model's buckets -> {"posteriors": (AnswerBucket, posteriors), "report": fit report,
    "temperature": with gold only}: the degeneracy check, gold calibration and each bucket's posteriors.

    With `state` (a singleton PCollection of EMState), the input is AnswerShards read under that one
    state; without, it is (AnswerShard, EMState) pairs, for models whose parameters include per-item
    ones that live with their bucket (GLAD's difficulties).
    """

    def __init__(self, model, gold: dict[str, str], index, state=None):
        super().__init__()
        self._model, self._gold, self._index, self._state = model, gold, index, state

    def _each(self, buckets, label: str, function, *args, flat: bool = False):
        """function(shard, state, *args) on every bucket, the state from the side input or the pair."""
        apply = beam.FlatMap if flat else beam.Map
        if self._state is not None:
            return buckets | label >> apply(function, pvalue.AsSingleton(self._state), *args)
        return buckets | label >> apply(lambda pair, *rest: function(pair[0], pair[1], *rest), *args)

    def expand(self, buckets):
        model, gold = self._model, self._gold
        report = (self._each(buckets, "FitAgreement", fit_statistics, model)
                  | "SumFitAgreement" >> beam.CombineGlobally(SumCountsFn())
                  | "FitReport" >> beam.Map(summed_fit_report, pvalue.AsSingleton(self._index), model.name))
        if not gold:
            posteriors = self._each(buckets, "Posteriors", reported_posteriors, pvalue.AsSingleton(report), model)
            return {"posteriors": posteriors, "report": report}
        # With gold, posteriors are temperature-scaled on the gold items (see calibration.py).
        temperature = (self._each(buckets, "GoldPosteriors", gold_posteriors_from_votes, model, flat=True)
                       | "GatherGold" >> beam.combiners.ToList()
                       | "FitTemperature" >> beam.Map(temperature_of))
        posteriors = self._each(buckets, "Posteriors", calibrated_bucket_posteriors, pvalue.AsSingleton(temperature),
                                pvalue.AsSingleton(report), model)
        return {"posteriors": posteriors, "report": report, "temperature": temperature}


class AnnotatorFitOnBeam(beam.PTransform):
    """What every distributed fit of an annotator model takes: the model's numeric core, gold, the EM's
    stopping rule, and how its answers are cut into elements (and spilled, with a spill directory)."""

    def __init__(self, model, gold: dict[str, str] | None = None, max_iter: int = 100,
                 tol: float = 1e-5, answers_per_element: int | None = None, spill_dir: str | None = None):
        super().__init__()
        self._model = model
        self._gold = dict(sorted((gold or {}).items()))
        self._max_iter, self._tol = max_iter, tol
        self._spill_dir = spill_dir
        self._answers_per_element = answers_per_element or (
            DEFAULT_ANSWERS_PER_FILE if spill_dir else DEFAULT_ANSWERS_PER_ELEMENT)


class FitAnnotatorModelOnBeam(AnnotatorFitOnBeam):
    """Vote tables (each holding all votes of its items) -> (AnswerBucket, posteriors), plus the index.

    `model` is the annotator model's EMModel (Dawid-Skene, one-coin, MACE): the same numeric core as
    its in-process fit. Returns {"posteriors": PCollection[(AnswerBucket, np.ndarray)],
    "index": PCollection[AnswerIndex], "state": PCollection[EMState], "report": PCollection[dict]}.
    """

    def expand(self, votes):
        model, tol = self._model, self._tol
        indexed = votes | "Index" >> IndexBuckets(self._gold, self._answers_per_element, self._spill_dir)
        buckets, index = indexed["buckets"], indexed["index"]
        state = (buckets
                 | "InitialCounts" >> beam.FlatMap(initial_counts, model)
                 | "SumInitialCounts" >> beam.CombineGlobally(SumCountsFn())
                 | "InitialParameters" >> beam.Map(initial_state, model))
        flowing = buckets
        for iteration in range(1, self._max_iter + 1):
            stepped = (flowing
                       | f"EStep{iteration}" >> beam.FlatMap(e_step_counts, pvalue.AsSingleton(state), model)
                       .with_outputs(ANSWERS, main="counts"))
            flowing = stepped[ANSWERS]
            state = (stepped["counts"]
                     | f"SumCounts{iteration}" >> beam.CombineGlobally(SumCountsFn())
                     | f"MStep{iteration}" >> beam.Map(m_step_state, pvalue.AsSingleton(state), model, tol))
        fitted = buckets | "PosteriorsOfFit" >> PosteriorsOfFit(model, self._gold, index, state)
        return {**fitted, "index": index, "state": state}


def bucket_consensus(pair: tuple[AnswerBucket, np.ndarray], index: AnswerIndex, min_votes: int, report: dict):
    """(bucket, posteriors) -> the bucket's consensus rows (carrying the fit report) and partial annotator
    statistics."""
    bucket, posteriors = pair
    answers = bucket.compact.answers()
    # Annotators re-indexed within the bucket, so its statistics grow with its own annotators.
    present, local_worker = np.unique(answers.worker, return_inverse=True)
    local = answers._replace(worker=local_worker.astype(np.int64), n_workers=len(present))
    indexed = IndexedVotes(bucket.item_ids, pa.array(index.labels, pa.string()),
                           pa.array(index.annotators, pa.string()).take(pa.array(present)), local,
                           bucket.compact.gold())
    result = consensus_from_posteriors(indexed, posteriors, min_votes)
    return result._replace(labels=with_fit_report(result.labels, report))
