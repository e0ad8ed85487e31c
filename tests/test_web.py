"""The web page of ``soilcarbon serve``, driven in a real headless Chromium (selenium, Debian's
``chromium`` + ``chromium-driver``) against a real ``soilcarbon serve`` subprocess on a free port.

Reference values are ``soilcarbon predict``'s output files for the same inputs (the real CLI
entry point); every error must appear on the page as a readable message with a 4xx status, and a
screenshot of each page is saved in the test's temporary folder.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import httpx
import pandas as pd
import pytest

from cli_helpers import cli_in_process
from conftest import NIRSOIL_CSV, OPUS_DIR, REPO
from serving_models import environment, stop
from test_service import free_port, wait_ready

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
API_KEY = "web-key-456"
MAX_BODY_MB = 8
MAX_BATCH = 1000
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1280,1000"]
OPUS_PICK = 6

pytestmark = pytest.mark.skipif(not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
                                reason="needs Debian's chromium and chromium-driver (installed by .ci/run)")


@pytest.fixture(scope="module")
def server(store, tmp_path_factory):
    """``soilcarbon serve`` with an API key, a body limit of 8 MB and a batch limit of 1000."""
    port = free_port()
    env = environment(store)
    env["SOILCARBON_API_KEY"] = API_KEY
    env["PYTHONPATH"] = str(REPO)
    log = open(tmp_path_factory.mktemp("web-server") / "server.log", "w+")
    process = subprocess.Popen(
        [sys.executable, "-m", "soilcarbon", "serve", "--model", "models:/soc-nir@champion", "--port", str(port),
         "--max-batch", str(MAX_BATCH), "--max-body-mb", str(MAX_BODY_MB)],
        env=env, cwd=str(REPO), stdout=log, stderr=log, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, None)
        yield url
    finally:
        stop(process)
        log.seek(0)
        text = log.read()
        log.close()
        assert "Traceback" not in text, text  # no request may end in an internal error


@pytest.fixture(scope="module")
def downloads(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("downloads")


@pytest.fixture(scope="module")
def browser(tmp_path_factory, downloads):
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


# ============================================================================ helpers
def wait_for(driver, condition, timeout: float = 60, what: str = "the page"):
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.1).until(lambda d: condition(d))
    except Exception:
        message = driver.execute_script("const m = document.getElementById('message'); return m ? m.textContent : ''")
        raise AssertionError(f"timed out waiting for {what}; message on the page: {message!r}") from None


def open_page(driver, url: str, key: str = API_KEY) -> None:
    """Open a page and give it the key unless the tab already has it (the page asks once)."""
    from selenium.webdriver.common.by import By

    driver.get(url)
    if driver.execute_script("return sessionStorage.getItem('soilcarbon-api-key')") == key:
        return
    field = driver.find_element(By.ID, "api-key")
    field.clear()
    field.send_keys(key)
    driver.find_element(By.CSS_SELECTOR, "#key-form button").click()


def choose_model(driver, uri: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    wait_for(driver, lambda d: d.execute_script(
        "return [...document.querySelectorAll('#model option')].some(o => o.value === arguments[0])", uri),
        30, f"model {uri} in the menu")
    Select(driver.find_element(By.ID, "model")).select_by_value(uri)


def submit(driver, files: list[Path], expect_result: bool = True) -> None:
    """Choose ``files`` and press Predict; returns when a result (or, with ``expect_result=False``,
    a message) is shown."""
    from selenium.webdriver.common.by import By

    driver.execute_script("document.getElementById('result').innerHTML = ''; "
                          "document.getElementById('message').hidden = true;")
    chooser = driver.find_element(By.ID, "files")
    chooser.clear()
    chooser.send_keys("\n".join(str(f) for f in files))
    driver.find_element(By.ID, "predict-button").click()
    wait_for(driver, lambda d: d.execute_script(
        "return document.querySelector('#result #summary') !== null || !document.getElementById('message').hidden"),
        90, "the prediction")
    shown = driver.execute_script("const m = document.getElementById('message'); return m.hidden ? '' : m.textContent")
    assert bool(shown) != expect_result, f"message on the page: {shown!r}"


def page_message(driver) -> tuple[int, str]:
    """(HTTP status, text) of the error message shown on the page."""
    box = driver.execute_script("const m = document.getElementById('message'); "
                                "return m.hidden ? null : [m.dataset.status, m.textContent]")
    assert box is not None, "no message on the page"
    return int(box[0] or 0), box[1]


def screenshot(driver, path: Path) -> None:
    """The whole page (not only the window) as a PNG."""
    width, height = driver.get_window_size()["width"], driver.get_window_size()["height"]
    full = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(width, min(max(full + 120, height), 8000))
    try:
        driver.save_screenshot(str(path))
    finally:
        driver.set_window_size(width, height)


def table_rows(driver) -> pd.DataFrame:
    rows = driver.execute_script(
        "return [...document.querySelectorAll('#predictions tbody tr')].map(r => "
        "[r.cells[0].textContent.trim(), ...[...r.cells].slice(1).map(c => c.dataset.value)])")
    return pd.DataFrame(rows, columns=["sample_id", "prediction", "lower", "upper", "in_domain"])


def cli_predict(capsys, model: str, spectra: Path, output: Path) -> pd.DataFrame:
    """``soilcarbon predict``'s output (the CLI entry point in this process; the store's tracking
    URI is in the environment)."""
    code, _, err = cli_in_process(capsys, "predict", "--model", model, "--spectra", spectra, "--output", output,
                                  "--quiet")
    assert code == 0, err
    return pd.read_csv(output, dtype=str, keep_default_na=False)


def assert_same_table(shown: pd.DataFrame, expected: pd.DataFrame) -> None:
    columns = ["sample_id", "prediction", "lower", "upper", "in_domain"]
    pd.testing.assert_frame_equal(shown[columns].reset_index(drop=True), expected[columns].reset_index(drop=True))


def downloaded(driver, folder: Path, timeout: float = 20) -> bytes:
    from selenium.webdriver.common.by import By

    for old in folder.iterdir():
        old.unlink()
    driver.find_element(By.ID, "download").click()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = [p for p in folder.iterdir() if p.suffix == ".csv"]
        if done and done[0].stat().st_size > 0:
            time.sleep(0.2)
            return done[0].read_bytes()
        time.sleep(0.1)
    raise AssertionError(f"no CSV downloaded into {folder}: {list(folder.iterdir())}")


# ============================================================================ tests
def test_predict_nir_table_equals_the_cli(browser, server, store, tmp_path, downloads, capsys):
    """Upload the real NIR CSV: the table equals ``soilcarbon predict``'s output, the download is
    the same file byte for byte, and out-of-domain samples are the ones marked on both charts."""
    from selenium.webdriver.common.by import By

    expected = cli_predict(capsys, "models:/soc-nir@champion", NIRSOIL_CSV, tmp_path / "cli.csv")
    open_page(browser, server + "/")
    choose_model(browser, "models:/soc-nir@champion")
    browser.execute_script(  # record what the progress line says while the upload runs
        "window.seen = []; new MutationObserver(() => window.seen.push("
        "document.getElementById('progress-text').textContent)).observe("
        "document.getElementById('progress-text'), {childList: true, characterData: true, subtree: true});")
    submit(browser, [NIRSOIL_CSV])
    assert browser.find_element(By.ID, "message").get_attribute("hidden") is not None
    seen = browser.execute_script("return window.seen")
    assert any(s.startswith("uploading") for s in seen) and any("scoring" in s for s in seen), seen

    assert browser.find_element(By.ID, "model-uri").text == "models:/soc-nir/1"  # the version, not the alias
    assert_same_table(table_rows(browser), expected)
    assert downloaded(browser, downloads) == (tmp_path / "cli.csv").read_bytes()

    n_ood = int((expected["in_domain"] == "False").sum())
    assert n_ood > 0  # the small test model flags some of the 618 samples: the highlighting is exercised
    assert len(browser.find_elements(By.CSS_SELECTOR, "#interval-chart .mark.ood")) == n_ood
    assert len(browser.find_elements(By.CSS_SELECTOR, "#interval-chart .mark")) == len(expected)
    assert len(browser.find_elements(By.CSS_SELECTOR, "#spectra-chart polyline.spectrum.ood")) == n_ood
    ood_titles = {e.get_attribute("textContent").split(" (")[0]
                  for e in browser.find_elements(By.CSS_SELECTOR, "#spectra-chart polyline.ood title")}
    assert ood_titles == set(expected.loc[expected["in_domain"] == "False", "sample_id"])
    assert "Ciso (%)" in browser.find_element(By.ID, "interval-chart").text
    screenshot(browser, tmp_path / "predict-nir.png")

    browser.set_window_size(390, 844)  # a phone: the page must not scroll sideways (the table scrolls itself)
    try:
        assert browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth + 1")
        screenshot(browser, tmp_path / "predict-phone.png")
    finally:
        browser.set_window_size(1280, 1000)


def test_predict_opus_files_and_zip(browser, server, store, tmp_path, downloads, capsys):
    """Several real OPUS files, then a .zip of them: both equal ``soilcarbon predict`` on a folder of them."""
    from selenium.webdriver.common.by import By

    picked = sorted(p for p in OPUS_DIR.iterdir() if p.is_file())[:OPUS_PICK]
    folder = tmp_path / "opus"
    folder.mkdir()
    for path in picked:
        shutil.copy(path, folder / path.name)
    expected = cli_predict(capsys, "models:/soc-mir/1", folder, tmp_path / "cli.csv")
    assert len(expected) == OPUS_PICK

    open_page(browser, server + "/")
    choose_model(browser, "models:/soc-mir/1")
    submit(browser, picked)
    assert browser.find_element(By.ID, "model-uri").text == "models:/soc-mir/1"
    assert_same_table(table_rows(browser), expected)
    assert len(browser.find_elements(By.CSS_SELECTOR, "#spectra-chart polyline.spectrum")) == OPUS_PICK
    assert "cm⁻¹" in browser.find_element(By.ID, "spectra-chart").text
    screenshot(browser, tmp_path / "predict-opus.png")

    archive = tmp_path / "spectra.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        for path in picked:
            bundle.write(path, f"scans/{path.name}")
    submit(browser, [archive])
    assert_same_table(table_rows(browser), expected)
    assert downloaded(browser, downloads) == (tmp_path / "cli.csv").read_bytes()


def test_errors_are_readable_messages(browser, server, tmp_path):
    """A wrong file type, an oversized upload, too many samples and a missing model each show a
    readable message with a 4xx status (the server log holds no traceback: see the fixture)."""
    from selenium.webdriver.common.by import By

    open_page(browser, server + "/")
    choose_model(browser, "models:/soc-nir@champion")

    wrong = tmp_path / "report.pdf"
    wrong.write_bytes(b"%PDF-1.4 not spectra\n")
    submit(browser, [wrong], expect_result=False)
    status, text = page_message(browser)
    assert status == 415 and "report.pdf: unsupported file type" in text, (status, text)

    big = tmp_path / "big.csv"
    big.write_bytes(NIRSOIL_CSV.read_bytes() * 3)  # ~11.6 MB > 8 MB
    submit(browser, [big], expect_result=False)
    status, text = page_message(browser)
    assert status == 413 and "too large" in text and f"{MAX_BODY_MB * 1024 * 1024} bytes" in text, (status, text)

    table = pd.read_csv(NIRSOIL_CSV)
    twice = pd.concat([table, table.assign(sample_id=table["sample_id"] + "-b")])
    many = tmp_path / "many.csv"
    twice.to_csv(many, index=False)
    assert many.stat().st_size < MAX_BODY_MB * 1024 * 1024 and len(twice) > MAX_BATCH
    submit(browser, [many], expect_result=False)
    status, text = page_message(browser)
    assert status == 413 and f"more than {MAX_BATCH} samples" in text, (status, text)

    browser.execute_script("const o = new Option('gone', 'models:/no-such-model@champion'); "
                           "document.getElementById('model').add(o); o.selected = true;")
    submit(browser, [NIRSOIL_CSV], expect_result=False)
    status, text = page_message(browser)
    assert status == 422 and "models:/no-such-model@champion" in text and "not found" in text, (status, text)
    assert browser.find_element(By.ID, "result").text == ""
    screenshot(browser, tmp_path / "predict-error.png")


def test_wrong_api_key_is_reported(browser, server, tmp_path):
    """A new tab asks for the key; a wrong key is reported on the page; the right one then works."""
    from selenium.webdriver.common.by import By

    first = browser.current_window_handle
    browser.switch_to.new_window("tab")  # a new tab has no key yet
    try:
        browser.get(server + "/")
        wait_for(browser, lambda d: d.execute_script("return !document.getElementById('message').hidden"), 10,
                 "the request for the key")
        assert "needs an API key" in browser.find_element(By.ID, "message").text
        assert browser.switch_to.active_element.get_attribute("id") == "api-key"
    finally:
        browser.close()
        browser.switch_to.window(first)
    open_page(browser, server + "/", key="not-the-key")
    wait_for(browser, lambda d: d.execute_script(
        "const m = document.getElementById('message'); return !m.hidden && m.dataset.status === '401'"),
        20, "the key message")
    status, text = page_message(browser)
    assert status == 401 and text == "invalid API key"
    assert httpx.get(server + "/web/fragments/model-options", headers={"X-API-Key": "not-the-key"}).status_code == 401
    screenshot(browser, tmp_path / "wrong-key.png")
    open_page(browser, server + "/")  # the right key loads the menu without reloading the page
    choose_model(browser, "models:/soc-nir@champion")


def test_models_page(browser, server, store, tmp_path):
    """Versions, aliases, target, unit and CV metrics from the registry, and the training plots."""
    from selenium.webdriver.common.by import By

    from soilcarbon.registry import list_models

    registered = {(r["name"], r["version"]): r for r in list_models()}
    open_page(browser, server + "/models")
    row_css = "tr[data-name='soc-nir'][data-version='1']"
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, row_css), 30, "the models table")
    row = browser.find_element(By.CSS_SELECTOR, row_css)
    assert row.find_element(By.CSS_SELECTOR, ".aliases").text == "@champion"
    assert row.find_element(By.CSS_SELECTOR, ".target").text == "Ciso"
    assert row.find_element(By.CSS_SELECTOR, ".unit").text == "%"
    expected = registered[("soc-nir", 1)]["metrics"]
    for key in ("rmse", "r2", "rpiq", "bias", "picp", "mean_width"):
        assert float(row.find_element(By.CSS_SELECTOR, f".metric-{key}").get_attribute("data-value")) == expected[key]
    mir = browser.find_element(By.CSS_SELECTOR, "tr[data-name='soc-mir'][data-version='1']")
    assert mir.find_element(By.CSS_SELECTOR, ".unit").text == "g/kg"

    details = browser.find_element(By.CSS_SELECTOR, "#model-soc-nir details.plots-box summary")
    details.click()
    wait_for(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#model-soc-nir .plots img")) == 3, 30,
             "the training plots")
    assert browser.execute_script("return [...document.querySelectorAll('#model-soc-nir .plots img')]"
                                  ".every(i => i.complete && i.naturalWidth > 100)")
    names = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#model-soc-nir .plots figcaption")]
    assert names == ["coverage", "observed vs predicted", "residuals"]
    screenshot(browser, tmp_path / "models.png")


def test_pages_are_open_but_data_needs_the_key(server):
    """The page shells and assets are served without the key; data routes answer 401 without it."""
    for path in ("/", "/models", "/static/app.js", "/static/app.css"):
        assert httpx.get(server + path).status_code == 200, path
    assert httpx.get(server + "/web/fragments/models").status_code == 401
    answer = httpx.post(server + "/web/predict", data={"model": "models:/soc-nir@champion"},
                        files={"files": ("a.csv", io.BytesIO(b"sample_id\n"))})
    assert answer.status_code == 401 and answer.json()["error"].startswith("missing API key")


def test_zip_members_are_flattened_and_bounded(tmp_path):
    """An archive cannot write outside the job folder, and its unpacked size is bounded."""
    from soilcarbon.errors import SoilCarbonError
    from soilcarbon.serving.web.uploads import WebError, save_uploads

    class Upload:
        def __init__(self, path: Path):
            self.filename, self.file = path.name, open(path, "rb")

    opus = sorted(p for p in OPUS_DIR.iterdir() if p.is_file())[:2]
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.write(opus[0], f"../../{opus[0].name}")
        bundle.write(opus[1], f"/abs/{opus[1].name}")
    source = save_uploads([Upload(archive)], tmp_path / "job", 10 * 1024 * 1024)
    assert source == tmp_path / "job" / "opus-files"
    assert sorted(p.name for p in source.iterdir()) == [p.name for p in opus]
    assert not (tmp_path / opus[0].name).exists()
    with pytest.raises(WebError, match="unpacks to more than 1000 bytes") as error:
        save_uploads([Upload(archive)], tmp_path / "job2", 1000)
    assert error.value.status == 413
    with pytest.raises(SoilCarbonError, match="two uploaded files are named"):
        save_uploads([Upload(opus[0]), Upload(opus[0])], tmp_path / "job3", 10 ** 7)


def test_problems_are_listed_with_their_reasons(browser, server, tmp_path, capsys):
    """Samples that cannot be predicted are listed with the reasons ``soilcarbon predict --problems`` gives."""
    from selenium.webdriver.common.by import By

    table = pd.read_csv(NIRSOIL_CSV, nrows=12)
    values = table.columns[table.columns.get_loc("1100"):]
    table = table.astype({values[5]: object, values[9]: object})
    table.loc[3, values[5]] = "n/a"
    table.loc[7, values[9]] = None
    bad = tmp_path / "bad rows.csv"
    table.to_csv(bad, index=False)
    code, _, err = cli_in_process(capsys, "predict", "--model", "models:/soc-nir/1", "--spectra", bad, "--output",
                                  tmp_path / "cli.csv", "--problems", tmp_path / "problems.csv", "--quiet")
    assert code == 0, err
    expected = pd.read_csv(tmp_path / "problems.csv")
    assert len(expected) == 2

    open_page(browser, server + "/")
    choose_model(browser, "models:/soc-nir/1")
    submit(browser, [bad])
    listed = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#problems li")]
    assert listed == [f"{sid}: {reason}" for sid, reason in zip(expected["sample_id"], expected["reason"])]
    assert "2 not predicted" in browser.find_element(By.ID, "summary").text
    shown = table_rows(browser)
    assert (shown.loc[[3, 7], "prediction"] == "").all() and (shown["prediction"] != "").sum() == 10
    assert len(browser.find_elements(By.CSS_SELECTOR, "#predictions tr.problem")) == 2
    assert len(browser.find_elements(By.CSS_SELECTOR, "#spectra-chart polyline.spectrum")) == 10


def test_model_menu_and_chart_geometry():
    """The model menu lists aliases before versions (newest first) with target and unit; the
    charts put larger values higher, mark out-of-domain samples, and run wavenumbers right to left."""
    import numpy as np

    from soilcarbon.serving.web.charts import interval_chart, spectra_chart
    from soilcarbon.serving.web.routes import model_choices

    registered = [{"name": "soc", "version": v, "aliases": ["champion"] if v == 2 else [], "target": "Ciso",
                   "unit": "%"} for v in (1, 2, 3)]
    options = model_choices(registered, "models:/soc/3")
    assert [o["value"] for o in options] == ["models:/soc@champion", "models:/soc/3", "models:/soc/2", "models:/soc/1"]
    assert options[0]["label"] == "soc @champion (version 2) - Ciso, %"
    assert [o["selected"] for o in options] == [False, True, False, False]

    frame = pd.DataFrame({"sample_id": ["a", "b", "c"], "prediction": [2.0, 1.0, np.nan],
                          "lower": [1.5, 0.5, np.nan], "upper": [2.5, 1.5, np.nan], "in_domain": [True, False, False]})
    chart = interval_chart(frame, "Ciso (%)")
    assert [m["title"].split(":")[0] for m in chart["marks"]] == ["b", "a"]  # sorted by prediction, NaN left out
    b, a = chart["marks"]
    assert a["y"] < b["y"] and a["y_high"] < a["y"] < a["y_low"] and b["ood"] and not a["ood"]
    assert chart["n_ood"] == 1

    axis = np.array([4000.0, 3000.0, 2000.0])
    lines = spectra_chart(axis, "cm-1", np.array([[1.0, 2.0, 3.0], [np.nan] * 3]), ["x", "y"], [False, True])
    assert lines["n_lines"] == 1 and lines["n_ood"] == 1 and lines["x_label"] == "wavenumber (cm⁻¹)"
    xs = [float(p.split(",")[0]) for p in lines["lines"][0]["points"].split()]
    assert xs[0] < xs[-1]  # 4000 cm-1 drawn left of 2000 cm-1
