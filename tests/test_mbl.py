"""Behaviour tests for memory-based learning (soilcarbon.models.mbl)."""

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.signal import savgol_filter
from scipy.spatial.distance import cdist
from sklearn.base import clone
from sklearn.cross_decomposition import PLSRegression
from sklearn.decomposition import PCA
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV, KFold, cross_val_predict

from soilcarbon.errors import SoilCarbonError
from soilcarbon.models.mbl import MemoryBasedLearner, pls1_nipals

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
NIRSOIL = DATA / "nirsoil" / "nirsoil_train.csv"


def rmse(a, b):
    return float(np.sqrt(np.mean((np.asarray(a) - np.asarray(b)) ** 2)))


def two_cluster_problem(n=240, p=60, seed=0, noise=0.05):
    """Spectra from two clusters whose response depends on the same latent scores with
    opposite slopes: y = s @ b_A in cluster A, y = s @ b_B in cluster B. No single linear
    model of X fits both; a model built on same-cluster neighbours does."""
    rng = np.random.default_rng(seed)
    cluster = np.arange(n) % 2
    s = rng.uniform(-1, 1, size=(n, 3))
    wav = np.linspace(0, 1, p)
    loadings = np.stack([np.exp(-((wav - c) ** 2) / 0.005) for c in (0.2, 0.5, 0.8)])
    offset = np.stack([np.zeros(p), 3.0 * np.sin(3 * np.pi * wav)])
    X = offset[cluster] + s @ loadings + rng.normal(0, 0.01, size=(n, p))
    b = np.array([[1.0, 0.5, 0.0], [-1.0, 0.0, 0.8]])
    y = np.einsum("ij,ij->i", s, b[cluster]) + rng.normal(0, noise, n)
    return X, y


