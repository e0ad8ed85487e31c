"""The deployable SOC model: regressor + interval calibrator + domain check + input layout.

``predict`` returns, per sample, the prediction, the interval bounds at the requested level,
the level, ``in_domain`` and ``domain_score``. Rows with missing values get empty outputs and
do not stop the other rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from soilcarbon.models.layout import ID_COLUMN, FeatureLayout
from soilcarbon.spectral.pipeline import shared_preprocessing

OUTPUT_COLUMNS = ["prediction", "lower", "upper", "level", "in_domain", "domain_score"]
#: Rows predicted together: large enough to amortize per-call costs, small enough that the
#: temporaries of every step stay in the processor's cache (measured best at 1,000-2,000 for NIR).
BLOCK_ROWS = 1000


@dataclass
class SOCModel:
    """A fitted calibration, ready to predict with intervals and domain flags."""

    layout: FeatureLayout
    regressor: object
    domain_features: object
    domain: object
    calibrator: object
    level: float = 0.9
    target: str = "soc"
    info: dict = field(default_factory=dict)

    def difficulty_features(self, X: np.ndarray) -> np.ndarray:
        return self.domain.scores(self.domain_features.transform(X))

    def predict_matrix(self, X: np.ndarray, level: float | None = None) -> pd.DataFrame:
        """Predictions for a model matrix ``[spectra | covariates]`` (rows may hold NaN)."""
        level = self.level if level is None else float(level)
        X = np.asarray(X, dtype=float)
        values = np.full((len(X), 4), np.nan)  # prediction, lower, upper, domain score
        ok = np.isfinite(X).all(axis=1)
        finite = X if ok.all() else X[ok]
        results = np.empty((len(finite), 4))
        for start in range(0, len(finite), BLOCK_ROWS):
            block = slice(start, start + BLOCK_ROWS)
            results[block] = np.column_stack(self._predict_block(finite[block], level))
        values[ok] = results
        return pd.DataFrame({
            "prediction": values[:, 0],
            "lower": values[:, 1],
            "upper": values[:, 2],
            "level": level,
            "in_domain": values[:, 3] <= 1.0,
            "domain_score": values[:, 3],
        })

    def _predict_block(self, X: np.ndarray, level: float):
        """Prediction, bounds and domain score of finite rows; the preprocessing the regressor's
        members and the domain check have in common is computed once."""
        with shared_preprocessing():
            prediction = np.ravel(self.regressor.predict(X))
            bound = getattr(self.calibrator, "lower_bound", None)
            if bound is not None:  # a concentration cannot be negative
                prediction = np.maximum(prediction, bound)
            scores, score = self.domain.assess(self.domain_features.transform(X))
        lower, upper = self.calibrator.interval(scores, prediction, level)
        return prediction, lower, upper, score

    def predict_frame(self, frame: pd.DataFrame, level: float | None = None) -> pd.DataFrame:
        """Predictions for a wide table; the ``sample_id`` column is carried over when present."""
        result = self.predict_matrix(self.layout.frame_to_matrix(frame), level)
        if ID_COLUMN in frame.columns:
            result.insert(0, ID_COLUMN, frame[ID_COLUMN].astype(str).to_numpy())
        return result
