"""Scoring on Spark (``soilcarbon predict --engine spark``) for inputs that outgrow one machine.

The model is applied with ``mlflow.pyfunc.spark_udf`` (MLflow ships the model to the executors
and calls it on Arrow batches); the input is a Parquet table or dataset read by Spark. Before the
UDF, a ``mapInPandas`` step runs the same per-chunk preparation as the local engine
(:func:`soilcarbon.models.matrix.prepare_chunk`: alignment to the model axis, per-sample
problems), so both engines give the same numbers and the same reasons.

- Local mode (default, ``local[N]``) needs only ``pip install 'soilcarbon[spark]'`` and Java 17+.
  On a cluster, run the same command through ``spark-submit`` (the master comes from it), e.g.
  ``spark-submit --master yarn $(which soilcarbon) predict --engine spark ...``; the model URI must
  be reachable from the driver (``MLFLOW_TRACKING_URI``).
- Output to a local path: Spark writes a staging folder beside it, which is then streamed into one
  CSV or Parquet file through :func:`atomic_path` and removed, so the output appears whole or not
  at all, in input order. Output to a URI (``s3a://``, ``hdfs://``...): Spark writes a Parquet
  dataset there with its own commit protocol.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
import time
import uuid
from pathlib import Path

import pandas as pd

from soilcarbon.errors import SoilCarbonError
from soilcarbon.models.layout import ID_COLUMN
from soilcarbon.models.matrix import plan_input, prepare_chunk
from soilcarbon.models.soc_model import OUTPUT_COLUMNS as MODEL_OUTPUTS
from soilcarbon.progress import Progress
from soilcarbon.serving.batch import KEEP_PROBLEMS, PredictionSummary, nothing_predicted
from soilcarbon.serving.model import check_level, load_model
from soilcarbon.serving.outputs import OUTPUT_COLUMNS, Writer, check_outputs, write_problems
from soilcarbon.serving.sources import (
    DEFAULT_CHUNK_SIZE,
    PARQUET_SUFFIXES,
    open_parquet,
    read_covariates,
    stored_unit,
)

PROBLEM_COLUMN = "_problem"
RESULT_TYPE = ("prediction double, lower double, upper double, level double, in_domain boolean, "
               "domain_score double")


def spark_available() -> str | None:
    """None when pyspark and Java are usable, else the reason they are not."""
    try:
        import pyspark  # noqa: F401
    except ImportError:
        return "pyspark is not installed: pip install 'soilcarbon[spark]'"
    java_home = os.environ.get("JAVA_HOME")
    if not (java_home and Path(java_home, "bin", "java").exists()) and shutil.which("java") is None:
        return "Java is not installed (Spark needs Java 17 or newer): install a JDK or set JAVA_HOME"
    return None


def spark_session(master: str | None = None, shuffle_partitions: int | None = None):
    """The active Spark session, or a new one on the master chosen by :func:`_master`."""
    from pyspark.sql import SparkSession

    import warnings

    warnings.filterwarnings("ignore", message=".*PySpark does not yet fully support pandas.*")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    # Python workers: pyspark's pandas-version advice is not for our users
    os.environ.setdefault("PYTHONWARNINGS", "ignore::FutureWarning")
    builder = SparkSession.builder.appName("soilcarbon-predict")
    master = _master(master)
    if master:
        builder = builder.master(master)
        if master.startswith("local"):
            os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")  # local mode: stay on the loopback interface
    builder = (builder.config("spark.ui.enabled", "false")
               .config("spark.ui.showConsoleProgress", "false")
               .config("spark.driver.extraJavaOptions", f"-Dlog4j2.configurationFile={_log4j_config().as_uri()}")
               .config("spark.sql.shuffle.partitions", str(shuffle_partitions or (os.cpu_count() or 1))))
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def _master(master: str | None) -> str | None:
    """The master to set: ``master``; none under ``spark-submit`` (its ``--master`` applies); else
    ``$SOILCARBON_SPARK_MASTER``, ``$MASTER`` or ``local[N]`` with N = the CPU count."""
    if master:
        return master
    if os.environ.get("PYSPARK_GATEWAY_PORT"):  # the driver was started by spark-submit
        return None
    return os.environ.get("SOILCARBON_SPARK_MASTER") or os.environ.get("MASTER") or f"local[{os.cpu_count() or 1}]"


LOG4J2 = """status = error
rootLogger.level = error
rootLogger.appenderRef.stderr.ref = stderr
appender.console.type = Console
appender.console.name = stderr
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = spark %p %c{1}: %m%n
"""


def _log4j_config() -> Path:
    """A log4j2 configuration that keeps Spark's JVM quiet except for errors."""
    import tempfile

    path = Path(tempfile.gettempdir()) / "soilcarbon-spark-log4j2.properties"
    if not path.exists() or path.read_text() != LOG4J2:
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(LOG4J2)
        os.replace(tmp, path)
    return path


