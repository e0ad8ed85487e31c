"""Parallel execution of batch prediction: an ordered thread map and one BLAS/OpenMP thread per worker.

Chunks are predicted by a small thread pool (numpy releases the GIL) while the calling thread
reads the next chunk and writes the previous one, with at most ``workers + 1`` chunks in flight.
"""

from __future__ import annotations

import collections
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator


def ordered_map(function, items: Iterator, workers: int, initializer: Callable[[], None] | None = None) -> Iterator:
    """``map`` over ``items`` with a thread pool, in order, with at most ``workers + 1`` items in flight.

    The items are produced (read) in the calling thread while the workers compute, so even one
    worker does not wait for the next chunk to be read (nor the previous one to be written).
    """
    workers = max(1, workers)
    with ThreadPoolExecutor(max_workers=workers, initializer=initializer) as pool:
        pending = collections.deque()
        try:
            for item in items:
                pending.append(pool.submit(function, item))
                if len(pending) > workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()


def one_openmp_thread() -> None:
    """Limit OpenMP to one thread in a pool thread: its thread count is a per-thread setting, so
    the limit :func:`predict_file` sets in the calling thread does not reach the workers (BLAS
    limits are process-wide and do)."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="openmp")


def default_workers() -> int:
    """Threads predicting chunks: the CPU count, at most 4 (memory grows with chunks in flight)."""
    return max(1, min(4, os.cpu_count() or 1))
