"""``soilcarbon covariates extract`` and ``soilcarbon map`` (Typer + rich).

Both accept rasters as ``--rasters R1.tif R2.tif ...`` (the values after the first are taken as
arguments), as repeated ``--rasters``, or as every raster of a folder with ``--raster-dir``.
Bad input raises :class:`SoilCarbonError` (one ``error:`` line, exit code 2); outputs are
written atomically.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

from soilcarbon.errors import SoilCarbonError

covariates_app = typer.Typer(help="Covariates for training: raster values and spectral indices at sample points.",
                             no_args_is_help=True)

RASTERS_HELP = "Rasters (GeoTIFF...), any CRS: --rasters R1.tif R2.tif ..."
INDICES_HELP = "Spectral indices to add: ndvi, bsi, ndmi (comma-separated); needs --bands."
BANDS_HELP = "Band roles for indices: blue=NAME,red=NAME,nir=NAME,swir1=NAME (NAME: band column name)."


def _rasters(rasters, more, raster_dir):
    from soilcarbon.geo.extract import raster_files

    return raster_files(list(rasters or []) + list(more or []), raster_dir)


def _quiet_gdal() -> None:
    """GDAL warnings (routed by rasterio to logging) are not for the user; errors still raise."""
    import logging

    logging.getLogger("rasterio").setLevel(logging.ERROR)


def _check_output(output: Path, kind: str) -> None:
    from soilcarbon.atomic import check_output

    check_output(output, (kind,))


@covariates_app.command("extract")
def extract_command(
    more: Optional[List[Path]] = typer.Argument(None, metavar="[RASTERS]...", help="More rasters (following --rasters).",
                                               show_default=False),
    points: Path = typer.Option(..., "--points", help="Points table (CSV or Parquet) with an id and coordinates."),
    x: str = typer.Option(..., "--x", help="Column of x (longitude / easting)."),
    y: str = typer.Option(..., "--y", help="Column of y (latitude / northing)."),
    crs: str = typer.Option("EPSG:4326", "--crs", help="CRS of the points' coordinates."),
    rasters: Optional[List[Path]] = typer.Option(None, "--rasters", help=RASTERS_HELP, show_default=False),
    raster_dir: Optional[Path] = typer.Option(None, "--raster-dir", help="Use every raster in this folder."),
    indices: Optional[str] = typer.Option(None, "--indices", help=INDICES_HELP),
    bands: Optional[str] = typer.Option(None, "--bands", help=BANDS_HELP),
    id_col: str = typer.Option("sample_id", "--id-col", help="Id column of the points table (kept in the output)."),
    output: Path = typer.Option(..., "--output", "-o", help="Covariates table to write (CSV)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print nothing but errors."),
):
    """Sample every band of every raster at each point and write a covariates table.

    Columns: the id, x and y columns, one per band (band description, else <file stem>_<band>), then indices.

    Points outside a raster or on nodata are written empty and reported (count and ids).

    Train on it with --covariates COV.csv --lab LAB.csv --coords X,Y (the coordinates are then not covariates).

    Also writes COV.csv.json: the band naming, --indices and --bands, which train stores in the model for map.
    """
    from soilcarbon.atomic import atomic_path
    from soilcarbon.geo import extract as ex
    from soilcarbon.geo import indices as idx

    _quiet_gdal()
    index_names = idx.parse_indices(indices)
    band_roles = idx.parse_bands(bands)
    if index_names:
        idx.required_columns(index_names, band_roles)
    paths = _rasters(rasters, more, raster_dir)
    _check_output(output, "csv")
    point_crs = ex.parse_crs(crs)
    table = ex.read_points(points, x, y, id_col)
    result, report = ex.extract(table, x, y, point_crs, paths, id_col, source=str(points))
    if index_names:
        result = ex.add_indices(result, index_names, band_roles)
    sidecar = ex.provenance_path(output)
    with atomic_path(output) as tmp:
        result.to_csv(tmp, index=False)
        record = ex.provenance(paths, index_names, band_roles, tmp)
        with atomic_path(sidecar) as tmp_json:  # renamed just before the table
            tmp_json.write_text(json.dumps(record, indent=1) + "\n")
    console = Console(stderr=True, quiet=quiet)
    for line in report.lines():
        console.print(f"[yellow]note:[/] {line}", highlight=False, soft_wrap=True)
    n_columns = result.shape[1] - 3
    console.print(f"{len(result)} points x {n_columns} covariates from {len(paths)} rasters -> {output} "
                  f"(provenance: {sidecar.name})",
                  highlight=False, soft_wrap=True)


def map_command(
    more: Optional[List[Path]] = typer.Argument(None, metavar="[RASTERS]...", help="More rasters (following --rasters).",
                                               show_default=False),
    model_uri: str = typer.Option(..., "--model", help="Model URI, e.g. models:/soc-cov/1 or models:/NAME@champion."),
    rasters: Optional[List[Path]] = typer.Option(None, "--rasters", help=RASTERS_HELP, show_default=False),
    raster_dir: Optional[Path] = typer.Option(None, "--raster-dir", help="Use every raster in this folder."),
    output: Path = typer.Option(..., "--output", "-o", help="GeoTIFF to write (prediction, lower, upper, in_domain)."),
    level: Optional[float] = typer.Option(None, "--level", help="Interval level (default: the model's)."),
    block_size: int = typer.Option(512, "--block-size", help="Window size in pixels (multiple of 16)."),
    jobs: int = typer.Option(2, "--jobs", "-j", help="Worker processes (used for grids of 1 million pixels or more)."),
    resampling: Optional[str] = typer.Option(
        None, "--resampling", help="nearest | bilinear: how rasters on other grids are warped onto the first "
        "raster's grid (default bilinear)."),
    indices: Optional[str] = typer.Option(None, "--indices", help=INDICES_HELP),
    bands: Optional[str] = typer.Option(None, "--bands", help=BANDS_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or summary."),
):
    """Map SOC with a covariates-only model over a stack of rasters.

    Writes a GeoTIFF on the first raster's grid: float32 bands prediction, lower, upper, in_domain (1/0).

    Nodata wherever an input is nodata. Bands are matched to the model's covariates by the names `covariates extract` gives;
    indices and band roles default to those the model was trained with (recorded by covariates extract).
    """
    from soilcarbon.geo import indices as idx
    from soilcarbon.geo import mapping
    from soilcarbon.progress import Progress

    _quiet_gdal()
    index_names = idx.parse_indices(indices)
    band_roles = idx.parse_bands(bands)
    mapping.check_block_size(block_size)
    if level is not None and not 0 < level < 1:
        raise SoilCarbonError(f"--level must be between 0 and 1, got {level}")
    if jobs < 1:
        raise SoilCarbonError(f"--jobs must be at least 1, got {jobs}")
    if resampling is not None and resampling not in mapping.RESAMPLING:
        raise SoilCarbonError(f"--resampling must be nearest or bilinear, got {resampling!r}")
    paths = _rasters(rasters, more, raster_dir)
    _check_output(output, "tif")
    mapping.check_grid(paths, resampling)  # cheap checks before loading the model
    model, resolved_uri = mapping.load_covariate_model(model_uri)
    plan = mapping.plan_stack(paths, model.layout.covariates, resampling, index_names, band_roles,
                              model_name=f"model {model_uri}", trained=model.info.get("covariate_provenance"))
    console = Console(stderr=True, quiet=quiet)
    for note in plan.notes:
        console.print(f"note: {note}", highlight=False, soft_wrap=True)
    with Progress(quiet, "mapping") as progress:
        report = mapping.make_map(model, plan, output, level, block_size, jobs, progress,
                                  tags={"model": resolved_uri, "unit": model.info.get("target_unit", "")})
    if report.unused:
        console.print(f"note: bands not used by the model: {', '.join(report.unused[:12])}", highlight=False,
                      soft_wrap=True)
    rate = report.width * report.height / max(report.seconds, 1e-9)
    console.print(
        f"{output}: {report.width} x {report.height} pixels, {report.n_valid} predicted, {report.n_nodata} nodata, "
        f"{report.n_out_of_domain} outside the model's domain; {report.seconds:.1f} s ({rate:,.0f} pixels/s, "
        f"{report.jobs} process{'es' if report.jobs > 1 else ''})",
        highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.add_typer(covariates_app, name="covariates")
    app.command("map")(map_command)
