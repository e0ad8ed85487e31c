"""The web page of ``soilcarbon serve``: predict from uploaded files, browse registered models,
compare versions (``soilcarbon compare``) and compute stocks (``soilcarbon stocks``).

Server-rendered HTML (Jinja2 templates) with one small script (``static/app.js``); every asset is
served by the package (no CDN, no build step). Mounted on the REST app by
:func:`soilcarbon.serving.api.create_app` through :func:`install`, so the API key rule, the body
limit and the error answers are the REST API's own:

- the page shells and static files (:data:`OPEN_PATHS`) hold no data and are open; everything
  else (model lists, predictions, plots) is fetched by the script with the ``X-API-Key`` header,
  which the page asks for once and keeps in the tab's ``sessionStorage``;
- uploads go through the same body limit middleware; scoring runs through
  :func:`soilcarbon.serving.batch.predict_file` (see :mod:`.routes`), so the downloaded CSV is
  byte for byte what ``soilcarbon predict`` writes for the same files.

Pages are listed in :data:`PAGES`; a new view (e.g. compare, stocks) adds an entry, a template
and its routes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
STATIC = HERE / "static"
TEMPLATES = HERE / "templates"


@dataclass(frozen=True)
class Page:
    path: str
    title: str
    template: str
    description: str = ""


PAGES: list[Page] = [
    Page("/", "Predict", "predict.html", "Upload spectra, get SOC with intervals and domain flags"),
    Page("/models", "Models", "models.html", "Registered models, versions, aliases and CV metrics"),
    Page("/compare", "Compare", "compare.html",
         "Compare registered versions: their logged CV metrics, or their accuracy on the same test samples"),
    Page("/stocks", "Stocks", "stocks.html",
         "SOC stocks (t C/ha) per field and campaign, their change and project totals, with intervals"),
]

#: Paths served without the API key: the page shells and the static assets (no data in them).
OPEN_PATHS: tuple[str, ...] = tuple(p.path for p in PAGES) + tuple(
    f"/static/{f.name}" for f in sorted(STATIC.iterdir()) if f.is_file())


def install(app, needs_key: bool) -> None:
    """Add the pages, their data routes and the static files to the REST ``app`` (whose
    ``state.soilcarbon`` and ``state.limits`` they use); ``needs_key``: the page asks for the key."""
    from soilcarbon.serving.web.routes import install_routes

    install_routes(app, needs_key)
