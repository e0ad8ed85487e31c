"""The ``soilcarbon`` command (Typer + rich).

Each area adds its commands with a ``register(app)`` function; this module only assembles
them and turns user errors into one ``error: ...`` line on stderr with exit code 2.
"""

from __future__ import annotations

import sys

import typer

from soilcarbon.errors import SoilCarbonError

app = typer.Typer(
    name="soilcarbon",
    help="Soil organic carbon from spectra and covariates, with calibrated uncertainty, versioned in MLflow.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _register_all() -> None:
    from soilcarbon.spectral import commands as spectral_commands

    spectral_commands.register(app)
    from soilcarbon.training import commands as training_commands

    training_commands.register(app)
    from soilcarbon.serving import commands as serving_commands

    serving_commands.register(app)
    from soilcarbon.geo import commands as geo_commands

    geo_commands.register(app)
    from soilcarbon.evaluation import commands as evaluation_commands

    evaluation_commands.register(app)
    from soilcarbon.mrv import commands as mrv_commands

    mrv_commands.register(app)
    from soilcarbon.lab import select_commands

    select_commands.register(app)
    from soilcarbon.lab import transfer_commands

    transfer_commands.register(app)


_register_all()


def fail(message: str, code: int = 2) -> None:
    """Print one ``error:`` line on stderr and exit."""
    sys.stderr.write(f"error: {' '.join(str(message).split())}\n")
    sys.stderr.flush()
    raise SystemExit(code)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app, map user errors to ``error:`` + exit 2, SIGINT / SIGTERM to one
    ``interrupted`` line + exit 130 / 143."""
    from soilcarbon.process import Interrupted, handle_signals, received

    try:
        # standalone: Typer shows usage errors (unknown option or command, missing or bad value)
        # in its box with exit code 2 and exits 0 on success; every other exception comes here
        with handle_signals():
            app(args=argv, standalone_mode=True)
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise  # usage errors (2), already shown by Typer
        if received() is not None:  # the signal's exception was swallowed (see raise_if_interrupted)
            exc = Interrupted(received())
            fail(f"interrupted by {exc}; partial outputs were removed", code=exc.exit_code)
    except Interrupted as exc:
        fail(f"interrupted by {exc}; partial outputs were removed", code=exc.exit_code)
    except SoilCarbonError as exc:
        fail(str(exc))
    except FileNotFoundError as exc:
        fail(f"{exc.filename}: no such file or folder")
    except OSError as exc:
        fail(os_error_message(exc))
    except Exception as exc:
        message = mlflow_error_message(exc)
        if message is None:
            raise
        fail(message)


def os_error_message(exc: OSError) -> str:
    """``FILE: reason`` for an operating-system error (permission, disk full, read-only...)."""
    reason = exc.strerror or str(exc)
    names = [name for name in (exc.filename, exc.filename2) if name]
    return f"{' -> '.join(map(str, names))}: {reason}" if names else reason


def mlflow_error_message(exc: Exception) -> str | None:
    """One line for an MLflow error (tracking store, registry, model files), or None for others."""
    if type(exc).__module__.split(".")[0] != "mlflow":
        return None
    message = getattr(exc, "message", None) or str(exc)
    return f"MLflow: {message.splitlines()[0] if message else type(exc).__name__}"


if __name__ == "__main__":
    main()
