"""Sample selection at scale: our Kennard-Stone vs the ``kennard-stone`` package (PyPI), same data.

Data: synthetic-from-real spectra. Rows of the NIR soil data (``../shared/data/nirsoil``, 618 x
700) drawn with replacement, each with a random multiplicative (2 %) and additive scatter effect
and white noise of 5 % of each band's standard deviation.

Cases, each in a fresh subprocess (time = wall clock of the selection call, data already in
memory; peak = the process' peak resident memory during the call above what it held before,
from ``VmHWM`` after resetting it through ``/proc/self/clear_refs``):

- ``ours default``: ``pca_space`` (SNV, PCA 99 % of the variance, at most 20 components) +
  Kennard-Stone with the Mahalanobis distance, as ``soilcarbon select`` runs it;
- ``ours, euclidean``: Kennard-Stone on the standardized 700 points starting from the sample
  farthest from the mean -- the metric and start rule of the package, so the two must agree;
- ``kennard-stone 3.0.1``: ``kennard_stone.train_test_split(X, train_size=k)``; it standardizes,
  computes the full distance matrix and orders every sample, so it only runs at small sizes.
- ``soilcarbon select (CLI)``: the whole command on the 100,000 spectra from Parquet.

Run:  pip install -c constraints.txt kennard-stone   (baseline only; not a dependency)
      python benchmarks/bench_select.py                      # 100,000 x 700, select 200
      python benchmarks/bench_select.py --n 20000 --baseline-sizes 1000,2000   # quicker
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
NIRSOIL = REPO.parent / "shared" / "data" / "nirsoil" / "nirsoil_train.csv"


def synthetic(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, values)``: n spectra resampled from the real NIR data with scatter and noise."""
    from soilcarbon.spectral.readers import read_spectra

    real = read_spectra(NIRSOIL).values
    sd = real.std(axis=0)
    rng = np.random.default_rng(seed)
    values = np.empty((n, real.shape[1]))
    step = 10_000
    for start in range(0, n, step):
        m = min(step, n - start)
        rows = real[rng.integers(len(real), size=m)]
        values[start:start + m] = (rows * (1 + 0.02 * rng.normal(size=(m, 1))) + 0.01 * rng.normal(size=(m, 1))
                                   + 0.05 * sd * rng.normal(size=(m, real.shape[1])))
    return np.array([f"s{i:06d}" for i in range(n)], dtype=object), values


