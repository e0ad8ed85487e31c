"""Compare registered model versions: what each one logged, and their accuracy on the same test samples.

- Every URI is resolved with :func:`~soilcarbon.registry.resolve` (an alias becomes
  ``models:/NAME/VERSION``); what training recorded on a version is read with
  :func:`~soilcarbon.training.registry.version_summary` and the run's parameters (the configuration).
- Without test data, versions are compared by what they logged; versions trained on different data
  (digest) or with different CV schemes are flagged: their CV metrics are not directly comparable.
- Test data are read and joined exactly like ``train`` does
  (:func:`~soilcarbon.training.data.load_inputs`, :func:`~soilcarbon.training.data.target_values`);
  samples without the target are counted and dropped. Every version predicts the test file through
  :func:`~soilcarbon.serving.batch.predict_file`, the code of ``soilcarbon predict``, so the numbers
  are those of the predict output; a sample a version cannot predict is reported, and the versions are
  compared on the samples every version predicted.
- Metrics: :func:`~soilcarbon.training.metrics.regression_metrics` (as ``train`` reports them), Lin's
  concordance, and the share of samples outside the calibration domain; by quintile of the observed
  values (the same five ranges for every version): RMSE, bias, coverage and mean width.
- Pairs: the difference RMSE(a) - RMSE(b) with a paired bootstrap confidence interval (BCa, Efron &
  Tibshirani 1993, *An Introduction to the Bootstrap*, ch. 14; ``scipy.stats.bootstrap`` with
  ``paired=True``) and a paired permutation p-value (each sample's two predictions swapped at random,
  Good 2005, *Permutation, Parametric and Bootstrap Tests of Hypotheses*; ``scipy.stats.permutation_test``
  with ``permutation_type="samples"``). Samples are resampled; no model is re-trained.
"""

from __future__ import annotations

import itertools
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from soilcarbon.errors import SoilCarbonError
from soilcarbon.models.layout import ID_COLUMN
from soilcarbon.training.metrics import concordance, regression_metrics

#: Run parameters of a training run that describe its data rather than its configuration.
DATA_PARAMS = {"target", "n_samples", "n_dropped", "n_points", "covariates", "cv_scheme", "selected_model",
               "data_digest"}
#: How many not-predicted samples each version lists in the JSON (all are counted).
LIST_PROBLEMS = 50
N_RANGES = 5
#: Fewer common samples than this give the difference without an interval or p-value.
MIN_PAIRED = 10


# ============================================================================ versions
@dataclass
class Version:
    """A registered model version: the URI asked for, the resolved one, and what training logged."""

    requested_uri: str
    uri: str
    name: str
    version: str
    logged: dict  # registry.version_summary
    config: dict  # run parameters describing the training configuration

    @property
    def label(self) -> str:
        return f"{self.name} v{self.version}"


def resolve_versions(uris: list[str], client=None) -> list[Version]:
    """Resolve every URI to a registered version and read what its training logged.

    Fewer than two URIs, a URI that does not resolve or is not a registered version, or the same
    version twice are errors.
    """
    from mlflow.exceptions import MlflowException

    from soilcarbon.registry import resolve as resolve_model_uri
    from soilcarbon.registry import configure, version_summary

    if len(uris) < 2:
        raise SoilCarbonError(f"compare needs at least two model URIs, got {len(uris)}; "
                              "e.g. soilcarbon compare models:/soc-Ciso/1 models:/soc-Ciso@champion")
    client = client or configure()
    versions: list[Version] = []
    seen: dict[str, str] = {}
    for uri in uris:
        resolved, name, number = resolve_model_uri(uri, client)
        if name is None:
            raise SoilCarbonError(f"{uri!r} is not a registered model version; compare takes "
                                  "models:/NAME/VERSION or models:/NAME@ALIAS")
        if resolved in seen:
            raise SoilCarbonError(f"{uri!r} and {seen[resolved]!r} are the same version ({resolved}); "
                                  "compare different versions")
        seen[resolved] = uri
        mv = client.get_model_version(name, number)
        params = {}
        if mv.run_id:
            try:
                params = dict(client.get_run(mv.run_id).data.params)
            except MlflowException:
                params = {}
        config = {k: v for k, v in params.items() if k not in DATA_PARAMS and not k.startswith("source.")}
        versions.append(Version(str(uri), resolved, name, number, version_summary(mv), config))
    return versions


