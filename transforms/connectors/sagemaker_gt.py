"""SageMaker Ground Truth worker responses -> annotation events v2 (a one-off pull of the job's output files).

Ground Truth writes every worker's answer on a data object to
    <output>/<job name>/annotations/worker-response/iteration-<N>/<data object index>/<timestamp>.json
as {"answers": [{"acceptanceTime", "answerContent": {<element name>: <element output>}, "submissionTime",
"timeSpentInSeconds", "workerId", "workerMetadata": {"identityData": {...}}}]}
(https://docs.aws.amazon.com/sagemaker/latest/dg/sms-data-output.html). The element outputs read are those
of the crowd HTML elements <crowd-classifier> ({"label": "..."}) and <crowd-classifier-multi-select>
({"labels": [...]}), also used by the built-in (multi-label) image/text classification tasks
(https://docs.aws.amazon.com/sagemaker/latest/dg/sms-ui-template-crowd-classifier.html,
https://docs.aws.amazon.com/sagemaker/latest/dg/sms-ui-template-crowd-classifier-multi-select.html).
Ground Truth documents no rating element, so `score` stays null and any other output is a dead letter.

    data object index (path; else the file's dataObjectId) -> item_id
    workerId (already opaque)                -> annotator_id "sagemaker-worker-<workerId>"
                                                (workerMetadata, the worker's identity, is never read)
    answerContent[--label-key] {"label"}     -> label
    answerContent[--label-key] {"labels"}    -> labels (sorted), label null
    submissionTime                           -> event_time (epoch ms); revision (seconds since 2019)
    timeSpentInSeconds                       -> duration_ms
    job name, iteration, data object index   -> metadata
    event_id = sha256("sagemaker-gt:<job>:<iteration>:<index>:<workerId>:<submissionTime in µs>")

An answer without the key or with another kind of output is a rejection with a reason and a DELETE of
that worker's vote on the item; one without item, worker or time is a rejection only.
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from labelbeam.transforms.connectors.label_studio import (
    BAD_TIMESTAMP,
    MISSING_ANNOTATOR,
    MISSING_ITEM_KEY,
    NO_ANSWER,
    PullPlan,
    parse_time_us,
)
from labelbeam.transforms.connectors.one_off import OneOffSource, digest, make_event, plan_one_off, rejection

SOURCE = "sagemaker-gt"
UNSUPPORTED_ANSWER_TYPE = "UNSUPPORTED_ANSWER_TYPE"
MALFORMED_RESPONSE = "MALFORMED_RESPONSE"
_LAYOUT = re.compile(r"(?:^|/)(?:(?:(?P<job>[^/]+)/annotations/)?worker-response/)?(?P<iteration>iteration-\d+)/"
                     r"(?P<index>[^/]+)/[^/]+\.json$")


def display_path(absolute: str, relative: str) -> str:
    """The name a response file goes by in ids and rejections: from its job folder on when the path has the
    Ground Truth layout (the same whichever folder --responses names), else `relative`."""
    absolute = absolute.replace("\\", "/")
    match = _LAYOUT.search(absolute)
    return absolute[match.start():].lstrip("/") if match else relative


def location(path: str) -> dict[str, str | None]:
    """The job name, iteration and data object index a worker-response path names (None where it does not)."""
    match = _LAYOUT.search(path.replace("\\", "/"))
    if match is None:
        return {"job": None, "iteration": None, "index": None}
    return {"job": match["job"], "iteration": match["iteration"], "index": match["index"]}


def _is_vote(value: Any) -> bool:
    return isinstance(value, dict) and ("label" in value or "labels" in value)


def choose_label_key(responses: list[tuple[str, Any]], label_key: str | None) -> str:
    """`label_key`, else the only answerContent key whose output is a classifier's. Raises ValueError."""
    if label_key is not None:
        return label_key
    keys = {key for _, content in responses if isinstance(content, dict)
            for answer in content.get("answers") or [] if isinstance(answer, dict)
            for key, value in (answer.get("answerContent") or {}).items() if _is_vote(value)}
    if len(keys) != 1:
        raise ValueError(f"the responses have {len(keys)} classifier outputs ({', '.join(sorted(keys)) or 'none'}); "
                         "choose one with --label-key")
    return keys.pop()


