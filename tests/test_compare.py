"""`soilcarbon compare` on real data (../shared/data/nirsoil) with real models in a real MLflow store.

Three PLS versions of ``soc-cmp`` are trained once for the module: v1 on 200 samples, v2 on 300
samples (other data), v3 on the same 200 samples as v1 with another number of components; v2 is
the ``champion``. The comparison's numbers are checked against numbers computed here, with our own
formulas, from each version's own ``soilcarbon predict`` output.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import re

import mlflow
import numpy as np
import pandas as pd
import pytest

from cli_helpers import only_error_line
from serving_models import NIR_CONFIG
from trained_model import NIRSOIL, train_spectral_model

BAD_SAMPLE = "NIRsoil-5"  # has a Ciso value; one of its bands is blanked in the test file


def _cli(*args) -> tuple[int, str, str]:
    """The real entry point in this process (stdout and stderr captured)."""
    from soilcarbon.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = exc.code
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def store(tmp_path_factory, shared_data):
    from threadpoolctl import threadpool_limits

    from soilcarbon.registry import promote

    folder = tmp_path_factory.mktemp("compare-store")
    before = os.environ.get("MLFLOW_TRACKING_URI")
    with threadpool_limits(1):
        v1 = train_spectral_model(folder, "soc-cmp", n=200, config=NIR_CONFIG)
        v2 = train_spectral_model(folder, "soc-cmp", n=300, config=NIR_CONFIG)
        v3 = train_spectral_model(folder, "soc-cmp", n=200,
                                  config=dict(NIR_CONFIG, candidates=[{"model": "pls", "grid": {"n_components": [5]}}]))
    promote("soc-cmp", "2", "champion")
    test_csv = folder / "test.csv"
    frame = pd.read_csv(NIRSOIL, dtype={"sample_id": str})
    assert not np.isnan(frame.loc[frame["sample_id"] == BAD_SAMPLE, "Ciso"]).any()
    frame.loc[frame["sample_id"] == BAD_SAMPLE, "1500"] = np.nan
    frame.to_csv(test_csv, index=False)
    yield {"folder": folder, "v1": v1, "v2": v2, "v3": v3, "test_csv": test_csv, "frame": frame}
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before


@pytest.fixture(scope="module")
def compared(store):
    """One comparison on test data (JSON, report, MLflow run) and each version's own predict output."""
    folder = store["folder"]
    code, out, err = _cli("compare", store["v1"], "models:/soc-cmp@champion", "--spectra", store["test_csv"],
                          "--target", "Ciso", "--json", folder / "cmp.json", "--output", folder / "cmp.html",
                          "--log-to-mlflow", "--resamples", "1000")
    assert code == 0, err
    outputs = {}
    for uri in (store["v1"], store["v2"]):
        path = folder / f"pred-{uri.rsplit('/', 1)[-1]}.csv"
        code, _, perr = _cli("predict", "--model", uri, "--spectra", store["test_csv"], "--output", path, "--quiet")
        assert code == 0, perr
        outputs[uri] = pd.read_csv(path, dtype={"sample_id": str})
    return {"json": json.loads((folder / "cmp.json").read_text()), "html": (folder / "cmp.html").read_text(),
            "out": out, "err": err, "predict": outputs}


def _reference_metrics(observed, table) -> dict:
    """Metrics from a predict output, with formulas written out here (not the project's code)."""
    y = np.asarray(observed, dtype=float)
    p = table["prediction"].to_numpy(dtype=float)
    lo, hi = table["lower"].to_numpy(dtype=float), table["upper"].to_numpy(dtype=float)
    n = len(y)
    sse = sum((pi - yi) ** 2 for pi, yi in zip(p, y))
    sst = sum((yi - y.mean()) ** 2 for yi in y)
    q1, q3 = pd.Series(y).quantile([0.25, 0.75])
    mean_y, mean_p = y.mean(), p.mean()
    s_yp = sum((yi - mean_y) * (pi - mean_p) for yi, pi in zip(y, p)) / n
    return {
        "n": n, "rmse": (sse / n) ** 0.5, "r2": 1 - sse / sst, "rpiq": (q3 - q1) / (sse / n) ** 0.5,
        "bias": float(np.sum(p - y) / n),
        "ccc": 2 * s_yp / (np.var(y) + np.var(p) + (mean_y - mean_p) ** 2),
        "picp": sum(1 for a, b, c in zip(lo, y, hi) if a <= b <= c) / n,
        "mean_width": float(np.sum(hi - lo) / n),
        "out_of_domain_share": float(np.sum(~table["in_domain"].astype(bool)) / n),
    }


