"""Shared preprocessing during prediction: equal fitted pipelines on the same array compute once,
outputs cannot be changed by one consumer under another, and a model predicts the same with and
without sharing (real NIR spectra)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from trained_model import nirsoil_spectra

from soilcarbon.models.ensemble import weighted_ensemble
from soilcarbon.spectral.pipeline import shared_preprocessing
from soilcarbon.spectral.preprocessing import build_preprocessing
from soilcarbon.training.candidates import build_candidate
from soilcarbon.training.config import CandidateSpec, parse_config
from soilcarbon.training.train import train

STEPS = [{"name": "savgol", "window_length": 11, "polyorder": 2, "deriv": 1}, {"name": "resample", "step": 10}]


@pytest.fixture(scope="module")
def spectra():
    return nirsoil_spectra(120)


def _fitted(steps, spectra):
    return build_preprocessing(steps, spectra.axis).fit(spectra.values)


def test_equal_pipelines_share_one_read_only_output(spectra):
    X = spectra.values
    first, second = _fitted(STEPS, spectra), _fitted(STEPS, spectra)
    other = _fitted(STEPS + [{"name": "snv"}], spectra)
    plain = first.transform(X)
    with shared_preprocessing():
        a = first.transform(X)
        b = second.transform(X[:, :])  # another view of the same memory
        c = other.transform(X)
        d = first.transform(X.copy())  # same values, other memory: computed again
    assert b is a and c is not a and d is not a
    np.testing.assert_array_equal(a, plain)
    np.testing.assert_array_equal(c, other.transform(X))
    assert not a.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        a[0, 0] = 1.0
    outside = first.transform(X)  # outside the block nothing is cached
    assert outside is not a and outside.flags.writeable


def test_a_refitted_or_changed_pipeline_is_not_confused_with_its_old_self(spectra):
    X = spectra.values
    pipe, twin = _fitted(STEPS, spectra), _fitted(STEPS, spectra)
    with shared_preprocessing():
        before = twin.transform(X)
        assert pipe.transform(X) is before
    pipe.set_params(savgol__window_length=21).fit(X)
    with shared_preprocessing():
        twin.transform(X)
        after = pipe.transform(X)
    np.testing.assert_array_equal(after, build_preprocessing(
        [{**STEPS[0], "window_length": 21}, STEPS[1]], spectra.axis).fit(X).transform(X))
    assert not np.allclose(after, before)


def test_rows_or_other_slices_of_an_array_are_not_confused(spectra):
    X = spectra.values
    pipe = _fitted(STEPS, spectra)
    with shared_preprocessing():
        whole = pipe.transform(X)
        head = pipe.transform(X[:50])
        tail = pipe.transform(X[50:])
    np.testing.assert_allclose(np.vstack([head, tail]), whole, rtol=1e-12, atol=1e-15)
    assert head.shape == (50, whole.shape[1])


def test_stacked_model_predicts_the_same_with_shared_preprocessing(spectra):
    """A stack of MBL, PLS-SNV and LightGBM members, two of them with the model's own
    preprocessing: the model's prediction (which shares it) equals the members predicted one by
    one without sharing."""
    config = parse_config({
        "preprocessing": STEPS, "target_transforms": ["sqrt"],
        "candidates": [{"model": "pls", "grid": {"n_components": [8]}}],
        "ensemble": {"enabled": False}, "cv": {"folds": 3, "inner_folds": 3},
    })
    model = train(spectra, "Ciso", config=config, nested=False, n_jobs=1).model
    members = [
        CandidateSpec("mbl", {"k": 40, "max_components": 8}, "sqrt"),
        CandidateSpec("pls", {"n_components": 8}, "none", preprocessing=STEPS + [{"name": "snv"}]),
        CandidateSpec("lightgbm", {"n_pls": 6, "n_estimators": 50}, "sqrt"),
    ]
    stack = weighted_ensemble([build_candidate(spec, model.layout, STEPS) for spec in members], [0.5, 0.3, 0.2])
    model = replace(model, regressor=stack.fit(spectra.values, spectra.target("Ciso")))
    X = nirsoil_spectra().values[300:420]
    got = model.predict_matrix(X)
    members = np.column_stack([member.predict(X) for member in model.regressor.estimators_])
    expected = np.maximum(members @ np.asarray(model.regressor.weights), 0.0)
    np.testing.assert_allclose(got["prediction"], expected, rtol=1e-12, atol=1e-12)
    scores = model.domain.scores(model.domain_features.transform(X))
    lower, upper = model.calibrator.interval(scores, expected, model.level)
    np.testing.assert_allclose(got["lower"], lower, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got["upper"], upper, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got["domain_score"], model.domain.score_samples(model.domain_features.transform(X)),
                               rtol=1e-12)


def test_the_cache_is_explicit_counts_its_sharing_and_is_not_seen_by_other_threads(spectra):
    import threading

    X = spectra.values
    first, second = _fitted(STEPS, spectra), _fitted(STEPS, spectra)
    seen_elsewhere = []
    with shared_preprocessing() as cache:
        a = first.transform(X)
        with shared_preprocessing() as inner:  # a nested block uses the outer cache
            b = second.transform(X[:, :])
        worker = threading.Thread(target=lambda: seen_elsewhere.append(first.transform(X)))
        worker.start()
        worker.join()
    assert inner is cache and b is a and (cache.hits, cache.misses) == (1, 1)
    assert seen_elsewhere[0] is not a and seen_elsewhere[0].flags.writeable  # computed, not shared
    with shared_preprocessing() as fresh:
        assert fresh is not cache and first.transform(X) is not a
