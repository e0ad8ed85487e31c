"""Calibration transfer on the corn data (m5 -> mp5, m5 -> mp6; moisture, oil, protein, starch).

Data: ``../shared/data/corn``, row i of every instrument file is the same sample. Every 4th sample
(rows 0, 4, 8, ...) is held out as the test part, the other 60 are the calibration part. The base
model is the default ``train`` on the 60 m5 spectra; 10 transfer samples are chosen from the
calibration part by ``select`` (Kennard-Stone, default settings) on the m5 spectra. For each case
the table gives the RMSE on the 20 held-out new-instrument spectra of:

- none: the base model applied to new-instrument spectra as they are;
- ds, pds, sst, slope-bias: each method with the settings leave-one-out chose within it;
- auto: the method and settings chosen by leave-one-out (what ``soilcarbon transfer`` registers);
- recal: the default ``train`` on the 60 new-instrument calibration spectra (the target to reach);
- chemotools PDS and SST with their default settings (named baselines).

Also: the coverage (picp) and mean width of auto's 90 % intervals, and the share of held-out
samples the domain check (run on the mapped spectra) finds in the calibration's domain.

Floors checked at the end: mean over the 8 cases of RMSE(auto) / RMSE(recal) <= 1.5; auto better
than none in every case; pooled PICP of auto's 90 % intervals on the held-out samples in 0.85-0.95.

Run: .venv/bin/python benchmarks/bench_transfer.py [--properties moisture oil] [--targets mp5]
(exit code 1 when a floor fails on the full run).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

CORN = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "corn"
PROPERTIES = ("moisture", "oil", "protein", "starch")
TARGETS = ("mp5", "mp6")
N_TRANSFER = 10


def load(instrument: str, prop: str):
    from soilcarbon.spectral.spectra import Spectra

    frame = pd.read_csv(CORN / f"corn_{instrument}.csv").drop(columns=["instrument"])
    frame = frame.drop(columns=[p for p in PROPERTIES if p != prop])
    test = np.arange(len(frame)) % 4 == 0
    cal = Spectra.from_frame(frame[~test].reset_index(drop=True), source=f"corn_{instrument}.csv")
    held = Spectra.from_frame(frame[test].reset_index(drop=True), source=f"corn_{instrument}.csv")
    return cal, held


def default_model(spectra, prop):
    from soilcarbon.training.train import train

    # the deployed model of the default train; nested CV only adds the reported accuracy
    return train(spectra, prop, nested=False, n_jobs=1).model


def rmse(predicted, observed) -> float:
    return float(np.sqrt(np.mean((np.asarray(predicted) - np.asarray(observed)) ** 2)))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--properties", nargs="+", default=list(PROPERTIES), choices=PROPERTIES)
    parser.add_argument("--targets", nargs="+", default=list(TARGETS), choices=TARGETS)
    args = parser.parse_args(argv)
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    warnings.filterwarnings("ignore")
    from chemotools.adaptation import PiecewiseDirectStandardization, SpectralSpaceTransform
    from threadpoolctl import threadpool_limits

    from soilcarbon.lab.select_commands import select_samples
    from soilcarbon.lab.transfer import TransferMethod, slope_bias
    from soilcarbon.lab.transfer_commands import transfer

    started = time.perf_counter()
    rows, covered = [], []
    columns = ["none", "ds", "pds", "sst", "slope-bias", "auto", "recal", "chemotools-pds", "chemotools-sst"]
    with threadpool_limits(1):
        for prop in args.properties:
            source_cal, _ = load("m5", prop)
            base = default_model(source_cal, prop)
            ids = list(select_samples(source_cal, N_TRANSFER).table["sample_id"])
            for target_name in args.targets:
                target_cal, target_test = load(target_name, prop)
                y = target_test.target(prop)
                X_test = target_test.values
                t0 = time.perf_counter()
                result = transfer(base, source_cal, target_cal, ids, "auto")
                seconds = time.perf_counter() - t0
                X_s = source_cal.select(ids).values
                X_t = target_cal.select(ids).values

                def predict(X):
                    return base.predict_matrix(X)["prediction"].to_numpy()

                row = {"case": f"{prop} m5->{target_name}", "none": rmse(predict(X_test), y)}
                best = result.fit.table.drop_duplicates("method").set_index("method")["settings"]
                for name in ("ds", "pds", "sst"):
                    label = best[name]
                    params = {k: int(v) for k, v in (p.split("=") for p in label[len(name) + 1:-1].split(",") if p)}
                    mapper = TransferMethod(name, params).build().fit(X_t, X_source=X_s)
                    row[name] = rmse(predict(mapper.transform(X_test)), y)
                slope, intercept = slope_bias(predict(X_t), predict(X_s))
                row["slope-bias"] = rmse(intercept + slope * predict(X_test), y)
                out = result.model.predict_matrix(X_test)
                row["auto"] = rmse(out["prediction"], y)
                covered.append(((y >= out["lower"]) & (y <= out["upper"])).to_numpy())
                row["recal"] = rmse(default_model(target_cal, prop).predict_matrix(X_test)["prediction"], y)
                for label, mapper in (("chemotools-pds", PiecewiseDirectStandardization()),
                                      ("chemotools-sst", SpectralSpaceTransform())):
                    row[label] = rmse(predict(mapper.fit(X_t, X_source=X_s).transform(X_test)), y)
                row["auto/recal"] = row["auto"] / row["recal"]
                row["chosen"] = result.fit.method.label
                row["picp"] = float(np.mean(covered[-1]))
                row["width"] = float(np.mean(out["upper"] - out["lower"]))
                row["in_domain"] = float(np.mean(out["in_domain"]))
                row["seconds"] = seconds
                rows.append(row)
                print(f"{row['case']}: auto {row['auto']:.4f} ({row['chosen']}), recal {row['recal']:.4f}, "
                      f"none {row['none']:.4f}  [{seconds:.1f} s]", file=sys.stderr, flush=True)
    table = pd.DataFrame(rows)
    with pd.option_context("display.width", 250, "display.max_columns", 30, "display.float_format", "{:.4f}".format):
        print(f"RMSE on the held-out new-instrument spectra ({N_TRANSFER} transfer samples chosen by select)")
        print(table[["case"] + columns + ["auto/recal", "picp", "width", "in_domain", "chosen"]].to_string(index=False))
    ratio = float(table["auto/recal"].mean())
    better = bool((table["auto"] < table["none"]).all())
    picp = float(np.mean(np.concatenate(covered)))
    full = len(rows) == len(PROPERTIES) * len(TARGETS)
    checks = [(f"mean RMSE(auto)/RMSE(recal) = {ratio:.3f} <= 1.5", ratio <= 1.5),
              (f"auto better than no transfer in {int((table['auto'] < table['none']).sum())}/{len(table)} cases",
               better),
              (f"pooled PICP of the 90 % intervals = {picp:.3f} in 0.85-0.95 ({sum(map(len, covered))} samples)",
               0.85 <= picp <= 0.95)]
    for text, ok in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {text}")
    print(f"total {time.perf_counter() - started:.0f} s{'' if full else ' (reduced run: floors are for all 8 cases)'}")
    return 0 if all(ok for _, ok in checks) or not full else 1


if __name__ == "__main__":
    raise SystemExit(main())
