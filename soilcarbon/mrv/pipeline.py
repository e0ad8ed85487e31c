"""From files to stocks: read and check the tables, look up each model version's target unit and
out-of-fold residuals in the registry, simulate and summarize. Shared by ``stocks`` and
``stocks plan``."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from soilcarbon.errors import SoilCarbonError
from soilcarbon.mrv import stocks, tables


@dataclass
class Inputs:
    layers: pd.DataFrame
    groups: dict
    areas: dict | None
    strata: dict | None
    models: dict  # uri -> {"unit", "shared_sd_percent", "n_residuals"}
    unit: str
    out_of_domain: list = field(default_factory=list)
    excluded: list = field(default_factory=list)


def load(samples, predictions=None, fields=None, *, measured: str | None = None, lab_sd: float = 0.0,
         unit: str | None = None, draws: int = 2000, seed: int | None = 0, exclude_out_of_domain: bool = False,
         allow_mixed_models: bool = False) -> Inputs:
    """Read, check and simulate; raises :class:`SoilCarbonError` on any bad input."""
    if (predictions is None) == (measured is None):
        raise SoilCarbonError("pass either --predictions PRED.csv or --measured COLUMN (lab values in the samples table)")
    sample_table = tables.read_samples(samples, measured)
    areas = strata = None
    if fields is not None:
        field_table = tables.read_fields(fields)
        areas = dict(zip(field_table["field"], field_table["area_ha"]))
        strata = dict(zip(field_table["field"], field_table["stratum"]))
        without = sorted(set(sample_table["field"]) - set(areas))
        if without:
            raise SoilCarbonError(f"{fields}: {len(without)} field(s) of {samples} have no area_ha (totals need every "
                                  f"field's area): {tables.listed(without)}")
    models = {}
    if measured is not None:
        factor = tables.soc_unit_factor(unit, f"--measured {measured}")
        joined = tables.join_measured(sample_table, factor, lab_sd)
        used_unit = unit
    else:
        pred_table = tables.read_predictions(predictions)
        joined = tables.join_predictions(sample_table, pred_table, exclude_out_of_domain=exclude_out_of_domain,
                                         allow_mixed_models=allow_mixed_models, samples_source=str(samples))
        uris = sorted({u for u in joined.layers["model_uri"] if u})
        if not uris and unit is None:
            raise SoilCarbonError(f"{predictions}: no model_uri column; pass --unit % or --unit g/kg")
        from soilcarbon.training.tracking import model_version_info

        for uri in uris:
            info = model_version_info(uri)
            models[uri] = {"unit": info["unit"], "residuals": info["residuals"]}
        if unit is None:
            units = sorted({info["unit"] for info in models.values()})
            if len(units) > 1:
                raise SoilCarbonError(f"{predictions}: the model versions have different target units "
                                      f"({', '.join(units)}); score with one unit or pass --unit")
            if units[0] not in tables.UNITS:
                raise SoilCarbonError(f"{predictions}: model {uris[0]} has target unit {units[0] or '(none)'!r}, "
                                      "not % or g/kg; pass --unit % or --unit g/kg")
            unit = units[0]
        factor = tables.soc_unit_factor(unit, str(predictions))
        used_unit = unit
        for column in ("soc", "sd_low", "sd_high"):
            joined.layers[column] = joined.layers[column] * factor
        for uri, info in models.items():
            info["shared_sd_percent"] = stocks.shared_bias_sd(info.pop("residuals")) * factor
    shared = {uri: info["shared_sd_percent"] for uri, info in models.items()}
    groups = stocks.simulate(joined.layers, shared, draws, seed)
    return Inputs(joined.layers, groups, areas, strata, models, used_unit, joined.out_of_domain, joined.excluded)
