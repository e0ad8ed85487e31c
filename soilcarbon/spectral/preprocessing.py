"""Spectral preprocessing transformers (scikit-learn compatible) and a config-driven pipeline.

Every class is a small scikit-learn transformer on a 2-D array ``X`` of shape
``(n_samples, n_points)`` (one spectrum a row): parameters are stored unchanged in
``__init__``, learning happens in ``fit``, fitted attributes end with ``_``, and each one works
in a :class:`~sklearn.pipeline.Pipeline` and survives :func:`~sklearn.base.clone`.

- :class:`SNV`: standard normal variate (Barnes et al. 1989), own numpy code
- :class:`MSC`: multiplicative scatter correction (Geladi et al. 1985), computed by chemotools
- :class:`SavitzkyGolay`: smoothing and derivatives (Savitzky & Golay 1964), computed by scipy
- :class:`Detrend`: polynomial baseline removal (Barnes et al. 1989), own numpy code
- :class:`Trim`: keep the points inside an axis range, own code
- :class:`Resample`: linear interpolation onto another axis, own code
- :class:`ReflectanceToAbsorbance`: log10(1/R), computed by chemotools

Derivatives are :class:`SavitzkyGolay` with ``deriv=1`` or ``2``. Where the module has its own
code, the class docstring says why chemotools' counterpart did not fit.

Errors a user can cause (spectra with the wrong number of points, missing values, a flat
spectrum, non-positive reflectance, an empty trim range, bad parameters) raise
:class:`PreprocessingError`, which is a :class:`~soilcarbon.errors.SoilCarbonError` (one clear
line for the CLI) and also a :class:`ValueError` (what scikit-learn expects from estimators).

:func:`build_preprocessing` turns a config list such as
``[{"name": "trim", "start": 1200, "end": 2400}, {"name": "snv"}]`` into a Pipeline.

References
----------
Barnes, R. J., Dhanoa, M. S., Lister, S. J. (1989). Standard normal variate transformation and
de-trending of near-infrared diffuse reflectance spectra. Applied Spectroscopy 43(5), 772-777.
Geladi, P., MacDougall, D., Martens, H. (1985). Linearization and scatter-correction for
near-infrared reflectance spectra of meat. Applied Spectroscopy 39(3), 491-500.
Savitzky, A., Golay, M. J. E. (1964). Smoothing and differentiation of data by simplified least
squares procedures. Analytical Chemistry 36(8), 1627-1639.
"""

from __future__ import annotations

import re
from numbers import Integral, Real

import numpy as np
from chemotools.physics import IntensityConversion
from chemotools.scatter import MultiplicativeScatterCorrection
from scipy.signal import savgol_filter
from sklearn.base import BaseEstimator, OneToOneFeatureMixin, TransformerMixin
from sklearn.utils.validation import check_is_fitted, validate_data

from soilcarbon.errors import SoilCarbonError
from soilcarbon.spectral.pipeline import SpectralPipeline
from soilcarbon.spectral.spectra import axis_columns, format_axis_value

__all__ = [
    "PreprocessingError",
    "SNV",
    "MSC",
    "SavitzkyGolay",
    "Detrend",
    "Trim",
    "Resample",
    "ReflectanceToAbsorbance",
    "STEP_NAMES",
    "build_preprocessing",
]


class PreprocessingError(SoilCarbonError, ValueError):
    """Bad spectra or parameters given to a preprocessing step (a SoilCarbonError and a ValueError).

    ``sample_reason``, when the fault lies in individual spectra, says what is wrong with such a
    spectrum without naming its row in the batch (used when one sample is reported on its own).
    """

    def __init__(self, message: str, sample_reason: str | None = None):
        super().__init__(message)
        self.sample_reason = sample_reason


# ----------------------------------------------------------------------------- helpers
_ARRAY_DUMP = re.compile(r"array=.*?\]\.?\s*", re.DOTALL)


def _fmt(value: float) -> str:
    return format_axis_value(value)


