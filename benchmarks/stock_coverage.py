"""Coverage of field-mean stock intervals and of stock-change intervals, against a t-interval baseline.

Population: the 548 NIR soils of ``data/nirsoil_train.csv`` with lab carbon (``Ciso``, % C; strongly
right-skewed), scored by the **out-of-fold** predictions (with their 90 % intervals) of the default
model (trained here with nested CV unless ``--oof`` gives the table of
``soilcarbon train ... --oof-output``). Each soil gets a bulk density that falls with carbon (a
pedotransfer-like relation, 1.55 − 0.06·SOC g/cm³ ± 0.08, clipped to 0.8–1.8) and is measured with an
error of sd 0.05 g/cm³ (stated to the method); the layer is 0–30 cm. The true field mean is the
population mean of lab carbon × true bulk density × 30 cm.

A campaign draws ``--n`` soils without replacement; the interval of :mod:`soilcarbon.mrv.stocks`
(Monte Carlo errors + shared model bias from the population's out-of-fold residuals + Hall's
skew-corrected t) is compared with the **baseline**: a t-interval (n − 1 degrees of freedom) whose
variance is the sampling variance s²/n of the predicted stocks plus each sample's model-error
variance (from its interval) over n. Change: a re-measurement population whose carbon rose by
``--change`` (relative, e.g. 0.10), the same model error per soil; two independent campaigns of
``--n``; baseline: Welch t-interval with the same variance terms. Nothing is tuned on this population.

Floors (issue 14): coverage 0.87-0.95 at the 90 % level, mean width ≤ 1.15 × the baseline.

    .venv/bin/python benchmarks/stock_coverage.py [--oof oof.csv] [--campaigns 1000] [--n 30]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

REPO = Path(__file__).resolve().parents[1]
DEPTH_CM = 30.0
BD_SD = 0.05


def default_oof() -> pd.DataFrame:
    from soilcarbon.spectral.readers import read_spectra
    from soilcarbon.training.train import train

    started = time.perf_counter()
    result = train(read_spectra(REPO / "data" / "nirsoil_train.csv"), "Ciso")
    print(f"trained the default model with nested CV in {time.perf_counter() - started:.0f} s")
    return result.oof


def population(oof: pd.DataFrame, seed: int) -> pd.DataFrame:
    pop = oof.dropna(subset=["observed", "prediction", "lower", "upper"]).reset_index(drop=True)
    rng = np.random.default_rng(seed)
    pop["bd_true"] = np.clip(1.55 - 0.06 * pop["observed"] + rng.normal(0, 0.08, len(pop)), 0.8, 1.8)
    return pop


def campaign_layers(pop: pd.DataFrame, rows: np.ndarray, rng, field: str, campaign: str) -> pd.DataFrame:
    from soilcarbon.mrv.tables import interval_sds

    sub = pop.iloc[rows]
    low, high = interval_sds(sub["prediction"], sub["lower"], sub["upper"], sub["level"])
    n = len(rows)
    return pd.DataFrame({
        "sample_id": [f"{campaign}-{i}" for i in range(n)], "field": field, "campaign": campaign,
        "core": [f"{campaign}-{i}" for i in range(n)], "top_cm": 0.0, "bottom_cm": DEPTH_CM,
        "bd": np.clip(sub["bd_true"].to_numpy() + rng.normal(0, BD_SD, n), 0.5, 2.0), "bd_sd": BD_SD,
        "cf": 0.0, "cf_sd": 0.0, "soc": sub["prediction"].to_numpy(), "sd_low": low, "sd_high": high,
        "model_uri": "models:/default/1"})


def baseline_terms(layers: pd.DataFrame) -> tuple[float, float, int]:
    """(mean, variance of the mean, n) of the baseline t-interval."""
    stock = layers["soc"] * layers["bd"] * DEPTH_CM
    model_sd = (layers["sd_low"] + layers["sd_high"]) / 2 * layers["bd"] * DEPTH_CM
    n = len(layers)
    return float(stock.mean()), float(stock.var(ddof=1) / n + np.mean(model_sd ** 2) / n), n


def run(pop: pd.DataFrame, campaigns: int, n: int, level: float, draws: int, change: float, seed: int) -> pd.DataFrame:
    from soilcarbon.mrv import stocks

    shared = {"models:/default/1": stocks.shared_bias_sd(pop["observed"] - pop["prediction"])}
    later = pop.copy()
    later["observed"] = pop["observed"] * (1 + change)
    shift = later["observed"] - pop["observed"]
    for column in ("prediction", "lower", "upper"):
        later[column] = pop[column] + shift  # the same model error per soil
    true_mean = float((pop["observed"] * pop["bd_true"] * DEPTH_CM).mean())
    true_change = float((later["observed"] * later["bd_true"] * DEPTH_CM).mean()) - true_mean
    rng = np.random.default_rng(seed)
    hits = {k: [] for k in ("stock", "stock_base", "change", "change_base")}
    widths = {k: [] for k in hits}
    alpha = 1 - level
    for c in range(campaigns):
        first = campaign_layers(pop, rng.choice(len(pop), n, replace=False), rng, "f", "baseline")
        second = campaign_layers(later, rng.choice(len(pop), n, replace=False), rng, "f", "z-later")
        groups = stocks.simulate(pd.concat([first, second], ignore_index=True), shared, draws, int(rng.integers(2**31)))
        g1, g2 = groups[("f", "baseline")], groups[("f", "z-later")]
        for key, est, truth in (("stock", stocks.combine([(1.0, g1)]), true_mean),
                                ("change", stocks.combine([(1.0, g2), (-1.0, g1)]), true_change)):
            lower, upper = est.interval(level)
            hits[key].append(lower <= truth <= upper)
            widths[key].append(upper - lower)
        m1, v1, n1 = baseline_terms(first)
        m2, v2, n2 = baseline_terms(second)
        q = stats.t.ppf(1 - alpha / 2, n1 - 1)
        hits["stock_base"].append(abs(m1 - true_mean) <= q * np.sqrt(v1))
        widths["stock_base"].append(2 * q * np.sqrt(v1))
        df = (v1 + v2) ** 2 / (v1 ** 2 / (n1 - 1) + v2 ** 2 / (n2 - 1))
        q = stats.t.ppf(1 - alpha / 2, df)
        hits["change_base"].append(abs(m2 - m1 - true_change) <= q * np.sqrt(v1 + v2))
        widths["change_base"].append(2 * q * np.sqrt(v1 + v2))
    rows = []
    for key, name in (("stock", "field-mean stock"), ("change", "stock change")):
        cov, base_cov = np.mean(hits[key]), np.mean(hits[key + "_base"])
        width, base_width = np.mean(widths[key]), np.mean(widths[key + "_base"])
        ok = (0.87 <= cov <= 0.95) and width <= 1.15 * base_width
        rows.append({"quantity": name, "true": true_mean if key == "stock" else true_change,
                     "coverage": cov, "coverage_se": np.sqrt(cov * (1 - cov) / campaigns), "mean_width": width,
                     "baseline_coverage": base_cov, "baseline_width": base_width, "width_ratio": width / base_width,
                     "floor": "PASS" if ok else "FAIL"})
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--oof", help="OOF table of the default model (soilcarbon train --oof-output); default: train it")
    parser.add_argument("--campaigns", type=int, default=1000, help="simulated campaigns (≥ 1000: coverage SE ≤ 0.01)")
    parser.add_argument("--n", type=int, default=30, help="cores per campaign")
    parser.add_argument("--level", type=float, default=0.90)
    parser.add_argument("--draws", type=int, default=500, help="Monte Carlo draws per campaign")
    parser.add_argument("--change", type=float, default=0.10, help="simulated relative SOC change")
    parser.add_argument("--seed", type=int, default=14)
    args = parser.parse_args()
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    oof = pd.read_csv(args.oof) if args.oof else default_oof()
    pop = population(oof, args.seed)
    skew = stats.skew(pop["observed"] * pop["bd_true"] * DEPTH_CM)
    print(f"population: {len(pop)} soils, true stock skewness {skew:.2f}; {args.campaigns} campaigns of {args.n} cores, "
          f"level {args.level:g}, {args.draws} Monte Carlo draws each")
    started = time.perf_counter()
    table = run(pop, args.campaigns, args.n, args.level, args.draws, args.change, args.seed)
    with pd.option_context("display.width", 200, "display.float_format", "{:.3f}".format):
        print(table.to_string(index=False))
    print(f"floors: coverage 0.87-0.95, width_ratio <= 1.15 (baseline: t-interval adding each sample's model error); "
          f"{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
