"""Candidate models as scikit-learn estimators over the model matrix ``[spectra | covariates]``.

- ``pls``: PLS regression (Wold et al. 2001) on the preprocessed spectra.
- ``mbl``: memory-based learning, local PLS on each query's spectral neighbours
  (Ramirez-Lopez et al. 2013), see :mod:`soilcarbon.models.mbl`.
- ``lightgbm``: gradient-boosted trees (Ke et al. 2017) on PCA scores of the preprocessed
  spectra plus the covariates (fusion of both sources).
- ``covariates``: gradient-boosted trees on the covariates alone.

A target transform (log, sqrt) wraps any of them in a ``TransformedTargetRegressor``.
"""

from __future__ import annotations

import numpy as np
from sklearn.compose import ColumnTransformer, TransformedTargetRegressor
from sklearn.cross_decomposition import PLSRegression
from sklearn.decomposition import PCA
from sklearn.pipeline import Pipeline

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
    defaults.update({k: v for k, v in params.items() if k != "n_pca"})
    return LGBMRegressor(**defaults)


class _PLS(PLSRegression):
    """PLSRegression whose predictions are 1-D (so it nests in TransformedTargetRegressor)."""

    def predict(self, X, copy=True):
        return np.ravel(super().predict(X, copy=copy))


def build_candidate(spec: CandidateSpec, layout: FeatureLayout, preprocessing: list, seed: int = 0):
    """A fresh, unfitted estimator for one candidate."""
    params = dict(spec.params)
    if spec.model == "pls":
        model = Pipeline([
            ("features", _spectra_only(spectral_preprocessing(preprocessing, layout), layout)),
            ("pls", _PLS(n_components=int(params.get("n_components", 10)), scale=False)),
        ])
    elif spec.model == "mbl":
        from soilcarbon.models.mbl import MemoryBasedLearner

        model = Pipeline([
            ("features", _spectra_only(spectral_preprocessing(preprocessing, layout), layout)),
            ("mbl", MemoryBasedLearner(**params)),
        ])
    elif spec.model == "lightgbm":
        blocks = [("spectra", Pipeline([
            ("preprocessing", spectral_preprocessing(preprocessing, layout)),
            ("pca", PCA(n_components=int(params.get("n_pca", 20)), random_state=seed)),
        ]), layout.spectral_index)]
        if layout.covariates:
            blocks.append(("covariates", "passthrough", layout.covariate_index))
        model = Pipeline([("features", ColumnTransformer(blocks, remainder="drop")),
                          ("lightgbm", _lgbm(params, seed))])
    elif spec.model == "covariates":
        model = Pipeline([
            ("features", ColumnTransformer([("covariates", "passthrough", layout.covariate_index)])),
            ("lightgbm", _lgbm(params, seed)),
        ])
    else:  # parse_config guards this
        raise SoilCarbonError(f"unknown candidate model {spec.model!r}")
    return with_target_transform(model, spec.transform)


def with_target_transform(model, transform: str):
    """Wrap a regressor so it learns ``transform(y)`` and predicts on the original scale."""
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