def comparability_warnings(versions: list[Version]) -> list[str]:
    """Why the versions' logged CV metrics are not directly comparable (different target, data or CV)."""
    out = []

    def differ(key: str) -> bool:
        return len({str(v.logged.get(key)) for v in versions}) > 1

    def listing(key: str, suffix=lambda v: "") -> str:
        return "; ".join(f"{v.uri}: {v.logged.get(key) or '?'}{suffix(v)}" for v in versions)

    if differ("target"):
        out.append(f"the models were trained on different targets ({listing('target')}); "
                   "their errors are in different quantities")
    if differ("data_digest"):
        out.append("the versions were trained on different data (" +
                   listing("data_digest", lambda v: f", {v.logged.get('n_train') or '?'} samples") +
                   "); their CV metrics are not directly comparable: compare them on the same test data "
                   "(--spectra, --target)")
    if differ("cv_scheme"):
        out.append(f"the versions were cross-validated differently ({listing('cv_scheme')}); "
                   "their CV metrics are not directly comparable")
    return out


def config_differences(versions: list[Version]) -> dict[str, list]:
    """Configuration parameters whose values differ between versions: ``{param: [value per version]}``."""
    keys = sorted(set().union(*(v.config for v in versions)))
    return {k: [v.config.get(k) for v in versions] for k in keys
            if len({str(v.config.get(k)) for v in versions}) > 1}


# ============================================================================ statistics
def version_metrics(observed, prediction, lower, upper, in_domain) -> dict:
    """``n, rmse, r2, rpiq, bias, picp, mean_width`` as ``train`` reports them, Lin's ``ccc``, and the
    ``out_of_domain_share``."""
    metrics = regression_metrics(observed, prediction, lower, upper)
    metrics["n"] = int(metrics["n"])
    metrics["ccc"] = concordance(observed, prediction)
    metrics["out_of_domain_share"] = float(1.0 - np.mean(np.asarray(in_domain, dtype=bool)))
    return metrics


def range_bins(observed, n_bins: int = N_RANGES) -> np.ndarray:
    """Quantile bin (0 .. n_bins-1) of every observed value (``pandas.qcut``; fewer bins when values tie)."""
    values = np.asarray(observed, dtype=float)
    if len(np.unique(values)) < 2:  # one value: one range (qcut has no edges to cut at)
        return np.zeros(len(values), dtype=int)
    return np.asarray(pd.qcut(values, n_bins, labels=False, duplicates="drop"), dtype=int)


def range_metrics(observed, prediction, lower, upper, bins) -> list[dict]:
    """Per range of observed values: bounds, n, rmse, bias, picp (coverage) and mean interval width."""
    y, p = np.asarray(observed, dtype=float), np.asarray(prediction, dtype=float)
    lo, hi = np.asarray(lower, dtype=float), np.asarray(upper, dtype=float)
    rows = []
    for b in np.unique(bins):
        m = bins == b
        error = p[m] - y[m]
        rows.append({"range": int(b) + 1, "low": float(y[m].min()), "high": float(y[m].max()), "n": int(m.sum()),
                     "rmse": float(np.sqrt(np.mean(error**2))), "bias": float(error.mean()),
                     "picp": float(np.mean((y[m] >= lo[m]) & (y[m] <= hi[m]))),
                     "mean_width": float(np.mean(hi[m] - lo[m]))})
    return rows


def _rmse_difference(error_a, error_b, axis=-1):
    return np.sqrt(np.mean(error_a**2, axis=axis)) - np.sqrt(np.mean(error_b**2, axis=axis))


