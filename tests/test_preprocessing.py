"""Preprocessing transformers: values against hand-computed references, sklearn contract, real data."""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.cross_decomposition import PLSRegression
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import KFold, cross_val_score
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.utils.estimator_checks import check_estimator

from soilcarbon.errors import SoilCarbonError
from soilcarbon.spectral.preprocessing import (
    MSC,
    SNV,
    STEP_NAMES,
    Detrend,
    PreprocessingError,
    ReflectanceToAbsorbance,
    Resample,
    SavitzkyGolay,
    Trim,
    build_preprocessing,
)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
NIRSOIL = DATA / "nirsoil" / "nirsoil_train.csv"


@pytest.fixture(scope="module")
def nirsoil():
    """(frame of spectral columns, axis in nm, Ciso) of the real NIR soil table."""
    frame = pd.read_csv(NIRSOIL)
    columns = [c for c in frame.columns if c not in ("sample_id", "Nt", "Ciso", "CEC")]
    return frame[columns], np.array([float(c) for c in columns]), frame["Ciso"].to_numpy()


def _same_params(a: dict, b: dict) -> bool:
    if a.keys() != b.keys():
        return False
    return all(np.array_equal(np.asarray(a[k]), np.asarray(b[k])) if not isinstance(a[k], str) else a[k] == b[k]
               for k in a)


AXIS5 = np.array([10.0, 20.0, 30.0, 40.0, 50.0])
ALL = [
    SNV(),
    MSC(),
    MSC(reference="median"),
    SavitzkyGolay(window_length=5, polyorder=2, deriv=1),
    Detrend(order=1),
    Detrend(order=2, axis=AXIS5),
    Trim(AXIS5, start=20, end=40),
    Resample(AXIS5, new_axis=[15.0, 25.0, 45.0]),
    ReflectanceToAbsorbance(),
]


# ------------------------------------------------------------------ hand-computed values
def test_snv_matches_hand_computed_rows():
    X = np.array([[1.0, 2, 3, 4, 5, 6, 7, 8], [2.0, 4, 4, 4, 5, 5, 7, 9]])
    out = SNV().fit_transform(X)
    # row 1: mean 4.5, population variance 42/8 = 5.25; row 2: mean 5, std 2 (textbook example)
    expected_1 = (np.arange(1, 9) - 4.5) / np.sqrt(5.25)
    expected_2 = np.array([-1.5, -0.5, -0.5, -0.5, 0.0, 0.0, 1.0, 2.0])
    np.testing.assert_allclose(out, [expected_1, expected_2], atol=1e-12)


def test_snv_is_stateless_and_removes_offset_and_scale():
    rng = np.random.default_rng(0)
    base = rng.normal(size=50)
    snv = SNV().fit(rng.normal(size=(3, 50)))  # fitted on other spectra: no effect on the result
    out = snv.transform(np.vstack([base, 3.0 + 2.5 * base]))
    np.testing.assert_allclose(out[0], out[1], atol=1e-12)


def test_msc_recovers_reference_from_offset_and_scaled_copies():
    shape = np.array([1.0, 2.0, 4.0, 3.0])
    X = np.vstack([shape, 1.0 + 2.0 * shape])  # mean reference = [2, 3.5, 6.5, 5]
    msc = MSC().fit(X)
    np.testing.assert_allclose(msc.reference_, [2.0, 3.5, 6.5, 5.0])
    np.testing.assert_allclose(msc.transform(X), [[2.0, 3.5, 6.5, 5.0]] * 2, atol=1e-12)
    # a new spectrum a + b * reference comes back as the reference
    np.testing.assert_allclose(msc.transform([10.0 + 3.0 * msc.reference_]), [msc.reference_], atol=1e-12)


def test_msc_least_squares_by_hand():
    # x = [2, 3, 5] on r = [1, 2, 3]: b = cov/var = 3/2 = 1.5, a = 10/3 - 1.5*2 = 1/3
    out = MSC(reference=[1.0, 2.0, 3.0]).fit_transform(np.array([[2.0, 3.0, 5.0]]))
    np.testing.assert_allclose(out, [[10 / 9, 16 / 9, 28 / 9]], atol=1e-12)


