"""--as-of builds a snapshot: events stamped after it are left out (counted), so a given night's build
does not change when later events arrive."""
import datetime as dt
import hashlib
import pathlib

import pytest
from event_builders import DATASET, T0, event, write_jsonl

from labelbeam.pipelines.build import run_build
from labelbeam.pipelines.errors import UserError
from labelbeam.pipelines.options import BuildConfig
from labelbeam.transforms.events.parser import format_event_time_cutoff

BEAM_ARGS = ["--runner=FnApiRunner"]
HOUR_MS = 3_600_000
AS_OF = format_event_time_cutoff(T0 + 10 * HOUR_MS)


def before_events() -> list[dict]:
    return [event("b1", item="i1", annotator="a1", label="cat", time_ms=T0),
            event("b2", item="i1", annotator="a2", label="cat", time_ms=T0 + HOUR_MS),
            event("b3", item="i2", annotator="a1", label="dog", time_ms=T0 + 2 * HOUR_MS),
            event("b3", item="i2", annotator="a1", label="dog", time_ms=T0 + 2 * HOUR_MS),   # a transport retry
            event("b4", item="i2", annotator="a2", label=None, action="DELETE", time_ms=T0 + 3 * HOUR_MS)]


def later_events() -> list[dict]:
    # Stamped after the as-of time: a new vote, a change of mind, a withdrawal, and one with an unknown
    # label that a later build will judge.
    return [event("l1", item="i3", annotator="a1", label="cat", time_ms=T0 + 11 * HOUR_MS),
            event("l2", item="i1", annotator="a1", label="dog", time_ms=T0 + 12 * HOUR_MS),
            event("l3", item="i1", annotator="a2", label=None, action="DELETE", time_ms=T0 + 13 * HOUR_MS),
            event("l4", item="i2", annotator="a3", label="zebra", time_ms=T0 + 14 * HOUR_MS)]


def build(tmp_path, inputs: list[str], **overrides):
    config = BuildConfig(inputs=tuple(inputs), output=str(tmp_path / "out"), dataset=DATASET,
                         labels=("cat", "dog"), **overrides)
    return run_build(config, BEAM_ARGS)


def labels_sha(outcome) -> str:
    [entry] = [e for e in outcome.manifest["files"] if e["path"].startswith("labels/")]
    return hashlib.sha256((pathlib.Path(outcome.version_dir) / entry["path"]).read_bytes()).hexdigest()


def test_as_of_leaves_out_later_events_and_counts_them(tmp_path):
    inputs = [write_jsonl(tmp_path / "a.jsonl", before_events() + later_events())]
    outcome = build(tmp_path, inputs, as_of=AS_OF)
    counts = outcome.manifest["counts"]
    assert counts["after_as_of"] == 4
    assert counts["read"] == 5 and counts["read"] + counts["after_as_of"] == 9
    assert counts["read"] == counts["valid"] + counts["invalid"] + counts["duplicates"]
    assert (counts["invalid"], counts["duplicates"], counts["votes"], counts["deleted"]) == (0, 1, 3, 1)
    assert outcome.manifest["params"]["as_of"] == AS_OF


def test_a_nights_build_is_the_same_when_later_events_arrive(tmp_path):
    first_file = write_jsonl(tmp_path / "a.jsonl", before_events())
    first = build(tmp_path, [first_file], as_of=AS_OF)
    later_file = write_jsonl(tmp_path / "b.jsonl", later_events())
    again = build(tmp_path, [first_file, later_file], as_of=AS_OF)
    assert again.published and again.version == first.version + 1   # the inputs changed...
    assert labels_sha(again) == labels_sha(first)                   # ...the snapshot did not
    assert {k: v for k, v in again.manifest["counts"].items() if k != "after_as_of"} == \
        {k: v for k, v in first.manifest["counts"].items() if k != "after_as_of"}
    without_as_of = build(tmp_path, [first_file, later_file])
    assert labels_sha(without_as_of) != labels_sha(first)             # the later events do matter otherwise


def test_an_as_of_that_does_not_parse_is_a_user_error(tmp_path):
    inputs = [write_jsonl(tmp_path / "a.jsonl", before_events())]
    with pytest.raises(UserError, match="--as-of"):
        build(tmp_path, inputs, as_of="last tuesday")


def write_partitioned(log: pathlib.Path, events: list[dict]) -> None:
    """Events into dt=/hr= partitions of their event hour, as `labelbeam ingest` lays out its log."""
    by_hour: dict[str, list[dict]] = {}
    for e in events:
        hour = dt.datetime.fromtimestamp(e["event_time"] // 1000 // 3600 * 3600, dt.timezone.utc)
        by_hour.setdefault(hour.strftime("dt=%Y-%m-%d/hr=%H"), []).append(e)
    for partition, part in by_hour.items():
        (log / partition).mkdir(parents=True, exist_ok=True)
        write_jsonl(log / partition / f"part-{len(list((log / partition).iterdir())):03d}.jsonl", part)


def test_a_nights_build_over_a_partitioned_log_publishes_once_when_later_partitions_arrive(tmp_path):
    log = tmp_path / "log" / "events"
    write_partitioned(log, before_events())
    first = build(tmp_path, [str(log)], as_of=AS_OF)
    assert first.published and first.manifest["counts"]["after_as_of"] == 0
    write_partitioned(log, later_events())        # all in partitions after AS_OF
    again = build(tmp_path, [str(log)], as_of=AS_OF)
    assert not again.published and again.version == first.version   # up to date: same inputs
    late = event("b5", item="i1", annotator="a3", label="dog", time_ms=T0 + 9 * HOUR_MS)
    write_partitioned(log, [late])                # a late arrival inside the snapshot does count
    third = build(tmp_path, [str(log)], as_of=AS_OF)
    assert third.published and third.manifest["counts"]["read"] == first.manifest["counts"]["read"] + 1


def test_only_later_partitions_is_a_user_error(tmp_path):
    log = tmp_path / "log" / "events"
    write_partitioned(log, later_events())
    with pytest.raises(UserError, match="after the --as-of time"):
        build(tmp_path, [str(log)], as_of=AS_OF)


def test_a_relative_as_of_is_resolved_once_and_recorded(tmp_path):
    inputs = [write_jsonl(tmp_path / "a.jsonl", before_events())]
    outcome = build(tmp_path, inputs, as_of="today")
    today = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT00:00:00Z")
    assert outcome.manifest["params"]["as_of"] == today     # resolved, not "today"
