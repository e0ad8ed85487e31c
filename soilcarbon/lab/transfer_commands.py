"""``soilcarbon transfer``: move a registered calibration to a new instrument and register the result.

The transfer samples are the same physical samples scanned on the model's instrument (``--source``)
and on the new one (``--target``), matched by id (``--samples`` restricts them, e.g. to the output
of ``soilcarbon select``). Both are re-gridded onto the model's axis, which must lie inside the
overlap of the two instruments. The method and its settings are chosen by leave-one-out over the
transfer samples (:func:`soilcarbon.lab.transfer.fit_transfer`); the result, a
:class:`~soilcarbon.models.transferred.TransferredModel`, is registered through the same code as
``train`` and takes new-instrument spectra.
"""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
import typer
from rich.console import Console
from rich.table import Table

from soilcarbon.errors import SoilCarbonError
from soilcarbon.lab.transfer import METHODS, TransferFit, check_count, fit_transfer, loo_mapped
from soilcarbon.models.transferred import TransferredModel
from soilcarbon.spectral.spectra import Spectra, format_axis_value, ids_text

#: Largest ratio between the typical magnitudes of the two instruments' spectra: beyond it the
#: files are in different units (absorbance vs. reflectance, % vs. fraction).
MAX_SCALE_RATIO = 5.0


def ids_digest(ids) -> str:
    """SHA-256 (first 16 hex digits) of the transfer sample ids, in order."""
    return hashlib.sha256("\n".join(map(str, ids)).encode()).hexdigest()[:16]


def transfer_pairs(source: Spectra, target: Spectra, samples: list[str] | None = None) -> list[str]:
    """The ids of the transfer samples: ``samples`` when given (each must be on both sides), else
    the ids of the two files, which must be the same set. Ids on one side only are an error that
    lists them."""
    in_source, in_target = set(source.ids), set(target.ids)
    if samples is not None:
        problems = []
        for side, present, spectra in (("source", in_source, source), ("target", in_target, target)):
            missing = [i for i in samples if i not in present]
            if missing:
                problems.append(f"not in the {side} file {spectra.source}: {ids_text(missing, 8)}")
        if problems:
            raise SoilCarbonError("transfer sample(s) " + "; ".join(problems))
        check_count(len(samples))
        return list(samples)
    only_source = [i for i in source.ids if i not in in_target]
    only_target = [i for i in target.ids if i not in in_source]
    if only_source or only_target:
        parts = []
        if only_source:
            parts.append(f"only in the source file {source.source}: {ids_text(only_source, 8)}")
        if only_target:
            parts.append(f"only in the target file {target.source}: {ids_text(only_target, 8)}")
        raise SoilCarbonError("source and target must hold the same samples; " + "; ".join(parts) +
                              " (pass --samples IDS.csv to use a subset)")
    check_count(len(source.ids))
    return [str(i) for i in source.ids]


def check_units(source: Spectra, target: Spectra) -> None:
    """The same axis unit and the same kind of values (magnitudes, shape of the mean spectrum)."""
    if source.unit != target.unit:
        raise SoilCarbonError(f"the source spectra ({source.source}) are on a {source.unit} axis but the target "
                              f"spectra ({target.source}) on a {target.unit} axis; export both in the same unit")
    scale_s, scale_t = np.median(np.abs(source.values)), np.median(np.abs(target.values))
    ratio = max(scale_s, scale_t) / max(min(scale_s, scale_t), 1e-300)
    if ratio > MAX_SCALE_RATIO:
        raise SoilCarbonError(
            f"the target spectra ({target.source}, typical value {scale_t:.3g}) and the source spectra "
            f"({source.source}, typical value {scale_s:.3g}) differ {ratio:.0f}-fold: they look like different "
            "units (absorbance vs. reflectance, % vs. fraction); convert the target to the source's unit")
    common = np.linspace(max(source.axis.min(), target.axis.min()), min(source.axis.max(), target.axis.max()), 50)
    if common[-1] > common[0]:
        mean_s = np.interp(common, *_sorted(source.axis, source.values.mean(axis=0)))
        mean_t = np.interp(common, *_sorted(target.axis, target.values.mean(axis=0)))
        if np.std(mean_s) > 0 and np.std(mean_t) > 0 and np.corrcoef(mean_s, mean_t)[0, 1] < 0:
            raise SoilCarbonError(
                f"the mean target spectrum ({target.source}) is the mirror image of the mean source spectrum "
                f"({source.source}): they look like different units (reflectance vs. absorbance); convert the "
                "target to the source's unit, e.g. absorbance = log10(1 / reflectance)")


