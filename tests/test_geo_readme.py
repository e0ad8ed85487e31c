"""The README's remote-sensing commands, run exactly as written (extract -> train -> map), on small
real GeoTIFFs built here: a 12-band ``s2.tif`` (UTM 31N, 100 m pixels, no band descriptions, so
its columns are ``s2_1`` ... ``s2_12``) and a ``dem.tif`` in another CRS (EPSG:4326) and on
another grid, so ``map`` must warp it (bilinear by default). ``map`` is given neither
``--indices``/``--bands`` nor ``--resampling``: the model remembers the indices and band roles it
was trained with. The map is checked against the registered model's own predictions at a few
pixels, with NDVI/BSI computed here by hand and the DEM from its (linear) formula, which bilinear
interpolation reproduces exactly.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
import rasterio
from affine import Affine
from rasterio.warp import transform as warp_transform

X0, Y0, RES, N = 500000.0, 5600000.0, 100.0, 60  # 6 km x 6 km: nine 2 km blocks for spatial CV
NP = 50  # sample points (training with the default configuration dominates the run time)
DEM_A, DEM_B, DEM_C = 4000.0, -3000.0, 0.0  # dem = A * lon + B * lat + C (metres)
README_COMMANDS = [
    ("soilcarbon covariates extract --points points.csv --x lon --y lat --crs EPSG:4326 \\\n"
     "    --rasters s2.tif dem.tif --indices ndvi,bsi --bands blue=s2_2,red=s2_4,nir=s2_8,swir1=s2_11 --output cov.csv"),
    "soilcarbon train --covariates cov.csv --lab lab.csv --target soc --cv spatial --coords lon,lat --block-size 2000",
    "soilcarbon map --model models:/soc-soc/1 --rasters s2.tif dem.tif --output soc.tif",
]


def dem_at(lon, lat):
    return DEM_A * np.asarray(lon) + DEM_B * np.asarray(lat) + DEM_C


def s2_bands(rows, cols) -> np.ndarray:
    """(12, ...) smooth reflectances (0-1) at pixel rows/cols of s2.tif."""
    u, v = np.asarray(rows) / N, np.asarray(cols) / N
    return np.stack([0.05 + 0.02 * b + 0.15 * np.sin(3 * u + b) ** 2 + 0.2 * v * (b in (7, 8)) for b in range(12)])


def build_scene(folder):
    rows, cols = np.mgrid[0:N, 0:N]
    with rasterio.open(folder / "s2.tif", "w", driver="GTiff", width=N, height=N, count=12, dtype="float32",
                       crs="EPSG:32631", transform=Affine(RES, 0, X0, 0, -RES, Y0)) as dst:
        dst.write(s2_bands(rows, cols).astype(np.float32))
    # dem.tif: EPSG:4326, covering the UTM square with a margin, ~0.002 degree pixels
    (west, east), (south, north) = [(min(v) - 0.01, max(v) + 0.01) for v in warp_transform(
        "EPSG:32631", "EPSG:4326", [X0, X0 + N * RES, X0, X0 + N * RES], [Y0, Y0, Y0 - N * RES, Y0 - N * RES])]
    step = 0.002
    width, height = int(np.ceil((east - west) / step)), int(np.ceil((north - south) / step))
    lat_c = north - (np.arange(height) + 0.5) * step
    lon_c = west + (np.arange(width) + 0.5) * step
    dem = dem_at(lon_c[None, :], lat_c[:, None]).astype(np.float64)
    with rasterio.open(folder / "dem.tif", "w", driver="GTiff", width=width, height=height, count=1,
                       dtype="float64", crs="EPSG:4326", transform=Affine(step, 0, west, 0, -step, north)) as dst:
        dst.write(dem, 1)
    # NP points inside the UTM square (lon/lat), SOC from NDVI, BSI and elevation
    rng = np.random.default_rng(7)
    prow, pcol = rng.integers(2, N - 2, NP), rng.integers(2, N - 2, NP)
    px, py = X0 + (pcol + 0.5) * RES, Y0 - (prow + 0.5) * RES
    lon, lat = warp_transform("EPSG:32631", "EPSG:4326", px, py)
    ids = [f"S{i:03d}" for i in range(NP)]
    pd.DataFrame({"sample_id": ids, "lon": lon, "lat": lat}).to_csv(folder / "points.csv", index=False)
    ndvi, bsi = indices(s2_bands(prow, pcol))
    soc = 10 + 15 * ndvi - 8 * bsi + 0.002 * dem_at(lon, lat) + rng.normal(0, 0.3, NP)
    pd.DataFrame({"sample_id": ids, "soc": soc}).to_csv(folder / "lab.csv", index=False)


def indices(bands):
    blue, red, nir, swir1 = bands[1], bands[3], bands[7], bands[10]
    return (nir - red) / (nir + red), ((swir1 + red) - (nir + blue)) / ((swir1 + red) + (nir + blue))


def test_readme_commands_match_the_readme():
    from conftest import REPO

    readme = (REPO / "README.md").read_text()
    for command in README_COMMANDS:
        assert command in readme, command


@pytest.mark.timeout(240)
def test_readme_extract_train_map(run_cli, monkeypatch, tmp_path):
    build_scene(tmp_path)
    env = {"MLFLOW_TRACKING_URI": "", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}  # mlflow.db in tmp_path
    outputs = []
    for command in README_COMMANDS:
        args = command.replace("\\\n", " ").split()[1:]
        code, out, err = run_cli(*args, cwd=tmp_path, env=env, timeout=200)
        assert code == 0, f"{command}\n{out}\n{err}"
        outputs.append((out, err))
    assert outputs[1][0].strip().splitlines()[-1] == "models:/soc-soc/1"
    provenance = json.loads((tmp_path / "cov.csv.json").read_text())
    assert provenance["indices"] == ["ndvi", "bsi"]
    assert provenance["bands"] == {"blue": "s2_2", "red": "s2_4", "nir": "s2_8", "swir1": "s2_11"}
    assert re.search(r"dem\.tif.*warped.*bilinear", outputs[2][1]), outputs[2][1]

    from soilcarbon.geo.mapping import load_covariate_model

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    model, uri = load_covariate_model("models:/soc-soc/1")
    assert uri == "models:/soc-soc/1"
    assert {"ndvi", "bsi", "dem_1", "s2_8"} <= set(model.layout.covariates)
    assert "lon" not in model.layout.covariates
    with rasterio.open(tmp_path / "soc.tif") as ds:
        data = ds.read()
        assert ds.tags()["resampling"] == "bilinear" and ds.crs.to_epsg() == 32631
    pixels = [(5, 5), (20, 33), (31, 12), (47, 50), (55, 3)]
    rows, cols = np.array(pixels).T
    bands = s2_bands(rows, cols).astype(np.float32).astype(np.float64)
    ndvi, bsi = indices(bands)
    lon, lat = warp_transform("EPSG:32631", "EPSG:4326", X0 + (cols + 0.5) * RES, Y0 - (rows + 0.5) * RES)
    values = {f"s2_{b + 1}": bands[b] for b in range(12)}
    values.update(ndvi=ndvi, bsi=bsi, dem_1=dem_at(lon, lat))
    X = np.column_stack([values[c] for c in model.layout.covariates])
    expected = model.predict_matrix(X)
    np.testing.assert_allclose(data[0, rows, cols], expected["prediction"], rtol=1e-3)
    np.testing.assert_allclose(data[1, rows, cols], expected["lower"], rtol=1e-3)
    np.testing.assert_allclose(data[2, rows, cols], expected["upper"], rtol=1e-3)


def test_provenance_sidecar_belongs_to_its_table(capsys, tmp_path):
    from cli_helpers import cli_in_process, only_error_line

    build_scene(tmp_path)
    args = README_COMMANDS[0].replace("\\\n", " ").split()[1:]
    args = [str(tmp_path / a) if a.endswith((".csv", ".tif")) else a for a in args]
    code, _, err = cli_in_process(capsys, *args)
    assert code == 0, err
    record = json.loads((tmp_path / "cov.csv.json").read_text())
    assert record["columns"]["s2_11"] == {"raster": "s2.tif", "band": 11}
    assert record["columns"]["dem_1"] == {"raster": "dem.tif", "band": 1}
    # a table changed after extraction is not paired with its old provenance
    table = pd.read_csv(tmp_path / "cov.csv")
    table.head(40).to_csv(tmp_path / "cov.csv", index=False)
    code, _, err = cli_in_process(capsys, "train", "--covariates", tmp_path / "cov.csv", "--lab", tmp_path / "lab.csv",
                                  "--target", "soc")
    line = only_error_line(err)
    assert code == 2 and "cov.csv.json was written for another version of" in line and "re-run covariates" in line


def test_trained_indices_default_override_and_mismatch():
    from soilcarbon.errors import SoilCarbonError
    from soilcarbon.geo.mapping import trained_indices

    trained = {"indices": ["ndvi", "bsi"], "bands": {"blue": "s2_2", "red": "s2_4", "nir": "s2_8", "swir1": "s2_11"}}
    covariates = ["s2_2", "ndvi", "bsi", "dem_1"]
    have = {"s2_2", "s2_4", "s2_8", "s2_11", "dem_1"}
    indices, bands, notes = trained_indices(trained, covariates, [], {}, have)
    assert indices == ["ndvi", "bsi"] and bands == trained["bands"] and "as in training" in notes[0]
    # the same mapping given again is fine; another band the rasters also have is a contradiction
    assert trained_indices(trained, covariates, ["ndvi", "bsi"], {"red": "s2_4"}, have)[0] == ["ndvi", "bsi"]
    with pytest.raises(SoilCarbonError, match=r"--bands red=s2_3: model m was trained with red=s2_4 .*drop --bands"):
        trained_indices(trained, covariates, [], {"red": "s2_3"}, have | {"s2_3"}, "model m")
    with pytest.raises(SoilCarbonError, match=r"--indices ndmi: model m was not trained with ndmi"):
        trained_indices(trained, covariates, ["ndmi"], {}, have, "model m")
    # renamed rasters (the trained band is absent): an explicit role replaces it, and says so
    renamed = {"new_2", "new_4", "new_8", "new_11"}
    _, bands, notes = trained_indices(trained, covariates, [], {"red": "new_4"}, renamed)
    assert bands["red"] == "new_4" and any("replaces red=s2_4" in n for n in notes)
    # a model without provenance: only what is given
    assert trained_indices(None, covariates, [], {}, have) == ([], {}, [])
