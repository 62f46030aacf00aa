"""The web demo and the `zsad detect` report in a real browser: Debian's chromium driven by playwright
(headless, the installed browser; playwright downloads none). Skipped when chromium, playwright or gradio
is absent; CI installs chromium (.ci/run). The screenshot is kept in `test-artifacts/` (or
`$ZSAD_TEST_ARTIFACTS`)."""

import os
import shutil
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="browser tests need Debian's chromium (apt-get install chromium)"),
]
playwright = pytest.importorskip("playwright.sync_api", reason="browser tests need playwright (pip install playwright)")
pytest.importorskip("gradio", reason="the demo test needs the demo extra (pip install 'zsad[demo]')")

from zsad import ZeroShotCLIPModel  # noqa: E402
from zsad.cli import main  # noqa: E402
from zsad.demo import AnomalyDemo, build_demo  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "images"
ARTIFACTS = Path(os.environ.get("ZSAD_TEST_ARTIFACTS", Path(__file__).resolve().parents[1] / "test-artifacts"))
# The flags the machine's notes give for a root, offline, headless chromium.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
# Mean brightness (0..255) of the <img> of a Gradio image component, read back through a canvas.
MEAN_OF_IMAGE = """selector => {
  const img = document.querySelector(selector);
  const canvas = document.createElement('canvas');
  canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
  const context = canvas.getContext('2d');
  context.drawImage(img, 0, 0);
  const data = context.getImageData(0, 0, canvas.width, canvas.height).data;
  let sum = 0;
  for (let i = 0; i < data.length; i += 4) sum += data[i];
  return [sum / (data.length / 4), img.src];
}"""

LOADED = "selector => { const img = document.querySelector(selector); return img && img.complete && img.naturalWidth > 0; }"


@pytest.fixture(scope="module")
def browser():
    with playwright.sync_playwright() as driver:
        launched = driver.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


def test_demo_scores_an_upload_and_the_slider_redraws_the_mask(browser, tiny_backbone, monkeypatch, tmp_path):
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    image = EXAMPLES / "grid_defect.png"
    model = ZeroShotCLIPModel.from_backbone(tiny_backbone, image_size=56)
    # A pixel threshold inside this image's map (its median), so that the mask starts part white.
    from PIL import Image
    import numpy as np

    model.config.pixel_threshold = float(np.median(AnomalyDemo(model).analyse(Image.open(image)).anomaly_map))
    app = build_demo(model, title="zsad test", examples=[str(EXAMPLES / "grid_good.png")])
    app.launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True)
    try:
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.goto(app.local_url)
        page.set_input_files("#zsad-input input[type=file]", str(image))
        for selector in ("#zsad-overlay img", "#zsad-mask img"):
            page.wait_for_function(LOADED, arg=selector, timeout=60_000)
        before, before_src = page.evaluate(MEAN_OF_IMAGE, "#zsad-mask img")
        assert 0 < before < 255  # the median threshold: part of the mask is white, part black
        assert float(page.input_value("#zsad-score input")) > 0
        # The slider to 0: every pixel of a probability map is >= 0, so the redrawn mask is all white.
        number = page.locator("#zsad-threshold input[type=number]")
        number.fill("0")
        number.press("Enter")
        page.wait_for_function("src => document.querySelector('#zsad-mask img').src !== src", arg=before_src, timeout=30_000)
        page.wait_for_function(LOADED, arg="#zsad-mask img", timeout=30_000)
        after, _ = page.evaluate(MEAN_OF_IMAGE, "#zsad-mask img")
        assert after == 255
        assert page.locator("#zsad-download a").count() >= 1  # the map is offered as a download
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "demo.png"), full_page=True)
    finally:
        app.close()


def test_detect_report_images_all_load(browser, tiny_backbone, tmp_path):
    out = tmp_path / "detect"
    assert main(["detect", str(EXAMPLES), "--model", "zero-shot-clip", "--backbone", tiny_backbone, "--image-size", "56",
                 "--out", str(out), "--quiet"]) == 0
    page = browser.new_page()
    page.goto((out / "report.html").as_uri())
    page.wait_for_load_state("load")
    # The thumbnails load lazily: bring each into view, then give them the time to load (or fail).
    for index in range(page.locator("img").count()):
        page.locator("img").nth(index).scroll_into_view_if_needed()
    try:
        page.wait_for_function("() => Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)",
                               timeout=10_000)
    except playwright.TimeoutError:
        pass  # the assertion below names the images that did not load
    images = page.evaluate("() => Array.from(document.images).map(i => [i.getAttribute('src'), i.complete, i.naturalWidth])")
    inputs = [p for p in EXAMPLES.iterdir() if p.suffix == ".png"]
    assert len(images) == len(inputs)
    broken = [src for src, complete, width in images if not (complete and width > 0)]
    assert not broken, broken
