"""Spectra data model, readers and writers, preprocessing transformers."""

from soilcarbon.spectral.spectra import Spectra

__all__ = ["Spectra"]