def test_msc_median_reference():
    X = np.array([[1.0, 2, 3], [2.0, 5, 4], [10.0, 1, 7]])
    np.testing.assert_allclose(MSC(reference="median").fit(X).reference_, [2.0, 2.0, 4.0])


def test_savgol_interior_points_use_classic_convolution_coefficients():
    x = np.random.default_rng(1).normal(size=(2, 20))
    smooth = SavitzkyGolay(window_length=5, polyorder=2).fit_transform(x)
    first = SavitzkyGolay(window_length=5, polyorder=2, deriv=1).fit_transform(x)
    second = SavitzkyGolay(window_length=5, polyorder=2, deriv=2).fit_transform(x)
    c_smooth = np.array([-3, 12, 17, 12, -3]) / 35  # Savitzky & Golay (1964), table I
    c_first = np.array([-2, -1, 0, 1, 2]) / 10
    c_second = np.array([2, -1, -2, -1, 2]) / 7
    for i in range(2, 18):
        window = x[:, i - 2:i + 3]
        np.testing.assert_allclose(smooth[:, i], window @ c_smooth, atol=1e-12)
        np.testing.assert_allclose(first[:, i], window @ c_first, atol=1e-12)
        np.testing.assert_allclose(second[:, i], window @ c_second, atol=1e-12)


def test_savgol_is_exact_on_a_quadratic_including_edges():
    t = np.arange(15.0)
    x = (3.0 - 0.5 * t + 0.2 * t**2)[None, :]
    np.testing.assert_allclose(SavitzkyGolay(7, 2).fit_transform(x), x, atol=1e-9)
    np.testing.assert_allclose(SavitzkyGolay(7, 2, deriv=1).fit_transform(x), [-0.5 + 0.4 * t], atol=1e-9)
    np.testing.assert_allclose(SavitzkyGolay(7, 2, deriv=2).fit_transform(x), [np.full(15, 0.4)], atol=1e-9)


def test_detrend_linear_by_hand():
    # least-squares line through (0..4, [1, 3, 2, 5, 4]): slope 8/10, intercept 1.4
    out = Detrend(order=1).fit_transform(np.array([[1.0, 3, 2, 5, 4]]))
    np.testing.assert_allclose(out, [[-0.4, 0.8, -1.0, 1.2, -0.6]], atol=1e-12)
    np.testing.assert_allclose(Detrend(order=0).fit_transform([[1.0, 3, 2, 5, 4]]), [[-2.0, 0, -1, 2, 1]], atol=1e-12)


def test_detrend_fits_against_the_axis_when_given():
    axis = np.array([1.0, 2.0, 4.0, 8.0, 16.0])
    x = (5.0 - axis + 0.25 * axis**2)[None, :]  # quadratic in the axis, not in the index
    np.testing.assert_allclose(Detrend(order=2, axis=axis).fit_transform(x), np.zeros((1, 5)), atol=1e-9)
    assert np.abs(Detrend(order=2).fit_transform(x)).max() > 1.0
    # large wavenumber-like axis values stay well conditioned (rescaled internally)
    big = np.linspace(4000, 600, 300)
    x = (1.0 + 1e-3 * big - 2e-7 * big**2)[None, :] + np.sin(np.arange(300) / 5.0)
    residual = Detrend(order=2, axis=big).fit_transform(x)
    assert abs(residual.mean()) < 0.05 and residual.std() > 0.5


def test_reflectance_to_absorbance_values():
    out = ReflectanceToAbsorbance().fit_transform(np.array([[1.0, 0.1, 0.01], [0.5, 0.25, 1e-3]]))
    np.testing.assert_allclose(out, [[0.0, 1.0, 2.0], [np.log10(2), np.log10(4), 3.0]], atol=1e-12)