def test_metrics_equal_those_of_each_versions_predict_output(store, compared):
    result = compared["json"]
    frame = store["frame"]
    observed = frame.set_index("sample_id")["Ciso"]
    both = set.intersection(*(set(t.loc[t["prediction"].notna(), "sample_id"]) for t in compared["predict"].values()))
    ids = [i for i in frame["sample_id"] if i in both and np.isfinite(observed[i])]
    assert len(ids) == 547 and BAD_SAMPLE not in ids  # 618 rows, 70 without Ciso, one bad spectrum
    assert [m["uri"] for m in result["models"]] == [store["v1"], store["v2"]]
    assert result["level"] == 0.9 and result["test_data"]["n_without_target"] == 70
    for entry in result["models"]:
        table = compared["predict"][entry["uri"]].set_index("sample_id").loc[ids]
        reference = _reference_metrics(observed[ids], table)
        for key, value in reference.items():
            assert entry[key] == pytest.approx(value, rel=1e-9, abs=1e-12), (entry["uri"], key)
        assert entry["n_not_predicted"] == 1
        assert entry["not_predicted"][0]["sample_id"] == BAD_SAMPLE
        assert "missing spectral value" in entry["not_predicted"][0]["reason"]
    assert f"sample {BAD_SAMPLE} not predicted" in compared["err"]
    assert "70 of 618 test sample(s) without a Ciso value were dropped" in compared["out"]


def test_alias_is_resolved_and_named(store, compared):
    second = compared["json"]["models"][1]
    assert second["uri"] == "models:/soc-cmp/2" and second["requested_uri"] == "models:/soc-cmp@champion"
    assert "models:/soc-cmp/2" in compared["out"] and "@champion" not in compared["out"]


def test_paired_difference_and_its_interval(compared):
    result = compared["json"]
    (pair,) = result["pairs"]
    rmse = {m["uri"]: m["rmse"] for m in result["models"]}
    assert pair["a"] == "models:/soc-cmp/1" and pair["b"] == "models:/soc-cmp/2"
    assert pair["rmse_diff"] == pytest.approx(rmse[pair["a"]] - rmse[pair["b"]], rel=1e-12)
    assert pair["ci_low"] <= pair["rmse_diff"] <= pair["ci_high"]
    assert pair["ci_low"] < pair["ci_high"] and 0 < pair["p_value"] <= 1
    ranges = [r for r in result["by_range"] if r["uri"] == pair["a"]]
    assert [r["range"] for r in ranges] == [1, 2, 3, 4, 5] and sum(r["n"] for r in ranges) == 547
    assert all(ranges[k]["high"] <= ranges[k + 1]["low"] for k in range(4))


