"""Progress of long commands (``train``, ``predict``, ``map``) on stderr, one helper for all.

On a terminal: a rich progress bar that disappears when done. When stderr is not a terminal
(a log file, CI, a scheduler): one plain line every few seconds (``SOILCARBON_PROGRESS_SECONDS``,
default 5), so a pipeline never sits silent for minutes. Nothing when quiet.
"""

from __future__ import annotations

import os
import sys
import threading
import time

DEFAULT_SECONDS = 5.0


def line_interval() -> float:
    """Seconds between progress lines when stderr is not a terminal."""
    try:
        return max(0.1, float(os.environ.get("SOILCARBON_PROGRESS_SECONDS", DEFAULT_SECONDS)))
    except ValueError:
        return DEFAULT_SECONDS


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class Progress:
    """``with Progress(quiet, "predicting") as p: p.start(total); p.update(advance=1)``.

    Also callable as ``p(total=None, advance=0, description=None)``, the form the training and
    map code take. ``unit="bytes"`` shows a total in bytes as a percentage only; ``samples``
    counts what was done when the total is not in samples.
    """

    def __init__(self, quiet: bool = False, description: str = "working", unit: str = "", terminal: bool | None = None):
        self.quiet = quiet
        self.description = description
        self.unit = unit
        self.total: float | None = None
        self.completed = 0.0
        self.samples: int | None = None
        self.started = time.monotonic()
        self.bar = self.task = None
        self._stop = threading.Event()
        self._thread = None
        self.terminal = sys.stderr.isatty() if terminal is None else terminal
        if not quiet and self.terminal:
            from rich.console import Console
            from rich.progress import (BarColumn, Progress as RichProgress, TaskProgressColumn, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)

            self.bar = RichProgress(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
                                    TextColumn("{task.fields[extra]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                                    console=Console(stderr=True), transient=True)

    # ------------------------------------------------------------------ context
    def __enter__(self):
        self.started = time.monotonic()
        if self.bar is not None:
            self.bar.start()
        elif not self.quiet:
            self._thread = threading.Thread(target=self._lines, name="soilcarbon-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self.bar is not None:
            self.bar.stop()
        if self._thread is not None:
            self._thread.join(timeout=1)

    # ------------------------------------------------------------------ updates
    def start(self, total: float | None, description: str | None = None) -> None:
        self.total = total
        if description:
            self.description = description
        self._refresh()

    def update(self, completed: float | None = None, advance: float = 0, samples: int | None = None) -> None:
        if completed is not None:
            self.completed = completed
        self.completed += advance
        if samples is not None:
            self.samples = samples
        self._refresh()

    def __call__(self, total=None, advance=0, description=None):
        if total is not None or description is not None:
            self.start(total if total is not None else self.total, description)
        if advance:
            self.update(advance=advance)

    # ------------------------------------------------------------------ output
    def _extra(self) -> str:
        return "" if self.samples is None else f"{self.samples} samples"

    def _refresh(self) -> None:
        if self.bar is None:
            return
        if self.task is None:
            self.task = self.bar.add_task(self.description, total=self.total, extra=self._extra())
        self.bar.update(self.task, total=self.total, completed=self.completed, description=self.description,
                        extra=self._extra())

    def line(self) -> str:
        """The plain progress line: ``predicting: 45% (2000 samples), 0:00:12 elapsed``."""
        parts = []
        if self.total:
            share = f"{100 * min(self.completed / self.total, 1):.0f}%"
            parts.append(share if self.unit == "bytes" else f"{self.completed:g}/{self.total:g} ({share})")
        elif self.unit != "bytes":
            parts.append(f"{self.completed:g} done")
        if self.samples is not None:
            parts.append(f"{self.samples} samples")
        return f"{self.description}: {', '.join(parts)}, {_clock(time.monotonic() - self.started)} elapsed"

    def _lines(self) -> None:
        every = line_interval()
        while not self._stop.wait(every):
            sys.stderr.write(self.line() + "\n")
            sys.stderr.flush()
