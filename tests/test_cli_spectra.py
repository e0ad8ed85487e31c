"""``soilcarbon spectra inspect|convert`` in a real subprocess, on real files and on broken ones."""

import csv
import json
import shutil
import struct

import numpy as np
import pyarrow.parquet as pq
import pytest
from cli_helpers import only_error_line


def opus_axis(path):
    """(FXV, LXV, NPT) values that occur most often in the file's parameter blocks, read by hand."""
    raw = path.read_bytes()
    found = []
    for key, fmt in ((b"FXV\0", "<d"), (b"LXV\0", "<d"), (b"NPT\0", "<i")):
        values, start = [], 0
        while (start := raw.find(key, start)) >= 0:
            values.append(struct.unpack_from(fmt, raw, start + 8)[0])
            start += 4
        found.append(max(set(values), key=values.count))
    return tuple(found)


def test_inspect_nirsoil_json(run_cli, nirsoil_csv):
    code, out, err = run_cli("spectra", "inspect", nirsoil_csv, "--json")
    assert code == 0, err
    info = json.loads(out)
    assert (info["n_samples"], info["n_points"], info["axis_unit"]) == (618, 700, "nm")
    assert (info["axis_min"], info["axis_max"]) == (1100.0, 2498.0)
    assert info["n_missing"] == 0 and info["missing_meta"]["Ciso"] == 70
    assert info["meta_columns"] == ["Nt", "Ciso", "CEC"] and info["unit_from"] == "guessed from the axis"


def test_inspect_table_output(run_cli, nirsoil_csv):
    code, out, err = run_cli("spectra", "inspect", nirsoil_csv)
    assert code == 0, err
    assert "618" in out and "1100 -> 2498 nm" in out and "Nt, Ciso, CEC" in out and "Ciso: 70" in out


def test_inspect_opus_folder_with_lab_and_plot(run_cli, opus_dir, opus_lab_csv, tmp_path):
    plot = tmp_path / "spectra.png"
    code, out, err = run_cli("spectra", "inspect", opus_dir, "--lab", opus_lab_csv, "--json", "--plot", plot)
    assert code == 0, err
    info = json.loads(out)
    fxv, lxv, npt = opus_axis(sorted(opus_dir.iterdir())[0])
    assert (info["n_samples"], info["n_points"], info["axis_unit"]) == (40, npt, "cm-1")
    assert info["axis_max"] == pytest.approx(fxv, abs=1e-9) and info["axis_min"] == pytest.approx(lxv, abs=1e-9)
    assert info["ids_without_lab"] == [] and info["lab"]["n_matched"] == 40 and info["n_missing"] == 0
    assert info["files"] == 40 and info["failures"] == []
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 10_000
    assert [p.name for p in tmp_path.iterdir()] == ["spectra.png"]


def test_inspect_reports_ids_without_lab_values(run_cli, opus_dir, opus_lab_csv, tmp_path):
    with open(opus_lab_csv, newline="") as handle:
        rows = list(csv.reader(handle))
    lab = tmp_path / "lab.csv"
    with open(lab, "w", newline="") as handle:
        csv.writer(handle).writerows(rows[:1] + rows[3:] + [["EXTRA1", "1", "1", "1", "1"]])
    code, out, err = run_cli("spectra", "inspect", opus_dir, "--lab", lab, "--json")
    assert code == 0, err
    info = json.loads(out)
    assert info["ids_without_lab"] == [rows[1][0], rows[2][0]]
    assert info["lab_ids_without_spectra"] == ["EXTRA1"] and info["lab"]["n_matched"] == 38
    code, out, err = run_cli("spectra", "inspect", opus_dir, "--lab", lab)
    assert code == 0 and rows[1][0] in out and "38 of 40" in out


