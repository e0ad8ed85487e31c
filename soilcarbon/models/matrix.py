"""Any input -> the model's matrix ``[spectra | covariates]``, with a reason for every row left out.

The one place for: which columns are the spectra and how they meet the model axis (used as they
are, re-gridded with :meth:`Spectra.align`, or refused: :func:`check_alignment`), covariate
columns by name (:func:`covariate_block`), the numeric rule of a cell (:func:`numeric_values`),
the column order, and the messages naming file, sample and column. Every entry point uses it:

- :func:`plan_input` (a table's header) or :func:`plan_spectra` (in-memory :class:`Spectra`)
  decides once what to read; :func:`prepare_chunk` builds the matrix of a chunk of rows.
- Lenient (batch, Spark, REST, web page): a row with a problem gets NaN inputs and a reason. Strict
  (:func:`refuse`): training stops on it; the pyfunc (:func:`table_matrix`) on text in a cell.
- Maps take :func:`covariate_block` for raster windows.

``model`` is anything with ``axis``, ``unit`` and ``covariates`` (a :class:`FeatureLayout`, a
served model); its ``uri``, when it has one, names it in messages.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from soilcarbon.errors import SoilCarbonError
from soilcarbon.models.layout import ID_COLUMN
from soilcarbon.spectral.lab import checked_ids
from soilcarbon.spectral.spectra import Spectra, check_resolution, convert_axis, format_axis_value, spectral_header


@dataclass
class InputPlan:
    """How the columns of an input map onto the model input, decided once from the header."""

    source: str
    id_col: str | None  # None: the input has no id column (pyfunc tables); rows are named by position
    spectral_columns: list[str] = field(default_factory=list)
    axis: np.ndarray | None = None
    unit: str | None = None
    exact: bool = True  # input axis == model axis: no re-gridding
    covariate_columns: list[str] = field(default_factory=list)  # model covariates read from the table
    covariate_table: pd.DataFrame | None = None  # id-indexed covariates joined by id
    covariate_source: str = ""
    line_offset: int = 2  # file line of the first data row (CSV: header is line 1); 0: "row N"; -1: unknown


def _name(model) -> str:
    uri = getattr(model, "uri", None)
    return f"the model {uri}" if uri else "the model"


def _points(model) -> str:
    return (f"{len(model.axis)} points {format_axis_value(model.axis[0])}-{format_axis_value(model.axis[-1])} "
            f"{model.unit}")


def plan_input(model, columns: list[str], source: str, id_col: str = ID_COLUMN, unit: str | None = None,
               stored_unit: str | None = None, covariates: pd.DataFrame | None = None,
               covariate_source: str = "", line_offset: int = 2, require_id: bool = True,
               covariates_option: str = "--covariates COV.csv") -> InputPlan:
    """Check a table header against the model and decide how to build its input.

    Raises when the id column is missing (unless ``require_id`` is False), the spectra cannot be
    aligned to the model axis, or a covariate the model needs is in neither the table nor the
    id-indexed ``covariates`` table (``covariates_option``, if any, is the caller's way to give one).
    """
    columns = [str(c) for c in columns]
    if id_col not in columns and require_id:
        raise SoilCarbonError(f"{source}: id column {id_col!r} not found (columns start with "
                              f"{', '.join(columns[:5])}); pass the id column name with --id-col")
    plan = InputPlan(source=source, id_col=id_col if id_col in columns else None, line_offset=line_offset)
    if model.axis is not None:
        header = spectral_header(columns, id_col, unit, stored_unit, source)
        if header is None:
            raise SoilCarbonError(f"{source}: no spectral columns found; {_name(model)} expects {_points(model)} "
                                  "in columns with numeric headers such as '1100'")
        plan.spectral_columns, plan.axis, plan.unit = header.columns, header.axis, header.unit
        plan.exact = check_alignment(model, header.axis, header.unit, source)
    _plan_covariates(model, plan, columns, covariates, covariate_source, covariates_option)
    return plan


def plan_spectra(model, spectra: Spectra | None, source: str, id_col: str = ID_COLUMN,
                 covariates: pd.DataFrame | None = None, covariate_source: str = "",
                 covariates_option: str = "--covariates COV.csv") -> InputPlan:
    """The plan of in-memory spectra (OPUS files, a REST request) and an id-indexed covariates table."""
    plan = InputPlan(source=source, id_col=id_col, line_offset=0)
    if model.axis is not None:
        if spectra is None:
            raise SoilCarbonError(f"{_name(model)} needs spectra on {_points(model)}")
        plan.spectral_columns, plan.axis, plan.unit = spectra.columns, spectra.axis, spectra.unit
        plan.exact = check_alignment(model, spectra.axis, spectra.unit, source)
    if model.covariates and covariates is None:
        raise SoilCarbonError(f"{_name(model)} needs covariates {', '.join(model.covariates)}"
                              + (f"; pass {covariates_option}" if covariates_option else ""))
    _plan_covariates(model, plan, [], covariates, covariate_source)
    return plan


def _plan_covariates(model, plan: InputPlan, columns: list[str], table: pd.DataFrame | None, table_source: str,
                     option: str = ""):
    """Where the model's covariates come from: the id-indexed ``table``, else the input's ``columns``."""
    if not model.covariates:
        return
    if table is not None:
        missing = [c for c in model.covariates if c not in table.columns]
        if missing:
            raise SoilCarbonError(f"{table_source or 'covariates'}: covariate column(s) {', '.join(missing[:5])} "
                                  f"missing; {_name(model)} was trained on {', '.join(model.covariates)}")
        plan.covariate_table, plan.covariate_source = table, table_source or "the covariates table"
        return
    missing = [c for c in model.covariates if c not in columns]
    if missing:
        raise SoilCarbonError(f"{plan.source}: covariate column(s) {', '.join(missing[:5])} missing; {_name(model)} "
                              f"needs {', '.join(model.covariates)}: add them"
                              + (f" or pass {option}" if option else ""))
    plan.covariate_columns = list(model.covariates)


def check_alignment(model, axis: np.ndarray, unit: str, source: str) -> bool:
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
            f"{source}: the spectra cover {have} but {_name(model)} needs {_range_text(model.axis)} "
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
    problems: list[tuple[str, str]]  # (row name, reason), in row order
    problem_rows: np.ndarray  # bool (n,)
    reasons: dict[int, str] = field(default_factory=dict)  # row -> reason, for every problem row


#: How every reason about text in a numeric cell starts (strict mode refuses these rows).
NOT_NUMERIC = "non-numeric value"


def numeric_values(frame: pd.DataFrame) -> tuple[np.ndarray, dict[int, tuple[str, object]]]:
    """Float matrix of table columns and, per row, its first cell holding text as ``(column, value)``.

    Empty and blank cells are missing values (NaN), not text.
    """
    if all(isinstance(t, np.dtype) and t.kind in "fiub" for t in frame.dtypes):
        return frame.to_numpy(dtype=float), {}  # fast path: one copy of the block
    bad_rows: dict[int, tuple[str, object]] = {}
    data = []
    for column in frame.columns:
        series = frame[column]
        if pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series):
            data.append(series.to_numpy(dtype=float, na_value=np.nan))
            continue
        coerced = pd.to_numeric(series, errors="coerce")
        text = series.astype("string").str.strip()
        bad = (coerced.isna() & text.notna() & (text != "")).to_numpy(dtype=bool)
        for row in np.flatnonzero(bad):
            bad_rows.setdefault(int(row), (column, series.iloc[row]))
        data.append(coerced.to_numpy(dtype=float, na_value=np.nan))
    return (np.column_stack(data) if data else np.empty((len(frame), 0))), bad_rows


def numeric_block(frame: pd.DataFrame, what: str, ids=None) -> np.ndarray:
    """:func:`numeric_values`, refusing text: the error names the column, the value and, when
    ``ids`` are given, the sample."""
    values, bad = numeric_values(frame)
    if bad:
        row = min(bad)
        column, value = bad[row]
        sample = f"sample {np.asarray(ids)[row]} has " if ids is not None else "value "
        raise SoilCarbonError(f"{what} column {column!r} is not numeric ({sample}{value!r}); "
                              "remove the column or fix the value")
    return values


def covariates_table(table: pd.DataFrame, id_col: str, source: str, reserved=()) -> tuple[pd.DataFrame, list[str]]:
    """A covariates file's table with checked ids (:func:`checked_ids`) and its covariate columns (all
    but the id and ``reserved``); refused, naming the file, without an id column, covariates or with text."""
    if id_col not in table.columns:
        raise SoilCarbonError(f"{source}: id column {id_col!r} not found")
    table = table.copy()
    table[id_col] = checked_ids(table, id_col, source, "covariates", from_file=False)
    names = [c for c in table.columns if c != id_col and c not in reserved]
    if not names:
        raise SoilCarbonError(f"{source}: no covariate columns besides {id_col!r}")
    numeric_block(table[names], f"{source}: covariate", ids=table[id_col].to_numpy())
    return table, names


def covariate_block(model, columns, reasons: dict[int, str] | None = None) -> np.ndarray:
    """(rows, covariates) in the model's covariate order, from ``columns``: a table, or a mapping of
    name to values (raster windows, computed indices). With ``reasons``, each row's first
    non-numeric, missing or infinite covariate is recorded there."""
    missing = [c for c in model.covariates if c not in columns]
    if missing:
        raise SoilCarbonError(f"covariate(s) {', '.join(missing[:5])} missing; {_name(model)} needs "
                              f"{', '.join(model.covariates)}")
    if not isinstance(columns, pd.DataFrame):
        return np.column_stack([np.ravel(columns[name]).astype(float, copy=False) for name in model.covariates])
    values, bad = numeric_values(columns[model.covariates].reset_index(drop=True))
    if reasons is not None:
        for row, (column, value) in bad.items():
            reasons.setdefault(row, f"{NOT_NUMERIC} {value!r} in covariate {column!r}")
        for test, what in ((np.isnan, "missing"), (np.isinf, "infinite")):
            flagged = test(values)
            for row in np.flatnonzero(flagged.any(axis=1)):
                name = model.covariates[int(np.argmax(flagged[row]))]
                reasons.setdefault(int(row), f"covariate {name!r} is {what}")
    return values


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


def _chunk_ids(plan: InputPlan, frame: pd.DataFrame, ids, reasons: dict[int, str]) -> np.ndarray:
    """The rows' ids (None where missing: a problem 'no sample id', unless the input has no id column)."""
    if ids is not None:
        ids = np.asarray([sample_id(i) for i in ids], dtype=object)
    elif plan.id_col is None:
        return np.full(len(frame), None, dtype=object)
    else:
        text = frame[plan.id_col].astype("string").str.strip()
        blank = (text.isna() | (text == "")).to_numpy()
        ids = np.asarray(text.to_numpy(dtype=object, na_value=None), dtype=object)
        ids[blank] = None
    for row in np.flatnonzero(ids == None).tolist():  # noqa: E711 (element-wise)
        reasons[row] = "no sample id"
    return ids


