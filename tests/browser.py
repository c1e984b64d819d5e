"""Open a report in headless Chromium (Debian's chromium + chromedriver, driven by selenium) for the tests."""

from __future__ import annotations

import shutil
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


@contextmanager
def chrome(window: str = "1400,1000"):
    """A headless Chromium driver (selenium), quit on exit; skips the calling test when the browser is missing."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    from selenium.webdriver.chrome.service import Service

    chromium = shutil.which("chromium") or (CHROMIUM if Path(CHROMIUM).exists() else None)
    driver_bin = shutil.which("chromedriver") or (CHROMEDRIVER if Path(CHROMEDRIVER).exists() else None)
    if not chromium or not driver_bin:
        pytest.skip("chromium and chromedriver are needed (Debian packages 'chromium' and 'chromium-driver')")
    opts = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", f"--window-size={window}"):
        opts.add_argument(arg)
    opts.binary_location = chromium
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_bin), options=opts)
    try:
        driver.set_page_load_timeout(30)
        yield driver
    finally:
        driver.quit()


def open_report(path: Path, screenshot: Path) -> dict:
    """Load ``path`` in headless Chromium and return what the tests check: the browser's SEVERE log entries, the
    text of every ``#results`` body row, whether ``#pareto`` and ``#summary`` are displayed, the natural width of
    every image, and the screenshot written to ``screenshot``. Skips the calling test when the browser is missing."""
    with chrome() as driver:
        from selenium.webdriver.common.by import By

        driver.get(path.resolve().as_uri())
        deadline = time.monotonic() + 10
        while driver.execute_script("return document.readyState") != "complete" and time.monotonic() < deadline:
            time.sleep(0.1)
        pareto = driver.find_element(By.ID, "pareto")
        out = {
            "severe": [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"],
            "rows": [[td.text for td in tr.find_elements(By.TAG_NAME, "td")]
                     for tr in driver.find_elements(By.CSS_SELECTOR, "#results tbody tr")],
            "pareto_displayed": pareto.is_displayed(),
            "pareto_width": driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth",
                                                  pareto),
            "summary_displayed": driver.find_element(By.ID, "summary").is_displayed(),
            "image_widths": driver.execute_script(
                "return Array.from(document.images).map(i => i.complete ? i.naturalWidth : 0)"),
            "screenshot": driver.save_screenshot(str(screenshot)),
        }
    return out