def read_answer(content: Any, key: str) -> tuple[dict[str, Any] | None, str, str]:
    if not isinstance(content, dict) or key not in content:
        keys = sorted(content) if isinstance(content, dict) else []
        return None, NO_ANSWER, f"answerContent has no {key!r} (keys: {', '.join(keys) or 'none'})"
    value = content[key]
    if isinstance(value, dict) and "label" in value:
        label = value["label"]
        if not isinstance(label, str) or not label:
            return None, UNSUPPORTED_ANSWER_TYPE, f"{key}.label {label!r} is not a non-empty string"
        return {"label": label, "labels": [], "score": None}, "", ""
    if isinstance(value, dict) and "labels" in value:
        labels = value["labels"]
        if not isinstance(labels, list) or not all(isinstance(x, str) and x for x in labels):
            return None, UNSUPPORTED_ANSWER_TYPE, f"{key}.labels {labels!r} is not a list of non-empty strings"
        if not labels:
            return None, NO_ANSWER, f"no label selected in {key!r}"
        return {"label": None, "labels": sorted(set(labels)), "score": None}, "", ""
    shape = sorted(value) if isinstance(value, dict) else type(value).__name__
    return None, UNSUPPORTED_ANSWER_TYPE, f"{key!r} is not a crowd-classifier output ({{label}} or {{labels}}): " \
        f"{shape}"


def map_responses(responses: Iterable[tuple[str, Any]], dataset: str,
                  key: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, int]]:
    """(relative path, parsed JSON) of each worker-response file -> events and rejections."""
    events, rejections = [], []
    items, answers = set(), 0
    for path, content in responses:
        where = location(path)
        if not isinstance(content, dict) or not isinstance(content.get("answers"), list):
            rejections.append(rejection(SOURCE, MALFORMED_RESPONSE, 'not {"answers": [...]}',
                                        {"file": path}, None))
            continue
        index = where["index"] if where["index"] is not None else content.get("dataObjectId")
        item = str(index) if isinstance(index, str | int) and not isinstance(index, bool) and index != "" else None
        for position, answer in enumerate(content["answers"]):
            answers += 1
            if not isinstance(answer, dict):
                rejections.append(rejection(SOURCE, MALFORMED_RESPONSE, "an answer is not an object",
                                            {"file": path, "answer": position}, None))
                continue
            worker = answer.get("workerId")
            annotator = f"sagemaker-worker-{worker}" if isinstance(worker, str) and worker else None
            submitted = answer.get("submissionTime")
            time_us = parse_time_us(submitted)
            ids = {"file": path, "answer": position, "item_id": item, "annotator_id": annotator}
            raw = {"answerContent": answer.get("answerContent"), "submissionTime": submitted,
                   "timeSpentInSeconds": answer.get("timeSpentInSeconds")}   # never workerMetadata
            if time_us is None:
                rejections.append(rejection(SOURCE, BAD_TIMESTAMP, f"submissionTime {submitted!r} is not ISO 8601",
                                            ids, raw))
                continue
            if item is None:
                rejections.append(rejection(SOURCE, MISSING_ITEM_KEY, "neither the path (worker-response/"
                                            "iteration-N/<index>/) nor the file names a data object", ids, raw))
                continue
            if annotator is None:
                rejections.append(rejection(SOURCE, MISSING_ANNOTATOR, "workerId is missing", ids, raw))
                continue
            items.add(item)
            vote, reason, detail = read_answer(answer.get("answerContent"), key)
            if vote is None:
                rejections.append(rejection(SOURCE, reason, detail, ids, raw))
            spent = answer.get("timeSpentInSeconds")
            duration_ms = (round(spent * 1000) if isinstance(spent, int | float) and not isinstance(spent, bool)
                           and spent >= 0 else None)
            metadata = {"source": SOURCE, "data_object": item, "label_key": key,
                        **{name: where[name] for name in ("job", "iteration") if where[name] is not None}}
            events.append(make_event(dataset, item, annotator,
                                     digest(SOURCE, where["job"], where["iteration"], item, worker, time_us),
                                     time_us, vote, duration_ms, metadata))
    return events, rejections, {"tasks": len(items), "annotations": answers}


def plan_pull(responses: list[tuple[str, Any]], dataset: str, label_key: str | None,
              checkpoint: dict[str, Any] | None) -> PullPlan:
    key = choose_label_key(responses, label_key)
    source = OneOffSource(SOURCE, dataset, (("label_key", key),))
    events, rejections, counts = map_responses(responses, dataset, key)
    return plan_one_off(events, rejections, source, checkpoint, counts)