def _status(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return float(line.split()[1]) / 1024.0  # kB -> MB
    return float("nan")


def _measure(call):
    """(result, seconds, peak MB above the memory held before the call)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        before = _status("VmRSS")
    except OSError:
        import resource

        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    start = time.perf_counter()
    result = call()
    seconds = time.perf_counter() - start
    return result, seconds, _status("VmHWM") - before


def child(case: str, n: int, k: int, seed: int, parquet: str | None) -> dict:
    """One case in this process; returns seconds, peak MB and the selection (row indices)."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(2)
    import sklearn.preprocessing  # noqa: F401  imports are not part of the timed call

    import soilcarbon.lab.selection  # noqa: F401
    import soilcarbon.spectral.preprocessing  # noqa: F401
    if case == "cli":
        from soilcarbon.cli import main

        out = Path(parquet).with_suffix(".ids.csv")

        def run():
            try:
                main(["select", "--spectra", parquet, "--n", str(k), "--output", str(out)])
            except SystemExit as exc:
                if exc.code:
                    raise
            import pandas as pd

            return [int(i[1:]) for i in pd.read_csv(out)["sample_id"]]

        selection, seconds, peak = _measure(run)
        return {"seconds": seconds, "peak_mb": peak, "selection": selection}
    _, X = synthetic(n, seed)
    if case == "ours_default":
        from soilcarbon.lab.selection import kennard_stone, pca_space

        selection, seconds, peak = _measure(lambda: kennard_stone(pca_space(X), k).tolist())
    elif case == "ours_euclidean":
        from sklearn.preprocessing import StandardScaler

        from soilcarbon.lab.selection import kennard_stone

        Xs = StandardScaler().fit_transform(X[:, X.std(axis=0) > 0])
        del X
        selection, seconds, peak = _measure(lambda: kennard_stone(Xs, k, metric="euclidean", start="mean").tolist())
    elif case == "package":
        import warnings

        from kennard_stone import train_test_split

        rows = np.arange(n)

        def run():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                train, _ = train_test_split(X, rows, train_size=k, n_jobs=1)[2:4]
            return [int(i) for i in train[::-1]]  # train holds the first k chosen, last chosen first

        selection, seconds, peak = _measure(run)
    else:
        raise SystemExit(f"unknown case {case}")
    return {"seconds": seconds, "peak_mb": peak, "selection": selection}


def run_child(case: str, n: int, k: int, seed: int, parquet: str | None = None, timeout: float = 1800) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    command = [sys.executable, __file__, "--child", case, "--n", str(n), "--select", str(k), "--seed", str(seed)]
    if parquet:
        command += ["--parquet", parquet]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)
    if done.returncode:
        return {"error": (done.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="candidates at full size")
    parser.add_argument("--select", type=int, default=200, help="samples to select")
    parser.add_argument("--baseline-sizes", default="2000,5000", help="sizes the package is run at")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-cli", action="store_true", help="skip the end-to-end command")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--parquet", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.n, args.select, args.seed, args.parquet)))
        return

    k = args.select
    rows = []  # (case, n, seconds, peak MB, agreement)
    for size in [int(s) for s in args.baseline_sizes.split(",") if s]:
        package = run_child("package", size, k, args.seed)
        ours = run_child("ours_euclidean", size, k, args.seed)
        if "error" in package or "error" in ours:
            agree = package.get("error") or ours.get("error")
        else:
            same_set = len(set(package["selection"]) & set(ours["selection"]))
            same_order = package["selection"] == ours["selection"]
            agree = f"{same_set}/{k} same samples, order {'identical' if same_order else 'differs'}"
        rows.append(("kennard-stone 3.0.1 (baseline)", size, package, ""))
        rows.append(("ours, same metric and start", size, ours, agree))
        rows.append(("ours default (SNV+PCA, Mahalanobis)", size, run_child("ours_default", size, k, args.seed), ""))
    rows.append(("ours, same metric and start", args.n, run_child("ours_euclidean", args.n, k, args.seed), ""))
    rows.append(("ours default (SNV+PCA, Mahalanobis)", args.n, run_child("ours_default", args.n, k, args.seed), ""))
    if not args.no_cli:
        with tempfile.TemporaryDirectory() as folder:
            from soilcarbon.spectral.spectra import Spectra

            ids, values = synthetic(args.n, args.seed)
            axis = np.arange(1100, 2500, 2.0)[: values.shape[1]]
            path = Path(folder) / "candidates.parquet"
            Spectra(ids=ids, axis=axis, unit="nm", values=values).to_parquet(path)
            del values
            rows.append(("soilcarbon select (CLI, from Parquet)", args.n,
                         run_child("cli", args.n, k, args.seed, str(path)), ""))

    by_size = {}
    for name, size, result, _ in rows:
        if name.startswith("kennard-stone") and "error" not in result:
            by_size[size] = result
    print(f"\nselect {k} of n spectra x 700 points (synthetic from nirsoil), 2 threads")
    header = f"{'case':<40}{'n':>8}{'seconds':>10}{'peak MB':>10}{'x faster':>10}  agreement with the baseline"
    print(header)
    print("-" * len(header))
    for name, size, result, agree in rows:
        if "error" in result:
            print(f"{name:<40}{size:>8}  failed: {result['error']}")
            continue
        base = by_size.get(size)
        ratio = f"{base['seconds'] / result['seconds']:.0f}" if base and not name.startswith("kennard-stone") else ""
        print(f"{name:<40}{size:>8}{result['seconds']:>10.2f}{result['peak_mb']:>10.0f}{ratio:>10}  {agree}")
    full = 8 * args.n * args.n / 1e9
    print(f"\na full distance matrix of {args.n:,} samples would take {full:,.0f} GB (float64); "
          f"the data itself is {8 * args.n * 700 / 1e6:,.0f} MB")


if __name__ == "__main__":
    main()
