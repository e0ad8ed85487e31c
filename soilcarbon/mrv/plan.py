"""How many cores per field a campaign needs for a field-mean interval of a given half-width.

From a pilot campaign, per field: the spread s and skewness of the core stocks, the independent
measurement variance per core (prediction, bulk density and coarse-fraction errors; Monte Carlo)
and the shared model-bias variance of the mean (which no number of cores removes). For n cores,
se²(n) = (s² + v_core)/n + v_shared, the estimator skewness is γ·s³/(n²·se³), and the interval is
the skew-corrected one of :mod:`soilcarbon.mrv.stocks`; the answer is the smallest n whose larger
half-width is within the target (cf. the sample-size rule n = (t·s/h)² of Cochran 1977,
Sampling Techniques, ch. 4, here with skew, measurement and shared errors).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from soilcarbon.errors import SoilCarbonError
from soilcarbon.mrv.stocks import skew_interval

MAX_N = 100_000


def parse_halfwidth(text: str) -> tuple[float, bool]:
    """``"10%"`` -> (0.10, relative); ``"2.5"`` -> (2.5 t/ha, absolute)."""
    raw = str(text).strip()
    relative = raw.endswith("%")
    try:
        value = float(raw.rstrip("%").strip())
    except ValueError:
        raise SoilCarbonError(f"--target-halfwidth must be a number of t C/ha or a percentage of the mean "
                              f"(e.g. 10%), got {text!r}") from None
    if not value > 0:
        raise SoilCarbonError(f"--target-halfwidth must be positive, got {text!r}")
    return (value / 100.0 if relative else value), relative


def halfwidth(n: int, s2: float, v_core: float, v_shared: float, third: float, level: float) -> float:
    """Larger half-width of the field-mean interval with ``n`` cores."""
    var = (s2 + v_core) / n + v_shared
    lower, upper = skew_interval(0.0, var, third / n ** 2, n - 1, level)
    return float(max(-lower, upper))


def plan(groups: dict, shared_var: dict, target: float, relative: bool, level: float) -> pd.DataFrame:
    """One row per field of the pilot: ``field, campaign, n_pilot, stock_t_ha, sd_t_ha, skewness,
    target_halfwidth_t_ha, n_needed, halfwidth_t_ha`` (``n_needed`` empty when the shared model
    error alone exceeds the target)."""
    rows = []
    for (name, campaign), group in sorted(groups.items()):
        x = group.values["fixed"]
        n0 = len(x)
        if n0 < 3:
            raise SoilCarbonError(f"pilot field {name!r} (campaign {campaign!r}) has {n0} cores; a plan needs at least 3")
        mean, s2 = float(x.mean()), float(x.var(ddof=1))
        third = float(np.mean((x - mean) ** 3))
        v_shared = float(shared_var.get((name, campaign), 0.0))
        v_core = max(float(group.draws["fixed"].var()) - v_shared, 0.0) * n0
        goal = target * mean if relative else target
        needed, width = None, float("nan")
        if halfwidth(MAX_N, s2, v_core, v_shared, third, level) <= goal:
            lo, hi = 2, MAX_N
            while lo < hi:  # the half-width decreases with n
                mid = (lo + hi) // 2
                if halfwidth(mid, s2, v_core, v_shared, third, level) <= goal:
                    hi = mid
                else:
                    lo = mid + 1
            needed, width = lo, halfwidth(lo, s2, v_core, v_shared, third, level)
        rows.append({"field": name, "campaign": campaign, "n_pilot": n0, "stock_t_ha": mean, "sd_t_ha": np.sqrt(s2),
                     "skewness": third / s2 ** 1.5 if s2 > 0 else 0.0, "target_halfwidth_t_ha": goal,
                     "n_needed": needed, "halfwidth_t_ha": width, "level": level})
    return pd.DataFrame(rows)
