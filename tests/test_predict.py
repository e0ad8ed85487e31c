"""Batch prediction (``soilcarbon predict``) with real models in a real MLflow store.

Reference values come from MLflow itself: ``mlflow.pyfunc.load_model(uri).predict`` on a table
with exactly the model's columns, built here from the CSV. Our command must give the same numbers
after resolving aliases, streaming in chunks, re-gridding other axes and writing files.
"""

from __future__ import annotations

import shutil
import threading
import tracemalloc

import mlflow
import numpy as np
import pandas as pd
import pytest

from cli_helpers import cli_in_process, only_error_line
from conftest import NIRSOIL_CSV, OPUS_DIR, run_cli

from soilcarbon.errors import SoilCarbonError
from soilcarbon.serving.batch import predict_file
from soilcarbon.serving.model import load_model
from soilcarbon.serving.outputs import OUTPUT_COLUMNS

NIR = "models:/soc-nir/1"


@pytest.fixture(scope="module")
def nir_table() -> pd.DataFrame:
    return pd.read_csv(NIRSOIL_CSV)


@pytest.fixture(scope="module")
def signature_columns(store) -> list[str]:
    return mlflow.pyfunc.load_model(NIR).metadata.get_input_schema().input_names()


def mlflow_reference(uri: str, table: pd.DataFrame, columns: list[str], level: float = 0.9) -> pd.DataFrame:
    """Predictions of the model applied directly through MLflow, indexed by sample id."""
    model = mlflow.pyfunc.load_model(uri)
    out = model.predict(table[columns].reset_index(drop=True), params={"level": level})
    return out.set_index("sample_id")


@pytest.fixture(scope="module")
def reference(store, nir_table, signature_columns) -> pd.DataFrame:
    return mlflow_reference(NIR, nir_table, signature_columns)


def assert_matches(result: pd.DataFrame, reference: pd.DataFrame, ids=None) -> None:
    result = result.set_index("sample_id")
    ids = list(result.index) if ids is None else list(ids)
    for column in ("prediction", "lower", "upper", "domain_score"):
        np.testing.assert_allclose(result.loc[ids, column].to_numpy(float), reference.loc[ids, column].to_numpy(float),
                                   rtol=1e-7, atol=1e-9, err_msg=column)
    assert (result.loc[ids, "in_domain"].astype(bool).to_numpy() == reference.loc[ids, "in_domain"].to_numpy()).all()


# ------------------------------------------------------------------------------------------ happy paths
def test_cli_csv_alias_is_resolved_and_numbers_match_mlflow(store, env, reference, tmp_path):
    out = tmp_path / "out.csv"
    code, stdout, stderr = run_cli("predict", "--model", "models:/soc-nir@champion", "--spectra", NIRSOIL_CSV,
                                   "--output", out, "--chunk-size", 100, env=env)
    assert code == 0, stderr
    assert stderr.strip() == ""
    result = pd.read_csv(out, dtype={"sample_id": str})
    assert list(result.columns) == OUTPUT_COLUMNS
    assert len(result) == 618
    assert result["sample_id"].tolist() == [f"NIRsoil-{i}" for i in range(1, 619)]  # input order
    assert set(result["model_uri"]) == {"models:/soc-nir/1"}  # the version, not the alias
    assert (result["level"] == 0.9).all()
    assert_matches(result, reference)
    assert (result["lower"] <= result["prediction"]).all() and (result["prediction"] <= result["upper"]).all()
    assert "618 samples, 618 predicted, 0 not predicted, with models:/soc-nir/1" in stdout
    assert [p.name for p in tmp_path.iterdir()] == ["out.csv"]  # no temporary files left


def test_parquet_to_parquet_at_another_level(store, nir_table, signature_columns, reference, tmp_path):
    from soilcarbon.spectral.spectra import Spectra

    source = tmp_path / "nir.parquet"
    Spectra.from_frame(nir_table.head(150)).to_parquet(source)
    out = tmp_path / "pred.parquet"
    summary = predict_file(NIR, out, spectra=source, level=0.5, chunk_size=40)
    assert (summary.n_samples, summary.n_predicted, summary.n_problems) == (150, 150, 0)
    result = pd.read_parquet(out)
    assert list(result.columns) == OUTPUT_COLUMNS
    assert result["in_domain"].dtype == bool
    assert (result["level"] == 0.5).all()
    assert_matches(result, mlflow_reference(NIR, nir_table.head(150), signature_columns, level=0.5))
    # a 50 % interval is narrower than the 90 % one of the same sample
    wide = reference.loc[result["sample_id"], "upper"].to_numpy() - reference.loc[result["sample_id"], "lower"].to_numpy()
    narrow = (result["upper"] - result["lower"]).to_numpy()
    assert (narrow < wide).all()


