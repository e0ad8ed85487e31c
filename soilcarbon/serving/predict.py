"""Batch prediction: load a model by any MLflow URI, align spectra to its axis, stream large tables.

- The model is loaded through :mod:`soilcarbon.registry`: a registry alias (``models:/NAME@champion``)
  or ``latest`` is first resolved to the concrete version (``models:/NAME/3``), and that URI is
  what every output row names.
- Input spectra are brought onto the model's training axis from the metadata the model carries
  (``soilcarbon.axis/unit/covariates``): used as they are when the axes match, otherwise re-gridded
  with :meth:`Spectra.align` (linear interpolation, nm <-> cm-1 conversion), or refused with one
  clear error when the ranges do not allow it. ``pyfunc.predict`` only ever sees a table with the
  model's exact input columns.
- Large CSV / Parquet tables are read in chunks (``pandas.read_csv(chunksize=)``,
  ``pyarrow.parquet.ParquetFile.iter_batches``; numeric Parquet spectra go straight from Arrow to a
  float matrix, :func:`_batch_matrix`), predicted by a small thread pool (numpy releases the GIL)
  while the calling thread reads the next chunk and writes the previous one, with at most
  ``workers + 1`` chunks in flight, so memory does not grow with the input. BLAS/OpenMP pools are
  limited to one thread per worker (``threadpoolctl``). OPUS files and folders are read whole (one
  spectrum a file).
- The model is called through MLflow's pyfunc wrapper; the per-call schema enforcement of
  ``PyFuncModel.predict`` is replaced by one check at load time (see :func:`_verified_predict`), and
  a soilcarbon model is then given the matrix itself rather than a table of its columns
  (:func:`_matrix_predict`). Any other model goes through ``PyFuncModel.predict``.
- Per-sample problems (missing, non-numeric or infinite values, no id, no covariates row, an OPUS file
  that cannot be read) give that sample an empty prediction and a reason; the others go on.
  Anything that concerns the whole job (unreadable model or file, an axis that cannot be aligned,
  a missing covariate column, a row with the wrong number of fields) stops it with a
  :class:`SoilCarbonError`.
- The output (CSV or Parquet) is written through :func:`atomic_path`: a failure at any point, even
  in the last chunk, leaves no file under the output name.
- Every input row gives one output row, in order; a sample id used twice stops the job
  (:func:`check_unique_ids`), as in training and the REST service.
"""

from __future__ import annotations

import collections
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pandas as pd

from soilcarbon.errors import SoilCarbonError
from soilcarbon.models.layout import ID_COLUMN, FeatureLayout
from soilcarbon.models.soc_model import OUTPUT_COLUMNS as MODEL_OUTPUTS
from soilcarbon.models.soc_model import checked_level
from soilcarbon.progress import Progress
from soilcarbon.spectral.spectra import (
    PARQUET_UNIT_KEY,
    Spectra,
    convert_axis,
    check_resolution,
    format_axis_value,
    spectral_header,
)

OUTPUT_COLUMNS = [ID_COLUMN, *MODEL_OUTPUTS, "model_uri"]
#: Rows per chunk: large enough to amortize per-chunk costs, small enough that a chunk's working
#: memory inside the model (~15x its 28 MB of NIR values) stays well under a gigabyte.
DEFAULT_CHUNK_SIZE = 5_000
#: How many per-sample problems are kept in memory for the summary (all are counted).
KEEP_PROBLEMS = 1000
CSV_SUFFIXES = (".csv", ".txt", ".tsv")
PARQUET_SUFFIXES = (".parquet", ".pq")


