"""End-to-end throughput of `labelbeam build` on the local runner, next to a plain pandas baseline.

    python benchmarks/build_throughput.py --events 1000000
    python benchmarks/build_throughput.py --events 50000 --beam-arg=--direct_running_mode=multi_processing \
        --beam-arg=--direct_num_workers=2

1. Generates synthetic events with `labelbeam generate` (reused when WORKDIR already holds a sample
   of the same size and seed).
2. Runs `labelbeam build` on them as a subprocess, timing wall-clock and sampling the peak RSS of
   its process tree, and checks the published manifest's counts against the generator's
   expected.json. A mismatch, or a failed build, makes the exit code non-zero.
3. Runs `baseline_build`, a plain orjson/fastavro/numpy/pandas/pyarrow function in this process, on
   the same files, and prints its counts next to the pipeline's so a reader can see it did
   comparable work. See benchmarks/README.md for the shortcuts the baseline takes.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import gc
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import fastavro
import numpy as np
import orjson
import pandas as pd
import psutil
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

COUNT_KEYS = ("read", "valid", "invalid", "duplicates", "superseded", "deleted", "votes", "items")
DEFAULT_WORKDIR = os.path.join(tempfile.gettempdir(), "labelbeam-bench")
RSS_SAMPLE_SECONDS = 0.05
LOG_TAIL_LINES = 40
SKIPPED = "skipped"


# ---------------------------------------------------------------------------------------------
# Results and formatting
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass
class RunResult:
    """One timed build: its wall-clock seconds, memory high-water marks and reported counts."""
    name: str
    seconds: float
    peak_rss_bytes: int                  # process tree (sum of sampled RSS) or this process
    counts: dict[str, int]
    ok: bool = True
    largest_process_rss_bytes: int | None = None   # kernel ru_maxrss of the largest single process
    invalid_by_reason: dict[str, int] = dataclasses.field(default_factory=dict)
    error: str = ""
    detail: str = ""                     # one line printed under the throughput table


def format_bytes(size: int | None) -> str:
    if size is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.2f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned first column, right-aligned others."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]

    def line(cells: Sequence[str]) -> str:
        first, *rest = cells
        return "  ".join([str(first).ljust(widths[0])] + [str(c).rjust(w) for c, w in zip(rest, widths[1:])])
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(row) for row in rows])


def result_json(run: RunResult, n_events: int | None = None) -> dict[str, Any]:
    """The key figures of one run, for --json (benchmarks/run_all.py reads them)."""
    figures: dict[str, Any] = {"ok": run.ok, "seconds": run.seconds, "peak_rss_bytes": run.peak_rss_bytes,
                               "largest_process_rss_bytes": run.largest_process_rss_bytes, "counts": run.counts,
                               "error": run.error}
    if n_events is not None and run.ok:
        figures["events_per_s"] = n_events / run.seconds
    return figures


def write_json(path: Path | None, figures: dict[str, Any]) -> None:
    """--json PATH: the key figures of a benchmark run as one JSON object (nothing without --json)."""
    if path is not None:
        path.write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def counts_mismatches(actual: dict[str, int], expected: dict[str, int]) -> list[str]:
    return [f"{key}: got {actual.get(key)!r}, expected {expected[key]!r}"
            for key in COUNT_KEYS if actual.get(key) != expected[key]]


# ---------------------------------------------------------------------------------------------
# Synthetic input
# ---------------------------------------------------------------------------------------------

def labelbeam_command() -> list[str]:
    """The `labelbeam` console script of this interpreter's environment (or the module fallback)."""
    script = Path(sys.executable).parent / "labelbeam"
    if script.exists():
        return [str(script)]
    found = shutil.which("labelbeam")
    return [found] if found else [sys.executable, "-m", "labelbeam.pipelines.cli"]


