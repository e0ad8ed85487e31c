"""Train small real models into a real MLflow SQLite store for tests that need one.

Fast configs (few PLS candidates, 3 folds) keep this to seconds; the models are real
calibrations on ../shared/data/nirsoil, registered in MLflow.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from soilcarbon.spectral.spectra import Spectra
from soilcarbon.training.config import parse_config

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
NIRSOIL = DATA / "nirsoil" / "nirsoil_train.csv"

FAST_CONFIG = {
    "preprocessing": [{"name": "savgol", "window_length": 11, "polyorder": 2, "deriv": 1}, {"name": "snv"}],
    "target_transforms": ["none"],
    "candidates": [{"model": "pls", "grid": {"n_components": [6, 10]}}],
    "ensemble": {"enabled": False},
    "cv": {"folds": 3, "inner_folds": 3},
}


def use_tracking(folder: Path) -> str:
    """Point MLflow (via the environment, as users do) at a SQLite file in ``folder``; also reset
    MLflow's process-wide URIs, which an earlier test's ``registry.configure`` may have set to
    another store (``mlflow.set_tracking_uri`` wins over the environment)."""
    import mlflow

    uri = f"sqlite:///{Path(folder) / 'mlflow.db'}"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


def nirsoil_spectra(n: int | None = None) -> Spectra:
    frame = pd.read_csv(NIRSOIL)
    if n is not None:
        frame = frame.dropna(subset=["Ciso"]).head(n)
    return Spectra.from_frame(frame, source=str(NIRSOIL))


def train_spectral_model(folder: Path, name: str = "soc-test", n: int | None = 200, config: dict | None = None) -> str:
    """Train and register a PLS model of Ciso on NIR spectra; returns models:/NAME/VERSION."""
    from soilcarbon.training.tracking import log_training
    from soilcarbon.training.train import train

    use_tracking(folder)
    result = train(nirsoil_spectra(n), "Ciso", config=parse_config(config or FAST_CONFIG), n_jobs=1)
    return log_training(result, name, {"spectra": str(NIRSOIL)}, "%")


def covariate_table(n: int = 150, seed: int = 0) -> pd.DataFrame:
    """Synthetic covariates with a known smooth relation to SOC (for covariates-only models)."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({
        "sample_id": [f"P{i:03d}" for i in range(n)],
        "ndvi": rng.uniform(0.1, 0.9, n),
        "elevation": rng.uniform(50, 500, n),
        "twi": rng.uniform(2, 15, n),
    })
    frame["soc"] = 5 + 20 * frame["ndvi"] - 0.01 * frame["elevation"] + 0.5 * frame["twi"] + rng.normal(0, 1, n)
    return frame


def train_covariate_model(folder: Path, name: str = "soc-cov", n: int = 150) -> str:
    """Train and register a covariates-only model; returns models:/NAME/VERSION."""
    from soilcarbon.training.tracking import log_training
    from soilcarbon.training.train import train

    use_tracking(folder)
    config = dict(FAST_CONFIG, candidates=[{"model": "covariates", "grid": {"n_estimators": [200]}}])
    result = train(None, "soc", covariate_table(n), parse_config(config), n_jobs=1)
    return log_training(result, name, {"covariates": "synthetic"}, "g/kg")
