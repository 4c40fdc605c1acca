"""Builds publish per-annotator quality under keyed pseudonyms; ds fits the same in process and on Beam;
wmv weighs annotators by a previous version's skills."""
import json
import os
import pathlib

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from labelbeam.pipelines.build import PSEUDONYM_KEY_VARIABLE, accuracy_against, run_build
from labelbeam.pipelines.errors import UserError
from labelbeam.pipelines.generate import write_sample
from labelbeam.pipelines.options import BuildConfig
from labelbeam.transforms.inference.annotator_stats import key_id

BEAM_ARGS = ["--runner=FnApiRunner"]


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    directory = tmp_path_factory.mktemp("sample")
    return directory, write_sample(str(directory), 6_000, seed=23)


def build(sample, output, key: str = "test-key", beam_args: tuple[str, ...] = (), **overrides):
    directory, description = sample
    fields = dict(inputs=(str(directory / "events"),), output=str(output), dataset=description["dataset"],
                  labels=tuple(description["labels"]), truth_path=str(directory / "truth.csv"), force=True)
    fields.update(overrides)
    previous = os.environ.get(PSEUDONYM_KEY_VARIABLE)
    os.environ[PSEUDONYM_KEY_VARIABLE] = key
    try:
        return run_build(BuildConfig(**fields), BEAM_ARGS + list(beam_args))
    finally:
        if previous is None:
            del os.environ[PSEUDONYM_KEY_VARIABLE]
        else:
            os.environ[PSEUDONYM_KEY_VARIABLE] = previous


def tables(outcome):
    labels = pq.read_table(os.path.join(outcome.version_dir, "labels/labels-00000-of-00001.parquet"))
    annotators = pq.read_table(os.path.join(outcome.version_dir, outcome.manifest["annotators"]["file"]))
    return labels, annotators


def test_annotators_are_pseudonymized_and_their_votes_add_up(sample, tmp_path):
    outcome = build(sample, tmp_path, key="k1", method="ds")
    labels, annotators = tables(outcome)
    section = outcome.manifest["annotators"]
    assert section["keyed"] and section["key_id"] == key_id(b"k1") and section["rows"] == annotators.num_rows
    assert section["confusion_labels"] == sorted(sample[1]["labels"])
    manifest_text = json.dumps(outcome.manifest)
    assert "annotator-" not in manifest_text and "k1" not in manifest_text.replace(key_id(b"k1"), "")
    assert not any("annotator-" in name for name in annotators.column("annotator").to_pylist())
    # Every single-label vote is some annotator's vote.
    assert sum(annotators.column("votes").to_pylist()) == sum(labels.column("num_votes").to_pylist())
    rows = annotators.to_pylist()
    assert all(0.0 <= row["accuracy"] <= 1.0 and 0.0 <= row["agreement"] <= 1.0 for row in rows)
    for row in rows:
        for confusion_row in row["confusion"]:
            assert confusion_row is None or abs(sum(confusion_row) - 1.0) < 1e-9
    # The published file is listed with its hash like every other file.
    assert any(entry["path"] == section["file"] for entry in outcome.manifest["files"])


def test_the_same_key_gives_the_same_pseudonyms_another_key_other_ones(sample, tmp_path):
    first = tables(build(sample, tmp_path / "a", key="k1"))[1].column("annotator").to_pylist()
    again = tables(build(sample, tmp_path / "b", key="k1"))[1].column("annotator").to_pylist()
    other = tables(build(sample, tmp_path / "c", key="k2"))[1].column("annotator").to_pylist()
    assert first == again
    assert not set(first) & set(other)


def test_gold_scores_annotators_with_any_method(sample, tmp_path):
    directory, _ = sample
    truth = (directory / "truth.csv").read_text().splitlines()
    gold = tmp_path / "gold.csv"
    gold.write_text("\n".join(truth[:301]) + "\n")  # header and 300 items
    _, annotators = tables(build(sample, tmp_path / "out", method="mv", gold_path=str(gold)))
    rows = [row for row in annotators.to_pylist() if row["gold_votes"]]
    assert rows and all(0.0 <= row["gold_accuracy"] <= 1.0 for row in rows)
    assert sum(row["gold_votes"] for row in rows) <= sum(row["votes"] for row in annotators.to_pylist())


@pytest.mark.parametrize("method, with_gold", [("ds", False), ("ds", True), ("glad", True)],
                         ids=["ds, no gold", "ds, gold, calibrated", "glad, gold, calibrated"])
