"""SOC maps: a covariates-only model applied to every pixel of a stack of aligned rasters.

The raster bands are matched to the model's covariates by the naming rule of
:mod:`soilcarbon.geo.extract` (band description, else ``<file stem>_<band>``), optionally with
spectral indices computed from named bands (:mod:`soilcarbon.geo.indices`). The stack is
processed window by window (``block_size`` x ``block_size`` pixels), so memory stays bounded
whatever the raster size; windows are predicted by a pool of ``jobs`` worker processes (threads
do not help: LightGBM prediction and the neighbour search of the interval model do not run
concurrently in one process), each holding the model and its own open rasters, while the main
process writes finished windows. At most two windows per worker are in flight.

Output: a tiled GeoTIFF on the first raster's grid with four float32 bands ``prediction``,
``lower``, ``upper`` (interval at ``level``) and ``in_domain`` (1 inside the model's
applicability domain, 0 outside), nodata (NaN) wherever any input band is nodata or NaN. It is
written through :func:`soilcarbon.atomic.atomic_path`: an error or interrupt leaves no file.

Rasters on another grid than the first raster's (CRS, transform, size) are warped onto it with
``rasterio.vrt.WarpedVRT`` using ``resampling`` ("nearest" or "bilinear"; default bilinear, as
covariate bands are continuous; the command says so and the GeoTIFF's ``resampling`` tag records
it); pixels they do not cover become nodata. Rasters that do not overlap the first one are refused.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from soilcarbon.errors import SoilCarbonError
from soilcarbon.geo.extract import band_names, open_raster

OUTPUT_BANDS = ("prediction", "lower", "upper", "in_domain")
PREDICT_ROWS = 65_536  # pixels per predict_matrix call
RESAMPLING = ("nearest", "bilinear")
DEFAULT_RESAMPLING = "bilinear"  # covariate bands (reflectance, elevation, climate) are continuous


def warp_note(paths: list[Path], warp: list[bool], resampling: str | None, chosen: bool) -> str:
    """One line saying which rasters were warped onto the first raster's grid and how ('' if none)."""
    warped = [Path(p).name for p, w in zip(paths, warp) if w]
    if not warped:
        return ""
    how = resampling + ("" if chosen else " by default; --resampling nearest for categorical bands")
    return f"{', '.join(warped)} warped onto {Path(paths[0]).name}'s grid ({how})"


def load_covariate_model(uri: str):
    """``(SOCModel, resolved URI models:/NAME/VERSION)`` behind an MLflow model URI; refuses models
    that need spectra."""
    from mlflow.exceptions import MlflowException

    from soilcarbon import registry

    found = registry.load(uri)
    try:
        model = found.pyfunc.unwrap_python_model().model
    except (AttributeError, MlflowException) as exc:
        raise SoilCarbonError(f"model {uri!r} is not a soilcarbon model") from exc
    if model.layout.n_spectral:
        raise SoilCarbonError(
            f"model {uri!r} needs spectra ({model.layout.n_spectral} spectral points); "
            "maps need a covariates-only model (train with --covariates only)"
        )
    if not model.layout.covariates:
        raise SoilCarbonError(f"model {uri!r} has no covariates to read from rasters")
    return model, found.uri


@dataclass
class Grid:
    """The output grid: the first raster's CRS, transform and size."""

    crs: object
    transform: object
    width: int
    height: int


@dataclass
class StackPlan:
    """Which band of which raster provides each model covariate, and how rasters are read."""

    grid: Grid
    paths: list
    warp: list  # per path: read through a WarpedVRT onto the grid
    resampling: str | None
    inputs: dict  # covariate or band-role column name -> BandRef
    covariates: list
    indices: list = field(default_factory=list)
    roles: dict = field(default_factory=dict)  # band role -> column name (for indices)
    unused: list = field(default_factory=list)
    notes: list = field(default_factory=list)  # what was decided for the user (trained indices, warping)


