"""Debris after a crash or kill: real processes killed with SIGKILL, real partial files.

The promise tested: a killed command may leave its partial output for a moment, but the next
write of the same output removes it (and only its own stale ones), and worker processes never
outlive the command.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import yaml

from cli_helpers import cli_in_process
from conftest import NIRSOIL_CSV, REPO
from process_helpers import alive, descendants, listing, start_cli, wait_for, write_big_csv
from trained_model import FAST_CONFIG

from soilcarbon.atomic import atomic_path, remove_stale_parts

NIR = "models:/soc-nir/1"


def dead_pid() -> int:
    """The pid of a process that has ended (and been reaped)."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


def test_sigkill_of_predict_leaves_a_part_file_the_next_run_removes(tmp_path, env, store, capsys):


    (tmp_path / "in").mkdir()
    big = write_big_csv(tmp_path / "in")
    out = tmp_path / "out"
    out.mkdir()
    process = start_cli("predict", "--model", NIR, "--spectra", big, "-o", out / "p.csv", "--chunk-size", "100",
                        "--workers", "1", cwd=tmp_path, env=env)
    wait_for(lambda: any(".part" in name for name in listing(out)) or process.poll() is not None, what="a part file")
    assert process.poll() is None, "prediction finished before the kill"
    process.kill()
    process.communicate(timeout=30)
    parts = listing(out)
    assert len(parts) == 1 and parts[0].startswith(f".p.csv.{process.pid}-") and parts[0].endswith(".part.csv")

    code, _, err = cli_in_process(capsys, "predict", "--model", NIR, "--spectra", NIRSOIL_CSV, "-o", out / "p.csv",
                                  "-q")
    assert code == 0, err
    assert listing(out) == ["p.csv"]


def test_only_stale_parts_of_the_same_output_are_removed(tmp_path):
    with atomic_path(tmp_path / "p.csv") as tmp:  # the naming the writer really uses
        name = tmp.name
    (tmp_path / "p.csv").unlink()
    host = name.split(".")[3].split("-")[1]
    stale = tmp_path / f".p.csv.{dead_pid()}-{host}.abc123.part.csv"
    live = tmp_path / f".p.csv.{os.getpid()}-{host}.abc124.part.csv"
    other_host = tmp_path / f".p.csv.{dead_pid()}-00000000.abc125.part.csv"
    other_output = tmp_path / f".q.csv.{dead_pid()}-{host}.abc126.part.csv"
    user_file = tmp_path / ".p.csv.notes"
    for path in (stale, live, other_host, other_output, user_file):
        path.write_text("x")
    assert remove_stale_parts(tmp_path / "p.csv") == [stale]
    assert listing(tmp_path) == sorted(p.name for p in (live, other_host, other_output, user_file))


def test_sigkill_of_train_takes_its_loky_workers_down(tmp_path, env):
    config = tmp_path / "fast.yaml"
    config.write_text(yaml.safe_dump(dict(FAST_CONFIG, candidates=[
        {"model": "pls", "grid": {"n_components": [4, 6, 8, 10, 12, 14]}}])))
    process = start_cli("train", "--spectra", NIRSOIL_CSV, "--target", "Ciso", "--config", config, cwd=tmp_path,
                        env=dict(env, MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}"))
    workers: set[int] = set()

    def cross_validating() -> bool:
        workers.update(descendants(process.pid))
        return len(workers) >= 1 or process.poll() is not None

    wait_for(cross_validating, what="loky workers")
    assert process.poll() is None, "training finished before the kill"
    time.sleep(1.0)  # the workers start their first fits (the parent watch runs in the job)
    workers.update(descendants(process.pid))
    process.kill()
    process.communicate(timeout=30)
    wait_for(lambda: not any(alive(pid) for pid in workers), timeout=10, what="the loky workers to exit")


def test_pool_workers_with_the_map_initializer_die_with_their_parent(tmp_path):
    """``map`` starts its worker processes with ``die_with_parent`` in their initializer: a spawn
    pool set up the same way loses its workers when the parent is killed."""
    script = tmp_path / "parent.py"
    script.write_text(textwrap.dedent("""
        import multiprocessing, os, sys, time
        from concurrent.futures import ProcessPoolExecutor
        from soilcarbon.process import die_with_parent

        def pid(_):
            return os.getpid()

        if __name__ == "__main__":
            context = multiprocessing.get_context("spawn")
            pool = ProcessPoolExecutor(2, mp_context=context, initializer=die_with_parent, initargs=(os.getpid(),))
            pids = set(pool.map(pid, range(8)))
            print(" ".join(map(str, pids)), flush=True)
            time.sleep(120)
    """))
    process = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                               env=dict(os.environ, PYTHONPATH=str(REPO)))
    workers = {int(p) for p in process.stdout.readline().split()}
    assert workers and all(alive(pid) for pid in workers)
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=10)
    wait_for(lambda: not any(alive(pid) for pid in workers), timeout=10, what="the pool workers to exit")
