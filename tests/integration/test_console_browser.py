"""The operator console in a real headless Chromium (Debian `chromium` + `chromium-driver`, driven by Selenium),
against the real gateway and Triton: upload, crop box, results, "more like this", errors, privacy and escaping.

A screenshot of every step is written to var/test-artifacts/console/ (the browser timings too: upload to first
results drawn, reported there, not asserted).
"""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image
from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from clients.client import NewImage
from devkit.launcher import ConsoleProcess, GatewayProcess, start_console
from server.core.config import REPO_ROOT, free_port
from tests.fixtures.gateway import start_gateway
from tests.photos import jpeg, open_photo, small_jpeg

ARTIFACTS = REPO_ROOT / "var" / "test-artifacts" / "console"
CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
PUBLIC = ["calla", "city", "desert", "goldfish", "skimage/coffee", "skimage/chelsea", "skimage/rocket"]
PRIVATE = "ops/private-astronaut"
XSS = "ops/<img src=x onerror=alert(1)>"

pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="needs Debian chromium + chromium-driver "
                                                                   "(make setup installs them)")


@dataclass
class Page:
    driver: WebDriver
    console: ConsoleProcess
    gateway: GatewayProcess
    steps: list[str]

    def shot(self, name: str) -> None:
        self.steps.append(name)
        self.driver.save_screenshot(str(ARTIFACTS / f"{len(self.steps):02d}-{name}.png"))

    def timings(self) -> list[dict]:
        return self.driver.execute_script("return window.vsearchTimings")

    def answers(self) -> int:
        """Answers drawn plus errors shown so far."""
        return self.driver.execute_script("return window.vsearchTimings.length + window.vsearchErrors.length")

    def wait_answers(self, before: int, timeout_s: float = 30) -> None:
        """Until the page answered once more than `before` (results or an error)."""
        WebDriverWait(self.driver, timeout_s).until(lambda d: self.answers() > before)

    def result_ids(self) -> list[str]:
        return [e.get_attribute("data-image-id") for e in self.driver.find_elements(By.CSS_SELECTOR, ".result")]

    def upload(self, path: Path) -> None:
        self.driver.find_element(By.ID, "file").send_keys(str(path))

    def error(self) -> tuple[str, str] | None:
        if self.driver.find_element(By.ID, "error").get_attribute("hidden"):
            return None
        return (self.driver.find_element(By.ID, "error-code").text,
                self.driver.find_element(By.ID, "error-message").text)


@pytest.fixture(scope="module")
def page(triton_server, tmp_path_factory) -> Iterator[Page]:
    root = tmp_path_factory.mktemp("console")
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True)
    gateway = start_gateway(triton_server, root / "data")
    with gateway.client(timeout_s=120) as client:
        client.add_images([NewImage(f"ops/{name}", small_jpeg(name, 480), "ops") for name in PUBLIC]
                          + [NewImage(PRIVATE, small_jpeg("skimage/astronaut", 480), "ops", private=True),
                             NewImage(XSS, small_jpeg("skimage/motorcycle_left", 480), "ops")])
    console = start_console(gateway.target, free_port(), root / "console.log", "--insecure-local",
                            "--metrics-url", gateway.metrics_url)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    try:
        driver.get(console.url)
        yield Page(driver, console, gateway, [])
    finally:
        driver.quit()
        console.stop()
        gateway.stop()


