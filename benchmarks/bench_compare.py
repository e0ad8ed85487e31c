"""What ``soilcarbon compare`` costs beyond predicting, and whether its paired test holds its level.

1. Speed: a comparison of two versions on a test file against its baseline, the two
   ``soilcarbon predict`` runs it has to make anyway (same file, same models, measured in the same
   run); the difference is reading the test data, the metrics, the paired bootstrap and
   permutation test, and (separately) the HTML report.
2. Calibration of the paired test: on simulated data where two versions have errors of the same
   size (no true difference), the share of 90 % bootstrap intervals that contain 0 and the share of
   permutation p-values below 0.10, against the nominal 0.90 and 0.10.

    .venv/bin/python benchmarks/bench_compare.py                      # trains two small PLS versions
    .venv/bin/python benchmarks/bench_compare.py --uris models:/soc-Ciso/1 models:/soc-Ciso/2 --spectra data/nirsoil_train.csv
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data" / "nirsoil_train.csv"


def _train_two(folder: Path) -> list[str]:
    sys.path.insert(0, str(REPO / "tests"))
    from serving_models import NIR_CONFIG
    from trained_model import train_spectral_model

    return [train_spectral_model(folder, "bench-compare", n=n, config=NIR_CONFIG) for n in (200, 300)]


def speed(uris: list[str], spectra: Path, target: str, repeat: int, resamples: int) -> list[dict]:
    from soilcarbon.evaluation.compare import compare_on_test, resolve_versions
    from soilcarbon.evaluation.report import render
    from soilcarbon.serving.batch import predict_file
    from soilcarbon.serving.model import load_model

    versions = resolve_versions(uris)
    models = [load_model(v.uri) for v in versions]
    rows = []
    for _ in range(repeat):
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            for k, model in enumerate(models):
                predict_file(model, Path(tmp) / f"p{k}.parquet", spectra=spectra, quiet=True)
            baseline = time.perf_counter() - start
        start = time.perf_counter()
        comparison = compare_on_test(versions, spectra, target, level=0.9, n_resamples=resamples, models=models)
        seconds = time.perf_counter() - start
        start = time.perf_counter()
        render(comparison)
        report = time.perf_counter() - start
        rows.append({"predict x2 (baseline)": baseline, "compare": seconds, "ratio": seconds / baseline,
                     "report": report, "n": comparison.test_data["n_compared"]})
    return rows


def calibration(sims: int, n: int, resamples: int, level: float = 0.9) -> dict:
    from soilcarbon.evaluation.compare import paired_rmse_test

    rng = np.random.default_rng(0)
    covered = rejected = 0
    for _ in range(sims):
        y = rng.uniform(0, 5, n)
        a, b = y + rng.normal(0, 0.4, n), y + rng.normal(0, 0.4, n)
        result = paired_rmse_test(y, a, b, level=level, n_resamples=resamples, seed=int(rng.integers(1 << 31)))
        covered += result["ci_low"] <= 0 <= result["ci_high"]
        rejected += result["p_value"] < 1 - level
    return {"interval covers 0": covered / sims, "nominal coverage": level,
            "p < 0.10": rejected / sims, "nominal": 1 - level}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uris", nargs="*", help="two model URIs (default: train two small PLS versions)")
    parser.add_argument("--spectra", type=Path, default=DATA)
    parser.add_argument("--target", default="Ciso")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--resamples", type=int, default=2000)
    parser.add_argument("--sims", type=int, default=200, help="simulated data sets for the calibration check")
    parser.add_argument("--n", type=int, default=300, help="samples per simulated data set")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as store:
        if args.uris:
            uris = args.uris
        else:
            os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{Path(store) / 'mlflow.db'}"
            uris = _train_two(Path(store))
        rows = speed(uris, args.spectra, args.target, args.repeat, args.resamples)
    print(f"speed: {' vs '.join(uris)} on {args.spectra.name}, {rows[0]['n']} samples compared, "
          f"{args.resamples} resamples")
    print(f"{'run':>4} {'predict x2 (baseline) s':>24} {'compare s':>10} {'ratio':>6} {'report s':>9}")
    for k, row in enumerate(rows, 1):
        print(f"{k:>4} {row['predict x2 (baseline)']:>24.2f} {row['compare']:>10.2f} {row['ratio']:>6.2f} "
              f"{row['report']:>9.2f}")
    cal = calibration(args.sims, args.n, min(args.resamples, 1000))
    print(f"paired test with no true difference ({args.sims} simulated sets of {args.n} samples):")
    print(f"  90% bootstrap interval contains 0: {cal['interval covers 0']:.3f} (nominal {cal['nominal coverage']:.2f})")
    print(f"  permutation p < 0.10:              {cal['p < 0.10']:.3f} (nominal {cal['nominal']:.2f})")


if __name__ == "__main__":
    main()
