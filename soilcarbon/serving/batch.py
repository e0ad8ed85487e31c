"""Batch prediction: a file (or in-memory spectra) in, one output row per sample out, in order.

- :func:`predict_file` opens the input (:mod:`.sources`), prepares each chunk
  (:mod:`soilcarbon.models.matrix`),
  predicts the chunks in parallel (:mod:`.parallel`) and streams the rows into the output
  (:mod:`.outputs`), atomically.
- Per-sample problems give that sample an empty prediction and a reason; the others go on.
  Anything that concerns the whole job (unreadable model or file, an axis that cannot be aligned,
  a missing covariate column, a row with the wrong number of fields) stops it with a
  :class:`SoilCarbonError`.
- Every input row gives one output row, in order; a sample id used twice stops the job
  (:func:`check_unique_ids`), as in training and the REST service.
- :func:`predict_spectra` applies the same per-row rules to in-memory spectra (the REST service).
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from soilcarbon.errors import SoilCarbonError
from soilcarbon.models.layout import ID_COLUMN
from soilcarbon.models.matrix import Prepared, plan_spectra, prepare_chunk
from soilcarbon.progress import Progress
from soilcarbon.serving.model import ServedModel, check_level, load_model
from soilcarbon.serving.outputs import Writer, check_outputs, write_problems
from soilcarbon.serving.parallel import default_workers, limit_openmp_threads, ordered_map
from soilcarbon.serving.sources import DEFAULT_CHUNK_SIZE, open_input, read_covariates
from soilcarbon.spectral.spectra import Spectra, check_resolution, format_axis_value

#: How many per-sample problems are kept in memory for the summary (all are counted).
KEEP_PROBLEMS = 1000


@dataclass
class PredictionSummary:
    """What a batch prediction did."""

    model_uri: str
    output: str
    n_samples: int = 0  # output rows
    n_predicted: int = 0
    n_problems: int = 0  # samples not predicted, including unreadable OPUS files (no output row)
    problems: list[tuple[str, str]] = field(default_factory=list)  # the first KEEP_PROBLEMS
    seconds: float = 0.0
    engine: str = "local"
    notes: list[str] = field(default_factory=list)  # what the user should know (e.g. re-gridding)

    def add_problems(self, problems: list[tuple[str, str]]) -> None:
        self.n_problems += len(problems)
        room = KEEP_PROBLEMS - len(self.problems)
        if room > 0:
            self.problems.extend(problems[:room])


def predict_prepared(model: ServedModel, prepared: Prepared, level: float) -> pd.DataFrame:
    """Outputs of a prepared chunk; samples the model could not predict join its problems."""
    ids = ["" if i is None else i for i in prepared.ids]
    out = model.predict_matrix(ids, prepared.X, level)
    failed = np.flatnonzero(out["prediction"].isna().to_numpy() & ~prepared.problem_rows)
    for row in failed:
        reason = f"not predictable: {out.attrs['failures'].get(int(row), 'the model gave no prediction')}"
        prepared.problems.append((ids[row], reason))  # rows without id failed before
        prepared.reasons[int(row)] = reason
        prepared.problem_rows[row] = True
    if any(i is None for i in prepared.ids):
        out[ID_COLUMN] = pd.array(list(prepared.ids), dtype="string")
    return out


def predict_spectra(model: ServedModel, spectra: Spectra | None, covariates: pd.DataFrame | None = None,
                    level: float | None = None, ids=None) -> pd.DataFrame:
    """Predict in-memory spectra and/or covariates (the REST service) through the same per-row
    rules as batch files (:func:`prepare_chunk`): a sample with missing or infinite values, no
    id, no covariates or a bad scan gets empty outputs and its reason in the ``problem`` column;
    the others are predicted.

    Spectra are aligned to the model axis; ``covariates`` is a table indexed by sample id;
    ``ids`` (default: the spectra's or the covariates' ids) may hold None for a sample without id.
    What concerns the whole request (axis, missing covariate columns, level) raises.
    """
    level = model.check_level(level)
    if spectra is None and covariates is None:
        raise SoilCarbonError("nothing to predict: send spectra and/or covariates")
    if model.axis is None and spectra is not None and covariates is None:
        raise SoilCarbonError(f"the model {model.uri} uses covariates only ({', '.join(model.covariates)}); "
                              "send covariates")
    if ids is None:
        ids = spectra.ids if spectra is not None else covariates.index.to_numpy(dtype=object)
    ids = np.asarray([None if i is None else str(i) for i in ids], dtype=object)
    source = (spectra.source if spectra is not None else "") or "the request"
    plan = plan_spectra(model, spectra, source, covariates=covariates, covariate_source="the request",
                        covariates_option="")
    values = spectra.values if model.axis is not None else None
    prepared = prepare_chunk(model, plan, pd.DataFrame(index=range(0)), 0, ids, values)
    out = predict_prepared(model, prepared, level)
    out["problem"] = pd.array([prepared.reasons.get(row) for row in range(len(out))], dtype="string")
    return out


def predict_file(model: ServedModel | str, output, spectra=None, covariates=None, id_col: str = ID_COLUMN,
                 unit: str | None = None, level: float | None = None, chunk_size: int = DEFAULT_CHUNK_SIZE,
                 id_pattern: str | None = None, quiet: bool = True, workers: int | None = None,
                 problems_output=None, progress: Progress | None = None) -> PredictionSummary:
    """Predict every sample of ``spectra`` (CSV/Parquet table, OPUS file or folder) and/or a covariates
    table with ``model`` and write ``output`` (.csv or .parquet) atomically.

    With ``spectra`` and ``covariates`` both given, covariates are joined by id; with only
    ``covariates``, that table is the input (covariates-only models). ``problems_output`` (CSV)
    receives every sample that was not predicted, with the reason. ``progress`` replaces the
    terminal progress bar (e.g. the web page's, :mod:`soilcarbon.serving.web`); an exception it
    raises stops the job like any other, and no output is left.
    """
    from soilcarbon.atomic import atomic_path

    started = time.perf_counter()
    output = Path(output)
    kind = check_outputs(output, problems_output)
    if chunk_size < 1:
        raise SoilCarbonError(f"chunk size must be a positive number of rows, got {chunk_size}")
    if spectra is None and covariates is None:
        raise SoilCarbonError("nothing to predict: pass --spectra (and/or --covariates)")
    for given in (spectra, covariates):
        if given is not None and Path(given).exists() and output.exists() and Path(given).resolve() == output.resolve():
            raise SoilCarbonError(f"{output}: the output would overwrite the input; choose another output name")
    level_value = None if level is None else check_level(level)
    model = load_model(model) if isinstance(model, str) else model
    level_value = model.check_level(level_value)
    if model.axis is not None and spectra is None:
        raise SoilCarbonError(f"the model {model.uri} needs spectra ({len(model.axis)} points "
                              f"{format_axis_value(model.axis[0])}-{format_axis_value(model.axis[-1])} "
                              f"{model.unit}); pass --spectra")
    cov_table = None
    main_path = Path(spectra) if spectra is not None else Path(covariates)
    if spectra is not None and covariates is not None:
        if not model.covariates:
            raise SoilCarbonError(f"the model {model.uri} uses no covariates; drop --covariates")
        cov_table = read_covariates(Path(covariates), id_col)
    summary = PredictionSummary(model_uri=model.uri, output=str(output))
    workers = default_workers() if workers is None else max(1, int(workers))
    source = open_input(model, main_path, id_col, unit, id_pattern, chunk_size, cov_table,
                        str(covariates) if covariates else "")
    summary.add_problems(source.failures)
    if model.axis is not None and not source.plan.exact:  # say what was re-gridded
        summary.notes.append(f"{main_path}: " + check_resolution(source.plan.axis, source.plan.unit, model.axis,
                                                                 model.unit, str(main_path)))

    def work(item):
        start, frame, ids, values = item
        prepared = prepare_chunk(model, source.plan, frame, start, ids, values)
        return prepared, predict_prepared(model, prepared, level_value)

    from threadpoolctl import threadpool_limits

    # one BLAS/OpenMP thread per worker: the workers are the parallelism (OpenMP threads spinning
    # against each other made a nearest-neighbour query 8x slower on 2 busy cores)
    progress = Progress(quiet, "predicting", "bytes" if source.by_bytes else "") if progress is None else progress
    with threadpool_limits(limits=1), progress, atomic_path(output) as tmp:
        progress.start(source.total)
        source.on_bytes = lambda done: progress.update(completed=done, samples=summary.n_samples)
        with Writer(tmp, kind) as writer:
            seen_ids: set = set()
            for prepared, result in ordered_map(work, source.chunks(), workers, limit_openmp_threads):
                check_unique_ids(prepared.ids, seen_ids, main_path)
                writer.write(result)
                summary.n_samples += len(result)
                summary.n_predicted += int((~prepared.problem_rows).sum())
                summary.add_problems(prepared.problems)
                progress.update(completed=None if source.by_bytes else summary.n_samples, samples=summary.n_samples)
            if summary.n_predicted == 0:  # an output of empty rows is not a success
                raise nothing_predicted(main_path, summary)
    if problems_output is not None:
        write_problems(problems_output, summary.problems)
    summary.seconds = time.perf_counter() - started
    return summary


def check_unique_ids(ids, seen: set, source) -> None:
    """Refuse sample ids repeated within ``ids`` or already in ``seen`` (updated), naming them:
    two rows with one id give two numbers no one can tell apart (train and REST refuse them too)."""
    ids = ids.tolist() if isinstance(ids, np.ndarray) else list(ids)
    present = set(ids)
    present.discard(None)  # a sample without id is a problem of its own, not a duplicate
    repeated = present & seen
    if len(present) < len(ids) - ids.count(None):  # an id stands twice in this chunk: find which
        repeated |= {i for i, count in collections.Counter(ids).items() if count > 1 and i is not None}
    if repeated:
        shown = sorted(map(str, repeated))
        more = f" and {len(shown) - 5} more" if len(shown) > 5 else ""
        raise SoilCarbonError(f"{source}: duplicate sample id(s) {', '.join(shown[:5])}{more}; every sample needs "
                              "its own id")
    seen.update(present)


def nothing_predicted(source, summary: PredictionSummary) -> SoilCarbonError:
    """The error of a run that predicted no sample (nothing is written)."""
    if summary.n_samples == 0 and not summary.problems:
        return SoilCarbonError(f"{source}: no samples to predict; the input holds a header but no rows")
    first = f" (first: sample {summary.problems[0][0]}: {summary.problems[0][1]})" if summary.problems else ""
    return SoilCarbonError(f"{source}: none of the {max(summary.n_samples, summary.n_problems)} sample(s) could be "
                           f"predicted{first}; nothing was written")
