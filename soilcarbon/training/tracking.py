"""MLflow tracking: what a training run logs and how its model is registered (the store, URI
resolution, listing and promotion are in :mod:`soilcarbon.registry`).

A run logs the configuration, the data
digest, per-fold and summary metrics, the candidate table, plots and the pyfunc model, and
registers the model version with tags for target, unit and training data.

Registration is all-or-nothing for anyone reading the registry: the model is logged first, then
the version is created with its tags and description in one call (one database transaction), so
no version is ever visible without its CV metrics. A run whose process died (SIGKILL, power loss)
is left RUNNING by MLflow; the next ``train`` marks it FAILED (:func:`soilcarbon.registry.fail_dead_runs`).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from soilcarbon.errors import SoilCarbonError
from soilcarbon.registry import configure, tracking_uri

EXPERIMENT = "soilcarbon"
#: Tests only (:func:`_test_point`): hold ``log_training`` after the model is logged, just before
#: the version is registered, so a test can kill the process exactly there.
HOLD_BEFORE_REGISTRATION = "SOILCARBON_TEST_HOLD_BEFORE_REGISTRATION"
#: Tests only: hold ``log_training`` before it opens the store, so that several processes can be
#: released at once onto a fresh store.
HOLD_BEFORE_STORE = "SOILCARBON_TEST_HOLD_BEFORE_STORE"
PACKAGE = "soilcarbon"
#: Provided by MLflow itself: ``log_model`` adds ``mlflow==<version in use>`` to the requirements.
MLFLOW_DISTRIBUTIONS = {"mlflow", "mlflow-skinny", "mlflow-tracing"}


def ensure_experiment(name: str = EXPERIMENT) -> str:
    """The experiment id, creating it with artifacts beside a local SQLite database (another
    process creating it at the same moment is fine)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = None
    uri = tracking_uri()
    if uri.startswith("sqlite:///"):
        location = (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").resolve().as_uri()
    try:
        return mlflow.create_experiment(name, artifact_location=location)
    except MlflowException:
        experiment = mlflow.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def data_digest(ids, X, y) -> str:
    """SHA-256 (first 16 hex digits) of the training ids, matrix and target."""
    h = hashlib.sha256()
    h.update("\n".join(map(str, ids)).encode())
    for start in range(0, len(X), 4096):  # row blocks: the bytes of the C-ordered matrix without copying it whole
        h.update(np.ascontiguousarray(X[start:start + 4096], dtype=np.float64).tobytes())
    h.update(np.ascontiguousarray(y, dtype=np.float64).tobytes())
    return h.hexdigest()[:16]


def model_requirements(python_model) -> list[str]:
    """Pinned pip requirements (``name==version in use``) of everything ``python_model`` needs to load
    and predict, derived rather than listed by hand.

    1. The modules the pickled model refers to (read back through an :class:`pickle.Unpickler` that
       records every ``find_class``: the pickle MLflow writes holds exactly these references).
    2. For our own modules among them, every third-party import in their source, module level or
       inside functions (``ast``), following imports of our other modules; this is how ``numba``
       (imported by the compiled local PLS) or ``lightgbm`` is found.
    3. Their distributions (``importlib.metadata.packages_distributions``) and, recursively, what
       those declare in ``Requires-Dist`` for this platform (no extras), so that the versions of
       transitive dependencies (``llvmlite``, ``joblib``, ...) are the ones in use, too.

    The package itself is not listed: it travels with the model as code (``code_paths``). MLflow
    adds ``mlflow`` itself; its own dependencies are left to pip.
    """
    import importlib.metadata as metadata
    import pickle
    import sys

    import cloudpickle

    class Recorder(pickle.Unpickler):
        def __init__(self, data: bytes):
            super().__init__(io.BytesIO(data))
            self.modules = set()

        def find_class(self, module, name):
            self.modules.add(module)
            return super().find_class(module, name)

    recorder = Recorder(cloudpickle.dumps(python_model))
    recorder.load()
    tops = {m.split(".")[0] for m in recorder.modules if m.split(".")[0] != PACKAGE}
    tops |= _source_imports({m for m in recorder.modules if m.split(".")[0] == PACKAGE})
    tops -= set(sys.stdlib_module_names) | {"builtins", "__main__"}
    by_module = metadata.packages_distributions()
    wanted = {dist for top in tops for dist in by_module.get(top, [])}
    return sorted(f"{dist}=={metadata.version(dist)}" for dist in _with_dependencies(wanted)
                  if _canonical(dist) not in MLFLOW_DISTRIBUTIONS | {PACKAGE})


def _canonical(name: str) -> str:
    import re

    return re.sub(r"[-_.]+", "-", name).lower()


def _source_imports(modules: set[str]) -> set[str]:
    """Top-level names of the non-package modules imported anywhere in the source of ``modules``
    (our own), following imports of our other modules."""
    import ast

    root = Path(__file__).resolve().parents[1]

    def source(name: str) -> Path | None:
        base = root.joinpath(*name.split(".")[1:])
        for path in (base.with_suffix(".py"), base / "__init__.py"):
            if path.is_file():
                return path
        return None

    seen, todo, found = set(), list(modules), set()
    while todo:
        name = todo.pop()
        path = source(name)
        if name in seen or path is None:
            continue
        seen.add(name)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            else:
                continue
            for imported in names:
                if imported.split(".")[0] == PACKAGE:
                    todo.append(imported)
                else:
                    found.add(imported.split(".")[0])
    return found


def _with_dependencies(distributions: set[str]) -> set[str]:
    """``distributions`` and, recursively, the installed distributions they require (no extras)."""
    import importlib.metadata as metadata

    from packaging.requirements import Requirement

    out, todo = {}, list(distributions)
    while todo:
        dist = todo.pop()
        key = _canonical(dist)
        if key in out or key in MLFLOW_DISTRIBUTIONS:
            continue
        try:
            out[key] = metadata.distribution(dist).metadata["Name"]
            requires = metadata.requires(dist) or []
        except metadata.PackageNotFoundError:
            out.pop(key, None)
            continue
        for line in requires:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return set(out.values())


def package_code(folder: Path) -> Path:
    """A copy of this package's source (no caches) in ``folder``, for ``code_paths``."""
    import shutil

    source = Path(__file__).resolve().parents[1]
    target = Path(folder) / PACKAGE
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return target


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

    from soilcarbon import registry

    _test_point(HOLD_BEFORE_STORE)
    client = configure()
    experiment_id = ensure_experiment()
    registry.fail_dead_runs(client, experiment_id)
    data = result.data
    digest = data_digest(data.ids, data.X, data.y)
    result.model.info["target_unit"] = target_unit
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"train-{name}",
                          tags=registry.process_tags()) as run:
        params = _flatten("", result.config.to_dict(), {})
        params.update({"target": data.target, "n_samples": len(data.y), "n_dropped": data.n_dropped,
                       "n_points": data.layout.n_spectral, "covariates": len(data.layout.covariates),
                       "cv_scheme": result.cv_scheme, "selected_model": result.selection.name[:500],
                       "data_digest": digest})
        params.update({f"source.{k}": v for k, v in sources.items() if v})
        if result.compute is not None:  # what training chose (jobs, outer folds, halving, budget)
            params.update(result.compute.params())
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
        if result.compute is not None:
            tags["compute"] = "; ".join(result.compute.lines())[:5000]
        tags.update({f"cv_{k}": f"{v:.6g}" for k, v in result.metrics.items()})
        trained = result.model.info.get("covariate_provenance")
        if trained and trained["indices"]:  # from covariates extract; map uses them by default
            tags["indices"] = ",".join(trained["indices"])
            tags["bands"] = ",".join(f"{role}={column}" for role, column in trained["bands"].items())
        return register_version(result.model, name, data.X, data.ids, tags, (
            f"SOC calibration for {data.target} ({result.selection.name[:200]}); "
            f"CV RMSE {result.metrics['rmse']:.4g}, PICP {result.metrics.get('picp', float('nan')):.3f} "
            f"at level {result.model.level:g} ({result.cv_scheme}); run {run.info.run_id}"))


