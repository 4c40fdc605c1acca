"""Degenerate annotator-model fits (label switching, collapse onto one class) are caught and give way
to majority vote, and the build says so."""
import os

import numpy as np
import pytest
from crowds import crowd, votes_of
from event_builders import DATASET, event, write_jsonl

from labelbeam.transforms.inference.degenerate import best_matching_gain, degeneracy, vanished_classes
from labelbeam.transforms.inference.em import Answers
from labelbeam.transforms.methods.base import fit_reports, index_votes
from labelbeam.transforms.methods.single_label import DawidSkene, Glad, Mace, MajorityVote, OneCoin

MODELS = [DawidSkene, OneCoin, Glad, Mace]


def test_switched_and_collapsed_fits_by_hand():
    # 30 items: 0-19 voted 0 by both annotators, 20-29 voted 1 by both; one more item split 0/1
    item = np.repeat(np.arange(31), 2)
    label = np.array([0] * 40 + [1] * 20 + [0, 1])
    answers = Answers(item, np.tile([0, 1], 31), label, 31, 2, 2)
    vote = label[::2]
    assert degeneracy(answers, vote) is None
    assert degeneracy(answers, 1 - vote, min_items=5) == ("label switching: permuting its classes agrees with "
                                                          "majority vote on 30 more items")
    assert degeneracy(answers, np.zeros(31, dtype=np.int64), min_items=5) == (
        "collapse: classes the majority gives many items all but vanish from the fit "
        "(class 1 on 0 items where the majority has 10)")
    assert degeneracy(answers, np.zeros(31, dtype=np.int64)) is None   # 10 items: too few to tell (default 20)
    by_vote = np.bincount(vote[:30], minlength=2)
    assert vanished_classes(by_vote, np.bincount(np.r_[np.zeros(29, dtype=np.int64), [1]], minlength=2),
                            min_items=5) == {}
    assert vanished_classes(by_vote, np.bincount(np.zeros(30, dtype=np.int64), minlength=2), min_items=5) == {1: (10, 0)}


def test_best_matching_gain_exact_and_greedy():
    assert best_matching_gain(np.array([[5, 1], [0, 4]])) == 0
    assert best_matching_gain(np.array([[1, 5], [4, 0]])) == 8
    cycle = np.roll(np.eye(10, dtype=np.int64) * 3, 1, axis=1)   # every class k read as k+1: greedy finds it
    assert best_matching_gain(cycle) == 30
    assert best_matching_gain(np.eye(10, dtype=np.int64)) == 0


def test_a_collapsed_fit_gives_way_to_majority_vote_and_reports_why():
    rows, _ = crowd(seed=0)
    votes = votes_of(rows)
    result = OneCoin().consensus_of(votes)   # one_coin folds every item into class c0 here
    [report] = fit_reports([result.labels])
    assert report["model"] == "one_coin" and report["degenerate"] and report["fallback"] == "mv"
    assert report["reason"].startswith(("label switching", "collapse")), report
    majority = MajorityVote().consensus_of(votes).labels
    for column in ("item_id", "label", "confidence", "probabilities"):
        assert result.labels.column(column).equals(majority.column(column)), column


CAUGHT = [  # (model, crowd) pairs whose unchecked fit scored far below majority vote: (unchecked, vote)
    (OneCoin, dict(seed=0, n_labels=8, per_item=2, adversarial=0.25, biased=0.25)),   # 0.15, 0.46
    (OneCoin, dict(seed=0, n_labels=4, per_item=3, adversarial=0.3, biased=0.3)),     # 0.23, 0.46
    (OneCoin, dict(seed=2, n_labels=6, per_item=3, adversarial=0.3, biased=0.2)),     # 0.18, 0.59
    (DawidSkene, dict(seed=3, n_labels=2, per_item=3, adversarial=0.2, biased=0.5)),  # 0.16, 0.55
]


@pytest.mark.parametrize("method, crowd_args", CAUGHT, ids=lambda value: getattr(value, "name", None))
def test_a_degenerate_fit_is_caught_and_the_vote_published_instead(method, crowd_args):
    rows, truth = crowd(**crowd_args)
    answers = index_votes(votes_of(rows), {}).answers
    unchecked = method().fit_model(answers, None).posteriors.argmax(axis=1)
    published = method().consensus_of(votes_of(rows)).labels.column("label").to_pylist()
    majority = MajorityVote().consensus_of(votes_of(rows)).labels.column("label").to_pylist()
    assert published == majority
    assert np.mean(unchecked == truth) + 0.2 < np.mean([int(label[1:]) == true for label, true in zip(published, truth)])


def test_sane_fits_are_kept():
    rows, truth = crowd(seed=2, n_labels=3, adversarial=0.0, biased=0.0, per_item=5)
    for method in MODELS:
        labels = method().consensus_of(votes_of(rows)).labels
        [report] = fit_reports([labels])
        assert report == {"model": method.name, "degenerate": False}
    assert fit_reports([MajorityVote().consensus_of(votes_of(rows)).labels]) == []


def test_the_build_reports_a_degenerate_fit_in_the_manifest_and_the_summary(tmp_path):
    from labelbeam.pipelines.build import PSEUDONYM_KEY_VARIABLE, format_summary, run_build
    from labelbeam.pipelines.options import BuildConfig

    rows, _ = crowd(seed=0)
    events = [event(f"e{n}", item=item, annotator=worker, label=label) for n, (item, worker, label) in enumerate(rows)]
    write_jsonl(tmp_path / "events.jsonl", events)
    config = BuildConfig(inputs=(str(tmp_path / "events.jsonl"),), output=str(tmp_path / "out"), dataset=DATASET,
                         method="one_coin")
    os.environ.setdefault(PSEUDONYM_KEY_VARIABLE, "test-key")
    outcome = run_build(config, ["--runner=FnApiRunner"])
    fit = outcome.manifest["consensus"]["fit"]
    assert fit["degenerate"] and fit["fallback"] == "mv" and fit["model"] == "one_coin"
    assert any(line.startswith("  WARNING: the one_coin fit is degenerate, so the labels are mv's")
               for line in format_summary(config, outcome).splitlines())