# ============================================================================ model
@dataclass
class ServedModel:
    """A loaded soilcarbon pyfunc model with the input layout from its metadata.

    ``uri`` is the concrete URI the model was loaded from (an alias resolved to its version);
    ``requested_uri`` is what the user gave.
    """

    requested_uri: str
    uri: str
    pyfunc: object
    axis: np.ndarray | None
    unit: str | None
    covariates: list[str]
    level: float
    target: str = ""
    target_unit: str = ""
    name: str | None = None
    version: str | None = None
    #: MLflow's pyfunc wrapper ``predict(frame, params)`` without the per-call schema enforcement,
    #: set only when the signature was verified to be exactly ``sample_id`` + :attr:`columns`.
    fast_predict: object = None
    #: ``SOCPyfunc.predict_matrix(X, level)``: what ``fast_predict`` computes, from the matrix
    #: itself instead of a table of its columns; set only with ``fast_predict`` (see :func:`_matrix_predict`).
    matrix_predict: object = None
    #: The highest interval level the model's calibration supports (1.0 when unknown).
    max_level: float = 1.0

    def check_level(self, level=None) -> float:
        """``level`` (default: the model's) checked against (0, 1) and the calibration's limit."""
        return checked_level(self.level if level is None else level, self.max_level)

    @property
    def layout(self) -> FeatureLayout:
        """The model's input layout (axis, unit, covariates), as training recorded it."""
        return FeatureLayout(self.axis, self.unit, list(self.covariates))

    @property
    def columns(self) -> list[str]:
        """The model's input columns after ``sample_id``, in order."""
        return self.layout.columns

    def describe(self) -> dict:
        return {
            "model_uri": self.uri, "requested_uri": self.requested_uri, "name": self.name,
            "version": self.version, "target": self.target, "target_unit": self.target_unit,
            "unit": self.unit, "n_points": 0 if self.axis is None else len(self.axis),
            "axis_range": None if self.axis is None else [float(self.axis.min()), float(self.axis.max())],
            "covariates": list(self.covariates), "level": self.level,
        }

    def warm_up(self) -> None:
        """Predict the model's logged input example once, so that loading compiled kernels and
        first-call caches happens at load time and not in the first request."""
        example = getattr(self.pyfunc, "input_example", None)
        if isinstance(example, pd.DataFrame) and set(self.columns) <= set(example.columns):
            self.predict_matrix(example.get(ID_COLUMN, pd.Series(range(len(example)))).astype(str),
                                example[self.columns].to_numpy(dtype=float))

    def predict_matrix(self, ids, X: np.ndarray, level: float | None = None) -> pd.DataFrame:
        """Outputs for model-ordered rows ``X`` (n, len(columns)); rows holding NaN get empty outputs."""
        level = self.check_level(level)
        X = np.asarray(X, dtype=float)
        names = np.array([str(i) for i in ids], dtype=object)
        if self.matrix_predict is not None:
            result = self.matrix_predict(X, level)
        else:
            frame = pd.DataFrame(X, columns=self.columns, copy=False)
            frame.insert(0, ID_COLUMN, pd.array(names, dtype="string"))
            predict = self.pyfunc.predict if self.fast_predict is None else self.fast_predict
            result = predict(frame, params={"level": level})
        out = pd.DataFrame({ID_COLUMN: names})
        for column in MODEL_OUTPUTS:
            out[column] = np.asarray(result[column])
        out["in_domain"] = out["in_domain"].astype(bool)
        out["model_uri"] = self.uri
        out.attrs["failures"] = dict(getattr(result, "attrs", {}).get("failures", {}))
        return out


def check_level(level) -> float:
    """``level`` as a float in (0, 1) (no model at hand; :meth:`ServedModel.check_level` also
    checks the calibration's limit)."""
    return checked_level(level)


def load_model(uri: str) -> ServedModel:
    """Resolve ``uri`` and load the pyfunc model (:func:`soilcarbon.registry.load`) with its
    soilcarbon metadata."""
    from soilcarbon import registry
    from soilcarbon.models.pyfunc import METADATA_KEY

    found = registry.load(uri)
    loaded, resolved, name, version = found.pyfunc, found.uri, found.name, found.version
    meta = (loaded.metadata.metadata or {}).get(METADATA_KEY)
    if not isinstance(meta, dict):
        raise SoilCarbonError(f"model {uri!r} is not a soilcarbon model (no {METADATA_KEY!r} metadata); "
                              "train it with `soilcarbon train`")
    axis = meta.get("axis")
    served = ServedModel(
        requested_uri=str(uri), uri=resolved, pyfunc=loaded,
        axis=None if axis is None else np.asarray(axis, dtype=float),
        unit=meta.get("unit"), covariates=list(meta.get("covariates") or []),
        level=float(meta.get("level", 0.9)), target=str(meta.get("target", "")),
        target_unit=str(meta.get("target_unit", "")), name=name, version=version,
    )
    try:
        served.max_level = float(loaded.unwrap_python_model().model.max_level)
    except Exception:  # not a soilcarbon PythonModel (MLflow raises MlflowException), or an older one
        served.max_level = 1.0
    served.fast_predict = _verified_predict(loaded, [ID_COLUMN] + served.columns)
    if served.fast_predict is not None:
        served.matrix_predict = _matrix_predict(loaded, served.columns)
    served.warm_up()
    return served


