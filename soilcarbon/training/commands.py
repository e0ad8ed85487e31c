"""``soilcarbon train`` and ``soilcarbon models list|promote``."""

from __future__ import annotations

import json
import os
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from soilcarbon.errors import SoilCarbonError
from soilcarbon.progress import Progress

models_app = typer.Typer(help="Registered models: list them, promote a version to an alias.", no_args_is_help=True)


#: Warnings training raises on purpose that would drown the report, as (message regex, category):
#: on small data sets every cross-validation fold of memory-based learning says that its
#: neighbourhoods are clipped to the fold's samples (the clip is the intended behaviour).
KNOWN_HARMLESS_WARNINGS = [(r"MBL k=.* exceeds the \d+ reference samples", UserWarning)]
#: joblib's resource tracker, a helper process, warns at exit when an interrupted run's
#: memory-mapping folder was already removed (a race after Ctrl-C, seen about once in ten
#: interrupts); it is a separate interpreter, so only PYTHONWARNINGS reaches it.
RESOURCE_TRACKER_FILTER = "ignore:resource_tracker:UserWarning"


@contextmanager
def known_harmless_warnings_ignored():
    """Ignore :data:`KNOWN_HARMLESS_WARNINGS` inside the block (and in the cross-validation
    workers: ``sklearn.utils.parallel`` carries the filters to them) and joblib's resource
    tracker's cleanup warning; every other warning shows."""
    previous = os.environ.get("PYTHONWARNINGS")
    os.environ["PYTHONWARNINGS"] = ",".join(filter(None, [previous, RESOURCE_TRACKER_FILTER]))
    try:
        with warnings.catch_warnings():
            for message, category in KNOWN_HARMLESS_WARNINGS:
                warnings.filterwarnings("ignore", message=message, category=category)
            yield
    finally:
        if previous is None:
            os.environ.pop("PYTHONWARNINGS", None)
        else:
            os.environ["PYTHONWARNINGS"] = previous



def _metrics_table(result) -> Table:
    table = Table(title=f"Cross-validated accuracy of {result.data.target} ({result.cv_scheme})")
    for column in ("n", "RMSE", "R²", "RPIQ", "bias", "PICP", "mean width"):
        table.add_column(column, justify="right")
    m = result.metrics
    table.add_row(f"{int(m['n'])}", f"{m['rmse']:.4f}", f"{m['r2']:.3f}", f"{m['rpiq']:.2f}", f"{m['bias']:+.4f}",
                  f"{m.get('picp', float('nan')):.3f}", f"{m.get('mean_width', float('nan')):.4f}")
    return table


def _candidates_table(result, limit: int = 10) -> Table:
    table = Table(title="Model selection (inner CV on all samples)")
    pruned = bool(result.selection.pruned)
    for column in ("candidate", "CV RMSE", "seconds") + (("samples",) if pruned else ()):
        table.add_column(column, justify="right" if column != "candidate" else "left")
    for row in result.selection.table().head(limit).itertuples():
        table.add_row(row.candidate, f"{row.cv_rmse:.4f}", f"{row.seconds:.1f}",
                      *((f"{row.samples}",) if pruned else ()))
    if pruned:
        table.caption = (f"{len(result.selection.pruned)} candidate(s) pruned by successive halving on the "
                         "subsample in 'samples'")
    return table


