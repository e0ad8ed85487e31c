"""REST details (issue 10): a 422 says where and why, never echoes the body; ``/docs`` works offline
(Swagger UI served from the package, no external host). The app of ``soilcarbon serve`` on a real
registered model, called through Starlette's test client (the same ASGI app uvicorn runs).
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import threading
import time

import pytest
from fastapi.testclient import TestClient

from serving_models import serving_store

AXIS = [float(a) for a in range(1100, 2500, 2)]


@pytest.fixture(scope="module")
def client(tmp_path_factory, shared_data):
    from soilcarbon.serving.api import create_app

    info = serving_store(tmp_path_factory)
    with TestClient(create_app(info["nir"], api_key="")) as test_client:
        yield test_client


def _samples(n: int, values) -> list[dict]:
    return [{"id": f"s{i}", "values": values} for i in range(n)]


def test_a_large_bad_body_gets_a_small_answer_without_the_input(client):
    # about 10 MB of spectra under a field the API does not know: pydantic's error carries the
    # field's whole value as its input, which used to be copied into the answer
    spectra = _samples(900, [0.4321987654321] * len(AXIS))
    body = json.dumps({"axis": AXIS, "unit": "nm", "samples": spectra[:1], "spectra": spectra})
    assert len(body) > 10_000_000
    response = client.post("/v1/predict", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text[:300]
    answer = response.json()
    assert answer["error"] == "spectra: Extra inputs are not permitted"
    assert answer["detail"] == [{"loc": ["body", "spectra"], "msg": "Extra inputs are not permitted",
                                 "type": "extra_forbidden"}]
    assert len(response.content) < 500 and "0.4321987654321" not in response.text and "s899" not in response.text


def test_many_errors_are_counted_not_listed(client):
    body = {"axis": AXIS, "unit": "nm", "samples": _samples(900, "not-a-list-of-numbers")}
    response = client.post("/v1/predict", json=body)
    assert response.status_code == 422
    answer = response.json()
    assert answer["error"].startswith("samples.0.values: Input should be a valid list")
    assert answer["error"].endswith("(and 897 more)")
    assert len(answer["detail"]) == 21 and answer["detail"][-1]["msg"] == "880 more errors not listed"
    assert all(set(item) == {"loc", "msg", "type"} for item in answer["detail"])
    assert "not-a-list-of-numbers" not in response.text and len(response.content) < 5000


def test_docs_page_loads_swagger_ui_from_the_service_only(client):
    page = client.get("/docs")
    assert page.status_code == 200 and "SwaggerUIBundle" in page.text
    urls = re.findall(r"""(?:src|href)=["']([^"']+)["']""", page.text)
    assert sorted(urls) == ["/docs-assets/favicon-32x32.png", "/docs-assets/swagger-ui-bundle.js",
                            "/docs-assets/swagger-ui.css"]
    assert not re.search(r"https?://", page.text), page.text  # no CDN, no validator badge
    assert "url: '/openapi.json'" in page.text and '"validatorUrl": null' in page.text
    for url, kind, size in (("/docs-assets/favicon-32x32.png", "image/png", 500),
                            ("/docs-assets/swagger-ui-bundle.js", "javascript", 1_000_000),
                            ("/docs-assets/swagger-ui.css", "text/css", 100_000)):
        asset = client.get(url)
        assert asset.status_code == 200 and kind in asset.headers["content-type"], url
        assert len(asset.content) > size, url
    bundle = client.get("/docs-assets/swagger-ui-bundle.js").text
    assert "SwaggerUIBundle" in bundle and "sourceMappingURL" not in bundle
    assert client.get("/openapi.json").json()["openapi"].startswith("3.1")  # Swagger UI 5 reads 3.1
    assert client.get("/redoc").status_code == 404  # ReDoc would need a CDN: not offered


@pytest.fixture(scope="module")
def server(client):
    """The same app served by uvicorn on a free local port (for a real browser)."""
    import uvicorn

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(client.app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


@pytest.mark.skipif(shutil.which("chromium") is None or shutil.which("chromedriver") is None,
                    reason="needs chromium and chromedriver")
def test_docs_render_in_a_browser_without_internet(server):
    """Headless Chromium with every host name but the service unresolvable: the page must render
    the API's operations from the package's assets alone."""
    pytest.importorskip("selenium")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    try:
        driver.get(server + "/docs")
        WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".opblock-summary-path"))
        paths = {e.text.replace("\u200b", "") for e in driver.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")}
        assert {"/v1/predict", "/v1/predict/file", "/v1/models", "/v1/reload", "/healthz"} <= paths
        assert "soilcarbon" in driver.find_element(By.CSS_SELECTOR, ".info .title").text
        requested = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
        assert requested and all(url.startswith(server) for url in requested), requested
    finally:
        driver.quit()