def register_version(model, name: str, X, ids, tags: dict, description: str) -> str:
    """Log ``model`` as the pyfunc of the active run and register it as a new version of ``name``
    with ``tags`` and ``description`` (all-or-nothing, :func:`soilcarbon.registry.register`);
    returns ``models:/NAME/VERSION``.

    The one way every command (``train``, ``transfer``) turns a fitted model into a registered
    version; ``X``/``ids`` are model-matrix rows and ids for the logged input example.
    """
    import mlflow

    from soilcarbon import registry

    client = configure()
    with contextlib.redirect_stderr(io.StringIO()):  # MLflow prints logging chatter to stderr
        info = _log_model(model, X, ids)
    _test_point(HOLD_BEFORE_REGISTRATION)
    version = registry.register(client, name, info, mlflow.active_run().info.run_id, tags, description)
    return f"models:/{name}/{version}"


def _test_point(variable: str) -> None:
    """A deterministic point for tests that kill or race ``train`` processes: when the environment
    variable ``variable`` names a file FILE, write ``FILE.<pid>`` and wait until FILE exists (at
    most 120 s). See :data:`HOLD_BEFORE_REGISTRATION` and :data:`HOLD_BEFORE_STORE`."""
    target = os.environ.get(variable)
    if not target:
        return
    import time

    Path(f"{target}.{os.getpid()}").write_text(str(os.getpid()))
    deadline = time.monotonic() + 120
    while not Path(target).exists() and time.monotonic() < deadline:
        time.sleep(0.05)


def _log_model(model, X, ids):
    """Log the pyfunc with this package's code and its pinned requirements, so that the model
    loads and predicts where soilcarbon is not installed (``mlflow models serve``, a Spark worker,
    a notebook): MLflow puts ``code/`` on ``sys.path`` before unpickling."""
    import mlflow

    from soilcarbon.models import pyfunc

    python_model = pyfunc.SOCPyfunc(model)
    with tempfile.TemporaryDirectory() as tmp:
        return mlflow.pyfunc.log_model(
            name="model",
            python_model=python_model,
            signature=pyfunc.signature(model),
            input_example=pyfunc.input_example(model, X, ids),
            metadata=pyfunc.metadata(model),
            pip_requirements=model_requirements(python_model),
            code_paths=[str(package_code(Path(tmp)))],
        )


def model_version_info(uri: str) -> dict:
    """What later steps need to know about a registered model version: ``{"uri", "name",
    "version", "target", "unit", "residuals"}``, where ``unit`` is the registered target unit
    (``""`` when the version was registered without one) and ``residuals`` the out-of-fold
    residuals (observed − predicted) logged as ``cv/oof_predictions.csv`` by :func:`log_training`."""
    import mlflow
    import pandas as pd
    from mlflow.exceptions import MlflowException

    from soilcarbon.registry import resolve

    client = configure()
    resolved, name, version = resolve(uri, client)
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
