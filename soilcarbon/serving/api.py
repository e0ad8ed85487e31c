"""The REST service (FastAPI, served by uvicorn): the loaded model behind a small JSON API.

Routes: ``POST /v1/predict`` (JSON spectra), ``POST /v1/predict/file`` (a CSV/Parquet table or
OPUS files, multipart), ``GET /v1/models`` (registered models, versions, aliases, CV metrics),
``POST /v1/reload`` (re-resolve the alias and load the version it now points to),
``GET /healthz``, the OpenAPI docs at ``/docs`` and the web page at ``/`` (:mod:`soilcarbon.serving.web`).

The model is loaded once, when the app is created. Every bad request gets a 4xx JSON answer
``{"error": "<one line saying what is wrong>"}`` (validation problems also carry ``detail``):
malformed JSON 400, missing/invalid API key 401, body or batch too large 413, unsupported upload
415, anything else about the content 422. The body limit is enforced by a small ASGI middleware
before the body is parsed (Content-Length, and a byte count for chunked uploads); the API key
(``SOILCARBON_API_KEY``, header ``X-API-Key`` or ``Authorization: Bearer``) is checked there too,
on every route but ``/healthz``, with a constant-time comparison.

Prediction handlers are plain ``def`` functions, so FastAPI runs them in its thread pool and
several requests are scored at once (numpy releases the GIL).
"""

from __future__ import annotations

import hmac
import json
import os
import tempfile
import threading
from pathlib import Path
from typing import Optional, Union

import numpy as np
import pandas as pd
from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from soilcarbon.errors import SoilCarbonError
from soilcarbon.models.matrix import sample_id
from soilcarbon.serving import web
from soilcarbon.serving.batch import predict_spectra
from soilcarbon.serving.model import ServedModel, load_model
from soilcarbon.serving.parallel import limit_openmp_threads

DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024
DEFAULT_MAX_BATCH = 1000
API_KEY_ENV = "SOILCARBON_API_KEY"
OPEN_PATHS = ("/healthz", *web.OPEN_PATHS)  # the web page shells and assets hold no data
SWAGGER_UI = Path(__file__).with_name("static") / "swagger-ui"
DOCS_ASSETS = "/docs-assets"


# ============================================================================ request / response models
class Sample(BaseModel):
    """One spectrum: its id, its values on the request axis, and optional covariates."""

    model_config = ConfigDict(extra="forbid")
    id: Union[str, int] = Field(description="Sample id, unique within the request.")
    values: Optional[list[Optional[float]]] = Field(None, description="Spectrum values on `axis`, same length.")
    covariates: Optional[dict[str, Optional[float]]] = Field(None, description="Covariates of this sample.")


class PredictRequest(BaseModel):
    """A batch of spectra on one axis."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"example": {
        "axis": [1100, 1102, 1104], "unit": "nm", "samples": [{"id": "S1", "values": [0.31, 0.32, 0.33]}]}})
    axis: Optional[list[float]] = Field(None, description="Spectral axis of every sample (nm or cm-1).")
    unit: Optional[str] = Field(None, description="'nm' (wavelength) or 'cm-1' (wavenumber).")
    samples: list[Sample] = Field(description="The samples to predict (at least one).")
    covariates: Optional[dict[str, dict[str, Optional[float]]]] = Field(
        None, description="Covariates by sample id: {id: {name: value}}, for models that use them.")
    level: Optional[float] = Field(None, description="Interval level in (0, 1); default: the model's.")


class Prediction(BaseModel):
    """One sample's outputs; a sample that could not be predicted has null numbers and a ``problem``."""

    id: str
    prediction: Optional[float]
    lower: Optional[float]
    upper: Optional[float]
    level: float
    in_domain: bool
    domain_score: Optional[float]
    problem: Optional[str] = Field(None, description="Why this sample was not predicted (null when it was).")


class PredictResponse(BaseModel):
    model_uri: str
    predictions: list[Prediction]


class ErrorResponse(BaseModel):
    error: str


ERRORS = {code: {"model": ErrorResponse} for code in (400, 401, 413, 415, 422)}


