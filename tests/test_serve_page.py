"""The web page at `/`, driven in headless Chromium: choose or drop an image, see its top-5 classes."""
from __future__ import annotations

import os
import shutil

import httpx
import pytest

from resnetlab.serve.process import ServiceProcess

pytestmark = pytest.mark.xdist_group("serve_page")  # the module's browser and service start on one worker only

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Chromium as root in a sandbox-less container, with no calls home (this machine has no network).
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                 "--disable-background-networking", "--disable-component-update"]


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        message = "Chromium is not installed (Debian: apt-get install chromium); .ci/run installs it"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def service(cifar_classifier):
    with ServiceProcess(cifar_classifier, "--threads", "1") as running:
        yield running


@pytest.fixture
def page(browser, service):
    opened = browser.new_page()
    opened.goto(service.url)
    yield opened
    opened.close()


def shown_predictions(page) -> list[tuple[str, str]]:
    page.wait_for_selector("#results .row")
    return [(row.query_selector(".label").inner_text(), row.query_selector(".probability").inner_text())
            for row in page.query_selector_all("#results .row")]


def expected_predictions(service, image) -> list[tuple[str, str]]:
    answer = httpx.post(f"{service.url}/predict", files=[("file", (image.name, image.read_bytes(), "image/jpeg"))])
    return [(item["label"], f"{100 * item['probability']:.1f}%") for item in answer.json()["predictions"][0]["top"]]


def test_choosing_an_image_shows_its_top5_with_bars_and_the_latency(page, service, cifar10_root):
    image = sorted((cifar10_root / "test" / "ship").glob("*.jpg"))[0]
    page.wait_for_function("document.getElementById('model').textContent.startsWith('cifar_resnet20')")
    page.set_input_files("#file", str(image))
    assert shown_predictions(page) == expected_predictions(service, image)
    widths = [bar.evaluate("element => element.getBoundingClientRect().width")
              for bar in page.query_selector_all("#results .bar")]
    assert widths[0] > 0 and widths == sorted(widths, reverse=True)  # longest bar for the most probable
    page.wait_for_selector("#latency:has-text('ms')")
    assert "ms in the service" in page.inner_text("#latency")


def test_dropping_an_image_classifies_it(page, service, cifar10_root):
    image = sorted((cifar10_root / "test" / "frog").glob("*.jpg"))[1]
    transfer = page.evaluate_handle(
        """([bytes, name]) => { const transfer = new DataTransfer();
               transfer.items.add(new File([new Uint8Array(bytes)], name, {type: "image/jpeg"}));
               return transfer; }""", [list(image.read_bytes()), image.name])
    page.dispatch_event("#drop", "drop", {"dataTransfer": transfer})
    assert shown_predictions(page) == expected_predictions(service, image)


def test_a_file_that_is_not_an_image_shows_the_services_error(page, tmp_path):
    notes = tmp_path / "notes.jpg"
    notes.write_text("not a picture")
    page.set_input_files("#file", str(notes))
    page.wait_for_selector("#error:has-text('not a readable image')")
    assert page.query_selector_all("#results .row") == []