def test_spectra_on_other_grids_are_aligned(store, nir_table, reference, tmp_path):
    sample = nir_table.head(60)
    axis = np.arange(1100, 2500, 2.0)
    values = sample[[f"{a:g}" for a in axis]].to_numpy()
    # 1 nm grid: linear interpolation between the 2 nm points, so re-gridding gives them back exactly
    fine = np.arange(1100, 2499, 1.0)
    fine_values = np.array([np.interp(fine, axis, row) for row in values])
    fine_table = pd.DataFrame(fine_values, columns=[f"{a:g}" for a in fine])
    fine_table.insert(0, "sample_id", sample["sample_id"].to_numpy())
    fine_csv = tmp_path / "fine.csv"
    fine_table.to_csv(fine_csv, index=False)
    # wavenumbers: the same points expressed in cm-1 (prefix wn_), highest wavenumber first
    wn = 1e7 / axis
    wn_table = pd.DataFrame(values, columns=[f"wn_{float(v)!r}" for v in wn])
    wn_table.insert(0, "sample_id", sample["sample_id"].to_numpy())
    wn_parquet = tmp_path / "wn.parquet"
    wn_table.to_parquet(wn_parquet)
    for source in (fine_csv, wn_parquet):
        out = tmp_path / f"{source.stem}-pred.csv"
        summary = predict_file(NIR, out, spectra=source, chunk_size=25)
        assert summary.n_predicted == 60
        assert_matches(pd.read_csv(out, dtype={"sample_id": str}), reference)


def test_opus_folder_with_a_damaged_file(store, tmp_path, capsys):
    from soilcarbon.spectral.readers import read_spectra

    folder = tmp_path / "opus"
    folder.mkdir()
    files = sorted(OPUS_DIR.iterdir())[:4]
    for path in files:
        shutil.copy(path, folder / path.name)
    (folder / "BROKEN_S_001_001.0").write_bytes(files[0].read_bytes()[:3000])  # truncated copy
    out = tmp_path / "mir.csv"
    code, stdout, stderr = cli_in_process(capsys, "predict", "--model", store["mir"], "--spectra", folder, "--output", out)
    assert code == 0, stderr
    assert "warning: sample BROKEN_S_001_001.0 not predicted: damaged or truncated OPUS file" in stderr
    assert "4 samples, 4 predicted, 1 not predicted" in stdout
    result = pd.read_csv(out)
    assert result["sample_id"].tolist() == [p.name.split("_")[0] for p in files]
    spectra = read_spectra(OPUS_DIR)
    model = mlflow.pyfunc.load_model(store["mir"])
    frame = spectra.to_frame(include_meta=False)
    frame.columns = ["sample_id"] + model.metadata.get_input_schema().input_names()[1:]
    assert_matches(result, model.predict(frame).set_index("sample_id"))


def test_a_spectrum_the_model_cannot_scale_is_reported_and_the_others_go_on(store, tmp_path, capsys):
    """A flat spectrum (a dead detector), which the MIR model's SNV could not scale either, is
    reported as a bad scan and the block it was in is still predicted."""
    from soilcarbon.spectral.readers import read_spectra

    frame = read_spectra(OPUS_DIR).to_frame(include_meta=False)
    frame.iloc[2, 1:] = 0.5
    source = tmp_path / "mir-flat.csv"
    frame.to_csv(source, index=False)
    out = tmp_path / "mir-flat-pred.csv"
    code, stdout, stderr = cli_in_process(capsys, "predict", "--model", store["mir"], "--spectra", source, "--output", out)
    assert code == 0, stderr
    flat = frame.iloc[2, 0]
    assert (f"warning: sample {flat} not predicted: not predictable: flat spectrum: every one of its 3017 values "
            "is 0.5") in stderr
    assert f"{len(frame)} samples, {len(frame) - 1} predicted, 1 not predicted" in stdout
    result = pd.read_csv(out).set_index("sample_id")
    assert result["prediction"].isna().tolist() == [i == flat for i in frame["sample_id"]]
    model = mlflow.pyfunc.load_model(store["mir"])
    good = frame.drop(index=2)
    good.columns = ["sample_id"] + model.metadata.get_input_schema().input_names()[1:]
    assert_matches(result.drop(index=flat).reset_index(), model.predict(good).set_index("sample_id"))