def test_trim_keeps_closed_interval_in_any_axis_order():
    X = np.arange(12.0).reshape(2, 6)
    up = Trim(axis=[100, 110, 120, 130, 140, 150], start=110, end=130).fit(X)
    np.testing.assert_array_equal(up.transform(X), X[:, 1:4])
    np.testing.assert_array_equal(up.axis_out_, [110, 120, 130])
    down = Trim(axis=[150, 140, 130, 120, 110, 100], start=130, end=110).fit(X)
    np.testing.assert_array_equal(down.transform(X), X[:, 2:5])
    np.testing.assert_array_equal(down.axis_out_, [130, 120, 110])
    open_end = Trim(axis=[100, 110, 120, 130, 140, 150], start=135).fit(X)
    np.testing.assert_array_equal(open_end.axis_out_, [140, 150])
    np.testing.assert_array_equal(open_end.get_support(), [False] * 4 + [True] * 2)


def test_resample_linear_by_hand_on_increasing_and_decreasing_axes():
    X = np.array([[0.0, 100.0, 400.0], [1.0, 1.0, 3.0]])
    up = Resample(axis=[0, 10, 20], new_axis=[0, 5, 15, 20]).fit(X)
    np.testing.assert_allclose(up.transform(X), [[0, 50, 250, 400], [1, 1, 2, 3]])
    np.testing.assert_array_equal(up.axis_out_, [0, 5, 15, 20])
    down = Resample(axis=[20, 10, 0], new_axis=[20, 15, 5, 0]).fit(X[:, ::-1])
    np.testing.assert_allclose(down.transform(X[:, ::-1]), [[400, 250, 50, 0], [3, 2, 1, 1]])
    with pytest.raises(PreprocessingError, match="new_axis must be strictly increasing or decreasing"):
        Resample(axis=[0, 10, 20], new_axis=[5, 15, 0]).fit(X)


# -------------------------------------------------------------------------- real data
def test_snv_on_real_spectra_has_zero_mean_unit_std(nirsoil):
    frame, _, _ = nirsoil
    out = SNV().fit_transform(frame)
    assert out.shape == (618, 700)
    np.testing.assert_allclose(out.mean(axis=1), 0.0, atol=1e-12)
    np.testing.assert_allclose(out.std(axis=1), 1.0, atol=1e-12)
    from chemotools.scatter import StandardNormalVariate

    reference = StandardNormalVariate().fit_transform(frame.to_numpy())
    np.testing.assert_allclose(out, reference, rtol=1e-12, atol=1e-12)


def test_trim_real_spectra_to_1200_2400_gives_601_points(nirsoil):
    frame, axis, _ = nirsoil
    trim = Trim(axis, start=1200, end=2400).fit(frame)
    out = trim.transform(frame)
    assert out.shape == (618, 601)
    assert (trim.axis_out_[0], trim.axis_out_[-1]) == (1200.0, 2400.0)
    np.testing.assert_array_equal(out, frame.loc[:, "1200":"2400"].to_numpy())
    assert list(trim.get_feature_names_out()[[0, -1]]) == ["1200", "2400"]


def test_resample_real_spectra_to_midpoints_is_neighbour_average(nirsoil):
    frame, axis, _ = nirsoil
    X = frame.to_numpy()
    out = Resample(axis, new_axis=np.arange(1101.0, 2498.0, 2.0)).fit_transform(X)
    np.testing.assert_allclose(out, (X[:, :-1] + X[:, 1:]) / 2, atol=1e-12)
    same = Resample(axis, new_axis=axis[::5]).fit_transform(X)
    np.testing.assert_allclose(same, X[:, ::5], atol=1e-12)


def test_set_output_pandas_names_columns_by_axis(nirsoil):
    frame, axis, _ = nirsoil
    out = Trim(axis, 2000, 2010).set_output(transform="pandas").fit_transform(frame.to_numpy())
    assert list(out.columns) == ["2000", "2002", "2004", "2006", "2008", "2010"]
    out = Resample(axis, [1100.5, 2000.25]).set_output(transform="pandas").fit_transform(frame.to_numpy())
    assert list(out.columns) == ["1100.5", "2000.25"]
    out = SNV().set_output(transform="pandas").fit_transform(frame.iloc[:, :4])
    assert list(out.columns) == ["1100", "1102", "1104", "1106"]


