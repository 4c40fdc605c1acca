"""`labelbeam pull label-studio` against a real Label Studio 1.23.2 server, then `labelbeam build`.

The server runs from its own virtualenv (label-studio's pins may disagree with apache-beam's), created
once with `python -m venv` + `pip install label-studio==1.23.2` and cached in
~/.cache/labelbeam-tests/label-studio-1.23.2/ (LABELBEAM_TEST_CACHE moves it). The test skips only when
that install fails (no network). The module starts the server on a free loopback port with SQLite in a
temporary directory and an admin whose legacy token is known, and stops it at the end.
"""
import collections
import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pyarrow.parquet as pq
import pytest

from labelbeam.pipelines import cli
from labelbeam.pipelines.build import run_build
from labelbeam.pipelines.options import BuildConfig

VERSION = "1.23.2"
TOKEN = "labelbeam-test-token-0123456789"
BEAM_ARGS = ["--runner=FnApiRunner"]
START_TIMEOUT_S = 180
LABEL_CONFIG = """<View>
  <Text name="text" value="$text"/>
  <Choices name="animal" toName="text" choice="single">
    <Choice value="bird"/><Choice value="cat"/><Choice value="dog"/>
  </Choices>
</View>"""


def _cache_dir() -> pathlib.Path:
    root = os.environ.get("LABELBEAM_TEST_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "labelbeam-tests")
    return pathlib.Path(root) / f"label-studio-{VERSION}"


def label_studio_venv() -> pathlib.Path:
    """The cached virtualenv with label-studio installed; created on first use (the marker file is written last,
    so an interrupted install is redone)."""
    venv = _cache_dir() / "venv"
    marker = venv / ".labelbeam-installed"
    if marker.exists():
        return venv
    shutil.rmtree(venv, ignore_errors=True)
    venv.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    install = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", f"label-studio=={VERSION}"],
                             capture_output=True, text=True)
    if install.returncode != 0:
        shutil.rmtree(venv, ignore_errors=True)
        tail = (install.stderr.strip().splitlines() or ["no output"])[-1]
        pytest.skip(f"cannot install label-studio=={VERSION} into a separate venv (no network?): {tail}")
    marker.write_text(f"label-studio=={VERSION}\n")
    return venv


