"""The distributed EM (Dawid-Skene, one-coin, MACE, GLAD) gives the in-process answers, whatever the bucketing."""
from typing import NamedTuple

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from labelbeam.transforms.distributed_em import (
    DEFAULT_ANSWERS_PER_ELEMENT,
    FIXED_POINT_LIMIT,
    CompactAnswers,
    SumCountsFn,
    to_fixed_point,
)
from labelbeam.transforms.distributed_glad import fit_on_beam
from labelbeam.transforms.inference.em import Answers
from labelbeam.transforms.methods.single_label import DawidSkene, Glad, Mace, OneCoin

LABELS = ["bird", "cat", "dog"]


def synthetic_votes(seed: int, n_items: int = 240, n_workers: int = 9) -> pa.Table:
    rng = np.random.default_rng(seed)
    accuracy = rng.uniform(0.5, 0.95, n_workers)
    truth = rng.integers(0, 3, n_items)
    rows = []
    for item in range(n_items):
        for worker in rng.choice(n_workers, 4, replace=False):
            label = truth[item] if rng.random() < accuracy[worker] else rng.integers(0, 3)
            rows.append((f"i{item:04d}", f"w{worker}", LABELS[label]))
    items, workers, labels = zip(*rows)
    return pa.table({"item_id": list(items), "annotator_id": list(workers), "label": list(labels)})


class ThirtyIterationDawidSkene(DawidSkene):
    max_iter = 30


class ThirtyIterationOneCoin(OneCoin):
    max_iter = 30


class ThirtyIterationMace(Mace):
    max_iter = 30


class FifteenIterationGlad(Glad):
    max_iter = 15   # two passes per iteration: a longer graph costs the local runner ~80 ms a pass


class ThirtyIterationGlad(Glad):
    max_iter = 30   # past convergence (29 iterations on the spilled test's votes)


DISTRIBUTED = [ThirtyIterationDawidSkene, ThirtyIterationOneCoin, ThirtyIterationMace, FifteenIterationGlad]
# Posteriors agree to the 2**-30 rounding of the fixed-point sums. GLAD's alpha steps divide sums
# that weigh answers by nonlinear functions of the parameters, and its posteriors exponentiate
# alpha * beta, so that rounding reaches them amplified (measured: ~1e-7).
TOLERANCE = {"glad": 1e-6}


class IndexedAnswers(NamedTuple):
    """What AnnotatorModelMethod.posteriors reads of the build's indexed votes."""
    answers: Answers
    gold: np.ndarray | None


def in_process(votes: pa.Table, gold: dict[str, str], model=ThirtyIterationDawidSkene):
    items, workers = sorted(set(votes["item_id"].to_pylist())), sorted(set(votes["annotator_id"].to_pylist()))
    labels = sorted(set(votes["label"].to_pylist()) | set(gold.values()))
    answers = Answers(np.array([items.index(x) for x in votes["item_id"].to_pylist()]),
                      np.array([workers.index(x) for x in votes["annotator_id"].to_pylist()]),
                      np.array([labels.index(x) for x in votes["label"].to_pylist()]),
                      len(items), len(workers), len(labels))
    gold_idx = np.array([labels.index(gold[i]) if i in gold else -1 for i in items]) if gold else None
    method = model()
    posteriors = method.posteriors(IndexedAnswers(answers, gold_idx))  # the build's in-process path
    return {item: row for item, row in zip(items, posteriors)}, method.fit_model(answers, gold_idx).iterations


def assert_beam_matches_in_process(votes: pa.Table, num_buckets: int, gold: dict[str, str],
                                   answers_per_element: int = DEFAULT_ANSWERS_PER_ELEMENT,
                                   spill_dir: str | None = None, model=ThirtyIterationDawidSkene) -> None:
    expected, iterations = in_process(votes, gold, model)
    atol = TOLERANCE.get(model.name, 1e-7)
    buckets = [votes.filter(pa.array([int(i[1:]) % num_buckets == b for i in votes["item_id"].to_pylist()]))
               for b in range(num_buckets)]

    def same_posteriors(pairs):
        found = {item: row for bucket, posteriors in pairs
                 for item, row in zip(bucket.item_ids.to_pylist(), posteriors)}
        assert found.keys() == expected.keys()
        for item, row in expected.items():
            np.testing.assert_allclose(found[item], row, atol=atol)  # exact fixed-point counts: 2**-30 rounding per answer

    def same_iterations(states):
        assert [state.iterations for state in states] == [iterations]

    with TestPipeline(runner="FnApiRunner") as pipeline:
        fitted = pipeline | beam.Create([b for b in buckets if b.num_rows]) | fit_on_beam(
            model().em_model(), gold=gold, max_iter=model.max_iter, answers_per_element=answers_per_element,
            spill_dir=spill_dir)
        assert_that(fitted["posteriors"], same_posteriors, label="Posteriors")
        assert_that(fitted["state"], same_iterations, label="Iterations")


