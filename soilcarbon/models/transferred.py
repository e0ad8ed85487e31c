"""A calibration moved to another instrument: new-instrument spectra are mapped onto the base
model's instrument (DS, PDS or SST; see :mod:`soilcarbon.lab.transfer`), then the base model
predicts, or its predictions are corrected by slope/bias.

It has the interface of :class:`~soilcarbon.models.soc_model.SOCModel` (``layout``, ``level``,
``target``, ``info``, ``predict_matrix``, ``predict_frame``), so it is logged, registered, served
and scored on Spark by the same code. The input layout is the base model's axis: new-instrument
spectra are re-gridded onto it like any input, and the domain check runs on the mapped spectra.

Intervals: the transferred prediction errs by the base model's error plus the transfer error. The
base interval's half-widths (scaled by the slope) and the conformal quantile of the leave-one-out
transfer errors at the requested level (:func:`~soilcarbon.lab.transfer.conformal_quantile`) are
added in quadrature, as the spread of a sum of independent errors is.

Domain: the base model's check runs on the mapped spectra, whose scores a map inflates (it cannot
remove all instrument differences). ``domain_scale`` is the largest leave-one-out domain score of
the mapped transfer samples whose source spectra are in the domain; scores are divided by it
(when above 1), so a new-instrument sample is in the domain when it looks no further from the
calibration than transfer samples known to lie inside it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from soilcarbon.lab.transfer import conformal_quantile
from soilcarbon.models.soc_model import MAX_ABS_VALUE, largest_magnitude, predict_table


@dataclass
class TransferredModel:
    """``base`` (a fitted SOC model) behind a fitted spectral ``mapper`` (None: identity) and the
    prediction line ``intercept + slope * y``; ``transfer_errors`` are the leave-one-out transfer
    errors that widen the intervals."""

    base: object
    mapper: object
    transfer_errors: np.ndarray
    slope: float = 1.0
    intercept: float = 0.0
    domain_scale: float = 1.0
    info: dict = field(default_factory=dict)

    @property
    def layout(self):
        return self.base.layout

    @property
    def level(self) -> float:
        return self.base.level

    @property
    def target(self) -> str:
        return self.base.target

    def map_spectra(self, X: np.ndarray) -> np.ndarray:
        """Model matrix with the spectra of finite rows mapped onto the base instrument (rows with
        missing values are left as they are: the base model reports them)."""
        X = np.array(X, dtype=float)
        if self.mapper is None:
            return X
        spectral = self.layout.spectral_index
        values = X[:, spectral]
        finite = largest_magnitude(values) <= MAX_ABS_VALUE  # False for NaN and infinite values too
        if finite.any():
            X[np.ix_(finite, np.arange(X.shape[1])[spectral])] = self.mapper.transform(X[finite][:, spectral])
        return X

    def predict_matrix(self, X: np.ndarray, level: float | None = None) -> pd.DataFrame:
        level = self.level if level is None else float(level)
        result = self.base.predict_matrix(self.map_spectra(X), level)
        base = result["prediction"].to_numpy()
        prediction = self.intercept + self.slope * base
        below = np.abs(self.slope) * (base - result["lower"].to_numpy())
        above = np.abs(self.slope) * (result["upper"].to_numpy() - base)
        if self.slope < 0:
            below, above = above, below
        extra = conformal_quantile(self.transfer_errors, level)
        lower = prediction - np.sqrt(below ** 2 + extra ** 2)
        upper = prediction + np.sqrt(above ** 2 + extra ** 2)
        bound = getattr(getattr(self.base, "calibrator", None), "lower_bound", None)
        if bound is not None:  # a concentration cannot be negative
            prediction, lower = np.maximum(prediction, bound), np.maximum(lower, bound)
        out = result.copy()
        out["prediction"], out["lower"], out["upper"] = prediction, lower, upper
        out["domain_score"] = result["domain_score"].to_numpy() / max(1.0, float(self.domain_scale))
        out["in_domain"] = out["domain_score"].to_numpy() <= 1.0
        out.attrs["failures"] = dict(result.attrs.get("failures", {}))
        return out

    def predict_frame(self, frame: pd.DataFrame, level: float | None = None) -> pd.DataFrame:
        """Predictions for a wide table of new-instrument spectra (``sample_id`` carried over)."""
        return predict_table(self, frame, level)
