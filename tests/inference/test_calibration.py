"""Temperature scaling: recovers a known temperature, keeps the arg-max, improves calibration."""
import numpy as np
import pytest

from labelbeam.transforms.inference.calibration import (
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
    tempered,
)


def overconfident_sample(seed: int, n: int = 4000, k: int = 3, true_temperature: float = 3.0):
    """Classes drawn from calibrated posteriors, then reported sharpened by 1/true_temperature."""
    rng = np.random.default_rng(seed)
    calibrated = rng.dirichlet(np.ones(k) * 0.7, n)
    classes = np.array([rng.choice(k, p=row) for row in calibrated])
    return tempered(calibrated, 1.0 / true_temperature), classes


def test_fits_back_the_temperature_that_sharpened_calibrated_posteriors():
    reported, classes = overconfident_sample(seed=1)
    assert fit_temperature(reported, classes) == pytest.approx(3.0, rel=0.1)


def test_tempering_keeps_the_arg_max_and_rows_sum_to_one():
    reported, _ = overconfident_sample(seed=2, n=200)
    for temperature in (0.5, 1.0, 4.0):
        scaled = tempered(reported, temperature)
        np.testing.assert_array_equal(scaled.argmax(axis=1), reported.argmax(axis=1))
        np.testing.assert_allclose(scaled.sum(axis=1), 1.0)
    np.testing.assert_allclose(tempered(reported, 1.0), reported, atol=1e-12)


def test_fitted_temperature_lowers_held_out_error_and_likelihood():
    reported, classes = overconfident_sample(seed=3)
    fit, held_out = slice(0, 2000), slice(2000, None)
    temperature = fit_temperature(reported[fit], classes[fit])
    assert expected_calibration_error(tempered(reported[held_out], temperature), classes[held_out]) < \
        expected_calibration_error(reported[held_out], classes[held_out]) / 2
    assert negative_log_likelihood(reported[held_out], classes[held_out], temperature) < \
        negative_log_likelihood(reported[held_out], classes[held_out], 1.0)


def test_calibrated_input_keeps_a_temperature_near_one():
    reported, classes = overconfident_sample(seed=4, true_temperature=1.0)
    assert fit_temperature(reported, classes) == pytest.approx(1.0, rel=0.1)


def test_degenerate_inputs():
    assert fit_temperature(np.zeros((0, 2)), np.zeros(0, dtype=int)) == 1.0
    # Always right with certainty: sharpen as far as allowed, never NaN.
    certain = np.array([[0.9, 0.1], [0.2, 0.8]])
    assert np.isfinite(fit_temperature(certain, np.array([0, 1])))
    with pytest.raises(ValueError):
        tempered(certain, 0.0)
    assert expected_calibration_error(np.array([[1.0, 0.0]]), np.array([0])) == 0.0


@pytest.mark.parametrize("model", ["ds", "one_coin", "glad", "mace"])
def test_annotator_models_with_gold_are_tempered_not_relabelled(model):
    from typing import NamedTuple

    from labelbeam.transforms.inference.em import Answers
    from labelbeam.transforms.methods.registry import METHODS

    class Indexed(NamedTuple):
        answers: Answers
        gold: np.ndarray | None

    rng = np.random.default_rng(5)
    n_items, n_workers = 300, 12
    truth = rng.integers(0, 3, n_items)
    item = np.repeat(np.arange(n_items), 4)
    worker = rng.integers(0, n_workers, len(item))
    right = rng.random(len(item)) < rng.uniform(0.5, 0.95, n_workers)[worker]
    label = np.where(right, truth[item], rng.integers(0, 3, len(item)))
    answers = Answers(item, worker, label, n_items, n_workers, 3)
    gold = np.where(np.arange(n_items) < 100, truth, -1)
    method = METHODS[model]()
    fit = method.fit_model(answers, gold)
    from_votes = method.posteriors_from_votes(answers, fit)
    calibrated = method.posteriors(Indexed(answers, gold))
    np.testing.assert_allclose(calibrated.sum(axis=1), 1.0)
    np.testing.assert_array_equal(calibrated[:100].argmax(axis=1), truth[:100])
    assert (calibrated[:100].max(axis=1) == 1.0).all()
    # Tempering never changes a non-gold item's label.
    np.testing.assert_array_equal(calibrated[100:].argmax(axis=1), from_votes[100:].argmax(axis=1))
    # Without gold the model's own posteriors are published, untouched.
    np.testing.assert_array_equal(method.posteriors(Indexed(answers, None)), method.fit_model(answers, None).posteriors)
