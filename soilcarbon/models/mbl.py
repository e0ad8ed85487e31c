"""Memory-based learning (MBL): a local PLS fitted on each query's spectral neighbours.

Method (Ramirez-Lopez et al., 2013; the ``mbl`` function of the R package ``resemble``):

1. ``fit`` stores the reference set (spectra ``X``, response ``y``) and learns the
   dissimilarity space from it: a PCA (or PLS) projection of the centred reference spectra
   whose number of components is chosen by explained variance, fixed, or by the "optimal
   component" criterion of resemble (``"opc"``: the number of components for which each
   reference sample's nearest neighbour has the most similar response).
2. For each query spectrum ``x``, ``predict`` computes its dissimilarity to every reference
   spectrum (all queries at once), keeps the ``k`` nearest, and fits a local PLS1
   regression on them (centred, optionally scaled, optionally weighted by dissimilarity,
   optionally with the local dissimilarity matrix appended as extra predictors, resemble's
   ``diss_usage = "predictors"``).
3. The local prediction is either a PLS with a fixed number of components or, as resemble's
   default ``local_fit_wapls``, a weighted average of the predictions with
   ``min_components .. max_components`` components. The weight of the model with ``j`` components is
   ``w_j = 1 / (s_j * g_j)`` (Shenk et al., 1997), where ``s_j`` is the root mean square of the
   query's spectral reconstruction residual with ``j`` components and ``g_j`` the root mean
   square of that model's regression coefficients; weights are normalised to sum to one.

Dissimilarities (``diss_method``):

* ``"pca"`` -- Mahalanobis distance in the space of the reference PCA scores (Euclidean
  distance between scores divided by their standard deviations), divided by
  ``sqrt(n_components)``. Resemble's default.
* ``"pls"`` -- the same on the scores of a global PLS of ``y`` on ``X`` (target-guided).
* ``"euclid"`` -- Euclidean distance between centred spectra divided by ``sqrt(p)``.
* ``"cor"`` -- correlation dissimilarity ``sqrt((1 - r) / 2)`` between spectra.

When ``k`` is a sequence, ``fit`` picks ``k_`` by leave-one-out over the reference set:
each reference sample is predicted by the local model built on its neighbours among the
*other* reference samples, for every candidate ``k``; the ``k`` with the smallest RMSE wins.

``predict_with_info`` also returns per-query difficulty measures (mean and nearest
dissimilarity to the neighbours, spread of the local predictions, local response spread)
that a normalised conformal predictor can use to widen intervals where the library is thin.

Why our own code: no maintained Python package implements resemble's MBL; the local PLS1 is
a plain NIPALS written here because scikit-learn's ``PLSRegression`` validates and copies on
every call and is several times slower for the hundreds of tiny local fits one prediction
needs (the results agree to 1e-10, see the tests).

Speed and memory: queries are handled in blocks of ``QUERY_BLOCK``; each block's exact ``k``
nearest references are found by scanning the reference set in cache-sized blocks of
``SCAN_BYTES`` of scores with a running top-k (:meth:`MemoryBasedLearner.kneighbors`), and every
query's local model is fitted in the kernel form of NIPALS, compiled with numba and free of BLAS
calls (:mod:`soilcarbon.models.local_pls`), from its k neighbours alone. ``predict`` and the
leave-one-out choice of ``k`` run with BLAS limited to one thread (threadpoolctl): the products
left are cache-sized, and BLAS threads woken for them fight the compiled loops and any other
process for the cores. No n x n or queries x
references matrix is formed, so the compiled path is used at any library size and memory does
not grow with it; the leave-one-out choice of ``k`` and the ``"opc"`` component count are
blockwise too. For small libraries the cheapest exact path is chosen by size, within the same
bounds: a library that fits in one block is partially sorted instead of scanned, in double
precision below ``8 x 2k`` references; query blocks grow to ``BLOCK_BYTES`` of dissimilarities;
and the local models take the kernel's Gram form (:func:`gram_form`, :func:`library_gram`): one
Gram matrix of the library (up to ``GRAM_BYTES``, 2,828 references), formed once per ``predict``
call, or of a query block's distinct neighbours, from which each neighbourhood's k x k matrix is
gathered. Nothing is cached: ``predict`` reads only the fitted attributes. The compiled
path equals the per-query NIPALS (``_predict_rows_loop``, kept as reference) to about 1e-11 on
NIR data; the per-query path remains for ``scale=True`` (local column scaling has no kernel
form here) and for queries whose local NIPALS stops early.

References
----------
Ramirez-Lopez, L., Behrens, T., Schmidt, K., Stevens, A., Dematte, J.A.M., Scholten, T.
(2013). The spectrum-based learner: A new local approach for modeling soil vis-NIR spectra of
complex datasets. Geoderma 195-196, 268-279.

Ramirez-Lopez, L., Stevens, A., et al. resemble: Regression and similarity evaluation for
memory-based learning in spectral chemometrics. R package, https://CRAN.R-project.org/package=resemble

Shenk, J.S., Westerhaus, M.O., Berzaghi, P. (1997). Investigation of a LOCAL calibration
procedure for near infrared instruments. Journal of Near Infrared Spectroscopy 5, 223-232.

Naes, T., Isaksson, T., Kowalski, B. (1990). Locally weighted regression and scatter
correction for near-infrared reflectance data. Analytical Chemistry 62, 664-673.
"""

