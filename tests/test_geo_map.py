"""``soilcarbon map`` with a real covariates-only model (registered in a real MLflow store) on small
GeoTIFFs built here. Every map pixel is checked against the model's own ``predict_matrix`` on the
covariate values taken from the arrays the rasters were written from; nodata where an input is
nodata or NaN.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.warp import transform_bounds
from cli_helpers import cli_in_process, only_error_line
from trained_model import train_covariate_model

from soilcarbon.geo import mapping


def from_origin(west, north, xsize, ysize):
    """North-up affine transform (rasterio.transform.from_origin without its deprecated operator)."""
    return Affine(xsize, 0.0, west, 0.0, -ysize, north)


X0, Y0, RES = 500000.0, 5600000.0, 10.0
H, W = 20, 30
GRID = from_origin(X0, Y0, RES, RES)


def write_raster(path, bands, crs="EPSG:32631", transform=GRID, nodata=None, descriptions=None):
    bands = [np.asarray(b, dtype=np.float32) for b in bands]
    with rasterio.open(path, "w", driver="GTiff", width=bands[0].shape[1], height=bands[0].shape[0],
                       count=len(bands), dtype="float32", crs=crs, transform=transform, nodata=nodata) as dst:
        for i, band in enumerate(bands, start=1):
            dst.write(band, i)
            if descriptions:
                dst.set_band_description(i, descriptions[i - 1])
    return path


@pytest.fixture(scope="module")
def model_uri(tmp_path_factory):
    # one MLflow store for the geo tests of this session (creating a store costs seconds)
    folder = tmp_path_factory.getbasetemp() / "geo-mlflow"
    folder.mkdir(exist_ok=True)
    return train_covariate_model(folder, "soc-geo-map", n=80)


@pytest.fixture(scope="module")
def model(model_uri):
    model, resolved = mapping.load_covariate_model(model_uri)
    assert resolved == model_uri
    return model


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """ndvi.tif (nodata -9999 at (0, 0)) and terrain.tif (elevation, twi; twi NaN at (5, 5) and an
    elevation far outside the training range at (7, 8))."""
    folder = tmp_path_factory.mktemp("stack")
    rng = np.random.default_rng(42)
    ndvi = rng.uniform(0.1, 0.9, (H, W)).astype(np.float32)
    elevation = rng.uniform(50, 500, (H, W)).astype(np.float32)
    twi = rng.uniform(2, 15, (H, W)).astype(np.float32)
    ndvi[0, 0] = -9999
    twi[5, 5] = np.nan
    elevation[7, 8] = 20000
    write_raster(folder / "ndvi.tif", [ndvi], nodata=-9999, descriptions=["ndvi"])
    write_raster(folder / "terrain.tif", [elevation, twi], descriptions=["elevation", "twi"])
    values = {"ndvi": np.where(ndvi == -9999, np.nan, ndvi), "elevation": elevation, "twi": twi}
    return folder, values


def expected_bands(model, values, level=None) -> np.ndarray:
    """(4, H, W) float32 from predict_matrix on the covariates in the model's order."""
    X = np.column_stack([values[c].astype(np.float64).ravel() for c in model.layout.covariates])
    predicted = model.predict_matrix(X, level)
    out = np.stack([predicted[c].to_numpy(dtype=np.float64).reshape(H, W) for c in ("prediction", "lower", "upper")]
                   + [predicted["in_domain"].to_numpy(dtype=np.float64).reshape(H, W)]).astype(np.float32)
    out[:, ~np.isfinite(X).all(axis=1).reshape(H, W)] = np.nan
    return out


def assert_map_equal(path, expected):
    with rasterio.open(path) as ds:
        data = ds.read()
    nodata = np.isnan(expected)
    np.testing.assert_array_equal(np.isnan(data), nodata)
    np.testing.assert_array_equal(data[3], expected[3])  # in_domain 1/0 exactly
    np.testing.assert_allclose(data[:3][~nodata[:3]], expected[:3][~nodata[:3]], rtol=1e-6)


def test_map_matches_predict_matrix(run_cli, model_uri, model, stack, tmp_path):
    folder, values = stack
    output = tmp_path / "soc.tif"
    # terrain first: the output takes its grid; four 16-pixel windows (a small grid: one process)
    code, out, err = run_cli("map", "--model", model_uri, "--rasters", folder / "terrain.tif", folder / "ndvi.tif",
                             "--output", output, "--level", "0.8", "--block-size", "16")
    assert code == 0, err
    expected = expected_bands(model, values, level=0.8)
    assert_map_equal(output, expected)
    with rasterio.open(output) as ds:
        assert (ds.count, ds.dtypes[0], ds.width, ds.height) == (4, "float32", W, H)
        assert ds.descriptions == ("prediction", "lower", "upper", "in_domain")
        assert ds.crs.to_epsg() == 32631 and ds.transform == GRID and np.isnan(ds.nodata)
        assert ds.tags()["model"] == model_uri and ds.tags()["level"] == "0.8"
        data = ds.read()
    # the by-hand facts behind the comparison
    assert np.isnan(data[:, 0, 0]).all() and np.isnan(data[:, 5, 5]).all() and np.isfinite(data[:, 1, 1]).all()
    assert data[3, 7, 8] == 0 and np.nanmean(data[3]) > 0.8  # the extreme elevation is out of domain
    valid = np.isfinite(data[0])
    assert (data[1][valid] <= data[0][valid]).all() and (data[0][valid] <= data[2][valid]).all()
    assert f"{W * H - 2} predicted, 2 nodata" in err and "1 process)" in err
    assert [p.name for p in tmp_path.iterdir()] == ["soc.tif"]


