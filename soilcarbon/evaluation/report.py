"""A self-contained HTML report of a comparison: tables and matplotlib figures embedded as PNG
(base64 ``data:`` URIs), no script, style sheet or image fetched from anywhere, so the file opens
offline and can be mailed as it is.

Figures (test data): predicted vs observed with the 1:1 line and the intervals, errors against the
observed value, and coverage and mean interval width per range of the observed values, one colour
per version. Without test data: the cross-validated metrics each version logged, and the
out-of-fold plot its training run logged.
"""

from __future__ import annotations

import base64
import html
import io
import math
from datetime import datetime, timezone

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1100px;
color:#222;line-height:1.4}h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.8em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}th,td{border:1px solid #ccc;padding:.25em .6em;
text-align:right}th{background:#f3f3f3}td.l,th.l{text-align:left}.warn{background:#fff4d6;border-left:4px solid
#e0a000;padding:.4em .8em;margin:.4em 0}.note{color:#555}img{max-width:100%;display:block;margin:.8em 0}
code{background:#f5f5f5;padding:0 .2em}
"""
COLOURS = plt.rcParams["axes.prop_cycle"].by_key()["color"]


def _png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _img(data: str, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _fmt(value, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        return f"{value:.{digits}g}"
    return html.escape(str(value))


def _table(header: list[str], rows: list[list], left: int = 1) -> str:
    head = "".join(f'<th class="{"l" if i < left else ""}">{html.escape(h)}</th>' for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(f'<td class="{"l" if i < left else ""}">{_fmt(v)}</td>' for i, v in enumerate(row))
                   + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _label(entry: dict) -> str:
    return f"{entry['name']} v{entry['version']}"


# ============================================================================ figures
def _panels(n: int, width: float = 4.2, height: float = 4.0):
    cols = min(n, 3)
    rows = int(math.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def observed_vs_predicted(comparison, unit: str = "") -> str:
    """One panel per version: predictions with their intervals against the observed values, 1:1 line."""
    table = comparison.predictions
    label = f"{comparison.target}{f' ({unit})' if unit else ''}"
    fig, axes = _panels(len(comparison.models))
    low = min(table["observed"].min(), table["lower"].min())
    high = max(table["observed"].max(), table["upper"].max())
    pad = 0.03 * (high - low)
    for k, (ax, entry) in enumerate(zip(axes, comparison.models)):
        rows = table[table["model_uri"] == entry["uri"]]
        err = np.clip(np.vstack([rows["prediction"] - rows["lower"], rows["upper"] - rows["prediction"]]), 0, None)
        ax.errorbar(rows["observed"], rows["prediction"], yerr=err, fmt="none", ecolor="0.75", elinewidth=0.5,
                    zorder=1)
        inside = rows["in_domain"].astype(bool).to_numpy()
        colour = COLOURS[k % len(COLOURS)]
        ax.scatter(rows["observed"][inside], rows["prediction"][inside], s=9, color=colour, zorder=2,
                   label="in domain")
        if (~inside).any():
            ax.scatter(rows["observed"][~inside], rows["prediction"][~inside], s=14, facecolors="none",
                       edgecolors="crimson", zorder=3, label="outside domain")
        ax.plot([low - pad, high + pad], [low - pad, high + pad], "k--", lw=1, label="1:1")
        ax.set(xlim=(low - pad, high + pad), ylim=(low - pad, high + pad), xlabel=f"observed {label}",
               ylabel=f"predicted {label}", aspect="equal")
        ax.set_title(f"{_label(entry)}\nRMSE {entry['rmse']:.3g}  R² {entry['r2']:.3f}  CCC {entry['ccc']:.3f}",
                     fontsize=10)
        ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return _png(fig)


def errors_vs_observed(comparison, unit: str = "") -> str:
    """One panel per version: prediction - observed against observed, with the mean error per range."""
    table = comparison.predictions
    label = f"{comparison.target}{f' ({unit})' if unit else ''}"
    fig, axes = _panels(len(comparison.models), height=3.4)
    errors = table["prediction"] - table["observed"]
    limit = float(np.nanmax(np.abs(errors))) * 1.05
    for k, (ax, entry) in enumerate(zip(axes, comparison.models)):
        rows = table[table["model_uri"] == entry["uri"]]
        error = rows["prediction"] - rows["observed"]
        ax.scatter(rows["observed"], error, s=8, alpha=0.6, color=COLOURS[k % len(COLOURS)])
        means = error.groupby(rows["range"]).mean()
        centres = rows["observed"].groupby(rows["range"]).median()
        ax.plot(centres.to_numpy(), means.to_numpy(), "k-o", ms=4, lw=1.2, label="mean per range (bias)")
        ax.axhline(0, color="k", lw=0.8, ls="--")
        ax.set(ylim=(-limit, limit), xlabel=f"observed {label}", ylabel="predicted − observed")
        ax.set_title(f"{_label(entry)}  bias {entry['bias']:+.3g}", fontsize=10)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)


def coverage_by_range(comparison) -> str:
    """Coverage (with the nominal level) and mean interval width per range of the observed values."""
    ranges = sorted({row["range"] for row in comparison.by_range})
    fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(14, 3.8))
    width = 0.8 / len(comparison.models)
    x = np.arange(len(ranges))
    ticks = []
    for k, entry in enumerate(comparison.models):
        rows = {r["range"]: r for r in comparison.by_range if r["uri"] == entry["uri"]}
        offset = (k - (len(comparison.models) - 1) / 2) * width
        colour = COLOURS[k % len(COLOURS)]
        a1.bar(x + offset, [rows[r]["picp"] for r in ranges], width, color=colour, label=_label(entry))
        a2.bar(x + offset, [rows[r]["mean_width"] for r in ranges], width, color=colour, label=_label(entry))
        a3.bar(x + offset, [rows[r]["rmse"] for r in ranges], width, color=colour, label=_label(entry))
        if not ticks:
            ticks = [f"{rows[r]['low']:.3g}–{rows[r]['high']:.3g}" for r in ranges]
    a1.axhline(comparison.level, color="k", ls="--", lw=1, label=f"nominal {comparison.level:g}")
    a1.set(ylim=(0, 1.05), ylabel="coverage (PICP)", title="Interval coverage by observed range")
    a2.set(ylabel="mean interval width", title="Interval width by observed range")
    a3.set(ylabel="RMSE", title="RMSE by observed range")
    for ax in (a1, a2, a3):
        ax.set_xticks(x, ticks, fontsize=8, rotation=20)
        ax.set_xlabel(f"observed {comparison.target} (quintiles)")
    a1.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    return _png(fig)


def logged_metrics_figure(comparison) -> str:
    """Bars of the cross-validated RMSE, R², PICP per version (what training logged)."""
    keys = [("rmse", "CV RMSE"), ("r2", "CV R²"), ("picp", "CV PICP")]
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.4))
    labels = [_label(m) for m in comparison.models]
    for ax, (key, title) in zip(axes, keys):
        values = [m.get(key) if m.get(key) is not None else np.nan for m in comparison.models]
        ax.bar(labels, values, color=[COLOURS[k % len(COLOURS)] for k in range(len(labels))])
        ax.set_title(title, fontsize=10)
        ax.tick_params(axis="x", labelsize=8, rotation=15)
    fig.tight_layout()
    return _png(fig)


def _logged_plot(run_id: str | None, artifact: str = "plots/observed_vs_predicted.png") -> str | None:
    """The out-of-fold plot a training run logged, base64, or None when it cannot be read."""
    if not run_id:
        return None
    import tempfile

    import mlflow

    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact, dst_path=tmp)
            with open(path, "rb") as handle:
                return base64.b64encode(handle.read()).decode("ascii")
    except Exception:  # a missing artifact or store only loses a figure, never the report
        return None


# ============================================================================ page
def render(comparison) -> str:
    """The report as one HTML string."""
    models = comparison.models
    unit = next((m["logged"].get("unit") for m in models if m["logged"].get("unit") not in (None, "", "unspecified")), "")
    parts = [f"<!doctype html><html lang=en><head><meta charset=utf-8><title>soilcarbon comparison: "
             f"{html.escape(', '.join(m['uri'] for m in models))}</title><style>{STYLE}</style></head><body>",
             f"<h1>Model comparison: {html.escape(comparison.target)}</h1>",
             f"<p class=note>{html.escape(datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC'))}; versions "
             + ", ".join(f"<code>{html.escape(m['uri'])}</code>"
                         + (f" (asked as <code>{html.escape(m['requested_uri'])}</code>)"
                            if m["requested_uri"] != m["uri"] else "") for m in models) + "</p>"]
    for warning in comparison.warnings:
        parts.append(f"<div class=warn>warning: {html.escape(warning)}</div>")
    for note in comparison.notes:
        parts.append(f"<p class=note>note: {html.escape(note)}</p>")
    if comparison.mode == "test":
        t = comparison.test_data
        parts.append(f"<p>Test data: <code>{html.escape(str(t.get('spectra') or t.get('covariates')))}</code>"
                     + (f" with lab values <code>{html.escape(t['lab'])}</code>" if t.get("lab") else "")
                     + f"; {t['n_rows']} samples, {t['n_without_target']} without {html.escape(comparison.target)}, "
                     f"{t['n_compared']} predicted by every version and compared. Intervals at level "
                     f"{comparison.level:g}.</p>")
        parts.append("<h2>Accuracy on the test samples</h2>")
        parts.append(_table(["version", "n", "RMSE", "R²", "RPIQ", "bias", "CCC", "PICP", "mean width",
                             "outside domain", "not predicted"],
                            [[m["uri"], m["n"], m["rmse"], m["r2"], m["rpiq"], m["bias"], m["ccc"], m["picp"],
                              m["mean_width"], m["out_of_domain_share"], m["n_not_predicted"]] for m in models]))
        parts.append("<p class=note>RMSE, R² = 1 − SSE/SST, RPIQ = IQR(observed)/RMSE, bias = mean(predicted − "
                     "observed), CCC = Lin's concordance, PICP = share of observed values inside their interval; "
                     "computed as <code>soilcarbon train</code> reports them.</p>")
        parts.append("<h2>Paired differences</h2>")
        parts.append(_table(["a", "b", "RMSE(a) − RMSE(b)", f"CI low ({comparison.level:g})", "CI high", "p-value"],
                            [[p["a"], p["b"], p["rmse_diff"], p["ci_low"], p["ci_high"], p["p_value"]]
                             for p in comparison.pairs], left=2))
        n_resamples = comparison.pairs[0].get("n_resamples") if comparison.pairs else 0
        parts.append(f"<p class=note>Same samples for both versions. Interval: paired bootstrap (BCa, {n_resamples} "
                     "resamples of the samples); p-value: paired permutation test (the two predictions of each "
                     "sample swapped at random). A negative difference means a has the smaller error; an interval "
                     "that excludes 0 means the difference is unlikely to be sampling noise.</p>")
        parts.append("<h2>Predicted vs observed</h2>" + _img(observed_vs_predicted(comparison, unit),
                                                             "predicted vs observed"))
        parts.append("<h2>Errors against observed values</h2>" + _img(errors_vs_observed(comparison, unit),
                                                                      "errors vs observed"))
        parts.append("<h2>Coverage, width and error by range</h2>" + _img(coverage_by_range(comparison),
                                                                          "coverage and width by range"))
        parts.append(_table(["version", "range", "observed from", "to", "n", "RMSE", "bias", "PICP", "mean width"],
                            [[r["uri"], r["range"], r["low"], r["high"], r["n"], r["rmse"], r["bias"], r["picp"],
                              r["mean_width"]] for r in comparison.by_range]))
        missing = [(m["uri"], p["sample_id"], p["reason"]) for m in models for p in m["not_predicted"]]
        if missing:
            parts.append("<h2>Samples not predicted</h2>" + _table(["version", "sample", "reason"],
                                                                   [list(r) for r in missing], left=3))
    else:
        parts.append("<p>No test data given: the versions are compared by what their training logged "
                     "(nested cross-validation). Give <code>--spectra</code> and <code>--target</code> to compare "
                     "them on the same samples with a paired test.</p>")
        parts.append("<h2>Cross-validated accuracy</h2>")
        parts.append(_table(["version", "n", "RMSE", "R²", "RPIQ", "bias", "PICP", "mean width", "level"],
                            [[m["uri"], m["n"], m["rmse"], m["r2"], m["rpiq"], m["bias"], m["picp"],
                              m["mean_width"], m["level"]] for m in models]))
        parts.append(_img(logged_metrics_figure(comparison), "cross-validated metrics"))
        plots = [(m, _logged_plot(m["logged"].get("run_id"))) for m in models]
        if any(data for _, data in plots):
            parts.append("<h2>Out-of-fold predictions (logged by training)</h2>")
            for m, data in plots:
                if data:
                    parts.append(f"<p>{html.escape(m['uri'])}</p>" + _img(data, f"out-of-fold {m['uri']}"))
    parts.append("<h2>What each version logged</h2>")
    parts.append(_table(["version", "target", "training samples", "data digest", "CV scheme", "selected model",
                         "CV RMSE", "CV PICP", "run"],
                        [[m["uri"], m["logged"].get("target"), m["logged"].get("n_train"),
                          m["logged"].get("data_digest"), m["logged"].get("cv_scheme"),
                          m["logged"].get("selected_model"), m["logged"]["cv_metrics"].get("rmse"),
                          m["logged"]["cv_metrics"].get("picp"), m["logged"].get("run_id")] for m in models],
                        left=6))
    if comparison.config_differences:
        parts.append("<h3>Configuration differences</h3>")
        parts.append(_table(["parameter", *[_label(m) for m in models]],
                            [[k, *v] for k, v in comparison.config_differences.items()],
                            left=1 + len(models)))
    parts.append("</body></html>\n")
    return "\n".join(parts)


def write_report(comparison, path) -> None:
    """Write the HTML report atomically."""
    from soilcarbon.atomic import atomic_path

    text = render(comparison)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
