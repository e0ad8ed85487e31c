"""Compute choices of training: worker processes, a time budget, and the rules that keep the cost
of the model search about linear in the number of samples on large spectral libraries.

Every choice is made here, once per training run, printed by ``soilcarbon train`` and logged to
MLflow as ``compute.*`` params (see :class:`ComputePlan`).

- **Jobs** (``compute.jobs``, ``train --jobs``): worker processes for the cross-validation
  fits. Default: the CPUs this process may use (``os.sched_getaffinity``, which respects
  ``taskset`` and container CPU sets, unlike ``os.cpu_count``); every fit is single-threaded
  (PLS, LightGBM with ``n_jobs=1``, the compiled MBL kernel), so one process per CPU.

- **Large data** (``compute.large_n``, default 5,000 samples; ``null`` switches the rules off).
  Decided once on the number of training samples, so that the outer folds evaluate the same
  procedure that fits the deployed model. Why 5,000: below it the exhaustive search (every
  candidate x inner fold x outer fold) takes a few minutes on 2 cores (2 to 2.5 min at 2,000
  on a busy machine, ``benchmarks/bench_train_scale.py``), and the README's numbers on the
  548 NIR samples stay exactly as they were; above it its cost grows like n^1.4 (issue 12:
  7 min at 10,000, 53 min and 10 GB at 40,000). At 5,000 the smallest subsample of successive
  halving (n / 27 for the 12 PLS candidates, never below :data:`MIN_RUNG_SAMPLES` = 200) holds
  200 samples, 40 per inner fold, enough to rank PLS component counts; smaller libraries
  would rank candidates on too few samples.

  * Fewer outer folds: at most 5 from ``large_n`` on, at most 3 from 4 x ``large_n``
    (20,000 by default), for the schemes whose fold count comes from ``cv.folds`` (k-fold,
    grouped, spatial; user-given folds are kept). Why: each outer fold repeats the whole search,
    so nested CV costs k + 1 searches; every sample is still predicted exactly once, so the
    accuracy estimate still rests on all n residuals, and the only cost of fewer folds is a
    smaller training part (80 % or 67 % instead of 90 %), whose pessimistic bias is negligible
    once the learning curve is flat, as it is at thousands of samples (Kohavi 1995 recommends
    10 folds for its lower variance on *small* data; Hastie et al. 2009, sect. 7.10, discuss the
    bias of 5- and 10-fold CV against the training-set size).
  * Successive halving of the candidates of each model family (Jamieson & Talwalkar 2016,
    "Non-stochastic best arm identification and hyperparameter optimization", AISTATS; the
    inner loop of Hyperband, Li et al. 2017, JMLR 18:185), with the number of training samples as
    the resource: a family of m candidates gets s = ceil(log_3 m) rounds; round i runs the inner
    CV of the remaining candidates on a random subsample of n / 3^(s-i) samples (at least
    :data:`MIN_RUNG_SAMPLES`; subsamples are nested, the inner fold labels are those of the full
    data restricted to the subsample) and keeps the best third (rounded up). The survivor of
    each family then gets the full inner CV on all samples: its out-of-fold predictions feed the
    ensemble (``search.select`` averages or stacks the best of each family, so halving inside
    each family keeps every family available to it) and the conformal calibration. The 16
    default candidates on spectra (12 PLS, 2 MBL, 2 LightGBM) thus cost about 6 full inner CVs
    instead of 16 for learners whose cost is linear in n (12/27 + 4/9 + 2/3 + 1 for PLS, 2/3 + 1
    for MBL and for LightGBM), fewer for memory-based learning, whose neighbour search is
    quadratic in n.

- **Engine** (``compute.engine``, ``train --engine``): ``local`` runs the fits in worker
  processes of this machine (joblib's loky backend); ``spark`` hands the same fits to Spark as
  tasks through ``joblibspark``, the joblib backend for Spark (``pip install 'soilcarbon[spark]'``),
  with as many concurrent tasks as ``jobs`` (default: Spark's default parallelism). Local mode
  by default (``$SOILCARBON_SPARK_MASTER``, else ``local[N]``); on a cluster, run ``train``
  through ``spark-submit``, whose ``--master`` applies (:func:`soilcarbon.serving.spark.spark_session`).
  Each task receives its data with the task (no broadcast), so the large-data rules'
  shared preprocessing, which sends the compact preprocessed matrix, matters more there.

- **Budget** (``compute.budget_minutes``, ``train --budget-minutes``): before each outer fold
  after the first, the time of the fold and of the final search (estimated from the mean of the
  folds done, scaled by the ratio of the sample counts) is checked against the time left; folds
  that would not fit are skipped and named, and the accuracy is reported on the samples of the
  folds that ran. The first outer fold and the final model are always fitted.
"""

from __future__ import annotations

import math
import os
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

from soilcarbon.errors import SoilCarbonError

#: Elimination factor of successive halving: keep the best third each round (Li et al. 2017 use 3).
HALVING_ETA = 3
#: No halving round trains on fewer samples than this (small subsamples rank candidates badly).
MIN_RUNG_SAMPLES = 200
#: Outer folds on large data: at most 5 from large_n, at most 3 from 4 x large_n samples.
LARGE_OUTER_FOLDS = ((4, 3), (1, 5))


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not on Linux
        return max(1, os.cpu_count() or 1)