def ensure_sample(workdir: Path, n_events: int, seed: int) -> tuple[Path, dict[str, Any]]:
    """A generated sample of n_events/seed under workdir, reusing one that is already complete.

    `labelbeam generate` writes expected.json last, so its presence (with matching size and seed)
    marks a finished sample. Generation runs as a subprocess to keep this process's peak RSS
    (reported for the baseline) free of the generator's.
    """
    sample_dir = workdir / f"sample-{n_events}-seed{seed}"
    description_path = sample_dir / "expected.json"
    if description_path.exists():
        description = json.loads(description_path.read_text(encoding="utf-8"))
        events_dir = sample_dir / "events"
        if (description.get("events"), description.get("seed")) == (n_events, seed) and \
                events_dir.is_dir() and any(events_dir.iterdir()):
            print(f"reusing generated sample {sample_dir}", flush=True)
            return sample_dir, description
    description_path.unlink(missing_ok=True)
    sample_dir.mkdir(parents=True, exist_ok=True)
    command = labelbeam_command() + ["generate", "--output", str(sample_dir), "--events", str(n_events),
                                     "--seed", str(seed)]
    print("$ " + " ".join(command), flush=True)
    started = time.perf_counter()
    subprocess.run(command, check=True)
    print(f"generated in {time.perf_counter() - started:.1f} s")
    return sample_dir, json.loads(description_path.read_text(encoding="utf-8"))


# ---------------------------------------------------------------------------------------------
# labelbeam build, as a subprocess
# ---------------------------------------------------------------------------------------------

class TreeRssSampler(threading.Thread):
    """Samples the summed RSS of a process and all its descendants until stopped.

    A sum of RSS counts pages shared between processes more than once, and sampling can miss a
    short spike: read it as an approximation of the tree's footprint.
    """

    def __init__(self, pid: int, interval: float = RSS_SAMPLE_SECONDS):
        super().__init__(daemon=True)
        self._root = psutil.Process(pid)
        self._interval = interval
        self._stop_event = threading.Event()
        self.peak_bytes = 0

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.peak_bytes = max(self.peak_bytes, self._tree_rss())
            self._stop_event.wait(self._interval)

    def _tree_rss(self) -> int:
        total = 0
        try:
            processes = [self._root] + self._root.children(recursive=True)
        except psutil.Error:
            return 0
        for process in processes:
            with contextlib.suppress(psutil.Error):
                total += process.memory_info().rss
        return total

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def read_published_manifest(root: Path, dataset: str) -> tuple[Path, dict[str, Any]]:
    """(version directory, manifest) of the version `_latest` points at."""
    pointer = json.loads((root / dataset / "_latest").read_text(encoding="utf-8"))
    version_dir = root / dataset / "versions" / str(pointer["version"])
    return version_dir, json.loads((version_dir / "manifest.json").read_text(encoding="utf-8"))


def dead_letters_by_reason(version_dir: Path, manifest: dict[str, Any]) -> dict[str, int]:
    """Counts by `reason` of the dead-letter Avro files the manifest's `dead_letters` section lists; they are
    quarantined beside the version, at paths relative to ROOT/<dataset> (empty if it lists none)."""
    dataset_dir = version_dir.parent.parent
    found: dict[str, int] = {}
    for entry in manifest.get("dead_letters", {}).get("quarantine", []):
        with open(dataset_dir / entry["path"], "rb") as stream:
            for record in fastavro.reader(stream):
                found[record["reason"]] = found.get(record["reason"], 0) + 1
    return dict(sorted(found.items()))


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    text = path.read_text(encoding="utf-8", errors="replace").splitlines()
    return "\n".join("    " + line for line in text[-lines:])


