"""Temperature scaling: recovers a known temperature, keeps the arg-max, improves calibration."""
import numpy as np
import pytest

from labelbeam.transforms.calibration import (expected_calibration_error, fit_temperature,
                                              negative_log_likelihood, tempered)


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