def paired_rmse_test(observed, prediction_a, prediction_b, level: float = 0.9, n_resamples: int = 2000,
                     seed: int = 0) -> dict:
    """RMSE(a) - RMSE(b) on the same samples, its paired bootstrap interval (BCa) at ``level`` and
    the two-sided paired permutation p-value.

    The bootstrap draws samples with replacement, keeping each sample's two errors together; the
    permutation test swaps, per sample at random, which version made which prediction (under the
    null hypothesis both versions are exchangeable). ``p_value`` = (1 + #{|d*| >= |d|}) / (1 + B).
    """
    from scipy import stats

    y = np.asarray(observed, dtype=float)
    error_a = np.asarray(prediction_a, dtype=float) - y
    error_b = np.asarray(prediction_b, dtype=float) - y
    difference = float(_rmse_difference(error_a, error_b))
    rng = np.random.default_rng(seed)
    if np.array_equal(error_a, error_b):
        return {"rmse_diff": difference, "ci_low": 0.0, "ci_high": 0.0, "p_value": 1.0}
    if len(y) < MIN_PAIRED:
        return {"rmse_diff": difference, "ci_low": None, "ci_high": None, "p_value": None}
    boot = stats.bootstrap((error_a, error_b), _rmse_difference, paired=True, vectorized=True,
                           confidence_level=level, n_resamples=n_resamples, method="BCa", rng=rng, batch=500)
    low, high = float(boot.confidence_interval.low), float(boot.confidence_interval.high)
    if not (np.isfinite(low) and np.isfinite(high)):  # BCa undefined (degenerate resamples): percentile
        boot = stats.bootstrap((error_a, error_b), _rmse_difference, paired=True, vectorized=True,
                               confidence_level=level, n_resamples=n_resamples, method="percentile", rng=rng,
                               batch=500)
        low, high = float(boot.confidence_interval.low), float(boot.confidence_interval.high)
    test = stats.permutation_test((error_a, error_b), _rmse_difference, permutation_type="samples",
                                  vectorized=True, n_resamples=n_resamples, alternative="two-sided", rng=rng,
                                  batch=500)
    return {"rmse_diff": difference, "ci_low": low, "ci_high": high, "p_value": float(test.pvalue),
            "se": float(boot.standard_error)}


# ============================================================================ test data
@dataclass
class TestData:
    """Test samples with their observed target, read and joined like ``train`` reads its data."""

    ids: np.ndarray  # samples with a target value
    observed: np.ndarray
    n_rows: int  # samples in the joined test data
    n_without_target: int
    notes: list = field(default_factory=list)


def read_test_data(spectra, target: str, lab=None, covariates=None, id_col: str = ID_COLUMN,
                   unit: str | None = None) -> TestData:
    """Observed target values of the test samples; samples without a value are counted and dropped."""
    from soilcarbon.training.data import load_inputs, target_values

    data_spectra, cov_table, notes = load_inputs(spectra, lab, covariates, id_col, unit, allow_nan=True)
    if data_spectra is not None:
        table = pd.DataFrame({id_col: data_spectra.ids}).join(
            data_spectra.meta.drop(columns=[id_col], errors="ignore").reset_index(drop=True))
        if target not in table.columns and cov_table is not None and target in cov_table.columns:
            table = table.merge(cov_table[[id_col, target]], on=id_col, how="left")
    else:
        table = cov_table
    observed = target_values(table, target, id_col)
    ids = table[id_col].astype(str).str.strip().to_numpy(dtype=object)
    keep = np.isfinite(observed)
    if not keep.any():
        raise SoilCarbonError(f"{lab or spectra or covariates}: none of the {len(ids)} test samples has a value "
                              f"for {target!r}; give the lab values with --lab")
    n_without = int((~keep).sum())
    if n_without:
        notes.append(f"{n_without} of {len(ids)} test sample(s) without a {target} value were dropped")
    return TestData(ids[keep], observed[keep], len(ids), n_without, notes)


