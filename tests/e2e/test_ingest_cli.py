"""`labelbeam ingest` on a bounded pattern, end to end: the streaming path writes the curated log, and
`labelbeam build` over the log publishes the same consensus as a build from the raw events."""
import datetime as dt
import json
import signal
import subprocess
import sys
import threading
import time

import fastavro
import pyarrow.parquet as pq
import pytest
from event_builders import DATASET, T0, event, write_jsonl

HOUR_MS = 3_600_000


def labelbeam(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "labelbeam.pipelines.cli", *args], capture_output=True, text=True,
                          timeout=600)


def stream_events() -> list[dict]:
    """Six hours of votes with the lifecycle's cases: a transport retry, a revision, a delete, a conflict
    (both copies in one hour, so the log rejects both as a build from raw does), and a malformed line."""
    events = []
    for hour in range(6):
        for item in range(5):
            for annotator in range(3):
                label = ("cat", "dog")[(item + annotator + hour) % 3 == 0]
                events.append(event(f"e-{hour}-{item}-{annotator}", item=f"i{hour}-{item}", annotator=f"a{annotator}",
                                    label=label, time_ms=T0 + hour * HOUR_MS + 60_000 * (item + annotator)))
    events.append(dict(events[0]))                                                      # a transport retry
    events.append(event("rev", item="i0-1", annotator="a0", label="dog", time_ms=T0 + 30 * 60_000, revision=1))
    events.append(event("del", item="i1-2", annotator="a1", label=None, action="DELETE", time_ms=T0 + 90 * 60_000))
    events.append(event("conflict", item="i2-0", annotator="a9", label="cat", time_ms=T0 + 2 * HOUR_MS + 5))
    events.append(event("conflict", item="i2-0", annotator="a9", label="dog", time_ms=T0 + 2 * HOUR_MS + 5))
    return events


