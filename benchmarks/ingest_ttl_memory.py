"""Memory of a long-running `labelbeam ingest` as event time passes: bounded by the dedup TTL, not by the
events seen.

    python benchmarks/ingest_ttl_memory.py                          # 48 hours x 20,000 distinct ids, TTL 1 h vs 24 h
    python benchmarks/ingest_ttl_memory.py --hours 12 --events-per-hour 5000    # quick

A live stream in fast motion: the ingest pipeline (IngestEvents behind WatchDroppedFiles, as
`labelbeam ingest --watch` builds it) runs in a child process whose drop-directory feed keeps a
simulated clock. Each poll releases the next hour's file (`--events-per-hour` distinct event ids plus
9% transport duplicates, from ingest_throughput.generate_lines) and moves the clock, hence the
watermark, an hour on; it waits for the pipeline to have read the previous hour first, then samples the
child's RSS. The run is repeated with `--dedup-ttl-hours` 1 (the baseline: almost nothing remembered)
and 24. With memory bounded by the TTL, the 24 h run grows for about a day of event time and then
stays flat while events keep coming; the 1 h run stays flat from the start. Both must end with
read = valid + duplicates and the log holding every distinct id once; otherwise the exit code is 1.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import orjson
import psutil
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ingest_throughput as it  # noqa: E402  (input generator, LOG schema, log reader)

DEFAULT_WORKDIR = os.path.join(it.bt.DEFAULT_WORKDIR, "ingest-ttl")


def write_hourly_input(workdir: Path, hours: int, events_per_hour: int, seed: int) -> tuple[list[Path], dict]:
    """One JSON Lines file per event hour (reused when present); the counts a correct ingest reports."""
    spec = it.InputSpec("hourly", int(hours * events_per_hour / (1 - 0.09)), hours, seed, 0.09, 0.0)
    input_dir = workdir / spec.directory_name
    description_path = input_dir / "description.json"
    if description_path.exists():
        description = json.loads(description_path.read_text())
        return sorted((input_dir / "hours").glob("*.jsonl")), description["expected"]
    shutil.rmtree(input_dir, ignore_errors=True)
    (input_dir / "hours").mkdir(parents=True)
    lines, expected = it.generate_lines(spec)
    hour_of_line = (np.array([orjson.loads(line)["event_time"] for line in lines]) - it.START_MS) // it.HOUR_MS
    for hour in range(hours):
        chosen = np.flatnonzero(hour_of_line == hour).tolist()
        (input_dir / "hours" / f"hour-{hour:04d}.jsonl").write_bytes(b"\n".join(lines[i] for i in chosen) + b"\n")
    description_path.write_text(json.dumps({"expected": expected}, indent=2))
    return sorted((input_dir / "hours").glob("*.jsonl")), expected


def child(args: argparse.Namespace) -> int:
    """Run the pipeline with a simulated-clock feed; print one JSON line per hour released, then the counts."""
    import apache_beam as beam
    from apache_beam.testing.test_stream_service import TestStreamServiceController

    from labelbeam.pipelines.ingest import build_ingest, ingest_options, summed_counts
    from labelbeam.transforms.events.event_log import HOUR_MS, LogPolicy
    from labelbeam.transforms.events.parser import ValidationRules
    from labelbeam.transforms.read_stream import DropDirectoryFeed, WatchDroppedFiles

    staged = sorted(Path(args.staged).glob("*.jsonl"))
    watched, log_root = Path(args.watched), args.log
    counts_dir = os.path.join(log_root, "_runs", "bench")
    me = psutil.Process()

    class SimulatedHours(DropDirectoryFeed):
        """Releases the next hour's file once the last one was read, and moves the clock an hour on."""

        def __init__(self):
            self.now_s = it.START_MS / 1000
            self.released_lines = 0
            super().__init__(str(watched), poll_seconds=0.05, clock=lambda: self.now_s)

        def new_files(self) -> list[str]:
            if not staged:
                self.stop()
                return super().new_files()
            read = summed_counts(counts_dir).get("read", 0) if os.path.isdir(counts_dir) else 0
            if read < self.released_lines:
                return []
            hour = len(list(watched.iterdir()))
            print(json.dumps({"hour": hour, "rss": me.memory_info().rss, "read": read,
                              "arrow_bytes": pa.total_allocated_bytes()}), flush=True)
            path = staged.pop(0)
            self.released_lines += sum(1 for _ in path.open("rb"))
            shutil.copy(path, watched / path.name)
            self.now_s += HOUR_MS / 1000
            return super().new_files()

    feed = SimulatedHours()
    service = TestStreamServiceController(feed)
    service.start()
    rules = ValidationRules.at(it.DATASET, int(time.time() * 1000), frozenset(it.LABELS))
    policy = LogPolicy(allowed_lateness_ms=HOUR_MS, ttl_ms=int(args.ttl_hours * HOUR_MS))
    with beam.Pipeline(options=ingest_options([])) as pipeline:
        chunks = pipeline | "WatchDroppedFiles" >> WatchDroppedFiles(service.endpoint)
        build_ingest(pipeline, chunks, log_root, rules, policy, 16, counts_dir)
    service.stop()
    print(json.dumps({"counts": summed_counts(counts_dir), "rss": me.memory_info().rss}), flush=True)
    return 0


