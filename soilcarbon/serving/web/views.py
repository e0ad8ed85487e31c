"""The Compare and Stocks views of the web page (see :mod:`soilcarbon.serving.web`).

Both run the code of their commands, not copies:

- ``POST /web/compare`` (multipart: ``models`` two or more times, optional test ``files`` and ``lab``
  table, ``target``, ``level``, ``resamples``, ``seed``): :func:`~soilcarbon.evaluation.compare.resolve_versions`,
  then :func:`~soilcarbon.evaluation.compare.compare_on_test` (with test data) or
  :func:`~soilcarbon.evaluation.compare.compare_logged`; the answer shows the comparison's tables,
  embeds the HTML report of :func:`soilcarbon.evaluation.report.render` (``compare --output``) and
  offers it and the JSON of ``compare --json`` for download.
- ``POST /web/stocks`` (multipart: ``samples``, ``predictions``, optional ``fields``, ``level``,
  ``draws``, ``seed``, ``credit_basis``, ``exclude_out_of_domain``): :func:`soilcarbon.mrv.pipeline.load`
  and :func:`soilcarbon.mrv.stocks.summarize`, as ``soilcarbon stocks``; the answer shows the field,
  change and project tables and offers the STOCKS CSV, the changes CSV, the JSON of ``stocks --json``
  and the report of :func:`soilcarbon.mrv.report.render` for download; the CSV and JSON files are
  byte for byte the command's for the same inputs (the report names the uploaded files and its time).
- ``GET /web/fragments/version-choices``: the registered versions and aliases as check boxes.

User errors are the REST API's 4xx JSON answers, with the job's temporary folder taken out of the message.
"""

from __future__ import annotations

import base64
import json
import math
import shutil
import tempfile
from pathlib import Path

from fastapi import File, Form, UploadFile
from fastapi.responses import HTMLResponse

from soilcarbon.errors import SoilCarbonError
from soilcarbon.serving.web.uploads import BLOCK, ZIP_EXPANSION, WebError, safe_name, save_uploads

#: Columns of the compare page's tables: (key in the comparison's JSON, header).
COMPARE_TEST = [("uri", "version"), ("n", "n"), ("rmse", "RMSE"), ("r2", "R²"), ("rpiq", "RPIQ"), ("bias", "bias"),
                ("ccc", "CCC"), ("picp", "PICP"), ("mean_width", "mean width"),
                ("out_of_domain_share", "outside domain"), ("n_not_predicted", "not predicted")]
COMPARE_LOGGED = [("uri", "version"), ("n", "n"), ("rmse", "RMSE"), ("r2", "R²"), ("rpiq", "RPIQ"),
                  ("bias", "bias"), ("picp", "PICP"), ("mean_width", "mean width"), ("level", "level")]
PAIRS = [("a", "a"), ("b", "b"), ("rmse_diff", "RMSE(a) − RMSE(b)"), ("ci_low", "CI low"), ("ci_high", "CI high"),
         ("p_value", "p-value")]
STOCK_FIELDS = [("field", "field"), ("campaign", "campaign"), ("n", "cores"), ("stock_t_ha", "stock (t C/ha)"),
                ("lower_t_ha", "lower"), ("upper_t_ha", "upper"), ("area_ha", "area (ha)"), ("total_t", "total (t C)"),
                ("total_lower_t", "total lower"), ("total_upper_t", "total upper")]
STOCK_CHANGES = [("field", "field"), ("from", "from"), ("to", "to"), ("basis", "basis"),
                 ("change_t_ha", "change (t C/ha)"), ("lower_t_ha", "lower"), ("upper_t_ha", "upper"),
                 ("change_t", "change (t C)"), ("lower_t", "lower (t C)"), ("upper_t", "upper (t C)")]
PROJECT_TOTALS = [("campaign", "campaign"), ("fields", "fields"), ("area_ha", "area (ha)"), ("total_t", "total (t C)"),
                  ("lower_t", "lower"), ("upper_t", "upper")]
PROJECT_STRATA = [("stratum", "stratum")] + PROJECT_TOTALS
PROJECT_CHANGES = [("from", "from"), ("to", "to"), ("basis", "basis"), ("area_ha", "area (ha)"),
                   ("total_change_t", "change (t C)"), ("lower_t", "lower"), ("upper_t", "upper"),
                   ("credited_change_t", "credited (t C)"), ("credited_change_t_co2e", "credited (t CO₂e)"),
                   ("credited", "credited basis")]
DEFAULT_RESAMPLES = 2000
DEFAULT_DRAWS = 2000
#: Upper bounds of the resamples and draws a page request may ask for (the work grows with them).
MAX_RESAMPLES = 20000
MAX_DRAWS = 20000


