"""The served model: load any MLflow URI through :mod:`soilcarbon.registry` and predict a matrix.

- A registry alias (``models:/NAME@champion``) or ``latest`` is first resolved to the concrete
  version (``models:/NAME/3``), and that URI is what every output row names.
- The model is called through MLflow's pyfunc wrapper; the per-call schema enforcement of
  ``PyFuncModel.predict`` is replaced by one check at load time (see :func:`_verified_predict`), and
  a soilcarbon model is then given the matrix itself rather than a table of its columns
  (:func:`_matrix_predict`). Any other model goes through ``PyFuncModel.predict``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from soilcarbon.errors import SoilCarbonError
from soilcarbon.models.layout import ID_COLUMN, FeatureLayout
from soilcarbon.models.soc_model import OUTPUT_COLUMNS as MODEL_OUTPUTS
from soilcarbon.models.soc_model import checked_level


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
    matrix it was built from (:func:`soilcarbon.models.matrix.table_matrix`): for 5,000 NIR spectra, a
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
