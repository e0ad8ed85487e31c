"""``soilcarbon covariates extract`` on small GeoTIFFs built here with known pixel values.

Rasters: ``a.tif`` (EPSG:32631, 10 m, 30 x 20, two int16 bands, value r*100+c and 5000+r*100+c,
nodata -1 at row 3 col 4), ``dem.tif`` (EPSG:4326, band described ``elevation``, value
r*30+c+0.5) and ``small.tif`` (EPSG:32631, 5 x 5 pixels in a.tif's top-left corner, value
7000+r*10+c). Expected values are the pixel (row, col) that contains each point, computed here
by floor((x - x0) / dx).
"""

from __future__ import annotations

import math
from functools import partial

import numpy as np
import pandas as pd
import pytest
import rasterio
from affine import Affine
from cli_helpers import cli_in_process, only_error_line
from rasterio.warp import transform as warp_transform

from soilcarbon.geo import indices

X0, Y0, RES = 500000.0, 5600000.0, 10.0
# (id, row, col) of a.tif pixel centres; P5 is far outside everything
PIXELS = [("P1", 0, 0), ("P2", 3, 4), ("P3", 19, 29), ("P4", 10, 15)]
OUTSIDE = ("P5", 600000.0, 5000000.0)
DEM_RES = (0.0002, 0.0001)


def from_origin(west, north, xsize, ysize):
    """North-up affine transform (rasterio.transform.from_origin without its deprecated operator)."""
    return Affine(xsize, 0.0, west, 0.0, -ysize, north)


def write_raster(path, bands, crs, transform, nodata=None, descriptions=None, dtype=None):
    bands = [np.asarray(b) for b in bands]
    with rasterio.open(path, "w", driver="GTiff", width=bands[0].shape[1], height=bands[0].shape[0],
                       count=len(bands), dtype=dtype or bands[0].dtype, crs=crs, transform=transform,
                       nodata=nodata) as dst:
        for i, band in enumerate(bands, start=1):
            dst.write(band.astype(dtype or band.dtype), i)
            if descriptions:
                dst.set_band_description(i, descriptions[i - 1])
    return path


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scene")
    rasters = folder / "rasters"
    rasters.mkdir()
    rows, cols = np.mgrid[0:20, 0:30]
    a1 = (rows * 100 + cols).astype(np.int16)
    a1[3, 4] = -1
    a2 = (5000 + rows * 100 + cols).astype(np.int16)
    write_raster(rasters / "a.tif", [a1, a2], "EPSG:32631", from_origin(X0, Y0, RES, RES), nodata=-1)
    # dem.tif in lon/lat, covering a.tif with a margin; origin rounded so its grid is independent
    lon, lat = warp_transform("EPSG:32631", "EPSG:4326", [X0, X0 + 300], [Y0, Y0 - 200])
    lon0, lat0 = math.floor(min(lon) * 1000) / 1000, math.ceil(max(lat) * 1000) / 1000
    dem_rows, dem_cols = np.mgrid[0:40, 0:40]
    write_raster(rasters / "dem.tif", [(dem_rows * 30 + dem_cols + 0.5).astype(np.float32)], "EPSG:4326",
                 from_origin(lon0, lat0, *DEM_RES), descriptions=["elevation"])
    (rasters / ".soc.tif.x1y2.part.tif").write_text("an unfinished output")  # hidden: --raster-dir skips it
    small_rows, small_cols = np.mgrid[0:5, 0:5]
    write_raster(rasters / "small.tif", [(7000 + small_rows * 10 + small_cols).astype(np.float32)],
                 "EPSG:32631", from_origin(X0, Y0, RES, RES))
    # points: pixel centres of a.tif, in UTM and in lon/lat
    utm_x = [X0 + (c + 0.5) * RES for _, _, c in PIXELS] + [OUTSIDE[1]]
    utm_y = [Y0 - (r + 0.5) * RES for _, r, _ in PIXELS] + [OUTSIDE[2]]
    ids = [p[0] for p in PIXELS] + [OUTSIDE[0]]
    lons, lats = warp_transform("EPSG:32631", "EPSG:4326", utm_x, utm_y)
    pd.DataFrame({"sample_id": ids, "easting": utm_x, "northing": utm_y}).to_csv(folder / "utm.csv", index=False)
    pd.DataFrame({"sample_id": ids, "lon": lons, "lat": lats}).to_csv(folder / "lonlat.csv", index=False)
    # expected dem value from the point's lon/lat, by hand
    expected_dem = {}
    for pid, x, y in zip(ids, lons, lats):
        fc, fr = (x - lon0) / DEM_RES[0], (lat0 - y) / DEM_RES[1]
        if pid != OUTSIDE[0]:
            assert 0.02 < fc % 1 < 0.98 and 0.02 < fr % 1 < 0.98, "test point too close to a dem pixel edge"
            expected_dem[pid] = math.floor(fr) * 30 + math.floor(fc) + 0.5
    return {"folder": folder, "rasters": rasters, "dem": expected_dem}


