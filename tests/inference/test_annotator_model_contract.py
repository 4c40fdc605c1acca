"""The contract every annotator model keeps (Dawid-Skene, one-coin, GLAD, MACE), run against each.

A fit returns a NamedTuple with `posteriors` [n_items, n_labels], `iterations`, `converged` and the
model's own parameters. Posteriors are distributions, gold items keep their class, answer order does
not matter, degenerate inputs give sensible posteriors, and learning who is reliable beats majority
vote. What each model's parameters must look like is the one thing said per model, in MODELS.
Recovery of known parameters, hand-worked E- and M-steps and model-specific behaviours stay in
test_<model>.py.
"""
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import pytest

from labelbeam.transforms.inference.dawid_skene import dawid_skene
from labelbeam.transforms.inference.em import Answers, vote_shares
from labelbeam.transforms.inference.glad import glad
from labelbeam.transforms.inference.mace import mace
from labelbeam.transforms.inference.one_coin import one_coin


def answers_from_accuracies(seed: int, accuracy: np.ndarray, n_items: int = 3_000, answers_per_item: int = 5,
                            priors: tuple[float, ...] = (0.5, 0.3, 0.2)) -> tuple[Answers, np.ndarray]:
    """(answers, true classes): annotator w gives the true class with probability accuracy[w], else a
    uniformly drawn other class; each item is answered by `answers_per_item` distinct annotators."""
    rng = np.random.default_rng(seed)
    n_workers, n_labels = len(accuracy), len(priors)
    truth = rng.choice(n_labels, size=n_items, p=priors)
    item = np.repeat(np.arange(n_items), answers_per_item)
    worker = np.argsort(rng.random((n_items, n_workers)), axis=1)[:, :answers_per_item].ravel()
    right = rng.random(len(item)) < accuracy[worker]
    wrong = (truth[item] + rng.integers(1, n_labels, len(item))) % n_labels
    label = np.where(right, truth[item], wrong)
    return Answers(item, worker, label, n_items, n_workers, n_labels), truth


# Per-model checks. `*_parameters_are_valid(result)` asserts what the model's parameters must satisfy
# after any fit; `*_unanswered_keep_their_prior(result, items, workers)` asserts that the parameters
# of items and annotators without answers are where the model starts them.

def dawid_skene_parameters_are_valid(result):
    assert np.isclose(result.priors.sum(), 1)
    assert np.allclose(result.confusions.sum(axis=2), 1)
    assert ((result.confusions >= 0) & (result.confusions <= 1)).all()


def dawid_skene_unanswered_keep_their_prior(result, items, workers):
    n_labels = result.posteriors.shape[1]
    assert np.allclose(result.confusions[workers], 1 / n_labels)   # smoothing alone: uniform rows


def one_coin_parameters_are_valid(result):
    assert np.isclose(result.priors.sum(), 1)
    if result.posteriors.shape[1] == 1:
        assert np.allclose(result.accuracy, 1.0)   # a single class: every answer is right
    else:
        assert ((result.accuracy > 0) & (result.accuracy < 1)).all()


def one_coin_unanswered_keep_their_prior(result, items, workers):
    n_labels = result.posteriors.shape[1]
    assert np.allclose(result.accuracy[workers], 1 / n_labels)    # never answered: no better than chance


def glad_parameters_are_valid(result):
    assert np.all(np.isfinite(result.ability))
    assert (result.difficulty > 0).all() and np.all(np.isfinite(result.difficulty))
    assert np.allclose(result.difficulty * result.inverse_difficulty, 1.0)


def glad_unanswered_keep_their_prior(result, items, workers):
    assert result.inverse_difficulty[items] == pytest.approx(np.full(len(items), np.e))   # log beta = prior mean 1
    assert result.ability[workers] == pytest.approx(np.ones(len(workers)))                # prior mean 1


def mace_parameters_are_valid(result):
    assert np.allclose(result.spam_distribution.sum(axis=1), 1)
    assert (result.spam_distribution >= 0).all()
    assert ((result.competence > 0) & (result.competence < 1)).all()


def mace_unanswered_keep_their_prior(result, items, workers):
    n_labels = result.posteriors.shape[1]
    assert result.competence[workers] == pytest.approx(np.full(len(workers), 0.5))   # smoothing alone gives 0.5
    assert np.allclose(result.spam_distribution[workers], 1 / n_labels)


class Model(NamedTuple):
    fit: Callable[..., NamedTuple]
    parameters_are_valid: Callable[[NamedTuple], None]
    unanswered_keep_their_prior: Callable[[NamedTuple, np.ndarray, np.ndarray], None]
    order_atol: float | None   # None: a fit on reordered answers is byte-identical, field by field
    # The posterior of an item without answers: its prior. Dawid-Skene uses its fitted class priors;
    # the others give such items a uniform posterior by rule (their module docstrings).
    unanswered_posterior: Callable[[NamedTuple], np.ndarray]


def uniform_posterior(result) -> np.ndarray:
    return np.full(result.posteriors.shape[1], 1 / result.posteriors.shape[1])