@pytest.mark.parametrize("model", DISTRIBUTED, ids=lambda model: model.name)
def test_beam_em_equals_in_process_em_for_any_bucketing(model):
    votes = synthetic_votes(seed=5)
    # Every model shares the distributed driver; Dawid-Skene walks it through more bucketings.
    for num_buckets in (1, 3, 7) if model is ThirtyIterationDawidSkene else (3,):
        assert_beam_matches_in_process(votes, num_buckets, {}, model=model)


def test_beam_em_cuts_big_buckets_into_bounded_elements_without_changing_answers():
    assert_beam_matches_in_process(synthetic_votes(seed=7), 2, {"i0003": "cat"}, answers_per_element=50)


@pytest.mark.parametrize("model", [ThirtyIterationDawidSkene, ThirtyIterationGlad], ids=lambda model: model.name)
def test_beam_em_with_answers_spilled_to_files_gives_the_in_process_answers(tmp_path, model):
    """GLAD here also took 24 iterations where the in-process fit took 29, until its ability steps stopped
    being decided by the 2**-30 rounding of their summed terms (glad.ABILITY_SLACK)."""
    gold = {"i0003": "cat", "i0100": "dog"}
    assert_beam_matches_in_process(synthetic_votes(seed=8), 3, gold, answers_per_element=100,
                                   spill_dir=str(tmp_path), model=model)
    spilled = list(tmp_path.iterdir())
    assert len(spilled) >= 9 and all(path.name.startswith("em-answers-") for path in spilled)   # 960 answers / 100


# GLAD's gold clamping: the spilled test, which has gold.
@pytest.mark.parametrize("model", [m for m in DISTRIBUTED if m is not FifteenIterationGlad], ids=lambda model: model.name)
def test_beam_em_clamps_gold_like_the_in_process_path(model):
    votes = synthetic_votes(seed=6, n_items=120)
    gold = {"i0000": "dog", "i0001": "bird", "i0002": "cat"}
    expected, _ = in_process(votes, gold, model)
    for item, label in gold.items():
        assert expected[item].argmax() == LABELS.index(label) and expected[item].max() == 1.0
    assert_beam_matches_in_process(votes, 4, gold, model=model)


def test_compact_answers_keep_every_answer_and_cut_only_between_items():
    rng = np.random.default_rng(3)
    item = rng.integers(0, 40, 300)
    answers = Answers(item, rng.integers(0, 300, 300), rng.integers(0, 3, 300), 40, 300, 3)
    gold = np.where(rng.random(40) < 0.3, rng.integers(0, 3, 40), -1)
    compact = CompactAnswers.from_answers(answers, gold)
    assert compact.worker.dtype == np.uint16 and compact.label.dtype == np.uint8
    restored = compact.answers()
    as_rows = lambda a: sorted(zip(a.item.tolist(), a.worker.tolist(), a.label.tolist()))
    assert as_rows(restored) == as_rows(answers)
    np.testing.assert_array_equal(compact.gold(), gold)
    ranges = compact.item_ranges(max_answers=25)
    assert ranges[0][0] == 0 and ranges[-1][1] == 40
    assert all(stop == next_start for (_, stop), (next_start, _) in zip(ranges, ranges[1:]))
    pieces = [(start, compact.items(start, stop)) for start, stop in ranges]
    rows = [(start + i, w, lab) for start, piece in pieces for i, w, lab in as_rows(piece.answers())]
    assert sorted(rows) == as_rows(answers)
    largest_item = np.bincount(item).max()
    assert all(piece.item_offsets[-1] <= 25 + largest_item for _, piece in pieces)
    assert len(pieces) >= 300 // (25 + largest_item)
    regathered = np.concatenate([piece.gold() if piece.gold() is not None else np.full(piece.n_items, -1)
                                 for _, piece in pieces])
    np.testing.assert_array_equal(regathered, gold)


