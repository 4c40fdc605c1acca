"""Label Studio tasks (JSON export format) -> annotation events v2, given what the last pull saw.

One annotation *state* (annotation id, `updated_at`) maps to exactly one event, whose `event_id` is
sha256("label-studio:<project>:<annotation id>:<updated_at in µs>"): pulling the same state again
gives the same event, byte for byte, which the build counts as a duplicate. Mapping:

    task id (or task data[--item-key])       -> item_id
    annotation completed_by (user id)        -> annotator_id "label-studio-user-<id>"
    result of the chosen control:
        choices, one selected (single mode)  -> label
        choices, several (or multiple mode)  -> labels (sorted), label null
        rating                               -> score
    was_cancelled (skipped)                  -> DELETE for (item, annotator)
    annotation gone since the last pull      -> DELETE for (item, annotator) (see `plan_pull`)
    updated_at                               -> event_time (epoch ms); revision (whole seconds since
                                                2019-01-01, an Avro int until 2087)
    lead_time (seconds)                      -> duration_ms
    project / task / annotation ids          -> metadata {source, project, task, annotation}

An annotation whose answer cannot be read (no result for the control, an unsupported result type, no
choice selected) becomes a rejection with a reason, and also a DELETE, so an older vote of that annotator
never stands in for it. One with no item or annotator to key it by becomes a rejection only.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterable
from typing import Any

SOURCE = "label-studio"
SUPPORTED_CONTROLS = ("Choices", "Rating")
REVISION_EPOCH_S = 1_546_300_800  # 2019-01-01T00:00:00Z, before Label Studio's first release
CHECKPOINT_FORMAT = 1

# What a rejection keeps of the annotation: enough to see why it was refused, and no personal data (Label
# Studio's export also carries `created_username`, the annotator's name and email).
REJECTION_FIELDS = ("id", "result", "completed_by", "was_cancelled", "updated_at", "created_at", "lead_time")

# Rejection reasons
NO_ANSWER = "NO_ANSWER"                          # no result for the chosen control, or no choice in it
UNSUPPORTED_RESULT_TYPE = "UNSUPPORTED_RESULT_TYPE"
MISSING_ITEM_KEY = "MISSING_ITEM_KEY"            # --item-key names a field the task's data lacks
MISSING_ANNOTATOR = "MISSING_ANNOTATOR"          # completed_by is null
BAD_TIMESTAMP = "BAD_TIMESTAMP"                  # updated_at (and created_at) missing or not ISO 8601


@dataclasses.dataclass(frozen=True)
class Control:
    """A control tag of a project's labeling config: <Choices name=...> or <Rating name=...>."""
    name: str
    tag: str                 # "Choices" | "Rating" | any other control tag
    multiple: bool = False   # Choices choice="multiple"


@dataclasses.dataclass(frozen=True)
class PullSource:
    """What a pull maps: the project, the dataset its events belong to, the control read, the item key."""
    project: int
    dataset: str
    control: Control
    item_key: str | None = None   # None: the task id

    def identity(self) -> dict[str, Any]:
        """The fields a checkpoint records: a later pull with other values would mix two mappings."""
        return {"project": self.project, "dataset": self.dataset, "from_name": self.control.name,
                "item_key": self.item_key}


@dataclasses.dataclass(frozen=True)
class PullPlan:
    """What one pull writes: events (sorted by event_id), rejections (sorted), the next checkpoint, counts."""
    events: list[dict[str, Any]]
    rejections: list[dict[str, Any]]
    checkpoint: dict[str, Any]
    counts: dict[str, int]


def parse_controls(label_config: str) -> list[Control]:
    """Every tag with a `name` and a `toName` in a labeling config, in document order.

    Raises ValueError if the config is not XML."""
    try:
        root = ElementTree.fromstring(label_config)
    except ElementTree.ParseError as err:
        raise ValueError(f"the project's label_config is not valid XML: {err}") from None
    return [Control(element.attrib["name"], element.tag,
                    element.attrib.get("choice", "single").lower() == "multiple")
            for element in root.iter() if "name" in element.attrib and "toName" in element.attrib]


