"""Map speed and memory: ``make_map`` (the ``soilcarbon map`` engine) on a synthetic 3-band stack,
against the baseline of only reading the same rasters window by window.

- Stack: three single-band float32 GeoTIFFs (ndvi, elevation, twi; tiled, uncompressed) of
  ``--size`` x ``--size`` pixels with uniform random values in the training ranges.
- Model: a covariates-only model trained with the shipped default ``covariates`` candidate
  (LightGBM, 400 trees) on 300 synthetic samples, plus its conformal intervals and domain check.
- Baseline: the same windows of the same bands read with ``rasterio`` (masked, as the map does),
  nothing predicted or written: the I/O floor. The ratio is ours / baseline in pixels/s.
- Memory: peak resident set size (``resource.getrusage``) of the main process and of the largest
  worker, each configuration in its own process. Running a second, smaller stack (``--small``)
  shows the peak does not grow with the raster: windows bound it.

    .venv/bin/python benchmarks/bench_map.py [--size 2000] [--small 1000] [--jobs 2] [--block-size 512]

Expect throughput to be set by the model (tree ensemble + neighbour search for the intervals),
not by I/O; on a shared machine the jobs=2 speed-up depends on other load (printed).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
COVARIATES = {"ndvi": (0.1, 0.9), "elevation": (50.0, 500.0), "twi": (2.0, 15.0)}


def train_model(path: Path) -> None:
    """Train the benchmark model (not nested: only the fitted model is needed) and pickle it."""
    import pandas as pd

    from soilcarbon.training.config import load_config, parse_config
    from soilcarbon.training.train import train

    rng = np.random.default_rng(0)
    n = 300
    table = pd.DataFrame({"sample_id": [f"S{i:03d}" for i in range(n)]})
    for name, (low, high) in COVARIATES.items():
        table[name] = rng.uniform(low, high, n)
    table["soc"] = 5 + 20 * table["ndvi"] - 0.01 * table["elevation"] + 0.5 * table["twi"] + rng.normal(0, 1, n)
    default = load_config().to_dict()
    candidates = [c for c in default["candidates"] if c["model"] == "covariates"]
    config = parse_config(dict(default, candidates=candidates, target_transforms=["none"], ensemble={"enabled": False}))
    result = train(None, "soc", table, config, nested=False, n_jobs=1)
    path.write_bytes(pickle.dumps(result.model))


def write_stack(folder: Path, size: int) -> list[Path]:
    import rasterio
    from rasterio.transform import from_origin

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(size)
    paths = []
    for name, (low, high) in COVARIATES.items():
        path = folder / f"{name}.tif"
        with rasterio.open(path, "w", driver="GTiff", width=size, height=size, count=1, dtype="float32",
                           crs="EPSG:32631", transform=from_origin(500000, 5600000, 10, 10), tiled=True,
                           blockxsize=512, blockysize=512) as dst:
            for row in range(0, size, 512):  # written in strips: the writer's memory stays small too
                rows = min(512, size - row)
                dst.write(rng.uniform(low, high, (rows, size)).astype(np.float32), 1,
                          window=((row, row + rows), (0, size)))
            dst.set_band_description(1, name)
        paths.append(path)
    return paths


def peak_mb(who) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # Linux: kilobytes


def run_one(mode: str, folder: Path, model_path: Path, block_size: int) -> dict:
    """One configuration in this (fresh) process: 'read' or 'map<jobs>'."""
    from soilcarbon.geo import mapping

    paths = [folder / f"{name}.tif" for name in COVARIATES]
    model = pickle.loads(model_path.read_bytes())
    plan = mapping.plan_stack(paths, model.layout.covariates)
    grid = plan.grid
    started = time.perf_counter()
    if mode == "read":
        reader = mapping.WindowPredictor(model, plan, model.level)
        total = 0.0
        for window in mapping.windows(grid.width, grid.height, block_size):
            arrays = reader.read(window)
            total += float(np.nansum(arrays["ndvi"]))
        reader.close()
        n_valid, jobs = grid.width * grid.height, 1
    else:
        jobs = int(mode[3:])
        report = mapping.make_map(model, plan, folder / f"soc{jobs}.tif", block_size=block_size, jobs=jobs,
                                  pool_min_pixels=0)
        n_valid, jobs = report.n_valid, report.jobs
        (folder / f"soc{jobs}.tif").unlink()
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "pixels": grid.width * grid.height, "valid": n_valid, "jobs": jobs,
            "peak_main_mb": peak_mb(resource.RUSAGE_SELF), "peak_worker_mb": peak_mb(resource.RUSAGE_CHILDREN)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2000, help="Raster side in pixels (e.g. 4000).")
    parser.add_argument("--small", type=int, default=1000, help="Smaller stack for the memory comparison (0: skip).")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--block-size", type=int, default=512)
    parser.add_argument("--run", help=argparse.SUPPRESS)
    parser.add_argument("--dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:  # child process: one measurement, JSON on stdout
        result = run_one(args.run, Path(args.dir), Path(args.dir).parent / "model.pkl", args.block_size)
        print(json.dumps(result))
        return

    sizes = [args.size] + ([args.small] if args.small else [])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        train_model(tmp / "model.pkl")
        for size in sizes:
            folder = tmp / f"stack{size}"
            write_stack(folder, size)
            modes = ["read", "map1"] + ([f"map{args.jobs}"] if args.jobs > 1 else [])
            if size != args.size:
                modes = ["read", f"map{args.jobs}"]
            for mode in modes:
                load = os.getloadavg()[0]
                done = subprocess.run([sys.executable, __file__, "--run", mode, "--dir", str(folder),
                                       "--block-size", str(args.block_size)], capture_output=True, text=True,
                                      cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)))
                if done.returncode:
                    sys.exit(done.stderr)
                rows.append({"size": size, "mode": mode, "load": load, **json.loads(done.stdout.splitlines()[-1])})
            for path in folder.iterdir():
                path.unlink()

    print(f"\nmap throughput, {len(COVARIATES)}-band float32 stack, {args.block_size}-pixel windows "
          f"({os.cpu_count()} CPUs; load = 1-min load average before the run)\n")
    header = (f"{'stack':>11} {'what':<26} {'seconds':>8} {'Mpixel/s':>9} {'vs read':>8} {'peak main MB':>13} "
              f"{'peak worker MB':>15} {'load':>5}")
    print(header)
    print("-" * len(header))
    for row in rows:
        base = next(r for r in rows if r["size"] == row["size"] and r["mode"] == "read")
        rate = row["pixels"] / row["seconds"] / 1e6
        ratio = rate / (base["pixels"] / base["seconds"] / 1e6)
        what = "read windows (baseline)" if row["mode"] == "read" else f"make_map, {row['jobs']} process(es)"
        worker = f"{row['peak_worker_mb']:.0f}" if row["jobs"] > 1 else "-"
        print(f"{row['size']:>5}x{row['size']:<5} {what:<26} {row['seconds']:>8.1f} {rate:>9.3f} {ratio:>8.3f} "
              f"{row['peak_main_mb']:>13.0f} {worker:>15} {row['load']:>5.1f}")
    input_mb = {s: len(COVARIATES) * s * s * 4 / 1e6 for s in sizes}
    print("\ninput stack size: " + ", ".join(f"{s}x{s}: {mb:.0f} MB" for s, mb in input_mb.items())
          + f"; output is 4 float32 bands ({', '.join(f'{4 * s * s * 4 / 1e6:.0f} MB' for s in sizes)})")


if __name__ == "__main__":
    main()
