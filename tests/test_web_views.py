"""The Compare and Stocks views of the web page, in a real headless Chromium against a real
``soilcarbon serve`` (the fixtures and helpers of ``test_web``): the values on the page and the
files it offers equal ``soilcarbon compare --json`` and ``soilcarbon stocks``'s outputs for the
same inputs; each view shows a user error as a readable 4xx message; screenshots go to tmp_path.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import httpx
import pandas as pd
import pytest

from cli_helpers import cli_in_process
from conftest import NIRSOIL_CSV, REPO
from test_web import (browser, cli_predict, choose_model, downloads, open_page, page_message,  # noqa: F401
                      pytestmark, screenshot, server, submit, wait_for)

SAMPLES = REPO / "data" / "stock_samples.csv"
FIELDS = REPO / "data" / "stock_fields.csv"
RESAMPLES = "500"
DRAWS = "500"
N_TEST = 150


@pytest.fixture(scope="module")
def versions(store):
    """Two versions of ``soc-web-cmp`` in the served store, trained on different samples."""
    from threadpoolctl import threadpool_limits

    from serving_models import NIR_CONFIG
    from trained_model import train_spectral_model

    with threadpool_limits(1):
        return [train_spectral_model(Path(store["folder"]), "soc-web-cmp", n=n, config=NIR_CONFIG)
                for n in (150, 200)]


# ============================================================================ helpers
def shown_table(driver, table_id: str) -> list[dict]:
    """Rows of a table of the page: ``{column key: value}`` from the cells' exact JSON values."""
    rows = driver.execute_script(
        "return [...document.querySelectorAll('#' + arguments[0] + ' tbody tr')].map(r => [...r.cells].map(c => "
        "[c.className.split(' ').find(x => x.startsWith('col-')).slice(4), c.dataset.value]))", table_id)
    return [{key: json.loads(value) for key, value in row} for row in rows]


def linked(driver, link_id: str) -> bytes:
    """The bytes of a download link (a ``data:`` URI)."""
    href = driver.execute_script("return document.getElementById(arguments[0]).getAttribute('href')", link_id)
    return base64.b64decode(href.split(",", 1)[1])


def send(driver, button_id: str, expect_result: bool = True) -> None:
    from selenium.webdriver.common.by import By

    driver.execute_script("document.getElementById('result').innerHTML = ''; "
                          "document.getElementById('message').hidden = true;")
    driver.find_element(By.ID, button_id).click()
    wait_for(driver, lambda d: d.execute_script(
        "return document.querySelector('#result h2') !== null || !document.getElementById('message').hidden"),
        120, "the answer")
    shown = driver.execute_script("const m = document.getElementById('message'); return m.hidden ? '' : m.textContent")
    assert bool(shown) != expect_result, f"message on the page: {shown!r}"


def report_images(driver) -> int:
    """How many figures the embedded report shows, once every image of it is decoded."""
    script = ("const f = document.getElementById('compare-report'); const d = f && f.contentDocument; "
              "if (!d || d.readyState !== 'complete') return -1; const i = [...d.images]; "
              "return i.every(x => x.complete && x.naturalWidth > 100) ? i.length : -1;")
    wait_for(driver, lambda d: d.execute_script(script) >= 0, 30, "the report's figures")
    return driver.execute_script(script)


def choose_versions(driver, uris: list[str]) -> None:
    """Tick the versions' boxes with the keyboard (space on the focused box)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    css = "#versions input[name=models]"
    wait_for(driver, lambda d: {e.get_attribute("value") for e in d.find_elements(By.CSS_SELECTOR, css)} >= set(uris),
             30, f"{uris} in the list")
    for box in driver.find_elements(By.CSS_SELECTOR, css):
        if box.is_selected() != (box.get_attribute("value") in uris):
            box.send_keys(Keys.SPACE)
    assert sorted(e.get_attribute("value") for e in driver.find_elements(By.CSS_SELECTOR, css + ":checked")) == \
        sorted(uris)


def fill(driver, element_id: str, value) -> None:
    from selenium.webdriver.common.by import By

    field = driver.find_element(By.ID, element_id)
    field.clear()
    field.send_keys(str(value))


def assert_phone_width(driver, path: Path) -> None:
    """At a phone's width the page does not scroll sideways (wide tables scroll in their box)."""
    driver.set_window_size(390, 844)
    try:
        assert driver.execute_script("return document.documentElement.scrollWidth <= window.innerWidth + 1")
        screenshot(driver, path)
    finally:
        driver.set_window_size(1280, 1000)