def _verified_predict(loaded, columns: list[str]):
    """MLflow's own wrapper ``predict`` when the signature is exactly ``columns``, else None.

    ``PyFuncModel.predict`` enforces the input schema column by column on every call (about 0.2 s
    for 700 columns, whatever the number of rows: most of a one-spectrum request). The tables we
    build always have exactly the signature's columns (string id, float64 values), so the check is
    done once here and the wrapper MLflow would call next is called directly. Any other model
    goes through ``PyFuncModel.predict``.
    """
    schema = loaded.metadata.get_input_schema()
    impl = getattr(loaded, "_model_impl", None)
    if schema is None or impl is None or not callable(getattr(impl, "predict", None)):
        return None
    if schema.input_names() != columns:
        return None
    types = {spec.name: str(spec.type) for spec in schema.inputs}
    if any(types.get(c) != "DataType.double" for c in columns[1:]) or types.get(ID_COLUMN) != "DataType.string":
        return None
    return impl.predict


def _matrix_predict(loaded, columns: list[str]):
    """``SOCPyfunc.predict_matrix`` of a loaded soilcarbon pyfunc whose model reads ``columns``, else None.

    MLflow's wrapper hands our table to ``SOCPyfunc.predict``, which only turns it back into the
    matrix it was built from (``FeatureLayout.frame_to_matrix``): for 5,000 NIR spectra, a
    700-column frame, a copy of its values and a second conversion, per chunk. With the signature
    verified (:func:`_verified_predict`), calling the model on the matrix gives the same outputs.
    """
    from soilcarbon.models.pyfunc import SOCPyfunc

    try:
        python_model = loaded.unwrap_python_model()
    except Exception:  # not a PythonModel flavour (MLflow raises MlflowException)
        return None
    if not isinstance(python_model, SOCPyfunc) or python_model.model.layout.columns != columns:
        return None
    return python_model.predict_matrix


# ============================================================================ input layout
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


# ============================================================================ chunk preparation
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


def predict_prepared(model: ServedModel, prepared: Prepared, level: float) -> pd.DataFrame:
    """Outputs of a prepared chunk; samples the model could not predict join its problems."""
    ids = ["" if i is None else i for i in prepared.ids]
    out = model.predict_matrix(ids, prepared.X, level)
    failed = np.flatnonzero(out["prediction"].isna().to_numpy() & ~prepared.problem_rows)
    for row in failed:
        reason = f"not predictable: {out.attrs['failures'].get(int(row), 'the model gave no prediction')}"
        prepared.problems.append((ids[row], reason))  # rows without id failed before
        prepared.reasons[int(row)] = reason
        prepared.problem_rows[row] = True
    if any(i is None for i in prepared.ids):
        out[ID_COLUMN] = pd.array(list(prepared.ids), dtype="string")
    return out


