"""One-coin Dawid-Skene core: recovers known accuracies, anchors accuracies on gold, by-hand E- and M-steps.

The contract all annotator models share is in test_annotator_model_contract.py.
"""
import numpy as np
import pytest
from test_annotator_model_contract import answers_from_accuracies  # the one-coin story

from labelbeam.transforms.inference.em import Answers, canonical_answers, class_log_likelihoods
from labelbeam.transforms.inference.one_coin import e_step, m_step, one_coin


def test_em_recovers_known_accuracies_and_priors():
    accuracy = np.random.default_rng(100).uniform(0.55, 0.95, 12)
    answers, truth = answers_from_accuracies(seed=0, accuracy=accuracy)
    result = one_coin(answers)
    assert result.converged
    assert np.abs(result.accuracy - accuracy).max() < 0.05
    assert np.allclose(result.priors, np.bincount(truth, minlength=3) / len(truth), atol=0.02)


def test_gold_sets_the_accuracy_of_annotators_who_answered_it():
    # Two annotators agree on class 0 for 20 items whose gold is class 1: alone they look perfect.
    item = np.repeat(np.arange(20), 2)
    answers = Answers(item, np.tile([0, 1], 20), np.zeros(40, dtype=np.int64), 20, 2, 2)
    assert (one_coin(answers).accuracy > 0.99).all()
    anchored = one_coin(answers, gold=np.ones(20, dtype=np.int64))
    assert (anchored.accuracy < 0.01).all()


def test_annotator_who_always_answers_one_class_is_judged_at_chance():
    accuracy = np.array([0.85, 0.85, 0.85, 0.85, 0.5])
    answers, truth = answers_from_accuracies(seed=6, accuracy=accuracy, n_items=2_000, priors=(0.5, 0.5))
    constant = answers.worker == 4
    answers = answers._replace(label=np.where(constant, 0, answers.label))
    result = one_coin(answers)
    assert np.all(np.isfinite(result.posteriors))
    assert abs(result.accuracy[4] - np.mean(truth[answers.item[constant]] == 0)) < 0.05


def test_e_step_by_hand():
    # Priors [0.5, 0.3, 0.2]. Annotator 0 (accuracy 0.7) said 0, annotator 1 (accuracy 0.9) said 1.
    # Class 0: 0.5 * 0.7 * 0.05 = 0.0175; class 1: 0.3 * 0.15 * 0.9 = 0.0405; class 2: 0.2 * 0.15 * 0.05 = 0.0015.
    answers = Answers(np.array([0, 0]), np.array([0, 1]), np.array([0, 1]), 1, 2, 3)
    posteriors, log_likelihood = e_step(answers, np.log([0.5, 0.3, 0.2]), np.array([0.7, 0.9]))
    assert posteriors[0] == pytest.approx(np.array([0.0175, 0.0405, 0.0015]) / 0.0595)
    assert log_likelihood == pytest.approx(np.log(0.0595))


def test_m_step_by_hand():
    # Annotator 0 said 0 on item 0 (surely class 0) and 1 on item 1 (class 1 with probability 0.75):
    # 1.75 expected right of 2. Smoothing 0.5 with two classes adds 1 right and 1 wrong: (1.75 + 1) / 4.
    answers = Answers(np.array([0, 1]), np.array([0, 0]), np.array([0, 1]), 2, 1, 2)
    log_priors, accuracy = m_step(answers, np.array([[1.0, 0.0], [0.25, 0.75]]), smoothing=0.5)
    assert accuracy == pytest.approx([2.75 / 4])
    assert np.exp(log_priors) == pytest.approx([1.75 / 3, 1.25 / 3])


def test_impossible_answers_without_smoothing_give_uniform_not_nan():
    # Two infallible annotators disagree: every class has probability 0.
    answers = Answers(np.array([0, 0]), np.array([0, 1]), np.array([0, 1]), 1, 2, 2)
    log_joint = class_log_likelihoods(answers, np.log([1.0, 1.0]), np.array([-np.inf, -np.inf]))
    assert (log_joint == -np.inf).all()
    posteriors, log_likelihood = e_step(answers, np.log([0.5, 0.5]), np.array([1.0, 1.0]))
    assert np.allclose(posteriors, 0.5)
    assert log_likelihood == -np.inf


def test_answers_out_of_range_are_rejected():
    with pytest.raises(ValueError, match="answers.label must lie in"):
        canonical_answers(Answers(np.array([0]), np.array([0]), np.array([2]), 1, 1, 2))
    answers = Answers(np.array([0]), np.array([0]), np.array([1]), 1, 1, 2)
    with pytest.raises(ValueError, match="gold must have shape"):
        one_coin(answers, gold=np.array([0, 1]))
