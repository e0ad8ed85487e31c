"""Model selection by cross-validation: every candidate's out-of-fold predictions on the same
folds, the lowest RMSE wins; a non-negative stacked ensemble of the best of each model family (label) wins
instead when its cross-validated RMSE (weights fitted without the fold they predict) is lower.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn.base import clone
from sklearn.utils.parallel import Parallel, delayed  # carries warning filters and config to workers

from soilcarbon.models.ensemble import stacking_weights, weighted_ensemble
from soilcarbon.models.layout import FeatureLayout
from soilcarbon.process import die_with_parent
from soilcarbon.training.candidates import build_candidate, transform_allowed
from soilcarbon.training.config import CandidateSpec, TrainConfig


@dataclass
class CandidateScore:
    spec: CandidateSpec
    oof: np.ndarray
    rmse: float
    seconds: float


@dataclass
class Selection:
    """The chosen model: one candidate or a weighted ensemble, with its out-of-fold predictions."""

    members: list
    weights: np.ndarray
    oof: np.ndarray
    rmse: float
    scores: list = field(default_factory=list)

    @property
    def name(self) -> str:
        if len(self.members) == 1:
            return self.members[0].name
        return " + ".join(f"{w:.2f}*{m.name}" for m, w in zip(self.members, self.weights))

    def build(self, layout: FeatureLayout, preprocessing: list, seed: int = 0):
        """An unfitted estimator implementing the selection."""
        estimators = [build_candidate(m, layout, preprocessing, seed) for m in self.members]
        if len(estimators) == 1:
            return estimators[0]
        return weighted_ensemble(estimators, self.weights)

    def table(self) -> pd.DataFrame:
        rows = [{"candidate": s.spec.name, "model": s.spec.model, "transform": s.spec.transform,
                 "cv_rmse": s.rmse, "seconds": s.seconds} for s in self.scores]
        return pd.DataFrame(rows).sort_values("cv_rmse").reset_index(drop=True)


def _fit_predict(estimator, X, y, train, test, parent_pid: int):
    die_with_parent(parent_pid)  # a loky worker must not outlive a killed `train`
    started = time.perf_counter()
    model = clone(estimator).fit(X[train], y[train])
    return np.ravel(model.predict(X[test])), time.perf_counter() - started


def evaluate(specs: list, X: np.ndarray, y: np.ndarray, labels: np.ndarray, layout: FeatureLayout,
             preprocessing: list, seed: int = 0, n_jobs: int = 2, progress=None) -> list[CandidateScore]:
    """Out-of-fold predictions of every candidate on the folds given by ``labels``."""
    specs = [s for s in specs if transform_allowed(s.transform, y)]
    folds = np.unique(labels)
    tasks = [(i, f) for i in range(len(specs)) for f in folds]
    estimators = [build_candidate(s, layout, preprocessing, seed) for s in specs]
    jobs = (delayed(_fit_predict)(estimators[i], X, y, labels != f, labels == f, os.getpid()) for i, f in tasks)
    oof = np.zeros((len(specs), len(y)))
    seconds = np.zeros(len(specs))
    results = Parallel(n_jobs=n_jobs, return_as="generator")(jobs)
    for (i, f), (prediction, took) in zip(tasks, results):
        oof[i, labels == f] = prediction
        seconds[i] += took
        if progress is not None:
            progress()
    return [CandidateScore(s, oof[i], float(np.sqrt(np.mean((oof[i] - y) ** 2))), float(seconds[i]))
            for i, s in enumerate(specs)]


def select(scores: list, y: np.ndarray, labels: np.ndarray, config: TrainConfig) -> Selection:
    """The best candidate, or a stacked ensemble of the best of each model family if better."""
    ranked = sorted(scores, key=lambda s: s.rmse)
    best = ranked[0]
    chosen = Selection([best.spec], np.array([1.0]), best.oof, best.rmse, scores)
    ensemble = config.ensemble or {}
    if not ensemble.get("enabled", True):
        return chosen
    members, families = [], set()
    for score in ranked:
        family = score.spec.label or score.spec.model
        if family not in families:
            members.append(score)
            families.add(family)
    members = members[: int(ensemble.get("max_members", 3))]
    if len(members) < 2:
        return chosen
    P = np.column_stack([m.oof for m in members])
    stacked = np.zeros(len(y))
    for fold in np.unique(labels):
        test = labels == fold
        stacked[test] = P[test] @ stacking_weights(P[~test], y[~test])
    rmse = float(np.sqrt(np.mean((stacked - y) ** 2)))
    if rmse < best.rmse:
        weights = stacking_weights(P, y)
        used = weights > 1e-6
        if used.sum() >= 2:
            return Selection([m.spec for m, u in zip(members, used) if u], weights[used] / weights[used].sum(),
                             stacked, rmse, scores)
    return chosen
