"""Calibration transfer: DS/PDS/SST against hand-worked examples and independent implementations,
leave-one-out selection and the transferred model on the real corn instruments, and the
``soilcarbon transfer`` command end to end (register, predict, pyfunc) with its input errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.cross_decomposition import PLSRegression
from sklearn.decomposition import PCA
from sklearn.linear_model import LinearRegression
from threadpoolctl import threadpool_limits

from cli_helpers import cli_in_process, only_error_line
from soilcarbon.errors import SoilCarbonError
from soilcarbon.lab.transfer import (DirectStandardization, PiecewiseDirectStandardization, candidates,
                                     conformal_quantile, fit_transfer, slope_bias, spectral_space_transform)
from trained_model import FAST_CONFIG, use_tracking

PROPS = ["moisture", "oil", "protein", "starch"]


def corn(instrument: str, corn_dir) -> pd.DataFrame:
    return pd.read_csv(corn_dir / f"corn_{instrument}.csv").drop(columns=["instrument"])


# ----------------------------------------------------------------------------- methods, by hand
def test_ds_recovers_a_known_linear_map_worked_by_hand():
    # X_s = X_t A + c with A = [[2, 0], [1, 1]], c = [1, -1]; X_t has full column rank
    X_t = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 2.0]])
    X_s = X_t @ np.array([[2.0, 0.0], [1.0, 1.0]]) + np.array([1.0, -1.0])
    ds = DirectStandardization().fit(X_t, X_source=X_s)
    # x = [1, 2]: [1*2 + 2*1, 1*0 + 2*1] + [1, -1] = [5, 1]
    np.testing.assert_allclose(ds.transform([[1.0, 2.0]]), [[5.0, 1.0]], atol=1e-10)


def test_pds_window_zero_is_a_straight_line_per_point_worked_by_hand():
    X_t = np.array([[0.0, 1.0], [1.0, 3.0], [2.0, 5.0]])
    X_s = np.column_stack([3 * X_t[:, 0] + 1, -X_t[:, 1] + 10])  # point 0: 3x + 1; point 1: -x + 10
    pds = PiecewiseDirectStandardization(window=0, n_components=1).fit(X_t, X_source=X_s)
    np.testing.assert_allclose(pds.transform([[4.0, 2.0]]), [[13.0, 8.0]], atol=1e-10)


def test_slope_bias_and_conformal_quantile_worked_by_hand():
    slope, intercept = slope_bias([1.0, 2.0, 3.0], [3.0, 5.0, 7.0])  # y = 2x + 1
    assert slope == pytest.approx(2.0) and intercept == pytest.approx(1.0)
    assert slope_bias([2.0, 2.0], [3.0, 4.0]) == (1.0, 1.5)  # no spread: bias only
    errors = -np.arange(1.0, 11.0)  # |e| = 1..10
    assert conformal_quantile(errors, 0.9) == 10.0  # ceil(11 * 0.9) = 10th smallest
    assert conformal_quantile(errors, 0.5) == 6.0  # ceil(5.5) = 6th
    assert conformal_quantile(errors[:3], 0.9) == 3.0  # too few errors: the largest


@pytest.fixture(scope="module")
def corn_pairs(corn_dir):
    m5, mp5 = corn("m5", corn_dir), corn("mp5", corn_dir)
    spectral = [c for c in m5.columns if c not in PROPS + ["sample_id"]]
    return m5[spectral].to_numpy(float), mp5[spectral].to_numpy(float), m5


def test_pds_matches_a_per_window_sklearn_pcr_on_corn(corn_pairs):
    X_s, X_t, _ = corn_pairs
    X_s, X_t = X_s[:12, 200:260], X_t[:12, 200:260]
    w, k = 3, 2
    pds = PiecewiseDirectStandardization(window=w, n_components=k).fit(X_t, X_source=X_s)
    queries = corn_pairs[1][20:25, 200:260]
    expected = np.empty((len(queries), X_s.shape[1]))
    for j in range(X_s.shape[1]):  # the reference: one sklearn PCA + linear regression per window
        cols = slice(max(0, j - w), min(X_s.shape[1], j + w + 1))
        local = PCA(n_components=k).fit(X_t[:, cols])
        line = LinearRegression().fit(local.transform(X_t[:, cols]), X_s[:, j])
        expected[:, j] = line.predict(local.transform(queries[:, cols]))
    np.testing.assert_allclose(pds.transform(queries), expected, rtol=1e-8, atol=1e-10)


def test_sst_and_ds_match_the_published_formulas_on_corn(corn_pairs):
    X_s, X_t, _ = corn_pairs
    X_s, X_t, query = X_s[:10, ::10], X_t[:10, ::10], X_t[30:33, ::10]
    k = 3
    # SST (Du et al. 2011): SVD of the centred [X_s, X_t]; P1, P2 the source/target loadings;
    # x -> m_s + (x - m_t) (I + P2^+ (P1 - P2))
    m_s, m_t = X_s.mean(0), X_t.mean(0)
    _, _, Vt = np.linalg.svd(np.hstack([X_s - m_s, X_t - m_t]), full_matrices=False)
    p = X_s.shape[1]
    P1, P2 = Vt[:k, :p], Vt[:k, p:]
    expected = m_s + (query - m_t) @ (np.eye(p) + np.linalg.pinv(P2) @ (P1 - P2))
    np.testing.assert_allclose(spectral_space_transform(k).fit(X_t, X_source=X_s).transform(query), expected,
                               rtol=1e-8, atol=1e-10)

    # DS (Wang et al. 1991) on centred data, as chemotools computes it on the full spectra (700
    # points: its rounding cut-off drops the null direction centring leaves)
    from chemotools.adaptation import DirectStandardization as ChemotoolsDS

    X_s, X_t, query = corn_pairs[0][:10], corn_pairs[1][:10], corn_pairs[1][30:33]
    m_s, m_t = X_s.mean(0), X_t.mean(0)
    reference = ChemotoolsDS().fit(X_t - m_t, X_source=X_s - m_s).transform(query - m_t) + m_s
    np.testing.assert_allclose(DirectStandardization().fit(X_t, X_source=X_s).transform(query), reference,
                               rtol=1e-6, atol=1e-9)


def test_loo_choice_beats_no_transfer_on_real_instruments(corn_pairs):
    X_s, X_t, table = corn_pairs
    X_s, X_t = X_s[:, ::4], X_t[:, ::4]  # 175 points: the same behaviour, four times faster
    y = table["protein"].to_numpy()
    train, transfer_rows, test = np.arange(0, 60), np.arange(0, 60, 6), np.arange(60, 80)
    with threadpool_limits(1):
        pls = PLSRegression(n_components=10, scale=False).fit(X_s[train], y[train])

        def predict(X):
            return pls.predict(X).ravel()

        fit = fit_transfer(X_s[transfer_rows], X_t[transfer_rows], predict)
    assert set(fit.table["method"]) == {"ds", "pds", "sst", "slope-bias"}
    assert fit.loo_rmse == pytest.approx(fit.table["loo_rmse"].min())
    mapped = predict(fit.mapper.transform(X_t[test])) if fit.mapper is not None else \
        fit.intercept + fit.slope * predict(X_t[test])
    none = np.sqrt(np.mean((predict(X_t[test]) - y[test]) ** 2))
    after = np.sqrt(np.mean((mapped - y[test]) ** 2))
    assert after < 0.5 * none, (fit.method.label, after, none)
    assert len(fit.loo_errors) == 10 and np.all(np.isfinite(fit.loo_errors))
    with pytest.raises(SoilCarbonError, match="at least 3"):
        fit_transfer(X_s[:2], X_t[:2], predict)
    with pytest.raises(SoilCarbonError, match="--method must be one of"):
        candidates("pls", 10)


# ------------------------------------------------------------------------ the command, end to end
@pytest.fixture(scope="module")
def store(tmp_path_factory, corn_dir):
    """A fast PLS calibration of protein on 60 m5 corn spectra, registered; the transfer files."""
    from soilcarbon.spectral.spectra import Spectra
    from soilcarbon.training.config import parse_config
    from soilcarbon.training.tracking import log_training
    from soilcarbon.training.train import train

    folder = tmp_path_factory.mktemp("transfer")
    use_tracking(folder)
    m5 = corn("m5", corn_dir).drop(columns=["moisture", "oil", "starch"])
    test = np.arange(80) % 4 == 0
    config = dict(FAST_CONFIG, candidates=[{"model": "pls", "grid": {"n_components": [8]}}])
    with threadpool_limits(1):
        result = train(Spectra.from_frame(m5[~test].reset_index(drop=True)), "protein",
                       config=parse_config(config), nested=False, n_jobs=1)
    uri = log_training(result, "corn-protein", {"spectra": "corn_m5"}, "%")
    paths = {"folder": folder, "uri": uri}
    for name in ("m5", "mp5"):
        frame = corn(name, corn_dir)
        frame[~test].to_csv(folder / f"{name}_cal.csv", index=False)
        frame[test].to_csv(folder / f"{name}_test.csv", index=False)
    ids = frame[~test]["sample_id"].iloc[::6]  # 10 transfer samples
    pd.DataFrame({"sample_id": ids, "rank": range(1, len(ids) + 1)}).to_csv(folder / "ids.csv", index=False)
    pd.read_csv(corn_dir.parent / "nirsoil" / "nirsoil_train.csv", nrows=5).to_csv(folder / "soil.csv", index=False)
    paths.update({k: folder / f"{k}.csv" for k in ("m5_cal", "mp5_cal", "m5_test", "mp5_test", "ids", "soil")})
    return paths


def _versions(name: str) -> int:
    from soilcarbon.training.tracking import configure

    return len(configure().search_model_versions(f"name='{name}'"))


def test_transfer_registers_a_model_that_predict_and_pyfunc_use_unchanged(store, capsys, monkeypatch):
    import mlflow

    from soilcarbon.training.tracking import configure

    monkeypatch.chdir(store["folder"])
    code, out, err = cli_in_process(capsys, "transfer", "--model", store["uri"], "--source", store["m5_cal"],
                                    "--target", store["mp5_cal"], "--samples", store["ids"])
    assert code == 0, err
    uri = out.strip().splitlines()[-1]
    assert uri == "models:/corn-protein-mp5_cal/1"
    assert "Transfer methods" in out and "chosen:" in out
    version = configure().get_model_version("corn-protein-mp5_cal", "1")
    ids = pd.read_csv(store["ids"])["sample_id"].astype(str)
    from soilcarbon.lab.transfer_commands import ids_digest

    assert version.tags["base_model"] == store["uri"] and version.tags["n_transfer"] == "10"
    assert version.tags["transfer_ids_digest"] == ids_digest(ids)
    assert version.tags["transfer_method"] in ("ds", "pds", "sst", "slope-bias")
    assert store["uri"] in version.description and version.tags["transfer_settings"] in version.description

    # predict (the CLI, through its fast matrix path) on held-out new-instrument spectra
    code, _, err = cli_in_process(capsys, "predict", "--model", uri, "--spectra", store["mp5_test"],
                                  "--output", store["folder"] / "after.csv")
    assert code == 0, err
    truth = pd.read_csv(store["mp5_test"])["protein"].to_numpy()
    after = pd.read_csv(store["folder"] / "after.csv")
    assert (after["model_uri"] == uri).all()

    # the pyfunc, as any MLflow user loads it, gives the same numbers
    frame = pd.read_csv(store["mp5_test"]).drop(columns=PROPS)
    transferred = mlflow.pyfunc.load_model(uri)
    loaded = transferred.predict(frame)
    np.testing.assert_allclose(loaded["prediction"], after["prediction"], rtol=1e-9)
    np.testing.assert_allclose(loaded["upper"], after["upper"], rtol=1e-9)

    # better than the base model on the raw new-instrument spectra; intervals still cover
    before = mlflow.pyfunc.load_model(store["uri"]).predict(frame)
    rmse_after = np.sqrt(np.mean((after["prediction"] - truth) ** 2))
    rmse_before = np.sqrt(np.mean((before["prediction"] - truth) ** 2))
    assert rmse_after < 0.5 * rmse_before
    assert np.mean((truth >= after["lower"]) & (truth <= after["upper"])) >= 0.75
    # domain: mapped corn of the calibration's population is inside, soil spectra are not
    assert float(version.tags["transfer_domain_scale"]) >= 1.0
    assert after["in_domain"].mean() >= 0.8
    soil = pd.read_csv(store["soil"]).drop(columns=["Ciso", "Nt", "CEC"], errors="ignore")
    assert not transferred.predict(soil)["in_domain"].any()

    # --quiet: only the URI; a fixed method; the new version's intervals are wider than the base's
    code, out, err = cli_in_process(capsys, "transfer", "--model", store["uri"], "--source", store["m5_cal"],
                                    "--target", store["mp5_cal"], "--samples", store["ids"], "--method",
                                    "slope-bias", "--name", "corn-sb", "--quiet")
    assert code == 0, err
    assert out == "models:/corn-sb/1\n"
    model = mlflow.pyfunc.load_model("models:/corn-sb/1").unwrap_python_model().model
    assert model.mapper is None and model.info["transfer_method"] == "slope-bias"
    base = model.base.predict_matrix(frame.drop(columns=["sample_id"]).to_numpy())
    moved = model.predict_matrix(frame.drop(columns=["sample_id"]).to_numpy())
    assert ((moved["upper"] - moved["lower"]) > (base["upper"] - base["lower"]) * abs(model.slope) - 1e-12).all()


def _bad_files(store, kind: str):
    folder = store["folder"]
    target = pd.read_csv(store["mp5_cal"])
    spectral = [c for c in target.columns if c[0].isdigit()]
    args = ["--source", store["m5_cal"], "--target", folder / f"bad-{kind}.csv"]
    if kind == "one-side":
        target = target[target["sample_id"] != "corn-02"]
    elif kind == "two-samples":
        pd.DataFrame({"sample_id": ["corn-02", "corn-03"]}).to_csv(folder / "two.csv", index=False)
        args += ["--samples", folder / "two.csv"]
    elif kind == "nan":
        target.loc[3, spectral[10]] = np.nan
    elif kind == "unit":
        target[spectral] = 10 ** (-target[spectral])  # reflectance instead of absorbance
    elif kind == "percent":
        target[spectral] = 100 * 10 ** (-target[spectral])  # reflectance in %
    elif kind == "axis-unit":
        target = target.rename(columns={c: f"wn_{1e7 / float(c):.4f}" for c in spectral})
    elif kind == "overlap":
        target = target.drop(columns=[c for c in spectral if float(c) > 2000])
    target.to_csv(folder / f"bad-{kind}.csv", index=False)
    return args


@pytest.mark.parametrize("kind, message", [
    ("one-side", r"only in the source file .*m5_cal.csv: corn-02"),
    ("two-samples", r"2 transfer sample\(s\) given; at least 3"),
    ("nan", r"missing values in sample\(s\) corn-06"),
    ("unit", r"mirror image of the mean source spectrum .* \(reflectance vs. absorbance\)"),
    ("percent", r"differ .*-fold: they look like different units"),
    ("axis-unit", r"nm axis but the target spectra .* on a cm-1 axis"),
    ("overlap", r"overlap on 1100-2000 nm .* too small for the model, which needs 1100-2498 nm"),
])
def test_bad_transfer_input_is_one_error_line_and_registers_nothing(store, capsys, monkeypatch, kind, message):
    import re

    monkeypatch.chdir(store["folder"])
    args = _bad_files(store, kind)
    before = _versions("corn-bad")
    code, out, err = cli_in_process(capsys, "transfer", "--model", store["uri"], "--name", "corn-bad", *args)
    assert code == 2 and out == ""
    assert re.search(message, only_error_line(err)), err
    assert _versions("corn-bad") == before == 0


def test_covariates_only_base_model_is_refused(store, capsys, monkeypatch, tmp_path):
    from trained_model import train_covariate_model

    monkeypatch.chdir(store["folder"])
    with threadpool_limits(1):
        uri = train_covariate_model(store["folder"], "soc-cov-only", n=40)
    code, out, err = cli_in_process(capsys, "transfer", "--model", uri, "--source", store["m5_cal"],
                                    "--target", store["mp5_cal"], "--name", "cov-bad")
    assert code == 2 and "covariates only" in only_error_line(err)
    assert _versions("cov-bad") == 0


def test_target_on_another_grid_is_transferred_over_the_overlap(store, capsys, monkeypatch):
    import mlflow

    monkeypatch.chdir(store["folder"])
    target = pd.read_csv(store["mp5_cal"])
    spectral = [c for c in target.columns if c[0].isdigit()]
    coarse = target.drop(columns=spectral[1::2])  # every 4 nm, 1100-2496 nm: re-gridded onto 1100-2498
    coarse.to_csv(store["folder"] / "mp5_coarse.csv", index=False)
    code, out, err = cli_in_process(capsys, "transfer", "--model", store["uri"], "--source", store["m5_cal"],
                                    "--target", store["folder"] / "mp5_coarse.csv", "--samples", store["ids"],
                                    "--method", "ds", "-q")
    assert code == 0, err
    assert out == "models:/corn-protein-mp5_coarse/1\n"
    model = mlflow.pyfunc.load_model("models:/corn-protein-mp5_coarse/1").unwrap_python_model().model
    assert model.info["transfer_method"] == "ds" and len(model.layout.axis) == 700
    code, out, err = cli_in_process(capsys, "transfer", "--model", store["uri"], "--source", store["m5_cal"],
                                    "--target", store["mp5_cal"], "--method", "pls")
    assert code == 2 and "--method must be one of auto, ds, pds, sst, slope-bias" in only_error_line(err)