def run_labelbeam(events_dir: Path, output_root: Path, dataset: str, labels: Sequence[str],
                  beam_args: Sequence[str], log_path: Path) -> RunResult:
    """Time `labelbeam build` end to end (interpreter start-up included) and read its manifest."""
    shutil.rmtree(output_root, ignore_errors=True)
    command = labelbeam_command() + ["build", "--input", str(events_dir), "--output", str(output_root),
                                     "--dataset", dataset, "--labels", ",".join(labels), "--force",
                                     *beam_args]
    print("$ " + " ".join(command), flush=True)
    with open(log_path, "wb") as log:
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        sampler = TreeRssSampler(process.pid)
        sampler.start()
        # wait4 reports this child's own rusage: ru_maxrss is the largest single process of its tree.
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
        sampler.stop()
    process.returncode = os.waitstatus_to_exitcode(status)
    result = RunResult("labelbeam", seconds, sampler.peak_bytes, {},
                       largest_process_rss_bytes=usage.ru_maxrss * 1024)
    if process.returncode != 0:
        result.ok = False
        result.error = f"labelbeam build exited with {process.returncode}; log {log_path}:\n{log_tail(log_path)}"
        return result
    try:
        version_dir, manifest = read_published_manifest(output_root, dataset)
    except (OSError, ValueError, KeyError) as err:
        result.ok = False
        result.error = f"no readable manifest under {output_root}: {err}"
        return result
    result.counts = {key: manifest["counts"].get(key) for key in COUNT_KEYS}
    try:   # informational only: the published dead letters, counted by reason
        result.invalid_by_reason = dead_letters_by_reason(version_dir, manifest)
    except (OSError, ValueError, KeyError) as err:
        print(f"note: could not count labelbeam's dead letters by reason: {err}")
    return result


# ---------------------------------------------------------------------------------------------
# The baseline: a plain single-process script doing the same work
# ---------------------------------------------------------------------------------------------

MIN_EVENT_TIME_MS = int(dt.datetime(2000, 1, 1, tzinfo=dt.timezone.utc).timestamp() * 1000)
CLOCK_SKEW_MS = 24 * 3600 * 1000
V1_FIELDS = ("event_id", "dataset", "item_id", "annotator_id", "label", "action", "event_time")
V2_FIELDS = V1_FIELDS + ("revision", "labels", "score", "duration_ms", "confidence", "metadata")
ALLOWED_KEYS = {1: frozenset(V1_FIELDS) | {"schema_version"}, 2: frozenset(V2_FIELDS) | {"schema_version"}}
REQUIRED = frozenset({"event_id", "dataset", "item_id", "annotator_id", "event_time"})
ID_FIELDS = ("event_id", "dataset", "item_id", "annotator_id")
INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)
NONE = type(None)
# Per field: the Python types a JSON value may have.
FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "event_id": (str,), "dataset": (str,), "item_id": (str,), "annotator_id": (str,),
    "label": (str, NONE), "action": (str,), "event_time": (int,), "revision": (int,),
    "labels": (list,), "score": (float, int, NONE), "duration_ms": (int, NONE),
    "confidence": (float, int, NONE), "metadata": (dict,),
}
DEFAULTS: dict[str, Any] = {"label": None, "action": "UPSERT", "revision": 0, "labels": (), "score": None,
                            "duration_ms": None, "confidence": None, "metadata": None}
REASONS = ("MALFORMED_JSON", "UNKNOWN_SCHEMA_VERSION", "SCHEMA_MISMATCH", "MISSING_FIELD", "BAD_TIMESTAMP",
           "DATASET_MISMATCH", "UNKNOWN_LABEL", "EVENT_ID_CONFLICT")
LIFECYCLE_ORDER = ["dataset", "item_id", "annotator_id", "revision", "event_time", "event_id"]
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
_ONE_MS = dt.timedelta(milliseconds=1)


class _Missing:
    """Marks a key absent from an event object (distinct from an explicit null)."""


class _Malformed:
    """Stands for a line that is not JSON."""


MISSING = _Missing()
MALFORMED = _Malformed()


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Creating a million small dicts triggers the cyclic GC over and over; none of them are cyclic."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _loads(line: bytes) -> Any:
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError:
        return MALFORMED