def assert_rows_equal(shown: list[dict], expected: list[dict]) -> None:
    assert len(shown) == len(expected) and shown
    for row, reference in zip(shown, expected):
        for key, value in row.items():
            assert value == reference.get(key), (key, value, reference.get(key))


# ============================================================================ compare
def test_compare_logged_and_on_test_data_equal_the_cli(browser, server, versions, tmp_path, capsys):  # noqa: F811
    from selenium.webdriver.common.by import By

    v1, v2 = versions[::-1]  # the page lists (and sends) the newest version first
    code, _, err = cli_in_process(capsys, "compare", v1, v2, "--json", tmp_path / "logged.json")
    assert code == 0, err
    logged = json.loads((tmp_path / "logged.json").read_text())
    assert any("different data" in w for w in logged["warnings"])

    open_page(browser, server + "/compare")
    choose_versions(browser, [v1, v2])
    send(browser, "compare-button")
    assert browser.find_element(By.ID, "comparison").get_attribute("data-mode") == "logged"
    warnings = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#comparison .warn")]
    assert warnings == [f"warning: {w}" for w in logged["warnings"]]
    assert_rows_equal(shown_table(browser, "compare-metrics"), logged["models"])
    assert_rows_equal(shown_table(browser, "compare-pairs"), logged["pairs"])
    assert json.loads(linked(browser, "download-json")) == logged
    assert report_images(browser) >= 1  # the logged metrics figure (and the out-of-fold plots)
    screenshot(browser, tmp_path / "compare-logged.png")

    test_csv = tmp_path / "test.csv"
    pd.read_csv(NIRSOIL_CSV).iloc[-N_TEST:].to_csv(test_csv, index=False)
    code, _, err = cli_in_process(capsys, "compare", v1, v2, "--spectra", test_csv, "--target", "Ciso",
                                  "--resamples", RESAMPLES, "--json", tmp_path / "test.json")
    assert code == 0, err
    expected = json.loads((tmp_path / "test.json").read_text())
    browser.find_element(By.ID, "compare-files").send_keys(str(test_csv))
    fill(browser, "target", "Ciso")
    fill(browser, "resamples", RESAMPLES)
    send(browser, "compare-button")
    assert browser.find_element(By.ID, "comparison").get_attribute("data-mode") == "test"
    assert_rows_equal(shown_table(browser, "compare-metrics"), expected["models"])
    pairs = shown_table(browser, "compare-pairs")
    assert_rows_equal(pairs, expected["pairs"])
    assert pairs[0]["ci_low"] is not None and pairs[0]["p_value"] is not None
    page_json = json.loads(linked(browser, "download-json"))
    assert page_json["test_data"]["spectra"] == "test.csv"  # the upload's name, not a temporary path
    page_json["test_data"]["spectra"] = expected["test_data"]["spectra"]
    assert page_json == expected
    report = browser.find_element(By.ID, "compare-report").get_attribute("srcdoc")
    assert report == linked(browser, "download-report").decode("utf-8")
    assert report.count("data:image/png;base64,") == 3 and "Paired differences" in report
    assert report_images(browser) == 3
    screenshot(browser, tmp_path / "compare-test.png")
    assert_phone_width(browser, tmp_path / "compare-phone.png")


def test_compare_error_is_a_readable_message(browser, server, versions, tmp_path):  # noqa: F811
    """The same version twice (by alias and by number) is refused with a 422 message."""
    from soilcarbon.registry import promote

    promote("soc-web-cmp", "2", "latest-good")
    open_page(browser, server + "/compare")
    choose_versions(browser, ["models:/soc-web-cmp@latest-good", versions[1]])
    send(browser, "compare-button", expect_result=False)
    status, text = page_message(browser)
    assert status == 422 and "are the same version (models:/soc-web-cmp/2)" in text, (status, text)
    screenshot(browser, tmp_path / "compare-error.png")