def prepare_chunk(model, plan: InputPlan, frame: pd.DataFrame, start: int = 0,
                  ids: np.ndarray | None = None, spectra_values: np.ndarray | None = None) -> Prepared:
    """Model matrix of one chunk (a table chunk, or ids + values already read), with per-row problems.

    ``start`` is the position of the chunk's first row in the whole input (for line numbers).
    ``spectra_values`` (rows of ``frame`` or ``ids``, in ``plan.spectral_columns`` order) is never
    modified; a copy is made only when some row has a problem.
    """
    reasons: dict[int, str] = {}
    ids = _chunk_ids(plan, frame, ids, reasons)
    n = len(ids)
    blocks = []
    if model.axis is not None:
        if spectra_values is None:
            values, bad = numeric_values(frame[plan.spectral_columns])
            for row, (column, value) in bad.items():
                reasons.setdefault(row, f"{NOT_NUMERIC} {value!r} in column {column!r}")
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
            for row in np.flatnonzero(absent & (ids != None)):  # noqa: E711 (element-wise)
                reasons.setdefault(int(row), f"no covariates row for this sample in {plan.covariate_source}")
        else:
            table = frame
        blocks.append(covariate_block(model, table, reasons))
    X = np.hstack(blocks) if len(blocks) > 1 else blocks[0]
    problem_rows = np.zeros(n, dtype=bool)
    problems = []
    for row in sorted(reasons):
        problem_rows[row] = True
        problems.append((_row_name(ids, row, start, plan), reasons[row]))
    if problem_rows.any():
        X = X.copy() if X.base is not None or X is spectra_values else X
        X[problem_rows] = np.nan
    return Prepared(ids, X, problems, problem_rows, reasons)


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


