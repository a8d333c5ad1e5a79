"""The web console in a real headless browser (Chromium and chromedriver from the
system's packages, installed by ``.ci/run``): a grant shows on the holders page
within seconds, without reloading it; the holder goes on release; a denial shows on
the events page with its reason; a backup's domains page shows a failover.
Screenshots are written to a folder the test prints (``HQNLSD_SCREENSHOTS`` names
it; by default one under the test's tmp_path).

A missing browser or driver fails the test (it is not skipped): CI installs both.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hqnlsd.client.errors import LicenceDenied
from tests.daemons import DaemonHarness
from tests.web.test_e2e_web import client_for, start_with_web

pytestmark = pytest.mark.e2e

#: Seconds a change may take to show in the browser (the page polls every 3 s).
SHOWN_WITHIN = 15.0
#: Seconds a page may take to load.
LOAD_LIMIT = 30.0


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[DaemonHarness]:
    with DaemonHarness(tmp_path) as harness:
        yield harness


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[object]:
    """Headless Chromium driven by the system's chromedriver."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    assert chromium and driver_path, (
        "the browser tests need Chromium and its driver (Debian packages chromium and "
        "chromium-driver; .ci/run installs them)"
    )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,900",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(LOAD_LIMIT)
    try:
        yield driver
    finally:
        driver.quit()


def wait(driver: Any, seconds: float) -> Any:
    """A bounded wait that polls often and ignores elements replaced meanwhile (the
    page swaps its <main> at each refresh)."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(
        driver,
        seconds,
        poll_frequency=0.2,
        ignored_exceptions=(StaleElementReferenceException,),
    )


@pytest.fixture
def screenshots(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    """The screenshots' folder, printed past pytest's capture (a plain ``python -m
    pytest`` showed it only when a test failed)."""
    folder = Path(os.environ.get("HQNLSD_SCREENSHOTS") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    with capsys.disabled():
        print(f"\nweb console screenshots in {folder}")
    return folder


def test_the_console_follows_grants_releases_and_denials(
    daemons: DaemonHarness, browser: object, screenshots: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webdriver import WebDriver

    driver = browser
    assert isinstance(driver, WebDriver)
    daemon, port = start_with_web(daemons)
    driver.get(f"http://127.0.0.1:{port}/holders")
    main = driver.find_element(By.ID, "main")
    assert "No licence is held." in main.text
    driver.save_screenshot(str(screenshots / "holders-empty.png"))

    def page_text() -> str:
        return str(driver.find_element(By.ID, "main").text)

    licence = client_for(daemon, "ann", 4242).request("Test Publisher", "Widget", "1.0")
    try:
        wait(driver, SHOWN_WITHIN).until(lambda _: "ann" in page_text() and "4242" in page_text())
        # Refreshed in place (the script), not reloaded: the same <main> element is there.
        assert driver.find_element(By.ID, "main") == main
        driver.save_screenshot(str(screenshots / "holders-ann.png"))

        with pytest.raises(LicenceDenied):
            client_for(daemon, "bob", 777).request("Test Publisher", "Widget", "1.0")
        driver.get(f"http://127.0.0.1:{port}/events")
        wait(driver, SHOWN_WITHIN).until(
            lambda _: "bob" in page_text() and "NOLICENCES" in page_text()
        )
        reasons = driver.find_elements(By.CSS_SELECTOR, 'td[data-label="Reason"]')
        assert reasons and all(str(cell.text).strip() for cell in reasons)
        driver.save_screenshot(str(screenshots / "events-denial.png"))
        driver.get(f"http://127.0.0.1:{port}/holders")
    finally:
        licence.release()
    wait(driver, SHOWN_WITHIN).until(lambda _: "No licence is held." in page_text())
    driver.set_window_size(390, 844)  # a phone
    driver.get(f"http://127.0.0.1:{port}/products")
    # On a phone the table reads as cards: no header row, each cell on its own line.
    assert not driver.find_element(By.CSS_SELECTOR, "thead").is_displayed()
    cell = driver.find_element(By.CSS_SELECTOR, "td")
    assert cell.value_of_css_property("display") == "block"
    driver.save_screenshot(str(screenshots / "products-phone.png"))
    written = {p.name for p in screenshots.iterdir()}
    assert written >= {
        "events-denial.png",
        "holders-ann.png",
        "holders-empty.png",
        "products-phone.png",
    }


def test_the_domain_page_shows_a_failover(
    daemons: DaemonHarness, browser: object, screenshots: Path
) -> None:
    """A backup's domains page names the primary; the primary is killed: the page,
    left open, names the new one and shows the old one's link down."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webdriver import WebDriver

    from tests.web.test_e2e_web_domain import (
        ELECTION_BOUND,
        FAILOVER_BOUND,
        domain_with_web,
    )

    driver = browser
    assert isinstance(driver, WebDriver)
    (first, second, _third), port = domain_with_web(daemons)
    driver.get(f"http://{second.address}:{port}/domains")

    def cells(label: str) -> list[str]:
        found = driver.find_elements(By.CSS_SELECTOR, f'td[data-label="{label}"]')
        return [str(cell.text) for cell in found]

    wait(driver, ELECTION_BOUND).until(
        lambda _: (
            cells("Primary") == ["127.0.0.1"]
            and cells("Link").count("up") == 2
            and all(cells("Round trip"))
        )
    )
    driver.save_screenshot(str(screenshots / "domains-before-failover.png"))
    first.kill()
    wait(driver, FAILOVER_BOUND).until(
        lambda _: cells("Primary") in (["127.0.0.2"], ["127.0.0.3"]) and "down" in cells("Link")
    )
    driver.save_screenshot(str(screenshots / "domains-after-failover.png"))