def test_upload_crop_and_more_like_this(page, tmp_path):
    source = open_photo("city")
    scale = (1_000_000 / (source.width * source.height)) ** 0.5
    query = tmp_path / "city-1mpx.jpg"  # the indexed photo again, at about 1 Mpx: its copy is the first result
    query.write_bytes(jpeg(source.resize((round(source.width * scale), round(source.height * scale))), 90))
    page.shot("opened")
    before = page.answers()
    page.upload(query)
    page.wait_answers(before)
    assert page.error() is None
    assert page.result_ids()[0] == "ops/city"
    thumbnails = page.driver.find_elements(By.CSS_SELECTOR, ".result img")
    WebDriverWait(page.driver, 20).until(lambda d: all(d.execute_script("return arguments[0].complete && "
                                                                        "arguments[0].naturalWidth > 0", img)
                                                       for img in thumbnails))
    page.shot("results")

    preview = page.driver.find_element(By.ID, "preview")
    width, height = preview.size["width"], preview.size["height"]
    # A box over the left half of the picture, dragged from its top-left corner.
    before = page.answers()
    ActionChains(page.driver).move_to_element_with_offset(preview, -width // 2 + 4, -height // 2 + 4) \
        .click_and_hold().move_by_offset(width // 2, height - 8).release().perform()
    page.wait_answers(before)
    crop = page.driver.find_element(By.ID, "crop-text").text
    assert crop.startswith("crop 0.0") and page.error() is None, crop
    assert page.result_ids()[0] == "ops/city"
    page.shot("crop-box")

    before = page.answers()
    page.driver.find_element(By.CSS_SELECTOR, ".result").click()  # more like ops/city
    page.wait_answers(before)
    meta = page.driver.find_element(By.ID, "meta").text
    assert meta.startswith("more like ops/city") and "ops/city" not in page.result_ids()
    page.shot("more-like-this")
    (ARTIFACTS / "timings.json").write_text(json.dumps(page.timings(), indent=1))


def test_a_corrupt_file_shows_the_gateway_status_and_the_page_keeps_working(page, tmp_path):
    before = page.answers()
    bad = tmp_path / "corrupt.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG" * 10)
    page.upload(bad)
    page.wait_answers(before)
    code, message = page.error()
    assert code == "INVALID_ARGUMENT" and message.startswith("image_bytes:"), (code, message)
    page.shot("corrupt-file")
    huge = tmp_path / "60mpx.png"
    Image.new("1", (8000, 7500)).save(huge)  # 60 Mpx in a few kB: refused on its header
    before = page.answers()
    page.upload(huge)
    page.wait_answers(before)
    code, message = page.error()
    assert code == "INVALID_ARGUMENT" and "pixel limit" in message, (code, message)
    page.shot("60-mpx")
    good = tmp_path / "desert.jpg"
    good.write_bytes(small_jpeg("desert", 400))
    before = page.answers()
    page.upload(good)
    page.wait_answers(before)
    assert page.error() is None and page.result_ids()[0] == "ops/desert"


def test_a_private_image_never_appears_and_has_no_thumbnail(page, tmp_path):
    query = tmp_path / "astronaut.jpg"
    query.write_bytes(small_jpeg("skimage/astronaut", 480))  # the private image's own bytes
    before = page.answers()
    page.upload(query)
    page.wait_answers(before)
    assert page.error() is None and PRIVATE not in page.result_ids() and page.result_ids()
    page.shot("private-query")
    for image_id in (PRIVATE, "ops/never-added"):
        url = f"{page.console.url}api/thumbnail?id={urllib.request.quote(image_id)}"
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url, timeout=10)
        assert refused.value.code == 404 and json.load(refused.value)["code"] == "NOT_FOUND"


def test_ids_and_messages_are_shown_as_text_never_run(page, tmp_path):
    query = tmp_path / "motorcycle.jpg"
    query.write_bytes(small_jpeg("skimage/motorcycle_left", 480))
    before = page.answers()
    page.upload(query)
    page.wait_answers(before)
    assert page.result_ids()[0] == XSS
    assert page.driver.find_element(By.CSS_SELECTOR, ".result .id").text == XSS  # shown literally
    assert page.driver.find_elements(By.CSS_SELECTOR, "#results img[src='x']") == []
    with pytest.raises(NoAlertPresentException):
        _ = page.driver.switch_to.alert.text
    page.shot("escaped-id")


def test_cross_site_posts_are_refused(page):
    request = urllib.request.Request(f"{page.console.url}api/similar?image_id=ops/city", method="POST",
                                     headers={"Origin": "http://evil.example"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 403
    forged = urllib.request.Request(f"{page.console.url}api/similar?image_id=ops/city", method="POST",
                                    headers={"Origin": "http://evil.example", "X-VSearch-Console": "1"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(forged, timeout=10)
    assert refused.value.code == 403


def test_the_panels_show_the_service_and_its_slos(page):
    WebDriverWait(page.driver, 30).until(lambda d: "encoder/" in d.find_element(By.ID, "service").text)
    service = page.driver.find_element(By.ID, "service").text
    assert "admission" in service and "index" in service
    WebDriverWait(page.driver, 30).until(lambda d: d.find_element(By.ID, "slo").get_attribute("data-p99"))
    page.shot("panels")