def read_events(events_dir: Path) -> list[Any]:
    """Every event object of the JSON Lines and Avro files below events_dir (MALFORMED for bad JSON)."""
    objects: list[Any] = []
    for path in sorted(p for p in events_dir.rglob("*") if p.is_file()):
        if path.suffix == ".avro":
            with open(path, "rb") as stream:
                reader = fastavro.reader(stream)
                names = {field["name"] for field in reader.writer_schema["fields"]}
                version = 2 if "revision" in names else 1
                for record in reader:
                    # fastavro decodes timestamp-millis to datetime; the JSON wire carries epoch millis.
                    if isinstance(record.get("event_time"), dt.datetime):
                        record["event_time"] = (record["event_time"] - _EPOCH) // _ONE_MS
                    record["schema_version"] = version
                    objects.append(record)
        elif path.suffix in (".jsonl", ".json", ".ndjson"):
            objects.extend(map(_loads, (line for line in path.read_bytes().split(b"\n") if line.strip())))
    return objects


def _types(values: Sequence[Any]) -> np.ndarray:
    """type(value) of each value, as an object array (compared with `==`, exact: bool is no int)."""
    return np.fromiter(map(type, values), dtype=object, count=len(values))


def _is_any(types: np.ndarray, allowed: tuple[type, ...]) -> np.ndarray:
    return np.logical_or.reduce([types == kind for kind in allowed]) if allowed else np.zeros(len(types), bool)


def _within(values: np.ndarray, bounds: tuple[int, int]) -> np.ndarray:
    """Which Python ints of an object array lie within bounds."""
    low, high = bounds
    try:
        as_int = values.astype(np.int64)
    except OverflowError:
        return np.fromiter((low <= v <= high for v in values), dtype=bool, count=len(values))
    return (as_int >= low) & (as_int <= high)


def _object_array(values: list[Any]) -> np.ndarray:
    return np.fromiter(values, dtype=object, count=len(values))


def _fill(column: np.ndarray, mask: np.ndarray, value: Any) -> None:
    """column[mask] = value, also when value is a sequence (a 0-d array keeps numpy from unpacking it)."""
    scalar = np.empty((), dtype=object)
    scalar[()] = value
    column[mask] = scalar


class Rejections:
    """One reason per row; the first failing check wins, as in the pipeline's validator."""

    def __init__(self, n: int):
        self.code = np.zeros(n, dtype=np.int8)   # 0 valid, else 1 + index into REASONS

    def reject(self, mask: np.ndarray, reason: str) -> None:
        self.code[(self.code == 0) & mask] = REASONS.index(reason) + 1

    def reject_rows(self, rows: np.ndarray, reason: str) -> None:
        rows = rows[self.code[rows] == 0]
        self.code[rows] = REASONS.index(reason) + 1

    @property
    def valid(self) -> np.ndarray:
        return self.code == 0

    def by_reason(self) -> dict[str, int]:
        found = np.bincount(self.code, minlength=len(REASONS) + 1)
        return {reason: int(found[i + 1]) for i, reason in enumerate(REASONS) if found[i + 1]}


