"""Bad-input paths not reached by the other tests: rasters and points of ``covariates extract``,
``map`` options checked before a model is loaded, lab tables, spectra readers and the
preprocessing parameters.

The CLI runs in a subprocess (~1.5 s each), so only one case per kind of check goes through it;
the others call the function the command calls. Each CLI case expects exit code 2, exactly one ``error:`` line on stderr naming the file /
column / option, and no output (nor temporary ``.part`` file) left behind. Library cases expect
:class:`SoilCarbonError` with the same kind of message. Inputs are built here in ``tmp_path``:
tiny GeoTIFFs with rasterio (pixel values do not matter, only names, CRS and extent), small CSVs.
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import pandas as pd
import pytest
import rasterio
from affine import Affine
from cli_helpers import only_error_line

from soilcarbon.errors import SoilCarbonError
from soilcarbon.geo import extract as ex
from soilcarbon.geo import indices, mapping
from soilcarbon.spectral import readers
from soilcarbon.spectral.lab import join_lab, read_lab
from soilcarbon.spectral.preprocessing import (MSC, SavitzkyGolay, Trim, build_preprocessing)
from soilcarbon.spectral.spectra import Spectra

X0, Y0, RES = 500000.0, 5600000.0, 10.0  # EPSG:32631 origin of the test rasters


def write_raster(path, n_bands=1, descriptions=None, crs="EPSG:32631"):
    """A 4 x 4 float32 north-up raster at (X0, Y0), 10 m pixels."""
    with rasterio.open(path, "w", driver="GTiff", width=4, height=4, count=n_bands, dtype="float32",
                       crs=crs, transform=Affine(RES, 0.0, X0, 0.0, -RES, Y0)) as dst:
        for band in range(1, n_bands + 1):
            dst.write(np.full((4, 4), float(band), dtype=np.float32), band)
            if descriptions:
                dst.set_band_description(band, descriptions[band - 1])
    return path


def leftovers(folder) -> list[str]:
    """Files in ``folder`` that an output write could have left (the output or a .part temp)."""
    return sorted(p.name for p in folder.iterdir() if ".part" in p.name or p.name.startswith("out"))


@pytest.fixture()
def geo(tmp_path):
    """``a.tif`` (one band, named a_1), and points.csv with two points on it in EPSG:32631."""
    write_raster(tmp_path / "a.tif")
    pd.DataFrame({"sample_id": ["P1", "P2"], "e": [X0 + 5, X0 + 15], "n": [Y0 - 5, Y0 - 25]}).to_csv(
        tmp_path / "points.csv", index=False)
    return tmp_path


def extract_args(folder, *extra, points=None, rasters=True):
    args = ["covariates", "extract", "--points", points or folder / "points.csv", "--x", "e", "--y", "n",
            "--crs", "EPSG:32631", "-o", folder / "out.csv"]
    if rasters:
        args += ["--rasters", folder / "a.tif"]
    return [*args, *extra]


def expect_cli_error(run_cli, args, *needles, folder=None):
    code, _, err = run_cli(*args)
    assert code == 2, err
    line = only_error_line(err)
    for needle in needles:
        assert needle in line, line
    if folder is not None:
        assert leftovers(folder) == []
    return line


# ------------------------------------------------------------------ covariates extract: rasters
def test_rasters_and_raster_dir_together(run_cli, geo):
    expect_cli_error(run_cli, extract_args(geo, "--raster-dir", geo), "--rasters or --raster-dir, not both",
                     folder=geo)


def test_raster_dir_not_a_folder(geo):
    with pytest.raises(SoilCarbonError) as info:
        ex.raster_files(None, geo / "a.tif")
    assert str(info.value) == f"{geo / 'a.tif'}: not a folder (--raster-dir)"


def test_raster_dir_without_rasters(geo):
    empty = geo / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no rasters here")
    (empty / ".hidden.tif").write_text("hidden files are skipped")
    with pytest.raises(SoilCarbonError) as info:
        ex.raster_files([], empty)
    assert str(info.value).startswith(f"{empty}: no raster files (.tif")


def test_no_rasters_given(run_cli, geo):
    expect_cli_error(run_cli, extract_args(geo, rasters=False), "no rasters given", "--raster-dir", folder=geo)


def test_raster_file_missing(geo):
    with pytest.raises(SoilCarbonError) as info:
        ex.raster_files([geo / "a.tif", geo / "missing.tif"], None)
    assert str(info.value) == f"{geo / 'missing.tif'}: no such raster file"


def test_raster_given_twice(geo):
    # the same file through two spellings of its path
    with pytest.raises(SoilCarbonError) as info:
        ex.raster_files([geo / "a.tif", geo / "." / "a.tif"], None)
    assert str(info.value) == f"{(geo / 'a.tif').resolve()}: raster given twice"


def test_output_folder_missing(run_cli, geo):
    args = extract_args(geo)
    args[args.index("-o") + 1] = geo / "nowhere" / "out.csv"
    expect_cli_error(run_cli, args, "folder", str(geo / "nowhere"), "does not exist", folder=geo)
    assert not (geo / "nowhere").exists()


# ------------------------------------------------------------------ covariates extract: points
def test_bad_crs(run_cli, geo):
    args = extract_args(geo)
    args[args.index("--crs") + 1] = "EPSG:999999"
    expect_cli_error(run_cli, args, "--crs 'EPSG:999999' is not a coordinate reference system", folder=geo)


def test_points_file_missing(run_cli, geo):
    expect_cli_error(run_cli, extract_args(geo, points=geo / "nope.csv"),
                     f"{geo / 'nope.csv'}: no such points file", folder=geo)


def test_points_table_unreadable(run_cli, geo):
    bad = geo / "points.parquet"
    bad.write_bytes(b"this is not a parquet file at all")
    expect_cli_error(run_cli, extract_args(geo, points=bad), f"{bad}: cannot read the points table", folder=geo)


def test_points_table_without_rows(geo):
    header_only = geo / "header.csv"
    header_only.write_text("sample_id,e,n\n")
    with pytest.raises(SoilCarbonError) as info:
        ex.read_points(header_only, "e", "n", "sample_id")
    assert str(info.value) == f"{header_only}: no points"


def test_duplicate_point_id(run_cli, geo):
    dup = geo / "dup.csv"
    dup.write_text(f"sample_id,e,n\nP1,{X0 + 5},{Y0 - 5}\n P1 ,{X0 + 15},{Y0 - 15}\n")  # ids are stripped
    expect_cli_error(run_cli, extract_args(geo, points=dup), f"{dup}: duplicate ids in the points table: P1", folder=geo)


def test_point_without_id(run_cli, geo):
    blank = geo / "blank.csv"
    blank.write_text(f"sample_id,e,n\nP1,{X0 + 5},{Y0 - 5}\n,{X0 + 15},{Y0 - 15}\n")
    expect_cli_error(run_cli, extract_args(geo, points=blank),
                     f"{blank}: 1 points row(s) without 'sample_id' (line(s) 3); every row needs an id", folder=geo)


def test_non_numeric_coordinate(geo):
    bad = geo / "text.csv"
    bad.write_text(f"sample_id,e,n\nP1,{X0 + 5},{Y0 - 5}\nP2,east,{Y0 - 15}\n")
    with pytest.raises(SoilCarbonError, match=r"text.csv: point 'P2' has no numeric 'e' \(value 'east'\)"):
        ex.read_points(bad, "e", "n", "sample_id")


def test_band_column_named_like_points_column(run_cli, geo):
    write_raster(geo / "b.tif", descriptions=["e"])  # its band column would be "e", the --x column
    expect_cli_error(run_cli, extract_args(geo, geo / "b.tif"), "raster band column 'e'", "points column",
                     folder=geo)


def test_index_clashes_with_band_column(run_cli, geo):
    write_raster(geo / "s2.tif", n_bands=2, descriptions=["ndvi", "B08"])
    args = extract_args(geo, "--indices", "ndvi", "--bands", "red=ndvi,nir=B08")
    args[args.index("--rasters") + 1] = geo / "s2.tif"
    expect_cli_error(run_cli, args, "index 'ndvi' clashes with a raster band column", folder=geo)


# ------------------------------------------------------------------ --indices / --bands
def test_unknown_index(run_cli, geo):
    expect_cli_error(run_cli, extract_args(geo, "--indices", "ndvi,evi", "--bands", "red=a_1,nir=a_1"),
                     "--indices: unknown index 'evi'", "ndvi", folder=geo)


@pytest.mark.parametrize("text", ["red=a_1,nir", "red=a_1,nir="])
def test_malformed_bands(text):
    with pytest.raises(SoilCarbonError, match=r"--bands: expected ROLE=NAME pairs .*got 'nir=?'"):
        indices.parse_bands(text)


def test_unknown_band_role():
    with pytest.raises(SoilCarbonError, match=r"--bands: unknown band role 'green'; roles: "):
        indices.parse_bands("red=a_1, Green=a_1")


# ------------------------------------------------------------------ map: options checked before the model
@pytest.mark.parametrize("option, value, needle", [
    ("--level", "1.5", "--level must be between 0 and 1, got 1.5"),
    ("--jobs", "0", "--jobs must be at least 1, got 0"),
])
def test_map_option_out_of_range(run_cli, geo, option, value, needle):
    # the model URI does not exist: these checks must come before any model is loaded
    args = ["map", "--model", "models:/no-such-model/1", "--rasters", geo / "a.tif", "-o", geo / "out.tif",
            option, value]
    line = expect_cli_error(run_cli, args, needle, folder=geo)
    assert "no-such-model" not in line


def test_check_grid_bad_resampling(geo):
    with pytest.raises(SoilCarbonError, match=r"--resampling must be nearest or bilinear, got 'cubic'"):
        mapping.check_grid([geo / "a.tif"], "cubic")


# ------------------------------------------------------------------ lab tables (spectra inspect --lab)
@pytest.fixture()
def small_spectra_csv(tmp_path):
    path = tmp_path / "spectra.csv"
    path.write_text("sample_id,1000,1002,1004\nS1,0.1,0.2,0.3\nS2,0.4,0.5,0.6\n")
    return path


def test_lab_file_missing(run_cli, small_spectra_csv, tmp_path):
    expect_cli_error(run_cli, ["spectra", "inspect", small_spectra_csv, "--lab", tmp_path / "lab.csv"],
                     f"{tmp_path / 'lab.csv'}: no such file")


def test_lab_is_a_folder(tmp_path):
    (tmp_path / "labdir").mkdir()
    with pytest.raises(SoilCarbonError, match=r"labdir: not a file; pass the lab table"):
        read_lab(tmp_path / "labdir")


def test_lab_blank_lines_only(tmp_path):
    lab = tmp_path / "lab.csv"
    lab.write_text("\n\n\n")  # not zero bytes, but no header
    with pytest.raises(SoilCarbonError, match=r"lab.csv: the lab table is empty"):
        read_lab(lab)


def test_lab_unreadable(tmp_path):
    lab = tmp_path / "lab.parquet"
    lab.write_bytes(b"not parquet")
    with pytest.raises(SoilCarbonError, match=r"lab.parquet: cannot read the lab table"):
        read_lab(lab)


@pytest.fixture()
def two_spectra():
    return Spectra(ids=np.array(["S1", "S2"]), axis=np.array([1000.0, 1002.0, 1004.0]), unit="nm",
                   values=np.array([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]]), source="two")


def test_join_lab_id_column_missing(two_spectra):
    lab = pd.DataFrame({"id": ["S1"], "soc": [1.0]})
    lab.attrs["source"] = "mylab.csv"
    with pytest.raises(SoilCarbonError, match=r"mylab.csv: id column 'sample_id' not found"):
        join_lab(two_spectra, lab)


def test_join_lab_rows_without_id(two_spectra):
    lab = pd.DataFrame({"sample_id": ["S1", None], "soc": [1.0, 2.0]})
    with pytest.raises(SoilCarbonError, match=r"lab table: 1 lab row\(s\) without 'sample_id'"):
        join_lab(two_spectra, lab)


def test_join_lab_duplicate_ids(two_spectra):
    lab = pd.DataFrame({"sample_id": ["S1", " S1"], "soc": [1.0, 2.0]})
    with pytest.raises(SoilCarbonError, match=r"duplicate ids in the lab table: S1"):
        join_lab(two_spectra, lab)


# ------------------------------------------------------------------ spectra readers
def test_csv_with_blank_lines_only(tmp_path):
    path = tmp_path / "blank.csv"
    path.write_text("\n\n")  # not zero bytes, but pyarrow finds no header
    with pytest.raises(SoilCarbonError, match=r"blank.csv: the file is empty"):
        readers.read_table(path)


def test_read_table_missing_path(tmp_path):
    with pytest.raises(SoilCarbonError, match=r"missing.csv: no such file or folder"):
        readers.read_table(tmp_path / "missing.csv")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs os.mkfifo")
def test_read_table_not_a_regular_file(tmp_path):
    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)
    with pytest.raises(SoilCarbonError, match=r"pipe.csv: not a regular file"):
        readers.read_table(fifo)


def test_opus_name_without_id(tmp_path):
    with pytest.raises(SoilCarbonError, match=r"no sample id in the file name '_x.0'"):
        readers.opus_sample_id(tmp_path / "_x.0")


def test_read_opus_folder_bad_on_error(opus_dir):
    with pytest.raises(SoilCarbonError, match=r"on_error must be 'raise' or 'skip', not 'ignore'"):
        readers.read_opus_folder(opus_dir, on_error="ignore")


def test_read_opus_folder_on_a_file(opus_files):
    with pytest.raises(SoilCarbonError, match=rf"{opus_files[0].name}: not a folder"):
        readers.read_opus_folder(opus_files[0])


def test_read_opus_folder_none_readable(tmp_path):
    (tmp_path / "S1_a.0").write_bytes(b"\x00" * 64)
    (tmp_path / "S2_a.0").write_bytes(b"garbage, not an OPUS file")
    with pytest.raises(SoilCarbonError, match=r"none of the 2 OPUS file\(s\) could be read \(S1_a.0: "):
        readers.read_opus_folder(tmp_path, on_error="skip")


def test_convert_output_is_a_folder(run_cli, opus_files, tmp_path):
    source = tmp_path / "spectra"
    source.mkdir()
    shutil.copy(opus_files[0], source / opus_files[0].name)
    out = tmp_path / "out.parquet"
    out.mkdir()
    expect_cli_error(run_cli, ["spectra", "convert", source, out], f"{out}: is a folder")
    assert out.is_dir() and list(out.iterdir()) == []
    assert [p.name for p in tmp_path.iterdir() if ".part" in p.name] == []


# ------------------------------------------------------------------ preprocessing parameters
X3 = np.array([[1.0, 2.0, 4.0], [2.0, 3.0, 5.0]])


@pytest.mark.parametrize("axis, needle", [
    ("abc", "Trim: axis must be a list of numbers"),
    ([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], "Trim: axis must be a non-empty 1-D list of numbers, got shape (2, 3)"),
    ([1.0, np.nan, 3.0], "Trim: axis has missing or infinite values"),
])
def test_trim_bad_axis(axis, needle):
    with pytest.raises(SoilCarbonError) as info:
        Trim(axis=axis, start=1.0).fit(X3)
    assert needle in str(info.value)


def test_trim_bound_not_a_number():
    with pytest.raises(SoilCarbonError, match=r"Trim: start must be a number or None, got '1000'"):
        Trim(axis=[1000.0, 1002.0, 1004.0], start="1000").fit(X3)


@pytest.mark.parametrize("reference, needle", [
    ([1.0, "x", 3.0], "MSC: reference must be 'mean', 'median' or a list of numbers"),
    ([1.0], "MSC: reference must be a 1-D list of at least 2 finite numbers"),
])
def test_msc_bad_reference(reference, needle):
    with pytest.raises(SoilCarbonError) as info:
        MSC(reference=reference).fit(X3)
    assert needle in str(info.value)


def test_savgol_polyorder_too_high():
    with pytest.raises(SoilCarbonError, match=r"SavitzkyGolay: polyorder must be an integer from 0 to "
                                              r"window_length - 1 \(4\), got 5"):
        SavitzkyGolay(window_length=5, polyorder=5).fit(np.ones((2, 9)))


def test_savgol_bad_mode():
    with pytest.raises(SoilCarbonError, match=r"SavitzkyGolay: mode must be one of .*got 'reflect'"):
        SavitzkyGolay(window_length=5, mode="reflect").fit(np.ones((2, 9)))


def test_resample_new_axis_and_start():
    with pytest.raises(SoilCarbonError, match=r"preprocessing step 1 \(resample\): give either new_axis or "
                                              r"start, end and step, not both"):
        build_preprocessing([{"name": "resample", "new_axis": [1000.0, 1002.0], "start": 1000.0}],
                            [1000.0, 1002.0, 1004.0])


def test_resample_step_not_positive():
    with pytest.raises(SoilCarbonError, match=r"preprocessing step 1 \(resample\): start, end and step must be "
                                              r"numbers with step > 0, got 1000.0, 1004.0, 0"):
        build_preprocessing([{"name": "resample", "start": 1000.0, "end": 1004.0, "step": 0}],
                            [1000.0, 1002.0, 1004.0])