def check_grid(paths: list[Path], resampling: str | None) -> tuple[Grid, list[bool]]:
    """The first raster's grid and, per raster, whether it must be warped onto it.

    Raises for rasters that do not overlap the first. Other grid differences (CRS, resolution,
    extent) are warped with ``resampling`` (default :data:`DEFAULT_RESAMPLING`, see
    :func:`resampling_note`).
    """
    from rasterio.warp import transform_bounds

    if resampling is not None and resampling not in RESAMPLING:
        raise SoilCarbonError(f"--resampling must be nearest or bilinear, got {resampling!r}")
    with open_raster(paths[0]) as first:
        grid = Grid(first.crs, first.transform, first.width, first.height)
        first_bounds = first.bounds
    warp = [False]
    for path in paths[1:]:
        with open_raster(path) as ds:
            left, bottom, right, top = transform_bounds(ds.crs, grid.crs, *ds.bounds, densify_pts=21)
            if not (left < first_bounds.right and right > first_bounds.left
                    and bottom < first_bounds.top and top > first_bounds.bottom):
                raise SoilCarbonError(
                    f"{path} does not overlap {paths[0]} (bounds {tuple(round(v, 4) for v in (left, bottom, right, top))} "
                    f"vs {tuple(round(v, 4) for v in first_bounds)} in {grid.crs.to_string()}); "
                    "map only rasters that cover the same area"
                )
            same = (ds.crs == grid.crs and ds.transform.almost_equals(grid.transform)
                    and ds.width == grid.width and ds.height == grid.height)
            warp.append(not same)
    return grid, warp


def trained_indices(trained: dict | None, covariates: list[str], indices: list[str], bands: dict[str, str],
                    band_columns: set, model_name: str = "the model") -> tuple[list[str], dict, list[str]]:
    """The indices and band roles to compute: by default those the model was trained with
    (``trained``: the provenance ``covariates extract`` recorded, kept in ``model.info``).

    Explicit ``indices`` / ``bands`` override. A mismatch is an error: an index the model was not
    trained with, or a band role that names another band than in training while the rasters still
    have the trained one (a role may name a new band only when the trained band is absent, e.g.
    renamed files). Returns ``(indices, bands, notes)``.
    """
    from soilcarbon.geo.indices import required_columns

    trained = trained or {}
    trained_idx = [i for i in trained.get("indices", []) if i in covariates]
    trained_bands = dict(trained.get("bands", {}))
    notes = []
    if indices and trained:
        extra = [i for i in indices if i not in trained_idx]
        if extra:
            raise SoilCarbonError(
                f"--indices {','.join(indices)}: {model_name} was not trained with {', '.join(extra)} "
                f"(trained with: {', '.join(trained_idx) or 'no indices'}); drop --indices to use the model's"
            )
    for role, column in bands.items():
        before = trained_bands.get(role)
        if before is not None and before != column:
            if before in band_columns:
                raise SoilCarbonError(
                    f"--bands {role}={column}: {model_name} was trained with {role}={before} (covariates extract), "
                    f"and the rasters have {before!r}; drop --bands to use the trained mapping"
                )
            notes.append(f"--bands {role}={column} replaces {role}={before} (not in these rasters) of training")
    chosen = list(indices) if indices else trained_idx
    merged = {**trained_bands, **bands}
    if trained_idx and not indices:
        roles = required_columns(trained_idx, merged)
        notes.append(f"indices {', '.join(trained_idx)} from {', '.join(f'{r}={c}' for r, c in roles.items())} "
                     "as in training")
    return chosen, merged, notes


def plan_stack(paths: list[Path], covariates: list[str], resampling: str | None = None,
               indices: list[str] | None = None, bands: dict[str, str] | None = None,
               model_name: str = "the model", trained: dict | None = None) -> StackPlan:
    """Match model covariates to raster bands (and indices); check the rasters' grids.

    ``trained``: the model's recorded indices and band roles (see :func:`trained_indices`).
    """
    from soilcarbon.geo import indices as idx

    refs = band_names(paths)
    by_name = {r.name: r for r in refs}
    indices, bands, notes = trained_indices(trained, covariates, list(indices or []), dict(bands or {}),
                                            set(by_name), model_name)
    roles = idx.required_columns(indices, bands)
    for name in indices:
        if name in by_name:
            raise SoilCarbonError(f"index {name!r} clashes with a raster band of the same name ({by_name[name].path})")
    for role, column in roles.items():
        if column not in by_name:
            raise SoilCarbonError(
                f"--bands {role}={column}: no raster band named {column!r}; bands: {', '.join(list(by_name)[:15])}"
            )
    provided = set(by_name) | set(indices)
    missing = [c for c in covariates if c not in provided]
    if missing:
        raise SoilCarbonError(
            f"{model_name} needs covariate(s) {', '.join(missing[:8])} that the rasters do not provide; "
            f"the rasters give {', '.join(sorted(provided)[:15])} (band description, else <file stem>_<band>)"
        )
    grid, warp = check_grid(paths, resampling)
    chosen = resampling is not None
    if resampling is None and any(warp):
        resampling = DEFAULT_RESAMPLING
    needed = {c: by_name[c] for c in covariates if c in by_name}
    needed.update({column: by_name[column] for column in roles.values()})
    unused = [r.name for r in refs if r.name not in needed]
    notes.append(warp_note(paths, warp, resampling, chosen))
    return StackPlan(grid, list(paths), warp, resampling, needed, list(covariates),
                     [i for i in indices if i in covariates], roles, unused, [n for n in notes if n])


