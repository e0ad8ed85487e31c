"""Routes of the web page (see :mod:`soilcarbon.serving.web`).

- ``GET /`` and ``GET /models`` (and the other :data:`~soilcarbon.serving.web.PAGES`): page shells (open).
- ``GET /web/fragments/model-options``, ``GET /web/fragments/models``,
  ``GET /web/fragments/models/{name}/{version}/plots``: HTML fragments the script inserts.
- ``POST /web/predict`` (multipart: ``model``, ``files``, optional ``level`` and ``job``): saves the
  uploads (:mod:`.uploads`), scores them with :func:`~soilcarbon.serving.batch.predict_file` into
  a temporary CSV and answers the result fragment, which embeds that CSV for download.
- ``GET /web/progress/{job}``: phase and progress of a running ``POST /web/predict``.
- ``GET /compare``, ``GET /stocks`` and their routes: :mod:`.views`.

Errors are the REST API's JSON answers (``{"error": ...}``, 4xx), which the script shows on the page.
The batch limit is enforced while scoring, by the progress hook of ``predict_file``.
"""

from __future__ import annotations

import base64
import collections
import io
import os
import re
import tempfile
import threading
from pathlib import Path

import numpy as np
import pandas as pd
from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from soilcarbon.errors import SoilCarbonError
from soilcarbon.progress import Progress
from soilcarbon.serving.web import PAGES, STATIC, TEMPLATES
from soilcarbon.serving.web.charts import interval_chart, spectra_chart
from soilcarbon.serving.web.uploads import ZIP_EXPANSION, WebError, save_uploads

METRICS = [("rmse", "RMSE"), ("r2", "R²"), ("rpiq", "RPIQ"), ("bias", "bias"), ("picp", "PICP"),
           ("mean_width", "mean width")]
JOB_ID = re.compile(r"^[A-Za-z0-9_-]{8,64}$")
MAX_JOBS = 200
CACHED_MODELS = 3


# ============================================================================ state
class Jobs:
    """Progress of running predictions, by the id the page chose for them."""

    def __init__(self):
        self.lock = threading.Lock()
        self.running: dict[str, dict] = {}

    def start(self, job: str) -> dict:
        state = {"phase": "saving the uploaded files", "done": 0, "total": None, "samples": 0}
        if JOB_ID.match(job or ""):
            with self.lock:
                if len(self.running) < MAX_JOBS:
                    self.running[job] = state
        return state

    def get(self, job: str) -> dict:
        with self.lock:
            return dict(self.running.get(job) or {"phase": "waiting", "done": 0, "total": None, "samples": 0})

    def finish(self, job: str) -> None:
        with self.lock:
            self.running.pop(job, None)


class WebProgress(Progress):
    """``predict_file``'s progress hook: records progress for the page and stops a job that
    exceeds the batch limit (the output is then discarded by ``predict_file``)."""

    def __init__(self, state: dict, max_batch: int):
        super().__init__(quiet=True)
        self.state, self.max_batch = state, max_batch

    def start(self, total) -> None:
        self.state.update(phase="reading and scoring", total=total, done=0)

    def update(self, completed=None, samples: int = 0) -> None:
        if samples > self.max_batch:
            raise WebError(413, f"the upload holds more than {self.max_batch} samples, the limit of this service; "
                                "split it into smaller batches")
        if completed is not None:
            self.state["done"] = completed
        self.state["samples"] = samples


class Models:
    """Loaded models by resolved URI: the served one, and the last few the page asked for."""

    def __init__(self, served_state: dict):
        self.served_state = served_state
        self.lock = threading.Lock()
        self.cache: collections.OrderedDict = collections.OrderedDict()

    def get(self, resolved_uri: str):
        from soilcarbon.serving.model import load_model

        served = self.served_state["model"]
        if served.uri == resolved_uri:
            return served
        with self.lock:
            if resolved_uri in self.cache:
                self.cache.move_to_end(resolved_uri)
                return self.cache[resolved_uri]
            model = load_model(resolved_uri)
            self.cache[resolved_uri] = model
            while len(self.cache) > CACHED_MODELS:
                self.cache.popitem(last=False)
            return model


