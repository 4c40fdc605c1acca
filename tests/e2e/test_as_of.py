"""--as-of builds a snapshot: events stamped after it are left out (counted), so a given night's build
does not change when later events arrive."""
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
