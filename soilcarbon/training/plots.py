"""Training plots from out-of-fold predictions: observed vs predicted with intervals,
residuals, and interval coverage per fold and per prediction range against the nominal level."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def training_plots(result, folder: Path, unit: str = "") -> list[Path]:
    """Write the three PNG plots into ``folder`` and return their paths."""
    oof = result.oof.dropna(subset=["prediction"])
    label = f"{result.data.target}{f' ({unit})' if unit else ''}"
    paths = []

    fig, ax = plt.subplots(figsize=(5.5, 5))
    err = np.clip(np.vstack([oof["prediction"] - oof["lower"], oof["upper"] - oof["prediction"]]), 0, None)
    ax.errorbar(oof["observed"], oof["prediction"], yerr=err, fmt="o", ms=3, alpha=0.5, elinewidth=0.6)
    lims = [min(oof["observed"].min(), oof["lower"].min()), max(oof["observed"].max(), oof["upper"].max())]
    ax.plot(lims, lims, "k--", lw=1)
    m = result.metrics
    ax.set(xlabel=f"observed {label}", ylabel=f"predicted {label}",
           title=f"RMSE {m['rmse']:.3g}  R² {m['r2']:.3f}  PICP {m.get('picp', np.nan):.2f}")
    paths.append(_save(fig, folder / "observed_vs_predicted.png"))

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter(oof["prediction"], oof["observed"] - oof["prediction"], s=8, alpha=0.6)
    ax.axhline(0, color="k", lw=1)
    ax.set(xlabel=f"predicted {label}", ylabel="observed - predicted", title="Out-of-fold residuals")
    paths.append(_save(fig, folder / "residuals.png"))

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 4))
    inside = (oof["observed"] >= oof["lower"]) & (oof["observed"] <= oof["upper"])
    per_fold = inside.groupby(oof["fold"]).mean()
    a1.bar(per_fold.index.astype(str), per_fold.to_numpy())
    a1.axhline(result.config.level, color="r", lw=1, label="nominal")
    a1.set(ylim=(0, 1), xlabel="fold", ylabel="coverage (PICP)", title="Coverage per fold")
    bins = np.unique(np.quantile(oof["prediction"], np.linspace(0, 1, 6)))
    which = np.clip(np.searchsorted(bins, oof["prediction"], side="right") - 1, 0, max(len(bins) - 2, 0))
    per_bin = inside.groupby(which).mean()
    a2.bar([f"{bins[i]:.2g}-{bins[min(i + 1, len(bins) - 1)]:.2g}" for i in per_bin.index], per_bin.to_numpy())
    a2.axhline(result.config.level, color="r", lw=1)
    a2.set(ylim=(0, 1), xlabel=f"predicted {label}", title="Coverage by prediction range")
    a2.tick_params(axis="x", labelrotation=30)
    paths.append(_save(fig, folder / "coverage.png"))
    return paths


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
