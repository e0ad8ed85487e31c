"""Reading and checking the tables of a stocks computation: samples (depth layers of cores, bulk
density, coarse fraction, field, campaign), fields (areas) and predictions (the output of
``soilcarbon predict``), joined into one layer table.

Every problem a user can cause raises :class:`~soilcarbon.errors.SoilCarbonError` naming the
file, the line (header = line 1) and the column, before anything is written.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

from soilcarbon.errors import SoilCarbonError
from soilcarbon.spectral.lab import read_lab

MAX_BULK_DENSITY = 2.65  # g/cm³, the particle density of quartz: no soil is denser
UNITS = {"%": 1.0, "g/kg": 0.1}  # factor to % (mass percent)
SAMPLE_COLUMNS = ("sample_id", "field", "top_cm", "bottom_cm", "bulk_density_g_cm3")
PREDICTION_COLUMNS = ("sample_id", "prediction", "lower", "upper", "level")
SHOW = 5


def listed(values, limit: int = SHOW) -> str:
    values = [str(v) for v in values]
    more = f" and {len(values) - limit} more" if len(values) > limit else ""
    return ", ".join(values[:limit]) + more


def _lines(mask) -> str:
    """File lines (header = 1) of the rows where ``mask`` is true."""
    return listed((np.flatnonzero(np.asarray(mask)) + 2).tolist())


def soc_unit_factor(unit: str | None, source: str) -> float:
    """Factor from the SOC unit to mass percent; an unknown unit is an error, never a guess."""
    text = (unit or "").strip()
    if text not in UNITS:
        raise SoilCarbonError(f"{source}: SOC unit {text or '(none)'!r} is not known; pass --unit % or --unit g/kg")
    return UNITS[text]


def _numeric(frame: pd.DataFrame, column: str, source: str, default=None) -> np.ndarray:
    if column not in frame.columns:
        if default is None:
            raise SoilCarbonError(f"{source}: column {column!r} is missing (columns: {listed(frame.columns, 12)})")
        return np.full(len(frame), float(default))
    values = pd.to_numeric(frame[column], errors="coerce")
    bad = values.isna() & frame[column].notna()
    if bad.any():
        raise SoilCarbonError(f"{source}: column {column!r} is not numeric on line(s) {_lines(bad)}")
    if default is not None:
        values = values.fillna(float(default))
    return values.to_numpy(dtype=float)


def _labels(frame: pd.DataFrame, column: str, default: str) -> np.ndarray:
    if column not in frame.columns:
        return np.full(len(frame), default, dtype=object)
    values = frame[column].astype("string").str.strip()
    return values.fillna(default).replace("", default).astype(object).to_numpy()


def read_samples(path, measured: str | None = None) -> pd.DataFrame:
    """The samples table, checked: one row per depth layer, columns ``sample_id, field, campaign,
    core, top_cm, bottom_cm, bd, bd_sd, cf, cf_sd, line`` (and ``measured``: the lab SOC column
    named by ``measured``)."""
    table = read_lab(path, "sample_id", "samples")
    source = str(path)
    for column in SAMPLE_COLUMNS:
        if column not in table.columns:
            raise SoilCarbonError(f"{source}: column {column!r} is missing; the samples table needs "
                                  f"{', '.join(SAMPLE_COLUMNS)}")
    out = pd.DataFrame({"sample_id": table["sample_id"].to_numpy(), "line": np.arange(len(table)) + 2})
    out["field"] = _labels(table, "field", "")
    if (out["field"] == "").any():
        raise SoilCarbonError(f"{source}: column 'field' is empty on line(s) {_lines(out['field'] == '')}")
    out["campaign"] = _labels(table, "campaign", "all")
    out["core"] = _labels(table, "core", "")
    out.loc[out["core"] == "", "core"] = out["sample_id"]
    out["top_cm"] = _numeric(table, "top_cm", source)
    out["bottom_cm"] = _numeric(table, "bottom_cm", source)
    out["bd"] = _numeric(table, "bulk_density_g_cm3", source)
    out["bd_sd"] = _numeric(table, "bulk_density_sd", source, 0.0)
    out["cf"] = _numeric(table, "coarse_fraction", source, 0.0)
    out["cf_sd"] = _numeric(table, "coarse_fraction_sd", source, 0.0)
    checks = [
        (~np.isfinite(out["top_cm"]) | ~np.isfinite(out["bottom_cm"]), "top_cm/bottom_cm", "is missing"),
        (out["top_cm"] < 0, "top_cm", "is negative"),
        (out["top_cm"] >= out["bottom_cm"], "top_cm", "is not above bottom_cm (top_cm must be < bottom_cm)"),
        (~np.isfinite(out["bd"]), "bulk_density_g_cm3", "is missing"),
        (out["bd"] <= 0, "bulk_density_g_cm3", "is not positive"),
        (out["bd"] > MAX_BULK_DENSITY, "bulk_density_g_cm3",
         f"is above {MAX_BULK_DENSITY} g/cm³ (the density of quartz); check the unit"),
        (~((out["cf"] >= 0) & (out["cf"] < 1)), "coarse_fraction", "is outside [0, 1) (a volume fraction)"),
        (~(out["bd_sd"] >= 0), "bulk_density_sd", "is negative"),
        (~(out["cf_sd"] >= 0), "coarse_fraction_sd", "is negative"),
    ]
    for mask, column, what in checks:
        mask = np.asarray(mask, dtype=bool)
        if mask.any():
            raise SoilCarbonError(f"{source}: {column} {what} on line(s) {_lines(mask)}")
    if measured is not None:
        values = _numeric(table, measured, source)
        if not np.isfinite(values).all():
            raise SoilCarbonError(f"{source}: column {measured!r} (--measured) is empty on line(s) "
                                  f"{_lines(~np.isfinite(values))}")
        out["measured"] = values
    _check_cores(out, source)
    return out


def _check_cores(out: pd.DataFrame, source: str) -> None:
    key = ["campaign", "core"]
    fields = out.groupby(key, sort=False)["field"].nunique()
    if (fields > 1).any():
        campaign, core = fields[fields > 1].index[0]
        raise SoilCarbonError(f"{source}: core {core!r} (campaign {campaign!r}) has layers in several fields; "
                              "a core belongs to one field")
    ordered = out.sort_values(key + ["top_cm"], kind="stable")
    same = (ordered[key].to_numpy()[1:] == ordered[key].to_numpy()[:-1]).all(axis=1)
    overlap = same & (ordered["top_cm"].to_numpy()[1:] < ordered["bottom_cm"].to_numpy()[:-1])
    if overlap.any():
        i = int(np.flatnonzero(overlap)[0])
        a, b = ordered.iloc[i], ordered.iloc[i + 1]
        raise SoilCarbonError(f"{source}: layers of core {a['core']!r} overlap: line {a['line']} "
                              f"({a['top_cm']:g}-{a['bottom_cm']:g} cm) and line {b['line']} "
                              f"({b['top_cm']:g}-{b['bottom_cm']:g} cm)")


def read_fields(path) -> pd.DataFrame:
    """The fields table: ``field, area_ha`` (positive) and optional ``stratum``."""
    table = read_lab(path, "field", "fields")
    source = str(path)
    area = _numeric(table, "area_ha", source)
    bad = ~(area > 0)
    if bad.any():
        raise SoilCarbonError(f"{source}: area_ha is missing or not positive on line(s) {_lines(bad)}")
    return pd.DataFrame({"field": table["field"].to_numpy(), "area_ha": area,
                         "stratum": _labels(table, "stratum", "")})


@dataclass
class Joined:
    """The layer table with SOC (in %) and its error model, and what the join left out."""

    layers: pd.DataFrame  # samples columns + soc, sd_low, sd_high (in %), model_uri, in_domain
    out_of_domain: list[str] = field(default_factory=list)
    excluded: list[str] = field(default_factory=list)


def read_predictions(path) -> pd.DataFrame:
    table = read_lab(path, "sample_id", "predictions")
    source = str(path)
    for column in PREDICTION_COLUMNS:
        if column not in table.columns:
            raise SoilCarbonError(f"{source}: column {column!r} is missing; pass the output of `soilcarbon predict`")
    out = pd.DataFrame({"sample_id": table["sample_id"].to_numpy()})
    for column in ("prediction", "lower", "upper", "level"):
        out[column] = _numeric(table, column, source, default=np.nan)
    out["model_uri"] = _labels(table, "model_uri", "")
    if "in_domain" in table.columns:
        flag = table["in_domain"].astype("string").str.strip().str.lower()
        out["in_domain"] = ~flag.isin(["false", "0", "no"]).to_numpy()
    else:
        out["in_domain"] = True
    out.attrs["source"] = source
    return out


def interval_sds(prediction, lower, upper, level) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper standard deviations of a split normal whose central ``level`` interval is
    ``[lower, upper]`` (asymmetric intervals, e.g. of log-scale models, keep their asymmetry)."""
    z = stats.norm.ppf((1.0 + np.asarray(level, dtype=float)) / 2.0)
    low = np.maximum(np.asarray(prediction) - np.asarray(lower), 0.0) / z
    high = np.maximum(np.asarray(upper) - np.asarray(prediction), 0.0) / z
    return low, high