def test_config_pipeline_on_real_data_and_cross_validation(nirsoil):
    frame, axis, ciso = nirsoil
    steps = [{"name": "trim", "start": 1200, "end": 2400},
             {"name": "savgol", "window_length": 11, "polyorder": 2, "deriv": 1},
             {"name": "snv"}]
    pipe = build_preprocessing(steps, axis)
    assert [name for name, _ in pipe.steps] == ["trim", "savgol", "snv"]
    assert isinstance(pipe["savgol"], SavitzkyGolay) and pipe["savgol"].deriv == 1
    out = pipe.fit_transform(frame.to_numpy())
    assert out.shape == (618, 601)
    np.testing.assert_allclose(out.std(axis=1), 1.0, atol=1e-12)
    # independent reference: the 1st-derivative coefficients of an 11-point quadratic fit are
    # k / sum(k^2) = k / 110 for k = -5..5; check one interior point of sample 0
    # k / sum(k^2) = k / 110 for k = -5..5. SNV is affine per row, so on the interior points the
    # output must be an exact linear function of that hand-made derivative (correlation 1).
    raw = frame.loc[:, "1200":"2400"].to_numpy()[0]
    d_interior = np.array([raw[i - 5:i + 6] @ (np.arange(-5, 6) / 110.0) for i in range(5, 596)])
    assert np.corrcoef(out[0, 5:596], d_interior)[0, 1] == pytest.approx(1.0, abs=1e-12)
    slope = np.polyfit(d_interior, out[0, 5:596], 1)[0]
    assert np.abs(out[0, 5:596] - slope * d_interior).std() < 1e-9
    # in a model, under clone() and cross-validation
    ok = ~np.isnan(ciso)
    model = make_pipeline(pipe, PLSRegression(n_components=10, scale=False))
    scores = cross_val_score(model, frame.to_numpy()[ok], ciso[ok], cv=KFold(5, shuffle=True, random_state=0),
                             scoring="r2", n_jobs=1)
    assert np.all(np.isfinite(scores)) and scores.mean() > 0.5


def test_build_preprocessing_passes_the_axis_as_it_is_at_each_step():
    axis = np.arange(1100.0, 2500.0, 2.0)
    pipe = build_preprocessing([
        {"name": "resample", "start": 1100, "end": 2498, "step": 4},
        {"name": "detrend", "order": 1},
        {"name": "trim", "start": 1200, "end": 2400},
        {"name": "snv"},
        {"name": "snv"},
    ], axis)
    assert [n for n, _ in pipe.steps] == ["resample", "detrend", "trim", "snv", "snv_2"]
    np.testing.assert_array_equal(pipe["resample"].axis, axis)
    np.testing.assert_array_equal(pipe["resample"].new_axis, np.arange(1100.0, 2499.0, 4.0))
    np.testing.assert_array_equal(pipe["detrend"].axis, np.arange(1100.0, 2499.0, 4.0))
    np.testing.assert_array_equal(pipe["trim"].axis, np.arange(1100.0, 2499.0, 4.0))
    X = np.random.default_rng(2).normal(size=(4, axis.size))
    assert pipe.fit_transform(X).shape == (4, 301)
    np.testing.assert_array_equal(pipe["trim"].axis_out_, np.arange(1200.0, 2401.0, 4.0))
    # all names documented and accepted; empty config passes data through
    assert set(STEP_NAMES) == {"snv", "msc", "savgol", "detrend", "trim", "resample", "absorbance"}
    np.testing.assert_array_equal(build_preprocessing([], axis).fit_transform(X), X)
    assert build_preprocessing([{"name": "snv"}, {"name": "detrend"}], None)["detrend"].axis is None


