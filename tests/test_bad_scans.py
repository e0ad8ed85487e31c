"""No believable number from a bad scan (issue 10): each input that used to give a normal-looking
prediction is reproduced on real files and run through the real entry points (CLI, pyfunc, REST).

Models are the session-wide ones of ``serving_models`` (real PLS calibrations on nirsoil and on
the opus-sample MIR spectra, in a real MLflow SQLite store).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cli_helpers import cli_in_process, only_error_line
from conftest import CORN_DIR, NIRSOIL_CSV, OPUS_DIR, SHARED_DATA

from soilcarbon.spectral.quality import scan_problems

NIR = "models:/soc-nir/1"


@pytest.fixture(scope="module")
def nir_rows() -> pd.DataFrame:
    return pd.read_csv(NIRSOIL_CSV, nrows=12)


def only(folder, *names) -> None:
    assert sorted(p.name for p in folder.iterdir()) == sorted(names)


def spectral_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if c.replace(".", "").isdigit()]


# ------------------------------------------------------------------------------------------ 1. scan quality
def test_no_real_spectrum_is_flagged(shared_data):
    """The thresholds were chosen so that no real scan of ../shared/data is a bad scan, including
    LimeSoDa's SC.93 whose reflectance is rounded to 0.1 % (runs of up to 200 equal values)."""
    from soilcarbon.spectral.readers import read_spectra

    sources = [NIRSOIL_CSV, OPUS_DIR, *sorted(CORN_DIR.glob("*.csv")), SHARED_DATA / "limesoda" / "SC.93.parquet"]
    for source in sources:
        spectra = read_spectra(source, allow_nan=True)
        complete = ~np.isnan(spectra.values).any(axis=1)
        assert complete.sum() >= 40, source
        assert scan_problems(spectra.values[complete]) == {}, source



def test_scan_check_is_the_same_in_every_memory_layout(nir_rows):
    """``equal_neighbours`` compares the flat buffer (row- or column-major); the counts, and so the
    rows flagged and their messages, are those of the plain 2-D comparison in every layout, with
    NaN, infinite, rounded (long runs of equal values) and bad-scan rows."""
    from soilcarbon.spectral.quality import equal_neighbours

    values = bad_scans(nir_rows)[spectral_columns(nir_rows)].to_numpy(dtype=float)
    rounded = np.round(values[:4], 3)  # runs of equal neighbours, as in LimeSoDa's SC.93
    odd = values[:4].copy()
    odd[0, 5], odd[1, 0], odd[2, -1], odd[3, 10:20] = np.nan, np.inf, -np.inf, np.nan
    matrix = np.vstack([values, rounded, odd, values[:1]])
    expected_counts = np.count_nonzero(matrix[:, 1:] == matrix[:, :-1], axis=1)
    assert expected_counts[12:16].min() > 14  # the rounded rows reach the sort
    expected = scan_problems(matrix.copy(order="C"))
    assert sorted(expected) == [4, 5, 6, 7, 8, 9, 10, 11]
    wide = np.hstack([matrix, matrix])
    for layout in (matrix.copy(order="C"), matrix.copy(order="F"), wide[:, 700:], matrix[:, ::-1].copy()[:, ::-1],
                   np.asfortranarray(wide)[:, 700:], np.asfortranarray(np.repeat(matrix, 2, axis=0))[::2]):
        assert np.array_equal(equal_neighbours(layout), expected_counts)
        assert scan_problems(layout) == expected
    for rows in (1, 2):  # a row or two, and a two-point spectrum
        assert np.array_equal(equal_neighbours(matrix[:rows]), expected_counts[:rows])
        pair = np.asfortranarray(matrix[:rows, :2])
        assert np.array_equal(equal_neighbours(pair), np.count_nonzero(pair[:, 1:] == pair[:, :-1], axis=1))