# ============================================================================ middleware
class Guard:
    """ASGI middleware: API key check (all paths but /healthz) and request body size limit."""

    def __init__(self, app, api_key: str | None, max_body_bytes: int):
        self.app = app
        self.api_key = api_key.encode() if api_key else None
        self.max_body_bytes = int(max_body_bytes)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v for k, v in scope.get("headers", [])}
        if self.api_key is not None and scope.get("path") not in OPEN_PATHS:
            given = headers.get("x-api-key")
            auth = headers.get("authorization", b"")
            if given is None and auth[:7].lower() == b"bearer ":
                given = auth[7:].strip()
            if given is None:
                return await _send_json(send, 401, {"error": "missing API key: send it in the X-API-Key header"},
                                        {"www-authenticate": "ApiKey"})
            if not hmac.compare_digest(given, self.api_key):
                return await _send_json(send, 401, {"error": "invalid API key"}, {"www-authenticate": "ApiKey"})
        length = headers.get("content-length")
        if length is not None:
            try:
                size = int(length)
            except ValueError:
                return await _send_json(send, 400, {"error": "invalid Content-Length header"})
            if size > self.max_body_bytes:
                return await _send_json(send, 413, {"error": _too_large(size, self.max_body_bytes)})
            return await self.app(scope, receive, send)
        if scope.get("method") in ("POST", "PUT", "PATCH"):  # chunked body: count while buffering
            chunks, total = [], 0
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                body = message.get("body", b"")
                total += len(body)
                if total > self.max_body_bytes:
                    return await _send_json(send, 413, {"error": _too_large(total, self.max_body_bytes, more=True)})
                chunks.append(body)
                if not message.get("more_body", False):
                    break
            data = b"".join(chunks)
            sent = False

            async def replay():
                nonlocal sent
                if sent:
                    return await receive()
                sent = True
                return {"type": "http.request", "body": data, "more_body": False}

            return await self.app(scope, replay, send)
        return await self.app(scope, receive, send)


def _too_large(size: int, limit: int, more: bool = False) -> str:
    return (f"request body too large: {'more than ' if more else ''}{size} bytes, the limit is {limit} bytes; "
            "send smaller batches")


async def _send_json(send, status: int, content: dict, headers: dict | None = None) -> None:
    body = json.dumps(content).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


# ============================================================================ helpers
def _error(status: int, message: str, **extra) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": " ".join(str(message).split()), **extra})


def _validation_message(errors) -> tuple[int, str]:
    first = errors[0] if errors else {}
    if first.get("type") == "json_invalid":
        context = first.get("ctx", {}).get("error", "")
        return 400, f"request body is not valid JSON ({context}); send a JSON object"
    parts = []
    for error in errors[:3]:
        location = ".".join(str(p) for p in error.get("loc", ()) if p != "body")
        parts.append(f"{location or 'body'}: {error.get('msg', 'invalid')}")
    more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
    return 422, "; ".join(parts) + more


#: At most this many validation errors are itemized in a 422's ``detail`` (all are counted).
MAX_DETAIL = 20


def _validation_detail(errors) -> list[dict]:
    """Where and why, never what: pydantic's errors without ``input`` (and ``ctx``/``url``), so a bad
    body of any size gets a small answer that does not echo the data back."""
    detail = [{"loc": [str(p) for p in error.get("loc", ())], "msg": str(error.get("msg", "invalid"))[:200],
               "type": str(error.get("type", ""))} for error in errors[:MAX_DETAIL]]
    if len(errors) > MAX_DETAIL:
        detail.append({"loc": [], "msg": f"{len(errors) - MAX_DETAIL} more errors not listed", "type": "truncated"})
    return detail