def controls_in_results(tasks: list[dict[str, Any]]) -> list[Control]:
    """The controls a JSON export's results name, for an export read without its project's labeling config:
    `from_name` with its result `type` (choices, rating) as the tag, in order of first use."""
    found: dict[str, Control] = {}
    for task in tasks:
        for annotation in task.get("annotations") or ():
            for result in annotation.get("result") or ():
                name, kind = result.get("from_name"), str(result.get("type", ""))
                if isinstance(name, str) and name not in found:
                    found[name] = Control(name, {"choices": "Choices", "rating": "Rating"}.get(kind, kind), False)
    return list(found.values())


def choose_control(controls: list[Control], from_name: str | None) -> Control:
    """The control named `from_name`, else the project's only Choices control (else its only Rating one).

    Raises ValueError naming the candidates when there is none, several, or the named one is unsupported."""
    if from_name is not None:
        named = [control for control in controls if control.name == from_name]
        if not named:
            raise ValueError(f"--from-name {from_name}: the project has no such control; it has "
                             f"{_describe(controls)}")
        if named[0].tag not in SUPPORTED_CONTROLS:
            raise ValueError(f"--from-name {from_name} is a <{named[0].tag}> control; supported: "
                             f"{', '.join(SUPPORTED_CONTROLS)}")
        return named[0]
    for tag in SUPPORTED_CONTROLS:
        candidates = [control for control in controls if control.tag == tag]
        if len(candidates) > 1:
            raise ValueError(f"the project has {len(candidates)} <{tag}> controls "
                             f"({', '.join(c.name for c in candidates)}); choose one with --from-name")
        if candidates:
            return candidates[0]
    raise ValueError(f"the project has no <Choices> or <Rating> control (it has {_describe(controls)})")


def _describe(controls: list[Control]) -> str:
    return ", ".join(f"{c.name} <{c.tag}>" for c in controls) or "no controls"


