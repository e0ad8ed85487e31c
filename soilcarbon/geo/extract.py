"""Covariates at sample locations: every band of every raster sampled at each point (rasterio).

Points come in any CRS (default EPSG:4326, x = longitude, y = latitude) and are reprojected to
each raster's CRS with ``rasterio.warp.transform``; a point takes the value of the pixel that
contains it (no interpolation), the convention of ``rasterio.sample``.

Column naming (shared with ``soilcarbon map`` so a model trained on extracted covariates finds
its inputs in the same rasters): a band's description when the raster has one, otherwise
``<raster file stem>_<band number>`` (``dem.tif`` band 1 -> ``dem_1``). When two rasters give a
band the same description, both become ``<stem>_<description>``. Points outside a raster, or on
a nodata / NaN pixel, get empty values and are reported (count and ids).
"""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from soilcarbon.errors import SoilCarbonError
from soilcarbon.spectral.lab import checked_ids

RASTER_SUFFIXES = (".tif", ".tiff", ".vrt", ".img", ".jp2")


@dataclass(frozen=True)
class BandRef:
    """One raster band and the covariate name it provides."""

    path: Path
    band: int
    name: str


def raster_files(rasters: list[Path] | None, raster_dir: Path | None) -> list[Path]:
    """The rasters to use, from explicit paths or every visible raster file in a folder (sorted)."""
    rasters = [Path(p) for p in (rasters or [])]
    if rasters and raster_dir:
        raise SoilCarbonError("give --rasters or --raster-dir, not both")
    if raster_dir is not None:
        raster_dir = Path(raster_dir)
        if not raster_dir.is_dir():
            raise SoilCarbonError(f"{raster_dir}: not a folder (--raster-dir)")
        rasters = sorted(p for p in raster_dir.iterdir()  # hidden files (e.g. unfinished outputs) are skipped
                         if p.is_file() and p.suffix.lower() in RASTER_SUFFIXES and not p.name.startswith("."))
        if not rasters:
            raise SoilCarbonError(f"{raster_dir}: no raster files ({', '.join(RASTER_SUFFIXES)})")
    if not rasters:
        raise SoilCarbonError("no rasters given; use --rasters R1.tif R2.tif ... or --raster-dir DIR")
    for path in rasters:
        if not path.is_file():
            raise SoilCarbonError(f"{path}: no such raster file")
    seen = Counter(p.resolve() for p in rasters)
    dup = [p for p, n in seen.items() if n > 1]
    if dup:
        raise SoilCarbonError(f"{dup[0]}: raster given twice")
    return rasters


def open_raster(path: Path):
    """``rasterio.open`` with a one-line error for unreadable files and rasters without a CRS."""
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

    try:
        with warnings.catch_warnings():  # a raster without georeferencing is refused below, not warned about
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            dataset = rasterio.open(path)
    except RasterioIOError as exc:
        raise SoilCarbonError(f"{path}: not a readable raster ({' '.join(str(exc).split())[:200]})") from exc
    if dataset.crs is None:
        dataset.close()
        raise SoilCarbonError(f"{path}: raster has no coordinate reference system; assign one (gdal_edit.py -a_srs)")
    return dataset


def band_names(paths: list[Path]) -> list[BandRef]:
    """Covariate name of every band of every raster (see the module docstring for the rule)."""
    raw = []
    for path in paths:
        with open_raster(path) as ds:
            for band in range(1, ds.count + 1):
                description = (ds.descriptions[band - 1] or "").strip()
                raw.append((Path(path), band, description))
    described = Counter(d for _, _, d in raw if d)
    refs = []
    for path, band, description in raw:
        if not description:
            name = f"{path.stem}_{band}"
        elif described[description] > 1:
            name = f"{path.stem}_{description}"
        else:
            name = description
        refs.append(BandRef(path, band, name))
    counts = Counter(r.name for r in refs)
    for ref in refs:
        if counts[ref.name] > 1:
            other = next(r for r in refs if r.name == ref.name and r != ref)
            raise SoilCarbonError(
                f"{ref.path} band {ref.band} and {other.path} band {other.band} both give the column "
                f"{ref.name!r}; rename one of the files or set distinct band descriptions"
            )
    return refs


