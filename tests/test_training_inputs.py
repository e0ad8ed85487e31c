"""Bad input to training and to the model's input layout: one clear message naming the file,
column or sample, and nothing written or registered."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from soilcarbon.errors import SoilCarbonError
from soilcarbon.models.layout import FeatureLayout
from soilcarbon.models.matrix import plan_spectra, table_matrix
from soilcarbon.spectral.spectra import Spectra
from soilcarbon.training import cv
from soilcarbon.training.config import parse_config
from soilcarbon.training.data import assemble
from soilcarbon.training.train import train
from trained_model import FAST_CONFIG


def _covariates(n=30):
    rng = np.random.default_rng(0)
    return pd.DataFrame({"sample_id": [f"S{i}" for i in range(n)], "ndvi": rng.uniform(0, 1, n),
                         "x": rng.uniform(0, 1e4, n), "y": rng.uniform(0, 1e4, n),
                         "soc": rng.uniform(1, 5, n)})


def _spectra(ids, nan_row=None):
    values = np.random.default_rng(1).normal(1, 0.1, (len(ids), 5))
    if nan_row is not None:
        values[nan_row, 2] = np.nan
    return Spectra(ids, np.arange(1100, 1110, 2.0), "nm", values, meta=pd.DataFrame({"soc": np.arange(len(ids)) + 1.0}),
                   allow_nan=True)


# ----------------------------------------------------------------- assemble
@pytest.mark.parametrize("change, fragment", [
    (lambda t: t.drop(columns=["sample_id"]), "cov.csv: id column 'sample_id' not found"),
    (lambda t: t.assign(sample_id=["S0"] + list(t["sample_id"][1:-1]) + ["S0"]),
     "cov.csv: duplicate ids in the covariates table: S0; keep one row per sample"),
    (lambda t: t.assign(sample_id=t["sample_id"].where(~t.index.isin([2, 5]), " ")),
     "cov.csv: 2 covariates row(s) without 'sample_id' (row(s) 3, 6); every row needs an id"),
    (lambda t: t.assign(ndvi=t["ndvi"].astype(object).where(t.index != 4, "cloud")),
     "cov.csv: covariate column 'ndvi' is not numeric (sample S4 has 'cloud')"),
    (lambda t: t[["sample_id", "soc"]], "cov.csv: no covariate columns besides 'sample_id'"),
    (lambda t: t.assign(ndvi=np.nan, x=np.nan, y=np.nan), "every sample has a missing covariate value"),
    (lambda t: t.assign(soc=np.nan), "no sample has a value for target 'soc'"),
    (lambda t: t.assign(soc=t["soc"].astype(object).where(t.index != 2, "<0.1")),
     "target column 'soc' is not numeric (sample S2 has '<0.1'); remove the column or fix the value"),
])
def test_bad_covariate_tables_are_named(change, fragment):
    with pytest.raises(SoilCarbonError) as info:
        assemble(None, "soc", change(_covariates()), covariates_source="cov.csv")
    assert fragment in str(info.value)


def test_spectra_and_covariates_without_common_ids():
    with pytest.raises(SoilCarbonError, match="no sample id matches the spectra"):
        assemble(_spectra(["A", "B"]), "soc", _covariates().drop(columns=["soc"]))


def test_a_training_spectrum_with_missing_values_is_named():
    with pytest.raises(SoilCarbonError, match=r"spectra: sample B: 1 missing spectral value\(s\), first in column "
                                              "'1104'; remove or fix it before training"):
        assemble(_spectra(["A", "B", "C"], nan_row=1), "soc")


def test_an_infinite_training_covariate_is_named():
    """Training used to pass an infinite covariate on to the regressor; it now has the per-row rule
    of every other input (here strict: it stops training, naming sample and covariate)."""
    table = _covariates().assign(ndvi=lambda t: t["ndvi"].where(t.index != 3, np.inf))
    with pytest.raises(SoilCarbonError, match="cov.csv: sample S3: covariate 'ndvi' is infinite; remove or fix it"):
        assemble(None, "soc", table, reserved=("x", "y"), covariates_source="cov.csv")
    data = assemble(None, "soc", _covariates(), reserved=("x", "y"), covariates_source="cov.csv")
    assert data.layout.covariates == ["ndvi"] and data.X[:, 0].tolist() == _covariates()["ndvi"].tolist()


def test_nothing_to_train_on():
    with pytest.raises(SoilCarbonError, match="give spectra, covariates or both"):
        assemble(None, "soc", None)


# ------------------------------------------------------------- CV columns
def test_cv_columns_must_exist_and_be_complete():
    config = parse_config(dict(FAST_CONFIG, candidates=[{"model": "covariates", "grid": {"n_estimators": [10]}}]))
    table = _covariates()
    with pytest.raises(SoilCarbonError, match="fold column 'block' not found"):
        train(None, "soc", table, config, folds="block", n_jobs=1)
    with pytest.raises(SoilCarbonError, match="fold column has missing values"):
        train(None, "soc", table.assign(block=[None] + ["a", "b"] * 14 + ["a"]), config, folds="block", n_jobs=1)
    with pytest.raises(SoilCarbonError, match="coordinates have missing values"):
        train(None, "soc", table.assign(x=[np.nan] + list(table["x"][1:])), config, coords=("x", "y"), n_jobs=1)
    spatial = parse_config(dict(FAST_CONFIG, cv={"scheme": "spatial", "folds": 3, "inner_folds": 3}))
    with pytest.raises(SoilCarbonError, match="needs coordinates"):
        train(None, "soc", table, spatial, n_jobs=1)
    with pytest.raises(SoilCarbonError, match="block-size must be positive"):
        cv.spatial_labels(table["x"], table["y"], 3, block_size=0)


# ------------------------------------------------------------------ layout
def test_the_model_matrix_refuses_input_it_cannot_use():
    layout = FeatureLayout(np.arange(1100, 1110, 2.0), "nm", ["ndvi"])
    frame = pd.DataFrame({"sample_id": ["a"], **{str(v): [1.0] for v in range(1100, 1110, 2)}, "ndvi": [0.5]})
    X, reasons = table_matrix(layout, frame)
    assert X.tolist() == [[1.0] * 5 + [0.5]] and reasons == {}
    shuffled = frame[["ndvi", "sample_id", *map(str, range(1100, 1110, 2))]].set_axis([7], axis=0)
    assert table_matrix(layout, shuffled)[0].tolist() == [[1.0] * 5 + [0.5]]  # order [spectra | covariates]
    with pytest.raises(SoilCarbonError, match="the input: covariate column\\(s\\) ndvi missing; the model needs "
                                              "ndvi: add them$"):
        table_matrix(layout, frame.drop(columns=["ndvi"]))
    with pytest.raises(SoilCarbonError, match="the input: sample a: non-numeric value 'x' in covariate 'ndvi'"):
        table_matrix(layout, frame.assign(ndvi=["x"]))
    with pytest.raises(SoilCarbonError, match="the input: no spectral columns found; the model expects 5 points "
                                              "1100-1108 nm"):
        table_matrix(layout, frame[["sample_id", "ndvi"]])
    narrow = pd.DataFrame({"sample_id": ["a"], "1102": [1.0], "1104": [1.0], "ndvi": [0.5]})
    with pytest.raises(SoilCarbonError, match="the input: the spectra cover 1102.00-1104.00 nm but the model needs "
                                              "1100.00-1108.00 nm"):
        table_matrix(layout, narrow)
    with pytest.raises(SoilCarbonError, match="the model needs spectra on 5 points 1100-1108 nm"):
        plan_spectra(layout, None, "the request")
    covariates_only = FeatureLayout(None, None, ["ndvi"])
    with pytest.raises(SoilCarbonError, match="^the model needs covariates ndvi$"):
        plan_spectra(covariates_only, None, "the request", covariates_option="")
    with pytest.raises(SoilCarbonError, match="^the request: covariate column\\(s\\) ndvi missing; the model was "
                                              "trained on ndvi$"):
        plan_spectra(covariates_only, None, "x", covariates=pd.DataFrame({"twi": [1.0]}),
                     covariate_source="the request")


# -------------------------------------------------------- CLI, before training
@pytest.mark.parametrize("args, fragment", [
    (["--spectra", "{nir}"], "--target is required"),
    (["--target", "Ciso"], "give --spectra, --covariates or both"),
    (["--spectra", "{nir}", "--target", "Ciso", "--coords", "x"], "--coords must be X_COL,Y_COL, got 'x'"),
    (["--spectra", "{nir}", "--target", "Ciso", "--cv", "loo"], "--cv must be kfold, group, folds or spatial"),
    (["--spectra", "{nir}", "--target", "Ciso", "--cv", "spatial"], "--cv spatial needs --coords X_COL,Y_COL"),
    (["--spectra", "{nir}", "--target", "Ciso", "--cv", "kfold", "--coords", "x,y"], "--coords is for --cv spatial"),
    (["--spectra", "{nir}", "--target", "Ciso", "--oof-output", "{tmp}/missing/oof.csv"], "does not exist"),
    (["--covariates", "{cov}", "--lab", "{lab}", "--target", "soc"], "no sample id matches the covariates table"),
])
def test_train_cli_refuses_before_any_work(tmp_path, run_cli, nirsoil_csv, args, fragment):
    cov, lab = tmp_path / "cov.csv", tmp_path / "lab.csv"
    _covariates().drop(columns=["soc"]).to_csv(cov, index=False)
    pd.DataFrame({"sample_id": ["Z1", "Z2"], "soc": [1.0, 2.0]}).to_csv(lab, index=False)
    args = [a.format(nir=nirsoil_csv, tmp=tmp_path, cov=cov, lab=lab) for a in args]
    code, out, err = run_cli("train", *args, cwd=tmp_path, env={"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"})
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and fragment in lines[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cov.csv", "lab.csv"]  # no store, no output
