"""Applicability domain: PCA Hotelling T² and Q residual (SPE) with thresholds learned on the
training data (Jackson & Mudholkar 1979; the usual chemometric outlier check, e.g. ASTM E1655).

``score = max(T²/T²_lim, Q/Q_lim)``; a sample is ``in_domain`` when ``score <= 1``. The limits
are the ``quantile`` (default 99 %) of the training samples' own T² and Q. When the components
keep all the variance (as many components as features), Q is rounding noise: its limit is then
floored at ``Q_FLOOR`` per feature, so the score is T²'s alone and does not depend on which
other rows were scored with a sample (scikit-learn's subset-invariance check).
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.decomposition import PCA
from sklearn.utils.validation import check_is_fitted, validate_data

#: Smallest Q limit per feature of the standardized data: far above float64 rounding (~1e-32),
#: far below any real residual.
Q_FLOOR = 1e-12


class PCADomain(BaseEstimator):
    """Hotelling T² + Q residual domain check on a feature matrix.

    Parameters
    ----------
    variance : share of variance the retained components explain.
    max_components : upper bound on the number of components.
    quantile : training quantile used as the limit of T² and Q.
    """

    def __init__(self, variance: float = 0.99, max_components: int = 20, quantile: float = 0.99):
        self.variance = variance
        self.max_components = max_components
        self.quantile = quantile

    def fit(self, X, y=None):
        X = validate_data(self, X, dtype=float)
        self.mean_ = X.mean(axis=0)
        self.std_ = X.std(axis=0)
        self.std_[self.std_ == 0] = 1.0
        Xs = (X - self.mean_) / self.std_
        full = PCA(n_components=min(self.max_components, *Xs.shape)).fit(Xs)
        cumulative = np.cumsum(full.explained_variance_ratio_)
        n = int(min(np.searchsorted(cumulative, self.variance) + 1, len(cumulative)))
        self.pca_ = PCA(n_components=n).fit(Xs)
        self.n_components_ = n
        t2, q, _ = self._statistics(Xs)
        self.t2_limit_ = float(np.quantile(t2, self.quantile)) or 1e-12
        self.q_limit_ = max(float(np.quantile(q, self.quantile)), Q_FLOOR * X.shape[1])
        return self

    def _statistics(self, Xs):
        """T², Q (squared norm of the reconstruction residual) and scores."""
        centred = Xs - self.pca_.mean_
        scores = centred @ self.pca_.components_.T
        t2 = np.einsum("ij,ij->i", scores, scores / self.pca_.explained_variance_)
        centred -= scores @ self.pca_.components_
        return t2, np.einsum("ij,ij->i", centred, centred), scores

    def assess(self, X) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, domain_score)`` from one projection: what :meth:`scores` and
        :meth:`score_samples` return, for callers that need both."""
        check_is_fitted(self, "pca_")
        Xs = (validate_data(self, X, dtype=float, reset=False) - self.mean_) / self.std_
        t2, q, scores = self._statistics(Xs)
        standardized = scores / np.sqrt(self.pca_.explained_variance_)
        return standardized, np.maximum(t2 / self.t2_limit_, q / self.q_limit_)

    def scores(self, X) -> np.ndarray:
        """Standardized PCA scores (t / sqrt(λ)), the coordinates the interval model uses."""
        return self.assess(X)[0]

    def score_samples(self, X) -> np.ndarray:
        """Domain score per sample: max(T²/T²_lim, Q/Q_lim); above 1 means out of domain."""
        return self.assess(X)[1]

    def in_domain(self, X) -> np.ndarray:
        return self.score_samples(X) <= 1.0
