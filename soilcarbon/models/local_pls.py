"""Compiled local PLS1 for memory-based learning: one kernel-form NIPALS per query (numba).

For each query the neighbours' predictors are gathered from the reference set, centred on
their weighted mean and weighted, ``Xc = S (X_nb - 1 x_m')`` with ``S = diag(sqrt(k w))``, their
k x k Gram matrix ``K = Xc Xc'`` is formed (in register tiles, :func:`_gram`; or, in the Gram form,
gathered from a Gram matrix the caller formed once for many queries and centred and weighted
there), and PLS1 runs in kernel form (Lindgren et al., 1993;
Rannar et al., 1994): each component costs one k x k matrix-vector product instead of several
k x p products. The algebra is that of the per-query reference path
(:func:`soilcarbon.models.mbl.pls1_nipals` followed by Shenk et al.'s wapls weights); the query
enters only through its products with the centred neighbours and its squared norm. Nothing of
size n x n or m x n is formed: the work and memory per query depend on k and p only, so the
speed does not depend on the size of the reference set (the neighbour search, blockwise with
:func:`nearest_update`, is the only part that grows with it).

In NIPALS terms, with ``yd`` the deflated response: ``|X'yd|^2 = yd'K yd``,
``t = Pi K yd / |X'yd|`` (``Pi`` removes the earlier scores), ``P'W = D^-1 T'(K U)``,
``P'P = D^-1 T'K T D^-1`` and ``W'W = U'K U`` (``D = diag(t't)``, ``W = X'U``), where
``K t_a = (K yd_a - K yd_a+1) / q_a``.

Each query's matrices stay in the core's cache, which is why a compiled loop over queries is
faster than the same algebra batched across queries in NumPy. The kernel calls no BLAS or LAPACK
routine: for matrices of ~120 x 140 and ~20 x 20 the call costs more than the arithmetic, and
BLAS threads would compete with the caller's (``benchmarks/bench_mbl.py``
prints the rate against the per-query path and across reference-set sizes).
Queries whose local NIPALS stops early (fewer components than asked) or comes out non-finite
are flagged ``bad``; the caller recomputes them with the reference path.

References: Lindgren, F., Geladi, P., Wold, S. (1993). The kernel algorithm for PLS. J.
Chemometrics 7, 45-59. Rannar, S., Lindgren, F., Geladi, P., Wold, S. (1994). A PLS kernel
algorithm for data sets with many variables and fewer objects. J. Chemometrics 8, 111-125.
Shenk, J.S., Westerhaus, M.O., Berzaghi, P. (1997). J. Near Infrared Spectrosc. 5, 223-232.
"""

from __future__ import annotations

import numpy as np
from numba import njit


_FAST = {"reassoc", "contract", "nsz", "arcp"}  # lets loops vectorise; NaN and inf are still checked


@njit(cache=True, nogil=True, fastmath=_FAST)
def _dot(a, b):
    """Inline dot product (numba's ``np.dot`` calls BLAS, too costly for vectors of ~100)."""
    s = 0.0
    for i in range(a.shape[0]):
        s += a[i] * b[i]
    return s


@njit(cache=True, nogil=True, fastmath=_FAST)
def _matvec(M, x, out):
    """``out = M @ x`` in place."""
    for r in range(M.shape[0]):
        s = 0.0
        for j in range(M.shape[1]):
            s += M[r, j] * x[j]
        out[r] = s


@njit(cache=True, nogil=True, fastmath=_FAST)
def _abt(A, B, out):
    """``out = A @ B.T`` in place, by row dot products (no BLAS call: the matrices are tiny)."""
    for a in range(A.shape[0]):
        for b in range(B.shape[0]):
            out[a, b] = _dot(A[a], B[b])


@njit(cache=True, nogil=True, fastmath=_FAST)
def _gram(X, out):
    """``out = X @ X.T`` in place without a BLAS call: the lower triangle in tiles of 4 x 2 rows (eight
    running sums, so each loaded element serves several products), mirrored to the upper one.
    For the k x p neighbourhoods of MBL (~120 x 140) this beats a single-threaded BLAS call."""
    k, p = X.shape
    a = 0
    while a + 4 <= k:
        x0, x1, x2, x3 = X[a], X[a + 1], X[a + 2], X[a + 3]
        for b in range(0, a + 4, 2):  # a + 4 is even: pairs b, b + 1 <= a + 3
            u, v = X[b], X[b + 1]
            s0 = s1 = s2 = s3 = t0 = t1 = t2 = t3 = 0.0
            for j in range(p):
                s0 += x0[j] * u[j]
                s1 += x1[j] * u[j]
                s2 += x2[j] * u[j]
                s3 += x3[j] * u[j]
                t0 += x0[j] * v[j]
                t1 += x1[j] * v[j]
                t2 += x2[j] * v[j]
                t3 += x3[j] * v[j]
            for r, s, t in ((0, s0, t0), (1, s1, t1), (2, s2, t2), (3, s3, t3)):
                out[a + r, b] = s
                out[b, a + r] = s
                out[a + r, b + 1] = t
                out[b + 1, a + r] = t
        a += 4
    for r in range(a, k):  # the last k mod 4 rows
        for b in range(r + 1):
            s = _dot(X[r], X[b])
            out[r, b] = s
            out[b, r] = s