def check_schema(objects: list[Any], rejections: Rejections) -> dict[str, np.ndarray]:
    """Wire-level checks (JSON, schema_version, known keys, required fields, types).

    Returns one object array per v2 field, defaults filled where a key is absent; values of
    rejected rows are whatever the input held.
    """
    n = len(objects)
    types = _types(objects)
    is_dict = types == dict
    rejections.reject(types == _Malformed, "MALFORMED_JSON")
    rejections.reject(~is_dict, "SCHEMA_MISMATCH")
    if not is_dict.all():
        objects = [o if type(o) is dict else {} for o in objects]

    version = [o.get("schema_version", 1) for o in objects]
    known_version = (_types(version) == int) & pd.Series(_object_array(version)).isin([1, 2]).to_numpy()
    rejections.reject(~known_version, "UNKNOWN_SCHEMA_VERSION")
    allowed_keys = [ALLOWED_KEYS[v] if ok else ALLOWED_KEYS[2] for v, ok in zip(version, known_version)]
    rejections.reject(np.fromiter((not o.keys() <= keys for o, keys in zip(objects, allowed_keys)),
                                  dtype=bool, count=n), "SCHEMA_MISMATCH")

    columns: dict[str, np.ndarray] = {}
    absent = [MISSING] * len(V2_FIELDS)
    rows_of_values = [tuple(map(o.get, V2_FIELDS, absent)) for o in objects]
    # In schema order: a row's first bad field decides its reason.
    for name, values in zip(V2_FIELDS, zip(*rows_of_values) if n else [()] * len(V2_FIELDS)):
        column = _object_array(values)
        types = _types(values)
        present = types != _Missing
        if name in REQUIRED:
            rejections.reject(~present, "MISSING_FIELD")
        ok = _is_any(types, FIELD_TYPES[name]) | ~present
        rows = np.flatnonzero(ok & present & rejections.valid)
        checked = column[rows]
        if name == "action":
            ok[rows] = pd.Series(checked).isin(["UPSERT", "DELETE"]).to_numpy()
        elif name in ("event_time", "duration_ms", "revision"):
            ints = types[rows] == int
            ok[rows[ints]] = _within(checked[ints], INT32 if name == "revision" else INT64)
        elif name == "labels":
            ok[rows] = [all(type(x) is str for x in v) for v in checked]
        elif name == "metadata":
            ok[rows] = [all(type(x) is str for x in v.values()) for v in checked]
        rejections.reject(~ok, "SCHEMA_MISMATCH")
        _fill(column, ~present, DEFAULTS.get(name))
        columns[name] = column
    del rows_of_values
    return columns


def validate_events(objects: list[Any], dataset: str, labels: frozenset[str],
                    now_ms: int) -> tuple[pd.DataFrame, Rejections]:
    """Schema checks, then the build's rules; returns the valid events (defaults filled) and the rejections."""
    rejections = Rejections(len(objects))
    columns = check_schema(objects, rejections)
    rows = np.flatnonzero(rejections.valid)
    frame = pd.DataFrame({name: columns[name][rows] for name in V2_FIELDS})
    for name in ("event_id", "dataset", "item_id", "annotator_id", "label", "action"):
        frame[name] = frame[name].astype("str")
    for name in ("event_time", "revision"):
        frame[name] = frame[name].astype(np.int64)

    has_labels = (frame["labels"].map(len) > 0).to_numpy()
    is_delete = (frame["action"] == "DELETE").to_numpy()
    label_null = frame["label"].isna().to_numpy()
    known_label = label_null | frame["label"].isin(sorted(labels)).to_numpy()
    known_label[has_labels] &= np.array([set(v) <= labels for v in frame["labels"][has_labels]], dtype=bool)
    event_time = frame["event_time"].to_numpy()
    rules = [
        ("MISSING_FIELD", (frame[list(ID_FIELDS)] == "").any(axis=1).to_numpy()),
        ("BAD_TIMESTAMP", (event_time < MIN_EVENT_TIME_MS) | (event_time > now_ms + CLOCK_SKEW_MS)),
        ("SCHEMA_MISMATCH", is_delete & (~label_null | has_labels)),
        ("MISSING_FIELD", ~is_delete & label_null & ~has_labels & frame["score"].isna().to_numpy()),
        ("DATASET_MISMATCH", (frame["dataset"] != dataset).to_numpy()),
        ("UNKNOWN_LABEL", ~known_label),
    ]
    for reason, mask in rules:
        rejections.reject_rows(rows[mask], reason)
    return frame[rejections.valid[rows]].reset_index(drop=True), rejections


def _content_key(row: tuple) -> bytes:
    """Content identity of one event after defaults: confidence rounded to float32 as Avro stores it."""
    *head, labels, score, duration_ms, confidence, metadata = row
    return orjson.dumps([*head, list(labels), None if score is None else float(score), duration_ms,
                         None if confidence is None else float(np.float32(confidence)),
                         sorted((metadata or {}).items())], option=orjson.OPT_SERIALIZE_NUMPY)


