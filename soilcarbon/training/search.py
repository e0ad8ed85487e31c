"""Model selection by cross-validation: every candidate's out-of-fold predictions on the same
folds; the best candidate of each model family (label) by RMSE; the single best, a cross-fitted
stack or the equal average of the family bests close to the best (:func:`select`, by
``ensemble.method``).

On large data (:mod:`soilcarbon.training.scale`) :func:`evaluate_halving` first prunes each
family's candidates by successive halving on growing subsamples (Jamieson & Talwalkar 2016;
Li et al. 2017); only the survivors get out-of-fold predictions on all samples. There, spectral
preprocessing made only of per-spectrum steps (:data:`PER_SPECTRUM_STEPS`, whose output for a
spectrum does not depend on the other spectra, so fitting it on a fold's training part changes
nothing) is computed once per search for all candidates and folds that use it, instead of once
per candidate, fold and part (at 16,000 spectra Savitzky-Golay + resampling takes 1-2 s, times
16 candidates x 5 folds). Below ``compute.large_n`` each fit still preprocesses its own rows:
the outputs agree to about 1e-13 but not bit for bit (the row subsets are laid out differently
in memory), and small-data results must stay exactly as they were.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd
from sklearn.base import clone
from sklearn.utils._param_validation import InvalidParameterError
from sklearn.utils.parallel import Parallel, delayed  # carries warning filters and config to workers

from soilcarbon.errors import SoilCarbonError
from soilcarbon.models.ensemble import stacking_weights, weighted_ensemble
from soilcarbon.models.layout import FeatureLayout
from soilcarbon.process import die_with_parent
from soilcarbon.training.candidates import build_candidate, spectral_preprocessing, transform_allowed
from soilcarbon.training.config import SPECTRAL_MODELS, CandidateSpec, TrainConfig
from soilcarbon.training.scale import HALVING_ETA, backend, halving_rounds


@dataclass
class CandidateScore:
    spec: CandidateSpec
    oof: np.ndarray
    rmse: float
    seconds: float
    samples: int = 0  # samples of the inner CV that gave the RMSE (a subsample for pruned candidates)


@dataclass
class Selection:
    """The chosen model: one candidate or a weighted ensemble, with its out-of-fold predictions."""

    members: list
    weights: np.ndarray
    oof: np.ndarray
    rmse: float
    scores: list = field(default_factory=list)
    pruned: list = field(default_factory=list)  # CandidateScore of candidates halving dropped (oof None)

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
        """One row per candidate: the fully cross-validated ones by RMSE, then those successive
        halving pruned (their RMSE is on the subsample in ``samples``)."""
        rows = [{"candidate": s.spec.name, "model": s.spec.model, "transform": s.spec.transform,
                 "cv_rmse": s.rmse, "seconds": s.seconds, "samples": s.samples}
                for s in [*self.scores, *self.pruned]]
        table = pd.DataFrame(rows)
        return table.sort_values(["samples", "cv_rmse"], ascending=[False, True], kind="stable").reset_index(drop=True)


def _fit_predict(estimator, X, y, train, test, parent_pid: int | None, name: str):
    """Fit on ``train``, predict ``test``; a parameter value the estimator rejects when it is
    fitted (scikit-learn checks values only then) is an error naming the candidate."""
    if parent_pid is not None:  # local engine: a loky worker must not outlive a killed `train`
        die_with_parent(parent_pid)
    started = time.perf_counter()
    try:
        model = clone(estimator).fit(X[train], y[train])
    except InvalidParameterError as exc:
        raise SoilCarbonError(f"candidate {name}: {exc}") from None
    return np.ravel(model.predict(X[test])), time.perf_counter() - started


#: Preprocessing steps whose output for one spectrum depends on that spectrum (and the axis) only.
PER_SPECTRUM_STEPS = frozenset({"savgol", "resample", "trim", "snv", "detrend", "absorbance"})


def _preprocessed_once(specs: list, X: np.ndarray, layout: FeatureLayout, preprocessing: list) -> list:
    """``(matrix, layout, spec)`` to fit each candidate on: for spectral candidates whose
    preprocessing is per spectrum only, the preprocessed matrix (computed once per distinct
    preprocessing, shared) with a spec that preprocesses nothing; else ``X`` and the spec."""
    done, inputs = {}, []
    for spec in specs:
        steps = spec.preprocessing if spec.preprocessing is not None else preprocessing
        if (spec.model not in SPECTRAL_MODELS or not layout.n_spectral
                or not all(str(step["name"]).strip().lower() in PER_SPECTRUM_STEPS for step in steps)):
            inputs.append((X, layout, spec))
            continue
        key = json.dumps(steps, sort_keys=True, default=str)
        if key not in done:
            Z = spectral_preprocessing(steps, layout).fit_transform(X[:, layout.spectral_index])
            matrix = np.ascontiguousarray(np.hstack([Z, X[:, layout.covariate_index]]))
            done[key] = matrix, FeatureLayout(np.arange(Z.shape[1], dtype=float), layout.unit, list(layout.covariates))
        inputs.append((*done[key], replace(spec, preprocessing=[])))
    return inputs


def evaluate(specs: list, X: np.ndarray, y: np.ndarray, labels: np.ndarray, layout: FeatureLayout,
             preprocessing: list, seed: int = 0, n_jobs: int = 2, progress=None,
             share_preprocessing: bool = False, engine: str = "local") -> list[CandidateScore]:
    """Out-of-fold predictions of every candidate on the folds given by ``labels``; with
    ``share_preprocessing``, per-spectrum preprocessing is computed once for all candidates and
    folds (see the module docstring); ``engine`` local or spark (:func:`scale.backend`)."""
    specs = [s for s in specs if transform_allowed(s.transform, y)]
    folds = np.unique(labels)
    tasks = [(i, f) for i in range(len(specs)) for f in folds]
    inputs = (_preprocessed_once(specs, X, layout, preprocessing) if share_preprocessing
              else [(X, layout, s) for s in specs])
    estimators = [build_candidate(spec, lay, preprocessing, seed) for _, lay, spec in inputs]
    parent = os.getpid() if engine == "local" else None
    jobs = (delayed(_fit_predict)(estimators[i], inputs[i][0], y, labels != f, labels == f, parent, specs[i].name)
            for i, f in tasks)
    oof = np.zeros((len(specs), len(y)))
    seconds = np.zeros(len(specs))
    with backend(engine):  # joblibspark returns a list only: progress then ticks at the end
        results = Parallel(n_jobs=n_jobs, return_as="generator" if engine == "local" else "list")(jobs)
        for (i, f), (prediction, took) in zip(tasks, results):
            oof[i, labels == f] = prediction
            seconds[i] += took
            if progress is not None:
                progress()
    return [CandidateScore(s, oof[i], float(np.sqrt(np.mean((oof[i] - y) ** 2))), float(seconds[i]), len(y))
            for i, s in enumerate(specs)]


def family(spec: CandidateSpec) -> str:
    """The model family of a candidate (its label, else its model): the unit of stacking and halving."""
    return spec.label or spec.model


def halving_tasks(specs: list, n: int, n_folds: int) -> int:
    """Fits :func:`evaluate_halving` runs for ``specs`` on ``n`` samples with ``n_folds`` inner folds."""
    sizes: dict = {}
    for spec in specs:
        sizes[family(spec)] = sizes.get(family(spec), 0) + 1
    total = 0
    for k in sizes.values():
        rounds = halving_rounds(k, n)
        total += sum(m for i, (m, size) in enumerate(rounds) if i == 0 or size != rounds[i - 1][1]) + 1
    return n_folds * total


def evaluate_halving(specs: list, X: np.ndarray, y: np.ndarray, labels: np.ndarray, layout: FeatureLayout,
                     preprocessing: list, seed: int = 0, n_jobs: int = 2, progress=None,
                     engine: str = "local") -> tuple[list, list]:
    """Successive halving inside each model family, then out-of-fold predictions of the survivors.

    A family of m candidates runs :func:`~soilcarbon.training.scale.halving_rounds`: in each
    round the remaining candidates are cross-validated on the same inner folds restricted to a
    random subsample (nested: the first rows of one seeded permutation) and the best
    ``ceil(m / 3)`` by RMSE go on. Returns ``(scores of the survivors on all samples, scores of
    the pruned candidates on the subsample of the round that dropped them, with oof None)``."""
    specs = [s for s in specs if transform_allowed(s.transform, y)]
    order = np.random.default_rng(seed).permutation(len(y))
    families: dict = {}
    for spec in specs:
        families.setdefault(family(spec), []).append(spec)
    survivors, pruned = [], []
    for members in families.values():
        last_size, ranked = None, []
        for keep_from, size in halving_rounds(len(members), len(y)):
            if size != last_size:  # a round on the same subsample (small n) reuses the last ranking
                rows = np.sort(order[:size])
                scores = evaluate(members, X[rows], y[rows], labels[rows], layout, preprocessing, seed, n_jobs,
                                  progress, share_preprocessing=True, engine=engine)
                ranked, last_size = sorted(scores, key=lambda s: s.rmse), size
            else:
                ranked = ranked[:keep_from]
            keep = -(-keep_from // HALVING_ETA)
            members = [s.spec for s in ranked[:keep]]
            pruned += [CandidateScore(s.spec, None, s.rmse, s.seconds, s.samples) for s in ranked[keep:]]
        survivors += members
    return evaluate(survivors, X, y, labels, layout, preprocessing, seed, n_jobs, progress,
                    share_preprocessing=True, engine=engine), pruned


def select(scores: list, y: np.ndarray, labels: np.ndarray, config: TrainConfig) -> Selection:
    """The model to refit, from the inner-CV scores. ``ensemble.method``:

    - ``average``: the equal-weight average of the best candidate of each family whose inner
      RMSE is within ``average_within`` (a fraction; null: every family) of the best's; the single
      best when no other family is that close. The average is not compared with the single best
      on the same inner folds: the best's RMSE is the minimum of many noisy estimates and so
      biased low (Cawley & Talbot 2010), and an equal average fits no weights that could chase
      noise (the "forecast combination puzzle", Smith & Wallis 2009; Claeskens et al. 2016).
    - ``compete``: the lowest inner RMSE of the single best, the average of the families within
      ``compete_within`` of the best, and a stack of the best of the ``max_members`` best
      families, its non-negative weights cross-fitted on the inner folds (Breiman 1996; Wolpert
      1992).
    - ``auto`` (default): ``average`` when the selection sees fewer than ``small_n`` samples,
      ``compete`` from there on, where the inner RMSE is precise enough to pick the best or
      fit weights. On the LimeSoDa pairs (32-460 samples) the average beat ``compete`` in every
      group; on the 548 NIR samples the stack beat the average (``benchmarks/selection_rules.py``).
    """
    ranked = sorted(scores, key=lambda s: s.rmse)
    best = ranked[0]
    chosen = Selection([best.spec], np.array([1.0]), best.oof, best.rmse, scores)
    ensemble = config.ensemble or {}
    method = ensemble.get("method", "auto")
    if method == "auto":
        method = "average" if len(y) < int(ensemble.get("small_n", 200)) else "compete"
    if not ensemble.get("enabled", True):
        return chosen
    bests, families = [], set()
    for score in ranked:
        if family(score.spec) not in families:
            bests.append(score)
            families.add(family(score.spec))
    if len(bests) < 2:
        return chosen
    within = ensemble.get("average_within" if method == "average" else "compete_within")
    close = [m for m in bests if within is None or m.rmse <= (1 + within) * best.rmse]
    if len(close) >= 2:
        average = np.mean([m.oof for m in close], axis=0)
        rmse = float(np.sqrt(np.mean((average - y) ** 2)))
        averaged = Selection([m.spec for m in close], np.full(len(close), 1.0 / len(close)), average, rmse, scores)
        if method == "average" or rmse < chosen.rmse:
            chosen = averaged
    if method == "average":
        return chosen
    members = bests[: int(ensemble.get("max_members", 3))]
    P = np.column_stack([m.oof for m in members])
    stacked = np.zeros(len(y))
    for fold in np.unique(labels):
        test = labels == fold
        stacked[test] = P[test] @ stacking_weights(P[~test], y[~test])
    rmse = float(np.sqrt(np.mean((stacked - y) ** 2)))
    if rmse < chosen.rmse:
        weights = stacking_weights(P, y)
        used = weights > 1e-6
        if used.sum() >= 2:
            return Selection([m.spec for m, u in zip(members, used) if u], weights[used] / weights[used].sum(),
                             stacked, rmse, scores)
    return chosen
