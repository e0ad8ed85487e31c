"""``soilcarbon stocks``: per-sample stocks, Monte Carlo and skew-aware intervals, ESM change, project
totals, the sample-size plan, and bad inputs, on the example samples/fields tables (ids of
data/nirsoil_train.csv) scored by a real PLS model registered in a real MLflow store."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from cli_helpers import cli_in_process, only_error_line
from scipy import stats
from scipy.interpolate import PchipInterpolator

from soilcarbon.mrv import stocks
from soilcarbon.mrv.esm import esm_carbon, pchip_at

from conftest import NIRSOIL_CSV, REPO

SAMPLES = REPO / "data" / "stock_samples.csv"
FIELDS = REPO / "data" / "stock_fields.csv"


@pytest.fixture(scope="module")
def scored(tmp_path_factory, shared_data):
    """The shared serving store's PLS model of Ciso (%, registered in a real MLflow store; trained
    once per session for all serving tests) and its predictions of every example sample."""
    from serving_models import serving_store
    from threadpoolctl import threadpool_limits

    from soilcarbon.serving.batch import predict_file

    store = serving_store(tmp_path_factory)
    folder = tmp_path_factory.mktemp("stocks")
    with threadpool_limits(1):
        predict_file(store["nir"], folder / "pred.csv", spectra=NIRSOIL_CSV, quiet=True, workers=1)
    return {"folder": folder, "uri": store["nir"], "pred": folder / "pred.csv"}


def measured_samples(tmp_path, **changes) -> Path:
    """The example samples with the lab carbon of each soil (``soc_lab``, %) for --measured runs."""
    table = pd.read_csv(SAMPLES)
    lab = pd.read_csv(NIRSOIL_CSV, usecols=["sample_id", "Ciso"])
    table["soc_lab"] = table["sample_id"].map(dict(zip(lab["sample_id"], lab["Ciso"]))).fillna(1.5)
    for column, (row, value) in changes.items():
        table.loc[row, column] = value
    path = tmp_path / "samples.csv"
    table.to_csv(path, index=False)
    return path


def test_layer_stock_reference_values():
    # 1 % C, 1.3 g/cm³, 30 cm: 3900 t of soil per ha, 39 t C/ha; stones take their volume share
    assert stocks.layer_stock(1.0, 1.3, 30) == pytest.approx(39.0)
    assert stocks.layer_stock(1.0, 1.3, 30, 0.2) == pytest.approx(31.2)
    assert stocks.soil_mass(1.3, 30) == pytest.approx(3900.0)


def layers_frame(soc, bd, top, bottom, core, campaign="a", field="f", sd=0.0, uri="m"):
    n = len(soc)
    return pd.DataFrame({"sample_id": [f"s{i}" for i in range(n)], "field": field, "campaign": campaign,
                         "core": core, "top_cm": top, "bottom_cm": bottom, "bd": bd, "bd_sd": 0.0, "cf": 0.0,
                         "cf_sd": 0.0, "soc": soc, "sd_low": sd, "sd_high": sd, "model_uri": uri})


def test_layers_of_a_core_add_up_and_field_is_the_mean_of_cores():
    layers = layers_frame([1.0, 0.5, 2.0], [1.2, 1.4, 1.0], [0, 15, 0], [15, 30, 30], ["c1", "c1", "c2"])
    group = stocks.simulate(layers, {}, 100, 0)[("f", "a")]
    assert group.values["fixed"] == pytest.approx([1.0 * 1.2 * 15 + 0.5 * 1.4 * 15, 2.0 * 1.0 * 30])
    # no error anywhere: every draw is the point value
    assert group.draws["fixed"] == pytest.approx(np.full(100, group.values["fixed"].mean()))


def test_pchip_matches_scipy():
    rng = np.random.default_rng(3)
    for m in (2, 3, 5):
        x = np.concatenate([np.zeros((40, 1)), np.cumsum(rng.uniform(0.5, 2, (40, m)), axis=1)], axis=1)
        y = np.concatenate([np.zeros((40, 1)), np.cumsum(rng.uniform(0, 3, (40, m)), axis=1)], axis=1)
        xq = rng.uniform(0, x[:, -1])
        expected = np.array([PchipInterpolator(x[i], y[i])(xq[i]) for i in range(40)], dtype=float)
        assert pchip_at(x, y, xq) == pytest.approx(expected, abs=1e-12)


def test_esm_removes_most_of_a_compaction_artefact():
    # the same soil compacted by 10 %: its top 15 cm now hold the old top 16.5 cm (1800 t at 2 % C
    # and 180 t at 1 % C), and the fixed depth holds 10 % more soil
    soc = np.array([2.0, 1.0, 37.8 / 19.8, 1.0])
    bd = np.array([1.2, 1.3, 1.32, 1.43])
    thick = 15.0
    mass = stocks.soil_mass(bd, thick)
    carbon = soc / 100 * mass
    fixed = carbon[:2].sum(), carbon[2:].sum()
    assert fixed[1] / fixed[0] > 1.06
    reference = np.full(2, mass[:2].sum())
    esm = esm_carbon(mass, carbon, np.array([0, 2]), reference)
    # read at the baseline's soil mass, both hold the same 55.5 t C/ha (1800 t at 2 %, 1950 t at 1 %)
    assert esm[0] == pytest.approx(fixed[0]) == pytest.approx(55.5)
    # fixed depth is 6.8 % off; the spline's curvature leaves 2.5 % (linear interpolation would give 55.5)
    assert fixed[1] == pytest.approx(59.25)
    assert esm[1] == pytest.approx(56.88, abs=0.01)


def test_skew_interval_is_the_t_interval_without_skew_and_longer_upwards_with_it():
    lower, upper = stocks.skew_interval(10.0, 4.0, 0.0, 20, 0.9)
    q = stats.t.ppf(0.95, 20)
    assert (lower, upper) == pytest.approx((10 - 2 * q, 10 + 2 * q))
    lower, upper = stocks.skew_interval(10.0, 4.0, 0.4 * 8, 20, 0.9)
    assert upper - 10 > 10 - lower


def test_skew_interval_covers_lognormal_means_better_than_t():
    rng = np.random.default_rng(7)
    sigma, n, level = 1.0, 30, 0.9
    truth = np.exp(sigma ** 2 / 2)
    hall = plain = 0
    runs = 3000
    for _ in range(runs):
        x = rng.lognormal(0, sigma, n)
        var, third = x.var(ddof=1) / n, np.mean((x - x.mean()) ** 3) / n ** 2
        lo, hi = stocks.skew_interval(x.mean(), var, third, n - 1, level)
        hall += lo <= truth <= hi
        half = stats.t.ppf(0.95, n - 1) * np.sqrt(var)
        plain += abs(x.mean() - truth) <= half
    # t under-covers a skewed population; Hall's correction recovers a large part of the gap
    assert plain / runs < 0.87
    assert hall / runs > plain / runs + 0.015


def test_shared_bias_does_not_average_out_and_cancels_in_a_change_only_with_one_model():
    def group_var(n, uri2="m"):
        soc = np.ones(2 * n)
        layers = layers_frame(soc, np.full(2 * n, 1.3), np.zeros(2 * n), np.full(2 * n, 30.0),
                              [f"c{i}" for i in range(2 * n)], campaign=["a"] * n + ["b"] * n)
        layers.loc[n:, "model_uri"] = uri2
        groups = stocks.simulate(layers, {"m": 0.1, "m2": 0.1}, 4000, 1)
        return groups[("f", "a")].draws["fixed"], groups[("f", "b")].draws["fixed"]

    a10, _ = group_var(10)
    a100, b100 = group_var(100)
    expected_sd = 0.1 / 100 * stocks.soil_mass(1.3, 30)
    assert a10.std() == pytest.approx(expected_sd, rel=0.06)
    assert a100.std() == pytest.approx(expected_sd, rel=0.06)  # 10x the cores, the same shared error
    assert (b100 - a100).std() == pytest.approx(0.0, abs=1e-9)  # same model, same soil mass: cancels
    a, b = group_var(100, uri2="m2")
    assert (b - a).std() == pytest.approx(np.sqrt(2) * expected_sd, rel=0.06)  # two models: adds up


def test_stocks_cli_end_to_end(scored, tmp_path, capsys):
    out, report, changes = tmp_path / "stocks.csv", tmp_path / "stocks.html", tmp_path / "changes.csv"
    code, stdout, err = cli_in_process(capsys, "stocks", "--predictions", scored["pred"], "--samples", SAMPLES,
                                       "--fields", FIELDS, "--output", out, "--report", report, "--changes",
                                       changes, "--json", "--draws", 500)
    assert code == 0, err
    table = pd.read_csv(out)
    assert list(table.columns) == ["field", "campaign", "n", "stock_t_ha", "lower_t_ha", "upper_t_ha", "level",
                                   "area_ha", "total_t", "total_lower_t", "total_upper_t"]
    assert len(table) == 6 and set(table["n"]) == {49, 52}
    assert (table["lower_t_ha"] < table["stock_t_ha"]).all() and (table["stock_t_ha"] < table["upper_t_ha"]).all()
    assert table["total_t"].to_numpy() == pytest.approx(table["stock_t_ha"] * table["area_ha"])
    # the point stock is the mean of the cores' stocks, computed here from the files
    samples, pred = pd.read_csv(SAMPLES), pd.read_csv(scored["pred"])
    samples = samples.merge(pred, on="sample_id")
    samples["stock"] = stocks.layer_stock(samples["prediction"], samples["bulk_density_g_cm3"],
                                          samples["bottom_cm"] - samples["top_cm"], samples["coarse_fraction"])
    cores = samples.groupby(["field", "campaign", "core"])["stock"].sum().groupby(["field", "campaign"]).mean()
    merged = table.set_index(["field", "campaign"])["stock_t_ha"]
    assert merged.sort_index().to_numpy() == pytest.approx(cores.sort_index().to_numpy())
    result = json.loads(stdout)
    assert result["unit"] == "%" and scored["uri"] in result["models"]
    assert result["models"][scored["uri"]]["shared_bias_sd_percent"] > 0
    project = result["project"]
    assert [t["campaign"] for t in project["totals"]] == ["baseline", "2027"]
    assert project["totals"][0]["total_t"] == pytest.approx(table.loc[table["campaign"] == "baseline", "total_t"].sum())
    arable = [t for t in project["strata"] if t["stratum"] == "arable" and t["campaign"] == "baseline"][0]
    assert arable["area_ha"] == pytest.approx(12.5 + 20.3) and arable["total_t"] == pytest.approx(
        table.query("campaign == 'baseline' and field in ['north', 'hill']")["total_t"].sum())
    assert [e["basis"] for e in project["changes"] if e["credited"]] == ["esm"]  # the default basis
    for entry in project["changes"]:
        assert entry["lower_t"] < entry["credited_change_t"] < entry["total_change_t"] < entry["upper_t"]
    assert {c["basis"] for c in result["changes"]} == {"fixed", "esm"}
    assert len(pd.read_csv(changes)) == 6
    text = report.read_text()
    assert "data:image/png;base64," in text and "von Haden" in text and "<script" not in text
    assert "http://" not in text and "https://" not in text
    # the same seed gives the same intervals; g/kg scales the stocks by 1/10
    out2 = tmp_path / "gkg.csv"
    code, _, err = cli_in_process(capsys, "stocks", "--predictions", scored["pred"], "--samples", SAMPLES,
                                  "--output", out2, "--unit", "g/kg", "--draws", 500)
    assert code == 0, err
    assert pd.read_csv(out2)["stock_t_ha"].to_numpy() == pytest.approx(table["stock_t_ha"].to_numpy() / 10)


def test_out_of_domain_samples_are_counted_and_can_be_dropped(scored, tmp_path, capsys):
    pred = pd.read_csv(scored["pred"])
    pred["in_domain"] = np.arange(len(pred)) >= 10
    path = tmp_path / "pred.csv"
    pred.to_csv(path, index=False)
    samples = pd.read_csv(SAMPLES)
    samples = samples[samples["sample_id"].isin(pred["sample_id"])]
    code, _, err = cli_in_process(capsys, "stocks", "--predictions", path, "--samples", SAMPLES, "--output",
                                  tmp_path / "a.csv", "--draws", 200)
    assert code == 0 and "warning: 10 sample(s) outside the model's domain, kept" in err
    code, _, err = cli_in_process(capsys, "stocks", "--predictions", path, "--samples", SAMPLES, "--output",
                                  tmp_path / "b.csv", "--draws", 200, "--exclude-out-of-domain")
    assert code == 0
    outside = set(pred.loc[:9, "sample_id"])
    # a core with an out-of-domain layer is dropped whole (its stock would cover a shallower depth)
    dropped_cores = set(samples.loc[samples["sample_id"].isin(outside), "core"])
    assert len(dropped_cores) == 10 and "(20 samples dropped" in err
    kept = samples[~samples["core"].isin(dropped_cores)]
    expected = kept.groupby(["field", "campaign"])["core"].nunique().sort_index()
    assert pd.read_csv(tmp_path / "b.csv").set_index(["field", "campaign"])["n"].sort_index().to_numpy() == \
        pytest.approx(expected.to_numpy())


def test_plan_from_a_pilot(tmp_path, capsys):
    path = measured_samples(tmp_path)
    code, out, err = cli_in_process(capsys, "stocks", "plan", "--samples", path, "--measured", "soc_lab", "--unit",
                                    "%", "--lab-sd", "0.05", "--target-halfwidth", "10%", "--json", "--draws", 300)
    assert code == 0, err
    plan10 = pd.DataFrame(json.loads(out))
    code, out, _ = cli_in_process(capsys, "stocks", "plan", "--samples", path, "--measured", "soc_lab", "--unit",
                                  "%", "--lab-sd", "0.05", "--target-halfwidth", "20%", "--json", "--draws", 300)
    plan20 = pd.DataFrame(json.loads(out))
    assert (plan20["n_needed"] < plan10["n_needed"]).all()
    assert (plan10["halfwidth_t_ha"] <= plan10["target_halfwidth_t_ha"] + 1e-9).all()
    # about (t·s/h)² for a symmetric field; the skewed fields need more
    row = plan10.iloc[0]
    rough = (1.645 * row["sd_t_ha"] / row["target_halfwidth_t_ha"]) ** 2
    assert 0.8 * rough < row["n_needed"] < 3 * rough


BAD_SAMPLES = [
    ("bulk_density_g_cm3", (3, np.nan), "bulk_density_g_cm3 is missing on line(s) 5"),
    ("bulk_density_g_cm3", (3, 0.0), "bulk_density_g_cm3 is not positive on line(s) 5"),
    ("bulk_density_g_cm3", (0, 2.9), "above 2.65"),
    ("top_cm", (1, 30), "top_cm is not above bottom_cm (top_cm must be < bottom_cm) on line(s) 3"),
    ("top_cm", (1, 10), "layers of core 'north-baseline-01' overlap: line 2"),
    ("coarse_fraction", (2, 1.0), "coarse_fraction is outside [0, 1) (a volume fraction) on line(s) 4"),
]


@pytest.mark.parametrize("column, change, message", BAD_SAMPLES)
def test_bad_samples_give_one_error_line_and_no_output(tmp_path, capsys, column, change, message):
    path = measured_samples(tmp_path, **{column: change})
    out = tmp_path / "stocks.csv"
    code, _, err = cli_in_process(capsys, "stocks", "--samples", path, "--measured", "soc_lab", "--unit", "%",
                                  "--output", out, "--draws", 100)
    assert code == 2
    assert message in only_error_line(err) and str(path) in err
    assert not out.exists() and list(tmp_path.iterdir()) == [path]


def test_unknown_unit_and_field_without_area(tmp_path, capsys, run_cli):
    path = measured_samples(tmp_path)
    out = tmp_path / "stocks.csv"
    code, _, err = run_cli("stocks", "--samples", path, "--measured", "soc_lab", "--unit", "mg/kg", "--output", out)
    assert code == 2 and "unit 'mg/kg' is not known" in only_error_line(err)
    fields = tmp_path / "fields.csv"
    pd.read_csv(FIELDS).iloc[:2].to_csv(fields, index=False)
    code, _, err = cli_in_process(capsys, "stocks", "--samples", path, "--measured", "soc_lab", "--unit", "%",
                                  "--fields", fields, "--output", out)
    assert code == 2 and "field(s) of" in only_error_line(err) and "hill" in err
    assert not out.exists()


def test_prediction_mismatches_and_mixed_models(scored, tmp_path, capsys):
    pred = pd.read_csv(scored["pred"])
    out = tmp_path / "stocks.csv"
    cases = [
        (pred.iloc[5:], "5 sample(s) of", "have no prediction: NIRsoil-1, NIRsoil-2"),
        (pd.concat([pred, pred.iloc[:1].assign(sample_id="extra-1")]), "not in the samples table", "extra-1"),
        (pred.assign(model_uri=np.where(np.arange(len(pred)) % 2, scored["uri"], "models:/other/1")),
         "several model versions", "--allow-mixed-models"),
        (pred.assign(model_uri="runs:/0123/model"), "is not a registered model version", "out-of-fold residuals"),
    ]
    for i, (table, first, second) in enumerate(cases):
        path = tmp_path / f"pred{i}.csv"
        table.to_csv(path, index=False)
        code, _, err = cli_in_process(capsys, "stocks", "--predictions", path, "--samples", SAMPLES,
                                      "--output", out, "--draws", 100)
        line = only_error_line(err)
        assert code == 2 and first in line and second in line
    assert not out.exists()