def deduplicate(events: pd.DataFrame) -> tuple[pd.DataFrame, int, int]:
    """Rules 1-2: (unique events, duplicates dropped, rows dead-lettered as EVENT_ID_CONFLICT).

    Only rows whose event_id occurs more than once (a few percent) get a content key.
    """
    repeated = events["event_id"].duplicated(keep=False).to_numpy()
    copies = events[repeated]
    rows = zip(*(copies[name].to_numpy(dtype=object) for name in V2_FIELDS))
    content = pd.Series([_content_key(row) for row in rows], index=copies.index)
    conflict_in_copies = (content.groupby(copies["event_id"]).transform("nunique") > 1).to_numpy()
    later_copy = copies["event_id"].duplicated(keep="first").to_numpy()
    drop = np.zeros(len(events), dtype=bool)
    drop[repeated] = conflict_in_copies | later_copy
    duplicates = int(np.count_nonzero(later_copy & ~conflict_in_copies))
    return events[~drop], duplicates, int(np.count_nonzero(conflict_in_copies))


def resolve_latest(events: pd.DataFrame) -> tuple[pd.DataFrame, int, int]:
    """Rules 3-4: (standing votes, superseded, deleted); the greatest (revision, event_time, event_id) wins."""
    # pyarrow sorts these string keys about twice as fast as DataFrame.sort_values.
    keys = pa.Table.from_pandas(events[LIFECYCLE_ORDER], preserve_index=False)
    order = pc.sort_indices(keys, sort_keys=[(name, "ascending") for name in LIFECYCLE_ORDER])
    events = events.iloc[order.to_numpy()]
    latest = events.drop_duplicates(subset=["dataset", "item_id", "annotator_id"], keep="last")
    is_delete = latest["action"] == "DELETE"
    return latest[~is_delete], len(events) - len(latest), int(is_delete.sum())


def majority_vote(votes: pd.DataFrame) -> pd.DataFrame:
    """One row per item: the most voted label (ties: the smallest label), its share, votes, agreement."""
    tally = votes.groupby(["item_id", "label"], sort=False).size().rename("n").reset_index()
    per_item = tally.groupby("item_id")["n"]
    tally["num_votes"] = per_item.transform("sum")
    tally["top"] = per_item.transform("max")
    tally["pairs"] = tally["n"] * (tally["n"] - 1)
    tally["tops"] = (tally["n"] == tally["top"]).groupby(tally["item_id"]).transform("sum")
    tally["agreeing"] = tally.groupby("item_id")["pairs"].transform("sum")
    winners = (tally[tally["n"] == tally["top"]]
               .sort_values(["item_id", "label"])
               .drop_duplicates(subset="item_id", keep="first"))
    num_votes = winners["num_votes"].to_numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        agreement = np.where(num_votes >= 2, winners["agreeing"] / (num_votes * (num_votes - 1.0)), np.nan)
    return pd.DataFrame({
        "item_id": winners["item_id"].to_numpy(), "label": winners["label"].to_numpy(),
        "confidence": (winners["n"] / winners["num_votes"]).to_numpy(),
        "num_votes": num_votes, "agreement": agreement,
        "status": np.where(winners["tops"].to_numpy() > 1, "tie", "ok"),
    })


