"""Bad-input paths of ``soilcarbon predict`` / ``serve`` and their library functions.

Each test gives one concrete bad input and checks: a :class:`SoilCarbonError` (or exit code 2 with
exactly one ``error:`` line on stderr) whose message names the file / column / sample at fault,
and that the output folder holds nothing but the inputs (no output, no temporary file).
The models are the session-wide ones of ``serving_models`` (trained once for all serving tests).
"""

from __future__ import annotations

import dataclasses
import socket

import numpy as np
import pandas as pd
import pytest

from cli_helpers import cli_in_process, only_error_line
from conftest import NIRSOIL_CSV, OPUS_DIR, run_cli

from soilcarbon.errors import SoilCarbonError
from soilcarbon.serving.batch import predict_file, predict_spectra
from soilcarbon.serving.model import load_model

NIR = "models:/soc-nir/1"


@pytest.fixture(scope="module")
def nir(store):
    return load_model(NIR)


@pytest.fixture(scope="module")
def cov(store):
    return load_model(store["cov"])


@pytest.fixture(scope="module")
def nir_head() -> pd.DataFrame:
    return pd.read_csv(NIRSOIL_CSV, nrows=5)


def only(folder, *names) -> None:
    """The folder holds exactly ``names``: no output and no temporary file was left."""
    assert sorted(p.name for p in folder.iterdir()) == sorted(names)


# ------------------------------------------------------------------------------------------ model URIs
@pytest.mark.parametrize("uri, message", [
    ("   ", "no model URI given"),
    ("models:/soc-nir@", "model URI 'models:/soc-nir@' is malformed"),
    ("models:/@champion", "model URI 'models:/@champion' is malformed"),
    ("models:/soc-nir", "model URI 'models:/soc-nir' has no version or alias"),
    ("models:/soc-nir/champion", "'champion' is neither a version number nor 'latest'"),
])
def test_malformed_model_uri(store, tmp_path, capsys, uri, message):
    code, _, stderr = cli_in_process(capsys, "predict", "--model", uri, "--spectra", NIRSOIL_CSV, "--output",
                          tmp_path / "pred.csv")
    assert code == 2
    assert message in only_error_line(stderr)
    only(tmp_path)


def test_registered_model_without_versions(store, tmp_path):
    from mlflow.tracking import MlflowClient

    MlflowClient().create_registered_model("inputs-empty-model")
    with pytest.raises(SoilCarbonError, match="model 'inputs-empty-model' has no versions"):
        predict_file("models:/inputs-empty-model/latest", tmp_path / "pred.csv", spectra=NIRSOIL_CSV)
    only(tmp_path)


def test_model_that_cannot_be_loaded(store, tmp_path, capsys):
    missing = tmp_path / "no-model-here"
    code, _, stderr = cli_in_process(capsys, "predict", "--model", missing, "--spectra", NIRSOIL_CSV, "--output",
                          tmp_path / "pred.csv")
    assert code == 2
    line = only_error_line(stderr)
    assert f"cannot load model '{missing}'" in line
    only(tmp_path)


def test_plain_sklearn_model_is_not_a_soilcarbon_model(store, tmp_path):
    """Found by this test: the ``models:/m-<id>`` URI MLflow 3 gives a logged model was refused as
    'no version or alias'; it is now loaded as it is (like ``runs:/``)."""
    import mlflow
    from sklearn.linear_model import LinearRegression

    with mlflow.start_run() as run:
        info = mlflow.sklearn.log_model(LinearRegression().fit([[0.0], [1.0]], [0.0, 1.0]), name="plain",
                                        pip_requirements=["scikit-learn"])
    assert info.model_uri.startswith("models:/m-")
    for uri in (info.model_uri, f"runs:/{run.info.run_id}/plain"):
        with pytest.raises(SoilCarbonError, match="is not a soilcarbon model .*'soilcarbon' metadata"
                                                  ".*train it with `soilcarbon train`") as caught:
            predict_file(uri, tmp_path / "pred.csv", spectra=NIRSOIL_CSV)
        assert str(caught.value).startswith(f"model {uri!r} ")
    only(tmp_path)


# ------------------------------------------------------------------------------------------ arguments
def test_level_that_is_not_a_number(store, tmp_path):
    with pytest.raises(SoilCarbonError, match="level must be a number between 0 and 1, got 'high'"):
        predict_file(NIR, tmp_path / "pred.csv", spectra=NIRSOIL_CSV, level="high")
    only(tmp_path)


def test_problems_report_must_be_csv(store, tmp_path, capsys):
    problems = tmp_path / "problems.parquet"
    code, _, stderr = cli_in_process(capsys, "predict", "--model", NIR, "--spectra", NIRSOIL_CSV, "--output",
                          tmp_path / "pred.csv", "--problems", problems)
    assert code == 2
    assert f"{problems}: the problems report is a CSV file; name it .csv" in only_error_line(stderr)
    only(tmp_path)