@njit(cache=True, nogil=True)
def _inverse(M, out, work):
    """``out = M^-1`` for a small square ``M`` by Gauss-Jordan elimination with partial pivoting
    (``work`` is scratch of M's shape); numba's ``np.linalg.inv`` goes through LAPACK, whose call
    costs more than the elimination of a matrix of ~20 x 20."""
    n = M.shape[0]
    work[:, :] = M
    out[:, :] = 0.0
    for r in range(n):
        out[r, r] = 1.0
    for c in range(n):
        piv = c
        best = abs(work[c, c])
        for r in range(c + 1, n):
            if abs(work[r, c]) > best:
                best = abs(work[r, c])
                piv = r
        if piv != c:
            for j in range(n):
                work[c, j], work[piv, j] = work[piv, j], work[c, j]
                out[c, j], out[piv, j] = out[piv, j], out[c, j]
        inv_p = 1.0 / work[c, c]
        for j in range(n):
            work[c, j] *= inv_p
            out[c, j] *= inv_p
        for r in range(n):
            if r != c:
                f = work[r, c]
                if f != 0.0:
                    for j in range(n):
                        work[r, j] -= f * work[c, j]
                        out[r, j] -= f * out[c, j]


@njit(cache=True, nogil=True)
def _smallest_first(vals, idx, n, kk):
    """Quickselect (Hoare partition, median-of-three pivot) on ``vals[:n]``, with ``idx`` moved
    alongside, so that its ``kk`` smallest entries come first; returns the largest of them."""
    lo, hi = 0, n - 1
    target = kk - 1
    while lo < hi:
        mid = (lo + hi) // 2
        a, b, c = vals[lo], vals[mid], vals[hi]
        pivot = max(min(a, b), min(max(a, b), c))
        i, j = lo, hi
        while i <= j:
            while vals[i] < pivot:
                i += 1
            while vals[j] > pivot:
                j -= 1
            if i <= j:
                vals[i], vals[j] = vals[j], vals[i]
                idx[i], idx[j] = idx[j], idx[i]
                i += 1
                j -= 1
        if target <= j:
            hi = j
        elif target >= i:
            lo = i
        else:
            break
    top = vals[0]
    for a in range(1, kk):
        top = max(top, vals[a])
    return top


@njit(cache=True, nogil=True)
def nearest_update(D, offset, self_index, buf_d, buf_i, count, limit, kk):
    """Running exact top-``kk``: merge a block of dissimilarities into per-query candidate buffers.

    ``D`` (m, r) holds the dissimilarities of m queries to reference samples
    ``offset .. offset + r - 1``. Each query keeps a buffer ``buf_d`` / ``buf_i`` (m, c), ``c > kk``,
    of the entries that were below its threshold ``limit`` (m,) when seen, ``count`` (m,) of them
    (start at 0 and ``inf``): an entry enters when it is below the threshold; when a buffer is
    full, a quickselect (:func:`_smallest_first`) keeps its ``kk`` smallest and the threshold
    drops to the largest of these. Entries at or above the threshold can never be among the ``kk``
    smallest, so :func:`nearest_finish` then gives the exact top ``kk``. Each block costs one
    well-predicted comparison per entry, a store per entering entry and a quickselect per ``c - kk``
    of them (a heap would sift each entering entry through ``log2 kk`` unpredictable levels).
    ``self_index`` (m,) gives a reference index to skip per query (leave-one-out; ``-1`` skips
    nothing). The buffers' dtype should be ``D``'s. NaN entries are never kept.
    """
    m, r = D.shape
    cap = buf_d.shape[1]
    for i in range(m):
        bd = buf_d[i]
        bi = buf_i[i]
        skip = self_index[i] - offset
        lim = limit[i]
        c = count[i]
        for j in range(r):
            d = D[i, j]
            if d < lim and j != skip:
                bd[c] = d
                bi[c] = j + offset
                c += 1
                if c == cap:
                    lim = _smallest_first(bd, bi, c, kk)
                    c = kk
        limit[i] = lim
        count[i] = c