def test_convert_opus_folder_with_lab_to_parquet(run_cli, opus_dir, opus_lab_csv, tmp_path):
    out_path = tmp_path / "mir.parquet"
    code, out, err = run_cli("spectra", "convert", opus_dir, out_path, "--lab", opus_lab_csv)
    assert code == 0, err
    assert "wrote 40 samples x 3017 points (cm-1)" in out
    table = pq.read_table(out_path)                       # read back with pyarrow alone
    assert table.schema.metadata[b"soilcarbon.unit"] == b"cm-1"
    names = table.column_names
    assert names[:6] == ["sample_id", "source_file", "oc_g_per_kg", "sand_pct", "silt_pct", "clay_pct"]
    assert len(names) == 6 + 3017
    first = sorted(opus_dir.iterdir())[0]
    fxv, lxv, npt = opus_axis(first)
    axis = np.array([float(n) for n in names[6:]])
    np.testing.assert_allclose(axis, np.linspace(fxv, lxv, npt), rtol=0, atol=1e-9)
    frame = table.to_pandas()
    assert frame["sample_id"].iloc[0] == first.name.split("_")[0]
    with open(opus_lab_csv, newline="") as handle:
        lab = {r["sample_id"]: float(r["oc_g_per_kg"]) for r in csv.DictReader(handle)}
    assert frame["oc_g_per_kg"].tolist() == [lab[i] for i in frame["sample_id"]]
    assert [p.name for p in tmp_path.iterdir()] == ["mir.parquet"]


def test_convert_csv_round_trips_values(run_cli, nirsoil_csv, tmp_path):
    out_path = tmp_path / "nir.parquet"
    code, out, err = run_cli("spectra", "convert", nirsoil_csv, out_path)
    assert code == 0, err
    frame = pq.read_table(out_path).to_pandas()
    with open(nirsoil_csv, newline="") as handle:
        rows = list(csv.reader(handle))
    assert len(frame) == 618 and list(frame.columns) == rows[0]
    assert frame["2498"].iloc[-1] == float(rows[-1][rows[0].index("2498")])


# --------------------------------------------------------------------------------- bad input
def _opus_copy(opus_dir, folder, n=2):
    folder.mkdir()
    files = sorted(opus_dir.iterdir())[:n]
    for path in files:
        shutil.copy(path, folder / path.name)
    return files


