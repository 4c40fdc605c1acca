"""The distributed EM (`labelbeam build --method ds --em beam`) on Dask with 1 and 2 workers, next to the local runner.

    python benchmarks/dask_em.py                                  # 2,000 generated events, each Dask run <= 15 min
    python benchmarks/dask_em.py --events 500 --timeout 60        # quick

For one generated sample (`labelbeam generate`, reused as in build_throughput.py) it times
`labelbeam build --method ds --em beam` end to end as a subprocess:
- local: on the local FnApiRunner, the baseline (same EM, same files, the local engine);
- dask N: with `--runner labelbeam.pipelines.dask_runner.DaskRunner` on a dask.distributed LocalCluster
  started here with N worker processes of one thread each, for each N of --workers (default 1 2). The
  cluster starts before the clock does.

The build finds the cluster through the DASK_SCHEDULER_ADDRESS environment variable (dask's config
`scheduler-address`, which Beam's Dask runner falls back to): `labelbeam build` rejects
`--dask_client_address` as an unknown option, because Beam only knows DaskOptions once its Dask runner
module is imported, after the CLI has checked the flags.

A run still going after --timeout seconds is killed and reported as timed out, with no figure: the Dask
translation builds a new bag graph per EM iteration (pipelines/build.py notes ds on 2,500 votes took over
10 min). A timeout is not a failure. Exit 1 if a build fails or a finished build's manifest counts differ
from the generator's expected.json.
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2_000, help="events to generate (default 2000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=Path(bt.DEFAULT_WORKDIR))
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="Dask worker counts (default 1 2)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds before a Dask build is killed "
                        "(default 900)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the key figures to PATH as JSON")
    args = parser.parse_args(argv)
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
    failed = [run for run in [local, *dask_runs] if run["status"] == FAILED]
    for run in failed:
        print(f"FAIL {run['name']}: {run['detail']}", file=sys.stderr)
    bt.write_json(args.json, {"ok": not failed, "votes": votes, "events": description["expected"]["read"],
                              "timeout": args.timeout, "local": local, "dask": dask_runs})
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