# ============================================================================ in-memory use
def predict_spectra(model: ServedModel, spectra: Spectra | None, covariates: pd.DataFrame | None = None,
                    level: float | None = None, ids=None) -> pd.DataFrame:
    """Predict in-memory spectra and/or covariates (the REST service) through the same per-row
    rules as batch files (:func:`prepare_chunk`): a sample with missing or infinite values, no
    id, no covariates or a bad scan gets empty outputs and its reason in the ``problem`` column;
    the others are predicted.

    Spectra are aligned to the model axis; ``covariates`` is a table indexed by sample id;
    ``ids`` (default: the spectra's or the covariates' ids) may hold None for a sample without id.
    What concerns the whole request (axis, missing covariate columns, level) raises.
    """
    level = model.check_level(level)
    if spectra is None and covariates is None:
        raise SoilCarbonError("nothing to predict: send spectra and/or covariates")
    if model.axis is None and spectra is not None and covariates is None:
        raise SoilCarbonError(f"the model {model.uri} uses covariates only ({', '.join(model.covariates)}); "
                              "send covariates")
    if ids is None:
        ids = spectra.ids if spectra is not None else covariates.index.to_numpy(dtype=object)
    ids = np.asarray([None if i is None else str(i) for i in ids], dtype=object)
    source = (spectra.source if spectra is not None else "") or "the request"
    plan = InputPlan(source=source, id_col=ID_COLUMN, line_offset=0)
    values = None
    if model.axis is not None:
        if spectra is None:
            raise SoilCarbonError(f"the model {model.uri} needs spectra on {len(model.axis)} points "
                                  f"{format_axis_value(model.axis[0])}-{format_axis_value(model.axis[-1])} {model.unit}")
        plan.spectral_columns, plan.axis, plan.unit = spectra.columns, spectra.axis, spectra.unit
        plan.exact = check_alignment(model, spectra.axis, spectra.unit, source)
        values = spectra.values
    if model.covariates:
        if covariates is None:
            raise SoilCarbonError(f"the model {model.uri} needs covariates {', '.join(model.covariates)}")
        missing = [c for c in model.covariates if c not in covariates.columns]
        if missing:
            raise SoilCarbonError(f"covariate(s) {', '.join(missing)} missing; the model needs "
                                  f"{', '.join(model.covariates)}")
        plan.covariate_table, plan.covariate_source = covariates, "of the request"
    prepared = prepare_chunk(model, plan, pd.DataFrame(index=range(0)), 0, ids, values)
    out = predict_prepared(model, prepared, level)
    out["problem"] = pd.array([prepared.reasons.get(row) for row in range(len(out))], dtype="string")
    return out


# ============================================================================ readers
def _csv_chunks(path: Path, plan: InputPlan, chunk_size: int, on_bytes: Callable[[int], None] | None):
    from soilcarbon.spectral.readers import sniff_csv

    delimiter, decimal = sniff_csv(path)
    with open(path, "rb") as handle:
        reader = None
        start = 0
        while True:
            try:  # the reader itself parses a first block: its errors are the file's too
                reader = reader or pd.read_csv(handle, sep=delimiter, decimal=decimal, chunksize=chunk_size,
                                               dtype={plan.id_col: str}, encoding="utf-8-sig")
                chunk = next(reader)
            except StopIteration:
                return
            except UnicodeDecodeError as exc:
                raise SoilCarbonError(f"{path}: not UTF-8 text after row {start} ({exc.reason} at byte {exc.start}); "
                                      "save the table as UTF-8 CSV") from exc
            except (pd.errors.ParserError, ValueError) as exc:
                text = " ".join(str(exc).split())
                raise SoilCarbonError(f"{path}: cannot parse the table after row {start} ({text}); "
                                      "fix the file: every row needs the same number of fields") from exc
            chunk.columns = [str(c) for c in chunk.columns]
            if on_bytes is not None:
                on_bytes(handle.tell())
            yield start, chunk
            start += len(chunk)


def _parquet_chunks(pfile, path: Path, plan: InputPlan, chunk_size: int, columns: list[str]):
    """``(start, frame, values)`` per record batch: ``values`` is the matrix of the spectral columns
    (:func:`_batch_matrix`) and ``frame`` holds the other columns, or ``values`` is None and
    ``frame`` holds every column."""
    start = 0
    batches = pfile.iter_batches(batch_size=chunk_size, columns=columns)
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except Exception as exc:  # pyarrow raises several types for damaged row groups
            raise SoilCarbonError(f"{path}: cannot read the Parquet data after row {start} "
                                  f"({type(exc).__name__}: {' '.join(str(exc).split())[:200]}); write the file again") from exc
        values = _batch_matrix(batch, plan.spectral_columns)
        if values is not None:
            spectral = set(plan.spectral_columns)
            batch = batch.select([i for i, name in enumerate(batch.schema.names) if name not in spectral])
        frame = batch.to_pandas()
        frame.columns = [str(c) for c in frame.columns]
        yield start, frame, values
        start += len(frame)


