"""Dawid-Skene core: recovers known confusion matrices, beats majority vote on them, by-hand E- and M-steps.

The contract all annotator models share is in test_annotator_model_contract.py.
"""
import numpy as np
import pytest

from labelbeam.transforms.inference.dawid_skene import dawid_skene, e_step, m_step
from labelbeam.transforms.inference.em import Answers, vote_shares


def synthetic(seed: int, n_items: int = 3_000, n_workers: int = 12, answers_per_item: int = 5):
    """Answers from workers with known confusion matrices (diagonals 0.6-0.95), and the true classes."""
    rng = np.random.default_rng(seed)
    n_labels = 3
    accuracy = rng.uniform(0.6, 0.95, n_workers)
    confusions = np.empty((n_workers, n_labels, n_labels))
    for w in range(n_workers):
        for k in range(n_labels):
            off = rng.dirichlet(np.ones(n_labels - 1)) * (1 - accuracy[w])
            confusions[w, k] = np.insert(off, k, accuracy[w])
    truth = rng.choice(n_labels, size=n_items, p=[0.5, 0.3, 0.2])
    item = np.repeat(np.arange(n_items), answers_per_item)
    worker = np.concatenate([rng.choice(n_workers, answers_per_item, replace=False) for _ in range(n_items)])
    label = np.array([rng.choice(n_labels, p=confusions[w, truth[i]]) for i, w in zip(item, worker)])
    return Answers(item, worker, label, n_items, n_workers, n_labels), truth, confusions


def test_em_recovers_known_confusion_matrices_and_priors():
    answers, truth, confusions = synthetic(seed=0)
    result = dawid_skene(answers)
    assert result.converged
    assert np.abs(result.confusions - confusions).max() < 0.08
    assert np.allclose(result.priors, np.bincount(truth, minlength=3) / len(truth), atol=0.03)


def test_em_beats_majority_vote_with_asymmetric_confusions():
    answers, truth, _ = synthetic(seed=1)
    majority = vote_shares(answers).argmax(axis=1)
    result = dawid_skene(answers)
    assert np.mean(result.posteriors.argmax(axis=1) == truth) > np.mean(majority == truth)


def test_e_step_by_hand():
    # One worker, two classes; confusion [[0.9, 0.1], [0.2, 0.8]]; prior [0.5, 0.5]; the worker answered 0.
    answers = Answers(np.array([0]), np.array([0]), np.array([0]), 1, 1, 2)
    posteriors, log_likelihood = e_step(answers, np.log([0.5, 0.5]), np.log([[[0.9, 0.1], [0.2, 0.8]]]))
    assert posteriors[0] == pytest.approx([0.9 / 1.1, 0.2 / 1.1])
    assert log_likelihood == pytest.approx(np.log(0.5 * 0.9 + 0.5 * 0.2))


def test_m_step_by_hand():
    # Item 0 surely class 0, item 1 surely class 1; worker 0 answered 0 and 0.
    answers = Answers(np.array([0, 1]), np.array([0, 0]), np.array([0, 0]), 2, 1, 2)
    log_priors, log_confusions = m_step(answers, np.array([[1.0, 0.0], [0.0, 1.0]]), smoothing=0.0)
    assert np.exp(log_priors) == pytest.approx([0.5, 0.5])
    assert np.exp(log_confusions[0]) == pytest.approx(np.array([[1.0, 0.0], [1.0, 0.0]]))
