"""``soilcarbon compare``: model versions side by side, with a paired test and a report."""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from soilcarbon.errors import SoilCarbonError


def _number(value, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def json_safe(value):
    """NaN and infinity become null (JSON has no such numbers)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if hasattr(value, "item"):  # numpy scalars
        return json_safe(value.item())
    return value


def _tables(comparison) -> list[Table]:
    source = "test samples" if comparison.mode == "test" else "nested cross-validation (logged)"
    metrics = Table(title=f"{comparison.target}: accuracy on {source}")
    columns = ["version", "n", "RMSE", "R²", "RPIQ", "bias", "CCC", "PICP", "mean width", "outside domain"]
    for column in columns:
        metrics.add_column(column, justify="left" if column == "version" else "right", no_wrap=column == "version")
    for m in comparison.models:
        metrics.add_row(m["uri"], _number(m.get("n")), _number(m.get("rmse")), _number(m.get("r2"), 3),
                        _number(m.get("rpiq"), 3), _number(m.get("bias"), 3), _number(m.get("ccc"), 3),
                        _number(m.get("picp"), 3), _number(m.get("mean_width")), _number(m.get("out_of_domain_share"), 3))
    out = [metrics]
    if comparison.mode == "test":
        pairs = Table(title=f"Paired RMSE differences (a − b), {comparison.level:g} bootstrap interval, permutation p")
        for column in ("a", "b", "RMSE diff", "CI low", "CI high", "p-value"):
            pairs.add_column(column, justify="left" if column in ("a", "b") else "right", no_wrap=column in ("a", "b"))
        for p in comparison.pairs:
            pairs.add_row(p["a"], p["b"], _number(p["rmse_diff"]), _number(p["ci_low"]), _number(p["ci_high"]),
                          _number(p["p_value"], 3))
        out.append(pairs)
    else:
        logged = Table(title="What each version logged")
        for column in ("version", "target", "n train", "data digest", "CV scheme", "selected"):
            logged.add_column(column, no_wrap=column in ("version", "data digest"))
        for m in comparison.models:
            g = m["logged"]
            logged.add_row(m["uri"], str(g.get("target")), _number(g.get("n_train")), str(g.get("data_digest")),
                           str(g.get("cv_scheme")), str(g.get("selected_model")))
        out.append(logged)
    return out


def log_comparison(comparison, report_path: Path | None) -> str:
    """Log the comparison as an MLflow evaluation run linked to the compared versions; returns the run id.

    Tags name every version (URI, run id); metrics are logged per version (``NAME.vVERSION.METRIC``,
    also linked to the version's logged model when MLflow knows it) and per pair; the JSON and the
    HTML report are artifacts.
    """
    import tempfile

    import mlflow
    from mlflow.exceptions import MlflowException

    from soilcarbon.training.tracking import configure, ensure_experiment

    configure()
    experiment_id = ensure_experiment()
    names = "-vs-".join(f"{m['name']}.v{m['version']}" for m in comparison.models)
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"compare-{names}"[:250]) as run:
        tags = {"soilcarbon.kind": "evaluation", "soilcarbon.mode": comparison.mode,
                "compared_models": json.dumps([m["uri"] for m in comparison.models]),
                "compared_runs": json.dumps([m["logged"].get("run_id") for m in comparison.models]),
                "target": comparison.target}
        for k, m in enumerate(comparison.models, start=1):
            tags[f"model_{k}.uri"] = m["uri"]
            tags[f"model_{k}.run_id"] = str(m["logged"].get("run_id") or "")
        mlflow.set_tags(tags)
        params = {"level": comparison.level, "mode": comparison.mode}
        params.update({f"test.{k}": v for k, v in comparison.test_data.items() if v is not None})
        mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
        for m in comparison.models:
            values = {f"{m['name']}.v{m['version']}.{key}": float(m[key]) for key in
                      ("n", "rmse", "r2", "rpiq", "bias", "ccc", "picp", "mean_width", "out_of_domain_share")
                      if isinstance(m.get(key), (int, float)) and math.isfinite(m[key])}
            try:  # MLflow 3: the metrics are also linked to the version's logged model
                mlflow.log_metrics(values, model_id=m["logged"].get("model_id"))
            except MlflowException:  # e.g. a tracking server without logged models: the run's metrics suffice
                mlflow.log_metrics(values)
        for k, p in enumerate(comparison.pairs, start=1):
            mlflow.log_metrics({f"pair_{k}.{key}": float(p[key]) for key in ("rmse_diff", "ci_low", "ci_high", "p_value")
                                if isinstance(p.get(key), (int, float)) and math.isfinite(p[key])})
            mlflow.set_tag(f"pair_{k}", f"{p['a']} - {p['b']}")
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "comparison.json"
            path.write_text(json.dumps(json_safe(comparison.to_dict()), indent=2))
            mlflow.log_artifact(str(path), artifact_path="evaluation")
            report = Path(tmp) / "report.html"
            if report_path is None:
                from soilcarbon.evaluation.report import write_report

                write_report(comparison, report)
            else:
                shutil.copyfile(report_path, report)
            mlflow.log_artifact(str(report), artifact_path="evaluation")
        return run.info.run_id


def compare_command(
    uris: List[str] = typer.Argument(..., help="Model URIs: models:/NAME/VERSION or models:/NAME@ALIAS (two or more)."),
    spectra: Optional[Path] = typer.Option(None, "--spectra", help="Test spectra: CSV/Parquet table, OPUS file or folder."),
    target: Optional[str] = typer.Option(None, "--target", help="Observed target column (in the test table or --lab)."),
    lab: Optional[Path] = typer.Option(None, "--lab", help="Lab table (CSV) joined to the test spectra by id."),
    covariates: Optional[Path] = typer.Option(None, "--covariates", help="Covariates table joined by id."),
    id_col: str = typer.Option("sample_id", "--id-col", help="Id column of the tables."),
    unit: Optional[str] = typer.Option(None, "--unit", help="Spectral unit when it cannot be detected."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write a self-contained HTML report."),
    json_output: Optional[Path] = typer.Option(None, "--json", help="Write the comparison as JSON."),
    log_to_mlflow: bool = typer.Option(False, "--log-to-mlflow", help="Log the comparison as an MLflow evaluation run."),
    level: float = typer.Option(0.90, "--level", help="Interval level of the predictions and of the paired CI."),
    resamples: int = typer.Option(2000, "--resamples", help="Bootstrap and permutation resamples."),
    seed: int = typer.Option(0, "--seed", help="Seed of the resampling."),
):
    """Compare model versions side by side.

    Without test data: what each version logged (CV metrics, data, configuration), with a warning when the versions were trained on different data or CV schemes. With --spectra and --target: every version predicts the same samples; per version n, RMSE, R², RPIQ, bias, CCC, PICP, mean width and share outside the domain; per range of the observed values; per pair the RMSE difference with a paired bootstrap interval and a permutation p-value.
    """
    from soilcarbon.evaluation.compare import compare_logged, compare_on_test, resolve_versions
    from soilcarbon.serving.model import check_level

    level = check_level(level)
    if resamples < 100:
        raise SoilCarbonError(f"--resamples must be at least 100, got {resamples}")
    if (spectra is not None or covariates is not None or lab is not None) and not target:
        raise SoilCarbonError("--target is required with test data: the observed column to compare against")
    if target and spectra is None and covariates is None:
        raise SoilCarbonError("--target needs test data: pass --spectra (and --lab when the values are there)")
    from soilcarbon.atomic import check_output

    for path, kind in ((output, "html"), (json_output, "json")):
        if path is not None:
            check_output(path, (kind,))
    versions = resolve_versions(list(uris))
    if target:
        comparison = compare_on_test(versions, spectra, target, lab, covariates, id_col, unit, level, resamples, seed)
    else:
        comparison = compare_logged(versions)
    for warning in comparison.warnings:
        sys.stderr.write(f"warning: {warning}\n")
    for model in comparison.models:
        for problem in model.get("not_predicted", [])[:5]:
            sys.stderr.write(f"warning: {model['uri']}: sample {problem['sample_id']} not predicted: "
                             f"{problem['reason']}\n")
    console = Console()
    for note in comparison.notes:
        console.print(f"[yellow]note:[/] {note}")
    for table in _tables(comparison):
        console.print(table)
    for key, values in comparison.config_differences.items():
        shown = " | ".join(str(v)[:60] for v in values)
        console.print(f"configuration differs in {key}: {shown}", markup=False, highlight=False)
    if json_output is not None:
        from soilcarbon.atomic import atomic_path

        with atomic_path(json_output) as tmp:
            tmp.write_text(json.dumps(json_safe(comparison.to_dict()), indent=2), encoding="utf-8")
        console.print(f"JSON: {json_output}")
    if output is not None:
        from soilcarbon.evaluation.report import write_report

        write_report(comparison, output)
        console.print(f"report: {output}")
    if log_to_mlflow:
        run_id = log_comparison(comparison, output)
        console.print(f"evaluation run: {run_id}")
    sys.stdout.flush()


def register(app: typer.Typer) -> None:
    app.command("compare")(compare_command)
