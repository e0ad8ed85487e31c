"""Helpers for fault tests: CLI subprocesses started in the background, their children, their
stderr read while they run, directory listings."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd

from conftest import NIRSOIL_CSV, REPO


def write_big_csv(folder: Path) -> Path:
    """The real NIR table ten times over (new ids): a few seconds of prediction, time to signal
    (three times over was too little once memory-based learning predicted ~10x faster)."""
    frame = pd.read_csv(NIRSOIL_CSV)
    path = folder / "nir10.csv"
    pd.concat([frame.assign(sample_id=frame["sample_id"] + f"-{k}") for k in range(10)]).to_csv(path, index=False)
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


PROGRESS = re.compile(r"^(predicting|training|mapping|cross-validation)[^:]*: .* elapsed$")


def without_progress(stderr: str) -> str:
    """stderr without the progress lines printed every few seconds when it is not a terminal."""
    return "\n".join(line for line in stderr.splitlines() if not PROGRESS.match(line))


class StderrLines:
    """Read a running process's stderr line by line in a thread."""

    def __init__(self, process: subprocess.Popen):
        self.lines: list[str] = []
        self.thread = threading.Thread(target=self._read, args=(process,), daemon=True)
        self.thread.start()

    def _read(self, process):
        for line in process.stderr:
            self.lines.append(line.rstrip("\n"))

    def text(self) -> str:
        self.thread.join(timeout=30)
        return "\n".join(self.lines)
