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
