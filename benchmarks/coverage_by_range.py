"""Interval coverage along the prediction range, from an out-of-fold table.

Overall PICP can hide intervals that are too narrow for high (or low) values. This prints,
for the whole table and for each quintile of the prediction, the share of observations inside
their interval (PICP), the mean and the median width, next to the nominal level (the baseline a
calibrated interval should meet in every row). Compare ``interval: {n_bins: 1}`` (one global
conformal quantile) with the default Mondrian bins by training once with each config.

    soilcarbon train --spectra data/nirsoil_train.csv --target Ciso --oof-output oof.csv [--config c.yaml]
    .venv/bin/python benchmarks/coverage_by_range.py oof.csv [--bins 5]
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd


def coverage_table(oof: pd.DataFrame, bins: int = 5) -> pd.DataFrame:
    oof = oof.dropna(subset=["prediction", "lower", "upper"])
    inside = (oof["observed"] >= oof["lower"]) & (oof["observed"] <= oof["upper"])
    width = oof["upper"] - oof["lower"]
    group = pd.qcut(oof["prediction"], bins, duplicates="drop")
    rows = [{"predictions": "all", "n": len(oof), "picp": inside.mean(), "mean_width": width.mean(),
             "median_width": width.median()}]
    for interval, members in oof.groupby(group, observed=True).groups.items():
        rows.append({"predictions": f"{interval.left:.3g} to {interval.right:.3g}", "n": len(members),
                     "picp": inside[members].mean(), "mean_width": width[members].mean(),
                     "median_width": width[members].median()})
    table = pd.DataFrame(rows)
    table["nominal"] = float(oof["level"].iloc[0])
    table["picp - nominal"] = table["picp"] - table["nominal"]
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("oof", help="OOF CSV from soilcarbon train --oof-output")
    parser.add_argument("--bins", type=int, default=5)
    args = parser.parse_args()
    table = coverage_table(pd.read_csv(args.oof), args.bins)
    print(table.round(3).to_string(index=False))
    worst = table.iloc[1:]["picp"].min()
    print(f"worst range: PICP {worst:.3f} (nominal {table['nominal'].iloc[0]:.2f}); "
          f"spread across ranges {np.ptp(table.iloc[1:]['picp']):.3f}")


if __name__ == "__main__":
    main()
