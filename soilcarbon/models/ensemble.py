"""A weighted average of fitted regressors (stacking with non-negative weights summing to one,
Breiman 1996, "Stacked regressions", Machine Learning 24:49).

The ensemble itself is scikit-learn's :class:`~sklearn.ensemble.VotingRegressor` with
``weights``: ``predict(X) = Σ_i w_i · ŷ_i(X) / Σ_i w_i``, which with our weights (summing to one)
equals the weighted sum to rounding (tests/test_estimator_contract.py checks 1e-12 on a real
stack). Only the weights are ours (:func:`stacking_weights`).
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import nnls
from sklearn.ensemble import VotingRegressor
from sklearn.utils import Bunch


def stacking_weights(predictions: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Non-negative least-squares weights of the columns of ``predictions``, normalized to sum 1."""
    weights, _ = nnls(np.asarray(predictions, float), np.asarray(y, float))
    total = weights.sum()
    return weights / total if total > 0 else np.full(predictions.shape[1], 1 / predictions.shape[1])


def member_names(n: int) -> list[str]:
    """The names of an ensemble's members: ``member0``, ``member1``, ..."""
    return [f"member{i}" for i in range(n)]


def weighted_ensemble(estimators: list, weights) -> VotingRegressor:
    """An unfitted ``VotingRegressor`` averaging ``estimators`` (named by :func:`member_names`)
    with ``weights``; ``fit`` refits each member on the same data."""
    return VotingRegressor(list(zip(member_names(len(estimators)), estimators)),
                           weights=[float(w) for w in weights])


class WeightedEnsemble(VotingRegressor):
    """Loader for models registered before the ensemble was a ``VotingRegressor``: their pickles
    name this class and hold bare member lists; unpickling turns them into the named pairs
    ``VotingRegressor`` expects, so they predict exactly as ``VotingRegressor`` does. New models
    are built by :func:`weighted_ensemble`."""

    def __setstate__(self, state):
        if state.get("estimators") and not isinstance(state["estimators"][0], tuple):
            names = member_names(len(state["estimators"]))
            state["estimators"] = list(zip(names, state["estimators"]))
            if "estimators_" in state:
                state["named_estimators_"] = Bunch(**dict(zip(names, state["estimators_"])))
        state.setdefault("n_jobs", None)
        state.setdefault("verbose", False)
        super().__setstate__(state)
