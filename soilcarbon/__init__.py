"""soilcarbon: soil organic carbon from spectra and covariates, with calibrated uncertainty.

Everything lives under one import namespace: a top-level ``spectral`` package would
shadow Spectral Python's ``spectral``, which remote-sensing users often have installed.
"""

from soilcarbon.errors import SoilCarbonError
from soilcarbon.spectral.spectra import Spectra

__all__ = ["Spectra", "SoilCarbonError"]
__version__ = "0.1.0"
