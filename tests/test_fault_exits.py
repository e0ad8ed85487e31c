"""Exit codes and error lines under faults: real CLI subprocesses, real signals, real files.

The promise tested: a signal gives exit 128 + signal number with one ``interrupted`` line and
leaves the output folder as it was; a user error gives one ``error:`` line and exit 2, never a
traceback.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from cli_helpers import only_error_line
from conftest import NIRSOIL_CSV, REPO, run_cli
from serving_models import environment, serving_store
from trained_model import FAST_CONFIG

NIR = "models:/soc-nir/1"


@pytest.fixture(scope="module")
def store(tmp_path_factory, shared_data):
    return serving_store(tmp_path_factory)


@pytest.fixture(scope="module")
def env(store):
    return environment(store)


@pytest.fixture(scope="module")
def big_csv(tmp_path_factory, shared_data) -> Path:
    """The real NIR table three times over (new ids): a few seconds of prediction, time to signal."""
    frame = pd.read_csv(NIRSOIL_CSV)
    path = tmp_path_factory.mktemp("big") / "nir3.csv"
    pd.concat([frame.assign(sample_id=frame["sample_id"] + f"-{k}") for k in range(3)]).to_csv(path, index=False)
    return path


def start_cli(*args, cwd: Path, env: dict) -> subprocess.Popen:
    environment = dict(env)
    environment["PYTHONPATH"] = str(REPO)
    return subprocess.Popen([sys.executable, "-m", "soilcarbon", *map(str, args)], cwd=str(cwd), env=environment,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(condition, timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (Linux /proc)."""
    found, todo = set(), [pid]
    while todo:
        current = todo.pop()
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                children = (task / "children").read_text().split()
            except OSError:
                continue
            for child in map(int, children):
                if child not in found:
                    found.add(child)
                    todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ----------------------------------------------------------------------------- signals
@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_during_predict_exits_128_plus_signal_and_leaves_nothing(tmp_path, env, big_csv, signum, code):
    (tmp_path / "keep.txt").write_text("x")
    before = listing(tmp_path)
    process = start_cli("predict", "--model", NIR, "--spectra", big_csv, "-o", "p.csv", "--problems", "bad.csv",
                        "--chunk-size", "100", "--workers", "1", cwd=tmp_path, env=env)
    wait_for(lambda: any(".part" in name for name in listing(tmp_path)) or process.poll() is not None,
             what="the partial output")
    assert process.poll() is None, "prediction finished before the signal; make the input bigger"
    process.send_signal(signum)
    out, err = process.communicate(timeout=60)
    assert process.returncode == code, err
    line = only_error_line(err)
    assert "interrupted" in line and signal.Signals(signum).name in line
    assert listing(tmp_path) == before


def test_sigint_during_train_exits_130_stops_workers_and_leaves_nothing(tmp_path, env):
    config = tmp_path / "fast.yaml"
    config.write_text(yaml.safe_dump(dict(FAST_CONFIG, candidates=[
        {"model": "pls", "grid": {"n_components": [4, 6, 8, 10, 12, 14]}}])))
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    before = listing(tmp_path)
    process = start_cli("train", "--spectra", NIRSOIL_CSV, "--target", "Ciso", "--config", config,
                        cwd=tmp_path, env=dict(env, MLFLOW_TRACKING_URI=tracking))
    workers: set[int] = set()

    def cross_validating() -> bool:
        workers.update(descendants(process.pid))
        return len(workers) >= 1 or process.poll() is not None

    wait_for(cross_validating, what="loky workers")
    assert process.poll() is None, "training finished before the signal"
    time.sleep(0.5)
    workers.update(descendants(process.pid))
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "interrupted" in only_error_line(err)
    assert "models:/" not in out
    wait_for(lambda: not any(alive(pid) for pid in workers), timeout=15, what="the workers to end")
    after = listing(tmp_path)
    if "mlflow.db" in after:  # interrupted while logging: the run must not stay RUNNING
        with sqlite3.connect(tmp_path / "mlflow.db") as db:
            assert not db.execute("select run_uuid from runs where status = 'RUNNING'").fetchall()
        after = [name for name in after if name not in ("mlflow.db", "mlartifacts")]
    assert after == before
