"""Which model families and which ensemble rule should the default use? One set of fits, many rules.

Nested CV exactly as ``train`` runs it (each LimeSoDa pair with its own outer folds, the NIR data
and the OPUS sample 10-fold, inner folds from ``cv.inner_folds``), but every candidate of a broad
configuration is fitted once per outer fold: its inner out-of-fold predictions and its prediction
of the outer test part are saved (``fit``, one ``.npz`` per pair). A rule (a pool of families and
an ensemble setting) then selects on the inner predictions with
:func:`soilcarbon.training.search.select`, and its outer prediction is the weighted sum of its
members' outer predictions: what the refitted ``VotingRegressor`` predicts. So ``table`` prints
the mean pooled out-of-fold R² of each rule per LimeSoDa group (and the RMSE on the NIR data and
the OPUS sample) on the same fits in seconds (checked: the previous defaults' figures equal
``generalization.py``'s and ``train``'s), against named baselines: the published best of four
learners, the default before issue 11 (``previous``: its families, stack only) and the default
before this one (``stop 21 default``). Intervals are not computed here;
``generalization.py`` measures them for the shipped default.

Run:
  PYTHONPATH=$PWD .venv/bin/python benchmarks/selection_rules.py fit --dumps /tmp/rules --jobs 2
  PYTHONPATH=$PWD .venv/bin/python benchmarks/selection_rules.py table --dumps /tmp/rules
"""

from __future__ import annotations

import argparse
import ast
import os
import re
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
from generalization import load_pair, pairs  # noqa: E402

BROAD = ROOT / "configs" / "broad.yaml"
#: The families of the default before issue 11's changes (the named baseline).
PREVIOUS = {"mbl", "pls-snv", "lightgbm", "cov-forest", "cov-lightgbm", "cov-linear", "cov-svr"}
#: Its rule: the single best or a cross-fitted stack, whichever has the lower inner RMSE.
STACK = {"enabled": True, "method": "compete", "max_members": 3, "compete_within": 0.0}
#: The default of stop 21 (Cubist on scores added; average within 15 % competing with the rest).
STOP21 = (PREVIOUS | {"scores-cubist"}, {**STACK, "compete_within": 0.15})


def fit_pair(pair: dict, config_path: str, dumps: str) -> dict:
    """Inner out-of-fold and outer predictions of every candidate on one pair, saved to ``dumps``."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from threadpoolctl import threadpool_limits

    from soilcarbon.atomic import atomic_path
    from soilcarbon.training import cv
    from soilcarbon.training.candidates import build_candidate, transform_allowed
    from soilcarbon.training.commands import known_harmless_warnings_ignored
    from soilcarbon.training.config import load_config
    from soilcarbon.training.data import assemble
    from soilcarbon.training.search import evaluate, family
    from soilcarbon.training.train import outer_labels

    started = time.perf_counter()
    config = load_config(config_path)
    spectra, covariates, folds = load_pair(pair["dataset"], pair["target"])
    data = assemble(spectra, pair["target"], covariates, "sample_id", (folds,) if folds else ())
    labels, _, groups = outer_labels(data, config, folds, None, None)
    specs = [s for s in config.expand(data.layout.n_spectral > 0, bool(data.layout.covariates))
             if transform_allowed(s.transform, data.y)]
    saved = {"y": data.y, "labels": labels, "families": [family(s) for s in specs],
             "specs": [repr((s.model, s.label, sorted(s.params.items()), s.transform)) for s in specs]}
    outer = np.full((len(specs), len(data.y)), np.nan)
    with threadpool_limits(1), known_harmless_warnings_ignored(), warnings.catch_warnings():
        warnings.simplefilter("ignore", category=UserWarning)
        for fold in np.unique(labels):
            train, test = labels != fold, labels == fold
            inner = cv.inner_labels(int(train.sum()), int(config.cv["inner_folds"]), 0,
                                    None if groups is None else np.asarray(groups)[train])
            scores = evaluate(specs, data.X[train], data.y[train], inner, data.layout, config.preprocessing, 0, 1,
                              share_preprocessing=True)
            saved[f"inner_labels_{fold}"] = inner
            saved[f"inner_oof_{fold}"] = np.array([s.oof for s in scores])
            for i, spec in enumerate(specs):
                model = build_candidate(spec, data.layout, config.preprocessing, 0).fit(data.X[train], data.y[train])
                outer[i, test] = np.ravel(model.predict(data.X[test]))
    saved["outer"] = outer
    with atomic_path(Path(dumps) / f"{pair['dataset']}__{pair['target']}.npz") as tmp, open(tmp, "wb") as handle:
        np.savez_compressed(handle, **saved)  # a killed run leaves no truncated file for ``table``
    return {"n": len(data.y), "seconds": time.perf_counter() - started}


def default_rule() -> tuple:
    """The families and the ensemble setting of the shipped default configuration (read from it,
    so this stays current)."""
    from soilcarbon.training.config import load_config
    from soilcarbon.training.search import family

    config = load_config()
    return {family(s) for s in config.expand(True, False) + config.expand(False, True)}, dict(config.ensemble)


def rules() -> dict:
    """name -> (families, ensemble settings); families None: every family of the broad config."""
    families, ensemble = default_rule()
    table = {"previous": (PREVIOUS, STACK), "stop 21 default": STOP21, "default": (families, ensemble)}
    for method in ("average", "compete"):
        table[f"default families, always {method}"] = (families, {**ensemble, "method": method})
    for small_n in (100, 400):
        table[f"default families, auto with small_n {small_n}"] = (families, {**ensemble, "small_n": small_n})
    table["broad pool, default rule"] = (None, ensemble)
    table["broad pool, always average"] = (None, {**ensemble, "method": "average"})
    return table


def inverse_mse_weights(rmse: np.ndarray, oof: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Weights proportional to 1 / inner MSE over the families within 30 % of the best (Bates &
    Granger 1969, without the covariances)."""
    weights = (rmse <= 1.3 * rmse.min()) / rmse ** 2
    return weights / weights.sum()