def bad_scans(rows: pd.DataFrame) -> pd.DataFrame:
    """Rows 0-3 real; the others: constants from a blank (0.001) to a saturated (2.0) scan, a flat
    scan with tiny noise, a real scan clipped at its 70th percentile, and one 60 % filled with 0.5."""
    frame = rows.copy()
    columns = spectral_columns(frame)
    values = frame[columns].to_numpy(dtype=float, copy=True)
    for row, constant in zip(range(4, 8), (0.001, 0.3, 1.0, 2.0)):
        values[row] = constant
    values[8] = 0.4 + np.random.default_rng(0).normal(0, 1e-6, len(columns))
    values[9] = np.minimum(values[9], np.quantile(values[9], 0.7))
    values[10, 100:520] = 0.5
    values[11] = 0.0
    frame[columns] = values
    return frame


EXPECTED = {4: "flat spectrum: every one of its 700 values is 0.001", 5: "every one of its 700 values is 0.3",
            6: "every one of its 700 values is 1 ", 7: "every one of its 700 values is 2 ",
            8: "flat spectrum: its values vary by", 9: "clipped or mostly constant spectrum: 210 of its 700 values (30%) are exactly 0.417047 (its maximum)",
            10: "420 of its 700 values (60%) are exactly 0.5 (its maximum)", 11: "every one of its 700 values is 0 "}


def test_bad_scans_are_problems_on_the_cli(store, tmp_path, nir_rows, capsys):
    source = tmp_path / "scans.csv"
    bad_scans(nir_rows).to_csv(source, index=False)
    out, problems = tmp_path / "pred.csv", tmp_path / "problems.csv"
    code, _, stderr = cli_in_process(capsys, "predict", "--model", NIR, "--spectra", source, "-o", out,
                                     "--problems", problems, "--quiet")
    assert code == 0, stderr
    predicted = pd.read_csv(out)
    assert predicted["prediction"].iloc[:4].notna().all()
    assert predicted["prediction"].iloc[4:].isna().all() and predicted["upper"].iloc[4:].isna().all()
    reasons = pd.read_csv(problems).set_index("sample_id")["reason"]
    for row, text in EXPECTED.items():
        assert text in reasons[nir_rows["sample_id"][row]] + " ", (row, reasons[nir_rows["sample_id"][row]])
    assert "clipped or mostly constant spectrum" in stderr


def test_bad_scans_through_the_pyfunc(store, nir_rows):
    """The rule is in the model itself: ``mlflow.pyfunc.load_model(...).predict`` gives no number either."""
    import mlflow

    model = mlflow.pyfunc.load_model(NIR)
    frame = bad_scans(nir_rows)[["sample_id", *spectral_columns(nir_rows)]]
    result = model.predict(frame)
    assert result["prediction"].iloc[:4].notna().all()
    assert result["prediction"].iloc[4:].isna().all()
    assert not result["in_domain"].iloc[4:].any()


@pytest.fixture(scope="module")
def api(store):
    """The real FastAPI app of ``soilcarbon serve`` for models:/soc-nir/1, called in this process."""
    from fastapi.testclient import TestClient

    from soilcarbon.serving.api import create_app

    with TestClient(create_app(NIR)) as client:
        yield client


def request_body(rows: pd.DataFrame, **extra) -> dict:
    columns = spectral_columns(rows)
    samples = [{"id": str(sid), "values": [None if np.isnan(v) else float(v) for v in row]}
               for sid, row in zip(rows["sample_id"], rows[columns].to_numpy(dtype=float))]
    return {"axis": [float(c) for c in columns], "unit": "nm", "samples": samples, **extra}


# ------------------------------------------------------------------------------------------ 3. level
def test_level_beyond_the_calibration_is_refused(store, tmp_path, capsys, nir_rows, api):
    """200 calibration samples support finite bounds up to 200/201 = 0.9950; 0.999 used to give
    upper = inf (CLI) and null (REST) with exit 0."""
    source = tmp_path / "five.csv"
    nir_rows.head(5).to_csv(source, index=False)
    out = tmp_path / "pred.csv"
    code, _, stderr = cli_in_process(capsys, "predict", "--model", NIR, "--spectra", source, "-o", out,
                                     "--level", "0.999")
    assert code == 2
    line = only_error_line(stderr)
    assert "level 0.999 is more than this model's calibration supports" in line
    assert "the highest supported level is 0.9950" in line
    only(tmp_path, "five.csv")
    code, _, stderr = cli_in_process(capsys, "predict", "--model", NIR, "--spectra", source, "-o", out,
                                     "--level", "0.995", "--quiet")
    assert code == 0, stderr
    assert np.isfinite(pd.read_csv(out)[["lower", "upper"]].to_numpy()).all()
    answer = api.post("/v1/predict", json=request_body(nir_rows.head(2), level=0.999))
    assert answer.status_code == 422
    assert "the highest supported level is 0.9950" in answer.json()["error"]


