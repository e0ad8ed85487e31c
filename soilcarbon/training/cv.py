"""Cross-validation schemes: k-fold, grouped k-fold, user-given fold labels, spatial blocks.

Spatial blocks (Roberts et al. 2017, Ecography 40:913) group samples by square cells of
``block_size`` metres so that reported errors are not inflated by spatial autocorrelation;
cells are then spread over the folds with GroupKFold.
"""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import GroupKFold, KFold

from soilcarbon.errors import SoilCarbonError

EARTH_RADIUS_M = 6_371_000.0


def _check_folds(n_samples: int, n_folds: int, what: str = "samples") -> None:
    if n_samples < n_folds:
        raise SoilCarbonError(
            f"{n_samples} {what} with a target but {n_folds} folds requested; "
            "use fewer folds (cv.folds) or add samples"
        )


def kfold_labels(n_samples: int, n_folds: int, seed: int = 0) -> np.ndarray:
    """Fold label (0..n_folds-1) per sample from a shuffled KFold."""
    _check_folds(n_samples, n_folds)
    labels = np.empty(n_samples, dtype=int)
    for fold, (_, test) in enumerate(KFold(n_folds, shuffle=True, random_state=seed).split(np.zeros(n_samples))):
        labels[test] = fold
    return labels


def group_labels(groups, n_folds: int) -> np.ndarray:
    """Fold label per sample so that no group is split across folds (GroupKFold)."""
    groups = np.asarray(groups)
    n_groups = len(np.unique(groups))
    _check_folds(n_groups, n_folds, "groups")
    labels = np.empty(len(groups), dtype=int)
    for fold, (_, test) in enumerate(GroupKFold(n_folds).split(np.zeros(len(groups)), groups=groups)):
        labels[test] = fold
    return labels


def given_labels(labels) -> np.ndarray:
    """User fold labels (any values) mapped to 0..k-1; at least two distinct folds."""
    labels = np.asarray(labels, dtype=object)
    if any(v is None or (isinstance(v, float) and np.isnan(v)) for v in labels):
        raise SoilCarbonError("the fold column has missing values; give every sample a fold")
    _, codes = np.unique(labels.astype(str), return_inverse=True)
    if codes.max() < 1:
        raise SoilCarbonError("the fold column holds a single fold; at least two are needed")
    return codes


def to_metres(x, y) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates in metres: lon/lat degrees (all within ±180/±90) are projected with a local
    equirectangular projection; anything else is taken as projected metres already."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise SoilCarbonError("coordinates have missing values; every sample needs x and y")
    if np.abs(x).max() <= 180 and np.abs(y).max() <= 90:
        lat0 = np.deg2rad(np.mean(y))
        return (np.deg2rad(x) * EARTH_RADIUS_M * np.cos(lat0), np.deg2rad(y) * EARTH_RADIUS_M)
    return x, y


def spatial_blocks(x, y, block_size: float | None = None) -> tuple[np.ndarray, float]:
    """Block id per sample from square cells of ``block_size`` metres anchored at 0 (default
    size: a tenth of the larger extent of the points); returns (block ids, size)."""
    xm, ym = to_metres(x, y)
    if block_size is None:
        extent = max(np.ptp(xm), np.ptp(ym))
        block_size = extent / 10 if extent > 0 else 1.0
    if block_size <= 0:
        raise SoilCarbonError("--block-size must be positive (metres)")
    cells = np.floor(xm / block_size).astype(np.int64) * 1_000_003 + np.floor(ym / block_size).astype(np.int64)
    return cells, float(block_size)


def spatial_labels(x, y, n_folds: int, block_size: float | None = None) -> tuple[np.ndarray, float]:
    """Fold labels from square spatial blocks spread over folds; returns (labels, block size)."""
    cells, block_size = spatial_blocks(x, y, block_size)
    n_cells = len(np.unique(cells))
    if n_cells < n_folds:
        raise SoilCarbonError(
            f"only {n_cells} spatial blocks of {block_size:.0f} m for {n_folds} folds; use a smaller --block-size"
        )
    return group_labels(cells, n_folds), block_size


def inner_labels(n_samples: int, n_folds: int, seed: int, groups=None) -> np.ndarray:
    """Fold labels for model selection inside a training set (grouped when groups are given)."""
    if groups is not None and len(np.unique(groups)) >= n_folds:
        return group_labels(groups, n_folds)
    return kfold_labels(n_samples, min(n_folds, n_samples), seed)
