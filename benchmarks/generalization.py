"""Does the default calibration generalize? Nested-CV accuracy of ``train`` on many data sets.

Runs the training procedure of ``soilcarbon train`` (``soilcarbon.training.train.train``, in
process, without MLflow registration: the registry adds nothing to the numbers and 75 versions
in a real registry would be noise) on

- every data set and target of ``../shared/data/limesoda`` (the 73 pairs of
  ``published_r2.csv``; Schmidinger et al. 2025, LimeSoDa), each with its own outer folds
  (``--folds fold``), spectral columns (``wl_<nm>`` / ``wn_<cm-1>``) given as spectra and the
  other feature columns as covariates; the other targets, the fold and coordinate columns are
  never features;
- the example NIR data (``data/nirsoil_train.csv``, target ``Ciso``, 10-fold as in the README);
- the OPUS sample (``../shared/data/opus-sample``, target ``oc_g_per_kg``, 10-fold).

Per pair: data set, target, group (spectral / spectra+covariates / covariates), n, our pooled
out-of-fold R², the published R² of random forest, CatBoost, SVR and MLR (each tuned by nested
CV on the same folds by the data set's authors) and their best, our PICP and mean width of the
90 % intervals, seconds. Then per group: mean R² of ours vs mean published best-of-four, wins
(ours >= best-of-four), pooled PICP (share of all samples inside their interval), lowest PICP,
total time.

Baselines, named in the output: the published best-of-four (same folds), and with
``--config FILE`` the default configuration of the checked-out commit, run on the same pairs in
the same run (columns ``base_r2``, ``delta``), or read from a saved table (``--baseline-csv``, for
iterating on a subset while the full default table is already known).

Run:
  PYTHONPATH=$PWD .venv/bin/python benchmarks/generalization.py --jobs 2 --output gen.csv
  PYTHONPATH=$PWD .venv/bin/python benchmarks/generalization.py --subset 'covariates' --config cand.yaml
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared" / "data"
LIMESODA = SHARED / "limesoda"
TARGETS = ("pH", "Clay", "SOC", "SOM")
LEARNERS = ("RF", "CatBoost", "SVR", "MLR")
GROUPS = {"spectra": "spectral", "spectra+covariates": "spectra+covariates", "covariates": "covariates"}


def pairs() -> list[dict]:
    """Every (data set, target) to run, with the published R² where there is one."""
    published = pd.read_csv(LIMESODA / "published_r2.csv")
    rows = []
    for rec in published.to_dict("records"):
        rows.append({"dataset": rec["dataset"], "target": rec["target"], "group": GROUPS[rec["features"]],
                     **{k: rec[k] for k in LEARNERS}, "best_of_4": rec["best_of_4"]})
    rows.append({"dataset": "nirsoil", "target": "Ciso", "group": "spectral"})
    rows.append({"dataset": "opus-sample", "target": "oc_g_per_kg", "group": "spectral"})
    return rows


def load_pair(dataset: str, target: str):
    """``(spectra, covariates table, folds column)`` as ``soilcarbon train`` would get them."""
    from soilcarbon.spectral.readers import read_spectra
    from soilcarbon.spectral.spectra import Spectra, parse_spectral_header

    if dataset == "nirsoil":
        return read_spectra(ROOT / "data" / "nirsoil_train.csv"), None, None
    if dataset == "opus-sample":
        from soilcarbon.spectral.lab import join_lab, read_lab

        spectra = read_spectra(SHARED / "opus-sample" / "spectra")
        spectra, _ = join_lab(spectra, read_lab(SHARED / "opus-sample" / "lab.csv"), "sample_id")
        return spectra, None, None
    frame = pd.read_parquet(LIMESODA / f"{dataset}.parquet")
    spectral = [c for c in frame.columns if parse_spectral_header(c) is not None and c.startswith(("wl_", "wn_"))]
    not_features = {"sample_id", "fold", *TARGETS} | {c for c in frame.columns if c.startswith("coord_")}
    covariates = [c for c in frame.columns if c not in not_features and c not in spectral]
    # only the target and the folds travel with the data: other targets are never features
    keep = ["sample_id", "fold", target]
    if spectral:
        spectra = Spectra.from_frame(frame[keep + spectral], id_col="sample_id")
        cov = frame[["sample_id", *covariates]] if covariates else None
        return spectra, cov, "fold"
    return None, frame[keep + covariates], "fold"


def run_pair(pair: dict, config_path: str | None) -> dict:
    """Nested CV of the training procedure on one pair; returns metrics and time."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from threadpoolctl import threadpool_limits

    from soilcarbon.training.commands import known_harmless_warnings_ignored
    from soilcarbon.training.config import load_config
    from soilcarbon.training.train import train

    spectra, cov, folds = load_pair(pair["dataset"], pair["target"])
    config = load_config(config_path)
    started = time.perf_counter()
    with threadpool_limits(1), known_harmless_warnings_ignored(), warnings.catch_warnings():
        warnings.simplefilter("ignore", category=UserWarning)
        result = train(spectra, pair["target"], cov, config, folds=folds, n_jobs=1)
    m = result.metrics
    return {"n": int(m["n"]), "r2": m["r2"], "rmse": m["rmse"], "picp": m["picp"], "width": m["mean_width"],
            "seconds": time.perf_counter() - started, "selected": result.selection.name}


