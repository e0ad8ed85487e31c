"""Benchmark: MemoryBasedLearner prediction speed, per-query reference path vs compiled kernel path.

Data: the 548 NIRsoil calibration spectra with Ciso (../shared/data/nirsoil/nirsoil_train.csv),
Savitzky-Golay first derivative (window 11, order 2) and resampling to 1100..2490 nm in 10 nm
steps (140 features), the product's default MBL (k=120, cor, tricube weights, wapls 3..20).
Queries: reference rows drawn with replacement plus Gaussian noise (2% of the spectral sd).

Prints spectra/s of ``predict`` for both paths, their ratio and the largest absolute
difference of the predictions, with BLAS left at its default thread count and limited to one
thread (oversubscribed BLAS threads slow the many small per-query products down a lot).

Usage: .venv/bin/python benchmarks/bench_mbl.py [--queries 5000] [--reference-queries 1000]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.signal import savgol_filter
from threadpoolctl import threadpool_limits

from soilcarbon.models.mbl import MemoryBasedLearner

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "nirsoil" / "nirsoil_train.csv"


def load(n_queries, seed=0):
    df = pd.read_csv(DATA).dropna(subset=["Ciso"])
    wavelengths = df.columns[4:].astype(float).to_numpy()
    X = savgol_filter(df.iloc[:, 4:].to_numpy(float), 11, 2, deriv=1, axis=1)
    grid = np.arange(1100.0, 2491.0, 10.0)
    X = np.stack([np.interp(grid, wavelengths, row) for row in X])
    rng = np.random.default_rng(seed)
    Q = X[rng.integers(0, len(X), n_queries)] + rng.normal(0, 0.02 * X.std(), size=(n_queries, X.shape[1]))
    return X, df["Ciso"].to_numpy(float), Q


def reference_predict(mbl, Xq):
    """The per-query path (one NIPALS local PLS per query), the reference the compiled path is checked against."""
    Eq = mbl._embed(Xq)
    D = mbl._pairwise(Eq, mbl.E_, mbl.diss_method)
    return mbl._predict_rows_loop(Xq, Eq, D, mbl.k_)[:, 0]


def rate(fn, n):
    started = time.perf_counter()
    out = fn()
    return n / (time.perf_counter() - started), out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=5000)
    parser.add_argument("--reference-queries", type=int, default=1000, help="queries timed on the slow path")
    args = parser.parse_args()
    X, y, Q = load(args.queries)
    mbl = MemoryBasedLearner().fit(X, y)
    mbl.predict(Q[:50])  # warm the reference Gram cache and numba's compiled kernel
    print(f"reference set {X.shape}, {len(Q)} queries ({args.reference_queries} on the per-query path), k={mbl.k_}")
    print(f"{'BLAS threads':>12} | {'per-query /s':>12} | {'compiled /s':>11} | {'ratio':>6} | max |diff|")
    for limit in (None, 1):
        with threadpool_limits(limit):
            r_old, old = rate(lambda: reference_predict(mbl, Q[: args.reference_queries]), args.reference_queries)
            r_new, new = rate(lambda: mbl.predict(Q), len(Q))
        diff = np.abs(new[: args.reference_queries] - old).max()
        label = "default" if limit is None else str(limit)
        print(f"{label:>12} | {r_old:12.0f} | {r_new:11.0f} | {r_new / r_old:6.1f} | {diff:.2e}")


if __name__ == "__main__":
    main()
