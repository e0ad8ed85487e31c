"""Calibration transfer: make spectra of a new (*target*) instrument look like spectra of the
instrument a model was calibrated on (*source*), from a few samples scanned on both.

Every spectral method learns a map ``x_target (p,) -> x_source (p,)`` on the same axis from the
transfer pairs ``X_target, X_source`` (n, p) and follows chemotools' API
(``fit(X_target, X_source=X_source)``, ``transform(X_target)``):

- **DS**, direct standardization (Wang, Veltkamp & Kowalski 1991, Anal. Chem. 63, 2750):
  ``x_s = m_s + (x_t - m_t) F`` with ``F = (X_t - m_t)^+ (X_s - m_s)`` (minimum-norm least squares on
  mean-centred spectra); checked against chemotools' ``DirectStandardization`` on centred data.
- **PDS**, piecewise DS (Wang et al. 1991; Bouveresse & Massart 1996, Chemom. Intell. Lab. Syst.
  32, 201): point ``j`` of the source spectrum is regressed on the target window ``j-w..j+w`` by
  principal-component regression with ``k`` components (the regularisation). Our own code, vectorised
  over all points: chemotools' PDS fits one PLS per point (about 2 s per fit here), and choosing the
  window and regularisation by leave-one-out needs hundreds of fits.
- **SST**, spectral space transformation (Du et al. 2011, Anal. Chim. Acta 690, 64): chemotools'
  ``SpectralSpaceTransform`` with ``k`` components of the joint space ``[X_s, X_t]``.
- **slope/bias** correction of the predictions (Bouveresse et al. 1996, Anal. Chem. 68, 982; the
  review of Feudale et al. 2002, Chemom. Intell. Lab. Syst. 64, 181): ``y = a + b * f(x_t)`` with
  ``a, b`` the least-squares line from the model's predictions on the target spectra to its
  predictions on the source spectra of the transfer samples.

No lab values are needed: the reference for a transfer sample is the base model's prediction on its
source spectrum, which is what the transferred model must reproduce. :func:`fit_transfer` chooses
the method and its settings by leave-one-out over the transfer samples (the prediction of each
sample comes from a map fitted without it) and keeps those leave-one-out transfer errors, which
the deployed model uses to widen its intervals.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, OneToOneFeatureMixin, TransformerMixin
from sklearn.utils.validation import check_is_fitted, validate_data

from soilcarbon.errors import SoilCarbonError

METHODS = ("auto", "ds", "pds", "sst", "slope-bias")
#: Fewest transfer samples: with fewer, leave-one-out leaves at most one pair to fit a map on.
MIN_TRANSFER_SAMPLES = 3
#: Settings tried by leave-one-out: PDS half-windows and PCR components, SST components.
PDS_WINDOWS = (1, 2, 3, 5, 8, 12)
PDS_COMPONENTS = (1, 2, 3)
SST_COMPONENTS = (1, 2, 3, 4, 5, 6, 8)


class DirectStandardization(OneToOneFeatureMixin, TransformerMixin, BaseEstimator):
    """DS on mean-centred spectra: ``x_s = m_s + (x_t - m_t) (X_t - m_t)^+ (X_s - m_s)``.

    Wang, Veltkamp & Kowalski (1991). Centring removes the offset between instruments, which an
    uncentred map must spend a rank on. The pseudo-inverse drops singular values below ``1e-10``
    of the largest: centred data always have one at rounding level, which chemotools'
    ``DirectStandardization`` (a cut-off of ``max(n, p) * eps``) keeps on short spectra and then
    amplifies. ``components_`` (p, r) and ``coef_`` (r, p) are the thin factors of the map.
    """

    def fit(self, X, y=None, *, X_source=None):
        X = validate_data(self, X, dtype=np.float64, reset=True)
        X_source = _source(X, X_source)
        self.target_mean_, self.source_mean_ = X.mean(axis=0), X_source.mean(axis=0)
        U, s, Vt = np.linalg.svd(X - self.target_mean_, full_matrices=False)
        keep = s > 1e-10 * s[0] if len(s) and s[0] > 0 else np.zeros(len(s), bool)
        self.components_ = Vt[keep].T
        self.coef_ = (U[:, keep] / s[keep]).T @ (X_source - self.source_mean_)
        return self

    def transform(self, X):
        check_is_fitted(self, "coef_")
        X = validate_data(self, X, dtype=np.float64, reset=False)
        return ((X - self.target_mean_) @ self.components_) @ self.coef_ + self.source_mean_


class PiecewiseDirectStandardization(OneToOneFeatureMixin, TransformerMixin, BaseEstimator):
    """PDS: each source point regressed on the target window ``j-w..j+w`` (cut at the ends).

    Wang et al. (1991); Bouveresse & Massart (1996). The local regressions are principal-component
    regressions on mean-centred data with at most ``n_components`` components (fewer where the
    window or the samples have lower rank: singular values below ``1e-10`` of the largest are
    dropped). ``coef_`` (p, 2w+1) holds each point's window coefficients; ``transform`` is
    ``m_s + sum_k (x_t - m_t)[j-w+k] coef_[j, k]``.

    Parameters
    ----------
    window : int, default=3
        Half-width ``w`` of the window (``2w + 1`` target points per source point).
    n_components : int, default=2
        Components of each local regression (the regularisation; fewer is smoother).
    """

    def __init__(self, window: int = 3, n_components: int = 2):
        self.window = window
        self.n_components = n_components

    def fit(self, X, y=None, *, X_source=None):
        X = validate_data(self, X, dtype=np.float64, reset=True)
        X_source = _source(X, X_source)
        if int(self.window) < 0 or int(self.n_components) < 1:
            raise ValueError(f"window must be >= 0 and n_components >= 1, got {self.window}, {self.n_components}")
        self.target_mean_, self.source_mean_ = X.mean(axis=0), X_source.mean(axis=0)
        blocks = self._windows(X - self.target_mean_).transpose(1, 0, 2)  # (p, n, 2w+1)
        U, s, Vt = np.linalg.svd(blocks, full_matrices=False)            # (p, n, r), (p, r), (p, r, 2w+1)
        keep = (s > 1e-10 * s[:, :1]) & (np.arange(s.shape[1]) < int(self.n_components))
        inverse = np.where(keep, 1.0 / np.where(keep, s, 1.0), 0.0)      # (p, r)
        targets = (X_source - self.source_mean_).T                       # (p, n)
        scores = np.einsum("pnr,pn->pr", U, targets) * inverse
        self.coef_ = np.einsum("prw,pr->pw", Vt, scores)
        return self

    def _windows(self, X: np.ndarray) -> np.ndarray:
        """(n, p, 2w+1) windows of X around every point, zero outside the axis."""
        w = int(self.window)
        padded = np.pad(X, ((0, 0), (w, w)))
        return np.lib.stride_tricks.sliding_window_view(padded, 2 * w + 1, axis=1)

    def transform(self, X):
        check_is_fitted(self, "coef_")
        X = validate_data(self, X, dtype=np.float64, reset=False)
        return np.einsum("npw,pw->np", self._windows(X - self.target_mean_), self.coef_) + self.source_mean_


def spectral_space_transform(n_components: int):
    """chemotools' SST (Du et al. 2011) with ``n_components`` joint components, centred."""
    from chemotools.adaptation import SpectralSpaceTransform

    return SpectralSpaceTransform(n_components=int(n_components), with_mean=True)


