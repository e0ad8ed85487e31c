"""Readers on real files: the nirsoil CSV, the 40 OPUS files and their lab table, and broken inputs.

OPUS reference values come from a minimal independent parser written here from the file layout
(header -> directory of (type, length in 4-byte words, offset) entries; data-status parameter
blocks of 4-char key, int16 type, int16 size, value), not from brukeropus.
"""

import csv
import shutil
import struct

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from soilcarbon.errors import SoilCarbonError
from soilcarbon.spectral.lab import JoinReport, join_lab, read_lab
from soilcarbon.spectral.readers import opus_files as list_opus_files
from soilcarbon.spectral.readers import opus_sample_id, read_opus, read_opus_folder, read_spectra, read_table
from soilcarbon.spectral.spectra import Spectra

ABSORBANCE = 4  # OPUS directory data-type code of absorbance spectra


def opus_reference(path):
    """(fxv, lxv, npt, dxu, y) of the absorbance block, parsed by hand from the raw bytes."""
    raw = path.read_bytes()
    assert raw[:4] == b"\n\n\xfe\xfe"
    directory_start, _, n_blocks = struct.unpack_from("<iii", raw, 12)
    entries = [struct.unpack_from("<iii", raw, directory_start + 12 * i) for i in range(n_blocks)]
    kind = lambda t: (t >> 10) & 0x7F  # noqa: E731  data type (bits 10-16)
    role = lambda t: (t >> 4) & 0x3F  # noqa: E731   0 = data, 1 = data status (bits 4-9)
    (status,) = [(n, o) for t, n, o in entries if kind(t) == ABSORBANCE and role(t) == 1]
    (data,) = [(n, o) for t, n, o in entries if kind(t) == ABSORBANCE and role(t) == 0]
    params, offset, end = {}, status[1], status[1] + 4 * status[0]
    while offset < end:
        key = raw[offset:offset + 3].decode("latin-1")
        if key == "END":
            break
        ptype, size = struct.unpack_from("<hh", raw, offset + 4)
        if ptype == 0:
            params[key] = struct.unpack_from("<i", raw, offset + 8)[0]
        elif ptype == 1:
            params[key] = struct.unpack_from("<d", raw, offset + 8)[0]
        else:
            params[key] = raw[offset + 8:offset + 8 + 2 * size].split(b"\0")[0].decode("latin-1")
        offset += 8 + 2 * size
    npt = params["NPT"]
    y = np.frombuffer(raw, dtype="<f4", count=npt, offset=data[1]).astype(float) * params["CSF"]
    return params["FXV"], params["LXV"], npt, params["DXU"], y


def patch_axis(raw: bytes, old: tuple[float, float], new: tuple[float, float]) -> bytes:
    """Replace every FXV/LXV pair equal to ``old`` by ``new`` (float64 values after the 8-byte key)."""
    out = bytearray(raw)
    for key, before, after in ((b"FXV\0", old[0], new[0]), (b"LXV\0", old[1], new[1])):
        start = 0
        while (start := out.find(key, start)) >= 0:
            if struct.unpack_from("<d", out, start + 8)[0] == before:
                struct.pack_into("<d", out, start + 8, after)
            start += 4
    return bytes(out)


# ---------------------------------------------------------------------------------- tables
def test_nirsoil_csv(nirsoil_csv):
    s = read_table(nirsoil_csv)
    with open(nirsoil_csv, newline="") as handle:
        rows = list(csv.reader(handle))
    header = rows[0]
    assert s.n_samples == len(rows) - 1 == 618
    assert s.n_points == 700 and s.unit == "nm"
    assert s.axis[0] == 1100.0 and s.axis[-1] == 2498.0 and np.all(np.diff(s.axis) == 2.0)
    assert s.detected["unit_from"] == "guessed from the axis" and s.detected["format"] == "csv"
    assert list(s.meta.columns) == ["Nt", "Ciso", "CEC"]
    assert int(s.meta["Ciso"].isna().sum()) == 70
    assert s.ids[0] == rows[1][0] == "NIRsoil-1"
    for row in (1, 300, 618):
        for column in ("1100", "1800", "2498"):
            assert s.values[row - 1, s.columns.index(column)] == float(rows[row][header.index(column)])