@pytest.fixture(scope="module")
def nirsoil():
    df = pd.read_csv(NIRSOIL).dropna(subset=["Ciso"])
    X = df.iloc[:, 4:].to_numpy(float)
    # first derivative (Savitzky-Golay, window 11, order 2) averaged into 10 nm bins
    D = savgol_filter(X, 11, 2, deriv=1, axis=1)[:, 5:-5]
    D = D[:, : (D.shape[1] // 5) * 5].reshape(len(D), -1, 5).mean(axis=2)
    return D, df["Ciso"].to_numpy(float)


# ----------------------------------------------------------------------------- local PLS


def test_nipals_pls1_matches_scikit_learn():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(40, 25))
    y = X[:, :3] @ [1.0, -2.0, 0.5] + rng.normal(0, 0.1, 40)
    Xc, yc = X - X.mean(0), y - y.mean()
    B, R, P = pls1_nipals(Xc, yc, 6)
    for a in (1, 3, 6):
        ref = PLSRegression(n_components=a, scale=False).fit(X, y)
        np.testing.assert_allclose(B[:, a - 1], ref.coef_.ravel(), rtol=1e-8, atol=1e-10)
    # scores through the projection matrix equal scikit-learn's x scores
    ref6 = PLSRegression(n_components=6, scale=False).fit(X, y)
    np.testing.assert_allclose(np.abs(Xc @ R), np.abs(ref6.x_scores_), rtol=1e-7, atol=1e-9)


def test_neighbourhood_of_whole_set_is_global_pls():
    """With k = all reference samples, local PLS with fixed components is the global PLS."""
    X, y = two_cluster_problem(n=80, p=30)
    Xq, _ = two_cluster_problem(n=20, p=30, seed=5)
    mbl = MemoryBasedLearner(k=80, local_method="pls", max_components=4, diss_usage="none").fit(X, y)
    ref = PLSRegression(n_components=4, scale=False).fit(X, y)
    np.testing.assert_allclose(mbl.predict(Xq), ref.predict(Xq).ravel(), rtol=1e-8, atol=1e-8)


def test_wapls_with_one_component_count_is_plain_local_pls():
    X, y = two_cluster_problem(n=100, p=30)
    wapls = MemoryBasedLearner(k=40, local_method="wapls", min_components=5, max_components=5).fit(X, y)
    pls = MemoryBasedLearner(k=40, local_method="pls", max_components=5).fit(X, y)
    np.testing.assert_allclose(wapls.predict(X[:15]), pls.predict(X[:15]), rtol=1e-10)


def test_tricube_weighted_full_rank_local_pls_is_weighted_least_squares():
    """With as many components as predictors, weighted local PLS is weighted least squares on
    the neighbours, with tricube weights of the correlation dissimilarity (hand-computed)."""
    rng = np.random.default_rng(4)
    X = rng.normal(size=(60, 5)) + np.linspace(0, 1, 5)
    y = X @ [1.0, -1.0, 0.5, 0.0, 2.0] + 0.3 * X[:, 0] ** 2 + rng.normal(0, 0.05, 60)
    xq = X[0] + rng.normal(0, 0.1, 5)
    k = 25
    mbl = MemoryBasedLearner(k=k, diss_method="cor", diss_usage="weights", local_method="pls", max_components=5)
    pred = mbl.fit(X, y).predict(xq[None, :])[0]
    d = np.sqrt((1 - np.corrcoef(np.vstack([xq, X]))[0, 1:]) / 2)
    nb = np.argsort(d)[:k]
    w = np.maximum((1 - (d[nb] / d[nb].max()) ** 3) ** 3, 1e-6)
    A = np.column_stack([np.ones(k), X[nb]]) * np.sqrt(w)[:, None]
    beta = np.linalg.lstsq(A, y[nb] * np.sqrt(w), rcond=None)[0]
    assert pred == pytest.approx(beta[0] + xq @ beta[1:], rel=1e-8)
    unweighted = MemoryBasedLearner(k=k, diss_method="cor", diss_usage="none", local_method="pls", max_components=5)
    assert unweighted.fit(X, y).predict(xq[None, :])[0] != pytest.approx(pred, rel=1e-6)


def test_wapls_prediction_lies_within_its_component_predictions():
    X, y = two_cluster_problem(n=100, p=30)
    Xq, _ = two_cluster_problem(n=10, p=30, seed=3)
    lo_hi = [MemoryBasedLearner(k=50, local_method="pls", max_components=c).fit(X, y).predict(Xq) for c in range(2, 9)]
    lo_hi = np.array(lo_hi)
    pred = MemoryBasedLearner(k=50, min_components=2, max_components=8).fit(X, y).predict(Xq)
    assert np.all(pred >= lo_hi.min(0) - 1e-9) and np.all(pred <= lo_hi.max(0) + 1e-9)


# ----------------------------------------------------------------------------- behaviour


def test_local_models_fit_where_a_global_linear_model_cannot():
    X, y = two_cluster_problem(n=300, seed=0)
    Xt, yt = two_cluster_problem(n=200, seed=1)
    pls = GridSearchCV(PLSRegression(scale=False), {"n_components": range(1, 16)}, cv=5).fit(X, y)
    mbl = MemoryBasedLearner(k=40, min_components=2, max_components=8).fit(X, y)
    err_pls = rmse(pls.predict(Xt).ravel(), yt)
    err_mbl = rmse(mbl.predict(Xt), yt)
    assert err_pls > 0.4  # the global model misses the cluster-specific slopes
    assert err_mbl < 0.15 < err_pls  # noise sd is 0.05
    assert err_mbl < 0.3 * err_pls


@pytest.mark.parametrize(
    "params",
    [{}, {"k": 60, "diss_method": "pca", "diss_usage": "predictors", "max_components": 15}],
    ids=["default", "resemble-like"],
)
def test_mbl_beats_plain_pls_on_real_nir_soil_carbon(nirsoil, params):
    X, y = nirsoil
    rng = np.random.default_rng(0)
    idx = rng.choice(len(y), 300, replace=False)
    X, y = X[idx], y[idx]
    cv = KFold(5, shuffle=True, random_state=0)
    pls = GridSearchCV(PLSRegression(scale=False), {"n_components": range(1, 21)}, cv=5)
    pred_pls = cross_val_predict(pls, X, y, cv=cv).ravel()
    mbl = MemoryBasedLearner(**params)
    pred_mbl = cross_val_predict(mbl, X, y, cv=cv)
    assert rmse(pred_mbl, y) < 0.9 * rmse(pred_pls, y)


def test_k_list_is_chosen_by_leave_one_out():
    X, y = two_cluster_problem(n=200)
    mbl = MemoryBasedLearner(k=[20, 199], min_components=2, max_components=8).fit(X, y)
    assert set(mbl.k_validation_rmse_) == {20, 199}
    assert mbl.k_ == 20  # small neighbourhoods stay inside one cluster
    assert mbl.k_validation_rmse_[20] < 0.5 * mbl.k_validation_rmse_[199]


# ----------------------------------------------------------------------------- dissimilarities


def test_correlation_dissimilarity_matches_numpy_corrcoef():
    X, y = two_cluster_problem(n=60, p=30)
    Xq = X[:5] + np.random.default_rng(2).normal(0, 0.05, size=(5, X.shape[1]))
    info = MemoryBasedLearner(k=10, diss_method="cor").fit(X, y).predict_with_info(Xq)
    r = np.corrcoef(np.vstack([Xq, X]))[:5, 5:]
    d = np.sort(np.sqrt((1 - r) / 2), axis=1)
    np.testing.assert_allclose(info["nearest_dissimilarity"], d[:, 0], atol=1e-9)
    np.testing.assert_allclose(info["mean_dissimilarity"], d[:, :10].mean(1), atol=1e-9)


def test_pca_dissimilarity_is_mahalanobis_on_pca_scores():
    X, y = two_cluster_problem(n=60, p=30)
    Xq = X[:5][:, ::-1].copy()
    mbl = MemoryBasedLearner(k=8, diss_method="pca", diss_components=4).fit(X, y)
    pca = PCA(4).fit(X)
    S, Sq = pca.transform(X), pca.transform(Xq)
    d = cdist(Sq, S, "mahalanobis", VI=np.linalg.inv(np.cov(S.T))) / np.sqrt(4)
    d = np.sort(d, axis=1)
    info = mbl.predict_with_info(Xq)
    assert mbl.diss_components_ == 4
    np.testing.assert_allclose(info["nearest_dissimilarity"], d[:, 0], rtol=1e-8)
    np.testing.assert_allclose(info["mean_dissimilarity"], d[:, :8].mean(1), rtol=1e-8)


def test_explained_variance_selects_components():
    X, y = two_cluster_problem(n=80, p=30)
    ratio = PCA().fit(X).explained_variance_ratio_
    expected = int(np.argmax(np.cumsum(ratio) >= 0.99)) + 1
    assert MemoryBasedLearner(k=30, diss_method="pca", diss_components=0.99).fit(X, y).diss_components_ == expected


def test_far_queries_get_larger_difficulty():
    X, y = two_cluster_problem(n=120)
    mbl = MemoryBasedLearner(k=20, diss_method="pca", diss_components=3).fit(X, y)
    centre = X.mean(axis=0)
    near = mbl.predict_with_info(X[:10] + 0.001)
    far = mbl.predict_with_info(centre + 4.0 * (X[:10] - centre))  # 4x further out on every PC
    assert list(near.columns) == [
        "prediction",
        "mean_dissimilarity",
        "nearest_dissimilarity",
        "local_spread",
        "neighbour_y_sd",
    ]
    assert np.all(near["nearest_dissimilarity"] < 0.01)
    assert np.all(far["mean_dissimilarity"] > 2 * near["mean_dissimilarity"])


@pytest.mark.parametrize("diss_usage", ["predictors", "weights"])
def test_dissimilarity_usage_variants_still_fit_the_two_clusters(diss_usage):
    X, y = two_cluster_problem(n=300, seed=0)
    Xt, yt = two_cluster_problem(n=100, seed=1)
    mbl = MemoryBasedLearner(k=40, min_components=2, max_components=8, diss_usage=diss_usage).fit(X, y)
    assert rmse(mbl.predict(Xt), yt) < 0.2


# ----------------------------------------------------------------------------- contract


def test_clone_and_get_params():
    mbl = MemoryBasedLearner(k=[30, 60], diss_method="cor", min_components=2, max_components=9, diss_usage="predictors")
    params = mbl.get_params()
    assert params["k"] == [30, 60] and params["diss_method"] == "cor" and params["max_components"] == 9
    twin = clone(mbl)
    assert twin.get_params() == params
    X, y = two_cluster_problem(n=80)
    mbl.fit(X, y)
    assert not hasattr(clone(mbl), "k_")


def test_predict_before_fit_raises():
    with pytest.raises(NotFittedError):
        MemoryBasedLearner().predict(np.zeros((2, 5)))


def test_k_larger_than_reference_set_is_clipped_with_warning():
    X, y = two_cluster_problem(n=50, p=20)
    with pytest.warns(UserWarning, match="clipped to 50"):
        big = MemoryBasedLearner(k=500, local_method="pls", max_components=4).fit(X, y)
    assert big.k_ == 50
    same = MemoryBasedLearner(k=50, local_method="pls", max_components=4).fit(X, y)
    np.testing.assert_allclose(big.predict(X[:5]), same.predict(X[:5]))


def test_wrong_feature_count_is_refused():
    X, y = two_cluster_problem(n=50, p=20)
    mbl = MemoryBasedLearner(k=10).fit(X, y)
    with pytest.raises(ValueError, match="features"):
        mbl.predict(X[:, :10])


@pytest.mark.parametrize(
    "params, fragment",
    [
        ({"diss_method": "cosine"}, "diss_method"),
        ({"diss_usage": "both"}, "diss_usage"),
        ({"local_method": "gpr"}, "local_method"),
        ({"k": 2}, "k must be"),
        ({"min_components": 5, "max_components": 3}, "min_components"),
        ({"diss_components": 1.5}, "diss_components"),
    ],
)
def test_bad_parameters_give_one_line_errors(params, fragment):
    X, y = two_cluster_problem(n=50, p=20)
    params = {"k": 20, **params}
    with pytest.raises(SoilCarbonError, match=fragment):
        MemoryBasedLearner(**params).fit(X, y)


# ----------------------------------------------------------------------------- compiled path


def _loop_reference(mbl, Xq):
    """The per-query reference path (one NIPALS per query) on the same neighbourhoods."""
    Eq = mbl._embed(Xq)
    D = mbl._pairwise(Eq, mbl.E_, mbl.diss_method)
    return mbl._predict_rows_loop(Xq, Eq, D, mbl.k_)


@pytest.fixture(params=["library", "block", "rows"])
def kernel_form(request, monkeypatch):
    """Runs a test with the compiled kernel's Gram form on the whole library's Gram matrix, on
    a query block's, then with its row form, whatever the sizes."""
    import soilcarbon.models.mbl as mbl_module

    monkeypatch.setattr(mbl_module, "library_gram", lambda n, m, k: request.param == "library")
    monkeypatch.setattr(mbl_module, "gram_form", lambda u, m, k: request.param != "rows")
    return request.param


@pytest.mark.parametrize("local_method", ["wapls", "pls"])
@pytest.mark.parametrize("diss_usage", ["weights", "none", "predictors"])
@pytest.mark.parametrize("diss_method", ["cor", "pca", "pls", "euclid"])
def test_compiled_prediction_equals_per_query_local_models(nirsoil, diss_method, diss_usage, local_method, kernel_form):
    """The compiled kernel-form local PLS gives the per-query NIPALS results, on real NIR
    spectra and on the synthetic two-cluster problem, for every option combination, in the
    Gram form (small libraries) and in the row form (large ones)."""
    X, y = nirsoil
    rng = np.random.default_rng(1)
    Xq = X[rng.choice(len(X), 12)] + rng.normal(0, 0.02 * X.std(), size=(12, X.shape[1]))
    Xs, ys = two_cluster_problem(n=120, p=30)
    Xsq, _ = two_cluster_problem(n=10, p=30, seed=9)
    params = dict(diss_method=diss_method, diss_usage=diss_usage, local_method=local_method, diss_components=5)
    for ref, resp, query, extra in ((X, y, Xq, {"k": 60}), (Xs, ys, Xsq, {"k": 30, "max_components": 8})):
        mbl = MemoryBasedLearner(**params, **extra).fit(ref, resp)
        info = mbl.predict_with_info(query)
        expected = _loop_reference(mbl, query)
        scale = np.abs(expected).max(axis=0)
        np.testing.assert_allclose(info.to_numpy(), expected, rtol=1e-8, atol=1e-9 * scale.max())
        np.testing.assert_allclose(mbl.predict(query), expected[:, 0], rtol=1e-8)


def test_compiled_default_model_equals_per_query_path_on_real_data(nirsoil, kernel_form):
    X, y = nirsoil
    mbl = MemoryBasedLearner().fit(X[:400], y[:400])
    expected = _loop_reference(mbl, X[400:460])
    got = mbl.predict_with_info(X[400:460]).to_numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-8, atol=1e-12)
    assert np.abs(got[:, 0] - expected[:, 0]).max() < 1e-8 * np.abs(expected[:, 0]).max()