def join_predictions(samples: pd.DataFrame, predictions: pd.DataFrame, factor: float = 1.0, *,
                     exclude_out_of_domain: bool = False, allow_mixed_models: bool = False,
                     samples_source: str = "samples") -> Joined:
    """Join predictions to layers by ``sample_id``; SOC and its errors (``soc, sd_low, sd_high``)
    multiplied by ``factor`` (to %)."""
    source = predictions.attrs.get("source", "predictions")
    missing = sorted(set(samples["sample_id"]) - set(predictions["sample_id"]))
    if missing:
        raise SoilCarbonError(f"{source}: {len(missing)} sample(s) of {samples_source} have no prediction: "
                              f"{listed(missing)}")
    extra = sorted(set(predictions["sample_id"]) - set(samples["sample_id"]))
    if extra:
        raise SoilCarbonError(f"{samples_source}: {len(extra)} predicted sample(s) of {source} are not in the samples "
                              f"table: {listed(extra)}")
    layers = samples.merge(predictions, on="sample_id", how="left", validate="one_to_one")
    empty = ~np.isfinite(layers[["prediction", "lower", "upper"]].to_numpy()).all(axis=1)
    if empty.any():
        raise SoilCarbonError(f"{source}: {int(empty.sum())} sample(s) have no prediction or interval: "
                              f"{listed(layers.loc[empty, 'sample_id'])}")
    bad_level = ~((layers["level"] > 0) & (layers["level"] < 1))
    if bad_level.any():
        raise SoilCarbonError(f"{source}: level is not between 0 and 1 for sample(s) "
                              f"{listed(layers.loc[bad_level, 'sample_id'])}")
    mixed = layers.groupby("field")["model_uri"].nunique()
    if not allow_mixed_models and (mixed > 1).any():
        name = mixed[mixed > 1].index[0]
        uris = sorted(layers.loc[layers["field"] == name, "model_uri"].unique())
        raise SoilCarbonError(f"{source}: field {name!r} has predictions of several model versions ({listed(uris)}); "
                              "score a field with one model version or pass --allow-mixed-models")
    outside = layers.loc[~layers["in_domain"], "sample_id"].tolist()
    excluded = []
    if exclude_out_of_domain and outside:
        # a core is dropped whole: without one of its layers its stock would cover a shallower depth
        key = layers["campaign"].astype(str) + "\x00" + layers["core"].astype(str)
        drop = key.isin(set(key[~layers["in_domain"]]))
        excluded = layers.loc[drop, "sample_id"].tolist()
        layers = layers[~drop].reset_index(drop=True)
        if layers.empty:
            raise SoilCarbonError(f"{source}: every sample is out of the model's domain; nothing left to compute")
    low, high = interval_sds(layers["prediction"], layers["lower"], layers["upper"], layers["level"])
    layers["soc"] = layers["prediction"].to_numpy() * factor
    layers["sd_low"], layers["sd_high"] = low * factor, high * factor
    return Joined(layers, outside, excluded)


def join_measured(samples: pd.DataFrame, factor: float, lab_sd: float) -> Joined:
    """Lab-only projects: SOC from the ``measured`` column, with a lab error ``lab_sd`` (same unit)."""
    if lab_sd < 0:
        raise SoilCarbonError(f"--lab-sd must not be negative, got {lab_sd:g}")
    layers = samples.copy()
    layers["soc"] = samples["measured"].to_numpy() * factor
    layers["sd_low"] = layers["sd_high"] = float(lab_sd) * factor
    layers["model_uri"] = ""
    layers["in_domain"] = True
    return Joined(layers)
