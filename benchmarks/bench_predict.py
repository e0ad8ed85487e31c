"""Batch prediction speed: ``soilcarbon predict`` (``predict_file``) on 100,000 NIR spectra of 700
points from one Parquet file, against the baseline of only reading the same file.

- Data: ``--n`` spectra resampled (with replacement) from the real NIR spectra of
  ../shared/data/nirsoil, each with Gaussian noise of 0.1 % of its mean, unique ids, written with
  pyarrow in row groups of 10,000 (snappy).
- Model: the deployed form of a typical calibration, fitted on the 548 nirsoil samples with Ciso:
  the default preprocessing (Savitzky-Golay 1st derivative + SNV), PLS with 10 components, conformal
  intervals and the PCA domain check, registered in a temporary MLflow SQLite store and loaded by
  its URI like users do. ``--model URI`` benchmarks another registered model instead.
- Baseline ``read``: ``ParquetFile.iter_batches`` in chunks of ``--chunk-size`` rows, each turned into
  a pandas frame and a float matrix: the reading part of our pipeline, nothing else (best of 2).
- ``model only``: the model's own ``predict_matrix`` on the same chunks, without reading, MLflow's
  input checks or writing: the floor set by the algorithm.
- ``ours``: the whole command path (read, align, MLflow pyfunc predict, write Parquet atomically),
  with 1 and with ``--workers`` threads.

The ratio column is seconds / read seconds. Peak RSS of the process is printed to show that memory is
bounded by the chunks, not by the 560 MB of spectra.

    .venv/bin/python benchmarks/bench_predict.py [--n 100000] [--chunk-size 10000] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
NIRSOIL = REPO.parent / "shared" / "data" / "nirsoil" / "nirsoil_train.csv"
sys.path.insert(0, str(REPO))


def train_and_register(folder: Path) -> str:
    """Fit the benchmark model (not nested: only the deployed model matters here) and register it."""
    from soilcarbon.spectral.readers import read_spectra
    from soilcarbon.training.config import parse_config
    from soilcarbon.training.tracking import log_training
    from soilcarbon.training.train import train

    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder / 'mlflow.db'}"
    config = parse_config({
        "preprocessing": [{"name": "savgol", "window_length": 11, "polyorder": 2, "deriv": 1}, {"name": "snv"}],
        "target_transforms": ["none"], "candidates": [{"model": "pls", "grid": {"n_components": [10]}}],
        "ensemble": {"enabled": False}, "cv": {"folds": 5, "inner_folds": 3},
    })
    spectra = read_spectra(NIRSOIL)
    result = train(spectra, "Ciso", config=config, nested=False, n_jobs=1)
    return log_training(result, "bench-nir", {"spectra": str(NIRSOIL)}, "%")


def write_spectra(path: Path, n: int, seed: int = 0) -> list[str]:
    """``n`` noisy resampled real spectra in one Parquet file, written 10,000 rows at a time."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pd.read_csv(NIRSOIL)
    columns = [c for c in table.columns if c[0].isdigit()]
    base = table[columns].to_numpy()
    rng = np.random.default_rng(seed)
    writer = None
    for start in range(0, n, 10_000):
        stop = min(n, start + 10_000)
        picks = rng.integers(0, len(base), stop - start)
        values = base[picks] * (1 + rng.normal(0, 1e-3, (stop - start, 1)))
        values += rng.normal(0, 1e-3 * base.mean(), values.shape)
        arrays = [pa.array([f"B{i:07d}" for i in range(start, stop)])] + [pa.array(values[:, j]) for j in range(len(columns))]
        batch = pa.Table.from_arrays(arrays, names=["sample_id"] + columns)
        if writer is None:
            writer = pq.ParquetWriter(path, batch.schema)
        writer.write_table(batch)
    writer.close()
    return columns


def read_only(path: Path, chunk_size: int) -> float:
    import pyarrow.parquet as pq

    started = time.perf_counter()
    pfile = pq.ParquetFile(path)
    rows = 0
    for batch in pfile.iter_batches(batch_size=chunk_size):
        frame = batch.to_pandas()
        matrix = frame.drop(columns=["sample_id"]).to_numpy(dtype=float)
        rows += len(matrix)
    return time.perf_counter() - started


def model_only(served, path: Path, chunk_size: int) -> float:
    """Seconds spent in the model's own predict_matrix over the file's chunks (reading not timed)."""
    import pyarrow.parquet as pq

    inner = served.pyfunc.unwrap_python_model().model
    spent = 0.0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=chunk_size):
        matrix = batch.to_pandas().drop(columns=["sample_id"]).to_numpy(dtype=float)
        started = time.perf_counter()
        inner.predict_matrix(matrix)
        spent += time.perf_counter() - started
    return spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--chunk-size", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--model", default=None, help="a registered model URI (MLFLOW_TRACKING_URI) instead of training")
    args = parser.parse_args()

    from soilcarbon.serving.predict import load_model, predict_file

    with tempfile.TemporaryDirectory(prefix="bench-predict-") as tmp:
        folder = Path(tmp)
        started = time.perf_counter()
        uri = args.model or train_and_register(folder)
        print(f"model {uri} ready in {time.perf_counter() - started:.1f} s", file=sys.stderr)
        source = folder / "spectra.parquet"
        started = time.perf_counter()
        write_spectra(source, args.n)
        size = source.stat().st_size
        print(f"wrote {args.n} spectra ({size / 1e6:.0f} MB) in {time.perf_counter() - started:.1f} s", file=sys.stderr)
        served = load_model(uri)
        rows = []
        read_seconds = min(read_only(source, args.chunk_size) for _ in range(2))
        rows.append(("read only (baseline)", read_seconds))
        rows.append(("model only (predict_matrix)", model_only(served, source, args.chunk_size)))
        for workers in sorted({1, args.workers}):
            out = folder / f"pred-{workers}.parquet"
            summary = predict_file(served, out, spectra=source, chunk_size=args.chunk_size, workers=workers)
            assert summary.n_predicted == args.n, summary
            rows.append((f"ours, {workers} worker{'s' if workers > 1 else ''} (read+predict+write)", summary.seconds))
        read_again = read_only(source, args.chunk_size)
        rows[0] = (rows[0][0], min(read_seconds, read_again))
        read_seconds = rows[0][1]
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    print(f"\nBatch prediction, {args.n:,} NIR spectra x 700 points from Parquet ({size / 1e6:.0f} MB), "
          f"chunks of {args.chunk_size:,}, {os.cpu_count()} CPUs, model {uri}")
    print(f"| {'step':<44} | {'seconds':>8} | {'spectra/s':>10} | {'x read':>7} |")
    print(f"|{'-' * 46}|{'-' * 10}|{'-' * 12}|{'-' * 9}|")
    for name, seconds in rows:
        print(f"| {name:<44} | {seconds:8.2f} | {args.n / seconds:10,.0f} | {seconds / read_seconds:7.1f} |")
    print(f"peak RSS of this process: {peak:,.0f} MB (the spectra alone are {args.n * 700 * 8 / 1e6:,.0f} MB as float64)")
    print(f"load average at the end: {', '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
