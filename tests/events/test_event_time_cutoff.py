"""The future-timestamp check compares with a cutoff recorded in the build's params, not the wall clock."""
import dataclasses
import datetime as dt

import orjson
import pytest
from event_builders import chunk, event, v1_event

from labelbeam.pipelines.build import BuildConfig, plan_build
from labelbeam.pipelines.errors import UserError
from labelbeam.transforms.events import dead_letters as dl
from labelbeam.transforms.events.parser import (
    CLOCK_SKEW_MS,
    Accepted,
    EventParser,
    Rejected,
    ValidationRules,
    day_event_time_cutoff,
    format_event_time_cutoff,
    parse_event_time_cutoff,
    resolve_cutoff,
)

BEAM_ARGS = ["--runner=FnApiRunner"]
AFTERNOON = dt.datetime(2026, 3, 5, 17, 42, 10, 500_000, tzinfo=dt.timezone.utc)
MIDNIGHT_MS = int(dt.datetime(2026, 3, 5, tzinfo=dt.timezone.utc).timestamp() * 1000)


def config(**overrides) -> BuildConfig:
    return BuildConfig(inputs=("events.jsonl",), output="out", dataset="pets", **overrides)


def with_cutoff(cutoff: str) -> BuildConfig:
    """A BuildConfig with an explicit event_time_cutoff (a field of BuildConfig, or of this subclass)."""
    config_class = dataclasses.make_dataclass("CutoffConfig", [("event_time_cutoff", "str | None", None)],
                                              bases=(BuildConfig,), frozen=True)
    return config_class(inputs=("events.jsonl",), output="out", dataset="pets", event_time_cutoff=cutoff)


def verdict(rules: ValidationRules, event_time_ms: int):
    result = EventParser(rules).parse_one(orjson.dumps(v1_event(event_time=event_time_ms)), None, None, "json")
    return result.reason if isinstance(result, Rejected) else "valid"


def test_the_default_cutoff_is_the_start_of_the_builds_utc_day():
    assert day_event_time_cutoff(AFTERNOON) == "2026-03-05T00:00:00Z"
    local = AFTERNOON.astimezone(dt.timezone(dt.timedelta(hours=9)))  # 2026-03-06 02:42 in UTC+9
    assert day_event_time_cutoff(local) == "2026-03-05T00:00:00Z"


@pytest.mark.parametrize("text", ["2026-03-05", "2026-03-05T00:00:00Z", "2026-03-05T00:00:00.000Z",
                                  "2026-03-05T01:00:00+01:00", "2026-03-05T00:00:00"])
def test_cutoffs_parse_as_utc_milliseconds(text):
    assert parse_event_time_cutoff(text) == MIDNIGHT_MS


def test_cutoffs_format_as_utc_iso_8601_with_milliseconds_only_when_needed():
    assert format_event_time_cutoff(MIDNIGHT_MS) == "2026-03-05T00:00:00Z"
    assert format_event_time_cutoff(MIDNIGHT_MS + 1) == "2026-03-05T00:00:00.001Z"
    assert parse_event_time_cutoff(format_event_time_cutoff(MIDNIGHT_MS + 1)) == MIDNIGHT_MS + 1


@pytest.mark.parametrize("text", ["yesterday", "", "2026-13-01"])
def test_a_cutoff_that_is_not_iso_8601_is_a_value_error(text):
    with pytest.raises(ValueError, match="ISO 8601"):
        parse_event_time_cutoff(text)


def test_events_up_to_one_day_after_the_cutoff_are_valid():
    rules = ValidationRules.at("pets", MIDNIGHT_MS)
    assert verdict(rules, MIDNIGHT_MS + CLOCK_SKEW_MS) == "valid"
    assert verdict(rules, MIDNIGHT_MS + CLOCK_SKEW_MS + 1) == dl.BAD_TIMESTAMP


def test_plan_build_records_the_cutoff_in_params_and_validates_against_it():
    plan = plan_build(config(), BEAM_ARGS, now=AFTERNOON)
    assert plan.params["event_time_cutoff"] == "2026-03-05T00:00:00Z"
    assert plan.rules.max_event_time_ms == MIDNIGHT_MS + CLOCK_SKEW_MS


