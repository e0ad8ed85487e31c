"""A self-contained HTML report of a stocks computation (tables and figures inline, no external
files or scripts), for a verifier: inputs, model versions and their shared-bias error, field
stocks, changes on fixed depth and equivalent soil mass, project totals and the credited change,
and the method with its sources."""

from __future__ import annotations

import base64
import html
import io
from datetime import datetime, timezone

import numpy as np
import pandas as pd

from soilcarbon.atomic import atomic_path

METHOD = """
<p>Per layer, stock [t C/ha] = SOC [%] &times; bulk density [g/cm&sup3;] &times; thickness [cm] &times;
(1 &minus; coarse fraction) (IPCC 2006, vol. 4 ch. 2; Poeplau et al. 2017); layers of a core add up; a field's
stock is the mean of its cores.</p>
<p>Intervals add the sampling error of the field mean (variance s&sup2;/n and third moment of the core stocks)
and the measurement error, by Monte Carlo: each layer's SOC from its prediction interval, bulk density and
coarse fraction from their standard deviations, and a bias shared by all samples of a model version (from its
out-of-fold residuals), which does not average out over samples and cancels in a change only as far as the
soil masses agree. The interval is Hall's (1992) skewness-corrected t-interval (Welch&ndash;Satterthwaite degrees of
freedom), so right-skewed fields get a longer upper arm.</p>
<p>Equivalent soil mass (von Haden, Yang &amp; DeLucia 2020): SOC in the smallest total mineral soil mass among a
field's cores, read from a monotone cubic (PCHIP) spline of cumulative SOC on cumulative soil mass.</p>
<p>The credited change is the chosen lower quantile of the project's total change (a one-sided bound), as
crediting methodologies such as Verra VM0042 credit a conservative percentile of the change.</p>
"""


def _table(frame: pd.DataFrame) -> str:
    if frame is None or len(frame) == 0:
        return "<p>(none)</p>"
    return frame.to_html(index=False, float_format=lambda v: f"{v:,.2f}" if abs(v) >= 1 else f"{v:.3g}", na_rep="", border=0, classes="t")


def _figure(fields: pd.DataFrame) -> str:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 0.45 * len(fields) + 1.2))
    labels = [f"{f} · {c}" for f, c in zip(fields["field"], fields["campaign"])]
    y = np.arange(len(fields))
    est = fields["stock_t_ha"].to_numpy()
    err = np.vstack([est - fields["lower_t_ha"].to_numpy(), fields["upper_t_ha"].to_numpy() - est])
    ax.errorbar(est, y, xerr=err, fmt="o", capsize=3)
    ax.set_yticks(y, labels)
    ax.invert_yaxis()
    ax.set_xlabel(f"SOC stock, t C/ha ({fields['level'].iloc[0]:.0%} interval)")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return f'<img alt="field stocks" src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">'


def render(result, inputs, sources: dict) -> str:
    """The report as one HTML string."""
    project = result.project
    models = pd.DataFrame([{"model_uri": uri, "target_unit": info["unit"],
                            "shared_bias_sd_percent_C": info["shared_sd_percent"]}
                           for uri, info in inputs.models.items()])
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>SOC stocks report</title><style>",
        "body{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222}"
        "table.t{border-collapse:collapse;margin:.5em 0}table.t td,table.t th{padding:3px 8px;"
        "border-bottom:1px solid #ddd;text-align:right}h2{margin-top:1.5em}",
        "</style></head><body><h1>SOC stocks, changes and totals</h1>",
        f"<p>Generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC by soilcarbon. SOC unit of the inputs: "
        f"{html.escape(str(inputs.unit))}. Level {project['level']:.0%}.</p>",
        "<h2>Inputs</h2><ul>" + "".join(f"<li>{html.escape(k)}: {html.escape(str(v))}</li>" for k, v in sources.items() if v)
        + f"<li>{len(inputs.layers)} layers; {len(inputs.out_of_domain)} out of the model's domain"
        + (f", excluded ({len(inputs.excluded)})" if inputs.excluded else ", kept")
        + (f": {html.escape(', '.join(inputs.out_of_domain))}" if inputs.out_of_domain else "") + "</li></ul>",
        "<h2>Model versions</h2>" + _table(models),
        "<h2>Field stocks</h2>" + _table(result.fields) + _figure(result.fields),
        "<h2>Changes per field</h2>" + _table(result.changes),
    ]
    if "totals" in project:
        parts += ["<h2>Project totals</h2>" + _table(pd.DataFrame(project["totals"])),
                  "<h2>Project change and credited estimate</h2>" + _table(pd.DataFrame(project.get("changes", [])))]
        if project.get("strata"):
            parts.append("<h2>Totals per stratum</h2>" + _table(pd.DataFrame(project["strata"])))
    parts += ["<h2>Method</h2>" + METHOD, "</body></html>"]
    return "\n".join(parts)


def write_report(path, result, inputs, sources: dict) -> None:
    text = render(result, inputs, sources)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
