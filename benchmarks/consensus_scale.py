"""Dawid-Skene (or GLAD) at scale: our Beam EM, our in-process EM and crowd-kit's, on one synthetic set.

    python benchmarks/consensus_scale.py --answers 1000000 [--methods inprocess,beam,crowdkit]
    python benchmarks/consensus_scale.py --answers 100000000 --methods beam   # ~2.4 GB of .npy in $TMPDIR
    python benchmarks/consensus_scale.py --model glad --answers 1000000 --methods inprocess,beam

The set: binary labels, answers/10 items with 10 answers each from 1,000 annotators whose
accuracies are spread 0.55-0.95 (seed 0), saved as .npy files. Each method runs in its own child
process, so its wall time and peak RSS (the kernel's ru_maxrss of that process) are its own. Prints
time, peak RSS and accuracy against the generated truth.

- inprocess: `dawid_skene` (`glad` with --model glad) on numpy arrays (the in-process path of `--method ds`).
- beam: the build's consensus step for `--method ds --em beam` (distributed EM, consensus rows,
  per-annotator statistics) on the local FnApiRunner, reading the votes from 16 Parquet files
  (the build's default bucket count) that this process writes before the child starts; the EM's
  answers are spilled to a scratch directory, as the build does on the local runners. The child
  loads nothing else (the truth only after its clock stops).
- crowdkit: crowd-kit's DawidSkene (GLAD) on a pandas frame (`pip install ".[bench]"`).
All three run at most 100 EM iterations with their own stopping rules.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

N_ANNOTATORS = 1_000
ANSWERS_PER_ITEM = 10
MAX_ITER = 100


def generate(n_answers: int, directory: str, seed: int = 0) -> None:
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
    for name, values in (("item", item), ("worker", worker), ("label", label), ("truth", truth)):
        np.save(os.path.join(directory, f"{name}.npy"), values)


def load(directory: str, names=("item", "worker", "label", "truth")) -> dict[str, np.ndarray]:
    return {name: np.load(os.path.join(directory, f"{name}.npy")) for name in names}


def run_inprocess(data, model: str) -> np.ndarray:
    from labelbeam.transforms.inference.dawid_skene import dawid_skene
    from labelbeam.transforms.inference.em import Answers
    from labelbeam.transforms.inference.glad import glad

    answers = Answers(data["item"], data["worker"], data["label"], len(data["truth"]), N_ANNOTATORS, 2)
    fit = {"ds": dawid_skene, "glad": glad}[model]
    return fit(answers, max_iter=MAX_ITER).posteriors.argmax(axis=1)


def write_vote_buckets(data, directory: str, num_buckets: int = 16) -> list[str]:
    """The votes as Parquet files (item_id, annotator_id, label), one per item bucket.

    The Beam pipeline reads these as it would read the output of the build's upstream stages
    (beam.Create would pickle 10M answers into the pipeline graph). Written before the clock starts.
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    def padded_ids(values: np.ndarray, width: int) -> pa.Array:
        # Zero-padded ids sort like the integers they name, so results map back by position.
        return pc.utf8_lpad(pc.cast(pa.array(values), pa.string()), width, "0")

    item, worker, label = data["item"], data["worker"], data["label"]
    item_width = len(str(len(data["truth"])))
    paths = []
    for bucket in range(num_buckets):
        mask = item % num_buckets == bucket
        paths.append(os.path.join(directory, f"votes-{bucket:05d}.parquet"))
        pq.write_table(pa.table({"item_id": padded_ids(item[mask], item_width),
                                 "annotator_id": padded_ids(worker[mask], 4),
                                 "label": pc.cast(pa.array(label[mask]), pa.string())}), paths[-1])
    return paths


def check_annotator_count(partials, summarize) -> None:
    found = summarize(partials, str)[0].num_rows
    if found != N_ANNOTATORS:
        raise RuntimeError(f"annotator statistics cover {found} annotators, not {N_ANNOTATORS}")


