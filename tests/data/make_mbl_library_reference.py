"""Reference MBL results on a 6,000-spectrum library, from the code before the cache-sized
neighbour search and the BLAS-free local kernel (main @ ba05ff1).

The library is NIRsoil resampled with small noise, so it exceeds the 5,656 references up to which
older code kept its Gram-matrix path; ``tests/test_mbl.py`` checks that today's code still gives
these numbers to 1e-8. ``mbl_library_reference.npz`` next to this script was written by running
it on that commit: ``PYTHONPATH=. python tests/data/make_mbl_library_reference.py tests/data/mbl_library_reference.npz``.
"""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_mbl_reference import derivative_spectra, write_reference  # noqa: E402

CONFIGS = {
    "default": {},
    "pca_predictors": dict(k=60, diss_method="pca", diss_components=10, diss_usage="predictors", max_components=10),
    "euclid_pls_none": dict(k=90, diss_method="euclid", local_method="pls", diss_usage="none", max_components=8),
}


def library_problem(n=6000, n_queries=150):
    """First-derivative NIRsoil spectra in 10 nm bins, resampled with replacement plus noise (2 % of
    the spectral sd; y plus noise of sd 0.05): ``n`` references and ``n_queries`` queries drawn
    the same way with another seed."""
    D, y = derivative_spectra()

    def draw(size, seed):
        rng = np.random.default_rng(seed)
        rows = rng.integers(0, len(D), size)
        return D[rows] + rng.normal(0, 0.02 * D.std(), size=(size, D.shape[1])), y[rows] + rng.normal(0, 0.05, size)

    Xr, yr = draw(n, 20)
    Q, _ = draw(n_queries, 21)
    return Xr, yr, Q


def main(path):
    write_reference(path, CONFIGS, *library_problem())


if __name__ == "__main__":
    main(sys.argv[1])
