"""``soilcarbon stocks`` (stocks, changes and totals with intervals) and ``soilcarbon stocks plan``
(cores per field for a target interval half-width)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from soilcarbon.errors import SoilCarbonError

stocks_app = typer.Typer(
    help="SOC stocks (t C/ha), their change (fixed depth and equivalent soil mass) and project totals, with intervals.",
    invoke_without_command=True, no_args_is_help=False,
)

SHOW = 5


def _clean(value):
    import numpy as np

    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return None if not np.isfinite(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def _records(frame) -> list[dict]:
    return _clean(frame.to_dict("records")) if len(frame) else []


def summary_json(inputs, result) -> dict:
    """What ``stocks --json`` prints (also shown by the web page): unit, model versions, samples
    outside the domain, field and change tables and the project totals, NaN as null."""
    return _clean({
        "unit": inputs.unit, "models": {u: {"unit": i["unit"], "shared_bias_sd_percent": i["shared_sd_percent"]}
                                        for u, i in inputs.models.items()},
        "out_of_domain": inputs.out_of_domain, "excluded": inputs.excluded,
        "fields": _records(result.fields), "changes": _records(result.changes), "project": result.project})


def _write_csv(path: Path, frame) -> None:
    from soilcarbon.atomic import atomic_path

    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def _check_output(path: Path, option: str, suffix: str) -> None:
    from soilcarbon.atomic import check_output

    try:
        check_output(path, (suffix.lstrip("."),))
    except SoilCarbonError as exc:
        raise SoilCarbonError(f"{option} {exc}") from exc


def _level(level: float) -> float:
    from soilcarbon.serving.model import check_level

    return check_level(level)


def _warn_domain(inputs) -> None:
    if inputs.out_of_domain:
        ids = ", ".join(inputs.out_of_domain[:SHOW]) + (f" and {len(inputs.out_of_domain) - SHOW} more"
                                                         if len(inputs.out_of_domain) > SHOW else "")
        what = (f"excluded with their cores ({len(inputs.excluded)} samples dropped, --exclude-out-of-domain)"
                if inputs.excluded else "kept (pass --exclude-out-of-domain to drop them with their cores)")
        sys.stderr.write(f"warning: {len(inputs.out_of_domain)} sample(s) outside the model's domain, {what}: {ids}\n")


@stocks_app.callback()
def stocks_command(
    ctx: typer.Context,
    predictions: Optional[Path] = typer.Option(None, "--predictions", help="Output of `soilcarbon predict` (CSV)."),
    samples: Optional[Path] = typer.Option(None, "--samples", help="Samples: sample_id, field, top_cm, bottom_cm, bulk_density_g_cm3 [, bulk_density_sd, coarse_fraction, coarse_fraction_sd, campaign, core]."),
    fields: Optional[Path] = typer.Option(None, "--fields", help="Fields: field, area_ha [, stratum]; gives totals."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Field table STOCKS.csv (written atomically)."),
    changes: Optional[Path] = typer.Option(None, "--changes", help="Also write the change table (CSV)."),
    report: Optional[Path] = typer.Option(None, "--report", help="Self-contained HTML report for a verifier."),
    as_json: bool = typer.Option(False, "--json", help="Print fields, changes and project totals as JSON."),
    level: float = typer.Option(0.90, "--level", help="Interval level."),
    draws: int = typer.Option(2000, "--draws", help="Monte Carlo draws."),
    seed: int = typer.Option(0, "--seed", help="Random seed of the Monte Carlo draws."),
    unit: Optional[str] = typer.Option(None, "--unit", help="SOC unit (% or g/kg); default: the model version's registered target unit."),
    measured: Optional[str] = typer.Option(None, "--measured", help="Take SOC from this column of the samples table (lab-only projects)."),
    lab_sd: float = typer.Option(0.0, "--lab-sd", help="With --measured: the lab error (standard deviation, in --unit)."),
    credit_quantile: float = typer.Option(0.10, "--credit-quantile", help="Credited change = this lower quantile of the project's total change (one-sided)."),
    credit_basis: str = typer.Option("esm", "--credit-basis", help="Change credited: esm (equivalent soil mass) or fixed (depth)."),
    exclude_out_of_domain: bool = typer.Option(False, "--exclude-out-of-domain", help="Drop samples outside the model's domain."),
    allow_mixed_models: bool = typer.Option(False, "--allow-mixed-models", help="Allow predictions of several model versions in one field."),
):
    """SOC stocks per field and campaign with intervals, their change and project totals.

    Output columns: field, campaign, n, stock_t_ha, lower_t_ha, upper_t_ha, level, and with --fields area_ha, total_t, total_lower_t, total_upper_t.
    """
    if ctx.invoked_subcommand is not None:
        return
    from soilcarbon.mrv import pipeline, stocks

    if samples is None or output is None:
        raise SoilCarbonError("stocks needs --samples SAMPLES.csv, --predictions PRED.csv (or --measured COLUMN) "
                              "and --output STOCKS.csv")
    if credit_basis not in ("esm", "fixed"):
        raise SoilCarbonError(f"--credit-basis must be esm or fixed, got {credit_basis!r}")
    level = _level(level)
    _check_output(output, "--output", ".csv")
    if changes is not None:
        _check_output(changes, "--changes", ".csv")
    if report is not None:
        _check_output(report, "--report", ".html")
    inputs = pipeline.load(samples, predictions, fields, measured=measured, lab_sd=lab_sd, unit=unit, draws=draws,
                           seed=seed, exclude_out_of_domain=exclude_out_of_domain,
                           allow_mixed_models=allow_mixed_models)
    result = stocks.summarize(inputs.groups, inputs.areas, level, credit_quantile, credit_basis, inputs.strata)
    html_text = None
    if report is not None:
        from soilcarbon.mrv.report import render

        html_text = render(result, inputs, {"samples": samples, "predictions": predictions, "fields": fields,
                                            "measured column": measured})
    _warn_domain(inputs)
    _write_csv(output, result.fields)
    if changes is not None:
        _write_csv(changes, result.changes)
    if html_text is not None:
        from soilcarbon.atomic import atomic_path

        with atomic_path(report) as tmp:
            tmp.write_text(html_text, encoding="utf-8")
    if as_json:
        typer.echo(json.dumps(summary_json(inputs, result), indent=2))
        return
    for row in result.fields.itertuples():
        typer.echo(f"{row.field} {row.campaign}: {row.stock_t_ha:.1f} t C/ha [{row.lower_t_ha:.1f}, "
                   f"{row.upper_t_ha:.1f}] ({row.n} cores)")
    for entry in result.project.get("changes", []):
        if entry["credited"]:
            typer.echo(f"project {entry['from']} -> {entry['to']} ({entry['basis']}): {entry['total_change_t']:.1f} t C "
                       f"[{entry['lower_t']:.1f}, {entry['upper_t']:.1f}], credited ({entry['credit_quantile']:g} "
                       f"quantile) {entry['credited_change_t']:.1f} t C")
    typer.echo(f"{output}: {len(result.fields)} field-campaign rows")


@stocks_app.command("plan")
def plan_command(
    samples: Path = typer.Option(..., "--samples", help="Pilot samples table (as for `stocks`)."),
    predictions: Optional[Path] = typer.Option(None, "--predictions", help="Predictions of the pilot samples."),
    target_halfwidth: str = typer.Option("10%", "--target-halfwidth", help="Wanted half-width: t C/ha, or % of the field mean (e.g. 10%)."),
    level: float = typer.Option(0.90, "--level", help="Interval level."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write the plan table (CSV)."),
    as_json: bool = typer.Option(False, "--json", help="Print the plan as JSON."),
    draws: int = typer.Option(2000, "--draws", help="Monte Carlo draws."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    unit: Optional[str] = typer.Option(None, "--unit", help="SOC unit (% or g/kg); default: the model's."),
    measured: Optional[str] = typer.Option(None, "--measured", help="SOC from this column of the samples table."),
    lab_sd: float = typer.Option(0.0, "--lab-sd", help="With --measured: the lab error (sd, in --unit)."),
    allow_mixed_models: bool = typer.Option(False, "--allow-mixed-models", help="Allow several model versions in one field."),
):
    """Cores per field needed for a field-mean interval of the wanted half-width, from a pilot campaign."""
    import pandas as pd

    from soilcarbon.mrv import pipeline
    from soilcarbon.mrv.plan import parse_halfwidth, plan

    target, relative = parse_halfwidth(target_halfwidth)
    level = _level(level)
    if output is not None:
        _check_output(output, "--output", ".csv")
    inputs = pipeline.load(samples, predictions, None, measured=measured, lab_sd=lab_sd, unit=unit, draws=draws,
                           seed=seed, allow_mixed_models=allow_mixed_models)
    shared = {}
    for key, group in inputs.groups.items():
        sd = max([inputs.models[u]["shared_sd_percent"] for u in group.model_uris] or [0.0])
        shared[key] = (sd * group.mass / 100.0) ** 2
    table = plan(inputs.groups, shared, target, relative, level)
    if output is not None:
        _write_csv(output, table)
    if as_json:
        typer.echo(json.dumps(_records(table), indent=2))
        return
    for row in table.itertuples():
        needed = "not reachable (the shared model error alone is wider)" if pd.isna(row.n_needed) else \
            f"{int(row.n_needed)} cores (half-width {row.halfwidth_t_ha:.2f})"
        typer.echo(f"{row.field} {row.campaign}: mean {row.stock_t_ha:.1f} t C/ha, sd {row.sd_t_ha:.1f}, "
                   f"pilot {row.n_pilot} cores; for ±{row.target_halfwidth_t_ha:.2f} t C/ha at {level:.0%}: {needed}")


def register(app: typer.Typer) -> None:
    app.add_typer(stocks_app, name="stocks")
