"""MLflow tracking and registry: where runs go, what a training run logs, how a model is registered.

Tracking URI: ``MLFLOW_TRACKING_URI`` when set, else a SQLite file ``mlflow.db`` in the working
directory (artifacts in ``mlartifacts/`` beside it). A run logs the configuration, the data
digest, per-fold and summary metrics, the candidate table, plots and the pyfunc model, and
registers the model version with tags for target, unit and training data.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

from soilcarbon.errors import SoilCarbonError

EXPERIMENT = "soilcarbon"
REQUIREMENTS = ("numpy", "scipy", "pandas", "pyarrow", "scikit-learn", "lightgbm", "mlflow", "chemotools")


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` or the embedded default, a SQLite file in the working directory."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def local_store_folder() -> Path | None:
    """The folder of a local SQLite tracking store (database and artifacts), or None for a server."""
    uri = tracking_uri()
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///"):]).parent
    return None


def quiet_mlflow() -> None:
    """Keep MLflow's info logs and advisory warnings off the user's terminal."""
    import logging
    import warnings

    logging.getLogger("mlflow").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="mlflow")


def configure():
    """Point MLflow at the tracking URI (also the registry) and return the client."""
    import mlflow

    quiet_mlflow()
    from mlflow.tracking import MlflowClient

    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(uri, uri)


def ensure_experiment(name: str = EXPERIMENT) -> str:
    """The experiment id, creating it with artifacts beside a local SQLite database."""
    import mlflow

    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = None
    uri = tracking_uri()
    if uri.startswith("sqlite:///"):
        location = (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").resolve().as_uri()
    return mlflow.create_experiment(name, artifact_location=location)


def data_digest(ids, X, y) -> str:
    """SHA-256 (first 16 hex digits) of the training ids, matrix and target."""
    h = hashlib.sha256()
    h.update("\n".join(map(str, ids)).encode())
    h.update(np.ascontiguousarray(X, dtype=np.float64).tobytes())
    h.update(np.ascontiguousarray(y, dtype=np.float64).tobytes())
    return h.hexdigest()[:16]


def _requirements() -> list[str]:
    out = []
    for name in REQUIREMENTS:
        try:
            out.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            out.append(name)
    return out


def _flatten(prefix: str, value, out: dict) -> dict:
    if isinstance(value, dict):
        for key, item in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), item, out)
    else:
        out[prefix] = json.dumps(value) if isinstance(value, (list, tuple)) else value
    return out


def log_training(result, name: str, sources: dict, target_unit: str = "") -> str:
    """Log a :class:`~soilcarbon.training.train.TrainResult` and register its model; returns
    ``models:/NAME/VERSION``."""
    import mlflow

    from soilcarbon.training import plots

    configure()
    experiment_id = ensure_experiment()
    data = result.data
    digest = data_digest(data.ids, data.X, data.y)
    result.model.info["target_unit"] = target_unit
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"train-{name}") as run:
        params = _flatten("", result.config.to_dict(), {})
        params.update({"target": data.target, "n_samples": len(data.y), "n_dropped": data.n_dropped,
                       "n_points": data.layout.n_spectral, "covariates": len(data.layout.covariates),
                       "cv_scheme": result.cv_scheme, "selected_model": result.selection.name[:500],
                       "data_digest": digest})
        params.update({f"source.{k}": v for k, v in sources.items() if v})
        mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
        mlflow.log_metrics({f"cv_{k}": float(v) for k, v in result.metrics.items() if np.isfinite(v)})
        for row in result.fold_metrics.to_dict("records"):
            for key in ("rmse", "r2", "rpiq", "bias", "picp", "mean_width"):
                if key in row and np.isfinite(row[key]):
                    mlflow.log_metric(f"fold_{key}", float(row[key]), step=int(row["fold"]))
        mlflow.log_metric("train_seconds", result.seconds)
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            result.oof.to_csv(tmp / "oof_predictions.csv", index=False)
            result.selection.table().to_csv(tmp / "candidates.csv", index=False)
            result.fold_metrics.to_csv(tmp / "fold_metrics.csv", index=False)
            (tmp / "train.yaml").write_text(json.dumps(result.config.to_dict(), indent=2))
            for path in plots.training_plots(result, tmp, target_unit):
                mlflow.log_artifact(str(path), artifact_path="plots")
            for file in ("oof_predictions.csv", "candidates.csv", "fold_metrics.csv", "train.yaml"):
                mlflow.log_artifact(str(tmp / file), artifact_path="cv")
        tags = {"target": data.target, "unit": target_unit or "unspecified",
                "spectral_unit": data.layout.unit or "none", "training_data": sources.get("spectra") or
                sources.get("covariates") or "", "data_digest": digest, "n_train": str(len(data.y)),
                "cv_scheme": result.cv_scheme, "selected_model": result.selection.name[:500]}
        tags.update({f"cv_{k}": f"{v:.6g}" for k, v in result.metrics.items()})
        return register_version(result.model, name, data.X, data.ids, tags, (
            f"SOC calibration for {data.target} ({result.selection.name[:200]}); "
            f"CV RMSE {result.metrics['rmse']:.4g}, PICP {result.metrics.get('picp', float('nan')):.3f} "
            f"at level {result.model.level:g} ({result.cv_scheme}); run {run.info.run_id}"))


def register_version(model, name: str, X, ids, tags: dict, description: str) -> str:
    """Log ``model`` as the pyfunc of the active run, register it as a new version of ``name`` with
    ``tags`` and ``description``, and return ``models:/NAME/VERSION``.

    The one way every command (``train``, ``transfer``) turns a fitted model into a registered
    version; ``X``/``ids`` are model-matrix rows and ids for the logged input example.
    """
    client = configure()
    with contextlib.redirect_stderr(io.StringIO()):  # MLflow prints registration chatter to stderr
        info = _log_model(model, X, ids, name)
    model_version = str(info.registered_model_version)
    for key, value in tags.items():
        client.set_model_version_tag(name, model_version, key, str(value))
    client.update_model_version(name, model_version, description=description)
    return f"models:/{name}/{model_version}"


def _log_model(model, X, ids, name: str):
    import mlflow

    from soilcarbon.models import pyfunc

    return mlflow.pyfunc.log_model(
        name="model",
        python_model=pyfunc.SOCPyfunc(model),
        signature=pyfunc.signature(model),
        input_example=pyfunc.input_example(model, X, ids),
        metadata=pyfunc.metadata(model),
        pip_requirements=_requirements(),
        registered_model_name=name,
    )


def version_summary(mv, aliases=()) -> dict:
    """What training recorded on a registered model version (its tags): target, unit, CV scheme and
    metrics, training data digest and size, the selected model, and the run behind it."""
    tags = dict(mv.tags or {})
    n_train = tags.get("n_train", "")
    return {
        "name": mv.name, "version": int(mv.version), "aliases": list(aliases),
        "target": tags.get("target", ""), "unit": tags.get("unit", ""),
        "cv_scheme": tags.get("cv_scheme", ""), "run_id": mv.run_id,
        "metrics": {k[3:]: float(v) for k, v in tags.items() if k.startswith("cv_") and k != "cv_scheme"},
        "created": int(mv.creation_timestamp or 0),
        "data_digest": tags.get("data_digest", ""), "n_train": int(n_train) if n_train.isdigit() else None,
        "training_data": tags.get("training_data", ""), "selected_model": tags.get("selected_model", ""),
        "model_id": getattr(mv, "model_id", None) or _logged_model_id(mv.source),
    }


def _logged_model_id(source) -> str | None:
    """The MLflow 3 logged-model id in a version's source ``models:/m-<id>``, else None."""
    text = str(source or "")
    return text[len("models:/"):] if text.startswith("models:/m-") and "/" not in text[len("models:/"):] else None


