"""SOCModel.predict_matrix on samples it cannot predict: they get empty outputs and a reason in
``attrs["failures"]``, and the other rows are predicted as usual (real NIR spectra)."""

from __future__ import annotations

import numpy as np
from trained_model import nirsoil_spectra

from soilcarbon.training.config import parse_config
from soilcarbon.training.train import train


def test_an_overflowing_prediction_is_a_failure_with_a_reason_not_an_interval_error():
    """A log-scale model turns a spectrum scaled 1e100 times (sign chosen so) into exp(huge) = inf: that row is
    reported (no interval can be built around it) and the others equal the model's own outputs."""
    spectra = nirsoil_spectra(120)
    config = parse_config({
        "preprocessing": [{"name": "savgol", "window_length": 11, "polyorder": 2, "deriv": 1}],
        "target_transforms": ["log"], "candidates": [{"model": "pls", "grid": {"n_components": [5]}}],
        "ensemble": {"enabled": False}, "cv": {"folds": 3, "inner_folds": 3},
    })
    model = train(spectra, "Ciso", config=config, nested=False, n_jobs=1).model
    X = nirsoil_spectra().values[200:230].copy()
    huge = X[7:8] * 1e100
    log_scale = model.regressor.regressor_.predict(huge)[0]  # +-1e100-ish: pick the sign that overflows exp
    X[7] = huge[0] * np.sign(log_scale)
    with np.errstate(over="ignore"):
        got = model.predict_matrix(X)
    assert got.attrs["failures"] == {7: "the model gave no finite prediction; check the spectrum for extreme values"}
    assert got.iloc[7][["prediction", "lower", "upper"]].isna().all()
    others = np.delete(np.arange(30), 7)
    np.testing.assert_allclose(got["prediction"].to_numpy()[others], model.regressor.predict(X[others]), rtol=1e-12)
    assert np.isfinite(got[["lower", "upper"]].to_numpy()[others]).all()


def test_largest_magnitude_is_that_of_the_absolute_values():
    """Row max / min give exactly ``np.abs(X).max(axis=1, initial=0)``: NaN stays NaN (a missing
    value), infinities of either sign are infinite, negative values count by their size."""
    from soilcarbon.models.soc_model import MAX_ABS_VALUE, largest_magnitude

    rng = np.random.default_rng(3)
    X = rng.normal(0, 1, (40, 7)) * 10.0 ** rng.integers(-3, 3, (40, 1))
    X[1], X[2] = 0.0, -0.0
    X[3, 2], X[4, 0], X[5, 6], X[6, :] = np.nan, np.inf, -np.inf, np.nan
    X[7, 3], X[8, 1], X[9] = -1e200, 1e200, -np.abs(X[9])
    X[10, 4], X[11, 5] = np.nan, np.inf
    X[10, 5], X[11, 4] = -np.inf, np.nan
    for matrix in (X, np.asfortranarray(X), X[:, 1:5], X[:, :0], X[:0]):
        expected = np.abs(matrix).max(axis=1, initial=0.0)
        np.testing.assert_array_equal(largest_magnitude(matrix), expected)
    peak = largest_magnitude(X)
    assert np.isnan(peak[[3, 6, 10, 11]]).all() and np.isinf(peak[[4, 5]]).all()
    assert np.flatnonzero(peak <= MAX_ABS_VALUE).tolist() == [r for r in range(40) if r not in (3, 4, 5, 6, 7, 8, 10, 11)]
