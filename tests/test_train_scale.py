"""Library-scale training (issue 12): jobs, large-data rules (fewer outer folds, successive
halving), the time budget, on the real NIR data with thresholds lowered through the config."""

from __future__ import annotations

import os

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml

from soilcarbon.errors import SoilCarbonError
from soilcarbon.training import cv
from soilcarbon.training.config import load_config, parse_config
from soilcarbon.training.data import assemble
from soilcarbon.training.scale import available_cpus, halving_rounds, plan
from soilcarbon.training.search import evaluate, evaluate_halving, halving_tasks
from soilcarbon.training.train import train
from trained_model import FAST_CONFIG, nirsoil_spectra

# 6 + 2 PLS candidates in two families: halving keeps one of each
HALVING_CONFIG = {**FAST_CONFIG,
                  "candidates": [{"model": "pls", "grid": {"n_components": [2, 4, 6, 8, 10, 12]}},
                                 {"model": "pls", "label": "pls-b", "grid": {"n_components": [3, 9]}}],
                  "cv": {"folds": 10, "inner_folds": 3}}


def test_halving_rounds_follow_the_schedule():
    # 12 candidates, eta 3: 3 rounds on n/27, n/9, n/3, keeping 4, 2, 1
    assert halving_rounds(12, 50_000) == [(12, 1852), (4, 5556), (2, 16667)]
    assert halving_rounds(2, 16_000) == [(2, 5334)]
    assert halving_rounds(1, 16_000) == []
    assert halving_rounds(6, 300) == [(6, 200), (2, 200)]  # never below 200 samples, never above n


@pytest.mark.parametrize("n, outer, halving", [(548, 10, False), (4999, 10, False), (5000, 5, True),
                                                (19_999, 5, True), (20_000, 3, True)])
def test_large_data_rules_switch_on_at_large_n(n, outer, halving):
    config = load_config()
    assert config.compute["large_n"] == 5000
    chosen = plan(n, config, scheme_has_fold_count=True)
    assert (chosen.outer_folds, chosen.halving) == (outer, halving)
    assert chosen.jobs == len(os.sched_getaffinity(0)) == available_cpus()
    given = plan(n, config, scheme_has_fold_count=False)  # user fold labels are never changed
    assert given.outer_folds is None and given.halving == halving


def test_jobs_come_from_argument_then_config():
    config = parse_config({"compute": {"jobs": 3}})
    assert plan(100, config, True).jobs == 3
    assert plan(100, config, True, n_jobs=1).jobs == 1
    off = parse_config({"compute": {"large_n": None}})
    assert not plan(10**6, off, True).halving and plan(10**6, off, True).outer_folds == 10


@pytest.mark.parametrize("text, fragment", [
    ("compute: {jobs: 0}", "compute.jobs must be null or an integer >= 1, got 0"),
    ("compute: {budget_minutes: -1}", "compute.budget_minutes must be null or a number > 0, got -1"),
    ("compute: {large_n: 2.5}", "compute.large_n"),
    ("compute: {threads: 2}", "unknown compute option(s) ['threads']"),
])
def test_bad_compute_config_is_named(tmp_path, text, fragment):
    path = tmp_path / "train.yaml"
    path.write_text(text)
    with pytest.raises(SoilCarbonError) as info:
        load_config(path)
    assert fragment in str(info.value) and str(path) in str(info.value)


