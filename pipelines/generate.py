"""`labelbeam generate`: synthetic annotation events with known truth and known expected counts.

Annotators have varied skill (per-annotator confusion matrices, a few spammers); the event stream
has transport duplicates, revisions, deletes, id conflicts, malformed lines, schema errors, mixed
schema versions (JSON v1/v2 and Avro), and out-of-order times. Next to the events it writes
`truth.csv` (item_id,label) and `expected.json` (the counts a correct build must report when run
with the sample's label set). Same seed and size give byte-identical files.
"""
from __future__ import annotations

import argparse
import csv
import datetime as dt
import glob
import io
import json
import os
import sys
import time
from collections import Counter
from typing import Any

import fastavro
import numpy as np
import orjson

from labelbeam.pipelines.errors import UserError
from labelbeam.pipelines.options import check_output_root
from labelbeam.schemas import registry

SAMPLE_DATASET = "sample"
SAMPLE_LABELS = ("bird", "cat", "dog", "fish")
_START_MS = int(dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc).timestamp() * 1000)
_SPAN_MS = 150 * 24 * 3600 * 1000

# Shares of the event stream.
DRAFT_RATE = 0.08        # votes preceded by an earlier draft with another label
DELETE_RATE = 0.03       # votes later withdrawn
DUPLICATE_RATE = 0.05    # events re-sent by the transport
V2_RATE = 0.35           # events written with schema v2
AVRO_RATE = 0.15         # events written to Avro container files instead of JSON lines
CONFLICT_PAIR_RATE = 0.002
BROKEN_RATE = 0.004      # each kind of broken line below


def _confusion_matrices(rng: np.random.Generator, n_annotators: int, n_labels: int) -> np.ndarray:
    """[annotator, true, answered] probabilities: mostly skilled, some noisy, a few spammers."""
    accuracy = rng.uniform(0.6, 0.95, n_annotators)
    noisy = rng.random(n_annotators) < 0.10
    accuracy[noisy] = rng.uniform(1.0 / n_labels, 0.5, noisy.sum())
    confusion = rng.dirichlet(np.ones(n_labels - 1), size=(n_annotators, n_labels)) * \
        (1 - accuracy)[:, None, None]
    matrices = np.zeros((n_annotators, n_labels, n_labels))
    for true in range(n_labels):
        others = [k for k in range(n_labels) if k != true]
        matrices[:, true, others] = confusion[:, true, :]
        matrices[:, true, true] = accuracy
    spammers = rng.random(n_annotators) < 0.04
    favourite = rng.integers(0, n_labels, n_annotators)
    matrices[spammers] = 0.0
    matrices[spammers, :, favourite[spammers]] = 1.0
    return matrices


def _sample_rows(rng: np.random.Generator, probabilities: np.ndarray) -> np.ndarray:
    cumulative = probabilities.cumsum(axis=1)
    cumulative[:, -1] = 1.0
    return (rng.random(len(probabilities))[:, None] > cumulative).sum(axis=1)


