"""SOC stocks per field and campaign, their change (fixed depth and equivalent soil mass) and
project totals, with intervals a verifier can check.

Per layer: stock [t C/ha] = SOC [%] × bulk density [g/cm³] × thickness [cm] × (1 − coarse
fraction) (IPCC 2006 Guidelines, vol. 4 ch. 2, with the coarse-fragment correction of
Poeplau, Vos & Don 2017, SOIL 3:61-66); g/kg is divided by 10 first; the layers of a core add up.
A field's stock is the arithmetic mean of its cores' stocks.

Uncertainty of a field mean x̄ (n cores), and of any area-weighted sum or difference of field
means (changes, project totals), has two parts that are added:

- **sampling**: the cores are a sample of the field: variance s²/n, third central moment m₃/n²
  of the core values;
- **measurement** (Monte Carlo, ``draws`` draws): each layer's SOC drawn from its prediction
  interval (a split normal when the interval is asymmetric), bulk density and coarse fraction
  from their standard deviations, plus a bias **shared by every sample of one model version**
  (drawn once per draw and model version): a normal with standard deviation
  √(mean(r)² + var(r)/n_r) from the version's out-of-fold residuals r. Independent errors
  shrink as 1/n in a mean; the shared one does not, and in a change it cancels only as far as
  the soil masses of the two campaigns are equal (the same draw applies to both).

The interval uses Hall's (1992) skewness-corrected Studentized statistic (P. Hall, "On the
removal of skewness by transformation", JRSS B 54:221-228; as used for the mean of skewed data by
Zhou & Dinh 2005, Biostatistics 6:591-600): with estimator skewness κ = (third moment)/se³,
g(T) = T + κT²/3 + κ²T³/27 + κ/6 is approximately t-distributed, so the bounds are
θ̂ − se·g⁻¹(t_{1−α/2}) and θ̂ − se·g⁻¹(t_{α/2}), with Welch–Satterthwaite degrees of freedom.
Right-skewed SOC populations thus get longer upper arms; at κ = 0 it is the t-interval.
Nothing was tuned (no free parameter).

The spread s² of predicted stocks already holds part of the independent prediction errors, so
adding them again is conservative (as is the t-interval baseline of ``benchmarks/stock_coverage.py``).
Between campaigns, cores are treated as independent samples (new locations each campaign).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

from soilcarbon.errors import SoilCarbonError
from soilcarbon.mrv.esm import esm_carbon

BATCH_VALUES = 1_000_000  # Monte Carlo values per array and batch (draws × layers): bounds memory


def layer_stock(soc_percent, bulk_density, thickness_cm, coarse_fraction=0.0):
    """SOC stock in t C/ha of a layer: SOC % × BD g/cm³ × thickness cm × (1 − coarse fraction)."""
    return np.asarray(soc_percent) * np.asarray(bulk_density) * np.asarray(thickness_cm) * (1 - np.asarray(coarse_fraction))


def soil_mass(bulk_density, thickness_cm, coarse_fraction=0.0):
    """Mineral (fine) soil mass of a layer in t/ha."""
    return 100.0 * np.asarray(bulk_density) * np.asarray(thickness_cm) * (1 - np.asarray(coarse_fraction))


def shared_bias_sd(residuals) -> float:
    """Standard deviation of the shared (calibration) bias from out-of-fold residuals:
    √(mean² + variance/n), the bias estimate's root mean square around zero."""
    r = np.asarray(residuals, dtype=float)
    r = r[np.isfinite(r)]
    if len(r) < 2:
        raise SoilCarbonError("the model version has fewer than 2 out-of-fold residuals; cannot estimate its bias")
    return float(np.sqrt(r.mean() ** 2 + r.var(ddof=1) / len(r)))


