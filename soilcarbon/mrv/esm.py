"""Equivalent soil mass (ESM): SOC stock in a fixed mass of mineral soil instead of a fixed depth.

A change in bulk density (tillage, compaction) moves soil across a fixed depth and fakes a stock
change; comparing the SOC in the same mass of mineral soil removes that artefact (von Haden,
Yang & DeLucia 2020, "Soils' dirty little secret: depth-based comparisons can be inadequate for
quantifying changes in soil organic carbon and other mineral soil properties", Global Change
Biology 26:3759-3770). Per core, the cumulative mineral soil mass (t/ha, stones excluded) and
cumulative SOC (t/ha) are taken at each layer's bottom, with (0, 0) at the surface; the SOC at
the reference mass is read from a monotone cubic spline through these points (Fritsch & Carlson
1980, the PCHIP interpolant von Haden et al. use), extended linearly with the deepest layer's
concentration when a core holds less soil than the reference mass.

Reference mass: per field, the smallest total mineral soil mass among the field's cores of the
campaigns compared, so that no core is extrapolated at its point values.

:func:`pchip_at` is our own because the Monte Carlo needs the spline of thousands of cores ×
draws, each with its own knots (bulk density is drawn too), at one point each;
``scipy.interpolate.PchipInterpolator`` builds one object per curve. It follows SciPy's
derivative rules and is tested against it.
"""

from __future__ import annotations

import numpy as np


def _end_slope(h0, h1, d0, d1):
    """SciPy's one-sided three-point end derivative, kept shape-preserving."""
    slope = ((2 * h0 + h1) * d0 - h0 * d1) / (h0 + h1)
    slope = np.where(np.sign(slope) != np.sign(d0), 0.0, slope)
    return np.where((np.sign(d0) != np.sign(d1)) & (np.abs(slope) > np.abs(3 * d0)), 3 * d0, slope)


def pchip_at(x: np.ndarray, y: np.ndarray, xq: np.ndarray) -> np.ndarray:
    """Monotone cubic (PCHIP) interpolant through knots ``x, y`` (shape ``(..., m)``, ``x``
    increasing, m ≥ 2) evaluated at ``xq`` (shape ``(...)``); beyond the last knot it continues
    with the last interval's secant slope, below the first with the first's."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    xq = np.asarray(xq, float)
    h = np.diff(x, axis=-1)
    delta = np.diff(y, axis=-1) / h
    m = x.shape[-1]
    slopes = np.empty_like(x)
    if m == 2:
        slopes[..., 0] = slopes[..., 1] = delta[..., 0]
    else:
        w1 = 2 * h[..., 1:] + h[..., :-1]
        w2 = h[..., 1:] + 2 * h[..., :-1]
        same = np.sign(delta[..., :-1]) * np.sign(delta[..., 1:]) > 0
        with np.errstate(divide="ignore", invalid="ignore"):
            harmonic = (w1 + w2) / (w1 / delta[..., :-1] + w2 / delta[..., 1:])
        slopes[..., 1:-1] = np.where(same, harmonic, 0.0)
        slopes[..., 0] = _end_slope(h[..., 0], h[..., 1], delta[..., 0], delta[..., 1])
        slopes[..., -1] = _end_slope(h[..., -1], h[..., -2], delta[..., -1], delta[..., -2])
    k = np.clip((xq[..., None] >= x[..., 1:-1]).sum(axis=-1), 0, m - 2)[..., None]
    x0, x1 = np.take_along_axis(x, k, -1)[..., 0], np.take_along_axis(x, k + 1, -1)[..., 0]
    y0, y1 = np.take_along_axis(y, k, -1)[..., 0], np.take_along_axis(y, k + 1, -1)[..., 0]
    s0, s1 = np.take_along_axis(slopes, k, -1)[..., 0], np.take_along_axis(slopes, k + 1, -1)[..., 0]
    hk = x1 - x0
    t = (xq - x0) / hk
    inside = (t * t * (3 - 2 * t)) * (y1 - y0) + hk * t * (1 - t) * ((1 - t) * s0 - t * s1) + y0
    secant = (y1 - y0) / hk
    above = y1 + (xq - x1) * np.take_along_axis(delta, np.full_like(k, m - 2), -1)[..., 0]
    below = y0 + (xq - x0) * secant
    return np.where(xq > x[..., -1], above, np.where(xq < x[..., 0], below, inside))


def esm_carbon(mass: np.ndarray, carbon: np.ndarray, starts: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """SOC (t/ha) of each core in its reference mass of mineral soil.

    ``mass``/``carbon``: mineral soil mass and SOC (t/ha) per layer on the last axis (leading axes:
    Monte Carlo draws), the layers of one core contiguous and ordered by depth, core ``i`` starting
    at ``starts[i]``; ``reference``: the reference mass (t/ha) of each core. Returns shape
    ``(..., n_cores)``.
    """
    n_layers = mass.shape[-1]
    counts = np.diff(np.append(starts, n_layers))
    out = np.empty(mass.shape[:-1] + (len(starts),))
    for count in np.unique(counts):
        cores = np.flatnonzero(counts == count)
        rows = starts[cores][:, None] + np.arange(count)[None, :]  # (cores, count)
        zeros = np.zeros(mass.shape[:-1] + (len(cores), 1))
        xs = np.concatenate([zeros, np.cumsum(mass[..., rows], axis=-1)], axis=-1)
        ys = np.concatenate([zeros, np.cumsum(carbon[..., rows], axis=-1)], axis=-1)
        out[..., cores] = pchip_at(xs, ys, np.broadcast_to(reference[cores], xs.shape[:-1]))
    return out
