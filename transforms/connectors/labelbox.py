"""Labelbox export v2 (NDJSON, one data row per line) -> annotation events v2, for a one-off export file.

Export shape (https://docs.labelbox.com/reference/export-quick-reference,
https://docs.labelbox.com/reference/export-image-annotations):
    {"data_row": {"id", "global_key", ...}, "projects": {"<project id>": {"labels": [
        {"id", "label_details": {"created_by" (an email), "created_at", "updated_at", ...},
         "performance_details": {"seconds_to_create", ...},
         "annotations": {"objects": [...], "classifications": [
             {"name", "value", "radio_answer": {"name", "value"}}            # radio
             {"name", "value", "checklist_answers": [{"name", "value"}]}    # checklist
             {"name", "value", "text_answer": {"content"}}]}}]}}}           # free text

Mapping (one label = one event; the chosen classification is --classification, default the export's only
radio/checklist one):

    data_row global_key (else id)          -> item_id
    label_details created_by (an email)    -> annotator_id "labelbox-user-" + sha256(email)[:16]
                                              (the email itself is never written anywhere)
    radio_answer value (else name)         -> label
    checklist_answers values (else names)  -> labels (sorted), label null
    (Labelbox has no rating classification: score stays null)
    label_details updated_at (else created_at) -> event_time (epoch ms); revision (seconds since 2019)
    performance_details seconds_to_create  -> duration_ms
    project / data row / label ids, classification -> metadata
    event_id = sha256("labelbox:<project>:<label id>:<updated_at in µs>")

Dead letters, each with a reason, never dropped: a label without the chosen classification, or whose answer
is not a radio/checklist one (e.g. a text answer), is a rejection and a DELETE of that annotator's vote on the
item (an older vote never stands in for it); objects (bounding boxes, polygons, ...), text classifications
and relationships a label also carries are a rejection beside its vote.

The one-off export helpers (`OneOffSource`, `plan_one_off`, `make_event`) are in one_off.py, shared with
sagemaker_gt.
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

from labelbeam.transforms.connectors.label_studio import (
    BAD_TIMESTAMP,
    MISSING_ANNOTATOR,
    NO_ANSWER,
    PullPlan,
    parse_time_us,
)
from labelbeam.transforms.connectors.one_off import OneOffSource, digest, make_event, plan_one_off, rejection

SOURCE = "labelbox"
UNSUPPORTED_ANNOTATION_TYPE = "UNSUPPORTED_ANNOTATION_TYPE"
VOTE_KINDS = ("radio_answer", "checklist_answers")


# ---- Labelbox ------------------------------------------------------------------------------------------------

def pseudonym(email: Any) -> str | None:
    """created_by (an email) -> "labelbox-user-<first 16 hex of sha256(email)>"; None if absent."""
    if not isinstance(email, str) or not email.strip():
        return None
    return f"{SOURCE}-user-{hashlib.sha256(email.strip().encode('utf-8')).hexdigest()[:16]}"


def _answer_name(answer: Any) -> str | None:
    if not isinstance(answer, dict):
        return None
    value = answer.get("value") or answer.get("name")
    return value if isinstance(value, str) and value else None


def _kind(classification: dict[str, Any]) -> str:
    for kind in (*VOTE_KINDS, "text_answer"):
        if kind in classification:
            return kind
    return "unknown"


def _labels(row: dict[str, Any], project: str | None) -> list[tuple[str, dict[str, Any]]]:
    projects = row.get("projects") or {}
    return [(pid, label) for pid, entry in sorted(projects.items()) if project is None or pid == project
            for label in (entry or {}).get("labels") or [] if isinstance(label, dict)]


def projects_in(rows: list[dict[str, Any]]) -> list[str]:
    return sorted({pid for row in rows for pid in (row.get("projects") or {})})


def choose_classification(rows: list[dict[str, Any]], project: str | None, name: str | None) -> str:
    """`name`, else the export's only radio/checklist classification. Raises ValueError naming the candidates."""
    found: dict[str, str] = {}
    for row in rows:
        for _, label in _labels(row, project):
            for classification in (label.get("annotations") or {}).get("classifications") or []:
                cname = classification.get("name") or classification.get("value")
                if isinstance(cname, str):
                    found.setdefault(cname, _kind(classification))
    if name is not None:
        if name not in found:
            raise ValueError(f"--classification {name}: no label answers it; the export has "
                             f"{_describe(found)}")
        return name
    candidates = sorted(cname for cname, kind in found.items() if kind in VOTE_KINDS)
    if len(candidates) != 1:
        raise ValueError(f"the export has {len(candidates)} radio/checklist classifications ({_describe(found)}); "
                         "choose one with --classification")
    return candidates[0]


def _describe(found: dict[str, str]) -> str:
    return ", ".join(f"{cname} <{kind}>" for cname, kind in sorted(found.items())) or "no classifications"


