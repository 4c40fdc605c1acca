"""Dawid-Skene at scale: our Beam EM, our in-process EM and crowd-kit's, on one synthetic set.

    python benchmarks/consensus_scale.py --answers 1000000 [--methods inprocess,beam,crowdkit]

The set: binary labels, answers/10 items with 10 answers each from 1,000 annotators whose
accuracies are spread 0.55-0.95 (seed 0). Each method runs in its own child process, which loads
the same answers from an .npz file, so its wall time and peak RSS (the kernel's ru_maxrss of that
process) are its own. Prints time, peak RSS and accuracy against the generated truth.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

N_ANNOTATORS = 1_000
ANSWERS_PER_ITEM = 10
MAX_ITER = 100


def generate(n_answers: int, path: str, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    n_items = n_answers // ANSWERS_PER_ITEM
    accuracy = rng.uniform(0.55, 0.95, N_ANNOTATORS)
    truth = rng.integers(0, 2, n_items)
    # 10 distinct annotators per item: a random offset into a random permutation, without a Python loop.
    permutation = rng.permutation(N_ANNOTATORS)
    start = rng.integers(0, N_ANNOTATORS, n_items)
    worker = permutation[(start[:, None] + np.arange(ANSWERS_PER_ITEM)[None, :]) % N_ANNOTATORS].ravel()
    item = np.repeat(np.arange(n_items), ANSWERS_PER_ITEM)
    correct = rng.random(len(item)) < accuracy[worker]
    label = np.where(correct, truth[item], 1 - truth[item])
    np.savez(path, item=item, worker=worker, label=label, truth=truth)


def run_inprocess(data) -> np.ndarray:
    from labelbeam.transforms.dawid_skene import Answers, dawid_skene

    answers = Answers(data["item"], data["worker"], data["label"], len(data["truth"]), N_ANNOTATORS, 2)
    return dawid_skene(answers, max_iter=MAX_ITER).posteriors.argmax(axis=1)


def run_beam(data, num_buckets: int = 16) -> np.ndarray:
    import apache_beam as beam
    import pyarrow as pa
    from apache_beam.options.pipeline_options import PipelineOptions

    from labelbeam.transforms.distributed_em import FitDawidSkeneOnBeam

    item, worker, label = data["item"], data["worker"], data["label"]
    # Zero-padded ids sort like the integers they name, so the result maps back by position.
    width = len(str(len(data["truth"])))
    buckets = []
    for bucket in range(num_buckets):
        mask = item % num_buckets == bucket
        buckets.append(pa.table({
            "item_id": pa.array(np.char.zfill(item[mask].astype(str), width).tolist()),
            "annotator_id": pa.array(np.char.zfill(worker[mask].astype(str), 4).tolist()),
            "label": pa.array(label[mask].astype(str).tolist()),
        }))
    out_dir = tempfile.mkdtemp(prefix="beam-ds-")
    with beam.Pipeline(options=PipelineOptions(["--runner=FnApiRunner"])) as pipeline:
        fitted = pipeline | beam.Create(buckets, reshuffle=False) | FitDawidSkeneOnBeam(max_iter=MAX_ITER)
        _ = (fitted["posteriors"]
             | beam.Map(lambda pair: (np.array(pair[0].item_ids.to_pylist(), dtype=np.int64),
                                      pair[1].argmax(axis=1)))
             | beam.Map(lambda pair, d=out_dir: np.save(os.path.join(d, f"{pair[0][0]}.npy"),
                                                        np.stack(pair))))
    predicted = np.empty(len(data["truth"]), dtype=np.int64)
    for name in os.listdir(out_dir):
        items, labels = np.load(os.path.join(out_dir, name))
        predicted[items] = labels
    return predicted


def run_crowdkit(data) -> np.ndarray:
    import pandas as pd
    from crowdkit.aggregation import DawidSkene

    frame = pd.DataFrame({"task": data["item"], "worker": data["worker"], "label": data["label"]})
    result = DawidSkene(n_iter=MAX_ITER).fit_predict(frame)
    return result.sort_index().to_numpy()


RUNNERS = {"inprocess": run_inprocess, "beam": run_beam, "crowdkit": run_crowdkit}


def child(method: str, path: str) -> int:
    data = dict(np.load(path))
    started = time.perf_counter()
    predicted = RUNNERS[method](data)
    seconds = time.perf_counter() - started
    accuracy = float(np.mean(predicted == data["truth"]))
    print(f"{seconds:.2f} {accuracy:.4f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--answers", type=int, default=1_000_000)
    parser.add_argument("--methods", default="inprocess,beam,crowdkit")
    parser.add_argument("--child", nargs=2, metavar=("METHOD", "NPZ"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(*args.child)
    with tempfile.TemporaryDirectory() as work:
        path = os.path.join(work, "answers.npz")
        generate(args.answers, path)
        print(f"{args.answers:,} answers, {args.answers // ANSWERS_PER_ITEM:,} items, {N_ANNOTATORS} annotators")
        print(f"{'method':<10} {'seconds':>8} {'peak RSS':>10} {'accuracy':>9}")
        for method in args.methods.split(","):
            process = subprocess.Popen([sys.executable, __file__, "--child", method, path],
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            _, status, usage = os.wait4(process.pid, 0)
            out, err = process.stdout.read(), process.stderr.read()
            if status != 0:
                print(f"{method:<10} failed: {err.strip().splitlines()[-1] if err.strip() else status}")
                continue
            seconds, accuracy = out.split()
            print(f"{method:<10} {float(seconds):>8.2f} {usage.ru_maxrss / 2**20:>8.2f} GiB {float(accuracy):>9.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
