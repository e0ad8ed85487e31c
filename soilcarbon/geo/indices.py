"""Spectral indices computed from named reflectance bands (surface reflectance, any scale as long
as all bands share it).

- ``ndvi``  Normalized Difference Vegetation Index (Rouse et al. 1974; Tucker 1979,
  Remote Sens. Environ. 8:127): ``(NIR - Red) / (NIR + Red)``.
- ``bsi``   Bare Soil Index (Rikimaru, Roy & Miyatake 2002, Tropical Ecology 43:39):
  ``((SWIR1 + Red) - (NIR + Blue)) / ((SWIR1 + Red) + (NIR + Blue))``.
- ``ndmi``  Normalized Difference Moisture Index (Gao 1996, Remote Sens. Environ. 58:257;
  Wilson & Sader 2002): ``(NIR - SWIR1) / (NIR + SWIR1)``.

For Sentinel-2 the bands are Blue B2, Red B4, NIR B8 and SWIR1 B11; for Landsat 8/9 OLI Blue B2,
Red B4, NIR B5, SWIR1 B6. Each index lies in [-1, 1]; pixels or points where a band is missing or
the denominator is zero get NaN (written as empty / nodata).

Why our own code: the formulas are one line each; a dependency (e.g. ``spyndex``) would add more
than it saves. The band roles are named explicitly (``--bands red=B04,nir=B08``) because raster
band names differ between products.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from soilcarbon.errors import SoilCarbonError

ROLES = ("blue", "red", "nir", "swir1")


@dataclass(frozen=True)
class SpectralIndex:
    """An index: the band roles it needs, its formula as text, and its reference."""

    name: str
    bands: tuple
    formula: str
    reference: str


INDICES = {
    "ndvi": SpectralIndex("ndvi", ("nir", "red"), "(NIR - Red) / (NIR + Red)", "Rouse et al. 1974; Tucker 1979"),
    "bsi": SpectralIndex("bsi", ("swir1", "red", "nir", "blue"),
                         "((SWIR1 + Red) - (NIR + Blue)) / ((SWIR1 + Red) + (NIR + Blue))", "Rikimaru et al. 2002"),
    "ndmi": SpectralIndex("ndmi", ("nir", "swir1"), "(NIR - SWIR1) / (NIR + SWIR1)", "Gao 1996; Wilson & Sader 2002"),
}


def _normalized_difference(a, b):
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        total = a + b
        out = (a - b) / total
    return np.where(total == 0, np.nan, out)


def ndvi(nir, red):
    """(NIR - Red) / (NIR + Red)."""
    return _normalized_difference(nir, red)


def bsi(swir1, red, nir, blue):
    """((SWIR1 + Red) - (NIR + Blue)) / ((SWIR1 + Red) + (NIR + Blue))."""
    return _normalized_difference(np.asarray(swir1, float) + np.asarray(red, float),
                                  np.asarray(nir, float) + np.asarray(blue, float))


def ndmi(nir, swir1):
    """(NIR - SWIR1) / (NIR + SWIR1)."""
    return _normalized_difference(nir, swir1)


FUNCTIONS = {"ndvi": ndvi, "bsi": bsi, "ndmi": ndmi}


def parse_indices(text: str | None) -> list[str]:
    """``"ndvi,bsi"`` -> ``["ndvi", "bsi"]``; unknown names are an error listing the known ones."""
    if not text:
        return []
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in INDICES]
    if unknown:
        raise SoilCarbonError(f"--indices: unknown index {unknown[0]!r}; known: {', '.join(INDICES)}")
    return list(dict.fromkeys(names))


def parse_bands(text: str | None) -> dict[str, str]:
    """``"red=B04,nir=B08"`` -> ``{"red": "B04", "nir": "B08"}`` (role -> column / band name)."""
    if not text:
        return {}
    out = {}
    for part in text.split(","):
        if not part.strip():
            continue
        role, sep, name = part.partition("=")
        role, name = role.strip().lower(), name.strip()
        if not sep or not name:
            raise SoilCarbonError(f"--bands: expected ROLE=NAME pairs such as red=B04,nir=B08, got {part.strip()!r}")
        if role not in ROLES:
            raise SoilCarbonError(f"--bands: unknown band role {role!r}; roles: {', '.join(ROLES)}")
        out[role] = name
    return out


def required_columns(indices: list[str], bands: dict[str, str]) -> dict[str, str]:
    """The role -> column mapping the requested indices need; an error names a missing role."""
    needed = {}
    for name in indices:
        for role in INDICES[name].bands:
            if role not in bands:
                raise SoilCarbonError(
                    f"index {name} = {INDICES[name].formula} needs the {role} band; "
                    f"add {role}=BAND_NAME to --bands"
                )
            needed[role] = bands[role]
    return needed


def compute(name: str, values: dict[str, np.ndarray]) -> np.ndarray:
    """Index ``name`` from arrays keyed by band role."""
    index = INDICES[name]
    return FUNCTIONS[name](*(values[role] for role in index.bands))
