"""Reading speed: OPUS folder (files/s) and a 10,000 x 700 CSV (rows/s), each against a named baseline.

- OPUS: ``read_opus_folder`` on the 40 files of ``../shared/data/opus-sample/spectra`` against
  calling ``brukeropus.read_opus`` on each file (the bare parser, no validation or assembly).
- CSV: ``read_table`` on a 10,000 x 700 table built from the nirsoil spectra plus noise, against
  ``pandas.read_csv`` of the same file (which gives a DataFrame, not validated spectra).

The ratio is ours / baseline in throughput (above 1: faster than the baseline). Median of
``--repeats`` runs, ours and the baseline interleaved, because these machines are noisy.

    .venv/bin/python benchmarks/bench_read.py [--repeats 7] [--rows 10000]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from soilcarbon.spectral.readers import read_opus_folder, read_table

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def timed_pair(ours, baseline, repeats: int) -> tuple[float, float]:
    """Median wall times of ``ours()`` and ``baseline()``, interleaved run by run (after a warm-up)
    and alternating which goes first, so load changes on a shared machine hit both alike."""
    ours(), baseline()
    times = ([], [])
    for i in range(repeats):
        order = (0, 1) if i % 2 == 0 else (1, 0)
        for which in order:
            start = time.perf_counter()
            (ours, baseline)[which]()
            times[which].append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def make_csv(path: Path, rows: int, seed: int = 0) -> int:
    """Write ``rows`` noisy nirsoil spectra (700 bands) with id and Ciso columns; return the band count."""
    source = pd.read_csv(DATA / "nirsoil" / "nirsoil_train.csv")
    bands = [c for c in source.columns if c.replace(".", "").isdigit()]
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(source), rows)
    values = source[bands].to_numpy()[picks] + rng.normal(0.0, 1e-3, (rows, len(bands)))
    frame = pd.DataFrame(values, columns=bands)
    frame.insert(0, "Ciso", source["Ciso"].to_numpy()[picks])
    frame.insert(0, "sample_id", [f"S{i:06d}" for i in range(rows)])
    frame.to_csv(path, index=False, float_format="%.6f")
    return len(bands)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--rows", type=int, default=10_000)
    args = parser.parse_args()

    from brukeropus import read_opus as bruker_read_opus

    folder = DATA / "opus-sample" / "spectra"
    files = sorted(p for p in folder.iterdir() if p.is_file())
    spectra, failures = read_opus_folder(folder)
    assert spectra.n_samples == len(files) and not failures
    ours_opus, base_opus = timed_pair(lambda: read_opus_folder(folder),
                                      lambda: [bruker_read_opus(str(p)).a.y for p in files], args.repeats)

    with tempfile.TemporaryDirectory() as tmp:
        csv_path = Path(tmp) / "spectra.csv"
        bands = make_csv(csv_path, args.rows)
        size_mb = csv_path.stat().st_size / 1e6
        check = read_table(csv_path)
        assert check.n_samples == args.rows and check.n_points == bands
        ours_csv, base_csv = timed_pair(lambda: read_table(csv_path), lambda: pd.read_csv(csv_path), args.repeats)

    rows = [
        ("OPUS folder", f"{len(files)} files", "files/s", len(files) / ours_opus,
         "brukeropus.read_opus per file", len(files) / base_opus),
        ("wide CSV", f"{args.rows} x {bands} ({size_mb:.0f} MB)", "rows/s", args.rows / ours_csv,
         "pandas.read_csv", args.rows / base_csv),
    ]
    header = f"{'input':<12} {'size':<22} {'unit':<8} {'soilcarbon':>11} {'baseline':<30} {'baseline':>11} {'ratio':>6}"
    print(header)
    print("-" * len(header))
    for name, size, unit, ours, base_name, base in rows:
        print(f"{name:<12} {size:<22} {unit:<8} {ours:>11,.0f} {base_name:<30} {base:>11,.0f} {ours / base:>6.2f}")
    print(f"(median of {args.repeats} runs; ratio = soilcarbon / baseline throughput)")


if __name__ == "__main__":
    main()
