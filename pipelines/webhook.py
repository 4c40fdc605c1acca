"""`labelbeam webhook label-studio --dataset D --output DIR [--port P]`: receive Label Studio's annotation
webhooks and write them as event files, the same events a `pull` of the same changes writes.

The receiver keeps a mirror of the project's annotated tasks (DIR/.labelbeam-webhook.mirror): each
ANNOTATION_CREATED / ANNOTATION_UPDATED puts its annotation in the mirror, each ANNOTATIONS_DELETED takes
its annotations out. The mirror is saved first, then mapped with the pull's own `plan_pull` against the
pull's checkpoint, and what changed is written by the pull's `write_changes`: a new
DIR/events/label-studio-<sha256>.jsonl, renamed into place, then the checkpoint. One mapping, so a
webhook and a pull of the same state give the same event ids, and `labelbeam ingest --source DIR/events
--watch` (or a nightly build of DIR) reads what arrives. A crash after the mirror is saved loses nothing:
the next request writes that change with its own.

Every request must carry the header `X-Labelbeam-Secret: <LABELBEAM_WEBHOOK_SECRET>` (Label Studio's
webhook settings take extra headers). Answers: 200 with what was written; 200 "ignored" for other
actions (so Label Studio does not retry them); 400 for a body that is not an annotation webhook; 401 for
a missing or wrong secret. A rejected request changes nothing, and the ones before and after it stand.
"""
from __future__ import annotations

import argparse
import copy
import hmac
import http.server
import json
import os
import threading
from typing import Any

import orjson

from labelbeam.pipelines.errors import UserError
from labelbeam.pipelines.options import check_dataset_name, check_output_root
from labelbeam.pipelines.pull import EVENTS_DIR, read_checkpoint, write_atomically, write_changes
from labelbeam.transforms.connectors import label_studio

SECRET_ENV = "LABELBEAM_WEBHOOK_SECRET"
SECRET_HEADER = "X-Labelbeam-Secret"
MIRROR_FILE = ".labelbeam-webhook.mirror"
UPSERTS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED")
DELETES = "ANNOTATIONS_DELETED"
MAX_BODY_BYTES = 16 * 1024 * 1024


class BadPayload(ValueError):
    """A body that is not an annotation webhook Label Studio sends: answered 400."""


class Receiver:
    """Applies webhook payloads to the mirror and writes what changed, one at a time."""

    def __init__(self, output: str, dataset: str, from_name: str | None = None, item_key: str | None = None):
        self.output, self.dataset, self.from_name, self.item_key = output, dataset, from_name, item_key
        self._lock = threading.Lock()
        path = os.path.join(output, MIRROR_FILE)
        self._mirror: dict[str, Any] = orjson.loads(open(path, "rb").read()) if os.path.exists(path) else \
            {"project": None, "label_config": None, "tasks": {}}

    def apply(self, payload: Any) -> dict[str, Any]:
        if not isinstance(payload, dict) or not isinstance(payload.get("action"), str):
            raise BadPayload("not a Label Studio webhook: no action")
        action = payload["action"]
        if action not in UPSERTS and action != DELETES:
            return {"ignored": action}
        project = payload.get("project")
        project_id = project.get("id") if isinstance(project, dict) else project
        if not isinstance(project_id, int):
            raise BadPayload(f"{action}: no project id")
        with self._lock:
            if self._mirror["project"] not in (None, project_id):
                raise BadPayload(f"{action} of project {project_id}; this receiver follows project "
                                 f"{self._mirror['project']}")
            mirror = copy.deepcopy(self._mirror)  # changed as a copy: a bad payload changes nothing
            mirror["project"] = project_id
            if isinstance(project, dict) and project.get("label_config"):
                mirror["label_config"] = project["label_config"]
            if action in UPSERTS:
                _upsert(mirror, payload)
            else:
                _delete(mirror, payload)
            tasks = list(mirror["tasks"].values())
            try:
                controls = label_studio.parse_controls(mirror["label_config"]) if mirror["label_config"] else \
                    label_studio.controls_in_results(tasks)
                source = label_studio.PullSource(project_id, self.dataset,
                                                 label_studio.choose_control(controls, self.from_name), self.item_key)
                checkpoint = read_checkpoint(self.output)
                plan = label_studio.plan_pull(tasks, source, checkpoint)
            except ValueError as err:
                raise BadPayload(str(err)) from None
            write_atomically(os.path.join(self.output, MIRROR_FILE), orjson.dumps(mirror, option=orjson.OPT_SORT_KEYS))
            self._mirror = mirror
            _, events_path, _ = write_changes(self.output, plan, checkpoint)
        return {"action": action, "events": len(plan.events), "rejected": len(plan.rejections),
                "file": os.path.basename(events_path) if events_path else None}