def read_answer(classifications: list[dict[str, Any]], name: str) -> tuple[dict[str, Any] | None, str, str]:
    """The vote fields {label, labels, score} of the classification `name`, or (None, reason, detail)."""
    own = [c for c in classifications if isinstance(c, dict) and (c.get("name") or c.get("value")) == name]
    if not own:
        return None, NO_ANSWER, f"no answer to classification {name!r}"
    if len(own) > 1:
        return None, UNSUPPORTED_ANNOTATION_TYPE, f"{len(own)} answers to classification {name!r}"
    classification = own[0]
    if "radio_answer" in classification:
        label = _answer_name(classification["radio_answer"])
        if label is None:
            return None, NO_ANSWER, f"radio classification {name!r} has no answer value"
        return {"label": label, "labels": [], "score": None}, "", ""
    if "checklist_answers" in classification:
        answers = classification["checklist_answers"]
        names = [_answer_name(answer) for answer in answers] if isinstance(answers, list) else [None]
        if None in names:
            return None, UNSUPPORTED_ANNOTATION_TYPE, f"checklist {name!r} has an answer without a value"
        if not names:
            return None, NO_ANSWER, f"no option checked in checklist {name!r}"
        return {"label": None, "labels": sorted(set(names)), "score": None}, "", ""
    return None, UNSUPPORTED_ANNOTATION_TYPE, f"classification {name!r} is a {_kind(classification)} (not radio " \
        "or checklist)"


def _safe_classification(classification: Any) -> dict[str, Any]:
    """What a rejection keeps of a classification: its name and kind (text answers may hold anything)."""
    if not isinstance(classification, dict):
        return {"kind": type(classification).__name__}
    return {"name": classification.get("name"), "kind": _kind(classification)}


def _safe_object(obj: Any) -> dict[str, Any]:
    if not isinstance(obj, dict):
        return {"kind": type(obj).__name__}
    return {"name": obj.get("name"), "annotation_kind": obj.get("annotation_kind"),
            "feature_id": obj.get("feature_id")}


def map_rows(rows: Iterable[dict[str, Any]], dataset: str, classification: str,
             project: str | None) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, int]]:
    """Every label of `rows` (of `project`, None: all) -> its event and its rejections (no email in either)."""
    events, rejections = [], []
    data_rows = labels = 0
    for row in rows:
        data_row = row.get("data_row") or {}
        row_labels = _labels(row, project)
        data_rows += bool(row_labels)
        key = data_row.get("global_key") or data_row.get("id")
        item = str(key) if isinstance(key, str | int) and not isinstance(key, bool) and key != "" else None
        for pid, label in row_labels:
            labels += 1
            details = label.get("label_details") or {}
            annotations = label.get("annotations") or {}
            classifications = [c for c in annotations.get("classifications") or []]
            annotator = pseudonym(details.get("created_by"))
            updated_at = details.get("updated_at") or details.get("created_at")
            updated_us = parse_time_us(updated_at)
            ids = {"project": pid, "data_row": data_row.get("id"), "item_id": item, "label": label.get("id"),
                   "annotator_id": annotator}
            raw = {"classifications": [_safe_classification(c) for c in classifications],
                   "objects": [_safe_object(o) for o in annotations.get("objects") or []],
                   "updated_at": updated_at}
            if updated_us is None:
                rejections.append(rejection(SOURCE, BAD_TIMESTAMP, f"updated_at {updated_at!r} is not ISO 8601",
                                            ids, raw))
                continue
            if item is None:
                rejections.append(rejection(SOURCE, "MISSING_ITEM_KEY", "data_row has no global_key or id", ids, raw))
                continue
            if annotator is None:
                rejections.append(rejection(SOURCE, MISSING_ANNOTATOR, "label_details.created_by is missing",
                                            ids, raw))
                continue
            answer, reason, detail = read_answer(classifications, classification)
            if answer is None:
                rejections.append(rejection(SOURCE, reason, detail, ids, raw))
            unsupported = [f"object {o.get('annotation_kind') or o.get('name')!s}" if isinstance(o, dict) else "object"
                           for o in annotations.get("objects") or []]
            unsupported += [f"{_kind(c)} classification {c.get('name')!s}" for c in classifications
                            if isinstance(c, dict) and _kind(c) not in VOTE_KINDS
                            and (c.get("name") or c.get("value")) != classification]
            unsupported += ["relationship"] * len(annotations.get("relationships") or [])
            if unsupported:
                rejections.append(rejection(SOURCE, UNSUPPORTED_ANNOTATION_TYPE,
                                            f"not mapped to votes: {', '.join(unsupported)}",
                                            {**ids, "part": "other-annotations"}, raw))
            seconds = (label.get("performance_details") or {}).get("seconds_to_create")
            duration_ms = (round(seconds * 1000) if isinstance(seconds, int | float) and not isinstance(seconds, bool)
                           and seconds >= 0 else None)
            events.append(make_event(dataset, item, annotator, digest(SOURCE, pid, label.get("id"), updated_us),
                                     updated_us, answer, duration_ms,
                                     {"source": SOURCE, "project": pid, "data_row": data_row.get("id"),
                                      "label": label.get("id"), "classification": classification}))
    return events, rejections, {"tasks": data_rows, "annotations": labels}


def plan_pull(rows: list[dict[str, Any]], dataset: str, project: str | None, classification: str | None,
              checkpoint: dict[str, Any] | None) -> PullPlan:
    """The events and rejections of an export not yet written (per the checkpoint), and the next checkpoint.

    Raises ValueError for an ambiguous project or classification, or a checkpoint of another mapping."""
    if project is None:
        projects = projects_in(rows)
        if len(projects) > 1:
            raise ValueError(f"the export has {len(projects)} projects ({', '.join(projects)}); choose one "
                             "with --project")
        project = projects[0] if projects else None
    name = choose_classification(rows, project, classification)
    source = OneOffSource(SOURCE, dataset, (("project", project), ("classification", name)))
    events, rejections, counts = map_rows(rows, dataset, name, project)
    return plan_one_off(events, rejections, source, checkpoint, counts)