def _batch_matrix(batch, columns: list[str]) -> np.ndarray | None:
    """The float matrix (rows x ``columns``) of a record batch, or None unless every one of
    ``columns`` is an integer or float32/64 column (other types go through pandas, which names
    non-numeric cells).

    Arrow's ``RecordBatch.to_tensor`` (nulls become NaN; column-major, so the per-column buffers
    are copied as they are) costs one copy of the values: about a fifth of ``to_pandas`` on 700
    columns, which also makes a frame only to be converted to the same matrix.
    """
    import pyarrow as pa

    names = batch.schema.names
    if not columns or len(set(names)) != len(names):
        return None
    numeric = (pa.float64(), pa.float32())
    if not all(t in numeric or pa.types.is_integer(t) for t in (batch.schema.field(c).type for c in columns)):
        return None
    return np.asarray(batch.select(columns).to_tensor(null_to_nan=True, row_major=False), dtype=float)


def _open_parquet(path: Path):
    import pyarrow.parquet as pq

    if path.stat().st_size == 0:
        raise SoilCarbonError(f"{path}: the file is empty; write the spectra table again")
    try:
        # pre_buffer=False: with pre-buffering, iter_batches keeps every chunk read so far alive
        # (pyarrow 25: +32 MB per 5,000 NIR rows), which defeats streaming
        return pq.ParquetFile(path, pre_buffer=False)
    except Exception as exc:  # pyarrow raises several types for broken files
        raise SoilCarbonError(f"{path}: not a readable Parquet file ({type(exc).__name__}: {exc}); "
                              "write it again") from exc


def _csv_header(path: Path) -> list[str]:
    """The header line's column names as written (``csv`` module: pandas would rename a repeated
    ``1500`` to ``1500.1``, a new axis point)."""
    import csv

    from soilcarbon.spectral.readers import sniff_csv

    if path.stat().st_size == 0:
        raise SoilCarbonError(f"{path}: the file is empty; export the table with a header row")
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            header = next(csv.reader(handle, delimiter=sniff_csv(path)[0]), None)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise SoilCarbonError(f"{path}: cannot read the header ({' '.join(str(exc).split())}); "
                              "save the table as UTF-8 CSV with a header row") from exc
    if not header or not any(name.strip() for name in header):
        raise SoilCarbonError(f"{path}: the first line is empty; export the table with a header row")
    return list(header)


def read_covariates(path: Path, id_col: str) -> pd.DataFrame:
    """An id-indexed covariates table (read with :func:`soilcarbon.spectral.lab.read_lab`)."""
    from soilcarbon.spectral.lab import read_lab

    table = read_lab(path, id_col)
    return table.set_index(id_col)


# ============================================================================ writers
class _Writer:
    """Append output chunks to an open temporary CSV or Parquet file."""

    def __init__(self, tmp: Path, kind: str):
        self.tmp, self.kind = tmp, kind
        self.handle = self.writer = None

    def write(self, frame: pd.DataFrame) -> None:
        frame = frame[OUTPUT_COLUMNS]
        if self.kind == "csv":
            first = self.handle is None
            if first:
                self.handle = open(self.tmp, "w", newline="", encoding="utf-8")
            frame.to_csv(self.handle, header=first, index=False)
            return
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pandas(frame, schema=OUTPUT_SCHEMA(), preserve_index=False)
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.tmp, table.schema)
        self.writer.write_table(table)

    def close(self) -> None:
        if self.kind == "csv":
            if self.handle is None:
                self.handle = open(self.tmp, "w", newline="", encoding="utf-8")
                pd.DataFrame(columns=OUTPUT_COLUMNS).to_csv(self.handle, index=False)
            self.handle.close()
        else:
            if self.writer is None:
                import pyarrow as pa
                import pyarrow.parquet as pq

                self.writer = pq.ParquetWriter(self.tmp, OUTPUT_SCHEMA())
                self.writer.write_table(pa.Table.from_pylist([], schema=OUTPUT_SCHEMA()))
            self.writer.close()

    def abort(self) -> None:
        try:
            if self.handle is not None:
                self.handle.close()
            if self.writer is not None:
                self.writer.close()
        except Exception:  # the temporary file is removed anyway
            pass


