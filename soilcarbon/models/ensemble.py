"""A weighted average of fitted regressors (stacking with non-negative weights summing to one,
Breiman 1996, "Stacked regressions", Machine Learning 24:49)."""

from __future__ import annotations

import numpy as np
from scipy.optimize import nnls
from sklearn.base import BaseEstimator, RegressorMixin, clone


def stacking_weights(predictions: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Non-negative least-squares weights of the columns of ``predictions``, normalized to sum 1."""
    weights, _ = nnls(np.asarray(predictions, float), np.asarray(y, float))
    total = weights.sum()
    return weights / total if total > 0 else np.full(predictions.shape[1], 1 / predictions.shape[1])


class WeightedEnsemble(BaseEstimator, RegressorMixin):
    """``predict(X) = Σ_i weights[i] · estimators[i].predict(X)``; ``fit`` refits each member."""

    def __init__(self, estimators: list, weights):
        self.estimators = estimators
        self.weights = weights

    def fit(self, X, y):
        self.estimators_ = [clone(e).fit(X, y) for e in self.estimators]
        return self

    def predict(self, X):
        members = np.column_stack([np.ravel(e.predict(X)) for e in self.estimators_])
        return members @ np.asarray(self.weights, dtype=float)
