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
