"""Shared test fixtures: paths to the real data in ../shared/data and a CLI runner.

The CLI runs in a real subprocess (``python -m soilcarbon``) so exit codes, stdout and stderr
are exactly what a user sees.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# Commands print a progress line every few seconds when stderr is not a terminal; on a busy
# machine that would reach tests that check stderr exactly. Tests of the progress lines set it.
os.environ.setdefault("SOILCARBON_PROGRESS_SECONDS", "3600")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
NIRSOIL_CSV = SHARED_DATA / "nirsoil" / "nirsoil_train.csv"
OPUS_DIR = SHARED_DATA / "opus-sample" / "spectra"
OPUS_LAB_CSV = SHARED_DATA / "opus-sample" / "lab.csv"
CORN_DIR = SHARED_DATA / "corn"


def run_cli(*args, cwd=None, env=None, timeout: float = 120) -> tuple[int, str, str]:
    """Run ``python -m soilcarbon ARGS`` in a subprocess; return (returncode, stdout, stderr)."""
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(
        [str(REPO)] + ([environment["PYTHONPATH"]] if environment.get("PYTHONPATH") else [])
    )
    environment.setdefault("MPLBACKEND", "Agg")
    environment["COLUMNS"] = "200"  # rich tables: no wrapping of long paths
    if env:
        environment.update(env)
    done = subprocess.run(
        [sys.executable, "-m", "soilcarbon", *map(str, args)],
        cwd=str(cwd or REPO), env=environment, capture_output=True, text=True, timeout=timeout,
    )
    return done.returncode, done.stdout, done.stderr


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def nirsoil_csv(shared_data) -> Path:
    return NIRSOIL_CSV


@pytest.fixture(scope="session")
def opus_dir(shared_data) -> Path:
    return OPUS_DIR


@pytest.fixture(scope="session")
def opus_files(opus_dir) -> list[Path]:
    return sorted(p for p in opus_dir.iterdir() if p.is_file())


@pytest.fixture(scope="session")
def opus_lab_csv(shared_data) -> Path:
    return OPUS_LAB_CSV


@pytest.fixture(scope="session")
def corn_dir(shared_data) -> Path:
    return CORN_DIR


@pytest.fixture(name="run_cli")
def run_cli_fixture():
    """The :func:`run_cli` helper: ``run_cli("spectra", "inspect", path) -> (code, out, err)``."""
    return run_cli


@pytest.fixture(scope="module")
def store(tmp_path_factory, shared_data):
    """The session's MLflow store of real test models (:func:`serving_models.serving_store`)."""
    from serving_models import serving_store

    return serving_store(tmp_path_factory)


@pytest.fixture(scope="module")
def env(store):
    """Environment for subprocesses (CLI, servers) that use that store."""
    from serving_models import environment

    return environment(store)