@njit(cache=True, nogil=True)
def nearest_finish(buf_d, buf_i, count, kk):
    """The ``kk`` smallest entries of each buffer of :func:`nearest_update` (in no particular
    order; ``inf`` / ``-1`` where fewer than ``kk`` entries were kept): ``(values, indices)``."""
    m = buf_d.shape[0]
    best_d = np.full((m, kk), np.inf, dtype=buf_d.dtype)
    best_i = np.full((m, kk), -1, dtype=buf_i.dtype)
    for i in range(m):
        c = count[i]
        if c > kk:
            _smallest_first(buf_d[i], buf_i[i], c, kk)
            c = kk
        best_d[i, :c] = buf_d[i, :c]
        best_i[i, :c] = buf_i[i, :c]
    return best_d, best_i


@njit(cache=True, nogil=True, fastmath=_FAST)
def neighbour_dissimilarities(Eq, E, nb, cor):
    """Dissimilarities of each query (row of ``Eq``) to its candidate neighbours ``E[nb[i]]``:
    ``sqrt((1 - r) / 2)`` of the product ``r`` (clipped to [-1, 1]) when ``cor``, else the
    Euclidean distance ``sqrt(max(|a|^2 + |b|^2 - 2 a.b, 0))``, as ``MemoryBasedLearner._pairwise``."""
    m, kk = nb.shape
    out = np.empty((m, kk))
    for i in range(m):
        qq = _dot(Eq[i], Eq[i])
        for a in range(kk):
            row = E[nb[i, a]]
            r = _dot(Eq[i], row)
            if cor:
                out[i, a] = np.sqrt(min(max(r, -1.0), 1.0) * -0.5 + 0.5)
            else:
                out[i, a] = np.sqrt(max(qq + _dot(row, row) - 2.0 * r, 0.0))
    return out


