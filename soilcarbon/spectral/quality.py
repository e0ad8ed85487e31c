"""Scan quality: spectra that carry no signal (blank, saturated, clipped) are refused per sample.

A blank or saturated scan (a constant 0.001 ... 2.0), or one whose detector clipped a large part
of the range, still gives the model a number; after a derivative it even lands near the centre of
the domain check's PCA space and looks in domain. This module is the one rule deciding whether a
raw spectrum (before any preprocessing) is a measurement at all; :class:`SOCModel` applies it to
the spectral block of every matrix it predicts, so the CLI, REST, pyfunc, Spark and maps share it.

A spectrum (a row of ``values``, NaN-free) is a bad scan when

- **flat**: its range ``max - min`` is at most ``MIN_RELATIVE_RANGE`` (0.1 %) of its largest
  magnitude (every constant, including all zeros), or
- **mostly one value** (clipped, saturated, filled): more than ``MAX_ONE_VALUE_SHARE`` (20 %) of
  its points hold exactly the same value. The values are counted (a sort) only in rows where at
  least ``MIN_EQUAL_NEIGHBOURS`` (2 %) of neighbouring pairs are equal: a clipped, saturated or
  filled stretch is made of them, while real scans have at most 0.6 % (nirsoil, opus-sample, corn;
  a third of nirsoil rows have one or two such pairs from rounding). This keeps the check at
  ~15 ms per 5,000 NIR spectra instead of ~230 ms (a PLS prediction of them takes ~250 ms).

Thresholds, chosen on the real data in ``../shared/data`` (tests check that none is flagged):
the smallest relative range there is 6.2 % (nirsoil; opus-sample 47 %, corn 92 %), and the largest
share of points holding one value is 0.6 % (nirsoil, opus-sample, corn) and 11.4 % in LimeSoDa's
SC.93, whose reflectance is rounded to 0.1 % (long runs of equal values are real there, which is
why the rule counts a value's share and not runs of equal neighbours).
Why our own code: scikit-learn, chemotools and the domain check (:mod:`soilcarbon.models.domain`)
judge a spectrum after preprocessing, where a flat scan is no longer recognisable.
"""

from __future__ import annotations

import numpy as np

#: A spectrum whose range is at most this share of its largest magnitude is flat.
MIN_RELATIVE_RANGE = 1e-3
#: A spectrum with more than this share of its points at one exact value is clipped / mostly constant.
MAX_ONE_VALUE_SHARE = 0.20
#: Rows with fewer equal neighbouring pairs than this share cannot be clipped or filled stretches.
MIN_EQUAL_NEIGHBOURS = 0.02


def scan_problems(values: np.ndarray) -> dict[int, str]:
    """``{row: reason}`` for the rows of ``values`` (n, p) that are not a usable scan.

    Rows holding NaN or infinite values are skipped (they are reported elsewhere).
    """
    values = np.asarray(values, dtype=float)
    problems: dict[int, str] = {}
    if values.ndim != 2 or values.shape[1] < 2 or not len(values):
        return problems
    p = values.shape[1]
    with np.errstate(invalid="ignore", over="ignore"):
        high, low = values.max(axis=1), values.min(axis=1)
        peak = np.maximum(np.abs(high), np.abs(low))
        spread = high - low
        finite = np.isfinite(spread)
        flat = finite & (spread <= MIN_RELATIVE_RANGE * peak)
    for row in np.flatnonzero(flat).tolist():
        if spread[row] == 0:
            problems[row] = (f"flat spectrum: every one of its {p} values is {high[row]:.6g} "
                             "(a blank or saturated scan); rescan the sample")
        else:
            problems[row] = (f"flat spectrum: its values vary by {spread[row]:.3g}, less than "
                             f"{MIN_RELATIVE_RANGE:.1%} of their size (a blank or saturated scan); rescan the sample")
    repeats = equal_neighbours(values) >= MIN_EQUAL_NEIGHBOURS * (p - 1)
    rest = np.flatnonzero(finite & ~flat & repeats)
    m = int(np.floor(MAX_ONE_VALUE_SHARE * p)) + 1  # more than the share: at least m equal points
    if len(rest) and m <= p:
        ordered = np.sort(values[rest], axis=1)
        # a value held by >= m points spans positions j .. j+m-1 of the sorted row
        same = ordered[:, m - 1:] == ordered[:, :p - m + 1]
        for k in np.flatnonzero(same.any(axis=1)).tolist():
            row = int(rest[k])
            j = int(np.argmax(same[k]))
            value = ordered[k, j]
            count = int(np.count_nonzero(values[row] == value))
            where = "its maximum" if value == high[row] else "its minimum" if value == low[row] else "one value"
            problems[row] = (f"clipped or mostly constant spectrum: {count} of its {p} values "
                             f"({count / p:.0%}) are exactly {value:.6g} ({where}); "
                             f"a scan with more than {MAX_ONE_VALUE_SHARE:.0%} of its points at one value is not a measurement; "
                             "rescan the sample")
    return problems


def equal_neighbours(values: np.ndarray) -> np.ndarray:
    """Per row of ``values`` (n, p), how many neighbouring pairs ``values[i, j] == values[i, j + 1]`` hold
    exactly (NaN equals nothing): ``np.count_nonzero(values[:, 1:] == values[:, :-1], axis=1)``.

    Computed as one comparison of the flat buffer shifted by one point (row-major: the pairs that
    straddle two rows are dropped) or by one column (column-major), and summed in 16 bits: a third
    of the time of the 2-D comparison row by row (57 -> 29 ms row-major, 43 -> 33 ms column-major
    on 50,000 x 700). Other layouts are compared as they are.
    """
    n, p = values.shape
    dtype = np.uint16 if p - 1 <= np.iinfo(np.uint16).max else np.intp
    with np.errstate(invalid="ignore"):
        if values.flags.c_contiguous:
            flat = values.reshape(-1)
            equal = np.empty(n * p, dtype=bool)
            np.equal(flat[1:], flat[:-1], out=equal[:-1])
            return equal.reshape(n, p)[:, :-1].view(np.uint8).sum(axis=1, dtype=dtype)
        if values.flags.f_contiguous:
            flat = values.T.reshape(-1)  # columns one after the other (a view)
            equal = flat[n:] == flat[:-n]
            return equal.reshape(p - 1, n).view(np.uint8).sum(axis=0, dtype=dtype)
        return np.count_nonzero(values[:, 1:] == values[:, :-1], axis=1)
