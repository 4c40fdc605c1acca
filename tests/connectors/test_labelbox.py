"""`labelbeam pull labelbox`: a Labelbox export v2 NDJSON file -> events v2 (+ rejections), no email written.

The fixture fixtures/labelbox_export_v2.ndjson follows the export v2 shape documented at
https://docs.labelbox.com/reference/export-quick-reference (data_row / projects / labels / label_details /
performance_details) and the classification formats of
https://docs.labelbox.com/reference/export-image-annotations (radio_answer, checklist_answers, text_answer,
objects with annotation_kind "ImageBoundingBox"). Ids, emails and answers are invented.
"""
import hashlib
import json
import os
import pathlib

import pyarrow.parquet as pq
import pytest

from labelbeam.pipelines import cli, pull
from labelbeam.pipelines.errors import UserError
from labelbeam.transforms.connectors import labelbox

FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "labelbox_export_v2.ndjson"
PROJECT = "cltd3vkju021907u63w2odj69"
EMAILS = ("alice@example.com", "bob@example.com", "carol@example.com", "uploader@example.com")


def user(email: str) -> str:
    return "labelbox-user-" + hashlib.sha256(email.encode()).hexdigest()[:16]


def run_pull(output, *extra) -> int:
    return cli.main(["pull", "labelbox", "--export", str(FIXTURE), "--dataset", "pets", "--output", str(output),
                     *extra])


def records(output, folder, suffix):
    return [json.loads(line) for path in sorted((output / folder).glob(f"*.{suffix}"))
            for line in path.read_text().splitlines()]


def test_radio_answers_become_labels_with_pseudonymous_annotators(tmp_path):
    assert run_pull(tmp_path, "--classification", "animal") == 0
    events = {(e["item_id"], e["annotator_id"]): e for e in records(tmp_path, "events", "jsonl")}
    alice = events[("img-1.jpeg", user("alice@example.com"))]
    assert alice["action"] == "UPSERT" and alice["label"] == "cat" and alice["labels"] == []
    assert alice["schema_version"] == 2 and alice["dataset"] == "pets" and alice["score"] is None
    assert alice["event_time"] == 1712594042000            # updated_at 2024-04-08T16:34:02Z
    assert alice["revision"] == 1712594042 - 1_546_300_800
    assert alice["duration_ms"] == 33500                    # seconds_to_create 33.5
    assert alice["event_id"] == hashlib.sha256(
        f"labelbox:{PROJECT}:cllabel11:{1712594042 * 10**6}".encode()).hexdigest()
    assert alice["metadata"] == {"source": "labelbox", "project": PROJECT, "data_row": "clrow1aaaaaaaaaaaaaaaaaaa",
                                 "label": "cllabel11", "classification": "animal"}
    # No global_key: the data row id is the item.
    assert events[("clrow2bbbbbbbbbbbbbbbbbbb", user("bob@example.com"))]["label"] == "dog"
    # Carol answered only a text classification on row 2: a DELETE (and a rejection below).
    carol = events[("clrow2bbbbbbbbbbbbbbbbbbb", user("carol@example.com"))]
    assert carol["action"] == "DELETE" and carol["label"] is None
    assert len(events) == 6


def test_checklist_answers_become_multilabel_votes(tmp_path):
    assert run_pull(tmp_path, "--classification", "tags") == 0
    events = {(e["item_id"], e["annotator_id"]): e for e in records(tmp_path, "events", "jsonl")}
    assert events[("img-1.jpeg", user("alice@example.com"))]["labels"] == ["fluffy", "indoor"]
    assert events[("img-1.jpeg", user("alice@example.com"))]["label"] is None
    assert events[("img-1.jpeg", user("bob@example.com"))]["labels"] == ["indoor"]
    assert sum(e["action"] == "UPSERT" for e in events.values()) == 2
    no_answer = [r for r in records(tmp_path, "rejected", "rejected") if r["reason"] == "NO_ANSWER"]
    assert {r["label"] for r in no_answer} == {"cllabel13", "cllabel21", "cllabel22", "cllabel23"}


def test_unsupported_annotations_are_rejected_with_a_reason(tmp_path):
    run_pull(tmp_path, "--classification", "animal")
    rejected = {(r["label"], r["reason"]): r for r in records(tmp_path, "rejected", "rejected")}
    assert set(rejected) == {("cllabel11", "UNSUPPORTED_ANNOTATION_TYPE"), ("cllabel22", "UNSUPPORTED_ANNOTATION_TYPE"),
                             ("cllabel23", "NO_ANSWER"), ("cllabel23", "UNSUPPORTED_ANNOTATION_TYPE")}
    assert "ImageBoundingBox" in rejected[("cllabel11", "UNSUPPORTED_ANNOTATION_TYPE")]["detail"]
    assert "text_answer classification comment" in rejected[("cllabel22", "UNSUPPORTED_ANNOTATION_TYPE")]["detail"]
    assert rejected[("cllabel23", "NO_ANSWER")]["annotator_id"] == user("carol@example.com")


def test_no_email_and_no_text_answer_is_written_anywhere(tmp_path):
    run_pull(tmp_path, "--classification", "animal")
    run_pull(tmp_path / "tags", "--classification", "tags")
    for path in tmp_path.rglob("*"):
        if path.is_file():
            text = path.read_text()
            assert "@" not in text and "neighbour" not in text, path
            assert not any(email in text for email in EMAILS)


def test_a_second_pull_of_the_same_file_writes_nothing(tmp_path, capsys):
    assert run_pull(tmp_path, "--classification", "animal") == 0
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    assert run_pull(tmp_path, "--classification", "animal") == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("nothing new")
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()} == before
    [events] = (tmp_path / "events").iterdir()
    assert events.name.startswith("labelbox-")


def test_ambiguous_classification_and_other_checkpoints_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="--classification"):
        pull.pull_labelbox(str(FIXTURE), "pets", str(tmp_path))
    pull.pull_labelbox(str(FIXTURE), "pets", str(tmp_path), classification="animal")
    with pytest.raises(UserError, match="new directory"):
        pull.pull_labelbox(str(FIXTURE), "pets", str(tmp_path), classification="tags")
    with pytest.raises(UserError, match="no label answers it"):
        pull.pull_labelbox(str(FIXTURE), "pets", str(tmp_path / "x"), classification="nope")


def test_mapping_is_independent_of_line_order():
    rows = [json.loads(line) for line in FIXTURE.read_text().splitlines()]
    forward = labelbox.plan_pull(rows, "pets", None, "animal", None)
    backward = labelbox.plan_pull(rows[::-1], "pets", None, "animal", None)
    assert forward.events == backward.events and forward.rejections == backward.rejections


def test_end_to_end_pull_then_build(tmp_path):
    from labelbeam.pipelines.build import run_build
    from labelbeam.pipelines.options import BuildConfig

    output, root = tmp_path / "pulled", str(tmp_path / "datasets")
    assert run_pull(output, "--classification", "animal") == 0
    outcome = run_build(BuildConfig(inputs=(str(output),), output=root, dataset="pets"), ["--runner=FnApiRunner"])
    assert outcome.published
    rows = pq.read_table(os.path.join(outcome.version_dir, "labels", "labels-00000-of-00001.parquet")).to_pylist()
    # img-1.jpeg: cat, cat, dog; row 2: dog, dog (carol's label had no answer: her DELETE leaves no vote).
    assert {row["item_id"]: (row["label"], row["num_votes"]) for row in rows} == {
        "img-1.jpeg": ("cat", 3), "clrow2bbbbbbbbbbbbbbbbbbb": ("dog", 2)}
