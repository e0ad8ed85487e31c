"""The SOC model as an MLflow pyfunc: a directory with a signature and an input example,
loadable with ``mlflow.pyfunc.load_model(uri)`` by code that never needs to know the algorithm.

Input: a table with an optional ``sample_id`` column, one column per training-axis point
(headers are the axis values, e.g. ``"1100"``) and the covariate columns. Parameter ``level``
sets the interval level. Output: ``sample_id`` (when given), prediction, lower, upper, level,
in_domain, domain_score. The training axis, unit and covariates are in the model's metadata
under ``soilcarbon`` so callers can align spectra before predicting.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.pyfunc import PythonModel
from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

from soilcarbon.models.layout import ID_COLUMN
from soilcarbon.models.soc_model import SOCModel

METADATA_KEY = "soilcarbon"


class SOCPyfunc(PythonModel):
    """pyfunc wrapper around a fitted :class:`SOCModel`."""

    def __init__(self, model: SOCModel):
        self.model = model

    # The type hints also keep MLflow from printing its "add type hints" advice on import; the
    # explicit signature logged with the model still governs input checks.
    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        level = (params or {}).get("level", self.model.level)
        return self.model.predict_frame(frame, level=float(level))

    def predict_matrix(self, X: np.ndarray, level: float | None = None) -> pd.DataFrame:
        """What :meth:`predict` returns (without ``sample_id``) for a table whose columns after
        ``sample_id`` are exactly the signature's, given as the matrix ``X`` in that order.

        :meth:`predict` turns such a table into this matrix (:func:`soilcarbon.models.matrix.table_matrix`);
        batch prediction, which holds the matrix already, calls this directly instead of building
        a table of 700 columns only to have it taken apart again.
        """
        return self.model.predict_matrix(X, level=float(self.model.level if level is None else level))


def signature(model: SOCModel) -> ModelSignature:
    """Columns the model reads, its outputs and the ``level`` parameter."""
    inputs = [ColSpec("string", ID_COLUMN, required=False)]
    inputs += [ColSpec("double", c) for c in model.layout.columns]
    outputs = [ColSpec("string", ID_COLUMN, required=False)] + [
        ColSpec("double", "prediction"), ColSpec("double", "lower"), ColSpec("double", "upper"),
        ColSpec("double", "level"), ColSpec("boolean", "in_domain"), ColSpec("double", "domain_score"),
    ]
    params = ParamSchema([ParamSpec("level", "double", float(model.level))])
    return ModelSignature(Schema(inputs), Schema(outputs), params)


def input_example(model: SOCModel, X: np.ndarray, ids) -> pd.DataFrame:
    """The first rows of the training matrix as a table the model accepts."""
    frame = pd.DataFrame(X[:2], columns=model.layout.columns)
    frame.insert(0, ID_COLUMN, [str(i) for i in ids[:2]])
    return frame


def metadata(model: SOCModel) -> dict:
    """What serving code needs to align input: axis, unit, covariates, target and level."""
    return {METADATA_KEY: {**model.layout.to_dict(), "target": model.target, "level": model.level,
                           "target_unit": model.info.get("target_unit", "")}}