class LabelStudio:
    """A running server: `url`, and `api(method, path, body)` with the admin's legacy token."""

    def __init__(self, url: str):
        self.url = url

    def api(self, method: str, path: str, body=None):
        request = urllib.request.Request(f"{self.url}{path}", method=method,
                                         data=None if body is None else json.dumps(body).encode(),
                                         headers={"Authorization": f"Token {TOKEN}",
                                                  "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            payload = response.read()
        return json.loads(payload) if payload else None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


TIMINGS: dict[str, float] = {}


@pytest.fixture(scope="module")  # stopped after its tests: the server costs CPU while it runs
def label_studio(tmp_path_factory):
    started = time.monotonic()
    venv = label_studio_venv()
    TIMINGS["venv_ready_s"] = time.monotonic() - started
    data_dir = tmp_path_factory.mktemp("label-studio")
    port = _free_port()
    env = {**os.environ, "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
           "LABEL_STUDIO_USERNAME": "admin@example.com", "LABEL_STUDIO_PASSWORD": "labelbeam-test-pw",
           "LABEL_STUDIO_USER_TOKEN": TOKEN, "DJANGO_DB": "sqlite", "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir)}
    env.pop("VIRTUAL_ENV", None)
    log_path = data_dir / "server.log"
    started = time.monotonic()
    with open(log_path, "wb") as log:
        process = subprocess.Popen([str(venv / "bin" / "label-studio"), "start", "--no-browser", "--port", str(port),
                                    "--data-dir", str(data_dir)], stdout=log, stderr=subprocess.STDOUT, env=env)
    server = LabelStudio(f"http://127.0.0.1:{port}")
    try:
        while True:
            if process.poll() is not None:
                pytest.fail(f"label-studio exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                server.api("GET", "/api/current-user/whoami")
                break
            except (urllib.error.URLError, ConnectionError):
                pass
            if time.monotonic() - started > START_TIMEOUT_S:
                pytest.fail(f"label-studio did not answer within {START_TIMEOUT_S} s:\n{log_path.read_text()[-3000:]}")
            time.sleep(1)
        TIMINGS["server_start_s"] = time.monotonic() - started
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        print(f"\nlabel-studio timings: {json.dumps({k: round(v, 1) for k, v in TIMINGS.items()})}", file=sys.stderr)


def consensus_of(votes: dict[int, dict[int, str]]) -> dict[str, tuple[str, int]]:
    """Majority label and vote count per task, computed from what the test created (no ties by design)."""
    expected = {}
    for task_id, by_user in votes.items():
        if by_user:
            (label, _), = collections.Counter(by_user.values()).most_common(1)
            expected[str(task_id)] = (label, len(by_user))
    return expected


def published_labels(outcome) -> dict[str, tuple[str, int]]:
    rows = pq.read_table(os.path.join(outcome.version_dir, "labels")).to_pylist()
    return {row["item_id"]: (row["label"], row["num_votes"]) for row in rows}


def pull(server: LabelStudio, project: int, output: pathlib.Path, monkeypatch, capsys) -> str:
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", TOKEN)
    code = cli.main(["pull", "label-studio", "--url", server.url, "--project", str(project), "--dataset", "pets",
                     "--output", str(output)])
    out = capsys.readouterr().out
    assert code == 0, out
    return out


def event_files(output: pathlib.Path) -> list[str]:
    return sorted(path.name for path in (output / "events").glob("*.jsonl"))


def test_pull_then_build_follows_label_studio_edits_and_deletes(label_studio, tmp_path, monkeypatch, capsys):
    started = time.monotonic()
    project = label_studio.api("POST", "/api/projects/", {"title": "labelbeam pets", "label_config": LABEL_CONFIG})
    users = [label_studio.api("POST", "/api/users/", {"username": f"annotator{i}", "email": f"a{i}@example.com"})["id"]
             for i in range(3)]
    label_studio.api("POST", f"/api/projects/{project['id']}/import", [{"text": f"photo {i}"} for i in range(4)])
    tasks = sorted(task["id"] for task in label_studio.api(
        "GET", f"/api/tasks/?project={project['id']}&page_size=100")["tasks"])
    plan = {tasks[0]: ["cat", "cat", "dog"], tasks[1]: ["dog", "dog"], tasks[2]: ["bird", "cat", "bird"],
            tasks[3]: ["cat"]}
    votes: dict[int, dict[int, str]] = {task_id: {} for task_id in tasks}
    annotation_of: dict[tuple[int, int], int] = {}
    for task_id, labels in plan.items():
        for user, label in zip(users, labels):
            created = label_studio.api("POST", f"/api/tasks/{task_id}/annotations/", {
                "completed_by": user, "lead_time": 4.0, "result": [
                    {"from_name": "animal", "to_name": "text", "type": "choices", "value": {"choices": [label]}}]})
            votes[task_id][user] = label
            annotation_of[(task_id, user)] = created["id"]
    # The admin skips a task: a DELETE of a vote it never had, not a vote.
    label_studio.api("POST", f"/api/tasks/{tasks[2]}/annotations/", {"result": [], "was_cancelled": True})

    output, root = tmp_path / "pulled", str(tmp_path / "datasets")
    config = BuildConfig(inputs=(str(output),), output=root, dataset="pets")
    assert "wrote 10 events (9 UPSERT, 1 DELETE)" in pull(label_studio, project["id"], output, monkeypatch, capsys)
    first = run_build(config, BEAM_ARGS)
    assert first.published and first.version == 1
    assert published_labels(first) == consensus_of(votes)
    assert first.manifest["counts"]["votes"] == 9 and first.manifest["counts"]["deleted"] == 1

    files = event_files(output)
    # The project's JSON export, pulled from the file, maps to the very same events (same bytes, same name).
    export = tmp_path / "export.json"
    export.write_text(json.dumps(label_studio.api("GET", f"/api/projects/{project['id']}/export?exportType=JSON")))
    assert cli.main(["pull", "label-studio", "--export", str(export), "--dataset", "pets",
                     "--output", str(tmp_path / "from-export")]) == 0
    assert "wrote 10 events" in capsys.readouterr().out
    assert event_files(tmp_path / "from-export") == files
    assert [(tmp_path / "from-export" / "events" / name).read_bytes() for name in files] == \
        [(output / "events" / name).read_bytes() for name in files]
    assert pull(label_studio, project["id"], output, monkeypatch, capsys).startswith("nothing new")
    assert event_files(output) == files
    again = run_build(config, BEAM_ARGS)
    assert not again.published and again.version == 1

    time.sleep(1.1)  # a later updated_at second: the edit must win on revision, as it would in real use
    changed = (tasks[0], users[0])
    label_studio.api("PATCH", f"/api/annotations/{annotation_of[changed]}/", {"result": [
        {"from_name": "animal", "to_name": "text", "type": "choices", "value": {"choices": ["dog"]}}]})
    votes[changed[0]][changed[1]] = "dog"
    removed = (tasks[2], users[1])
    label_studio.api("DELETE", f"/api/annotations/{annotation_of[removed]}/")
    del votes[removed[0]][removed[1]]

    out = pull(label_studio, project["id"], output, monkeypatch, capsys)
    assert "wrote 2 events (1 UPSERT, 1 DELETE)" in out and "1 removed" in out
    assert len(event_files(output)) == len(files) + 1
    second = run_build(config, BEAM_ARGS)
    assert second.published and second.version == 2
    assert published_labels(second) == consensus_of(votes)
    assert published_labels(second)[str(tasks[0])] == ("dog", 3)
    assert published_labels(second)[str(tasks[2])] == ("bird", 2)
    TIMINGS["test_body_s"] = time.monotonic() - started
