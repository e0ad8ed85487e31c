"""Which samples to send to the lab: Kennard–Stone, DUPLEX, Puchwein and cLHS, in bounded memory.

Every function takes a matrix ``X`` of shape ``(n_samples, n_features)`` (spectra, PCA scores or
covariates, one sample a row) and returns the chosen **row indices in selection order** (an
``int64`` array); the ``soilcarbon select`` command turns them into ``sample_id, rank``.

- :func:`kennard_stone`: Kennard & Stone (1969). The first two samples are the pair farthest
  apart; then, again and again, the candidate whose distance to its nearest already chosen sample
  is largest. ``include`` rows are chosen first (in the given order) and ``reference`` rows (an
  existing calibration library) count as already chosen without being returned: the new samples
  are those that best cover what the library does not ("spiking" a global library).
- :func:`duplex`: DUPLEX (Snee 1977), as prospectr's ``duplex``: the farthest pair goes to the
  calibration set, the next farthest pair to the test set, then each set in turn takes the
  candidate farthest from it. Returns the calibration set (and, on request, the test set).
- :func:`puchwein`: Puchwein (1988), as prospectr's ``puchwein``: samples sorted by their
  Mahalanobis distance to the centre (leverage); the most extreme one is kept and every sample
  closer to it than a limiting distance is dropped, and so on. prospectr steps the limiting
  distance in multiples of ``k (p - 2)`` and returns every loop; here the limiting distance is
  the largest one (bisection) that still keeps ``n`` samples, and the first ``n`` are returned.
- :func:`clhs`: conditioned Latin hypercube sampling (Minasny & McBratney 2006) for covariate
  (field) designs: simulated annealing of one swap at a time, objective
  ``Σ_j Σ_strata |count - 1|`` (each of the ``n`` quantile strata of each variable holds one
  sample) ``+ Σ |corr(sample) - corr(all)|``; as the R package ``clhs`` (temperature 1,
  x 0.95 every 10 iterations, half of the swaps replace the sample in the most crowded strata).

Distances: ``metric="mahalanobis"`` (default) measures in the space whitened by the covariance
of all rows (candidates and reference together; a pseudo-inverse when the covariance is
singular, as prospectr's ``e2m``), ``"euclidean"`` in ``X`` as given. The default space of the
``select`` command is :func:`pca_space`: SNV spectra projected on their principal components,
which with the Mahalanobis metric is prospectr's ``kenStone(X, k, metric = "mahal", pc = ...)``.

Memory: no ``n × n`` distance matrix is ever formed. Kennard–Stone keeps one vector, each
candidate's squared distance to its nearest chosen sample, and updates it with one
matrix-vector product per chosen sample (``O(n p)`` time and ``O(n)`` memory a step). The
farthest pair is found exactly without all pairs: with ``r_i`` the distance of row ``i`` to the
centroid, ``d(i, j) <= r_i + r_j`` (triangle inequality), so after a cheap lower bound ``L`` (a few
"farthest from the last one" sweeps) only the rows with ``r_i + r_max > L`` are compared, in
blocks of ``≈ 4 M`` distances, against the rows whose radius can still beat ``L``. The
covariance and PCA are accumulated over row blocks too.

Why our own code: the ``kennard-stone`` package (PyPI) and scikit-learn-based snippets compute
the full distance matrix (80 GB for 100,000 spectra), and prospectr is R. The
benchmark ``benchmarks/bench_select.py`` checks that our Kennard–Stone chooses what the
``kennard-stone`` package chooses when both use the same metric and start rule.

References
----------
Kennard, R. W., Stone, L. A. (1969). Computer aided design of experiments. Technometrics 11(1), 137-148.
Snee, R. D. (1977). Validation of regression models: methods and examples. Technometrics 19(4), 415-428.
Puchwein, G. (1988). Selection of calibration samples for near-infrared spectrometry by factor
analysis of spectra. Analytical Chemistry 60(6), 569-573.
Minasny, B., McBratney, A. B. (2006). A conditioned Latin hypercube method for sampling in the
presence of ancillary information. Computers & Geosciences 32(9), 1378-1388.
Stevens, A., Ramirez-Lopez, L. (2024). prospectr: miscellaneous functions for processing and
sample selection of spectroscopic data. R package.
"""

