"""The page in a real browser: headless Chromium loads a synthetic sample, runs an instance and
a semantic model, and draws their results; screenshots are kept as artifacts.

Runs where Debian's ``chromium`` is installed and skips elsewhere, unless
``PANSIGHT_REQUIRE_BROWSER=1`` (as ``.ci/run`` sets it after installing Chromium): then a
missing browser or Playwright fails the tests. The screenshots go to ``$PANSIGHT_ARTIFACTS``
(default ``runs/artifacts``).
"""

import os
import socket
import threading
from pathlib import Path

import pytest
from pycocotools import mask as mask_utils

from pansight.api import train
from pansight.engine.checkpoint import load_checkpoint, save_checkpoint
from pansight.serve import LOOPBACK_HOSTS, create_app, load_registry

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SHOWN_DETECTIONS = 5
"""The page's score threshold is set to show about this many of the one-iteration model's many
low-scoring detections."""

REQUIRED = os.environ.get("PANSIGHT_REQUIRE_BROWSER") == "1"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.exists() and not REQUIRED,
        reason=f"{CHROMIUM} is missing (apt-get install chromium)",
    ),
]

TINY = {"data__num_train": 4, "data__num_val": 2, "data__image_size": 64, "max_iters": 1}


MASK_LOGIT = 4.0
"""The one-iteration Mask R-CNN's mask logits are set to this everywhere (zero weights, this
bias), so that its masks fill their boxes and show plainly in the screenshot (an untrained mask
head gives logits of spread 8, which paste into a few scattered pixels)."""


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A one-iteration Mask R-CNN (masks made to fill their boxes, :data:`MASK_LOGIT`) and
    FCN-8s, in run folders named after them."""
    runs = tmp_path_factory.mktemp("runs")
    rcnn_size = {"model__min_size": 64, "model__max_size": 64, "amp": False}
    train("instance", out=str(runs / "instance"), batch_size=2, **TINY, **rcnn_size)
    train("semantic", out=str(runs / "semantic"), batch_size=2, **TINY)
    instance = runs / "instance" / "model.pt"
    payload = load_checkpoint(instance)
    state = payload["state_dict"]
    state["mask_predictor.mask_fcn_logits.weight"].zero_()
    state["mask_predictor.mask_fcn_logits.bias"].fill_(MASK_LOGIT)
    save_checkpoint(instance, payload)
    return [instance, runs / "semantic" / "model.pt"]


@pytest.fixture(scope="module")
def server(checkpoints):
    """The real server (uvicorn) on a free loopback port, for the module's tests."""
    import uvicorn

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = uvicorn.Config(
        create_app(load_registry(checkpoints), allowed_hosts=LOOPBACK_HOSTS),
        host="127.0.0.1",
        port=port,
        log_level="warning",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("the server stopped while starting")
        thread.join(timeout=0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=30)


@pytest.fixture
def page(server):
    if REQUIRED and not CHROMIUM.exists():
        pytest.fail(f"PANSIGHT_REQUIRE_BROWSER=1 but {CHROMIUM} is missing")
    if REQUIRED:
        import playwright.sync_api as playwright_api
    else:
        playwright_api = pytest.importorskip("playwright.sync_api")
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.errors = []
        page.on("pageerror", lambda error: page.errors.append(str(error)))
        yield page
        browser.close()


def artifact(name: str) -> Path:
    folder = Path(os.environ.get("PANSIGHT_ARTIFACTS", "runs/artifacts"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name


def open_page(page, server: str, min_score: float) -> None:
    page.goto(f"{server}/?min_score={min_score}")
    page.wait_for_selector("body[data-state=ready]", timeout=30_000)


def instance_detections(server: str) -> list[dict]:
    """The instance model's detections on synthetic sample 0, straight from the API."""
    import httpx2

    sample = httpx2.get(f"{server}/api/sample?index=0").content
    answer = httpx2.post(
        f"{server}/api/predict?model=instance",
        content=sample,
        headers={"Content-Type": "image/png"},
        timeout=60,
    )
    return answer.json()["result"]["detections"]


def test_page_draws_instance_masks(page, server):
    detections = instance_detections(server)
    min_score = sorted((d["score"] for d in detections), reverse=True)[SHOWN_DETECTIONS - 1]
    shown = [d for d in detections if d["score"] >= min_score]
    rles = [{**d["mask"], "counts": d["mask"]["counts"].encode()} for d in shown]
    open_page(page, server, min_score)
    page.click("#sample-button")
    page.wait_for_selector("body[data-state=image]")
    page.select_option("#model", "instance")
    page.click("#run")
    page.wait_for_selector("body[data-state=done]", timeout=60_000)
    count = page.locator("#count")
    shot = artifact("serve_browser.png")
    page.screenshot(path=str(shot), full_page=True)
    print(f"screenshot: {shot.resolve()}")
    assert int(count.get_attribute("data-count")) == len(shown) >= SHOWN_DETECTIONS
    assert count.inner_text().startswith(f"{len(shown)} detections")
    mask_pixels = int(count.get_attribute("data-mask-pixels"))
    assert mask_pixels == int(mask_utils.area(rles).sum())
    box_pixels = sum((d["box"][2] - d["box"][0]) * (d["box"][3] - d["box"][1]) for d in shown)
    assert mask_pixels > 0.5 * box_pixels
    assert page.locator("#timings tr").count() == 6
    assert page.locator("#error").is_hidden() and page.errors == []


def test_ladder_shows_every_model(page, server):
    open_page(page, server, min_score=0.0)
    page.click("#sample-button")
    page.wait_for_selector("body[data-state=image]")
    page.click("#ladder-button")
    page.wait_for_selector("body[data-state=done]", timeout=60_000)
    cards = page.locator("#ladder .card")
    shot = artifact("serve_browser_ladder.png")
    page.screenshot(path=str(shot), full_page=True)
    print(f"screenshot: {shot.resolve()}")
    titles = [cards.nth(i).locator("h2").inner_text() for i in range(cards.count())]
    assert titles == ["semantic: semantic", "instance: instance"]
    for i in range(2):
        assert int(cards.nth(i).locator(".count").get_attribute("data-count")) > 0
    assert cards.nth(0).locator(".legend li").count() > 0
    assert page.errors == []


def test_errors_show_on_the_page(page, server):
    open_page(page, server, min_score=0.0)
    page.set_input_files(
        "#file", files=[{"name": "notes.png", "mimeType": "image/png", "buffer": b"not a png"}]
    )
    page.wait_for_selector("#error:not([hidden])")
    assert "notes.png" in page.locator("#error").inner_text()