def test_halving_prunes_within_families_and_keeps_survivors_oof_exact():
    data = assemble(nirsoil_spectra(450), "Ciso")
    X, y, layout = data.X, data.y, data.layout
    config = parse_config(HALVING_CONFIG)
    specs = config.expand(True, False)
    labels = cv.inner_labels(len(y), 3, 0, None)
    calls = []
    survivors, pruned = evaluate_halving(specs, X, y, labels, layout, config.preprocessing, 0, 1,
                                         lambda: calls.append(1))
    assert sorted(s.spec.label or "pls" for s in survivors) == ["pls", "pls-b"]
    assert len(pruned) == 6 and all(p.oof is None and p.samples == 200 for p in pruned)
    # 6 + 2 candidates on the 200-sample subsample (the second round of 6 reuses it), 2 survivors on all
    assert len(calls) == halving_tasks(specs, len(y), 3) == 3 * (6 + 2 + 2)
    # each survivor beat its pruned siblings on the subsample they were compared on
    sub = np.sort(np.random.default_rng(0).permutation(len(y))[:200])
    for survivor in survivors:
        again = evaluate([survivor.spec], X[sub], y[sub], labels[sub], layout, config.preprocessing, 0, 1,
                         share_preprocessing=True)[0]
        assert again.rmse <= min(p.rmse for p in pruned if p.spec.label == survivor.spec.label)
    # survivors get the same full out-of-fold predictions as without halving
    full = evaluate([s.spec for s in survivors], X, y, labels, layout, config.preprocessing, 0, 1,
                    share_preprocessing=True)
    for a, b in zip(survivors, full):
        np.testing.assert_array_equal(a.oof, b.oof)
        assert a.samples == len(y)


def test_training_with_lowered_large_n_uses_fewer_outer_folds_and_halving():
    spectra = nirsoil_spectra(450)
    config = parse_config({**HALVING_CONFIG, "compute": {"large_n": 100}})
    result = train(spectra, "Ciso", config=config, n_jobs=1)
    assert result.compute.outer_folds == 3 and len(result.fold_metrics) == 3  # 450 >= 4 x 100
    assert result.cv_scheme.startswith("3-fold")
    assert len(result.selection.pruned) == 6
    assert result.oof["prediction"].notna().all()
    params = result.compute.params()
    assert params["compute.successive_halving"] and params["compute.outer_folds_used"] == 3
    small = train(spectra, "Ciso", config=parse_config(HALVING_CONFIG), n_jobs=1)
    assert small.compute.outer_folds == 10 and not small.selection.pruned


def test_budget_skips_outer_folds_and_reports_on_the_rest():
    spectra = nirsoil_spectra(200)
    config = parse_config({**FAST_CONFIG, "cv": {"folds": 4, "inner_folds": 3},
                           "compute": {"budget_minutes": 1e-6}})
    result = train(spectra, "Ciso", config=config, n_jobs=1)
    assert result.compute.skipped_folds == [1, 2, 3]
    assert len(result.fold_metrics) == 1
    done = result.oof["prediction"].notna()
    assert done.sum() == (result.oof["fold"] == 0).sum() == result.metrics["n"]
    assert any("skipped outer fold(s) 1, 2, 3 of 4" in line for line in result.compute.lines())
    assert result.model is not None and result.model.info["n_train"] == 200


@pytest.mark.parametrize("option, value, message", [
    ("--jobs", "0", "error: --jobs must be an integer >= 1, got 0"),
    ("--budget-minutes", "-1", "error: --budget-minutes must be a number > 0, got -1"),
])
def test_bad_compute_options_exit_2(run_cli, nirsoil_csv, option, value, message):
    code, out, err = run_cli("train", "--spectra", nirsoil_csv, "--target", "Ciso", option, value)
    assert code == 2 and err.strip().splitlines() == [message], err


def _small_inputs(folder, nirsoil_csv, n: int):
    """The first ``n`` NIR samples with Ciso and the fast config, as files in ``folder``."""
    spectra, config = folder / "nir.csv", folder / "fast.yaml"
    pd.read_csv(nirsoil_csv).dropna(subset=["Ciso"]).head(n).to_csv(spectra, index=False)
    config.write_text(yaml.safe_dump(FAST_CONFIG))
    return spectra, config


