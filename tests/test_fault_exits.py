"""Exit codes and error lines under faults: real CLI subprocesses, real signals, real files.

The promise tested: a signal gives exit 128 + signal number with one ``interrupted`` line and
leaves the output folder as it was; a user error gives one ``error:`` line and exit 2, never a
traceback.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from cli_helpers import only_error_line
from conftest import NIRSOIL_CSV, run_cli
from process_helpers import (StderrLines, alive, descendants, listing, start_cli, wait_for, without_progress,
                             write_big_csv)
from trained_model import FAST_CONFIG

NIR = "models:/soc-nir/1"


@pytest.fixture(scope="module")
def big_csv(tmp_path_factory, shared_data) -> Path:
    return write_big_csv(tmp_path_factory.mktemp("big"))


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
    line = only_error_line(without_progress(err))
    assert "interrupted" in line and signal.Signals(signum).name in line
    assert listing(tmp_path) == before


def test_sigint_during_train_exits_130_stops_workers_and_leaves_nothing(tmp_path, env):
    """Also: with stderr not a terminal, train prints progress lines while it cross-validates."""
    config = tmp_path / "fast.yaml"
    config.write_text(yaml.safe_dump(dict(FAST_CONFIG, candidates=[
        {"model": "pls", "grid": {"n_components": [4, 6, 8, 10, 12, 14]}}])))
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    before = listing(tmp_path)
    process = start_cli("train", "--spectra", NIRSOIL_CSV, "--target", "Ciso", "--config", config,
                        cwd=tmp_path, env=dict(env, MLFLOW_TRACKING_URI=tracking, SOILCARBON_PROGRESS_SECONDS="0.3"))
    stderr = StderrLines(process)
    workers: set[int] = set()

    def cross_validating() -> bool:
        workers.update(descendants(process.pid))
        return (workers and any(line.startswith("cross-validation (") for line in stderr.lines)) or process.poll() is not None

    wait_for(cross_validating, what="loky workers and a progress line")
    assert process.poll() is None, "training finished before the signal"
    workers.update(descendants(process.pid))
    process.send_signal(signal.SIGINT)
    out = process.stdout.read()
    process.wait(timeout=60)
    err = stderr.text()
    assert process.returncode == 130, err
    assert re.search(r"^cross-validation \(3 outer folds\): \d+/\d+ \(\d+%\), 0:00:\d\d elapsed$", err, re.M), err
    assert "interrupted" in only_error_line(without_progress(err))
    assert "models:/" not in out
    wait_for(lambda: not any(alive(pid) for pid in workers), timeout=15, what="the workers to end")
    after = listing(tmp_path)
    if "mlflow.db" in after:  # interrupted while logging: the run must not stay RUNNING
        with sqlite3.connect(tmp_path / "mlflow.db") as db:
            assert not db.execute("select run_uuid from runs where status = 'RUNNING'").fetchall()
        after = [name for name in after if name not in ("mlflow.db", "mlartifacts")]
    assert after == before


# ----------------------------------------------------------------------------- usage and user errors
@pytest.mark.parametrize("args, message", [
    (["predict", "--bogus"], "No such option: --bogus"),
    (["predict", "--spectra", "x.csv", "-o", "p.csv"], "Missing option '--model'"),
    (["frobnicate"], "No such command 'frobnicate'"),
    (["predict", "--model", NIR, "--spectra", "x.csv", "-o", "p.csv", "--level", "abc"], "Invalid value for '--level'"),
])
def test_usage_errors_exit_2_without_traceback(tmp_path, capsys, args, message):
    from cli_helpers import cli_in_process

    code, out, err = cli_in_process(capsys, *args)
    assert code == 2
    assert message in " ".join(err.replace("│", " ").split())
    assert "Traceback" not in err + out
    assert listing(tmp_path) == []


def test_usage_error_in_a_real_process(tmp_path):
    code, out, err = run_cli("predict", "--bogus", cwd=tmp_path)
    assert code == 2 and "No such option: --bogus" in err and "Traceback" not in err


@pytest.mark.parametrize("alias, message", [("latest", "--alias 'latest': 'latest' alias name"),
                                            ("my alias", "--alias 'my alias': Invalid alias name")])
def test_promote_to_a_reserved_or_invalid_alias_is_one_error_line(store, capsys, alias, message):
    from cli_helpers import cli_in_process

    code, _, err = cli_in_process(capsys, "models", "promote", "soc-nir", "1", "--alias", alias)
    assert code == 2
    assert message in only_error_line(err)


def test_truncated_python_model_pkl_is_one_error_line(store, tmp_path, capsys):
    from cli_helpers import cli_in_process

    source = next(Path(store["folder"]).glob("mlartifacts/**/python_model.pkl")).parent
    model = tmp_path / "model"
    shutil.copytree(source, model)
    pkl = model / "python_model.pkl"
    pkl.write_bytes(pkl.read_bytes()[: pkl.stat().st_size // 2])
    code, _, err = cli_in_process(capsys, "predict", "--model", model, "--spectra", NIRSOIL_CSV, "-o", tmp_path / "p.csv")
    assert code == 2
    line = only_error_line(err)
    assert "python_model.pkl is damaged" in line and str(model) in line
    assert not (tmp_path / "p.csv").exists()


@pytest.fixture
def small_fs(tmp_path):
    """A real 64 KiB tmpfs (root only); skipped where the machine does not allow mounting."""
    folder = tmp_path / "fs"
    folder.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=True)


@pytest.mark.parametrize("command, name", [
    (["predict", "--model", NIR, "--spectra", NIRSOIL_CSV, "-q", "-o"], "p.csv"),
    (["spectra", "convert", NIRSOIL_CSV], "s.parquet"),
    (["spectra", "inspect", NIRSOIL_CSV, "--json", "--plot"], "s.png"),
])
def test_disk_full_is_one_error_line_and_leaves_nothing(store, small_fs, capsys, command, name):
    from cli_helpers import cli_in_process

    output = small_fs / name
    code, _, err = cli_in_process(capsys, *command, output)
    assert code == 2
    line = only_error_line(err)
    assert line.startswith(f"error: {output}: cannot write: ") and "No space left on device" in line
    assert listing(small_fs) == []


@pytest.mark.parametrize("command", [
    ["predict", "--model", NIR, "--spectra", NIRSOIL_CSV, "-o", "{fs}/p.parquet"],
    ["predict", "--model", NIR, "--spectra", NIRSOIL_CSV, "-o", "{tmp}/p.csv", "--problems", "{fs}/bad.csv"],
    ["spectra", "convert", NIRSOIL_CSV, "{fs}/s.parquet"],
    ["spectra", "inspect", NIRSOIL_CSV, "--plot", "{fs}/s.png"],
    ["train", "--spectra", NIRSOIL_CSV, "--target", "Ciso", "--oof-output", "{fs}/oof.csv"],
])
def test_read_only_output_folder_is_refused_before_any_work(store, small_fs, tmp_path, capsys, command):
    from cli_helpers import cli_in_process

    subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
    args = [str(a).format(fs=small_fs, tmp=tmp_path) for a in command]
    code, out, err = cli_in_process(capsys, *args)
    assert code == 2
    line = only_error_line(err)
    assert f"cannot write in folder {small_fs}: Read-only file system" in line
    assert listing(small_fs) == [] and listing(tmp_path) == ["fs"]


def test_train_refuses_a_read_only_mlflow_store_before_training(small_fs, capsys, monkeypatch):
    from cli_helpers import cli_in_process

    subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{small_fs / 'mlflow.db'}")
    code, _, err = cli_in_process(capsys, "train", "--spectra", NIRSOIL_CSV, "--target", "Ciso")
    assert code == 2
    assert f"MLflow store {small_fs}: cannot write in folder {small_fs}" in only_error_line(err)


# ----------------------------------------------------------------------------- output checks before work
@pytest.mark.parametrize("command, message", [
    (["predict", "--model", NIR, "--spectra", NIRSOIL_CSV, "-o", "{tmp}/p.tsv"],
     "{tmp}/p.tsv: unknown output type '.tsv'; name the output .csv, .parquet or .pq"),
    (["predict", "--model", NIR, "--spectra", NIRSOIL_CSV, "-o", "{tmp}/p.txt"], "unknown output type '.txt'"),
    (["predict", "--model", NIR, "--spectra", NIRSOIL_CSV, "-o", "{tmp}/p.csv", "--problems", "{tmp}/no/bad.csv"],
     "{tmp}/no/bad.csv: folder {tmp}/no does not exist"),
    (["train", "--spectra", NIRSOIL_CSV, "--target", "Ciso", "--oof-output", "{tmp}/oof.parquet"],
     "{tmp}/oof.parquet: unknown output type '.parquet'; name the output .csv"),
    (["spectra", "inspect", NIRSOIL_CSV, "--plot", "{tmp}/no/s.png"], "{tmp}/no/s.png: folder {tmp}/no does not exist"),
    (["spectra", "inspect", NIRSOIL_CSV, "--plot", "{tmp}/s.jpg"], "unknown output type '.jpg'; name the output .png, .svg or .pdf"),
    (["map", "--model", "models:/soc-cov/1", "--rasters", NIRSOIL_CSV, "-o", "{tmp}/m.png"],
     "unknown output type '.png'; name the output .tif or .tiff"),
])
def test_every_output_is_checked_before_any_work(store, tmp_path, capsys, command, message):
    from cli_helpers import cli_in_process

    code, out, err = cli_in_process(capsys, *[str(a).format(tmp=tmp_path) for a in command])
    assert code == 2
    assert message.format(tmp=tmp_path) in only_error_line(err)
    assert listing(tmp_path) == []


# ----------------------------------------------------------------------------- progress lines
def test_progress_prints_a_line_every_few_seconds_when_stderr_is_not_a_terminal(capsys, monkeypatch):
    from soilcarbon.progress import Progress

    monkeypatch.setenv("SOILCARBON_PROGRESS_SECONDS", "0.2")
    with Progress(False, "mapping", terminal=False) as progress:
        progress(total=10, description="mapping")
        progress(advance=3)
        time.sleep(0.5)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) >= 2 and lines[0] == "mapping: 3/10 (30%), 0:00:00 elapsed", lines
    with Progress(True, "mapping", terminal=False) as progress:  # quiet: nothing
        progress(total=10, advance=3)
        time.sleep(0.3)
    assert capsys.readouterr().err == ""


def test_the_cli_restores_the_signal_handlers_of_its_host(capsys):
    from cli_helpers import cli_in_process

    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    code, _, _ = cli_in_process(capsys, "predict", "--bogus")
    assert code == 2
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_a_signal_whose_exception_python_swallows_still_leaves_no_output(tmp_path, capsys, monkeypatch):
    """A signal handled inside ``__del__`` (as in SQLAlchemy's weakref callbacks during garbage
    collection): Python swallows the exception and the work goes on; the output must still not
    be put in place, the command must still end interrupted, and Python's "Exception ignored"
    traceback must not reach stderr (the user sees one ``error:`` line)."""
    import signal

    from soilcarbon.atomic import atomic_path
    from soilcarbon.process import Interrupted, handle_signals

    class SignalInDel:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(100_000):  # the handler runs here, in __del__
                pass

    monkeypatch.setattr(sys, "unraisablehook", sys.__unraisablehook__)  # Python's own: prints to stderr
    with pytest.raises(Interrupted) as raised:
        with handle_signals():
            with atomic_path(tmp_path / "out.csv") as tmp:
                tmp.write_text("sample_id\n")
                obj = SignalInDel()
                del obj
                tmp.write_text("sample_id\ns1\n")  # the work went on
    assert raised.value.exit_code == 143
    assert list(tmp_path.iterdir()) == []
    assert "Exception ignored" not in capsys.readouterr().err
    assert sys.unraisablehook is sys.__unraisablehook__  # the host's hook is back


def test_resource_tracker_cleanup_warning_is_silenced_in_helper_processes_only_during_training():
    """joblib's resource tracker is a separate interpreter: the filter must reach it through
    PYTHONWARNINGS while training runs, silence only its cleanup warning, and leave no trace."""
    import os
    import subprocess
    import sys

    from soilcarbon.training.commands import known_harmless_warnings_ignored

    code = ("import warnings; warnings.warn('resource_tracker: /dev/shm/joblib_x: FileNotFoundError', UserWarning); "
            "warnings.warn('a real problem', UserWarning)")
    before = os.environ.get("PYTHONWARNINGS")
    with known_harmless_warnings_ignored():
        err = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stderr
    assert "resource_tracker" not in err and "a real problem" in err
    assert os.environ.get("PYTHONWARNINGS") == before
    err = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stderr
    assert "resource_tracker" in err  # outside training nothing is hidden