@njit(cache=True, nogil=True, fastmath=_FAST)
def local_pls_predict(X, y, Xq, nb, dnb, n_components, lo, wapls, tricube, E, cor, G, loc, GQ, xx0):
    """Local PLS1 prediction of each query from its neighbours, with neighbourhood statistics.

    Parameters (m queries, k neighbours each, n reference samples, p predictors)
    ----------
    X : (n, p) reference predictors; y : (n,) reference response.
    Xq : (m, p) queries.
    nb : (m, k) indices of each query's neighbours (any order); dnb : (m, k) their dissimilarities.
    n_components : components of the local models; lo : smallest one averaged by wapls (1-based).
    wapls : weighted average over lo..n_components components (else the last one only).
    tricube : weight the neighbours by ``(1 - (d / d_max)^3)^3`` (floored at 1e-6), else equally.
    E : for ``diss_usage="predictors"``, the (n, e) reference embedding: the dissimilarities
        among the neighbours (and of the query to them) become k extra local predictors,
        ``sqrt((1 - r) / 2)`` of the embedded rows' product ``r`` when ``cor``, else their
        Euclidean distance; a (0, 0) array otherwise.
    G, loc, GQ, xx0 : the Gram form, or (0, 0) arrays (and ``xx0`` of length 0) for the row form.
        ``G`` (u, u) is the Gram matrix of ``u`` reference rows centred on a common vector ``c``
        (in practice the union of the block's neighbourhoods), ``loc`` (m, k) gives the position
        in ``G`` of each entry of ``nb``, ``GQ`` (m, u) the products of the centred queries with
        those rows and ``xx0`` (m,) the squared norms of the centred queries. Each neighbourhood's
        ``K`` is then gathered from ``G`` and centred and weighted there (O(k^2) per query instead
        of the row form's O(k^2 p)); ``X`` and ``Xq`` are not read.

    Memory is that of one neighbourhood (k x p and k x k), whatever n and m are (plus the
    caller's ``G`` in the Gram form).

    Returns ``(out, bad)``: ``out`` (m, 5) holds the prediction, the mean and the smallest
    dissimilarity to the neighbours, the spread of the wapls component predictions and the
    standard deviation of the neighbours' response; ``bad`` flags queries to recompute.
    """
    m, k = nb.shape
    p = X.shape[1]
    predictors = E.shape[0] > 0
    gram = G.shape[0] > 0
    n_features = p + k if predictors else p
    A = n_components
    out = np.zeros((m, 5))
    bad = np.zeros(m, dtype=np.bool_)
    idx = np.empty(k, dtype=nb.dtype)
    K = np.empty((k, k))
    Xc = np.empty((k, p))
    Dn = np.empty((k, k))
    xm = np.empty(p)
    xz = np.empty(p)
    dm = np.empty(k)
    dz = np.empty(k)
    en = np.empty(k)
    dn = np.empty(k)
    w = np.empty(k)
    sw = np.empty(k)
    yd = np.empty(k)
    kq = np.empty(k)
    li = np.empty(k, dtype=loc.dtype)
    Gw = np.empty(k)
    U = np.empty((A, k))
    V = np.empty((A, k))
    T = np.empty((A, k))
    Z = np.empty((A + 1, k))
    KT = np.empty((A, k))
    PtW = np.empty((A, A))
    PtP = np.empty((A, A))
    WtW = np.empty((A, A))
    Minv = np.empty((A, A))
    RtR = np.empty((A, A))
    work = np.empty((A, A))
    tt = np.empty(A)
    q = np.empty(A)
    c = np.empty(A)
    s_u = np.empty(A)
    tq = np.empty(A)
    pxz = np.empty(A)
    preds = np.empty(A)
    for i in range(m):
        # the neighbourhood, in index order (rows of X are then read in order)
        order = np.argsort(nb[i])
        dmax = 0.0
        dmin = np.inf
        dsum = 0.0
        for a in range(k):
            idx[a] = nb[i, order[a]]
            if gram:
                li[a] = loc[i, order[a]]
            d = dnb[i, order[a]]
            dn[a] = d
            dmax = max(dmax, d)
            dmin = min(dmin, d)
            dsum += d
        wsum = 0.0
        for a in range(k):
            if tricube:
                w[a] = max((1.0 - (dn[a] / dmax) ** 3) ** 3, 1e-6) if dmax > 0 else 1.0
            else:
                w[a] = 1.0
            wsum += w[a]
        ym = 0.0
        for a in range(k):
            w[a] /= wsum
            ym += w[a] * y[idx[a]]
            sw[a] = np.sqrt(w[a] * k)
        yvar = 0.0
        ymean = 0.0
        for a in range(k):
            ymean += y[idx[a]]
        ymean /= k
        for a in range(k):
            yvar += (y[idx[a]] - ymean) ** 2
        out[i, 1] = dsum / k
        out[i, 2] = dmin
        out[i, 4] = np.sqrt(yvar / (k - 1))
        if gram:  # K gathered from G, then centred on the weighted mean and weighted
            wGw = 0.0
            wg = 0.0
            for a in range(k):
                ga = G[li[a]]
                for b in range(k):
                    K[a, b] = ga[li[b]]
            for a in range(k):
                Gw[a] = _dot(K[a], w)
                wGw += w[a] * Gw[a]
                wg += w[a] * GQ[i, li[a]]
            for a in range(k):
                for b in range(k):
                    K[a, b] = sw[a] * sw[b] * (K[a, b] - Gw[a] - Gw[b] + wGw)
                kq[a] = sw[a] * (GQ[i, li[a]] - Gw[a] - (wg - wGw))
            xx = xx0[i] - 2.0 * wg + wGw
        else:  # the neighbours' predictors, centred on their weighted mean and weighted: K = Xc Xc'
            xm[:] = 0.0
            for a in range(k):
                row = X[idx[a]]
                for j in range(p):
                    xm[j] += w[a] * row[j]
            for j in range(p):
                xz[j] = Xq[i, j] - xm[j]
            for a in range(k):
                row = X[idx[a]]
                for j in range(p):
                    Xc[a, j] = sw[a] * (row[j] - xm[j])
            _gram(Xc, K)  # the largest product of the row form
            for a in range(k):
                kq[a] = _dot(Xc[a], xz)
            xx = _dot(xz, xz)
        if predictors:  # dissimilarities among the neighbours as k extra predictors
            for a in range(k):
                en[a] = _dot(E[idx[a]], E[idx[a]])
            for a in range(k):
                Dn[a, a] = 0.0
                for b in range(a):
                    r = _dot(E[idx[a]], E[idx[b]])
                    if cor:
                        d = np.sqrt(0.5 - 0.5 * min(max(r, -1.0), 1.0))
                    else:
                        d = np.sqrt(max(en[a] + en[b] - 2.0 * r, 0.0))
                    Dn[a, b] = d
                    Dn[b, a] = d
            for b in range(k):
                s = 0.0
                for a in range(k):
                    s += w[a] * Dn[a, b]
                dm[b] = s
                dz[b] = dn[b] - s
            for a in range(k):
                for b in range(k):
                    Dn[a, b] = sw[a] * (Dn[a, b] - dm[b])
            for a in range(k):
                for b in range(a + 1):
                    K[a, b] += _dot(Dn[a], Dn[b])
                    K[b, a] = K[a, b]
                kq[a] += _dot(Dn[a], dz)
            xx += _dot(dz, dz)
        trK = 0.0
        ynorm = 0.0
        for a in range(k):
            trK += K[a, a]
            yd[a] = (y[idx[a]] - ym) * sw[a]
            ynorm += yd[a] * yd[a]
        tol = 1e-10 * max(np.sqrt(max(trK, 0.0)), 1e-300) * max(np.sqrt(ynorm), 1e-300)
        # kernel NIPALS
        failed = False
        for a in range(A):
            z = Z[a]
            _matvec(K, yd, z)
            norm_w = np.sqrt(max(_dot(yd, z), 0.0))
            if not norm_w > tol:
                failed = True
                break
            for r in range(k):
                U[a, r] = yd[r] / norm_w
                V[a, r] = z[r] / norm_w
            for b in range(a):
                c[b] = _dot(T[b], V[a]) / tt[b]
            for r in range(k):
                t_r = V[a, r]
                for b in range(a):
                    t_r -= c[b] * T[b, r]
                T[a, r] = t_r
            tta = _dot(T[a], T[a])
            if not tta > 1e-300:
                failed = True
                break
            tt[a] = tta
            q[a] = _dot(yd, T[a]) / tta
            for r in range(k):
                yd[r] -= q[a] * T[a, r]
        if failed:
            bad[i] = True
            continue
        _abt(T, V, PtW)
        for a in range(A):
            PtW[a] /= tt[a]
            s_u[a] = _dot(U[a], kq)
        _inverse(PtW, Minv, work)
        # query scores t_q = (kq' U) (P'W)^-1; predictions for 1..A components (without the mean)
        acc = 0.0
        for b in range(A):
            tb = 0.0
            for a in range(A):
                tb += s_u[a] * Minv[a, b]
            tq[b] = tb
            acc += tb * q[b]
            preds[b] = acc
        if not wapls:
            p_i = preds[A - 1]
            s_i = 0.0
        else:
            _matvec(K, yd, Z[A])
            for a in range(A):
                for r in range(k):
                    KT[a, r] = (Z[a, r] - Z[a + 1, r]) / q[a]
            _abt(T, KT, PtP)
            _abt(U, V, WtW)
            for a in range(A):
                pxz[a] = _dot(T[a], kq)
            for a in range(A):  # RtR = Minv' WtW Minv
                for b in range(A):
                    s = 0.0
                    for r in range(A):
                        s += WtW[a, r] * Minv[r, b]
                    work[a, b] = s
            for a in range(A):
                for b in range(A):
                    s = 0.0
                    for r in range(A):
                        s += Minv[r, a] * work[r, b]
                    RtR[a, b] = s
            wsum = 0.0
            cross = 0.0
            quad_r = 0.0
            quad_b = 0.0
            for j in range(A):  # cumulative quadratic forms over the first j + 1 components
                cross += tq[j] * pxz[j] / tt[j]
                r_j = tq[j] / tt[j]
                for a in range(j):
                    quad_r += 2.0 * (tq[a] / tt[a]) * r_j * PtP[a, j]
                    quad_b += 2.0 * q[a] * q[j] * RtR[a, j]
                quad_r += r_j * r_j * PtP[j, j]
                quad_b += q[j] * q[j] * RtR[j, j]
                if j < lo - 1:
                    continue
                resid = np.sqrt(max(xx - 2.0 * cross + quad_r, 0.0) / n_features)
                rmsb = np.sqrt(max(quad_b, 0.0) / n_features)
                c[j] = 1.0 / max(resid * rmsb, 1e-300)
                wsum += c[j]
            p_i = 0.0
            for j in range(lo - 1, A):
                p_i += c[j] / wsum * preds[j]
            s_i = 0.0
            for j in range(lo - 1, A):
                s_i += c[j] / wsum * (preds[j] - p_i) ** 2
            s_i = np.sqrt(s_i)
        if not (np.isfinite(p_i) and np.isfinite(s_i)):
            bad[i] = True
            continue
        out[i, 0] = ym + p_i
        out[i, 3] = s_i
    return out, bad
