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

OUTPUT_COLUMNS = ["prediction", "lower", "upper", "level", "in_domain", "domain_score"]


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
        out = pd.DataFrame({
            "prediction": np.full(len(X), np.nan),
            "lower": np.nan,
            "upper": np.nan,
            "level": level,
            "in_domain": False,
            "domain_score": np.nan,
        })
        ok = np.isfinite(X).all(axis=1)
        if ok.any():
            Xo = X[ok]
            prediction = np.ravel(self.regressor.predict(Xo))
            bound = getattr(self.calibrator, "lower_bound", None)
            if bound is not None:  # a concentration cannot be negative
                prediction = np.maximum(prediction, bound)
            scores, score = self.domain.assess(self.domain_features.transform(Xo))
            lower, upper = self.calibrator.interval(scores, prediction, level)
            out.loc[ok, "prediction"] = prediction
            out.loc[ok, "lower"] = lower
            out.loc[ok, "upper"] = upper
            out.loc[ok, "domain_score"] = score
            out.loc[ok, "in_domain"] = score <= 1.0
        out["in_domain"] = out["in_domain"].astype(bool)
        return out

    def predict_frame(self, frame: pd.DataFrame, level: float | None = None) -> pd.DataFrame:
        """Predictions for a wide table; the ``sample_id`` column is carried over when present."""
        result = self.predict_matrix(self.layout.frame_to_matrix(frame), level)
        if ID_COLUMN in frame.columns:
            result.insert(0, ID_COLUMN, frame[ID_COLUMN].astype(str).to_numpy())
        return result
