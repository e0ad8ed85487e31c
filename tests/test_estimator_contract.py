"""The model-side estimators follow scikit-learn's estimator contract: ``check_estimator`` passes
with no expected failure for PLS, PLSScores, PCADomain and the stacked ensemble (a
``VotingRegressor``); the interval calibrator passes the checks that apply to it. The spectral
preprocessing steps are checked in tests/test_preprocessing.py, memory-based learning in its own
tests."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.ensemble import VotingRegressor
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LinearRegression
from sklearn.utils import estimator_checks
from sklearn.utils.estimator_checks import check_estimator
from trained_model import nirsoil_spectra

from soilcarbon.models.domain import PCADomain
from soilcarbon.models.ensemble import WeightedEnsemble, weighted_ensemble
from soilcarbon.models.intervals import NormalizedConformal
from soilcarbon.models.layout import FeatureLayout
from soilcarbon.training.candidates import PLS, PLSScores, Subsampled, build_candidate
from soilcarbon.training.config import CandidateSpec

STEPS = [{"name": "savgol", "window_length": 11, "polyorder": 2, "deriv": 1}, {"name": "resample", "step": 10}]


@pytest.fixture(scope="module")
def spectra():
    return nirsoil_spectra(150)


def _run_checks(estimator) -> list[dict]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return check_estimator(estimator, on_fail=None, on_skip=None)


@pytest.mark.parametrize("estimator", [
    PLS(n_components=2), PLSScores(n_components=2), PCADomain(),
    weighted_ensemble([PLS(n_components=2), LinearRegression()], [0.7, 0.3]),
    Subsampled(LinearRegression(), max_samples=20),
], ids=["PLS", "PLSScores", "PCADomain", "ensemble", "Subsampled"])
def test_check_estimator_passes_with_no_expected_failure(estimator):
    results = _run_checks(estimator)
    failed = [(r["check_name"], str(r["exception"])[:200]) for r in results if r["status"] == "failed"]
    assert failed == []
    passed = {r["check_name"] for r in results if r["status"] == "passed"}
    assert {"check_n_features_in", "check_estimators_unfitted", "check_fit2d_1sample",
            "check_methods_subset_invariance", "check_estimators_pickle"} <= passed
    assert len(passed) >= 35


# NormalizedConformal is not a predictor: fit(Z, y, y_oof) needs out-of-fold predictions and it
# answers interval(Z, y_pred, level), so the checks that fit(X, y) and predict/transform do not
# apply. It is still a BaseEstimator (get_params, clone, repr), and these checks hold.
CALIBRATOR_CHECKS = ["check_no_attributes_set_in_init", "check_get_params_invariance", "check_set_params",
                     "check_parameters_default_constructible", "check_estimator_cloneable",
                     "check_estimator_repr", "check_do_not_raise_errors_in_init_or_set_params"]


@pytest.mark.parametrize("check", CALIBRATOR_CHECKS)
def test_interval_calibrator_passes_the_checks_that_apply(check):
    getattr(estimator_checks, check)("NormalizedConformal", NormalizedConformal(n_neighbors=5, n_bins=2))


def test_interval_calibrator_fit_keeps_params_and_clone_drops_state():
    rng = np.random.default_rng(0)
    Z, y = rng.normal(size=(80, 2)), rng.normal(size=80)
    calibrator = NormalizedConformal(n_neighbors=5, lower_bound=0.0, n_bins=2, min_bin_size=20)
    params = calibrator.get_params()
    fitted = calibrator.fit(Z, y, y + rng.normal(0, 0.1, 80))
    assert fitted.get_params() == params
    assert not hasattr(clone(fitted), "scores_")
    restored = pickle.loads(pickle.dumps(fitted))
    np.testing.assert_array_equal(restored.interval(Z[:5], y[:5])[1], fitted.interval(Z[:5], y[:5])[1])


def test_ensemble_equals_the_weighted_sum_of_its_members_on_a_real_fit(spectra):
    """VotingRegressor(weights) divides by the weights' sum; with stacking weights (sum 1) it is
    the weighted sum of the refitted members to 1e-12 on real NIR spectra (PLS + LightGBM)."""
    layout = FeatureLayout(spectra.axis, spectra.unit)
    members = [build_candidate(CandidateSpec("pls", {"n_components": 8}, "none"), layout, STEPS),
               build_candidate(CandidateSpec("lightgbm", {"n_pls": 5, "n_estimators": 40}, "sqrt"), layout, STEPS)]
    weights = [0.6428, 0.3572]
    X, y = spectra.values, spectra.target("Ciso")
    ensemble = weighted_ensemble(members, weights).fit(X[:100], y[:100])
    assert isinstance(ensemble, VotingRegressor) and list(ensemble.named_estimators_) == ["member0", "member1"]
    expected = sum(w * clone(m).fit(X[:100], y[:100]).predict(X[100:]) for m, w in zip(members, weights))
    np.testing.assert_allclose(ensemble.predict(X[100:]), expected, rtol=1e-12, atol=1e-12)
    with pytest.raises(NotFittedError):
        weighted_ensemble(members, weights).predict(X[100:])


def test_ensembles_pickled_before_voting_regressor_still_load_and_predict(spectra):
    """An old pickle names WeightedEnsemble and holds bare lists of members (the state built here
    is the one the former class pickled)."""
    X, y = spectra.values[:, ::10], spectra.target("Ciso")
    members = [PLS(4).fit(X, y), LinearRegression().fit(X, y)]
    old = WeightedEnsemble.__new__(WeightedEnsemble)
    old.__dict__.update(estimators=[PLS(4), LinearRegression()], weights=[0.25, 0.75], estimators_=members)
    loaded = pickle.loads(pickle.dumps(old))
    assert isinstance(loaded, VotingRegressor)
    assert [name for name, _ in loaded.estimators] == ["member0", "member1"]
    np.testing.assert_allclose(loaded.predict(X), 0.25 * members[0].predict(X) + 0.75 * members[1].predict(X),
                               rtol=1e-12)


def test_estimators_pickled_before_n_features_in_still_predict(spectra):
    """Fitted PLS / PCADomain objects from earlier versions lack ``n_features_in_``: scikit-learn
    skips the width check for them and they predict as before."""
    X, y = spectra.values[:, ::10], spectra.target("Ciso")
    pls, domain = PLS(5).fit(X, y), PCADomain().fit(X)
    expected, expected_score = pls.predict(X), domain.score_samples(X)
    for fitted in (pls, domain):
        del fitted.n_features_in_
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(pls)).predict(X), expected)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(domain)).score_samples(X), expected_score)
    with pytest.raises(ValueError, match="features"):
        PLS(5).fit(X, y).predict(X[:, :-1])


def test_pca_domain_with_all_variance_kept_scores_by_hotelling_t2_alone():
    """With as many components as features Q is rounding noise: the score is T²/T²_lim, the same
    whether a row is scored alone or with others (it used to flip a row in or out of domain)."""
    rng = np.random.default_rng(3)
    X = rng.normal(size=(60, 3)) @ np.diag([3.0, 1.0, 0.5])
    domain = PCADomain(variance=1.0).fit(X)
    assert domain.n_components_ == 3
    t2 = np.sum(domain.scores(X) ** 2, axis=1)
    np.testing.assert_allclose(domain.score_samples(X), t2 / domain.t2_limit_, rtol=1e-9)
    one_by_one = np.array([domain.score_samples(X[i:i + 1])[0] for i in range(len(X))])
    np.testing.assert_allclose(one_by_one, domain.score_samples(X), rtol=1e-9)


# ------------------------------------------------------------- warnings of the training command
def test_training_ignores_only_the_known_harmless_warnings():
    from soilcarbon.training.commands import known_harmless_warnings_ignored

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with known_harmless_warnings_ignored():
            warnings.warn("MBL k=120 exceeds the 29 reference samples; neighbourhoods are clipped to 29", UserWarning)
            warnings.warn("X has feature names, but PLS was fitted without feature names", UserWarning)
            warnings.warn("a parameter will change its default", FutureWarning)
        warnings.warn("MBL k=120 exceeds the 29 reference samples; neighbourhoods are clipped to 29", UserWarning)
    assert [str(w.message)[:5] for w in seen] == ["X has", "a par", "MBL k"]


WORKERS_SCRIPT = """
import sys, warnings
import numpy as np, pandas as pd
from soilcarbon.models.layout import FeatureLayout
from soilcarbon.training.commands import known_harmless_warnings_ignored
from soilcarbon.training.config import CandidateSpec
from soilcarbon.training.search import evaluate

warnings.simplefilter("always")
table = pd.read_csv(sys.argv[1]).dropna(subset=["Ciso"]).head(30)
columns = [c for c in table.columns if c[0].isdigit()][::10]
X, y = table[columns].to_numpy(), table["Ciso"].to_numpy()
args = ([CandidateSpec("mbl", {"k": 50, "max_components": 4}, "none")], X, y, np.arange(30) % 3,
        FeatureLayout(np.array(columns, dtype=float), "nm"), [])
with known_harmless_warnings_ignored():
    evaluate(*args, n_jobs=2)
print("-- control --", file=sys.stderr, flush=True)
evaluate(*args, n_jobs=2)
"""


def test_the_filter_reaches_the_cross_validation_workers(nirsoil_csv):
    """Cross-validation fits in worker processes: the known warning (MBL k=50 on 20-sample folds)
    is ignored there too inside the block, and shows without it (the control)."""
    repo = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": repo, "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONWARNINGS", None)
    done = subprocess.run([sys.executable, "-c", WORKERS_SCRIPT, str(nirsoil_csv)], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    inside, control = done.stderr.split("-- control --")
    assert "MBL k=" not in inside, inside
    assert control.count("MBL k=50 exceeds the 20 reference samples") == 3, control
