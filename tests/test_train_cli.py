"""`soilcarbon train` and `soilcarbon models` end to end: real data, real MLflow (SQLite in tmp)."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml

from trained_model import FAST_CONFIG

TRAIN_TIMEOUT = 300


@pytest.fixture()
def fast_config(tmp_path):
    path = tmp_path / "fast.yaml"
    path.write_text(yaml.safe_dump(FAST_CONFIG))
    return path


@pytest.fixture()
def small_nirsoil(tmp_path, nirsoil_csv):
    """The first 150 samples with Ciso, plus 5 without (they must be dropped and counted)."""
    frame = pd.read_csv(nirsoil_csv)
    rows = pd.concat([frame.dropna(subset=["Ciso"]).sample(150, random_state=0), frame[frame["Ciso"].isna()].head(5)])
    path = tmp_path / "nir.csv"
    rows.to_csv(path, index=False)
    return path


def _env(tmp_path):
    return {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}


def _use(tmp_path):
    """Point this process's MLflow tracking and registry at the test store."""
    uri = _env(tmp_path)["MLFLOW_TRACKING_URI"]
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)


def _registered(tmp_path):
    db = tmp_path / "mlflow.db"
    if not db.exists():
        return []
    client = mlflow.MlflowClient(f"sqlite:///{db}", f"sqlite:///{db}")
    return client.search_registered_models()


def test_train_registers_a_model_with_honest_oof(tmp_path, run_cli, small_nirsoil, fast_config):
    oof_path = tmp_path / "oof.csv"
    code, out, err = run_cli("train", "--spectra", small_nirsoil, "--target", "Ciso", "--config", fast_config,
                             "--name", "nir-test", "--oof-output", oof_path, "--target-unit", "%",
                             env=_env(tmp_path), timeout=TRAIN_TIMEOUT)
    assert code == 0, err
    lines = out.strip().splitlines()
    assert lines[-1] == "models:/nir-test/1"
    assert "5 sample(s) without a Ciso value were dropped" in out
    oof = pd.read_csv(oof_path)
    assert list(oof.columns) == ["sample_id", "observed", "prediction", "lower", "upper", "level", "fold"]
    assert len(oof) == 150 and oof["sample_id"].is_unique
    assert set(oof["fold"]) == {0, 1, 2}
    assert (oof["lower"] <= oof["prediction"]).all() and (oof["prediction"] <= oof["upper"]).all()
    # the file's observed values are the lab values, row by row
    lab = pd.read_csv(small_nirsoil).set_index("sample_id")["Ciso"]
    assert np.allclose(oof.set_index("sample_id")["observed"], lab.loc[oof["sample_id"]])
    rmse = float(np.sqrt(np.mean((oof["prediction"] - oof["observed"]) ** 2)))
    assert rmse < 0.8 * oof["observed"].std()  # a real calibration, better than the mean

    _use(tmp_path)
    client = mlflow.MlflowClient()
    version = client.get_model_version("nir-test", "1")
    assert version.tags["target"] == "Ciso" and version.tags["unit"] == "%"
    assert float(version.tags["cv_rmse"]) == pytest.approx(rmse, rel=1e-4)
    run = client.get_run(version.run_id)
    assert run.data.metrics["cv_rmse"] == pytest.approx(rmse, rel=1e-4)
    assert {"cv_r2", "cv_rpiq", "cv_bias", "cv_picp", "cv_mean_width"} <= set(run.data.metrics)
    assert len(client.get_metric_history(run.info.run_id, "fold_rmse")) == 3
    assert "data_digest" in run.data.params
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert artifacts == {"plots/observed_vs_predicted.png", "plots/residuals.png", "plots/coverage.png"}

    model = mlflow.pyfunc.load_model("models:/nir-test/1")
    meta = model.metadata.metadata["soilcarbon"]
    assert meta["unit"] == "nm" and len(meta["axis"]) == 700 and meta["axis"][0] == 1100.0
    frame = pd.read_csv(small_nirsoil).drop(columns=["Nt", "Ciso", "CEC"]).head(4)
    out90 = model.predict(frame)
    out50 = model.predict(frame, params={"level": 0.5})
    assert list(out90.columns) == ["sample_id", "prediction", "lower", "upper", "level", "in_domain", "domain_score"]
    assert np.allclose(out90["prediction"], out50["prediction"])
    assert ((out50["upper"] - out50["lower"]) < (out90["upper"] - out90["lower"])).all()

    code, out, err = run_cli("models", "promote", "nir-test", "1", "--alias", "champion", env=_env(tmp_path))
    assert code == 0, err
    code, out, err = run_cli("models", "promote", "nir-test", "7", env=_env(tmp_path))
    assert code == 2 and err.strip() == "error: model 'nir-test' has no version 7; see `soilcarbon models list`"
    code, out, err = run_cli("models", "list", env=_env(tmp_path))
    assert code == 0 and "nir-test" in out and "champion" in out and f"{rmse:.4g}" in out
    code, out, err = run_cli("models", "list", "--json", env=_env(tmp_path))
    rows = json.loads(out)
    assert rows[0]["name"] == "nir-test" and rows[0]["aliases"] == ["champion"]
    assert rows[0]["metrics"]["rmse"] == pytest.approx(rmse, rel=1e-4)


