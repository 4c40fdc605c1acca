"""`labelbeam pull sagemaker-gt`: SageMaker Ground Truth worker-response files -> events v2 (+ rejections).

The fixtures under fixtures/sagemaker_gt/<job>/annotations/worker-response/iteration-1/<index>/ follow the
output layout and worker-response shape ({"answers": [{"acceptanceTime", "answerContent", "submissionTime",
"timeSpentInSeconds", "workerId", "workerMetadata": {"identityData": {...}}}]}) documented at
https://docs.aws.amazon.com/sagemaker/latest/dg/sms-data-output.html, with answerContent outputs of the
<crowd-classifier> ({"label"}) and <crowd-classifier-multi-select> ({"labels"}) elements
(https://docs.aws.amazon.com/sagemaker/latest/dg/sms-ui-template-crowd-classifier.html,
https://docs.aws.amazon.com/sagemaker/latest/dg/sms-ui-template-crowd-classifier-multi-select.html).
Worker ids, identity data and answers are invented.
"""
import hashlib
import json
import os
import pathlib
import shutil

import pyarrow.parquet as pq
import pytest

from labelbeam.pipelines import cli, pull
from labelbeam.pipelines.errors import UserError

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "sagemaker_gt"
JOB = FIXTURES / "pets-job"
TAGS_JOB = FIXTURES / "pets-tags-job"


def run_pull(responses, output, *extra) -> int:
    return cli.main(["pull", "sagemaker-gt", "--responses", str(responses), "--dataset", "pets",
                     "--output", str(output), *extra])


def records(output, folder, suffix):
    return [json.loads(line) for path in sorted((output / folder).glob(f"*.{suffix}"))
            for line in path.read_text().splitlines()]


def test_crowd_classifier_answers_become_labels(tmp_path):
    assert run_pull(JOB, tmp_path) == 0
    events = {(e["item_id"], e["annotator_id"]): e for e in records(tmp_path, "events", "jsonl")}
    first = events[("0", "sagemaker-worker-private.us-west-2.aaaa1111")]
    assert first["action"] == "UPSERT" and first["label"] == "cat" and first["labels"] == []
    assert first["event_time"] == 1611261796106              # submissionTime 2021-01-21T20:43:16.106Z
    assert first["revision"] == 1611261796 - 1_546_300_800
    assert first["duration_ms"] == 4043                      # timeSpentInSeconds 4.043
    assert first["event_id"] == hashlib.sha256(
        b"sagemaker-gt:pets-job:iteration-1:0:private.us-west-2.aaaa1111:1611261796106000").hexdigest()
    assert first["metadata"] == {"source": "sagemaker-gt", "data_object": "0", "label_key": "animal",
                                 "job": "pets-job", "iteration": "iteration-1"}
    assert events[("1", "sagemaker-worker-private.us-west-2.bbbb2222")]["label"] == "dog"
    # Worker cccc3333 drew a box on object 1: no "animal" answer -> a DELETE and a rejection.
    assert events[("1", "sagemaker-worker-private.us-west-2.cccc3333")]["action"] == "DELETE"
    assert len(events) == 6


def test_multi_select_answers_become_multilabel_votes_and_a_rating_is_rejected(tmp_path):
    assert run_pull(TAGS_JOB, tmp_path) == 0
    events = {e["annotator_id"]: e for e in records(tmp_path, "events", "jsonl")}
    assert events["sagemaker-worker-private.us-west-2.aaaa1111"]["labels"] == ["fluffy", "outdoor"]
    assert events["sagemaker-worker-private.us-west-2.aaaa1111"]["label"] is None
    assert events["sagemaker-worker-private.us-west-2.bbbb2222"]["labels"] == ["fluffy"]
    [rejected] = records(tmp_path, "rejected", "rejected")
    assert rejected["reason"] == "UNSUPPORTED_ANSWER_TYPE" and "rating" in rejected["detail"]


def test_unsupported_answer_content_is_rejected_with_a_reason(tmp_path):
    run_pull(JOB, tmp_path)
    [rejected] = records(tmp_path, "rejected", "rejected")
    assert rejected["reason"] == "NO_ANSWER" and "boundingBox" in rejected["detail"]
    assert rejected["file"] == "pets-job/annotations/worker-response/iteration-1/1/2021-01-21T20-46-16.json"
    assert rejected["annotator_id"] == "sagemaker-worker-private.us-west-2.cccc3333"
    assert "workerMetadata" not in rejected["raw"]


def test_worker_identity_data_is_never_written(tmp_path):
    run_pull(JOB, tmp_path / "a")
    run_pull(TAGS_JOB, tmp_path / "b")
    for path in tmp_path.rglob("*"):
        if path.is_file():
            text = path.read_text()
            assert "cognito" not in text.lower() and "11111111-aaaa" not in text and "identityData" not in text


def test_a_second_pull_writes_nothing_and_events_do_not_depend_on_the_folder_named(tmp_path, capsys):
    assert run_pull(JOB, tmp_path) == 0
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    assert run_pull(JOB / "annotations" / "worker-response", tmp_path) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("nothing new")
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()} == before
    single = JOB / "annotations/worker-response/iteration-1/0/2021-01-21T20-43-16.json"
    assert run_pull(single, tmp_path) == 0
    assert capsys.readouterr().out.startswith("nothing new")


def test_several_classifier_keys_need_label_key_and_a_bad_file_is_dead_lettered(tmp_path):
    with pytest.raises(UserError, match="--label-key"):
        pull.pull_sagemaker_gt(str(FIXTURES), "pets", str(tmp_path / "out"))
    copy = tmp_path / "job"
    shutil.copytree(JOB, copy)
    (copy / "annotations/worker-response/iteration-1/2").mkdir()
    (copy / "annotations/worker-response/iteration-1/2/broken.json").write_text("{not json")
    plan, _, rejected_path = pull.pull_sagemaker_gt(str(copy), "pets", str(tmp_path / "out"), "animal")
    assert {r["reason"] for r in plan.rejections} == {"NO_ANSWER", "MALFORMED_RESPONSE"}
    assert rejected_path is not None


def test_end_to_end_pull_then_build(tmp_path):
    from labelbeam.pipelines.build import run_build
    from labelbeam.pipelines.options import BuildConfig

    output, root = tmp_path / "pulled", str(tmp_path / "datasets")
    assert run_pull(JOB, output) == 0
    outcome = run_build(BuildConfig(inputs=(str(output),), output=root, dataset="pets"), ["--runner=FnApiRunner"])
    assert outcome.published
    rows = pq.read_table(os.path.join(outcome.version_dir, "labels", "labels-00000-of-00001.parquet")).to_pylist()
    # Object 0: cat, cat, dog; object 1: dog, dog (the third worker's box is no vote).
    assert {row["item_id"]: (row["label"], row["num_votes"]) for row in rows} == {"0": ("cat", 3), "1": ("dog", 2)}