def test_report_is_self_contained_with_figures(compared):
    page = compared["html"]
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) >= 3
    assert all(base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n" for data in images)
    assert not re.search(r"(src|href)=\"(https?:)?//", page) and "<script" not in page
    for title in ("Predicted vs observed", "Errors against observed values", "Coverage, width and error by range",
                  "Paired differences"):
        assert title in page
    assert "models:/soc-cmp/2" in page and BAD_SAMPLE in page


def test_comparison_is_logged_as_an_evaluation_run(store, compared):
    run_id = compared["out"].strip().splitlines()[-1].split()[-1]
    client = mlflow.MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    run = client.get_run(run_id)
    assert run.data.tags["soilcarbon.kind"] == "evaluation"
    assert json.loads(run.data.tags["compared_models"]) == [store["v1"], store["v2"]]
    versions = [client.get_model_version("soc-cmp", v) for v in ("1", "2")]
    assert [run.data.tags[f"model_{k}.run_id"] for k in (1, 2)] == [v.run_id for v in versions]
    first = compared["json"]["models"][0]
    assert run.data.metrics["soc-cmp.v1.rmse"] == pytest.approx(first["rmse"])
    assert {a.path for a in client.list_artifacts(run_id, "evaluation")} == {"evaluation/report.html",
                                                                               "evaluation/comparison.json"}
    linked = client.get_logged_model(versions[0].source.rsplit("/", 1)[-1]).metrics
    assert any(m.key == "soc-cmp.v1.rmse" and m.run_id == run_id for m in linked)


def test_without_test_data_warns_when_trained_on_different_data(store, tmp_path):
    code, out, err = _cli("compare", store["v1"], store["v2"], "--json", tmp_path / "logged.json",
                          "--output", tmp_path / "logged.html")
    assert code == 0, err
    assert "warning: the versions were trained on different data" in err
    page = (tmp_path / "logged.html").read_text()
    assert "trained on different data" in page and "Out-of-fold predictions (logged by training)" in page
    assert page.count('src="data:image/png;base64,') == 3  # CV metrics + each version's logged OOF plot
    logged = json.loads((tmp_path / "logged.json").read_text())
    assert logged["mode"] == "logged" and [m["n"] for m in logged["models"]] == [200, 300]
    assert logged["pairs"][0]["comparable"] is False and logged["pairs"][0]["p_value"] is None
    # v3: the same 200 samples as v1, another configuration: no data warning, the difference is named
    code, out, err = _cli("compare", store["v1"], store["v3"], "--json", tmp_path / "same.json")
    assert code == 0, err
    assert "different data" not in err
    same = json.loads((tmp_path / "same.json").read_text())
    assert same["models"][0]["logged"]["data_digest"] == same["models"][1]["logged"]["data_digest"]
    assert set(same["config_differences"]) == {"candidates"} and same["pairs"][0]["comparable"] is True
    assert "configuration differs in candidates:" in out


def test_lab_table_joined_by_id_and_other_target_warns(store, tmp_path):
    frame = store["frame"]
    spectra = frame.drop(columns=["Ciso", "Nt", "CEC"])
    spectra.to_csv(tmp_path / "spectra.csv", index=False)
    lab = frame[["sample_id", "Ciso"]].dropna().iloc[100:160].rename(columns={"Ciso": "TC"})
    lab.to_csv(tmp_path / "lab.csv", index=False)
    code, out, err = _cli("compare", store["v1"], store["v2"], "--spectra", tmp_path / "spectra.csv",
                          "--lab", tmp_path / "lab.csv", "--target", "TC", "--json", tmp_path / "lab.json",
                          "--resamples", "200")
    assert code == 0, err
    assert "trained on Ciso, not on the test target 'TC'" in err
    result = json.loads((tmp_path / "lab.json").read_text())
    assert [m["n"] for m in result["models"]] == [60, 60] and result["test_data"]["n_without_target"] == 0


@pytest.mark.parametrize("case, expected", [
    ("one-uri", "at least two model URIs"),
    ("unknown-version", "'models:/soc-cmp/99' not found in the registry"),
    ("same-version", "are the same version (models:/soc-cmp/2)"),
    ("no-target-column", "target column 'SOC' not found"),
    ("all-missing", "none of the 5 test samples has a value for 'Ciso'"),
    ("no-overlap", "no lab id matches a spectrum id"),
])
def test_user_errors_give_one_error_line(store, tmp_path, case, expected):
    frame = store["frame"]
    test = str(store["test_csv"])
    args = {
        "one-uri": [store["v1"]],
        "unknown-version": [store["v1"], "models:/soc-cmp/99"],
        "same-version": [store["v2"], "models:/soc-cmp@champion"],
        "no-target-column": [store["v1"], store["v2"], "--spectra", test, "--target", "SOC"],
        "all-missing": [store["v1"], store["v2"], "--spectra", tmp_path / "missing.csv", "--target", "Ciso"],
        "no-overlap": [store["v1"], store["v2"], "--spectra", test, "--lab", tmp_path / "lab.csv", "--target", "Ciso"],
    }[case]
    frame[frame["Ciso"].isna()].head(5).to_csv(tmp_path / "missing.csv", index=False)
    pd.DataFrame({"sample_id": ["X1", "X2"], "Ciso": [1.0, 2.0]}).to_csv(tmp_path / "lab.csv", index=False)
    code, out, err = _cli("compare", *args, "--json", tmp_path / "never.json")
    assert code == 2
    assert expected in only_error_line(err)
    assert not (tmp_path / "never.json").exists()


def test_paired_test_reference_cases():
    from soilcarbon.evaluation.compare import paired_rmse_test, range_bins
    from soilcarbon.training.metrics import concordance

    assert concordance([1, 2, 3, 4], [2, 3, 4, 5]) == pytest.approx(2 * 1.25 / (1.25 + 1.25 + 1))
    rng = np.random.default_rng(1)
    y = rng.uniform(0, 5, 300)
    good, poor = y + rng.normal(0, 0.3, 300), y + rng.normal(0, 0.6, 300)
    clear = paired_rmse_test(y, good, poor, level=0.95, n_resamples=1000)
    assert clear["ci_high"] < 0 and clear["p_value"] < 0.01
    # two versions with errors of the same size: no difference to find
    twin = y + rng.normal(0, 0.3, 300)
    even = paired_rmse_test(y, good, twin, level=0.95, n_resamples=1000)
    assert even["ci_low"] < 0 < even["ci_high"] and even["p_value"] > 0.05
    same = paired_rmse_test(y, good, good)
    assert same == {"rmse_diff": 0.0, "ci_low": 0.0, "ci_high": 0.0, "p_value": 1.0}
    few = paired_rmse_test(y[:4], good[:4], poor[:4])
    assert few["ci_low"] is None and few["p_value"] is None and np.isfinite(few["rmse_diff"])
    assert range_bins([2.0, 2.0]).tolist() == [0, 0]
    assert np.bincount(range_bins(y)).tolist() == [60] * 5
