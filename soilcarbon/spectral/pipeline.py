"""Preprocessing pipelines whose output is computed once per prediction and shared.

A fitted model usually applies the same preprocessing several times to one batch: every member
of a stacked ensemble and the applicability-domain check each start with their own copy of the
configured pipeline (e.g. Savitzky-Golay + resampling). Inside :func:`shared_preprocessing`,
a :class:`SpectralPipeline` looks its result up before computing it; the key is the pipeline's
fitted state (``joblib.hash``: two pipelines with equal hashes give equal outputs) and the
input's memory (data address, shape, strides). The cache keeps the input alive, so the memory
cannot be reused for another array while the block lasts, and hands out read-only views, so no
consumer can change what another one sees. Outside the block nothing is cached.
"""

from __future__ import annotations

import threading
import weakref
from contextlib import contextmanager

import joblib
import numpy as np
from sklearn.pipeline import Pipeline

_local = threading.local()
_fingerprints: "weakref.WeakKeyDictionary[Pipeline, str]" = weakref.WeakKeyDictionary()
_lock = threading.Lock()


@contextmanager
def shared_preprocessing():
    """Share preprocessing outputs between the pipelines called inside the block (this thread)."""
    outer = getattr(_local, "cache", None)
    if outer is None:
        _local.cache = {}
    try:
        yield
    finally:
        if outer is None:
            _local.cache = None


def _fingerprint(pipeline: Pipeline) -> str:
    with _lock:
        found = _fingerprints.get(pipeline)
    if found is None:
        found = joblib.hash(pipeline)
        with _lock:
            _fingerprints[pipeline] = found
    return found


class SpectralPipeline(Pipeline):
    """A scikit-learn :class:`~sklearn.pipeline.Pipeline` of spectral preprocessing steps whose
    ``transform`` output is shared inside :func:`shared_preprocessing`.

    The fingerprint is taken at the first shared call and dropped by ``fit``, ``fit_transform``
    and ``set_params``; changing a step's attributes by hand afterwards is not supported."""

    def _forget(self) -> None:
        with _lock:
            _fingerprints.pop(self, None)

    def fit(self, X, y=None, **params):
        self._forget()
        return super().fit(X, y, **params)

    def fit_transform(self, X, y=None, **params):
        self._forget()
        return super().fit_transform(X, y, **params)

    def set_params(self, **params):
        self._forget()
        return super().set_params(**params)

    def transform(self, X, **params):
        cache = getattr(_local, "cache", None)
        if cache is None or params or type(X) is not np.ndarray:
            return super().transform(X, **params)
        key = (_fingerprint(self), X.__array_interface__["data"][0], X.shape, X.strides, X.dtype.str)
        found = cache.get(key)
        if found is None:
            out = super().transform(X).view()
            out.flags.writeable = False
            found = cache[key] = (X, out)
        return found[1]