def skew_bound(estimate: float, var: float, third: float, df: float, prob: float) -> float:
    """The ``prob`` quantile of the estimate's sampling distribution under Hall's (1992)
    skewness-corrected Studentized statistic (see the module docstring)."""
    if not np.isfinite(var) or var < 0:
        return float("nan")
    se = float(np.sqrt(var))
    if se == 0:
        return float(estimate)
    kappa = float(third) / se ** 3 if np.isfinite(third) else 0.0
    t = stats.t.ppf(1.0 - prob, df) if np.isfinite(df) and df > 0 else stats.norm.ppf(1.0 - prob)
    if abs(kappa) < 1e-12:
        w = t
    else:
        w = 3.0 / kappa * (np.cbrt(1.0 + kappa * (t - kappa / 6.0)) - 1.0)
    return float(estimate - se * w)


def skew_interval(estimate: float, var: float, third: float, df: float, level: float) -> tuple[float, float]:
    """Central ``level`` interval (asymmetric under skew) of :func:`skew_bound`."""
    alpha = 1.0 - level
    return skew_bound(estimate, var, third, df, alpha / 2), skew_bound(estimate, var, third, df, 1 - alpha / 2)


@dataclass
class Group:
    """The cores of one field in one campaign: point values and Monte Carlo draws of the mean."""

    field: str
    campaign: str
    values: dict  # basis ("fixed", "esm") -> core values (n,)
    draws: dict  # basis -> draws of the field mean (D,)
    model_uris: list = field(default_factory=list)
    mass: float = float("nan")  # mean soil mass per core, t/ha

    @property
    def n(self) -> int:
        return len(self.values["fixed"])


@dataclass
class Estimate:
    estimate: float
    var: float
    third: float
    df: float

    def interval(self, level: float) -> tuple[float, float]:
        return skew_interval(self.estimate, self.var, self.third, self.df, level)

    def bound(self, prob: float) -> float:
        return skew_bound(self.estimate, self.var, self.third, self.df, prob)

    @property
    def se(self) -> float:
        return float(np.sqrt(self.var))


def combine(terms: list[tuple[float, Group]], basis: str = "fixed") -> Estimate:
    """Σ wᵢ·x̄ᵢ over field means: sampling variance and third moment add over independent
    groups; the Monte Carlo draws are summed draw by draw (keeping the shared bias's correlation)."""
    estimate, var_s, third_s, welch = 0.0, 0.0, 0.0, 0.0
    draws = 0.0
    for weight, group in terms:
        x = group.values[basis]
        n = len(x)
        if n < 2:
            raise SoilCarbonError(f"field {group.field!r} (campaign {group.campaign!r}) has {n} core; a field mean's "
                                  "interval needs at least 2 cores")
        estimate += weight * x.mean()
        v = weight ** 2 * x.var(ddof=1) / n
        var_s += v
        welch += v ** 2 / (n - 1)
        third_s += weight ** 3 * np.mean((x - x.mean()) ** 3) / n ** 2
        draws = draws + weight * group.draws[basis]
    draws = np.asarray(draws, dtype=float)
    var_m = float(draws.var()) if draws.size > 1 else 0.0
    third_m = float(np.mean((draws - draws.mean()) ** 3)) if draws.size > 1 else 0.0
    var = var_s + var_m
    # Welch–Satterthwaite; the Monte Carlo part is known (infinite degrees of freedom)
    df = var ** 2 / welch if welch > 0 else float("inf")
    return Estimate(float(estimate), float(var), float(third_s + third_m), float(df))