def OUTPUT_SCHEMA():
    import pyarrow as pa

    return pa.schema([(ID_COLUMN, pa.string()), ("prediction", pa.float64()), ("lower", pa.float64()),
                      ("upper", pa.float64()), ("level", pa.float64()), ("in_domain", pa.bool_()),
                      ("domain_score", pa.float64()), ("model_uri", pa.string())])


def output_kind(path: Path) -> str:
    """``csv`` or ``parquet``: a prediction table is written as its suffix says."""
    from soilcarbon.atomic import output_kind as kind_of

    return kind_of(path, ("csv", "parquet"))


def check_outputs(output: Path | None, problems_output=None) -> str | None:
    """Check the prediction table (unless None: a remote output) and the problems report (CSV)
    before any work; returns the table's kind."""
    from soilcarbon.atomic import check_output

    kind = None if output is None else check_output(output, ("csv", "parquet"))
    if problems_output is not None:
        if output_kind(problems_output) != "csv":
            raise SoilCarbonError(f"{problems_output}: the problems report is a CSV file; name it .csv")
        check_output(problems_output, ("csv",))
    return kind


# ============================================================================ summary
@dataclass
class PredictionSummary:
    """What a batch prediction did."""

    model_uri: str
    output: str
    n_samples: int = 0  # output rows
    n_predicted: int = 0
    n_problems: int = 0  # samples not predicted, including unreadable OPUS files (no output row)
    problems: list[tuple[str, str]] = field(default_factory=list)  # the first KEEP_PROBLEMS
    seconds: float = 0.0
    engine: str = "local"
    notes: list[str] = field(default_factory=list)  # what the user should know (e.g. re-gridding)

    def add_problems(self, problems: list[tuple[str, str]]) -> None:
        self.n_problems += len(problems)
        room = KEEP_PROBLEMS - len(self.problems)
        if room > 0:
            self.problems.extend(problems[:room])


def _ordered_map(function, items: Iterator, workers: int, initializer: Callable[[], None] | None = None) -> Iterator:
    """``map`` over ``items`` with a thread pool, in order, with at most ``workers + 1`` items in flight.

    The items are produced (read) in the calling thread while the workers compute, so even one
    worker does not wait for the next chunk to be read (nor the previous one to be written).
    """
    workers = max(1, workers)
    with ThreadPoolExecutor(max_workers=workers, initializer=initializer) as pool:
        pending = collections.deque()
        try:
            for item in items:
                pending.append(pool.submit(function, item))
                if len(pending) > workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()


