"""Benchmark: default ``soilcarbon train`` on spectral libraries of growing size (issue 12).

Data: the NIR soil spectra with ``Ciso`` (../shared/data/nirsoil/nirsoil_train.csv, 548 samples,
700 bands) resampled with replacement to n spectra, each scaled by (1 + N(0, 0.001)) plus noise
of 0.1 % of the mean absorbance, Ciso plus N(0, 0.05) (clipped at 0.01); written as Parquet.

Runs the ``train`` CLI as a subprocess (a fresh MLflow SQLite store per run), once per size with
the default configuration and, as the named baseline in the same run, once per
``--baseline-sizes`` size with the rule before issue 12 (the default config with
``compute.large_n: null``: 10 outer folds, every candidate in every inner fold). Prints per run:
wall seconds, peak resident memory of the whole process tree (the sum of VmRSS of the train
process and all its descendants, sampled every 0.2 s from /proc; also the sum of PSS, which
counts a page shared by several processes once), outer and inner folds,
candidates fully cross-validated / all candidates (the others pruned by successive halving),
and the nested-CV RMSE. After each default-config run, the registered version just trained
(the URI ``train`` prints last) scores a separate library of ``--predict`` spectra (same recipe,
seed 1; its Ciso column is ignored) with the ``predict`` CLI as a subprocess on the same store:
wall seconds and spectra/s, counted only if the output has one non-empty prediction per spectrum
and no problems. Then the floors of issue 12 with pass/fail: time(16k) / time(2k) <= 10,
50k <= 20 min, peak <= 4 GB, predict speed(16k model) / speed(2k model) >= 0.5.

Usage: .venv/bin/python benchmarks/bench_train_scale.py [--sizes 2000 16000 50000]
       [--baseline-sizes [2000 16000 ...]] [--predict N] [--jobs N] [--keep FOLDER]
       (``--baseline-sizes`` with no value runs no baseline; ``--predict 0`` skips prediction)
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
NIRSOIL = ROOT.parent / "shared" / "data" / "nirsoil" / "nirsoil_train.csv"
if not NIRSOIL.exists():
    NIRSOIL = ROOT / "data" / "nirsoil_train.csv"
FLOOR_RATIO, FLOOR_50K_SECONDS, FLOOR_PEAK_MB, FLOOR_PREDICT_SPEED = 10.0, 20 * 60, 4096, 0.5


def write_library(path: Path, n: int, seed: int = 0) -> None:
    """``n`` noisy resampled NIR spectra with Ciso, as Parquet."""
    frame = pd.read_csv(NIRSOIL).dropna(subset=["Ciso"])
    columns = [c for c in frame.columns if c[0].isdigit()]
    base, y = frame[columns].to_numpy(float), frame["Ciso"].to_numpy(float)
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, len(base), n)
    values = base[rows] * (1 + rng.normal(0, 1e-3, (n, 1))) + rng.normal(0, 1e-3 * base.mean(), (n, len(columns)))
    out = pd.DataFrame(values, columns=columns)
    out.insert(0, "Ciso", np.clip(y[rows] + rng.normal(0, 0.05, n), 0.01, None))
    out.insert(0, "sample_id", [f"L{i:06d}" for i in range(n)])
    out.to_parquet(path, index=False)


def _tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (from /proc/*/task/*/children)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                todo += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                pass
    return found


def _memory_mb(pids: list[int], file: str, key: str) -> float:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/{file}").read_text().splitlines():
                if line.startswith(key):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def tree_memory_mb(pid: int) -> tuple[float, float]:
    """(sum of VmRSS, sum of Pss) of ``pid`` and its descendants: RSS counts pages shared by
    several processes (joblib's memory-mapped arrays, libraries) once per process, an upper
    bound; PSS splits each shared page among the processes that map it."""
    pids = _tree(pid)
    return _memory_mb(pids, "status", "VmRSS:"), _memory_mb(pids, "smaps_rollup", "Pss:")


def run_train(spectra: Path, config: Path, folder: Path, jobs: int | None) -> dict:
    """One ``soilcarbon train`` subprocess: wall seconds, peak tree RSS, and what MLflow logged."""
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{folder / 'mlflow.db'}", PYTHONPATH=str(ROOT))
    command = [sys.executable, "-m", "soilcarbon", "train", "--spectra", str(spectra), "--target", "Ciso",
               "--target-unit", "%", "--config", str(config), "--name", "bench"]
    if jobs:
        command += ["--jobs", str(jobs)]
    started = time.perf_counter()
    with open(folder / "stdout.txt", "w") as out, open(folder / "stderr.txt", "w") as err:
        process = subprocess.Popen(command, stdout=out, stderr=err, cwd=folder, env=env)
        peak, peak_pss = 0.0, 0.0
        while process.poll() is None:
            rss, pss = tree_memory_mb(process.pid)
            peak, peak_pss = max(peak, rss), max(peak_pss, pss)
            time.sleep(0.2)
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        raise RuntimeError(f"train failed ({process.returncode}): {(folder / 'stderr.txt').read_text()[-2000:]}")
    import mlflow

    client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])
    run = client.search_runs([e.experiment_id for e in client.search_experiments()])[0]
    params = run.data.params
    candidates = pd.read_csv(client.download_artifacts(run.info.run_id, "cv/candidates.csv", str(folder)))
    n = int(params["n_samples"])
    uri = (folder / "stdout.txt").read_text().strip().splitlines()[-1]
    return {"uri": uri, "seconds": seconds, "peak_mb": peak, "peak_pss_mb": peak_pss,
            "outer": params.get("compute.outer_folds_used", params["cv.folds"]),
            "inner": params["cv.inner_folds"], "full": int((candidates["samples"] == n).sum()) if "samples" in
            candidates else len(candidates), "candidates": len(candidates), "rmse": run.data.metrics["cv_rmse"]}


def run_predict(spectra: Path, n: int, uri: str, folder: Path) -> dict:
    """One ``soilcarbon predict`` subprocess with ``uri`` on ``folder``'s store: wall seconds and
    spectra/s; raises unless the output has ``n`` non-empty predictions by ``uri`` and no problems."""
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{folder / 'mlflow.db'}", PYTHONPATH=str(ROOT))
    output, problems = folder / "predictions.parquet", folder / "problems.csv"
    command = [sys.executable, "-m", "soilcarbon", "predict", "--model", uri, "--spectra", str(spectra),
               "--output", str(output), "--problems", str(problems), "--quiet"]
    started = time.perf_counter()
    with open(folder / "predict_stdout.txt", "w") as out, open(folder / "predict_stderr.txt", "w") as err:
        code = subprocess.run(command, stdout=out, stderr=err, cwd=folder, env=env).returncode
    seconds = time.perf_counter() - started
    if code != 0:
        raise RuntimeError(f"predict failed ({code}): {(folder / 'predict_stderr.txt').read_text()[-2000:]}")
    result = pd.read_parquet(output)
    n_problems = len(pd.read_csv(problems)) if problems.exists() and problems.stat().st_size else 0
    if len(result) != n or result["prediction"].notna().sum() != n or n_problems or set(result["model_uri"]) != {uri}:
        raise RuntimeError(f"predict with {uri}: {len(result)} rows, {result['prediction'].notna().sum()} "
                           f"predictions, {n_problems} problems, model_uri {set(result['model_uri'])} (expected {n})")
    return {"seconds": seconds, "rate": n / seconds, "in_domain": float(result["in_domain"].mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 16000, 50000])
    parser.add_argument("--baseline-sizes", type=int, nargs="*", default=[2000, 16000],
                        help="sizes also run with the rule before issue 12 (compute.large_n: null)")
    parser.add_argument("--predict", type=int, default=20000,
                        help="spectra scored with each default-config model (0: no prediction)")
    parser.add_argument("--jobs", type=int, default=None, help="train --jobs (default: train's default)")
    parser.add_argument("--keep", type=Path, default=None, help="keep data, stores and outputs in this folder")
    args = parser.parse_args()
    from soilcarbon.training.config import DEFAULT_CONFIG

    work = Path(tempfile.mkdtemp(prefix="bench_train_scale_", dir=args.keep))
    default = yaml.safe_load(DEFAULT_CONFIG)
    configs = {"default": default, "baseline: compute.large_n null": {**default, "compute": {
        **default["compute"], "large_n": None}}}
    for label, config in configs.items():
        (work / f"{label.split(':')[0]}.yaml").write_text(yaml.safe_dump(config))
    runs = [("default", n) for n in args.sizes] + [("baseline: compute.large_n null", n) for n in args.baseline_sizes]
    results = {}
    print(f"load before: {os.getloadavg()}; jobs: {args.jobs or 'train default'}; data in {work}", flush=True)
    for label, n in sorted(runs, key=lambda r: r[1]):
        data = work / f"library_{n}.parquet"
        if not data.exists():
            write_library(data, n)
        folder = work / f"{label.split(':')[0]}_{n}"
        folder.mkdir()
        results[label, n] = r = run_train(data, work / f"{label.split(':')[0]}.yaml", folder, args.jobs)
        print(f"  done {label} n={n}: {r['seconds']:.0f} s, peak {r['peak_mb']:.0f} MB (PSS {r['peak_pss_mb']:.0f}), "
              f"outer {r['outer']}, "
              f"inner {r['inner']}, {r['full']}/{r['candidates']} candidates fully cross-validated, "
              f"RMSE {r['rmse']:.4f} (load {os.getloadavg()[0]:.2f})", flush=True)
        if label == "default" and args.predict:
            query = work / f"query_{args.predict}.parquet"
            if not query.exists():
                write_library(query, args.predict, seed=1)
            r["predict"] = p = run_predict(query, args.predict, r["uri"], folder)
            print(f"  predict {args.predict:,} with {r['uri']} (n={n}): {p['seconds']:.1f} s, "
                  f"{p['rate']:.0f} spectra/s, {p['in_domain']:.1%} in domain "
                  f"(load {os.getloadavg()[0]:.2f})", flush=True)
    header = ("rule", "n", "wall s", "peak RSS MB", "peak PSS MB", "outer", "inner", "full CV / candidates",
              "nested RMSE", f"predict {args.predict:,} s", "spectra/s")
    rows = [(label, f"{n:,}", f"{r['seconds']:.0f}", f"{r['peak_mb']:.0f}", f"{r['peak_pss_mb']:.0f}", r["outer"],
             r["inner"], f"{r['full']}/{r['candidates']}", f"{r['rmse']:.4f}",
             f"{r['predict']['seconds']:.1f}" if "predict" in r else "-",
             f"{r['predict']['rate']:.0f}" if "predict" in r else "-") for (label, n), r in results.items()]
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows)]
    for row in [header, *rows]:
        print("  ".join(str(x).rjust(w) for x, w in zip(row, widths)))
    print("\nfloors (issue 12):")
    for label in configs:
        sizes = {n: r for (lab, n), r in results.items() if lab == label}
        if 2000 in sizes and 16000 in sizes:
            ratio = sizes[16000]["seconds"] / sizes[2000]["seconds"]
            print(f"  {label}: time(16k)/time(2k) = {ratio:.2f} (<= {FLOOR_RATIO:g}: "
                  f"{'pass' if ratio <= FLOOR_RATIO else 'FAIL'})")
            if "predict" in sizes[2000] and "predict" in sizes[16000]:
                speed = sizes[16000]["predict"]["rate"] / sizes[2000]["predict"]["rate"]
                print(f"  {label}: predict speed(16k model) / speed(2k model) = {speed:.2f} "
                      f"(>= {FLOOR_PREDICT_SPEED:g}: {'pass' if speed >= FLOOR_PREDICT_SPEED else 'FAIL'})")
        if 50000 in sizes:
            s = sizes[50000]["seconds"]
            print(f"  {label}: 50k wall {s / 60:.1f} min (<= 20: {'pass' if s <= FLOOR_50K_SECONDS else 'FAIL'})")
        for n, r in sizes.items():
            print(f"  {label}: n={n:,} peak {r['peak_mb']:.0f} MB RSS, {r['peak_pss_mb']:.0f} MB PSS "
                  f"(<= {FLOOR_PEAK_MB}: RSS {'pass' if r['peak_mb'] <= FLOOR_PEAK_MB else 'FAIL'}, "
                  f"PSS {'pass' if r['peak_pss_mb'] <= FLOOR_PEAK_MB else 'FAIL'})")
    for n in args.sizes:
        if ("baseline: compute.large_n null", n) in results:
            ratio = results["default", n]["seconds"] / results["baseline: compute.large_n null", n]["seconds"]
            print(f"  n={n:,}: default / baseline wall time = {ratio:.2f}")
    print(f"load after: {os.getloadavg()}")
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
