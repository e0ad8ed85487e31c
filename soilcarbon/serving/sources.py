"""Opened inputs: CSV / Parquet tables streamed in chunks, OPUS files and folders read whole.

- Large CSV / Parquet tables are read in chunks (``pandas.read_csv(chunksize=)``,
  ``pyarrow.parquet.ParquetFile.iter_batches``; numeric Parquet spectra go straight from Arrow to a
  float matrix, :func:`_batch_matrix`), so memory does not grow with the input. OPUS files and
  folders are read whole (one spectrum a file); a file that cannot be read is a per-sample problem.
- A file that cannot be read or parsed, or a row with the wrong number of fields, stops the job
  with a :class:`SoilCarbonError` naming the file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pandas as pd

from soilcarbon.errors import SoilCarbonError
from soilcarbon.models.layout import ID_COLUMN
from soilcarbon.models.matrix import InputPlan, plan_input, plan_spectra
from soilcarbon.serving.model import ServedModel
from soilcarbon.spectral.spectra import PARQUET_UNIT_KEY

#: Rows per chunk: large enough to amortize per-chunk costs, small enough that a chunk's working
#: memory inside the model (~15x its 28 MB of NIR values) stays well under a gigabyte.
DEFAULT_CHUNK_SIZE = 5_000
CSV_SUFFIXES = (".csv", ".txt", ".tsv")
PARQUET_SUFFIXES = (".parquet", ".pq")


@dataclass
class InputSource:
    """An opened input: its plan against the model and a generator of ``(start, frame, ids, values)``."""

    plan: InputPlan
    generate: Callable[["InputSource"], Iterator]
    total: float | None  # rows, or bytes when ``by_bytes``
    by_bytes: bool = False
    failures: list[tuple[str, str]] = field(default_factory=list)  # unreadable OPUS files
    on_bytes: Callable[[int], None] | None = None

    def chunks(self) -> Iterator:
        return self.generate(self)


def open_input(model: ServedModel, path: Path, id_col: str = ID_COLUMN, unit: str | None = None,
               id_pattern: str | None = None, chunk_size: int = DEFAULT_CHUNK_SIZE,
               cov_table: pd.DataFrame | None = None, cov_source: str = "") -> InputSource:
    """Open a CSV/Parquet table (streamed) or an OPUS file/folder (read whole) and plan it."""
    path = Path(path)
    if not path.exists():
        raise SoilCarbonError(f"{path}: no such file or folder; check the path")
    suffix = path.suffix.lower()
    if path.is_file() and suffix in CSV_SUFFIXES:
        plan = plan_input(model, _csv_header(path), str(path), id_col, unit, None, cov_table, cov_source, 2)

        def generate_csv(source):
            callback = lambda done: source.on_bytes(done) if source.on_bytes else None  # noqa: E731
            for start, frame in _csv_chunks(path, plan, chunk_size, callback):
                yield start, frame, None, None

        return InputSource(plan, generate_csv, path.stat().st_size, by_bytes=True)
    if path.is_file() and suffix in PARQUET_SUFFIXES:
        pfile = open_parquet(path)
        names = [str(n) for n in pfile.schema_arrow.names]
        plan = plan_input(model, names, str(path), id_col, unit, stored_unit(pfile), cov_table, cov_source, 0)
        wanted = set([plan.id_col] + plan.spectral_columns + plan.covariate_columns)
        columns = [n for n in names if n in wanted]

        def generate_parquet(source):
            for start, frame, values in _parquet_chunks(pfile, path, plan, chunk_size, columns):
                yield start, frame, None, values

        return InputSource(plan, generate_parquet, pfile.metadata.num_rows)
    # OPUS file or folder: read whole (one spectrum a file); unreadable files are per-sample problems
    from soilcarbon.spectral.readers import read_spectra

    if model.axis is None:
        raise SoilCarbonError(f"{path}: the model {model.uri} uses covariates only; pass a covariates table")
    spectra = read_spectra(path, id_col=id_col, unit=unit, id_pattern=id_pattern, allow_nan=True, on_error="skip")
    failures = list((getattr(spectra, "detected", {}) or {}).get("failures", []))
    plan = plan_spectra(model, spectra, str(path), id_col, cov_table, cov_source)

    def generate_spectra(source):
        empty = pd.DataFrame(index=range(0))
        for start in range(0, len(spectra), chunk_size):
            stop = min(start + chunk_size, len(spectra))
            yield start, empty, spectra.ids[start:stop], spectra.values[start:stop]

    return InputSource(plan, generate_spectra, len(spectra), failures=failures)


def _csv_chunks(path: Path, plan: InputPlan, chunk_size: int, on_bytes: Callable[[int], None] | None):
    from soilcarbon.spectral.readers import sniff_csv

    delimiter, decimal = sniff_csv(path)
    with open(path, "rb") as handle:
        reader = None
        start = 0
        while True:
            try:  # the reader itself parses a first block: its errors are the file's too
                reader = reader or pd.read_csv(handle, sep=delimiter, decimal=decimal, chunksize=chunk_size,
                                               dtype={plan.id_col: str}, encoding="utf-8-sig")
                chunk = next(reader)
            except StopIteration:
                return
            except UnicodeDecodeError as exc:
                raise SoilCarbonError(f"{path}: not UTF-8 text after row {start} ({exc.reason} at byte {exc.start}); "
                                      "save the table as UTF-8 CSV") from exc
            except (pd.errors.ParserError, ValueError) as exc:
                text = " ".join(str(exc).split())
                raise SoilCarbonError(f"{path}: cannot parse the table after row {start} ({text}); "
                                      "fix the file: every row needs the same number of fields") from exc
            chunk.columns = [str(c) for c in chunk.columns]
            if on_bytes is not None:
                on_bytes(handle.tell())
            yield start, chunk
            start += len(chunk)


def _parquet_chunks(pfile, path: Path, plan: InputPlan, chunk_size: int, columns: list[str]):
    """``(start, frame, values)`` per record batch: ``values`` is the matrix of the spectral columns
    (:func:`_batch_matrix`) and ``frame`` holds the other columns, or ``values`` is None and
    ``frame`` holds every column."""
    start = 0
    batches = pfile.iter_batches(batch_size=chunk_size, columns=columns)
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except Exception as exc:  # pyarrow raises several types for damaged row groups
            raise SoilCarbonError(f"{path}: cannot read the Parquet data after row {start} "
                                  f"({type(exc).__name__}: {' '.join(str(exc).split())[:200]}); write the file again") from exc
        values = _batch_matrix(batch, plan.spectral_columns)
        if values is not None:
            spectral = set(plan.spectral_columns)
            batch = batch.select([i for i, name in enumerate(batch.schema.names) if name not in spectral])
        frame = batch.to_pandas()
        frame.columns = [str(c) for c in frame.columns]
        yield start, frame, values
        start += len(frame)


def _batch_matrix(batch, columns: list[str]) -> np.ndarray | None:
    """The float matrix (rows x ``columns``) of a record batch, or None unless every one of
    ``columns`` is an integer or float32/64 column (other types go through pandas, which names
    non-numeric cells).

    Arrow's ``RecordBatch.to_tensor`` (nulls become NaN; column-major, so the per-column buffers
    are copied as they are) costs one copy of the values: about a fifth of ``to_pandas`` on 700
    columns, which also makes a frame only to be converted to the same matrix.
    """
    import pyarrow as pa

    names = batch.schema.names
    if not columns or len(set(names)) != len(names):
        return None
    numeric = (pa.float64(), pa.float32())
    if not all(t in numeric or pa.types.is_integer(t) for t in (batch.schema.field(c).type for c in columns)):
        return None
    return np.asarray(batch.select(columns).to_tensor(null_to_nan=True, row_major=False), dtype=float)


def open_parquet(path: Path):
    """A ``pyarrow.parquet.ParquetFile`` for streaming ``path``, or a :class:`SoilCarbonError` naming it."""
    import pyarrow.parquet as pq

    if path.stat().st_size == 0:
        raise SoilCarbonError(f"{path}: the file is empty; write the spectra table again")
    try:
        # pre_buffer=False: with pre-buffering, iter_batches keeps every chunk read so far alive
        # (pyarrow 25: +32 MB per 5,000 NIR rows), which defeats streaming
        return pq.ParquetFile(path, pre_buffer=False)
    except Exception as exc:  # pyarrow raises several types for broken files
        raise SoilCarbonError(f"{path}: not a readable Parquet file ({type(exc).__name__}: {exc}); "
                              "write it again") from exc


def stored_unit(pfile) -> str | None:
    """The spectral unit soilcarbon stores in a Parquet file's metadata, if any."""
    stored = (pfile.schema_arrow.metadata or {}).get(PARQUET_UNIT_KEY)
    return stored.decode() if stored else None


def _csv_header(path: Path) -> list[str]:
    """The header line's column names as written (``csv`` module: pandas would rename a repeated
    ``1500`` to ``1500.1``, a new axis point)."""
    import csv

    from soilcarbon.spectral.readers import sniff_csv

    if path.stat().st_size == 0:
        raise SoilCarbonError(f"{path}: the file is empty; export the table with a header row")
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            header = next(csv.reader(handle, delimiter=sniff_csv(path)[0]), None)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise SoilCarbonError(f"{path}: cannot read the header ({' '.join(str(exc).split())}); "
                              "save the table as UTF-8 CSV with a header row") from exc
    if not header or not any(name.strip() for name in header):
        raise SoilCarbonError(f"{path}: the first line is empty; export the table with a header row")
    return list(header)


def read_covariates(path: Path, id_col: str) -> pd.DataFrame:
    """An id-indexed covariates table (read with :func:`soilcarbon.spectral.lab.read_lab`)."""
    from soilcarbon.spectral.lab import read_lab

    table = read_lab(path, id_col)
    return table.set_index(id_col)