def _bad_inputs(tmp_path, opus_dir):
    """label -> (input path, extra CLI args, substrings the error line must contain)."""
    cases = {}
    first = sorted(opus_dir.iterdir())[0]
    raw = first.read_bytes()

    half = tmp_path / "in" / "HALF_S_1.0"
    half.parent.mkdir()
    half.write_bytes(raw[: len(raw) // 2])
    cases["truncated opus"] = (half, [], [str(half), "truncated"])

    rand = tmp_path / "in" / "RAND_S_1.0"
    rand.write_bytes(np.random.default_rng(1).bytes(4096))
    cases["random bytes"] = (rand, [], [str(rand), "not a Bruker OPUS file"])

    folder = tmp_path / "mixed"
    files = _opus_copy(opus_dir, folder)
    odd = folder / files[1].name
    data = bytearray(odd.read_bytes())
    fxv, lxv, _ = opus_axis(files[1])
    for key, old, new in ((b"FXV\0", fxv, 9000.0), (b"LXV\0", lxv, 4000.0)):
        start = 0
        while (start := data.find(key, start)) >= 0:
            if struct.unpack_from("<d", data, start + 8)[0] == old:
                struct.pack_into("<d", data, start + 8, new)
            start += 4
    odd.write_bytes(bytes(data))
    cases["incompatible axes"] = (folder, [], [str(odd), "does not cover", files[0].name])

    dupfolder = tmp_path / "dups"
    files = _opus_copy(opus_dir, dupfolder)
    shutil.copy(files[0], dupfolder / (files[0].name.split("_")[0] + "_S_009_999.0"))
    cases["duplicate ids across files"] = (dupfolder, [], [files[0].name, "_S_009_999.0", "both give sample id"])

    badfolder = tmp_path / "badfolder"
    files = _opus_copy(opus_dir, badfolder)
    (badfolder / "CUT_S_1.0").write_bytes(raw[:1000])
    cases["unreadable file in folder"] = (badfolder, [], ["CUT_S_1.0", "cannot be read"])

    text = tmp_path / "in" / "text.csv"
    text.write_text("sample_id,1100,1102,1104\nS1,0.1,0.2,0.3\nS2,0.1,oops,0.3\n")
    cases["non-numeric value"] = (text, [], [str(text), "'1102'", "sample S2", "'oops'"])

    dup = tmp_path / "in" / "dup.csv"
    dup.write_text("sample_id,1100,1102\nS1,0.1,0.2\nS1,0.1,0.2\n")
    cases["duplicate ids"] = (dup, [], [str(dup), "duplicate sample ids: S1"])

    empty = tmp_path / "in" / "empty.csv"
    empty.write_text("")
    cases["empty csv"] = (empty, [], [str(empty), "empty"])

    cases["--unit nm on OPUS"] = (first, ["--unit", "nm"], [str(first), "cm-1"])

    mir = tmp_path / "in" / "mir.csv"
    mir.write_text("sample_id,4000,3000,2000,600\nS1,1,2,3,4\n")
    cases["--unit nm on a MIR table"] = (mir, ["--unit", "nm"], [str(mir), "not plausible in nm", "cm-1"])

    missing = tmp_path / "in" / "nothere.csv"
    cases["missing input"] = (missing, [], [str(missing), "no such file"])
    return cases


BAD_CASES = ["truncated opus", "random bytes", "incompatible axes", "duplicate ids across files",
             "unreadable file in folder", "non-numeric value", "duplicate ids", "empty csv", "--unit nm on OPUS",
             "--unit nm on a MIR table", "missing input"]


@pytest.mark.parametrize("label", BAD_CASES)
def test_bad_inputs_exit_2_with_one_error_line_and_no_output(run_cli, opus_dir, tmp_path, capsys, label):
    path, extra, expected = _bad_inputs(tmp_path, opus_dir)[label]
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    code, out, err = run_cli("spectra", "convert", path, out_dir / "result.parquet", *extra)
    assert code == 2, (out, err)
    line = only_error_line(err)
    for part in expected:
        assert part in line, line
    assert list(out_dir.iterdir()) == []                 # no output, no temporary file
    # inspect gives the same single line (in-process: the same main(), without a second interpreter)
    from soilcarbon.cli import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["spectra", "inspect", str(path), "--json", *extra])
    captured = capsys.readouterr()
    assert exit_info.value.code == 2 and captured.out == ""
    assert only_error_line(captured.err) == line


def test_convert_refuses_a_non_parquet_output(run_cli, nirsoil_csv, tmp_path):
    code, out, err = run_cli("spectra", "convert", nirsoil_csv, tmp_path / "out.csv")
    assert code == 2
    line = only_error_line(err)
    assert "out.csv" in line and ".parquet" in line
    assert list(tmp_path.iterdir()) == []


def test_lab_without_matching_ids_and_bad_plot_name(run_cli, opus_dir, tmp_path):
    lab = tmp_path / "lab.csv"
    lab.write_text("sample_id,oc\nX1,1\nX2,2\n")
    code, _, err = run_cli("spectra", "convert", opus_dir, tmp_path / "o.parquet", "--lab", lab)
    assert code == 2
    line = only_error_line(err)
    assert str(lab) in line and "no lab id matches" in line and "X1" in line and "WHRC11094" in line
    code, _, err = run_cli("spectra", "inspect", opus_dir, "--plot", tmp_path / "plot.bmp")
    assert code == 2 and "plot.bmp" in only_error_line(err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lab.csv"]


def test_skip_bad_reports_skipped_files(run_cli, opus_dir, tmp_path):
    folder = tmp_path / "scans"
    _opus_copy(opus_dir, folder, n=3)
    (folder / "CUT_S_1.0").write_bytes(b"\n\n\xfe\xfe" + b"\0" * 10)
    code, out, err = run_cli("spectra", "inspect", folder, "--json", "--skip-bad")
    assert code == 0, err
    info = json.loads(out)
    assert info["n_samples"] == 3 and [f["file"] for f in info["failures"]] == ["CUT_S_1.0"]


def test_inspect_reports_missing_spectral_values_but_convert_refuses_them(tmp_path, capsys):
    from soilcarbon.cli import main

    path = tmp_path / "gaps.csv"
    path.write_text("sample_id,wn_4000,wn_3998,wn_3996\nA,1,,3\nB,1,2,3\nC,,,3\n")
    main(["spectra", "inspect", str(path), "--json"])
    info = json.loads(capsys.readouterr().out)
    assert (info["n_missing"], info["samples_with_missing"]) == (3, ["A", "C"])
    assert (info["axis_unit"], info["unit_from"], info["column_prefix"]) == ("cm-1", "prefix 'wn_'", "wn_")
    out_path = tmp_path / "gaps.parquet"
    with pytest.raises(SystemExit) as exit_info:
        main(["spectra", "convert", str(path), str(out_path)])
    assert exit_info.value.code == 2
    assert "missing values in sample(s) A, C" in only_error_line(capsys.readouterr().err)
    assert not out_path.exists()
    main(["spectra", "convert", str(path), str(out_path), "--allow-missing"])
    assert pq.read_table(out_path).num_rows == 3
