"""From an input table's header and rows to the model's matrix, with a reason for every row left out.

- :func:`plan_input` decides once, from the header, how the columns map onto the model input:
  spectra are used as they are when the axes match, otherwise re-gridded with
  :meth:`Spectra.align` (linear interpolation, nm <-> cm-1 conversion), or refused with one clear
  error when the ranges do not allow it (:func:`check_alignment`).
- :func:`prepare_chunk` builds the matrix of one chunk. Per-sample problems (missing, non-numeric or
  infinite values, no id, no covariates row) give that sample NaN inputs and a reason; the others
  go on. Anything that concerns the whole job raises :class:`SoilCarbonError`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from soilcarbon.errors import SoilCarbonError
from soilcarbon.models.layout import ID_COLUMN
from soilcarbon.serving.model import ServedModel
from soilcarbon.spectral.spectra import (
    Spectra,
    check_resolution,
    convert_axis,
    format_axis_value,
    spectral_header,
)


@dataclass
class InputPlan:
    """How the columns of an input table map onto the model input, decided once from the header."""

    source: str
    id_col: str
    spectral_columns: list[str] = field(default_factory=list)
    axis: np.ndarray | None = None
    unit: str | None = None
    exact: bool = True  # input axis == model axis: no re-gridding
    covariate_columns: list[str] = field(default_factory=list)  # model covariates read from the table
    covariate_table: pd.DataFrame | None = None  # id-indexed covariates joined by id
    covariate_source: str = ""
    line_offset: int = 2  # file line of the first data row (CSV: header is line 1); 0: "row N"; -1: unknown


def plan_input(model: ServedModel, columns: list[str], source: str, id_col: str = ID_COLUMN,
               unit: str | None = None, stored_unit: str | None = None,
               covariates: pd.DataFrame | None = None, covariate_source: str = "",
               line_offset: int = 2) -> InputPlan:
    """Check a table header against the model and decide how to build its input.

    Raises when the id column is missing, the spectra cannot be aligned to the model axis, or a
    covariate the model needs is in neither the table nor the covariates table.
    """
    columns = [str(c) for c in columns]
    if id_col not in columns:
        raise SoilCarbonError(f"{source}: id column {id_col!r} not found (columns start with "
                              f"{', '.join(columns[:5])}); pass the id column name with --id-col")
    plan = InputPlan(source=source, id_col=id_col, line_offset=line_offset)
    if model.axis is not None:
        header = spectral_header(columns, id_col, unit, stored_unit, source)
        if header is None:
            raise SoilCarbonError(
                f"{source}: no spectral columns found; the model {model.uri} expects {len(model.axis)} points "
                f"{format_axis_value(model.axis[0])}-{format_axis_value(model.axis[-1])} {model.unit} "
                "in columns with numeric headers such as '1100'")
        plan.spectral_columns, plan.axis, plan.unit = header.columns, header.axis, header.unit
        plan.exact = check_alignment(model, header.axis, header.unit, source)
    if model.covariates:
        if covariates is not None:
            missing = [c for c in model.covariates if c not in covariates.columns]
            if missing:
                raise SoilCarbonError(
                    f"{covariate_source or 'covariates'}: covariate column(s) {', '.join(missing[:5])} missing; "
                    f"the model {model.uri} was trained on {', '.join(model.covariates)}")
            plan.covariate_table = covariates
            plan.covariate_source = covariate_source or "the covariates table"
        else:
            missing = [c for c in model.covariates if c not in columns]
            if missing:
                raise SoilCarbonError(
                    f"{source}: covariate column(s) {', '.join(missing[:5])} missing; the model {model.uri} "
                    f"needs {', '.join(model.covariates)}: add them or pass --covariates COV.csv")
            plan.covariate_columns = list(model.covariates)
    return plan


def check_alignment(model: ServedModel, axis: np.ndarray, unit: str, source: str) -> bool:
    """True when ``axis`` (in ``unit``) is the model axis; raise when it cannot be aligned to it
    (range, or a resolution much coarser than the model's: :func:`check_resolution`)."""
    own = convert_axis(axis, unit, model.unit)
    if len(own) == len(model.axis) and np.allclose(own, model.axis, rtol=0, atol=1e-9):
        return True
    probe = Spectra(ids=["probe"], axis=axis, unit=unit, values=np.zeros((1, len(axis))), source=source)
    try:
        probe.align(model.axis, model.unit)
    except SoilCarbonError:
        have = f"{_range_text(axis)} {unit}"
        if unit != model.unit:
            have += f" ({_range_text(own)} {model.unit})"
        raise SoilCarbonError(
            f"{source}: the spectra cover {have} but the model {model.uri} needs {_range_text(model.axis)} "
            f"{model.unit} ({len(model.axis)} points); use spectra of that range or a model trained on this one"
        ) from None
    check_resolution(axis, unit, model.axis, model.unit, source)
    return False


def _range_text(axis: np.ndarray) -> str:
    low, high = float(np.min(axis)), float(np.max(axis))
    digits = 0 if high - low > 50 else 2
    return f"{low:.{digits}f}-{high:.{digits}f}"


@dataclass
class Prepared:
    ids: np.ndarray  # object array of str (or None where the row had no id)
    X: np.ndarray  # (n, len(model.columns)); rows with a problem are all NaN
    problems: list[tuple[str, str]]
    problem_rows: np.ndarray  # bool (n,)
    reasons: dict[int, str] = field(default_factory=dict)  # row -> reason, for every problem row


def _numeric(frame: pd.DataFrame) -> tuple[np.ndarray, dict[int, str]]:
    """Float matrix of table columns and, per row, the first non-numeric cell as a reason."""
    bad_rows: dict[int, str] = {}
    kinds = [dtype.kind for dtype in frame.dtypes]
    if all(k in "fiub" for k in kinds):
        return frame.to_numpy(dtype=float), bad_rows
    data = {}
    for column, kind in zip(frame.columns, kinds):
        series = frame[column]
        if kind in "fiub":
            data[column] = series.to_numpy(dtype=float)
            continue
        coerced = pd.to_numeric(series, errors="coerce")
        bad = coerced.isna().to_numpy() & series.notna().to_numpy()
        for row in np.where(bad)[0]:
            bad_rows.setdefault(int(row), f"non-numeric value {series.iloc[row]!r} in column {column!r}")
        data[column] = coerced.to_numpy(dtype=float, na_value=np.nan)
    return np.column_stack([data[c] for c in frame.columns]) if data else np.empty((len(frame), 0)), bad_rows


def sample_id(value) -> str | None:
    """A sample id as text, or None when there is none (missing, empty or blank): the one id rule
    of batch files and REST requests (such a sample is a per-sample problem, 'no sample id')."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    text = str(value).strip()
    return text or None


def _row_name(ids: np.ndarray, row: int, start: int, plan: InputPlan) -> str:
    if ids[row] is not None:
        return str(ids[row])
    if plan.line_offset < 0:  # position unknown (Spark partitions)
        return "(row without id)"
    position = start + row
    return f"line {position + plan.line_offset}" if plan.line_offset else f"row {position + 1}"


def prepare_chunk(model: ServedModel, plan: InputPlan, frame: pd.DataFrame, start: int = 0,
                  ids: np.ndarray | None = None, spectra_values: np.ndarray | None = None) -> Prepared:
    """Model matrix of one chunk (a table chunk, or ids + values already read), with per-row problems.

    ``start`` is the position of the chunk's first row in the whole input (for line numbers).
    ``spectra_values`` (rows of ``frame`` or ``ids``, in ``plan.spectral_columns`` order) is never
    modified; a copy is made only when some row has a problem.
    """
    n = len(frame) if ids is None else len(ids)
    reasons: dict[int, str] = {}
    if ids is None:
        raw = frame[plan.id_col]
        text = raw.astype("string").str.strip()
        missing = (text.isna() | (text == "")).to_numpy()
        ids = np.asarray(text.to_numpy(dtype=object, na_value=None), dtype=object)
        ids[missing] = None
        for row in np.where(missing)[0]:
            reasons[int(row)] = "no sample id"
    else:
        ids = np.asarray([sample_id(i) for i in ids], dtype=object)
        for row in np.flatnonzero(ids == None).tolist():  # noqa: E711 (element-wise)
            reasons[row] = "no sample id"
    blocks = []
    if model.axis is not None:
        if spectra_values is None:
            values, bad = _numeric(frame[plan.spectral_columns])
            for row, reason in bad.items():
                reasons.setdefault(row, reason)
        else:
            values = np.asarray(spectra_values, dtype=float)
        values = _flag_non_finite(values, plan.spectral_columns, reasons)
        if not plan.exact:
            spectra = Spectra(ids=np.arange(n).astype(str), axis=plan.axis, unit=plan.unit, values=values,
                              source=plan.source, allow_nan=True)
            values = spectra.align(model.axis, model.unit).values
        blocks.append(values)
    if model.covariates:
        if plan.covariate_table is not None:
            lookup = [i if i is not None else "\x00" for i in ids]
            table = plan.covariate_table.reindex(lookup)
            absent = ~pd.Index(lookup).isin(plan.covariate_table.index)
            for row in np.where(absent)[0]:
                if ids[row] is not None:
                    reasons.setdefault(int(row), f"no row in the covariates table {plan.covariate_source}")
            cov_frame = table[model.covariates]
        else:
            cov_frame = frame[plan.covariate_columns]
        cov_values, bad = _numeric(cov_frame.reset_index(drop=True))
        for row, reason in bad.items():
            reasons.setdefault(row, reason.replace("in column", "in covariate"))
        missing_cov = np.isnan(cov_values)
        for row in np.where(missing_cov.any(axis=1))[0]:
            reasons.setdefault(int(row), f"covariate {model.covariates[int(np.argmax(missing_cov[row]))]!r} is missing")
        infinite = np.isinf(cov_values)
        for row in np.where(infinite.any(axis=1))[0]:
            reasons.setdefault(int(row), f"covariate {model.covariates[int(np.argmax(infinite[row]))]!r} is infinite")
        blocks.append(cov_values)
    X = np.hstack(blocks) if len(blocks) > 1 else blocks[0]
    problem_rows = np.zeros(n, dtype=bool)
    problems = []
    for row in sorted(reasons):
        problem_rows[row] = True
        problems.append((_row_name(ids, row, start, plan), reasons[row]))
    if problem_rows.any():
        X = X.copy() if X.base is not None or X is spectra_values else X
        X[problem_rows] = np.nan
    return Prepared(ids=ids, X=X, problems=problems, problem_rows=problem_rows, reasons=reasons)


def _flag_non_finite(values: np.ndarray, columns: list[str], reasons: dict[int, str]) -> np.ndarray:
    """Give rows holding infinite or missing spectral values a reason; infinite values become NaN
    (in a copy: ``values`` is not modified).

    The row sums find such rows in one pass without boolean matrices of the chunk's size (NaN and
    infinity carry into a sum); only those rows are examined cell by cell, which also clears a
    sum that overflowed from finite values.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        suspect = np.flatnonzero(~np.isfinite(values.sum(axis=1)))
    if not len(suspect):
        return values
    block = values[suspect]
    infinite, nan = np.isinf(block), np.isnan(block)
    for k, row in enumerate(suspect.tolist()):
        if infinite[k].any():
            reasons.setdefault(row, f"infinite value in column {columns[int(np.argmax(infinite[k]))]!r}")
        elif nan[k].any():
            reasons.setdefault(row, f"{int(nan[k].sum())} missing spectral value(s), first in column "
                                    f"{columns[int(np.argmax(nan[k]))]!r}")
    if infinite.any():
        block[infinite] = np.nan
        values = values.copy()
        values[suspect] = block
    return values
