"""Calibrate a SOC model: nested cross-validation for honest accuracy and interval coverage,
then model selection and fitting on all samples.

Outer folds (k-fold, grouped, user-given or spatial blocks) report accuracy: inside each
outer training part the whole procedure runs (candidate search by inner CV, final fit,
domain model, conformal calibration), and the held-out fold is predicted with intervals. The
deployed model is the same procedure run once on all samples.

How many worker processes, outer folds and candidates that procedure uses, and what a time
budget skips, is decided by :func:`soilcarbon.training.scale.plan` (large-data rules: fewer
outer folds and successive halving of candidates, from ``compute.large_n`` samples on).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer

from soilcarbon.errors import SoilCarbonError
from soilcarbon.models.domain import PCADomain
from soilcarbon.models.intervals import NormalizedConformal
from soilcarbon.models.layout import FeatureLayout
from soilcarbon.models.soc_model import SOCModel
from soilcarbon.spectral.spectra import Spectra
from soilcarbon.training import cv
from soilcarbon.training.candidates import spectral_preprocessing
from soilcarbon.training.config import TrainConfig, load_config
from soilcarbon.training.data import TrainingSet, assemble
from soilcarbon.training.metrics import regression_metrics
from soilcarbon.training.scale import ComputePlan, plan
from soilcarbon.training.search import Selection, evaluate, evaluate_halving, halving_tasks, select

MIN_SAMPLES = 10


@dataclass
class TrainResult:
    """What a training run produced: the model, its cross-validated accuracy and the OOF table."""

    model: SOCModel
    selection: Selection
    metrics: dict
    fold_metrics: pd.DataFrame
    oof: pd.DataFrame
    cv_scheme: str
    data: TrainingSet
    config: TrainConfig
    seconds: float = 0.0
    notes: list = field(default_factory=list)
    compute: ComputePlan | None = None


def _domain_features(layout: FeatureLayout, config: TrainConfig):
    blocks = []
    if layout.n_spectral:
        blocks.append(("spectra", spectral_preprocessing(config.preprocessing, layout), layout.spectral_index))
    if layout.covariates:
        blocks.append(("covariates", "passthrough", layout.covariate_index))
    return ColumnTransformer(blocks, remainder="drop")


def fit_calibration(X: np.ndarray, y: np.ndarray, layout: FeatureLayout, config: TrainConfig,
                    groups=None, target: str = "soc", progress=None, n_jobs: int = 2,
                    halving: bool = False, engine: str = "local") -> tuple[SOCModel, Selection]:
    """Select a model by inner CV (with ``halving``: successive halving of each family's
    candidates first, :func:`~soilcarbon.training.search.evaluate_halving`), fit it on all of X,
    and calibrate its intervals and domain."""
    seed = int(config.cv.get("seed", 0))
    labels = cv.inner_labels(len(y), int(config.cv["inner_folds"]), seed, groups)
    specs = config.expand(has_spectra=layout.n_spectral > 0, has_covariates=bool(layout.covariates))
    pruned = []
    if halving:
        scores, pruned = evaluate_halving(specs, X, y, labels, layout, config.preprocessing, seed, n_jobs, progress,
                                          engine)
    else:
        scores = evaluate(specs, X, y, labels, layout, config.preprocessing, seed, n_jobs, progress, engine=engine)
    selection = select(scores, y, labels, config)
    selection.pruned = pruned
    regressor = selection.build(layout, config.preprocessing, seed).fit(X, y)
    features = _domain_features(layout, config).fit(X)
    domain = PCADomain(
        variance=float(config.domain.get("variance", 0.99)),
        max_components=int(config.domain.get("max_components", 20)),
        quantile=float(config.domain.get("quantile", 0.99)),
    ).fit(features.transform(X))
    calibrator = NormalizedConformal(
        n_neighbors=int(config.interval.get("neighbours", 30)),
        lower_bound=0.0 if np.all(y >= 0) else None,
        n_bins=int(config.interval.get("n_bins", 1)),
    ).fit(domain.scores(features.transform(X)), y, selection.oof)
    model = SOCModel(layout, regressor, features, domain, calibrator, config.level, target,
                     info={"selected": selection.name, "inner_cv_rmse": selection.rmse})
    return model, selection


def outer_scheme(config: TrainConfig, folds: str | None, group: str | None, coords) -> str:
    """The outer CV scheme: given folds, spatial blocks or groups when their columns are given,
    else ``cv.scheme``."""
    if folds:
        return "folds"
    if coords:
        return "spatial"
    if group:
        return "group"
    return config.cv["scheme"]


def outer_labels(data: TrainingSet, config: TrainConfig, folds: str | None, group: str | None,
                 coords: tuple[str, str] | None, n_folds: int | None = None) -> tuple[np.ndarray, str, np.ndarray | None]:
    """Outer fold labels, a description of the scheme, and groups to respect in inner folds;
    ``n_folds`` (default ``cv.folds``) for the schemes that take a fold count."""
    n_folds = int(n_folds or config.cv["folds"])
    seed = int(config.cv.get("seed", 0))
    scheme = outer_scheme(config, folds, group, coords)
    if scheme == "folds":
        if not folds:
            raise SoilCarbonError("cv.scheme 'folds' needs the fold column (--folds COLUMN)")
        labels = cv.given_labels(data.column(folds, "fold"))
        return labels, f"given folds from column {folds!r} ({labels.max() + 1} folds)", labels
    if scheme == "spatial":
        if not coords:
            raise SoilCarbonError("spatial cross-validation needs coordinates (--coords X_COL,Y_COL)")
        x = pd.to_numeric(pd.Series(data.column(coords[0], "x coordinate")), errors="coerce")
        y = pd.to_numeric(pd.Series(data.column(coords[1], "y coordinate")), errors="coerce")
        labels, size = cv.spatial_labels(x, y, n_folds, config.cv.get("block_size"))
        block_ids, _ = cv.spatial_blocks(x, y, size)
        return labels, f"spatial blocks of {size:.0f} m, {n_folds} folds", block_ids
    if scheme == "group":
        if not group:
            raise SoilCarbonError("cv.scheme 'group' needs the group column (--group COLUMN)")
        groups = data.column(group, "group").astype(str)
        return cv.group_labels(groups, n_folds), f"grouped {n_folds}-fold by {group!r}", groups
    return cv.kfold_labels(len(data.y), n_folds, seed), f"{n_folds}-fold (shuffled, seed {seed})", None


def train(spectra: Spectra | None = None, target: str = "", covariates: pd.DataFrame | None = None,
          config: TrainConfig | None = None, id_col: str = "sample_id", folds: str | None = None,
          group: str | None = None, coords: tuple[str, str] | None = None, nested: bool = True,
          progress=None, n_jobs: int | None = None, covariates_source: str = "covariates") -> TrainResult:
    """Train from a :class:`Spectra` (with the target in its metadata) and/or a covariate table.

    ``progress`` is an optional callable ``progress(total=None, advance=0, description=None)``.
    ``n_jobs``: worker processes (default ``compute.jobs``, else the CPUs this process may use).
    The compute choices (:func:`soilcarbon.training.scale.plan`) are in ``result.compute``.
    """
    started = time.perf_counter()
    config = config or load_config()
    reserved = tuple(c for c in (folds, group, *(coords or ())) if c)
    data = assemble(spectra, target, covariates, id_col, reserved, covariates_source)
    n_folds = int(config.cv["folds"])
    if len(data.y) < max(MIN_SAMPLES, n_folds):
        raise SoilCarbonError(
            f"only {len(data.y)} samples have a {target} value; at least {max(MIN_SAMPLES, n_folds)} are needed "
            f"for {n_folds}-fold cross-validation (use fewer folds or add samples)"
        )
    compute = plan(len(data.y), config, outer_scheme(config, folds, group, coords) != "folds", n_jobs)
    labels, scheme, groups = outer_labels(data, config, folds, group, coords, compute.outer_folds)
    specs = config.expand(data.layout.n_spectral > 0, bool(data.layout.covariates))
    inner = int(config.cv["inner_folds"])
    outer_ids = np.unique(labels) if nested else np.array([], dtype=int)

    def tasks(n: int) -> int:  # fits of one search on n samples, for the progress total
        return halving_tasks(specs, n, inner) if compute.halving else len(specs) * inner

    if progress is not None:
        how = f"{len(outer_ids)} outer folds" if nested else "not nested"
        progress(total=sum(tasks(int(np.sum(labels != f))) for f in outer_ids) + tasks(len(data.y)),
                 description=f"cross-validation ({how}{', successive halving' if compute.halving else ''})")

    def tick():
        if progress is not None:
            progress(advance=1)

    oof = pd.DataFrame({"sample_id": data.ids, "observed": data.y, "prediction": np.nan, "lower": np.nan,
                        "upper": np.nan, "level": config.level, "fold": labels})
    fold_rows, fold_seconds = [], []
    deadline = started + 60 * compute.budget_minutes if compute.budget_minutes else None
    for number, fold in enumerate(outer_ids):
        train_rows, test_rows = labels != fold, labels == fold
        if deadline is not None and fold_seconds:
            per_fold = float(np.mean(fold_seconds))
            final = per_fold * len(data.y) / max(1, int(train_rows.sum()))
            if time.perf_counter() + per_fold + final > deadline:
                compute.skipped_folds = [int(f) for f in outer_ids[number:]]
                break
        fold_started = time.perf_counter()
        inner_groups = None if groups is None else np.asarray(groups)[train_rows]
        model, _ = fit_calibration(data.X[train_rows], data.y[train_rows], data.layout, config,
                                   inner_groups, target, tick, compute.jobs, compute.halving, compute.engine)
        predicted = model.predict_matrix(data.X[test_rows])
        for column in ("prediction", "lower", "upper"):
            oof.loc[test_rows, column] = predicted[column].to_numpy()
        metrics = regression_metrics(data.y[test_rows], predicted["prediction"], predicted["lower"],
                                     predicted["upper"])
        fold_rows.append({"fold": int(fold), **metrics, "selected": model.info["selected"]})
        fold_seconds.append(time.perf_counter() - fold_started)
    if compute.skipped_folds:
        done = oof["prediction"].notna()
        compute.reasons.append(
            f"budget: skipped outer fold(s) {', '.join(str(f) for f in compute.skipped_folds)} of {len(outer_ids)} "
            f"(about {float(np.mean(fold_seconds)):.0f} s each); accuracy from the {int(done.sum())} of "
            f"{len(done)} samples of the folds that ran")
        if progress is not None:
            progress(total=sum(tasks(int(np.sum(labels != f))) for f in outer_ids[:len(fold_rows)])
                     + tasks(len(data.y)))
    model, selection = fit_calibration(data.X, data.y, data.layout, config, groups, target, tick, compute.jobs,
                                       compute.halving, compute.engine)
    if nested:
        done = oof["prediction"].notna().to_numpy()
        metrics = regression_metrics(oof["observed"][done], oof["prediction"][done], oof["lower"][done],
                                     oof["upper"][done])
    else:
        lower, upper = model.calibrator.interval(model.difficulty_features(data.X), selection.oof, config.level)
        oof["prediction"], oof["lower"], oof["upper"] = selection.oof, lower, upper
        metrics = regression_metrics(data.y, selection.oof, lower, upper)
        scheme = f"{inner}-fold model-selection CV (not nested)"
    model.info.update({"cv_scheme": scheme, "cv_metrics": metrics, "n_train": int(len(data.y))})
    return TrainResult(model, selection, metrics, pd.DataFrame(fold_rows), oof, scheme, data, config,
                       time.perf_counter() - started, list(data.notes), compute)