def generate_events(n_events: int, seed: int, dataset: str = SAMPLE_DATASET,
                    labels: tuple[str, ...] = SAMPLE_LABELS) -> dict[str, Any]:
    """Build the event stream in memory: {"events": [(format, version, record|bytes)], truth, expected}."""
    rng = np.random.default_rng(seed)
    n_labels = len(labels)
    votes_per_item = 6
    n_votes = max(1, int(n_events / (1 + DRAFT_RATE + DELETE_RATE + DUPLICATE_RATE + 2 * CONFLICT_PAIR_RATE
                                     + 5 * BROKEN_RATE)))
    n_items = max(1, n_votes // votes_per_item)
    n_annotators = max(8, n_votes // 150)
    prior = rng.dirichlet(np.full(n_labels, 4.0))
    true_label = rng.choice(n_labels, size=n_items, p=prior)
    confusion = _confusion_matrices(rng, n_annotators, n_labels)

    vote_item = rng.integers(0, n_items, n_votes)
    vote_annotator = rng.integers(0, n_annotators, n_votes)
    # One vote per (item, annotator): later draws of a pair are dropped, keeping the sample honest.
    _, first = np.unique(vote_item * n_annotators + vote_annotator, return_index=True)
    first.sort()
    vote_item, vote_annotator = vote_item[first], vote_annotator[first]
    n_votes = len(first)
    vote_label = _sample_rows(rng, confusion[vote_annotator, true_label[vote_item]])
    vote_time = _START_MS + rng.integers(0, _SPAN_MS, n_votes)
    vote_v2 = rng.random(n_votes) < V2_RATE
    has_draft = rng.random(n_votes) < DRAFT_RATE
    has_delete = rng.random(n_votes) < DELETE_RATE

    item_ids = [f"item-{i:07d}" for i in range(n_items)]
    annotator_ids = [f"annotator-{a:05d}" for a in range(n_annotators)]
    events: list[dict[str, Any]] = []
    counter = iter(range(10**12))

    def event(vote: int, label: str | None, action: str, time_ms: int, revision: int) -> dict[str, Any]:
        record: dict[str, Any] = {
            "event_id": f"evt-{seed}-{next(counter):09d}", "dataset": dataset,
            "item_id": item_ids[vote_item[vote]], "annotator_id": annotator_ids[vote_annotator[vote]],
            "label": label, "action": action, "event_time": int(time_ms)}
        if vote_v2[vote]:
            record.update(schema_version=2, revision=revision, labels=[],
                          duration_ms=int(1000 + (time_ms % 29_000)), confidence=0.5 + (time_ms % 5) / 10,
                          metadata={"tool": "synthetic", "batch": str(vote % 97)})
        return record

    for vote in range(n_votes):
        time_ms = int(vote_time[vote])
        label = labels[vote_label[vote]]
        if has_draft[vote]:
            draft_label = labels[(vote_label[vote] + 1 + vote % (n_labels - 1)) % n_labels] if n_labels > 1 else label
            # v2 drafts carry a later clock but a lower revision: revision decides.
            draft_time = time_ms + 60_000 if vote_v2[vote] else time_ms - 60_000
            events.append(event(vote, draft_label, "UPSERT", draft_time, 0))
        events.append(event(vote, label, "UPSERT", time_ms, 1))
        if has_delete[vote]:
            events.append(event(vote, None, "DELETE", time_ms + 120_000, 2))

    n_good = len(events)
    duplicates = [dict(events[i]) for i in rng.choice(n_good, int(n_good * DUPLICATE_RATE), replace=False)]
    n_pairs = int(n_events * CONFLICT_PAIR_RATE)
    conflicts = []
    for pair in range(n_pairs):
        base = dict(events[int(rng.integers(0, n_good))])
        base.pop("schema_version", None)
        for k in ("revision", "labels", "duration_ms", "confidence", "metadata"):
            base.pop(k, None)
        base["event_id"] = f"conflict-{seed}-{pair:07d}"
        base["action"] = "UPSERT"
        for j in range(2):
            conflicts.append({**base, "label": labels[j % n_labels], "event_time": base["event_time"] + j})

    # JSON events can be moved to Avro only if they carry no envelope quirks; Avro gets v2 records.
    stream: list[tuple[str, Any]] = [("json", e) for e in events + duplicates + conflicts]
    order = rng.permutation(len(stream))
    stream = [stream[i] for i in order]
    to_avro = rng.random(len(stream)) < AVRO_RATE
    stream = [("avro", e) if move and e.get("schema_version") == 2 else (kind, e)
              for (kind, e), move in zip(stream, to_avro)]

    broken = _broken_lines(rng, n_events, dataset, labels)
    expected = _expected_counts(n_votes, has_draft, has_delete, len(duplicates), len(conflicts), broken,
                                n_items_with_votes=len(set(vote_item[~has_delete].tolist())))
    stream = _inserted(stream, rng.integers(0, len(stream) + 1, len(broken)), [("broken", raw) for _, raw in broken])
    truth = {item_ids[i]: labels[true_label[i]] for i in range(n_items)}
    return {"stream": stream, "truth": truth, "expected": expected, "labels": list(labels),
            "dataset": dataset}


def _inserted(items: list, positions: np.ndarray, extra: list) -> list:
    """`items` with extra[i] placed before items[positions[i]] (at the end for len(items)), in one pass:
    list.insert per line was quadratic, hours at 10M events."""
    merged: list = []
    start = 0
    for index in np.argsort(positions, kind="stable"):
        position = int(positions[index])
        merged.extend(items[start:position])
        merged.append(extra[index])
        start = position
    merged.extend(items[start:])
    return merged


def _broken_lines(rng: np.random.Generator, n_events: int, dataset: str,
                  labels: tuple[str, ...]) -> list[tuple[str, bytes]]:
    """(expected reason, raw line) for each kind of bad input."""
    count = max(1, int(n_events * BROKEN_RATE))
    good = {"event_id": "", "dataset": dataset, "item_id": "item-0000000", "annotator_id": "annotator-00000",
            "label": labels[0], "action": "UPSERT", "event_time": _START_MS}
    lines = []
    for i in range(count):
        base = {**good, "event_id": f"broken-{i:07d}"}
        lines.append(("MALFORMED_JSON", orjson.dumps(base)[: 20 + i % 40]))
        lines.append(("UNKNOWN_SCHEMA_VERSION", orjson.dumps({**base, "schema_version": 3 + i % 2})))
        missing = {k: v for k, v in base.items() if k != ("item_id", "annotator_id", "event_time")[i % 3]}
        lines.append(("MISSING_FIELD", orjson.dumps(missing)))
        lines.append(("SCHEMA_MISMATCH", orjson.dumps({**base, "event_time": str(_START_MS)}
                                                      if i % 2 else {**base, "label": 7})))
        lines.append(("BAD_TIMESTAMP", orjson.dumps({**base, "event_time": 0 if i % 2 else 7_258_118_400_000})))
        lines.append(("UNKNOWN_LABEL", orjson.dumps({**base, "label": f"not-a-{labels[0]}"})))
    rng.shuffle(lines)
    return lines


def _expected_counts(n_votes: int, has_draft: np.ndarray, has_delete: np.ndarray, n_duplicates: int,
                     n_conflicting: int, broken: list[tuple[str, bytes]], n_items_with_votes: int) -> dict[str, Any]:
    drafts, deletes = int(has_draft.sum()), int(has_delete.sum())
    valid = n_votes + drafts + deletes
    invalid_by_reason = Counter(reason for reason, _ in broken)
    invalid_by_reason["EVENT_ID_CONFLICT"] += n_conflicting
    invalid = sum(invalid_by_reason.values())
    return {
        "read": valid + invalid + n_duplicates, "valid": valid, "invalid": invalid,
        "duplicates": n_duplicates,
        # A deleted vote's UPSERT (and its draft) are superseded by the DELETE that wins.
        "superseded": drafts + deletes, "deleted": deletes, "votes": n_votes - deletes,
        "items": n_items_with_votes, "unknown_fields_dropped": 0, "after_as_of": 0,
        "invalid_by_reason": dict(sorted(invalid_by_reason.items())),
    }


def write_sample(output_dir: str, n_events: int, seed: int) -> dict[str, Any]:
    """Write events/ (JSON lines + Avro), truth.csv and expected.json under output_dir."""
    sample = generate_events(n_events, seed)
    events_dir = os.path.join(output_dir, "events")
    os.makedirs(events_dir, exist_ok=True)
    # Remove what an earlier, larger sample wrote here (more JSON files), and nothing else.
    for stale in glob.glob(os.path.join(events_dir, "events-*.jsonl")) + \
            glob.glob(os.path.join(events_dir, "events-v2.avro")):
        os.remove(stale)
    n_json_files = max(1, min(8, n_events // 100_000 + 2))
    json_files = [io.BytesIO() for _ in range(n_json_files)]
    avro_records: list[dict] = []
    for i, (kind, item) in enumerate(sample["stream"]):
        if kind == "avro":
            avro_records.append({k: v for k, v in item.items() if k != "schema_version"})
        else:
            line = item if kind == "broken" else orjson.dumps(item)
            json_files[i % n_json_files].write(line + b"\n")
    for i, buffer in enumerate(json_files):
        with open(os.path.join(events_dir, f"events-{i:03d}.jsonl"), "wb") as out:
            out.write(buffer.getvalue())
    if avro_records:
        with open(os.path.join(events_dir, "events-v2.avro"), "wb") as out:
            fastavro.writer(out, registry.load_schema_json(registry.event_schema_file(2)), avro_records,
                            codec="deflate",
                            sync_marker=b"labelbeam-sample"[:16])
    return write_description(output_dir, sample, n_events, seed)


def write_description(output_dir: str, sample: dict[str, Any], n_events: int, seed: int) -> dict[str, Any]:
    """truth.csv and expected.json of a sample, under output_dir."""
    with open(os.path.join(output_dir, "truth.csv"), "w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["item_id", "label"])
        writer.writerows(sorted(sample["truth"].items()))
    description = {"dataset": sample["dataset"], "labels": sample["labels"], "seed": seed,
                   "events": n_events, "expected": sample["expected"]}
    with open(os.path.join(output_dir, "expected.json"), "w", encoding="utf-8") as out:
        json.dump(description, out, indent=2, sort_keys=True)
        out.write("\n")
    return description


def stream_lines(sample: dict[str, Any], start_ms: int, span_ms: int) -> list[bytes]:
    """The sample's stream as JSON lines (Avro-bound events too), its event times moved into
    [start_ms, start_ms + span_ms] in the same order: identical copies stay identical, revisions keep
    their order, and the counts of expected.json still hold."""
    lines = []
    for kind, item in sample["stream"]:
        if kind == "broken":
            lines.append(item)
            continue
        moved = start_ms + (item["event_time"] - _START_MS) * span_ms // _SPAN_MS
        lines.append(orjson.dumps({**item, "event_time": int(moved)}))
    return lines


def stream_sample(output_dir: str, n_events: int, seed: int, seconds: float, interval: float = 1.0,
                  clock=time.time, sleep=time.sleep) -> dict[str, Any]:
    """Drop the sample's events into output_dir/events/ over `seconds`, one file every `interval` seconds,
    stamped with live event times; truth.csv and expected.json are written first. Each file is written
    under a hidden name, then renamed, so a watcher never reads part of one."""
    sample = generate_events(n_events, seed)
    events_dir = os.path.join(output_dir, "events")
    os.makedirs(events_dir, exist_ok=True)
    description = write_description(output_dir, sample, n_events, seed)
    started = clock()
    lines = stream_lines(sample, int(started * 1000), int(seconds * 1000))
    ticks = max(1, int(seconds / interval))
    bounds = np.linspace(0, len(lines), ticks + 1).astype(int)
    for tick in range(ticks):
        sleep(max(0.0, started + tick * interval - clock()))
        name = f"events-{int(started)}-{tick:05d}.jsonl"
        hidden = os.path.join(events_dir, f".{name}.tmp")
        with open(hidden, "wb") as out:
            out.write(b"".join(line + b"\n" for line in lines[bounds[tick]:bounds[tick + 1]]))
        os.replace(hidden, os.path.join(events_dir, name))
    return description


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="labelbeam generate", description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True, help="directory to write events/, truth.csv, expected.json; "
                                                        "new or empty unless --force")
    parser.add_argument("--events", type=int, default=50_000, help="about how many events (default: 50000)")
    parser.add_argument("--seed", type=int, default=0, help="(default: 0)")
    parser.add_argument("--force", action="store_true",
                        help="write into a non-empty --output folder, replacing the sample files there")
    parser.add_argument("--stream", action="store_true",
                        help="drop the events into --output/events/ over --seconds, a file a second, with live "
                             "event times: a feed for `labelbeam ingest --source OUTPUT/events --watch`")
    parser.add_argument("--seconds", type=float, default=30.0, help="with --stream: how long (default: 30)")
    return parser


def check_generate_output(output: str, force: bool) -> None:
    """UserError unless `output` is a writable folder (or can be made one) that is new, empty, or `force`d."""
    check_output_root(output, "events")
    if os.path.isdir(output) and os.listdir(output) and not force:
        raise UserError(f"--output {output} is not empty; choose a new folder, or give --force to replace the "
                        "sample files there")


def run(args: argparse.Namespace) -> int:
    if args.events < 1:
        raise UserError(f"--events must be positive, got {args.events}")
    check_generate_output(args.output, args.force)
    if args.stream:
        if args.seconds <= 0:
            raise UserError(f"--seconds must be positive, got {args.seconds}")
        print(f"dropping about {args.events} events into {os.path.join(args.output, 'events')} over "
              f"{args.seconds:g} s", flush=True)
        description = stream_sample(args.output, args.events, args.seed, args.seconds)
    else:
        description = write_sample(args.output, args.events, args.seed)
    expected = description["expected"]
    print(f"wrote {expected['read']} events ({expected['invalid']} invalid, {expected['duplicates']} duplicates) "
          f"for {expected['items']} items to {os.path.join(args.output, 'events')}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
