"""The Spectra data model: validation, frame/Parquet round trips, selection, alignment, units."""

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from soilcarbon.errors import SoilCarbonError
from soilcarbon.spectral.spectra import (
    Spectra,
    axis_columns,
    check_unit,
    convert_axis,
    guess_unit,
    parse_spectral_header,
)


def make(ids=("a", "b"), axis=(1000.0, 1010.0, 1020.0), values=((0.0, 10.0, 40.0), (1.0, 2.0, 3.0)), **kw):
    return Spectra(ids=list(ids), axis=list(axis), unit=kw.pop("unit", "nm"), values=np.array(values), **kw)


# ---------------------------------------------------------------------------- validation
def test_valid_spectra_are_normalised():
    s = make(ids=[1, 2])
    assert list(s.ids) == ["1", "2"]
    assert s.values.dtype == np.float64 and s.values.shape == (2, 3)
    assert s.n_samples == 2 and s.n_points == 3 and len(s) == 2
    assert s.columns == ["1000", "1010", "1020"]
    assert list(s.meta.columns) == [] and len(s.meta) == 2


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(axis=(1000.0, 1020.0, 1010.0)), "not strictly monotonic at 1020 -> 1010"),
        (dict(axis=(1000.0, 1010.0, 1010.0)), "not strictly monotonic at 1010 -> 1010"),
        (dict(ids=("a", "a")), "duplicate sample ids: a"),
        (dict(values=((1.0, 2.0), (3.0, 4.0))), "values have shape (2, 2) but there are 2 ids and 3 axis points"),
        (dict(values=((0.0, np.nan, 1.0), (1.0, 2.0, 3.0))), "missing values in sample(s) a"),
        (dict(values=((0.0, 1.0, 1.0), (1.0, np.inf, 3.0))), "infinite values in sample(s) b"),
        (dict(axis=(4000.0, 3000.0, 2000.0)), "not plausible in nm: check the unit (did you mean cm-1?)"),
        (dict(unit="micron"), "unknown spectral unit 'micron'"),
        (dict(ids=(), values=np.empty((0, 3))), "no samples found"),
        (dict(axis=(1000.0,), values=((1.0,), (2.0,))), "at least 2 points"),
        (dict(axis=(1000.0, np.nan, 1020.0)), "missing or infinite"),
        (dict(meta=pd.DataFrame({"x": [1, 2, 3]})), "metadata has 3 rows for 2 samples"),
    ],
)
def test_invalid_spectra_raise_with_source(kwargs, message):
    with pytest.raises(SoilCarbonError) as info:
        make(source="scan.csv", **kwargs)
    assert str(info.value).startswith("scan.csv: ")
    assert message in str(info.value)


def test_nan_policy_keeps_and_reports_missing_values():
    s = make(values=((0.0, np.nan, np.nan), (1.0, 2.0, 3.0)), allow_nan=True)
    assert s.missing_by_sample() == {"a": 2}
    with pytest.raises(SoilCarbonError, match="infinite"):
        make(values=((0.0, np.inf, 1.0), (1.0, 2.0, 3.0)), allow_nan=True)


def test_decreasing_wavenumber_axis_is_valid():
    s = make(axis=(4000.0, 3000.0, 2000.0), unit="cm-1")
    assert s.unit == "cm-1" and s.axis[0] == 4000.0


def test_unit_helpers():
    assert check_unit("1/cm") == "cm-1" and check_unit(" NM ") == "nm"
    assert guess_unit(np.array([1100.0, 2498.0])) == "nm"
    assert guess_unit(np.array([4000.0, 600.0])) == "cm-1"       # decreasing
    assert guess_unit(np.array([600.0, 4000.0])) == "cm-1"       # beyond 3000
    assert np.allclose(convert_axis(np.array([10000.0, 4000.0]), "cm-1", "nm"), [1000.0, 2500.0])
    assert parse_spectral_header("wl_1100.5") == (1100.5, "wl_")
    assert parse_spectral_header(" 2498 ") == (2498.0, "")
    assert parse_spectral_header("12a0") is None and parse_spectral_header("Ciso") is None
    assert axis_columns(np.array([1100.0, 1100.5])) == ["1100", "1100.5"]


