"""The prediction table: its columns and Arrow schema, the checks made before any work, and the
streaming :class:`Writer` that the local and Spark engines share.

The output (CSV or Parquet) is written into the temporary path of :func:`soilcarbon.atomic.atomic_path`:
a failure at any point, even in the last chunk, leaves no file under the output name.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from soilcarbon.errors import SoilCarbonError
from soilcarbon.models.layout import ID_COLUMN
from soilcarbon.models.soc_model import OUTPUT_COLUMNS as MODEL_OUTPUTS

OUTPUT_COLUMNS = [ID_COLUMN, *MODEL_OUTPUTS, "model_uri"]


class Writer:
    """Append output chunks to an open temporary CSV or Parquet file; as a context manager, closed
    when the block ends and aborted when it raises."""

    def __init__(self, tmp: Path, kind: str):
        self.tmp, self.kind = tmp, kind
        self.handle = self.writer = None

    def __enter__(self) -> "Writer":
        return self

    def __exit__(self, error_type, error, traceback) -> None:
        if error_type is not None:
            self.abort()
            return
        try:
            self.close()
        except BaseException:
            self.abort()
            raise

    def write(self, frame: pd.DataFrame) -> None:
        frame = frame[OUTPUT_COLUMNS]
        if self.kind == "csv":
            first = self.handle is None
            if first:
                self.handle = open(self.tmp, "w", newline="", encoding="utf-8")
            frame.to_csv(self.handle, header=first, index=False)
            return
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pandas(frame, schema=OUTPUT_SCHEMA(), preserve_index=False)
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.tmp, table.schema)
        self.writer.write_table(table)

    def close(self) -> None:
        if self.kind == "csv":
            if self.handle is None:
                self.handle = open(self.tmp, "w", newline="", encoding="utf-8")
                pd.DataFrame(columns=OUTPUT_COLUMNS).to_csv(self.handle, index=False)
            self.handle.close()
        else:
            if self.writer is None:
                import pyarrow as pa
                import pyarrow.parquet as pq

                self.writer = pq.ParquetWriter(self.tmp, OUTPUT_SCHEMA())
                self.writer.write_table(pa.Table.from_pylist([], schema=OUTPUT_SCHEMA()))
            self.writer.close()

    def abort(self) -> None:
        try:
            if self.handle is not None:
                self.handle.close()
            if self.writer is not None:
                self.writer.close()
        except Exception:  # the temporary file is removed anyway
            pass


def OUTPUT_SCHEMA():
    import pyarrow as pa

    return pa.schema([(ID_COLUMN, pa.string()), ("prediction", pa.float64()), ("lower", pa.float64()),
                      ("upper", pa.float64()), ("level", pa.float64()), ("in_domain", pa.bool_()),
                      ("domain_score", pa.float64()), ("model_uri", pa.string())])


def output_kind(path: Path) -> str:
    """``csv`` or ``parquet``: a prediction table is written as its suffix says."""
    from soilcarbon.atomic import output_kind as kind_of

    return kind_of(path, ("csv", "parquet"))


def check_outputs(output: Path | None, problems_output=None) -> str | None:
    """Check the prediction table (unless None: a remote output) and the problems report (CSV)
    before any work; returns the table's kind."""
    from soilcarbon.atomic import check_output

    kind = None if output is None else check_output(output, ("csv", "parquet"))
    if problems_output is not None:
        if output_kind(problems_output) != "csv":
            raise SoilCarbonError(f"{problems_output}: the problems report is a CSV file; name it .csv")
        check_output(problems_output, ("csv",))
    return kind


def write_problems(path, problems: list[tuple[str, str]]) -> None:
    """Write the problems report (CSV: ``sample_id``, ``reason``) atomically."""
    from soilcarbon.atomic import atomic_path

    with atomic_path(Path(path)) as tmp:
        pd.DataFrame(problems, columns=[ID_COLUMN, "reason"]).to_csv(tmp, index=False)
