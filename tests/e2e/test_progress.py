"""Progress of a local run: the reading DoFns count parts and events in this process, and the launcher
shows them as a bar on a terminal or as a line every so often elsewhere."""
import io
import time

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from event_builders import event, write_jsonl

from labelbeam.pipelines.progress import ReadProgress
from labelbeam.transforms.events import progress
from labelbeam.transforms.read import ReadEvents
from labelbeam.transforms.storage.inputs import match_inputs


def test_counters_count_only_runs_someone_follows():
    progress.add(None, parts=1, events=5)          # no launcher: nothing to count
    progress.add("nobody", parts=1)
    assert progress.read("nobody") == (0, 0)
    progress.start("run")
    progress.add("run", events=5)
    progress.add("run", parts=1, events=2)
    assert progress.read("run") == (1, 7)
    progress.finish("run")
    assert progress.read("run") == (0, 0)


def test_reading_on_the_local_runner_counts_every_part_and_event(tmp_path):
    files = match_inputs([write_jsonl(tmp_path / "a.jsonl", [event(f"a{i}") for i in range(30)]),
                          write_jsonl(tmp_path / "b.jsonl", [event(f"b{i}") for i in range(12)])])
    read = ReadEvents(files, range_bytes=1_000, chunk_events=7, progress_run="local")
    progress.start("local")
    with beam.Pipeline(options=PipelineOptions(["--runner=FnApiRunner"])) as pipeline:
        _ = pipeline | read
    assert progress.read("local") == (read.parts, 42) and read.parts > 2
    progress.finish("local")


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_without_a_terminal_a_line_says_how_far_reading_is():
    out = io.StringIO()
    with ReadProgress(4, stream=out, line_every_s=0.05) as run:
        progress.add(run, parts=3, events=1234)
        time.sleep(0.3)
    assert "read 3 of 4 input parts, 1,234 events" in out.getvalue()


def test_on_a_terminal_a_bar_shows_parts_and_events_and_off_shows_nothing():
    terminal = Terminal()
    with ReadProgress(4, stream=terminal) as run:
        progress.add(run, parts=2, events=99)
        time.sleep(1.2)
    assert "reading inputs" in terminal.getvalue() and "2/4" in terminal.getvalue()
    with ReadProgress(4, enabled=False, stream=terminal) as run:
        assert run is None