def refuse(prepared: Prepared, source: str, advice: str, rows=None) -> None:
    """Strict mode: raise the first problem among ``rows`` (default: all), naming its sample."""
    rows = sorted(prepared.reasons) if rows is None else sorted(rows)
    if rows:
        row = rows[0]
        name = f"sample {prepared.ids[row]}" if prepared.ids[row] is not None else f"row {row + 1}"
        raise SoilCarbonError(f"{source}: {name}: {prepared.reasons[row]}; {advice}")


def table_matrix(model, frame: pd.DataFrame, source: str = "the input") -> tuple[np.ndarray, dict[int, str]]:
    """The pyfunc's input: the model matrix of one wide table (optional ``sample_id``, spectral
    columns with any header style, covariate columns) and the reason of every row left as NaN.

    Text in a numeric column is refused (strict); missing or infinite values leave that row to the
    caller, which reports it as not predicted.
    """
    plan = plan_input(model, list(frame.columns), source, line_offset=0, require_id=False, covariates_option="")
    if not all(isinstance(c, str) for c in frame.columns):  # renaming copies the table: only when needed
        frame = frame.set_axis([str(c) for c in frame.columns], axis=1)
    ids, plan.id_col = (frame[plan.id_col] if plan.id_col else None), None  # ids: only to name a refused row
    prepared = prepare_chunk(model, plan, frame)
    text = [row for row, reason in prepared.reasons.items() if reason.startswith(NOT_NUMERIC)]
    if text and ids is not None:
        prepared.ids[min(text)] = sample_id(ids.iloc[min(text)])
    refuse(prepared, source, "fix the value or remove the row", text)
    return prepared.X, prepared.reasons