def test_runs_uri_is_kept_as_given(store, nir_table, reference, tmp_path):
    from mlflow.tracking import MlflowClient

    run_id = MlflowClient().get_model_version("soc-nir", "1").run_id
    uri = f"runs:/{run_id}/model"
    table = tmp_path / "few.csv"
    nir_table.head(5).to_csv(table, index=False)
    out = tmp_path / "few-pred.csv"
    predict_file(uri, out, spectra=table)
    result = pd.read_csv(out)
    assert set(result["model_uri"]) == {uri}
    assert_matches(result, reference)


def test_covariates_only_model(store, tmp_path, capsys):
    from trained_model import covariate_table

    table = covariate_table(40, seed=7).drop(columns=["soc"])
    table["ndvi"] = table["ndvi"].astype(object)
    table.loc[3, "ndvi"] = None
    table.loc[30, "elevation"] = np.nan
    table.loc[12, "ndvi"] = "n/a?"
    path = tmp_path / "cov.csv"
    table.to_csv(path, index=False)
    out = tmp_path / "cov-pred.parquet"
    code, stdout, stderr = cli_in_process(capsys, "predict", "--model", store["cov"], "--covariates", path, "--output", out)
    assert code == 0, stderr
    assert "warning: sample P003 not predicted: covariate 'ndvi' is missing" in stderr
    assert "warning: sample P012 not predicted: non-numeric value 'n/a?' in covariate 'ndvi'" in stderr
    assert "warning: sample P030 not predicted: covariate 'elevation' is missing" in stderr
    result = pd.read_parquet(out)
    bad = result["sample_id"].isin(["P003", "P012", "P030"])
    assert result.loc[bad, "prediction"].isna().all() and not result.loc[bad, "in_domain"].any()
    good = table[~table["sample_id"].isin(["P003", "P012", "P030"])].copy()
    good["ndvi"] = good["ndvi"].astype(float)
    expected = mlflow.pyfunc.load_model(store["cov"]).predict(good[["sample_id", "ndvi", "elevation", "twi"]])
    assert_matches(result[~bad], expected.set_index("sample_id"))


# ------------------------------------------------------------------------------------------ per-sample problems
def test_samples_with_bad_values_are_reported_and_the_others_go_on(store, nir_table, reference, tmp_path, capsys):
    table = nir_table.head(300).astype({"1500": object, "2000": object, "1700": object})
    table.loc[10, "1500"] = np.nan  # NIRsoil-11: one missing value
    table.loc[250, "2000"] = "abc"  # NIRsoil-251, in the third chunk: not a number
    table.loc[200, "1700"] = "inf"  # NIRsoil-201: infinite
    table.loc[120, "sample_id"] = None  # line 122 of the file: no id
    spectral = [c for c in table.columns if c[0].isdigit()]
    table.loc[30, spectral] = 0.25  # NIRsoil-31: a flat spectrum (a dead detector): a bad scan, not predicted
    table.loc[150, spectral[:350]] = 1e300  # NIRsoil-151: finite, but beyond what float64 arithmetic can take
    source = tmp_path / "bad.csv"
    table.to_csv(source, index=False)
    out, problems = tmp_path / "bad-pred.csv", tmp_path / "problems.csv"
    code, stdout, stderr = cli_in_process(capsys, "predict", "--model", NIR, "--spectra", source, "--output", out,
                               "--chunk-size", 100, "--problems", problems)
    assert code == 0, stderr
    assert "warning: sample NIRsoil-11 not predicted: 1 missing spectral value(s), first in column '1500'" in stderr
    assert "warning: sample NIRsoil-251 not predicted: non-numeric value 'abc' in column '2000'" in stderr
    assert "warning: sample NIRsoil-201 not predicted: infinite value in column '1700'" in stderr
    assert "warning: sample line 122 not predicted: no sample id" in stderr
    assert ("warning: sample NIRsoil-151 not predicted: not predictable: values up to 1e+300 are beyond what the "
            "model can process (|x| <= 1e+150)") in stderr
    assert ("warning: sample NIRsoil-31 not predicted: not predictable: flat spectrum: every one of its 700 values "
            "is 0.25") in stderr
    assert "300 samples, 294 predicted, 6 not predicted" in stdout
    result = pd.read_csv(out, dtype={"sample_id": str})
    assert len(result) == 300
    bad_rows = [10, 30, 120, 150, 200, 250]
    assert result.loc[bad_rows, "prediction"].isna().all()
    assert not result.loc[bad_rows, "in_domain"].any()
    assert pd.isna(result.loc[120, "sample_id"])
    good = result.drop(index=bad_rows)
    assert_matches(good, reference)
    report = pd.read_csv(problems)
    assert report["sample_id"].tolist() == ["NIRsoil-11", "NIRsoil-31", "line 122", "NIRsoil-151", "NIRsoil-201", "NIRsoil-251"]


