"""GLAD core: recovers known abilities, sees through adversaries, ascends Q, by-hand E-steps.

The contract all annotator models share is in test_annotator_model_contract.py.
"""
import numpy as np
import pytest

from labelbeam.transforms.inference import glad as glad_module
from labelbeam.transforms.inference.em import Answers, canonical_answers, vote_shares
from labelbeam.transforms.inference.glad import (
    ABILITY_SLACK,
    GaussianPrior,
    ability_proposal,
    ability_statistics,
    ability_terms,
    accepted_ability,
    e_step,
    expected_log_posterior,
    glad,
    m_step,
)


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def synthetic(seed: int, ability: np.ndarray, n_items: int = 3_000, answers_per_item: int = 6, n_labels: int = 3):
    """Answers from the GLAD story with log inverse difficulties drawn from the N(1, 1) prior."""
    rng = np.random.default_rng(seed)
    n_workers = len(ability)
    log_beta = rng.normal(1.0, 1.0, n_items)
    truth = rng.integers(0, n_labels, n_items)
    item = np.repeat(np.arange(n_items), answers_per_item)
    worker = np.argsort(rng.random((n_items, n_workers)), axis=1)[:, :answers_per_item].ravel()
    p_right = sigmoid(ability[worker] * np.exp(log_beta[item]))
    wrong = (truth[item] + rng.integers(1, n_labels, len(item))) % n_labels
    label = np.where(rng.random(len(item)) < p_right, truth[item], wrong)
    return Answers(item, worker, label, n_items, n_workers, n_labels), truth, log_beta


def per_annotator_accuracy(answers: Answers, ability: np.ndarray, log_beta: np.ndarray) -> np.ndarray:
    """Each annotator's mean P(right) over the items they answered."""
    p_right = sigmoid(ability[answers.worker] * np.exp(log_beta[answers.item]))
    return np.bincount(answers.worker, p_right) / np.bincount(answers.worker)


def test_em_recovers_known_abilities():
    # Abilities from the N(1, 1) prior. Large abilities saturate (every answer right) and only the
    # product alpha * beta is seen, so compare what the answers pin down: each annotator's accuracy
    # over their items, and the ranking of abilities. Each beta rests on 10 answers and is shrunk
    # towards its prior, which costs single annotators' fitted accuracies a few points.
    ability = np.random.default_rng(100).normal(1.0, 1.0, 20)
    answers, _, log_beta = synthetic(seed=0, ability=ability, answers_per_item=10)
    result = glad(answers)
    assert result.converged
    true_accuracy = per_annotator_accuracy(answers, ability, log_beta)
    fitted_accuracy = per_annotator_accuracy(answers, result.ability, np.log(result.inverse_difficulty))
    assert np.abs(fitted_accuracy - true_accuracy).mean() < 0.035
    assert np.abs(fitted_accuracy - true_accuracy).max() < 0.1
    assert np.corrcoef(result.ability, ability)[0, 1] > 0.97
    assert np.corrcoef(np.log(result.inverse_difficulty), log_beta)[0, 1] > 0.6


def test_em_beats_majority_vote_with_adversarial_and_clueless_annotators():
    ability = np.array([2.0, 2.0, 1.5, 0.0, 0.0, 0.0, -0.5, -0.5])
    answers, truth, _ = synthetic(seed=1, ability=ability, answers_per_item=5, n_labels=2)
    majority = vote_shares(answers).argmax(axis=1)
    result = glad(answers)
    assert np.mean(result.posteriors.argmax(axis=1) == truth) > np.mean(majority == truth) + 0.05
    assert (result.ability[:3] > 1.0).all() and (result.ability[6:] < 0).all()


def test_gold_lowers_the_ability_of_annotators_who_contradict_it():
    item = np.repeat(np.arange(20), 2)
    answers = Answers(item, np.tile([0, 1], 20), np.zeros(40, dtype=np.int64), 20, 2, 2)
    assert (glad(answers).ability > 1.0).all()
    assert (glad(answers, gold=np.ones(20, dtype=np.int64)).ability < 0).all()


def test_annotator_who_always_answers_one_class_gets_little_weight():
    answers, truth, _ = synthetic(seed=5, ability=np.array([1.5, 1.5, 1.5, 1.5, 1.0]), n_items=2_000,
                                  answers_per_item=5, n_labels=2)
    constant = answers.worker == 4
    answers = answers._replace(label=np.where(constant, 0, answers.label))
    result = glad(answers)
    assert np.all(np.isfinite(result.posteriors))
    assert abs(result.ability[4]) < 0.3


def test_e_step_by_hand():
    # Item with beta = 1. Ability 2 said 0, ability 0 (a coin flip) said 1. Uniform priors over 2 classes:
    # class 0: 0.5 * sigmoid(2) * 0.5, class 1: 0.5 * (1 - sigmoid(2)) * 0.5; their sum is 0.25.
    answers = Answers(np.array([0, 0]), np.array([0, 1]), np.array([0, 1]), 1, 2, 2)
    posteriors, log_likelihood = e_step(answers, np.log([0.5, 0.5]), np.array([2.0, 0.0]), np.array([0.0]))
    assert posteriors[0] == pytest.approx([0.8807970779778823, 0.1192029220221176])
    assert log_likelihood == pytest.approx(np.log(0.25))


def test_e_step_spreads_errors_over_the_other_classes():
    # Three classes, ability 1, beta = 1: the named class gets sigmoid(1) = 0.7311, each other (1 - 0.7311) / 2.
    answers = Answers(np.array([0]), np.array([0]), np.array([2]), 1, 1, 3)
    posteriors, _ = e_step(answers, np.log(np.full(3, 1 / 3)), np.array([1.0]), np.array([0.0]))
    assert posteriors[0] == pytest.approx([0.1344707107, 0.1344707107, 0.7310585786])