def _run(args):
    pair, config_path = args
    try:
        return run_pair(pair, config_path)
    except Exception as exc:  # report and go on: one failing pair must not hide the table
        return {"error": f"{type(exc).__name__}: {exc}"}


def run_all(selected: list[dict], config_path: str | None, jobs: int, label: str,
            partial: str | None = None) -> pd.DataFrame:
    """Every pair's results; with ``partial``, the rows so far are rewritten to that CSV after each
    pair (a long run that is stopped keeps what it measured)."""
    work = [(p, config_path) for p in selected]
    out = []
    started = time.perf_counter()
    if jobs > 1:
        with ProcessPoolExecutor(jobs) as pool:
            results = pool.map(_run, work)
            for pair, res in zip(selected, results):
                out.append({**pair, **res})
                _progress(out[-1], label, started, out, partial)
    else:
        for args in work:
            out.append({**args[0], **_run(args)})
            _progress(out[-1], label, started, out, partial)
    return pd.DataFrame(out)


def _progress(row: dict, label: str, started: float, rows: list, partial: str | None) -> None:
    if partial:
        pd.DataFrame(rows).to_csv(partial, index=False)
    what = row.get("error") or (f"n {row['n']} R2 {row['r2']:.3f} PICP {row['picp']:.3f} width {row['width']:.4g} "
                                f"{row['seconds']:.0f} s")
    print(f"  [{label} {time.perf_counter() - started:6.0f} s] {row['dataset']} {row['target']}: {what}",
          file=sys.stderr, flush=True)


def summary(table: pd.DataFrame, r2: str = "r2") -> pd.DataFrame:
    rows = []
    for group, part in [*table.groupby("group", sort=False), ("all", table)]:
        ok = part[part[r2].notna()]
        pub = ok[ok["best_of_4"].notna()]
        rows.append({
            "group": group, "pairs": len(part),
            "mean_r2": ok[r2].mean(),
            "published_pairs": len(pub),
            "mean_r2_published_pairs": pub[r2].mean(),
            "mean_best_of_4": pub["best_of_4"].mean(),
            "wins": int((pub[r2] >= pub["best_of_4"]).sum()),
            "pooled_picp": float((ok["picp"] * ok["n"]).sum() / ok["n"].sum()) if len(ok) else np.nan,
            "min_picp": ok["picp"].min(),
            "minutes": ok["seconds"].sum() / 60,
        })
    return pd.DataFrame(rows)


