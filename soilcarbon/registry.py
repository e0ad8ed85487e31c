"""The MLflow registry, in one place: where the store is, how a URI becomes a model version, loading,
listing and promoting. Every command (train, predict, serve, map, models) goes through here.

Tracking URI: ``MLFLOW_TRACKING_URI`` when set, else a SQLite file ``mlflow.db`` in the working
directory (also the registry; artifacts in ``mlartifacts/`` beside it).

A URI given by a user (``models:/NAME@ALIAS``, ``models:/NAME/latest``) is resolved once to the
concrete version ``models:/NAME/VERSION``, and that is what every output names (prediction rows,
GeoTIFF tags, the REST responses): an alias moves, a version does not.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

from soilcarbon.errors import SoilCarbonError


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` or the embedded default, a SQLite file in the working directory."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def quiet_mlflow() -> None:
    """Keep MLflow's info logs and advisory warnings off the user's terminal."""
    import logging
    import warnings

    logging.getLogger("mlflow").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="mlflow")


def configure():
    """Point MLflow at the tracking URI (also the registry) and return an ``MlflowClient``."""
    import mlflow

    quiet_mlflow()
    from mlflow.tracking import MlflowClient

    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    with _first_opening(uri):
        client = MlflowClient(uri, uri)  # opens the tracking store: creates or checks its tables
        client.search_registered_models(max_results=1)  # and the registry's
    return client


_INITIALIZED: set[str] = set()


@contextlib.contextmanager
def _first_opening(uri: str):
    """Hold an exclusive lock while this process opens a SQLite store for the first time.

    MLflow creates the tables of a new SQLite database with alembic migrations the first time a
    process opens it; two processes doing that at once (two first-time ``train`` runs) make all
    but one fail with ``duplicate column`` errors. An exclusive lock on ``<database>.lock`` (``fcntl``,
    beside the database) serializes the first opening in every process; once the tables exist,
    opening is only a check. Other stores (a tracking server) migrate themselves.
    """
    if not uri.startswith("sqlite:///") or uri in _INITIALIZED:
        yield
        return
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    database = Path(uri[len("sqlite:///"):])
    if not database.parent.is_dir():
        raise SoilCarbonError(f"MLflow store {database}: folder {database.parent} does not exist; "
                              "create it or set MLFLOW_TRACKING_URI")
    with open(database.with_name(database.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    _INITIALIZED.add(uri)


def resolve(uri: str, client=None) -> tuple[str, str | None, str | None]:
    """``(concrete URI, registered name, version)`` for a model URI.

    ``models:/NAME@ALIAS`` and ``models:/NAME/latest`` become ``models:/NAME/VERSION``;
    ``models:/NAME/VERSION`` is checked to exist. Other URIs (``runs:/``, logged models
    ``models:/m-<id>``, paths) are returned unchanged with no name or version.
    """
    from mlflow.exceptions import MlflowException

    text = str(uri).strip()
    if not text:
        raise SoilCarbonError("no model URI given; pass --model models:/NAME@ALIAS, models:/NAME/VERSION or runs:/...")
    if not text.startswith("models:/"):
        return text, None, None
    if client is None:
        client = configure()
    body = text[len("models:/"):].strip("/")
    if body.startswith("m-") and "/" not in body and "@" not in body:
        return text, None, None  # an MLflow 3 logged model (models:/<model_id>), not a registered name
    try:
        if "@" in body:
            name, alias = body.rsplit("@", 1)
            if not name or not alias:
                raise SoilCarbonError(f"model URI {text!r} is malformed; use models:/NAME@ALIAS")
            version = str(client.get_model_version_by_alias(name, alias).version)
        else:
            if "/" not in body:
                raise SoilCarbonError(f"model URI {text!r} has no version or alias; use models:/NAME/VERSION "
                                      "or models:/NAME@ALIAS")
            name, ref = body.rsplit("/", 1)
            if ref.isdigit():
                version = str(client.get_model_version(name, ref).version)
            elif ref.lower() == "latest":
                versions = client.search_model_versions(f"name='{name}'")
                if not versions:
                    raise SoilCarbonError(f"model {name!r} has no versions; see `soilcarbon models list`")
                version = str(max(int(v.version) for v in versions))
            else:
                raise SoilCarbonError(f"model URI {text!r}: {ref!r} is neither a version number nor 'latest'; "
                                      "use models:/NAME/VERSION or models:/NAME@ALIAS")
    except MlflowException as exc:
        message = " ".join(str(exc.message if hasattr(exc, "message") else exc).split())
        raise SoilCarbonError(f"model {text!r} not found in the registry ({message[:200]}); "
                              "see `soilcarbon models list`") from exc
    return f"models:/{name}/{version}", name, version


@dataclass
class LoadedModel:
    """A pyfunc model loaded from the registry: ``uri`` is the resolved version, ``requested_uri``
    what the user gave."""

    requested_uri: str
    uri: str
    name: str | None
    version: str | None
    pyfunc: object


def load(uri: str) -> LoadedModel:
    """Resolve ``uri`` (:func:`resolve`) and load that version with ``mlflow.pyfunc.load_model``."""
    import pickle

    import mlflow
    from mlflow.exceptions import MlflowException

    client = configure()
    resolved, name, version = resolve(uri, client)
    try:
        loaded = mlflow.pyfunc.load_model(resolved)
    except (pickle.UnpicklingError, EOFError) as exc:  # a truncated or damaged python_model.pkl
        raise SoilCarbonError(f"cannot load model {uri!r}: its python_model.pkl is damaged ({exc}); restore the "
                              "artifacts or train the model again") from exc
    except (MlflowException, OSError, ValueError) as exc:
        message = " ".join(str(getattr(exc, "message", exc)).split())
        raise SoilCarbonError(f"cannot load model {uri!r} ({message[:200]}); check the URI and the tracking "
                              "server (MLFLOW_TRACKING_URI); see `soilcarbon models list`") from exc
    return LoadedModel(str(uri), resolved, name, version, loaded)


#: Run tags naming the process that runs a training run, so a later process can tell a run that is
#: still going (another ``train`` right now) from one whose process died.
PROCESS_TAGS = ("soilcarbon.host", "soilcarbon.pid", "soilcarbon.pid_start")


def _process_start(pid: int) -> str:
    """The start time of process ``pid`` in clock ticks since boot (Linux ``/proc``), or ``""``."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def process_tags() -> dict:
    """Tags for a run started by this process (host, pid and the pid's start time)."""
    import socket

    return dict(zip(PROCESS_TAGS, (socket.gethostname(), str(os.getpid()), _process_start(os.getpid()))))