def _is_uri(text: str) -> bool:
    return "://" in text and not text.startswith("file://")


def predict_spark(model, spectra, output, covariates=None, id_col: str = ID_COLUMN, unit: str | None = None,
                  level: float | None = None, chunk_size: int = DEFAULT_CHUNK_SIZE, problems_output=None, quiet: bool = True,
                  spark=None, master: str | None = None) -> PredictionSummary:
    """Score a Parquet table with ``mlflow.pyfunc.spark_udf`` and write ``output`` (see the module doc)."""
    from soilcarbon.atomic import atomic_path

    started = time.perf_counter()
    reason = spark_available()
    if reason:
        raise SoilCarbonError(f"--engine spark: {reason}")
    spectra_text = str(spectra)
    if (not _is_uri(spectra_text) and Path(spectra_text).suffix.lower() not in PARQUET_SUFFIXES
            and not Path(spectra_text).is_dir()):
        raise SoilCarbonError(f"{spectra_text}: --engine spark reads Parquet (a .parquet file or dataset folder); "
                              "convert the table with `soilcarbon spectra convert` or use --engine local")
    if not _is_uri(spectra_text) and not Path(spectra_text).exists():
        raise SoilCarbonError(f"{spectra_text}: no such file or folder; check the path")
    output_text = str(output)
    remote_output = _is_uri(output_text)
    kind = check_outputs(None if remote_output else Path(output_text), problems_output) or "parquet"
    level_value = None if level is None else check_level(level)
    model = load_model(model) if isinstance(model, str) else model
    level_value = model.check_level(level_value)
    cov_table = read_covariates(Path(covariates), id_col) if covariates is not None else None
    stored_unit = _stored_unit(spectra_text)

    with Progress(quiet, "scoring on Spark") as progress:
        progress.start(None)
        spark = spark or spark_session(master)
        frame = _read(spark, spectra_text)
        plan = plan_input(model, list(frame.columns), spectra_text, id_col, unit, stored_unit, cov_table,
                          str(covariates) if covariates else "", line_offset=-1)
        result = _score(spark, model, plan, frame, level_value, chunk_size)
        summary = PredictionSummary(model_uri=model.uri, output=output_text, engine="spark")
        if remote_output:
            result.drop(PROBLEM_COLUMN).write.mode("errorifexists").parquet(output_text)
            written = spark.read.parquet(output_text)
            summary.n_samples = written.count()
            problems = result.where(result[PROBLEM_COLUMN].isNotNull()).select(ID_COLUMN, PROBLEM_COLUMN)
            summary.problems = [(r[0], r[1]) for r in problems.limit(KEEP_PROBLEMS).collect()]
            summary.n_problems = problems.count()
        else:
            staging = Path(output_text).parent / f".{Path(output_text).name}.spark-{uuid.uuid4().hex[:8]}"
            try:
                result.write.parquet(str(staging))
                with atomic_path(Path(output_text)) as tmp:
                    _merge(staging, tmp, kind, summary)
                    if summary.n_samples == summary.n_problems:
                        raise nothing_predicted(spectra_text, summary)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        summary.n_predicted = summary.n_samples - summary.n_problems
    if problems_output is not None:
        write_problems(problems_output, summary.problems)
    summary.seconds = time.perf_counter() - started
    return summary