# ============================================================================ views
def model_choices(registered: list[dict], selected: str) -> list[dict]:
    """Options of the model menu: per model its aliases, then its versions, newest first."""
    by_name: dict[str, list[dict]] = collections.defaultdict(list)
    for row in registered:
        by_name[row["name"]].append(row)
    options = []
    for name in sorted(by_name):
        rows = sorted(by_name[name], key=lambda r: -int(r["version"]))
        for row in rows:
            for alias in row["aliases"]:
                options.append({"value": f"models:/{name}@{alias}",
                                "label": f"{name} @{alias} (version {row['version']}){_target(row)}"})
        for row in rows:
            options.append({"value": f"models:/{name}/{row['version']}",
                            "label": f"{name} version {row['version']}{_target(row)}"})
    for option in options:
        option["selected"] = option["value"] == selected
    return options


def _target(row: dict) -> str:
    unit = row.get("unit") or ""
    unit = "" if unit in ("", "unspecified") else f", {unit}"
    return f" - {row['target']}{unit}" if row.get("target") else ""


def unit_label(target: str, unit: str) -> str:
    unit = "" if unit in ("", "unspecified", None) else unit
    return f"{target or 'prediction'}{f' ({unit})' if unit else ''}"


def result_rows(text: pd.DataFrame) -> list[dict]:
    """Table rows from the predictions CSV read as text: exact values and short displays."""
    rows = []
    for record in text.to_dict("records"):
        row = {"sample_id": record["sample_id"], "in_domain": record["in_domain"],
               "predicted": record["prediction"] != ""}
        for column in ("prediction", "lower", "upper"):
            value = record[column]
            row[column] = {"exact": value, "shown": f"{float(value):.4g}" if value != "" else "-"}
        rows.append(row)
    return rows


def plotted_spectra(model, path: Path, n_rows: int):
    """The input's spectra on the model's axis, read again through the batch path
    (``open_input`` + ``prepare_chunk``); rows of problems are NaN. None for covariates models."""
    from soilcarbon.models.matrix import prepare_chunk
    from soilcarbon.serving.sources import open_input

    if model.axis is None:
        return None
    source = open_input(model, path)
    blocks = []
    for start, frame, ids, values in source.chunks():
        prepared = prepare_chunk(model, source.plan, frame, start, ids, values)
        blocks.append(prepared.X[:, :len(model.axis)])
    values = np.vstack(blocks) if blocks else np.empty((0, len(model.axis)))
    return values if len(values) == n_rows else None


def clean_message(message: str, folder: Path) -> str:
    """A message about the job's files, without the temporary folder in it."""
    uploads = folder / "uploads"
    return (str(message).replace(str(uploads / "opus-files"), "the uploaded OPUS files")
            .replace(str(uploads) + os.sep, "").replace(str(folder) + os.sep, ""))


def parse_level(text: str | None) -> float | None:
    from soilcarbon.serving.model import check_level

    return None if text is None or not str(text).strip() else check_level(str(text).strip())