def test_a_model_on_beam_publishes_what_it_publishes_in_process(sample, tmp_path, method, with_gold):
    gold = {}
    if with_gold:
        gold_path = tmp_path / "gold.csv"
        gold_path.write_text("\n".join((sample[0] / "truth.csv").read_text().splitlines()[:201]) + "\n")
        gold = {"gold_path": str(gold_path)}
    # GLAD's posteriors exponentiate alpha * beta, so the fixed-point rounding of its sums reaches them
    # amplified (tests/transforms/test_distributed_em.py).
    atol = 1e-6 if method == "glad" else 1e-7
    local = build(sample, tmp_path / "local", method=method, em="in_process", **gold)
    distributed = build(sample, tmp_path / "beam", method=method, em="beam", **gold)
    assert local.manifest["params"]["em"] == "in_process" and distributed.manifest["params"]["em"] == "beam"
    assert local.manifest["consensus"]["fit"] == distributed.manifest["consensus"]["fit"]
    (local_labels, local_annotators), (beam_labels, beam_annotators) = tables(local), tables(distributed)
    for column in ("item_id", "label", "num_votes", "status"):
        assert local_labels.column(column).equals(beam_labels.column(column)), column
    np.testing.assert_allclose(local_labels.column("confidence").to_numpy(),
                               beam_labels.column("confidence").to_numpy(), atol=atol)
    assert local.manifest["classes"] == distributed.manifest["classes"] == sorted(sample[1]["labels"])
    np.testing.assert_allclose(np.array(local_labels.column("probabilities").to_pylist()),
                               np.array(beam_labels.column("probabilities").to_pylist()), atol=atol)
    assert local_annotators.column("votes").equals(beam_annotators.column("votes"))
    np.testing.assert_allclose(local_annotators.column("accuracy").to_numpy(),
                               beam_annotators.column("accuracy").to_numpy(), atol=atol)


def test_wmv_weighs_annotators_by_a_previous_versions_skills(sample, tmp_path):
    directory, _ = sample
    plain = build(sample, tmp_path, method="mv")
    skills = build(sample, tmp_path, method="ds")
    weighted = build(sample, tmp_path, method="wmv", skills_from=str(skills.version))
    assert weighted.manifest["params"]["weights_from"] == {"version": skills.version, "key_id": key_id(b"test-key")}
    truth = str(directory / "truth.csv")
    # Spammers and noisy annotators lose their say, so weighting beats the plain vote on this sample.
    assert accuracy_against(truth, weighted)[0] > accuracy_against(truth, plain)[0]
    with pytest.raises(UserError, match="another LABELBEAM_PSEUDONYM_KEY"):
        build(sample, tmp_path, key="other", method="wmv", skills_from="latest")


@pytest.mark.parametrize("method, em", [("mv", "auto"), ("ds", "in_process"), ("ds", "beam")])
def test_bucketing_never_changes_the_published_bytes(sample, tmp_path, method, em):
    """--num_buckets is a speed knob: labels and annotator statistics keep every bit, even where
    floating-point sums run over buckets (EM statistics, annotator sums, the calibration fit)."""
    gold_path = tmp_path / "gold.csv"
    gold_path.write_text("\n".join((sample[0] / "truth.csv").read_text().splitlines()[:101]) + "\n")
    one, other = (build(sample, tmp_path / f"out{buckets}", method=method, em=em, gold_path=str(gold_path),
                        beam_args=(f"--num_buckets={buckets}",)) for buckets in (16, 3))
    for name in ("labels/labels-00000-of-00001.parquet", "labels_avro/labels-00000-of-00001.avro",
                 "annotators/annotators-00000-of-00001.parquet"):
        assert (pathlib.Path(one.version_dir) / name).read_bytes() == (pathlib.Path(other.version_dir) / name).read_bytes(), name


@pytest.mark.parametrize("method, em", [("mv", "in_process"), ("ds", "beam")])   # ds in process: see on_beam test
def test_soft_labels_cover_every_class_in_one_order_whatever_the_method_or_the_order_of_labels(sample, tmp_path,
                                                                                              method, em):
    given = ("zebra", *reversed(sample[1]["labels"]))   # a class nobody voted for, and not in sorted order
    outcome = build(sample, tmp_path / "out", method=method, em=em, labels=given)
    classes = outcome.manifest["classes"]
    assert classes == sorted(given)
    labels, _ = tables(outcome)
    assert json.loads(labels.schema.field("probabilities").metadata[b"labelbeam.classes"]) == classes
    voted = labels.filter(pc.greater(labels.column("num_votes"), 0))
    probabilities = np.array(voted.column("probabilities").to_pylist())
    assert probabilities.shape == (voted.num_rows, len(classes))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-12)
    assert (probabilities[:, classes.index("zebra")] == 0).all()
    # The label is the most probable class and confidence its probability (ties: the first class).
    assert [classes[i] for i in probabilities.argmax(axis=1)] == voted.column("label").to_pylist()
    np.testing.assert_allclose(probabilities.max(axis=1), voted.column("confidence").to_numpy())
    assert labels.filter(pc.equal(labels.column("num_votes"), 0)).column("probabilities").null_count == \
        labels.num_rows - voted.num_rows
