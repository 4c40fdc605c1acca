"""The Label Studio webhook receiver, over real HTTP: the secret, 4xx for malformed bodies, and events that a
build turns into the annotations' final state."""
import http.server
import json
import threading
import urllib.error
import urllib.request

import pyarrow.parquet as pq
import pytest

from labelbeam.pipelines.build import run_build
from labelbeam.pipelines.options import BuildConfig
from labelbeam.pipelines.webhook import SECRET_HEADER, Receiver, handler_for

SECRET = "s3cret-for-tests"
CONFIG = ('<View><Text name="text" value="$text"/><Choices name="animal" toName="text">'
          '<Choice value="cat"/><Choice value="dog"/></Choices></View>')
PROJECT = {"id": 7, "label_config": CONFIG}


def annotation(annotation_id, task_id, user, label, second):
    return {"id": annotation_id, "task": task_id, "completed_by": user, "lead_time": 2.5,
            "updated_at": f"2026-11-30T10:00:{second:02d}.000000Z", "was_cancelled": False,
            "result": [{"from_name": "animal", "to_name": "text", "type": "choices",
                        "value": {"choices": [label]}}]}


def created(annotation_):
    return {"action": "ANNOTATION_CREATED", "project": PROJECT, "annotation": annotation_,
            "task": {"id": annotation_["task"], "data": {"text": "a photo"}}}


@pytest.fixture
def receiver(tmp_path):
    server = http.server.HTTPServer(("127.0.0.1", 0), handler_for(Receiver(str(tmp_path / "hook"), "pets"), SECRET))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/", tmp_path / "hook"
    server.shutdown()
    server.server_close()


def post(url, body, secret=SECRET):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="POST", headers={SECRET_HEADER: secret})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def event_files(directory):
    return sorted((directory / "events").glob("*.jsonl")) if (directory / "events").exists() else []


def test_webhooks_become_events_that_build_into_the_final_state(receiver, tmp_path):
    url, directory = receiver
    for body in (created(annotation(1, 100, 11, "cat", 1)), created(annotation(2, 100, 12, "cat", 2)),
                 created(annotation(3, 101, 11, "dog", 3)), created(annotation(4, 101, 12, "cat", 4))):
        assert post(url, body)[0] == 200
    # An edit and a deletion: task 100 ends with one cat vote, task 101 with two dog votes.
    status, answer = post(url, {"action": "ANNOTATION_UPDATED", "project": PROJECT,
                                "annotation": annotation(4, 101, 12, "dog", 9), "task": {"id": 101}})
    assert (status, answer["events"]) == (200, 1)
    status, answer = post(url, {"action": "ANNOTATIONS_DELETED", "project": PROJECT, "annotations": [{"id": 2}]})
    assert (status, answer["events"]) == (200, 1)
    assert len(event_files(directory)) == 6
    outcome = run_build(BuildConfig(inputs=(str(directory),), output=str(tmp_path / "data"), dataset="pets"),
                        ["--runner=FnApiRunner"])
    rows = {row["item_id"]: (row["label"], row["num_votes"]) for row in
            pq.read_table(outcome.version_dir + "/labels/labels-00000-of-00001.parquet").to_pylist()}
    assert rows == {"100": ("cat", 1), "101": ("dog", 2)}
    # The edit replaces annotation 4's first answer; the deletion withdraws annotation 2 (its UPSERT is
    # superseded by the DELETE that wins).
    counts = outcome.manifest["counts"]
    assert (counts["votes"], counts["superseded"], counts["deleted"]) == (3, 2, 1)


def test_a_wrong_secret_or_a_malformed_body_is_refused_and_changes_nothing(receiver):
    url, directory = receiver
    assert post(url, created(annotation(1, 100, 11, "cat", 1)), secret="guess")[0] == 401
    assert post(url, b"{not json")[0] == 400
    assert post(url, {"action": "ANNOTATION_CREATED", "project": PROJECT})[0] == 400  # no annotation
    assert post(url, {"action": "ANNOTATIONS_DELETED", "project": PROJECT, "annotations": "all"})[0] == 400
    assert event_files(directory) == []
    assert post(url, {"action": "PROJECT_UPDATED", "project": PROJECT}) == (200, {"ignored": "PROJECT_UPDATED"})
    # A valid one after the refused ones is written as usual.
    assert post(url, created(annotation(1, 100, 11, "cat", 1)))[0] == 200
    assert len(event_files(directory)) == 1


def test_the_same_webhook_twice_writes_nothing_the_second_time(receiver):
    url, directory = receiver
    body = created(annotation(1, 100, 11, "cat", 1))
    assert post(url, body)[1]["events"] == 1
    assert post(url, body)[1] == {"action": "ANNOTATION_CREATED", "events": 0, "rejected": 0, "file": None}
    assert len(event_files(directory)) == 1
