"""``soilcarbon spectra ...``: inspect and convert spectra files (Typer + rich).

``inspect`` summarises what a reader found (samples, axis and how its unit was determined,
missing values, metadata, lab matches) as a table or one JSON object; ``convert`` writes any
readable input as one Parquet table. Bad input raises :class:`SoilCarbonError`, which the root
command turns into one ``error:`` line and exit code 2; outputs are written atomically.
"""

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from soilcarbon.errors import SoilCarbonError

spectra_app = typer.Typer(
    name="spectra",
    help="Read, check and convert spectra: CSV/Parquet tables, Bruker OPUS files and folders of them.",
    no_args_is_help=True,
)

PathArg = Annotated[Path, typer.Argument(help="CSV/Parquet table, one OPUS file, or a folder of OPUS files.")]
IdCol = Annotated[str, typer.Option("--id-col", help="Name of the sample id column (tables and lab table).")]
Unit = Annotated[Optional[str], typer.Option("--unit", help="Axis unit, nm or cm-1 (default: from prefix/file).")]
Lab = Annotated[Optional[Path], typer.Option("--lab", help="Lab table (CSV) to join by sample id.")]
IdPattern = Annotated[
    Optional[str],
    typer.Option("--id-pattern", help="OPUS: regex with one group taking the id from the file name "
                                      "(default: text before the first '_')."),
]
Block = Annotated[str, typer.Option("--block", help="OPUS data block: absorbance, reflectance, transmittance...")]
SkipBad = Annotated[bool, typer.Option("--skip-bad", help="OPUS folders: skip unreadable files and list them.")]


def _read(path: Path, id_col: str, unit, id_pattern, block: str, skip_bad: bool, allow_nan: bool):
    from soilcarbon.spectral.readers import read_spectra

    return read_spectra(path, id_col=id_col, unit=unit, id_pattern=id_pattern, allow_nan=allow_nan,
                        block=block, on_error="skip" if skip_bad else "raise")


def _fmt(value: float) -> str:
    return f"{value:.6g}"


def summarize(spectra, lab_report=None) -> dict:
    """The facts ``inspect`` prints, as plain JSON-ready values."""
    import numpy as np

    detected = getattr(spectra, "detected", {}) or {}
    missing = spectra.missing_by_sample()
    meta = spectra.meta
    steps = np.abs(np.diff(spectra.axis))
    summary = {
        "source": str(spectra.source),
        "format": detected.get("format"),
        "n_samples": int(spectra.n_samples),
        "n_points": int(spectra.n_points),
        "axis_unit": spectra.unit,
        "axis_min": float(spectra.axis.min()),
        "axis_max": float(spectra.axis.max()),
        "axis_first": float(spectra.axis[0]),
        "axis_last": float(spectra.axis[-1]),
        "axis_step_mean": float(steps.mean()),
        "unit_from": detected.get("unit_from"),
        "column_prefix": detected.get("prefix") or None,
        "n_missing": int(np.isnan(spectra.values).sum()),
        "samples_with_missing": sorted(missing),
        "meta_columns": [str(c) for c in meta.columns],
        "missing_meta": {str(c): int(meta[c].isna().sum()) for c in meta.columns if meta[c].isna().any()},
        "first_ids": [str(i) for i in spectra.ids[:5]],
    }
    if detected.get("format") == "opus-folder":
        summary["files"] = int(detected.get("files", 0))
        summary["failures"] = [{"file": f, "reason": r} for f, r in detected.get("failures", [])]
        summary["aligned_files"] = list(detected.get("aligned", []))
        summary["axis_from"] = detected.get("axis_from")
    if lab_report is not None:
        summary["lab"] = lab_report.to_dict()
        summary["ids_without_lab"] = list(lab_report.only_in_spectra)
        summary["lab_ids_without_spectra"] = list(lab_report.only_in_lab)
    return summary


def _ids(ids, limit: int = 8) -> str:
    ids = list(ids)
    more = f" (+{len(ids) - limit} more)" if len(ids) > limit else ""
    return ", ".join(map(str, ids[:limit])) + more if ids else "none"