def _one_openmp_thread() -> None:
    """Limit OpenMP to one thread in a pool thread: its thread count is a per-thread setting, so
    the limit :func:`predict_file` sets in the calling thread does not reach the workers (BLAS
    limits are process-wide and do)."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="openmp")


def default_workers() -> int:
    """Threads predicting chunks: the CPU count, at most 4 (memory grows with chunks in flight)."""
    return max(1, min(4, os.cpu_count() or 1))


# ============================================================================ entry point
def predict_file(model: ServedModel | str, output, spectra=None, covariates=None, id_col: str = ID_COLUMN,
                 unit: str | None = None, level: float | None = None, chunk_size: int = DEFAULT_CHUNK_SIZE,
                 id_pattern: str | None = None, quiet: bool = True, workers: int | None = None,
                 problems_output=None, progress: Progress | None = None) -> PredictionSummary:
    """Predict every sample of ``spectra`` (CSV/Parquet table, OPUS file or folder) and/or a covariates
    table with ``model`` and write ``output`` (.csv or .parquet) atomically.

    With ``spectra`` and ``covariates`` both given, covariates are joined by id; with only
    ``covariates``, that table is the input (covariates-only models). ``problems_output`` (CSV)
    receives every sample that was not predicted, with the reason. ``progress`` replaces the
    terminal progress bar (e.g. the web page's, :mod:`soilcarbon.serving.web`); an exception it
    raises stops the job like any other, and no output is left.
    """
    from soilcarbon.atomic import atomic_path

    started = time.perf_counter()
    output = Path(output)
    kind = check_outputs(output, problems_output)
    if chunk_size < 1:
        raise SoilCarbonError(f"chunk size must be a positive number of rows, got {chunk_size}")
    if spectra is None and covariates is None:
        raise SoilCarbonError("nothing to predict: pass --spectra (and/or --covariates)")
    for given in (spectra, covariates):
        if given is not None and Path(given).exists() and output.exists() and Path(given).resolve() == output.resolve():
            raise SoilCarbonError(f"{output}: the output would overwrite the input; choose another output name")
    level_value = None if level is None else check_level(level)
    model = load_model(model) if isinstance(model, str) else model
    level_value = model.check_level(level_value)
    if model.axis is not None and spectra is None:
        raise SoilCarbonError(f"the model {model.uri} needs spectra ({len(model.axis)} points "
                              f"{format_axis_value(model.axis[0])}-{format_axis_value(model.axis[-1])} "
                              f"{model.unit}); pass --spectra")
    cov_table = None
    main_path = Path(spectra) if spectra is not None else Path(covariates)
    if spectra is not None and covariates is not None:
        if not model.covariates:
            raise SoilCarbonError(f"the model {model.uri} uses no covariates; drop --covariates")
        cov_table = read_covariates(Path(covariates), id_col)
    summary = PredictionSummary(model_uri=model.uri, output=str(output))
    workers = default_workers() if workers is None else max(1, int(workers))
    source = open_input(model, main_path, id_col, unit, id_pattern, chunk_size, cov_table,
                        str(covariates) if covariates else "")
    summary.add_problems(source.failures)
    if model.axis is not None and not source.plan.exact:  # say what was re-gridded
        summary.notes.append(f"{main_path}: " + check_resolution(source.plan.axis, source.plan.unit, model.axis,
                                                                 model.unit, str(main_path)))

    def work(item):
        start, frame, ids, values = item
        prepared = prepare_chunk(model, source.plan, frame, start, ids, values)
        return prepared, predict_prepared(model, prepared, level_value)

    from threadpoolctl import threadpool_limits

    # one BLAS/OpenMP thread per worker: the workers are the parallelism (OpenMP threads spinning
    # against each other made a nearest-neighbour query 8x slower on 2 busy cores)
    progress = Progress(quiet, "predicting", "bytes" if source.by_bytes else "") if progress is None else progress
    with threadpool_limits(limits=1), progress, atomic_path(output) as tmp:
        progress.start(source.total)
        source.on_bytes = lambda done: progress.update(completed=done, samples=summary.n_samples)
        writer = _Writer(tmp, kind)
        try:
            seen_ids: set = set()
            for prepared, result in _ordered_map(work, source.chunks(), workers, _one_openmp_thread):
                check_unique_ids(prepared.ids, seen_ids, main_path)
                writer.write(result)
                summary.n_samples += len(result)
                summary.n_predicted += int((~prepared.problem_rows).sum())
                summary.add_problems(prepared.problems)
                progress.update(completed=None if source.by_bytes else summary.n_samples, samples=summary.n_samples)
            if summary.n_predicted == 0:  # an output of empty rows is not a success
                raise nothing_predicted(main_path, summary)
            writer.close()
        except BaseException:
            writer.abort()
            raise
    if problems_output is not None:
        with atomic_path(Path(problems_output)) as tmp:
            pd.DataFrame(summary.problems, columns=[ID_COLUMN, "reason"]).to_csv(tmp, index=False)
    summary.seconds = time.perf_counter() - started
    return summary


def check_unique_ids(ids, seen: set, source) -> None:
    """Refuse sample ids repeated within ``ids`` or already in ``seen`` (updated), naming them:
    two rows with one id give two numbers no one can tell apart (train and REST refuse them too)."""
    present = pd.Series([i for i in ids if i is not None], dtype=object)
    repeated = set(present[present.duplicated()]) | (set(present) & seen)
    if repeated:
        shown = sorted(map(str, repeated))
        more = f" and {len(shown) - 5} more" if len(shown) > 5 else ""
        raise SoilCarbonError(f"{source}: duplicate sample id(s) {', '.join(shown[:5])}{more}; every sample needs "
                              "its own id")
    seen.update(present)


def nothing_predicted(source, summary: PredictionSummary) -> SoilCarbonError:
    """The error of a run that predicted no sample (nothing is written)."""
    if summary.n_samples == 0 and not summary.problems:
        return SoilCarbonError(f"{source}: no samples to predict; the input holds a header but no rows")
    first = f" (first: sample {summary.problems[0][0]}: {summary.problems[0][1]})" if summary.problems else ""
    return SoilCarbonError(f"{source}: none of the {max(summary.n_samples, summary.n_problems)} sample(s) could be "
                           f"predicted{first}; nothing was written")


@dataclass
class InputSource:
    """An opened input: its plan against the model and a generator of ``(start, frame, ids, values)``."""

    plan: InputPlan
    generate: Callable[["InputSource"], Iterator]
    total: float | None  # rows, or bytes when ``by_bytes``
    by_bytes: bool = False
    failures: list[tuple[str, str]] = field(default_factory=list)  # unreadable OPUS files
    on_bytes: Callable[[int], None] | None = None

    def chunks(self) -> Iterator:
        return self.generate(self)


def open_input(model: ServedModel, path: Path, id_col: str = ID_COLUMN, unit: str | None = None,
               id_pattern: str | None = None, chunk_size: int = DEFAULT_CHUNK_SIZE,
               cov_table: pd.DataFrame | None = None, cov_source: str = "") -> InputSource:
    """Open a CSV/Parquet table (streamed) or an OPUS file/folder (read whole) and plan it."""
    path = Path(path)
    if not path.exists():
        raise SoilCarbonError(f"{path}: no such file or folder; check the path")
    suffix = path.suffix.lower()
    if path.is_file() and suffix in CSV_SUFFIXES:
        plan = plan_input(model, _csv_header(path), str(path), id_col, unit, None, cov_table, cov_source, 2)

        def generate_csv(source):
            callback = lambda done: source.on_bytes(done) if source.on_bytes else None  # noqa: E731
            for start, frame in _csv_chunks(path, plan, chunk_size, callback):
                yield start, frame, None, None

        return InputSource(plan, generate_csv, path.stat().st_size, by_bytes=True)
    if path.is_file() and suffix in PARQUET_SUFFIXES:
        pfile = _open_parquet(path)
        schema = pfile.schema_arrow
        stored = (schema.metadata or {}).get(PARQUET_UNIT_KEY)
        names = [str(n) for n in schema.names]
        plan = plan_input(model, names, str(path), id_col, unit, stored.decode() if stored else None, cov_table,
                          cov_source, 0)
        wanted = set([plan.id_col] + plan.spectral_columns + plan.covariate_columns)
        columns = [n for n in names if n in wanted]

        def generate_parquet(source):
            for start, frame, values in _parquet_chunks(pfile, path, plan, chunk_size, columns):
                yield start, frame, None, values

        return InputSource(plan, generate_parquet, pfile.metadata.num_rows)
    # OPUS file or folder: read whole (one spectrum a file); unreadable files are per-sample problems
    from soilcarbon.spectral.readers import read_spectra

    if model.axis is None:
        raise SoilCarbonError(f"{path}: the model {model.uri} uses covariates only; pass a covariates table")
    spectra = read_spectra(path, id_col=id_col, unit=unit, id_pattern=id_pattern, allow_nan=True, on_error="skip")
    failures = list((getattr(spectra, "detected", {}) or {}).get("failures", []))
    plan = InputPlan(source=str(path), id_col=id_col, spectral_columns=spectra.columns, axis=spectra.axis,
                     unit=spectra.unit, line_offset=0)
    plan.exact = check_alignment(model, spectra.axis, spectra.unit, str(path))
    if model.covariates:
        if cov_table is None:
            raise SoilCarbonError(f"the model {model.uri} needs covariates {', '.join(model.covariates)}; "
                                  "pass --covariates COV.csv")
        plan.covariate_table, plan.covariate_source = cov_table, cov_source

    def generate_spectra(source):
        empty = pd.DataFrame(index=range(0))
        for start in range(0, len(spectra), chunk_size):
            stop = min(start + chunk_size, len(spectra))
            yield start, empty, spectra.ids[start:stop], spectra.values[start:stop]

    return InputSource(plan, generate_spectra, len(spectra), failures=failures)