def run_beam(n_items: int, paths: list[str], model: str) -> np.ndarray:
    """`--method ds --em beam` (or glad): the build's consensus step (distributed EM, consensus rows and
    per-annotator statistics) on the local runner, reading the vote buckets from Parquet, with the
    answers spilled to a scratch directory as the build does on the local runners."""
    import apache_beam as beam
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    from apache_beam.options.pipeline_options import PipelineOptions

    from labelbeam.transforms.consensus import ANNOTATOR_STATS, LABELS, ComputeConsensus
    from labelbeam.transforms.inference.annotator_stats import summarize_annotators
    from labelbeam.transforms.methods.registry import METHODS

    out_dir = tempfile.mkdtemp(prefix="beam-ds-out-")
    scratch = tempfile.mkdtemp(prefix="beam-ds-scratch-")
    method = METHODS[model](em="beam")
    assert method.max_iter == MAX_ITER
    with beam.Pipeline(options=PipelineOptions(["--runner=FnApiRunner"])) as pipeline:
        consensus = (pipeline
                     | beam.Create(paths, reshuffle=False)
                     | "ReadVotes" >> beam.Map(pq.read_table).with_output_types(pa.Table)
                     | ComputeConsensus(method, scratch_dir=scratch))
        _ = (consensus[LABELS]
             | beam.Map(lambda rows: np.stack([pc.cast(rows.column("item_id"), pa.int64()).to_numpy(),
                                               pc.cast(rows.column("label"), pa.int64()).to_numpy()]))
             | beam.Map(lambda rows, d=out_dir: np.save(os.path.join(d, f"{rows[0, 0]}.npy"), rows)))
        _ = (consensus[ANNOTATOR_STATS]
             | beam.combiners.ToList()
             | beam.Map(check_annotator_count, summarize_annotators))
    shutil.rmtree(scratch)
    predicted = np.empty(n_items, dtype=np.int64)
    for name in os.listdir(out_dir):
        items, labels = np.load(os.path.join(out_dir, name))
        predicted[items] = labels
    return predicted


def run_crowdkit(data, model: str) -> np.ndarray:
    import pandas as pd
    from crowdkit.aggregation import GLAD, DawidSkene

    frame = pd.DataFrame({"task": data["item"], "worker": data["worker"], "label": data["label"]})
    result = {"ds": DawidSkene, "glad": GLAD}[model](n_iter=MAX_ITER).fit_predict(frame)
    return result.sort_index().to_numpy()


RUNNERS = {"inprocess": run_inprocess, "beam": run_beam, "crowdkit": run_crowdkit}


def child(method: str, directory: str, model: str) -> int:
    """One method in this process. The beam run reads its Parquet buckets (written by the parent) and
    loads nothing else until its clock stops, so its peak RSS is the pipeline's own."""
    if method == "beam":
        paths = sorted(os.path.join(directory, name) for name in os.listdir(directory) if name.endswith(".parquet"))
        n_items = len(np.load(os.path.join(directory, "truth.npy"), mmap_mode="r"))
        started = time.perf_counter()
        predicted = run_beam(n_items, paths, model)
    else:
        data = load(directory)
        started = time.perf_counter()
        predicted = RUNNERS[method](data, model)
    seconds = time.perf_counter() - started
    accuracy = float(np.mean(predicted == np.load(os.path.join(directory, "truth.npy"))))
    print(f"{seconds:.2f} {accuracy:.4f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--answers", type=int, default=1_000_000)
    parser.add_argument("--methods", default="inprocess,beam,crowdkit")
    parser.add_argument("--model", choices=("ds", "glad"), default="ds", help="the annotator model (default ds)")
    parser.add_argument("--json", metavar="PATH", help="also write the key figures to PATH as JSON")
    parser.add_argument("--child", nargs=2, metavar=("METHOD", "DIR"), help=argparse.SUPPRESS)
    parser.add_argument("--prepare", metavar="DIR", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(*args.child, args.model)
    if args.prepare:
        generate(args.answers, args.prepare)
        if "beam" in args.methods.split(","):
            write_vote_buckets(load(args.prepare), args.prepare)
        return 0
    with tempfile.TemporaryDirectory(prefix="consensus-scale-") as work:
        # In a process of its own: a child forked from a parent holding the answers would count the
        # parent's pages in its peak RSS (at 100M answers the parent held 4 GiB).
        subprocess.run([sys.executable, __file__, "--prepare", work, "--answers", str(args.answers),
                        "--methods", args.methods], check=True)
        print(f"{args.model}: {args.answers:,} answers, {args.answers // ANSWERS_PER_ITEM:,} items, "
              f"{N_ANNOTATORS} annotators")
        print(f"{'method':<10} {'seconds':>8} {'peak RSS':>10} {'accuracy':>9}")
        figures = {}   # method -> key figures, for --json
        for method in args.methods.split(","):
            process = subprocess.Popen([sys.executable, __file__, "--child", method, work, "--model", args.model],
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            _, status, usage = os.wait4(process.pid, 0)
            out, err = process.stdout.read(), process.stderr.read()
            if status != 0:
                reason = err.strip().splitlines()[-1] if err.strip() else str(status)
                print(f"{method:<10} failed: {reason}")
                figures[method] = {"ok": False, "error": reason}
                continue
            seconds, accuracy = out.split()
            print(f"{method:<10} {float(seconds):>8.2f} {usage.ru_maxrss / 2**20:>8.2f} GiB {float(accuracy):>9.4f}")
            figures[method] = {"ok": True, "seconds": float(seconds), "peak_rss_bytes": usage.ru_maxrss * 1024,
                               "accuracy": float(accuracy)}
    if args.json:
        with open(args.json, "w", encoding="utf-8") as stream:
            json.dump({"ok": all(method["ok"] for method in figures.values()), "answers": args.answers, "model": args.model,
                       "methods": figures}, stream, indent=2, sort_keys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