def train_command(
    spectra: Optional[Path] = typer.Option(None, "--spectra", help="Spectra: CSV/Parquet table, OPUS file or folder."),
    target: Optional[str] = typer.Option(None, "--target", help="Target column (in the spectra table or --lab)."),
    lab: Optional[Path] = typer.Option(None, "--lab", help="Lab table (CSV) joined by id."),
    covariates: Optional[Path] = typer.Option(None, "--covariates", help="Per-sample covariates table joined by id."),
    id_col: str = typer.Option("sample_id", "--id-col", help="Id column of tables."),
    config_path: Optional[Path] = typer.Option(None, "--config", help="Training configuration (YAML)."),
    name: Optional[str] = typer.Option(None, "--name", help="Registered model name (default soc-TARGET)."),
    folds: Optional[str] = typer.Option(None, "--folds", help="Column with outer fold labels."),
    group: Optional[str] = typer.Option(None, "--group", help="Column with groups kept together in CV."),
    cv_scheme: Optional[str] = typer.Option(None, "--cv", help="kfold | group | folds | spatial."),
    coords: Optional[str] = typer.Option(None, "--coords", help="X_COL,Y_COL for spatial CV."),
    block_size: Optional[float] = typer.Option(None, "--block-size", help="Spatial block size in metres."),
    oof_output: Optional[Path] = typer.Option(None, "--oof-output", help="Write out-of-fold predictions (CSV)."),
    target_unit: str = typer.Option("", "--target-unit", help="Unit of the target, e.g. '%' or 'g/kg'."),
    unit: Optional[str] = typer.Option(None, "--unit", help="Spectral unit when it cannot be detected."),
    nested: bool = typer.Option(True, "--nested/--no-nested", help="Nested CV for honest accuracy (default)."),
    jobs: Optional[int] = typer.Option(None, "--jobs", "-j",
                                       help="Worker processes for the CV fits (default: compute.jobs, else the CPUs "
                                            "this process may use)."),
    budget_minutes: Optional[float] = typer.Option(None, "--budget-minutes",
                                                   help="Time budget: outer CV folds that would not fit are "
                                                        "skipped and named (default: compute.budget_minutes)."),
    engine: Optional[str] = typer.Option(None, "--engine",
                                         help="local (worker processes) or spark (CV fits as Spark tasks, "
                                              "joblibspark; default: compute.engine)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only print the model URI."),
    print_default_config: bool = typer.Option(False, "--print-default-config", help="Print the default config."),
):
    """Calibrate a SOC model, report cross-validated accuracy, register it in MLflow.

    The last line on stdout is the registered model URI, models:/NAME/VERSION.
    """
    from soilcarbon.training.config import DEFAULT_CONFIG, load_config

    if print_default_config:
        typer.echo(DEFAULT_CONFIG, nl=False)
        return
    if not target:
        raise SoilCarbonError("--target is required: the lab column to calibrate against")
    if spectra is None and covariates is None:
        raise SoilCarbonError("give --spectra, --covariates or both")
    if jobs is not None and jobs < 1:
        raise SoilCarbonError(f"--jobs must be an integer >= 1, got {jobs}")
    if budget_minutes is not None and not budget_minutes > 0:
        raise SoilCarbonError(f"--budget-minutes must be a number > 0, got {budget_minutes:g}")
    if engine is not None and engine not in ("local", "spark"):
        raise SoilCarbonError(f"--engine must be local or spark, got {engine!r}")
    config = load_config(config_path)
    coord_cols = None
    if coords:
        parts = [c.strip() for c in coords.split(",")]
        if len(parts) != 2 or not all(parts):
            raise SoilCarbonError(f"--coords must be X_COL,Y_COL, got {coords!r}")
        coord_cols = (parts[0], parts[1])
    if cv_scheme is not None and cv_scheme not in ("kfold", "group", "folds", "spatial"):
        raise SoilCarbonError(f"--cv must be kfold, group, folds or spatial, got {cv_scheme!r}")
    if cv_scheme == "spatial" and not coord_cols:
        raise SoilCarbonError("--cv spatial needs --coords X_COL,Y_COL")
    config = config.with_overrides({"jobs": jobs, "budget_minutes": budget_minutes, "engine": engine},
                                   scheme=cv_scheme, block_size=block_size)
    if config.compute.get("engine") == "spark":  # before reading data: Java, pyspark, joblibspark
        from soilcarbon.training.scale import spark_problem

        problem = spark_problem()
        if problem:
            raise SoilCarbonError(f"--engine spark: {problem}")
    if coord_cols and cv_scheme not in (None, "spatial"):
        raise SoilCarbonError(f"--coords is for --cv spatial; drop it or use --cv spatial (got --cv {cv_scheme})")
    from soilcarbon.atomic import check_folder, check_output
    from soilcarbon.registry import local_store_folder

    if oof_output is not None:
        check_output(oof_output, ("csv",))
    store = local_store_folder()
    if store is not None:  # the MLflow store must accept the run after minutes of training
        check_folder(store, f"MLflow store {store}")
    console = Console(quiet=quiet)
    from soilcarbon.training.data import load_inputs

    data_spectra, cov_table, load_notes = load_inputs(spectra, lab, covariates, id_col, unit)
    provenance = None
    if covariates is not None:  # what covariates extract recorded (indices, band roles), for map
        from soilcarbon.geo.extract import read_provenance

        provenance = read_provenance(covariates)
    for note in load_notes:
        console.print(f"[yellow]note:[/] {note}")
    from soilcarbon.training.train import train

    with Progress(quiet, "training") as progress, known_harmless_warnings_ignored():
        result = train(data_spectra, target, cov_table, config, id_col, folds, group, coord_cols, nested,
                       progress, covariates_source=str(covariates) if covariates else "covariates")
    if provenance is not None:
        from soilcarbon.geo.extract import model_provenance

        result.model.info["covariate_provenance"] = model_provenance(provenance, result.data.layout.covariates)
    for note in result.notes:
        console.print(f"[yellow]note:[/] {note}")
    for line in result.compute.lines():
        console.print(f"compute: {line}")
    console.print(_candidates_table(result))
    console.print(_metrics_table(result))
    console.print(f"selected: {result.selection.name}  ({result.seconds:.1f} s)")
    if oof_output is not None:
        from soilcarbon.atomic import atomic_path

        with atomic_path(oof_output) as tmp:
            result.oof.to_csv(tmp, index=False)
        console.print(f"out-of-fold predictions: {oof_output}")
    from soilcarbon.training.tracking import log_training

    uri = log_training(result, name or f"soc-{target}", {
        "spectra": str(spectra) if spectra else "", "lab": str(lab) if lab else "",
        "covariates": str(covariates) if covariates else "", "config": str(config_path) if config_path else "default",
    }, target_unit)
    typer.echo(uri)


@models_app.command("list")
def list_command(as_json: bool = typer.Option(False, "--json", help="Print JSON.")):
    """Registered models, versions, aliases and cross-validated metrics."""
    from soilcarbon.registry import list_models

    rows = list_models()
    if as_json:
        typer.echo(json.dumps(rows))
        return
    table = Table(title="Registered models")
    for column in ("name", "version", "aliases", "target", "CV RMSE", "PICP", "CV scheme"):
        table.add_column(column)
    for row in rows:
        m = row["metrics"]
        table.add_row(row["name"], str(row["version"]), ",".join(row["aliases"]), row["target"],
                      f"{m.get('rmse', float('nan')):.4g}", f"{m.get('picp', float('nan')):.3f}", row["cv_scheme"])
    Console().print(table)


@models_app.command("promote")
def promote_command(name: str, version: str, alias: str = typer.Option("champion", "--alias")):
    """Point an alias (default: champion) at a model version."""
    from soilcarbon.registry import promote

    promote(name, version, alias)
    typer.echo(f"models:/{name}@{alias} -> version {version}")


def register(app: typer.Typer) -> None:
    app.command("train")(train_command)
    app.add_typer(models_app, name="models")