def predict_version(model, spectra, covariates, id_col: str, unit: str | None, level: float, folder: Path,
                    progress=None):
    """``soilcarbon predict`` of one loaded version on the test file: ``(output table, PredictionSummary)``;
    ``progress``: ``predict_file``'s progress hook (the web page's enforces its batch limit).

    Covariates are passed only to a version that uses them; a covariates-only version reads the
    covariates table when one is given, else the covariate columns of the spectra table.
    """
    from soilcarbon.serving.batch import predict_file

    source_spectra, source_cov = spectra, None
    if model.axis is None:
        source_spectra, source_cov = (None, covariates) if covariates is not None else (spectra, None)
    elif model.covariates:
        source_cov = covariates
    if source_spectra is None and source_cov is None:
        raise SoilCarbonError(f"the model {model.uri} needs {'covariates' if model.axis is None else 'spectra'}; "
                              "pass --covariates or --spectra")
    output = Path(folder) / f"predictions-{model.name}-{model.version}.parquet"
    summary = predict_file(model, output, spectra=source_spectra, covariates=source_cov, id_col=id_col,
                           unit=unit, level=level, quiet=True, progress=progress)
    return pd.read_parquet(output), summary


# ============================================================================ comparison
@dataclass
class Comparison:
    """The result of a comparison: ``to_dict()`` is the JSON; ``predictions`` the joined test table."""

    mode: str  # "test" or "logged"
    versions: list[Version]
    level: float | None
    target: str
    models: list[dict]
    pairs: list[dict]
    by_range: list[dict] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    config_differences: dict = field(default_factory=dict)
    test_data: dict = field(default_factory=dict)
    #: long table: sample_id, observed, model_uri, prediction, lower, upper, in_domain, range
    predictions: pd.DataFrame | None = None

    def to_dict(self) -> dict:
        return {"mode": self.mode, "level": self.level, "target": self.target, "models": self.models,
                "pairs": self.pairs, "by_range": self.by_range, "warnings": self.warnings, "notes": self.notes,
                "config_differences": self.config_differences, "test_data": self.test_data}


def _logged_entry(version: Version) -> dict:
    keep = ("aliases", "target", "unit", "run_id", "model_id", "data_digest", "n_train", "training_data",
            "cv_scheme", "selected_model")
    return {"cv_metrics": dict(version.logged.get("metrics", {})), **{k: version.logged.get(k) for k in keep}}


def compare_logged(versions: list[Version]) -> Comparison:
    """Compare what each version logged (no test data)."""
    warnings = comparability_warnings(versions)
    comparable = not any("not directly comparable" in w or "different targets" in w for w in warnings)
    models = []
    for v in versions:
        cv = v.logged.get("metrics", {})
        entry = {"uri": v.uri, "requested_uri": v.requested_uri, "name": v.name, "version": v.version,
                 **{k: cv.get(k) for k in ("n", "rmse", "r2", "rpiq", "bias", "picp", "mean_width")},
                 "source": "cross-validation", "level": _float(v.config.get("interval.level")),
                 "logged": _logged_entry(v), "config": v.config}
        if entry["n"] is not None:
            entry["n"] = int(entry["n"])
        models.append(entry)
    pairs = []
    for a, b in itertools.combinations(models, 2):
        diff = (a["rmse"] - b["rmse"]) if a["rmse"] is not None and b["rmse"] is not None else None
        pairs.append({"a": a["uri"], "b": b["uri"], "rmse_diff": diff, "ci_low": None, "ci_high": None,
                      "p_value": None, "comparable": comparable, "source": "cross-validation"})
    return Comparison("logged", versions, None, versions[0].logged.get("target", ""), models, pairs,
                      warnings=warnings, config_differences=config_differences(versions))


