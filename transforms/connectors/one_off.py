"""What the one-off export connectors (labelbox, sagemaker_gt) share: the source identity, deterministic ids,
contract-v2 events, rejections, and the plan of what a pull writes.

An export has no "since" to ask for, so the checkpoint is the set of event and rejection ids already
written, and a second pull of the same file writes nothing.
"""
from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable
from typing import Any

from labelbeam.transforms.connectors.label_studio import CHECKPOINT_FORMAT, PullPlan, revision_at


@dataclasses.dataclass(frozen=True)
class OneOffSource:
    """A one-off export's mapping: the tool, the dataset, and the options that change the events."""
    tool: str
    dataset: str
    options: tuple[tuple[str, Any], ...] = ()

    def identity(self) -> dict[str, Any]:
        return {"tool": self.tool, "dataset": self.dataset, **dict(self.options)}


def digest(*parts: Any) -> str:
    """sha256 of the parts joined by ':' (deterministic ids for events and rejections)."""
    return hashlib.sha256(":".join(str(part) for part in parts).encode("utf-8")).hexdigest()


def make_event(dataset: str, item_id: str, annotator: str, event_id: str, time_us: int,
               answer: dict[str, Any] | None, duration_ms: int | None, metadata: dict[str, str]) -> dict[str, Any]:
    """One contract-v2 event: UPSERT of `answer` ({label, labels, score}), or a DELETE when it is None."""
    time_ms = time_us // 1000
    return {"schema_version": 2, "event_id": event_id, "dataset": dataset, "item_id": item_id,
            "annotator_id": annotator, "action": "UPSERT" if answer else "DELETE",
            **(answer or {"label": None, "labels": [], "score": None}),
            "event_time": time_ms, "revision": revision_at(time_ms),
            "duration_ms": duration_ms if answer else None, "confidence": None,
            "metadata": {key: str(value) for key, value in metadata.items()}}


def rejection(source: str, reason: str, detail: str, ids: dict[str, Any], raw: Any) -> dict[str, Any]:
    """A dead letter: the reason, the ids that locate it, the safe part of the raw record, a stable id."""
    ids = {key: (None if value is None else str(value)) for key, value in ids.items()}
    return {"rejection_id": digest(source, reason, *(f"{k}={v}" for k, v in sorted(ids.items()))),
            "source": source, "reason": reason, "detail": detail, **ids, "raw": raw}


def plan_one_off(events: Iterable[dict[str, Any]], rejections: Iterable[dict[str, Any]], source: OneOffSource,
                 checkpoint: dict[str, Any] | None, counts: dict[str, int]) -> PullPlan:
    """What to write of a one-off export's events and rejections: those whose ids the checkpoint has not seen.

    Raises ValueError if the checkpoint was written by another tool, dataset or mapping option."""
    if checkpoint is not None and checkpoint.get("source") != source.identity():
        raise ValueError(f"the checkpoint was written by a pull of {checkpoint.get('source')}, not of "
                         f"{source.identity()}; pull into a new directory")
    seen = set((checkpoint or {}).get("seen", ()))
    all_events = {event["event_id"]: event for event in events}
    all_rejections = {record["rejection_id"]: record for record in rejections}
    new_events = [all_events[key] for key in sorted(all_events) if key not in seen]
    new_rejections = [all_rejections[key] for key in sorted(all_rejections) if key not in seen]
    counts = {"tasks": 0, "annotations": 0, **counts,
              "unchanged": len(all_events.keys() & seen) + len(all_rejections.keys() & seen), "removed": 0,
              "upserts": sum(event["action"] == "UPSERT" for event in new_events),
              "deletes": sum(event["action"] == "DELETE" for event in new_events),
              "rejected": len(new_rejections)}
    next_checkpoint = {"format": CHECKPOINT_FORMAT, "source": source.identity(),
                       "seen": sorted(seen | all_events.keys() | all_rejections.keys())}
    return PullPlan(new_events, new_rejections, next_checkpoint, counts)
