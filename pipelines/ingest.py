"""`labelbeam ingest`: the streaming half. Events from Pub/Sub, a drop directory or a file pattern ->
validate -> deduplicate (with a TTL) -> the curated, hourly partitioned event log that `build` reads.

    labelbeam ingest --source 'drop/*.jsonl' --output LOG_ROOT --dataset D      # bounded: ends by itself
    labelbeam ingest --source drop/ --watch --output LOG_ROOT --dataset D      # until Ctrl-C, then drains
    labelbeam ingest --source pubsub://projects/P/subscriptions/S --output gs://b/log --dataset D \
        --runner=DataflowRunner ...                                             # unbounded

A file pattern or directory is read once, in streaming mode, on the local runner that has streaming
semantics (BundleBasedDirectRunner), and the run ends when every hour has closed. With --watch a directory is
watched instead: files dropped into it are read as they appear, hours are written as the wall clock passes
them, and Ctrl-C (or SIGTERM) drains: every open hour is written, then the run ends and reports. Its counts are printed
and written to LOG_ROOT/_runs/. The nightly build then reads `LOG_ROOT/events` with `--as-of`.
"""
from __future__ import annotations

import argparse
import datetime as dt
import functools
import hashlib
import json
import os
import signal
import threading
import uuid

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_stream_service import TestStreamServiceController

from labelbeam.pipelines import logs
from labelbeam.pipelines.build import pipeline_options
from labelbeam.pipelines.errors import (
    EXIT_OK,
    UserError,
    exit_process,
    guarded,  # isort: split  (before apache_beam: it hides one warning)
)
from labelbeam.pipelines.options import add_ingest_arguments, check_dataset_name, parse_labels
from labelbeam.transforms.events import dead_letters as dl
from labelbeam.transforms.events.conservation import format_counts, sum_counts
from labelbeam.transforms.events.event_log import HOUR_MS, LogPolicy
from labelbeam.transforms.events.parser import ValidationRules
from labelbeam.transforms.ingest import IngestEvents
from labelbeam.transforms.read_stream import DropDirectoryFeed, ReadDroppedFiles, ReadMessages, WatchDroppedFiles
from labelbeam.transforms.storage import stores
from labelbeam.transforms.storage.inputs import InputError, match_inputs
from labelbeam.transforms.validate import RulesSource

PUBSUB_PREFIX = "pubsub://"
RUNS = "_runs"
SOURCES = "_sources"        # per watched directory, the files earlier runs read whole
PROGRESS_SECONDS = 5.0
STREAMING_LOCAL_RUNNER = "BundleBasedDirectRunner"


def source_pattern(source: str) -> str:
    """A directory means every event file below it; anything else is a file pattern as given."""
    if "://" not in source and os.path.isdir(source):
        return os.path.join(os.path.abspath(source), "**")
    return source


def ingest_options(beam_args: list[str]) -> PipelineOptions:
    """Beam options: always streaming; locally the runner with streaming semantics (it also reads Pub/Sub)."""
    args = list(beam_args)
    if "--streaming" not in args:
        args.append("--streaming")
    if not any(a == "--runner" or a.startswith("--runner=") for a in args):
        args.append(f"--runner={STREAMING_LOCAL_RUNNER}")
    return pipeline_options(args)


METRICS_NAMESPACE = "labelbeam.ingest"


class RecordCountsFn(beam.DoFn):
    """COUNTS dicts -> Beam counters (namespace labelbeam.ingest, for a runner's console) and, per bundle,
    one JSON file of their sum under `counts_dir`, which the launcher adds up at the end of a bounded run.

    Files rather than the counters for the report: the local streaming runner does not commit the metrics
    of bundles that its timers start (measured: the dedup stage's counts never reached them), and a
    GroupByKey in the stream would wait on windows.
    """

    def __init__(self, counts_dir: str):
        super().__init__()
        self._counts_dir = counts_dir

    def start_bundle(self):
        self._pending: list[dict[str, int]] = []

    def process(self, counts: dict[str, int]):
        for key, value in counts.items():
            beam.metrics.Metrics.counter(METRICS_NAMESPACE, key).inc(value)
        self._pending.append(counts)

    def finish_bundle(self):
        if self._pending:
            path = stores.join(self._counts_dir, f"{uuid.uuid4().hex}.json")
            stores.store_for(path).create_only(path, json.dumps(sum_counts(self._pending), sort_keys=True).encode())
            self._pending = []


