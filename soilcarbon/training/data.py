"""Assemble a training set: join spectra, lab values and covariates by sample id, pick the target,
drop (and count) rows without a target, and build the model matrix ``[spectra | covariates]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from soilcarbon.errors import SoilCarbonError
from soilcarbon.models.layout import FeatureLayout
from soilcarbon.models.matrix import InputPlan, covariates_table, numeric_block, prepare_chunk, refuse
from soilcarbon.spectral.spectra import Spectra


@dataclass
class TrainingSet:
    """Rows with a target, in one order: ids, matrix, target, and every other column."""

    ids: np.ndarray
    X: np.ndarray
    y: np.ndarray
    layout: FeatureLayout
    columns: pd.DataFrame
    target: str
    n_dropped: int = 0
    notes: list = field(default_factory=list)

    def column(self, name: str, what: str) -> np.ndarray:
        if name not in self.columns.columns:
            raise SoilCarbonError(
                f"{what} column {name!r} not found; available: {', '.join(map(str, self.columns.columns[:12]))}"
            )
        return self.columns[name].to_numpy()


def assemble(spectra: Spectra | None, target: str, covariates: pd.DataFrame | None = None,
             id_col: str = "sample_id", reserved: tuple = (), covariates_source: str = "covariates") -> TrainingSet:
    """Join the sources by id (inner join, reported), select rows with a finite target.

    ``reserved`` names columns of the covariates table that are not features (folds, groups,
    coordinates, the target itself).
    """
    if spectra is None and covariates is None:
        raise SoilCarbonError("nothing to train on: give spectra, covariates or both")
    notes = []
    frames = []
    if spectra is not None:
        frames.append(pd.DataFrame({id_col: spectra.ids}).join(spectra.meta.drop(columns=[id_col], errors="ignore")))
    cov_names: list[str] = []
    if covariates is not None:
        reserved_set = set(reserved) | {target} | (set(spectra.meta.columns) if spectra is not None else set())
        covariates, cov_names = covariates_table(covariates, id_col, covariates_source, reserved_set)
        frames.append(covariates)
    table = frames[0]
    if len(frames) == 2:
        only_spectra = sorted(set(table[id_col]) - set(frames[1][id_col]))
        only_cov = sorted(set(frames[1][id_col]) - set(table[id_col]))
        overlap = [c for c in frames[1].columns if c in table.columns and c != id_col]
        table = table.merge(frames[1].drop(columns=overlap), on=id_col, how="inner")
        if table.empty:
            raise SoilCarbonError(
                f"{covariates_source}: no sample id matches the spectra (spectra ids like "
                f"{', '.join(only_spectra[:3])}; covariate ids like {', '.join(only_cov[:3])})"
            )
        if only_spectra or only_cov:
            notes.append(f"{len(only_spectra)} spectra without covariates and {len(only_cov)} covariate rows "
                         "without spectra were left out")
    y_all = target_values(table, target, id_col)
    keep = np.isfinite(y_all)
    n_dropped = int((~keep).sum())
    if n_dropped:
        notes.append(f"{n_dropped} sample(s) without a {target} value were dropped")
    table = table[keep].reset_index(drop=True)
    y = y_all[keep]
    if len(y) == 0:
        raise SoilCarbonError(f"no sample has a value for target {target!r}")
    if np.ptp(y) == 0:
        raise SoilCarbonError(f"target {target!r} is constant ({y[0]:g}) in all {len(y)} samples; nothing to calibrate")
    if cov_names:
        missing = table[cov_names].apply(pd.to_numeric, errors="coerce").isna().any(axis=1).to_numpy()
        if missing.all():
            raise SoilCarbonError(f"{covariates_source}: every sample has a missing covariate value")
        if missing.any():
            notes.append(f"{int(missing.sum())} sample(s) with missing covariate values were dropped "
                         f"({', '.join(table[id_col].astype(str)[missing].head(5))})")
            n_dropped += int(missing.sum())
            table, y = table[~missing].reset_index(drop=True), y[~missing]
    ids = table[id_col].astype(str).to_numpy()
    layout = FeatureLayout(
        axis=None if spectra is None else spectra.axis.copy(),
        unit=None if spectra is None else spectra.unit,
        covariates=cov_names,
    )
    # the model matrix, by the rules of every other input (strict: any row with a problem stops training)
    source = covariates_source if spectra is None else spectra.source or "spectra"
    plan = InputPlan(source=source, id_col=id_col, covariate_columns=cov_names, line_offset=0)
    values = None
    if spectra is not None:
        plan.spectral_columns, plan.axis, plan.unit = spectra.columns, spectra.axis, spectra.unit
        values = spectra.select(ids).values
    prepared = prepare_chunk(layout, plan, table, 0, ids, values)
    refuse(prepared, source, "remove or fix it before training")
    return TrainingSet(ids, prepared.X, y, layout, table, target, n_dropped, notes)


def target_values(table: pd.DataFrame, target: str, id_col: str = "sample_id") -> np.ndarray:
    """The target column of a joined table as floats (NaN where a sample has no value).

    Raises when the column is missing or holds a non-numeric value (naming the sample).
    """
    if target not in table.columns:
        raise SoilCarbonError(
            f"target column {target!r} not found; available columns: "
            f"{', '.join(c for c in map(str, table.columns) if c != id_col) or 'none'} (use --lab for a lab table)"
        )
    ids = table[id_col].to_numpy() if id_col in table.columns else None
    return numeric_block(table[[target]], "target", ids)[:, 0]  # the cell rule of every model input


def load_inputs(spectra=None, lab=None, covariates=None, id_col: str = "sample_id", unit: str | None = None,
                allow_nan: bool = False) -> tuple[Spectra | None, pd.DataFrame | None, list[str]]:
    """Read the files ``train`` (and ``compare``) take: spectra joined with a lab table by id, and a
    covariates table (joined with the lab table when there are no spectra).

    Returns ``(spectra, covariates table, notes)``; notes say what the lab join left out.
    ``allow_nan`` keeps spectra with missing values (to be reported per sample later).
    """
    from soilcarbon.spectral.lab import join_lab, read_lab
    from soilcarbon.spectral.readers import read_spectra

    notes: list[str] = []
    data_spectra = cov_table = None
    lab_table = read_lab(lab, id_col) if lab else None
    if spectra is not None:
        kwargs = {"allow_nan": True} if allow_nan else {}
        data_spectra = read_spectra(spectra, id_col=id_col, unit=unit, **kwargs)
        if lab_table is not None:
            data_spectra, report = join_lab(data_spectra, lab_table, id_col)
            if report.only_in_spectra or report.only_in_lab:
                notes.append(report.summary())
    if covariates is not None:
        cov_table = read_lab(covariates, id_col)
        if lab_table is not None and spectra is None:
            overlap = [c for c in lab_table.columns if c in cov_table.columns and c != id_col]
            cov_table = cov_table.merge(lab_table.drop(columns=overlap), on=id_col, how="inner")
            if cov_table.empty:
                raise SoilCarbonError(f"{lab}: no sample id matches the covariates table {covariates}")
    return data_spectra, cov_table, notes
