"""The ``soilcarbon`` command (Typer + rich).

Each area adds its commands with a ``register(app)`` function; this module only assembles
them and turns user errors into one ``error: ...`` line on stderr with exit code 2.
"""

from __future__ import annotations

import sys

import click
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
    """Entry point: run the app, map user errors to ``error:`` + exit 2."""
    try:
        app(args=argv, standalone_mode=False)
    except SoilCarbonError as exc:
        fail(str(exc))
    except click.exceptions.Abort:
        fail("aborted", code=130)
    except click.exceptions.ClickException as exc:
        exc.show()
        raise SystemExit(exc.exit_code)
    except click.exceptions.Exit as exc:
        raise SystemExit(exc.exit_code)
    except FileNotFoundError as exc:
        fail(f"{exc.filename}: no such file or folder")


if __name__ == "__main__":
    main()