def test_train_cli_prints_and_logs_jobs(tmp_path, run_cli, nirsoil_csv):
    spectra, config = _small_inputs(tmp_path, nirsoil_csv, 120)
    db = tmp_path / "mlflow.db"
    code, out, err = run_cli("train", "--spectra", spectra, "--target", "Ciso", "--config", config, "--jobs", "1",
                             "--budget-minutes", "30", env={"MLFLOW_TRACKING_URI": f"sqlite:///{db}"}, timeout=300)
    assert code == 0, err
    assert "compute: jobs: 1 (compute.jobs / --jobs)" in out
    assert "compute: budget: 30 min" in out
    client = mlflow.MlflowClient(f"sqlite:///{db}")
    run = client.search_runs([e.experiment_id for e in client.search_experiments()])[0]
    assert run.data.params["compute.jobs_used"] == "1"
    assert run.data.params["compute.jobs"] == "1" and run.data.params["compute.budget_minutes"] == "30.0"
    assert run.data.params["compute.outer_folds_used"] == "3"


def test_shared_preprocessing_gives_the_same_scores_as_per_fit_preprocessing():
    data = assemble(nirsoil_spectra(200), "Ciso")
    config = parse_config({**HALVING_CONFIG, "candidates": [
        {"model": "pls", "grid": {"n_components": [4, 8]}},
        {"model": "pls", "label": "snv", "grid": {"n_components": [6]},
         "preprocessing": [{"name": "savgol", "window_length": 11, "polyorder": 2, "deriv": 1},
                           {"name": "resample", "step": 10}, {"name": "snv"}]},
        {"model": "pls", "label": "msc", "grid": {"n_components": [6]},  # fitted on the fold: not shared
         "preprocessing": [{"name": "msc"}]}]})
    specs = config.expand(True, False)
    labels = cv.inner_labels(len(data.y), 3, 0, None)
    args = (specs, data.X, data.y, labels, data.layout, config.preprocessing, 0, 1)
    alone, shared = evaluate(*args), evaluate(*args, share_preprocessing=True)
    assert [s.spec for s in shared] == specs  # scores keep the configured candidates
    for a, b in zip(alone, shared):
        np.testing.assert_allclose(b.oof, a.oof, rtol=0, atol=1e-9)
    assert not np.array_equal(alone[0].oof, alone[1].oof)


def test_bad_engine_is_named(run_cli, nirsoil_csv):
    code, _, err = run_cli("train", "--spectra", nirsoil_csv, "--target", "Ciso", "--engine", "dask")
    assert code == 2 and err.strip().splitlines() == ["error: --engine must be local or spark, got 'dask'"], err
    with pytest.raises(SoilCarbonError, match="compute.engine must be one of"):
        parse_config({"compute": {"engine": "ray"}})


def _spark_problem():
    from soilcarbon.training.scale import spark_problem

    return spark_problem()


@pytest.mark.skipif(_spark_problem() is None, reason="joblibspark is installed here")
def test_spark_engine_without_joblibspark_is_a_clear_error(run_cli, nirsoil_csv):
    code, _, err = run_cli("train", "--spectra", nirsoil_csv, "--target", "Ciso", "--engine", "spark")
    assert code == 2 and err.strip().splitlines() == [f"error: --engine spark: {_spark_problem()}"], err


@pytest.mark.skipif(_spark_problem() is not None, reason=f"spark engine not testable here: {_spark_problem()}")
def test_spark_engine_gives_the_local_engine_s_out_of_fold_predictions(tmp_path, run_cli, nirsoil_csv):
    spectra, config = _small_inputs(tmp_path, nirsoil_csv, 90)
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", "SOILCARBON_SPARK_MASTER": "local[1]"}
    outputs = {}
    for engine in ("local", "spark"):
        outputs[engine] = tmp_path / f"oof_{engine}.csv"
        code, out, err = run_cli("train", "--spectra", spectra, "--target", "Ciso", "--config", config, "--engine",
                                 engine, "--oof-output", outputs[engine], env=env, timeout=300)
        assert code == 0, err
    assert "engine spark (joblibspark)" in out
    pd.testing.assert_frame_equal(pd.read_csv(outputs["spark"]), pd.read_csv(outputs["local"]), rtol=1e-10)
