"""The Beam Dawid-Skene gives the in-process answers, whatever the bucketing."""
import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that

from labelbeam.transforms.dawid_skene import Answers, dawid_skene
from labelbeam.transforms.distributed_em import FitDawidSkeneOnBeam

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


def in_process(votes: pa.Table, gold: dict[str, str]):
    items, workers = sorted(set(votes["item_id"].to_pylist())), sorted(set(votes["annotator_id"].to_pylist()))
    labels = sorted(set(votes["label"].to_pylist()) | set(gold.values()))
    answers = Answers(np.array([items.index(x) for x in votes["item_id"].to_pylist()]),
                      np.array([workers.index(x) for x in votes["annotator_id"].to_pylist()]),
                      np.array([labels.index(x) for x in votes["label"].to_pylist()]),
                      len(items), len(workers), len(labels))
    gold_idx = np.array([labels.index(gold[i]) if i in gold else -1 for i in items]) if gold else None
    result = dawid_skene(answers, max_iter=30, gold=gold_idx)
    return {item: row for item, row in zip(items, result.posteriors)}, result.iterations


def assert_beam_matches_in_process(votes: pa.Table, num_buckets: int, gold: dict[str, str]) -> None:
    expected, iterations = in_process(votes, gold)
    buckets = [votes.filter(pa.array([int(i[1:]) % num_buckets == b for i in votes["item_id"].to_pylist()]))
               for b in range(num_buckets)]

    def same_posteriors(pairs):
        found = {item: row for bucket, posteriors in pairs
                 for item, row in zip(bucket.item_ids.to_pylist(), posteriors)}
        assert found.keys() == expected.keys()
        for item, row in expected.items():
            np.testing.assert_allclose(found[item], row, atol=1e-9)

    def same_iterations(states):
        assert [state.iterations for state in states] == [iterations]

    with TestPipeline(runner="FnApiRunner") as pipeline:
        fitted = pipeline | beam.Create([b for b in buckets if b.num_rows]) | FitDawidSkeneOnBeam(gold=gold, max_iter=30)
        assert_that(fitted["posteriors"], same_posteriors, label="Posteriors")
        assert_that(fitted["state"], same_iterations, label="Iterations")


def test_beam_em_equals_in_process_em_for_any_bucketing():
    votes = synthetic_votes(seed=5)
    for num_buckets in (1, 3, 7):
        assert_beam_matches_in_process(votes, num_buckets, {})


def test_beam_em_clamps_gold_like_the_in_process_path():
    votes = synthetic_votes(seed=6, n_items=120)
    gold = {"i0000": "dog", "i0001": "bird", "i0002": "cat"}
    expected, _ = in_process(votes, gold)
    for item, label in gold.items():
        assert expected[item].argmax() == LABELS.index(label) and expected[item].max() == 1.0
    assert_beam_matches_in_process(votes, 4, gold)
