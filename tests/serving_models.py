"""Real models for the serving tests, trained once per test session into one MLflow SQLite store.

``serving_store(tmp_path_factory)`` trains (on first call) and registers:

- ``soc-nir``: PLS on the NIR spectra of ../shared/data/nirsoil (Ciso), alias ``champion`` -> 1;
- ``soc-cov``: a covariates-only model (synthetic covariates with a known relation);
- ``soc-mir``: PLS on the 40 real OPUS MIR spectra of ../shared/data/opus-sample (oc_g_per_kg).

Later calls (from other test modules) reuse the store. Tests that change the registry use
their own model names. BLAS is limited to one thread while training: on 2 shared cores,
oversubscribed BLAS threads make training ten times slower.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from trained_model import DATA, FAST_CONFIG, train_covariate_model, train_spectral_model, use_tracking

NIR_CONFIG = dict(FAST_CONFIG, candidates=[{"model": "pls", "grid": {"n_components": [8]}}])
MIR_CONFIG = dict(FAST_CONFIG, preprocessing=[{"name": "snv"}],
                  candidates=[{"model": "pls", "grid": {"n_components": [4]}}])


def _train_mir(folder: Path, name: str = "soc-mir") -> str:
    from soilcarbon.spectral.lab import join_lab, read_lab
    from soilcarbon.spectral.readers import read_spectra
    from soilcarbon.training.config import parse_config
    from soilcarbon.training.tracking import log_training
    from soilcarbon.training.train import train

    use_tracking(folder)
    spectra = read_spectra(DATA / "opus-sample" / "spectra")
    spectra, _ = join_lab(spectra, read_lab(DATA / "opus-sample" / "lab.csv"))
    result = train(spectra, "oc_g_per_kg", config=parse_config(MIR_CONFIG), n_jobs=1)
    return log_training(result, name, {"spectra": str(DATA / "opus-sample")}, "g/kg")


def serving_store(tmp_path_factory) -> dict:
    """``{"folder", "tracking_uri", "nir", "cov", "mir"}``; points MLFLOW_TRACKING_URI at the store."""
    folder = tmp_path_factory.getbasetemp() / "serving-models"
    done = folder / "models.json"
    if done.exists():
        info = json.loads(done.read_text())
        use_tracking(folder)
        return info
    from threadpoolctl import threadpool_limits

    folder.mkdir(exist_ok=True)
    with threadpool_limits(1):
        nir = train_spectral_model(folder, "soc-nir", n=200, config=NIR_CONFIG)
        cov = train_covariate_model(folder, "soc-cov", n=150)
        mir = _train_mir(folder)
    from soilcarbon.registry import promote

    promote("soc-nir", "1", "champion")
    info = {"folder": str(folder), "tracking_uri": use_tracking(folder), "nir": nir, "cov": cov, "mir": mir}
    done.write_text(json.dumps(info))
    return info


def environment(info: dict) -> dict:
    """Environment for subprocesses (CLI, servers) that use the store."""
    env = dict(os.environ)
    env["MLFLOW_TRACKING_URI"] = info["tracking_uri"]
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    return env


def stop(process) -> None:
    """Stop a server subprocess: SIGTERM, then SIGKILL if it has not exited within 15 s."""
    import subprocess

    process.terminate()
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)