def _stored_unit(path: str) -> str | None:
    """The unit soilcarbon stores in Parquet metadata, for a local file."""
    if _is_uri(path) or not Path(path).is_file():
        return None
    return stored_unit(open_parquet(Path(path)))


def _read(spark, path: str):
    from pyspark.errors import PySparkException

    try:
        return spark.read.parquet(path)
    except PySparkException as exc:
        raise SoilCarbonError(f"{path}: Spark cannot read it as Parquet ({str(exc).splitlines()[0][:200]})") from exc


def _quoted(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def _score(spark, model, plan, frame, level: float, chunk_size: int):
    """The scored Spark DataFrame: sample_id, the model outputs, model_uri and the problem reason."""
    import mlflow.pyfunc
    from pyspark.sql import functions as F
    from pyspark.sql.types import DoubleType, StringType, StructField, StructType

    columns = model.columns
    light = dataclasses.replace(model, pyfunc=None)  # what the executors need to prepare input
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(int(chunk_size)))
    needed = [plan.id_col] + plan.spectral_columns + plan.covariate_columns
    frame = frame.select(*[F.col(_quoted(c)) for c in dict.fromkeys(needed)])
    schema = StructType([StructField(ID_COLUMN, StringType())]
                        + [StructField(c, DoubleType()) for c in columns]
                        + [StructField(PROBLEM_COLUMN, StringType())])

    def prepare(batches):
        for batch in batches:
            batch.columns = [str(c) for c in batch.columns]
            prepared = prepare_chunk(light, plan, batch)
            out = pd.DataFrame(prepared.X, columns=columns)
            out.insert(0, ID_COLUMN, pd.Series(prepared.ids, dtype=object))
            out[PROBLEM_COLUMN] = pd.Series([prepared.reasons.get(row) for row in range(len(out))], dtype=object)
            yield out

    prepared = frame.mapInPandas(prepare, schema)
    udf = mlflow.pyfunc.spark_udf(spark, model.uri, result_type=RESULT_TYPE, env_manager="local",
                                  params={"level": float(level)})
    inputs = F.struct(*[F.col(_quoted(c)) for c in [ID_COLUMN] + columns])
    scored = prepared.select(F.col(ID_COLUMN), udf(inputs).alias("out"), F.col(PROBLEM_COLUMN))
    return scored.select(F.col(ID_COLUMN), *[F.col(f"out.{c}").alias(c) for c in MODEL_OUTPUTS],
                         F.lit(model.uri).alias("model_uri"), F.col(PROBLEM_COLUMN))


def _merge(staging: Path, tmp: Path, kind: str, summary: PredictionSummary) -> None:
    """Stream Spark's part files (in order) into one output file; collect the problems."""
    import pyarrow.parquet as pq

    parts = sorted(p for p in staging.iterdir() if p.name.startswith("part-") and p.suffix == ".parquet")
    with Writer(tmp, kind) as writer:
        for part in parts:
            for batch in pq.ParquetFile(part, pre_buffer=False).iter_batches(batch_size=65536):
                frame = batch.to_pandas()
                problem = frame[PROBLEM_COLUMN].notna().to_numpy()
                if problem.any():
                    summary.add_problems(list(zip(frame.loc[problem, ID_COLUMN].astype(str),
                                                  frame.loc[problem, PROBLEM_COLUMN])))
                frame["in_domain"] = frame["in_domain"].fillna(False).astype(bool)
                writer.write(frame[OUTPUT_COLUMNS])
                summary.n_samples += len(frame)