@dataclass
class ComputePlan:
    """The compute choices of one training run and why they were made."""

    jobs: int
    jobs_reason: str
    outer_folds: int | None  # None: the scheme's own count (user-given folds)
    large: bool
    halving: bool
    budget_minutes: float | None
    reasons: list = field(default_factory=list)
    engine: str = "local"
    skipped_folds: list = field(default_factory=list)

    def params(self) -> dict:
        """MLflow params (``compute.*``)."""
        return {"compute.jobs_used": self.jobs, "compute.engine_used": self.engine,
                "compute.large_data_rules": self.large,
                "compute.outer_folds_used": self.outer_folds if self.outer_folds is not None else "given",
                "compute.successive_halving": self.halving,
                "compute.budget_minutes_used": self.budget_minutes if self.budget_minutes else "none",
                "compute.skipped_outer_folds": ",".join(str(f) for f in self.skipped_folds) or "none"}

    def lines(self) -> list[str]:
        """What ``train`` prints, one choice per line."""
        return [f"jobs: {self.jobs} ({self.jobs_reason})", *self.reasons]


def halving_rounds(m: int, n: int, eta: int = HALVING_ETA, min_samples: int = MIN_RUNG_SAMPLES) -> list[tuple[int, int]]:
    """``(candidates, subsample size)`` of each elimination round of successive halving for a
    family of ``m`` candidates on ``n`` samples; after the last round one candidate remains
    (none for m = 1)."""
    rounds, s = [], 0
    while eta ** s < m:
        s += 1
    for i in range(s):
        rounds.append((m, min(n, max(min_samples, math.ceil(n / eta ** (s - i))))))
        m = math.ceil(m / eta)
    return rounds


def plan(n: int, config, scheme_has_fold_count: bool, n_jobs: int | None = None) -> ComputePlan:
    """The compute choices for training on ``n`` samples with ``config`` (a TrainConfig);
    ``n_jobs`` (the Python API's argument) wins over ``compute.jobs``."""
    compute = config.compute or {}
    engine = compute.get("engine") or "local"
    if n_jobs is not None:
        jobs, why = int(n_jobs), "given"
    elif compute.get("jobs") is not None:
        jobs, why = int(compute["jobs"]), "compute.jobs / --jobs"
    elif engine == "spark":
        jobs, why = spark_parallelism(), "Spark's default parallelism"
    else:
        jobs, why = available_cpus(), "the CPUs this process may use"
    if engine == "spark":
        why += "; engine spark (joblibspark)"
    folds = int(config.cv["folds"])
    large_n = compute.get("large_n")
    large = large_n is not None and n >= int(large_n)
    budget = compute.get("budget_minutes")
    reasons = []
    outer = folds if scheme_has_fold_count else None
    if large:
        for factor, cap in LARGE_OUTER_FOLDS:
            if n >= factor * int(large_n):
                outer = min(folds, cap) if scheme_has_fold_count else None
                break
        reasons.append(f"large data: {n} samples >= compute.large_n {large_n}: successive halving of each "
                       f"model family's candidates on growing subsamples (keep the best 1/{HALVING_ETA} per round), "
                       f"then the full inner CV of the survivors")
        if scheme_has_fold_count and outer != folds:
            reasons.append(f"large data: {outer} outer folds instead of cv.folds {folds} "
                           f"(every sample is still predicted once; each fold repeats the whole search)")
    else:
        reasons.append(f"search: every candidate in every inner fold ({n} samples < compute.large_n {large_n})"
                       if large_n is not None else "search: every candidate in every inner fold (compute.large_n null)")
    if budget:
        reasons.append(f"budget: {budget:g} min; outer folds that would not fit are skipped")
    return ComputePlan(jobs, why, outer, large, large, float(budget) if budget else None, reasons, engine=engine)


def spark_parallelism() -> int:
    """Spark's default parallelism (starting the session, see :func:`backend`)."""
    return int(_spark().sparkContext.defaultParallelism)


def spark_problem() -> str | None:
    """None when the spark engine can run (pyspark, Java, joblibspark), else why not."""
    from soilcarbon.serving.spark import spark_available

    reason = spark_available()
    if reason is None:
        try:
            import joblibspark  # noqa: F401
        except ImportError:
            reason = "joblibspark is not installed: pip install 'soilcarbon[spark]'"
    return reason


def _spark():
    from soilcarbon.serving.spark import spark_session

    reason = spark_problem()
    if reason:
        raise SoilCarbonError(f"compute.engine spark (--engine spark): {reason}")
    return spark_session()


@contextmanager
def _spark_backend():
    import warnings

    from joblib import parallel_config
    from joblibspark import register_spark

    _spark()
    register_spark()
    with warnings.catch_warnings():  # local mode has no stage-level scheduling; tags are not ours
        warnings.filterwarnings("ignore", message="Spark local mode doesn't support stage-level scheduling")
        warnings.filterwarnings("ignore", message="Spark session is not provided")
        with parallel_config(backend="spark"):
            yield


def backend(engine: str):
    """The joblib backend context for ``engine``: nothing for local (loky worker processes),
    joblibspark's ``spark`` backend for spark."""
    return _spark_backend() if engine == "spark" else nullcontext()