def _offline_docs(app: FastAPI) -> None:
    """``/docs``: Swagger UI served from this package (``static/swagger-ui``, vendored from the npm
    package ``swagger-ui-dist``), so the page works without internet access."""
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.staticfiles import StaticFiles

    app.mount(DOCS_ASSETS, StaticFiles(directory=SWAGGER_UI), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def docs(request: Request):
        root = request.scope.get("root_path", "").rstrip("/")
        return get_swagger_ui_html(
            openapi_url=root + app.openapi_url, title="soilcarbon - API docs",
            swagger_js_url=f"{root}{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{root}{DOCS_ASSETS}/favicon-32x32.png",
            oauth2_redirect_url=None,
            swagger_ui_parameters={"validatorUrl": None},  # no badge from validator.swagger.io
        )


def _predictions(model: ServedModel, frame: pd.DataFrame) -> dict:
    columns = {c: frame[c].to_numpy() for c in ("prediction", "lower", "upper", "level", "domain_score")}
    in_domain = frame["in_domain"].to_numpy()
    ids = frame["sample_id"].to_numpy(dtype=object, na_value="")
    problems = frame["problem"].to_numpy(dtype=object, na_value=None) if "problem" in frame else [None] * len(frame)
    rows = [
        {"id": str(ids[i]), "prediction": float(columns["prediction"][i]), "lower": float(columns["lower"][i]),
         "upper": float(columns["upper"][i]), "level": float(columns["level"][i]), "in_domain": bool(in_domain[i]),
         "domain_score": float(columns["domain_score"][i]), "problem": problems[i]}
        for i in range(len(frame))
    ]
    for row in rows:  # JSON has no NaN: a sample that was not predicted has nulls and a problem
        for key, value in row.items():
            if isinstance(value, float) and not np.isfinite(value):
                row[key] = None
    return {"model_uri": model.uri, "predictions": rows}


def _covariates_frame(request: PredictRequest, ids: list[str]) -> pd.DataFrame | None:
    rows: dict[str, dict] = {}
    if request.covariates:
        unknown = [k for k in request.covariates if k not in set(ids)]
        if unknown:
            raise SoilCarbonError(f"covariates given for unknown sample id(s) {', '.join(unknown[:5])}")
        rows.update({k: dict(v) for k, v in request.covariates.items()})
    for sample, sid in zip(request.samples, ids):
        if sample.covariates:
            rows.setdefault(sid, {}).update(sample.covariates)
    if not rows:
        return None
    frame = pd.DataFrame.from_dict(rows, orient="index").astype(float)
    return frame


# ============================================================================ app
def create_app(model_uri: str, *, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, max_batch: int = DEFAULT_MAX_BATCH,
               api_key: str | None = None, native_threads: int | None = 1) -> FastAPI:
    """The service for ``model_uri`` (any MLflow model URI; an alias is resolved now and on reload).

    ``api_key`` defaults to ``$SOILCARBON_API_KEY`` (no key check when unset or empty).
    ``native_threads`` limits BLAS/OpenMP pools of this process (``threadpoolctl``): requests are
    already served by parallel threads, and OpenMP threads spinning against each other made a
    one-spectrum prediction ~8x slower on a busy 2-core machine. BLAS is limited here, for the
    process; OpenMP's limit is per thread, so each thread that runs predictions sets it once
    (:func:`~soilcarbon.serving.parallel.limit_openmp_threads`). None leaves them alone.
    """
    if max_batch < 1:
        raise SoilCarbonError(f"the batch limit must be at least 1 sample, got {max_batch}")
    if max_body_bytes < 1024:
        raise SoilCarbonError(f"the body limit must be at least 1024 bytes, got {max_body_bytes}")
    api_key = api_key if api_key is not None else os.environ.get(API_KEY_ENV) or None
    if native_threads is not None:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=int(native_threads))
    state = {"model": load_model(model_uri)}
    reload_lock = threading.Lock()

    def limit_threads() -> None:  # in the request's thread: OpenMP limits do not cross threads
        if native_threads is not None:
            limit_openmp_threads(int(native_threads))

    app = FastAPI(
        title="soilcarbon",
        summary="Soil organic carbon from spectra, with prediction intervals and domain flags.",
        version="1",
        docs_url=None,  # /docs below, with Swagger UI from the package instead of a CDN
        redoc_url=None,
    )
    _offline_docs(app)
    app.state.soilcarbon = state
    app.state.limits = {"max_body_bytes": max_body_bytes, "max_batch": max_batch}
    app.add_middleware(Guard, api_key=api_key, max_body_bytes=max_body_bytes)

    @app.exception_handler(RequestValidationError)
    async def on_validation(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        status, message = _validation_message(errors)
        return _error(status, message, detail=_validation_detail(errors))

    async def on_refused(request: Request, exc: Exception):  # bad input: 422 unless it has a status of its own
        return _error(getattr(exc, "status", 422), str(exc))

    app.add_exception_handler(SoilCarbonError, on_refused)
    app.add_exception_handler(_Refused, on_refused)

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: StarletteHTTPException):
        message = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        if exc.status_code == 404:
            message = f"no route {request.method} {request.url.path}; see /docs"
        elif exc.status_code == 405:
            message = f"method {request.method} is not allowed on {request.url.path}; see /docs"
        return JSONResponse(status_code=exc.status_code, content={"error": message}, headers=exc.headers)

    def check_batch(n: int) -> None:
        if n == 0:
            raise SoilCarbonError("empty batch: send at least one sample")
        if n > max_batch:
            raise _Limit(f"batch of {n} samples exceeds the limit of {max_batch}; split it into smaller batches")

    @app.exception_handler(Exception)
    async def on_internal(request: Request, exc: Exception):
        return _error(500, f"internal error ({type(exc).__name__}); see the server log")

    @app.get("/healthz", summary="Liveness and the model version being served")
    def healthz():
        return {"status": "ok", "model_uri": state["model"].uri}

    @app.post("/v1/predict", response_model=PredictResponse, responses=ERRORS,
              summary="Predict SOC for spectra sent as JSON")
    def predict(request: PredictRequest):
        limit_threads()
        model = state["model"]
        check_batch(len(request.samples))
        level = model.check_level(request.level)
        given = [sample_id(s.id) for s in request.samples]  # None: no id (a per-sample problem, as in batches)
        ids = [i if i is not None else f"(sample {k + 1} without id)" for k, i in enumerate(given)]
        spectra = None
        if model.axis is not None:
            spectra = _request_spectra(request, ids, model)
        covariates = _covariates_frame(request, ids)
        if model.axis is None and covariates is None:
            raise SoilCarbonError(f"the model {model.uri} needs covariates {', '.join(model.covariates)}; "
                                  "send them per sample or in 'covariates'")
        frame = predict_spectra(model, spectra, covariates, level, ids=given)
        return JSONResponse(_predictions(model, frame))

    @app.post("/v1/predict/file", response_model=PredictResponse, responses=ERRORS,
              summary="Predict SOC for an uploaded CSV/Parquet table or one or more OPUS files")
    def predict_file(files: list[UploadFile] = File(..., description="A CSV/Parquet table, or OPUS files."),
                     unit: Optional[str] = Form(None, description="Spectral unit of a table when not detectable."),
                     id_col: str = Form("sample_id", description="Id column of a table."),
                     level: Optional[float] = Form(None, description="Interval level in (0, 1)."),
                     id_pattern: Optional[str] = Form(None, description="Regex with one group: OPUS sample id.")):
        limit_threads()
        model = state["model"]
        level = model.check_level(level)
        with tempfile.TemporaryDirectory(prefix="soilcarbon-upload-") as folder:
            try:
                spectra, covariates = _read_uploads(files, Path(folder), model, unit, id_col, id_pattern)
                n = len(spectra) if spectra is not None else len(covariates)
                check_batch(n)
                frame = predict_spectra(model, spectra, covariates, level)
            except SoilCarbonError as exc:  # name the uploads, not our temporary folder
                text = str(exc).replace(str(Path(folder) / "opus"), "uploaded OPUS files")
                raise SoilCarbonError(text.replace(str(folder) + os.sep, "")) from None
        return JSONResponse(_predictions(model, frame))

    @app.get("/v1/models", summary="Registered models, versions, aliases and cross-validated metrics")
    def models():
        from soilcarbon.registry import list_models

        try:
            registered = list_models()
        except Exception as exc:  # the registry is a separate service; report, do not crash
            return _error(503, f"the model registry cannot be read ({type(exc).__name__}: {exc})")
        return {"serving": state["model"].describe(), "models": registered}

    @app.post("/v1/reload", summary="Re-resolve the model URI (e.g. an alias) and load the version it points to")
    def reload():
        with reload_lock:
            current = state["model"]
            try:
                fresh = load_model(current.requested_uri) if _resolves_elsewhere(current) else current
            except SoilCarbonError as exc:
                return _error(409, f"reload failed, still serving {current.uri}: {exc}")
            state["model"] = fresh
        return {"model_uri": fresh.uri, "previous_model_uri": current.uri, "changed": fresh.uri != current.uri}

    web.install(app, needs_key=api_key is not None)  # the web page at /
    return app