def test_nothing_to_predict(store, tmp_path, capsys):
    code, _, stderr = cli_in_process(capsys, "predict", "--model", NIR, "--output", tmp_path / "pred.csv")
    assert code == 2
    assert "nothing to predict: pass --spectra" in only_error_line(stderr)
    only(tmp_path)


def test_output_would_overwrite_the_input(store, nir_head, tmp_path, capsys):
    source = tmp_path / "spectra.csv"
    nir_head.to_csv(source, index=False)
    before = source.read_bytes()
    code, _, stderr = cli_in_process(capsys, "predict", "--model", NIR, "--spectra", source, "--output", source)
    assert code == 2
    assert f"{source}: the output would overwrite the input" in only_error_line(stderr)
    assert source.read_bytes() == before
    only(tmp_path, "spectra.csv")


def test_spectral_model_given_only_covariates(store, tmp_path, capsys):
    covariates = tmp_path / "cov.csv"
    covariates.write_text("sample_id,ndvi\nA,0.5\n")
    code, _, stderr = cli_in_process(capsys, "predict", "--model", NIR, "--covariates", covariates, "--output",
                          tmp_path / "pred.csv")
    assert code == 2
    line = only_error_line(stderr)
    assert "the model models:/soc-nir/1 needs spectra (700 points 1100-2498 nm); pass --spectra" in line
    only(tmp_path, "cov.csv")


# ------------------------------------------------------------------------------------------ input tables
def test_spectral_columns_mixing_prefixes(store, tmp_path):
    source = tmp_path / "mixed.csv"
    source.write_text("sample_id,wl_1100,wl_1102,wn_9000,wn_8990\nA,0.1,0.2,0.3,0.4\n")
    with pytest.raises(SoilCarbonError, match="spectral columns mix prefixes \\['wl_', 'wn_'\\]") as caught:
        predict_file(NIR, tmp_path / "pred.csv", spectra=source)
    assert str(source) in str(caught.value)
    only(tmp_path, "mixed.csv")


def test_table_without_spectral_columns(store, tmp_path, capsys):
    source = tmp_path / "lab.csv"
    source.write_text("sample_id,clay,sand\nA,20,40\n")
    code, _, stderr = cli_in_process(capsys, "predict", "--model", NIR, "--spectra", source, "--output", tmp_path / "pred.csv")
    assert code == 2
    line = only_error_line(stderr)
    assert f"{source}: no spectral columns found; the model models:/soc-nir/1 expects 700 points 1100-2498 nm" in line
    only(tmp_path, "lab.csv")


def test_covariates_table_missing_a_column_of_a_spectra_and_covariates_model(nir, nir_head, tmp_path):
    # soc-nir with two covariates added: the shape of a model trained on spectra + covariates
    both = dataclasses.replace(nir, covariates=["ndvi", "elevation"])
    source, covariates = tmp_path / "spectra.csv", tmp_path / "cov.csv"
    nir_head.to_csv(source, index=False)
    pd.DataFrame({"sample_id": nir_head["sample_id"], "ndvi": 0.5}).to_csv(covariates, index=False)
    with pytest.raises(SoilCarbonError, match="covariate column\\(s\\) elevation missing; the model "
                                              "models:/soc-nir/1 was trained on ndvi, elevation") as caught:
        predict_file(both, tmp_path / "pred.csv", spectra=source, covariates=covariates)
    assert str(covariates) in str(caught.value)
    only(tmp_path, "spectra.csv", "cov.csv")


def test_empty_and_unreadable_files(store, tmp_path):
    empty_csv, empty_pq = tmp_path / "empty.csv", tmp_path / "empty.parquet"
    empty_csv.write_bytes(b"")
    empty_pq.write_bytes(b"")
    junk_pq = tmp_path / "junk.parquet"
    junk_pq.write_bytes(b"this is not parquet at all\n" * 10)
    bad_header = tmp_path / "latin1.csv"
    bad_header.write_bytes(b"sample_id,1100,1102,\xe9\xff\xfe\nA,0.1,0.2,0.3\n")
    inputs = [p.name for p in tmp_path.iterdir()]
    cases = [
        (empty_csv, "the file is empty; export the table with a header row"),
        (empty_pq, "the file is empty; write the spectra table again"),
        (junk_pq, "not a readable Parquet file"),
        (bad_header, "cannot read the header"),
    ]
    for path, message in cases:
        with pytest.raises(SoilCarbonError) as caught:
            predict_file(NIR, tmp_path / "pred.csv", spectra=path)
        assert str(caught.value).startswith(f"{path}: ") and message in str(caught.value), caught.value
        only(tmp_path, *inputs)


def test_opus_folder_for_a_covariates_only_model(store, tmp_path):
    with pytest.raises(SoilCarbonError, match="uses covariates only; pass a covariates table") as caught:
        predict_file(store["cov"], tmp_path / "pred.csv", spectra=OPUS_DIR)
    assert str(caught.value).startswith(f"{OPUS_DIR}: the model {store['cov']}")
    only(tmp_path)


