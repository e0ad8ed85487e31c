"""Which recipe should the product use for NIR soil carbon? Cross-validated comparison.

Every recipe (preprocessing + model + target transform) is scored by the same 10-fold
cross-validation (``KFold(10, shuffle=True, random_state=seed)``) on the 548 samples of
``../shared/data/nirsoil/nirsoil_train.csv`` that have ``Ciso`` (% total carbon), next to plain
PLS on the raw absorbance (components 1..30 chosen by an inner 5-fold CV) as the baseline.
Everything a recipe learns (PLS components, stacking weights) is learned inside the training
folds. The independent test set of the campaign is never used here.

Columns: RMSE, R2, RPIQ (IQR / RMSE), bias (mean of prediction - observed), ratio (RMSE /
baseline RMSE, the number to compare on a noisy machine), train RMSE (fit and predict on all
548: a train RMSE far below the CV RMSE marks a recipe that memorises), CV time (all 10 folds),
fit and predict time of one model on all 548 samples (n_jobs=1, one BLAS thread).

Run:  .venv/bin/python benchmarks/research_nirsoil.py [--seeds 0 1] [--quick]
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import nnls
from sklearn.base import BaseEstimator, RegressorMixin, TransformerMixin, clone
from sklearn.compose import TransformedTargetRegressor
from sklearn.cross_decomposition import PLSRegression
from sklearn.decomposition import PCA
from sklearn.model_selection import KFold, cross_val_predict
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVR
from threadpoolctl import threadpool_limits

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from soilcarbon.models.mbl import MemoryBasedLearner, pls1_nipals  # noqa: E402
from soilcarbon.spectral.preprocessing import build_preprocessing  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "nirsoil" / "nirsoil_train.csv"

#: Preprocessing recipes (config lists of soilcarbon.spectral.preprocessing).
SG1 = {"name": "savgol", "window_length": 11, "polyorder": 2, "deriv": 1}
PREP = {
    "raw": [],
    "SG1": [SG1],
    "SG1+10nm": [SG1, {"name": "resample", "start": 1110, "end": 2490, "step": 10}],
    "SG1+6nm": [{"name": "savgol", "window_length": 7, "polyorder": 2, "deriv": 1},
                {"name": "resample", "start": 1106, "end": 2492, "step": 6}],
    "SNV+SG1": [{"name": "snv"}, SG1],
    "SG1+SNV": [SG1, {"name": "snv"}],
    "SG1+10nm+SNV": [SG1, {"name": "resample", "start": 1110, "end": 2490, "step": 10}, {"name": "snv"}],
    "SNV+detrend": [{"name": "snv"}, {"name": "detrend", "order": 2}],
    "SG2(21)+10nm": [{"name": "savgol", "window_length": 21, "polyorder": 3, "deriv": 2},
                     {"name": "resample", "start": 1120, "end": 2480, "step": 10}],
}


# ----------------------------------------------------------------------------- models
class PLSCV(RegressorMixin, BaseEstimator):
    """PLS1 whose number of components (1..max_components) is chosen by inner k-fold CV.

    One NIPALS fit per fold gives the predictions of every component count at once, so the
    inner search costs ``cv + 1`` fits instead of ``cv * max_components``.
    """

    def __init__(self, max_components=30, cv=5):
        self.max_components = max_components
        self.cv = cv

    @staticmethod
    def _fit_all(X, y, n):
        xm, ym = X.mean(0), y.mean()
        B, _, _ = pls1_nipals(X - xm, y - ym, n)
        return xm, ym, B

    def fit(self, X, y):
        X, y = np.asarray(X, float), np.asarray(y, float)
        sse = np.zeros(self.max_components)
        for tr, te in KFold(self.cv, shuffle=True, random_state=1).split(X):
            xm, ym, B = self._fit_all(X[tr], y[tr], self.max_components)
            err = (((X[te] - xm) @ B + ym) - y[te][:, None]) ** 2
            sse[: B.shape[1]] += err.sum(0)
            sse[B.shape[1]:] = np.inf
        self.n_components_ = int(np.argmin(sse)) + 1
        self.xm_, self.ym_, B = self._fit_all(X, y, self.n_components_)
        self.coef_ = B[:, -1]
        return self

    def predict(self, X):
        return (np.asarray(X, float) - self.xm_) @ self.coef_ + self.ym_


class PLSScores(TransformerMixin, BaseEstimator):
    """Scores of a PLS regression of y on X (supervised compression for tree models)."""

    def __init__(self, n_components=15):
        self.n_components = n_components

    def fit(self, X, y):
        self.pls_ = PLSRegression(self.n_components, scale=False).fit(X, y)
        return self

    def transform(self, X):
        return self.pls_.transform(X)


class NNLSStack(RegressorMixin, BaseEstimator):
    """Non-negative least-squares stack of regressors, weights from inner-CV predictions."""

    def __init__(self, estimators, cv=5):
        self.estimators = estimators
        self.cv = cv

    def fit(self, X, y):
        cv = KFold(self.cv, shuffle=True, random_state=2)
        oof = np.column_stack([cross_val_predict(clone(e), X, y, cv=cv) for e in self.estimators])
        self.weights_, _ = nnls(oof, y)
        self.fitted_ = [clone(e).fit(X, y) for e in self.estimators]
        return self

    def predict(self, X):
        return np.column_stack([np.ravel(m.predict(X)) for m in self.fitted_]) @ self.weights_


def lgbm():
    from lightgbm import LGBMRegressor

    return LGBMRegressor(n_estimators=400, learning_rate=0.03, num_leaves=7, min_child_samples=10,
                         subsample=0.8, subsample_freq=1, colsample_bytree=0.8, verbose=-1,
                         n_jobs=1, random_state=0)


def transformed(model, transform):
    if transform == "none":
        return model
    if transform == "sqrt":
        return TransformedTargetRegressor(model, func=np.sqrt, inverse_func=lambda z: np.clip(z, 0, None) ** 2,
                                          check_inverse=False)
    return TransformedTargetRegressor(model, func=np.log, inverse_func=np.exp, check_inverse=False)


MBL_BEST = dict(k=120, diss_method="cor", diss_usage="weights", min_components=3, max_components=20)
MBL_RESEMBLE = dict(k=60, diss_method="pca", diss_components="opc", diss_usage="predictors",
                    min_components=3, max_components=15)


def recipes(axis, quick=False):
    """(name, preprocessing, transform, model factory)."""
    def pipe(prep, model):
        return lambda: Pipeline([("prep", build_preprocessing(PREP[prep], axis)), ("model", model())])

    out = [("PLS (baseline)", "raw", "none", pipe("raw", PLSCV))]
    pls_preps = ["SG1+10nm"] if quick else ["SG1", "SG1+10nm", "SNV+SG1", "SG1+SNV", "SNV+detrend", "SG2(21)+10nm"]
    for prep in pls_preps:
        for tf in (["none", "sqrt"] if quick else ["none", "sqrt", "log"]):
            out.append(("PLS", prep, tf, pipe(prep, PLSCV)))
    if not quick:
        out.append(("PLS", "raw", "sqrt", pipe("raw", PLSCV)))
        out.append(("SVR on 10 PCA scores", "SG1+10nm", "sqrt",
                    pipe("SG1+10nm", lambda: make_pipeline(PCA(10), StandardScaler(), SVR(C=10, epsilon=0.05)))))
        out.append(("LightGBM on 20 PCA scores", "SG1+10nm", "sqrt",
                    pipe("SG1+10nm", lambda: make_pipeline(PCA(20, random_state=0), lgbm()))))
    out.append(("LightGBM on 15 PLS scores", "SG1+10nm", "sqrt",
                pipe("SG1+10nm", lambda: make_pipeline(PLSScores(15), lgbm()))))
    out.append(("MBL resemble-like (pca/opc, predictors, k=60, wapls 3-15)", "raw", "none",
                pipe("raw", lambda: MemoryBasedLearner(**MBL_RESEMBLE))))
    out.append(("MBL resemble-like (pca/opc, predictors, k=60, wapls 3-15)", "SG1+10nm", "none",
                pipe("SG1+10nm", lambda: MemoryBasedLearner(**MBL_RESEMBLE))))
    if not quick:
        out.append(("MBL cor, k=40, wapls 3-15", "SG1+10nm", "sqrt",
                    pipe("SG1+10nm", lambda: MemoryBasedLearner(k=40, diss_method="cor", diss_usage="none",
                                                                min_components=3, max_components=15))))
        out.append(("MBL pca/opc, tricube weights, k=120, wapls 3-20", "SG1+10nm", "sqrt",
                    pipe("SG1+10nm", lambda: MemoryBasedLearner(**{**MBL_BEST, "diss_method": "pca"}))))
        for prep in ("SNV+SG1", "SG1+SNV"):
            out.append(("MBL cor, tricube weights, k=120, wapls 3-20", prep, "sqrt",
                        pipe(prep, lambda: MemoryBasedLearner(**MBL_BEST))))
        out.append(("MBL cor, tricube weights, k=120, wapls 3-20", "SG1+6nm", "sqrt",
                    pipe("SG1+6nm", lambda: MemoryBasedLearner(**MBL_BEST))))
        out.append(("MBL cor, tricube weights, k=[80,120,200] by LOO", "SG1+10nm", "sqrt",
                    pipe("SG1+10nm", lambda: MemoryBasedLearner(**{**MBL_BEST, "k": [80, 120, 200]}))))
    for tf in ["none", "sqrt", "log"]:
        out.append(("MBL cor, tricube weights, k=120, wapls 3-20", "SG1+10nm", tf,
                    pipe("SG1+10nm", lambda: MemoryBasedLearner(**MBL_BEST))))
    if not quick:
        out.append(("PLS", "SG1+10nm+SNV", "sqrt", pipe("SG1+10nm+SNV", PLSCV)))
        out.append(("NNLS stack: MBL(best) + LightGBM(PLS scores), inner 5-fold", "SG1+10nm", "sqrt",
                    pipe("SG1+10nm", lambda: NNLSStack([MemoryBasedLearner(**MBL_BEST),
                                                        make_pipeline(PLSScores(15), lgbm())]))))

    def mixed_stack():
        return NNLSStack([pipe("SG1+10nm", lambda: MemoryBasedLearner(**MBL_BEST))(),
                          pipe("SG1+10nm+SNV", PLSCV)()])

    out.append(("NNLS stack: MBL(best) on SG1+10nm + PLS on SG1+10nm+SNV, inner 5-fold", "per member", "sqrt",
                mixed_stack))
    return out


# ----------------------------------------------------------------------------- scoring
def scores(y, pred):
    err = pred - y
    rmse = float(np.sqrt(np.mean(err**2)))
    q75, q25 = np.percentile(y, [75, 25])
    return {"RMSE": rmse, "R2": 1 - np.sum(err**2) / np.sum((y - y.mean()) ** 2),
            "RPIQ": (q75 - q25) / rmse, "bias": float(err.mean())}


def evaluate(factory, transform, X, y, seed):
    cv = KFold(10, shuffle=True, random_state=seed)
    pred = np.zeros(len(y))
    t0 = time.perf_counter()
    for tr, te in cv.split(X):
        model = transformed(factory(), transform).fit(X[tr], y[tr])
        pred[te] = np.ravel(model.predict(X[te]))
    return pred, time.perf_counter() - t0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--quick", action="store_true", help="fewer recipes (about a minute)")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore", category=UserWarning)

    df = pd.read_csv(DATA).dropna(subset=["Ciso"])
    X = df.iloc[:, 4:].to_numpy(float)
    axis = np.array([float(c) for c in df.columns[4:]])
    y = df["Ciso"].to_numpy(float)
    print(f"NIR soil carbon: {len(y)} samples x {X.shape[1]} bands, Ciso {y.min():.2f}-{y.max():.2f} %C, "
          f"IQR {np.subtract(*np.percentile(y, [75, 25])):.2f}; 10-fold KFold(shuffle, seeds {args.seeds})")

    rows = []
    for name, prep, tf, factory in recipes(axis, args.quick):
        row = {"recipe": name, "prep": prep, "target": tf}
        for seed in args.seeds:
            pred, cv_time = evaluate(factory, tf, X, y, seed)
            s = scores(y, pred)
            suffix = "" if seed == args.seeds[0] else f" s{seed}"
            row.update({k + suffix: v for k, v in s.items()} if not suffix else {"RMSE" + suffix: s["RMSE"]})
            if not suffix:
                row["CV s"] = cv_time
        t0 = time.perf_counter()
        model = transformed(factory(), tf).fit(X, y)
        row["fit s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        fitted = np.ravel(model.predict(X))
        row["predict s"] = time.perf_counter() - t0
        row["train RMSE"] = float(np.sqrt(np.mean((fitted - y) ** 2)))
        rows.append(row)
        print(f"  {name} | {prep} | {tf}: RMSE {row['RMSE']:.3f}", file=sys.stderr, flush=True)

    table = pd.DataFrame(rows)
    base = table.loc[0, "RMSE"]
    table.insert(7, "ratio", table["RMSE"] / base)
    for seed in args.seeds[1:]:
        table[f"ratio s{seed}"] = table[f"RMSE s{seed}"] / table.loc[0, f"RMSE s{seed}"]
    with pd.option_context("display.width", 250, "display.max_columns", 30, "display.max_colwidth", 62,
                           "display.float_format", "{:.3f}".format):
        print(table.to_string(index=False))
    best = table.iloc[1:]["RMSE"].idxmin()
    print(f"\nbest by CV RMSE (seed {args.seeds[0]}): {table.loc[best, 'recipe']} | {table.loc[best, 'prep']} | "
          f"{table.loc[best, 'target']}: RMSE {table.loc[best, 'RMSE']:.3f} = {table.loc[best, 'ratio']:.2f} x baseline")


if __name__ == "__main__":
    with threadpool_limits(1):  # one BLAS/OpenMP thread: timings comparable, the machine shared
        main()