def _range_text(values: np.ndarray) -> str:
    return f"{_fmt(np.min(values))}-{_fmt(np.max(values))}"


def _is_int(value) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and np.isfinite(value)


def _check_axis(values, who: str, what: str = "axis") -> np.ndarray:
    """Return ``values`` as a finite, strictly monotonic 1-D float array, or raise."""
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise PreprocessingError(f"{who}: {what} must be a list of numbers") from None
    if arr.ndim != 1 or arr.size == 0:
        raise PreprocessingError(f"{who}: {what} must be a non-empty 1-D list of numbers, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise PreprocessingError(f"{who}: {what} has missing or infinite values")
    steps = np.diff(arr)
    if arr.size > 1 and not (np.all(steps > 0) or np.all(steps < 0)):
        raise PreprocessingError(f"{who}: {what} must be strictly increasing or decreasing")
    return arr


def _tolerance(axis: np.ndarray) -> float:
    """Slack for floating-point noise in axis values (e.g. after a nm <-> cm-1 conversion)."""
    return 1e-9 * max(1.0, float(np.max(np.abs(axis))))


def _trim_support(axis: np.ndarray, start, end, who: str) -> np.ndarray:
    """Boolean mask of the axis points inside [start, end] (either bound may be None)."""
    for label, bound in (("start", start), ("end", end)):
        if bound is not None and not _is_number(bound):
            raise PreprocessingError(f"{who}: {label} must be a number or None, got {bound!r}")
    low = -np.inf if start is None else float(start)
    high = np.inf if end is None else float(end)
    if low > high:  # wavenumber users often write the range high -> low
        low, high = high, low
    tol = _tolerance(axis)
    support = (axis >= low - tol) & (axis <= high + tol)
    if not support.any():
        raise PreprocessingError(
            f"{who}: no point of the axis {_range_text(axis)} lies in "
            f"[{'-inf' if start is None else _fmt(low)}, {'inf' if end is None else _fmt(high)}]; "
            "choose start/end inside the axis range"
        )
    return support


def _bad_rows_text(X) -> str:
    """' (rows 3, 17)' for the rows of X holding NaN/inf, or '' when X cannot be inspected."""
    try:
        rows = np.flatnonzero(~np.isfinite(np.asarray(X, dtype=np.float64)).all(axis=1))
    except (TypeError, ValueError, IndexError):
        return ""
    if rows.size == 0:
        return ""
    more = f" and {rows.size - 5} more" if rows.size > 5 else ""
    return f" (row{'s' if rows.size > 1 else ''} {', '.join(map(str, rows[:5]))}{more})"


class _SpectralTransformer(TransformerMixin, BaseEstimator):
    """Shared validation: array checks become one-line :class:`PreprocessingError`."""

    def _check_params(self) -> None:
        """Raise PreprocessingError for invalid parameters (also used by build_preprocessing)."""

    def _validate(self, X, reset: bool) -> np.ndarray:
        who = type(self).__name__
        if not reset:
            check_is_fitted(self)
        try:
            return validate_data(self, X, reset=reset, dtype=np.float64)
        except ValueError as exc:
            text = _ARRAY_DUMP.sub("", str(exc))
            reason = None
            if "NaN" in text or "infinity" in text:
                reason = f"{who}: missing (NaN) or infinite values; fill or remove those samples first"
                text = "the spectra contain missing (NaN) or infinite values" + _bad_rows_text(X)
                text += "; fill or remove those samples first"
            elif "features, but" in text:
                text = text.rstrip(". ") + "; the spectra have another number of points than at fit"
            raise PreprocessingError(f"{who}: {text}", reason) from exc

    def _check_width(self, X: np.ndarray, axis: np.ndarray) -> None:
        if X.shape[1] != axis.size:
            raise PreprocessingError(
                f"{type(self).__name__}: the spectra have {X.shape[1]} points but the axis "
                f"{_range_text(axis)} has {axis.size}; give the axis of the incoming columns"
            )

    def _column(self, col: int) -> str:
        names = getattr(self, "feature_names_in_", None)
        return f"column {names[col]!r}" if names is not None else f"column {col}"

    def _where(self, row: int, col: int) -> str:
        return f"row {row}, {self._column(col)}"


# ------------------------------------------------------------------------- scatter
class SNV(OneToOneFeatureMixin, _SpectralTransformer):
    """Standard normal variate (Barnes, Dhanoa & Lister 1989): centre and scale each spectrum.

    ``x_snv = (x - mean(x)) / std(x)`` row by row, with the population standard deviation
    (``ddof=0``, as chemotools' ``StandardNormalVariate``), so every output row has mean 0 and
    ``np.std`` 1. Barnes et al. divide by ``n - 1``; the two differ by the constant factor
    ``sqrt((p - 1) / p)``, irrelevant for modelling.

    Own code (three NumPy lines): chemotools' transformer validates and copies the input again
    and cannot report flat rows without computing the deviation twice, which made SNV the
    costliest step of batch prediction. The tests check it against chemotools.

    Shapes: ``(n_samples, n_points) -> (n_samples, n_points)``. Stateless (fit only records the
    number of points). A flat spectrum (standard deviation 0) raises PreprocessingError naming
    the row instead of returning NaN.

    Attributes
    ----------
    n_features_in_ : int
    """

    def fit(self, X, y=None):
        self._validate(X, reset=True)
        return self

    def transform(self, X):
        X = self._validate(X, reset=False)
        centred = X - X.mean(axis=1, keepdims=True)
        std = np.sqrt(np.einsum("ij,ij->i", centred, centred) / X.shape[1])
        flat = np.flatnonzero(std == 0)
        if flat.size:
            raise PreprocessingError(
                f"SNV: the spectrum in row {flat[0]} is flat (standard deviation 0)"
                f"{f' and {flat.size - 1} more rows are' if flat.size > 1 else ''}; "
                "remove flat spectra before SNV",
                "SNV: the spectrum is flat (standard deviation 0); remove flat spectra before SNV",
            )
        centred /= std[:, None]
        return centred


class MSC(OneToOneFeatureMixin, _SpectralTransformer):
    """Multiplicative scatter correction (Geladi, MacDougall & Martens 1985).

    ``fit`` learns a reference spectrum ``r`` (the mean, or the median, of the training
    spectra, or a given array). ``transform`` regresses each spectrum on it by least squares,
    ``x ~ a + b * r``, and returns ``(x - a) / b``. The computation is chemotools'
    ``MultiplicativeScatterCorrection``.

    Parameters
    ----------
    reference : "mean" (default), "median" or array-like of shape (n_points,)

    Shapes: ``(n_samples, n_points) -> (n_samples, n_points)``.

    Attributes
    ----------
    reference_ : ndarray of shape (n_points,)
    n_features_in_ : int
    transformer_ : chemotools.scatter.MultiplicativeScatterCorrection
    """

    def __init__(self, reference="mean"):
        self.reference = reference

    def _check_params(self) -> None:
        if isinstance(self.reference, str):
            if self.reference not in ("mean", "median"):
                raise PreprocessingError(
                    f"MSC: reference must be 'mean', 'median' or a spectrum, got {self.reference!r}"
                )
        else:
            _check_axis_free(self.reference, "MSC", "reference")

    def fit(self, X, y=None):
        self._check_params()
        X = self._validate(X, reset=True)
        if X.shape[1] < 2:
            raise PreprocessingError(f"MSC: needs spectra of at least 2 points, got n_features = {X.shape[1]}")
        if isinstance(self.reference, str):
            reference = np.mean(X, axis=0) if self.reference == "mean" else np.median(X, axis=0)
        else:
            reference = np.asarray(self.reference, dtype=np.float64)
            if reference.size != X.shape[1]:
                raise PreprocessingError(
                    f"MSC: the reference spectrum has {reference.size} points but the spectra have {X.shape[1]}"
                )
        if np.ptp(reference) == 0:
            raise PreprocessingError("MSC: the reference spectrum is flat; MSC needs a reference with features")
        self.transformer_ = MultiplicativeScatterCorrection(reference=reference).fit(X)
        self.reference_ = self.transformer_.reference_
        return self

    def transform(self, X):
        X = self._validate(X, reset=False)
        with np.errstate(divide="ignore", invalid="ignore"):
            out = self.transformer_.transform(X)
        bad = np.flatnonzero(~np.isfinite(out).all(axis=1))
        if bad.size:
            raise PreprocessingError(
                f"MSC: the spectrum in row {bad[0]} does not follow the reference (slope 0); "
                "remove it or use another reference",
                "MSC: the spectrum does not follow the reference (slope 0); remove it or use another reference",
            )
        return out


def _check_axis_free(values, who: str, what: str) -> np.ndarray:
    """A finite 1-D numeric array (no monotonicity needed), e.g. a reference spectrum."""
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise PreprocessingError(f"{who}: {what} must be 'mean', 'median' or a list of numbers") from None
    if arr.ndim != 1 or arr.size < 2 or not np.all(np.isfinite(arr)):
        raise PreprocessingError(f"{who}: {what} must be a 1-D list of at least 2 finite numbers")
    return arr


# ------------------------------------------------------------ smoothing, derivatives
class SavitzkyGolay(OneToOneFeatureMixin, _SpectralTransformer):
    """Savitzky-Golay smoothing and derivatives (Savitzky & Golay 1964).

    Each point is replaced by the value (``deriv=0``) or the ``deriv``-th derivative of a
    polynomial of degree ``polyorder`` fitted by least squares to the ``window_length`` points
    centred on it; i.e. a convolution with fixed coefficients, e.g. 5 points, degree 2:
    smoothing ``(-3, 12, 17, 12, -3) / 35``, first derivative ``(-2, -1, 0, 1, 2) / 10``.
    Derivatives are per point (sample spacing 1), as in chemotools and prospectr. ``mode``
    handles the edges as :func:`scipy.signal.savgol_filter` does ("interp" fits a polynomial to
    the first/last window).

    Computed by :func:`scipy.signal.savgol_filter` along axis 1 directly: chemotools'
    ``derivative.SavitzkyGolay`` makes the same call but carries deprecated alias parameters
    (``window_size``, ``polynomial_order``, ``derivate_order``) in ``get_params``.

    Parameters
    ----------
    window_length : odd int >= 3, default 11
    polyorder : int, 0 <= polyorder < window_length, default 2
    deriv : int, 0 <= deriv <= polyorder, default 0
    mode : "interp" (default), "mirror", "nearest", "constant" or "wrap"

    Shapes: ``(n_samples, n_points) -> (n_samples, n_points)``; needs
    ``n_points >= window_length``.
    """

    _MODES = ("interp", "mirror", "nearest", "constant", "wrap")

    def __init__(self, window_length=11, polyorder=2, deriv=0, mode="interp"):
        self.window_length = window_length
        self.polyorder = polyorder
        self.deriv = deriv
        self.mode = mode

    def _check_params(self) -> None:
        wl, po, d = self.window_length, self.polyorder, self.deriv
        if not _is_int(wl) or wl < 3 or wl % 2 == 0:
            raise PreprocessingError(f"SavitzkyGolay: window_length must be an odd integer >= 3, got {wl!r}")
        if not _is_int(po) or not 0 <= po < wl:
            raise PreprocessingError(
                f"SavitzkyGolay: polyorder must be an integer from 0 to window_length - 1 ({wl - 1}), got {po!r}"
            )
        if not _is_int(d) or not 0 <= d <= po:
            raise PreprocessingError(
                f"SavitzkyGolay: deriv must be an integer from 0 to polyorder ({po}), got {d!r}"
            )
        if self.mode not in self._MODES:
            raise PreprocessingError(f"SavitzkyGolay: mode must be one of {', '.join(self._MODES)}, got {self.mode!r}")

    def fit(self, X, y=None):
        self._check_params()
        X = self._validate(X, reset=True)
        if X.shape[1] < self.window_length:
            raise PreprocessingError(
                f"SavitzkyGolay: window_length {self.window_length} is longer than the spectra "
                f"(n_features = {X.shape[1]}); use a shorter window"
            )
        return self

    def transform(self, X):
        X = self._validate(X, reset=False)
        return savgol_filter(X, int(self.window_length), int(self.polyorder), deriv=int(self.deriv),
                             axis=1, mode=self.mode)


# --------------------------------------------------------------------------- baseline
class Detrend(OneToOneFeatureMixin, _SpectralTransformer):
    """Remove a polynomial baseline from each spectrum (detrending, Barnes et al. 1989).

    For each spectrum ``x`` a polynomial ``p`` of degree ``order`` in the axis values
    (or the point index when ``axis`` is None) is fitted by least squares and ``x - p`` is
    returned. The axis is rescaled to [-1, 1] for a well-conditioned fit; the result does not
    depend on that rescaling. Barnes et al. apply it after SNV with ``order=2``.

    Own code: chemotools' ``PolynomialCorrection`` fits against the point index only, and
    :func:`scipy.signal.detrend` removes only linear trends.

    Parameters
    ----------
    order : int >= 0, default 2
    axis : array-like of shape (n_points,) or None (point index 0..n_points-1)

    Shapes: ``(n_samples, n_points) -> (n_samples, n_points)``; needs ``n_points > order``.

    Attributes
    ----------
    design_ : ndarray (n_points, order + 1), Vandermonde matrix of the rescaled axis
    projector_ : ndarray (order + 1, n_points), its pseudo-inverse (least-squares solver)
    """

    def __init__(self, order=2, axis=None):
        self.order = order
        self.axis = axis

    def _check_params(self) -> None:
        if not _is_int(self.order) or self.order < 0:
            raise PreprocessingError(f"Detrend: order must be an integer >= 0, got {self.order!r}")
        if self.axis is not None:
            _check_axis(self.axis, "Detrend")

    def fit(self, X, y=None):
        self._check_params()
        X = self._validate(X, reset=True)
        p = X.shape[1]
        if self.axis is None:
            x = np.arange(p, dtype=np.float64)
        else:
            x = _check_axis(self.axis, "Detrend")
            self._check_width(X, x)
        if p <= self.order:
            raise PreprocessingError(
                f"Detrend: a polynomial of order {self.order} needs more than {self.order} points, "
                f"got n_features = {p}"
            )
        span = np.ptp(x) / 2 or 1.0
        t = (x - (x.min() + x.max()) / 2) / span
        self.design_ = np.vander(t, self.order + 1, increasing=True)
        self.projector_ = np.linalg.pinv(self.design_)
        return self

    def transform(self, X):
        X = self._validate(X, reset=False)
        coefficients = X @ self.projector_.T  # (n_samples, order + 1)
        return X - coefficients @ self.design_.T


# ------------------------------------------------------------------------ axis steps
class Trim(_SpectralTransformer):
    """Keep the points whose axis value lies in [start, end] (bounds inclusive).

    ``axis`` holds the axis values of the incoming columns (any monotonic order, nm or cm-1);
    ``start``/``end`` are axis values (None = open end; their order does not matter, so
    ``start=4000, end=600`` works for a decreasing wavenumber axis).

    Own code: chemotools' ``RangeCut`` snaps start/end to the nearest point and excludes the
    end point (``[start_index, end_index)``), so it would keep 600, not 601, points for
    1200-2400 nm on a 2 nm grid.

    Shapes: ``(n_samples, len(axis)) -> (n_samples, n_kept)``.

    Attributes
    ----------
    support_ : bool ndarray of shape (len(axis),), the kept columns
    axis_out_ : ndarray of shape (n_kept,), the axis of the output columns
    """

    def __init__(self, axis, start=None, end=None):
        self.axis = axis
        self.start = start
        self.end = end

    def _check_params(self) -> None:
        axis = _check_axis(self.axis, "Trim")
        _trim_support(axis, self.start, self.end, "Trim")

    def fit(self, X, y=None):
        axis = _check_axis(self.axis, "Trim")
        X = self._validate(X, reset=True)
        self._check_width(X, axis)
        self.support_ = _trim_support(axis, self.start, self.end, "Trim")
        self.axis_out_ = axis[self.support_]
        return self

    def transform(self, X):
        X = self._validate(X, reset=False)
        return X[:, self.support_]

    def get_support(self) -> np.ndarray:
        """Boolean mask of the kept input columns."""
        check_is_fitted(self)
        return self.support_.copy()

    def get_feature_names_out(self, input_features=None):
        """Input column names of the kept points (if known), else their axis values as text."""
        check_is_fitted(self)
        names = input_features if input_features is not None else getattr(self, "feature_names_in_", None)
        if names is None:
            return np.asarray(axis_columns(self.axis_out_), dtype=object)
        names = np.asarray(names, dtype=object)
        if names.size != self.n_features_in_:
            raise PreprocessingError(
                f"Trim: {names.size} input feature names given for {self.n_features_in_} columns"
            )
        return names[self.support_]


class Resample(_SpectralTransformer):
    """Linear interpolation of each spectrum from ``axis`` onto ``new_axis``.

    Between two neighbouring input points ``a_i <= v <= a_{i+1}``, the output at ``v`` is
    ``x_i + (x_{i+1} - x_i) (v - a_i) / (a_{i+1} - a_i)`` (what :func:`numpy.interp` computes),
    done for all rows at once with weights prepared in ``fit``. Both axes may be increasing or
    decreasing. ``new_axis`` must lie inside the range of ``axis``: extrapolation is refused.

    Own code: chemotools' ``XAxisInterpolator`` takes the input axis as per-call metadata
    (metadata routing in a Pipeline) and fills points outside the range with NaN instead of
    refusing them.

    Shapes: ``(n_samples, len(axis)) -> (n_samples, len(new_axis))``.

    Attributes
    ----------
    axis_out_ : ndarray, ``new_axis`` as float
    interp_index_ : int ndarray (2, len(new_axis)), input columns left/right of each new point
    interp_weight_ : ndarray (len(new_axis),), weight of the right-hand column
    """

    def __init__(self, axis, new_axis):
        self.axis = axis
        self.new_axis = new_axis

    def _check_params(self) -> None:
        axis = _check_axis(self.axis, "Resample")
        new = _check_axis(self.new_axis, "Resample", "new_axis")
        tol = _tolerance(axis)
        if new.min() < axis.min() - tol or new.max() > axis.max() + tol:
            raise PreprocessingError(
                f"Resample: new_axis {_range_text(new)} lies outside the input axis {_range_text(axis)}; "
                "choose a new axis inside the input range"
            )

    def fit(self, X, y=None):
        self._check_params()
        axis = _check_axis(self.axis, "Resample")
        new = _check_axis(self.new_axis, "Resample", "new_axis")
        X = self._validate(X, reset=True)
        self._check_width(X, axis)
        order = np.argsort(axis)
        if axis.size == 1:
            self.interp_index_ = np.zeros((2, new.size), dtype=np.intp)
            self.interp_weight_ = np.zeros(new.size)
        else:
            position = np.interp(new, axis[order], np.arange(axis.size, dtype=np.float64))
            left = np.clip(np.floor(position).astype(np.intp), 0, axis.size - 2)
            self.interp_index_ = np.vstack([order[left], order[left + 1]])
            self.interp_weight_ = position - left
        self.axis_out_ = new
        return self

    def transform(self, X):
        X = self._validate(X, reset=False)
        left, right = self.interp_index_
        return X[:, left] * (1.0 - self.interp_weight_) + X[:, right] * self.interp_weight_

    def get_feature_names_out(self, input_features=None):
        """The new axis values as text ('1200', '1202.5', ...)."""
        check_is_fitted(self)
        return np.asarray(axis_columns(self.axis_out_), dtype=object)


# --------------------------------------------------------------------------- physics
class ReflectanceToAbsorbance(OneToOneFeatureMixin, _SpectralTransformer):
    """Reflectance to (pseudo-)absorbance: ``A = log10(1 / R)``.

    ``R`` is reflectance as a fraction (0, 1]. Percent reflectance gives ``A - 2``, a constant
    offset that SNV, MSC and derivatives remove. Computed by chemotools'
    ``IntensityConversion(input_unit="reflectance", output_unit="pseudoabsorbance")``, after a
    check that every value is positive (chemotools only warns and returns inf/NaN).

    Shapes: ``(n_samples, n_points) -> (n_samples, n_points)``. Values <= 0 (in ``fit`` or
    ``transform``) raise PreprocessingError naming the first row and column.
    """

    def fit(self, X, y=None):
        X = self._validate(X, reset=True)
        self._check_positive(X)
        self.transformer_ = IntensityConversion(input_unit="reflectance", output_unit="pseudoabsorbance").fit(X)
        return self

    def transform(self, X):
        X = self._validate(X, reset=False)
        self._check_positive(X)
        return self.transformer_.transform(X)

    def _check_positive(self, X: np.ndarray) -> None:
        bad = X <= 0
        if bad.any():
            row, col = (int(i) for i in np.argwhere(bad)[0])
            raise PreprocessingError(
                f"ReflectanceToAbsorbance: reflectance must be positive but {self._where(row, col)} is "
                f"{X[row, col]:g} ({int(bad.sum())} value(s) <= 0 in all); correct or remove those spectra, "
                "or skip this step if the data already are absorbance",
                f"ReflectanceToAbsorbance: reflectance must be positive but the first value <= 0 is "
                f"{X[row, col]:g}, in {self._column(col)}",
            )

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.positive_only = True
        return tags


# --------------------------------------------------------------------- pipeline config
#: Config names accepted by :func:`build_preprocessing`.
STEP_NAMES = {
    "snv": SNV,
    "msc": MSC,
    "savgol": SavitzkyGolay,
    "detrend": Detrend,
    "trim": Trim,
    "resample": Resample,
    "absorbance": ReflectanceToAbsorbance,
}
_AXIS_STEPS = {"trim", "resample", "detrend"}


def build_preprocessing(steps: list[dict], axis) -> SpectralPipeline:
    """Build a Pipeline (a :class:`SpectralPipeline`, whose output prediction can share) from a
    config list, giving axis-dependent steps the current axis.

    Each step is a dict with ``name`` and the class parameters:

    - ``snv``: :class:`SNV`, no parameters
    - ``msc``: :class:`MSC`, reference ("mean"; or "median", or a spectrum)
    - ``savgol``: :class:`SavitzkyGolay`, window_length (11), polyorder (2), deriv (0),
      mode ("interp")
    - ``detrend``: :class:`Detrend`, order (2)
    - ``trim``: :class:`Trim`, start (None), end (None)
    - ``resample``: :class:`Resample`, new_axis, or start, end and step (the grid
      ``start, start + step, ...`` up to and including ``end``); with step alone, start and end
      are the multiples of step inside the current axis (so one config fits NIR and MIR)
    - ``absorbance``: :class:`ReflectanceToAbsorbance`, no parameters

    ``trim``, ``resample`` and ``detrend`` get ``axis`` automatically: the axis as it is at
    their position, after earlier ``trim``/``resample`` steps; the config never repeats it.
    ``axis`` (values of the input columns) may be None only without ``trim``/``resample``
    steps; ``detrend`` then fits against the point index. Pipeline step names are the config names,
    with ``_2``, ``_3`` ... for repeats. An empty list gives a pass-through Pipeline.

    Raises PreprocessingError (a SoilCarbonError) naming the step, e.g.
    ``preprocessing step 2 (savgol): SavitzkyGolay: window_length must be an odd integer ...``.
    """
    if not isinstance(steps, (list, tuple)):
        raise PreprocessingError(f"preprocessing: steps must be a list of {{'name': ...}} dicts, got {type(steps).__name__}")
    current = None if axis is None else _check_axis(axis, "preprocessing", "the spectral axis")
    named: list[tuple[str, object]] = []
    counts: dict[str, int] = {}
    for number, spec in enumerate(steps, start=1):
        label = spec.get("name") if isinstance(spec, dict) else None
        where = f"preprocessing step {number}" + (f" ({label})" if isinstance(label, str) else "")
        if not isinstance(spec, dict) or not isinstance(label, str):
            raise PreprocessingError(f"{where}: each step must be a dict with a 'name' (one of {', '.join(STEP_NAMES)})")
        name = label.strip().lower()
        if name not in STEP_NAMES:
            raise PreprocessingError(f"{where}: unknown step name {label!r}; use one of {', '.join(STEP_NAMES)}")
        params = {k: v for k, v in spec.items() if k != "name"}
        try:
            step, current = _make_step(name, params, current)
        except SoilCarbonError as exc:
            raise PreprocessingError(f"{where}: {exc}") from None
        counts[name] = counts.get(name, 0) + 1
        named.append((name if counts[name] == 1 else f"{name}_{counts[name]}", step))
    return SpectralPipeline(named or [("passthrough", "passthrough")])


def _make_step(name: str, params: dict, axis: np.ndarray | None):
    """One configured transformer and the axis after it."""
    cls = STEP_NAMES[name]
    allowed = [p for p in cls._get_param_names() if not (name in _AXIS_STEPS and p == "axis")]
    if name == "resample":
        allowed = ["new_axis", "start", "end", "step"]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        hint = " (the axis is given automatically)" if "axis" in unknown and name in _AXIS_STEPS else ""
        raise PreprocessingError(
            f"unknown parameter(s) {', '.join(unknown)}{hint}; allowed: {', '.join(allowed) or 'none'}"
        )
    if name in ("trim", "resample") and axis is None:
        raise PreprocessingError("needs the spectral axis, but none was given")
    if name == "resample":
        params = {"new_axis": _resample_grid(params, axis)}
    if name in _AXIS_STEPS and axis is not None:
        params = {**params, "axis": axis}
    step = cls(**params)
    step._check_params()
    if name == "trim":
        axis = axis[_trim_support(axis, step.start, step.end, "Trim")]
    elif name == "resample":
        axis = _check_axis(step.new_axis, "Resample", "new_axis")
    return step, axis


def _resample_grid(params: dict, axis: np.ndarray | None = None) -> np.ndarray:
    if "new_axis" in params:
        if set(params) != {"new_axis"}:
            raise PreprocessingError("give either new_axis or start, end and step, not both")
        return np.asarray(_check_axis(params["new_axis"], "Resample", "new_axis"))
    if axis is not None and "step" in params and _is_number(params["step"]) and params["step"] > 0:
        # start/end default to the multiples of step inside the current axis, in its direction
        step = params["step"]
        low, high = np.ceil(np.min(axis) / step) * step, np.floor(np.max(axis) / step) * step
        first, last = (low, high) if axis[-1] > axis[0] else (high, low)
        params = {"start": first, "end": last, **params}
    missing = [k for k in ("start", "end", "step") if k not in params]
    if missing:
        raise PreprocessingError(f"needs new_axis, or start, end and step (missing: {', '.join(missing)})")
    start, end, step = params["start"], params["end"], params["step"]
    if not all(_is_number(v) for v in (start, end, step)) or step <= 0:
        raise PreprocessingError(f"start, end and step must be numbers with step > 0, got {start!r}, {end!r}, {step!r}")
    count = int(np.floor(abs(end - start) / step + 1e-9)) + 1
    return start + np.sign(end - start or 1) * step * np.arange(count)