def _source(X: np.ndarray, X_source) -> np.ndarray:
    if X_source is None:
        raise ValueError("X_source (the same samples on the source instrument) is required")
    X_source = np.asarray(X_source, dtype=np.float64)
    if X_source.shape != X.shape or not np.all(np.isfinite(X_source)):
        raise ValueError(f"X_source must be finite with the shape of X {X.shape}, got {X_source.shape}")
    return X_source


def check_count(n: int) -> int:
    """``n`` when there are enough transfer samples for leave-one-out, else the error."""
    if n < MIN_TRANSFER_SAMPLES:
        raise SoilCarbonError(f"{n} transfer sample(s) given; at least {MIN_TRANSFER_SAMPLES} are needed "
                              "(10 or more are usual)")
    return n


@dataclass(frozen=True)
class TransferMethod:
    """One method with its settings: ``build()`` gives an unfitted map (None for slope/bias)."""

    name: str
    params: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        settings = ",".join(f"{k}={v}" for k, v in self.params.items())
        return f"{self.name}({settings})" if settings else self.name

    def build(self):
        if self.name == "ds":
            return DirectStandardization()
        if self.name == "pds":
            return PiecewiseDirectStandardization(**self.params)
        if self.name == "sst":
            return spectral_space_transform(**self.params)
        return None


