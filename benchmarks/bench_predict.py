"""Batch prediction speed: ``soilcarbon predict`` (``predict_file``) on 100,000 NIR spectra of 700
points from one Parquet file, against the baseline of only reading the same file.

- Data: ``--n`` spectra resampled (with replacement) from the real NIR spectra of
  ../shared/data/nirsoil, each with Gaussian noise of 0.1 % of its mean, unique ids, written with
  pyarrow in row groups of 10,000 (snappy).
- Models, both fitted on the 548 nirsoil samples with Ciso, registered in a temporary MLflow
  SQLite store and loaded by their URI like users do (``--model URI`` adds a registered model):
  ``pls``: a typical global calibration (Savitzky-Golay 1st derivative + SNV, PLS with 10
  components); ``default``: what ``soilcarbon train`` builds with the shipped configuration (the
  stack of memory-based learning, PLS-SNV and LightGBM; one local PLS model per spectrum). Both
  carry conformal intervals and the PCA domain check.
- Baseline ``read``: ``ParquetFile.iter_batches`` in chunks of ``--chunk-size`` rows, each turned into
  an id array and a float matrix with Arrow's ``RecordBatch.to_tensor``: the reading part of our
  pipeline, nothing else.
- ``model only``: the model's own ``predict_matrix`` on the same chunks on one thread, without
  reading, MLflow's input checks or writing: the floor set by the algorithm.
- ``model only, preprocessing not shared``: the same without the cache of
  :func:`soilcarbon.spectral.pipeline.shared_preprocessing` (each ensemble member and the domain
  check compute their own copy of the preprocessing): what the cache saves.
- ``ours``: the whole command path (read, align, MLflow pyfunc predict, write Parquet atomically),
  with 1 and with ``--workers`` threads, each run in its own process so that its peak resident
  memory (``VmHWM``) is its own; a run on the first tenth of the file shows that the peak does
  not grow with the input (it is set by the chunks in flight).

Every row is the best of ``--repeat`` runs (2; the reads: one before and one after the rest), as
the machine's speed varies from run to run; peak memory is the largest of the runs. The ratio
column is seconds / read seconds.

    .venv/bin/python benchmarks/bench_predict.py [--n 100000] [--chunk-size 5000] [--workers 2]
        [--models pls,default] [--model URI] [--repeat 2]
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

from soilcarbon.spectral.pipeline import shared_preprocessing  # noqa: E402


def train_and_register(folder: Path, which: str = "pls") -> str:
    """Fit a benchmark model (not nested: only the deployed model matters here) and register it."""
    from soilcarbon.spectral.readers import read_spectra
    from soilcarbon.training.config import load_config, parse_config
    from soilcarbon.training.tracking import log_training
    from soilcarbon.training.train import train

    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder / 'mlflow.db'}"
    if which == "default":
        config = load_config()
    else:
        config = parse_config({
            "preprocessing": [{"name": "savgol", "window_length": 11, "polyorder": 2, "deriv": 1}, {"name": "snv"}],
            "target_transforms": ["none"], "candidates": [{"model": "pls", "grid": {"n_components": [10]}}],
            "ensemble": {"enabled": False}, "cv": {"folds": 5, "inner_folds": 3},
        })
    spectra = read_spectra(NIRSOIL)
    result = train(spectra, "Ciso", config=config, nested=False, n_jobs=1)
    return log_training(result, f"bench-{which}", {"spectra": str(NIRSOIL)}, "%")


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
    """Seconds to read the file in chunks into ids + a float matrix, the fastest way we know
    (Arrow's ``RecordBatch.to_tensor``, as ``predict`` itself reads numeric spectra)."""
    import pyarrow.parquet as pq

    started = time.perf_counter()
    pfile = pq.ParquetFile(path, pre_buffer=False)  # as predict opens it (constant memory)
    for batch in pfile.iter_batches(batch_size=chunk_size):
        ids = batch.column("sample_id").to_numpy(zero_copy_only=False)
        matrix = np.asarray(batch.drop_columns(["sample_id"]).to_tensor(null_to_nan=True, row_major=False))
        assert matrix.shape == (len(ids), 700)
    return time.perf_counter() - started


def model_only(served, path: Path, chunk_size: int, share: bool = True) -> float:
    """Seconds spent in the model's own predict_matrix over the file's chunks (reading not timed),
    with the same one-thread BLAS/OpenMP limit as the command. ``share=False``: every pipeline
    computes its own preprocessing (no ``shared_preprocessing`` cache), the cache's baseline."""
    import contextlib

    import pyarrow.parquet as pq
    from threadpoolctl import threadpool_limits

    from soilcarbon.models import soc_model

    inner = served.pyfunc.unwrap_python_model().model
    spent = 0.0
    if not share:
        soc_model.shared_preprocessing = contextlib.nullcontext
    try:
        with threadpool_limits(limits=1):
            for batch in pq.ParquetFile(path, pre_buffer=False).iter_batches(batch_size=chunk_size):
                matrix = batch.to_pandas().drop(columns=["sample_id"]).to_numpy(dtype=float)
                started = time.perf_counter()
                inner.predict_matrix(matrix)
                spent += time.perf_counter() - started
    finally:
        soc_model.shared_preprocessing = shared_preprocessing
    return spent


def peak_rss_mb() -> float:
    """Peak resident memory of this process (VmHWM; unlike ru_maxrss it does not carry the parent's
    peak over fork + exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(uri: str, source: Path, output: Path, chunk_size: int, workers: int) -> None:
    """One run of the command path in this process; prints JSON with seconds and peak RSS."""
    import json

    from soilcarbon.serving.batch import predict_file
    from soilcarbon.serving.model import load_model

    served = load_model(uri)
    base = peak_rss_mb()
    summary = predict_file(served, output, spectra=source, chunk_size=chunk_size, workers=workers)
    peak = peak_rss_mb()
    print(json.dumps({"seconds": summary.seconds, "n": summary.n_predicted, "peak_mb": peak, "before_mb": base}))


def run_child(uri: str, source: Path, output: Path, chunk_size: int, workers: int) -> dict:
    import json
    import subprocess

    done = subprocess.run([sys.executable, __file__, "--child", uri, str(source), str(output), str(chunk_size),
                           str(workers)], capture_output=True, text=True, env=dict(os.environ), timeout=3600)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--chunk-size", type=int, default=5_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=2, help="runs of each measurement; the best is shown")
    parser.add_argument("--models", default="pls,default", help="benchmark models to train: pls, default")
    parser.add_argument("--model", default=None, help="also a registered model URI (in MLFLOW_TRACKING_URI)")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        uri, source, output, chunk_size, workers = args.child
        child(uri, Path(source), Path(output), int(chunk_size), int(workers))
        return

    import pyarrow.parquet as pq

    from soilcarbon.serving.model import load_model

    given_store = os.environ.get("MLFLOW_TRACKING_URI")
    with tempfile.TemporaryDirectory(prefix="bench-predict-") as tmp:
        folder = Path(tmp)
        source = folder / "spectra.parquet"
        started = time.perf_counter()
        write_spectra(source, args.n)
        size = source.stat().st_size
        print(f"wrote {args.n} spectra ({size / 1e6:.0f} MB) in {time.perf_counter() - started:.1f} s", file=sys.stderr)
        small = folder / "small.parquet"
        with pq.ParquetWriter(small, pq.ParquetFile(source).schema_arrow) as writer:
            for batch in pq.ParquetFile(source).iter_batches(batch_size=args.n // 10):
                writer.write_batch(batch)
                break
        models = []  # (label, uri, tracking store)
        if args.model:
            models.append((args.model, args.model, given_store))
        for which in [m.strip() for m in args.models.split(",") if m.strip()]:
            started = time.perf_counter()
            uri = train_and_register(folder, which)
            models.append((which, uri, os.environ["MLFLOW_TRACKING_URI"]))
            print(f"model {which} ({uri}) trained in {time.perf_counter() - started:.1f} s", file=sys.stderr)
        read_seconds = read_only(source, args.chunk_size)
        rows, tenths = [], {}
        for label, uri, store in models:
            if store:
                os.environ["MLFLOW_TRACKING_URI"] = store
            served = load_model(uri)
            alone = min(model_only(served, source, args.chunk_size) for _ in range(args.repeat))
            rows.append([label, "model only (predict_matrix, 1 thread)", alone, None])
            unshared = min(model_only(served, source, args.chunk_size, share=False) for _ in range(args.repeat))
            rows.append([label, "model only, preprocessing not shared", unshared, None])
            for workers in sorted({1, args.workers}):
                runs = [run_child(uri, source, folder / f"pred-{workers}.parquet", args.chunk_size, workers)
                        for _ in range(args.repeat)]
                assert all(result["n"] == args.n for result in runs), runs
                rows.append([label, f"ours, {workers} worker{'s' if workers > 1 else ''} (read+predict+write)",
                             min(r["seconds"] for r in runs), max(r["peak_mb"] for r in runs)])
            tenths[label] = run_child(uri, small, folder / "pred-small.parquet", args.chunk_size, args.workers)
        read_seconds = min(read_seconds, read_only(source, args.chunk_size))

    print(f"\nBatch prediction, {args.n:,} NIR spectra x 700 points from Parquet ({size / 1e6:.0f} MB), "
          f"chunks of {args.chunk_size:,}, {os.cpu_count()} CPUs")
    print(f"| {'model':<8} | {'step':<40} | {'seconds':>8} | {'spectra/s':>10} | {'x read':>7} | {'peak RSS MB':>11} |")
    print(f"|{'-' * 10}|{'-' * 42}|{'-' * 10}|{'-' * 12}|{'-' * 9}|{'-' * 13}|")
    for label, name, seconds, peak in [["", "read only (baseline)", read_seconds, None]] + rows:
        memory = f"{peak:11,.0f}" if peak else f"{'':11}"
        print(f"| {label:<8} | {name:<40} | {seconds:8.2f} | {args.n / seconds:10,.0f} | {seconds / read_seconds:7.1f} "
              f"| {memory} |")
    for label, tenth in tenths.items():
        print(f"memory ({label}): the same command on the first {args.n // 10:,} spectra peaks at "
              f"{tenth['peak_mb']:,.0f} MB (before predicting: {tenth['before_mb']:,.0f} MB)")
    print(f"the {args.n:,} spectra alone are {args.n * 700 * 8 / 1e6:,.0f} MB as float64; "
          f"load average at the end: {', '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