def parse_crs(text: str):
    """A rasterio CRS from ``EPSG:4326``, a WKT or PROJ string; error names the bad value."""
    import rasterio
    from rasterio.crs import CRS
    from rasterio.errors import CRSError

    try:
        with rasterio.Env():  # routes PROJ's own "ERROR 1: crs not found" to logging instead of stderr
            return CRS.from_user_input(text)
    except (CRSError, ValueError) as exc:
        raise SoilCarbonError(f"--crs {text!r} is not a coordinate reference system (e.g. EPSG:4326)") from exc


def read_points(path: Path, x: str, y: str, id_col: str) -> pd.DataFrame:
    """The points table (CSV or Parquet) with a string id column and numeric x / y columns."""
    path = Path(path)
    if not path.is_file():
        raise SoilCarbonError(f"{path}: no such points file")
    try:
        frame = pd.read_parquet(path) if path.suffix.lower() == ".parquet" else pd.read_csv(path)
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise SoilCarbonError(f"{path}: cannot read the points table ({' '.join(str(exc).split())[:160]})") from exc
    for column, option in ((id_col, "--id-col"), (x, "--x"), (y, "--y")):
        if column not in frame.columns:
            raise SoilCarbonError(
                f"{path}: column {column!r} ({option}) not found; columns: {', '.join(map(str, frame.columns[:12]))}"
            )
    if frame.empty:
        raise SoilCarbonError(f"{path}: no points")
    frame = frame.copy()
    frame[id_col] = checked_ids(frame, id_col, str(path), "points")
    for column in (x, y):
        values = pd.to_numeric(frame[column], errors="coerce")
        bad = values.isna()
        if bad.any():
            raise SoilCarbonError(
                f"{path}: point {frame[id_col][bad].iloc[0]!r} has no numeric {column!r} "
                f"(value {frame[column][bad].iloc[0]!r}); every point needs coordinates"
            )
        frame[column] = values.astype(float)
    return frame