# ------------------------------------------------------------------------------------------ 4. decimal comma
def test_semicolon_decimal_comma_csv_is_read(store, tmp_path, capsys, nir_rows):
    """A European-locale export (``;`` between fields, ``0,3127``) used to predict 0 of 10 samples, exit 0."""
    rows = nir_rows.head(10)[["sample_id", *spectral_columns(nir_rows)]]
    plain, european = tmp_path / "plain.csv", tmp_path / "european.csv"
    rows.to_csv(plain, index=False)
    rows.to_csv(european, index=False, sep=";", decimal=",")
    outputs = []
    for source in (plain, european):
        out = tmp_path / f"pred-{source.stem}.csv"
        code, _, stderr = cli_in_process(capsys, "predict", "--model", NIR, "--spectra", source, "-o", out, "--quiet")
        assert code == 0, stderr
        outputs.append(pd.read_csv(out))
    assert outputs[1]["prediction"].notna().all()
    pd.testing.assert_frame_equal(outputs[0], outputs[1])
    from soilcarbon.spectral.readers import read_spectra

    assert np.array_equal(read_spectra(european).values, read_spectra(plain).values)


def test_a_run_that_predicts_nothing_is_an_error(store, tmp_path, capsys, nir_rows):
    frame = bad_scans(nir_rows).iloc[4:8]
    source = tmp_path / "blank.csv"
    frame.to_csv(source, index=False)
    code, _, stderr = cli_in_process(capsys, "predict", "--model", NIR, "--spectra", source, "-o",
                                     tmp_path / "pred.csv")
    assert code == 2
    line = only_error_line(stderr)
    assert f"{source}: none of the 4 sample(s) could be predicted (first: sample NIRsoil-5: not predictable: flat" in line
    only(tmp_path, "blank.csv")


# ------------------------------------------------------------------------------------------ 5. ids and headers
def predict_error(capsys, tmp_path, frame: pd.DataFrame, *extra) -> str:
    """Write ``frame`` (header as given) and run ``predict``: exit 2, one error line, no output."""
    source = tmp_path / "input.csv"
    frame.to_csv(source, index=False)
    code, _, stderr = cli_in_process(capsys, "predict", "--model", NIR, "--spectra", source, "-o",
                                     tmp_path / "pred.csv", *extra)
    assert code == 2, stderr
    only(tmp_path, "input.csv")
    return only_error_line(stderr)


def test_duplicate_ids_in_predict_input(store, tmp_path, capsys, nir_rows):
    frame = nir_rows.head(6).copy()
    frame.loc[4, "sample_id"] = "NIRsoil-2"
    line = predict_error(capsys, tmp_path, frame)
    assert "input.csv: duplicate sample id(s) NIRsoil-2; every sample needs its own id" in line


@pytest.mark.parametrize("edit, message", [
    (lambda c: {"1500": "abc"}, "column 'abc' stands where the spectral point between '1498' and '1502' is missing"),
    (lambda c: {"1502": "1500"}, "column(s) '1500' appear more than once"),
    (lambda c: {"1502": "1500.0"}, "spectral column '1500.0' follows '1500': spectral columns must be in increasing"),
])
def test_bad_spectral_headers_are_refused_naming_the_column(store, tmp_path, capsys, nir_rows, edit, message):
    """``abc`` used to become metadata and its point be interpolated; a repeated ``1500`` was read by
    pandas as a new point ``1500.1``. Training (read_spectra) applies the same rule."""
    from soilcarbon.errors import SoilCarbonError
    from soilcarbon.spectral.readers import read_spectra

    frame = nir_rows.head(4)
    names = [edit(None).get(c, c) for c in frame.columns]
    frame = frame.set_axis(names, axis=1)
    assert message in predict_error(capsys, tmp_path, frame)
    (tmp_path / "pred.csv").unlink(missing_ok=True)
    with pytest.raises(SoilCarbonError, match=message.split(":")[0].replace("(", r"\(").replace(")", r"\)")):
        read_spectra(tmp_path / "input.csv")