from __future__ import annotations

import functools
import numbers
import warnings

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.utils.validation import check_is_fitted, validate_data
from threadpoolctl import ThreadpoolController

from soilcarbon.errors import SoilCarbonError
from soilcarbon.models.local_pls import local_pls_predict, nearest_finish, nearest_update, neighbour_dissimilarities

DISS_METHODS = ("cor", "pca", "pls", "euclid")
DISS_USAGES = ("weights", "none", "predictors")
LOCAL_METHODS = ("wapls", "pls")
BLOCK_BYTES = 32e6  # working memory of one block of query x reference dissimilarities
SCAN_BYTES = 1 << 20  # one block of query x reference scores in the neighbour scan: fits a core's L2 cache
SCAN_BUFFER = 4  # candidate buffer of the neighbour scan, in multiples of the candidates kept
QUERY_BLOCK = 512  # queries handled together (neighbour search, then their local models)
SINGLE_MARGIN, SINGLE_MARGIN_MIN = 0.5, 8  # the single-precision scan keeps k + max(8, k / 2) candidates
SINGLE_MIN_RATIO = 8  # the "cor" scan runs in single precision above 8 x 2k references
GRAM_BYTES = 64e6  # largest Gram matrix of a query block's neighbours (up to 2,828 distinct references)


@functools.cache
def _blas_libraries():
    """threadpoolctl's handle on the BLAS libraries loaded in this process, found once: finding
    them reads the process's library list (milliseconds, more than a one-spectrum ``predict``),
    setting a limit through the handle takes microseconds. Libraries loaded later are not seen."""
    return ThreadpoolController()


def one_blas_thread():
    """Context manager limiting BLAS to one thread (threadpoolctl), for ``predict`` and the
    leave-one-out choice of ``k``: their products are cache-sized blocks, and BLAS threads woken
    for them fight the compiled loops and other processes for the cores (5-10x slower on 2
    shared cores)."""
    return _blas_libraries().limit(limits=1, user_api="blas")


def gram_form(u, m, k):
    """Whether a block of ``m`` queries with ``k`` neighbours each, ``u`` distinct references among
    them, fits its local models in the Gram form (one ``u x u`` Gram matrix by BLAS, then O(k^2)
    per query) rather than the row form (O(k^2 p) per query): when the Gram matrix has no more
    entries than the ``m`` neighbourhoods' ``k x k`` matrices together (it then costs less, and
    BLAS runs faster than the per-query loop) and fits in ``GRAM_BYTES``. Small libraries (up to
    2,828 references with the defaults) take it; large ones take it only where a block's
    neighbourhoods overlap enough."""
    return u * u <= min(m * k * k, GRAM_BYTES / 8)


def library_gram(n, m, k):
    """Whether a call with ``m`` queries forms the Gram matrix of the whole library of ``n``
    references once (when :func:`gram_form` holds for it), for all its query blocks."""
    return gram_form(n, m, k)


# --------------------------------------------------------------------------- local PLS


