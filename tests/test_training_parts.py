"""Unit behaviour of the training parts: config, CV schemes, metrics, conformal intervals, domain."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml

from soilcarbon.errors import SoilCarbonError
from soilcarbon.models.domain import PCADomain
from soilcarbon.models.ensemble import stacking_weights
from soilcarbon.models.intervals import NormalizedConformal, conformal_quantile
from soilcarbon.training import cv
from soilcarbon.training.config import DEFAULT_CONFIG, CandidateSpec, load_config, parse_config
from soilcarbon.training.metrics import regression_metrics


# ---------------------------------------------------------------- metrics
def test_metrics_match_hand_computed_values():
    observed = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    predicted = np.array([1.5, 2.0, 2.5, 4.5, 5.0])
    m = regression_metrics(observed, predicted, observed - 0.4, observed + 0.4)
    # errors 0.5, 0, -0.5, 0.5, 0 -> MSE = 0.75/5 = 0.15
    assert m["rmse"] == pytest.approx(np.sqrt(0.15))
    assert m["bias"] == pytest.approx(0.1)
    assert m["r2"] == pytest.approx(1 - 0.75 / 10.0)
    assert m["rpiq"] == pytest.approx((4.0 - 2.0) / np.sqrt(0.15))
    assert m["picp"] == 1.0 and m["mean_width"] == pytest.approx(0.8)
    m = regression_metrics(observed, predicted, predicted - 0.1, predicted + 0.1)
    assert m["picp"] == pytest.approx(2 / 5)  # samples 2 and 5 are predicted exactly


# ----------------------------------------------------------------- config
def test_default_config_parses_and_round_trips():
    config = load_config()
    assert config.level == pytest.approx(0.9)
    again = parse_config(yaml.safe_load(yaml.safe_dump(config.to_dict())))
    assert again.to_dict() == config.to_dict()
    specs = config.expand(has_spectra=True, has_covariates=False)
    assert specs and all(s.model != "covariates" for s in specs)
    only_cov = config.expand(has_spectra=False, has_covariates=True)
    assert {s.model for s in only_cov} == {"covariates"}


@pytest.mark.parametrize("text, fragment", [
    ("cv: {folds: 1}", "cv.folds"),
    ("interval: {level: 1.5}", "interval.level"),
    ("candidates: [{model: forest}]", "'model' must be one of"),
    ("target_transforms: [cube]", "unknown target transform"),
    ("candidates: [{model: pls, target_transforms: [cube]}]", "'target_transforms' must be a non-empty list"),
    ("bogus: 1", "unknown section"),
    ("cv: [1, 2", "not valid YAML"),
])
def test_bad_configs_are_named(tmp_path, text, fragment):
    path = tmp_path / "train.yaml"
    path.write_text(text)
    with pytest.raises(SoilCarbonError, match=fragment) as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_missing_config_file_is_a_clear_error(tmp_path):
    with pytest.raises(SoilCarbonError, match="cannot read the config"):
        load_config(tmp_path / "nope.yaml")


def test_default_config_text_is_what_print_shows():
    assert yaml.safe_load(DEFAULT_CONFIG)["interval"]["level"] == 0.9


# --------------------------------------------------------------------- cv
def test_kfold_labels_are_balanced_and_cover_everything():
    labels = cv.kfold_labels(23, 5, seed=1)
    assert sorted(np.bincount(labels)) == [4, 4, 5, 5, 5]
    with pytest.raises(SoilCarbonError, match="3 samples with a target but 5 folds"):
        cv.kfold_labels(3, 5)


def test_group_labels_never_split_a_group():
    groups = np.repeat(np.arange(12), 3)
    labels = cv.group_labels(groups, 4)
    for g in range(12):
        assert len(set(labels[groups == g])) == 1
    with pytest.raises(SoilCarbonError, match="groups"):
        cv.group_labels(np.repeat([1, 2], 5), 3)


def test_spatial_blocks_keep_nearby_points_together():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 10_000, 300)  # projected metres
    y = rng.uniform(0, 10_000, 300)
    labels, size = cv.spatial_labels(x, y, 5, block_size=2_000)
    assert size == 2_000
    cells = np.floor(x / 2000).astype(int) * 100 + np.floor(y / 2000).astype(int)
    for cell in np.unique(cells):
        assert len(set(labels[cells == cell])) == 1
    with pytest.raises(SoilCarbonError, match="spatial blocks"):
        cv.spatial_labels(x, y, 5, block_size=20_000)


def test_lonlat_is_projected_to_metres():
    # 0.01 degree of latitude is about 1112 m everywhere
    _, ym = cv.to_metres(np.array([4.0, 4.0]), np.array([50.0, 50.01]))
    assert np.diff(ym)[0] == pytest.approx(1112, rel=0.01)


def test_given_fold_labels_are_recoded():
    assert list(cv.given_labels(["b", "a", "b", "c"])) == [1, 0, 1, 2]
    with pytest.raises(SoilCarbonError, match="single fold"):
        cv.given_labels(["a", "a"])


# ---------------------------------------------------------- conformal
def test_conformal_quantile_rank():
    scores = np.arange(1, 20, dtype=float)  # n = 19 -> rank ceil(20 * 0.9) = 18
    assert conformal_quantile(scores, 0.9) == 18.0
    assert conformal_quantile(scores[:5], 0.9) == float("inf")


def test_normalized_conformal_covers_and_adapts():
    rng = np.random.default_rng(0)
    n = 2000
    z = rng.uniform(-1, 1, (n, 1))
    noise_sd = np.where(z[:, 0] > 0, 2.0, 0.2)  # hard region z > 0, easy region z < 0
    y = rng.normal(0, noise_sd)
    y_hat = np.zeros(n)  # the true mean
    cal = NormalizedConformal(n_neighbors=50).fit(z[:1000], y[:1000], y_hat[:1000])
    lower, upper = cal.interval(z[1000:], y_hat[1000:], level=0.9)
    inside = (y[1000:] >= lower) & (y[1000:] <= upper)
    assert 0.87 <= inside.mean() <= 0.93
    hard = z[1000:, 0] > 0
    assert np.mean(upper[hard] - lower[hard]) > 5 * np.mean(upper[~hard] - lower[~hard])
    # each region is covered on its own, which a constant width could not do
    assert inside[hard].mean() > 0.85 and inside[~hard].mean() > 0.85


def test_lower_bound_clips_intervals():
    cal = NormalizedConformal(n_neighbors=5, lower_bound=0.0).fit(np.zeros((20, 1)), np.linspace(0, 1, 20),
                                                                  np.full(20, 0.5))
    lower, _ = cal.interval(np.zeros((3, 1)), np.array([0.0, 0.1, 0.5]))
    assert (lower >= 0).all()


def test_stacking_weights_recover_a_known_mixture():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=200), rng.normal(size=200)
    y = 0.7 * a + 0.3 * b
    assert stacking_weights(np.column_stack([a, b]), y) == pytest.approx([0.7, 0.3], abs=1e-9)


# ---------------------------------------------------------------- domain
def test_domain_flags_foreign_spectra(nirsoil_csv, corn_dir):
    soil = pd.read_csv(nirsoil_csv)
    X = soil[[c for c in soil.columns if c.isdigit()]].to_numpy()
    domain = PCADomain(variance=0.99, quantile=0.99).fit(X[:500])
    own = domain.in_domain(X[500:])
    assert own.mean() > 0.9  # unseen soil from the same campaign is mostly in domain
    corn = pd.read_csv(corn_dir / "corn_m5.csv")
    corn_X = corn[[c for c in corn.columns if c.isdigit()]].to_numpy()
    assert corn_X.shape[1] == X.shape[1]  # same 1100-2498 nm grid
    assert not domain.in_domain(corn_X).any()  # corn is not soil
    assert (domain.score_samples(corn_X) > 1).all()


def test_a_candidate_may_carry_its_own_target_transforms():
    config = parse_config({"target_transforms": ["none"], "candidates": [
        {"model": "pls", "grid": {"n_components": [2]}, "target_transforms": ["none", "log"]},
        {"model": "mbl", "grid": {"k": [20]}},
    ]})
    names = [s.name for s in config.expand(has_spectra=True, has_covariates=False)]
    assert names == ["pls(n_components=2)|none", "pls(n_components=2)|log", "mbl(k=20)|none"]


# ------------------------------------------------------------- candidates
def test_candidate_preprocessing_override_and_small_data_caps():
    from soilcarbon.models.layout import FeatureLayout
    from soilcarbon.training.candidates import PLS, PLSScores, build_candidate

    config = parse_config({"candidates": [
        {"model": "pls", "label": "pls-raw", "preprocessing": [], "grid": {"n_components": [30]}},
        {"model": "lightgbm", "grid": {"n_pls": [3], "n_estimators": [20]}},
    ], "target_transforms": ["none"]})
    specs = config.expand(has_spectra=True, has_covariates=False)
    assert specs[0].name == "pls-raw(n_components=30)|none" and specs[0].preprocessing == []
    rng = np.random.default_rng(0)
    axis = np.arange(1100, 1200, 2.0)
    X = rng.normal(size=(12, len(axis)))
    y = X[:, 0] * 2 + X[:, 1]
    layout = FeatureLayout(axis, "nm")
    pls = build_candidate(specs[0], layout, config.preprocessing).fit(X, y)
    # no preprocessing: 30 components capped at n_samples - 1 = 11 reproduce y on the training set
    assert pls.named_steps["pls"].pls_.n_components == 11
    assert np.allclose(pls.predict(X), y, atol=1e-6)
    lgbm = build_candidate(specs[1], layout, config.preprocessing)
    assert isinstance(lgbm.named_steps["features"].transformers[0][1].named_steps["compress"], PLSScores)
    # any learner on PCA scores: Cubist on 3 PCA scores of the (noise-free) spectra
    cubist = parse_config({"candidates": [{"model": "scores", "grid": {"learner": ["cubist"], "n_pca": [3]}}]})
    cubist = build_candidate(cubist.expand(has_spectra=True, has_covariates=False)[0], layout, [])
    assert list(cubist.named_steps) == ["features", "cubist"]
    assert cubist.fit(X, y).predict(X).shape == (12,)
    scores = PLSScores(2).fit(X, y).transform(X)
    assert scores.shape == (12, 2)
    assert isinstance(PLS(3).fit(X, y).predict(X), np.ndarray) and PLS(3).fit(X, y).predict(X).ndim == 1


def test_bad_candidate_preprocessing_is_named(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text("candidates: [{model: pls, preprocessing: snv}]")
    with pytest.raises(SoilCarbonError, match="'preprocessing' must be a list"):
        load_config(path)


def test_covariate_learners_fit_a_known_linear_relation():
    from soilcarbon.training.candidates import LEARNERS, covariate_learner

    rng = np.random.default_rng(3)
    X = rng.normal(size=(300, 3))
    y = 2 * X[:, 0] - X[:, 1] + rng.normal(0, 0.1, 300)
    X[5, 2] = np.nan  # the linear, spline, SVR, GP and Cubist learners impute; the trees take NaN as it is
    for learner, params in [(name, {}) for name in LEARNERS] + [("gp", {"linear": True, "restarts": 1})]:
        model = covariate_learner(learner, params, seed=0).fit(X[:200], y[:200])
        rmse = np.sqrt(np.mean((model.predict(X[200:]) - y[200:]) ** 2))
        assert rmse < 0.5 * y.std(), (learner, params)
    # far outside the training range the GP's linear trend goes on; the Matern part alone returns
    # to the mean, and the additive splines stay at their value at the last knot
    far = np.array([[8.0, 0.0, 0.0]])
    trend = covariate_learner("gp", {"linear": True}).fit(X[:200], y[:200]).predict(far)[0]
    assert trend == pytest.approx(16, rel=0.1)
    spline = covariate_learner("spline", {"n_knots": 3}).fit(X[:200], y[:200])
    assert spline.predict(far)[0] == pytest.approx(spline.predict(far * 2)[0])
    linear = covariate_learner("linear", {}).fit(X[:200], y[:200])
    assert linear.named_steps["ridge"].coef_ / np.nanstd(X[:200], axis=0) == pytest.approx([2, -1, 0], abs=0.05)
    with pytest.raises(SoilCarbonError, match="unknown learner 'xgboost'; use one of lightgbm, forest"):
        covariate_learner("xgboost", {})


def test_bad_gp_and_spline_settings_are_errors_naming_the_candidate():
    from soilcarbon.models.layout import FeatureLayout
    from soilcarbon.training.candidates import build_candidate

    layout = FeatureLayout(np.array([]), "nm", ["a", "b"])
    X, y = np.random.default_rng(0).normal(size=(30, 2)), np.arange(30.0)

    def candidate(grid):
        config = parse_config({"candidates": [{"model": "covariates", "grid": grid}], "target_transforms": ["none"]})
        return build_candidate(config.expand(has_spectra=False, has_covariates=True)[0], layout, [])

    with pytest.raises(SoilCarbonError, match=r"candidate covariates\(learner=gp,linear=false\)\|none: the gp "
                                              r"learner's linear must be true or false, got 'false'"):
        candidate({"learner": ["gp"], "linear": ["false"]})
    # values scikit-learn checks only when fitting: the search turns these into errors naming the
    # candidate (tests/test_train_cli.py, bad_learner_value); nothing is rounded silently here
    for grid, message in [({"learner": ["gp"], "restarts": [1.5]}, "n_restarts_optimizer"),
                          ({"learner": ["spline"], "n_knots": [3.7]}, "n_knots")]:
        with pytest.raises(ValueError, match=message):
            candidate(grid).fit(X, y)


def test_rows_with_missing_covariates_are_dropped_and_counted():
    from soilcarbon.training.data import assemble

    table = pd.DataFrame({"sample_id": ["a", "b", "c", "d"], "ndvi": [0.1, np.nan, 0.3, 0.4],
                          "soc": [1.0, 2.0, np.nan, 4.0]})
    data = assemble(None, "soc", table)
    assert list(data.ids) == ["a", "d"] and data.n_dropped == 2
    assert any("missing covariate values" in note and "(b)" in note for note in data.notes)
    assert data.layout.covariates == ["ndvi"] and data.X.tolist() == [[0.1], [0.4]]


def test_subsampled_learner_fits_on_at_most_max_samples_rows():
    from sklearn.linear_model import LinearRegression
    from sklearn.neighbors import KNeighborsRegressor

    from soilcarbon.training.candidates import Subsampled

    rng = np.random.default_rng(5)
    X = rng.normal(size=(500, 2))
    y = X[:, 0] + rng.normal(0, 0.1, 500)
    small = Subsampled(KNeighborsRegressor(), max_samples=100, random_state=1).fit(X, y)
    assert small.estimator_.n_samples_fit_ == 100
    again = Subsampled(KNeighborsRegressor(), max_samples=100, random_state=1).fit(X, y)
    np.testing.assert_array_equal(small.predict(X), again.predict(X))  # seeded
    full = Subsampled(LinearRegression(), max_samples=500).fit(X, y)  # n <= max_samples: all rows
    np.testing.assert_allclose(full.predict(X), LinearRegression().fit(X, y).predict(X))


def test_max_samples_wraps_the_learner_of_scores_and_covariates_models():
    from soilcarbon.models.layout import FeatureLayout
    from soilcarbon.training.candidates import Subsampled, build_candidate

    layout = FeatureLayout(np.arange(1100, 1200, 2.0), "nm", ["ndvi", "twi"])
    for model, params in (("covariates", {"learner": "svr", "max_samples": 50}),
                          ("scores", {"learner": "svr", "n_pca": 3, "max_samples": 50})):
        built = build_candidate(CandidateSpec(model, params, "none"), layout, [])
        assert isinstance(built.steps[-1][1], Subsampled) and built.steps[-1][1].max_samples == 50
        plain = build_candidate(CandidateSpec(model, {k: v for k, v in params.items() if k != "max_samples"}, "none"),
                                layout, [])
        assert not isinstance(plain.steps[-1][1], Subsampled)
    with pytest.raises(SoilCarbonError, match=r"candidate covariates\(learner=svr,max_samples=-1\)\|none: "
                                              r"max_samples must be an integer >= 1, got -1"):
        build_candidate(CandidateSpec("covariates", {"learner": "svr", "max_samples": -1}, "none"), layout, [])
