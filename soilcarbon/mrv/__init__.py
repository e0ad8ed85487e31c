"""MRV: SOC stocks, stock change (fixed depth and equivalent soil mass), project totals and their
uncertainty, from per-sample predictions (or lab values) and a samples table.

- :mod:`soilcarbon.mrv.tables`: reading and checking the samples, fields and predictions tables;
- :mod:`soilcarbon.mrv.stocks`: per-sample stocks, Monte Carlo errors, skew-aware intervals, totals;
- :mod:`soilcarbon.mrv.esm`: equivalent soil mass (von Haden et al. 2020);
- :mod:`soilcarbon.mrv.plan`: samples per field for a target interval half-width;
- :mod:`soilcarbon.mrv.report`: the self-contained HTML report;
- :mod:`soilcarbon.mrv.commands`: ``soilcarbon stocks`` and ``soilcarbon stocks plan``.
"""