def _upsert(mirror: dict[str, Any], payload: dict[str, Any]) -> None:
    annotation, task = payload.get("annotation"), payload.get("task")
    if not isinstance(annotation, dict) or "id" not in annotation:
        raise BadPayload(f"{payload['action']}: no annotation with an id")
    task_id = annotation.get("task") if not isinstance(task, dict) else task.get("id")
    if isinstance(task_id, dict):
        task_id = task_id.get("id")
    if task_id is None:
        raise BadPayload(f"{payload['action']}: no task id")
    entry = mirror["tasks"].setdefault(str(task_id), {"id": task_id, "annotations": []})
    if isinstance(task, dict) and "data" in task:
        entry["data"] = task["data"]
    entry["annotations"] = [a for a in entry["annotations"] if a.get("id") != annotation["id"]] + [annotation]


def _delete(mirror: dict[str, Any], payload: dict[str, Any]) -> None:
    annotations = payload.get("annotations")
    if not isinstance(annotations, list) or not all(isinstance(a, dict) and "id" in a for a in annotations):
        raise BadPayload(f"{DELETES}: no list of annotations with ids")
    gone = {a["id"] for a in annotations}
    for task_id in list(mirror["tasks"]):
        task = mirror["tasks"][task_id]
        task["annotations"] = [a for a in task["annotations"] if a.get("id") not in gone]
        if not task["annotations"]:
            del mirror["tasks"][task_id]


def handler_for(receiver: Receiver, secret: str) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - the name http.server calls
            if not hmac.compare_digest(self.headers.get(SECRET_HEADER, ""), secret):
                return self._answer(401, {"error": f"missing or wrong {SECRET_HEADER}"})
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY_BYTES:
                return self._answer(413, {"error": "body too large"})
            try:
                return self._answer(200, receiver.apply(orjson.loads(self.rfile.read(length))))
            except (orjson.JSONDecodeError, BadPayload) as err:
                return self._answer(400, {"error": str(err)})

        def _answer(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
            pass  # one line per request would drown the run's own output

    return Handler


def add_webhook_arguments(parser: argparse.ArgumentParser) -> None:
    tools = parser.add_subparsers(dest="tool", required=True, metavar="TOOL")
    studio = tools.add_parser("label-studio", help=f"Label Studio's annotation webhooks (secret: ${SECRET_ENV})",
                              description="Receive Label Studio's ANNOTATION_CREATED, ANNOTATION_UPDATED and "
                              "ANNOTATIONS_DELETED webhooks as event files, until Ctrl-C.")
    studio.add_argument("--dataset", required=True, help="the dataset the events belong to")
    studio.add_argument("--output", required=True, help="the directory to write events/ into")
    studio.add_argument("--host", default="127.0.0.1", help="(default: 127.0.0.1)")
    studio.add_argument("--port", type=int, default=8090, help="(default: 8090)")
    studio.add_argument("--from-name", default=None, help="the control to read (default: the project's only one)")
    studio.add_argument("--item-key", default=None, help="a task data field to use as item_id (default: task id)")


def run(args: argparse.Namespace) -> int:
    secret = os.environ.get(SECRET_ENV, "")
    if not secret:
        raise UserError(f"set {SECRET_ENV} to the secret Label Studio sends in the {SECRET_HEADER} header")
    check_dataset_name(args.dataset)
    check_output_root(args.output, EVENTS_DIR)
    receiver = Receiver(args.output, args.dataset, args.from_name, args.item_key)
    try:
        server = http.server.HTTPServer((args.host, args.port), handler_for(receiver, secret))
    except OSError as err:
        raise UserError(f"cannot listen on {args.host}:{args.port}: {err.strerror}") from None
    print(f"receiving Label Studio webhooks on http://{args.host}:{server.server_port}/ -> "
          f"{os.path.join(args.output, EVENTS_DIR)} (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:  # Ctrl-C is how a receiver stops: every answered request is already written
        print("stopped", flush=True)
    finally:
        server.server_close()
    return 0