# ============================================================================ routes
def install_routes(app, needs_key: bool) -> None:
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)),
                             autoescape=jinja2.select_autoescape(["html"]), trim_blocks=True, lstrip_blocks=True)
    limits = app.state.limits
    served_state = app.state.soilcarbon
    jobs, models = Jobs(), Models(served_state)
    router = APIRouter(include_in_schema=False)

    def html(template: str, status: int = 200, **context) -> HTMLResponse:
        return HTMLResponse(env.get_template(template).render(**context), status_code=status)

    @app.exception_handler(WebError)
    async def on_web_error(request: Request, exc: WebError):
        return JSONResponse(status_code=exc.status, content={"error": str(exc)})

    def page(current):
        def view():
            return html(current.template, pages=PAGES, current=current, needs_key=needs_key,
                        max_body_mb=limits["max_body_bytes"] / (1024 * 1024), max_batch=limits["max_batch"])
        return view

    for item in PAGES:
        router.add_api_route(item.path, page(item), methods=["GET"], response_class=HTMLResponse)

    @router.get("/web/fragments/model-options", response_class=HTMLResponse)
    def model_options():
        from soilcarbon.registry import list_models

        registered = read_registry(list_models)
        served = served_state["model"]
        options = model_choices(registered, served.requested_uri)
        if not any(o["selected"] for o in options):
            options.insert(0, {"value": served.requested_uri, "label": f"{served.requested_uri} (served)",
                               "selected": True})
        return html("_model_options.html", options=options)

    @router.get("/web/fragments/models", response_class=HTMLResponse)
    def models_table():
        from soilcarbon.registry import list_models

        registered = read_registry(list_models)
        by_name: dict[str, list[dict]] = collections.defaultdict(list)
        for row in registered:
            by_name[row["name"]].append(row)
        groups = [{"name": name, "versions": sorted(rows, key=lambda r: -int(r["version"]))}
                  for name, rows in sorted(by_name.items())]
        return html("_models.html", groups=groups, metrics=METRICS, served=served_state["model"].uri,
                    fmt=lambda v: "-" if v is None or not np.isfinite(v) else f"{v:.4g}")

    @router.get("/web/fragments/models/{name}/{version}/plots", response_class=HTMLResponse)
    def model_plots(name: str, version: str):
        from mlflow.exceptions import MlflowException

        from soilcarbon.training.tracking import configure

        client = configure()
        try:
            model_version = client.get_model_version(name, version)
        except MlflowException:
            raise WebError(404, f"model {name!r} has no version {version!r}; see the Models page") from None
        images = []
        with tempfile.TemporaryDirectory(prefix="soilcarbon-plots-") as tmp:
            try:
                folder = Path(client.download_artifacts(model_version.run_id, "plots", tmp))
            except (MlflowException, OSError):
                folder = None
            for path in sorted(folder.glob("*.png")) if folder is not None and folder.is_dir() else []:
                images.append({"name": path.stem.replace("_", " "),
                               "data": base64.b64encode(path.read_bytes()).decode("ascii")})
        return html("_plots.html", images=images, name=name, version=version)

    @router.get("/web/progress/{job}")
    def progress(job: str):
        return jobs.get(job)

    @router.post("/web/predict", response_class=HTMLResponse)
    def predict(model: str = Form(...), files: list[UploadFile] = File(default=[]), level: str = Form(""),
                job: str = Form("")):
        from soilcarbon.registry import resolve as resolve_model_uri
        from soilcarbon.serving.batch import predict_file

        state = jobs.start(job)
        try:
            chosen = [f for f in files if f.filename or (f.size or 0) > 0]
            level_value = parse_level(level)
            resolved, _, _ = resolve_model_uri(model)
            with tempfile.TemporaryDirectory(prefix="soilcarbon-web-") as tmp:
                folder = Path(tmp)
                try:
                    source = save_uploads(chosen, folder / "uploads", ZIP_EXPANSION * limits["max_body_bytes"])
                    state["phase"] = "loading the model"
                    served = models.get(resolved)
                    output = folder / "predictions.csv"
                    summary = predict_file(served, output, spectra=source, level=level_value, quiet=True,
                                           progress=WebProgress(state, limits["max_batch"]))
                    state["phase"] = "drawing"
                    data = output.read_bytes()
                    text = pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False)
                    numbers = pd.read_csv(io.BytesIO(data), dtype={"sample_id": str})
                    spectra = plotted_spectra(served, source, len(numbers))
                except WebError as exc:
                    raise WebError(exc.status, clean_message(str(exc), folder)) from None
                except SoilCarbonError as exc:
                    raise SoilCarbonError(clean_message(str(exc), folder)) from None
            label = unit_label(served.target, served.target_unit)
            in_domain = numbers["in_domain"].astype(str).str.lower().eq("true").to_numpy()
            numbers["in_domain"] = in_domain
            chart = interval_chart(numbers, label)
            lines = None if spectra is None else spectra_chart(served.axis, served.unit, spectra,
                                                                numbers["sample_id"], in_domain)
            return html("_result.html", summary=summary, rows=result_rows(text), label=label, chart=chart,
                        lines=lines, csv_data=base64.b64encode(data).decode("ascii"),
                        n_ood=int((~in_domain & numbers["prediction"].notna().to_numpy()).sum()),
                        level=float(numbers["level"].dropna().iloc[0]) if numbers["level"].notna().any() else None)
        finally:
            jobs.finish(job)

    from soilcarbon.serving.web.views import install_views

    install_views(router, html, models, limits, jobs)
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")


def read_registry(list_models) -> list[dict]:
    try:
        return list_models()
    except Exception as exc:  # the registry is a separate service; report, do not crash
        raise WebError(503, f"the model registry cannot be read ({type(exc).__name__}: {exc})") from None