# ============================================================================ stocks
def test_stocks_from_the_predict_page_equal_the_cli(browser, server, tmp_path, capsys):  # noqa: F811
    """Predict the example soils on the Predict page, then compute stocks from those predictions:
    the tables and every file offered equal ``soilcarbon stocks`` on ``soilcarbon predict``'s output."""
    from selenium.webdriver.common.by import By

    cli_predict(capsys, "models:/soc-nir@champion", NIRSOIL_CSV, tmp_path / "pred.csv")
    out, changes = tmp_path / "stocks.csv", tmp_path / "changes.csv"
    code, stdout, err = cli_in_process(capsys, "stocks", "--predictions", tmp_path / "pred.csv", "--samples", SAMPLES,
                                       "--fields", FIELDS, "--output", out, "--changes", changes, "--json",
                                       "--draws", DRAWS)
    assert code == 0, err
    expected = json.loads(stdout)

    open_page(browser, server + "/")
    choose_model(browser, "models:/soc-nir@champion")
    submit(browser, [NIRSOIL_CSV])
    open_page(browser, server + "/stocks")
    box = browser.find_element(By.ID, "use-last-box")
    assert box.is_displayed() and "618 samples, models:/soc-nir/1" in box.text
    browser.find_element(By.ID, "use-last").click()
    browser.find_element(By.ID, "stocks-samples").send_keys(str(SAMPLES))
    browser.find_element(By.ID, "stocks-fields").send_keys(str(FIELDS))
    fill(browser, "draws", DRAWS)
    send(browser, "stocks-button")

    assert browser.find_element(By.ID, "stocks-unit").text == "%"
    assert linked(browser, "download-stocks") == out.read_bytes()
    assert linked(browser, "download-changes") == changes.read_bytes()
    assert json.loads(linked(browser, "download-json")) == expected
    assert_rows_equal(shown_table(browser, "stocks-fields-table"), expected["fields"])
    assert_rows_equal(shown_table(browser, "stocks-changes"), expected["changes"])
    assert_rows_equal(shown_table(browser, "stocks-totals"), expected["project"]["totals"])
    assert_rows_equal(shown_table(browser, "stocks-project-changes"), expected["project"]["changes"])
    credited = [e for e in expected["project"]["changes"] if e["credited"]]
    assert f"{credited[0]['credited_change_t']:,.1f} t C" in browser.find_element(By.CSS_SELECTOR, ".credited").text
    report = linked(browser, "download-report").decode("utf-8")
    assert "von Haden" in report and "stock_samples.csv" in report and "/tmp" not in report
    screenshot(browser, tmp_path / "stocks.png")

    assert_phone_width(browser, tmp_path / "stocks-phone.png")


def test_stocks_error_is_a_readable_message(browser, server, tmp_path, capsys):  # noqa: F811
    """A samples table without bulk density: a 422 message naming the file and the column."""
    bad = tmp_path / "samples.csv"
    pd.read_csv(SAMPLES).drop(columns=["bulk_density_g_cm3"]).to_csv(bad, index=False)
    predictions = tmp_path / "pred.csv"
    pd.read_csv(SAMPLES, usecols=["sample_id"]).assign(prediction=1.0, lower=0.8, upper=1.2).to_csv(
        predictions, index=False)
    open_page(browser, server + "/stocks")
    from selenium.webdriver.common.by import By

    browser.find_element(By.ID, "stocks-samples").send_keys(str(bad))
    browser.find_element(By.ID, "stocks-predictions").send_keys(str(predictions))
    send(browser, "stocks-button", expect_result=False)
    status, text = page_message(browser)
    assert status == 422 and text.startswith("samples.csv: column 'bulk_density_g_cm3' is missing"), (status, text)
    assert "/tmp" not in text
    screenshot(browser, tmp_path / "stocks-error.png")


def test_limits_of_the_views(server, tmp_path):  # noqa: F811
    """The work a request may ask for is bounded: draws and resamples, and the rows of a samples
    table (the batch limit); both answer 4xx with the reason."""
    from test_web import API_KEY, MAX_BATCH

    key = {"X-API-Key": API_KEY}
    samples = SAMPLES.read_bytes()
    answer = httpx.post(server + "/web/stocks", headers=key, data={"draws": "1000000000"},
                        files={"samples": ("s.csv", samples), "predictions": ("p.csv", b"sample_id\n")})
    assert answer.status_code == 422 and "draws must be between 100 and 20000" in answer.json()["error"]
    many = tmp_path / "many.csv"
    table = pd.read_csv(SAMPLES)
    pd.concat([table.assign(sample_id=table["sample_id"] + f"-{k}") for k in range(2)]).to_csv(many, index=False)
    assert len(table) * 2 > MAX_BATCH
    answer = httpx.post(server + "/web/stocks", headers=key,
                        files={"samples": ("many.csv", many.read_bytes()), "predictions": ("p.csv", b"sample_id\n")})
    assert answer.status_code == 413 and answer.json()["error"].startswith("many.csv: about 1236 rows, more than")
    answer = httpx.post(server + "/web/compare", headers=key,
                        data={"models": ["models:/soc-nir/1", "models:/soc-mir/1"], "resamples": "99"})
    assert answer.status_code == 422 and "resamples must be between 100" in answer.json()["error"]
