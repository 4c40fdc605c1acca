"""`labelbeam ingest`: the streaming half. Events from Pub/Sub, a drop directory or a file pattern ->
validate -> deduplicate (with a TTL) -> the curated, hourly partitioned event log that `build` reads.

    labelbeam ingest --source 'drop/*.jsonl' --output LOG_ROOT --dataset D      # bounded: ends by itself
    labelbeam ingest --source pubsub://projects/P/subscriptions/S --output gs://b/log --dataset D \
        --runner=DataflowRunner ...                                             # unbounded

A file pattern or directory is read once, in streaming mode, on the local runner that has streaming
semantics (BundleBasedDirectRunner), and the run ends when every hour has closed. Its counts are printed
and written to LOG_ROOT/_runs/. The nightly build then reads `LOG_ROOT/events` with `--as-of`.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import uuid

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from labelbeam.pipelines.build import pipeline_options
from labelbeam.pipelines.errors import (
    EXIT_OK,
    UserError,
    guarded,  # isort: split  (before apache_beam: it hides one warning)
)
from labelbeam.pipelines.options import add_ingest_arguments, check_dataset_name, parse_labels
from labelbeam.transforms.events import dead_letters as dl
from labelbeam.transforms.events.conservation import sum_counts
from labelbeam.transforms.events.event_log import HOUR_MS, LogPolicy
from labelbeam.transforms.events.parser import ValidationRules
from labelbeam.transforms.ingest import IngestEvents
from labelbeam.transforms.read_stream import ReadDroppedFiles, ReadMessages
from labelbeam.transforms.storage import stores

PUBSUB_PREFIX = "pubsub://"
RUNS = "_runs"
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


def build_ingest(pipeline, source: str, log_root: str, rules: ValidationRules, policy: LogPolicy,
                 num_buckets: int, counts_dir: str):
    if source.startswith(PUBSUB_PREFIX):
        chunks = pipeline | "ReadMessages" >> ReadMessages(source[len(PUBSUB_PREFIX):])
    else:
        chunks = pipeline | "ReadDroppedFiles" >> ReadDroppedFiles(source_pattern(source))
    ingested = chunks | "IngestEvents" >> IngestEvents(rules, log_root, policy, num_buckets)
    return ingested[dl.COUNTS] | "RecordCounts" >> beam.ParDo(RecordCountsFn(counts_dir))


def run(args: argparse.Namespace, beam_args: list[str]) -> int:
    dataset = check_dataset_name(args.dataset)
    if args.allowed_lateness_hours < 0 or args.dedup_ttl_hours <= 0 or args.num_buckets < 1:
        raise UserError("--allowed-lateness-hours must be >= 0, --dedup-ttl-hours > 0 and --num-buckets >= 1")
    options = ingest_options(beam_args)
    labels = parse_labels(args.labels)
    # Streaming has no build clock to cut against: event times are judged against the start of today, as
    # the build does, so the log and the nightly build accept the same events.
    now = dt.datetime.now(dt.timezone.utc)
    rules = ValidationRules.with_cutoff(dataset, ValidationRules.day_cutoff(now),
                                        frozenset(labels) if labels else None)
    policy = LogPolicy(allowed_lateness_ms=int(args.allowed_lateness_hours * HOUR_MS),
                       ttl_ms=int(args.dedup_ttl_hours * HOUR_MS))
    run_id = f"{now.strftime('%Y%m%dT%H%M%SZ')}-{uuid.uuid4().hex[:8]}"
    report_path = stores.join(args.output, RUNS, f"{run_id}.json")
    counts_dir = stores.join(args.output, RUNS, run_id)
    with beam.Pipeline(options=options) as pipeline:
        build_ingest(pipeline, args.source, args.output, rules, policy, args.num_buckets, counts_dir)
    counts = summed_counts(counts_dir)
    stores.store_for(report_path).write(report_path, json.dumps(counts, indent=2, sort_keys=True).encode() + b"\n")
    print(f"ingested {args.source} -> {stores.join(args.output, 'events')}")
    print("  read {read} = valid {valid} + invalid {invalid} + duplicates {duplicates}".format(**counts))
    print(f"  late {counts.get('late', 0)}, too late {counts.get('too_late', 0)} (dead-lettered); run report "
          f"{report_path}")
    print(f"next:\n  labelbeam build --input {stores.join(args.output, 'events')} --output DATA --dataset {dataset} "
          "--as-of YYYY-MM-DDT00:00:00Z")
    return EXIT_OK


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="labelbeam ingest", description=__doc__.splitlines()[0])
    add_ingest_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args, beam_args = build_parser().parse_known_args(argv)
    return guarded(lambda: run(args, beam_args))


if __name__ == "__main__":
    sys.exit(main())
