"""Reference MBL results from the unchanged code (main @ 733f403), for the equivalence test."""
import sys
import numpy as np, pandas as pd
from scipy.signal import savgol_filter
from soilcarbon.models.mbl import MemoryBasedLearner
df = pd.read_csv("/work/shared/data/nirsoil/nirsoil_train.csv").dropna(subset=["Ciso"])
X = df.iloc[:, 4:].to_numpy(float)
D = savgol_filter(X, 11, 2, deriv=1, axis=1)[:, 5:-5]
D = D[:, : (D.shape[1] // 5) * 5].reshape(len(D), -1, 5).mean(axis=2)
y = df["Ciso"].to_numpy(float)
rng = np.random.default_rng(12)
Q = np.vstack([D[400:440], D[rng.integers(0, 400, 20)] + rng.normal(0, 0.02 * D.std(), size=(20, D.shape[1]))])
CONFIGS = {
    "default": {},
    "pca_opc_predictors_klist": dict(k=[40, 90], diss_method="pca", diss_usage="predictors", max_components=10),
    "euclid_pls_none": dict(k=70, diss_method="euclid", local_method="pls", diss_usage="none", max_components=8),
    "pls_frac_weights": dict(k=[50, 100], diss_method="pls", diss_components=0.99, min_components=2, max_components=12),
    "cor_scale": dict(k=60, scale=True, max_components=10),
}
out = {}
for name, params in CONFIGS.items():
    m = MemoryBasedLearner(**params).fit(D[:400], y[:400])
    out[name + "/info"] = m.predict_with_info(Q).to_numpy()
    out[name + "/k"] = np.array([m.k_, m.diss_components_])
    if m.k_validation_rmse_:
        out[name + "/k_rmse"] = np.array(sorted(m.k_validation_rmse_.items()), float)
np.savez_compressed(sys.argv[1], **out)
print({k: v.shape for k, v in out.items()})