class _Refused(Exception):
    """A request refused with an HTTP status of its own (``status``); one handler with SoilCarbonError."""


class _Limit(_Refused):
    """A configured size limit was exceeded."""
    status = 413


class _Unsupported(_Refused):
    """An upload of a type we cannot read."""
    status = 415


def _resolves_elsewhere(model: ServedModel) -> bool:
    from soilcarbon.registry import resolve

    resolved, _, _ = resolve(model.requested_uri)
    return resolved != model.uri


def _request_spectra(request: PredictRequest, ids: list[str], model: ServedModel):
    from soilcarbon.spectral.spectra import Spectra, check_unit

    if request.axis is None:
        raise SoilCarbonError(f"'axis' is required: the model {model.uri} predicts from spectra "
                              f"({len(model.axis)} points in {model.unit})")
    if request.unit is None:
        raise SoilCarbonError("'unit' is required: 'nm' or 'cm-1'")
    unit = check_unit(request.unit)
    n_axis = len(request.axis)
    rows = []
    for sample, sid in zip(request.samples, ids):
        if sample.values is None:
            raise SoilCarbonError(f"sample {sid}: no 'values'")
        if len(sample.values) != n_axis:
            raise SoilCarbonError(f"sample {sid}: {len(sample.values)} values but the axis has {n_axis} points; "
                                  "send one value per axis point")
        rows.append(sample.values)
    values = np.array(rows, dtype=float) if rows else np.empty((0, n_axis))
    # null / NaN values are per-sample problems (reported in the response), as in batch files
    return Spectra(ids=ids, axis=request.axis, unit=unit, values=values, source="request", allow_nan=True)