def candidates(method: str, n_samples: int) -> list[TransferMethod]:
    """Methods and settings tried by leave-one-out for ``--method`` (``auto``: all of them).

    Component counts stop at ``n_samples - 2``, the rank of a leave-one-out fit's centred data.
    """
    if method not in METHODS:
        raise SoilCarbonError(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
    rank = max(1, n_samples - 2)
    out = []
    if method in ("auto", "ds"):
        out.append(TransferMethod("ds"))
    if method in ("auto", "pds"):
        out += [TransferMethod("pds", {"window": w, "n_components": k})
                for w in PDS_WINDOWS for k in PDS_COMPONENTS if k <= min(rank, 2 * w + 1)]
    if method in ("auto", "sst"):
        out += [TransferMethod("sst", {"n_components": k}) for k in SST_COMPONENTS if k <= rank]
    if method in ("auto", "slope-bias"):
        out.append(TransferMethod("slope-bias"))
    return out


def slope_bias(predicted_target: np.ndarray, predicted_source: np.ndarray) -> tuple[float, float]:
    """``(slope, intercept)`` of the least-squares line from target to source predictions; a
    constant prediction (no spread to fit a slope on) gets slope 1 and the mean difference."""
    x, y = np.asarray(predicted_target, float), np.asarray(predicted_source, float)
    if np.ptp(x) <= 1e-12 * max(1.0, np.abs(x).max()):
        return 1.0, float(np.mean(y - x))
    slope, intercept = np.polyfit(x, y, 1)
    return float(slope), float(intercept)


@dataclass
class TransferFit:
    """The chosen method fitted on all transfer samples, and its leave-one-out record.

    ``mapper`` is the fitted spectral map (None for slope/bias); predictions are
    ``intercept + slope * f(mapper(x_t))``. ``loo_errors`` are the leave-one-out transfer errors
    (prediction from the mapped target spectrum minus the base prediction on the source spectrum);
    ``table`` has the leave-one-out RMSE of every candidate tried, best first.
    """

    method: TransferMethod
    mapper: object
    slope: float
    intercept: float
    reference: np.ndarray
    loo_errors: np.ndarray
    table: pd.DataFrame

    @property
    def loo_rmse(self) -> float:
        return float(np.sqrt(np.mean(self.loo_errors ** 2)))


def loo_mapped(method: TransferMethod, X_source: np.ndarray, X_target: np.ndarray) -> np.ndarray:
    """Leave-one-out mapped spectra: row ``i`` of ``X_target`` through a map fitted on the other
    rows (slope/bias maps no spectra: ``X_target`` itself)."""
    if method.build() is None:
        return X_target
    n = len(X_source)
    mapped = np.empty_like(X_target)
    for i in range(n):
        rest = np.arange(n) != i
        mapped[i] = method.build().fit(X_target[rest], X_source=X_source[rest]).transform(X_target[i:i + 1])[0]
    return mapped


def loo_predictions(method: TransferMethod, X_source: np.ndarray, X_target: np.ndarray,
                    predict: Callable[[np.ndarray], np.ndarray], reference: np.ndarray) -> np.ndarray:
    """Leave-one-out predictions of the transfer samples: sample ``i`` through a map (or
    slope/bias line) fitted on the others."""
    if method.name != "slope-bias":
        return predict(loo_mapped(method, X_source, X_target))
    n = len(X_source)
    raw = predict(X_target)
    out = np.empty(n)
    for i in range(n):
        rest = np.arange(n) != i
        slope, intercept = slope_bias(raw[rest], reference[rest])
        out[i] = intercept + slope * raw[i]
    return out


def fit_transfer(X_source: np.ndarray, X_target: np.ndarray, predict: Callable[[np.ndarray], np.ndarray],
                 method: str = "auto") -> TransferFit:
    """Choose (by leave-one-out) and fit a transfer from ``X_target`` to ``X_source``.

    ``X_source``, ``X_target``: (n, p) spectra of the same n samples on the model's axis;
    ``predict``: the base model's predictions for a (m, p) matrix.
    """
    X_source, X_target = np.asarray(X_source, float), np.asarray(X_target, float)
    n = check_count(len(X_source))
    reference = np.asarray(predict(X_source), float)
    tried = candidates(method, n)
    rows, errors = [], {}
    for candidate in tried:
        with np.errstate(all="ignore"):
            errors[candidate.label] = loo_predictions(candidate, X_source, X_target, predict, reference) - reference
        rmse = float(np.sqrt(np.mean(errors[candidate.label] ** 2)))
        rows.append({"method": candidate.name, "settings": candidate.label,
                     "loo_rmse": rmse if np.isfinite(rmse) else np.inf})
    table = pd.DataFrame(rows).sort_values("loo_rmse", kind="stable").reset_index(drop=True)
    best = next(c for c in tried if c.label == table["settings"].iloc[0])
    if not np.isfinite(table["loo_rmse"].iloc[0]):
        raise SoilCarbonError("no transfer method gave finite predictions for the transfer samples; "
                              "check that source and target hold the same samples")
    mapper, slope, intercept = None, 1.0, 0.0
    if best.name == "slope-bias":
        slope, intercept = slope_bias(predict(X_target), reference)
    else:
        mapper = best.build().fit(X_target, X_source=X_source)
    return TransferFit(best, mapper, slope, intercept, reference, errors[best.label], table)


def conformal_quantile(errors: np.ndarray, level: float) -> float:
    """The ``ceil((n + 1) level)``-th smallest ``|error|`` (split-conformal quantile; Vovk et al.
    2005), the largest when there are too few errors for the level."""
    values = np.sort(np.abs(np.asarray(errors, float)))
    if len(values) == 0:
        return 0.0
    rank = min(len(values), int(np.ceil((len(values) + 1) * float(level))))
    return float(values[max(rank, 1) - 1])