def pls1_nipals(X, y, n_components):
    """PLS1 by NIPALS on already centred ``X`` (n, p) and ``y`` (n,).

    Returns ``(B, R, P)``: ``B[:, a]`` are the regression coefficients of the model with
    ``a + 1`` components, ``R = W (P'W)^-1`` the projection giving scores ``T = X R`` and
    ``P`` the X loadings. Fewer than ``n_components`` columns come back when ``y`` is
    exhausted (its residual no longer covaries with ``X``) or the rank is reached.
    """
    n, p = X.shape
    n_components = int(min(n_components, n - 1, p))
    Xd = np.array(X, dtype=float, copy=True)
    yd = np.array(y, dtype=float, copy=True)
    W = np.zeros((p, max(n_components, 0)))
    P = np.zeros_like(W)
    q = np.zeros(max(n_components, 0))
    tol = 1e-10 * max(np.linalg.norm(Xd), 1e-300) * max(np.linalg.norm(yd), 1e-300)
    a = 0
    for a in range(n_components):
        w = Xd.T @ yd
        norm_w = np.linalg.norm(w)
        if norm_w <= tol:
            break
        w /= norm_w
        t = Xd @ w
        tt = t @ t
        if tt <= 1e-300:
            break
        p_a = (Xd.T @ t) / tt
        q_a = (yd @ t) / tt
        Xd -= np.outer(t, p_a)
        yd -= q_a * t
        W[:, a], P[:, a], q[a] = w, p_a, q_a
    else:
        a = n_components
    W, P, q = W[:, :a], P[:, :a], q[:a]
    if a == 0:
        return np.zeros((p, 0)), np.zeros((p, 0)), np.zeros((p, 0))
    R = W @ np.linalg.inv(P.T @ W)
    B = np.cumsum(R * q, axis=1)
    return B, R, P


def _wapls_weights(x, B, R, P, lo, hi):
    """Shenk et al. (1997) weights for models with lo..hi components (1-based, inclusive)."""
    t = x @ R[:, :hi]
    recon = np.cumsum(t[:, None] * P[:, :hi].T, axis=0)  # (hi, p)
    resid = np.sqrt(np.mean((x[None, :] - recon) ** 2, axis=1))[lo - 1 : hi]
    rmsb = np.sqrt(np.mean(B[:, lo - 1 : hi] ** 2, axis=0))
    inv = 1.0 / np.maximum(resid * rmsb, 1e-300)
    return inv / inv.sum()


# --------------------------------------------------------------------------- estimator