def windows(width: int, height: int, block_size: int):
    """Row-major ``block_size`` windows covering the grid."""
    from rasterio.windows import Window

    for row in range(0, height, block_size):
        for col in range(0, width, block_size):
            yield Window(col, row, min(block_size, width - col), min(block_size, height - row))


class WindowPredictor:
    """Reads one window of every needed band and predicts it; thread-safe (one set of open
    datasets per thread)."""

    def __init__(self, model, plan: StackPlan, level: float):
        self.model = model
        self.plan = plan
        self.level = level
        self._local = threading.local()
        self._opened = []
        self._lock = threading.Lock()

    def _datasets(self) -> dict:
        handles = getattr(self._local, "handles", None)
        if handles is None:
            from rasterio.enums import Resampling
            from rasterio.vrt import WarpedVRT

            handles = {}
            grid = self.plan.grid
            for path, warp in zip(self.plan.paths, self.plan.warp):
                ds = open_raster(path)
                opened = [ds]
                alpha = None
                if warp:  # without a nodata value, an alpha band marks the pixels the raster does not cover
                    ds = WarpedVRT(ds, crs=grid.crs, transform=grid.transform, width=grid.width,
                                   height=grid.height, resampling=Resampling[self.plan.resampling],
                                   add_alpha=ds.nodata is None)
                    opened.append(ds)
                    alpha = ds.count if opened[0].nodata is None else None
                handles[Path(path)] = (ds, alpha)
                with self._lock:
                    self._opened.extend(opened)
            self._local.handles = handles
        return handles

    def close(self) -> None:
        with self._lock:
            for ds in reversed(self._opened):
                ds.close()
            self._opened.clear()

    def read(self, window) -> dict:
        """Column name -> 2-D float array of the window, NaN where nodata."""
        from rasterio.errors import RasterioError

        handles = self._datasets()
        out = {}
        uncovered = {}
        for name, ref in self.plan.inputs.items():
            ds, alpha = handles[ref.path]
            try:
                data = ds.read(ref.band, window=window, masked=True)
                if alpha is not None and ref.path not in uncovered:
                    uncovered[ref.path] = ds.read(alpha, window=window) == 0
            except RasterioError as exc:
                raise SoilCarbonError(
                    f"{ref.path}: cannot read band {ref.band} at rows {window.row_off}-"
                    f"{window.row_off + window.height - 1}, columns {window.col_off}-{window.col_off + window.width - 1} "
                    f"({' '.join(str(exc).split())[:120]}); the file may be truncated or corrupt"
                ) from exc
            out[name] = np.ma.filled(data.astype(np.float64), np.nan)
            if ref.path in uncovered:
                out[name][uncovered[ref.path]] = np.nan
        return out

    def covariate_matrix(self, arrays: dict) -> np.ndarray:
        """(pixels, covariates) in the model's covariate order (:func:`soilcarbon.models.matrix.covariate_block`),
        indices computed on the fly."""
        from soilcarbon.geo import indices as idx
        from soilcarbon.models.matrix import covariate_block

        columns = dict(arrays)
        bands = {role: arrays[col] for role, col in self.plan.roles.items()}
        for name in self.plan.covariates:
            if name in self.plan.indices:
                columns[name] = idx.compute(name, bands)
        return covariate_block(self.plan, columns)

    def __call__(self, window) -> tuple[object, np.ndarray, int, int]:
        """(window, float32 array (4, h, w), valid pixels, out-of-domain pixels)."""
        arrays = self.read(window)
        X = self.covariate_matrix(arrays)
        shape = (int(window.height), int(window.width))
        out = np.full((4,) + shape, np.nan, dtype=np.float32)
        valid = np.isfinite(X).all(axis=1)
        n_valid = int(valid.sum())
        outside = 0
        rows = np.flatnonzero(valid)
        for start in range(0, n_valid, PREDICT_ROWS):  # the interval model's neighbour search needs
            chunk = rows[start:start + PREDICT_ROWS]    # ~1 kB per row: predict in bounded chunks
            predicted = self.model.predict_matrix(X[chunk], self.level)
            for band, column in enumerate(OUTPUT_BANDS):
                out[band].reshape(-1)[chunk] = predicted[column].to_numpy(dtype=np.float32)
            outside += int(len(chunk) - predicted["in_domain"].sum())
        return window, out, n_valid, outside


_WORKER: WindowPredictor | None = None


