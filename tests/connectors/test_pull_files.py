"""`labelbeam pull label-studio` on disk: files named by their digest, written atomically, the checkpoint last,
so an interrupted pull run again ends with the events of one clean pull. The server is a fake client."""
import json

import pytest

from labelbeam.pipelines import cli, pull

CONFIG = '<View><Text name="text" value="$text"/><Choices name="animal" toName="text">' \
         '<Choice value="cat"/><Choice value="dog"/></Choices></View>'


def annotation(id, user, label, updated_at="2026-05-01T10:00:00Z"):
    return {"id": id, "completed_by": user, "was_cancelled": False, "updated_at": updated_at, "lead_time": 1.0,
            "result": [{"from_name": "animal", "to_name": "text", "type": "choices", "value": {"choices": [label]}}]}


class FakeClient:
    tasks_by_project: dict = {}

    def __init__(self, url, api_key):
        pass

    def project(self, project):
        return {"id": project, "label_config": CONFIG}

    def tasks(self, project):
        return self.tasks_by_project[project]


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setattr(pull, "LabelStudioClient", FakeClient)
    monkeypatch.setenv(pull.API_KEY_ENV, "key")
    FakeClient.tasks_by_project = {1: [{"id": 5, "data": {}, "annotations": [annotation(50, 2, "cat")]}]}
    return FakeClient


def run_pull(output) -> int:
    return cli.main(["pull", "label-studio", "--url", "http://ls", "--project", "1", "--dataset", "d",
                     "--output", str(output)])


def events_in(output) -> set[str]:
    return {line for path in (output / "events").glob("*.jsonl") for line in path.read_text().splitlines()}


def test_event_file_is_named_by_its_digest_and_leaves_no_temporary_file(server, tmp_path):
    assert run_pull(tmp_path) == 0
    [path] = (tmp_path / "events").iterdir()
    assert path.name.startswith("label-studio-") and path.suffix == ".jsonl"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".labelbeam-pull.state", "events"]


def test_pull_with_nothing_new_writes_nothing(server, tmp_path, capsys):
    run_pull(tmp_path)
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    assert run_pull(tmp_path) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("nothing new")
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()} == before


def test_pull_interrupted_before_its_checkpoint_ends_like_one_clean_pull(server, tmp_path, monkeypatch):
    clean, interrupted = tmp_path / "clean", tmp_path / "interrupted"
    run_pull(clean)
    run_pull(interrupted)
    server.tasks_by_project[1][0]["annotations"] = [annotation(50, 2, "dog", "2026-05-01T11:00:00Z"),
                                                   annotation(51, 3, "cat")]
    real_write = pull.write_atomically

    def crash_on_checkpoint(path, payload):
        if path.endswith(pull.CHECKPOINT_FILE):
            raise KeyboardInterrupt
        real_write(path, payload)

    monkeypatch.setattr(pull, "write_atomically", crash_on_checkpoint)
    assert run_pull(interrupted) == 130
    monkeypatch.setattr(pull, "write_atomically", real_write)
    assert run_pull(interrupted) == 0
    assert run_pull(clean) == 0
    assert events_in(interrupted) == events_in(clean)
    assert (interrupted / ".labelbeam-pull.state").read_bytes() == (clean / ".labelbeam-pull.state").read_bytes()


def test_rejected_annotations_go_to_a_file_the_build_does_not_read(server, tmp_path, capsys):
    server.tasks_by_project[1][0]["annotations"].append(
        {"id": 52, "completed_by": 4, "updated_at": "2026-05-01T10:00:00Z", "result": [
            {"from_name": "animal", "type": "labels", "value": {"labels": ["cat"]}}]})
    assert run_pull(tmp_path) == 0
    assert "rejected 1 annotations" in capsys.readouterr().out
    [path] = (tmp_path / "rejected").iterdir()
    assert path.suffix == ".rejected"
    [rejection] = [json.loads(line) for line in path.read_text().splitlines()]
    assert (rejection["reason"], rejection["annotation"], rejection["raw"]["id"]) == ("UNSUPPORTED_RESULT_TYPE", "52", 52)


def test_missing_api_key_is_a_usage_error(server, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(pull.API_KEY_ENV)
    assert run_pull(tmp_path) == 2
    assert "LABEL_STUDIO_API_KEY" in capsys.readouterr().err


def test_unreachable_server_is_a_usage_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(pull.API_KEY_ENV, "key")
    code = cli.main(["pull", "label-studio", "--url", "http://127.0.0.1:9", "--project", "1", "--dataset", "d",
                     "--output", str(tmp_path)])
    assert code == 2 and "cannot reach Label Studio" in capsys.readouterr().err


def test_checkpoint_of_another_dataset_is_a_usage_error(server, tmp_path, capsys):
    run_pull(tmp_path)
    code = cli.main(["pull", "label-studio", "--url", "http://ls", "--project", "1", "--dataset", "other",
                     "--output", str(tmp_path)])
    assert code == 2 and "pull into a new directory" in capsys.readouterr().err


def test_an_export_file_is_refused_in_one_line_when_it_is_not_an_export(tmp_path):
    from labelbeam.pipelines.errors import UserError
    from labelbeam.pipelines.pull import pull_export
    (tmp_path / "not-an-export.json").write_text('{"tasks": []}')
    with pytest.raises(UserError, match="not a Label Studio JSON export"):
        pull_export(str(tmp_path / "not-an-export.json"), None, "pets", str(tmp_path / "out"))
    (tmp_path / "two.json").write_text('[{"id": 1, "project": 1, "annotations": []}, '
                                       '{"id": 2, "project": 2, "annotations": []}]')
    with pytest.raises(UserError, match="give --project"):
        pull_export(str(tmp_path / "two.json"), None, "pets", str(tmp_path / "out"))
