"""Preprocessing pipelines whose output is computed once per prediction and shared.

A fitted model usually applies the same preprocessing several times to one batch: every member
of a stacked ensemble and the applicability-domain check each start with their own copy of the
configured pipeline (e.g. Savitzky-Golay + resampling), each behind its own ``ColumnTransformer``
that hands it a new view of the same block of the model matrix. ``SOCModel`` predicts each block
inside ``with shared_preprocessing() as cache:``; there a :class:`SpectralPipeline` asks the
active :class:`PreprocessingCache` before computing. Without an active cache (training, a user's
own ``Pipeline``) nothing is cached.

Why a cache: ``benchmarks/bench_predict.py --n 10000 --chunk-size 2000`` (rows "model only" and
"model only, preprocessing not shared", one thread) measured 0.30 s with it and 0.34 s without
for the Savitzky-Golay + SNV PLS model, whose domain check repeats its preprocessing; 1.36 s and
1.38 s for the default stack, where memory-based learning dominates.

The active cache is a :class:`contextvars.ContextVar`, so concurrent predictions (threads of
the batch command, requests of the service) each see only their own. An entry's key is the
pipeline's fitted state (``joblib.hash``: equal hashes give equal outputs) and the input's
memory (start address, shape, strides, dtype): the views the column transformers hand out are
new objects over the same memory, so object identity would never match. The cache holds a
reference to every input, so that memory cannot be freed and reused for another array while the
cache lives, and hands out read-only outputs, so no consumer can change what another one sees.
"""

from __future__ import annotations

import contextvars
import threading
import weakref
from contextlib import contextmanager

import joblib
import numpy as np
from sklearn.pipeline import Pipeline

_fingerprints: "weakref.WeakKeyDictionary[Pipeline, str]" = weakref.WeakKeyDictionary()
_lock = threading.Lock()


class PreprocessingCache:
    """Outputs of fitted preprocessing pipelines on the arrays of one prediction block.

    ``hits`` and ``misses`` count the lookups (how much was shared)."""

    def __init__(self):
        self._entries: dict = {}
        self.hits = 0
        self.misses = 0

    def transform(self, pipeline: "SpectralPipeline", X: np.ndarray) -> np.ndarray:
        """``pipeline.transform(X)``, computed once per (fitted state, input memory); read-only."""
        key = (fingerprint(pipeline), X.__array_interface__["data"][0], X.shape, X.strides, X.dtype.str)
        found = self._entries.get(key)
        if found is None:
            self.misses += 1
            out = Pipeline.transform(pipeline, X).view()
            out.flags.writeable = False
            found = self._entries[key] = (X, out)  # X kept alive: its memory is not reused meanwhile
        else:
            self.hits += 1
        return found[1]


_active: contextvars.ContextVar[PreprocessingCache | None] = contextvars.ContextVar("preprocessing_cache",
                                                                                   default=None)


@contextmanager
def shared_preprocessing():
    """Share preprocessing outputs between the pipelines called inside the block; yields the
    :class:`PreprocessingCache` (a block nested in another uses the outer one)."""
    outer = _active.get()
    if outer is not None:
        yield outer
        return
    cache = PreprocessingCache()
    token = _active.set(cache)
    try:
        yield cache
    finally:
        _active.reset(token)


def fingerprint(pipeline: Pipeline) -> str:
    """``joblib.hash`` of a fitted pipeline, remembered until :class:`SpectralPipeline` refits or
    changes its parameters."""
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
        cache = _active.get()
        if cache is None or params or type(X) is not np.ndarray:
            return super().transform(X, **params)
        return cache.transform(self, X)