def check_overlap(source: Spectra, target: Spectra, layout) -> None:
    """The instruments' common range covers the model's axis."""
    axis = layout.axis
    low = max(source.axis.min(), target.axis.min())
    high = min(source.axis.max(), target.axis.max())
    step = max(np.min(np.abs(np.diff(source.axis))), np.min(np.abs(np.diff(target.axis))))
    if axis.min() < low - step or axis.max() > high + step:
        overlap = (f"{format_axis_value(low)}-{format_axis_value(high)} {layout.unit}" if low < high
                   else "nothing")
        raise SoilCarbonError(
            f"the instruments overlap on {overlap} (source {source.source}: "
            f"{format_axis_value(source.axis.min())}-{format_axis_value(source.axis.max())}, target "
            f"{target.source}: {format_axis_value(target.axis.min())}-{format_axis_value(target.axis.max())}), "
            f"too small for the model, which needs {format_axis_value(axis.min())}-{format_axis_value(axis.max())} "
            f"{layout.unit}; transfer a model calibrated on the overlap")


def _sorted(axis: np.ndarray, values: np.ndarray):
    order = np.argsort(axis)
    return axis[order], values[order]


@dataclass
class TransferResult:
    """The transferred model, its leave-one-out record and the transfer sample ids."""

    model: TransferredModel
    fit: TransferFit
    ids: list[str]
    X_target: np.ndarray


def transfer(base, source: Spectra, target: Spectra, samples: list[str] | None = None,
             method: str = "auto") -> TransferResult:
    """Fit a transfer of ``base`` (a fitted SOC model) from ``source`` to ``target`` spectra."""
    layout = base.layout
    if layout.n_spectral == 0:
        raise SoilCarbonError("the base model uses covariates only: there are no spectra to transfer")
    if layout.covariates:
        raise SoilCarbonError(f"the base model also uses covariates ({ids_text(layout.covariates, 8)}); "
                              "transfer supports spectra-only models")
    if method not in METHODS:
        raise SoilCarbonError(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
    check_units(source, target)
    ids = transfer_pairs(source, target, samples)
    check_overlap(source, target, layout)
    X_source = source.select(ids).align(layout.axis, layout.unit).values
    X_target = target.select(ids).align(layout.axis, layout.unit).values

    for spectra, X in ((source, X_source), (target, X_target)):
        failures = base.predict_matrix(X).attrs.get("failures", {})
        if failures:
            row, reason = next(iter(failures.items()))
            raise SoilCarbonError(f"{spectra.source}: the base model cannot predict transfer sample {ids[row]}: "
                                  f"{reason}")

    def predict(X):
        return base.predict_matrix(X)["prediction"].to_numpy()

    fit = fit_transfer(X_source, X_target, predict, method)
    info = dict(getattr(base, "info", {}))
    info.update({"transfer_method": fit.method.label, "n_transfer": len(ids), "transfer_loo_rmse": fit.loo_rmse})
    source_scores = base.predict_matrix(X_source)["domain_score"].to_numpy()
    mapped_scores = base.predict_matrix(loo_mapped(fit.method, X_source, X_target))["domain_score"].to_numpy()
    inside = source_scores <= 1.0
    domain_scale = float(max(1.0, mapped_scores[inside].max())) if inside.any() else 1.0
    info["transfer_domain_scale"] = domain_scale
    model = TransferredModel(base, fit.mapper, fit.loo_errors, fit.slope, fit.intercept, domain_scale, info)
    return TransferResult(model, fit, ids, X_target)


def log_transfer(result: TransferResult, name: str, base_uri: str, sources: dict) -> str:
    """Log the transfer run (settings, leave-one-out table) and register the model; returns
    ``models:/NAME/VERSION``."""
    import mlflow

    from soilcarbon.training.tracking import configure, ensure_experiment, register_version

    configure()
    experiment_id = ensure_experiment()
    fit = result.fit
    digest = ids_digest(result.ids)
    settings = fit.method.label
    if fit.method.name == "slope-bias":
        settings = f"slope-bias(slope={fit.slope:.6g},intercept={fit.intercept:.6g})"
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"transfer-{name}") as run:
        params = {"base_model": base_uri, "method": fit.method.name, "settings": settings,
                  "n_transfer": len(result.ids), "transfer_ids_digest": digest,
                  **{f"source.{k}": v for k, v in sources.items() if v}}
        mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
        mlflow.log_metric("transfer_loo_rmse", fit.loo_rmse)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "transfer_candidates.csv"
            fit.table.to_csv(path, index=False)
            mlflow.log_artifact(str(path), artifact_path="transfer")
            ids_path = Path(tmp) / "transfer_samples.csv"
            pd.DataFrame({"sample_id": result.ids, "loo_error": fit.loo_errors}).to_csv(ids_path, index=False)
            mlflow.log_artifact(str(ids_path), artifact_path="transfer")
        model = result.model
        tags = {"target": model.target, "unit": model.info.get("target_unit") or "unspecified",
                "spectral_unit": model.layout.unit, "base_model": base_uri, "transfer_method": fit.method.name,
                "transfer_settings": settings, "n_transfer": str(len(result.ids)),
                "transfer_ids_digest": digest, "transfer_loo_rmse": f"{fit.loo_rmse:.6g}",
                "transfer_domain_scale": f"{model.domain_scale:.6g}",
                "training_data": sources.get("target", "")}
        description = (f"{base_uri} transferred to new-instrument spectra ({sources.get('target', '')}) by "
                       f"{settings}, chosen by leave-one-out over {len(result.ids)} transfer samples (ids digest "
                       f"{digest}); leave-one-out transfer RMSE {fit.loo_rmse:.4g}; run {run.info.run_id}")
        return register_version(model, name, result.X_target, result.ids, tags, description)


