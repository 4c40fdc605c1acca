"""The optional write-audit-publish gates: dead letters per reason, mean agreement, label drift."""
import pytest

from labelbeam.transforms.events.conservation import label_drift, quality_gate


def candidate(read=100, by_reason=None, agreement=0.8, distribution=None) -> dict:
    return {"counts": {"read": read}, "dead_letters": {"by_reason": by_reason or {}},
            "agreement": {"mean": agreement, "items": 10}, "label_distribution": distribution or {"cat": 5, "dog": 5}}


def test_label_drift_is_the_total_variation_distance_of_the_label_shares():
    assert label_drift({"cat": 5, "dog": 5}, {"cat": 50, "dog": 50}) == 0.0
    assert label_drift({"cat": 10}, {"dog": 3}) == 1.0
    assert label_drift({"cat": 3, "dog": 1}, {"cat": 1, "dog": 1}) == pytest.approx(0.25)
    assert label_drift({}, {"cat": 1}) is None


def test_no_limits_means_no_problems_and_nothing_measured():
    assert quality_gate(candidate(), {"cat": 1}, {}, None, None) == ([], {})


def test_a_reason_above_its_share_fails_and_says_by_how_much():
    problems, measured = quality_gate(candidate(by_reason={"UNKNOWN_LABEL": 12, "MALFORMED_JSON": 1}), None,
                                      {"UNKNOWN_LABEL": 0.1, "MALFORMED_JSON": 0.05}, None, None)
    assert problems == ["UNKNOWN_LABEL share 0.12 (12 of read 100) is above --max-dead-letter-share UNKNOWN_LABEL=0.1"]
    assert measured == {"MALFORMED_JSON_share": {"value": 0.01, "max": 0.05},
                        "UNKNOWN_LABEL_share": {"value": 0.12, "max": 0.1}}


def test_low_agreement_fails_and_an_agreement_free_candidate_is_not_judged():
    problems, measured = quality_gate(candidate(agreement=0.55), None, {}, 0.6, None)
    assert len(problems) == 1 and "mean agreement 0.55 is below --min-agreement 0.6 (by 0.05)" in problems[0]
    assert measured == {"agreement": {"value": 0.55, "min": 0.6}}
    assert quality_gate(candidate(agreement=None), None, {}, 0.6, None) == ([], {})


def test_drift_is_judged_against_the_previous_version_and_skipped_for_a_first_one():
    drifted = candidate(distribution={"cat": 9, "dog": 1})
    problems, measured = quality_gate(drifted, {"cat": 5, "dog": 5}, {}, None, 0.2)
    assert len(problems) == 1 and "drifted 0.4" in problems[0] and "--max-label-drift 0.2" in problems[0]
    assert measured["label_drift"] == {"value": pytest.approx(0.4), "max": 0.2}
    assert quality_gate(drifted, None, {}, None, 0.2) == ([], {})
