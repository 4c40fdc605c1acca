"""End-to-end throughput of `labelbeam ingest` (bounded, on a file pattern) next to a plain pandas baseline.

    python benchmarks/ingest_throughput.py                                   # 1M events over 6 hours, + the rest
    python benchmarks/ingest_throughput.py --events 200000 --long-events 20000 --ttl-input none   # quick

In one run:

1. **Inputs.** Synthetic JSON Lines (`write_input`), reused when WORKDIR already holds the same ones:
   - short: `--events` lines whose event times span `--hours` hours (default 1,000,000 over 6 h);
   - long: `--long-events` lines over `--long-days` days (default 50,000 over 7 d): sparse hours, so
     many small (bucket, hour) writers; this measures what a replay of a long span costs.
   Of the lines, `--duplicate-rate` (default 9%) are transport duplicates (byte-identical copies of an
   earlier event, same event_id); every other line has an event_id of its own, and `--revision-rate` of
   them revise an earlier vote (v2, revision 1). No line is invalid, so the expected counts are known:
   read = lines, duplicates = copies, valid = distinct ids, invalid = 0.
2. **labelbeam.** `labelbeam ingest --source 'DIR/*.jsonl' --output LOG_ROOT --dataset bench --labels ...
   --dedup-ttl-hours H` as a subprocess (BundleBasedDirectRunner, streaming), timed from spawn to exit,
   peak RSS sampled over its process tree as in build_throughput.py. Its run report
   LOG_ROOT/_runs/<id>.json must say read = valid + invalid + duplicates and equal the expected counts,
   and the Avro files under LOG_ROOT/events must hold `valid` rows in the expected hour partitions;
   otherwise the exit code is 1.
3. **Baseline.** `baseline_ingest`, plain orjson/numpy/pandas/fastavro in a fresh (spawned) process: read
   the JSONL, drop repeated event_ids keeping the first, write one Avro file (the log's schema and codec)
   per hour partition. Timed after its imports; its peak RSS is that process's ru_maxrss.
4. **TTL.** The same input again with `--dedup-ttl-hours 1` (vs the default 24), to compare peak RSS.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import datetime as dt
import glob
import json
import multiprocessing
import os
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import fastavro
import numpy as np
import orjson
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
import build_throughput as bt  # noqa: E402  (process-tree RSS sampler, table formatting, CLI lookup)

HOUR_MS = 3_600_000
DATASET = "bench"
LABELS = ("bird", "cat", "dog", "fish")
START_MS = int(dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc).timestamp() * 1000)   # hour-aligned
V2_RATE = 0.35
VOTES_PER_ITEM = 6
INPUT_FILES = 8
DEFAULT_WORKDIR = os.path.join(bt.DEFAULT_WORKDIR, "ingest")
LOG_SCHEMA_PATH = Path(__file__).resolve().parents[1] / "schemas" / "annotation_event.v2.avsc"
LOG_CODEC = "deflate"   # transforms/arrays/avro_columns.CODEC
INPUT_FORMAT = 2        # bump when write_input changes what it writes
DEFAULTS: dict[str, Any] = {"label": None, "action": "UPSERT", "revision": 0, "labels": [], "score": None,
                            "duration_ms": None, "confidence": None, "metadata": {}}


# ---------------------------------------------------------------------------------------------
# Synthetic input
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class InputSpec:
    name: str            # "short" or "long"
    events: int          # lines, duplicates included
    span_hours: int
    seed: int
    duplicate_rate: float
    revision_rate: float

    @property
    def directory_name(self) -> str:
        return (f"{self.name}-{self.events}-{self.span_hours}h-seed{self.seed}-dup{self.duplicate_rate:g}"
                f"-rev{self.revision_rate:g}")

    def describe(self) -> str:
        span = f"{self.span_hours // 24} d" if self.span_hours % 24 == 0 and self.span_hours >= 48 \
            else f"{self.span_hours} h"
        return f"{self.events:,} over {span}"


def generate_lines(spec: InputSpec) -> tuple[list[bytes], dict[str, int]]:
    """The input's JSON lines in transport order, and the counts a correct ingest reports."""
    rng = np.random.default_rng(spec.seed)
    n_duplicates = int(round(spec.events * spec.duplicate_rate))
    n_distinct = spec.events - n_duplicates
    n_revisions = int(round(n_distinct * spec.revision_rate))
    n_votes = n_distinct - n_revisions
    n_items = max(1, n_votes // VOTES_PER_ITEM)
    n_annotators = max(8, n_votes // 150)
    span_ms = spec.span_hours * HOUR_MS

    item = rng.integers(0, n_items, n_votes)
    annotator = rng.integers(0, n_annotators, n_votes)
    label = rng.integers(0, len(LABELS), n_votes)
    time_ms = START_MS + rng.integers(0, span_ms, n_votes)
    is_v2 = rng.random(n_votes) < V2_RATE
    # A revision re-labels an earlier vote a few minutes later (still inside the span), as a v2 event.
    revised = rng.choice(n_votes, n_revisions, replace=False)
    revision_time = np.minimum(time_ms[revised] + rng.integers(60_000, 600_000, n_revisions), START_MS + span_ms - 1)

    def record(number: int, vote: int, label_index: int, at_ms: int, v2: bool, revision: int) -> dict[str, Any]:
        event: dict[str, Any] = {
            "event_id": f"ing-{spec.seed}-{number:09d}", "dataset": DATASET, "item_id": f"item-{item[vote]:07d}",
            "annotator_id": f"annotator-{annotator[vote]:05d}", "label": LABELS[label_index], "action": "UPSERT",
            "event_time": int(at_ms)}
        if v2:
            event.update(schema_version=2, revision=revision, labels=[], duration_ms=1000 + at_ms % 29_000,
                         confidence=0.5 + (at_ms % 5) / 10, metadata={"tool": "bench", "batch": str(vote % 97)})
        return event

    with bt.gc_paused():
        lines = [orjson.dumps(record(vote, vote, int(label[vote]), int(time_ms[vote]), bool(is_v2[vote]), 0))
                 for vote in range(n_votes)]
        for k, (vote, at_ms) in enumerate(zip(revised.tolist(), revision_time.tolist())):
            lines.append(orjson.dumps(record(n_votes + k, vote, (int(label[vote]) + 1) % len(LABELS), at_ms,
                                             True, 1)))
        lines.extend([lines[i] for i in rng.choice(n_distinct, n_duplicates, replace=False).tolist()])
        lines = [lines[i] for i in rng.permutation(len(lines)).tolist()]
    hours = np.unique(np.concatenate([time_ms, revision_time]) // HOUR_MS)
    expected = {"read": spec.events, "valid": n_distinct, "invalid": 0, "duplicates": n_duplicates,
                "revisions": n_revisions, "hours": int(len(hours))}
    return lines, expected


def _write_lines(spec: InputSpec, events_dir: Path) -> dict[str, int]:
    lines, expected = generate_lines(spec)
    for k in range(INPUT_FILES):
        (events_dir / f"events-{k:03d}.jsonl").write_bytes(b"\n".join(lines[k::INPUT_FILES]) + b"\n")
    return expected


def write_input(workdir: Path, spec: InputSpec) -> tuple[Path, dict[str, Any]]:
    """INPUT_FILES JSON Lines files under workdir/<spec>/events and description.json (written last, so
    its presence marks a complete input, which later runs reuse)."""
    input_dir = workdir / spec.directory_name
    description_path = input_dir / "description.json"
    wanted = {"format": INPUT_FORMAT, **dataclasses.asdict(spec)}
    if description_path.exists():
        description = json.loads(description_path.read_text(encoding="utf-8"))
        if {key: description.get(key) for key in wanted} == wanted:
            print(f"reusing input {input_dir}", flush=True)
            return input_dir, description
    description_path.unlink(missing_ok=True)
    shutil.rmtree(input_dir / "events", ignore_errors=True)
    (input_dir / "events").mkdir(parents=True)
    started = time.perf_counter()
    # In a spawned process: a child's ru_maxrss starts at its parent's high-water mark (fork, then exec
    # keeps it), so this process must stay small for the runs it starts.
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        expected = pool.submit(_write_lines, spec, input_dir / "events").result()
    description = {**wanted, "expected": expected}
    description_path.write_text(json.dumps(description, indent=2, sort_keys=True), encoding="utf-8")
    print(f"generated {spec.describe()} into {input_dir} in {time.perf_counter() - started:.1f} s", flush=True)
    return input_dir, description


# ---------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Run:
    name: str
    input: InputSpec
    ttl_hours: float | None
    result: bt.RunResult
    problems: list[str] = dataclasses.field(default_factory=list)

    @property
    def events_per_s(self) -> float | None:
        return self.input.events / self.result.seconds if self.result.ok else None


def log_contents(events_root: Path) -> tuple[int, int, int]:
    """(files, rows, hour partitions) of the Avro files below events_root; rows from block headers."""
    files = sorted(glob.glob(str(events_root / "dt=*" / "hr=*" / "*.avro")))
    rows = 0
    for path in files:
        with open(path, "rb") as stream:
            rows += sum(block.num_records for block in fastavro.block_reader(stream))
    return len(files), rows, len({os.path.dirname(path) for path in files})


# ---------------------------------------------------------------------------------------------
# labelbeam ingest, as a subprocess
# ---------------------------------------------------------------------------------------------

def run_ingest(input_dir: Path, description: dict[str, Any], spec: InputSpec, ttl_hours: float,
               lateness_hours: float, num_buckets: int, beam_args: Sequence[str]) -> Run:
    """Time `labelbeam ingest` end to end (interpreter start-up included) and check its counts and files."""
    tag = f"ttl{ttl_hours:g}"
    log_root = input_dir / "runs" / f"labelbeam-{tag}"
    log_path = input_dir / "runs" / f"labelbeam-{tag}.log"
    shutil.rmtree(log_root, ignore_errors=True)
    log_root.mkdir(parents=True)
    command = bt.labelbeam_command() + [
        "ingest", "--source", str(input_dir / "events" / "*.jsonl"), "--output", str(log_root),
        "--dataset", DATASET, "--labels", ",".join(LABELS), "--dedup-ttl-hours", f"{ttl_hours:g}",
        "--allowed-lateness-hours", f"{lateness_hours:g}", "--num-buckets", str(num_buckets), *beam_args]
    print("$ " + " ".join(command), flush=True)
    with open(log_path, "wb") as log:
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        sampler = bt.TreeRssSampler(process.pid)
        sampler.start()
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
        sampler.stop()
    result = bt.RunResult("labelbeam", seconds, sampler.peak_bytes, {},
                          largest_process_rss_bytes=usage.ru_maxrss * 1024)
    run = Run("labelbeam ingest", spec, ttl_hours, result)
    exit_code = os.waitstatus_to_exitcode(status)
    print(f"  {seconds:.1f} s, exit {exit_code}", flush=True)
    if exit_code != 0:
        result.ok = False
        result.error = f"labelbeam ingest exited with {exit_code}; log {log_path}:\n{bt.log_tail(log_path)}"
        run.problems.append(f"exit code {exit_code}")
        return run
    reports = sorted((log_root / "_runs").glob("*.json"))
    if len(reports) != 1:
        result.ok = False
        result.error = f"expected one run report under {log_root / '_runs'}, found {len(reports)}"
        run.problems.append("no run report")
        return run
    result.counts = json.loads(reports[0].read_text(encoding="utf-8"))
    run.problems.extend(check_counts(result.counts, description["expected"]))
    files, rows, partitions = log_contents(log_root / "events")
    result.detail = f"{files} log files, {rows:,} rows, {partitions} hour partitions"
    if rows != result.counts.get("valid"):
        run.problems.append(f"log files hold {rows} rows, run report says valid {result.counts.get('valid')}")
    if partitions != description["expected"]["hours"]:
        run.problems.append(f"{partitions} hour partitions written, expected {description['expected']['hours']}")
    return run


def check_counts(counts: dict[str, int], expected: dict[str, int]) -> list[str]:
    problems = []
    read_side = counts.get("valid", 0) + counts.get("invalid", 0) + counts.get("duplicates", 0)
    if counts.get("read") != read_side:
        problems.append(f"read {counts.get('read')} != valid + invalid + duplicates = {read_side}")
    for key in ("read", "valid", "invalid", "duplicates"):
        if counts.get(key) != expected[key]:
            problems.append(f"{key}: got {counts.get(key)}, expected {expected[key]}")
    return problems


# ---------------------------------------------------------------------------------------------
# The baseline: read, drop repeated event ids, one Avro file per hour
# ---------------------------------------------------------------------------------------------

def baseline_ingest(input_dir: Path, output_dir: Path) -> dict[str, Any]:
    """Runs in a fresh process: returns its counts, stage seconds (after imports) and ru_maxrss."""
    started = time.perf_counter()
    schema = fastavro.parse_schema(json.loads(LOG_SCHEMA_PATH.read_text(encoding="utf-8")))
    clock = bt.StageClock()
    with bt.gc_paused():
        events = []
        for path in sorted((input_dir / "events").glob("*.jsonl")):
            events.extend(map(orjson.loads, (line for line in path.read_bytes().split(b"\n") if line.strip())))
        read = len(events)
        clock.lap("read")
        ids = pd.Series([event["event_id"] for event in events], dtype=object)
        keep = np.flatnonzero(~ids.duplicated(keep="first").to_numpy())
        hours = np.fromiter((events[i]["event_time"] for i in keep), dtype=np.int64, count=len(keep)) // HOUR_MS
        order = np.argsort(hours, kind="stable")
        keep, hours = keep[order], hours[order]
        bounds = np.flatnonzero(np.diff(hours)) + 1
        clock.lap("dedup")
        files = 0
        for rows, hour in zip(np.split(keep, bounds), hours[np.concatenate(([0], bounds))] if len(keep) else []):
            start = dt.datetime.fromtimestamp(int(hour) * 3600, tz=dt.timezone.utc)
            partition = output_dir / "events" / f"dt={start:%Y-%m-%d}" / f"hr={start:%H}"
            partition.mkdir(parents=True, exist_ok=True)
            records = []
            for i in rows.tolist():
                record = {**DEFAULTS, **events[i]}
                record.pop("schema_version", None)
                records.append(record)
            with open(partition / "part-00000.avro", "wb") as out:
                fastavro.writer(out, schema, records, codec=LOG_CODEC)
            files += 1
        clock.lap("write")
    return {"seconds": time.perf_counter() - started, "stages": clock.seconds,
            "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "counts": {"read": read, "valid": int(len(keep)), "invalid": 0, "duplicates": read - int(len(keep))},
            "files": files}


def run_baseline(input_dir: Path, description: dict[str, Any], spec: InputSpec) -> Run:
    output_dir = input_dir / "runs" / "baseline"
    shutil.rmtree(output_dir, ignore_errors=True)
    print(f"baseline on {spec.describe()} (spawned process)", flush=True)
    context = multiprocessing.get_context("spawn")   # a fresh interpreter, not a fork of this one
    try:
        with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
            outcome = pool.submit(baseline_ingest, input_dir, output_dir).result()
    except Exception as err:  # report it next to labelbeam's result instead of dying here
        result = bt.RunResult("baseline", float("nan"), 0, {}, ok=False, error=f"baseline failed: {err!r}")
        return Run("baseline", spec, None, result, [result.error])
    stages = ", ".join(f"{stage} {sec:.2f}" for stage, sec in outcome["stages"].items())
    result = bt.RunResult("baseline", outcome["seconds"], outcome["peak_rss"], outcome["counts"],
                          detail=f"{outcome['files']} files; seconds by stage: {stages}")
    run = Run("baseline", spec, None, result, check_counts(outcome["counts"], description["expected"]))
    if outcome["files"] != description["expected"]["hours"]:
        run.problems.append(f"{outcome['files']} hour files, expected {description['expected']['hours']}")
    print(f"  {result.seconds:.1f} s", flush=True)
    return run


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------

def print_report(runs: Sequence[Run]) -> None:
    header = ["run", "input", "ttl h", "seconds", "events/s", "peak RSS", "largest proc", "counts"]
    rows = []
    for run in runs:
        result = run.result
        rate = f"{run.events_per_s:,.0f}" if run.events_per_s is not None else "FAILED"
        counts = "ok" if not run.problems else "MISMATCH"
        rows.append([run.name, run.input.describe(), "-" if run.ttl_hours is None else f"{run.ttl_hours:g}",
                     f"{result.seconds:.1f}", rate, bt.format_bytes(result.peak_rss_bytes),
                     bt.format_bytes(result.largest_process_rss_bytes), counts])
    print(bt.format_table(header, rows))
    print("  events = input lines (duplicates included); labelbeam seconds include interpreter start-up and Beam;")
    print("  baseline seconds start after its imports. peak RSS: labelbeam = sampled sum over its process tree,")
    print("  baseline = its process's ru_maxrss; largest proc = kernel ru_maxrss of labelbeam's largest process.")
    print(f"  (a child's ru_maxrss is at least this benchmark process's high-water mark at spawn, here "
          f"{bt.format_bytes(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)})")
    for run in runs:
        counts = run.result.counts
        if counts:
            extra = f", late {counts.get('late', 0)}, too late {counts.get('too_late', 0)}" if "late" in counts else ""
            print(f"  {run.name} ({run.input.name}, ttl {run.ttl_hours if run.ttl_hours is not None else '-'}): "
                  f"read {counts['read']:,} = valid {counts['valid']:,} + invalid {counts['invalid']:,} "
                  f"+ duplicates {counts['duplicates']:,}{extra}; {run.result.detail}")
    print()
    for name in dict.fromkeys(run.input.name for run in runs):
        pair = {run.name: run for run in runs if run.input.name == name and (run.ttl_hours in (None, 24.0))}
        lb, base = pair.get("labelbeam ingest"), pair.get("baseline")
        if lb and base and lb.events_per_s and base.events_per_s:
            print(f"ratio labelbeam/baseline events/s, {name} ({lb.input.describe()}): "
                  f"{lb.events_per_s / base.events_per_s:.3f}")
    ttl_runs = {}
    for run in runs:
        if run.name == "labelbeam ingest" and run.result.ok:
            ttl_runs.setdefault(run.input.name, {})[run.ttl_hours] = run
    for name, by_ttl in ttl_runs.items():
        if len(by_ttl) > 1:
            parts = [f"ttl {ttl:g} h: {bt.format_bytes(run.result.peak_rss_bytes)} "
                     f"(largest process {bt.format_bytes(run.result.largest_process_rss_bytes)}, {run.result.seconds:.1f} s)"
                     for ttl, run in sorted(by_ttl.items())]
            print(f"peak RSS by dedup TTL, {name} input: " + "; ".join(parts))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Time `labelbeam ingest` on synthetic JSON Lines against a plain pandas baseline.",
        epilog="Beam arguments start with '--', so pass them with '=': --beam-arg=--direct_num_workers=2")
    parser.add_argument("--events", type=int, default=1_000_000, help="lines of the short input (default 1000000)")
    parser.add_argument("--hours", type=int, default=6, help="event-time span of the short input (default 6)")
    parser.add_argument("--long-events", type=int, default=50_000,
                        help="lines of the long input; 0 skips it (default 50000)")
    parser.add_argument("--long-days", type=int, default=7,
                        help="event-time span of the long input (default 7; 30 takes the better part of an hour)")
    parser.add_argument("--duplicate-rate", type=float, default=0.09, help="share of lines that are transport "
                        "duplicates (default 0.09)")
    parser.add_argument("--revision-rate", type=float, default=0.02, help="share of distinct events that revise "
                        "an earlier vote (default 0.02)")
    parser.add_argument("--ttl-input", choices=("short", "long", "none"), default="short",
                        help="input run again with --dedup-ttl-hours 1 to compare peak RSS with 24 (default short)")
    parser.add_argument("--allowed-lateness-hours", type=float, default=1.0, help="passed to ingest (default 1)")
    parser.add_argument("--num-buckets", type=int, default=16, help="passed to ingest (default 16)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=Path(DEFAULT_WORKDIR),
                        help=f"inputs and outputs; inputs are reused (default {DEFAULT_WORKDIR})")
    parser.add_argument("--beam-arg", action="append", default=[], metavar="ARG",
                        help="extra argument for `labelbeam ingest` (repeatable)")
    parser.add_argument("--skip-baseline", action="store_true", help="time labelbeam only")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the key figures to PATH as JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.events < 1 or args.hours < 1 or args.long_events < 0 or args.long_days < 1 or \
            not 0 <= args.duplicate_rate < 1 or not 0 <= args.revision_rate < 1:
        print("--events/--hours/--long-days must be positive, --long-events >= 0, rates in [0, 1)", file=sys.stderr)
        return 2
    args.workdir.mkdir(parents=True, exist_ok=True)
    specs = [InputSpec("short", args.events, args.hours, args.seed, args.duplicate_rate, args.revision_rate)]
    if args.long_events:
        specs.append(InputSpec("long", args.long_events, args.long_days * 24, args.seed, args.duplicate_rate,
                               args.revision_rate))
    runs: list[Run] = []
    for spec in specs:
        input_dir, description = write_input(args.workdir, spec)
        ingest = dict(lateness_hours=args.allowed_lateness_hours, num_buckets=args.num_buckets,
                      beam_args=args.beam_arg)
        runs.append(run_ingest(input_dir, description, spec, 24.0, **ingest))
        if not args.skip_baseline:
            runs.append(run_baseline(input_dir, description, spec))
        if args.ttl_input == spec.name:
            runs.append(run_ingest(input_dir, description, spec, 1.0, **ingest))

    print()
    print_report(runs)
    print()
    sys.stdout.flush()
    status = 0
    for run in runs:
        label = f"{run.name} ({run.input.name}, ttl {run.ttl_hours if run.ttl_hours is not None else '-'})"
        if run.result.error:
            print(f"FAIL: {label}: {run.result.error}", file=sys.stderr)
            status = 1
        elif run.problems and run.name == "baseline":
            print(f"note: {label} (not checked): " + "; ".join(run.problems))
        elif run.problems:
            print(f"FAIL: {label}: " + "; ".join(run.problems), file=sys.stderr)
            status = 1
    if status == 0:
        print("OK: every labelbeam run reported read = valid + invalid + duplicates with the expected counts, "
              "and its log files hold the valid rows in the expected hour partitions")
    bt.write_json(args.json, {"ok": status == 0, "runs": [
        {"name": run.name, "input": run.input.name, "events": run.input.events, "span_hours": run.input.span_hours,
         "ttl_hours": run.ttl_hours, "problems": run.problems, **bt.result_json(run.result, run.input.events)}
        for run in runs]})
    return status


if __name__ == "__main__":
    sys.exit(main())