# -------------------------------------------------------------------------------- frames
def test_from_frame_detects_prefix_unit_and_metadata():
    frame = pd.DataFrame({"sample_id": ["s1", "s2"], "wn_4000": [1.0, 2.0], "site": ["x", "y"],
                          "wn_3998": [3.0, 4.0], "12a0": [7, 8], "wn_3996": [5.0, 6.0]})
    s = Spectra.from_frame(frame)
    assert s.unit == "cm-1"
    assert s.detected == {"unit": "cm-1", "unit_from": "prefix 'wn_'", "prefix": "wn_"}
    assert list(s.axis) == [4000.0, 3998.0, 3996.0]
    assert s.values.tolist() == [[1.0, 3.0, 5.0], [2.0, 4.0, 6.0]]
    assert list(s.meta.columns) == ["site", "12a0"]          # '12a0' is not a number: metadata


def test_from_frame_guesses_or_takes_the_given_unit():
    frame = pd.DataFrame({"id": ["a"], "1100": [0.1], "1102": [0.2]})
    assert Spectra.from_frame(frame, id_col="id").detected["unit_from"] == "guessed from the axis"
    given = Spectra.from_frame(frame, id_col="id", unit="cm-1")
    assert given.unit == "cm-1" and given.detected["unit_from"] == "given"


@pytest.mark.parametrize(
    "frame, message",
    [
        (pd.DataFrame({"id": ["a"], "1100": [1.0], "1102": [2.0]}), "id column 'sample_id' not found"),
        (pd.DataFrame({"sample_id": ["a"], "Ciso": [1.0]}), "no spectral columns found"),
        (pd.DataFrame({"sample_id": ["a", "b"], "1100": [1.0, 2.0], "1102": ["0.5", "n/a"]}),
         "column '1102' is not numeric: sample b has 'n/a'"),
        (pd.DataFrame({"sample_id": ["a", None], "1100": [1.0, 2.0], "1102": [1.0, 2.0]}),
         "1 row(s) have no 'sample_id'"),
        (pd.DataFrame({"sample_id": ["a"], "wl_1100": [1.0], "wn_1102": [2.0]}), "mix prefixes"),
    ],
)
def test_from_frame_errors(frame, message):
    with pytest.raises(SoilCarbonError) as info:
        Spectra.from_frame(frame, source="t.csv")
    assert str(info.value).startswith("t.csv: ") and message in str(info.value)


def test_from_frame_empty_spectral_column_becomes_missing():
    frame = pd.DataFrame({"sample_id": ["a", "b"], "1100": [1.0, 2.0], "1102": pd.Series([None, None], dtype=object)})
    s = Spectra.from_frame(frame, allow_nan=True)
    assert s.missing_by_sample() == {"a": 1, "b": 1}
    with pytest.raises(SoilCarbonError, match="missing values in sample"):
        Spectra.from_frame(frame)


def test_frame_round_trip():
    s = make(meta=pd.DataFrame({"oc": [1.5, np.nan], "site": ["x", "y"]}))
    frame = s.to_frame(id_col="code")
    assert list(frame.columns) == ["code", "oc", "site", "1000", "1010", "1020"]
    back = Spectra.from_frame(frame, id_col="code", unit="nm")
    assert back.ids.tolist() == ["a", "b"]
    np.testing.assert_array_equal(back.values, s.values)
    np.testing.assert_array_equal(back.axis, s.axis)
    pd.testing.assert_frame_equal(back.meta, s.meta)


