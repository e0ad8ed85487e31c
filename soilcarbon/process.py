"""How a command's processes end: signals become a clean exit, worker processes die with their parent.

- :func:`handle_signals` (the CLI runs every command inside it): SIGINT and SIGTERM raise :class:`Interrupted`
  in the main thread, so every ``with``/``finally`` runs (temporary outputs removed, MLflow run
  marked FAILED, worker pools stopped) and the CLI exits 130 / 143 (128 + signal number, the
  shell convention) with one line. A second signal during that clean-up exits at once; files it
  leaves are removed by the next run (:func:`soilcarbon.atomic.remove_stale_parts`).
  ``Interrupted`` is not a ``KeyboardInterrupt`` on purpose: Typer turns a ``KeyboardInterrupt``
  into a silent return when it runs in non-standalone mode.
- :func:`die_with_parent` (called in worker processes): a daemon thread that exits the worker
  when its parent is gone (re-parented: ``os.getppid()`` changed), e.g. after SIGKILL of the
  command. Linux's ``PR_SET_PDEATHSIG`` is not used: it fires when the *thread* that started the
  worker ends, and pools start workers from helper threads.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading

WATCH_SECONDS = 0.5


class Interrupted(BaseException):
    """The command received SIGINT or SIGTERM (a ``BaseException``: ``except Exception`` must not
    swallow it)."""

    def __init__(self, signum: int):
        self.signum = int(signum)
        super().__init__(signal.Signals(self.signum).name)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


_raised = False
_received: int | None = None
_active = False  # inside handle_signals


def _raise_interrupted(signum, frame) -> None:
    global _raised, _received
    if _raised:  # a second signal while cleaning up: stop now
        sys.stderr.write("interrupted again: stopped without clean-up\n")
        sys.stderr.flush()
        os._exit(128 + signum)
    _raised, _received = True, int(signum)
    raise Interrupted(signum)


def received() -> int | None:
    """The signal number this command received, if any."""
    return _received


def raise_if_interrupted() -> None:
    """Raise :class:`Interrupted` again if a signal arrived in this command. A signal handler's
    exception that lands in a weakref callback or ``__del__`` (e.g. SQLAlchemy's during garbage
    collection) is printed and swallowed by Python, and the work goes on; this is called before
    an output is put in place (:func:`soilcarbon.atomic.atomic_path`) and when the command ends,
    so such a run still leaves nothing and exits 128 + signal. Python's "Exception ignored"
    report of such a swallowed signal is kept off stderr by :func:`_quiet_swallowed_signal`."""
    if _active and _received is not None:
        raise Interrupted(_received)


def _quiet_swallowed_signal(previous_hook):
    """A ``sys.unraisablehook`` that drops Python's traceback for a swallowed :class:`Interrupted`
    (the signal is re-raised by :func:`raise_if_interrupted`, so the user sees one ``error:``
    line) and passes everything else to ``previous_hook``."""

    def hook(unraisable):
        if not isinstance(unraisable.exc_value, Interrupted):
            previous_hook(unraisable)

    return hook


@contextlib.contextmanager
def handle_signals():
    """Within the block, in the main thread: SIGINT and SIGTERM raise :class:`Interrupted`; the
    previous handlers come back after it (the CLI may run inside another program, e.g. tests).
    A SIGINT ignored on start (a background job of a non-interactive shell, ``nohup``) stays
    ignored."""
    global _raised, _received, _active
    previous = {}
    previous_hook = sys.unraisablehook
    if threading.current_thread() is threading.main_thread():
        _raised, _received, _active = False, None, True
        sys.unraisablehook = _quiet_swallowed_signal(previous_hook)
        for signum in (signal.SIGINT, signal.SIGTERM):
            if signal.getsignal(signum) is not signal.SIG_IGN:
                previous[signum] = signal.signal(signum, _raise_interrupted)
    try:
        yield
        raise_if_interrupted()
    finally:
        _active = False
        sys.unraisablehook = previous_hook
        for signum, handler in previous.items():
            signal.signal(signum, handler)


_watching: int | None = None


def die_with_parent(parent_pid: int) -> None:
    """In a worker process started by ``parent_pid``: exit (code 1, without clean-up) as soon as
    the parent is gone. Does nothing in the parent itself (sequential runs) and runs once per
    process."""
    global _watching
    pid = os.getpid()
    if pid == parent_pid or _watching == pid:
        return
    _watching = pid

    def watch():
        stop = threading.Event()
        while not stop.wait(WATCH_SECONDS):
            if os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=watch, name="soilcarbon-parent-watch", daemon=True).start()