def test_csv_variants_prefix_delimiter_and_string_ids(tmp_path):
    text = "code;wl_1100;site;wl_1102;12a0;wl_1104\n001;0.5;A;0.6;x;0.7\n 010 ;1.5;B;1.6;y;1.7\n"
    path = tmp_path / "scan.txt"
    path.write_text(text)
    s = read_table(path, id_col="code")
    assert s.ids.tolist() == ["001", "010"]          # leading zeros kept, whitespace stripped
    assert s.unit == "nm" and s.detected["unit_from"] == "prefix 'wl_'" and s.detected["prefix"] == "wl_"
    assert s.values.tolist() == [[0.5, 0.6, 0.7], [1.5, 1.6, 1.7]]
    assert list(s.meta.columns) == ["site", "12a0"]


def test_tsv_and_parquet_tables(tmp_path):
    tsv = tmp_path / "s.tsv"
    tsv.write_text("sample_id\t4000\t3998\na\t1\t2\n")
    s = read_table(tsv)
    assert s.unit == "cm-1" and s.values.tolist() == [[1.0, 2.0]]
    table = pa.table({"sample_id": ["a", "b"], "oc": [1.0, None], "wn_4000": [1.0, 2.0], "wn_3998": [3.0, 4.0]})
    pq.write_table(table, tmp_path / "s.pq")
    p = read_table(tmp_path / "s.pq")
    assert p.unit == "cm-1" and p.detected["format"] == "parquet"
    assert p.values.tolist() == [[1.0, 3.0], [2.0, 4.0]] and p.meta["oc"].isna().tolist() == [False, True]


def test_missing_values_policy(tmp_path):
    path = tmp_path / "gaps.csv"
    path.write_text("sample_id,1100,1102,1104\na,1,,3\nb,1,2,3\n")
    with pytest.raises(SoilCarbonError, match=r"gaps\.csv: missing values in sample\(s\) a"):
        read_table(path)
    s = read_table(path, allow_nan=True)
    assert s.missing_by_sample() == {"a": 1}


@pytest.mark.parametrize(
    "name, text, expected",
    [
        ("empty.csv", "", ["empty.csv", "the file is empty"]),
        ("header.csv", "sample_id,1100,1102\n", ["header.csv", "no samples found"]),
        ("noid.csv", "id,1100,1102\na,1,2\n", ["noid.csv", "id column 'sample_id' not found"]),
        ("text.csv", "sample_id,1100,1102\na,1,2\nb,1,abc\n", ["text.csv", "column '1102'", "sample b", "'abc'"]),
        ("dupid.csv", "sample_id,1100,1102\na,1,2\na,1,2\n", ["dupid.csv", "duplicate sample ids: a"]),
        ("dupcol.csv", "sample_id,1100,1100\na,1,2\n", ["dupcol.csv", "'1100' appear more than once"]),
        ("ragged.csv", "sample_id,1100,1102\na,1\n", ["ragged.csv", "cannot parse the table"]),
        ("nospec.csv", "sample_id,Ciso\na,1\n", ["nospec.csv", "no spectral columns"]),
        ("noids.csv", "sample_id,1100,1102\na,1,2\n  ,1,2\n", ["noids.csv", "1 row(s) have no 'sample_id'"]),
        ("order.csv", "sample_id,1100,1104,1102\na,1,2,3\n", ["order.csv", "spectral column '1102' follows '1104'"]),
        ("latin.csv", "sample_id,1100,1102\n\xe9a,1,2\n".encode("latin-1"), ["latin.csv", "UTF-8"]),
        ("mir.csv", "sample_id,4000,3998\na,1,2\n", ["mir.csv", "not plausible in nm"]),
        ("table.xlsx", "x", ["table.xlsx", "unknown table type"]),
        ("empty.parquet", "", ["empty.parquet", "empty"]),
        ("broken.parquet", "PAR1 garbage", ["broken.parquet", "not a readable Parquet file"]),
    ],
)
def test_bad_tables_name_the_file(tmp_path, name, text, expected):
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    unit = "nm" if name == "mir.csv" else None
    with pytest.raises(SoilCarbonError) as info:
        read_table(path, unit=unit)
    message = str(info.value)
    assert "\n" not in message
    for part in expected:
        assert part in message


