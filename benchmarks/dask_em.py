"""The distributed EM (`--method ds --em beam`) on Dask with 1 and 2 workers, next to the local runner.

    python benchmarks/dask_em.py                                  # 2M answers, 2,000 generated events
    python benchmarks/dask_em.py --answers 200000 --events 500 --timeout 120        # quick

Two measurements, each on the local FnApiRunner (the baseline) and on a dask.distributed LocalCluster
started here with N worker processes of one thread each, for each N of --workers (default 1 2):

- seconds per EM iteration: FitAnnotatorModelOnBeam with Dawid-Skene (the build's distributed EM) over --answers synthetic
  answers (consensus_scale.py's set, 16 Parquet buckets) run for exactly 2 and exactly 12 iterations
  (tol 0); the slope between the two is the time of one iteration, start-up and indexing cancelled out.
  This is what more workers should shrink.
- `labelbeam build --method ds --em beam` end to end on one generated sample (`labelbeam generate`,
  reused as in build_throughput.py), as a subprocess; the build finds the cluster through the
  DASK_SCHEDULER_ADDRESS environment variable (dask's config `scheduler-address`). Its EM is small, so
  these seconds are mostly the runner's per-step overhead, 100 unrolled iterations of it.

A build still going after --timeout seconds is killed and reported as timed out (not a failure). Exit 1
if a build fails or a finished build's manifest counts differ from the generator's expected.json.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import build_throughput as bt  # noqa: E402  (sample generation, manifest reading, CLI lookup, JSON)

DASK_RUNNER = "labelbeam.pipelines.dask_runner.DaskRunner"
OK, TIMED_OUT, FAILED = "ok", "timed out", "failed"


def run_build(name: str, sample_dir: Path, description: dict[str, Any], extra: list[str], env: dict[str, str],
              timeout: float) -> dict[str, Any]:
    """Time one `labelbeam build --method ds --em beam`; status ok, timed out (killed) or failed."""
    runs = sample_dir / "runs"
    runs.mkdir(exist_ok=True)
    output_root, log_path = runs / f"dask-em-{name}", runs / f"dask-em-{name}.log"
    shutil.rmtree(output_root, ignore_errors=True)
    command = bt.labelbeam_command() + [
        "build", "--input", str(sample_dir / "events"), "--output", str(output_root),
        "--dataset", description["dataset"], "--labels", ",".join(description["labels"]), "--force",
        "--method", "ds", "--em", "beam", *extra]
    print("$ " + " ".join(command), flush=True)
    with open(log_path, "wb") as log:
        started = time.perf_counter()
        try:
            completed = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env, timeout=timeout)
        except subprocess.TimeoutExpired:
            print(f"  {name}: killed after {timeout:g} s", flush=True)
            return {"name": name, "status": TIMED_OUT, "seconds": None, "detail": f"killed after {timeout:g} s"}
        seconds = time.perf_counter() - started
    if completed.returncode != 0:
        detail = f"exit {completed.returncode}; log {log_path}:\n{bt.log_tail(log_path)}"
        print(f"  {name}: FAILED, {detail}", flush=True)
        return {"name": name, "status": FAILED, "seconds": seconds, "detail": detail}
    _, manifest = bt.read_published_manifest(output_root, description["dataset"])
    mismatches = bt.counts_mismatches(manifest["counts"], description["expected"])
    if mismatches:
        detail = "counts differ from expected.json: " + "; ".join(mismatches)
        print(f"  {name}: FAILED, {detail}", flush=True)
        return {"name": name, "status": FAILED, "seconds": seconds, "detail": detail}
    print(f"  {name}: {seconds:.1f} s", flush=True)
    return {"name": name, "status": OK, "seconds": seconds, "detail": ""}


def run_on_dask(workers: int, sample_dir: Path, description: dict[str, Any], timeout: float) -> dict[str, Any]:
    from dask.distributed import LocalCluster

    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        env = {**os.environ, "DASK_SCHEDULER_ADDRESS": cluster.scheduler_address}
        result = run_build(f"dask{workers}", sample_dir, description, ["--runner", DASK_RUNNER], env, timeout)
    result["workers"] = workers
    return result


def em_run_seconds(paths: list[str], iterations: int, beam_args: list[str]) -> float:
    """Wall seconds of FitAnnotatorModelOnBeam (Dawid-Skene) over the Parquet vote buckets, exactly `iterations` EM
    iterations (tol 0: it never stops early), on the runner beam_args name."""
    import apache_beam as beam
    import pyarrow as pa
    import pyarrow.parquet as pq
    from apache_beam.options.pipeline_options import PipelineOptions

    from labelbeam.transforms.distributed_em import FitAnnotatorModelOnBeam
    from labelbeam.transforms.inference.dawid_skene import DawidSkeneModel

    started = time.perf_counter()
    with beam.Pipeline(options=PipelineOptions(beam_args)) as pipeline:
        fitted = (pipeline
                  | beam.Create(paths, reshuffle=False)
                  | "ReadVotes" >> beam.Map(pq.read_table).with_output_types(pa.Table)
                  | FitAnnotatorModelOnBeam(DawidSkeneModel(), max_iter=iterations, tol=0.0))
        _ = fitted["state"] | beam.Map(lambda state, expected=iterations: state.iterations == expected or
                                       sys.exit(f"ran {state.iterations} iterations, not {expected}"))
    return time.perf_counter() - started


def per_iteration(paths: list[str], beam_args: list[str], few: int, many: int) -> dict[str, Any]:
    """Seconds per EM iteration as the slope between runs of `few` and `many` iterations (start-up,
    indexing and the final step cancel out)."""
    short, long = em_run_seconds(paths, few, beam_args), em_run_seconds(paths, many, beam_args)
    return {"seconds_few": short, "seconds_many": long, "per_iteration": (long - short) / (many - few)}


def em_iterations(answers: int, workers_list: list[int], few: int, many: int) -> dict[str, Any]:
    """Time per distributed-EM iteration on the local FnApiRunner and on Dask with each worker count."""
    import tempfile

    import consensus_scale as cs
    from dask.distributed import LocalCluster

    with tempfile.TemporaryDirectory(prefix="dask-em-") as work:
        cs.generate(answers, work)
        paths = cs.write_vote_buckets(cs.load(work), work)
        runs = {"local": per_iteration(paths, ["--runner=FnApiRunner"], few, many)}
        print(f"  local: {runs['local']['per_iteration']:.3f} s per iteration", flush=True)
        for workers in workers_list:
            with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                              dashboard_address=None) as cluster:
                runs[f"dask{workers}"] = per_iteration(
                    paths, ["--runner", DASK_RUNNER, "--dask_client_address", cluster.scheduler_address], few, many)
            print(f"  Dask, {workers} worker(s): {runs[f'dask{workers}']['per_iteration']:.3f} s per iteration",
                  flush=True)
    return {"answers": answers, "iterations": [few, many], "runs": runs}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2_000, help="events to generate (default 2000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=Path(bt.DEFAULT_WORKDIR))
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="Dask worker counts (default 1 2)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds before a Dask build is killed "
                        "(default 900)")
    parser.add_argument("--answers", type=int, default=2_000_000,
                        help="answers for the per-iteration measurement (default 2,000,000; 0 skips it)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the key figures to PATH as JSON")
    args = parser.parse_args(argv)
    iterations = None
    if args.answers:
        print(f"distributed EM, {args.answers:,} answers: seconds per iteration (slope between 2 and 12 iterations)")
        iterations = em_iterations(args.answers, args.workers, 2, 12)
    args.workdir.mkdir(parents=True, exist_ok=True)
    sample_dir, description = bt.ensure_sample(args.workdir, args.events, args.seed)
    votes = description["expected"]["votes"]

    local = run_build("local", sample_dir, description, [], dict(os.environ), args.timeout)
    dask_runs = [run_on_dask(workers, sample_dir, description, args.timeout) for workers in args.workers]

    print()
    print(f"labelbeam build --method ds --em beam on {votes:,} votes ({description['expected']['read']:,} events)")
    rows = [["local (FnApiRunner)", "-", local["status"], f"{local['seconds']:.1f}" if local["seconds"] is not None else "-"]]
    rows += [[f"Dask, {run['workers']} worker(s)", str(run["workers"]), run["status"],
              f"{run['seconds']:.1f}" if run["seconds"] is not None else "-"] for run in dask_runs]
    print(bt.format_table(["run", "workers", "status", "seconds"], rows))
    if iterations:
        print()
        print(f"FitAnnotatorModelOnBeam (Dawid-Skene) on {iterations['answers']:,} answers: seconds per EM iteration")
        print(bt.format_table(["run", "per iteration", "2 iterations", "12 iterations"], [
            [name, f"{run['per_iteration']:.3f}", f"{run['seconds_few']:.1f}", f"{run['seconds_many']:.1f}"]
            for name, run in iterations["runs"].items()]))
    failed = [run for run in [local, *dask_runs] if run["status"] == FAILED]
    for run in failed:
        print(f"FAIL {run['name']}: {run['detail']}", file=sys.stderr)
    bt.write_json(args.json, {"ok": not failed, "votes": votes, "events": description["expected"]["read"],
                              "timeout": args.timeout, "local": local, "dask": dask_runs,
                              "em_iterations": iterations})
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
