"""Run every benchmark and print one table: benchmark, figure, value, baseline, baseline value, ratio, target/met.

    python benchmarks/run_all.py --quick          # small sizes, a few minutes: to try it out
    python benchmarks/run_all.py                  # the sizes the issue names (an hour or more; generates ~2 GB once)
    python benchmarks/run_all.py --quick --only build_throughput dask_em

Each benchmark runs as a subprocess of this interpreter with `--json OUT/<name>.json`; its own output goes to
OUT/<name>.log (OUT: --out, default WORKDIR/run-all). The table is made from the JSON files. Sizes:

| benchmark             | default                                             | --quick                              |
|-----------------------|-----------------------------------------------------|--------------------------------------|
| build_throughput.py   | 1M generated events                                 | 50k                                  |
| build_memory.py       | 1M and 10M (--shuffle files), 1M (--shuffle runner) | 50k and 200k, 50k                    |
| ingest_throughput.py  | 1M lines over 6 h, 50k over 7 d, TTL 1 vs 24 h      | 100k over 6 h only                   |
| ingest_ttl_memory.py  | 48 h x 20,000 ids, TTL 1 vs 24 h                    | 12 h x 5,000                         |
| consensus_scale.py    | 10M answers: --em beam, in-process, crowd-kit       | 200k                                 |
| consensus_accuracy.py | every dataset in ../shared/datasets                 | wsd (crowd-kit's MACE: ~40 s each)   |
| dask_em.py            | 2M answers, 2,000 events, Dask 1 and 2 workers      | 200k answers, 500 events             |

Generated inputs go to WORKDIR (--workdir, default $TMPDIR/labelbeam-bench, as the benchmarks' own default;
ingest inputs under WORKDIR/ingest and WORKDIR/ingest-ttl) and are reused by later runs.

Reading the table:
- ratio = value / baseline value, whatever the unit: above 1 is better for events/s and accuracy, worse for
  seconds and memory.
- target/met: the target a benchmark states (its --target or benchmarks/README.md): build 100,000 events/s;
  peak RSS <= 4 GiB and time per event at the largest size <= the smallest size's (build_memory.py); ingest
  50,000 events/s (README, ingest_throughput.py); --em beam <= 60 s and <= 4 GiB (README, consensus_scale.py;
  stated for 10M answers, so --quick meets it trivially); our accuracy >= crowd-kit's on every categorical
  dataset (consensus_accuracy.py's per-dataset ">= yes/NO"; README: on s_adult our full EM loses to
  crowd-kit's early stop). "-" where none is stated. Targets are reported, never enforced.
- A value that could not be measured shows why instead of a number: "failed: ..." (the run failed), "not run",
  or, for Dask, "timed out" (killed after dask_em.py's --timeout; not a failure).

Exit code 1 if any benchmark failed: it exited non-zero, wrote no JSON, or its JSON says "ok": false (a failed
build, counts that differ from the expected ones, a consensus method that crashed). The failures are listed
under the table with their log files.

Not in the table:
- calibration.py: the expected calibration error of each method on held-out gold, per dataset. It compares the
  methods with one another (mv is one of them, not a yardstick) and states no target, so there is no
  figure-vs-baseline pair to put in a row; run it on its own.
- fuzz_parse.py: a pass/fail check of the parse/validate properties over many fixed-seed cases, not a
  measurement against a baseline; the test suite runs the same properties.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_WORKDIR = Path(tempfile.gettempdir()) / "labelbeam-bench"   # build_throughput.DEFAULT_WORKDIR
GIB = 1024 ** 3
BUILD_MAX_RSS_GIB = 4.0        # build_memory.py --max-rss-gib default
INGEST_TARGET_EVENTS_PER_S = 50_000
EM_BEAM_MAX_SECONDS = 60       # consensus_scale.py, README: at 10M answers
EM_BEAM_MAX_RSS_GIB = 4.0
HEADER = ["benchmark", "figure", "value", "baseline", "baseline value", "ratio", "target/met"]

Cell = tuple[float | None, str]   # (number, as printed); no number when it was not measured


def benchmark_args(quick: bool, workdir: Path) -> dict[str, list[str]]:
    """Arguments of each benchmark script (without --json), in the order they run."""
    work, ingest, ingest_ttl = str(workdir), str(workdir / "ingest"), str(workdir / "ingest-ttl")
    if quick:
        return {
            "build_throughput": ["--events", "50000", "--workdir", work],
            "build_memory": ["--sizes", "50000", "200000", "--runner-shuffle-at", "50000", "--workdir", work],
            "ingest_throughput": ["--events", "100000", "--long-events", "0", "--ttl-input", "none",
                                  "--workdir", ingest],
            "ingest_ttl_memory": ["--hours", "12", "--events-per-hour", "5000", "--workdir", ingest_ttl],
            "consensus_scale": ["--answers", "200000"],
            "consensus_accuracy": ["--datasets", "wsd"],
            "dask_em": ["--answers", "200000", "--events", "500", "--timeout", "120", "--workdir", work],
        }
    return {
        "build_throughput": ["--events", "1000000", "--workdir", work],
        "build_memory": ["--sizes", "1000000", "10000000", "--runner-shuffle-at", "1000000", "--workdir", work],
        "ingest_throughput": ["--events", "1000000", "--workdir", ingest],
        "ingest_ttl_memory": ["--workdir", ingest_ttl],
        "consensus_scale": ["--answers", "10000000"],
        "consensus_accuracy": [],
        "dask_em": ["--workdir", work],
    }


# ---------------------------------------------------------------------------------------------
# Cells and rows
# ---------------------------------------------------------------------------------------------

def first_line(text: str | None) -> str:
    lines = (text or "").strip().splitlines()
    return lines[0] if lines else "no reason given"


def number(value: float | None, unit: Callable[[float], str], missing: str = "-") -> Cell:
    return (value, unit(value)) if value is not None else (None, missing)


def measured(run: dict[str, Any] | None, key: str, unit: Callable[[float], str]) -> Cell:
    """run[key], or why there is none: the run is missing, failed, or has no such figure."""
    if run is None:
        return None, "not run"
    if not run.get("ok", True):
        return None, "failed: " + first_line(run.get("error"))
    return number(run.get(key), unit, "no figure")


def rate(value: float) -> str:
    return f"{value:,.0f}/s"


def seconds(value: float) -> str:
    return f"{value:.1f} s"


def size(value: float) -> str:
    return f"{value / GIB:.2f} GiB" if value >= GIB else f"{value / 2**20:.0f} MiB"


def share(value: float) -> str:
    return f"{value:.4f}"


def verdict(target: str, met: bool | None) -> str:
    return f"{target}: " + ("-" if met is None else "met" if met else "NOT met")


def row(figure: str, value: Cell, baseline: str, baseline_value: Cell, target: str = "-") -> list[str]:
    (v, v_text), (b, b_text) = value, baseline_value
    ratio = f"{v / b:.2f}x" if v is not None and b else "-"
    return [figure, v_text, baseline, b_text, ratio, target]


# ---------------------------------------------------------------------------------------------
# One function per benchmark: its JSON -> table rows (without the benchmark column)
# ---------------------------------------------------------------------------------------------

def build_throughput_rows(figures: dict[str, Any]) -> list[list[str]]:
    events, target = figures["events"], figures["target_events_per_s"]
    value = measured(figures["labelbeam"], "events_per_s", rate)
    return [row(f"events/s, build of {events:,} events read", value, "pandas script (baseline_build)",
                measured(figures["baseline"], "events_per_s", rate),
                verdict(f">= {target:,.0f}/s", None if value[0] is None else value[0] >= target))]


def build_memory_rows(figures: dict[str, Any]) -> list[list[str]]:
    runs = {(run["shuffle"], run["size"]): run for run in figures["runs"]}
    sizes = sorted({run["size"] for run in figures["runs"]})
    smallest, largest = sizes[0], sizes[-1]
    limit = figures["max_rss_gib"]
    rows = []
    for events in sizes:
        value = measured(runs.get(("files", events)), "peak_rss_bytes", size)
        if ("runner", events) in runs:
            baseline, baseline_run = f"--shuffle runner, {events:,}", runs[("runner", events)]
        elif events != smallest:
            baseline, baseline_run = f"--shuffle files, {smallest:,}", runs.get(("files", smallest))
        else:
            baseline, baseline_run = "-", None
        baseline_value = measured(baseline_run, "peak_rss_bytes", size) if baseline_run else (None, "-")
        rows.append(row(f"peak RSS, build of {events:,} events, --shuffle files", value, baseline, baseline_value,
                        verdict(f"<= {limit:g} GiB", None if value[0] is None else value[0] <= limit * GIB)))

    def per_event(run: dict[str, Any] | None) -> Cell:
        ok = run is not None and run["ok"]
        return number(run["seconds"] / run["events"] * 1e6 if ok else None, lambda us: f"{us:.1f} us", "failed")

    if largest != smallest:
        value, baseline_value = per_event(runs.get(("files", largest))), per_event(runs.get(("files", smallest)))
        met = None if value[0] is None or baseline_value[0] is None else value[0] <= baseline_value[0]
        rows.append(row(f"time per event, build of {largest:,}, --shuffle files", value,
                        f"build of {smallest:,}", baseline_value, verdict("ratio <= 1.00x", met)))
    return rows


def ingest_throughput_rows(figures: dict[str, Any]) -> list[list[str]]:
    def find(name: str, input_name: str, ttl: float | None) -> dict[str, Any] | None:
        return next((run for run in figures["runs"] if (run["name"], run["input"], run["ttl_hours"])
                     == (name, input_name, ttl)), None)

    rows = []
    for input_name in ("short", "long"):
        labelbeam = find("labelbeam ingest", input_name, 24.0)
        if labelbeam is None:
            continue
        value = measured(labelbeam, "events_per_s", rate)
        target = "-"
        if input_name == "short":
            target = verdict(f">= {INGEST_TARGET_EVENTS_PER_S:,}/s",
                             None if value[0] is None else value[0] >= INGEST_TARGET_EVENTS_PER_S)
        rows.append(row(f"events/s, ingest of {labelbeam['events']:,} lines over {labelbeam['span_hours']} h",
                        value, "pandas script (baseline_ingest)",
                        measured(find("baseline", input_name, None), "events_per_s", rate), target))
    short_ttl_1 = find("labelbeam ingest", "short", 1.0)
    if short_ttl_1 is not None:
        rows.append(row("peak RSS, ingest (short), --dedup-ttl-hours 24",
                        measured(find("labelbeam ingest", "short", 24.0), "peak_rss_bytes", size),
                        "--dedup-ttl-hours 1", measured(short_ttl_1, "peak_rss_bytes", size)))
    return rows


def ingest_ttl_memory_rows(figures: dict[str, Any]) -> list[list[str]]:
    by_ttl = {run["ttl_hours"]: run for run in figures["runs"]}
    return [row(f"peak RSS, ingest --watch, {figures['hours']} h x {figures['events_per_hour']:,} ids, TTL 24 h",
                measured(by_ttl.get(24.0), "peak_rss_bytes", size), "TTL 1 h",
                measured(by_ttl.get(1.0), "peak_rss_bytes", size))]


def consensus_scale_rows(figures: dict[str, Any]) -> list[list[str]]:
    methods, answers = figures["methods"], figures["answers"]
    beam, inprocess, crowdkit = methods.get("beam"), methods.get("inprocess"), methods.get("crowdkit")
    beam_seconds, beam_rss = measured(beam, "seconds", seconds), measured(beam, "peak_rss_bytes", size)
    return [
        row(f"seconds, DS --em beam, {answers:,} answers", beam_seconds, "crowd-kit DawidSkene",
            measured(crowdkit, "seconds", seconds),
            verdict(f"<= {EM_BEAM_MAX_SECONDS} s", None if beam_seconds[0] is None else beam_seconds[0] <= EM_BEAM_MAX_SECONDS)),
        row(f"peak RSS, DS --em beam, {answers:,} answers", beam_rss, "crowd-kit DawidSkene",
            measured(crowdkit, "peak_rss_bytes", size),
            verdict(f"<= {EM_BEAM_MAX_RSS_GIB:g} GiB",
                    None if beam_rss[0] is None else beam_rss[0] <= EM_BEAM_MAX_RSS_GIB * GIB)),
        row(f"seconds, DS in process, {answers:,} answers", measured(inprocess, "seconds", seconds),
            "crowd-kit DawidSkene", measured(crowdkit, "seconds", seconds)),
        row(f"accuracy, DS --em beam, {answers:,} answers", measured(beam, "accuracy", share),
            "crowd-kit DawidSkene", measured(crowdkit, "accuracy", share)),
    ]


def consensus_accuracy_rows(figures: dict[str, Any]) -> list[list[str]]:
    categorical = [dataset["methods"] for dataset in figures["datasets"].values() if dataset["kind"] == "categorical"]

    def best(methods: dict[str, Any], prefix: str) -> float | None:
        scores = [cell["score"] for name, cell in methods.items() if name.startswith(prefix) and cell["score"] is not None]
        return max(scores) if scores else None

    rows = []
    for figure, baseline, ours, theirs in (
            ("accuracy, ours ds", "crowd-kit DawidSkene",
             lambda m: m.get("ours ds", {}).get("score"), lambda m: m.get("ck DawidSkene", {}).get("score")),
            ("accuracy, our best method", "crowd-kit's best method",
             lambda m: best(m, "ours "), lambda m: best(m, "ck "))):
        pairs = [(ours(methods), theirs(methods)) for methods in categorical]
        pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
        if not pairs:
            rows.append(row(figure, (None, "no dataset with both"), baseline, (None, "-")))
            continue
        wins = sum(a >= b for a, b in pairs)
        rows.append(row(f"{figure}, mean of {len(pairs)} dataset{'s' if len(pairs) > 1 else ''}",
                        number(sum(a for a, _ in pairs) / len(pairs), share), baseline,
                        number(sum(b for _, b in pairs) / len(pairs), share),
                        verdict(f">= baseline on every dataset ({wins}/{len(pairs)})", wins == len(pairs))))
    return rows


def dask_em_rows(figures: dict[str, Any]) -> list[list[str]]:
    def build_seconds(run: dict[str, Any] | None) -> Cell:
        if run is None:
            return None, "not run"
        if run["status"] == "ok":
            return run["seconds"], seconds(run["seconds"])
        if run["status"] == "timed out":
            return None, f"timed out ({run['detail']})"
        return None, "failed: " + first_line(run["detail"])

    by_workers = {run["workers"]: run for run in figures["dask"]}
    figure = f"seconds, build --method ds --em beam, {figures['votes']:,} votes, Dask"
    rows = []
    if 1 in by_workers:
        rows.append(row(f"{figure} 1 worker", build_seconds(by_workers[1]), "local FnApiRunner",
                        build_seconds(figures["local"])))
    if 2 in by_workers:
        rows.append(row(f"{figure} 2 workers", build_seconds(by_workers[2]), "Dask, 1 worker",
                        build_seconds(by_workers.get(1))))
    iterations = figures.get("em_iterations")
    if iterations:
        runs = iterations["runs"]
        per_iteration = {name: (run["per_iteration"], f"{run['per_iteration']:.3f} s") for name, run in runs.items()}
        figure = f"seconds per EM iteration, {iterations['answers']:,} answers"
        if "dask1" in runs:
            rows.append(row(f"{figure}, Dask 1 worker", per_iteration["dask1"], "local FnApiRunner",
                            per_iteration["local"]))
        if "dask2" in runs:
            rows.append(row(f"{figure}, Dask 2 workers", per_iteration["dask2"], "Dask, 1 worker",
                            per_iteration.get("dask1", (None, "not run"))))
    return rows


ROWS: dict[str, Callable[[dict[str, Any]], list[list[str]]]] = {
    "build_throughput": build_throughput_rows,
    "build_memory": build_memory_rows,
    "ingest_throughput": ingest_throughput_rows,
    "ingest_ttl_memory": ingest_ttl_memory_rows,
    "consensus_scale": consensus_scale_rows,
    "consensus_accuracy": consensus_accuracy_rows,
    "dask_em": dask_em_rows,
}


# ---------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------

def format_table(rows: list[list[str]]) -> str:
    """Left-aligned text columns; value, baseline value and ratio right-aligned."""
    widths = [max(len(cell) for cell in column) for column in zip(HEADER, *rows)]
    right = {2, 4, 5}

    def line(cells: list[str]) -> str:
        return "  ".join(cell.rjust(w) if i in right else cell.ljust(w) for i, (cell, w) in enumerate(zip(cells, widths)))
    return "\n".join(line(cells).rstrip() for cells in [HEADER, ["-" * w for w in widths], *rows])


def run_benchmark(name: str, args: list[str], out: Path) -> tuple[list[list[str]], str | None]:
    """Run one benchmark script; (its table rows, why it failed or None)."""
    json_path, log_path = out / f"{name}.json", out / f"{name}.log"
    json_path.unlink(missing_ok=True)
    command = [sys.executable, str(BENCH_DIR / f"{name}.py"), *args, "--json", str(json_path)]
    print("$ " + " ".join(command), flush=True)
    started = time.perf_counter()
    with open(log_path, "wb") as log:
        exit_code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT).returncode
    print(f"  exit {exit_code} after {time.perf_counter() - started:.0f} s; output in {log_path}", flush=True)
    if not json_path.exists():
        return [[name, "-", f"failed: exit {exit_code}, no JSON", "-", "-", "-", "-"]], \
            f"exit {exit_code}, wrote no JSON; see {log_path}"
    figures = json.loads(json_path.read_text(encoding="utf-8"))
    try:
        rows = [[name, *cells] for cells in ROWS[name](figures)]
    except (KeyError, TypeError, ValueError, ZeroDivisionError) as err:
        return [[name, "-", f"failed: unreadable JSON ({err!r})", "-", "-", "-", "-"]], \
            f"its JSON {json_path} has not the expected figures: {err!r}"
    if exit_code != 0 or not figures.get("ok", False):
        return rows, f"exit {exit_code}, JSON ok={figures.get('ok')}; see {log_path}"
    return rows, None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (a few minutes in all)")
    parser.add_argument("--only", nargs="+", choices=list(ROWS), metavar="NAME",
                        help=f"run only these benchmarks ({', '.join(ROWS)})")
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR,
                        help=f"generated inputs, reused between runs (default {DEFAULT_WORKDIR})")
    parser.add_argument("--out", type=Path, help="the benchmarks' logs and JSON files (default WORKDIR/run-all)")
    args = parser.parse_args(argv)
    out = args.out or args.workdir / "run-all"
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    rows, failures = [], []
    for name, script_args in benchmark_args(args.quick, args.workdir).items():
        if args.only and name not in args.only:
            continue
        benchmark_rows, failure = run_benchmark(name, script_args, out)
        rows += benchmark_rows
        if failure:
            failures.append(f"{name}: {failure}")
    print()
    print(f"{'--quick sizes' if args.quick else 'full sizes'}; {time.perf_counter() - started:.0f} s in all "
          f"(python {sys.version.split()[0]}, {os.cpu_count()} cores)")
    print(format_table(rows))
    print("ratio = value / baseline value. Targets are reported, never enforced.")
    for failure in failures:
        print(f"FAILED {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
