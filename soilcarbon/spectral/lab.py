"""Lab tables (wet-chemistry reference values) and their join to spectra by sample id.

A lab table is a CSV (or Parquet) file with one row per sample: an id column and the lab values
(organic carbon, texture ...). Ids are compared as text with surrounding whitespace removed, so
``" 001"`` in a lab export matches the spectrum ``001`` but ``1`` does not (leading zeros are part
of an id). The join is an inner join; what was left out on either side is reported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from soilcarbon.errors import SoilCarbonError
from soilcarbon.spectral.spectra import Spectra, ids_text


def read_lab(path, id_col: str = "sample_id", noun: str = "lab") -> pd.DataFrame:
    """Read a lab table (or another table keyed by sample id, named ``noun`` in messages); ids
    become stripped strings, other columns keep their types.

    The frame's ``attrs["source"]`` holds the path, used in later error messages.
    """
    from soilcarbon.spectral.readers import sniff_csv

    path = Path(path)
    if not path.exists():
        raise SoilCarbonError(f"{path}: no such file; check the {noun} table path")
    if not path.is_file():
        raise SoilCarbonError(f"{path}: not a file; pass the {noun} table (CSV)")
    if path.stat().st_size == 0:
        raise SoilCarbonError(f"{path}: the {noun} table is empty; it needs a header row and one row per sample")
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            lab = pd.read_parquet(path)
        else:
            delimiter, decimal = sniff_csv(path)
            lab = pd.read_csv(path, sep=delimiter, decimal=decimal, dtype={id_col: str}, keep_default_na=True)
    except pd.errors.EmptyDataError as exc:
        raise SoilCarbonError(f"{path}: the {noun} table is empty; it needs a header row and one row per sample") from exc
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError, OSError) as exc:
        text = " ".join(str(exc).split())
        raise SoilCarbonError(f"{path}: cannot read the {noun} table ({text}); save it as a UTF-8 CSV") from exc
    lab.columns = [str(c).strip() for c in lab.columns]
    if id_col not in lab.columns:
        raise SoilCarbonError(
            f"{path}: id column {id_col!r} not found in the {noun} table (columns: {ids_text(lab.columns)}); "
            "pass the id column name"
        )
    lab[id_col] = checked_ids(lab, id_col, str(path), noun)
    lab.attrs["source"] = str(path)
    return lab


def checked_ids(table: pd.DataFrame, id_col: str, source: str, noun: str, from_file: bool = True) -> pd.Series:
    """The ids of a table's rows, stripped, as strings; raises when a row has no id (naming its
    file lines, or 1-based rows for an in-memory table) or when an id repeats."""
    ids = table[id_col].astype("string").str.strip()
    empty = ids.isna() | (ids == "")
    if empty.any():
        positions = (np.where(empty)[0] + (2 if from_file else 1)).tolist()  # +2: header line, 1-based
        where = "line(s)" if from_file else "row(s)"
        raise SoilCarbonError(f"{source}: {int(empty.sum())} {noun} row(s) without {id_col!r} ({where} "
                              f"{ids_text(positions)}); every row needs an id")
    duplicated = ids[ids.duplicated()].unique()
    if len(duplicated):
        raise SoilCarbonError(f"{source}: duplicate ids in the {noun} table: {ids_text(duplicated)}; "
                              "keep one row per sample")
    return ids.astype(object)


@dataclass
class JoinReport:
    """What a lab join matched and what it left out."""

    n_spectra: int
    n_lab: int
    n_matched: int
    only_in_spectra: list[str] = field(default_factory=list)
    only_in_lab: list[str] = field(default_factory=list)

    @property
    def n_only_in_spectra(self) -> int:
        return len(self.only_in_spectra)

    @property
    def n_only_in_lab(self) -> int:
        return len(self.only_in_lab)

    def to_dict(self) -> dict:
        return {"n_spectra": self.n_spectra, "n_lab": self.n_lab, "n_matched": self.n_matched,
                "only_in_spectra": list(self.only_in_spectra), "only_in_lab": list(self.only_in_lab)}

    def summary(self) -> str:
        text = f"{self.n_matched} of {self.n_spectra} spectra matched a lab row"
        if self.only_in_spectra:
            text += f"; without lab values: {ids_text(self.only_in_spectra)}"
        if self.only_in_lab:
            text += f"; lab rows without spectra: {ids_text(self.only_in_lab)}"
        return text


def join_lab(spectra: Spectra, lab: pd.DataFrame, id_col: str = "sample_id") -> tuple[Spectra, JoinReport]:
    """Inner join of lab columns into ``spectra.meta`` by id, in the spectra's order.

    Returns the matched spectra and a :class:`JoinReport`. No matching id at all, or a lab
    column that already exists in the spectra's metadata, is an error.
    """
    source = lab.attrs.get("source", "lab table")
    if id_col not in lab.columns:
        raise SoilCarbonError(f"{source}: id column {id_col!r} not found in the lab table; pass the id column name")
    lab_ids = lab[id_col].astype("string").str.strip()
    if lab_ids.isna().any():
        raise SoilCarbonError(f"{source}: {int(lab_ids.isna().sum())} lab row(s) without {id_col!r}")
    if lab_ids.duplicated().any():
        raise SoilCarbonError(f"{source}: duplicate ids in the lab table: "
                              f"{ids_text(lab_ids[lab_ids.duplicated()].unique())}; keep one row per sample")
    spec_ids = pd.Index([str(i).strip() for i in spectra.ids])
    lab_index = pd.Index(lab_ids.astype(object))
    positions = lab_index.get_indexer(spec_ids)
    matched = positions >= 0
    only_in_spectra = [spectra.ids[i] for i in np.where(~matched)[0]]
    only_in_lab = [i for i in lab_index if i not in set(spec_ids)]
    report = JoinReport(n_spectra=len(spectra), n_lab=len(lab), n_matched=int(matched.sum()),
                        only_in_spectra=only_in_spectra, only_in_lab=only_in_lab)
    if not matched.any():
        raise SoilCarbonError(
            f"{source}: no lab id matches a spectrum id (spectra: {ids_text(spectra.ids, 3)}; "
            f"lab: {ids_text(lab_index, 3)}); check the id column and the id rule"
        )
    values = lab.drop(columns=[id_col]).reset_index(drop=True)
    clash = [c for c in values.columns if c in spectra.meta.columns]
    if clash:
        raise SoilCarbonError(
            f"{source}: column(s) {ids_text(clash)} exist in both the spectra and the lab table; "
            "rename or drop them on one side"
        )
    kept = spectra.take(np.where(matched)[0])
    lab_rows = values.iloc[positions[matched]].reset_index(drop=True)
    meta = pd.concat([kept.meta.reset_index(drop=True), lab_rows], axis=1)
    joined = kept.replace(meta=meta)
    if hasattr(spectra, "detected"):
        joined.detected = dict(spectra.detected)
    return joined, report
