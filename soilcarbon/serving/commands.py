"""``soilcarbon predict`` (batch scoring, local or Spark) and ``soilcarbon serve`` (REST service)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from soilcarbon.errors import SoilCarbonError

SHOW_PROBLEMS = 10


def predict_command(
    model: str = typer.Option(..., "--model", help="MLflow model URI: models:/NAME@ALIAS, models:/NAME/VERSION, runs:/..."),
    spectra: Optional[Path] = typer.Option(None, "--spectra", help="Spectra: CSV/Parquet table, OPUS file or folder."),
    output: Path = typer.Option(..., "--output", "-o", help="Output table: OUT.csv or OUT.parquet (written atomically)."),
    covariates: Optional[Path] = typer.Option(None, "--covariates", help="Covariates table (CSV/Parquet) joined by id."),
    id_col: str = typer.Option("sample_id", "--id-col", help="Id column of the input tables."),
    unit: Optional[str] = typer.Option(None, "--unit", help="Spectral unit (nm or cm-1) when it cannot be detected."),
    id_pattern: Optional[str] = typer.Option(None, "--id-pattern", help="Regex with one group: sample id of OPUS files."),
    level: Optional[float] = typer.Option(None, "--level", help="Prediction interval level, e.g. 0.9 (default: the model's)."),
    engine: str = typer.Option("local", "--engine", help="local (streaming, one machine) or spark (Parquet input)."),
    chunk_size: int = typer.Option(5_000, "--chunk-size", help="Rows per chunk (memory is bounded by a few chunks)."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Threads predicting chunks (default: the number of CPUs, at most 4)."),
    problems: Optional[Path] = typer.Option(None, "--problems", help="Write samples that were not predicted, with the reason (CSV)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or summary."),
):
    """Predict SOC with intervals and domain flags for every sample of a file, with a registered model.

    Output columns: sample_id, prediction, lower, upper, level, in_domain, domain_score, model_uri (the resolved version, never an alias).

    Samples with missing or non-numeric values get empty predictions and are reported with the reason (exit code 0); problems with the whole input stop the command with exit code 2 and write nothing.
    """
    if engine not in ("local", "spark"):
        raise SoilCarbonError(f"--engine must be local or spark, got {engine!r}")
    if engine == "spark":
        from soilcarbon.serving.spark import predict_spark

        if spectra is None:
            raise SoilCarbonError("--engine spark needs --spectra (a Parquet table)")
        summary = predict_spark(model, spectra, output, covariates=covariates, id_col=id_col, unit=unit,
                                level=level, chunk_size=chunk_size, problems_output=problems, quiet=quiet)
    else:
        from soilcarbon.serving.batch import predict_file

        summary = predict_file(model, output, spectra=spectra, covariates=covariates, id_col=id_col, unit=unit,
                               level=level, chunk_size=chunk_size, id_pattern=id_pattern, quiet=quiet,
                               workers=workers, problems_output=problems)
    _report(summary, quiet, problems)


def _report(summary, quiet: bool, problems_path: Optional[Path]) -> None:
    for note in getattr(summary, "notes", []):
        sys.stderr.write(f"note: {note}\n")
    for sample, reason in summary.problems[:SHOW_PROBLEMS]:
        sys.stderr.write(f"warning: sample {sample} not predicted: {reason}\n")
    if summary.n_problems > SHOW_PROBLEMS:
        where = f"all in {problems_path}" if problems_path else "write them all with --problems FILE.csv"
        sys.stderr.write(f"warning: {summary.n_problems - SHOW_PROBLEMS} more sample(s) not predicted ({where})\n")
    if not quiet:
        rate = summary.n_samples / summary.seconds if summary.seconds > 0 else float("nan")
        typer.echo(f"{summary.output}: {summary.n_samples} samples, {summary.n_predicted} predicted, "
                   f"{summary.n_problems} not predicted, with {summary.model_uri} "
                   f"({summary.seconds:.1f} s, {rate:.0f} samples/s, engine {summary.engine})")


def serve_command(
    model: str = typer.Option(..., "--model", help="MLflow model URI; an alias is re-resolved by POST /v1/reload."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0 for all interfaces)."),
    port: int = typer.Option(8000, "--port", help="Port to listen on."),
    max_body_mb: float = typer.Option(32.0, "--max-body-mb", help="Largest request body accepted, in MB."),
    max_batch: int = typer.Option(1000, "--max-batch", help="Most samples accepted in one request."),
    log_level: str = typer.Option("warning", "--log-level", help="uvicorn log level."),
):
    """Serve a model over HTTP (FastAPI + uvicorn).

    Routes: POST /v1/predict (JSON), POST /v1/predict/file (CSV/Parquet table or OPUS files), GET /v1/models, GET /healthz, POST /v1/reload (re-resolve the alias), docs at /docs, and a web page at / (predict from uploaded files, browse models).

    Set SOILCARBON_API_KEY to require it in an X-API-Key header on every route but /healthz.
    """
    import uvicorn

    from soilcarbon.serving.api import create_app

    if not 0 < port < 65536:
        raise SoilCarbonError(f"--port must be between 1 and 65535, got {port}")
    if max_body_mb <= 0:
        raise SoilCarbonError(f"--max-body-mb must be positive, got {max_body_mb}")
    app = create_app(model, max_body_bytes=int(max_body_mb * 1024 * 1024), max_batch=max_batch)
    served = app.state.soilcarbon["model"]
    sys.stderr.write(f"serving {served.uri} at http://{host}:{port} (web page at /, docs at /docs)\n")
    sys.stderr.flush()
    try:
        uvicorn.run(app, host=host, port=port, log_level=log_level)
    except SystemExit as exc:  # uvicorn exits 1 when it cannot bind
        if exc.code not in (0, None):
            raise SoilCarbonError(f"cannot listen on {host}:{port}; is the port in use?") from None
        raise


def register(app: typer.Typer) -> None:
    app.command("predict")(predict_command)
    app.command("serve")(serve_command)