MODELS = {
    # dawid_skene sums answers in the order they come, so reordering moves the last bits only.
    "dawid_skene": Model(dawid_skene, dawid_skene_parameters_are_valid, dawid_skene_unanswered_keep_their_prior,
                         order_atol=1e-12, unanswered_posterior=lambda result: result.priors),
    "one_coin": Model(one_coin, one_coin_parameters_are_valid, one_coin_unanswered_keep_their_prior, None,
                      uniform_posterior),
    "glad": Model(glad, glad_parameters_are_valid, glad_unanswered_keep_their_prior, None, uniform_posterior),
    "mace": Model(mace, mace_parameters_are_valid, mace_unanswered_keep_their_prior, None, uniform_posterior),
}


@pytest.fixture(params=list(MODELS))
def model(request) -> Model:
    return MODELS[request.param]


def assert_posteriors_are_distributions(posteriors: np.ndarray):
    assert (posteriors >= 0).all()
    assert np.allclose(posteriors.sum(axis=1), 1)


def test_posteriors_and_parameters_are_distributions(model):
    answers, _ = answers_from_accuracies(seed=2, accuracy=np.linspace(0.5, 0.9, 6), n_items=300)
    result = model.fit(answers)
    assert result.posteriors.shape == (answers.n_items, answers.n_labels)
    assert_posteriors_are_distributions(result.posteriors)
    model.parameters_are_valid(result)


def test_gold_items_keep_their_class_even_when_wrong(model):
    answers, truth = answers_from_accuracies(seed=3, accuracy=np.full(8, 0.8), n_items=500)
    gold = np.full(answers.n_items, -1)
    gold[:50] = (truth[:50] + 1) % 3   # deliberately wrong gold: it must still be honoured
    result = model.fit(answers, gold=gold)
    assert (result.posteriors[:50].argmax(axis=1) == gold[:50]).all()
    assert np.allclose(result.posteriors[:50].max(axis=1), 1.0)
    assert_posteriors_are_distributions(result.posteriors)
    model.parameters_are_valid(result)


def test_fit_does_not_depend_on_the_answer_order(model):
    answers, _ = answers_from_accuracies(seed=5, accuracy=np.linspace(0.5, 0.9, 7), n_items=400)
    first = model.fit(answers)
    order = np.random.default_rng(0).permutation(len(answers.item))
    again = model.fit(answers._replace(item=answers.item[order], worker=answers.worker[order],
                                       label=answers.label[order]))
    assert first.iterations == again.iterations
    assert first.converged == again.converged
    assert np.array_equal(first.posteriors.argmax(axis=1), again.posteriors.argmax(axis=1))
    for name, value in first._asdict().items():
        if model.order_atol is None:
            assert np.array_equal(value, getattr(again, name)), name
        else:
            assert np.allclose(value, getattr(again, name), rtol=0, atol=model.order_atol), name


def test_single_answer_decides_its_item(model):
    one = Answers(np.array([0]), np.array([0]), np.array([1]), n_items=1, n_workers=1, n_labels=2)
    result = model.fit(one)
    assert result.posteriors[0].argmax() == 1
    model.parameters_are_valid(result)


def test_single_class_gives_certain_posteriors(model):
    only_class = Answers(np.array([0, 1]), np.array([0, 0]), np.array([0, 0]), n_items=2, n_workers=1, n_labels=1)
    result = model.fit(only_class)
    assert np.allclose(result.posteriors, 1.0)
    model.parameters_are_valid(result)


# Items 1 and 3 and annotator 2 have no answers.
SPARSE = Answers(np.array([0, 0, 2]), np.array([0, 1, 0]), np.array([1, 1, 0]), n_items=4, n_workers=3, n_labels=3)


def test_items_without_answers_get_their_prior_as_posterior(model):
    result = model.fit(SPARSE)
    expected = model.unanswered_posterior(result)
    assert np.allclose(result.posteriors[[1, 3]], expected)
    assert np.allclose(expected.sum(), 1)


def test_items_and_annotators_without_answers_keep_their_prior_parameters(model):
    result = model.fit(SPARSE)
    assert_posteriors_are_distributions(result.posteriors)
    model.parameters_are_valid(result)
    model.unanswered_keep_their_prior(result, np.array([1, 3]), np.array([2]))


def test_no_answers_at_all_gives_uniform_posteriors(model):
    empty = np.array([], dtype=np.int64)
    result = model.fit(Answers(empty, empty, empty, n_items=3, n_workers=2, n_labels=2))
    assert np.allclose(result.posteriors, 0.5)
    assert result.converged
    model.parameters_are_valid(result)


def test_em_beats_majority_vote_when_most_annotators_are_poor(model):
    answers, truth = answers_from_accuracies(seed=1, accuracy=np.array([0.9, 0.9, 0.9] + [0.4] * 7))
    majority = vote_shares(answers).argmax(axis=1)
    result = model.fit(answers)
    assert np.mean(result.posteriors.argmax(axis=1) == truth) > np.mean(majority == truth) + 0.05