def test_opus_folder_for_a_model_needing_covariates_without_them(store, tmp_path):
    mir = load_model(store["mir"])
    both = dataclasses.replace(mir, covariates=["ndvi"])
    with pytest.raises(SoilCarbonError, match=f"the model {store['mir']} needs covariates ndvi; "
                                              "pass --covariates COV.csv"):
        predict_file(both, tmp_path / "pred.csv", spectra=OPUS_DIR)
    only(tmp_path)


# ------------------------------------------------------------------------------------------ in-memory (REST) input
def test_predict_spectra_rejects_requests_that_do_not_fit_the_model(nir, cov, nir_head):
    from soilcarbon.spectral.spectra import Spectra

    spectra = Spectra.from_frame(nir_head)
    good = pd.DataFrame({"ndvi": [0.5, 0.6], "elevation": [100.0, 200.0], "twi": [5.0, 6.0]},
                        index=pd.Index(["P1", "P2"], name="sample_id"))
    with pytest.raises(SoilCarbonError, match="nothing to predict: send spectra and/or covariates"):
        predict_spectra(nir, None, None)
    with pytest.raises(SoilCarbonError, match=f"the model {cov.uri} uses covariates only \\(ndvi, elevation, twi\\); "
                                              "send covariates"):
        predict_spectra(cov, spectra)
    with pytest.raises(SoilCarbonError, match="the model models:/soc-nir/1 needs spectra on 700 points 1100-2498 nm"):
        predict_spectra(nir, None, good)
    with pytest.raises(SoilCarbonError, match="the model models:/soc-nir/1 needs covariates ndvi"):
        predict_spectra(dataclasses.replace(nir, covariates=["ndvi"]), spectra)
    with pytest.raises(SoilCarbonError, match="the request: covariate column\\(s\\) twi missing; the model models:/soc-cov/1 "
                                              "was trained on ndvi, elevation, twi"):
        predict_spectra(cov, None, good.drop(columns=["twi"]))
    bad = good.astype({"ndvi": object})
    bad.loc["P2", "ndvi"] = "high"
    out = predict_spectra(cov, None, bad)  # per-sample problems, the other samples are predicted
    assert out["problem"].tolist() == [pd.NA, "non-numeric value 'high' in covariate 'ndvi'"]
    assert out["prediction"].notna().tolist() == [True, False]
    bad = good.copy()
    bad.loc["P2", "twi"] = np.inf
    assert predict_spectra(cov, None, bad)["problem"].iloc[1] == "covariate 'twi' is infinite"


# ------------------------------------------------------------------------------------------ engine spark
def test_spark_engine_needs_spectra(store, tmp_path, capsys):
    covariates = tmp_path / "cov.csv"
    covariates.write_text("sample_id,ndvi,elevation,twi\nP1,0.5,100,5\n")
    code, _, stderr = cli_in_process(capsys, "predict", "--model", store["cov"], "--engine", "spark", "--covariates",
                          covariates, "--output", tmp_path / "pred.parquet")
    assert code == 2
    assert "--engine spark needs --spectra (a Parquet table)" in only_error_line(stderr)
    only(tmp_path, "cov.csv")


def test_spark_engine_checks_paths_before_starting_spark(store, nir_head, tmp_path):
    from soilcarbon.serving.spark import predict_spark, spark_available

    reason = spark_available()
    if reason:
        pytest.skip(f"Spark engine not testable here: {reason}")
    source = tmp_path / "nir.parquet"
    nir_head.to_parquet(source)
    missing = tmp_path / "nothing.parquet"
    with pytest.raises(SoilCarbonError, match="no such file or folder") as caught:
        predict_spark(NIR, missing, tmp_path / "pred.parquet")
    assert str(caught.value).startswith(f"{missing}: ")
    out = tmp_path / "absent" / "pred.parquet"
    with pytest.raises(SoilCarbonError, match=f"folder {tmp_path / 'absent'} does not exist") as caught:
        predict_spark(NIR, source, out)
    assert str(caught.value).startswith(f"{out}: ")
    problems = tmp_path / "problems.parquet"
    with pytest.raises(SoilCarbonError, match="the problems report is a CSV file") as caught:
        predict_spark(NIR, source, tmp_path / "pred.parquet", problems_output=problems)
    assert str(caught.value).startswith(f"{problems}: ")
    only(tmp_path, "nir.parquet")


# ------------------------------------------------------------------------------------------ serve
@pytest.mark.parametrize("args, message", [
    (["--port", "70000"], "--port must be between 1 and 65535, got 70000"),
    (["--port", "0"], "--port must be between 1 and 65535, got 0"),
    (["--max-body-mb", "0"], "--max-body-mb must be positive, got 0.0"),
])
def test_serve_bad_options(store, capsys, args, message):
    code, _, stderr = cli_in_process(capsys, "serve", "--model", NIR, *args)
    assert code == 2
    assert message in only_error_line(stderr)


def test_serve_on_a_port_in_use(store, env):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        code, _, stderr = run_cli("serve", "--model", NIR, "--port", port, env=env, timeout=120)
    assert code == 2, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert errors == [f"error: cannot listen on 127.0.0.1:{port}; is the port in use?"], stderr
    assert stderr.strip().splitlines()[-1] == errors[0]