def test_map_by_alias_records_the_resolved_version(capsys, model_uri, stack, tmp_path):
    from soilcarbon.registry import promote

    folder, _ = stack
    name, version = model_uri[len("models:/"):].split("/")
    promote(name, version, "mapping")
    output = tmp_path / "soc.tif"
    code, _, err = cli_in_process(capsys, "map", "--model", f"models:/{name}@mapping", "--rasters",
                                  folder / "terrain.tif", folder / "ndvi.tif", "--output", output,
                                  "--block-size", "16", "-q")
    assert code == 0, err
    with rasterio.open(output) as ds:
        assert ds.tags()["model"] == model_uri  # models:/NAME/VERSION, never the alias


def test_worker_processes_give_the_same_map(model, stack, tmp_path):
    folder, values = stack
    plan = mapping.plan_stack([folder / "ndvi.tif", folder / "terrain.tif"], model.layout.covariates)
    report = mapping.make_map(model, plan, tmp_path / "soc.tif", block_size=16, jobs=2, pool_min_pixels=0)
    assert (report.jobs, report.n_windows) == (2, 4)
    assert_map_equal(tmp_path / "soc.tif", expected_bands(model, values))


def test_nearest_resampling_of_coarser_rasters(model, stack, tmp_path):
    folder, values = stack
    # 20 m rasters (half the resolution): nearest resampling onto the 10 m grid repeats each pixel 2 x 2.
    # twi20 (no nodata value) covers only the 20 left columns of the grid; elev20 has a nodata pixel.
    rng = np.random.default_rng(7)
    coarse_twi = rng.uniform(2, 15, (H // 2, 10)).astype(np.float32)
    coarse_elev = rng.uniform(50, 500, (H // 2, W // 2)).astype(np.float32)
    coarse_elev[2, 3] = -9999
    write_raster(tmp_path / "twi20.tif", [coarse_twi], transform=from_origin(X0, Y0, 2 * RES, 2 * RES),
                 descriptions=["twi"])
    write_raster(tmp_path / "elev20.tif", [coarse_elev], transform=from_origin(X0, Y0, 2 * RES, 2 * RES),
                 descriptions=["elevation"], nodata=-9999)
    paths = [folder / "ndvi.tif", tmp_path / "elev20.tif", tmp_path / "twi20.tif"]
    plan = mapping.plan_stack(paths, model.layout.covariates, resampling="nearest")
    assert plan.warp == [False, True, True]
    report = mapping.make_map(model, plan, tmp_path / "soc.tif", block_size=512, jobs=1)
    twi = np.full((H, W), np.nan, dtype=np.float32)
    twi[:, :20] = np.repeat(np.repeat(coarse_twi, 2, axis=0), 2, axis=1)
    elevation = np.repeat(np.repeat(np.where(coarse_elev == -9999, np.nan, coarse_elev), 2, axis=0), 2, axis=1)
    expected = expected_bands(model, dict(values, twi=twi, elevation=elevation))
    assert_map_equal(tmp_path / "soc.tif", expected)
    nodata = 1 + 4 + H * 10  # ndvi (0, 0), the 2 x 2 nodata elevation, the 10 uncovered columns
    assert (report.n_windows, report.n_valid, report.n_nodata) == (1, W * H - nodata, nodata)


def test_indices_from_bands_feed_the_model(model, stack, tmp_path):
    folder, values = stack
    # the model's 'ndvi' covariate computed per pixel from red and NIR bands of another raster
    rng = np.random.default_rng(3)
    red = rng.uniform(0.02, 0.1, (H, W)).astype(np.float32)
    nir = rng.uniform(0.15, 0.5, (H, W)).astype(np.float32)
    write_raster(tmp_path / "s2.tif", [red, nir], descriptions=["B04", "B08"])
    plan = mapping.plan_stack([tmp_path / "s2.tif", folder / "terrain.tif"], model.layout.covariates,
                              indices=["ndvi"], bands={"red": "B04", "nir": "B08"})
    mapping.make_map(model, plan, tmp_path / "soc.tif", block_size=16, jobs=1)
    ndvi = (nir.astype(np.float64) - red) / (nir.astype(np.float64) + red)  # by hand
    assert_map_equal(tmp_path / "soc.tif", expected_bands(model, dict(values, ndvi=ndvi)))


def _bad(run_cli, tmp_path, *args):
    output = tmp_path / "out" / "soc.tif"
    output.parent.mkdir(exist_ok=True)
    code, out, err = run_cli("map", *args, "--output", output)
    assert code == 2, (out, err)
    assert list(output.parent.iterdir()) == []  # no partial or temporary GeoTIFF
    return only_error_line(err)


def test_rasters_that_do_not_line_up(run_cli, capsys, stack, tmp_path):
    folder, values = stack
    ndvi = folder / "ndvi.tif"
    far = write_raster(tmp_path / "far.tif", [values["twi"]], transform=from_origin(X0 + 10_000, Y0, RES, RES))
    line = _bad(run_cli, tmp_path, "--model", "models:/unused/1", "--rasters", ndvi, far, "--resampling", "nearest")
    assert "far.tif does not overlap" in line and "ndvi.tif" in line


def test_other_grids_are_warped_bilinear_by_default(model, stack, tmp_path):
    folder, values = stack
    # terrain on a 20 m grid and in EPSG:4326: no --resampling needed; bilinear, said and tagged
    coarse = write_raster(tmp_path / "coarse.tif", [values["elevation"][::2, ::2], values["twi"][::2, ::2]],
                          transform=from_origin(X0, Y0, 2 * RES, 2 * RES), descriptions=["elevation", "twi"])
    west, _, _, north = transform_bounds("EPSG:32631", "EPSG:4326", X0, Y0 - H * RES, X0 + W * RES, Y0)
    lonlat = write_raster(tmp_path / "lonlat.tif", [values["elevation"], values["twi"]], crs="EPSG:4326",
                          transform=from_origin(west - 0.001, north + 0.001, 0.0002, 0.0002),
                          descriptions=["elevation", "twi"])
    for other in (coarse, lonlat):
        plan = mapping.plan_stack([folder / "ndvi.tif", other], model.layout.covariates)
        assert plan.warp == [False, True] and plan.resampling == "bilinear"
        assert f"{other.name} warped onto ndvi.tif's grid (bilinear by default" in " ".join(plan.notes)
        report = mapping.make_map(model, plan, tmp_path / "soc.tif", block_size=16, jobs=1)
        with rasterio.open(tmp_path / "soc.tif") as ds:
            assert ds.tags()["resampling"] == "bilinear"
            assert np.isfinite(ds.read(1)).sum() == report.n_valid > 0.9 * W * H
    # bilinear between 2 x 2 coarse pixels: an interior 10 m pixel centre is a quarter of the way
    # from its coarse pixel's centre; compare one pixel with the interpolation done by hand
    plan = mapping.plan_stack([folder / "ndvi.tif", coarse], model.layout.covariates)
    arrays = mapping.WindowPredictor(model, plan, 0.9).read(next(mapping.windows(W, H, 512)))
    e = values["elevation"][::2, ::2].astype(np.float64)
    by_hand = (0.75 * 0.75 * e[2, 3] + 0.75 * 0.25 * e[2, 4] + 0.25 * 0.75 * e[3, 3] + 0.25 * 0.25 * e[3, 4])
    np.testing.assert_allclose(arrays["elevation"][5, 7], by_hand, rtol=1e-5)


def test_model_needs_covariates_the_rasters_lack(run_cli, model_uri, stack, tmp_path):
    folder, values = stack
    elevation = write_raster(tmp_path / "elevation_only.tif", [values["elevation"]], descriptions=["elevation"])
    line = _bad(run_cli, tmp_path, "--model", model_uri, "--rasters", folder / "ndvi.tif", elevation)
    assert f"model {model_uri} needs covariate(s) twi that the rasters do not provide" in line
    assert "elevation, ndvi" in line


def test_read_error_mid_map_leaves_no_file(model, stack, tmp_path):
    folder, values = stack
    broken = write_raster(tmp_path / "terrain.tif", [values["elevation"], values["twi"]],
                          descriptions=["elevation", "twi"])
    with open(broken, "r+b") as handle:  # cut the pixel data short: the header still opens
        handle.truncate(broken.stat().st_size - 1500)
    plan = mapping.plan_stack([folder / "ndvi.tif", broken], model.layout.covariates)
    output = tmp_path / "out" / "soc.tif"
    output.parent.mkdir()
    with pytest.raises(mapping.SoilCarbonError, match="terrain.tif: cannot read band"):
        mapping.make_map(model, plan, output, block_size=16, jobs=1)
    assert list(output.parent.iterdir()) == []


def test_option_errors(capsys, stack, tmp_path):
    folder, _ = stack
    run_cli = partial(cli_in_process, capsys)
    line = _bad(run_cli, tmp_path, "--model", "models:/unused/1", "--rasters", folder / "ndvi.tif", "--block-size", "500")
    assert "--block-size must be a multiple of 16" in line
    line = _bad(run_cli, tmp_path, "--model", "models:/unused/1", "--rasters", folder / "ndvi.tif",
                "--resampling", "cubic")
    assert "--resampling must be nearest or bilinear" in line