def test_descending_nm_columns_need_the_unit(store, tmp_path, capsys, nir_rows):
    """nm columns exported high to low used to be taken for cm-1 (then refused as out of range)."""
    columns = spectral_columns(nir_rows)
    frame = nir_rows.head(4)[["sample_id", *columns[::-1]]]
    line = predict_error(capsys, tmp_path, frame)
    assert "spectral columns run downwards from '2498' to '1100'" in line and "--unit nm" in line
    out = tmp_path / "pred.csv"
    code, _, stderr = cli_in_process(capsys, "predict", "--model", NIR, "--spectra", tmp_path / "input.csv",
                                     "-o", out, "--unit", "nm", "--quiet")
    assert code == 0, stderr
    assert pd.read_csv(out)["prediction"].notna().all()


def test_the_cli_and_the_pyfunc_read_a_table_by_one_rule(store, tmp_path, capsys, nir_rows):
    """The pyfunc had its own copy of the table -> matrix step; the two disagreed. Unprefixed columns
    running 2498..1100 were taken for the model's nm by the pyfunc (the CLI asks for the unit: they
    could be cm-1); an infinite value was the pyfunc's "beyond what the model can process" and text
    in a cell named no sample. Both now go through ``soilcarbon.models.matrix``."""
    import mlflow

    from soilcarbon.errors import SoilCarbonError

    columns = spectral_columns(nir_rows)
    python_model = mlflow.pyfunc.load_model(NIR).unwrap_python_model()  # MLflow's schema check would reorder
    descending = nir_rows.head(4)[["sample_id", *columns[::-1]]]
    line = predict_error(capsys, tmp_path, descending)
    with pytest.raises(SoilCarbonError) as info:
        python_model.predict(None, descending)
    refused = "spectral columns run downwards from '2498' to '1100': as wavenumbers (cm-1) or as wavelengths (nm)"
    assert refused in line and refused in str(info.value)
    (tmp_path / "input.csv").unlink()

    source, problems = tmp_path / "input.csv", tmp_path / "problems.csv"

    def cli_reasons(table: pd.DataFrame) -> list:
        table.to_csv(source, index=False)
        code, _, stderr = cli_in_process(capsys, "predict", "--model", NIR, "--spectra", source, "-o",
                                         tmp_path / "pred.csv", "--problems", problems, "--quiet")
        assert code == 0, stderr
        return pd.read_csv(problems)["reason"].tolist()

    frame = nir_rows.head(4)[["sample_id", *columns]].astype({columns[5]: object})
    frame.loc[1, columns[5]] = np.inf
    reason = "infinite value in column '1110'"
    assert cli_reasons(frame) == [reason]
    result = python_model.predict(None, frame)
    assert result["prediction"].isna().tolist() == [False, True, False, False]
    assert result.attrs["failures"] == {1: reason}
    frame.loc[1, columns[5]] = "abc"
    reason = "non-numeric value 'abc' in column '1110'"
    assert cli_reasons(frame) == [reason]
    with pytest.raises(SoilCarbonError, match=f"the input: sample {nir_rows['sample_id'][1]}: {reason}; fix the value"):
        python_model.predict(None, frame)


# ------------------------------------------------------------------------------------------ 2. coarse grid
def test_coarser_grid_than_the_model(store, tmp_path, capsys, nir_rows):
    """10 nm data for the 2 nm model is refused with the factor; 4 nm is re-gridded and said so."""
    columns = spectral_columns(nir_rows)
    line = predict_error(capsys, tmp_path, nir_rows.head(4)[["sample_id", *columns[::5]]])
    assert "spaced every 10 nm, 5.0 times coarser than the model's 2 nm; at most 2 times" in line
    source, out = tmp_path / "four.csv", tmp_path / "pred4.csv"
    nir_rows.head(4)[["sample_id", *columns[::2]]].to_csv(source, index=False)
    code, _, stderr = cli_in_process(capsys, "predict", "--model", NIR, "--spectra", source, "-o", out, "--quiet")
    assert code == 0, stderr
    assert f"note: {source}: re-gridded 350 points 1100-2496 nm (step 4 nm) onto the model's 700 points" in stderr
    import mlflow

    from soilcarbon.errors import SoilCarbonError

    python_model = mlflow.pyfunc.load_model(NIR).unwrap_python_model()  # MLflow's schema check would stop it first
    with pytest.raises(SoilCarbonError, match="5.0 times coarser"):
        python_model.predict(None, nir_rows.head(2)[["sample_id", *columns[::5]]])


