"""Rasters and coordinates: covariates sampled at points, spectral indices, SOC maps.

- :mod:`soilcarbon.geo.extract`: raster values at sample points (``soilcarbon covariates extract``).
- :mod:`soilcarbon.geo.indices`: NDVI, BSI, NDMI from named bands.
- :mod:`soilcarbon.geo.mapping`: a covariates-only model over raster stacks (``soilcarbon map``).
"""