def _read_uploads(files: list[UploadFile], folder: Path, model: ServedModel, unit, id_col, id_pattern):
    """Spectra (and covariates from extra table columns) of the uploaded files."""
    from soilcarbon.spectral.readers import OPUS_MAGIC, TABLE_SUFFIXES, read_spectra

    if not files:
        raise SoilCarbonError("no file uploaded: send a CSV/Parquet table or OPUS files in the 'files' field")
    tables, opus = [], []
    for index, upload in enumerate(files):
        name = Path(upload.filename or f"upload-{index}").name.strip() or f"upload-{index}"
        if name.startswith("."):
            name = "_" + name
        target = folder / name
        if target.exists():
            raise SoilCarbonError(f"two uploaded files are named {name!r}; give every file its own name")
        data = upload.file.read()
        target.write_bytes(data)
        if target.suffix.lower() in TABLE_SUFFIXES:
            tables.append(target)
        elif data[:4] == OPUS_MAGIC or target.suffix[1:].isdigit():
            opus.append(target)
        else:
            raise _Unsupported(f"{name}: unsupported file type; upload a .csv/.parquet table or OPUS files (.0, .1 ...)")
    if tables and (opus or len(tables) > 1):
        raise SoilCarbonError("upload either one table or OPUS files, not several tables or a mix")
    if tables:
        path = tables[0]
        if model.axis is None:
            from soilcarbon.serving.sources import read_covariates

            return None, read_covariates(path, id_col)
        spectra = read_spectra(path, id_col=id_col, unit=unit, allow_nan=True)
        covariates = None
        if model.covariates:
            meta = spectra.meta.copy()
            meta.index = spectra.ids
            covariates = meta
        return spectra, covariates
    if model.axis is None:
        raise SoilCarbonError(f"the model {model.uri} uses covariates only; upload a covariates table")
    if len(opus) == 1:
        return read_spectra(opus[0], unit=unit, id_pattern=id_pattern), None
    opus_folder = folder / "opus"
    opus_folder.mkdir()
    for path in opus:
        path.rename(opus_folder / path.name)
    return read_spectra(opus_folder, unit=unit, id_pattern=id_pattern), None
