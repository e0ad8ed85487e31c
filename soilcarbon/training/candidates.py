"""Candidate models as scikit-learn estimators over the model matrix ``[spectra | covariates]``.

- ``pls``: PLS regression (Wold et al. 2001) on the preprocessed spectra.
- ``mbl``: memory-based learning, local PLS on each query's spectral neighbours
  (Ramirez-Lopez et al. 2013), see :mod:`soilcarbon.models.mbl`.
- ``lightgbm``: gradient-boosted trees (Ke et al. 2017) on PLS (``n_pls``) or PCA (``n_pca``)
  scores of the preprocessed spectra plus the covariates (fusion of both sources).
- ``scores``: any covariate learner (``learner``: cubist, svr, gp, forest, ...) on those scores
  plus the covariates, fitted on at most ``max_samples`` rows if given (:class:`Subsampled`);
  Cubist on PCA scores of SNV spectra is the Open Soil Spectral Library's model (Safanelli et
  al. 2025).
- ``covariates``: a learner on the covariates alone (``learner``, see :func:`covariate_learner`),
  with ``max_samples`` as for ``scores``.

A target transform (log, sqrt) wraps any of them in a ``TransformedTargetRegressor``.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin, TransformerMixin
from sklearn.compose import ColumnTransformer, TransformedTargetRegressor
from sklearn.cross_decomposition import PLSRegression
from sklearn.decomposition import PCA
from sklearn.pipeline import Pipeline
from sklearn.utils.validation import check_is_fitted, validate_data

from soilcarbon.errors import SoilCarbonError
from soilcarbon.models.layout import FeatureLayout
from soilcarbon.training.config import CandidateSpec


def spectral_preprocessing(steps: list, layout: FeatureLayout):
    """The configured preprocessing pipeline for the model's spectral axis."""
    from soilcarbon.spectral.preprocessing import build_preprocessing

    return build_preprocessing(steps, layout.axis)


def _spectra_only(transformer, layout: FeatureLayout) -> ColumnTransformer:
    return ColumnTransformer([("spectra", transformer, layout.spectral_index)], remainder="drop")


def _lgbm(params: dict, seed: int):
    from lightgbm import LGBMRegressor

    defaults = dict(n_estimators=400, learning_rate=0.05, num_leaves=15, min_child_samples=10,
                    subsample=0.8, subsample_freq=1, colsample_bytree=0.8, verbose=-1, n_jobs=1,
                    random_state=seed)
    defaults.update(params)
    return LGBMRegressor(**defaults)


def _fit_pls(estimator, X, y) -> PLSRegression:
    """Validate ``X, y`` (setting ``n_features_in_``) and fit ``PLSRegression(scale=False)`` with
    ``n_components`` capped at n_samples - 1 and n_features; one sample cannot be fitted."""
    X, y = validate_data(estimator, X, y, y_numeric=True)
    if X.shape[0] < 2:
        raise ValueError(f"{type(estimator).__name__} needs at least 2 samples, got n_samples = {X.shape[0]}")
    n = int(min(estimator.n_components, X.shape[0] - 1, X.shape[1]))
    return PLSRegression(n_components=n, scale=False).fit(X, y)


class PLS(RegressorMixin, BaseEstimator):
    """PLS regression (scale=False) with 1-D predictions; ``n_components`` is capped at what the
    training data allow (n_samples - 1, n_features), so small data sets do not fail.

    Passes scikit-learn's ``check_estimator`` (tests/test_estimator_contract.py)."""

    def __init__(self, n_components: int = 10):
        self.n_components = n_components

    def fit(self, X, y):
        self.pls_ = _fit_pls(self, X, y)
        return self

    def predict(self, X):
        check_is_fitted(self)
        # models pickled before n_features_in_ was recorded skip the width check (sklearn does)
        return np.ravel(self.pls_.predict(validate_data(self, X, reset=False)))


class PLSScores(TransformerMixin, BaseEstimator):
    """The X scores of a PLS regression on y, as a supervised compression step (a transformer
    that returns only the scores, which ``PLSRegression.fit_transform`` does not).

    Passes scikit-learn's ``check_estimator`` (tests/test_estimator_contract.py)."""

    def __init__(self, n_components: int = 15):
        self.n_components = n_components

    def fit(self, X, y):
        self.pls_ = _fit_pls(self, X, y)
        return self

    def transform(self, X):
        check_is_fitted(self)
        return self.pls_.transform(validate_data(self, X, reset=False))

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = True  # supervised: the scores depend on y
        return tags


def build_candidate(spec: CandidateSpec, layout: FeatureLayout, preprocessing: list, seed: int = 0):
    """A fresh, unfitted estimator for one candidate (its own preprocessing, if it has one); a
    parameter the estimator does not take is an error naming the candidate."""
    try:
        return _build(spec, layout, preprocessing, seed)
    except (TypeError, ValueError) as exc:
        raise SoilCarbonError(f"candidate {spec.name}: {exc}") from None