# ------------------------------------------------------------------------------------ OPUS
def test_all_40_opus_files_match_an_independent_parse(opus_files):
    assert len(opus_files) == 40
    for path in opus_files:
        fxv, lxv, npt, dxu, y = opus_reference(path)
        s = read_opus(path)
        assert s.ids.tolist() == [path.name.split("_")[0]]
        assert (npt, dxu) == (3017, "WN") and s.n_points == 3017 and s.unit == "cm-1"
        assert s.axis[0] == pytest.approx(fxv, abs=1e-9) and s.axis[-1] == pytest.approx(lxv, abs=1e-9)
        assert fxv == pytest.approx(5996.485, abs=1e-3) and lxv == pytest.approx(179.374, abs=1e-3)
        np.testing.assert_allclose(s.axis, np.linspace(fxv, lxv, npt), rtol=0, atol=1e-9)
        np.testing.assert_array_equal(s.values[0], y)
        assert s.meta["source_file"].tolist() == [path.name]


def test_opus_folder_reads_all_40_and_joins_the_lab_table(opus_dir, opus_files, opus_lab_csv):
    s, failures = read_opus_folder(opus_dir)
    assert failures == [] and s.n_samples == 40 and s.n_points == 3017 and s.unit == "cm-1"
    assert s.ids.tolist() == [p.name.split("_")[0] for p in opus_files]
    assert s.detected["aligned"] == [] and s.detected["files"] == 40
    fxv, lxv, _, _, y = opus_reference(opus_files[7])
    np.testing.assert_array_equal(s.values[7], y)
    assert (s.axis.max(), s.axis.min()) == (pytest.approx(fxv), pytest.approx(lxv))

    lab = read_lab(opus_lab_csv)
    joined, report = join_lab(s, lab)
    assert isinstance(report, JoinReport)
    assert (report.n_matched, report.only_in_spectra, report.only_in_lab) == (40, [], [])
    with open(opus_lab_csv, newline="") as handle:
        expected = {row["sample_id"]: float(row["oc_g_per_kg"]) for row in csv.DictReader(handle)}
    assert joined.target("oc_g_per_kg").tolist() == [expected[i] for i in joined.ids]
    assert list(joined.meta.columns) == ["source_file", "oc_g_per_kg", "sand_pct", "silt_pct", "clay_pct"]


def test_opus_id_rules(opus_files):
    path = opus_files[0]                                        # WHRC11094_S_002_150.0
    assert opus_sample_id(path) == "WHRC11094"
    assert opus_sample_id("plain.0") == "plain"
    assert opus_sample_id(path, r"^(WHRC\d+_S_\d+)") == "WHRC11094_S_002"
    assert read_opus(path, id_pattern=r"_(\d+)\.0$").ids.tolist() == ["150"]
    with pytest.raises(SoilCarbonError, match="exactly one group"):
        opus_sample_id(path, r"WHRC\d+")
    with pytest.raises(SoilCarbonError, match=r"WHRC11094_S_002_150\.0.*does not match"):
        opus_sample_id(path, r"^(ABC\d+)")
    with pytest.raises(SoilCarbonError, match="not a valid regular expression"):
        opus_sample_id(path, r"(unclosed")


def test_opus_blocks(opus_files):
    path = opus_files[0]
    sample = read_opus(path, block="sample")                    # single-channel sample spectrum
    absorbance = read_opus(path)
    assert sample.n_points == absorbance.n_points
    assert not np.allclose(sample.values, absorbance.values)
    with pytest.raises(SoilCarbonError) as info:
        read_opus(path, block="reflectance")
    assert path.name in str(info.value) and "no reflectance block" in str(info.value)
    assert "Absorbance" in str(info.value)                       # says what the file holds
    with pytest.raises(SoilCarbonError, match="unknown OPUS block"):
        read_opus(path, block="raman-ish")
    with pytest.raises(SoilCarbonError, match="wavenumbers"):
        read_opus(path, unit="nm")