def test_summed_counts_are_bit_identical_in_any_combine_order():
    rng = np.random.default_rng(4)
    parts = [to_fixed_point((rng.random(3) * 1e3, rng.random((5, 3, 3)) * 1e3)) for _ in range(50)]
    combine = SumCountsFn()

    def total(order):
        halves = [combine.create_accumulator(), combine.create_accumulator()]
        for position, index in enumerate(order):
            halves[position % 2] = combine.add_input(halves[position % 2], parts[index])
        return combine.extract_output(combine.merge_accumulators(halves))

    reference = total(range(50))
    for seed in range(5):
        shuffled = total(np.random.default_rng(seed).permutation(50))
        assert all(np.array_equal(a, b) for a, b in zip(reference, shuffled))


def test_summing_counts_past_the_fixed_point_range_is_an_error_not_a_wraparound():
    big = (np.array([FIXED_POINT_LIMIT - 1]), np.zeros((1, 1, 1), dtype=np.int64))
    with pytest.raises(OverflowError, match="fixed-point"):
        SumCountsFn().add_input(big, big)
    negative = tuple(-part for part in big)   # GLAD's sums of log terms are negative
    with pytest.raises(OverflowError, match="fixed-point"):
        SumCountsFn().add_input(negative, negative)



@pytest.mark.parametrize("model", [DawidSkene, Glad], ids=lambda model: model.name)
def test_both_paths_agree_when_there_is_nothing_to_fit(model):
    """No votes, or only ratings: no class to infer, yet every item keeps a row (needs_more_votes)."""
    from event_builders import event, event_table

    from labelbeam.transforms.consensus import LABELS, ComputeConsensus

    class Short(model):
        max_iter = 3  # the unrolled graph stays small; nothing converges here anyway

    ratings_only = event_table([event("e1", item="i1", label=None, score=4.0),
                                event("e2", item="i2", annotator="a2", label=None, score=2.0)])
    expected_rows = [("i1", None, "needs_more_votes"), ("i2", None, "needs_more_votes")]
    for tables, expected in (([], []), ([ratings_only.schema.empty_table()], []), ([ratings_only], expected_rows)):
        for em in ("in_process", "beam"):
            with TestPipeline(runner="FnApiRunner") as pipeline:
                consensus = (pipeline | beam.Create(tables, reshuffle=False).with_output_types(pa.Table)
                             | ComputeConsensus(Short(em=em)))
                rows = consensus[LABELS] | beam.FlatMap(
                    lambda table: [(r["item_id"], r["label"], r["status"]) for r in table.to_pylist()])
                assert_that(rows, equal_to(expected))


@pytest.mark.parametrize("model, crowd_args, degenerate", [
    (ThirtyIterationDawidSkene, dict(seed=3, n_labels=2, per_item=3, adversarial=0.2, biased=0.5), True),  # 0.16
    (ThirtyIterationOneCoin, dict(seed=0, n_labels=4, per_item=3, adversarial=0.3, biased=0.3), True),     # 0.23
    (ThirtyIterationMace, dict(seed=2, n_labels=3, per_item=5, adversarial=0.0, biased=0.0), False)],
    ids=["ds-collapsed", "one_coin-collapsed", "mace-sane"])   # GLAD's report: test_annotators_build.py
def test_the_distributed_fit_is_checked_for_degeneracy_like_the_in_process_one(model, crowd_args, degenerate):
    """Both paths report the same fit and publish the same rows: majority vote when the fit collapsed."""
    from crowds import crowd, votes_of

    from labelbeam.transforms.consensus import LABELS, ComputeConsensus
    from labelbeam.transforms.methods.base import fit_reports

    votes = votes_of(crowd(**crowd_args)[0])
    in_process_labels = model().consensus_of(votes).labels
    [expected_report] = fit_reports([in_process_labels])
    assert expected_report["degenerate"] is degenerate
    buckets = [votes.filter(pa.array([int(i[1:]) % 3 == b for i in votes["item_id"].to_pylist()])) for b in range(3)]
    expected_rows = sorted(zip(*(in_process_labels.column(c).to_pylist() for c in ("item_id", "label", "status"))))

    def same_reports(tables):
        assert fit_reports(tables) == [expected_report]

    with TestPipeline(runner="FnApiRunner") as pipeline:
        consensus = (pipeline | beam.Create(buckets, reshuffle=False).with_output_types(pa.Table)
                     | ComputeConsensus(model(em="beam")))
        rows = consensus[LABELS] | beam.FlatMap(
            lambda table: [(r["item_id"], r["label"], r["status"]) for r in table.to_pylist()])
        assert_that(rows, equal_to(expected_rows), label="Rows")
        assert_that(consensus[LABELS] | beam.combiners.ToList(), lambda lists: same_reports(lists[0]),
                    label="Reports")
