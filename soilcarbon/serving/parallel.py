"""Parallel execution of batch prediction: an ordered thread map and one BLAS/OpenMP thread per worker.

Chunks are predicted by a small thread pool (numpy releases the GIL) while the calling thread
reads the next chunk and writes the previous one, with at most ``workers + 1`` chunks in flight.
"""

from __future__ import annotations

import collections
import os
import threading
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


_thread_state = threading.local()


def limit_openmp_threads(limit: int = 1) -> None:
    """Limit OpenMP to ``limit`` threads in the calling thread, once per thread.

    OpenMP's thread count is a per-thread setting, so a limit set in one thread (``predict_file``'s,
    or the service's when it starts) does not reach pool threads: batch workers and the threads
    FastAPI runs requests in (BLAS limits are process-wide and do). Setting it costs a few ms
    (``threadpoolctl`` inspects the loaded libraries), so a thread that already has this limit
    skips it: a request thread pays once, not per request.
    """
    if getattr(_thread_state, "openmp_limit", None) == limit:
        return
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=limit, user_api="openmp")
    _thread_state.openmp_limit = limit


def default_workers() -> int:
    """Threads predicting chunks: the CPU count, at most 4 (memory grows with chunks in flight)."""
    return max(1, min(4, os.cpu_count() or 1))