def _alive(pid: int, start: str) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return not start or _process_start(pid) in ("", start)  # a reused pid has another start time


def fail_dead_runs(client, experiment_id: str) -> list[str]:
    """Mark FAILED the RUNNING runs started on this host by a process that no longer exists (killed
    before it could end its run); returns their ids. Runs of live processes are left alone."""
    import socket

    host = socket.gethostname()
    dead = []
    for run in client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'"):
        tags = run.data.tags
        pid = tags.get("soilcarbon.pid", "")
        if tags.get("soilcarbon.host") != host or not pid.isdigit():
            continue
        if not _alive(int(pid), tags.get("soilcarbon.pid_start", "")):
            client.set_tag(run.info.run_id, "soilcarbon.failure", "its process ended before the run finished")
            client.set_terminated(run.info.run_id, "FAILED")
            dead.append(run.info.run_id)
    return dead


def register(client, name: str, info, run_id: str, tags: dict, description: str) -> str:
    """Register the logged model ``info`` (``mlflow.pyfunc.log_model``'s result) as a new version
    of ``name`` with its tags and description in one call; returns the version number.

    ``create_model_version`` writes the version, its tags and description in one transaction,
    unlike ``log_model(registered_model_name=...)`` followed by tag calls, which leaves a version
    without its metrics when the process dies in between.
    """
    import json

    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    version = client.create_model_version(name, source=info.model_uri, run_id=run_id,
                                          tags={k: str(v) for k, v in tags.items()},
                                          description=description, model_id=info.model_id)
    try:  # the logged model's link to its versions, as mlflow.register_model records it (for the UI)
        logged = client.get_logged_model(info.model_id)
        links = json.loads(logged.tags.get("mlflow.modelVersions", "[]"))
        links.append({"name": name, "version": str(version.version)})
        client.set_logged_model_tags(info.model_id, {"mlflow.modelVersions": json.dumps(links)})
    except MlflowException:
        pass
    return str(version.version)


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


def local_store_folder() -> Path | None:
    """The folder of a local SQLite tracking store (database and artifacts), or None for a server."""
    uri = tracking_uri()
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///"):]).parent
    return None


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
    except MlflowException as exc:
        message = " ".join(str(getattr(exc, "message", exc)).split())
        raise SoilCarbonError(f"--alias {alias!r}: {message[:200]}") from exc
