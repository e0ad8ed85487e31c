"""``soilcarbon predict --engine spark``: mlflow.pyfunc.spark_udf on Spark in local mode.

The Spark output must equal MLflow's own predictions and the local engine's output for the same
Parquet input, row for row, with the same per-sample problems.
"""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import NIRSOIL_CSV, run_cli
from serving_models import environment
from soilcarbon.serving.batch import predict_file
from soilcarbon.serving.outputs import OUTPUT_COLUMNS
from soilcarbon.serving.spark import spark_available

MISSING = spark_available()
pytestmark = pytest.mark.skipif(MISSING is not None, reason=f"Spark engine not testable here: {MISSING}")


def test_spark_engine_matches_mlflow_and_the_local_engine(store, tmp_path):
    table = pd.read_csv(NIRSOIL_CSV).head(150)
    spectral = [c for c in table.columns if c[0].isdigit()]
    data = table[["sample_id"] + spectral].copy()
    data.loc[7, "1500"] = np.nan  # NIRsoil-8: one missing value
    source = tmp_path / "in.parquet"
    pq.write_table(pa.Table.from_pandas(data, preserve_index=False), source, row_group_size=50)
    out, problems = tmp_path / "spark.csv", tmp_path / "problems.csv"
    env = environment(store)
    env["SOILCARBON_SPARK_MASTER"] = "local[1]"  # one executor thread: fewer Python workers to start on 2 cores
    code, stdout, stderr = run_cli("predict", "--engine", "spark", "--model", "models:/soc-nir@champion",
                                   "--spectra", source, "--output", out, "--problems", problems,
                                   "--chunk-size", 64, env=env, timeout=300)
    assert code == 0, stderr
    assert "150 samples, 149 predicted, 1 not predicted, with models:/soc-nir/1" in stdout
    assert "engine spark" in stdout
    assert "warning: sample NIRsoil-8 not predicted: 1 missing spectral value(s), first in column '1500'" in stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.parquet", "problems.csv", "spark.csv"]  # no staging
    result = pd.read_csv(out, dtype={"sample_id": str})
    assert list(result.columns) == OUTPUT_COLUMNS
    assert result["sample_id"].tolist() == data["sample_id"].tolist()  # input order
    assert set(result["model_uri"]) == {"models:/soc-nir/1"}
    assert np.isnan(result.loc[7, "prediction"]) and not result.loc[7, "in_domain"]
    assert pd.read_csv(problems).to_dict("records") == [
        {"sample_id": "NIRsoil-8", "reason": "1 missing spectral value(s), first in column '1500'"}]
    # MLflow's own predictions for the complete rows
    model = mlflow.pyfunc.load_model(store["nir"])
    good = data.drop(index=7)
    expected = model.predict(good[model.metadata.get_input_schema().input_names()]).set_index("sample_id")
    got = result.drop(index=7).set_index("sample_id")
    for column in ("prediction", "lower", "upper", "domain_score"):
        np.testing.assert_allclose(got[column], expected.loc[got.index, column], rtol=1e-7, atol=1e-9)
    assert (got["in_domain"].to_numpy() == expected.loc[got.index, "in_domain"].to_numpy()).all()
    # the local engine on the same file
    local = tmp_path / "local.csv"
    predict_file(store["nir"], local, spectra=source, chunk_size=64)
    local_result = pd.read_csv(local, dtype={"sample_id": str})
    pd.testing.assert_frame_equal(result, local_result, rtol=1e-7, atol=1e-9)


def test_spark_engine_refuses_what_it_cannot_read(store, tmp_path, run_cli):
    out = tmp_path / "out.csv"
    code, _, stderr = run_cli("predict", "--engine", "spark", "--model", "models:/soc-nir/1", "--spectra",
                              NIRSOIL_CSV, "--output", out, env=environment(store))
    assert code == 2
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "--engine spark reads Parquet" in lines[0]
    assert not out.exists()
