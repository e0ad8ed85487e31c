"""The input layout of a model: which spectral axis (values, unit) and which covariates,
in which column order. It turns tables or :class:`Spectra` into the model's matrix and
refuses, with a clear message, input it cannot align.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from soilcarbon.errors import SoilCarbonError
from soilcarbon.spectral.spectra import Spectra, axis_columns, check_resolution, spectral_header

ID_COLUMN = "sample_id"


@dataclass
class FeatureLayout:
    """Spectral axis + covariate names; the matrix is ``[spectra | covariates]``."""

    axis: np.ndarray | None = None
    unit: str | None = None
    covariates: list[str] = field(default_factory=list)

    @property
    def n_spectral(self) -> int:
        return 0 if self.axis is None else len(self.axis)

    @property
    def spectral_index(self) -> slice:
        """Columns of the spectra in the model matrix (a slice: selecting it makes no copy)."""
        return slice(0, self.n_spectral)

    @property
    def covariate_index(self) -> slice:
        """Columns of the covariates in the model matrix."""
        return slice(self.n_spectral, self.n_spectral + len(self.covariates))

    @property
    def spectral_columns(self) -> list[str]:
        return [] if self.axis is None else axis_columns(self.axis)

    @property
    def columns(self) -> list[str]:
        return self.spectral_columns + list(self.covariates)

    def to_dict(self) -> dict:
        return {
            "axis": None if self.axis is None else [float(v) for v in self.axis],
            "unit": self.unit,
            "covariates": list(self.covariates),
        }

    @classmethod
    def from_dict(cls, data: dict) -> "FeatureLayout":
        axis = data.get("axis")
        return cls(None if axis is None else np.asarray(axis, dtype=float), data.get("unit"),
                   list(data.get("covariates", [])))

    # ------------------------------------------------------------ assembly
    def matrix(self, spectra: Spectra | None = None, covariates: pd.DataFrame | None = None) -> np.ndarray:
        """The model matrix for aligned spectra and a covariate table with rows in the same order."""
        blocks = []
        if self.axis is not None:
            if spectra is None:
                raise SoilCarbonError("this model needs spectra; pass --spectra")
            blocks.append(spectra.align(self.axis, self.unit).values)
        if self.covariates:
            if covariates is None:
                raise SoilCarbonError(
                    f"this model needs covariates {', '.join(self.covariates[:5])}; pass --covariates"
                )
            missing = [c for c in self.covariates if c not in covariates.columns]
            if missing:
                raise SoilCarbonError(
                    f"covariate column(s) {', '.join(missing[:5])} missing; the model was trained on "
                    f"{', '.join(self.covariates)}"
                )
            blocks.append(numeric_block(covariates[self.covariates], "covariates"))
        n_rows = len(spectra) if spectra is not None else len(covariates)
        return np.hstack(blocks) if blocks else np.empty((n_rows, 0))

    def frame_to_matrix(self, frame: pd.DataFrame) -> np.ndarray:
        """The model matrix from one wide table (spectral columns with numeric headers + covariates).

        Spectral columns that match the training axis are used as they are; otherwise the
        spectra are aligned (re-gridded) onto it, or refused when the ranges do not allow it.
        """
        spectra = None
        if self.axis is not None:
            expected = self.spectral_columns
            if all(c in frame.columns for c in expected):
                values = numeric_block(frame[expected], "spectra")
                return np.hstack([values, self._covariates_of(frame)]) if self.covariates else values
            header = spectral_header(frame.columns, ID_COLUMN, default_unit=self.unit)
            if header is None:
                raise SoilCarbonError(
                    f"no spectral columns in the input; the model expects {len(expected)} points "
                    f"{expected[0]}-{expected[-1]} {self.unit}"
                )
            original = {str(c): c for c in frame.columns}
            columns = [original[c] for c in header.columns]
            ids = frame[ID_COLUMN].astype(str).to_numpy() if ID_COLUMN in frame.columns else np.arange(len(frame))
            check_resolution(header.axis, header.unit, self.axis, self.unit, "the input")
            spectra = Spectra(ids, header.axis, header.unit, numeric_block(frame[columns], "spectra"), allow_nan=True)
        return self.matrix(spectra, frame if self.covariates else None)

    def _covariates_of(self, frame: pd.DataFrame) -> np.ndarray:
        missing = [c for c in self.covariates if c not in frame.columns]
        if missing:
            raise SoilCarbonError(f"covariate column(s) {', '.join(missing[:5])} missing from the input")
        return numeric_block(frame[self.covariates], "covariates")


def numeric_block(frame: pd.DataFrame, what: str, ids=None) -> np.ndarray:
    """A float matrix from table columns (empty cells become NaN); a column holding text is an
    error naming the column, the value and, when ``ids`` are given, the sample."""
    if all(pd.api.types.is_numeric_dtype(t) or pd.api.types.is_bool_dtype(t) for t in frame.dtypes):
        return frame.to_numpy(dtype=float, na_value=np.nan)  # fast path: no per-column conversion
    for column in frame.columns:
        if not pd.api.types.is_numeric_dtype(frame[column]) and not pd.api.types.is_bool_dtype(frame[column]):
            text = frame[column].astype("string").str.strip()
            bad = pd.to_numeric(frame[column], errors="coerce").isna() & text.notna() & (text != "")
            if bad.any():
                row = int(np.where(bad)[0][0])
                sample = f"sample {np.asarray(ids)[row]} has " if ids is not None else "value "
                raise SoilCarbonError(
                    f"{what} column {column!r} is not numeric ({sample}{frame[column].iloc[row]!r}); "
                    "remove the column or fix the value"
                )
    return frame.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
