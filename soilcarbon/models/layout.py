"""The input layout of a model: which spectral axis (values, unit) and which covariates, in
which column order. :mod:`soilcarbon.models.matrix` turns any input into that matrix.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from soilcarbon.spectral.spectra import axis_columns

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
