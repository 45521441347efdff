"""The pages in a real browser: Debian's Chromium, headless, driven by Selenium through
chromium-driver, against a live server (the Flask app in a thread) with a real worker on Redis
and PostgreSQL. Screenshots go to ``LOOKALIKE_SCREENSHOTS`` when set (docs/screenshots is
refreshed that way), else into the test's temporary folder."""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from flask import Flask
from flask.testing import FlaskClient
from PIL import Image
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import Select, WebDriverWait
from werkzeug.serving import make_server

from tests.conftest import SAMPLE_IDS, SHOES, TSHIRTS, Workers
from tests.test_service import photos, wait_job

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
WINDOW = (1280, 1200)  # about 1280 x 1060 of page
T = TypeVar("T")


# --- fixtures -----------------------------------------------------------------------------


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    """Headless Chromium with a fresh profile and nothing that reaches for the network."""
    if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
        message = "needs Debian's Chromium: apt-get install -y chromium chromium-driver"
        if os.environ.get("CI"):
            pytest.fail(message)  # CI installs them (.ci/run): missing there is a failure
        pytest.skip(message)
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    profile = tempfile.mkdtemp(prefix="chromium-", dir=tmp_path)
    for flag in (
        "--headless",
        "--no-sandbox",  # running as root
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
        "--force-device-scale-factor=1",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


@pytest.fixture
def live_server(app: Flask) -> Iterator[str]:
    """The app on a free port of 127.0.0.1, served from a thread of this process."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(timeout=10)


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("LOOKALIKE_SCREENSHOTS") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


# --- helpers ------------------------------------------------------------------------------


def styles(root: Path) -> dict[str, dict[str, str]]:
    with (root / "styles.csv").open(newline="") as handle:
        return {row["id"]: row for row in csv.DictReader(handle)}


def seed(client: FlaskClient, fashion_dev: Path, ids: list[str]) -> dict[str, dict[str, str]]:
    """Put photos and their metadata in through the API, and wait for the worker."""
    rows = styles(fashion_dev)
    metas = [{k: v for k, v in rows[pid].items() if k != "id"} for pid in ids]
    response = client.post(
        "/api/products",
        content_type="multipart/form-data",
        data={
            "images": [(io.BytesIO(p.read_bytes()), p.name) for p in photos(fashion_dev, ids)],
            "metadata": [json.dumps(meta) for meta in metas],
        },
    )
    assert response.status_code == 202, response.get_json()
    assert wait_job(client, response.get_json()["job_id"])["state"] == "succeeded"
    return rows


def wait_for(driver: WebDriver, condition: Callable[[WebDriver], T], timeout: float = 60) -> T:
    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.1).until(condition)
    except TimeoutException:
        pytest.fail(f"timed out on {driver.current_url}:\n{driver.page_source[-3000:]}")


def job_rows(driver: WebDriver) -> list[WebElement]:
    """The rows of the jobs table."""
    return driver.find_elements(By.CSS_SELECTOR, "tr.job")


def cards(driver: WebDriver, within: str = "main") -> list[WebElement]:
    return driver.find_elements(By.CSS_SELECTOR, f"{within} li.card")


def visible_photos_loaded(driver: WebDriver) -> bool:
    return bool(
        driver.execute_script(
            "return Array.from(document.images).filter(i => {"
            "  const r = i.getBoundingClientRect();"
            "  return r.width > 0 && r.top < innerHeight && r.bottom > 0;"
            "}).every(i => i.complete && i.naturalWidth > 0);"
        )
    )


def check_photos(driver: WebDriver) -> None:
    """Every photo has alt text and loads lazily; the ones in view have loaded; a catalogue
    photo is shown as a thumbnail (``?w=``), never as the original."""
    for img in driver.find_elements(By.CSS_SELECTOR, "main img:not([hidden])"):
        src = img.get_attribute("src") or ""
        if src:
            assert img.get_attribute("alt"), img.get_attribute("outerHTML")
            assert img.get_attribute("loading") == "lazy", img.get_attribute("outerHTML")
        if "/images/" in src:
            assert "w=" in src, img.get_attribute("outerHTML")
    wait_for(driver, visible_photos_loaded, 20)


def screenshot(driver: WebDriver, folder: Path, name: str) -> Path:
    """A PNG of the window in 256 colours, small enough to keep in the repository."""
    path = folder / f"{name}.png"
    image = Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")
    image.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
    return path


# Records every state an element's data-state goes through, for checking that the page
# showed the job's progress while it ran, not only its end.
WATCH_STATES = """
window.seenStates = [];
const target = document.querySelector(arguments[0]);
new MutationObserver(() => {
  const state = target.dataset.state;
  if (state && window.seenStates[window.seenStates.length - 1] !== state) {
    window.seenStates.push(state);
  }
}).observe(target, {attributes: true, attributeFilter: ["data-state"]});
"""


# WCAG contrast of every visible element that holds text of its own, against the first
# opaque background behind it. Returns [[tag and class, text, ratio]] for those under 4.5.
LOW_CONTRAST = """
const rgb = (c) => c.match(/[\\d.]+/g).map(Number);
const lum = ([r, g, b]) => {
  const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
  return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
};
const background = (el) => {
  for (; el; el = el.parentElement) {
    const c = rgb(getComputedStyle(el).backgroundColor);
    if (c.length < 4 || c[3] > 0.5) return c;
  }
  return [255, 255, 255];
};
const low = [];
for (const el of document.querySelectorAll("body *")) {
  const own = Array.from(el.childNodes).some((n) => n.nodeType === 3 && n.textContent.trim());
  if (!own || !el.getClientRects().length || getComputedStyle(el).visibility === "hidden") continue;
  const [a, b] = [lum(rgb(getComputedStyle(el).color)), lum(background(el))];
  const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
  const what = `${el.tagName}.${el.className}`;
  if (ratio < 4.5) low.push([what, el.textContent.trim().slice(0, 40), ratio]);
}
return low;
"""


# Drops the photo at a URL on an element, as a user dragging a file from their desktop would.
DROP_PHOTO = """
const [selector, url] = arguments;
fetch(url).then((r) => r.blob()).then((blob) => {
  const data = new DataTransfer();
  data.items.add(new File([blob], "dropped.jpg", {type: "image/jpeg"}));
  const zone = document.querySelector(selector);
  zone.dispatchEvent(new DragEvent("dragover", {dataTransfer: data, bubbles: true}));
  zone.dispatchEvent(new DragEvent("drop", {dataTransfer: data, bubbles: true}));
});
"""


def assert_readable(driver: WebDriver) -> None:
    low = driver.execute_script(LOW_CONTRAST)
    assert not low, f"text under 4.5:1 contrast on {driver.current_url}: {low}"


def first_match(driver: WebDriver) -> str | None:
    """The product id of the best search match shown, if any."""
    try:
        links = driver.find_elements(By.CSS_SELECTOR, "#search-results:not([hidden]) li.card a")
        return (links[0].get_attribute("href") or "").rsplit("/", 1)[1] if links else None
    except StaleElementReferenceException:  # the list was being redrawn
        return None


def scores(driver: WebDriver) -> list[float]:
    return [float(e.text) for e in driver.find_elements(By.CSS_SELECTOR, "main .score-value")]


# --- tests --------------------------------------------------------------------------------


def test_a_shopper_browses_walks_by_similarity_and_searches_by_photo(
    browser: WebDriver,
    live_server: str,
    client: FlaskClient,
    workers: Workers,
    fashion_dev: Path,
    shots: Path,
    tmp_path: Path,
) -> None:
    workers.start(1)
    rows = seed(client, fashion_dev, SAMPLE_IDS)
    driver = browser

    # The catalogue: every product, photos named and lazy, filters from the metadata.
    driver.get(live_server + "/")
    assert driver.find_element(By.TAG_NAME, "h1").text == "Catalogue"
    assert len(cards(driver)) == len(SAMPLE_IDS)
    check_photos(driver)
    assert_readable(driver)
    screenshot(driver, shots, "catalogue")
    label = driver.find_element(By.CSS_SELECTOR, "label[for='filter-articleType']")
    assert label.text == "Article type"
    Select(driver.find_element(By.ID, "filter-articleType")).select_by_value("Tshirts")
    driver.find_element(By.CSS_SELECTOR, "form.filters button").click()
    wait_for(driver, lambda d: "articleType=Tshirts" in d.current_url)
    tees = {pid for pid in SAMPLE_IDS if rows[pid]["articleType"] == "Tshirts"}
    names = {c.find_element(By.CLASS_NAME, "card-name").text for c in cards(driver)}
    assert names == {rows[pid]["productDisplayName"] for pid in tees}

    # Find by name: the search box, every word anywhere in the text metadata.
    driver.get(live_server + "/")
    box = driver.find_element(By.ID, "search-q")
    box.send_keys("adidas", Keys.ENTER)
    wait_for(driver, lambda d: "q=adidas" in d.current_url)
    named = {c.find_element(By.CLASS_NAME, "card-name").text for c in cards(driver)}
    wanted = {
        rows[pid]["productDisplayName"]
        for pid in SAMPLE_IDS
        if any("adidas" in str(v).casefold() for k, v in rows[pid].items() if k != "id")
    }
    assert named == wanted and len(wanted) >= 2
    assert driver.find_element(By.ID, "search-q").get_attribute("value") == "adidas"
    assert_readable(driver)

    # The keyboard alone: the first Tab reaches the skip link; the go-to box takes an id.
    driver.find_element(By.TAG_NAME, "body").send_keys(Keys.TAB)
    assert driver.switch_to.active_element.text == "Skip to content"
    box = driver.find_element(By.ID, "go-id")
    box.send_keys(TSHIRTS[0], Keys.ENTER)
    wait_for(driver, lambda d: d.current_url.endswith(f"/products/{TSHIRTS[0]}"))

    # The product: its photo and metadata, then ten lookalikes with scores and bars.
    assert driver.find_element(By.TAG_NAME, "h1").text == rows[TSHIRTS[0]]["productDisplayName"]
    photo = driver.find_element(By.CLASS_NAME, "product-photo")
    assert photo.get_attribute("alt") == rows[TSHIRTS[0]]["productDisplayName"]
    lookalikes = cards(driver)
    assert len(lookalikes) == 10
    found = scores(driver)
    assert found == sorted(found, reverse=True) and all(0 < s <= 1 for s in found)
    bars = driver.find_elements(By.CSS_SELECTOR, "main .bar > rect")
    assert len(bars) == 10 and all(b.size["width"] > 0 for b in bars)
    check_photos(driver)
    assert_readable(driver)
    screenshot(driver, shots, "product")

    # Walk on by similarity: the first lookalike's page, with its own lookalikes.
    first = lookalikes[0].find_element(By.TAG_NAME, "a")
    target = first.get_attribute("href") or ""
    next_id = target.rsplit("/", 1)[1]
    first.click()
    wait_for(driver, lambda d: d.current_url == target)
    assert driver.find_element(By.TAG_NAME, "h1").text == rows[next_id]["productDisplayName"]
    assert len(cards(driver)) == 10

    # The same photo filed again under another id: named apart, never a lookalike.
    twin = f"copy-of-{TSHIRTS[0]}"
    photo_bytes = (fashion_dev / "images" / f"{TSHIRTS[0]}.jpg").read_bytes()
    response = client.post(
        "/api/products",
        content_type="multipart/form-data",
        data={"images": [(io.BytesIO(photo_bytes), f"{twin}.jpg")]},
    )
    assert response.status_code == 202, response.get_json()
    assert wait_job(client, response.get_json()["job_id"])["state"] == "succeeded"

    def shows_twin(d: WebDriver) -> bool:  # the read cache lets a page lag 1 s behind
        d.get(live_server + f"/products/{TSHIRTS[0]}")
        return bool(d.find_elements(By.ID, "same-photo-title"))

    wait_for(driver, shows_twin, 10)
    same = cards(driver, "ol[aria-label='Same photo']")
    assert [c.find_element(By.CLASS_NAME, "card-id").text for c in same] == [f"#{twin}"]
    listed = cards(driver, "ol[aria-label='Lookalikes']")
    assert len(listed) == 10 and twin not in driver.find_element(
        By.CSS_SELECTOR, "ol[aria-label='Lookalikes']"
    ).get_attribute("innerHTML")
    check_photos(driver)
    assert_readable(driver)
    screenshot(driver, shots, "product-same-photo")
    same[0].find_element(By.TAG_NAME, "a").click()
    wait_for(driver, lambda d: d.current_url.endswith(f"/products/{twin}"))
    assert len(cards(driver, "ol[aria-label='Lookalikes']")) == 10
    assert f"/products/{TSHIRTS[0]}" in driver.find_element(
        By.CSS_SELECTOR, "ol[aria-label='Same photo']"
    ).get_attribute("innerHTML")

    # Reading works with JavaScript off.
    driver.execute_cdp_cmd("Emulation.setScriptExecutionDisabled", {"value": True})
    driver.get(live_server + f"/products/{SHOES[0]}")
    assert len(cards(driver)) == 10
    driver.get(live_server + "/?articleType=Tshirts")
    assert len(cards(driver)) == len(tees)
    driver.get(live_server + "/search")  # scripting really is off: the page says what it needs
    assert "needs JavaScript" in driver.find_element(By.TAG_NAME, "main").text
    driver.execute_cdp_cmd("Emulation.setScriptExecutionDisabled", {"value": False})

    # Search by photo: the page posts it, follows the job, then shows ten matches.
    driver.get(live_server + "/search")
    driver.execute_script(WATCH_STATES, "#search-status")
    picker = driver.find_element(By.ID, "search-image")
    picker.send_keys(str(fashion_dev / "images" / f"{SHOES[0]}.jpg"))
    wait_for(driver, lambda d: len(cards(d, "#search-results")) == 10)
    seen = driver.execute_script("return window.seenStates")
    assert seen[0] == "uploading" and {"queued", "running"} & set(seen), seen
    assert seen[-1] == "succeeded", seen
    matches = cards(driver, "#search-results")
    best = matches[0].find_element(By.TAG_NAME, "a")
    assert (best.get_attribute("href") or "").endswith(f"/products/{SHOES[0]}")
    assert scores(driver)[0] == pytest.approx(1.0, abs=1e-3)
    assert "Found 10 matches" in driver.find_element(By.ID, "search-status").text
    assert not driver.find_element(By.ID, "search-error").is_displayed()
    check_photos(driver)
    assert_readable(driver)
    screenshot(driver, shots, "search")

    # Dropping a photo on the zone does the same (a synthetic drop of a real JPEG).
    driver.execute_script(DROP_PHOTO, "#search-form [data-drop-target]", f"/images/{TSHIRTS[0]}")
    wait_for(driver, lambda d: first_match(d) == TSHIRTS[0])
    assert len(cards(driver, "#search-results")) == 10
    preview = driver.find_element(By.CLASS_NAME, "preview")
    assert preview.get_attribute("alt") == "Your photo: dropped.jpg"

    # A text file: the API's error, in the page, and no matches.
    notes = tmp_path / "notes.txt"
    notes.write_text("this is not a photo\n")
    picker.send_keys(str(notes))
    error = wait_for(
        driver,
        lambda d: (
            d.find_element(By.ID, "search-error")
            if d.find_element(By.ID, "search-error").is_displayed()
            else None
        ),
    )
    assert "not an image" in error.text and "Traceback" not in driver.page_source
    assert not driver.find_element(By.ID, "search-results").is_displayed()
    assert error.get_attribute("role") == "alert" and "notes.txt" in error.text
    assert not driver.find_element(By.CLASS_NAME, "preview").is_displayed()
    assert_readable(driver)
    screenshot(driver, shots, "search-error")


def test_a_merchandiser_adds_photos_and_watches_the_job(
    browser: WebDriver,
    live_server: str,
    client: FlaskClient,
    workers: Workers,
    fashion_dev: Path,
    shots: Path,
    tmp_path: Path,
) -> None:
    workers.start(1, LOOKALIKE_MAX_IMAGE_PIXELS="200000")
    driver = browser
    driver.get(live_server + "/")
    assert "The catalogue is empty" in driver.find_element(By.TAG_NAME, "main").text

    # Three photos, one with its own id and name, a whole photo over the worker's pixel limit
    # (passes the check on arrival, fails in the worker) and a text file (refused on arrival).
    good = photos(fashion_dev, [TSHIRTS[1], TSHIRTS[2], SHOES[1]])
    truncated = tmp_path / "oversized.jpg"
    Image.open(fashion_dev / "images" / f"{SHOES[2]}.jpg").resize((480, 640)).save(truncated)
    notes = tmp_path / "notes.txt"
    notes.write_text("not a photo\n")
    files = [*good, truncated, notes]

    driver.get(live_server + "/add")
    driver.find_element(By.ID, "add-images").send_keys("\n".join(str(p) for p in files))
    button = driver.find_element(By.CSS_SELECTOR, "#add-form button[type=submit]")
    wait_for(driver, lambda d: button.is_enabled())
    assert button.text == "Add 5 photos"
    driver.find_element(By.ID, "add-id-0").send_keys("white-tee")
    name = driver.find_element(By.CSS_SELECTOR, f'input[aria-label="Name for {good[0].name}"]')
    name.send_keys("White tee, added in a browser")
    button.click()

    card = wait_for(driver, lambda d: d.find_element(By.CSS_SELECTOR, "#add-jobs .job-card"))
    wait_for(driver, lambda d: card.get_attribute("data-state") == "succeeded", 120)
    progress = card.find_element(By.TAG_NAME, "progress")
    assert progress.get_attribute("value") == progress.get_attribute("max") == "4"
    text = card.text
    assert "notes.txt" in text and "not an image" in text  # refused on arrival
    assert "oversized" in text  # failed in the worker
    links = [a.text for a in card.find_elements(By.CSS_SELECTOR, "p a")][1:]
    assert links == ["white-tee", TSHIRTS[2], SHOES[1]]
    assert_readable(driver)
    screenshot(driver, shots, "add")

    # The jobs page: state, a full bar, a duration and the failed photo.
    driver.get(live_server + "/jobs")
    row = driver.find_element(By.CSS_SELECTOR, "tr.job")
    assert row.get_attribute("data-state") == "succeeded"
    assert row.find_element(By.CLASS_NAME, "duration").text.endswith(" s")
    errors = row.find_element(By.CLASS_NAME, "errors").text
    assert "1 photo failed" in errors and "oversized" in errors
    assert_readable(driver)
    screenshot(driver, shots, "jobs")
    # Filtered by kind and state from the page's own form: the add job only, then none.
    shown = len(driver.find_elements(By.CSS_SELECTOR, "tr.job"))
    Select(driver.find_element(By.ID, "filter-kind")).select_by_value("add_products")
    driver.find_element(By.CSS_SELECTOR, "form.filters button").click()
    wait_for(driver, lambda d: "kind=add_products" in d.current_url)
    kinds = {r.find_element(By.CLASS_NAME, "kind").text for r in job_rows(driver)}
    assert kinds == {"Add products"} and len(job_rows(driver)) <= shown
    Select(driver.find_element(By.ID, "filter-state")).select_by_value("failed")
    driver.find_element(By.CSS_SELECTOR, "form.filters button").click()
    wait_for(driver, lambda d: "state=failed" in d.current_url)
    assert not job_rows(driver) and "No jobs match" in driver.find_element(By.TAG_NAME, "main").text
    assert_readable(driver)

    # The new product has its name, and its lookalikes among the others.
    driver.get(live_server + "/products/white-tee")
    assert driver.find_element(By.TAG_NAME, "h1").text == "White tee, added in a browser"
    hrefs = {
        (a.get_attribute("href") or "").rsplit("/", 1)[1]
        for a in driver.find_elements(By.CSS_SELECTOR, "main li.card a")
    }
    assert hrefs == {TSHIRTS[2], SHOES[1]}
    check_photos(driver)


def test_a_merchandiser_edits_the_catalogue_from_the_pages(
    browser: WebDriver,
    live_server: str,
    client: FlaskClient,
    app: Flask,
    workers: Workers,
    fashion_dev: Path,
    shots: Path,
    tmp_path: Path,
) -> None:
    workers.start(1)
    rows = seed(client, fashion_dev, SAMPLE_IDS)
    others = [pid for pid in rows if pid not in SAMPLE_IDS]
    newcomer = next(pid for pid in others if rows[pid]["articleType"] == "Tshirts")
    shoe = next(pid for pid in others if rows[pid]["masterCategory"] == "Footwear")
    # From here on the API wants its token: the pages must ask for it and send it.
    app.config["LOOKALIKE"] = app.config["LOOKALIKE"].model_copy(update={"api_token": "s3cret"})
    driver = browser

    # /add: the catalogue's own fields, with its values as suggestions, and a CSV beside.
    driver.get(live_server + "/add")
    labels = [e.text for e in driver.find_elements(By.CSS_SELECTOR, ".shared-fields label")]
    assert labels[:3] == ["Gender", "Master category", "Article type"], labels
    assert "Product display name" not in labels
    article = driver.find_element(By.CSS_SELECTOR, "[data-meta-field='articleType']")
    suggested = driver.find_elements(
        By.CSS_SELECTOR, f"datalist#{article.get_attribute('list')} option"
    )
    assert "Tshirts" in {o.get_attribute("value") for o in suggested}
    sheet = tmp_path / "sheet.csv"
    sheet.write_text(
        f"id,articleType,baseColour,productDisplayName\n{newcomer},Tshirts,Blue,From the sheet\n"
    )
    driver.find_element(By.ID, "api-token").send_keys("s3cret")
    driver.find_element(By.ID, "add-images").send_keys(
        str(fashion_dev / "images" / f"{newcomer}.jpg")
    )
    driver.find_element(By.CSS_SELECTOR, "[data-meta-field='gender']").send_keys("Men")
    driver.find_element(By.CSS_SELECTOR, "[data-meta-field='baseColour']").send_keys("Navy Blue")
    driver.find_element(By.ID, "add-csv").send_keys(str(sheet))
    assert_readable(driver)
    screenshot(driver, shots, "add-details")
    driver.find_element(By.CSS_SELECTOR, "#add-form button[type=submit]").click()
    card = wait_for(driver, lambda d: d.find_element(By.CSS_SELECTOR, "#add-jobs .job-card"))
    wait_for(driver, lambda d: card.get_attribute("data-state") == "succeeded", 120)
    added = client.get(f"/api/products/{newcomer}").get_json()
    # The page's fields win over the sheet's; the sheet gives the rest.
    assert (added["gender"], added["baseColour"]) == ("Men", "Navy Blue")
    assert (added["articleType"], added["productDisplayName"]) == ("Tshirts", "From the sheet")
    first_before = client.get(f"/api/products/{newcomer}/similar").get_json()["neighbours"][0]

    # Its page: replace the photo (the token is remembered in this tab); details are kept.
    driver.get(live_server + f"/products/{newcomer}")
    assert driver.find_element(By.ID, "api-token").get_attribute("value") == "s3cret"
    before = driver.find_element(By.CLASS_NAME, "product-photo").get_attribute("src")
    driver.find_element(By.ID, "replace-photo").send_keys(
        str(fashion_dev / "images" / f"{shoe}.jpg")
    )
    driver.find_element(By.CSS_SELECTOR, "#replace-form button").click()

    def replaced(d: WebDriver) -> bool:  # the page reloads when the job is done
        try:
            return d.find_element(By.CLASS_NAME, "product-photo").get_attribute("src") != before
        except StaleElementReferenceException:
            return False

    wait_for(driver, replaced, 120)
    assert driver.find_element(By.TAG_NAME, "h1").text == "From the sheet"
    # Indexed again: the lookalikes of a tee became those of a shoe.
    now = client.get(f"/api/products/{newcomer}/similar").get_json()["neighbours"]
    assert now[0]["masterCategory"] == "Footwear" != first_before["masterCategory"]
    check_photos(driver)

    # Delete: asked first; a wrong token is refused in the page, and nothing is lost.
    token = driver.find_element(By.ID, "api-token")
    token.clear()
    token.send_keys("wrong")
    driver.find_element(By.CSS_SELECTOR, "#delete-form button").click()
    alert = wait_for(driver, lambda d: d.switch_to.alert)
    assert newcomer in alert.text and "Delete" in alert.text
    alert.dismiss()
    assert client.get(f"/api/products/{newcomer}").status_code == 200
    driver.find_element(By.CSS_SELECTOR, "#delete-form button").click()
    wait_for(driver, lambda d: d.switch_to.alert).accept()
    error = wait_for(
        driver,
        lambda d: (
            d.find_element(By.ID, "edit-error")
            if d.find_element(By.ID, "edit-error").is_displayed()
            else None
        ),
    )
    assert "Bearer" in error.text and error.get_attribute("role") == "alert"
    assert client.get(f"/api/products/{newcomer}").status_code == 200
    assert_readable(driver)
    driver.execute_script("document.getElementById('product-edit').scrollIntoView()")
    screenshot(driver, shots, "product-edit")
    token.clear()
    token.send_keys("s3cret")
    driver.find_element(By.CSS_SELECTOR, "#delete-form button").click()
    wait_for(driver, lambda d: d.switch_to.alert).accept()
    wait_for(driver, lambda d: d.current_url.rstrip("/") == live_server, 120)
    assert client.get(f"/api/products/{newcomer}").status_code == 404
    assert newcomer not in driver.page_source