@pytest.mark.parametrize("steps, words", [
    ([{"name": "smooth"}], ["step 1", "smooth", "unknown step name", "savgol"]),
    ([{"name": "snv"}, {"name": "savgol", "window_length": 10}], ["step 2 (savgol)", "window_length", "odd"]),
    ([{"name": "savgol", "polyorder": 2, "deriv": 3}], ["step 1 (savgol)", "deriv"]),
    ([{"name": "savgol", "windowlength": 11}], ["step 1 (savgol)", "windowlength", "window_length"]),
    ([{"name": "trim", "axis": [1, 2], "start": 1}], ["step 1 (trim)", "axis", "automatically"]),
    ([{"name": "trim", "start": 3000, "end": 4000}], ["step 1 (trim)", "no point", "1100-2498", "3000"]),
    ([{"name": "resample", "start": 1000, "end": 2600, "step": 2}], ["step 1 (resample)", "1000-2600", "1100-2498"]),
    ([{"name": "trim", "start": 1200, "end": 1300}, {"name": "resample", "new_axis": [1250, 1400]}],
     ["step 2 (resample)", "1250-1400", "1200-1300"]),
    ([{"name": "resample", "start": 1200}], ["step 1 (resample)", "missing: end, step"]),
    ([{"name": "msc", "reference": "average"}], ["step 1 (msc)", "reference"]),
    ([{"name": "detrend", "order": -1}], ["step 1 (detrend)", "order"]),
    (["snv"], ["step 1", "dict"]),
    ({"name": "snv"}, ["list"]),
])
def test_build_preprocessing_errors_name_the_step(steps, words):
    with pytest.raises(SoilCarbonError) as info:
        build_preprocessing(steps, np.arange(1100.0, 2500.0, 2.0))
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message, (word, message)


def test_build_preprocessing_without_axis_refuses_axis_steps():
    with pytest.raises(SoilCarbonError, match=r"step 1 \(trim\).*axis"):
        build_preprocessing([{"name": "trim", "start": 1}], None)


# --------------------------------------------------------------------------- bad input
def test_errors_users_can_cause_are_one_line_soilcarbon_errors(nirsoil):
    frame, axis, _ = nirsoil
    X = frame.to_numpy()
    cases = [
        (lambda: SNV().fit(X).transform(X[:, :5]), ["SNV", "5 features", "700"]),
        (lambda: SNV().fit(X[0]), ["SNV", "2D array"]),
        (lambda: Trim(axis, 1200, 2400).fit(X[:, :600]), ["Trim", "600 points", "700"]),
        (lambda: Trim(axis, 2500, 2600).fit(X), ["Trim", "no point", "1100-2498", "[2500, 2600]"]),
        (lambda: Resample(axis, [1000, 2000]).fit(X), ["Resample", "1000-2000", "1100-2498"]),
        (lambda: Resample(axis[:-1], [1200, 2000]).fit(X), ["Resample", "700 points", "699"]),
        (lambda: Detrend(axis=axis[:10]).fit(X), ["Detrend", "700 points"]),
        (lambda: SavitzkyGolay(window_length=11).fit(X[:, :7]), ["SavitzkyGolay", "11", "7"]),
        (lambda: SNV().fit_transform(np.vstack([X[:2], np.full(700, 0.5)])), ["SNV", "row 2", "flat"]),
        (lambda: MSC().fit(np.ones((3, 5))), ["MSC", "reference", "flat"]),
        (lambda: MSC(reference=np.ones(4)).fit(X[:, :5]), ["MSC", "4 points", "5"]),
        (lambda: Trim([1, 2, 2, 3]).fit(X[:, :4]), ["Trim", "strictly increasing or decreasing"]),
    ]
    for action, words in cases:
        with pytest.raises(SoilCarbonError) as info:
            action()
        message = str(info.value)
        assert "\n" not in message and "array=" not in message
        for word in words:
            assert word in message, (word, message)


def test_missing_values_name_the_rows(nirsoil):
    frame, _, _ = nirsoil
    X = frame.to_numpy()[:10].copy()
    X[3, 5] = np.nan
    X[7, 0] = np.inf
    with pytest.raises(PreprocessingError, match=r"SNV: .*NaN.*rows 3, 7"):
        SNV().fit(X)
    fitted = SavitzkyGolay().fit(frame.to_numpy()[:10])
    with pytest.raises(PreprocessingError, match=r"SavitzkyGolay: .*rows 3, 7"):
        fitted.transform(X)


