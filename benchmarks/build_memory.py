"""Peak memory of a local `labelbeam build` as the input grows: bounded, or growing with the events?

    python benchmarks/build_memory.py                       # 1M and 10M events (generates ~2 GB once)
    python benchmarks/build_memory.py --sizes 100000 1000000 --runner-shuffle-at 100000

For each size it runs `labelbeam build` on the local runner (FnApiRunner) as a subprocess, with
`--shuffle files` (the local default), sampling the peak RSS of its process tree, and checks the
manifest's counts against the generator's expected.json. The baseline, in the same run, is the same
build with `--shuffle runner` (the runner's in-memory GroupByKey, what every local build used before)
at the sizes named by --runner-shuffle-at (default: the smallest size; at 10M it needs ~11 GiB).

Printed: seconds, microseconds per event, peak RSS and the largest single process's ru_maxrss for every
run; the ratio of time per event at each size to the smallest size's (target: no worse, <= 1.0 give or
take noise); peak RSS against --max-rss-gib (default 4); and the files mode's peak against the runner
mode's at the same size. Exit 1 if a build fails or its counts differ from expected.json; the targets
are reported, never enforced.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from build_throughput import (  # noqa: E402 - the benchmarks directory is not a package
    DEFAULT_WORKDIR,
    RunResult,
    counts_mismatches,
    ensure_sample,
    format_bytes,
    format_table,
    result_json,
    run_labelbeam,
    write_json,
)

GIB = 1024 ** 3


def run_size(workdir: Path, events: int, seed: int, shuffle: str, extra: list[str]) -> tuple[RunResult, int]:
    sample_dir, description = ensure_sample(workdir, events, seed)
    runs = sample_dir / "runs"
    runs.mkdir(exist_ok=True)
    result = run_labelbeam(sample_dir / "events", runs / f"memory-{shuffle}", description["dataset"],
                           description["labels"], [f"--shuffle={shuffle}", *extra], runs / f"memory-{shuffle}.log")
    result.name = f"{shuffle} {events:,}"
    if result.ok:
        mismatches = counts_mismatches(result.counts, description["expected"])
        if mismatches:
            result.ok, result.error = False, "counts differ from expected.json: " + "; ".join(mismatches)
    return result, description["expected"]["read"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--runner-shuffle-at", type=int, nargs="*", default=None,
                        help="sizes also built with --shuffle runner (default: the smallest size)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=Path(DEFAULT_WORKDIR))
    parser.add_argument("--max-rss-gib", type=float, default=4.0)
    parser.add_argument("--beam-arg", action="append", default=[], help="passed to every build, e.g. "
                        "--beam-arg=--num_buckets=32")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the key figures to PATH as JSON")
    args = parser.parse_args(argv)
    sizes = sorted(set(args.sizes))
    runner_sizes = set(args.runner_shuffle_at if args.runner_shuffle_at is not None else sizes[:1])
    args.workdir.mkdir(parents=True, exist_ok=True)

    runs: list[tuple[str, int, RunResult, int]] = []   # (shuffle, size, result, events read)
    for size in sizes:
        for shuffle in ("files", "runner") if size in runner_sizes else ("files",):
            result, read = run_size(args.workdir, size, args.seed, shuffle, args.beam_arg)
            runs.append((shuffle, size, result, read))
            print(f"  {result.name}: {'ok' if result.ok else 'FAILED'} in {result.seconds:.1f} s, "
                  f"peak {format_bytes(result.peak_rss_bytes)}", flush=True)

    per_event = {(shuffle, size): result.seconds / read * 1e6 for shuffle, size, result, read in runs if result.ok}
    smallest = per_event.get(("files", sizes[0]))
    rows = []
    for shuffle, size, result, read in runs:
        us = per_event.get((shuffle, size))
        rows.append([result.name, f"{read:,}", f"{result.seconds:.1f}", f"{us:.1f}" if us else "-",
                     f"{us / smallest:.2f}x" if us and smallest and shuffle == "files" else "-",
                     format_bytes(result.peak_rss_bytes), format_bytes(result.largest_process_rss_bytes),
                     "yes" if result.ok and result.peak_rss_bytes <= args.max_rss_gib * GIB else "no"])
    print()
    print(format_table(["run", "events", "seconds", "us/event", f"vs {sizes[0]:,}", "peak RSS", "largest process",
                        f"<= {args.max_rss_gib:g} GiB"], rows))
    by_key = {(shuffle, size): result for shuffle, size, result, _ in runs}
    for size in sorted(runner_sizes & set(sizes)):
        files, runner = by_key.get(("files", size)), by_key.get(("runner", size))
        if files and runner and files.ok and runner.ok:
            print(f"at {size:,} events: files peak / runner peak = "
                  f"{files.peak_rss_bytes / runner.peak_rss_bytes:.2f}, files time / runner time = "
                  f"{files.seconds / runner.seconds:.2f}")
    failed = [result for _, _, result, _ in runs if not result.ok]
    for result in failed:
        print(f"FAIL {result.name}: {result.error}", file=sys.stderr)
    write_json(args.json, {"ok": not failed, "max_rss_gib": args.max_rss_gib,
                           "runs": [{"shuffle": shuffle, "size": size, "events": read, **result_json(result, read)}
                                    for shuffle, size, result, read in runs]})
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