def simulate(layers: pd.DataFrame, shared_sd: dict, draws: int, seed: int | None) -> dict:
    """Point values and Monte Carlo draws of each (field, campaign) group's mean stock, fixed depth
    and equivalent soil mass. ``layers`` needs the columns of :func:`soilcarbon.mrv.tables.join_predictions`;
    ``shared_sd``: model URI -> shared bias sd in % SOC."""
    if draws < 100:
        raise SoilCarbonError(f"--draws must be at least 100, got {draws}")
    layers = layers.sort_values(["field", "campaign", "core", "top_cm"], kind="stable").reset_index(drop=True)
    thickness = (layers["bottom_cm"] - layers["top_cm"]).to_numpy()
    core_key = layers["field"].astype(str) + "\x00" + layers["campaign"].astype(str) + "\x00" + layers["core"].astype(str)
    starts = np.flatnonzero(np.r_[True, core_key.to_numpy()[1:] != core_key.to_numpy()[:-1]])
    cores = layers.iloc[starts][["field", "campaign", "core", "model_uri"]].reset_index(drop=True)
    group_key = (cores["field"].astype(str) + "\x00" + cores["campaign"].astype(str)).to_numpy()
    group_starts = np.flatnonzero(np.r_[True, group_key[1:] != group_key[:-1]])
    counts = np.diff(np.r_[group_starts, len(cores)])

    soc, bd, cf = (layers[c].to_numpy(dtype=float) for c in ("soc", "bd", "cf"))
    mass = soil_mass(bd, thickness, cf)
    carbon = soc / 100.0 * mass
    core_mass = np.add.reduceat(mass, starts)
    reference = cores.assign(mass=core_mass).groupby("field")["mass"].transform("min").to_numpy()
    fixed_point = np.add.reduceat(carbon, starts)
    esm_point = esm_carbon(mass, carbon, starts, reference)

    uris = sorted({u for u in layers["model_uri"] if u})
    model_index = np.array([uris.index(u) + 1 if u else 0 for u in layers["model_uri"]])
    sds = np.array([0.0] + [shared_sd.get(u, 0.0) for u in uris])
    rng = np.random.default_rng(seed)
    fixed_draws, esm_draws = [], []
    batch = max(1, min(draws, BATCH_VALUES // max(len(layers), 1)))
    for start in range(0, draws, batch):
        b = min(batch, draws - start)
        e = rng.standard_normal((b, len(layers)))
        bias = rng.standard_normal((b, len(sds))) * sds
        s = soc + np.where(e < 0, e * layers["sd_low"].to_numpy(), e * layers["sd_high"].to_numpy()) + bias[:, model_index]
        s = np.maximum(s, 0.0)
        d = np.clip(bd + rng.standard_normal((b, len(layers))) * layers["bd_sd"].to_numpy(), 0.01, 2.65)
        c = np.clip(cf + rng.standard_normal((b, len(layers))) * layers["cf_sd"].to_numpy(), 0.0, 0.99)
        m = soil_mass(d, thickness, c)
        carb = s / 100.0 * m
        fixed = np.add.reduceat(carb, starts, axis=1)
        esm = esm_carbon(m, carb, starts, reference)
        fixed_draws.append(np.add.reduceat(fixed, group_starts, axis=1) / counts)
        esm_draws.append(np.add.reduceat(esm, group_starts, axis=1) / counts)
    fixed_draws, esm_draws = np.vstack(fixed_draws), np.vstack(esm_draws)
    groups = {}
    for g, (first, count) in enumerate(zip(group_starts, counts)):
        rows = slice(first, first + count)
        key = (str(cores.loc[first, "field"]), str(cores.loc[first, "campaign"]))
        groups[key] = Group(key[0], key[1], {"fixed": fixed_point[rows], "esm": esm_point[rows]},
                            {"fixed": fixed_draws[:, g], "esm": esm_draws[:, g]},
                            sorted({u for u in cores["model_uri"].iloc[rows] if u}), float(core_mass[rows].mean()))
    return groups


def campaign_order(campaigns) -> list[str]:
    """Campaign labels in time order: ``baseline`` first, then sorted (years sort as text)."""
    labels = sorted(set(map(str, campaigns)))
    if "baseline" in labels:
        labels.remove("baseline")
        labels.insert(0, "baseline")
    return labels


@dataclass
class StockResult:
    fields: pd.DataFrame
    changes: pd.DataFrame
    project: dict
    notes: list = field(default_factory=list)


def summarize(groups: dict, areas: dict | None, level: float, credit_quantile: float = 0.10,
              credit_basis: str = "esm", strata: dict | None = None) -> StockResult:
    """Field table, change table and project totals (and per stratum, when ``strata`` maps fields
    to strata) from :func:`simulate`'s groups."""
    if not 0 < credit_quantile < 0.5:
        raise SoilCarbonError(f"--credit-quantile must be between 0 and 0.5, got {credit_quantile:g}")
    rows = []
    for (name, campaign), group in sorted(groups.items()):
        est = combine([(1.0, group)])
        lower, upper = est.interval(level)
        row = {"field": name, "campaign": campaign, "n": group.n, "stock_t_ha": est.estimate,
               "lower_t_ha": lower, "upper_t_ha": upper, "level": level}
        if areas is not None:
            area = areas[name]
            row.update({"area_ha": area, "total_t": area * est.estimate, "total_lower_t": area * lower,
                        "total_upper_t": area * upper})
        rows.append(row)
    fields = pd.DataFrame(rows)
    order = campaign_order(fields["campaign"])
    fields = fields.sort_values(["field", "campaign"], key=lambda c: c.map(order.index) if c.name == "campaign" else c,
                                kind="stable").reset_index(drop=True)
    change_rows, project = [], {"level": level, "campaigns": order}
    by_field = {}
    for (name, campaign), group in groups.items():
        by_field.setdefault(name, {})[campaign] = group
    for later in order[1:]:
        first = order[0]
        for basis in ("fixed", "esm"):
            for name in sorted(by_field):
                if first not in by_field[name] or later not in by_field[name]:
                    continue
                est = combine([(1.0, by_field[name][later]), (-1.0, by_field[name][first])], basis)
                lower, upper = est.interval(level)
                row = {"field": name, "from": first, "to": later, "basis": basis, "change_t_ha": est.estimate,
                       "lower_t_ha": lower, "upper_t_ha": upper, "se_t_ha": est.se, "level": level}
                if areas is not None:
                    a = areas[name]
                    row.update({"area_ha": a, "change_t": a * est.estimate, "lower_t": a * lower, "upper_t": a * upper})
                change_rows.append(row)
    changes = pd.DataFrame(change_rows)
    if areas is not None:
        project["totals"] = []
        for campaign in order:
            terms = [(areas[name], g) for (name, c), g in groups.items() if c == campaign]
            est = combine(terms)
            lower, upper = est.interval(level)
            project["totals"].append({"campaign": campaign, "fields": len(terms),
                                      "area_ha": float(sum(w for w, _ in terms)), "total_t": est.estimate,
                                      "lower_t": lower, "upper_t": upper})
        labels = sorted({strata.get(name, "") for name, _ in groups} - {""}) if strata else []
        if labels:
            project["strata"] = []
            for label in labels:
                for campaign in order:
                    terms = [(areas[name], g) for (name, c), g in groups.items()
                             if c == campaign and strata.get(name, "") == label]
                    if not terms:
                        continue
                    est = combine(terms)
                    lower, upper = est.interval(level)
                    project["strata"].append({"stratum": label, "campaign": campaign, "fields": len(terms),
                                              "area_ha": float(sum(w for w, _ in terms)), "total_t": est.estimate,
                                              "lower_t": lower, "upper_t": upper})
        project["changes"] = []
        for later in order[1:]:
            for basis in ("fixed", "esm"):
                names = [n for n in sorted(by_field) if order[0] in by_field[n] and later in by_field[n]]
                if not names:
                    continue
                total_area = float(sum(areas[n] for n in names))
                terms = []
                for n in names:
                    terms += [(areas[n], by_field[n][later]), (-areas[n], by_field[n][order[0]])]
                total = combine(terms, basis)
                lower, upper = total.interval(level)
                entry = {"from": order[0], "to": later, "basis": basis, "fields": len(names), "area_ha": total_area,
                         "mean_change_t_ha": total.estimate / total_area, "se_t_ha": total.se / total_area,
                         "total_change_t": total.estimate, "lower_t": lower, "upper_t": upper,
                         "credit_quantile": credit_quantile}
                entry["credited_change_t"] = total.bound(credit_quantile)
                entry["credited_change_t_co2e"] = entry["credited_change_t"] * 44.0 / 12.0
                entry["credited"] = basis == credit_basis
                project["changes"].append(entry)
    return StockResult(fields, changes, project)