@pytest.fixture(scope="module")
def streamed(tmp_path_factory):
    base = tmp_path_factory.mktemp("stream")
    raw = base / "raw"
    raw.mkdir()
    events = stream_events()
    write_jsonl(raw / "a.jsonl", events[: len(events) // 2])
    write_jsonl(raw / "b.jsonl", events[len(events) // 2:])
    with open(raw / "b.jsonl", "ab") as stream:
        stream.write(b"{not json\n")
    result = labelbeam("ingest", "--source", str(raw / "*.jsonl"), "--output", str(base / "log"),
                       "--dataset", DATASET, "--labels", "cat,dog")
    return base, events, result


def test_a_bounded_ingest_ends_by_itself_and_its_counts_add_up(streamed):
    base, events, result = streamed
    assert result.returncode == 0, result.stderr[-3000:]
    [report] = (base / "log" / "_runs").glob("*.json")
    counts = json.loads(report.read_text())
    assert counts["read"] == len(events) + 1
    assert counts["read"] == counts["valid"] + counts["invalid"] + counts["duplicates"]
    assert (counts["invalid"], counts["duplicates"]) == (3, 1)   # malformed + both conflict copies; the retry
    hours = {f"{path.parent.parent.name}/{path.parent.name}"
             for path in (base / "log" / "events").glob("dt=*/hr=*/*.avro")}
    expected = {dt.datetime.fromtimestamp((T0 + hour * HOUR_MS) / 1000, dt.timezone.utc).strftime("dt=%Y-%m-%d/hr=%H")
                for hour in range(6)}
    assert hours == expected  # one partition per event hour, the conflict's hour included
    assert counts["valid"] == sum(1 for _ in read_log(base / "log" / "events"))


def read_log(events_dir):
    for path in sorted(events_dir.glob("dt=*/hr=*/*.avro")):
        with open(path, "rb") as stream:
            yield from fastavro.reader(stream)


def labels_of(root) -> list[dict]:
    [shard] = sorted(root.glob(f"{DATASET}/versions/1/labels/*.parquet"))
    return pq.read_table(shard).to_pylist()


def test_a_build_over_the_log_publishes_what_a_build_from_raw_publishes(streamed):
    base, events, result = streamed
    assert result.returncode == 0, result.stderr[-3000:]
    from_log = labelbeam("build", "--input", str(base / "log" / "events"), "--output", str(base / "from-log"),
                         "--dataset", DATASET, "--labels", "cat,dog")
    from_raw = labelbeam("build", "--input", str(base / "raw"), "--output", str(base / "from-raw"),
                         "--dataset", DATASET, "--labels", "cat,dog")
    assert from_log.returncode == 0, from_log.stderr[-3000:]
    assert from_raw.returncode == 0, from_raw.stderr[-3000:]
    assert labels_of(base / "from-log") == labels_of(base / "from-raw")
    log_counts = json.loads((base / "from-log" / DATASET / "versions" / "1" / "manifest.json").read_text())["counts"]
    raw_counts = json.loads((base / "from-raw" / DATASET / "versions" / "1" / "manifest.json").read_text())["counts"]
    assert (log_counts["votes"], log_counts["superseded"], log_counts["deleted"], log_counts["items"]) == \
        (raw_counts["votes"], raw_counts["superseded"], raw_counts["deleted"], raw_counts["items"])


def as_from_a_terminal() -> None:
    """In the child: SIGINT at its default, as in a shell a user types Ctrl-C into (see test_cli.py)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Watching:
    """`labelbeam ingest --watch` as a child process, its stdout collected line by line."""

    def __init__(self, *args):
        self.process = subprocess.Popen([sys.executable, "-m", "labelbeam.pipelines.cli", "ingest", "--watch", *args],
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                        preexec_fn=as_from_a_terminal)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=lambda: self.lines.extend(self.process.stdout), daemon=True)
        self._reader.start()

    def wait_for(self, text: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in list(self.lines)):
            assert self.process.poll() is None, self.process.stderr.read()[-3000:]
            assert time.monotonic() < deadline, f"no {text!r} in {self.lines}"
            time.sleep(0.1)

    def stop(self, signum: int) -> tuple[int, str]:
        self.process.send_signal(signum)
        returncode = self.process.wait(timeout=300)
        self._reader.join(timeout=10)
        return returncode, self.process.stderr.read()


def test_ingest_watches_a_directory_that_generate_streams_into_and_drains_on_ctrl_c(tmp_path):
    feed, log, labels = tmp_path / "feed", tmp_path / "log", "bird,cat,dog,fish"
    (feed / "events").mkdir(parents=True)
    watching = Watching("--source", str(feed / "events"), "--poll-seconds", "0.2", "--output", str(log),
                        "--dataset", "sample", "--labels", labels)
    watching.wait_for("watching")
    generated = labelbeam("generate", "--stream", "--output", str(feed), "--force", "--events", "1500",
                          "--seconds", "2")
    assert generated.returncode == 0, generated.stderr[-3000:]
    returncode, stderr = watching.stop(signal.SIGINT)   # Ctrl-C: drain, not abort
    assert returncode == 0, stderr[-3000:]
    assert any(line.startswith("draining") for line in watching.lines)
    expected = json.loads((feed / "expected.json").read_text())["expected"]
    [report] = (log / "_runs").glob("*.json")
    counts = json.loads(report.read_text())
    assert {key: counts[key] for key in ("read", "valid", "invalid", "duplicates")} == \
        {key: expected[key] for key in ("read", "valid", "invalid", "duplicates")}
    assert sum(1 for _ in read_log(log / "events")) == expected["valid"]
    # Lines that fail validation are filed under the hour they arrived in (the feed's clock), not "unknown".
    rejected_hours = {path.parent.parent.name for path in (log / "rejected").glob("dt=*/hr=*/*.avro")}
    assert rejected_hours and "dt=unknown" not in rejected_hours

    # The nightly build over the log counts the votes a build from the raw events would.
    as_of = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1)).strftime("%Y-%m-%dT%H:00:00Z")
    built = labelbeam("build", "--input", str(log / "events"), "--output", str(tmp_path / "data"),
                      "--dataset", "sample", "--labels", labels, "--as-of", as_of)
    assert built.returncode == 0, built.stderr[-3000:]
    manifest = json.loads((tmp_path / "data" / "sample" / "versions" / "1" / "manifest.json").read_text())
    assert {key: manifest["counts"][key] for key in ("votes", "superseded", "deleted", "items")} == \
        {key: expected[key] for key in ("votes", "superseded", "deleted", "items")}

    # A second run into the same log skips the files the first one read; SIGTERM drains it too.
    again = Watching("--source", str(feed / "events"), "--output", str(log), "--dataset", "sample", "--labels", labels)
    again.wait_for("watching")
    returncode, stderr = again.stop(signal.SIGTERM)
    assert returncode == 0, stderr[-3000:]
    assert any("read 0 = valid 0 + invalid 0 + duplicates 0" in line for line in again.lines), again.lines


def test_watch_needs_a_local_directory(tmp_path):
    result = labelbeam("ingest", "--watch", "--source", str(tmp_path / "*.jsonl"), "--output", str(tmp_path / "log"),
                       "--dataset", DATASET)
    assert result.returncode == 2
    assert "--watch needs --source to be a local directory" in result.stderr


def test_a_bounded_run_over_nothing_is_refused_like_a_build(tmp_path):
    (tmp_path / "empty").mkdir()
    for source, message in ((str(tmp_path / "nope" / "*.jsonl"), "no file matches"),
                            (str(tmp_path / "empty"), "holds no event files")):
        result = labelbeam("ingest", "--source", source, "--output", str(tmp_path / "log"), "--dataset", DATASET)
        assert result.returncode == 2, result.stderr
        [line] = result.stderr.strip().splitlines()   # one line, no traceback
        assert line.startswith("labelbeam: error: --source: ") and message in line, line
        assert not (tmp_path / "log").exists()
