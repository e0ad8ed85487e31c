"""Plot spectra to an image file (matplotlib, Agg backend, written atomically).

Wavenumber axes are drawn decreasing from left to right, the usual convention for MIR spectra.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from soilcarbon.atomic import check_output
from soilcarbon.spectral.spectra import Spectra

PLOT_KINDS = ("png", "svg", "pdf")  # the output kind is matplotlib's format name


def check_plot(path) -> str:
    """Check a plot output before any work (suffix .png/.svg/.pdf, writable folder); its format."""
    return check_output(path, PLOT_KINDS)


def plot_spectra(spectra: Spectra, path, max_lines: int = 300, title: str | None = None) -> Path:
    """Draw up to ``max_lines`` spectra (evenly picked) and their mean; write to ``path``."""
    path = Path(path)
    fmt = check_plot(path)
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib.figure import Figure

    from soilcarbon.atomic import atomic_path

    n = spectra.n_samples
    rows = np.unique(np.linspace(0, n - 1, min(n, max_lines)).round().astype(int))
    figure = Figure(figsize=(9, 5), dpi=110)
    axes = figure.add_subplot()
    alpha = max(0.08, min(0.8, 20.0 / len(rows)))
    for row in rows:
        axes.plot(spectra.axis, spectra.values[row], color="tab:blue", lw=0.6, alpha=alpha)
    axes.plot(spectra.axis, np.nanmean(spectra.values, axis=0), color="black", lw=1.4, label="mean")
    if spectra.unit == "cm-1":
        axes.set_xlim(spectra.axis.max(), spectra.axis.min())
        axes.set_xlabel("wavenumber (cm$^{-1}$)")
    else:
        axes.set_xlim(spectra.axis.min(), spectra.axis.max())
        axes.set_xlabel("wavelength (nm)")
    axes.set_ylabel("value")
    shown = f"{len(rows)} of {n}" if len(rows) < n else f"{n}"
    axes.set_title(title or f"{Path(spectra.source).name or 'spectra'}: {shown} spectra")
    axes.legend(loc="best")
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format=fmt)
    return path
