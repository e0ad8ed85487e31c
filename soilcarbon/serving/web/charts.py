"""Geometry of the page's two charts, drawn as inline SVG by the templates (no JavaScript library).

- :func:`interval_chart`: every prediction with its interval, samples sorted by prediction,
  out-of-domain samples marked (red, square) and named in a tooltip.
- :func:`spectra_chart`: the uploaded spectra on the model's axis (as the model saw them),
  out-of-domain spectra drawn last, in red, over the others.

Axis ticks come from matplotlib's ``MaxNLocator`` (the "nice numbers" of its plots).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

WIDTH, HEIGHT = 720, 300
LEFT, RIGHT, TOP, BOTTOM = 64, 12, 12, 44
MAX_POINTS = 240  # points per spectrum line
MAX_IN_DOMAIN_LINES = 300


def _ticks(low: float, high: float, n: int = 6) -> list[float]:
    from matplotlib.ticker import MaxNLocator

    if not np.isfinite(low) or not np.isfinite(high):
        return []
    if high <= low:
        low, high = low - 0.5, high + 0.5
    return [float(t) for t in MaxNLocator(n).tick_values(low, high) if low <= t <= high]


def _scale(low: float, high: float, start: float, stop: float):
    span = (high - low) or 1.0
    return lambda v: start + (np.asarray(v, dtype=float) - low) / span * (stop - start)


def _frame(x_low, x_high, y_low, y_high, x_reverse=False) -> tuple:
    x_from, x_to = (WIDTH - RIGHT, LEFT) if x_reverse else (LEFT, WIDTH - RIGHT)
    return _scale(x_low, x_high, x_from, x_to), _scale(y_low, y_high, HEIGHT - BOTTOM, TOP)


def _label(value: float) -> str:
    return f"{value:.6g}"


def interval_chart(frame: pd.DataFrame, value_label: str) -> dict | None:
    """Marks of predictions with intervals; None when nothing was predicted."""
    done = frame.dropna(subset=["prediction"]).sort_values("prediction", kind="stable")
    if done.empty:
        return None
    low = float(np.nanmin(done[["lower", "prediction"]].to_numpy()))
    high = float(np.nanmax(done[["upper", "prediction"]].to_numpy()))
    pad = (high - low) * 0.05 or 0.5
    low, high = low - pad, high + pad
    sx, sy = _frame(-0.5, len(done) - 0.5, low, high)
    xs = sx(np.arange(len(done)))
    marks = [
        {"x": float(x), "y": float(sy(p)), "y_low": float(sy(lo)), "y_high": float(sy(hi)), "ood": not bool(dom),
         "title": f"{sid}: {p:.4g} [{lo:.4g}, {hi:.4g}]" + ("" if dom else ", out of domain")}
        for x, sid, p, lo, hi, dom in zip(xs, done["sample_id"], done["prediction"], done["lower"], done["upper"],
                                            done["in_domain"])
    ]
    y_ticks = [{"y": float(sy(t)), "text": _label(t)} for t in _ticks(low, high)]
    return {"width": WIDTH, "height": HEIGHT, "left": LEFT, "right": WIDTH - RIGHT, "top": TOP,
            "bottom": HEIGHT - BOTTOM, "marks": marks, "y_ticks": y_ticks, "x_ticks": [],
            "x_label": f"{len(done)} samples, sorted by prediction", "y_label": value_label,
            "n_ood": sum(m["ood"] for m in marks)}


def spectra_chart(axis: np.ndarray, unit: str, values: np.ndarray, ids, in_domain: np.ndarray) -> dict | None:
    """Lines of the spectra ``values`` (n, len(axis)); rows that are all NaN are left out."""
    values = np.asarray(values, dtype=float)
    keep = ~np.isnan(values).all(axis=1) if values.size else np.zeros(0, dtype=bool)
    if not keep.any():
        return None
    step = max(1, int(np.ceil(len(axis) / MAX_POINTS)))
    columns = np.unique(np.r_[np.arange(0, len(axis), step), len(axis) - 1])
    x_values = np.asarray(axis, dtype=float)[columns]
    block = values[keep][:, columns]
    names = np.asarray([str(i) for i in ids], dtype=object)[keep]
    flags = np.asarray(in_domain, dtype=bool)[keep]
    y_low, y_high = float(np.nanmin(block)), float(np.nanmax(block))
    pad = (y_high - y_low) * 0.04 or 0.5
    y_low, y_high = y_low - pad, y_high + pad
    x_low, x_high = float(x_values.min()), float(x_values.max())
    sx, sy = _frame(x_low, x_high, y_low, y_high, x_reverse=(unit == "cm-1"))
    px = sx(x_values)

    def line(row) -> str:
        py = sy(row)
        ok = np.isfinite(py)
        return " ".join(f"{x:.1f},{y:.1f}" for x, y in zip(px[ok], py[ok]))

    inside = np.flatnonzero(flags)[:MAX_IN_DOMAIN_LINES]
    outside = np.flatnonzero(~flags)
    lines = [{"points": line(block[i]), "ood": False, "title": names[i]} for i in inside]
    lines += [{"points": line(block[i]), "ood": True, "title": f"{names[i]} (out of domain)"} for i in outside]
    unit_text = "cm⁻¹" if unit == "cm-1" else unit
    return {"width": WIDTH, "height": HEIGHT, "left": LEFT, "right": WIDTH - RIGHT, "top": TOP,
            "bottom": HEIGHT - BOTTOM, "lines": lines,
            "x_ticks": [{"x": float(sx(t)), "text": _label(t)} for t in _ticks(x_low, x_high)],
            "y_ticks": [{"y": float(sy(t)), "text": _label(t)} for t in _ticks(y_low, y_high)],
            "x_label": f"{'wavenumber' if unit == 'cm-1' else 'wavelength'} ({unit_text})",
            "y_label": "absorbance (as read)", "n_ood": int(len(outside)), "n_lines": int(keep.sum()),
            "n_shown": len(lines)}