def _pixel_values(ds, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """(n, bands) float values at pixel (row, col), NaN where masked (nodata) or NaN."""
    from rasterio.windows import Window

    out = np.full((len(rows), ds.count), np.nan)
    if not len(rows):
        return out
    r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    if (r1 - r0) * (c1 - c0) <= 4_000_000:  # one read of the points' bounding window
        block = ds.read(window=Window(c0, r0, c1 - c0, r1 - r0), masked=True)
        values = np.ma.filled(block.astype(float), np.nan)[:, rows - r0, cols - c0].T
        out[:] = values
    else:  # sparse points over a large raster: one pixel read per point
        for i, (row, col) in enumerate(zip(rows, cols)):
            pixel = ds.read(window=Window(int(col), int(row), 1, 1), masked=True)
            out[i] = np.ma.filled(pixel.astype(float), np.nan)[:, 0, 0]
    return out


def reproject_points(src_crs, dst_crs, xs, ys) -> tuple[np.ndarray, np.ndarray]:
    """Points from ``src_crs`` to ``dst_crs``; points the projection cannot take become NaN."""
    from rasterio.warp import transform

    try:
        rx, ry = transform(src_crs, dst_crs, xs, ys)
        return np.asarray(rx, dtype=float), np.asarray(ry, dtype=float)
    except Exception:  # noqa: BLE001 - PROJ refuses the whole batch (e.g. latitude > 90); retry point by point
        rx, ry = np.full(len(xs), np.nan), np.full(len(xs), np.nan)
        for i, (x, y) in enumerate(zip(xs, ys)):
            try:
                (rx[i],), (ry[i],) = transform(src_crs, dst_crs, [x], [y])
            except Exception:  # noqa: BLE001 - this point is outside the projection's domain
                pass
        return rx, ry


@dataclass
class ExtractReport:
    """What extraction found: per raster, the ids of points outside it or on nodata."""

    n_points: int
    columns: list
    outside: dict = field(default_factory=dict)
    nodata: dict = field(default_factory=dict)
    outside_all: list = field(default_factory=list)

    @staticmethod
    def _ids(ids: list, limit: int = 10) -> str:
        shown = ", ".join(map(str, ids[:limit]))
        return shown + (f", ... ({len(ids) - limit} more)" if len(ids) > limit else "")

    def lines(self) -> list[str]:
        out = []
        if self.outside_all:
            out.append(f"{len(self.outside_all)} of {self.n_points} points are outside every raster "
                       f"(written empty): {self._ids(self.outside_all)}")
        for raster, ids in self.outside.items():
            if ids and len(ids) != len(self.outside_all):
                out.append(f"{raster}: {len(ids)} points outside (written empty): {self._ids(ids)}")
        for raster, ids in self.nodata.items():
            if ids:
                out.append(f"{raster}: {len(ids)} points on nodata (written empty): {self._ids(ids)}")
        return out


def extract(points: pd.DataFrame, x: str, y: str, crs, rasters: list[Path], id_col: str = "sample_id",
            source: str = "points") -> tuple[pd.DataFrame, ExtractReport]:
    """Sample every band of every raster at each point.

    Returns the table ``[id, x, y, <band columns>]`` (NaN where a point is outside a raster or on
    nodata) and a report. Raises when no point falls on any raster.
    """
    refs = band_names(rasters)
    names = [r.name for r in refs]
    clash = [n for n in names if n in (id_col, x, y)]
    if clash:
        raise SoilCarbonError(f"raster band column {clash[0]!r} has the name of a points column; rename the raster")
    xs = points[x].to_numpy(dtype=float)
    ys = points[y].to_numpy(dtype=float)
    ids = points[id_col].astype(str).to_numpy()
    table = pd.DataFrame({id_col: ids, x: xs, y: ys})
    columns = {}
    report = ExtractReport(len(points), names)
    anywhere = np.zeros(len(points), dtype=bool)
    for path in rasters:
        with open_raster(path) as ds:
            rx, ry = (xs, ys) if ds.crs == crs else reproject_points(crs, ds.crs, xs, ys)
            with np.errstate(invalid="ignore", over="ignore"):
                inv = ~ds.transform  # pixel containing the point, as rasterio.transform.rowcol (floor)
                fcol = np.floor(inv.a * rx + inv.b * ry + inv.c)
                frow = np.floor(inv.d * rx + inv.e * ry + inv.f)
                inside = (frow >= 0) & (frow < ds.height) & (fcol >= 0) & (fcol < ds.width)  # False for NaN
            rows = np.where(inside, frow, -1).astype(np.int64)
            cols = np.where(inside, fcol, -1).astype(np.int64)
            values = np.full((len(xs), ds.count), np.nan)
            values[inside] = _pixel_values(ds, rows[inside], cols[inside])
        anywhere |= inside
        report.outside[str(path)] = list(ids[~inside])
        report.nodata[str(path)] = list(ids[inside & np.isnan(values).any(axis=1)])
        for ref in (r for r in refs if r.path == Path(path)):
            columns[ref.name] = values[:, ref.band - 1]
    if not anywhere.any():
        first = rasters[0]
        with open_raster(first) as ds:
            bounds, raster_crs = tuple(round(v, 4) for v in ds.bounds), ds.crs.to_string()
        raise SoilCarbonError(
            f"{source}: none of the {len(points)} points falls on any raster (first point {ids[0]} at "
            f"x={xs[0]:g}, y={ys[0]:g} in {crs.to_string()}; {first.name} covers {bounds} in {raster_crs}); "
            "check --x/--y (swapped?) and --crs"
        )
    report.outside_all = list(ids[~anywhere])
    table = pd.concat([table, pd.DataFrame(columns, index=table.index)], axis=1)
    return table, report


def add_indices(table: pd.DataFrame, indices: list[str], bands: dict[str, str]) -> pd.DataFrame:
    """Append the requested spectral indices, computed from the columns named in ``bands``."""
    from soilcarbon.geo import indices as idx

    needed = idx.required_columns(indices, bands)
    for role, column in needed.items():
        if column not in table.columns:
            raise SoilCarbonError(
                f"--bands {role}={column}: no raster band column named {column!r}; "
                f"columns: {', '.join(map(str, table.columns[3:15]))}"
            )
    table = table.copy()
    for name in indices:
        if name in table.columns:
            raise SoilCarbonError(f"index {name!r} clashes with a raster band column of the same name")
        table[name] = idx.compute(name, {role: table[col].to_numpy(dtype=float) for role, col in needed.items()})
    return table


# Provenance: what ``covariates extract`` did, in a JSON sidecar next to the table (``cov.csv`` ->
# ``cov.csv.json``) that ``train --covariates`` reads and stores in the model, so that ``map`` can
# compute the same indices from the same bands without being told again. The sidecar holds the
# table's SHA-256: a table rewritten after extraction is not silently paired with old provenance.

PROVENANCE_FORMAT = "soilcarbon covariates extract provenance 1"


def provenance_path(table: Path) -> Path:
    """The provenance sidecar of a covariates table: ``cov.csv`` -> ``cov.csv.json``."""
    table = Path(table)
    return table.with_name(table.name + ".json")


def file_sha256(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def provenance(rasters: list[Path], indices: list[str], bands: dict[str, str], table_file: Path) -> dict:
    """The provenance record of a covariates table written to ``table_file`` (already complete)."""
    from soilcarbon.geo import indices as idx

    roles = idx.required_columns(indices, bands) if indices else {}
    return {
        "format": PROVENANCE_FORMAT,
        "sha256": file_sha256(table_file),
        "naming": "band description, else <raster file stem>_<band number>",
        "columns": {r.name: {"raster": Path(r.path).name, "band": r.band} for r in band_names(rasters)},
        "indices": list(indices),
        "bands": dict(roles),
    }


def read_provenance(table: Path) -> dict | None:
    """The provenance of a covariates table (``None`` when it has no sidecar); an error when the
    sidecar is unreadable or belongs to another version of the table."""
    import json

    sidecar = provenance_path(table)
    if not sidecar.is_file():
        return None
    try:
        record = json.loads(sidecar.read_text())
        ok = record.get("format") == PROVENANCE_FORMAT
    except (ValueError, OSError, AttributeError) as exc:
        raise SoilCarbonError(f"{sidecar}: not a covariates provenance file ({exc}); delete it or re-run "
                              "covariates extract") from exc
    if not ok:
        raise SoilCarbonError(f"{sidecar}: not a covariates provenance file; delete it or re-run covariates extract")
    if record.get("sha256") != file_sha256(table):
        raise SoilCarbonError(
            f"{sidecar} was written for another version of {table} (the table changed after covariates "
            f"extract); re-run covariates extract, or delete {sidecar.name} to train without its provenance "
            "(then give map --indices and --bands)"
        )
    return record


def model_provenance(record: dict, covariates: list[str]) -> dict:
    """The part of a table's provenance a model trained on ``covariates`` keeps: the indices among
    its covariates, the band roles they need, and where each raster covariate came from."""
    from soilcarbon.geo import indices as idx

    used = [name for name in record.get("indices", []) if name in covariates]
    return {
        "indices": used,
        "bands": idx.required_columns(used, record.get("bands", {})) if used else {},
        "columns": {c: v for c, v in record.get("columns", {}).items() if c in covariates},
        "naming": record.get("naming", ""),
    }
