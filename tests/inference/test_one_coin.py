"""One-coin Dawid-Skene core: recovers known accuracies, beats majority vote, clamps gold, stays deterministic."""
import numpy as np
import pytest

from labelbeam.transforms.inference.em import Answers, canonical_answers, class_log_likelihoods, vote_shares
from labelbeam.transforms.inference.one_coin import e_step, m_step, one_coin


def synthetic(seed: int, accuracy: np.ndarray, n_items: int = 3_000, answers_per_item: int = 5,
              priors: tuple[float, ...] = (0.5, 0.3, 0.2)):
    """Answers from the one-coin story: right with the annotator's accuracy, else a uniform other class."""
    rng = np.random.default_rng(seed)
    n_workers, n_labels = len(accuracy), len(priors)
    truth = rng.choice(n_labels, size=n_items, p=priors)
    item = np.repeat(np.arange(n_items), answers_per_item)
    worker = np.argsort(rng.random((n_items, n_workers)), axis=1)[:, :answers_per_item].ravel()
    right = rng.random(len(item)) < accuracy[worker]
    wrong = (truth[item] + rng.integers(1, n_labels, len(item))) % n_labels
    label = np.where(right, truth[item], wrong)
    return Answers(item, worker, label, n_items, n_workers, n_labels), truth


def test_em_recovers_known_accuracies_and_priors():
    accuracy = np.random.default_rng(100).uniform(0.55, 0.95, 12)
    answers, truth = synthetic(seed=0, accuracy=accuracy)
    result = one_coin(answers)
    assert result.converged
    assert np.abs(result.accuracy - accuracy).max() < 0.05
    assert np.allclose(result.priors, np.bincount(truth, minlength=3) / len(truth), atol=0.02)


def test_em_beats_majority_vote_when_most_annotators_are_poor():
    accuracy = np.array([0.9, 0.9, 0.9] + [0.4] * 7)
    answers, truth = synthetic(seed=1, accuracy=accuracy)
    majority = vote_shares(answers).argmax(axis=1)
    result = one_coin(answers)
    assert np.mean(result.posteriors.argmax(axis=1) == truth) > np.mean(majority == truth) + 0.05


def test_posteriors_and_parameters_are_distributions():
    answers, _ = synthetic(seed=2, accuracy=np.full(6, 0.7), n_items=300)
    result = one_coin(answers)
    assert np.allclose(result.posteriors.sum(axis=1), 1)
    assert np.isclose(result.priors.sum(), 1)
    assert ((result.accuracy > 0) & (result.accuracy < 1)).all()


def test_gold_items_keep_their_class_even_when_wrong():
    answers, truth = synthetic(seed=3, accuracy=np.full(8, 0.8), n_items=500)
    gold = np.full(answers.n_items, -1)
    gold[:50] = (truth[:50] + 1) % 3
    result = one_coin(answers, gold=gold)
    assert (result.posteriors[:50].argmax(axis=1) == gold[:50]).all()
    assert np.allclose(result.posteriors[:50].max(axis=1), 1.0)


def test_gold_sets_the_accuracy_of_annotators_who_answered_it():
    # Two annotators agree on class 0 for 20 items whose gold is class 1: alone they look perfect.
    item = np.repeat(np.arange(20), 2)
    answers = Answers(item, np.tile([0, 1], 20), np.zeros(40, dtype=np.int64), 20, 2, 2)
    assert (one_coin(answers).accuracy > 0.99).all()
    anchored = one_coin(answers, gold=np.ones(20, dtype=np.int64))
    assert (anchored.accuracy < 0.01).all()


def test_fit_is_byte_identical_whatever_the_answer_order():
    answers, _ = synthetic(seed=5, accuracy=np.linspace(0.5, 0.9, 7), n_items=400)
    first = one_coin(answers)
    order = np.random.default_rng(0).permutation(len(answers.item))
    shuffled = answers._replace(item=answers.item[order], worker=answers.worker[order], label=answers.label[order])
    again = one_coin(shuffled)
    assert np.array_equal(first.posteriors, again.posteriors)
    assert np.array_equal(first.accuracy, again.accuracy)
    assert first.iterations == again.iterations


def test_single_answer_decides_its_item():
    one = Answers(np.array([0]), np.array([0]), np.array([1]), n_items=1, n_workers=1, n_labels=2)
    assert one_coin(one).posteriors[0].argmax() == 1


def test_single_class_gives_certain_posteriors():
    only_class = Answers(np.array([0, 1]), np.array([0, 0]), np.array([0, 0]), n_items=2, n_workers=1, n_labels=1)
    result = one_coin(only_class)
    assert np.allclose(result.posteriors, 1.0)
    assert np.allclose(result.accuracy, 1.0)


def test_items_without_answers_get_uniform_posteriors():
    answers = Answers(np.array([0, 0, 2]), np.array([0, 1, 0]), np.array([1, 1, 0]), n_items=4, n_workers=3,
                      n_labels=3)
    result = one_coin(answers)
    assert np.allclose(result.posteriors[[1, 3]], 1 / 3)
    assert np.allclose(result.accuracy[2], 1 / 3)   # annotator 2 never answered: no better than chance


def test_no_answers_at_all_gives_uniform_posteriors():
    empty = np.array([], dtype=np.int64)
    result = one_coin(Answers(empty, empty, empty, n_items=3, n_workers=2, n_labels=2))
    assert np.allclose(result.posteriors, 0.5)
    assert result.converged


def test_annotator_who_always_answers_one_class_is_judged_at_chance():
    accuracy = np.array([0.85, 0.85, 0.85, 0.85, 0.5])
    answers, truth = synthetic(seed=6, accuracy=accuracy, n_items=2_000, priors=(0.5, 0.5))
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