def _short(name: str) -> str:
    return " + ".join(re.sub(r"\(.*?\)", "", part.split("*")[-1]) for part in name.split(" + "))


def commit() -> str:
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "soilcarbon"],
                               capture_output=True, text=True).stdout.strip()
        return head + ("+uncommitted changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--subset", help="regex on 'dataset/target/group' (e.g. 'covariates', '^SSP', '/pH/')")
    parser.add_argument("--jobs", type=int, default=1, help="pairs trained in parallel (each on one core)")
    parser.add_argument("--config", help="candidate training config (YAML); the default is run as baseline")
    parser.add_argument("--baseline-csv", help="with --config: read the default's results from this saved table "
                        "instead of running it again")
    parser.add_argument("--reverse", action="store_true", help="run the pairs last to first (a second process "
                        "can take the list from the other end)")
    parser.add_argument("--output", help="write the per-pair table (CSV)")
    parser.add_argument("--from-csv", help="print the table of an earlier run (its --output) instead of training")
    args = parser.parse_args(argv)

    selected = pairs()
    if args.subset:
        pattern = re.compile(args.subset)
        selected = [p for p in selected if pattern.search(f"{p['dataset']}/{p['target']}/{p['group']}")]
    if args.reverse:
        selected = selected[::-1]
    if not selected:
        print("no pair matches --subset", file=sys.stderr)
        return 2
    version = commit()
    if args.from_csv:
        saved = pd.read_csv(args.from_csv)
        keys = {(p["dataset"], p["target"]) for p in selected}
        table = saved[[k in keys for k in zip(saved["dataset"], saved["target"])]].reset_index(drop=True)
        version = f"{version} (table read from {args.from_csv})"
    else:
        table = run_all(selected, args.config, args.jobs, "candidate" if args.config else "default", args.output)
    if args.output and not args.from_csv:  # the candidate's own results first: a failing baseline must not lose them
        table.to_csv(args.output, index=False)
    baseline_note = "published best-of-four (RF, CatBoost, SVR, MLR, nested CV on the same folds)"
    if args.config:
        if args.baseline_csv:
            base = pd.read_csv(args.baseline_csv)
            base_name = f"default config as saved in {args.baseline_csv}"
        else:
            base = run_all(selected, None, args.jobs, "baseline")
            base_name = f"default config of commit {version}, same run"
        base = base[["dataset", "target", "r2", "picp", "seconds"]].rename(
            columns={"r2": "base_r2", "picp": "base_picp", "seconds": "base_seconds"})
        table = table.merge(base, on=["dataset", "target"], how="left")
        table["delta"] = table["r2"] - table["base_r2"]
        baseline_note += f"; {base_name}"
    ours = f"config {args.config}" if args.config else f"default config of commit {version}"
    pd.set_option("display.width", 250, "display.max_rows", 200, "display.max_columns", 30,
                  "display.max_colwidth", 60)
    columns = ["dataset", "target", "group", "n", "r2", *LEARNERS, "best_of_4", "picp", "width", "seconds"]
    if args.config:
        columns[5:5] = ["base_r2", "delta"]
    columns += [c for c in ("selected", "error") if c in table.columns]
    print(f"ours: {ours}; baseline: {baseline_note}")
    print(f"machine: {os.uname().nodename}, load {os.getloadavg()[0]:.2f}, jobs {args.jobs}")
    shown = table[columns].copy()
    if "selected" in shown:  # the model chosen on all samples, shortened: family|transform, + for a stack
        shown["selected"] = shown["selected"].fillna("").map(_short)
    print(shown.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print()
    print(summary(table).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if args.config:
        print()
        print("baseline (default) per group:")
        print(summary(table.assign(picp=table["base_picp"], seconds=table["base_seconds"]), "base_r2")
              .to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if args.output:
        table.to_csv(args.output, index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