class MemoryBasedLearner(RegressorMixin, BaseEstimator):
    """Memory-based learning: local PLS on each query's ``k`` nearest reference spectra.

    The defaults are the recipe that cross-validated best on NIR soil carbon (correlation
    dissimilarity, 120 neighbours weighted by the tricube of their dissimilarity, wapls over
    3..20 components, on first-derivative spectra; see ``benchmarks/research_nirsoil.py``).
    Resemble's own defaults are ``diss_method="pca"``, ``diss_components="opc"``,
    ``diss_usage="predictors"``, ``min_components=3``, ``max_components=15``.

    Parameters
    ----------
    k : int or sequence of int, default=120
        Number of nearest neighbours per local model. A sequence makes ``fit`` choose
        ``k_`` by leave-one-out over the reference set (costs one local fit per reference
        sample and candidate). Values larger than the reference set are clipped to it with
        a ``UserWarning`` (``k_`` records the value used).
    diss_method : {"cor", "pca", "pls", "euclid"}, default="cor"
        Dissimilarity used to find neighbours (see module docstring).
    diss_components : "opc", float in (0, 1) or int, default="opc"
        Components of the projection for ``"pca"``/``"pls"`` dissimilarities: ``"opc"``
        picks the count (up to ``max_diss_components``) whose nearest-neighbour response
        difference is smallest (resemble's default); a float keeps the fewest components
        explaining that share of the spectral variance; an int is used as is.
    max_diss_components : int, default=40
        Upper bound for ``"opc"``.
    local_method : {"wapls", "pls"}, default="wapls"
        ``"wapls"``: weighted average of the local PLS predictions with ``min_components`` ..
        ``max_components`` components (resemble's default). ``"pls"``: one local PLS with
        ``max_components`` components.
    min_components, max_components : int, default=3, 20
        Component range of the local models (clipped to ``k - 2`` when ``k`` is small).
    diss_usage : {"weights", "none", "predictors"}, default="weights"
        ``"weights"`` weights each neighbour in the local fit by the tricube function of its
        dissimilarity, ``(1 - (d / d_max)^3)^3`` (Naes et al., 1990); ``"predictors"``
        appends the dissimilarities among the neighbours (and of the query to them) as extra
        local predictors (resemble's default); ``"none"`` fits on the spectra alone.
    center_diss, scale_diss : bool, default=True, False
        Column centring / scaling of the spectra before the global projection.
    scale : bool, default=False
        Scale the local predictors to unit variance in each local model.

    Attributes
    ----------
    k_ : int
        Number of neighbours used by ``predict``.
    diss_components_ : int
        Components of the dissimilarity projection (``"pca"``/``"pls"`` only, else 0).
    k_validation_rmse_ : dict or None
        Leave-one-out RMSE per candidate ``k`` when ``k`` is a sequence.
    X_, y_ : ndarray
        The stored reference set.
    n_features_in_ : int

    Examples
    --------
    >>> mbl = MemoryBasedLearner(k=80).fit(X_train, y_train)      # doctest: +SKIP
    >>> info = mbl.predict_with_info(X_new)                        # doctest: +SKIP
    >>> info[["prediction", "mean_dissimilarity"]]                 # doctest: +SKIP
    """

    def __init__(
        self,
        k=120,
        diss_method="cor",
        diss_components="opc",
        max_diss_components=40,
        local_method="wapls",
        min_components=3,
        max_components=20,
        diss_usage="weights",
        center_diss=True,
        scale_diss=False,
        scale=False,
    ):
        self.k = k
        self.diss_method = diss_method
        self.diss_components = diss_components
        self.max_diss_components = max_diss_components
        self.local_method = local_method
        self.min_components = min_components
        self.max_components = max_components
        self.diss_usage = diss_usage
        self.center_diss = center_diss
        self.scale_diss = scale_diss
        self.scale = scale

    # ------------------------------------------------------------------ validation
    def _check_params(self, n_samples):
        if self.diss_method not in DISS_METHODS:
            raise SoilCarbonError(f"MBL diss_method {self.diss_method!r} is unknown: use one of {', '.join(DISS_METHODS)}")
        if self.diss_usage not in DISS_USAGES:
            raise SoilCarbonError(f"MBL diss_usage {self.diss_usage!r} is unknown: use one of {', '.join(DISS_USAGES)}")
        if self.local_method not in LOCAL_METHODS:
            raise SoilCarbonError(f"MBL local_method {self.local_method!r} is unknown: use one of {', '.join(LOCAL_METHODS)}")
        lo = self.min_components if self.local_method == "wapls" else 1  # "pls" ignores min_components
        if not (isinstance(lo, numbers.Integral) and isinstance(self.max_components, numbers.Integral)) or not (
            1 <= lo <= self.max_components
        ):
            raise SoilCarbonError(
                f"MBL needs integers 1 <= min_components <= max_components, got {self.min_components!r} and {self.max_components!r}"
            )
        ks = [self.k] if isinstance(self.k, numbers.Integral) else list(self.k)
        if not ks or not all(isinstance(v, numbers.Integral) and v >= 3 for v in ks):
            raise SoilCarbonError(f"MBL k must be an integer >= 3 or a list of them, got {self.k!r}")
        n_ref = n_samples - 1 if len(ks) > 1 else n_samples  # leave-one-out needs one spare
        if n_samples < 4:
            raise SoilCarbonError(f"MBL needs at least 4 reference samples, got {n_samples}")
        if max(ks) > n_ref:
            warnings.warn(
                f"MBL k={self.k!r} exceeds the {n_samples} reference samples; neighbourhoods are clipped to {n_ref}",
                UserWarning,
                stacklevel=3,
            )
        ks = sorted({min(int(v), n_ref) for v in ks})
        nc = self.diss_components
        if not (
            nc == "opc"
            or (isinstance(nc, numbers.Real) and not isinstance(nc, numbers.Integral) and 0 < nc < 1)
            or (isinstance(nc, numbers.Integral) and nc >= 1)
        ):
            raise SoilCarbonError(f"MBL diss_components must be 'opc', a fraction in (0, 1) or an integer >= 1, got {nc!r}")
        return ks

    # ------------------------------------------------------------------ dissimilarity space
    def _embed(self, X):
        """Coordinates in which the dissimilarity is a Euclidean distance (or row-standardised for cor)."""
        if self.diss_method == "cor":
            Z = X - X.mean(axis=1, keepdims=True)
            norm = np.linalg.norm(Z, axis=1, keepdims=True)
            return Z / np.where(norm > 0, norm, 1.0)
        Z = (X - self.diss_center_) / self.diss_scale_
        if self.diss_method == "euclid":
            return Z / np.sqrt(Z.shape[1])
        S = Z @ self.projection_  # scores
        return S / self.score_sd_ / np.sqrt(self.diss_components_)

    @staticmethod
    def _pairwise(A, B, method):
        if method == "cor":  # sqrt((1 - r) / 2), in place on the product (no temporaries)
            d = A @ B.T
            np.clip(d, -1.0, 1.0, out=d)
            d *= -0.5
            d += 0.5
            return np.sqrt(d, out=d)
        d2 = A @ B.T
        d2 *= -2.0
        d2 += (A * A).sum(1)[:, None]
        d2 += (B * B).sum(1)[None, :]
        np.maximum(d2, 0.0, out=d2)
        return np.sqrt(d2, out=d2)

    def _fit_projection(self, X, y):
        self.diss_center_ = X.mean(axis=0) if self.center_diss else np.zeros(X.shape[1])
        sd = X.std(axis=0, ddof=1) if self.scale_diss else np.ones(X.shape[1])
        self.diss_scale_ = np.where(sd > 0, sd, 1.0)
        self.diss_components_ = 0
        if self.diss_method not in ("pca", "pls"):
            return
        Z = (X - self.diss_center_) / self.diss_scale_
        max_c = min(X.shape[0] - 1, X.shape[1], self.max_diss_components if self.diss_components == "opc" else X.shape[1])
        if isinstance(self.diss_components, numbers.Integral):
            max_c = min(max_c, int(self.diss_components))
        if self.diss_method == "pca":
            _, s, Vt = np.linalg.svd(Z, full_matrices=False)
            proj = Vt[:max_c].T
            explained = s**2 / np.sum(s**2)
        else:
            _, R, _ = pls1_nipals(Z, y - y.mean(), max_c)
            proj = R
            scores = Z @ R
            explained = scores.var(axis=0) / Z.var(axis=0).sum()
            max_c = proj.shape[1]
        scores = Z @ proj
        sd = scores.std(axis=0, ddof=1)
        keep = sd > 1e-12 * max(sd.max(), 1e-300)
        proj, scores, sd = proj[:, keep], scores[:, keep], sd[keep]
        max_c = proj.shape[1]
        if self.diss_components == "opc":
            n_c = self._opc(scores / sd, y)
        elif isinstance(self.diss_components, numbers.Integral):
            n_c = min(int(self.diss_components), max_c)
        else:
            n_c = int(np.searchsorted(np.cumsum(explained[:max_c]), self.diss_components) + 1)
            n_c = min(n_c, max_c)
        self.diss_components_ = int(n_c)
        self.projection_ = proj[:, :n_c]
        self.score_sd_ = sd[:n_c]

    @staticmethod
    def _opc(S, y):
        """resemble's optimal component count: min RMSD between y and its nearest neighbour's y.

        Rows are processed in blocks of ``BLOCK_BYTES`` (no n x n matrix)."""
        n, m = S.shape
        sq = np.zeros(m)
        rows = max(1, int(BLOCK_BYTES // (8 * n)))
        for r0 in range(0, n, rows):
            r1 = min(n, r0 + rows)
            d2 = np.zeros((r1 - r0, n))
            d2[np.arange(r1 - r0), np.arange(r0, r1)] = np.inf
            for c in range(m):
                d2 += (S[r0:r1, c][:, None] - S[:, c][None, :]) ** 2
                nn = np.argmin(d2, axis=1)
                sq[c] += np.sum((y[r0:r1] - y[nn]) ** 2)
        best, best_rmsd = 1, np.inf
        for c in range(m):
            rmsd = np.sqrt(sq[c] / n)
            if rmsd < best_rmsd - 1e-12:
                best, best_rmsd = c + 1, rmsd
        return best

    # ------------------------------------------------------------------ local models
    def _local_predict(self, Xn, yn, dn, xq, dq, En, eq):
        """Fit one local model on neighbours (Xn, yn), predict xq. Returns (pred, spread)."""
        k = len(yn)
        if self.diss_usage == "predictors":
            Dn = self._pairwise(En, En, self.diss_method)
            np.fill_diagonal(Dn, 0.0)  # exact, not the sqrt of a rounding error (~1e-8)
            Xn = np.hstack([Xn, Dn])
            xq = np.concatenate([xq, dq])
        if self.diss_usage == "weights":
            dmax = dn.max()
            w = (1.0 - (dn / dmax) ** 3) ** 3 if dmax > 0 else np.ones(k)
            w = np.maximum(w, 1e-6)
            w = w / w.sum()
        else:
            w = np.full(k, 1.0 / k)
        xm = w @ Xn
        ym = w @ yn
        Xc = Xn - xm
        if self.scale:
            sd = np.sqrt(w @ Xc**2)
            sd = np.where(sd > 1e-12, sd, 1.0)
        else:
            sd = 1.0
        Xc = Xc / sd
        sw = np.sqrt(w * k)
        hi_req = min(self.max_components, k - 2)
        B, R, P = pls1_nipals(Xc * sw[:, None], (yn - ym) * sw, max(hi_req, 1))
        xz = (xq - xm) / sd
        n_c = B.shape[1]
        if n_c == 0:
            return ym, 0.0
        preds = xz @ B + ym  # one per component count
        if self.local_method == "pls":
            return preds[n_c - 1], 0.0
        hi = n_c
        lo = min(self.min_components, hi)
        wts = _wapls_weights(xz, B, R, P, lo, hi)
        sel = preds[lo - 1 : hi]
        pred = wts @ sel
        spread = float(np.sqrt(wts @ (sel - pred) ** 2))
        return float(pred), spread

    @staticmethod
    def _neighbours(D, k):
        """Indices of each row's ``k`` smallest dissimilarities (in no particular order)."""
        if k >= D.shape[1]:
            return np.tile(np.arange(D.shape[1]), (len(D), 1))
        return np.argpartition(D, k - 1, axis=1)[:, :k]

    def _predict_rows_loop(self, Xq, Eq, D, k, nb=None):
        """Reference path: one local model per query, on the neighbours found in the full
        query x reference dissimilarity matrix ``D`` (kept for the equivalence tests)."""
        nb = self._neighbours(D, k) if nb is None else nb
        return self._local_loop(Xq, Eq, nb, np.take_along_axis(D, nb, axis=1))

    def _local_loop(self, Xq, Eq, nb, dnb):
        """One NIPALS local model per query on neighbours ``nb`` (m, k) at dissimilarities ``dnb``."""
        out = np.empty((len(Xq), 5))
        for i in range(len(Xq)):
            j = nb[i]
            dn = dnb[i]
            pred, spread = self._local_predict(
                self.X_[j], self.y_[j], dn, Xq[i], dn, self.E_[j], Eq[i]
            )
            out[i] = (pred, dn.mean(), dn.min(), spread, self.y_[j].std(ddof=1))
        return out

    def kneighbors(self, Eq, k, exclude=None, reference32=None):
        """Exact ``k`` nearest reference samples of embedded queries ``Eq`` (m, e).

        The reference set is scanned in blocks of ``SCAN_BYTES`` of scores (sized to stay in a
        core's L2 cache from the product that forms them to the merge that reads them) with a
        running top-k (:func:`soilcarbon.models.local_pls.nearest_update`) of a score that
        orders references as the dissimilarity does (``-r`` for ``"cor"``, ``|b|^2 - 2 a.b``
        otherwise), so memory stays bounded whatever the size of the reference set; the
        dissimilarities of the selected neighbours are then computed exactly. For ``"cor"`` with
        more than ``SINGLE_MIN_RATIO x 2k`` references the scan runs in single precision and
        keeps ``kk = k + max(8, k / 2)`` candidates (``SINGLE_MARGIN``): the rounding error of a
        float32 product of two rows of norm <= 1 is below ``delta = (e + 3) u`` (``u = 2^-24``,
        Higham 2002, sec. 3.1), so when the ``kk``-th candidate's score exceeds the ``k``-th one's by more than
        ``2 delta`` the exact top k are among the candidates; queries where it does not are
        scanned again in double precision. ``exclude`` (m,) names one reference index per query
        to leave out (leave-one-out), or ``None``. ``reference32`` is ``E_`` in float32 when the
        caller has it, else each block is converted (``predict`` does not keep a float32 copy of
        the library: converting a cache-sized block costs little next to its product).
        Returns ``(indices, dissimilarities)``, both (m, k), each row in no particular order.
        """
        n, e = self.E_.shape
        m = len(Eq)
        k = min(int(k), n)
        skip = np.full(m, -1, dtype=np.int64) if exclude is None else np.asarray(exclude, dtype=np.int64)
        # single precision pays where the references far outnumber the candidates it rechecks (above 8 x 2k)
        single = self.diss_method == "cor" and SINGLE_MIN_RATIO * 2 * k < n
        kk = min(n, k + max(SINGLE_MARGIN_MIN, int(SINGLE_MARGIN * k))) if single else k
        best_s, best_i = self._scan(Eq, skip, kk, single, reference32)
        if single:
            best_s = best_s.astype(float)  # the float32 scores; their differences exact in double
            kth = np.partition(best_s, k - 1, axis=1)[:, k - 1]
            delta = (e + 3) * 2.0**-24 * 1.01
            loose = np.flatnonzero(best_s.max(axis=1) - kth <= 2 * delta)
            if len(loose):  # too close to call in single precision: scan these in double precision
                best_i[loose] = self._scan(Eq[loose], skip[loose], kk, False)[1]
        d = neighbour_dissimilarities(Eq, self.E_, best_i, self.diss_method == "cor")
        if kk > k:
            order = np.argpartition(d, k - 1, axis=1)[:, :k]
            return np.take_along_axis(best_i, order, 1), np.take_along_axis(d, order, 1)
        return best_i, d

    def _scan(self, Eq, skip, kk, single, reference32=None):
        """Running top-``kk`` of the ordering score over reference blocks (see ``kneighbors``); a
        library that fits in one block is instead partially sorted (``np.argpartition``), which
        is faster than the running top-k when most references would enter it."""
        n, m = len(self.E_), len(Eq)
        if n <= max(kk, int(BLOCK_BYTES // (8 * max(m, 1)))):
            return self._select(Eq, skip, kk, single, reference32)
        # each block's scores stay in the core's cache between the product and the top-k merge
        dtype = np.float32 if single else np.float64
        step = max(kk, int(min(SCAN_BYTES, BLOCK_BYTES) // (np.dtype(dtype).itemsize * max(m, 1))))
        buf_s = np.empty((m, SCAN_BUFFER * kk), dtype=dtype)
        buf_i = np.empty((m, SCAN_BUFFER * kk), dtype=np.int64)
        count = np.zeros(m, dtype=np.int64)
        limit = np.full(m, np.inf, dtype=dtype)
        # the queries' factor of the score, scaled once (by -1 or -2: exact) instead of each block's product
        Aq = -Eq.astype(np.float32) if single else (-Eq if self.diss_method == "cor" else -2.0 * Eq)
        for r0 in range(0, n, step):
            Eb = self.E_[r0 : r0 + step]
            if single:
                S = Aq @ (Eb.astype(np.float32) if reference32 is None else reference32[r0 : r0 + step]).T
            else:
                S = Aq @ Eb.T
                if self.diss_method != "cor":
                    S += (Eb * Eb).sum(1)[None, :]
            nearest_update(S, r0, skip, buf_s, buf_i, count, limit, kk)
        return nearest_finish(buf_s, buf_i, count, kk)

    def _select(self, Eq, skip, kk, single, reference32=None):
        """``_scan`` for a library held in one block: the ``kk`` smallest scores of each row by a
        partial sort of the whole queries x references score matrix (at most ``BLOCK_BYTES``)."""
        if single:
            S = Eq.astype(np.float32) @ (self.E_.astype(np.float32) if reference32 is None else reference32).T
            np.negative(S, out=S)
        elif self.diss_method == "cor":
            S = Eq @ self.E_.T
            np.negative(S, out=S)
        else:
            S = Eq @ self.E_.T
            S *= -2.0
            S += (self.E_ * self.E_).sum(1)[None, :]
        left_out = np.flatnonzero(skip >= 0)
        S[left_out, skip[left_out]] = np.inf
        if kk < S.shape[1]:
            best_i = np.argpartition(S, kk - 1, axis=1)[:, :kk]
        else:
            best_i = np.tile(np.arange(S.shape[1]), (len(S), 1))
        return np.take_along_axis(S, best_i, 1), best_i

    def _library_gram(self):
        """``(c, Xr, G)``: the library centred on its mean and its Gram matrix (see ``_local_models``)."""
        c = self.X_.mean(axis=0)
        Xr = self.X_ - c
        return c, Xr, Xr @ Xr.T

    def _local_models(self, Xq, Eq, nb, dnb, gram=None):
        """Local model of each query on its neighbours: compiled kernel PLS
        (:func:`soilcarbon.models.local_pls.local_pls_predict`), with the per-query path for
        ``scale=True`` (local column scaling has no kernel form here) and for queries whose
        local NIPALS stops early. The kernel takes its Gram form with ``gram`` (the whole
        library's, from ``_library_gram``) or with the Gram matrix of the block's distinct
        neighbours where :func:`gram_form` says it pays, else its row form."""
        if self.scale:
            return self._local_loop(Xq, Eq, nb, dnb)
        k = nb.shape[1]
        p = self.X_.shape[1]
        predictors = self.diss_usage == "predictors"
        n_features = p + k if predictors else p
        A = int(min(max(min(self.max_components, k - 2), 1), k - 1, n_features))
        lo = min(self.min_components, A) if self.local_method == "wapls" else A
        if gram is None:
            position = np.zeros(len(self.X_), dtype=np.int64)
            position[nb] = 1
            rows = np.flatnonzero(position)  # the block's distinct neighbours
            if gram_form(len(rows), len(nb), k):  # the Gram matrix of the block's neighbours
                position[rows] = np.arange(len(rows))
                Xr = self.X_[rows]
                c = Xr.mean(axis=0)
                Xr -= c
                gram, loc = (c, Xr, Xr @ Xr.T), position[nb]
        else:
            loc = nb
        if gram is not None:
            c, Xr, G = gram
            xq = Xq - c
            GQ, xx0 = xq @ Xr.T, np.einsum("ij,ij->i", xq, xq)
        else:
            G, loc, GQ, xx0 = np.empty((0, 0)), np.empty((0, 0), dtype=np.int64), np.empty((0, 0)), np.empty(0)
        out, bad = local_pls_predict(
            self.X_, self.y_, Xq, nb, dnb, A, lo, self.local_method == "wapls", self.diss_usage == "weights",
            self.E_ if predictors else np.empty((0, 0)), self.diss_method == "cor", G, loc, GQ, xx0,
        )
        if bad.any():
            rows = np.flatnonzero(bad)
            out[rows] = self._local_loop(Xq[rows], Eq[rows], nb[rows], dnb[rows])
        return out

    def _query_blocks(self, X, ks, leave_one_out=False):
        """Yield ``(rows, {k: (m_b, 5) local-model results})`` for blocks of queries: memory is
        bounded by the block, whatever the number of queries and references. A block holds
        ``QUERY_BLOCK`` queries, or more for a small library, as many as make ``BLOCK_BYTES`` of
        dissimilarities to it (so that one Gram matrix of the neighbours serves more queries)."""
        kmax = max(ks)
        size = max(QUERY_BLOCK, int(BLOCK_BYTES // (8 * max(len(self.E_), 2 * kmax))))
        n = len(self.X_)
        whole = not self.scale and n * n * 8 <= GRAM_BYTES and library_gram(n, len(X), max(ks))
        gram = self._library_gram() if whole else None  # formed once per call, for every block
        for q0 in range(0, len(X), size):
            rows = slice(q0, min(len(X), q0 + size))
            Xq = X[rows]
            Eq = self.E_[rows] if leave_one_out else self._embed(Xq)
            exclude = np.arange(rows.start, rows.stop) if leave_one_out else None
            nb, dnb = self.kneighbors(Eq, kmax, exclude)
            if len(ks) > 1:  # nearest first, so that the first k columns are the k nearest
                order = np.argsort(dnb, axis=1, kind="stable")
                nb, dnb = np.take_along_axis(nb, order, 1), np.take_along_axis(dnb, order, 1)
            yield rows, {
                k: self._local_models(Xq, Eq, np.ascontiguousarray(nb[:, :k]), np.ascontiguousarray(dnb[:, :k]), gram)
                for k in ks
            }

    # ------------------------------------------------------------------ API
    def fit(self, X, y):
        """Store the reference set and learn the dissimilarity space (and ``k_`` if a list)."""
        X, y = validate_data(self, X, y, y_numeric=True, dtype=np.float64)
        ks = self._check_params(X.shape[0])
        self.X_ = X
        self.y_ = y
        self._fit_projection(X, y)
        self.E_ = self._embed(X)
        self.k_validation_rmse_ = None
        if len(ks) == 1:
            self.k_ = ks[0]
            return self
        pred = {k: np.empty(len(y)) for k in ks}
        with one_blas_thread():
            for rows, results in self._query_blocks(X, ks, leave_one_out=True):
                for k, out in results.items():
                    pred[k][rows] = out[:, 0]
        rmse = {k: float(np.sqrt(np.mean((pred[k] - y) ** 2))) for k in ks}
        self.k_validation_rmse_ = rmse
        self.k_ = min(rmse, key=rmse.get)
        return self

    def predict_with_info(self, X):
        """Predictions with per-query difficulty measures.

        Returns a DataFrame with columns ``prediction``, ``mean_dissimilarity`` (mean
        dissimilarity to the ``k_`` neighbours), ``nearest_dissimilarity``, ``local_spread``
        (weighted standard deviation of the wapls component-wise predictions; 0 for
        ``"pls"``) and ``neighbour_y_sd`` (standard deviation of the neighbours' response).
        """
        check_is_fitted(self, "X_")
        X = validate_data(self, X, reset=False, dtype=np.float64)
        k = min(self.k_, len(self.y_))
        out = np.empty((len(X), 5))
        with one_blas_thread():
            for rows, results in self._query_blocks(X, [k]):
                out[rows] = results[k]
        return pd.DataFrame(
            out,
            columns=["prediction", "mean_dissimilarity", "nearest_dissimilarity", "local_spread", "neighbour_y_sd"],
        )

    def predict(self, X):
        """Predict each row of ``X`` with its own local model."""
        return self.predict_with_info(X)["prediction"].to_numpy()