# ============================================================================ helpers
def cell(value) -> dict:
    """A table cell: ``exact`` (the JSON text of the value, in ``data-value``) and ``shown``."""
    if isinstance(value, bool):
        shown = "yes" if value else "no"
    elif isinstance(value, float):
        shown = "–" if not math.isfinite(value) else f"{value:,.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
    elif value is None:
        shown = "–"
    else:
        shown = str(value)
    return {"exact": json.dumps(value), "shown": shown, "num": isinstance(value, (int, float)) and not
            isinstance(value, bool)}


def table(records: list[dict], columns: list[tuple[str, str]]) -> dict:
    """Columns present in ``records`` and their rows of cells."""
    present = [(k, h) for k, h in columns if any(k in r for r in records)]
    return {"columns": present, "rows": [[cell(r.get(k)) for k, _ in present] for r in records]}


def number(text: str, name: str, default: int, low: int, high: int) -> int:
    """A whole number of a form field, between ``low`` and ``high`` (the service's bound on work)."""
    text = (text or "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        raise SoilCarbonError(f"{name} must be a whole number, got {text!r}") from None
    if not low <= value <= high:
        raise SoilCarbonError(f"{name} must be between {low} and {high} on this service, got {text}")
    return value


def check_rows(path: Path, max_rows: int) -> None:
    """413 when the table at ``path`` has more lines than ``max_rows`` data rows (counted in blocks)."""
    lines = 0
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(BLOCK), b""):
            lines += block.count(b"\n")
    if lines - 1 > max_rows:
        raise WebError(413, f"{path.name}: about {lines - 1} rows, more than the {max_rows} samples per batch of "
                            "this service; split the project into smaller parts")


def save_table(upload: UploadFile | None, folder: Path, role: str) -> Path | None:
    """One uploaded table saved as ``folder/role/NAME`` (None when no file was chosen)."""
    if upload is None or not (upload.filename or (upload.size or 0) > 0):
        return None
    target = folder / role / safe_name(upload.filename, 0)
    target.parent.mkdir(parents=True)
    with open(target, "wb") as out:
        shutil.copyfileobj(upload.file, out, BLOCK)
    return target


def clean(message: str, folder: Path) -> str:
    """A message without the job's temporary folders in it."""
    from soilcarbon.serving.web.routes import clean_message

    text = str(message)
    for role in ("samples", "predictions", "fields", "lab"):
        text = text.replace(str(folder / role) + "/", "")
    return clean_message(text, folder)


def data_uri(data: bytes, kind: str) -> str:
    return f"data:{kind};base64,{base64.b64encode(data).decode('ascii')}"