def _init_worker(model, plan: StackPlan, level: float, log_level: int, parent_pid: int) -> None:
    """Worker process set-up: exit with the parent, one BLAS/OpenMP thread per process, the model,
    its own rasters, and the parent's logging level for rasterio (GDAL messages)."""
    global _WORKER
    import logging

    from threadpoolctl import threadpool_limits

    from soilcarbon.process import die_with_parent

    die_with_parent(parent_pid)

    logging.getLogger("rasterio").setLevel(log_level)
    threadpool_limits(1)
    _WORKER = WindowPredictor(model, plan, level)


def _predict_window(offsets: tuple) -> tuple:
    from rasterio.windows import Window

    window, data, valid, outside = _WORKER(Window(*offsets))
    return offsets, data, valid, outside


@dataclass
class MapReport:
    """What a map run did."""

    output: Path
    width: int
    height: int
    n_windows: int
    n_valid: int
    n_out_of_domain: int
    seconds: float
    unused: list
    jobs: int = 1

    @property
    def n_nodata(self) -> int:
        return self.width * self.height - self.n_valid


def check_block_size(block_size: int) -> int:
    block_size = int(block_size)
    if block_size < 16 or block_size > 8192 or block_size % 16:
        raise SoilCarbonError(f"--block-size must be a multiple of 16 between 16 and 8192 (e.g. 512), got {block_size}")
    return block_size


POOL_MIN_PIXELS = 1_000_000  # below this, starting worker processes (seconds each) costs more than it saves


def make_map(model, plan: StackPlan, output: Path, level: float | None = None, block_size: int = 512,
             jobs: int = 2, progress=None, tags: dict | None = None,
             pool_min_pixels: int = POOL_MIN_PIXELS) -> MapReport:
    """Predict every pixel of the stack and write the 4-band GeoTIFF atomically.

    ``jobs`` worker processes are used when the grid has at least ``pool_min_pixels`` pixels and
    more than one window; otherwise windows are predicted in this process. ``progress`` is an
    optional callable ``progress(total=None, advance=0, description=None)``.
    """
    import rasterio
    from rasterio.windows import Window

    from soilcarbon.atomic import atomic_path

    started = time.perf_counter()
    block_size = check_block_size(block_size)
    level = model.check_level(model.level if level is None else level)
    jobs = max(1, int(jobs))
    grid = plan.grid
    tile = 256 if block_size % 256 == 0 else block_size
    profile = dict(driver="GTiff", dtype="float32", count=len(OUTPUT_BANDS), width=grid.width, height=grid.height,
                   crs=grid.crs, transform=grid.transform, nodata=np.nan, tiled=True, blockxsize=tile,
                   blockysize=tile, compress="deflate", predictor=3, BIGTIFF="IF_SAFER")
    all_windows = list(windows(grid.width, grid.height, block_size))
    if grid.width * grid.height < pool_min_pixels:
        jobs = 1
    jobs = min(jobs, len(all_windows))
    if progress is not None:
        progress(total=len(all_windows), description="mapping")
    predictor = WindowPredictor(model, plan, level)
    n_valid = n_outside = 0
    try:
        with atomic_path(output) as tmp, rasterio.open(tmp, "w", **profile) as dst:
            for band, name in enumerate(OUTPUT_BANDS, start=1):
                dst.set_band_description(band, name)
            dst.update_tags(level=f"{level:g}", target=model.target, **(tags or {}))
            if any(plan.warp):
                dst.update_tags(resampling=plan.resampling)

            def write(result):
                nonlocal n_valid, n_outside
                window, data, valid, outside = result
                if isinstance(window, tuple):
                    window = Window(*window)
                dst.write(data, window=window)
                n_valid += valid
                n_outside += outside
                if progress is not None:
                    progress(advance=1)

            if jobs == 1:
                for window in all_windows:
                    write(predictor(window))
            else:
                context = multiprocessing.get_context("spawn")  # no fork of a process with threads/OpenMP
                with ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=_init_worker,
                                         initargs=(model, plan, level, logging.getLogger("rasterio").level,
                                                   os.getpid())) as pool:
                    pending = set()
                    try:
                        for window in all_windows:  # at most 2 windows per worker in flight: bounded memory
                            pending.add(pool.submit(_predict_window, window.flatten()))
                            if len(pending) >= 2 * jobs:
                                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                                for future in done:
                                    write(future.result())
                        for future in pending:
                            write(future.result())
                    except BaseException:
                        for future in pending:
                            future.cancel()
                        raise
    finally:
        predictor.close()
    return MapReport(Path(output), grid.width, grid.height, len(all_windows), n_valid, n_outside,
                     time.perf_counter() - started, plan.unused, jobs)
