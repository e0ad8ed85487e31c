"""benchmarks/generalization.py feeds each LimeSoDa set to ``train`` as a user would: spectral
columns as spectra, the other feature columns as covariates, never another target, the folds or
the coordinates; and it covers all 73 published pairs plus the NIR and OPUS data."""

import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import generalization  # noqa: E402

pytestmark = pytest.mark.skipif(not generalization.LIMESODA.exists(), reason="needs ../shared/data/limesoda")


def test_every_published_pair_and_the_two_project_sets_are_run():
    pairs = generalization.pairs()
    published = pd.read_csv(generalization.LIMESODA / "published_r2.csv")
    assert len(pairs) == len(published) + 2 == 75
    assert {p["group"] for p in pairs} == {"spectral", "spectra+covariates", "covariates"}
    assert {(p["dataset"], p["target"]) for p in pairs} >= {("nirsoil", "Ciso"), ("opus-sample", "oc_g_per_kg")}


@pytest.mark.parametrize("dataset, target", [("SL.125", "SOM"), ("W.50", "Clay"), ("CV.98", "pH")])
def test_features_never_include_other_targets_folds_or_coordinates(dataset, target):
    spectra, covariates, folds = generalization.load_pair(dataset, target)
    published = pd.read_csv(generalization.LIMESODA / "published_r2.csv").set_index(["dataset", "target"])
    row = published.loc[(dataset, target)]
    assert folds == "fold"
    features = [] if covariates is None else [c for c in covariates.columns if c not in ("sample_id", "fold", target)]
    forbidden = {"pH", "Clay", "SOC", "SOM", "fold"}
    assert not forbidden & set(features) and not any(c.startswith("coord_") for c in features)
    assert len(features) == row["n_covariates"]
    assert (0 if spectra is None else spectra.n_points) == row["n_spectral"]
    if spectra is not None:  # only the target and the folds travel with the spectra
        assert set(spectra.meta.columns) <= {"sample_id", "fold", target}
