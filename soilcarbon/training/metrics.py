"""The accuracy numbers the soil-spectroscopy field quotes, computed one way everywhere.

RMSE, R², RPIQ = IQR(observed) / RMSE (Bellon-Maurel et al. 2010, TrAC 29:1073), bias = mean
(prediction - observed), PICP = share of observations inside their interval, and the mean
interval width; Lin's concordance correlation coefficient (Lin 1989, Biometrics 45:255) for
comparisons of model versions.
"""

from __future__ import annotations

import numpy as np

METRIC_NAMES = ("rmse", "r2", "rpiq", "bias", "picp", "mean_width", "n")


def regression_metrics(observed, predicted, lower=None, upper=None) -> dict[str, float]:
    """RMSE, R², RPIQ, bias (and PICP, mean width when intervals are given)."""
    y = np.asarray(observed, dtype=float)
    p = np.asarray(predicted, dtype=float)
    error = p - y
    rmse = float(np.sqrt(np.mean(error**2)))
    total = float(np.sum((y - y.mean()) ** 2))
    q1, q3 = np.percentile(y, [25, 75])
    out = {
        "rmse": rmse,
        "r2": float(1.0 - np.sum(error**2) / total) if total > 0 else float("nan"),
        "rpiq": float((q3 - q1) / rmse) if rmse > 0 else float("inf"),
        "bias": float(error.mean()),
        "n": float(len(y)),
    }
    if lower is not None and upper is not None:
        lo = np.asarray(lower, dtype=float)
        hi = np.asarray(upper, dtype=float)
        out["picp"] = float(np.mean((y >= lo) & (y <= hi)))
        out["mean_width"] = float(np.mean(hi - lo))
    return out


def concordance(observed, predicted) -> float:
    """Lin's concordance correlation coefficient, 2 cov(y, p) / (var y + var p + (mean y - mean p)²),
    with population (1/n) moments as in Lin (1989); 1 means every point on the 1:1 line."""
    y = np.asarray(observed, dtype=float)
    p = np.asarray(predicted, dtype=float)
    cov = float(np.mean((y - y.mean()) * (p - p.mean())))
    denominator = float(y.var() + p.var() + (y.mean() - p.mean()) ** 2)
    return 2.0 * cov / denominator if denominator > 0 else float("nan")
