"""MACE core: recovers known competences, flags spammers, by-hand E- and M-steps.

The contract all annotator models share is in test_annotator_model_contract.py.
"""
import numpy as np
import pytest

from labelbeam.transforms.inference.em import Answers, vote_shares
from labelbeam.transforms.inference.mace import e_step, m_step, mace


def synthetic(seed: int, competence: np.ndarray, spam_distribution: np.ndarray, n_items: int = 3_000,
              answers_per_item: int = 5):
    """Answers from the MACE story: uniform true classes; the annotator knows (theta) or spams from xi."""
    rng = np.random.default_rng(seed)
    n_workers, n_labels = spam_distribution.shape
    truth = rng.integers(0, n_labels, n_items)
    item = np.repeat(np.arange(n_items), answers_per_item)
    worker = np.argsort(rng.random((n_items, n_workers)), axis=1)[:, :answers_per_item].ravel()
    knows = rng.random(len(item)) < competence[worker]
    spam = (rng.random(len(item))[:, None] > np.cumsum(spam_distribution[worker], axis=1)).sum(axis=1)
    label = np.where(knows, truth[item], np.minimum(spam, n_labels - 1))
    return Answers(item, worker, label, n_items, n_workers, n_labels), truth


def test_em_recovers_known_competences_and_spam_distributions():
    rng = np.random.default_rng(100)
    competence = rng.uniform(0.3, 0.95, 12)
    spam_distribution = rng.dirichlet(np.ones(3), 12)
    answers, _ = synthetic(seed=0, competence=competence, spam_distribution=spam_distribution)
    result = mace(answers)
    assert result.converged
    assert np.abs(result.competence - competence).max() < 0.05
    # xi is only seen through the spam answers: check annotators who spam at least a third of the time.
    spammy = competence < 2 / 3
    assert np.abs(result.spam_distribution[spammy] - spam_distribution[spammy]).max() < 0.1


def test_em_flags_spammers_and_beats_majority_vote():
    # Four careful annotators and four spammers: two always answer 0, two answer uniformly at random.
    competence = np.array([0.8, 0.8, 0.8, 0.8, 0.0, 0.0, 0.0, 0.0])
    spam_distribution = np.array([[1 / 3] * 3] * 4 + [[1.0, 0.0, 0.0]] * 2 + [[1 / 3] * 3] * 2)
    answers, truth = synthetic(seed=1, competence=competence, spam_distribution=spam_distribution)
    majority = vote_shares(answers).argmax(axis=1)
    result = mace(answers)
    assert np.mean(result.posteriors.argmax(axis=1) == truth) > np.mean(majority == truth) + 0.05
    assert (result.competence[4:] < 0.1).all()
    assert (result.competence[:4] > 0.7).all()
    assert (result.spam_distribution[4:6, 0] > 0.95).all()


def test_gold_tells_the_annotator_who_agrees_with_it_from_the_one_who_does_not():
    # On 20 items annotator 0 always gives the gold class and annotator 1 the other one. Without gold
    # the two are interchangeable; with it, annotator 0 knows and annotator 1 spams.
    gold = np.arange(20) % 2
    answers = Answers(np.repeat(np.arange(20), 2), np.tile([0, 1], 20), np.stack([gold, 1 - gold], axis=1).ravel(),
                      20, 2, 2)
    unsupervised = mace(answers)
    assert unsupervised.competence[0] == pytest.approx(unsupervised.competence[1])
    anchored = mace(answers, gold=gold)
    assert anchored.competence[0] > 0.99
    assert anchored.competence[1] < 0.01


def test_e_step_by_hand():
    # Competence 0.8, spam distribution [0.3, 0.7], uniform priors, the annotator said 1:
    # class 0: 0.5 * 0.2 * 0.7 = 0.07; class 1: 0.5 * (0.8 + 0.2 * 0.7) = 0.47.
    answers = Answers(np.array([0]), np.array([0]), np.array([1]), 1, 1, 2)
    posteriors, log_likelihood = e_step(answers, np.log([0.5, 0.5]), np.array([0.8]), np.array([[0.3, 0.7]]))
    assert posteriors[0] == pytest.approx([0.07 / 0.54, 0.47 / 0.54])
    assert log_likelihood == pytest.approx(np.log(0.54))


def test_m_step_by_hand():
    # One answer (class 1), posterior [0.5, 0.5], competence 0.5, uniform xi: it is known with probability
    # 0.5 * 0.5 / (0.5 + 0.5 * 0.5) = 1/3 and spam on class 1 with probability 2/3. Smoothing 0.1:
    # competence (1/3 + 0.1) / (1 + 0.2); xi = [0.1, 2/3 + 0.1] / (2/3 + 0.2).
    answers = Answers(np.array([0]), np.array([0]), np.array([1]), 1, 1, 2)
    competence, spam_distribution = m_step(answers, np.array([[0.5, 0.5]]), np.array([0.5]),
                                           np.array([[0.5, 0.5]]), smoothing=0.1)
    assert competence == pytest.approx([(1 / 3 + 0.1) / 1.2])
    assert spam_distribution[0] == pytest.approx(np.array([0.1, 2 / 3 + 0.1]) / (2 / 3 + 0.2))


def test_default_smoothing_is_maces_one_hundredth_per_class():
    answers, _ = synthetic(seed=5, competence=np.full(6, 0.7), spam_distribution=np.full((6, 3), 1 / 3), n_items=200)
    assert np.array_equal(mace(answers).posteriors, mace(answers, smoothing=0.01 / 3).posteriors)


def test_fixed_class_priors_shift_the_posteriors():
    one = Answers(np.array([0]), np.array([0]), np.array([1]), n_items=1, n_workers=1, n_labels=2)
    uniform = mace(one).posteriors[0, 1]
    assert mace(one, class_priors=np.array([9.0, 1.0])).posteriors[0, 1] < uniform
    with pytest.raises(ValueError, match="class_priors must be 2 positive numbers"):
        mace(one, class_priors=np.array([1.0, 0.0]))