def expected_table(scene) -> pd.DataFrame:
    rows = []
    for pid, r, c in PIXELS:
        rows.append({"sample_id": pid, "a_1": np.nan if (r, c) == (3, 4) else r * 100 + c,
                     "a_2": 5000 + r * 100 + c, "elevation": scene["dem"][pid],
                     "small_1": 7000 + r * 10 + c if r < 5 and c < 5 else np.nan})
    rows.append({"sample_id": OUTSIDE[0], "a_1": np.nan, "a_2": np.nan, "elevation": np.nan, "small_1": np.nan})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("crs", ["EPSG:4326", "EPSG:32631"])
def test_extract_values_names_and_report(run_cli, scene, tmp_path, crs):
    rasters = scene["rasters"]
    if crs == "EPSG:4326":  # the default CRS, rasters listed after --rasters
        args = ["--points", scene["folder"] / "lonlat.csv", "--x", "lon", "--y", "lat",
                "--rasters", rasters / "a.tif", rasters / "dem.tif", rasters / "small.tif"]
    else:  # projected points, every raster of a folder (sorted: a, dem, small)
        args = ["--points", scene["folder"] / "utm.csv", "--x", "easting", "--y", "northing", "--crs", crs,
                "--raster-dir", rasters]
    output = tmp_path / "cov.csv"
    code, out, err = run_cli("covariates", "extract", *args, "--output", output)
    assert code == 0, err
    table = pd.read_csv(output)
    assert list(table.columns[3:]) == ["a_1", "a_2", "elevation", "small_1"]
    assert list(table.columns[:3]) == ["sample_id", *args[3:6:2]]
    expected = expected_table(scene)
    pd.testing.assert_frame_equal(table[expected.columns], expected, check_dtype=False, atol=1e-9)
    text = output.read_text().splitlines()
    assert text[-1].startswith("P5,") and text[-1].endswith(",,,,")  # empty, not 'nan'
    assert "1 of 5 points are outside every raster (written empty): P5" in err
    assert "a.tif: 1 points on nodata (written empty): P2" in err
    assert "small.tif: 3 points outside (written empty): P3, P4, P5" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cov.csv", "cov.csv.json"]  # table and its provenance


def test_extract_indices_and_duplicate_descriptions(run_cli, tmp_path):
    rows, cols = np.mgrid[0:20, 0:30]
    transform = from_origin(X0, Y0, RES, RES)
    blue = 0.05 + 0.001 * cols
    red = 0.1 + 0.002 * rows
    nir = np.full((20, 30), 0.4)
    swir1 = np.full((20, 30), 0.3)
    write_raster(tmp_path / "s2.tif", [blue, red, nir, swir1], "EPSG:32631", transform,
                 descriptions=["B02", "B04", "B08", "B11"], dtype="float64")
    write_raster(tmp_path / "s2b.tif", [red * 2], "EPSG:32631", transform, descriptions=["B04"], dtype="float64")
    pd.DataFrame({"id": ["Q1", "Q2"], "e": [X0 + 5, X0 + 105], "n": [Y0 - 5, Y0 - 55]}).to_csv(
        tmp_path / "points.csv", index=False)
    code, out, err = run_cli(
        "covariates", "extract", "--points", tmp_path / "points.csv", "--x", "e", "--y", "n", "--crs", "EPSG:32631",
        "--id-col", "id", "--rasters", tmp_path / "s2.tif", tmp_path / "s2b.tif", "--indices", "ndvi,bsi,ndmi",
        "--bands", "blue=B02,red=s2_B04,nir=B08,swir1=B11", "--output", tmp_path / "cov.csv")
    assert code == 0, err
    table = pd.read_csv(tmp_path / "cov.csv")
    assert list(table.columns) == ["id", "e", "n", "B02", "s2_B04", "B08", "B11", "s2b_B04", "ndvi", "bsi", "ndmi"]
    q1, q2 = table.iloc[0], table.iloc[1]
    # Q1 at pixel (0, 0): blue .05, red .1, nir .4, swir1 .3
    assert q1["ndvi"] == pytest.approx(0.3 / 0.5) and q1["bsi"] == pytest.approx(-0.05 / 0.85)
    assert q1["ndmi"] == pytest.approx(1 / 7)
    # Q2 at pixel (5, 10): blue .06, red .11
    assert (q2["B02"], q2["s2_B04"], q2["s2b_B04"]) == pytest.approx((0.06, 0.11, 0.22))
    assert q2["ndvi"] == pytest.approx(0.29 / 0.51) and q2["bsi"] == pytest.approx((0.41 - 0.46) / 0.87)