def test_neighbourhoods_with_constant_response_fall_back_to_the_mean(kernel_form):
    """Where every neighbour has the same response NIPALS stops at zero components; the
    compiled path hands those queries to the per-query path, which predicts the constant."""
    X, y = two_cluster_problem(n=120, p=30)
    y = np.where(np.arange(120) % 2 == 0, 3.25, y)  # cluster A: constant response
    mbl = MemoryBasedLearner(k=20, diss_method="euclid", min_components=2, max_components=6).fit(X, y)
    Xq, _ = two_cluster_problem(n=10, p=30, seed=4)
    info = mbl.predict_with_info(Xq)
    np.testing.assert_allclose(info["prediction"].to_numpy()[::2], 3.25, rtol=1e-12)
    np.testing.assert_allclose(info.to_numpy(), _loop_reference(mbl, Xq), rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("ks", [[15, 40], [20, 50]])  # 2 x 50 = n: no room for 2k single-precision candidates
def test_k_choice_by_leave_one_out_uses_the_same_local_models(ks):
    X, y = two_cluster_problem(n=100, p=30)
    mbl = MemoryBasedLearner(k=ks, min_components=2, max_components=6).fit(X, y)
    D = mbl._pairwise(mbl.E_, mbl.E_, "cor")
    np.fill_diagonal(D, np.inf)
    for k, rmse_k in mbl.k_validation_rmse_.items():
        loop = mbl._predict_rows_loop(X, mbl.E_, D, k)[:, 0]
        assert rmse_k == pytest.approx(rmse(loop, y), rel=1e-9)


def test_predict_keeps_no_hidden_state_and_pickles_unchanged():
    """Issue 9: predict reads the fitted attributes only; nothing is added to the instance."""
    import pickle

    X, y = two_cluster_problem(n=80, p=20)
    mbl = MemoryBasedLearner(k=20, max_components=5, diss_usage="predictors").fit(X, y)
    state = {key: (id(v), np.array(v, copy=True) if isinstance(v, np.ndarray) else v) for key, v in mbl.__dict__.items()}
    before = mbl.predict(X[:5])
    assert set(mbl.__dict__) == set(state)
    for key, (ident, value) in state.items():
        assert id(mbl.__dict__[key]) == ident
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(mbl.__dict__[key], value)
    twin = pickle.loads(pickle.dumps(mbl))
    np.testing.assert_array_equal(twin.predict(X[:5]), before)


# ----------------------------------------------------------------------------- library scale


def _load_reference_problem(name="make_mbl_reference"):
    spec = importlib.util.spec_from_file_location(name, Path(__file__).parent / "data" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_predictions_equal_those_of_the_code_before_the_blockwise_rewrite(shared_data, kernel_form):
    """Stored results of main @ 733f403 (full distance matrices, cached reference Gram) on
    NIRsoil: the blockwise neighbour search and per-neighbourhood kernel give them to 1e-8."""
    module = _load_reference_problem()
    expected = np.load(Path(__file__).parent / "data" / "mbl_reference.npz")
    X, y, Q = module.reference_problem()
    for name, params in module.CONFIGS.items():
        mbl = MemoryBasedLearner(**params).fit(X, y)
        assert [mbl.k_, mbl.diss_components_] == expected[name + "/k"].tolist(), name
        if name + "/k_rmse" in expected:
            got = np.array(sorted(mbl.k_validation_rmse_.items()), float)
            np.testing.assert_allclose(got, expected[name + "/k_rmse"], rtol=1e-8, err_msg=name)
        info = mbl.predict_with_info(Q).to_numpy()
        want = expected[name + "/info"]
        np.testing.assert_allclose(info[:, 0], want[:, 0], rtol=1e-8, atol=0, err_msg=name)
        np.testing.assert_allclose(info, want, rtol=1e-8, atol=1e-8 * np.abs(want).max(), err_msg=name)


@pytest.mark.parametrize("scan", [False, True], ids=["one-block", "scanned"])
def test_predictions_on_a_6000_reference_library_equal_those_of_the_code_before_the_cache_blocks(shared_data, scan, monkeypatch):
    """Stored results of main @ ba05ff1 (before the cache-sized neighbour search and the BLAS-free
    local kernel) on 6,000 resampled NIRsoil references, beyond the old 5,656-reference Gram path:
    today's code gives them to 1e-8, with the library in one block (partial sort) and scanned in
    blocks of 333 references (running top-k, in single precision for "cor")."""
    import soilcarbon.models.mbl as mbl_module

    if scan:
        monkeypatch.setattr(mbl_module, "BLOCK_BYTES", 2e6)
        monkeypatch.setattr(mbl_module, "SCAN_BYTES", 2e5)
    module = _load_reference_problem("make_mbl_library_reference")
    expected = np.load(Path(__file__).parent / "data" / "mbl_library_reference.npz")
    X, y, Q = module.library_problem()
    for name, params in module.CONFIGS.items():
        mbl = MemoryBasedLearner(**params).fit(X, y)
        assert [mbl.k_, mbl.diss_components_] == expected[name + "/k"].tolist(), name
        info = mbl.predict_with_info(Q).to_numpy()
        want = expected[name + "/info"]
        np.testing.assert_allclose(info[:, 0], want[:, 0], rtol=1e-8, atol=0, err_msg=name)
        np.testing.assert_allclose(info, want, rtol=1e-8, atol=1e-8 * np.abs(want).max(), err_msg=name)


def _library(nirsoil, n, seed=0):
    """n spectra resampled from NIRsoil with small noise (2 % of the spectral sd), and their y."""
    X, y = nirsoil
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, len(X), n)
    return X[rows] + rng.normal(0, 0.02 * X.std(), size=(n, X.shape[1])), y[rows] + rng.normal(0, 0.05, n)


def test_blockwise_neighbours_are_the_exact_nearest(nirsoil, monkeypatch):
    import soilcarbon.models.mbl as mbl_module

    Xr, yr = _library(nirsoil, 1500)
    Xq, _ = _library(nirsoil, 300, seed=1)
    for method, block_bytes in (("cor", 50 * 300 * 8), ("pca", 50 * 300 * 8), ("cor", 1e9), ("pca", 1e9)):
        mbl = MemoryBasedLearner(k=50, diss_method=method, diss_components=8).fit(Xr, yr)
        Eq = mbl._embed(Xq)
        D = mbl._pairwise(Eq, mbl.E_, method)
        # reference blocks of 50 rows (running top-k), or the whole library in one block (partial sort)
        monkeypatch.setattr(mbl_module, "BLOCK_BYTES", block_bytes)
        nb, dn = mbl.kneighbors(Eq, 50)
        np.testing.assert_array_equal(np.sort(nb, axis=1), np.sort(np.argpartition(D, 49, axis=1)[:, :50], axis=1))
        np.testing.assert_allclose(dn, np.take_along_axis(D, nb, axis=1), rtol=1e-12, atol=1e-13)  # rounding
        # leave-one-out: a reference sample is never its own neighbour
        nb_self, _ = mbl.kneighbors(mbl.E_[:100], 10, exclude=np.arange(100))
        assert not (nb_self == np.arange(100)[:, None]).any()
        monkeypatch.undo()
    # 300 copies of one spectrum: the single-precision scan cannot separate them, the double one does
    Xt = np.vstack([Xr[:1200], np.repeat(Xr[:1], 300, axis=0)])
    mbl = MemoryBasedLearner(k=50).fit(Xt, yr[: len(Xt)])
    Eq = mbl._embed(np.vstack([Xr[:1] + 1e-4 * Xr.std(), Xq[:20]]))
    nb, dn = mbl.kneighbors(Eq, 50)
    D = mbl._pairwise(Eq, mbl.E_, "cor")
    np.testing.assert_allclose(np.sort(dn, axis=1), np.sort(D, axis=1)[:, :50], rtol=1e-12, atol=1e-13)
    assert set(nb[0]) <= set(range(1200, 1500)) | {0}


def test_predict_memory_does_not_grow_with_queries_times_references(nirsoil, monkeypatch):
    """4,000 references x 2,000 queries: a full dissimilarity matrix would take 64 MB (and the
    old path a Gram and a product matrix more); blockwise prediction peaks at a few MB and gives
    the same predictions as with one big block."""
    import tracemalloc

    import soilcarbon.models.mbl as mbl_module

    Xr, yr = _library(nirsoil, 4000)
    Xq, _ = _library(nirsoil, 2000, seed=1)
    mbl = MemoryBasedLearner(k=60, max_components=10).fit(Xr, yr)
    one_block = mbl.predict(Xq[:300])  # also compiles the kernel before measuring
    monkeypatch.setattr(mbl_module, "BLOCK_BYTES", 2e6)
    monkeypatch.setattr(mbl_module, "QUERY_BLOCK", 64)
    tracemalloc.start()
    pred = mbl.predict(Xq)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    full_matrix = len(Xq) * len(Xr) * 8
    assert peak < 0.15 * full_matrix, f"peak {peak / 1e6:.1f} MB"
    np.testing.assert_allclose(pred[:300], one_block, rtol=1e-12)


def test_small_library_forms_its_gram_matrix_once_per_call_and_large_one_never(nirsoil, monkeypatch):
    """The speed of small libraries (issue 9: no slower than the cached Gram matrix of the old
    code) without state: one Gram matrix of the library per predict call, none for a library
    above GRAM_BYTES; the predictions equal the row form's."""
    import soilcarbon.models.mbl as mbl_module

    calls = []
    original = MemoryBasedLearner._library_gram
    monkeypatch.setattr(MemoryBasedLearner, "_library_gram", lambda self: calls.append(len(self.X_)) or original(self))
    X, y = nirsoil
    Xq, _ = _library(nirsoil, 600, seed=3)
    mbl = MemoryBasedLearner().fit(X, y)
    fast = mbl.predict(Xq)
    assert calls == [len(X)]
    large = MemoryBasedLearner(k=60, max_components=10).fit(*_library(nirsoil, 3000))
    large.predict(Xq[:300])
    assert calls == [len(X)]  # 3,000^2 doubles exceed GRAM_BYTES
    monkeypatch.setattr(mbl_module, "gram_form", lambda u, m, k: False)
    np.testing.assert_allclose(mbl.predict(Xq), fast, rtol=1e-9)
    assert calls == [len(X)]