def test_print_default_config(run_cli):
    code, out, _ = run_cli("train", "--print-default-config")
    assert code == 0
    assert yaml.safe_load(out)["interval"]["level"] == 0.9


def _bad_target_table(tmp_path, nirsoil_csv, change):
    frame = pd.read_csv(nirsoil_csv).dropna(subset=["Ciso"]).head(40)
    frame = change(frame)
    path = tmp_path / "bad.csv"
    frame.to_csv(path, index=False)
    return path


def _set_text(frame):
    frame["Ciso"] = frame["Ciso"].astype(object)
    frame.loc[frame.index[3], "Ciso"] = "n.d."
    return frame


def _set_constant(frame):
    frame["Ciso"] = 1.5
    return frame


@pytest.mark.parametrize("case, fragment", [
    ("missing_target", "target column 'Carbon' not found"),
    ("text_target", "sample NIRsoil-"),
    ("constant_target", "is constant"),
    ("few_samples", "folds"),
    ("bad_config", "not valid YAML"),
    ("bad_candidate", "candidate scores-cubist(learner=cubist,max_samples=0,n_pca=3)|none: max_samples must be an integer >= 1, got 0"),
    ("bad_learner_option", "candidate scores-gp(learner=gp,n_pca=3,nu=1.5)|none: the gp learner takes only length_scale, linear and restarts, got ['nu']"),
    # a value out of range is found by the learner only when it is fitted, inside the search
    ("bad_learner_value", "candidate scores-spline(learner=spline,n_knots=1,n_pca=3)|none: The 'n_knots' parameter of SplineTransformer must be an int in the range [2, inf). Got 1 instead."),
    ("lab_mismatch", "no lab id matches"),
])
def test_bad_training_input_exits_2_and_registers_nothing(tmp_path, run_cli, nirsoil_csv, fast_config, case,
                                                          fragment):
    spectra, target, extra = None, "Ciso", []
    if case == "missing_target":
        spectra, target = _bad_target_table(tmp_path, nirsoil_csv, lambda f: f), "Carbon"
    elif case == "text_target":
        spectra = _bad_target_table(tmp_path, nirsoil_csv, _set_text)
    elif case == "constant_target":
        spectra = _bad_target_table(tmp_path, nirsoil_csv, _set_constant)
    elif case == "few_samples":
        spectra = _bad_target_table(tmp_path, nirsoil_csv, lambda f: f.head(8))
    elif case == "bad_config":
        spectra = _bad_target_table(tmp_path, nirsoil_csv, lambda f: f)
        fast_config.write_text("cv: [1, 2")
    elif case in ("bad_candidate", "bad_learner_option", "bad_learner_value"):
        spectra = _bad_target_table(tmp_path, nirsoil_csv, lambda f: f)
        config = yaml.safe_load(fast_config.read_text())
        learner = {"bad_candidate": {"learner": ["cubist"], "n_pca": [3], "max_samples": [0]},
                   "bad_learner_option": {"learner": ["gp"], "n_pca": [3], "nu": [1.5]},
                   "bad_learner_value": {"learner": ["spline"], "n_pca": [3], "n_knots": [1]}}[case]
        config["candidates"] = [{"model": "scores", "label": f"scores-{learner['learner'][0]}", "grid": learner}]
        config["target_transforms"] = ["none"]
        fast_config.write_text(yaml.safe_dump(config))
    elif case == "lab_mismatch":
        spectra = _bad_target_table(tmp_path, nirsoil_csv, lambda f: f.drop(columns=["Ciso"]))
        lab = tmp_path / "lab.csv"
        pd.DataFrame({"sample_id": ["X1", "X2"], "Ciso": [1.0, 2.0]}).to_csv(lab, index=False)
        extra = ["--lab", lab]
    oof = tmp_path / "oof.csv"
    code, out, err = run_cli("train", "--spectra", spectra, "--target", target, "--config", fast_config,
                             "--oof-output", oof, *extra, env=_env(tmp_path), timeout=TRAIN_TIMEOUT)
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert fragment in lines[0]
    assert not oof.exists()
    assert _registered(tmp_path) == []


def test_covariates_only_training_and_lab_join(tmp_path, run_cli, fast_config):
    from trained_model import covariate_table

    table = covariate_table(120)
    cov = tmp_path / "cov.csv"
    lab = tmp_path / "lab.csv"
    table.drop(columns=["soc"]).to_csv(cov, index=False)
    table[["sample_id", "soc"]].to_csv(lab, index=False)
    config = yaml.safe_load(fast_config.read_text())
    config["candidates"] = [{"model": "covariates", "grid": {"n_estimators": [150]}}]
    fast_config.write_text(yaml.safe_dump(config))
    code, out, err = run_cli("train", "--covariates", cov, "--lab", lab, "--target", "soc", "--config",
                             fast_config, "--name", "cov-only", env=_env(tmp_path), timeout=TRAIN_TIMEOUT)
    assert code == 0, err
    assert out.strip().splitlines()[-1] == "models:/cov-only/1"
    _use(tmp_path)
    model = mlflow.pyfunc.load_model("models:/cov-only/1")
    assert model.metadata.metadata["soilcarbon"]["covariates"] == ["ndvi", "elevation", "twi"]
    predicted = model.predict(table.drop(columns=["soc"]).head(50))
    assert np.corrcoef(predicted["prediction"], table["soc"].head(50))[0, 1] > 0.8