class StageClock:
    """Wall-clock seconds per named stage, in order."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.seconds[stage] = now - self._last
        self._last = now


@dataclasses.dataclass
class BaselineOutcome:
    counts: dict[str, int]               # in the manifest's vocabulary
    invalid_by_reason: dict[str, int]
    stage_seconds: dict[str, float]


def baseline_build(events_dir: Path, output_path: Path, dataset: str, labels: Sequence[str],
                   now: dt.datetime | None = None) -> BaselineOutcome:
    """Read, validate, deduplicate, resolve and majority-vote the events; write one Parquet file."""
    now_ms = int((now or dt.datetime.now(dt.timezone.utc)).timestamp() * 1000)
    clock = StageClock()
    with gc_paused():
        objects = read_events(events_dir)
        read = len(objects)
        clock.lap("read")
        events, rejections = validate_events(objects, dataset, frozenset(labels), now_ms)
        del objects
        clock.lap("validate")
    unique, duplicates, conflicts = deduplicate(events)
    clock.lap("dedup")
    votes, superseded, deleted = resolve_latest(unique)
    clock.lap("lifecycle")
    consensus = majority_vote(votes)
    clock.lap("vote")
    output_path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pandas(consensus, preserve_index=False), output_path)
    clock.lap("write")

    invalid_by_reason = rejections.by_reason()
    if conflicts:
        invalid_by_reason["EVENT_ID_CONFLICT"] = conflicts
    counts = {"read": read, "valid": len(unique), "invalid": sum(invalid_by_reason.values()),
              "duplicates": duplicates, "superseded": superseded, "deleted": deleted, "votes": len(votes),
              "items": len(consensus)}
    return BaselineOutcome(counts, dict(sorted(invalid_by_reason.items())), clock.seconds)


def run_baseline(events_dir: Path, output_path: Path, dataset: str, labels: Sequence[str]) -> RunResult:
    """Time the baseline in this process; its peak RSS is this process's high-water mark.

    This process does little else (generation and the pipeline run in subprocesses), so the
    high-water mark is the baseline's, interpreter and imported libraries included.
    """
    started = time.perf_counter()
    try:
        outcome = baseline_build(events_dir, output_path, dataset, labels)
    except Exception as err:  # report it next to the pipeline's result instead of dying here
        return RunResult("baseline", time.perf_counter() - started, 0, {}, ok=False,
                         error=f"baseline failed: {type(err).__name__}: {err}")
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    stages = ", ".join(f"{stage} {sec:.2f}" for stage, sec in outcome.stage_seconds.items())
    return RunResult("baseline", seconds, peak, outcome.counts, invalid_by_reason=outcome.invalid_by_reason,
                     detail=f"baseline seconds by stage: {stages}")


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------

def print_counts(expected: dict[str, Any], runs: Sequence[RunResult]) -> None:
    header = ["count", "expected"] + [run.name for run in runs]
    rows = [[key, str(expected[key])] + [str(run.counts.get(key, "-")) for run in runs] for key in COUNT_KEYS]
    reasons = sorted(set(expected.get("invalid_by_reason", {})).union(*(r.invalid_by_reason for r in runs)))
    for reason in reasons:
        rows.append([f"  {reason}", str(expected.get("invalid_by_reason", {}).get(reason, 0))]
                    + [str(run.invalid_by_reason.get(reason, "-" if not run.invalid_by_reason else 0))
                       for run in runs])
    print(format_table(header, rows))


def print_throughput(n_events: int, labelbeam: RunResult, baseline: RunResult, target: float) -> None:
    rows = []
    for run in (labelbeam, baseline):
        if run.error == SKIPPED:
            rows.append([run.name, f"{n_events:,}", "-", "skipped", "-", "-"])
            continue
        rate = f"{n_events / run.seconds:,.0f}" if run.ok else "FAILED"
        rows.append([run.name, f"{n_events:,}", f"{run.seconds:.2f}", rate, format_bytes(run.peak_rss_bytes),
                     format_bytes(run.largest_process_rss_bytes)])
    print(format_table(["run", "events", "seconds", "events/s", "peak RSS", "largest process"], rows))
    print("  labelbeam peak RSS: sampled sum over its process tree; largest process: kernel ru_maxrss.")
    print("  baseline peak RSS: this benchmark process's high-water mark (ru_maxrss).")
    for run in (labelbeam, baseline):
        if run.detail:
            print(f"  {run.detail}")
    if labelbeam.ok and baseline.ok:
        ratio = (n_events / labelbeam.seconds) / (n_events / baseline.seconds)
        print(f"ratio labelbeam/baseline events/s: {ratio:.3f}")
    if labelbeam.ok:
        rate = n_events / labelbeam.seconds
        verdict = "met" if rate >= target else "NOT met"
        print(f"target {target:,.0f} events/s: {verdict} by labelbeam ({rate:,.0f} events/s, "
              f"{rate / target:.2f}x of target)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Time `labelbeam build` on generated events against a plain pandas baseline.",
        epilog="Beam arguments start with '--', so pass them with '=': --beam-arg=--direct_num_workers=2")
    parser.add_argument("--events", type=int, default=1_000_000, help="events to generate (default 1000000)")
    parser.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    parser.add_argument("--workdir", type=Path, default=Path(DEFAULT_WORKDIR),
                        help=f"where samples and outputs go; samples are reused (default {DEFAULT_WORKDIR})")
    parser.add_argument("--beam-arg", action="append", default=[], metavar="ARG",
                        help="extra argument for `labelbeam build` (repeatable)")
    parser.add_argument("--target-events-per-s", type=float, default=100_000,
                        help="report whether labelbeam reaches this rate (never fails the run)")
    parser.add_argument("--skip-baseline", action="store_true", help="time labelbeam only")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the key figures to PATH as JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.events < 1:
        print("--events must be positive", file=sys.stderr)
        return 2
    workdir: Path = args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    sample_dir, description = ensure_sample(workdir, args.events, args.seed)
    expected = description["expected"]
    dataset, labels = description["dataset"], description["labels"]
    events_dir = sample_dir / "events"
    runs_dir = sample_dir / "runs"
    runs_dir.mkdir(exist_ok=True)

    labelbeam = run_labelbeam(events_dir, runs_dir / "labelbeam", dataset, labels, args.beam_arg,
                              runs_dir / "labelbeam-build.log")
    if args.skip_baseline:
        baseline = RunResult("baseline", float("nan"), 0, {}, ok=False, error=SKIPPED)
    else:
        print("running baseline (in process)", flush=True)
        baseline = run_baseline(events_dir, runs_dir / "baseline" / "labels.parquet", dataset, labels)

    print()
    print_counts(expected, [labelbeam, baseline])
    print()
    print_throughput(expected["read"], labelbeam, baseline, args.target_events_per_s)
    print()

    sys.stdout.flush()   # keep the tables above the verdict when stdout and stderr share a terminal
    status = 0
    if not labelbeam.ok:
        print(f"FAIL: {labelbeam.error}", file=sys.stderr)
        status = 1
    else:
        mismatches = counts_mismatches(labelbeam.counts, expected)
        if mismatches:
            print("FAIL: labelbeam manifest counts differ from expected.json: " + "; ".join(mismatches),
                  file=sys.stderr)
            status = 1
        else:
            print("OK: labelbeam manifest counts equal expected.json")
    expected_reasons = expected.get("invalid_by_reason", {})
    if labelbeam.invalid_by_reason and labelbeam.invalid_by_reason != expected_reasons:
        print("note: labelbeam's dead letters by reason differ from expected.json (informational, not checked)")
    if baseline.ok:
        differences = counts_mismatches(baseline.counts, expected)
        if baseline.invalid_by_reason != expected_reasons:
            differences.append("dead letters by reason")
        if differences:
            print("note: the baseline's counts differ from expected.json (a limit of the baseline, not "
                  "checked): " + "; ".join(differences))
    elif baseline.error != SKIPPED:
        print(f"note: {baseline.error}")
    write_json(args.json, {"ok": status == 0, "events": expected["read"],
                           "target_events_per_s": args.target_events_per_s,
                           "labelbeam": result_json(labelbeam, expected["read"]),
                           "baseline": None if baseline.error == SKIPPED else result_json(baseline, expected["read"])})
    return status


if __name__ == "__main__":
    sys.exit(main())