def test_plans_on_the_same_utc_day_have_equal_params_and_rules():
    morning = plan_build(config(), BEAM_ARGS, now=AFTERNOON.replace(hour=0, minute=0, second=1))
    evening = plan_build(config(), BEAM_ARGS, now=AFTERNOON.replace(hour=23, minute=59, second=59))
    assert (morning.params, morning.rules) == (evening.params, evening.rules)
    tomorrow = plan_build(config(), BEAM_ARGS, now=AFTERNOON + dt.timedelta(days=1))
    assert tomorrow.params["event_time_cutoff"] == "2026-03-06T00:00:00Z"


def test_rebuilding_with_the_recorded_cutoff_gives_the_same_verdicts_on_a_later_day():
    first = plan_build(config(), BEAM_ARGS, now=AFTERNOON)
    later = plan_build(with_cutoff(first.params["event_time_cutoff"]), BEAM_ARGS,
                       now=AFTERNOON + dt.timedelta(days=30))
    assert later.params == first.params
    assert later.rules == first.rules
    late_event_ms = MIDNIGHT_MS + 2 * CLOCK_SKEW_MS
    assert verdict(first.rules, late_event_ms) == verdict(later.rules, late_event_ms) == dl.BAD_TIMESTAMP


def test_an_explicit_cutoff_is_recorded_in_normal_form():
    plan = plan_build(with_cutoff("2026-03-05T01:00:00+01:00"), BEAM_ARGS, now=AFTERNOON)
    assert plan.params["event_time_cutoff"] == "2026-03-05T00:00:00Z"


def test_a_bad_explicit_cutoff_is_a_user_error():
    with pytest.raises(UserError, match="event_time_cutoff"):
        plan_build(with_cutoff("soon"), BEAM_ARGS, now=AFTERNOON)


def test_accepted_values_do_not_depend_on_the_cutoff_within_the_allowance():
    payload = orjson.dumps(v1_event(event_time=MIDNIGHT_MS))
    early = EventParser(ValidationRules.at("pets", MIDNIGHT_MS)).parse_one(payload, None, None, "json")
    late = EventParser(ValidationRules.at("pets", MIDNIGHT_MS + 10 * CLOCK_SKEW_MS)).parse_one(
        payload, None, None, "json")
    assert isinstance(early, Accepted) and early == late


def test_an_as_of_snapshot_takes_events_up_to_its_time_and_counts_later_ones_apart():
    rules = ValidationRules.as_of("pets", "2026-03-01T00:00:00Z")
    as_of_ms = rules.as_of_ms
    events = [event("at", time_ms=as_of_ms), event("after", time_ms=as_of_ms + 1),
              event("after-bad-label", time_ms=as_of_ms + 5, label=""),   # judged by a later build, not this one
              event("before-bad", time_ms=as_of_ms - 1, label="")]
    parsed = EventParser(rules).parse_chunk_with_counts(chunk(events))
    assert [row[0] for row in parsed.columns.rows] == ["at"]
    assert [letter.event_id for letter in parsed.dead] == ["before-bad"]
    assert parsed.after_as_of == 2
    assert rules.event_time_cutoff == "2026-03-01T00:00:00Z"


NOW = dt.datetime(2026, 11, 30, 14, 5, 7, 123000, tzinfo=dt.timezone.utc)


@pytest.mark.parametrize("text, resolved", [
    ("yesterday", "2026-11-29T00:00:00Z"), ("today", "2026-11-30T00:00:00Z"), ("today-1h", "2026-11-29T23:00:00Z"),
    ("now", "2026-11-30T14:05:07Z"), ("now-15m", "2026-11-30T13:50:07Z"), (" Yesterday+6h ", "2026-11-29T06:00:00Z"),
    ("today-2d+30m", "2026-11-28T00:30:00Z"), ("2026-11-29", "2026-11-29T00:00:00Z"),
    ("2026-11-29T05:00:00+02:00", "2026-11-29T03:00:00Z")])
def test_relative_cutoffs_resolve_against_the_runs_clock_and_iso_ones_normalize(text, resolved):
    assert resolve_cutoff(text, NOW) == resolved


def test_a_relative_cutoff_resolves_in_utc_whatever_the_clocks_zone():
    assert resolve_cutoff("today", NOW.astimezone(dt.timezone(dt.timedelta(hours=-8)))) == "2026-11-30T00:00:00Z"


@pytest.mark.parametrize("text", ["tomorrow", "today-1x", "last tuesday", "today 1h", ""])
def test_a_cutoff_neither_iso_nor_relative_is_a_value_error_naming_both_forms(text):
    with pytest.raises(ValueError, match="ISO 8601.*today-1h"):
        resolve_cutoff(text, NOW)
