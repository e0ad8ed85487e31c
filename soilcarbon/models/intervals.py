"""Normalized conformal prediction intervals from out-of-fold residuals, conditional on the
prediction range (Mondrian).

Method: locally weighted conformal regression (Lei et al. 2018, JASA 113:1094; Papadopoulos
et al. 2008). Each calibration sample's nonconformity score is ``|y - ŷ_oof| / σ(x)``, where
ŷ_oof comes from a model that never saw the sample (cross-validation, as in CV+; Barber et
al. 2021) and σ(x) is the mean absolute out-of-fold residual of the sample's k nearest
neighbours in a difficulty space (domain PCA scores and the prediction itself), leaving the
sample out. The interval at level 1-α is ``ŷ ± q·σ(x)`` with q the ⌈(n+1)(1-α)⌉-th smallest
score. Widths therefore adapt to how hard a region of the spectral space is.

Mondrian (category-conditional) calibration (Vovk et al. 2005, "Algorithmic Learning in a
Random World", ch. 4.5; Boström & Johansson 2020, "Mondrian conformal regressors", PMLR
128:114): the calibration samples are split into ``n_bins`` bins at quantiles of their
out-of-fold prediction and q is taken per bin, with the same finite-sample rank
⌈(n_b+1)(1-α)⌉ among the n_b scores of the bin; a new sample uses the q of the bin its
prediction falls in. Coverage then holds within every prediction range, not only on average:
with one global q, high-carbon samples (whose relative errors σ(x) underestimates) were
under-covered and low ones over-covered. ``n_bins=1`` is the plain normalized interval.

Small bins: a fit never makes bins of fewer than ``min_bin_size`` samples (fewer bins are used
instead). When a bin is still too small for the requested level (n_b < ⌈(n_b+1)(1-α)⌉, e.g.
level 0.99 with 60 samples per bin), the calibration samples are re-binned into the largest
number of bins for which every bin has a finite quantile at that level, down to one bin (whose
bound is infinite when even all samples are too few, as before).

Why our own code, and why MAPIE is not a dependency: MAPIE (1.x) offers normalized scores
(``ResidualNormalisingScore``, documented "only with split and prefit methods (not with cross
methods)") and Mondrian calibration for split conformal only, so it would give up a third of a
few hundred lab samples to a calibration split; its cross-conformal regressor (CV+) instead keeps
one model per fold and predicts with all of them, k times the cost of every prediction. We
calibrate one final model on the cross-validation residuals training already has, which is
~80 lines here rather than a dependency used for a quantile.
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
    rank = int(np.ceil((len(scores) + 1) * level - 1e-9))  # n/(n+1) itself must give rank n
    return float("inf") if rank > len(scores) else float(scores[rank - 1])


def bin_edges(values: np.ndarray, n_bins: int) -> np.ndarray:
    """Interior edges splitting ``values`` into ``n_bins`` bins of (nearly) equal counts; tied
    quantiles are merged, so fewer bins result when many values are equal."""
    if n_bins <= 1:
        return np.empty(0)
    return np.unique(np.quantile(np.asarray(values, dtype=float), np.linspace(0, 1, n_bins + 1)[1:-1]))


def bin_of(values, edges: np.ndarray) -> np.ndarray:
    """Bin index of each value: bin i holds edges[i-1] <= value < edges[i]."""
    return np.searchsorted(edges, np.asarray(values, dtype=float), side="right")


class NormalizedConformal(BaseEstimator):
    """Difficulty-scaled conformal intervals calibrated on out-of-fold residuals.

    Parameters
    ----------
    n_neighbors : neighbours whose mean absolute residual estimates σ(x).
    lower_bound : lowest value an interval may reach (e.g. 0 for a concentration), or None.
    n_bins : Mondrian bins of the prediction with their own conformal quantile (1: one global
        quantile).
    min_bin_size : fewest calibration samples per bin; a fit uses at most n // min_bin_size bins.
    """

    def __init__(self, n_neighbors: int = 30, lower_bound: float | None = None, n_bins: int = 1,
                 min_bin_size: int = 50):
        self.n_neighbors = n_neighbors
        self.lower_bound = lower_bound
        self.n_bins = n_bins
        self.min_bin_size = min_bin_size

    def __setstate__(self, state):
        # models pickled before Mondrian bins existed: one global quantile, as they were fitted
        state.setdefault("n_bins", 1)
        state.setdefault("min_bin_size", 50)
        super().__setstate__(state)

    def _space(self, Z, y_pred):
        return np.column_stack([np.asarray(Z, dtype=float), (np.asarray(y_pred, float) - self.center_) / self.scale_])

    def fit(self, Z, y, y_oof):
        """Z: (n, d) difficulty features; y: observed; y_oof: out-of-fold predictions."""
        if not (isinstance(self.n_bins, (int, np.integer)) and not isinstance(self.n_bins, bool) and self.n_bins >= 1):
            raise SoilCarbonError(f"interval n_bins must be an integer >= 1, got {self.n_bins!r}")
        if not (isinstance(self.min_bin_size, (int, np.integer)) and self.min_bin_size >= 1):
            raise SoilCarbonError(f"interval min_bin_size must be an integer >= 1, got {self.min_bin_size!r}")
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
        scores = self.residuals_ / np.maximum(sigma, self.floor_)
        self.scores_ = np.sort(scores)
        # Mondrian categories: bins of the out-of-fold prediction (scores kept in sample order)
        self.calibration_predictions_ = y_oof
        self.calibration_scores_ = scores
        self.n_bins_ = int(max(1, min(self.n_bins, len(y) // self.min_bin_size)))
        self.edges_ = bin_edges(y_oof, self.n_bins_)
        return self

    def sigma(self, Z, y_pred) -> np.ndarray:
        """Difficulty σ(x) of new samples."""
        check_is_fitted(self, "scores_")
        _, idx = self.neighbors_.kneighbors(self._space(Z, y_pred), n_neighbors=self.k_)
        return np.maximum(self.residuals_[idx].mean(axis=1), self.floor_)

    def bin_quantiles(self, level: float) -> tuple[np.ndarray, np.ndarray]:
        """``(edges, quantiles)`` at ``level``: interior bin edges of the prediction and the
        conformal quantile of the normalized score in each bin. Uses the fitted bins, or the
        most bins with a finite quantile in every bin when some bin is too small for the level."""
        check_is_fitted(self, "scores_")
        edges = getattr(self, "edges_", None)
        if edges is None or len(edges) == 0:  # one bin (also models fitted before Mondrian bins)
            return np.empty(0), np.array([conformal_quantile(self.scores_, level)])
        predictions, scores = self.calibration_predictions_, self.calibration_scores_
        candidates = [edges] + [bin_edges(predictions, n) for n in range(len(edges), 1, -1)]
        for edges in candidates:
            members = bin_of(predictions, edges)
            quantiles = np.array([conformal_quantile(scores[members == b], level) for b in range(len(edges) + 1)])
            if np.all(np.isfinite(quantiles)):
                return edges, quantiles
        return np.empty(0), np.array([conformal_quantile(self.scores_, level)])

    def max_level(self) -> float:
        """The highest level with finite bounds: n/(n+1) for n calibration samples (the rank
        ⌈(n+1)·level⌉ must not exceed n; beyond it the upper bound is infinite)."""
        check_is_fitted(self, "scores_")
        return len(self.scores_) / (len(self.scores_) + 1)

    def interval(self, Z, y_pred, level: float = 0.9) -> tuple[np.ndarray, np.ndarray]:
        """Lower and upper bounds at ``level`` around predictions ``y_pred``."""
        y_pred = np.asarray(y_pred, dtype=float)
        edges, quantiles = self.bin_quantiles(level)
        half = quantiles[bin_of(y_pred, edges)] * self.sigma(Z, y_pred)
        lower, upper = y_pred - half, y_pred + half
        if self.lower_bound is not None:
            lower = np.maximum(lower, self.lower_bound)
        return lower, upper