def _build(spec: CandidateSpec, layout: FeatureLayout, preprocessing: list, seed: int):
    params = dict(spec.params)
    if spec.preprocessing is not None:
        preprocessing = spec.preprocessing
    if spec.model == "pls":
        model = Pipeline([
            ("features", _spectra_only(spectral_preprocessing(preprocessing, layout), layout)),
            ("pls", PLS(n_components=int(params.get("n_components", 10)))),
        ])
    elif spec.model == "mbl":
        from soilcarbon.models.mbl import MemoryBasedLearner

        model = Pipeline([
            ("features", _spectra_only(spectral_preprocessing(preprocessing, layout), layout)),
            ("mbl", MemoryBasedLearner(**params)),
        ])
    elif spec.model in ("lightgbm", "scores"):
        learner = params.pop("learner", "lightgbm") if spec.model == "scores" else "lightgbm"
        n_pls, n_pca = params.pop("n_pls", None), params.pop("n_pca", None)
        compress = (PLSScores(int(n_pls)) if n_pls is not None
                    else PCA(n_components=int(n_pca or 20), random_state=seed))
        blocks = [("spectra", Pipeline([
            ("preprocessing", spectral_preprocessing(preprocessing, layout)),
            ("compress", compress),
        ]), layout.spectral_index)]
        if layout.covariates:
            blocks.append(("covariates", "passthrough", layout.covariate_index))
        model = Pipeline([("features", ColumnTransformer(blocks, remainder="drop")),
                          (learner, _subsampled_learner(learner, params, seed))])
    elif spec.model == "covariates":
        learner = params.pop("learner", "lightgbm")
        model = Pipeline([
            ("features", ColumnTransformer([("covariates", "passthrough", layout.covariate_index)])),
            (learner, _subsampled_learner(learner, params, seed)),
        ])
    else:  # parse_config guards this
        raise SoilCarbonError(f"unknown candidate model {spec.model!r}")
    return with_target_transform(model, spec.transform)


def _subsampled_learner(learner: str, params: dict, seed: int):
    """:func:`covariate_learner`, wrapped in :class:`Subsampled` when ``params`` has ``max_samples``."""
    max_samples = params.pop("max_samples", None)
    if max_samples is None:
        return covariate_learner(learner, params, seed)
    if not (isinstance(max_samples, int) and not isinstance(max_samples, bool) and max_samples >= 1):
        raise ValueError(f"max_samples must be an integer >= 1, got {max_samples!r}")
    return Subsampled(covariate_learner(learner, params, seed), max_samples, seed)


class Subsampled(RegressorMixin, BaseEstimator):
    """Fit ``estimator`` on at most ``max_samples`` rows (a seeded random subset when there are
    more): the "subset of data" approximation (Rasmussen & Williams 2006, sect. 8.3.1) that keeps
    a learner whose cost grows with n (Cubist, SVR, GP) affordable on a library of 50,000
    spectra; below ``max_samples`` it is the estimator itself. scikit-learn has no such
    meta-estimator (``BaggingRegressor`` with one estimator would also bootstrap).

    Passes scikit-learn's ``check_estimator`` (tests/test_estimator_contract.py)."""

    def __init__(self, estimator=None, max_samples: int = 5000, random_state: int = 0):
        self.estimator = estimator
        self.max_samples = max_samples
        self.random_state = random_state

    def fit(self, X, y):
        X, y = validate_data(self, X, y, y_numeric=True)
        if len(y) > self.max_samples:
            rows = np.sort(np.random.default_rng(self.random_state).choice(len(y), self.max_samples, replace=False))
            X, y = X[rows], y[rows]
        from sklearn.base import clone
        from sklearn.linear_model import LinearRegression

        self.estimator_ = clone(self.estimator if self.estimator is not None else LinearRegression()).fit(X, y)
        return self

    def predict(self, X):
        check_is_fitted(self)
        return np.ravel(self.estimator_.predict(validate_data(self, X, reset=False)))


LEARNERS = ("lightgbm", "forest", "extratrees", "linear", "spline", "svr", "gp", "cubist")