def test_non_positive_reflectance_names_row_and_column(nirsoil):
    frame, _, _ = nirsoil
    reflectance = 10.0 ** -frame.iloc[:20]  # the real absorbance turned back into reflectance
    np.testing.assert_allclose(ReflectanceToAbsorbance().fit_transform(reflectance), frame.iloc[:20], atol=1e-12)
    step = ReflectanceToAbsorbance().fit(reflectance)
    broken = reflectance.copy()
    broken.iloc[4, 10] = 0.0
    broken.iloc[9, 3] = -0.2
    with pytest.raises(SoilCarbonError) as info:
        step.transform(broken)
    message = str(info.value)
    assert "row 4" in message and "'1120'" in message and "2 value(s)" in message
    with pytest.raises(SoilCarbonError, match=r"row 1, column 2 is -0.5"):
        ReflectanceToAbsorbance().fit(np.array([[0.5, 0.4, 0.3], [0.2, 0.1, -0.5]]))


def test_errors_about_single_spectra_also_say_it_without_the_row(nirsoil):
    """``sample_reason`` is what a per-sample report shows: the fault without its batch row."""
    frame, _, _ = nirsoil
    X = frame.to_numpy()[:5].copy()
    flat, nan = X.copy(), X.copy()
    flat[3] = 0.5
    nan[2, 7] = np.nan
    reflectance = 10.0 ** -frame.iloc[:5]
    reflectance.iloc[4, 10] = -0.25
    cases = [
        (lambda: SNV().fit(X).transform(flat), "SNV: the spectrum in row 3 is flat",
         "SNV: the spectrum is flat (standard deviation 0); remove flat spectra before SNV"),
        (lambda: SNV().fit(X).transform(nan), "(row 2)",
         "SNV: missing (NaN) or infinite values; fill or remove those samples first"),
        (lambda: MSC(reference=[0.0, 1.0, 0.0]).fit(X[:2, :3]).transform(np.array([[0.0, 2.0, 0.0], [1.0, 1.0, 1.0]])),
         "MSC: the spectrum in row 1 does not follow the reference (slope 0)",
         "MSC: the spectrum does not follow the reference (slope 0); remove it or use another reference"),
        (lambda: ReflectanceToAbsorbance().fit(10.0 ** -frame.iloc[:5]).transform(reflectance), "row 4, column '1120'",
         "ReflectanceToAbsorbance: reflectance must be positive but the first value <= 0 is -0.25, in column '1120'"),
    ]
    for action, in_message, reason in cases:
        with pytest.raises(PreprocessingError) as info:
            action()
        assert in_message in str(info.value)
        assert info.value.sample_reason == reason


def test_preprocessing_error_is_also_a_value_error():
    assert issubclass(PreprocessingError, SoilCarbonError) and issubclass(PreprocessingError, ValueError)


# ----------------------------------------------------------------- scikit-learn contract
@pytest.mark.parametrize("est", ALL, ids=lambda e: type(e).__name__)
def test_clone_params_pickle_pipeline(est):
    X = np.random.default_rng(3).uniform(0.1, 1.0, size=(6, 5))
    params = est.get_params()
    twin = clone(est)
    assert twin is not est and _same_params(twin.get_params(), params)
    assert _same_params(clone(est).set_params(**params).get_params(), params)
    with pytest.raises(NotFittedError):
        clone(est).transform(X)
    fitted = clone(est).fit(X)
    assert fitted.n_features_in_ == 5
    assert _same_params(fitted.get_params(), params)  # fit does not change parameters
    expected = fitted.transform(X)
    assert not hasattr(clone(fitted), "n_features_in_")  # clone drops fitted state
    np.testing.assert_allclose(pickle.loads(pickle.dumps(fitted)).transform(X), expected)
    pipe = Pipeline([("step", clone(est)), ("last", SNV())])
    np.testing.assert_allclose(pipe.fit(X).transform(X), SNV().fit_transform(expected))
    assert len(fitted.get_feature_names_out()) == expected.shape[1]