def parse_time_us(text: Any) -> int | None:
    """Label Studio's ISO 8601 timestamp ("2024-05-01T10:20:30.123456Z") -> epoch µs; None if unreadable.
    A timestamp without a zone is UTC (Label Studio stores UTC)."""
    if not isinstance(text, str):
        return None
    try:
        moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.timezone.utc)
    delta = moment - dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def revision_at(time_ms: int) -> int:
    """Whole seconds since REVISION_EPOCH_S: never decreases with time, so a later change never loses."""
    return max(0, time_ms // 1000 - REVISION_EPOCH_S)


def annotator_id(completed_by: Any) -> str | None:
    """completed_by (a user id, or a user object {"id": ...} in older exports) -> "label-studio-user-<id>"."""
    if isinstance(completed_by, dict):
        completed_by = completed_by.get("id")
    if completed_by is None or isinstance(completed_by, bool) or not isinstance(completed_by, int | str):
        return None
    return f"{SOURCE}-user-{completed_by}"


def item_id_of(task: dict[str, Any], item_key: str | None) -> str | None:
    """The task id as a string, or its data[item_key] (a string or a number); None if absent."""
    if item_key is None:
        return str(task["id"])
    value = (task.get("data") or {}).get(item_key)
    if isinstance(value, bool) or not isinstance(value, str | int | float) or value == "":
        return None
    return str(value)


def event_id(project: int, annotation: Any, updated_us: int, *suffix: Any) -> str:
    text = ":".join(str(part) for part in (SOURCE, project, annotation, updated_us, *suffix))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def read_answer(annotation: dict[str, Any], control: Control) -> tuple[dict[str, Any] | None, str, str]:
    """The vote fields {label, labels, score} of an annotation's result for `control`, or (None, reason,
    detail), and how many results of other controls were left aside (in the detail when rejected)."""
    results = [r for r in annotation.get("result") or [] if isinstance(r, dict)]
    own = [r for r in results if r.get("from_name") == control.name]
    if not own:
        others = sorted({str(r.get("type")) for r in results})
        return None, NO_ANSWER, (f"no result for control {control.name!r}"
                                 + (f" (results of types: {', '.join(others)})" if others else ""))
    if len(own) > 1:
        return None, UNSUPPORTED_RESULT_TYPE, f"{len(own)} results for control {control.name!r} (per-region?)"
    result_type = str(own[0].get("type", "")).lower()
    value = own[0].get("value") or {}
    if result_type == "choices":
        choices = value.get("choices")
        if not isinstance(choices, list) or not all(isinstance(c, str) and c for c in choices):
            return None, UNSUPPORTED_RESULT_TYPE, f"choices value {choices!r} is not a list of non-empty strings"
        if not choices:
            return None, NO_ANSWER, f"no choice selected in control {control.name!r}"
        if len(choices) == 1 and not control.multiple:
            return {"label": choices[0], "labels": [], "score": None}, "", ""
        return {"label": None, "labels": sorted(set(choices)), "score": None}, "", ""
    if result_type == "rating":
        rating = value.get("rating")
        if isinstance(rating, bool) or not isinstance(rating, int | float):
            return None, UNSUPPORTED_RESULT_TYPE, f"rating value {rating!r} is not a number"
        return {"label": None, "labels": [], "score": float(rating)}, "", ""
    return None, UNSUPPORTED_RESULT_TYPE, f"result type {result_type!r} of control {control.name!r}"


def _event(source: PullSource, key: tuple[str, str], time_ms: int, event_id_: str, answer: dict[str, Any] | None,
           duration_ms: int | None, task: Any, annotation: Any) -> dict[str, Any]:
    item, annotator = key
    return {"schema_version": 2, "event_id": event_id_, "dataset": source.dataset, "item_id": item,
            "annotator_id": annotator, "action": "UPSERT" if answer else "DELETE",
            **(answer or {"label": None, "labels": [], "score": None}),
            "event_time": time_ms, "revision": revision_at(time_ms), "duration_ms": duration_ms if answer else None,
            "confidence": None,
            "metadata": {"source": SOURCE, "project": str(source.project), "task": str(task),
                         "annotation": str(annotation)}}


@dataclasses.dataclass(frozen=True)
class _State:
    """One annotation as this pull sees it."""
    annotation: str
    task: str
    updated_at: str            # as Label Studio sent it: a change of this string is a change
    updated_us: int | None
    key: tuple[str, str] | None
    answer: dict[str, Any] | None
    duration_ms: int | None
    rejection: tuple[str, str] | None
    raw: dict[str, Any]


def _read_state(task: dict[str, Any], annotation: dict[str, Any], source: PullSource) -> _State:
    updated_at = annotation.get("updated_at") or annotation.get("created_at")
    updated_us = parse_time_us(updated_at)
    item = item_id_of(task, source.item_key)
    annotator = annotator_id(annotation.get("completed_by"))
    lead_time = annotation.get("lead_time")
    duration_ms = round(lead_time * 1000) if isinstance(lead_time, int | float) and lead_time >= 0 else None
    answer, rejection = None, None
    if updated_us is None:
        rejection = (BAD_TIMESTAMP, f"updated_at {annotation.get('updated_at')!r} is not an ISO 8601 time")
    elif item is None:
        rejection = (MISSING_ITEM_KEY, f"task data has no string or number field {source.item_key!r}")
    elif annotator is None:
        rejection = (MISSING_ANNOTATOR, "completed_by is null")
    elif not annotation.get("was_cancelled"):
        answer, reason, detail = read_answer(annotation, source.control)
        if answer is None:
            rejection = (reason, detail)
    key = (item, annotator) if updated_us is not None and item is not None and annotator is not None else None
    return _State(str(annotation["id"]), str(task["id"]), str(updated_at), updated_us, key, answer, duration_ms,
                  rejection, {field: annotation[field] for field in REJECTION_FIELDS if field in annotation})


def plan_pull(tasks: Iterable[dict[str, Any]], source: PullSource,
              checkpoint: dict[str, Any] | None) -> PullPlan:
    """Events for what changed in `tasks` (every task of the project, with its annotations) since `checkpoint`
    (None: the first pull), the rejections among the changes, and the checkpoint to save after writing them.

    - a new or changed annotation (its `updated_at` differs) -> its one event (UPSERT, or DELETE when
      skipped or unreadable) and, when unreadable, a rejection;
    - an annotation the checkpoint has and `tasks` lack (deleted, or its task deleted) -> for its
      (item, annotator), one event 1 ms after its last `updated_at`: a DELETE, or, if that annotator still
      has an older annotation on the item, that annotation's event again (so it stands again).
    The result depends only on the two inputs, not on task or annotation order. Raises ValueError if the
    checkpoint was written for another project, dataset, control or item key.
    """
    if checkpoint is not None and checkpoint.get("source") != source.identity():
        raise ValueError(f"the checkpoint was written by a pull of {checkpoint.get('source')}, not of "
                         f"{source.identity()}; pull into a new directory")
    previous: dict[str, list] = (checkpoint or {}).get("annotations", {})
    states = [_read_state(task, annotation, source)
              for task in tasks for annotation in task.get("annotations") or []]
    counts = {"tasks": len({state.task for state in states}), "annotations": len(states), "unchanged": 0,
              "upserts": 0, "deletes": 0, "removed": 0, "rejected": 0}
    events, rejections = [], []
    by_key: dict[tuple[str, str], list[_State]] = {}
    for state in states:
        if state.key is not None:
            by_key.setdefault(state.key, []).append(state)
        before = previous.get(state.annotation)
        if before is not None and before[0] == state.updated_at:
            counts["unchanged"] += 1
            continue
        if state.rejection is not None:
            reason, detail = state.rejection
            rejections.append({"reason": reason, "detail": detail, "project": source.project, "task": state.task,
                               "annotation": state.annotation, "raw": state.raw})
        if state.key is not None:
            events.append(_state_event(state, source, state.updated_us // 1000,
                                       event_id(source.project, state.annotation, state.updated_us)))
    current = {state.annotation for state in states}
    removed_by_key: dict[tuple[str, str], tuple[int, str]] = {}
    for annotation, (_, updated_us, item, annotator, task) in previous.items():
        if annotation in current:
            continue
        counts["removed"] += 1
        if updated_us is not None and item is not None and annotator is not None:
            key = (item, annotator)
            removed_by_key[key] = max(removed_by_key.get(key, (updated_us, annotation, task)),
                                      (updated_us, annotation, task))
    for key, (removed_us, removed_annotation, removed_task) in sorted(removed_by_key.items()):
        standing = max(by_key.get(key, []), key=lambda s: (s.updated_us, _id_order(s.annotation)),
                       default=None)
        if standing is not None and standing.updated_us > removed_us:
            continue  # a newer annotation of the same annotator already wins
        time_ms = removed_us // 1000 + 1
        if standing is None:
            events.append(_event(source, key, time_ms, event_id(source.project, removed_annotation, removed_us,
                                                                "removed"), None, None, removed_task,
                                 removed_annotation))
        else:
            events.append(_state_event(standing, source, time_ms, event_id(
                source.project, removed_annotation, removed_us, "restored", standing.annotation,
                standing.updated_us)))
    events.sort(key=lambda event: event["event_id"])
    rejections.sort(key=lambda rejection: (_id_order(rejection["task"]), _id_order(rejection["annotation"])))
    counts["upserts"] = sum(event["action"] == "UPSERT" for event in events)
    counts["deletes"] = len(events) - counts["upserts"]
    counts["rejected"] = len(rejections)
    next_checkpoint = {"format": CHECKPOINT_FORMAT, "source": source.identity(), "annotations": {
        state.annotation: [state.updated_at, state.updated_us, *(state.key or (None, None)), state.task]
        for state in sorted(states, key=lambda s: _id_order(s.annotation))}}
    return PullPlan(events, rejections, next_checkpoint, counts)


def _id_order(text: str) -> tuple[int, int, str]:
    """Label Studio's numeric ids in numeric order (others after them, by text)."""
    return (0, int(text), "") if text.isdigit() else (1, 0, text)


def _state_event(state: _State, source: PullSource, time_ms: int, event_id_: str) -> dict[str, Any]:
    return _event(source, state.key, time_ms, event_id_, state.answer, state.duration_ms, state.task,
                  state.annotation)