def shrunk_stack_weights(rmse: np.ndarray, oof: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Non-negative stacking weights of every family's inner predictions, shrunk halfway to equal
    weights (a guard against weights that chase noise on small sets)."""
    from soilcarbon.models.ensemble import stacking_weights

    return 0.5 * stacking_weights(oof.T, y) + 0.5 / len(rmse)


#: Weighting rules that ``select`` does not offer, on the default's families: were they worth it?
WEIGHTINGS = {"default families, inverse-MSE weights": inverse_mse_weights,
              "default families, stack shrunk to equal": shrunk_stack_weights}


def rule_r2(saved, specs, pool, ensemble, rmse: bool = False) -> float:
    """Pooled outer R² (or RMSE) of one rule on one pair's saved fits."""
    from soilcarbon.training.config import parse_config
    from soilcarbon.training.search import CandidateScore, family, select

    y, labels, outer = saved["y"], saved["labels"], saved["outer"]
    keep = [i for i, s in enumerate(specs) if pool is None or family(s) in pool]
    prediction = np.full(len(y), np.nan)
    config = parse_config({"ensemble": ensemble})
    for fold in np.unique(labels):
        train, test = labels != fold, labels == fold
        oof = saved[f"inner_oof_{fold}"]
        scores = [CandidateScore(specs[i], oof[i], float(np.sqrt(np.mean((oof[i] - y[train]) ** 2))), 0.0)
                  for i in keep]
        chosen = select(scores, y[train], saved[f"inner_labels_{fold}"], config)
        index = {id(specs[i]): i for i in keep}
        prediction[test] = sum(w * outer[index[id(m)], test] for m, w in zip(chosen.members, chosen.weights))
    if rmse:
        return float(np.sqrt(np.mean((prediction - y) ** 2)))
    return pooled_r2(prediction, y)


def pooled_r2(prediction: np.ndarray, y: np.ndarray) -> float:
    """R² of the pooled out-of-fold predictions."""
    return float(1 - np.sum((prediction - y) ** 2) / np.sum((y - y.mean()) ** 2))


def weighted_r2(saved, specs, pool, weigh) -> float:
    """Pooled outer R² when the best candidate of each family in ``pool`` (lowest inner RMSE) is
    weighted by ``weigh(rmse, inner predictions, y)``."""
    from soilcarbon.training.search import family

    y, labels, outer = saved["y"], saved["labels"], saved["outer"]
    prediction = np.full(len(y), np.nan)
    for fold in np.unique(labels):
        train, test = labels != fold, labels == fold
        oof = saved[f"inner_oof_{fold}"]
        rmse = np.sqrt(np.mean((oof - y[train]) ** 2, axis=1))
        best = {}
        for i, spec in enumerate(specs):
            if family(spec) in pool and (family(spec) not in best or rmse[i] < rmse[best[family(spec)]]):
                best[family(spec)] = i
        chosen = list(best.values())
        weights = weigh(rmse[chosen], oof[chosen], y[train])
        prediction[test] = weights @ outer[chosen][:, test]
    return pooled_r2(prediction, y)


#: The default's analogues of the four published learners (random forest, CatBoost, SVR, MLR).
PUBLISHED_ANALOGUES = ("cov-forest", "cov-lightgbm", "cov-svr", "cov-linear")


def hindsight_rows(saved, specs, families) -> dict:
    """Each default family alone (its best candidate by inner CV, nested like the rest), and two
    choices made after seeing the test folds, which no rule can make: the best family per pair,
    and the best of the four analogues of the published learners per pair, built like the
    published best of four (``best_of_4``). They measure how much of a best-of-four figure is
    hindsight: a floor set by one is not reachable by choosing on training data."""
    from soilcarbon.training.search import family

    present = sorted({family(s) for s in specs} & families)
    ensemble = {"enabled": False}
    alone = {f: rule_r2(saved, specs, {f}, ensemble) for f in present}
    rows = {f"alone: {f}": r2 for f, r2 in alone.items()}
    rows["hindsight: best family per pair"] = max(alone.values())
    if all(f in alone for f in PUBLISHED_ANALOGUES):
        rows["hindsight: best of forest, LightGBM, SVR, linear"] = max(alone[f] for f in PUBLISHED_ANALOGUES)
    return rows


def expected_families(group: str) -> set:
    """The default's families that apply to a pair of this group (spectral ones, covariate ones
    or both: covariate learners run only without spectra)."""
    from soilcarbon.training.config import load_config
    from soilcarbon.training.search import family

    has_spectra, has_covariates = group != "covariates", group != "spectral"
    return {family(s) for s in load_config().expand(has_spectra, has_covariates)}


def table(dumps: str) -> pd.DataFrame:
    from soilcarbon.training.config import CandidateSpec
    from soilcarbon.training.search import family

    published = {(p["dataset"], p["target"]): p for p in pairs()}
    rows, default_families = [], default_rule()[0]
    for path in sorted(Path(dumps).glob("*.npz")):
        dataset, target = path.stem.split("__")
        saved = np.load(path)
        specs = []
        for text in saved["specs"]:
            model, label, params, transform = ast.literal_eval(str(text))
            specs.append(CandidateSpec(model, dict(params), transform, None, label))
        pair = published[(dataset, target)]
        missing = expected_families(pair["group"]) - {family(s) for s in specs}
        if missing:  # the default's rows would silently average fewer families, or fail
            _fail(f"{path}: the fits lack the default's families {', '.join(sorted(missing))}; "
                  f"fit with a configuration that has them (benchmarks/configs/broad.yaml)")
        limesoda = pair.get("best_of_4") is not None
        row = {"dataset": dataset, "target": target, "n": len(saved["y"]), "best_of_4": pair.get("best_of_4"),
               "group": pair["group"] if limesoda else f"{dataset} RMSE"}  # NIR and OPUS: RMSE, not R²
        for name, (pool, ensemble) in rules().items():
            row[name] = rule_r2(saved, specs, pool, ensemble, rmse=not limesoda)
        if limesoda:  # every LimeSoDa pair, whatever its n (most are below small_n)
            for name, weigh in WEIGHTINGS.items():
                row[name] = weighted_r2(saved, specs, default_families, weigh)
            row.update(hindsight_rows(saved, specs, default_families))
        rows.append(row)
    return pd.DataFrame(rows)


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=["fit", "table"])
    parser.add_argument("--dumps", required=True, help="folder of the saved fits (one .npz per pair)")
    parser.add_argument("--config", default=str(BROAD), help="the broad candidate configuration to fit")
    parser.add_argument("--subset", default="", help="regex on 'dataset/target/group'")
    parser.add_argument("--jobs", type=int, default=1, help="pairs fitted in parallel")
    parser.add_argument("--per-pair", action="store_true", help="print every pair, not only the group means")
    args = parser.parse_args()
    if args.step == "fit":
        chosen = [p for p in pairs() if re.search(args.subset, f"{p['dataset']}/{p['target']}/{p['group']}")]
        if not chosen:
            _fail(f"no pair matches --subset {args.subset!r}")
        Path(args.dumps).mkdir(parents=True, exist_ok=True)
        with ProcessPoolExecutor(args.jobs) as pool:
            futures = [pool.submit(fit_pair, p, args.config, args.dumps) for p in chosen]
            for pair, future in zip(chosen, futures):
                print(f"{pair['dataset']} {pair['target']}: {future.result()}", flush=True)
        return
    result = table(args.dumps)
    if result.empty:
        _fail(f"{args.dumps}: no saved fits (*.npz); run the fit step first")
    pd.set_option("display.width", 250)
    if args.per_pair:
        print(result.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    columns = [c for c in result.columns if c not in ("dataset", "target", "group", "n")]
    means = result.groupby("group")[columns].mean().T
    means.loc["pairs"] = result.groupby("group").size()
    print(means.to_string(float_format=lambda v: f"{v:.3f}"))


if __name__ == "__main__":
    main()