from __future__ import annotations

import functools
from numbers import Integral, Real

import numpy as np

from soilcarbon.errors import SoilCarbonError

__all__ = ["kennard_stone", "duplex", "puchwein", "clhs", "pca_space", "whiten", "farthest_pair"]

METRICS = ("mahalanobis", "euclidean")
_BLOCK_ELEMENTS = 4_000_000  # distances (or matrix cells) per block: 32 MB of float64
_RANK_TOLERANCE = 1e-10  # eigenvalues below this share of the largest are dropped (pseudo-inverse)


# ---------------------------------------------------------------------------------- validation
def _matrix(X, name: str = "X") -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise SoilCarbonError(f"{name} must be a 2-D matrix (one sample a row), got {X.ndim} dimension(s)")
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise SoilCarbonError(f"{name} is empty (shape {X.shape})")
    step = _block(X.shape[1])
    bad = np.concatenate([~np.isfinite(X[a:a + step]).all(axis=1) for a in range(0, X.shape[0], step)])
    if bad.any():
        rows = np.flatnonzero(bad)
        more = f" and {rows.size - 5} more" if rows.size > 5 else ""
        raise SoilCarbonError(f"{name} has missing (NaN) or infinite values in row(s) "
                              f"{', '.join(map(str, rows[:5]))}{more}; fill or remove those samples")
    return X


def _count(n, n_available: int, what: str = "candidates") -> int:
    if isinstance(n, bool) or not isinstance(n, Integral):
        raise SoilCarbonError(f"the number of samples to select must be a whole number, got {n!r}")
    n = int(n)
    if n <= 0:
        raise SoilCarbonError(f"the number of samples to select must be at least 1, got {n}")
    if n > n_available:
        raise SoilCarbonError(f"cannot select {n} samples from {n_available} {what}; ask for at most {n_available}")
    return n


def _rows(include, n_samples: int, n: int) -> np.ndarray:
    if include is None:
        return np.zeros(0, dtype=np.int64)
    rows = np.asarray(include).ravel()
    if rows.size == 0:
        return np.zeros(0, dtype=np.int64)
    if not np.issubdtype(rows.dtype, np.integer):
        raise SoilCarbonError("include must be row indices (whole numbers)")
    rows = rows.astype(np.int64)
    if rows.min() < 0 or rows.max() >= n_samples:
        raise SoilCarbonError(f"include has row indices outside 0..{n_samples - 1}")
    if np.unique(rows).size != rows.size:
        raise SoilCarbonError("include lists a row more than once")
    if rows.size > n:
        raise SoilCarbonError(f"{rows.size} samples must be included but only {n} are to be selected; "
                              f"ask for at least {rows.size}")
    return rows


def _check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise SoilCarbonError(f"unknown metric {metric!r}; use {' or '.join(METRICS)}")
    return metric


def _one_blas_thread():
    """Small BLAS calls in loops (matrix-vector products, a 700 x 700 eigh) run several times
    faster on one thread than on threads that wait for busy cores."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


def _one_thread(func):
    """Run ``func`` with :func:`_one_blas_thread` (the selection loops are matrix-vector products)."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        with _one_blas_thread():
            return func(*args, **kwargs)

    return wrapper


