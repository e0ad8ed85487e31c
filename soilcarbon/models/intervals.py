"""Normalized conformal prediction intervals from out-of-fold residuals.

Method: locally weighted conformal regression (Lei et al. 2018, JASA 113:1094; Papadopoulos
et al. 2008). Each calibration sample's nonconformity score is ``|y - ŷ_oof| / σ(x)``, where
ŷ_oof comes from a model that never saw the sample (cross-validation, as in CV+; Barber et
al. 2021) and σ(x) is the mean absolute out-of-fold residual of the sample's k nearest
neighbours in a difficulty space (domain PCA scores and the prediction itself), leaving the
sample out. The interval at level 1-α is ``ŷ ± q·σ(x)`` with q the ⌈(n+1)(1-α)⌉-th smallest
score. Widths therefore adapt to how hard a region of the spectral space is.

Why our own code: MAPIE's normalized score (``ResidualNormalisingScore``) needs a separate
calibration split; with a few hundred lab samples we calibrate on the cross-validation
residuals we already have instead of giving up a third of the data.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.neighbors import NearestNeighbors
from sklearn.utils.validation import check_is_fitted

from soilcarbon.errors import SoilCarbonError


def conformal_quantile(scores: np.ndarray, level: float) -> float:
    """The ⌈(n+1)·level⌉-th smallest score (infinite when n is too small for the level)."""
    if not 0 < level < 1:
        raise SoilCarbonError(f"interval level must be between 0 and 1, got {level}")
    scores = np.sort(np.asarray(scores, dtype=float))
    rank = int(np.ceil((len(scores) + 1) * level))
    return float("inf") if rank > len(scores) else float(scores[rank - 1])


class NormalizedConformal(BaseEstimator):
    """Difficulty-scaled conformal intervals calibrated on out-of-fold residuals.

    Parameters
    ----------
    n_neighbors : neighbours whose mean absolute residual estimates σ(x).
    lower_bound : lowest value an interval may reach (e.g. 0 for a concentration), or None.
    """

    def __init__(self, n_neighbors: int = 30, lower_bound: float | None = None):
        self.n_neighbors = n_neighbors
        self.lower_bound = lower_bound

    def _space(self, Z, y_pred):
        return np.column_stack([np.asarray(Z, dtype=float), (np.asarray(y_pred, float) - self.center_) / self.scale_])

    def fit(self, Z, y, y_oof):
        """Z: (n, d) difficulty features; y: observed; y_oof: out-of-fold predictions."""
        y = np.asarray(y, dtype=float)
        y_oof = np.asarray(y_oof, dtype=float)
        self.center_ = float(np.mean(y_oof))
        self.scale_ = float(np.std(y_oof)) or 1.0
        space = self._space(Z, y_oof)
        self.residuals_ = np.abs(y - y_oof)
        k = int(min(self.n_neighbors, len(y) - 1))
        self.k_ = max(k, 1)
        self.neighbors_ = NearestNeighbors(n_neighbors=self.k_ + 1).fit(space)
        _, idx = self.neighbors_.kneighbors(space)
        sigma = self.residuals_[idx[:, 1:]].mean(axis=1)  # leave the sample itself out
        self.floor_ = 0.05 * float(np.mean(self.residuals_)) + 1e-12
        self.scores_ = np.sort(self.residuals_ / np.maximum(sigma, self.floor_))
        return self

    def sigma(self, Z, y_pred) -> np.ndarray:
        """Difficulty σ(x) of new samples."""
        check_is_fitted(self, "scores_")
        _, idx = self.neighbors_.kneighbors(self._space(Z, y_pred), n_neighbors=self.k_)
        return np.maximum(self.residuals_[idx].mean(axis=1), self.floor_)

    def interval(self, Z, y_pred, level: float = 0.9) -> tuple[np.ndarray, np.ndarray]:
        """Lower and upper bounds at ``level`` around predictions ``y_pred``."""
        y_pred = np.asarray(y_pred, dtype=float)
        half = conformal_quantile(self.scores_, level) * self.sigma(Z, y_pred)
        lower, upper = y_pred - half, y_pred + half
        if self.lower_bound is not None:
            lower = np.maximum(lower, self.lower_bound)
        return lower, upper