def _print_summary(summary: dict, plot) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="spectra", show_header=True, header_style="bold")
    table.add_column("field", style="cyan", no_wrap=True)
    table.add_column("value")
    unit = summary["axis_unit"]
    rows = [
        ("source", summary["source"]),
        ("format", str(summary["format"])),
        ("samples", str(summary["n_samples"])),
        ("points", str(summary["n_points"])),
        ("axis", f"{_fmt(summary['axis_first'])} -> {_fmt(summary['axis_last'])} {unit} "
                 f"(mean step {_fmt(summary['axis_step_mean'])})"),
        ("unit from", str(summary["unit_from"])),
    ]
    if summary.get("column_prefix"):
        rows.append(("column prefix", summary["column_prefix"]))
    rows.append(("missing values", f"{summary['n_missing']} in {len(summary['samples_with_missing'])} sample(s)"
                 + (f": {_ids(summary['samples_with_missing'])}" if summary["samples_with_missing"] else "")))
    if summary["format"] in ("csv", "parquet"):
        meta = summary["meta_columns"]
        rows.append(("metadata columns", ", ".join(meta) if meta else "none"))
        if summary["missing_meta"]:
            rows.append(("missing metadata", ", ".join(f"{c}: {n}" for c, n in summary["missing_meta"].items())))
    if "files" in summary:
        rows.append(("OPUS files", str(summary["files"])))
        rows.append(("axis taken from", str(summary["axis_from"])))
        if summary["aligned_files"]:
            rows.append(("resampled onto it", _ids(summary["aligned_files"])))
        if summary["failures"]:
            rows.append(("skipped (unreadable)", "; ".join(f"{f['file']}: {f['reason']}"
                                                           for f in summary["failures"][:5])))
    if "lab" in summary:
        lab = summary["lab"]
        rows.append(("lab rows", f"{lab['n_matched']} of {lab['n_spectra']} spectra matched ({lab['n_lab']} lab rows)"))
        rows.append(("ids without lab values", _ids(summary["ids_without_lab"])))
        rows.append(("lab ids without spectra", _ids(summary["lab_ids_without_spectra"])))
    if plot is not None:
        rows.append(("plot", str(plot)))
    for field, value in rows:
        table.add_row(field, value)
    Console().print(table)


@spectra_app.command("inspect")
def inspect(
    path: PathArg,
    id_col: IdCol = "sample_id",
    unit: Unit = None,
    lab: Lab = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a table.")] = False,
    plot: Annotated[Optional[Path], typer.Option("--plot", help="Also draw the spectra into this .png.")] = None,
    id_pattern: IdPattern = None,
    block: Block = "absorbance",
    skip_bad: SkipBad = False,
) -> None:
    """Summarise spectra: samples, points, axis range and unit, missing values, lab matches."""
    if plot is not None:
        from soilcarbon.spectral.plot import check_plot

        check_plot(plot)
    spectra = _read(path, id_col, unit, id_pattern, block, skip_bad, allow_nan=True)
    report = None
    if lab is not None:
        from soilcarbon.spectral.lab import join_lab, read_lab

        _, report = join_lab(spectra, read_lab(lab, id_col=id_col), id_col=id_col)
    if plot is not None:
        from soilcarbon.spectral.plot import plot_spectra

        plot_spectra(spectra, plot)
    summary = summarize(spectra, report)
    if plot is not None:
        summary["plot"] = str(plot)
    if as_json:
        typer.echo(json.dumps(summary))
    else:
        _print_summary(summary, plot)


@spectra_app.command("convert")
def convert(
    path: PathArg,
    out: Annotated[Path, typer.Argument(help="Output Parquet file (must end in .parquet).")],
    id_col: IdCol = "sample_id",
    unit: Unit = None,
    lab: Lab = None,
    id_pattern: IdPattern = None,
    block: Block = "absorbance",
    skip_bad: SkipBad = False,
    allow_missing: Annotated[bool, typer.Option("--allow-missing",
                                                help="Keep spectra with missing values (NaN).")] = False,
) -> None:
    """Write any readable input as one Parquet table (id, metadata, one column per axis point)."""
    from soilcarbon.atomic import check_output

    if out.suffix.lower() != ".parquet":
        raise SoilCarbonError(f"{out}: the output must be a .parquet file; change its name to end in .parquet")
    if out.is_dir():
        raise SoilCarbonError(f"{out}: is a folder; pass a file name ending in .parquet")
    check_output(out, ("parquet",))
    spectra = _read(path, id_col, unit, id_pattern, block, skip_bad, allow_nan=allow_missing)
    note = ""
    if lab is not None:
        from soilcarbon.spectral.lab import join_lab, read_lab

        spectra, report = join_lab(spectra, read_lab(lab, id_col=id_col), id_col=id_col)
        note = f"; {report.summary()}"
    failures = (getattr(spectra, "detected", {}) or {}).get("failures") or []
    if failures:
        note += f"; skipped {len(failures)} unreadable file(s): {_ids(f for f, _ in failures)}"
    spectra.to_parquet(out, id_col=id_col)
    typer.echo(f"wrote {spectra.n_samples} samples x {spectra.n_points} points ({spectra.unit}) to {out}{note}")


def register(app: typer.Typer) -> None:
    """Add the ``spectra`` command group to the root app."""
    app.add_typer(spectra_app, name="spectra")