SHORT = "n_features = 2 is shorter than the window / polynomial: refused by design"
ZERO = "sklearn's positive-only test data contain exact zeros: log10(1/0) is refused by design"
EXPECTED_FAILURES = {
    "SNV": {"check_estimators_dtypes": "the integer test data contain a flat row: refused by design"},
    "MSC": {"check_estimators_dtypes": "the integer test data contain a flat row: refused by design"},
    "SavitzkyGolay": dict.fromkeys([
        "check_estimators_overwrite_params", "check_estimators_fit_returns_self", "check_readonly_memmap_input",
        "check_fit_idempotent", "check_fit_check_is_fitted", "check_n_features_in"], SHORT),
    "ReflectanceToAbsorbance": dict.fromkeys([
        "check_fit_score_takes_y", "check_estimators_dtypes", "check_dtype_object", "check_pipeline_consistency",
        "check_estimators_pickle", "check_f_contiguous_array_estimator", "check_transformer_data_not_an_array",
        "check_transformer_general", "check_transformer_preserve_dtypes", "check_methods_sample_order_invariance",
        "check_methods_subset_invariance", "check_dict_unchanged", "check_estimators_overwrite_params",
        "check_estimators_fit_returns_self", "check_readonly_memmap_input", "check_fit_idempotent",
        "check_fit_check_is_fitted", "check_n_features_in", "check_n_features_in_after_fitting",
        "check_estimators_nan_inf", "check_fit2d_predict1d", "check_fit2d_1sample", "check_fit2d_1feature",
        "check_dont_overwrite_parameters", "check_positive_only_tag_during_fit"], ZERO),
}
EXPECTED_FAILURES["Detrend"] = EXPECTED_FAILURES["SavitzkyGolay"]
MUST_PASS = {"check_no_attributes_set_in_init", "check_get_params_invariance", "check_set_params",
             "check_estimator_cloneable", "check_estimators_unfitted", "check_fit1d", "check_complex_data",
             "check_estimator_sparse_array", "check_estimators_empty_data_messages"}


@pytest.mark.parametrize("est", [SNV(), MSC(), SavitzkyGolay(window_length=3, polyorder=1), Detrend(order=2),
                                 ReflectanceToAbsorbance()], ids=lambda e: type(e).__name__)
def test_sklearn_check_estimator(est):
    """All of sklearn's checks pass except the listed ones, each refused by design for a reason."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = check_estimator(est, on_fail=None, on_skip=None)
    failed = [r for r in results if r["status"] == "failed"]
    assert {r["check_name"] for r in failed} <= set(EXPECTED_FAILURES[type(est).__name__])
    # the refusals are our one-line errors (or sklearn's report quoting one), not crashes
    for r in failed:
        assert isinstance(r["exception"], PreprocessingError) or "PreprocessingError" in str(r["exception"]) \
            or f"Got {type(est).__name__}: reflectance must be positive" in str(r["exception"]), r
    passed = {r["check_name"] for r in results if r["status"] == "passed"}
    assert MUST_PASS <= passed
    assert len(passed) >= (35 if not isinstance(est, ReflectanceToAbsorbance) else 18)


@pytest.mark.parametrize("est", [Trim(AXIS5, 20, 40), Resample(AXIS5, [15.0, 25.0])], ids=lambda e: type(e).__name__)
def test_sklearn_checks_that_apply_to_axis_bound_steps(est):
    """Trim and Resample are tied to their axis, so sklearn's checks on other widths do not apply."""
    wanted = {"check_no_attributes_set_in_init", "check_get_params_invariance", "check_set_params",
              "check_parameters_default_constructible", "check_estimator_cloneable", "check_estimators_unfitted",
              "check_estimator_repr", "check_fit1d", "check_complex_data", "check_estimator_sparse_array",
              "check_estimators_empty_data_messages", "check_do_not_raise_errors_in_init_or_set_params"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = check_estimator(est, on_fail=None, on_skip=None)
    status = {r["check_name"]: r["status"] for r in results if r["check_name"] in wanted}
    assert set(status) == wanted and set(status.values()) == {"passed"}, status


def test_resample_with_step_only_uses_multiples_inside_the_axis():
    nir = build_preprocessing([{"name": "resample", "step": 10}], np.arange(1100, 2500, 2.0))
    grid = nir.steps[-1][1].new_axis
    assert grid[0] == 1100 and grid[-1] == 2490 and len(grid) == 140
    mir = build_preprocessing([{"name": "resample", "step": 10}], np.linspace(5996.48, 179.37, 3017))
    grid = mir.steps[-1][1].new_axis
    assert grid[0] == 5990 and grid[-1] == 180 and np.all(np.diff(grid) == -10)  # keeps the axis direction