# ------------------------------------------------------------------------------------------ 6. REST like the CLI
def test_rest_reports_per_sample_problems_like_the_cli(store, tmp_path, capsys, nir_rows, api):
    """A null value, an empty id and a flat scan used to reject the whole request (or, for the flat
    scan, pass as a believable number); now each is a per-sample problem, as on the CLI."""
    rows = nir_rows.head(5).copy()
    body = request_body(rows)
    body["samples"][1]["values"][7] = None
    body["samples"][2]["id"] = "  "
    body["samples"][3]["values"] = [0.8] * len(body["axis"])
    answer = api.post("/v1/predict", json=body)
    assert answer.status_code == 200, answer.text
    predictions = answer.json()["predictions"]
    assert [p["id"] for p in predictions] == ["NIRsoil-1", "NIRsoil-2", "", "NIRsoil-4", "NIRsoil-5"]
    problems = [p["problem"] for p in predictions]
    assert problems[0] is None and problems[4] is None
    assert problems[1] == "1 missing spectral value(s), first in column '1114'"
    assert problems[2] == "no sample id"
    assert problems[3].startswith("not predictable: flat spectrum: every one of its 700 values is 0.8")
    for k in (1, 2, 3):
        assert predictions[k]["prediction"] is None and predictions[k]["upper"] is None
    # the CLI on the same samples: same rows predicted, same reasons, same numbers
    columns = spectral_columns(rows)
    table = rows[["sample_id", *columns]].astype({columns[7]: float})
    table.loc[1, columns[7]] = np.nan
    table.loc[2, "sample_id"] = "  "
    table.loc[3, columns] = 0.8
    source, out, report = tmp_path / "same.csv", tmp_path / "pred.csv", tmp_path / "problems.csv"
    table.to_csv(source, index=False)
    code, _, stderr = cli_in_process(capsys, "predict", "--model", NIR, "--spectra", source, "-o", out,
                                     "--problems", report, "--quiet")
    assert code == 0, stderr
    cli = pd.read_csv(report)["reason"].tolist()
    assert cli == [problems[1], problems[2], problems[3]]
    expected = pd.read_csv(out)["prediction"].to_numpy()
    got = np.array([np.nan if p["prediction"] is None else p["prediction"] for p in predictions])
    np.testing.assert_allclose(got, expected, rtol=1e-9, equal_nan=True)
    nan_text = answer.request.content.decode().replace("null", "NaN", 1)
    assert api.post("/v1/predict", content=nan_text,
                    headers={"content-type": "application/json"}).json()["predictions"][1]["problem"] == problems[1]


def test_rest_covariates_model_reports_a_sample_without_covariates(store):
    """A sample with no covariates used to reject the whole request; now it is its own problem."""
    from fastapi.testclient import TestClient

    from soilcarbon.serving.api import create_app

    with TestClient(create_app(store["cov"])) as client:
        samples = [{"id": "P1", "covariates": {"ndvi": 0.5, "elevation": 120.0, "twi": 6.0}}, {"id": "P2"},
                   {"id": "", "covariates": {"ndvi": 0.4, "elevation": 90.0, "twi": 5.0}}]
        answer = client.post("/v1/predict", json={"samples": samples})
    assert answer.status_code == 200, answer.text
    rows = answer.json()["predictions"]
    assert [r["problem"] for r in rows] == [None, "no covariates row for this sample in the request", "no sample id"]
    assert rows[0]["prediction"] is not None and rows[1]["prediction"] is None and rows[2]["prediction"] is None