def _block(n_cols: int) -> int:
    return max(1, _BLOCK_ELEMENTS // max(1, n_cols))


# ------------------------------------------------------------------------------------- spaces
def _covariance(blocks, mean: np.ndarray, total: int) -> np.ndarray:
    """Covariance (ddof=1) of the rows of several matrices, accumulated over row blocks."""
    p = mean.size
    cov = np.zeros((p, p))
    for M in blocks:
        step = _block(p)
        for start in range(0, M.shape[0], step):
            part = M[start:start + step] - mean
            cov += part.T @ part
    return cov / max(total - 1, 1)


def whiten(X, reference=None) -> tuple[np.ndarray, np.ndarray | None]:
    """Coordinates in which the Euclidean distance is the Mahalanobis distance.

    ``Z = (X - m) V Λ^(-1/2)`` with ``m`` the mean and ``V Λ Vᵀ`` the covariance of the rows of
    ``X`` and ``reference`` together; directions with an eigenvalue below ``1e-10`` of the
    largest are dropped (pseudo-inverse, as prospectr's ``e2m(sm.method = "svd")``).
    Returns ``(Z, Z_reference)`` (``None`` when no reference is given).
    """
    X = _matrix(X)
    R = None if reference is None else _matrix(reference, "reference")
    if R is not None and R.shape[1] != X.shape[1]:
        raise SoilCarbonError(f"reference has {R.shape[1]} columns but X has {X.shape[1]}")
    blocks = [X] if R is None else [X, R]
    total = sum(M.shape[0] for M in blocks)
    mean = sum(M.sum(axis=0) for M in blocks) / total
    cov = _covariance(blocks, mean, total)
    with _one_blas_thread():
        values, vectors = np.linalg.eigh(cov)
    keep = values > max(values.max(), 0.0) * _RANK_TOLERANCE
    if not keep.any():
        raise SoilCarbonError("all samples are identical: there is no spread to select from")
    W = vectors[:, keep] / np.sqrt(values[keep])
    project = lambda M: (M - mean) @ W  # noqa: E731
    return project(X), None if R is None else project(R)


def pca_space(X, n_components=None, *, reference=None, snv: bool = True, variance: float = 0.99,
              max_components: int = 20):
    """PCA scores of (SNV-)preprocessed spectra: the default space of ``soilcarbon select``.

    Preprocessing: standard normal variate per spectrum (:class:`~soilcarbon.spectral.preprocessing.SNV`,
    Barnes et al. 1989), then centring on the mean of all rows (``X`` and ``reference``
    together), no scaling of the points (prospectr's ``prcomp(center = TRUE, scale = FALSE)``).
    Components: ``n_components`` when it is a whole number; a fraction in (0, 1) keeps the
    fewest components explaining that share of the variance; ``None`` (default) keeps the fewest
    explaining ``variance`` (99 %), at most ``max_components`` (20) -- the rule of the models'
    domain check (:class:`~soilcarbon.models.domain.PCADomain`).

    The scores are not scaled: Kennard–Stone's ``metric="mahalanobis"`` divides each by its
    standard deviation, which is prospectr's ``kenStone(metric = "mahal", pc = ...)``.
    Bounded memory: SNV, the covariance and the projection run over row blocks.

    Returns the ``(n_samples, k)`` scores, or ``(scores, reference_scores)`` when ``reference``
    is given (both projected on the components of all rows).
    """
    from soilcarbon.spectral.preprocessing import SNV

    X = _matrix(X)
    R = None if reference is None else _matrix(reference, "reference")
    if R is not None and R.shape[1] != X.shape[1]:
        raise SoilCarbonError(f"reference has {R.shape[1]} points but X has {X.shape[1]}")
    blocks = [X] if R is None else [X, R]
    p = X.shape[1]
    step = _block(p)
    transform = SNV().fit(X[:1]).transform if snv else (lambda M: M)

    def pieces(M):
        for start in range(0, M.shape[0], step):
            block = M[start:start + step]
            if snv:
                flat = np.flatnonzero(block.max(axis=1) == block.min(axis=1))
                if flat.size:
                    which = "X" if M is X else "reference"
                    raise SoilCarbonError(f"{which} row {start + flat[0]} is a flat spectrum (all values equal): "
                                          "SNV cannot scale it; remove it")
            yield transform(block)

    total = sum(M.shape[0] for M in blocks)
    sums, cross = np.zeros(p), np.zeros((p, p))
    for M in blocks:  # one pass: sums and cross-products (SNV rows are of unit scale: no cancellation worth a pass)
        for part in pieces(M):
            sums += part.sum(axis=0)
            cross += part.T @ part
    mean = sums / total
    cov = (cross - total * np.outer(mean, mean)) / max(total - 1, 1)
    with _one_blas_thread():
        values, vectors = np.linalg.eigh(cov)
    values, vectors = values[::-1].clip(min=0), vectors[:, ::-1]
    share = np.cumsum(values) / values.sum() if values.sum() > 0 else np.ones_like(values)
    rank = int((values > values[0] * _RANK_TOLERANCE).sum()) if values[0] > 0 else 0
    if rank == 0:
        raise SoilCarbonError("all spectra are identical after SNV: there is no spread to select from")
    if n_components is None:
        k = min(int(np.searchsorted(share, variance) + 1), max_components)
    elif isinstance(n_components, Integral) and not isinstance(n_components, bool):
        if n_components < 1:
            raise SoilCarbonError(f"n_components must be at least 1, got {n_components}")
        k = int(n_components)
    elif isinstance(n_components, Real) and 0 < n_components < 1:
        k = int(np.searchsorted(share, n_components) + 1)
    else:
        raise SoilCarbonError(f"n_components must be a whole number or a fraction in (0, 1), got {n_components!r}")
    k = max(1, min(k, rank))
    components = vectors[:, :k]

    offset = mean @ components

    def scores(M):
        return np.vstack([part @ components - offset for part in pieces(M)])

    return scores(X) if R is None else (scores(X), scores(R))


def _space(X, reference, metric: str):
    """Rows (and reference rows) in coordinates where distances are Euclidean. The Euclidean
    metric uses ``X`` itself (no copy: it may be the whole spectra matrix)."""
    if _check_metric(metric) == "mahalanobis":
        return whiten(X, reference)
    X = _matrix(X)
    R = None if reference is None else _matrix(reference, "reference")
    if R is not None and R.shape[1] != X.shape[1]:
        raise SoilCarbonError(f"reference has {R.shape[1]} columns but X has {X.shape[1]}")
    return X, R


# ---------------------------------------------------------------------------------- distances
def _sq_norms(Z: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", Z, Z)


def _sq_dist_to(Z: np.ndarray, sq: np.ndarray, i: int) -> np.ndarray:
    """Squared distances of every row of Z to row i (one matrix-vector product)."""
    d = Z @ Z[i]
    d *= -2.0
    d += sq
    d += sq[i]
    np.maximum(d, 0.0, out=d)
    return d


def _sq_dist_to_set(Z: np.ndarray, sq: np.ndarray, S: np.ndarray) -> np.ndarray:
    """Squared distance of every row of Z to its nearest row of S, over blocks of S."""
    best = np.full(Z.shape[0], np.inf)
    if S.shape[0] == 0:
        return best
    sq_s = _sq_norms(S)
    step = _block(Z.shape[0])
    for start in range(0, S.shape[0], step):
        D = Z @ S[start:start + step].T
        D *= -2.0
        D += sq[:, None]
        D += sq_s[None, start:start + step]
        np.minimum(best, D.min(axis=1), out=best)
    np.maximum(best, 0.0, out=best)
    return best


@_one_thread
def farthest_pair(Z, rows=None) -> tuple[int, int]:
    """The two rows of ``Z`` farthest apart (Euclidean), exactly, without a distance matrix.

    ``rows``: restrict the search to these row indices. Returns ``(i, j)`` with ``i`` the one
    farther from the centroid of the searched rows. See the module docstring for the pruning.
    """
    Z = np.asarray(Z, dtype=np.float64)
    index = np.arange(Z.shape[0]) if rows is None else np.asarray(rows, dtype=np.int64)
    if index.size < 2:
        raise SoilCarbonError("at least two samples are needed to find the farthest pair")
    W = Z if rows is None else Z[index]
    sq = _sq_norms(W)
    centre = W.mean(axis=0)
    radius = np.sqrt(np.maximum(sq - 2.0 * (W @ centre) + centre @ centre, 0.0))
    a = int(np.argmax(radius))
    best, pair = -1.0, (a, a)
    for _ in range(4):  # a few farthest-from-the-last sweeps: a tight lower bound, cheaply
        d = _sq_dist_to(W, sq, a)
        b = int(np.argmax(d))
        if d[b] <= best:
            break
        best, pair, a = float(d[b]), (a, b), b
    order = np.argsort(-radius, kind="stable")
    r_sorted = radius[order]
    r_max = r_sorted[0]
    position = 0
    while position < index.size:
        bound = np.sqrt(best)
        if r_sorted[position] + r_max <= bound:
            break
        # columns: earlier rows (larger radius) that can still beat the bound with this block
        reach = int(np.searchsorted(-r_sorted, -(bound - r_sorted[position]), side="left"))
        step = _block(max(reach, 1))
        rows_block = order[position:position + step]
        cols = order[:min(reach, position + rows_block.size)]
        D = W[rows_block] @ W[cols].T
        D *= -2.0
        D += sq[rows_block, None]
        D += sq[None, cols]
        flat = int(np.argmax(D))
        r, c = divmod(flat, D.shape[1])
        if D[r, c] > best:
            best, pair = float(D[r, c]), (int(rows_block[r]), int(cols[c]))
        position += rows_block.size
    i, j = pair
    if radius[j] > radius[i] or (radius[j] == radius[i] and j < i):
        i, j = j, i
    return int(index[i]), int(index[j])


# ---------------------------------------------------------------------------------- selectors
@_one_thread
def kennard_stone(X, n, *, include=None, reference=None, metric: str = "mahalanobis",
                  start: str = "pair") -> np.ndarray:
    """Kennard–Stone selection (Kennard & Stone 1969) of ``n`` rows of ``X``, in selection order.

    Parameters
    ----------
    X : (n_samples, n_features) candidates.
    n : number of rows to return, ``include`` rows counted.
    include : row indices chosen first, in this order (samples already measured or that must be).
    reference : (m, n_features) rows already in a calibration library: they count as chosen
        (the new rows cover what the library does not) but are not returned.
    metric : ``"mahalanobis"`` (whitened by the covariance of ``X`` and ``reference``) or
        ``"euclidean"``.
    start : without ``include`` and ``reference``: ``"pair"`` (the two rows farthest apart,
        Kennard & Stone; prospectr) or ``"mean"`` (the row farthest from the mean, then on as
        usual, as the ``kennard-stone`` package on PyPI).

    Returns
    -------
    (n,) int64 row indices; ties go to the lowest row index.
    """
    X = _matrix(X)
    n = _count(n, X.shape[0])
    include = _rows(include, X.shape[0], n)
    if start not in ("pair", "mean"):
        raise SoilCarbonError(f"unknown start {start!r}; use 'pair' or 'mean'")
    Z, R = _space(X, reference, metric)
    sq = _sq_norms(Z)
    chosen: list[int] = [int(i) for i in include]
    if R is not None and R.shape[0]:
        nearest = _sq_dist_to_set(Z, sq, R)
    else:
        nearest = np.full(Z.shape[0], np.inf)
    if not chosen and not np.isfinite(nearest).any():
        if start == "pair":
            chosen.extend(farthest_pair(Z)[:min(2, n)])
        else:  # the row farthest from the mean
            centre = Z.mean(axis=0)
            chosen.append(int(np.argmax(sq - 2.0 * (Z @ centre))))
    for i in chosen:
        np.minimum(nearest, _sq_dist_to(Z, sq, i), out=nearest)
    nearest[chosen] = -np.inf
    while len(chosen) < n:
        i = int(np.argmax(nearest))
        chosen.append(i)
        np.minimum(nearest, _sq_dist_to(Z, sq, i), out=nearest)
        nearest[i] = -np.inf
    return np.asarray(chosen[:n], dtype=np.int64)


@_one_thread
def duplex(X, n, *, metric: str = "mahalanobis", return_test: bool = False):
    """DUPLEX (Snee 1977), as prospectr's ``duplex``: ``n`` calibration rows in selection order.

    The two rows farthest apart open the calibration set, the two farthest apart among the rest
    open the test set; then the calibration set and the test set take turns, each taking the
    remaining row farthest from its own rows (largest distance to its nearest member), until each
    holds ``n``. Needs ``2 n <= n_samples``. With ``return_test=True`` returns
    ``(calibration, test)``.
    """
    X = _matrix(X)
    if isinstance(n, Integral) and not isinstance(n, bool) and 2 * int(n) > X.shape[0] >= int(n) > 0:
        raise SoilCarbonError(f"DUPLEX fills a calibration and a test set of {int(n)} each: it needs at least "
                              f"{2 * int(n)} candidates, there are {X.shape[0]}")
    n = _count(n, X.shape[0])
    Z, _ = _space(X, None, metric)
    sq = _sq_norms(Z)
    free = np.ones(Z.shape[0], dtype=bool)
    sets: list[list[int]] = [[], []]
    nearest = [np.full(Z.shape[0], np.inf), np.full(Z.shape[0], np.inf)]

    def take(which: int, i: int) -> None:
        sets[which].append(i)
        free[i] = False
        np.minimum(nearest[which], _sq_dist_to(Z, sq, i), out=nearest[which])

    for which in (0, 1):
        if len(sets[which]) >= n:
            continue
        pair = farthest_pair(Z, np.flatnonzero(free)) if free.sum() >= 2 else (int(np.flatnonzero(free)[0]),)
        for i in pair[:n]:
            take(which, i)
    while len(sets[0]) < n or len(sets[1]) < n:
        for which in (0, 1):
            if len(sets[which]) < n and free.any():
                score = np.where(free, nearest[which], -np.inf)
                take(which, int(np.argmax(score)))
    calibration = np.asarray(sets[0][:n], dtype=np.int64)
    return (calibration, np.asarray(sets[1][:n], dtype=np.int64)) if return_test else calibration


def _puchwein_pass(Z: np.ndarray, sq: np.ndarray, order: np.ndarray, limit_sq: float, cap: int) -> list[int]:
    alive = np.ones(Z.shape[0], dtype=bool)
    kept: list[int] = []
    for i in order:
        if not alive[i]:
            continue
        kept.append(int(i))
        if len(kept) >= cap:
            break
        alive &= _sq_dist_to(Z, sq, int(i)) > limit_sq
    return kept


@_one_thread
def puchwein(X, n, *, metric: str = "mahalanobis", tolerance: float = 1e-6) -> np.ndarray:
    """Puchwein (1988) selection, as prospectr's ``puchwein``: ``n`` rows by decreasing leverage.

    Rows are visited by decreasing distance to the centre (Mahalanobis by default); each visited
    row still present is kept and every row within the limiting distance ``d`` of it is removed.
    The limiting distance is the largest ``d`` (bisection to ``tolerance`` relative) for which
    at least ``n`` rows are kept; the first ``n`` kept rows are returned.
    """
    X = _matrix(X)
    n = _count(n, X.shape[0])
    Z, _ = _space(X, None, metric)
    sq = _sq_norms(Z)
    centre = Z.mean(axis=0)
    leverage = np.maximum(sq - 2.0 * (Z @ centre) + centre @ centre, 0.0)  # squared distance to the centre
    order = np.argsort(-leverage, kind="stable")
    low, high = 0.0, 2.0 * float(np.sqrt(leverage.max())) + 1e-12  # low always keeps n (d = 0 keeps all)
    best = _puchwein_pass(Z, sq, order, 0.0, n)
    if len(best) < n:
        raise SoilCarbonError(f"only {len(best)} of the samples are distinct; cannot select {n} by Puchwein")
    while high - low > tolerance * high:
        middle = 0.5 * (low + high)
        kept = _puchwein_pass(Z, sq, order, middle * middle, n)
        if len(kept) >= n:
            low, best = middle, kept
        else:
            high = middle
    return np.asarray(best[:n], dtype=np.int64)


def clhs(X, n, *, include=None, n_iter: int = 10000, random_state=0, temperature: float = 1.0,
         cooling: float = 0.95, cycle: int = 10) -> np.ndarray:
    """Conditioned Latin hypercube sampling (Minasny & McBratney 2006) of ``n`` rows of ``X``.

    ``X`` holds continuous covariates (one column a variable). Each variable is cut into ``n``
    strata at the quantiles of all rows; the objective is ``O1 + O3`` with
    ``O1 = Σ_j Σ_s |count_js - 1|`` and ``O3 = Σ |corr(sample) - corr(X)|``, minimised by
    simulated annealing (Metropolis acceptance ``exp(-ΔO / T)``, ``T`` starts at
    ``temperature`` and is multiplied by ``cooling`` every ``cycle`` iterations). Each iteration
    swaps one non-included sampled row for an unsampled one: with probability 1/2 a random
    sampled row, otherwise the one in the most crowded strata (as the R package ``clhs``).
    ``include`` rows stay in the sample (the R package's ``must.include``).

    Returns the ``include`` rows (in their order) followed by the others in row order: a
    Latin hypercube has no selection order.
    """
    X = _matrix(X)
    n = _count(n, X.shape[0])
    include = _rows(include, X.shape[0], n)
    if not isinstance(n_iter, Integral) or n_iter < 0:
        raise SoilCarbonError(f"n_iter must be a whole number >= 0, got {n_iter!r}")
    spread = X.std(axis=0) > 0
    if not spread.any():
        raise SoilCarbonError("every covariate is constant: there is no spread to select from")
    X = X[:, spread]
    N, k = X.shape
    rng = np.random.default_rng(random_state)
    edges = np.quantile(X, np.linspace(0, 1, n + 1)[1:-1], axis=0)  # (n-1, k)
    strata = np.empty((N, k), dtype=np.int64)
    for j in range(k):
        strata[:, j] = np.searchsorted(edges[:, j], X[:, j], side="right")
    target_corr = np.corrcoef(X, rowvar=False) if k > 1 else np.ones((1, 1))

    pool = np.setdiff1d(np.arange(N), include)
    first = rng.choice(pool, size=n - include.size, replace=False)
    sample = np.concatenate([include, first]).astype(np.int64)
    in_sample = np.zeros(N, dtype=bool)
    in_sample[sample] = True
    counts = np.zeros((k, n), dtype=np.int64)
    np.add.at(counts, (np.repeat(np.arange(k)[None, :], n, axis=0), strata[sample]), 1)
    columns = np.arange(k)

    def correlation_error(rows: np.ndarray) -> float:
        if k == 1 or rows.size < 3:
            return 0.0
        S = X[rows]
        S = S - S.mean(axis=0)
        norm = np.sqrt(_sq_norms(S.T))
        norm[norm == 0] = np.inf
        C = (S.T @ S) / np.outer(norm, norm)
        np.fill_diagonal(C, 1.0)
        return float(np.abs(C - target_corr).sum())

    o1 = float(np.abs(counts - 1).sum())
    objective = o1 + correlation_error(sample)
    movable = np.arange(include.size, n)
    if movable.size == 0 or n == N:
        return sample
    T = float(temperature)
    for iteration in range(int(n_iter)):
        if rng.random() < 0.5:
            slot = int(rng.choice(movable))
        else:
            crowding = (counts[columns, strata[sample[movable]]] - 1).sum(axis=1)
            slot = int(movable[np.argmax(crowding)])
        out = sample[slot]
        candidate = int(rng.integers(N))
        while in_sample[candidate]:
            candidate = int(rng.integers(N))
        delta_counts_out, delta_counts_in = strata[out], strata[candidate]
        counts[columns, delta_counts_out] -= 1
        counts[columns, delta_counts_in] += 1
        sample[slot] = candidate
        new_o1 = float(np.abs(counts - 1).sum())
        new_objective = new_o1 + correlation_error(sample)
        delta = new_objective - objective
        if delta <= 0 or rng.random() < np.exp(-delta / max(T, 1e-300)):
            objective = new_objective
            in_sample[out], in_sample[candidate] = False, True
        else:  # undo
            counts[columns, delta_counts_in] -= 1
            counts[columns, delta_counts_out] += 1
            sample[slot] = out
        if (iteration + 1) % cycle == 0:
            T *= cooling
    rest = np.sort(sample[include.size:])
    return np.concatenate([include, rest]).astype(np.int64)