# ============================================================================ routes
def install_views(router, html, cache, limits, jobs) -> None:
    """Add the compare and stocks routes to ``router`` (``html`` renders a template; ``cache`` is
    the page's model cache; ``limits`` the service's limits; ``jobs`` the progress records)."""

    @router.get("/web/fragments/version-choices", response_class=HTMLResponse)
    def version_choices():
        from soilcarbon.serving.web.routes import model_choices, read_registry
        from soilcarbon.registry import list_models

        return html("_version_choices.html", options=model_choices(read_registry(list_models), ""))

    @router.post("/web/compare", response_class=HTMLResponse)
    def compare(models: list[str] = Form(default=[]), files: list[UploadFile] = File(default=[]),
                lab: UploadFile | None = File(None), target: str = Form(""), level: str = Form(""),
                resamples: str = Form(""), seed: str = Form(""), job: str = Form("")):
        from soilcarbon.evaluation.commands import json_safe
        from soilcarbon.evaluation.compare import compare_logged, compare_on_test, resolve_versions
        from soilcarbon.evaluation.report import render
        from soilcarbon.serving.web.routes import WebProgress, parse_level

        state = jobs.start(job)
        try:
            chosen = [f for f in files if f.filename or (f.size or 0) > 0]
            target = target.strip()
            level_value = parse_level(level) or 0.9
            n_resamples = number(resamples, "resamples", DEFAULT_RESAMPLES, 100, MAX_RESAMPLES)
            seed_value = number(seed, "seed", 0, 0, 2**32 - 1)
            if len(models) < 2:
                raise SoilCarbonError(f"choose at least two model versions to compare ({len(models)} chosen)")
            if chosen and not target:
                raise SoilCarbonError("give the target column: the observed values the test samples are compared "
                                      "against (in the test table or the lab table)")
            if target and not chosen:
                raise SoilCarbonError(f"the target {target!r} needs test data: choose a test file")
            versions = resolve_versions(models)
            with tempfile.TemporaryDirectory(prefix="soilcarbon-web-") as tmp:
                folder = Path(tmp)
                try:
                    if chosen:
                        spectra = save_uploads(chosen, folder / "uploads", ZIP_EXPANSION * limits["max_body_bytes"])
                        lab_path = save_table(lab, folder, "lab")
                        state["phase"] = "loading the models"
                        loaded = [cache.get(v.uri) for v in versions]
                        comparison = compare_on_test(versions, spectra, target, lab_path, None, unit=None,
                                                     level=level_value, n_resamples=n_resamples, seed=seed_value,
                                                     models=loaded, progress=WebProgress(state, limits["max_batch"]))
                        comparison.test_data.update(
                            spectra=clean(spectra, folder) if spectra.is_file() else
                            f"{len(list(spectra.iterdir()))} OPUS files",
                            lab=lab_path.name if lab_path is not None else None)
                    else:
                        comparison = compare_logged(versions)
                    comparison.warnings = [clean(w, folder) for w in comparison.warnings]
                    comparison.notes = [clean(n, folder) for n in comparison.notes]
                    state["phase"] = "drawing"
                    report = render(comparison)
                except WebError as exc:
                    raise WebError(exc.status, clean(str(exc), folder)) from None
                except SoilCarbonError as exc:
                    raise SoilCarbonError(clean(str(exc), folder)) from None
            result = json_safe(comparison.to_dict())
            text = json.dumps(result, indent=2)
            test = comparison.mode == "test"
            return html("_compare.html", c=result, test=test,
                        metrics=table(result["models"], COMPARE_TEST if test else COMPARE_LOGGED),
                        pairs=table(result["pairs"], PAIRS), report=report,
                        report_uri=data_uri(report.encode("utf-8"), "text/html"),
                        json_uri=data_uri(text.encode("utf-8"), "application/json"),
                        not_predicted=[(m["uri"], p) for m in result["models"] for p in m.get("not_predicted", [])])
        finally:
            jobs.finish(job)

    @router.post("/web/stocks", response_class=HTMLResponse)
    def stocks_view(samples: UploadFile | None = File(None), predictions: UploadFile | None = File(None),
                    fields: UploadFile | None = File(None), level: str = Form(""), draws: str = Form(""),
                    seed: str = Form(""), credit_basis: str = Form("esm"), exclude_out_of_domain: str = Form("")):
        from soilcarbon.mrv import pipeline, stocks
        from soilcarbon.mrv.commands import summary_json
        from soilcarbon.mrv.report import render
        from soilcarbon.serving.web.routes import parse_level

        level_value = parse_level(level) or 0.9
        n_draws = number(draws, "draws", DEFAULT_DRAWS, 100, MAX_DRAWS)
        seed_value = number(seed, "seed", 0, 0, 2**32 - 1)
        if credit_basis not in ("esm", "fixed"):
            raise SoilCarbonError(f"the credited basis must be esm or fixed, got {credit_basis!r}")
        with tempfile.TemporaryDirectory(prefix="soilcarbon-web-") as tmp:
            folder = Path(tmp)
            try:
                samples_path = save_table(samples, folder, "samples")
                predictions_path = save_table(predictions, folder, "predictions")
                fields_path = save_table(fields, folder, "fields")
                if samples_path is None:
                    raise SoilCarbonError("choose the samples table (sample_id, field, campaign, core, top_cm, "
                                          "bottom_cm, bulk_density_g_cm3 ...)")
                if predictions_path is None:
                    raise SoilCarbonError("choose a predictions CSV (the output of soilcarbon predict or of the "
                                          "Predict page)")
                for path in (samples_path, predictions_path):
                    check_rows(path, limits["max_batch"])
                inputs = pipeline.load(samples_path, predictions_path, fields_path, draws=n_draws, seed=seed_value,
                                       exclude_out_of_domain=bool(exclude_out_of_domain))
                result = stocks.summarize(inputs.groups, inputs.areas, level_value, 0.10, credit_basis, inputs.strata)
                sources = {"samples": samples_path.name, "predictions": predictions_path.name,
                           "fields": fields_path.name if fields_path is not None else None}
                report = render(result, inputs, sources)
            except WebError as exc:
                raise WebError(exc.status, clean(str(exc), folder)) from None
            except SoilCarbonError as exc:
                raise SoilCarbonError(clean(str(exc), folder)) from None
        summary = summary_json(inputs, result)
        project = summary["project"]
        return html("_stocks.html", s=summary, sources=sources,
                    fields=table(summary["fields"], STOCK_FIELDS), changes=table(summary["changes"], STOCK_CHANGES),
                    totals=table(project.get("totals", []), PROJECT_TOTALS),
                    strata=table(project.get("strata", []), PROJECT_STRATA),
                    project_changes=table(project.get("changes", []), PROJECT_CHANGES),
                    credited=[e for e in project.get("changes", []) if e["credited"]],
                    csv_uri=data_uri(result.fields.to_csv(index=False).encode("utf-8"), "text/csv"),
                    changes_uri=data_uri(result.changes.to_csv(index=False).encode("utf-8"), "text/csv"),
                    json_uri=data_uri(json.dumps(summary, indent=2).encode("utf-8"), "application/json"),
                    report_uri=data_uri(report.encode("utf-8"), "text/html"))