def summed_counts(counts_dir: str) -> dict[str, int]:
    """The run's counts: the sum of every bundle's counts file."""
    store = stores.store_for(counts_dir)
    return sum_counts([json.loads(store.read(path)) for path in store.list(counts_dir)])


def todays_rules(dataset: str, labels: frozenset[str] | None) -> ValidationRules:
    """The rules a chunk is parsed with: event times up to two days past the start of the current UTC
    day, as the build's default, so the log and the nightly build accept the same events. Read when each
    chunk is parsed, so an always-on job's cutoff moves on with the days."""
    return ValidationRules.with_cutoff(dataset, ValidationRules.day_cutoff(dt.datetime.now(dt.timezone.utc)), labels)


def build_ingest(pipeline, chunks, log_root: str, rules: RulesSource, policy: LogPolicy, num_buckets: int,
                 counts_dir: str):
    ingested = chunks | "IngestEvents" >> IngestEvents(rules, log_root, policy, num_buckets)
    return ingested[dl.COUNTS] | "RecordCounts" >> beam.ParDo(RecordCountsFn(counts_dir))


def read_source(pipeline, source: str):
    if source.startswith(PUBSUB_PREFIX):
        return pipeline | "ReadMessages" >> ReadMessages(source[len(PUBSUB_PREFIX):])
    return pipeline | "ReadDroppedFiles" >> ReadDroppedFiles(source_pattern(source))


def sources_record(log_root: str, directory: str) -> str:
    """LOG_ROOT/_sources/<digest of the directory>.json: the files of `directory` earlier runs read."""
    digest = hashlib.sha256(os.path.abspath(directory).encode()).hexdigest()[:16]
    return stores.join(log_root, SOURCES, f"{digest}.json")


def read_sources_record(path: str) -> frozenset[str]:
    store = stores.store_for(path)
    return frozenset(json.loads(store.read(path))["files"]) if store.exists(path) else frozenset()


def run_watching(pipeline, feed: DropDirectoryFeed, counts_dir: str) -> None:
    """Run the pipeline until the feed stops (Ctrl-C or SIGTERM) and it drains, printing counts meanwhile.

    A second Ctrl-C aborts: open hours are then not written.
    """
    result = pipeline.run()
    outcome: list[BaseException] = []

    def wait():
        try:
            result.wait_until_finish()
        except BaseException as error:  # noqa: BLE001 - handed to the main thread
            outcome.append(error)

    waiter = threading.Thread(target=wait, name="labelbeam-ingest", daemon=True)
    waiter.start()
    previous_int = signal.getsignal(signal.SIGINT)

    def drain(signum, frame):
        if feed.stopped:
            if callable(previous_int):
                previous_int(signum, frame)
            raise KeyboardInterrupt
        feed.stop()
        print("draining: writing every open hour, then the run ends (Ctrl-C again to abort)", flush=True)

    handlers = {signal.SIGTERM: signal.signal(signal.SIGTERM, drain)}
    if previous_int is not signal.SIG_IGN:
        handlers[signal.SIGINT] = signal.signal(signal.SIGINT, drain)
    try:
        print(f"watching {feed.directory} (drop complete files; Ctrl-C drains and ends)", flush=True)
        shown = None
        while waiter.is_alive():
            waiter.join(PROGRESS_SECONDS)
            counts = summed_counts(counts_dir)
            if counts.get("read") and counts != shown:
                print(f"  {len(feed.served)} files, {format_counts(counts)} so far "
                      "(an hour is written once the clock passes it)", flush=True)
                shown = counts
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
    if outcome:
        raise outcome[0]
    if feed.error is not None:
        raise RuntimeError(f"watching {feed.directory} failed: {feed.error!r}") from feed.error


