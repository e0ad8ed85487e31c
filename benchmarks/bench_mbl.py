"""Benchmark: MemoryBasedLearner prediction speed and memory against the size of the reference set.

Data: the 548 NIRsoil calibration spectra with Ciso (../shared/data/nirsoil/nirsoil_train.csv),
Savitzky-Golay first derivative (window 11, order 2) and resampling to 1100..2490 nm in 10 nm
steps (140 features). Reference libraries of 2,500, 16,000 and 50,000 spectra are NIRsoil rows
drawn with replacement plus Gaussian noise (2 % of the spectral sd; y plus noise of sd 0.05);
queries are drawn the same way. The model is the product's default MBL with a fixed ``k=120``
(correlation dissimilarity, tricube weights, wapls 3..20): fitting only stores the library.

Prints, per library size: spectra/s of ``predict`` (blockwise exact neighbour search + compiled
local kernel PLS), its ratio to the 2,500-reference model (the named baseline; the issue's
floor is >= 0.5 at 50,000), the peak memory that ``predict`` allocates (tracemalloc), the size
of the queries x references dissimilarity matrix the code before this change formed (plus its
n x n Gram matrix below 5,700 references), and the speed of the per-query reference path (one
NumPy NIPALS per query; the path the old code fell back to above 5,700 references) on
``--reference-queries`` queries, with the largest difference of the two paths' predictions.

The per-query path runs with one BLAS thread, as ``predict`` runs everything (threadpoolctl).

Usage: .venv/bin/python benchmarks/bench_mbl.py [--sizes 2500 16000 50000] [--queries 5000]
       [--reference-queries 300]
"""

from __future__ import annotations

import argparse
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.signal import savgol_filter

from soilcarbon.models.mbl import MemoryBasedLearner, one_blas_thread

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "nirsoil" / "nirsoil_train.csv"


def load():
    df = pd.read_csv(DATA).dropna(subset=["Ciso"])
    wavelengths = df.columns[4:].astype(float).to_numpy()
    X = savgol_filter(df.iloc[:, 4:].to_numpy(float), 11, 2, deriv=1, axis=1)
    grid = np.arange(1100.0, 2491.0, 10.0)
    X = np.stack([np.interp(grid, wavelengths, row) for row in X])
    return X, df["Ciso"].to_numpy(float)


def resample(X, y, n, seed):
    """n spectra drawn with replacement from (X, y) plus small Gaussian noise."""
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, len(X), n)
    return X[rows] + rng.normal(0, 0.02 * X.std(), size=(n, X.shape[1])), y[rows] + rng.normal(0, 0.05, n)


def reference_predict(mbl, Xq):
    """The per-query path (one NIPALS local PLS per query, full dissimilarity matrix)."""
    with one_blas_thread():
        Eq = mbl._embed(Xq)
        D = mbl._pairwise(Eq, mbl.E_, mbl.diss_method)
        return mbl._predict_rows_loop(Xq, Eq, D, mbl.k_)[:, 0]


def timed(fn):
    started = time.perf_counter()
    out = fn()
    return time.perf_counter() - started, out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2500, 16000, 50000])
    parser.add_argument("--queries", type=int, default=5000)
    parser.add_argument("--reference-queries", type=int, default=300, help="queries timed on the per-query path")
    args = parser.parse_args()
    X0, y0 = load()
    Q, _ = resample(X0, y0, args.queries, seed=1)
    print(f"{X0.shape[1]} features, {len(Q)} queries ({args.reference_queries} on the per-query path), k=120")
    print(
        f"{'references':>10} | {'predict /s':>10} | {'vs 2.5k':>7} | {'peak MB':>7} | {'old matrices MB':>15} | "
        f"{'per-query /s':>12} | {'speedup':>7} | max |diff|"
    )
    baseline = None
    for n in args.sizes:
        X, y = resample(X0, y0, n, seed=2)
        mbl = MemoryBasedLearner(k=120).fit(X, y)
        mbl.predict(Q[:50])  # numba's compiled kernels
        seconds, pred = timed(lambda: mbl.predict(Q))
        rate = len(Q) / seconds
        baseline = rate if baseline is None else baseline
        tracemalloc.start()
        mbl.predict(Q)
        peak = tracemalloc.get_traced_memory()[1] / 1e6
        tracemalloc.stop()
        old_mb = (len(Q) * n * 8 * 2 + (n * n * 8 if n * n * 8 <= 256e6 else 0)) / 1e6  # D, Q x X products, Gram
        m = args.reference_queries
        slow_seconds, slow = timed(lambda: reference_predict(mbl, Q[:m]))
        slow_rate = m / slow_seconds
        diff = np.abs(pred[:m] - slow).max()
        print(
            f"{n:>10} | {rate:10.0f} | {rate / baseline:7.2f} | {peak:7.1f} | {old_mb:15.0f} | "
            f"{slow_rate:12.0f} | {rate / slow_rate:7.1f} | {diff:.1e}"
        )


if __name__ == "__main__":
    main()
