"""Readers: wide CSV / Parquet tables, Bruker OPUS files and folders of them -> :class:`Spectra`.

- Tables are parsed by Apache Arrow (``pyarrow.csv`` / ``pyarrow.parquet``: multithreaded, typed,
  UTF-8 with BOM); the wide-table conventions (numeric or prefixed headers, unit detection) are
  those of :meth:`Spectra.from_frame`.
- OPUS files are parsed by ``brukeropus`` (J. Duran, https://github.com/joshduran/brukeropus):
  ``read_opus(path)`` returns an ``OPUSFile`` whose data blocks (``a`` absorbance, ``t``,
  ``r``, ``sm``, ``rf`` ...) carry ``x`` (built from the FXV/LXV/NPT parameters), ``y`` (scaled by
  CSF) and the x unit ``dxu``. We only add what it leaves to the caller: turning its silent
  failures (a falsy object for non-OPUS files, ``KeyError``/``struct.error`` or blocks in
  ``parse_error_blocks`` for damaged ones) into one clear :class:`SoilCarbonError`, the sample id
  rule, and aligning a folder onto one axis.

Which files of a folder are OPUS files: every regular, non-hidden file that starts with the OPUS
signature (bytes ``0a 0a fe fe``), plus every file with a numeric extension (``.0``, ``.1``,
``.1001`` -- the OPUS naming convention), which is reported as unreadable when it is not a valid
OPUS file. Other files (``lab.csv``, ``README.txt`` ...) are ignored. Sub-folders are not
searched.

:func:`read_spectra` is the one entry point the rest of the package uses.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from soilcarbon.errors import SoilCarbonError
from soilcarbon.spectral.spectra import Spectra, check_unique_headers, check_unit, format_axis_value

TABLE_SUFFIXES = {".csv": "csv", ".txt": "csv", ".tsv": "csv", ".parquet": "parquet", ".pq": "parquet"}
OPUS_MAGIC = b"\n\n\xfe\xfe"
#: User-facing block names -> brukeropus data keys.
OPUS_BLOCKS = {
    "absorbance": "a", "transmittance": "t", "reflectance": "r", "sample": "sm", "reference": "rf",
    "kubelka-munk": "km", "atr": "atr", "log-reflectance": "logr",
}
_NUMERIC_SUFFIX = re.compile(r"^\.[0-9]+$")


# ------------------------------------------------------------------------------------------ tables
_COMMA_DECIMAL = re.compile(rb"^\s*[+-]?\d+,\d+([eE][+-]?\d+)?\s*$")
_POINT_DECIMAL = re.compile(rb"^\s*[+-]?(\d+\.\d*|\.\d+)([eE][+-]?\d+)?\s*$")


def sniff_csv(path: Path) -> tuple[str, str]:
    """``(delimiter, decimal mark)`` of a delimited text file, the one rule every CSV reader uses.

    The delimiter is the most frequent of ``,`` ``;`` tab in the header line. With ``;`` or tab,
    the decimal mark is ``,`` when the data lines (first 64 kB) hold more numbers written with a
    decimal comma (``0,3127``) than with a decimal point: the CSV export of a European locale.
    """
    with open(path, "rb") as handle:
        head = handle.read(65536)
    lines = head.split(b"\n")
    first = lines[0]
    counts = {d: first.count(d.encode()) for d in (",", "\t", ";")}
    best = max(counts, key=counts.get)
    delimiter = best if counts[best] else ","
    decimal = "."
    if delimiter != ",":
        fields = [f for line in lines[1:-1] for f in line.split(delimiter.encode())]
        comma = sum(1 for f in fields if _COMMA_DECIMAL.match(f))
        point = sum(1 for f in fields if _POINT_DECIMAL.match(f))
        decimal = "," if comma > point else "."
    return delimiter, decimal


def _read_csv_frame(path: Path, id_col: str):
    import pyarrow as pa
    import pyarrow.csv as pa_csv

    if path.stat().st_size == 0:
        raise SoilCarbonError(f"{path}: the file is empty; export the spectra with a header row")
    delimiter, decimal = sniff_csv(path)
    try:
        table = pa_csv.read_csv(
            path,
            parse_options=pa_csv.ParseOptions(delimiter=delimiter),
            convert_options=pa_csv.ConvertOptions(column_types={id_col: pa.string()}, decimal_point=decimal),
        )
    except pa.ArrowInvalid as exc:
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "Empty CSV" in text:
            raise SoilCarbonError(f"{path}: the file is empty; export the spectra with a header row") from exc
        if "UTF8" in text.upper():
            raise SoilCarbonError(f"{path}: not UTF-8 text ({text}); save the table as UTF-8 CSV") from exc
        raise SoilCarbonError(
            f"{path}: cannot parse the table ({text}); check that every row has the same number of fields"
        ) from exc
    return table


def _table_to_frame(table, id_col: str, path: Path):
    """Arrow table -> pandas, after checking headers; all-empty columns become float."""
    import pyarrow as pa

    check_unique_headers(table.column_names, str(path))
    for position, column in enumerate(table.schema):
        if pa.types.is_null(column.type):
            target = pa.string() if column.name == id_col else pa.float64()
            table = table.set_column(position, column.name, table.column(position).cast(target))
    return table.to_pandas()


def read_table(path, id_col: str = "sample_id", unit: str | None = None, allow_nan: bool = False) -> Spectra:
    """Read a wide CSV (``.csv``/``.txt``/``.tsv``) or Parquet (``.parquet``/``.pq``) table.

    Spectral columns have numeric headers, optionally prefixed (``wl_1100``, ``wn_4000``); the
    id column is ``id_col``; every other column becomes metadata. The unit is ``unit``, else the
    prefix's, else guessed from the axis; ``spectra.detected`` records how.
    """
    path = Path(path)
    stored_unit = False
    kind = TABLE_SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise SoilCarbonError(
            f"{path}: unknown table type {path.suffix!r}; use .csv, .txt, .tsv, .parquet or .pq"
        )
    _check_file(path)
    try:
        if kind == "csv":
            table = _read_csv_frame(path, id_col)
        else:
            import pyarrow.parquet as pq

            if path.stat().st_size == 0:
                raise SoilCarbonError(f"{path}: the file is empty; write the spectra table again")
            try:
                pfile = pq.ParquetFile(path)
                table = pfile.read()
            except Exception as exc:  # pyarrow raises several types for broken files
                raise SoilCarbonError(
                    f"{path}: not a readable Parquet file ({type(exc).__name__}: {exc}); write it again"
                ) from exc
            stored = (table.schema.metadata or {}).get(b"soilcarbon.unit")
            if unit is None and stored:
                unit, stored_unit = stored.decode(), True
    except OSError as exc:
        raise SoilCarbonError(f"{path}: cannot read the file ({exc.strerror or exc}); check its permissions") from exc
    frame = _table_to_frame(table, id_col, path)
    if id_col in frame.columns:
        ids = frame[id_col].astype("string").str.strip()
        frame[id_col] = ids.mask(ids == "")  # an empty id is a missing id
    spectra = Spectra.from_frame(frame, id_col=id_col, unit=unit, source=str(path), allow_nan=allow_nan)
    spectra.detected = dict(spectra.detected, format=kind, files=1, failures=[])
    if stored_unit:
        spectra.detected["unit_from"] = "stored in the Parquet file"
    return spectra


def _check_file(path: Path) -> None:
    if not path.exists():
        raise SoilCarbonError(f"{path}: no such file or folder; check the path")
    if not path.is_file():
        raise SoilCarbonError(f"{path}: not a regular file")


# ------------------------------------------------------------------------------------------- OPUS
def opus_sample_id(path, id_pattern: str | None = None) -> str:
    """The sample id of an OPUS file, taken from its name.

    Default rule: the text before the first ``_`` (``WHRC11094_S_002_150.0`` -> ``WHRC11094``),
    or the name without its extension when there is no ``_``. With ``id_pattern``, a regular
    expression with exactly one group searched in the file name: the group is the id.
    """
    name = Path(path).name
    if id_pattern is None:
        if "_" in name:
            sample = name.split("_", 1)[0]
        else:
            sample = name.rsplit(".", 1)[0] if "." in name[1:] else name
    else:
        pattern = _compile_id_pattern(id_pattern)
        match = pattern.search(name)
        if match is None or not match.group(1):
            raise SoilCarbonError(
                f"{path}: the id pattern {id_pattern!r} does not match the file name {name!r}; "
                "fix the pattern or rename the file"
            )
        sample = match.group(1)
    sample = sample.strip()
    if not sample:
        raise SoilCarbonError(f"{path}: no sample id in the file name {name!r}; rename the file or pass an id pattern")
    return sample


def _compile_id_pattern(id_pattern: str) -> re.Pattern:
    try:
        pattern = re.compile(id_pattern)
    except re.error as exc:
        raise SoilCarbonError(f"id pattern {id_pattern!r} is not a valid regular expression ({exc})") from exc
    if pattern.groups != 1:
        raise SoilCarbonError(
            f"id pattern {id_pattern!r} must have exactly one group (...) marking the id, it has {pattern.groups}"
        )
    return pattern


def _block_key(block: str) -> tuple[str, str]:
    text = str(block).strip().lower()
    if text in OPUS_BLOCKS:
        return text, OPUS_BLOCKS[text]
    for name, key in OPUS_BLOCKS.items():
        if text == key:
            return name, key
    raise SoilCarbonError(f"unknown OPUS block {block!r}; use one of {', '.join(OPUS_BLOCKS)}")


def _load_opus(path: Path, block: str):
    """(axis in cm-1, values float64) of one block of one OPUS file, or a SoilCarbonError."""
    from brukeropus import read_opus as bruker_read_opus

    name, key = _block_key(block)
    _check_file(path)
    size = path.stat().st_size
    if size == 0:
        raise SoilCarbonError(f"{path}: the file is empty; export the spectrum from OPUS again or remove it")
    try:
        with open(path, "rb") as handle:
            magic = handle.read(4)
    except OSError as exc:
        raise SoilCarbonError(f"{path}: cannot read the file ({exc.strerror or exc}); check its permissions") from exc
    if magic != OPUS_MAGIC:
        raise SoilCarbonError(
            f"{path}: not a Bruker OPUS file (it does not start with the OPUS signature); "
            "remove it or export the spectrum from OPUS again"
        )
    damaged = (f"{path}: damaged or truncated OPUS file ({{}}); copy it again from the instrument or "
               "remove it")
    try:
        opus = bruker_read_opus(str(path))
    except RecursionError as exc:
        raise SoilCarbonError(damaged.format("unparseable structure")) from exc
    except Exception as exc:  # brukeropus raises KeyError, struct.error, ValueError... on damaged files
        kind = type(exc).__name__
        kind = f"{type(exc).__module__}.{kind}" if kind == "error" else kind
        raise SoilCarbonError(damaged.format(f"{kind}: {exc}")) from exc
    if not opus or not opus.all_data_keys:
        raise SoilCarbonError(damaged.format("no readable data blocks"))
    broken = list(opus.parse_error_blocks) + [
        entry for entry in opus.directory.toc if entry["start"] + entry["size"] > size
    ]
    if broken:
        raise SoilCarbonError(damaged.format(f"{len(broken)} block(s) cannot be parsed or end past the file end"))
    if key not in opus.all_data_keys:
        present = ", ".join(getattr(opus, k).label for k in opus.all_data_keys) or "none"
        raise SoilCarbonError(
            f"{path}: no {name} block in this OPUS file (it holds: {present}); choose another block "
            "or re-export the file with the block saved"
        )
    if key in opus.series_keys:
        raise SoilCarbonError(f"{path}: the {name} block is a series of spectra, which is not supported; "
                              "export single spectra")
    data = getattr(opus, key)
    npt = int(data.params.npt)
    values = np.asarray(data.y, dtype=np.float64)
    if len(values) != npt or npt < 2:
        raise SoilCarbonError(damaged.format(f"{name} block has {len(values)} of {npt} points"))
    dxu = str(data.params.dxu).upper()
    if dxu not in ("WN", "MI", "LGW"):
        raise SoilCarbonError(
            f"{path}: the {name} block's x axis is in {dxu!r}, not wavenumbers or wavelengths; "
            "export a spectrum, not an interferogram"
        )
    axis = np.asarray(data.wn, dtype=np.float64)
    return axis, values


def _opus_spectra(path: Path, axis, values, sample: str, unit: str | None, allow_nan: bool) -> Spectra:
    if unit is not None and check_unit(unit, str(path)) != "cm-1":
        raise SoilCarbonError(
            f"{path}: OPUS files store their axis in wavenumbers (cm-1), not {unit}; "
            "drop the unit option or pass cm-1"
        )
    import pandas as pd

    spectra = Spectra(ids=[sample], axis=axis, unit="cm-1", values=values[None, :],
                      meta=pd.DataFrame({"source_file": [path.name]}), source=str(path), allow_nan=allow_nan)
    return spectra


def read_opus(path, block: str = "absorbance", id_pattern: str | None = None, unit: str | None = None,
              allow_nan: bool = False) -> Spectra:
    """Read one block (default absorbance) of one Bruker OPUS file; axis in cm-1.

    The sample id comes from the file name (:func:`opus_sample_id`); ``meta`` holds the file
    name in ``source_file``.
    """
    path = Path(path)
    sample = opus_sample_id(path, id_pattern)
    axis, values = _load_opus(path, block)
    spectra = _opus_spectra(path, axis, values, sample, unit, allow_nan)
    spectra.detected = {"unit": "cm-1", "unit_from": "OPUS file parameters", "prefix": "",
                        "format": "opus", "files": 1, "failures": []}
    return spectra


def opus_files(folder) -> list[Path]:
    """The files of a folder that count as OPUS files (see the module docstring), sorted by name."""
    folder = Path(folder)
    found = []
    for path in sorted(folder.iterdir(), key=lambda p: p.name):
        if path.name.startswith(".") or not path.is_file():
            continue
        if _NUMERIC_SUFFIX.match(path.suffix):
            found.append(path)
            continue
        try:
            with open(path, "rb") as handle:
                if handle.read(4) == OPUS_MAGIC:
                    found.append(path)
        except OSError:
            continue
    return found


def read_opus_folder(folder, id_pattern: str | None = None, block: str = "absorbance",
                     on_error: str = "raise", unit: str | None = None,
                     allow_nan: bool = False) -> tuple[Spectra, list[tuple[str, str]]]:
    """Read every OPUS file of a folder into one :class:`Spectra` on the first file's axis.

    Files are taken in name order. A file whose axis differs from the first file's (another
    resolution, a shifted range) is resampled onto it by linear interpolation when its range
    covers it (within one step); otherwise it is an error naming the file. Files that cannot be
    read raise an error naming them (``on_error="raise"``) or are returned as ``(file name,
    reason)`` in ``failures`` (``on_error="skip"``). Two files with the same sample id are an
    error naming both.
    """
    folder = Path(folder)
    if on_error not in ("raise", "skip"):
        raise SoilCarbonError(f"on_error must be 'raise' or 'skip', not {on_error!r}")
    if not folder.is_dir():
        raise SoilCarbonError(f"{folder}: not a folder")
    if id_pattern is not None:
        _compile_id_pattern(id_pattern)
    if unit is not None and check_unit(unit, str(folder)) != "cm-1":
        raise SoilCarbonError(
            f"{folder}: OPUS files store their axis in wavenumbers (cm-1), not {unit}; "
            "drop the unit option or pass cm-1"
        )
    _block_key(block)
    files = opus_files(folder)
    if not files:
        raise SoilCarbonError(
            f"{folder}: no OPUS files found (OPUS files have numeric extensions such as .0 or .1); "
            "check the folder"
        )
    failures: list[tuple[str, str]] = []
    rows: list[tuple[Path, str, np.ndarray, np.ndarray]] = []
    owner: dict[str, Path] = {}
    for path in files:
        try:
            sample = opus_sample_id(path, id_pattern)
            axis, values = _load_opus(path, block)
        except SoilCarbonError as exc:
            message = str(exc)
            prefix = f"{path}: "
            failures.append((path.name, message[len(prefix):] if message.startswith(prefix) else message))
            continue
        if sample in owner:
            raise SoilCarbonError(
                f"{folder}: files {owner[sample].name} and {path.name} both give sample id {sample!r}; "
                "remove one or pass an id pattern that keeps them apart"
            )
        owner[sample] = path
        rows.append((path, sample, axis, values))
    if failures and on_error == "raise":
        names = ", ".join(name for name, _ in failures[:5])
        more = f" and {len(failures) - 5} more" if len(failures) > 5 else ""
        raise SoilCarbonError(
            f"{folder}: {len(failures)} file(s) cannot be read: {names}{more} ({failures[0][0]}: "
            f"{failures[0][1]}); fix or remove them, or skip unreadable files"
        )
    if not rows:
        raise SoilCarbonError(f"{folder}: none of the {len(files)} OPUS file(s) could be read ({failures[0][0]}: "
                              f"{failures[0][1]})")
    ref_path, _, ref_axis, _ = rows[0]
    matrix = np.empty((len(rows), len(ref_axis)))
    aligned = []
    for i, (path, sample, axis, values) in enumerate(rows):
        if len(axis) == len(ref_axis) and np.allclose(axis, ref_axis, rtol=0, atol=1e-6 * np.ptp(ref_axis)):
            matrix[i] = values
            continue
        single = _opus_spectra(path, axis, values, sample, None, allow_nan)
        try:
            matrix[i] = single.align(ref_axis, "cm-1").values[0]
        except SoilCarbonError:
            raise SoilCarbonError(
                f"{path}: its axis {format_axis_value(axis.max())}-{format_axis_value(axis.min())} cm-1 "
                f"({len(axis)} points) does not cover the folder's axis "
                f"{format_axis_value(ref_axis.max())}-{format_axis_value(ref_axis.min())} cm-1 "
                f"({len(ref_axis)} points, from {ref_path.name}); read files of one instrument setup together"
            ) from None
        aligned.append(path.name)
    import pandas as pd

    spectra = Spectra(ids=[r[1] for r in rows], axis=ref_axis, unit="cm-1", values=matrix,
                      meta=pd.DataFrame({"source_file": [r[0].name for r in rows]}), source=str(folder),
                      allow_nan=allow_nan)
    spectra.detected = {"unit": "cm-1", "unit_from": "OPUS file parameters", "prefix": "",
                        "format": "opus-folder", "files": len(files), "failures": failures,
                        "aligned": aligned, "axis_from": ref_path.name}
    return spectra, failures


# ------------------------------------------------------------------------------------ entry point
def read_spectra(path, id_col: str = "sample_id", unit: str | None = None, id_pattern: str | None = None,
                 allow_nan: bool = False, block: str = "absorbance", on_error: str = "raise") -> Spectra:
    """Read spectra from a table (CSV/Parquet), one OPUS file or a folder of OPUS files.

    ``spectra.detected`` describes what was found: ``format`` (csv, parquet, opus,
    opus-folder), ``unit`` and ``unit_from``, ``prefix``, ``files`` and, for folders read with
    ``on_error="skip"``, ``failures`` as (file name, reason).
    """
    path = Path(path)
    if not path.exists():
        raise SoilCarbonError(f"{path}: no such file or folder; check the path")
    if path.is_dir():
        spectra, _ = read_opus_folder(path, id_pattern=id_pattern, block=block, on_error=on_error, unit=unit,
                                      allow_nan=allow_nan)
        return spectra
    if path.suffix.lower() in TABLE_SUFFIXES:
        return read_table(path, id_col=id_col, unit=unit, allow_nan=allow_nan)
    try:
        with open(path, "rb") as handle:
            magic = handle.read(4)
    except OSError as exc:
        raise SoilCarbonError(f"{path}: cannot read the file ({exc.strerror or exc}); check its permissions") from exc
    if magic == OPUS_MAGIC or _NUMERIC_SUFFIX.match(path.suffix):
        return read_opus(path, block=block, id_pattern=id_pattern, unit=unit, allow_nan=allow_nan)
    raise SoilCarbonError(
        f"{path}: unknown file type; pass a .csv/.parquet table, an OPUS file (.0, .1 ...) or a folder of them"
    )