def run_child(files: list[Path], ttl_hours: float, workdir: Path) -> tuple[list[dict], dict, float]:
    run_dir = workdir / "runs" / f"ttl{ttl_hours:g}"
    shutil.rmtree(run_dir, ignore_errors=True)
    (run_dir / "watched").mkdir(parents=True)
    command = [sys.executable, __file__, "--child", "--ttl-hours", f"{ttl_hours:g}", "--staged",
               str(files[0].parent), "--watched", str(run_dir / "watched"), "--log", str(run_dir / "log")]
    print("$ " + " ".join(command), flush=True)
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"child failed ({result.returncode}):\n{result.stderr[-4000:]}")
    records = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    final = records.pop()
    return records, final, seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=int, default=48)
    parser.add_argument("--events-per-hour", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=Path(DEFAULT_WORKDIR))
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the key figures to PATH as JSON")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--ttl-hours", type=float, default=24.0, help=argparse.SUPPRESS)
    parser.add_argument("--staged", help=argparse.SUPPRESS)
    parser.add_argument("--watched", help=argparse.SUPPRESS)
    parser.add_argument("--log", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args)

    files, expected = write_hourly_input(args.workdir, args.hours, args.events_per_hour, args.seed)
    print(f"{len(files)} hours, {expected['read']:,} lines, {expected['valid']:,} distinct event ids", flush=True)
    runs, problems = {}, []
    for ttl in (1.0, 24.0):
        records, final, seconds = run_child(files, ttl, args.workdir)
        counts = final["counts"]
        if counts.get("read") != expected["read"] or counts.get("valid") != expected["valid"] or \
                counts.get("duplicates") != expected["duplicates"] or counts.get("invalid", 0) != 0:
            problems.append(f"ttl {ttl:g} h: counts {counts} != expected {expected}")
        _, log_rows, _ = it.log_contents(args.workdir / "runs" / f"ttl{ttl:g}" / "log" / "events")
        if log_rows != expected["valid"]:
            problems.append(f"ttl {ttl:g} h: the log holds {log_rows} rows, expected {expected['valid']}")
        runs[ttl] = (records, final, seconds)

    marks = sorted({h for h in (1, 6, 12, 24, 30, 36, 42, args.hours - 1) if 0 < h < args.hours})
    print()
    print("RSS (MiB) of the ingest process when the given hour of events is released, i.e. once every earlier "
          "hour was read:")
    print(f"{'event hour':>12}" + "".join(f"{h:>8}" for h in marks) + f"{'end':>8}{'events/s':>10}")
    for ttl, (records, final, seconds) in runs.items():
        by_hour = {record["hour"]: record["rss"] for record in records}
        row = "".join(f"{by_hour[h] / 2**20:8.0f}" for h in marks)
        print(f"{f'ttl {ttl:g} h':>12}{row}{final['rss'] / 2**20:8.0f}{expected['read'] / seconds:10,.0f}")
    if args.hours > 30:
        last = args.hours - 1
        print()
        for ttl, (records, _, _) in runs.items():
            by_hour = {record["hour"]: record["rss"] for record in records}
            print(f"ttl {ttl:g} h: RSS {(by_hour[24] - by_hour[6]) / 2**20:+.0f} MiB from hour 6 to 24, "
                  f"{(by_hour[last] - by_hour[30]) / 2**20:+.0f} MiB from hour 30 to {last}; "
                  f"peak {max(by_hour.values()) / 2**20:.0f} MiB")
        peak = {ttl: max(record["rss"] for record in records) for ttl, (records, _, _) in runs.items()}
        print(f"peak RSS ratio ttl 24 h / ttl 1 h (baseline): {peak[24.0] / peak[1.0]:.2f}x")
    for problem in problems:
        print(f"PROBLEM: {problem}")
    figures = [{"ttl_hours": ttl, "seconds": seconds, "events_per_s": expected["read"] / seconds,
                "peak_rss_bytes": max(record["rss"] for record in records),
                "rss_by_hour": {record["hour"]: record["rss"] for record in records}}
               for ttl, (records, _, seconds) in runs.items()]
    it.bt.write_json(args.json, {"ok": not problems, "problems": problems, "hours": args.hours,
                                 "events_per_hour": args.events_per_hour, "lines": expected["read"], "runs": figures})
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
