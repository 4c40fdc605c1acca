"""A run's event counts: how they add up (conservation) and when they are fit to publish (the gate).

Pure functions of the counts the pipeline reports; the launcher decides with them, so a refused build
is an exit code of its own (3) on every runner, not a failed job.
"""
from __future__ import annotations

from collections.abc import Iterable

COUNT_KEYS = ("read", "valid", "invalid", "duplicates", "superseded", "deleted", "votes", "items",
              "unknown_fields_dropped", "after_as_of")
DECIDED_STATUSES = ("ok", "tie")
GATE_FAILED = "publish gate failed"  # every GateError message starts with it


class GateError(RuntimeError):
    """A build was refused: nothing was published (its dead letters stay in quarantine)."""


class ConservationError(GateError):
    """The run's counts do not add up: a bug lost or invented events. Nothing is published."""


class PublishGateError(GateError):
    """The run's data is not fit to publish (no usable votes, too many invalid events). Nothing is published."""


def sum_counts(parts: Iterable[dict[str, int]]) -> dict[str, int]:
    """Counts summed by key; every COUNT_KEYS key is present (0 when no part has it)."""
    total = {key: 0 for key in COUNT_KEYS}
    for part in parts:
        for key, value in part.items():
            total[key] = total.get(key, 0) + value
    return total


def format_counts(counts: dict[str, int]) -> str:
    """The first conservation identity as a run summary shows it (a missing key counts 0)."""
    return "read {read} = valid {valid} + invalid {invalid} + duplicates {duplicates}".format(
        **{key: counts.get(key, 0) for key in ("read", "valid", "invalid", "duplicates")})


def check_conservation(counts: dict[str, int]) -> None:
    """read = valid + invalid + duplicates and valid = votes + superseded + deleted, or ConservationError."""
    read_side = counts["valid"] + counts["invalid"] + counts["duplicates"]
    vote_side = counts["votes"] + counts["superseded"] + counts["deleted"]
    if counts["read"] != read_side or counts["valid"] != vote_side:
        raise ConservationError(f"{GATE_FAILED}, nothing published: counts do not add up: {counts}")


def invalid_share(counts: dict[str, int]) -> float:
    return counts["invalid"] / counts["read"] if counts["read"] else 0.0


def publish_gate(counts: dict[str, int], max_invalid_share: float,
                 status: dict[str, int] | None = None) -> list[str]:
    """The reasons not to publish a run with these counts and consensus statuses (none: publish).

    A run needs usable votes: counts["votes"] > 0 and, if `status` (rows per consensus status) is
    given, some row decided (`ok` or `tie`). Its invalid share (invalid / read) may be at most
    `max_invalid_share`.
    """
    problems = []
    decided = sum((status or {}).get(name, 0) for name in DECIDED_STATUSES)
    if counts["votes"] == 0:
        problems.append(f"no usable votes: 0 votes among {counts['read']} events read")
    elif status is not None and decided == 0:
        statuses = ", ".join(f"{name} {rows}" for name, rows in sorted(status.items())) or "no rows"
        problems.append(f"no usable votes: {counts['votes']} votes but no item has status ok or tie ({statuses})")
    share = invalid_share(counts)
    if share > max_invalid_share:
        problems.append(f"invalid share {share:.4g} (invalid {counts['invalid']} of read {counts['read']}) "
                        f"is above --max-invalid-share {max_invalid_share:g}")
    return problems


def label_drift(current: dict[str, int], previous: dict[str, int]) -> float | None:
    """How far two label distributions (rows per consensus label) are apart: the total variation distance,
    half the sum of the differences in share; 0 = the same shares, 1 = no label in common. None if
    either has no rows."""
    current_rows, previous_rows = sum(current.values()), sum(previous.values())
    if not current_rows or not previous_rows:
        return None
    labels = set(current) | set(previous)
    return 0.5 * sum(abs(current.get(label, 0) / current_rows - previous.get(label, 0) / previous_rows)
                     for label in labels)


def quality_gate(candidate: dict, previous_distribution: dict[str, int] | None,
                 max_reason_shares: dict[str, float], min_agreement: float | None,
                 max_label_drift: float | None) -> tuple[list[str], dict]:
    """The write-audit-publish checks a user asked for, on a candidate manifest: (problems, measured).

    - max_reason_shares: per dead-letter reason, the most of the events read it may take;
    - min_agreement: the least mean per-item agreement (skipped when no item has one);
    - max_label_drift: the most the label distribution may move from the previous version's (label_drift;
      skipped for a first version).
    `measured` holds each checked figure next to its limit, for the manifest.
    """
    problems, measured = [], {}
    read = candidate["counts"]["read"]
    by_reason = candidate.get("dead_letters", {}).get("by_reason", {})
    for reason, limit in sorted(max_reason_shares.items()):
        share = by_reason.get(reason, 0) / read if read else 0.0
        measured[f"{reason}_share"] = {"value": share, "max": limit}
        if share > limit:
            problems.append(f"{reason} share {share:.4g} ({by_reason.get(reason, 0)} of read {read}) is above "
                            f"--max-dead-letter-share {reason}={limit:g}")
    agreement = (candidate.get("agreement") or {}).get("mean")
    if min_agreement is not None and agreement is not None:
        measured["agreement"] = {"value": agreement, "min": min_agreement}
        if agreement < min_agreement:
            problems.append(f"mean agreement {agreement:.4g} is below --min-agreement {min_agreement:g} "
                            f"(by {min_agreement - agreement:.4g})")
    drift = None if previous_distribution is None else \
        label_drift(candidate.get("label_distribution", {}), previous_distribution)
    if max_label_drift is not None and drift is not None:
        measured["label_drift"] = {"value": drift, "max": max_label_drift}
        if drift > max_label_drift:
            problems.append(f"label distribution drifted {drift:.4g} (total variation) from the previous "
                            f"version, above --max-label-drift {max_label_drift:g}")
    return problems, measured
