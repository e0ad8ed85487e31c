"""Registration is all-or-nothing, runs that died are marked FAILED, and a fresh SQLite store
survives concurrent first-time `train` runs (issue 10, "Debris"). Real `train` subprocesses,
real SIGKILL, a real MLflow SQLite store.

Kills and races land at deterministic points: ``SOILCARBON_TEST_HOLD_BEFORE_REGISTRATION=FILE``
makes ``train`` write ``FILE.<pid>`` after logging the model, just before registering the version,
and wait there until FILE exists; ``SOILCARBON_TEST_HOLD_BEFORE_STORE`` does the same before the
store is opened (see ``soilcarbon.training.tracking._test_point``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import mlflow
import pandas as pd
import pytest
import yaml

from conftest import REPO
from trained_model import FAST_CONFIG

from soilcarbon import registry
from soilcarbon.training.tracking import HOLD_BEFORE_REGISTRATION, HOLD_BEFORE_STORE

TIMEOUT = 240


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, nirsoil_csv):
    folder = tmp_path_factory.mktemp("registration-inputs")
    frame = pd.read_csv(nirsoil_csv).dropna(subset=["Ciso"]).head(100)
    frame.to_csv(folder / "nir.csv", index=False)
    config = dict(FAST_CONFIG, candidates=[{"model": "pls", "grid": {"n_components": [6]}}])
    (folder / "fast.yaml").write_text(yaml.safe_dump(config))
    return folder


def _environment(store, **extra) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.update(MLFLOW_TRACKING_URI=f"sqlite:///{store / 'mlflow.db'}", OPENBLAS_NUM_THREADS="1",
               OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    env.update(extra)
    return env


def _train(inputs, store, name, **env) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "soilcarbon", "train", "--spectra", str(inputs / "nir.csv"), "--target", "Ciso",
         "--config", str(inputs / "fast.yaml"), "--no-nested", "--name", name, "--quiet"],
        cwd=str(store), env=_environment(store, **env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _client(store):
    uri = f"sqlite:///{store / 'mlflow.db'}"
    return mlflow.MlflowClient(uri, uri)


def test_kill_during_registration_leaves_no_half_version_and_the_run_is_failed_later(inputs, tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    marker = tmp_path / "holding"
    process = _train(inputs, store, "soc-kill", **{HOLD_BEFORE_REGISTRATION: str(marker)})
    try:
        deadline = time.monotonic() + TIMEOUT
        while not list(tmp_path.glob("holding.*")):
            assert process.poll() is None, process.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "train never reached registration"
            time.sleep(0.2)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == -signal.SIGKILL

    client = _client(store)
    (experiment,) = [e for e in client.search_experiments() if e.name == "soilcarbon"]
    (killed,) = client.search_runs([experiment.experiment_id])
    assert killed.info.status == "RUNNING"  # what MLflow leaves behind a killed process
    assert client.search_model_versions("name='soc-kill'") == []  # no version without its tags

    # the next train marks the dead run FAILED and registers a complete version 1
    done = _train(inputs, store, "soc-kill")
    out, err = done.communicate(timeout=TIMEOUT)
    assert done.returncode == 0, err
    assert out.strip().splitlines()[-1] == "models:/soc-kill/1"
    killed = client.get_run(killed.info.run_id)
    assert killed.info.status == "FAILED"
    assert killed.data.tags["soilcarbon.failure"] == "its process ended before the run finished"
    (version,) = client.search_model_versions("name='soc-kill'")
    assert {"cv_rmse", "cv_picp", "target", "data_digest"} <= set(version.tags)
    assert version.description.startswith("SOC calibration for Ciso")
    runs = {r.info.run_id: r.info.status for r in client.search_runs([experiment.experiment_id])}
    assert runs == {killed.info.run_id: "FAILED", version.run_id: "FINISHED"}


def test_runs_of_live_processes_are_left_running(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = registry.configure()
    experiment = client.create_experiment("soilcarbon")
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True)
    dead_tags = dict(registry.process_tags(), **{"soilcarbon.pid": finished.stdout.strip()})
    live = client.create_run(experiment, tags=registry.process_tags())  # this process: alive
    dead = client.create_run(experiment, tags=dead_tags)
    reused = client.create_run(experiment, tags=dict(registry.process_tags(), **{"soilcarbon.pid_start": "1"}))
    foreign = client.create_run(experiment, tags={"soilcarbon.host": "elsewhere", "soilcarbon.pid": "1"})
    untagged = client.create_run(experiment)

    assert sorted(registry.fail_dead_runs(client, experiment)) == sorted([dead.info.run_id, reused.info.run_id])
    status = {r.info.run_id: r.info.status for r in client.search_runs([experiment])}
    assert status[live.info.run_id] == status[foreign.info.run_id] == status[untagged.info.run_id] == "RUNNING"
    assert status[dead.info.run_id] == status[reused.info.run_id] == "FAILED"


def test_concurrent_first_trains_on_a_fresh_store(inputs, tmp_path):
    """Two first-time trains of one model name released onto a fresh SQLite store at the same
    moment (without the store lock, one dies with an alembic 'duplicate column' traceback; the
    registered model and its version numbers are created concurrently too)."""
    store = tmp_path / "store"
    store.mkdir()
    gate = tmp_path / "go"
    processes = [_train(inputs, store, name, **{HOLD_BEFORE_STORE: str(gate)})
                 for name in ("soc-a", "soc-a")]
    try:
        deadline = time.monotonic() + TIMEOUT
        while len(list(tmp_path.glob("go.*"))) < len(processes):
            for process in processes:
                assert process.poll() is None, process.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the trains never reached the store"
            time.sleep(0.2)
        assert not (store / "mlflow.db").exists()  # nobody has opened the store yet
        gate.touch()
        results = [process.communicate(timeout=TIMEOUT) for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    for process, (out, err) in zip(processes, results):
        assert process.returncode == 0, err[-3000:]
        assert "Traceback" not in err
    uris = sorted(out.strip().splitlines()[-1] for out, _ in results)
    assert uris == ["models:/soc-a/1", "models:/soc-a/2"]
    versions = _client(store).search_model_versions("name='soc-a'")
    assert len(versions) == 2 and all("cv_rmse" in v.tags for v in versions)
