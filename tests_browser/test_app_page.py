"""The app in a real browser (``make test-browser``, not part of ``make test``): headless Chromium through
Selenium loads the page, starts from a FaceWorld test mask, picks the "hat" brush by its name, paints strokes
on the mask, generates with every method, checks that the strokes reached the model (the conditions picture
shows the hat where they were painted) and that the influence maps can be browsed, and saves a screenshot
(``docs/app.png``, or $APP_SCREENSHOT).

Needs Debian's ``chromium`` and ``chromium-driver`` (``apt-get install chromium chromium-driver``; the paths can
be changed with $CHROMIUM and $CHROMEDRIVER) and ``pip install -e .[app,browser]``.
"""

import io
import os
import shutil
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

from app_server import running_app  # noqa: E402

from ldm.data.masks import CLASS_NAMES, PALETTE  # noqa: E402

webdriver = pytest.importorskip("selenium.webdriver", reason="pip install -e .[browser]")
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")
SCREENSHOT = Path(os.environ.get("APP_SCREENSHOT", REPO / "docs" / "app.png"))
HAT = CLASS_NAMES.index("hat")


def wait_for(condition, timeout: float, what: str, every: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture(scope="module")
def browser():
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not Path(path).is_file() and shutil.which(path) is None:
            pytest.fail(f"{path} is missing: apt-get update && apt-get install -y {package}")
    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1400,2000",
                "--force-device-scale-factor=1"):
        options.add_argument(arg)
    options.binary_location = CHROMIUM
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(600)
    yield driver
    driver.quit()


def fetch_picture(url: str) -> np.ndarray:
    with urllib.request.urlopen(url, timeout=30) as response:
        return np.asarray(Image.open(io.BytesIO(response.read())).convert("RGB"))


def paint(driver, canvas, strokes):
    """Drag the mouse along each stroke, given in mask pixels (0-255) of the 256x256 picture."""
    zoom_text = driver.find_element(By.CSS_SELECTOR, "#mask-editor").text
    zoom = next((float(w[:-1]) / 100 for w in zoom_text.split() if w.endswith("%")), 1.0)
    width, height = canvas.size["width"], canvas.size["height"]

    def offset(u, v):  # from the canvas' centre, where the picture is centred
        return round((u - 128) * zoom), round((v - 128) * zoom)

    for (u0, v0), (u1, v1) in strokes:
        x0, y0 = offset(u0, v0)
        x1, y1 = offset(u1, v1)
        assert abs(x0) < width / 2 and abs(y0) < height / 2
        chain = ActionChains(driver).move_to_element_with_offset(canvas, x0, y0).click_and_hold()
        for k in range(1, 9):
            chain = chain.move_to_element_with_offset(canvas, x0 + (x1 - x0) * k // 8, y0 + (y1 - y0) * k // 8)
        chain.release().perform()
        time.sleep(0.3)


def test_paint_generate_and_screenshot(browser, tmp_path):
    with running_app(tmp_path / "app") as url:
        driver = browser
        driver.get(url)
        canvas = wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "#mask-editor canvas"), 600, "the mask editor")[0]
        time.sleep(2)

        # a FaceWorld test mask and its caption
        driver.find_element(By.XPATH, "//button[normalize-space()='Use it']").click()
        caption = driver.find_element(By.CSS_SELECTOR, "#caption textarea")
        wait_for(lambda: caption.get_attribute("value"), 600, "the FaceWorld caption")

        # the hat brush, found by the name the page gives its swatch, and a band of strokes over the head
        editor = driver.find_element(By.ID, "mask-editor")
        editor.find_element(By.CSS_SELECTOR, "button[aria-label='Brush']").click()
        editor.find_element(By.CSS_SELECTOR, "button[aria-label='Color']").click()
        swatch = wait_for(lambda: editor.find_elements(By.CSS_SELECTOR, f"button.color[title='{HAT} hat']"), 60,
                          "a swatch named '14 hat'")
        swatch[0].click()
        ActionChains(driver).send_keys(Keys.ESCAPE).perform()
        canvas = driver.find_elements(By.CSS_SELECTOR, "#mask-editor canvas")[0]
        paint(driver, canvas, [((72, v), (184, v)) for v in range(30, 64, 4)])

        # every method, with the config's sampler (DDIM 50 steps as released)
        driver.find_element(By.ID, "generate-button").click()
        status = driver.find_element(By.ID, "status")
        wait_for(lambda: status.text.startswith(("Done", "Error", "Internal")), 1800, "the generation", every=2)
        assert status.text.startswith("Done"), status.text

        results = driver.find_elements(By.CSS_SELECTOR, "#results img")
        assert len(results) == 4, [r.get_attribute("src") for r in results]
        mask = fetch_picture(driver.find_element(By.CSS_SELECTOR, "#conditions img").get_attribute("src"))  # as read: 32x32
        hat = (mask == PALETTE[HAT]).all(-1)
        assert hat.mean() > 0.02, "the painted hat strokes did not reach the model's condition"
        assert hat[: mask.shape[0] // 3].mean() > hat[mask.shape[0] // 3:].mean(), "the hat is not at the top of the head"

        # the influence maps: one frame per step, browsed with the slider (to a step past the middle)
        frame = driver.find_element(By.CSS_SELECTOR, "#influence-frame img")
        last = frame.get_attribute("src")
        slider = driver.find_element(By.CSS_SELECTOR, "#step-slider input[type=number]")
        chosen = round(0.6 * int(slider.get_attribute("max")))
        slider.send_keys(Keys.CONTROL, "a")
        slider.send_keys(str(chosen), Keys.TAB)
        wait_for(lambda: driver.find_element(By.CSS_SELECTOR, "#influence-frame img").get_attribute("src") != last, 300,
                 f"the frame of step {chosen + 1}")
        assert f"frame_{chosen:03d}" in driver.find_element(By.CSS_SELECTOR, "#influence-frame img").get_attribute("src")

        driver.execute_script("window.scrollTo(0, 0)")
        time.sleep(1)
        for _ in range(2):  # the page reflows to the window's height: measure again after resizing
            height = driver.execute_script("return document.documentElement.scrollHeight")
            driver.set_window_size(1400, min(height + 160, 2600))
            time.sleep(1)
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        assert driver.save_screenshot(str(SCREENSHOT))
