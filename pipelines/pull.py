"""`labelbeam pull label-studio --url URL --project ID --dataset D --output DIR`: a Label Studio project's
annotations as event files (contract v2, JSON Lines) that `labelbeam build --input DIR` reads.

Each pull fetches every task of the project with its annotations, maps what changed since the last pull
(transforms/connectors/label_studio.py: the mapping, DELETEs for skipped and removed annotations), and
writes it as one new file, DIR/events/label-studio-<sha256 of its bytes>.jsonl: under a hidden name
first, then renamed. The checkpoint DIR/.labelbeam-pull.state (the annotations seen, with their
`updated_at`) is replaced only after that, so a pull interrupted anywhere and run again ends with the
same events as one clean pull (an event written twice has one `event_id` and one content). A pull that
finds nothing new writes nothing, and the next build is "up to date". Rejected annotations go to
DIR/rejected/label-studio-<sha256>.rejected (JSON Lines with a reason; a suffix the build does not read).

HTTP is plain `requests` (installed with apache-beam), not label-studio-sdk: two GET endpoints do not
justify a dependency whose pins (pydantic, httpx, ...) would have to agree with apache-beam's on the
launcher and on every managed-runner worker, and the legacy token header is one line.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
from typing import Any

import orjson

from labelbeam.pipelines.errors import UserError
from labelbeam.pipelines.options import check_dataset_name, check_output_root
from labelbeam.transforms.connectors import label_studio, labelbox, sagemaker_gt

API_KEY_ENV = "LABEL_STUDIO_API_KEY"
CHECKPOINT_FILE = ".labelbeam-pull.state"   # no event-file suffix: the build never reads it
EVENTS_DIR = "events"
REJECTED_DIR = "rejected"
PAGE_SIZE = 100
# Only tasks with an annotation, skipped ones included: a task without any has nothing to map, and one whose
# annotations were all deleted drops out, which the mapping sees as removals. A server that ignores the filter
# lists every task, with the same result.
ANNOTATED_TASKS = json.dumps({"filters": {"conjunction": "or", "items": [
    {"filter": "filter:tasks:total_annotations", "operator": "greater", "type": "Number", "value": 0},
    {"filter": "filter:tasks:cancelled_annotations", "operator": "greater", "type": "Number", "value": 0}]}})
TIMEOUT_S = 60


class LabelStudioClient:
    """GET requests to a Label Studio server with a legacy token (`Authorization: Token <key>`).

    Every failure a user can fix (no server there, a refused key, an unknown project) is a UserError."""

    def __init__(self, url: str, api_key: str):
        import requests

        self._url = url.rstrip("/")
        self._session = requests.Session()
        self._session.headers.update({"Authorization": f"Token {api_key}", "Accept": "application/json"})

    def get(self, path: str, what: str, **params: Any) -> Any:
        import requests

        try:
            response = self._session.get(f"{self._url}{path}", params=params, timeout=TIMEOUT_S)
        except requests.RequestException as err:
            raise UserError(f"cannot reach Label Studio at {self._url}: {type(err).__name__}") from None
        if response.status_code in (401, 403):
            raise UserError(f"Label Studio at {self._url} refused the key in {API_KEY_ENV} (HTTP "
                            f"{response.status_code}); use the legacy token of Account & Settings, and a server "
                            "that accepts legacy tokens")
        if response.status_code == 404:
            raise UserError(f"Label Studio at {self._url} has no {what}")
        if response.status_code != 200:
            raise UserError(f"Label Studio at {self._url} answered HTTP {response.status_code} for {what}")
        try:
            return response.json()
        except ValueError:
            raise UserError(f"{self._url}{path} did not answer JSON: is {self._url} a Label Studio server?") from None

    def project(self, project: int) -> dict[str, Any]:
        return self.get(f"/api/projects/{project}/", f"project {project}")

    def tasks(self, project: int) -> list[dict[str, Any]]:
        """Every annotated task of the project with its annotations, skipped ones included (GET /api/tasks, paged).

        A task that pages list twice (the project changed while it was read) is kept once, in its last copy."""
        tasks: dict[Any, dict[str, Any]] = {}
        page, listed = 1, 0
        while True:
            answer = self.get("/api/tasks/", f"tasks of project {project}", project=project, page=page,
                              page_size=PAGE_SIZE, fields="all", query=ANNOTATED_TASKS)
            batch = answer.get("tasks", []) if isinstance(answer, dict) else answer
            tasks.update((task["id"], task) for task in batch)
            listed += len(batch)
            total = answer.get("total") if isinstance(answer, dict) else None
            if not batch or len(batch) < PAGE_SIZE or (total is not None and listed >= total):
                return list(tasks.values())
            page += 1


def read_checkpoint(output: str) -> dict[str, Any] | None:
    path = os.path.join(output, CHECKPOINT_FILE)
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as stream:
            checkpoint = json.load(stream)
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read the pull checkpoint {path}: {err}") from None
    if checkpoint.get("format") != label_studio.CHECKPOINT_FORMAT:
        raise UserError(f"{path} has checkpoint format {checkpoint.get('format')!r}, this labelbeam reads "
                        f"{label_studio.CHECKPOINT_FORMAT}")
    return checkpoint


def write_atomically(path: str, payload: bytes) -> None:
    """`payload` at `path`, never in part: written to a hidden name beside it, synced, then renamed."""
    directory, name = os.path.split(path)
    os.makedirs(directory, exist_ok=True)
    hidden = os.path.join(directory, f".{name}.tmp")
    with open(hidden, "wb") as out:
        out.write(payload)
        out.flush()
        os.fsync(out.fileno())
    os.replace(hidden, path)


def json_lines(records: list[dict[str, Any]]) -> bytes:
    return b"".join(orjson.dumps(record, option=orjson.OPT_SORT_KEYS) + b"\n" for record in records)


def write_plan(output: str, plan: label_studio.PullPlan, tool: str = "label-studio") -> tuple[str | None, str | None]:
    """Write the plan's events and rejections (each named by its digest), then the checkpoint.
    Returns the events and rejections paths (None: nothing to write)."""
    paths: list[str | None] = []
    for folder, records, suffix in ((EVENTS_DIR, plan.events, "jsonl"), (REJECTED_DIR, plan.rejections, "rejected")):
        if not records:
            paths.append(None)
            continue
        payload = json_lines(records)
        path = os.path.join(output, folder, f"{tool}-{hashlib.sha256(payload).hexdigest()[:32]}.{suffix}")
        write_atomically(path, payload)
        paths.append(path)
    write_atomically(os.path.join(output, CHECKPOINT_FILE),
                     json.dumps(plan.checkpoint, sort_keys=True, separators=(",", ":")).encode("utf-8") + b"\n")
    return paths[0], paths[1]


def pull_label_studio(url: str, project: int, dataset: str, output: str, api_key: str,
                      from_name: str | None = None, item_key: str | None = None) -> tuple[label_studio.PullPlan,
                                                                                          str | None, str | None]:
    """Fetch, map and write one pull; returns the plan and the files written (None: nothing new)."""
    client = LabelStudioClient(url, api_key)
    config = client.project(project).get("label_config") or ""
    try:
        control = label_studio.choose_control(label_studio.parse_controls(config), from_name)
        source = label_studio.PullSource(project, dataset, control, item_key)
        checkpoint = read_checkpoint(output)
        plan = label_studio.plan_pull(client.tasks(project), source, checkpoint)
    except ValueError as err:
        raise UserError(f"project {project}: {err}") from None
    return write_changes(output, plan, checkpoint)


def read_export(path: str) -> list[dict[str, Any]]:
    """The tasks of a Label Studio JSON export file (Export -> JSON: a list of tasks with their annotations)."""
    try:
        with open(path, "rb") as stream:
            tasks = orjson.loads(stream.read())
    except OSError as err:
        raise UserError(f"cannot read --export {path}: {err.strerror}") from None
    except orjson.JSONDecodeError as err:
        raise UserError(f"--export {path} is not JSON: {err}") from None
    if not isinstance(tasks, list) or not all(isinstance(task, dict) and "id" in task for task in tasks):
        raise UserError(f"--export {path} is not a Label Studio JSON export (a list of tasks with ids)")
    return tasks


def pull_export(path: str, project: int | None, dataset: str, output: str, from_name: str | None = None,
                item_key: str | None = None) -> tuple[label_studio.PullPlan, str | None, str | None]:
    """One pull from an export file instead of the server, through the same mapping and checkpoint: an
    export of the same project state gives the same events as a pull from the API."""
    tasks = read_export(path)
    projects = {task.get("project") for task in tasks} - {None}
    if project is None:
        if len(projects) != 1:
            raise UserError(f"--export {path}: give --project (the file names {len(projects)} projects)")
        project = int(projects.pop())
    try:
        control = label_studio.choose_control(label_studio.controls_in_results(tasks), from_name)
        source = label_studio.PullSource(project, dataset, control, item_key)
        checkpoint = read_checkpoint(output)
        plan = label_studio.plan_pull(tasks, source, checkpoint)
    except ValueError as err:
        raise UserError(f"--export {path}: {err}") from None
    return write_changes(output, plan, checkpoint)


def write_changes(output: str, plan: label_studio.PullPlan, checkpoint: dict[str, Any] | None,
                  tool: str = "label-studio") -> tuple[label_studio.PullPlan, str | None, str | None]:
    if not plan.events and not plan.rejections:
        if checkpoint != plan.checkpoint:  # e.g. a removal with nothing to withdraw: remember it, write no events
            write_plan(output, plan, tool)
        return plan, None, None
    events_path, rejected_path = write_plan(output, plan, tool)
    return plan, events_path, rejected_path


def read_ndjson(path: str, option: str) -> list[dict[str, Any]]:
    """The JSON objects of an NDJSON file, one a line (blank lines skipped)."""
    try:
        with open(path, "rb") as stream:
            lines = stream.read().splitlines()
    except OSError as err:
        raise UserError(f"cannot read {option} {path}: {err.strerror}") from None
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = orjson.loads(line)
        except orjson.JSONDecodeError as err:
            raise UserError(f"{option} {path}:{number} is not JSON: {err}") from None
        if not isinstance(row, dict):
            raise UserError(f"{option} {path}:{number} is not a JSON object")
        rows.append(row)
    return rows


def pull_labelbox(path: str, dataset: str, output: str, project: str | None = None,
                  classification: str | None = None) -> tuple[label_studio.PullPlan, str | None, str | None]:
    """One pull of a Labelbox export v2 NDJSON file: what the checkpoint has not seen yet is written."""
    rows = read_ndjson(path, "--export")
    if not all("data_row" in row for row in rows):
        raise UserError(f"--export {path} is not a Labelbox export v2 file (a data_row on every line)")
    checkpoint = read_checkpoint(output)
    try:
        plan = labelbox.plan_pull(rows, dataset, project, classification, checkpoint)
    except ValueError as err:
        raise UserError(f"--export {path}: {err}") from None
    return write_changes(output, plan, checkpoint, labelbox.SOURCE)


def read_responses(path: str) -> list[tuple[str, Any]]:
    """(path relative to PATH's parent, parsed JSON or None if unreadable) of every .json file at PATH."""
    if os.path.isfile(path):
        files = [path]
    elif os.path.isdir(path):
        files = sorted(os.path.join(folder, name) for folder, _, names in os.walk(path)
                       for name in names if name.endswith(".json"))
    else:
        raise UserError(f"--responses {path}: no such file or directory")
    base = os.path.dirname(os.path.abspath(path).rstrip(os.sep))
    responses = []
    for file in files:
        relative = sagemaker_gt.display_path(os.path.abspath(file),
                                             os.path.relpath(os.path.abspath(file), base).replace(os.sep, "/"))
        try:
            with open(file, "rb") as stream:
                responses.append((relative, orjson.loads(stream.read())))
        except OSError as err:
            raise UserError(f"cannot read {file}: {err.strerror}") from None
        except orjson.JSONDecodeError:
            responses.append((relative, None))   # dead-lettered by the mapping, with the file's name
    return responses


def pull_sagemaker_gt(path: str, dataset: str, output: str,
                      label_key: str | None = None) -> tuple[label_studio.PullPlan, str | None, str | None]:
    """One pull of SageMaker Ground Truth worker-response files: what the checkpoint has not seen is written."""
    responses = read_responses(path)
    checkpoint = read_checkpoint(output)
    try:
        plan = sagemaker_gt.plan_pull(responses, dataset, label_key, checkpoint)
    except ValueError as err:
        raise UserError(f"--responses {path}: {err}") from None
    return write_changes(output, plan, checkpoint, sagemaker_gt.SOURCE)


def add_pull_arguments(parser: argparse.ArgumentParser) -> None:
    tools = parser.add_subparsers(dest="tool", required=True, metavar="TOOL")
    studio = tools.add_parser("label-studio", help="a Label Studio project (legacy token in $LABEL_STUDIO_API_KEY)",
                              description="Pull a Label Studio project's annotations as event files "
                              f"(key: ${API_KEY_ENV}, a legacy token). Run it again to pull what changed.")
    studio.add_argument("--url", help="the server, e.g. http://localhost:8080")
    studio.add_argument("--export", metavar="FILE", help="instead of --url: a JSON export file of the project "
                        "(same mapping; the control is found from the results, --from-name picks one)")
    studio.add_argument("--project", type=int, help="the project id (with --export: default, the file's)")
    studio.add_argument("--dataset", required=True, help="the dataset the events belong to (build --dataset)")
    studio.add_argument("--output", required=True, help="the directory to write events/ into (build --input)")
    studio.add_argument("--from-name", default=None,
                        help="the <Choices> or <Rating> control to read (default: the project's only one)")
    studio.add_argument("--item-key", default=None,
                        help="a task data field to use as item_id (default: the task id)")
    box = tools.add_parser("labelbox", help="a Labelbox export v2 file (NDJSON, one data row a line)",
                           description="Map a Labelbox export v2 NDJSON file to event files: radio -> label, "
                           "checklist -> labels; annotators are pseudonymized (no email is written). Pulling the "
                           "same file again writes nothing.")
    box.add_argument("--export", required=True, metavar="FILE", help="the export v2 NDJSON file")
    box.add_argument("--dataset", required=True, help="the dataset the events belong to (build --dataset)")
    box.add_argument("--output", required=True, help="the directory to write events/ into (build --input)")
    box.add_argument("--classification", default=None,
                     help="the radio/checklist classification to read (default: the export's only one)")
    box.add_argument("--project", default=None, help="the project id (default: the file's only project)")
    sagemaker = tools.add_parser("sagemaker-gt", help="SageMaker Ground Truth worker-response files",
                                 description="Map SageMaker Ground Truth worker responses (annotations/"
                                 "worker-response/iteration-N/<index>/*.json) to event files: crowd-classifier "
                                 "-> label, crowd-classifier-multi-select -> labels. Pulling again writes nothing.")
    sagemaker.add_argument("--responses", required=True, metavar="PATH",
                           help="a worker-response JSON file, or a directory searched recursively")
    sagemaker.add_argument("--dataset", required=True, help="the dataset the events belong to (build --dataset)")
    sagemaker.add_argument("--output", required=True, help="the directory to write events/ into (build --input)")
    sagemaker.add_argument("--label-key", default=None,
                           help="the answerContent key to read (the element's name; default: the only classifier)")


def run(args: argparse.Namespace) -> int:
    check_dataset_name(args.dataset)
    if args.tool == "labelbox":
        check_output_root(args.output, EVENTS_DIR)
        return report_pull(args.export, *pull_labelbox(args.export, args.dataset, args.output, args.project,
                                                       args.classification))
    if args.tool == "sagemaker-gt":
        check_output_root(args.output, EVENTS_DIR)
        return report_pull(args.responses, *pull_sagemaker_gt(args.responses, args.dataset, args.output,
                                                              args.label_key))
    if (args.url is None) == (args.export is None):
        raise UserError("give either --url (with --project) or --export FILE")
    if args.export is not None:
        check_output_root(args.output, EVENTS_DIR)
        plan, events_path, rejected_path = pull_export(args.export, args.project, args.dataset, args.output,
                                                       args.from_name, args.item_key)
        return report_pull(args.export, plan, events_path, rejected_path)
    api_key = os.environ.get(API_KEY_ENV, "")
    if not api_key:
        raise UserError(f"set {API_KEY_ENV} to a Label Studio legacy token (Account & Settings)")
    if args.project is None:
        raise UserError("--url needs --project ID")
    if not args.url.startswith(("http://", "https://")):
        raise UserError(f"--url {args.url}: expected http://HOST:PORT or https://...")
    check_output_root(args.output, EVENTS_DIR)
    plan, events_path, rejected_path = pull_label_studio(args.url, args.project, args.dataset, args.output, api_key,
                                                         args.from_name, args.item_key)
    return report_pull(f"project {args.project}", plan, events_path, rejected_path)


def report_pull(origin: str, plan: label_studio.PullPlan, events_path: str | None, rejected_path: str | None) -> int:
    counts = plan.counts
    seen = (f"{origin}: {counts['annotations']} annotations on {counts['tasks']} tasks "
            f"({counts['unchanged']} unchanged, {counts['removed']} removed since the last pull)")
    if events_path is None and rejected_path is None:
        print(f"nothing new: {seen}")
        return 0
    print(f"pulled {seen}")
    if events_path:
        print(f"wrote {len(plan.events)} events ({counts['upserts']} UPSERT, {counts['deletes']} DELETE) -> "
              f"{events_path}")
    if rejected_path:
        print(f"rejected {counts['rejected']} annotations (reason in each line) -> {rejected_path}")
    return 0
