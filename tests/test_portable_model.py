"""The registered model is a self-contained MLflow model (issue 9).

It carries this package's code (``code/soilcarbon``) and a ``requirements.txt`` derived from what
the pickled model imports, pinned to the versions in use. The slow test builds a fresh virtual
environment from that file alone (pip, from the package index, through pip's cache) and checks
that ``mlflow.pyfunc.load_model(...).predict(...)`` there, with soilcarbon neither installed nor
on ``sys.path``, gives exactly what ``soilcarbon predict`` gives.
"""

from __future__ import annotations

import importlib.metadata as metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import NIRSOIL_CSV, run_cli
from trained_model import FAST_CONFIG, nirsoil_spectra, use_tracking

#: A memory-based learner: its local PLS is compiled with numba, which the model must declare.
MBL_CONFIG = dict(FAST_CONFIG, candidates=[
    {"model": "mbl", "grid": {"k": [40], "min_components": [3], "max_components": [6]}}])


@pytest.fixture(scope="module")
def mbl_model(tmp_path_factory, shared_data):
    from threadpoolctl import threadpool_limits

    from soilcarbon.training.config import parse_config
    from soilcarbon.training.tracking import log_training
    from soilcarbon.training.train import train

    folder = tmp_path_factory.mktemp("portable")
    uri = use_tracking(folder)
    with threadpool_limits(1):
        result = train(nirsoil_spectra(120), "Ciso", config=parse_config(MBL_CONFIG), n_jobs=1)
    model_uri = log_training(result, "soc-portable", {"spectra": str(NIRSOIL_CSV)}, "%")
    import mlflow

    local = Path(mlflow.artifacts.download_artifacts(model_uri, dst_path=str(folder / "download")))
    return {"folder": folder, "tracking_uri": uri, "model_uri": model_uri, "local": local, "result": result}


def test_model_carries_code_and_pinned_requirements(mbl_model):
    local = mbl_model["local"]
    assert (local / "code" / "soilcarbon" / "models" / "mbl.py").is_file()
    assert not list((local / "code").rglob("__pycache__"))
    lines = [line for line in (local / "requirements.txt").read_text().split() if line]
    pins = dict(line.split("==") for line in lines)
    assert len(pins) == len(lines), lines  # every requirement pinned
    for dist, pinned in pins.items():
        assert metadata.version(dist) == pinned, dist
    # imported by the model's own code (numba: local PLS; chemotools: preprocessing) and
    # transitively (llvmlite by numba, joblib by scikit-learn)
    for dist in ("numba", "llvmlite", "chemotools", "scikit-learn", "joblib", "numpy", "scipy", "pandas", "mlflow"):
        assert dist in pins, (dist, lines)
    assert "soilcarbon" not in pins  # travels as code
    assert "lightgbm" not in pins  # not used by this model: derived, not a fixed list


def test_requirements_of_a_lightgbm_model_name_lightgbm():
    from soilcarbon.models.pyfunc import SOCPyfunc
    from soilcarbon.training.tracking import model_requirements

    from lightgbm import LGBMRegressor

    names = {line.split("==")[0] for line in model_requirements(SOCPyfunc(LGBMRegressor(n_estimators=3)))}
    assert {"lightgbm", "numpy", "scipy"} <= names
    assert "numba" not in names


SCRIPT = r"""
import importlib.util, json, sys
import numpy as np, pandas as pd
assert importlib.util.find_spec("soilcarbon") is None, "soilcarbon must not be importable here"
import mlflow
model = mlflow.pyfunc.load_model(sys.argv[1])
frame = pd.read_csv(sys.argv[2], dtype={"sample_id": str})
columns = ["sample_id"] + [str(c) for c in model.metadata.get_input_schema().input_names()[1:]]
out = model.predict(frame[columns], params={"level": 0.9})
np.save(sys.argv[3], out[["prediction", "lower", "upper", "domain_score"]].to_numpy(dtype=float))
print(json.dumps({"ids": list(out["sample_id"]), "in_domain": [bool(v) for v in out["in_domain"]]}))
"""


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_fresh_venv_with_only_the_model_requirements_predicts_like_the_cli(mbl_model, tmp_path):
    local = mbl_model["local"]
    sample = tmp_path / "sample.csv"
    pd.read_csv(NIRSOIL_CSV).iloc[300:340].to_csv(sample, index=False)

    venv = tmp_path / "venv"
    # no pip inside the new environment: this interpreter's pip installs into it (--python), from
    # the package index through pip's cache, without compiling .pyc files (the slow part)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MLFLOW_TRACKING_URI=mbl_model["tracking_uri"])
    done = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-compile",
                           "--disable-pip-version-check", "-r", str(local / "requirements.txt")],
                          env=env, capture_output=True, text=True, timeout=360)
    assert done.returncode == 0, done.stderr[-3000:]

    arrays = tmp_path / "pyfunc.npy"
    done = subprocess.run([str(python), "-I", "-c", SCRIPT, mbl_model["model_uri"], str(sample), str(arrays)],
                          cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    pyfunc = json.loads(done.stdout.strip().splitlines()[-1])

    code, _, err = run_cli("predict", "--model", mbl_model["model_uri"], "--spectra", sample,
                           "--output", tmp_path / "cli.parquet", "--workers", "1",
                           env={"MLFLOW_TRACKING_URI": mbl_model["tracking_uri"], "OPENBLAS_NUM_THREADS": "1"})
    assert code == 0, err
    cli = pd.read_parquet(tmp_path / "cli.parquet")
    assert list(cli["sample_id"]) == pyfunc["ids"]
    assert list(cli["in_domain"]) == pyfunc["in_domain"]
    np.testing.assert_array_equal(cli[["prediction", "lower", "upper", "domain_score"]].to_numpy(dtype=float),
                                  np.load(arrays))