@pytest.mark.parametrize("storage", ["float64", "float32 and int64", "one text column"])
def test_parquet_with_bad_values_gives_the_table_of_mlflow_predict(store, nir_table, tmp_path, storage):
    """Parquet spectra (read straight into a matrix unless a column holds text) predicted by the
    model's matrix path give, row for row, the table MLflow's own ``PyFuncModel.predict`` gives for
    the good rows, and empty outputs with the right reason for the others (a null cell, NaN,
    infinity, no id, a blank id, a text value)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    model = load_model(NIR)
    assert model.matrix_predict is not None  # the path under test, not the table one
    spectral = [c for c in nir_table.columns if c[0].isdigit()]
    table = nir_table.head(120)[["sample_id"] + spectral].reset_index(drop=True)
    values = table[spectral].to_numpy().copy()
    values[17, spectral.index("1700")] = np.inf
    values[30, spectral.index("2000")] = np.nan  # NaN in a float column (not a null)
    ids = table["sample_id"].tolist()
    ids[44], ids[45], ids[50] = None, "  ", " NIRsoil-51 "
    columns = {}
    for j, name in enumerate(spectral):
        column = pa.array(values[:, j], mask=np.arange(120) == 5 if name == "1500" else None)  # a null cell
        if storage == "float32 and int64":
            column = pa.array(np.round(values[:, j]).astype(np.int64)) if name == "1100" else column.cast(pa.float32())
        columns[name] = column
    if storage == "one text column":
        text = [None if i == 5 else repr(float(v)) for i, v in enumerate(values[:, spectral.index("1500")])]
        text[60] = "abc"
        columns["1500"] = pa.array(text)
    source = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"sample_id": pa.array(ids), **columns}), source, row_group_size=50)
    out = tmp_path / "pred.parquet"
    summary = predict_file(model, out, spectra=source, chunk_size=40, workers=2)

    expected_problems = [("NIRsoil-6", "1 missing spectral value(s), first in column '1500'"),
                         ("NIRsoil-18", "infinite value in column '1700'"),
                         ("NIRsoil-31", "1 missing spectral value(s), first in column '2000'"),
                         ("row 45", "no sample id"), ("row 46", "no sample id")]
    bad = [5, 17, 30, 44, 45]
    if storage == "one text column":
        expected_problems.append(("NIRsoil-61", "non-numeric value 'abc' in column '1500'"))
        bad.append(60)
    assert summary.problems == expected_problems
    good = [row for row in range(120) if row not in bad]
    assert (summary.n_samples, summary.n_predicted) == (120, len(good))

    written = pq.read_table(out)
    assert written.column_names == OUTPUT_COLUMNS
    assert written.column("sample_id").to_pylist() == [None if i is None or not i.strip() else i.strip() for i in ids]
    result = written.to_pandas()
    assert result.loc[bad, ["prediction", "lower", "upper", "domain_score"]].isna().all().all()
    assert not result.loc[bad, "in_domain"].any()
    assert (result["level"] == 0.9).all() and (result["model_uri"] == "models:/soc-nir/1").all()
    # MLflow's pyfunc (schema enforcement, then SOCPyfunc.predict on a table) on the good rows as stored
    stored = pd.read_parquet(source).iloc[good]
    frame = stored[spectral].apply(pd.to_numeric).astype(float)
    frame.insert(0, "sample_id", [i.strip() for i in stored["sample_id"]])
    expected = mlflow.pyfunc.load_model(NIR).predict(frame.reset_index(drop=True), params={"level": 0.9})
    got = result.loc[good].reset_index(drop=True)
    assert got["sample_id"].tolist() == expected["sample_id"].tolist()
    assert got["in_domain"].tolist() == expected["in_domain"].astype(bool).tolist()
    for column in ("prediction", "lower", "upper", "level", "domain_score"):
        np.testing.assert_allclose(got[column].to_numpy(), expected[column].to_numpy(float), rtol=1e-12, atol=0,
                                   err_msg=column)


# ------------------------------------------------------------------------------------------ whole-job failures
def test_failure_in_a_later_chunk_leaves_no_partial_file(store, env, nir_table, tmp_path):
    source = tmp_path / "ragged.csv"
    nir_table.head(300).to_csv(source, index=False)
    lines = source.read_text().splitlines()
    lines[260] += ",0.5"  # one field too many on line 261, in the sixth chunk of 50
    source.write_text("\n".join(lines) + "\n")
    out = tmp_path / "pred.csv"
    out.write_text("previous results\n")
    code, stdout, stderr = run_cli("predict", "--model", NIR, "--spectra", source, "--output", out,
                                   "--chunk-size", 50, env=env)
    assert code == 2
    line = only_error_line(stderr)
    assert str(source) in line and "line 261" in line
    assert out.read_text() == "previous results\n"  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pred.csv", "ragged.csv"]  # no temporary file left


def test_axis_that_cannot_be_aligned_is_one_error(store, nir_table, tmp_path, capsys):
    short = nir_table[["sample_id"] + [f"{a}" for a in range(1100, 2002, 2)]].head(20)
    source = tmp_path / "short.csv"
    short.to_csv(source, index=False)
    out = tmp_path / "pred.csv"
    code, _, stderr = cli_in_process(capsys, "predict", "--model", NIR, "--spectra", source, "--output", out)
    assert code == 2
    line = only_error_line(stderr)
    assert "cover 1100-2000 nm" in line and "needs 1100-2498 nm" in line and "models:/soc-nir/1" in line
    assert not out.exists()
    # mid-infrared OPUS spectra for a NIR model: cm-1 converted to nm in the message
    code, _, stderr = cli_in_process(capsys, "predict", "--model", NIR, "--spectra", OPUS_DIR, "--output", out)
    assert code == 2
    assert "cover 179-5996 cm-1 (1668-55750 nm)" in only_error_line(stderr)
    assert not out.exists()


@pytest.mark.parametrize("args, message", [
    (["--model", "models:/soc-nir@nobody"], "not found in the registry"),
    (["--model", "models:/soc-nir/99"], "not found in the registry"),
    (["--model", "models:/no-such-model@champion"], "not found in the registry"),
    (["--output", "{tmp}/pred.xlsx"], "unknown output type '.xlsx'"),
    (["--output", "{tmp}/missing/pred.csv"], "does not exist; create it first"),
    (["--spectra", "{tmp}/nothing.csv"], "no such file or folder"),
    (["--level", "1.5"], "level must be between 0 and 1"),
    (["--engine", "gpu"], "--engine must be local or spark"),
    (["--chunk-size", "0"], "chunk size must be a positive number"),
    (["--covariates", "{cov}"], "uses no covariates; drop --covariates"),
    (["--id-col", "ID"], "id column 'ID' not found"),
])
def test_bad_arguments_give_one_error_and_no_output(store, tmp_path, capsys, args, message):
    cov = tmp_path / "cov.csv"
    cov.write_text("sample_id,ndvi\nNIRsoil-1,0.5\n")
    base = {"--model": NIR, "--spectra": str(NIRSOIL_CSV), "--output": str(tmp_path / "pred.csv")}
    extra = []
    for key, value in zip(args[::2], args[1::2]):
        value = value.format(tmp=tmp_path, cov=cov)
        if key in base:
            base[key] = value
        else:
            extra += [key, value]
    argv = ["predict"] + [item for pair in base.items() for item in pair] + extra
    code, _, stderr = cli_in_process(capsys, *argv)
    assert code == 2
    assert message in only_error_line(stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cov.csv"]


def test_covariates_missing_from_the_table_is_one_error(store, tmp_path):
    path = tmp_path / "cov.csv"
    pd.DataFrame({"sample_id": ["a", "b"], "ndvi": [0.2, 0.3], "twi": [3.0, 4.0]}).to_csv(path, index=False)
    with pytest.raises(SoilCarbonError, match="covariate column\\(s\\) elevation missing"):
        predict_file(store["cov"], tmp_path / "out.csv", covariates=path)
    assert not (tmp_path / "out.csv").exists()


# ------------------------------------------------------------------------------------------ streaming
def test_memory_does_not_grow_with_the_input(store, nir_table, reference, tmp_path):
    """Memory peaks (Python/numpy traced by tracemalloc, Arrow's pool polled) are the same for 1,000
    and 5,000 spectra read in chunks of 250, and well below the 28 MB that holding 5,000 spectra
    once would take."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(1)
    picks = rng.integers(0, 618, 5_000)
    spectral = [c for c in nir_table.columns if c[0].isdigit()]
    values = nir_table[spectral].to_numpy()[picks]
    ids = np.array([f"s{i}-{nir_table['sample_id'].iloc[p]}" for i, p in enumerate(picks)])
    full_bytes = values.nbytes
    for n in (1_000, 5_000):
        table = pa.table({"sample_id": ids[:n], **{c: values[:n, j] for j, c in enumerate(spectral)}})
        pq.write_table(table, tmp_path / f"in-{n}.parquet", row_group_size=1000)
    del table, values
    model = load_model(NIR)
    peaks, arrow_peaks = {}, {}
    for n in (1_000, 5_000):
        # Python/numpy allocations by tracemalloc; Arrow's own pool (not traced) by polling it
        arrow_peak, running = [pa.total_allocated_bytes()], threading.Event()

        def poll():
            while not running.wait(0.005):
                arrow_peak[0] = max(arrow_peak[0], pa.total_allocated_bytes())

        poller = threading.Thread(target=poll)
        baseline = pa.total_allocated_bytes()
        poller.start()
        tracemalloc.start()
        try:
            summary = predict_file(model, tmp_path / f"out-{n}.parquet", spectra=tmp_path / f"in-{n}.parquet",
                                   chunk_size=250, workers=1)
            peaks[n] = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
            running.set()
            poller.join()
        arrow_peaks[n] = arrow_peak[0] - baseline
        assert summary.n_predicted == n
    assert peaks[5_000] < 1.25 * peaks[1_000], peaks
    assert peaks[5_000] < 0.6 * full_bytes, peaks
    assert arrow_peaks[5_000] < 1.5 * arrow_peaks[1_000] + 2e6, arrow_peaks
    result = pd.read_parquet(tmp_path / "out-5000.parquet")
    assert result["sample_id"].tolist() == ids.tolist()
    source_ids = nir_table["sample_id"].to_numpy()[picks]
    np.testing.assert_allclose(result["prediction"].to_numpy(), reference.loc[source_ids, "prediction"].to_numpy(),
                               rtol=1e-7, atol=1e-9)


def test_duplicate_ids_are_named_within_a_chunk_and_across_chunks():
    """``check_unique_ids`` (set operations): ids repeated in one chunk or seen in an earlier one are
    named (sorted, five at most), samples without id (None) are never duplicates, ``seen`` grows."""
    from soilcarbon.serving.batch import check_unique_ids

    seen: set = set()
    check_unique_ids(np.array(["a", None, "b", None], dtype=object), seen, "in.csv")
    assert seen == {"a", "b"}
    check_unique_ids(["c", None], seen, "in.csv")
    assert seen == {"a", "b", "c"}
    cases = [
        (["d", "a", "e"], "in.csv: duplicate sample id(s) a; every sample needs its own id"),
        (np.array(["x", "y", "x", None, None], dtype=object), "in.csv: duplicate sample id(s) x; every sample needs its own id"),
        (["b", "z", "z", "z"], "in.csv: duplicate sample id(s) b, z; every sample needs its own id"),
        ([*"pqrstuv", *"pqrstuv", "a"], "in.csv: duplicate sample id(s) a, p, q, r, s and 3 more; every sample needs its own id"),
    ]
    for ids, message in cases:
        before = set(seen)
        with pytest.raises(SoilCarbonError) as caught:
            check_unique_ids(ids, seen, "in.csv")
        assert str(caught.value) == message
        assert seen == before  # a refused chunk adds nothing
    many = np.array([f"B{i:07d}" for i in range(50_000)], dtype=object)
    check_unique_ids(many, seen, "big.parquet")
    assert len(seen) == 50_003
    with pytest.raises(SoilCarbonError, match="big.parquet: duplicate sample id\\(s\\) B0000007; "):
        check_unique_ids(np.array(["new", "B0000007"], dtype=object), seen, "big.parquet")