@pytest.fixture()
def broken_opus(tmp_path, opus_files):
    """Broken copies of a real OPUS file: truncated to half / nearly whole, random bytes, empty."""
    raw = opus_files[0].read_bytes()
    rng = np.random.default_rng(0)
    files = {
        "half": raw[: len(raw) // 2],
        "tail": raw[: len(raw) - 300],
        "random": rng.bytes(len(raw)),
        "empty": b"",
        "signature_only": raw[:4] + rng.bytes(5000),
    }
    paths = {}
    for label, content in files.items():
        paths[label] = tmp_path / f"BAD{label}_S_001_1.0"
        paths[label].write_bytes(content)
    return paths


@pytest.mark.parametrize("label, reason", [
    ("half", "damaged or truncated"), ("tail", "damaged or truncated"), ("random", "not a Bruker OPUS file"),
    ("empty", "empty"), ("signature_only", "damaged or truncated"),
])
def test_broken_opus_files_name_the_file(broken_opus, label, reason):
    path = broken_opus[label]
    with pytest.raises(SoilCarbonError) as info:
        read_spectra(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and reason in message
    assert "remove" in message                                  # says what to do


def test_folder_failures_raise_or_skip(tmp_path, opus_files):
    for path in opus_files[:3]:
        shutil.copy(path, tmp_path / path.name)
    (tmp_path / "lab.csv").write_text("sample_id,oc\nx,1\n")     # ignored: not an OPUS file
    (tmp_path / "README.txt").write_text("scans of May")
    (tmp_path / ".hidden.0").write_bytes(b"junk")
    assert [p.name for p in list_opus_files(tmp_path)] == [p.name for p in opus_files[:3]]
    bad = tmp_path / "ZZ001_S_001_1.0"
    bad.write_bytes(opus_files[3].read_bytes()[:20000])
    with pytest.raises(SoilCarbonError) as info:
        read_opus_folder(tmp_path)
    assert "1 file(s) cannot be read: ZZ001_S_001_1.0" in str(info.value)
    s, failures = read_opus_folder(tmp_path, on_error="skip")
    assert s.n_samples == 3 and [f for f, _ in failures] == ["ZZ001_S_001_1.0"]
    assert "damaged or truncated" in failures[0][1]
    assert s.detected["failures"] == failures


def test_folder_duplicate_ids_name_both_files(tmp_path, opus_files):
    shutil.copy(opus_files[0], tmp_path / "WHRC11094_S_002_150.0")
    shutil.copy(opus_files[1], tmp_path / "WHRC11094_S_003_151.0")
    with pytest.raises(SoilCarbonError) as info:
        read_opus_folder(tmp_path)
    assert "WHRC11094_S_002_150.0 and WHRC11094_S_003_151.0" in str(info.value)
    assert "'WHRC11094'" in str(info.value)
    s, _ = read_opus_folder(tmp_path, id_pattern=r"^(.*)\.0$")
    assert s.ids.tolist() == ["WHRC11094_S_002_150", "WHRC11094_S_003_151"]


def test_folder_aligns_a_shifted_axis_onto_the_first_file(tmp_path, opus_files):
    first, second = opus_files[0], opus_files[1]
    shutil.copy(first, tmp_path / first.name)
    fxv, lxv, npt, _, y2 = opus_reference(second)
    shifted = patch_axis(second.read_bytes(), (fxv, lxv), (fxv + 0.7, lxv + 0.7))
    (tmp_path / second.name).write_bytes(shifted)
    s, _ = read_opus_folder(tmp_path)
    assert s.detected["aligned"] == [second.name]
    # by hand: the second spectrum sits on axis + 0.7, resampled onto the first file's axis
    own = np.linspace(fxv + 0.7, lxv + 0.7, npt)
    target = np.linspace(*opus_reference(first)[:3])
    expected = np.interp(target[::-1], own[::-1], y2[::-1])[::-1]
    np.testing.assert_allclose(s.values[1], expected, rtol=0, atol=1e-12)
    assert not np.allclose(s.values[1], y2)


def test_folder_with_incompatible_axes_names_the_odd_file(tmp_path, opus_files):
    first, second = opus_files[0], opus_files[1]
    shutil.copy(first, tmp_path / first.name)
    fxv, lxv, *_ = opus_reference(second)
    nir = patch_axis(second.read_bytes(), (fxv, lxv), (12000.0, 4000.0))
    (tmp_path / second.name).write_bytes(nir)
    with pytest.raises(SoilCarbonError) as info:
        read_opus_folder(tmp_path)
    message = str(info.value)
    assert message.startswith(str(tmp_path / second.name)) and f"from {first.name}" in message
    assert "12000-4000 cm-1" in message


def test_read_spectra_dispatch(tmp_path, nirsoil_csv, opus_dir, opus_files):
    assert read_spectra(nirsoil_csv).detected["format"] == "csv"
    assert read_spectra(opus_files[0]).detected["format"] == "opus"
    assert read_spectra(opus_dir).n_samples == 40
    # an OPUS file without a numeric extension is recognised by its signature
    shutil.copy(opus_files[0], tmp_path / "WHRC1_scan.opus")
    assert read_spectra(tmp_path / "WHRC1_scan.opus").ids.tolist() == ["WHRC1"]
    (tmp_path / "notes.doc").write_text("hello")
    with pytest.raises(SoilCarbonError, match="notes.doc: unknown file type"):
        read_spectra(tmp_path / "notes.doc")
    with pytest.raises(SoilCarbonError, match="nothere.csv: no such file"):
        read_spectra(tmp_path / "nothere.csv")
    empty = tmp_path / "emptydir"
    empty.mkdir()
    with pytest.raises(SoilCarbonError, match="emptydir: no OPUS files found"):
        read_spectra(empty)


# ------------------------------------------------------------------------------------- lab
def _spectra(ids):
    return Spectra(ids=ids, axis=[1100.0, 1102.0], unit="nm", values=np.ones((len(ids), 2)),
                   meta=pd.DataFrame({"site": [f"s{i}" for i in range(len(ids))]}))


def test_join_reports_both_sides(tmp_path):
    lab_path = tmp_path / "lab.csv"
    lab_path.write_text("sample_id,oc\n 002 ,2.5\n001,1.5\n009,9\n")
    lab = read_lab(lab_path)
    assert lab["sample_id"].tolist() == ["002", "001", "009"]
    joined, report = join_lab(_spectra(["001", "002", "003"]), lab)
    assert joined.ids.tolist() == ["001", "002"]
    assert joined.meta["oc"].tolist() == [1.5, 2.5] and joined.meta["site"].tolist() == ["s0", "s1"]
    assert report.to_dict() == {"n_spectra": 3, "n_lab": 3, "n_matched": 2,
                                "only_in_spectra": ["003"], "only_in_lab": ["009"]}
    assert "without lab values: 003" in report.summary()


@pytest.mark.parametrize("text, message", [
    ("", "the lab table is empty"),
    ("id,oc\n1,2\n", "id column 'sample_id' not found"),
    ("sample_id,oc\na,1\na,2\n", "duplicate ids in the lab table: a"),
    ("sample_id,oc\na,1\n,2\n", "without 'sample_id' (line(s) 3)"),
])
def test_bad_lab_tables(tmp_path, text, message):
    path = tmp_path / "lab.csv"
    path.write_text(text)
    with pytest.raises(SoilCarbonError) as info:
        read_lab(path)
    assert str(info.value).startswith(f"{path}: ") and message in str(info.value)


def test_join_without_matches_or_with_clashing_columns(tmp_path):
    path = tmp_path / "lab.csv"
    path.write_text("sample_id,site\nx1,1\nx2,2\n")
    lab = read_lab(path)
    with pytest.raises(SoilCarbonError) as info:
        join_lab(_spectra(["a", "b"]), lab)
    assert "no lab id matches" in str(info.value) and "spectra: a, b" in str(info.value)
    assert "lab: x1, x2" in str(info.value)
    with pytest.raises(SoilCarbonError, match="column\\(s\\) site exist in both"):
        join_lab(_spectra(["x1"]), lab)
