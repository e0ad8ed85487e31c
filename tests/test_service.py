"""The REST service, started for real (``soilcarbon serve`` in a subprocess, or uvicorn in a thread)
on free local ports and called over HTTP with httpx.

Reference values come from MLflow directly (``mlflow.pyfunc.load_model(uri).predict`` on the same
rows); every bad request must get a 4xx JSON answer whose ``error`` names the problem.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import mlflow
import numpy as np
import pandas as pd
import pytest

from conftest import NIRSOIL_CSV, OPUS_DIR, REPO
from serving_models import environment, stop

API_KEY = "test-key-123"
AXIS = [float(a) for a in range(1100, 2500, 2)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(url: str, process: subprocess.Popen | None = None, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}: {process.stderr.read()}")
        try:
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"server at {url} did not start in {timeout} s")


class ThreadServer:
    """uvicorn serving an app in a background thread of this process."""

    def __init__(self, app):
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="error"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        wait_ready(self.url)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="module")
def server(store):
    """``soilcarbon serve`` of models:/soc-nir@champion with an API key and small limits."""
    port = free_port()
    env = environment(store)
    env["SOILCARBON_API_KEY"] = API_KEY
    env["PYTHONPATH"] = str(REPO)
    process = subprocess.Popen(
        [sys.executable, "-m", "soilcarbon", "serve", "--model", "models:/soc-nir@champion", "--port", str(port),
         "--max-batch", "50", "--max-body-mb", "1"],
        env=env, cwd=str(REPO), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process)
        yield url
    finally:
        stop(process)


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server, headers={"X-API-Key": API_KEY}, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def nir_table() -> pd.DataFrame:
    return pd.read_csv(NIRSOIL_CSV)


@pytest.fixture(scope="module")
def reference(store, nir_table) -> pd.DataFrame:
    model = mlflow.pyfunc.load_model(store["nir"])
    columns = model.metadata.get_input_schema().input_names()
    return model.predict(nir_table[columns], params={"level": 0.9}).set_index("sample_id")


def body_for(table: pd.DataFrame, axis=AXIS, unit="nm", **extra) -> dict:
    columns = [f"{a:g}" for a in AXIS]
    samples = [{"id": sid, "values": [float(v) for v in row]}
               for sid, row in zip(table["sample_id"], table[columns].to_numpy())]
    return {"axis": list(axis), "unit": unit, "samples": samples, **extra}


def assert_matches(predictions: list[dict], reference: pd.DataFrame) -> None:
    got = pd.DataFrame(predictions).set_index("id")
    for column in ("prediction", "lower", "upper", "domain_score"):
        np.testing.assert_allclose(got[column].to_numpy(float), reference.loc[got.index, column].to_numpy(float),
                                   rtol=1e-7, atol=1e-9, err_msg=column)
    assert (got["in_domain"].to_numpy() == reference.loc[got.index, "in_domain"].to_numpy()).all()


def assert_error(response: httpx.Response, status: int, *phrases: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert isinstance(error, str) and "\n" not in error
    for phrase in phrases:
        assert phrase in error, error


# ------------------------------------------------------------------------------------------ happy paths
def test_health_is_open_and_names_the_resolved_version(server):
    response = httpx.get(server + "/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "model_uri": "models:/soc-nir/1"}


def test_predict_json_matches_mlflow(client, nir_table, reference):
    table = nir_table.iloc[[0, 5, 17]]
    response = client.post("/v1/predict", json=body_for(table))
    assert response.status_code == 200, response.text
    data = response.json()
    assert data["model_uri"] == "models:/soc-nir/1"
    assert [p["id"] for p in data["predictions"]] == table["sample_id"].tolist()
    assert all(p["level"] == 0.9 and p["lower"] <= p["prediction"] <= p["upper"] for p in data["predictions"])
    assert_matches(data["predictions"], reference)


def test_wavenumber_axis_and_level(client, nir_table, reference):
    table = nir_table.iloc[20:30]
    body = body_for(table, axis=[1e7 / a for a in AXIS], unit="cm-1")
    data = client.post("/v1/predict", json=body).json()
    assert_matches(data["predictions"], reference)
    narrow = client.post("/v1/predict", json=dict(body, level=0.5)).json()["predictions"]
    for wide, small in zip(data["predictions"], narrow):
        assert small["level"] == 0.5
        assert small["upper"] - small["lower"] < wide["upper"] - wide["lower"]
        assert small["prediction"] == pytest.approx(wide["prediction"])


def test_csv_upload_matches_mlflow(client, nir_table, reference, tmp_path):
    path = tmp_path / "scan.csv"
    nir_table.head(40).to_csv(path, index=False)
    response = client.post("/v1/predict/file", files=[("files", ("scan.csv", path.read_bytes(), "text/csv"))])
    assert response.status_code == 200, response.text
    data = response.json()
    assert [p["id"] for p in data["predictions"]] == nir_table["sample_id"].head(40).tolist()
    assert_matches(data["predictions"], reference)


def test_batch_at_the_limit_and_concurrent_clients(client, nir_table, reference):
    body = body_for(nir_table.head(50))
    with ThreadPoolExecutor(6) as pool:
        responses = list(pool.map(lambda _: client.post("/v1/predict", json=body), range(6)))
    assert [r.status_code for r in responses] == [200] * 6
    for response in responses:
        assert_matches(response.json()["predictions"], reference)


def test_models_docs_and_openapi(client):
    data = client.get("/v1/models").json()
    assert data["serving"]["model_uri"] == "models:/soc-nir/1"
    assert data["serving"]["requested_uri"] == "models:/soc-nir@champion"
    nir = [m for m in data["models"] if m["name"] == "soc-nir"]
    assert [(m["version"], m["aliases"]) for m in nir] == [(1, ["champion"])]
    assert nir[0]["target"] == "Ciso" and nir[0]["metrics"]["rmse"] > 0
    assert {m["name"] for m in data["models"]} >= {"soc-nir", "soc-cov", "soc-mir"}
    docs = client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/predict", "/v1/predict/file", "/v1/models", "/v1/reload", "/healthz"} <= set(paths)


# ------------------------------------------------------------------------------------------ bad requests
def _sample_body(nir_table, n=3):
    return body_for(nir_table.head(n))


BAD_JSON = {
    "axis length mismatch": (lambda b: b["samples"][1].update(values=b["samples"][1]["values"][:-1]), 422,
                             ["sample NIRsoil-2: 699 values but the axis has 700 points"]),
    "unknown unit": (lambda b: b.update(unit="furlong"), 422, ["unknown spectral unit 'furlong'"]),
    "empty batch": (lambda b: b.update(samples=[]), 422, ["empty batch"]),
    "too many samples": (lambda b: b.update(samples=b["samples"] * 17), 413,
                         ["batch of 51 samples exceeds the limit of 50"]),
    "missing axis": (lambda b: b.pop("axis"), 422, ["'axis' is required"]),
    "missing unit": (lambda b: b.pop("unit"), 422, ["'unit' is required"]),
    "duplicate ids": (lambda b: b["samples"][1].update(id="NIRsoil-1"), 422, ["duplicate sample ids: NIRsoil-1"]),
    "axis out of range": (lambda b: b.update(axis=[a + 400 for a in b["axis"]]), 422,
                          ["cover 1500-2898 nm", "needs 1100-2498 nm"]),
    "implausible axis": (lambda b: b.update(axis=[a + 600 for a in b["axis"]]), 422,
                         ["axis 1700-3098 is not plausible in nm"]),
    "axis not monotonic": (lambda b: b["axis"].__setitem__(10, 1000.0), 422, ["not strictly monotonic"]),
    "bad level": (lambda b: b.update(level=1.5), 422, ["level must be between 0 and 1"]),
    "extra field": (lambda b: b.update(spectra=[1, 2]), 422, ["spectra: Extra inputs are not permitted"]),
    "values not a list": (lambda b: b["samples"][0].update(values="abc"), 422, ["samples.0.values"]),
    "value not a number": (lambda b: b["samples"][0]["values"].__setitem__(3, "x"), 422, ["samples.0.values.3"]),
    "covariates for unknown ids": (lambda b: b.update(covariates={"nobody": {"ndvi": 0.3}}), 422,
                                   ["covariates given for unknown sample id(s) nobody"]),
}


@pytest.mark.parametrize("case", list(BAD_JSON))
def test_bad_json_requests_get_4xx_naming_the_problem(client, nir_table, case):
    change, status, phrases = BAD_JSON[case]
    body = json.loads(json.dumps(_sample_body(nir_table)))
    change(body)
    assert_error(client.post("/v1/predict", json=body), status, *phrases)


def test_bad_bodies_and_headers(client, server, nir_table):
    text = json.dumps(_sample_body(nir_table))
    nan_body = text.replace(str(nir_table["1102"].iloc[0]), "NaN", 1)
    assert "NaN" in nan_body
    answer = client.post("/v1/predict", content=nan_body, headers={"content-type": "application/json"})
    assert answer.status_code == 200  # a per-sample problem, as on the CLI (tests/test_bad_scans.py)
    assert answer.json()["predictions"][0]["problem"] == "1 missing spectral value(s), first in column '1102'"
    assert_error(client.post("/v1/predict", content=b'{"axis": [1100,', headers={"content-type": "application/json"}),
                 400, "not valid JSON")
    assert_error(client.post("/v1/predict", json=[1, 2, 3]), 422, "body")
    big = b"{" + b" " * (1024 * 1024 + 10) + b"}"
    assert_error(client.post("/v1/predict", content=big, headers={"content-type": "application/json"}), 413,
                 "request body too large", "limit is 1048576 bytes")

    def chunked():
        for _ in range(40):
            yield b" " * 32768

    assert_error(client.post("/v1/predict", content=chunked(), headers={"content-type": "application/json"}), 413,
                 "request body too large")
    assert_error(httpx.post(server + "/v1/predict", json={}), 401, "missing API key")
    assert_error(httpx.post(server + "/v1/predict", json={}, headers={"X-API-Key": "wrong"}), 401, "invalid API key")
    assert_error(httpx.get(server + "/v1/models"), 401, "missing API key")
    assert_error(httpx.get(server + "/docs"), 401, "missing API key")
    bearer = httpx.get(server + "/v1/models", headers={"Authorization": f"Bearer {API_KEY}"})
    assert bearer.status_code == 200
    assert_error(client.get("/v2/predict"), 404, "no route GET /v2/predict")
    assert_error(client.get("/v1/predict"), 405, "method GET is not allowed")


def test_bad_uploads(client, nir_table, tmp_path):
    good = nir_table.head(3).to_csv(index=False).encode()
    with_nan = nir_table.head(3).copy()
    with_nan.loc[1, "1500"] = np.nan
    short = nir_table.head(3)[["sample_id"] + [str(a) for a in range(1100, 1800, 2)]]
    cases = [
        ([("files", ("scan.xlsx", b"PK\x03\x04 not a table", "application/octet-stream"))], 415,
         ["scan.xlsx: unsupported file type"]),
        ([("files", ("a.csv", good, "text/csv")), ("files", ("b.csv", good, "text/csv"))], 422,
         ["either one table or OPUS files"]),
        ([("files", ("short.csv", short.to_csv(index=False).encode(), "text/csv"))], 422,
         ["short.csv: the spectra cover 1100-1798 nm", "needs 1100-2498 nm"]),
        ([("files", ("empty.csv", b"", "text/csv"))], 422, ["empty.csv: the file is empty"]),
        ([("files", ("bad.0", b"\n\n\xfe\xfe" + b"\x00" * 100, "application/octet-stream"))], 422,
         ["bad.0: damaged or truncated OPUS file"]),
    ]
    for files, status, phrases in cases:
        assert_error(client.post("/v1/predict/file", files=files), status, *phrases)
    answer = client.post("/v1/predict/file", files=[("files", ("nan.csv", with_nan.to_csv(index=False).encode(),
                                                                         "text/csv"))])
    assert answer.status_code == 200  # a missing value is a per-sample problem, as on the CLI
    assert [p["problem"] for p in answer.json()["predictions"]] == [
        None, "1 missing spectral value(s), first in column '1500'", None]
    assert_error(client.post("/v1/predict/file", data={"unit": "nm"}), 422, "files: Field required")
    assert_error(client.post("/v1/predict/file", files=[("files", ("scan.csv", good, "text/csv"))],
                             data={"level": "2"}), 422, "level must be between 0 and 1")
    assert_error(client.post("/v1/predict/file", files=[("files", ("scan.csv", good, "text/csv"))],
                             data={"unit": "inch"}), 422, "unknown spectral unit 'inch'")


# ------------------------------------------------------------------------------------------ other models
@pytest.fixture(scope="module")
def mir_server(store):
    from soilcarbon.serving.api import create_app

    server = ThreadServer(create_app(store["mir"], api_key=""))
    yield server.url
    server.stop()


def test_opus_uploads(mir_server, store):
    from soilcarbon.spectral.readers import read_spectra

    files = sorted(OPUS_DIR.iterdir())[:3]
    upload = [("files", (p.name, p.read_bytes(), "application/octet-stream")) for p in files]
    response = httpx.post(mir_server + "/v1/predict/file", files=upload, timeout=60)
    assert response.status_code == 200, response.text
    data = response.json()
    assert data["model_uri"] == store["mir"]
    assert [p["id"] for p in data["predictions"]] == [p.name.split("_")[0] for p in files]
    model = mlflow.pyfunc.load_model(store["mir"])
    frame = read_spectra(OPUS_DIR).to_frame(include_meta=False)
    frame.columns = model.metadata.get_input_schema().input_names()
    assert_matches(data["predictions"], model.predict(frame).set_index("sample_id"))
    single = httpx.post(mir_server + "/v1/predict/file", files=upload[:1], timeout=60).json()
    assert [p["id"] for p in single["predictions"]] == [files[0].name.split("_")[0]]
    assert_matches(single["predictions"], model.predict(frame).set_index("sample_id"))


def test_covariates_model_over_json(store):
    from soilcarbon.serving.api import create_app
    from trained_model import covariate_table

    table = covariate_table(6, seed=3)
    server = ThreadServer(create_app(store["cov"], api_key=""))
    try:
        samples = [{"id": r.sample_id, "covariates": {"ndvi": r.ndvi, "elevation": r.elevation, "twi": r.twi}}
                   for r in table.itertuples()]
        response = httpx.post(server.url + "/v1/predict", json={"samples": samples})
        assert response.status_code == 200, response.text
        expected = mlflow.pyfunc.load_model(store["cov"]).predict(table[["sample_id", "ndvi", "elevation", "twi"]])
        assert_matches(response.json()["predictions"], expected.set_index("sample_id"))
        # the same covariates in the top-level mapping
        by_id = {s["id"]: s["covariates"] for s in samples}
        response = httpx.post(server.url + "/v1/predict", json={"samples": [{"id": i} for i in by_id],
                                                                 "covariates": by_id})
        assert_matches(response.json()["predictions"], expected.set_index("sample_id"))
        samples[2]["covariates"].pop("twi")  # a per-sample problem, the others are predicted
        response = httpx.post(server.url + "/v1/predict", json={"samples": samples})
        assert [p["problem"] for p in response.json()["predictions"]] == [None, None, "covariate 'twi' is missing",
                                                                           None, None, None]
        assert_error(httpx.post(server.url + "/v1/predict", json={"samples": [{"id": "x"}]}), 422,
                     "needs covariates ndvi, elevation, twi")
    finally:
        server.stop()



def test_openmp_is_limited_once_in_each_request_thread(store, nir_table, reference, tmp_path, monkeypatch):
    """OpenMP's thread count is a per-thread setting: every thread uvicorn/FastAPI runs a prediction
    in predicts with the service's limit (one thread; two spinning threads made one spectrum ~8x
    slower), and sets it once, not per request (it costs milliseconds)."""
    import threadpoolctl

    from soilcarbon.serving import api

    limited, seen = [], []
    real_limits, real_predict = threadpoolctl.threadpool_limits, api.predict_spectra

    def counting_limits(*args, **kwargs):
        if kwargs.get("user_api") == "openmp":
            limited.append(threading.current_thread())
        return real_limits(*args, **kwargs)

    def observed_predict(*args, **kwargs):
        openmp = [i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "openmp"]
        seen.append((threading.current_thread(), openmp))
        return real_predict(*args, **kwargs)

    monkeypatch.setattr(threadpoolctl, "threadpool_limits", counting_limits)
    monkeypatch.setattr(api, "predict_spectra", observed_predict)
    assert any(i["user_api"] == "openmp" for i in threadpoolctl.threadpool_info())  # scikit-learn's libgomp
    server = ThreadServer(api.create_app(store["nir"], api_key=""))
    try:
        body = body_for(nir_table.head(3))
        upload = tmp_path / "three.csv"
        nir_table.head(3).to_csv(upload, index=False)

        def one(k: int) -> dict:
            if k % 4 == 3:
                with upload.open("rb") as handle:
                    response = httpx.post(server.url + "/v1/predict/file", files={"files": ("three.csv", handle)},
                                          timeout=60)
            else:
                response = httpx.post(server.url + "/v1/predict", json=body, timeout=60)
            assert response.status_code == 200, response.text
            return response.json()

        answers = [one(k) for k in range(8)]
        with ThreadPoolExecutor(4) as pool:
            answers += list(pool.map(one, range(16)))
    finally:
        server.stop()
    for answer in answers:
        assert_matches(answer["predictions"], reference)
    assert len(seen) == 24
    assert all(openmp and set(openmp) == {1} for _, openmp in seen), seen
    threads = {thread for thread, _ in seen}
    assert threading.main_thread() not in threads
    assert len(limited) == len(set(limited)) and set(limited) == threads  # once in each request thread

def test_reload_follows_the_alias(store, nir_table, reference):
    """Two registered versions of one model; moving the alias and POST /v1/reload switches versions
    without a restart; a reload that cannot resolve keeps the current version."""
    from mlflow.tracking import MlflowClient

    from soilcarbon.serving.api import create_app

    client = MlflowClient()
    source = client.get_model_version("soc-nir", "1")
    client.create_registered_model("soc-reload")
    for _ in range(2):
        client.create_model_version("soc-reload", source.source, run_id=source.run_id)
    client.set_registered_model_alias("soc-reload", "champion", "1")
    server = ThreadServer(create_app("models:/soc-reload@champion", api_key=""))
    try:
        body = body_for(nir_table.head(2))
        assert httpx.post(server.url + "/v1/predict", json=body).json()["model_uri"] == "models:/soc-reload/1"
        assert httpx.post(server.url + "/v1/reload").json() == {
            "model_uri": "models:/soc-reload/1", "previous_model_uri": "models:/soc-reload/1", "changed": False}
        client.set_registered_model_alias("soc-reload", "champion", "2")
        assert httpx.post(server.url + "/v1/predict", json=body).json()["model_uri"] == "models:/soc-reload/1"
        assert httpx.post(server.url + "/v1/reload").json() == {
            "model_uri": "models:/soc-reload/2", "previous_model_uri": "models:/soc-reload/1", "changed": True}
        data = httpx.post(server.url + "/v1/predict", json=body).json()
        assert data["model_uri"] == "models:/soc-reload/2"
        assert_matches(data["predictions"], reference)
        assert httpx.get(server.url + "/healthz").json()["model_uri"] == "models:/soc-reload/2"
        client.delete_registered_model_alias("soc-reload", "champion")
        assert_error(httpx.post(server.url + "/v1/reload"), 409, "reload failed, still serving models:/soc-reload/2")
        assert httpx.get(server.url + "/healthz").json()["model_uri"] == "models:/soc-reload/2"
    finally:
        server.stop()


def test_serve_refuses_a_model_it_cannot_load(store, run_cli):
    code, _, stderr = run_cli("serve", "--model", "models:/soc-nir@nobody", "--port", str(free_port()),
                              env=environment(store))
    assert code == 2
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "not found in the registry" in lines[0]