def test_parquet_round_trip_keeps_unit_and_exact_axis(tmp_path):
    # An ascending wavenumber axis inside the nm range: only the stored unit can tell.
    axis = np.array([1100.123456789, 1200.5, 2400.25])
    s = Spectra(ids=["x1", "x2"], axis=axis, unit="cm-1", values=np.array([[0.1, 0.2, 0.3], [1e-9, 2.5, -3.0]]),
                meta=pd.DataFrame({"oc": [1.0, 2.0]}))
    out = tmp_path / "s.parquet"
    s.to_parquet(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.parquet"]
    raw = pq.read_table(out)
    assert raw.schema.metadata[b"soilcarbon.unit"] == b"cm-1"
    assert raw.column_names == ["sample_id", "oc", "1100.123456789", "1200.5", "2400.25"]
    back = Spectra.from_parquet(out)
    assert back.unit == "cm-1"
    np.testing.assert_array_equal(back.axis, axis)
    np.testing.assert_array_equal(back.values, s.values)
    assert back.meta["oc"].tolist() == [1.0, 2.0]


def test_from_parquet_broken_file_names_it(tmp_path):
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not parquet at all")
    with pytest.raises(SoilCarbonError, match=r"bad\.parquet: not a readable Parquet file"):
        Spectra.from_parquet(bad)


# ----------------------------------------------------------------------------- selection
def test_select_take_and_target():
    s = make(ids=("a", "b", "c"), values=np.arange(9.0).reshape(3, 3), meta=pd.DataFrame({"oc": [1, "", "3.5"]}))
    picked = s.select(["c", "a"])
    assert picked.ids.tolist() == ["c", "a"]
    assert picked.values.tolist() == [[6.0, 7.0, 8.0], [0.0, 1.0, 2.0]]
    assert picked.meta["oc"].tolist() == ["3.5", 1]
    assert s.take(np.array([False, True, False])).ids.tolist() == ["b"]
    target = s.target("oc")
    assert target[0] == 1.0 and np.isnan(target[1]) and target[2] == 3.5
    with pytest.raises(SoilCarbonError, match="unknown sample id"):
        s.select(["a", "zz"])
    with pytest.raises(SoilCarbonError, match="target column 'clay' not found"):
        s.target("clay")
    with pytest.raises(SoilCarbonError, match="sample b has 'low'"):
        make(meta=pd.DataFrame({"oc": [1.0, "low"]})).target("oc")


# ----------------------------------------------------------------------------- alignment
def test_align_interpolates_linearly():
    s = make()  # a: 0, 10, 40 at 1000, 1010, 1020
    out = s.align([1005.0, 1012.5, 1020.0])
    # by hand: a -> (0+10)/2, 10 + 0.25*30, 40 ; b -> 1.5, 2.25, 3
    np.testing.assert_allclose(out.values, [[5.0, 17.5, 40.0], [1.5, 2.25, 3.0]])
    assert out.axis.tolist() == [1005.0, 1012.5, 1020.0]


def test_align_on_a_decreasing_axis():
    s = make(axis=(4000.0, 3000.0, 2000.0), unit="cm-1")
    out = s.align([3500.0, 2500.0])
    np.testing.assert_allclose(out.values, [[5.0, 25.0], [1.5, 2.5]])


def test_align_identical_axis_keeps_values():
    s = make()
    out = s.align(s.axis.copy())
    np.testing.assert_array_equal(out.values, s.values)


def test_align_refuses_ranges_that_do_not_overlap():
    s = make(source="x.csv")
    with pytest.raises(SoilCarbonError) as info:
        s.align([950.0, 1000.0, 1010.0])
    assert "x.csv: spectra cover 1000-1020 nm but 950-1010 nm is needed" in str(info.value)
    # within one step (the default tolerance) is accepted
    assert s.align([995.0, 1020.0]).n_points == 2
    with pytest.raises(SoilCarbonError):
        s.align([995.0, 1020.0], tolerance=1.0)


def test_align_converts_units():
    # cm-1 axis 10000, 5000, 4000  ==  1000, 2000, 2500 nm
    s = Spectra(ids=["a"], axis=[10000.0, 5000.0, 4000.0], unit="cm-1", values=[[1.0, 2.0, 3.0]])
    out = s.align([1000.0, 1500.0, 2250.0], unit="nm")
    assert out.unit == "nm"
    np.testing.assert_allclose(out.values, [[1.0, 1.5, 2.5]])
    same = s.align(1e7 / s.axis, unit="nm")
    np.testing.assert_allclose(same.values, s.values)