def _float(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def compare_on_test(versions: list[Version], spectra, target: str, lab=None, covariates=None,
                    id_col: str = ID_COLUMN, unit: str | None = None, level: float = 0.9,
                    n_resamples: int = 2000, seed: int = 0, models=None, progress=None) -> Comparison:
    """Predict the test samples with every version and compare them on the samples all predicted.

    ``models`` (optional) are the versions already loaded with :func:`load_model`, in order;
    ``progress`` (optional) is passed to every version's ``predict_file``.
    """
    from soilcarbon.serving.model import check_level, load_model

    level = check_level(level)
    if spectra is None and covariates is None:
        raise SoilCarbonError("test data need --spectra (and/or --covariates) with --target")
    data = read_test_data(spectra, target, lab, covariates, id_col, unit)
    warnings = [w for w in comparability_warnings(versions) if "different targets" in w]
    targets = {v.logged.get("target") for v in versions}
    if targets and target not in targets:
        warnings.append(f"the versions were trained on {', '.join(sorted(map(str, targets)))}, "
                        f"not on the test target {target!r}")
    loaded = models or [load_model(v.uri) for v in versions]
    frames, problems = [], []
    with tempfile.TemporaryDirectory(prefix="soilcarbon-compare-") as folder:
        for model in loaded:
            frame, summary = predict_version(model, spectra, covariates, id_col, unit, level, Path(folder),
                                             progress)
            frames.append(frame.drop_duplicates(ID_COLUMN, keep="first").set_index(ID_COLUMN))
            problems.append(dict(summary.problems))
    predicted_by_all = np.ones(len(data.ids), dtype=bool)
    per_version = []
    for frame in frames:
        rows = frame.reindex(data.ids)
        per_version.append(rows)
        predicted_by_all &= rows["prediction"].notna().to_numpy()
    if not predicted_by_all.any():
        raise SoilCarbonError(f"no test sample with a {target} value was predicted by every version "
                              f"(test ids like {', '.join(map(str, data.ids[:3]))}); check --id-col and the files")
    y = data.observed[predicted_by_all]
    ids = data.ids[predicted_by_all]
    bins = range_bins(y)
    model_rows, by_range, long = [], [], []
    for version, rows, reasons in zip(versions, per_version, problems):
        missing = ~rows["prediction"].notna().to_numpy()
        not_predicted = [{"sample_id": str(i), "reason": reasons.get(str(i), "no prediction in this "
                          "version's output")} for i in data.ids[missing]]
        use = rows[predicted_by_all]
        metrics = version_metrics(y, use["prediction"], use["lower"], use["upper"], use["in_domain"])
        model_rows.append({"uri": version.uri, "requested_uri": version.requested_uri, "name": version.name,
                           "version": version.version, **metrics, "source": "test data",
                           "n_not_predicted": len(not_predicted), "not_predicted": not_predicted[:LIST_PROBLEMS],
                           "logged": _logged_entry(version)})
        for row in range_metrics(y, use["prediction"], use["lower"], use["upper"], bins):
            by_range.append({"uri": version.uri, **row})
        long.append(pd.DataFrame({ID_COLUMN: ids, "observed": y, "model_uri": version.uri,
                                  "prediction": use["prediction"].to_numpy(), "lower": use["lower"].to_numpy(),
                                  "upper": use["upper"].to_numpy(), "in_domain": use["in_domain"].to_numpy(),
                                  "range": bins + 1}))
    dropped_by_some = int((~predicted_by_all).sum())
    notes = list(data.notes)
    if len(y) < MIN_PAIRED:
        notes.append(f"only {len(y)} sample(s) compared: too few for a paired interval or p-value "
                     f"(at least {MIN_PAIRED})")
    if dropped_by_some:
        notes.append(f"{dropped_by_some} test sample(s) with a {target} value were not predicted by every "
                     "version and are left out of the comparison (see not_predicted)")
    pairs = []
    for (i, a), (j, b) in itertools.combinations(enumerate(versions), 2):
        test = paired_rmse_test(y, long[i]["prediction"], long[j]["prediction"], level, n_resamples, seed)
        pairs.append({"a": a.uri, "b": b.uri, **test, "n": int(len(y)), "comparable": True, "source": "test data",
                      "n_resamples": n_resamples})
    test_data = {"spectra": str(spectra) if spectra else None, "lab": str(lab) if lab else None,
                 "covariates": str(covariates) if covariates else None, "n_rows": data.n_rows,
                 "n_without_target": data.n_without_target, "n_compared": int(len(y))}
    return Comparison("test", versions, level, target, model_rows, pairs, by_range, warnings, notes,
                      config_differences(versions), test_data, pd.concat(long, ignore_index=True))