def test_index_functions_by_hand():
    assert indices.ndvi(0.5, 0.1) == pytest.approx(0.4 / 0.6)
    assert indices.bsi(0.3, 0.2, 0.1, 0.0) == pytest.approx(0.4 / 0.6)
    assert indices.ndmi(0.2, 0.2) == 0.0
    assert np.isnan(indices.ndvi(0.0, 0.0)) and np.isnan(indices.bsi(0, 0, 0, 0))
    np.testing.assert_allclose(indices.ndvi(np.array([1.0, 3.0]), np.array([1.0, 1.0])), [0.0, 0.5])
    assert indices.parse_bands("Red=B4, nir=B8") == {"red": "B4", "nir": "B8"}
    assert indices.parse_indices("NDVI,bsi,ndvi") == ["ndvi", "bsi"]


def _bad(run_cli, tmp_path, *args):
    output = tmp_path / "out" / "cov.csv"
    output.parent.mkdir(exist_ok=True)
    code, out, err = run_cli("covariates", "extract", *args, "--output", output)
    assert code == 2, (out, err)
    assert list(output.parent.iterdir()) == []  # no partial or temporary file
    return only_error_line(err)


def test_points_outside_every_raster(run_cli, scene, tmp_path):
    # projected coordinates read as lon/lat (the default CRS): no point lands on a raster
    line = _bad(run_cli, tmp_path, "--points", scene["folder"] / "utm.csv", "--x", "easting", "--y", "northing",
                "--raster-dir", scene["rasters"])
    assert "none of the 5 points falls on any raster" in line and "utm.csv" in line and "--crs" in line


def test_unreadable_raster(run_cli, scene, tmp_path):
    broken = tmp_path / "broken.tif"
    broken.write_text("not a raster")
    line = _bad(run_cli, tmp_path, "--points", scene["folder"] / "lonlat.csv", "--x", "lon", "--y", "lat",
                "--rasters", scene["rasters"] / "a.tif", broken)
    assert "broken.tif: not a readable raster" in line


def test_bad_inputs_name_the_culprit(capsys, scene, tmp_path):
    run_cli = partial(cli_in_process, capsys)
    rasters, points = scene["rasters"], scene["folder"] / "lonlat.csv"
    line = _bad(run_cli, tmp_path, "--points", points, "--x", "longitude", "--y", "lat", "--rasters", rasters / "a.tif")
    assert "'longitude' (--x) not found" in line and "lonlat.csv" in line
    line = _bad(run_cli, tmp_path, "--points", points, "--x", "lon", "--y", "lat", "--rasters", rasters / "a.tif",
                "--indices", "ndvi", "--bands", "red=a_1")
    assert "needs the nir band" in line
    line = _bad(run_cli, tmp_path, "--points", points, "--x", "lon", "--y", "lat", "--rasters", rasters / "a.tif",
                "--indices", "ndvi", "--bands", "red=a_1,nir=B08")
    assert "no raster band column named 'B08'" in line
    no_crs = tmp_path / "nocrs.tif"
    with pytest.warns(rasterio.errors.NotGeoreferencedWarning):
        with rasterio.open(no_crs, "w", driver="GTiff", width=2, height=2, count=1, dtype="uint8") as dst:
            dst.write(np.ones((1, 2, 2), dtype=np.uint8))
    line = _bad(run_cli, tmp_path, "--points", points, "--x", "lon", "--y", "lat", "--rasters", no_crs)
    assert "nocrs.tif: raster has no coordinate reference system" in line