def run(args: argparse.Namespace, beam_args: list[str]) -> int:
    logs.configure(args)
    dataset = check_dataset_name(args.dataset)
    if args.allowed_lateness_hours < 0 or args.dedup_ttl_hours <= 0 or args.num_buckets < 1:
        raise UserError("--allowed-lateness-hours must be >= 0, --dedup-ttl-hours > 0 and --num-buckets >= 1")
    if args.watch and not os.path.isdir(args.source):
        raise UserError(f"--watch needs --source to be a local directory; {args.source} is not one")
    if args.poll_seconds <= 0:
        raise UserError(f"--poll-seconds must be positive, got {args.poll_seconds}")
    if not args.watch and not args.source.startswith(PUBSUB_PREFIX):
        try:   # a bounded run over a pattern or directory that holds no event file: a typo, as for build
            match_inputs([args.source])
        except InputError as err:
            raise UserError(f"--source: {err}") from None
    options = ingest_options(beam_args)
    labels = parse_labels(args.labels)
    now = dt.datetime.now(dt.timezone.utc)
    rules = functools.partial(todays_rules, dataset, frozenset(labels) if labels else None)
    rules()  # a bad dataset or label set fails here, not in a worker
    policy = LogPolicy(allowed_lateness_ms=int(args.allowed_lateness_hours * HOUR_MS),
                       ttl_ms=int(args.dedup_ttl_hours * HOUR_MS))
    run_id = f"{now.strftime('%Y%m%dT%H%M%SZ')}-{uuid.uuid4().hex[:8]}"
    report_path = stores.join(args.output, RUNS, f"{run_id}.json")
    counts_dir = stores.join(args.output, RUNS, run_id)
    if args.watch:
        record = sources_record(args.output, args.source)
        earlier = read_sources_record(record)
        feed = DropDirectoryFeed(args.source, args.poll_seconds, skip=earlier)
        service = TestStreamServiceController(feed)
        service.start()
        try:
            pipeline = beam.Pipeline(options=options)
            chunks = pipeline | "WatchDroppedFiles" >> WatchDroppedFiles(service.endpoint)
            build_ingest(pipeline, chunks, args.output, rules, policy, args.num_buckets, counts_dir)
            run_watching(pipeline, feed, counts_dir)
        finally:
            service.stop()
        # Only after a clean drain: every file served was read whole and its events are in the log.
        stores.store_for(record).write(record, json.dumps(
            {"directory": feed.directory, "files": sorted(earlier | set(feed.served))}, indent=1).encode())
    else:
        with beam.Pipeline(options=options) as pipeline:
            build_ingest(pipeline, read_source(pipeline, args.source), args.output, rules, policy,
                         args.num_buckets, counts_dir)
    counts = summed_counts(counts_dir)
    stores.store_for(report_path).write(report_path, json.dumps(counts, indent=2, sort_keys=True).encode() + b"\n")
    print(f"ingested {args.source} -> {stores.join(args.output, 'events')}")
    print(f"  {format_counts(counts)}")
    print(f"  late {counts.get('late', 0)}, too late {counts.get('too_late', 0)} (dead-lettered); run report "
          f"{report_path}")
    print(f"next:\n  labelbeam build --input {stores.join(args.output, 'events')} --output DATA --dataset {dataset} "
          "--as-of YYYY-MM-DDT00:00:00Z")
    logs.outcome("ingest", f"ingested {args.source}", {"dataset": dataset, "source": args.source,
                                                        "log_root": args.output, "counts": counts,
                                                        "run_report": report_path})
    return EXIT_OK


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="labelbeam ingest", description=__doc__.splitlines()[0])
    add_ingest_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args, beam_args = build_parser().parse_known_args(argv)
    return guarded(lambda: run(args, beam_args))


if __name__ == "__main__":
    exit_process(main())
