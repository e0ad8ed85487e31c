"""Helpers for CLI tests: the entry point run in this process, and the one error line."""

from __future__ import annotations


def cli_in_process(capsys, *args) -> tuple[int, str, str]:
    """The real CLI entry point in this process (same code path as the subprocess, faster):
    ``(exit code, stdout, stderr)``."""
    from soilcarbon.cli import main

    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def only_error_line(stderr: str) -> str:
    """The single ``error: ...`` line a user error prints (anything else on stderr fails)."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    return lines[0]