def test_expected_log_posterior_by_hand():
    # One answer on class 2 of 3, P(right) = 0.75; ability 1, log beta 0, priors N(1, 1):
    # 0.75 log sigmoid(1) + 0.25 (log(1 - sigmoid(1)) - log 2) - (0^2 + 1^2) / 2.
    answers = Answers(np.array([0]), np.array([0]), np.array([2]), 1, 1, 3)
    posteriors = np.array([[0.125, 0.125, 0.75]])
    q = expected_log_posterior(answers, posteriors, np.array([1.0]), np.array([0.0]))
    assert q == pytest.approx(0.75 * -0.3132616875 + 0.25 * (-1.3132616875 - 0.6931471806) - 0.5)


def test_m_step_never_lowers_q_and_stops_where_its_gradient_vanishes():
    answers, _, _ = synthetic(seed=6, ability=np.array([2.0, 1.0, 0.5, -0.5]), n_items=60, answers_per_item=3)
    posteriors, _ = e_step(answers, np.log(np.full(3, 1 / 3)), np.ones(4), np.ones(60))
    prior = GaussianPrior(1.0, 1.0)
    ability, log_beta = np.ones(4), np.ones(60)
    q = [expected_log_posterior(answers, posteriors, ability, log_beta)]
    for _ in range(30):
        ability, log_beta = m_step(answers, posteriors, ability, log_beta, prior, prior, iterations=1)
        q.append(expected_log_posterior(answers, posteriors, ability, log_beta))
    assert np.all(np.diff(q) >= -1e-9)
    h = 1e-6
    for w in range(4):
        bumped = ability.copy()
        bumped[w] += h
        slope = (expected_log_posterior(answers, posteriors, bumped, log_beta) - q[-1]) / h
        assert abs(slope) < 1e-3


@pytest.mark.parametrize("seed", range(6))
def test_an_ability_step_never_lowers_an_annotators_term_and_its_fallback_never_does_either(seed):
    """The Newton candidate is kept only where it does not lower the annotator's term of Q (by more than
    ABILITY_SLACK); the Jaakkola-Jordan bound's maximum, the fallback, never lowers it (it is an MM step),
    even from abilities far from the optimum, where Newton overshoots."""
    rng = np.random.default_rng(seed)
    n_workers, n_answers = 40, 400
    answers = Answers(rng.integers(0, 100, n_answers), rng.integers(0, n_workers, n_answers),
                      rng.integers(0, 3, n_answers), 100, n_workers, 3)
    p_right = rng.random(n_answers) ** rng.uniform(0.2, 3.0)
    ability, log_beta = rng.normal(0.0, 4.0, n_workers), rng.normal(1.0, 1.5, 100)
    prior = GaussianPrior(1.0, 1.0)

    def term(a):
        return ability_terms(answers, p_right, a, log_beta) - 0.5 * (a - prior.mean) ** 2 / prior.variance

    proposal = ability_proposal(ability_statistics(answers, p_right, ability, log_beta), ability, prior)
    before = term(ability)
    np.testing.assert_allclose(proposal.before, before, rtol=1e-12)
    assert np.all(term(proposal.bounded) >= before - 1e-9 * np.abs(before))
    stepped = accepted_ability(proposal, ability_terms(answers, p_right, proposal.newton, log_beta), prior)
    assert np.all(term(stepped) >= before - 1e-9 * np.abs(before) - ABILITY_SLACK)
    newton_lowers = term(proposal.newton) < before - 1e-9 * np.abs(before) - ABILITY_SLACK
    assert newton_lowers.any() and not newton_lowers.all()   # both branches are exercised
    np.testing.assert_array_equal(stepped[newton_lowers], proposal.bounded[newton_lowers])
    np.testing.assert_array_equal(stepped[~newton_lowers], proposal.newton[~newton_lowers])


def test_a_fit_in_item_blocks_is_the_one_block_fit(monkeypatch):
    """glad() runs its passes over blocks of items (glad.BLOCK_ANSWERS answers each) for speed; blocks
    change only the order of the ability sums, never the fit."""
    answers, _, _ = synthetic(seed=7, ability=np.array([2.0, 1.0, 0.5, -0.5, 1.5]), n_items=400,
                              answers_per_item=3)
    answers = answers._replace(n_items=402)   # two items without answers, at the end
    gold = np.full(402, -1)
    gold[[3, 250]] = [0, 2]
    whole = glad(answers, gold=gold)
    monkeypatch.setattr(glad_module, "BLOCK_ANSWERS", 100)
    blocks = glad_module.item_blocks(canonical_answers(answers), 100)
    assert len(blocks) == 12 and blocks[0].start == 0 and blocks[-1].stop == 402
    assert [block.stop for block in blocks[:-1]] == [block.start for block in blocks[1:]]
    assert sum(len(block.answers.item) for block in blocks) == len(answers.item)
    blocked = glad(answers, gold=gold)
    assert blocked.iterations == whole.iterations
    np.testing.assert_allclose(blocked.posteriors, whole.posteriors, atol=1e-12)
    np.testing.assert_allclose(blocked.ability, whole.ability, atol=1e-12)
    assert blocked.log_likelihood == pytest.approx(whole.log_likelihood, rel=1e-12)


def test_nonpositive_prior_variance_is_rejected():
    answers = Answers(np.array([0]), np.array([0]), np.array([1]), 1, 1, 2)
    with pytest.raises(ValueError, match="prior variances must be > 0"):
        glad(answers, ability_prior=(1.0, 0.0))