def _read_samples(path: Path, id_col: str) -> list[str]:
    from soilcarbon.spectral.lab import read_lab

    return [str(i) for i in read_lab(path, id_col)[id_col]]


def _candidates_table(fit: TransferFit, limit: int = 8) -> Table:
    table = Table(title="Transfer methods (leave-one-out over the transfer samples)")
    table.add_column("method")
    table.add_column("LOO RMSE", justify="right")
    for row in fit.table.drop_duplicates("method").head(limit).itertuples():
        table.add_row(row.settings, f"{row.loo_rmse:.4g}")
    return table


def transfer_command(
    model: str = typer.Option(..., "--model", help="Base model URI (models:/NAME/VERSION or models:/NAME@ALIAS)."),
    source: Path = typer.Option(..., "--source", help="Transfer samples scanned on the model's instrument."),
    target: Path = typer.Option(..., "--target", help="The same samples (matched by id) on the new instrument."),
    samples: Optional[Path] = typer.Option(None, "--samples", help="CSV of the ids to use (e.g. from `select`)."),
    method: str = typer.Option("auto", "--method", help="auto | ds | pds | sst | slope-bias."),
    name: Optional[str] = typer.Option(None, "--name", help="Registered name (default: base name + target stem)."),
    id_col: str = typer.Option("sample_id", "--id-col", help="Id column of the tables."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only print the model URI."),
):
    """Transfer a calibration to a new instrument and register it; the new version takes
    new-instrument spectra. The last line on stdout is its URI, models:/NAME/VERSION.
    """
    from soilcarbon.serving.model import load_model
    from soilcarbon.spectral.readers import read_spectra

    if method not in METHODS:
        raise SoilCarbonError(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
    console = Console(quiet=quiet)
    ids = _read_samples(samples, id_col) if samples is not None else None
    source_spectra = read_spectra(source, id_col=id_col)
    target_spectra = read_spectra(target, id_col=id_col)
    check_units(source_spectra, target_spectra)  # the checks that need no model, before loading it
    transfer_pairs(source_spectra, target_spectra, ids)
    served = load_model(model)
    base = served.pyfunc.unwrap_python_model().model
    result = transfer(base, source_spectra, target_spectra, ids, method)
    fit = result.fit
    console.print(_candidates_table(fit))
    console.print(f"chosen: {fit.method.label}; {len(result.ids)} transfer samples; "
                  f"leave-one-out transfer RMSE {fit.loo_rmse:.4g} (base model: {served.uri})")
    default_name = f"{served.name or 'soc-' + base.target}-{target.stem}"
    uri = log_transfer(result, name or default_name, served.uri, {
        "source": str(source), "target": str(target), "samples": str(samples) if samples else ""})
    typer.echo(uri)


def register(app: typer.Typer) -> None:
    app.command("transfer")(transfer_command)