def list_models() -> list[dict]:
    """Registered models with their versions, aliases and CV metrics (from version tags)."""
    client = configure()
    out = []
    for registered in client.search_registered_models():
        aliases = {}
        for alias, ver in (registered.aliases or {}).items():
            aliases.setdefault(str(ver), []).append(alias)
        versions = client.search_model_versions(f"name='{registered.name}'")
        for mv in sorted(versions, key=lambda v: int(v.version)):
            out.append(version_summary(mv, aliases.get(str(mv.version), [])))
    return out


def promote(name: str, version: str, alias: str = "champion") -> None:
    """Point ``alias`` at a model version (``models:/NAME@ALIAS``)."""
    from mlflow.exceptions import MlflowException

    client = configure()
    try:
        client.get_model_version(name, str(version))
    except MlflowException as exc:
        raise SoilCarbonError(f"model {name!r} has no version {version}; see `soilcarbon models list`") from exc
    try:
        client.set_registered_model_alias(name, alias, str(version))
    except MlflowException as exc:  # reserved ('latest', 'v1') or invalid alias names
        raise SoilCarbonError(f"--alias {alias!r}: {exc.message}") from exc


def model_version_info(uri: str) -> dict:
    """What later steps need to know about a registered model version: ``{"uri", "name",
    "version", "target", "unit", "residuals"}``, where ``unit`` is the registered target unit
    (``""`` when the version was registered without one) and ``residuals`` the out-of-fold
    residuals (observed − predicted) logged as ``cv/oof_predictions.csv`` by :func:`log_training`."""
    import mlflow
    import pandas as pd
    from mlflow.exceptions import MlflowException

    from soilcarbon.serving.predict import resolve_model_uri

    client = configure()
    resolved, name, version = resolve_model_uri(uri, client)
    if name is None:
        raise SoilCarbonError(f"model {uri!r} is not a registered model version (models:/NAME/VERSION); its "
                              "target unit and out-of-fold residuals are read from the registry")
    mv = client.get_model_version(name, version)
    unit = mv.tags.get("unit", "")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = mlflow.artifacts.download_artifacts(run_id=mv.run_id, artifact_path="cv/oof_predictions.csv",
                                                       dst_path=tmp)
            oof = pd.read_csv(path)
    except (MlflowException, OSError) as exc:
        raise SoilCarbonError(f"model {resolved}: its run {mv.run_id} has no cv/oof_predictions.csv artifact "
                              "(out-of-fold residuals); retrain it with `soilcarbon train`") from exc
    residuals = (oof["observed"] - oof["prediction"]).to_numpy(dtype=float)
    return {"uri": resolved, "name": name, "version": version, "target": mv.tags.get("target", ""),
            "unit": "" if unit == "unspecified" else unit, "residuals": residuals[np.isfinite(residuals)]}
