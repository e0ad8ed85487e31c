"""Reference MBL results of the code before the blockwise rewrite (main @ 733f403) on NIRsoil.

``tests/test_mbl.py`` checks that today's code still gives these numbers; the file
``mbl_reference.npz`` next to this script was written by running it on that commit:
``PYTHONPATH=. python tests/data/make_mbl_reference.py tests/data/mbl_reference.npz``.
"""

import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.signal import savgol_filter

NIRSOIL = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "nirsoil" / "nirsoil_train.csv"
CONFIGS = {
    "default": {},
    "pca_opc_predictors_klist": dict(k=[40, 90], diss_method="pca", diss_usage="predictors", max_components=10),
    "euclid_pls_none": dict(k=70, diss_method="euclid", local_method="pls", diss_usage="none", max_components=8),
    "pls_frac_weights": dict(k=[50, 100], diss_method="pls", diss_components=0.99, min_components=2, max_components=12),
    "cor_scale": dict(k=60, scale=True, max_components=10),
}


def derivative_spectra():
    """First-derivative NIRsoil spectra in 10 nm bins and their ``Ciso`` (rows with a value)."""
    df = pd.read_csv(NIRSOIL).dropna(subset=["Ciso"])
    X = df.iloc[:, 4:].to_numpy(float)
    D = savgol_filter(X, 11, 2, deriv=1, axis=1)[:, 5:-5]
    D = D[:, : (D.shape[1] // 5) * 5].reshape(len(D), -1, 5).mean(axis=2)
    return D, df["Ciso"].to_numpy(float)


def reference_problem():
    """First-derivative NIRsoil spectra in 10 nm bins: 400 references, 60 queries (40 held-out
    rows and 20 noisy copies of references)."""
    D, y = derivative_spectra()
    rng = np.random.default_rng(12)
    Q = np.vstack([D[400:440], D[rng.integers(0, 400, 20)] + rng.normal(0, 0.02 * D.std(), size=(20, D.shape[1]))])
    return D[:400], y[:400], Q


def write_reference(path, configs, X, y, Q):
    """Fit each configuration on ``(X, y)`` and store its predictions with info on ``Q``."""
    from soilcarbon.models.mbl import MemoryBasedLearner

    out = {}
    for name, params in configs.items():
        m = MemoryBasedLearner(**params).fit(X, y)
        out[name + "/info"] = m.predict_with_info(Q).to_numpy()
        out[name + "/k"] = np.array([m.k_, m.diss_components_])
        if m.k_validation_rmse_:
            out[name + "/k_rmse"] = np.array(sorted(m.k_validation_rmse_.items()), float)
    np.savez_compressed(path, **out)


def main(path):
    write_reference(path, CONFIGS, *reference_problem())


if __name__ == "__main__":
    main(sys.argv[1])