def covariate_learner(learner: str, params: dict, seed: int = 0):
    """A regressor for covariates (or scores): ``lightgbm`` (gradient boosting), ``forest`` (random
    forest, Breiman 2001), ``extratrees`` (extremely randomized trees, Geurts et al. 2006),
    ``linear`` (ridge-regularized multiple linear regression, alpha by internal CV), ``spline`` (an
    additive model: cubic B-splines of each standardized covariate on ``n_knots`` uniform knots,
    constant beyond them, ridge-penalized with alpha by internal CV; a P-spline GAM, Eilers & Marx
    1996, with a ridge instead of a difference penalty), ``svr`` (RBF support vector regression on
    standardized inputs and target), ``gp`` (Gaussian process with a Matern 5/2 kernel plus noise,
    with ``linear: true`` plus a linear kernel, so the marginal likelihood weighs a linear trend
    against the smooth part; hyperparameters by marginal likelihood with ``restarts`` extra random
    starts, Rasmussen & Williams 2006) or ``cubist`` (rule-based model trees, Quinlan 1992, the
    ``cubist`` package). Missing values are imputed by the median for all but the tree ensembles
    and LightGBM."""
    from sklearn.ensemble import ExtraTreesRegressor, RandomForestRegressor
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import RidgeCV
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVR

    if learner == "lightgbm":
        return _lgbm(params, seed)
    if learner == "forest":
        defaults = dict(n_estimators=300, min_samples_leaf=2, max_features=0.5, n_jobs=1, random_state=seed)
        return RandomForestRegressor(**{**defaults, **params})
    if learner == "extratrees":  # all features at each split: Geurts et al.'s default for regression
        defaults = dict(n_estimators=300, min_samples_leaf=2, max_features=1.0, n_jobs=1, random_state=seed)
        return ExtraTreesRegressor(**{**defaults, **params})
    if learner == "gp":
        from sklearn.gaussian_process import GaussianProcessRegressor
        from sklearn.gaussian_process.kernels import ConstantKernel, DotProduct, Matern, WhiteKernel

        unknown = set(params) - {"length_scale", "linear", "restarts"}
        if unknown:
            raise ValueError(f"the gp learner takes only length_scale, linear and restarts, got {sorted(unknown)}")
        linear = params.get("linear", False)
        if not isinstance(linear, bool):  # a string such as "false" would otherwise count as true
            raise ValueError(f"the gp learner's linear must be true or false, got {linear!r}")
        smooth = Matern(length_scale=float(params.get("length_scale", 3.0)), nu=2.5)
        kernel = ConstantKernel() * smooth + WhiteKernel()
        if linear:
            kernel = ConstantKernel(0.1) * DotProduct(1.0) + ConstantKernel(1.0) * smooth + WhiteKernel(0.5)
        # restarts as given: scikit-learn rejects a non-integer or negative count when fitting
        gp = GaussianProcessRegressor(kernel, normalize_y=True, n_restarts_optimizer=params.get("restarts", 0),
                                      random_state=seed)
        return Pipeline([("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler()), ("gp", gp)])
    if learner == "cubist":
        from cubist import Cubist

        # pandas in, so Cubist sees the same column names at fit and predict (it names numpy
        # columns itself at fit, and scikit-learn then warns at every predict)
        return Pipeline([("impute", SimpleImputer(strategy="median").set_output(transform="pandas")),
                         ("cubist", Cubist(**{"n_committees": 5, "random_state": seed, **params}))])
    if learner == "linear":
        return Pipeline([("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler()),
                         ("ridge", RidgeCV(alphas=np.logspace(-3, 3, 13)))])
    if learner == "spline":
        from sklearn.preprocessing import SplineTransformer

        unknown = set(params) - {"n_knots"}
        if unknown:
            raise ValueError(f"the spline learner takes only n_knots, got {sorted(unknown)}")
        return Pipeline([("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler()),
                         ("splines", SplineTransformer(n_knots=params.get("n_knots", 3), degree=3,
                                                       extrapolation="constant")),
                         ("ridge", RidgeCV(alphas=np.logspace(-2, 4, 13)))])
    if learner == "svr":
        svr = Pipeline([("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler()),
                        ("svr", SVR(**{"C": 10.0, "epsilon": 0.1, **params}))])
        return TransformedTargetRegressor(svr, transformer=StandardScaler())
    raise SoilCarbonError(f"unknown learner {learner!r}; use one of {', '.join(LEARNERS)}")


def with_target_transform(model, transform: str):
    """Wrap a regressor so it learns ``transform(y)`` and predicts on the original scale. The
    inverse is not clipped: a far extrapolation of a log model overflows to inf, which
    prediction reports as a failed sample instead of returning a capped, plausible-looking value."""
    if transform == "none":
        return model
    if transform == "log":
        return TransformedTargetRegressor(model, func=np.log, inverse_func=np.exp, check_inverse=False)
    if transform == "sqrt":
        return TransformedTargetRegressor(model, func=np.sqrt, inverse_func=_square_nonnegative,
                                          check_inverse=False)
    raise SoilCarbonError(f"unknown target transform {transform!r}")


def _square_nonnegative(z):
    return np.square(np.clip(z, 0, None))


def transform_allowed(transform: str, y: np.ndarray) -> bool:
    """log needs a strictly positive target, sqrt a non-negative one."""
    if transform == "log":
        return bool(np.all(y > 0))
    if transform == "sqrt":
        return bool(np.all(y >= 0))
    return True
