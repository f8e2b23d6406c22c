"""The web console in headless Chromium (Debian's chromium + chromium-driver) against a
real `fsdi serve`. Every test saves screenshots (FSDI_SCREENSHOTS, default a temp dir)."""

from __future__ import annotations

import os
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bench.imagegen import sample
from bench.server import Server

KEY = "console-admin-key-0123456789"
CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and DRIVER) and not os.environ.get("CI"),
    reason="Debian chromium + chromium-driver not installed (bash .ci/test installs them)")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, model_cache: Path) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("console") / "data",
                 {"FSDI_ADMIN_KEY": KEY, "FSDI_MODEL_CACHE_DIR": str(model_cache)}).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = Path(os.environ.get("FSDI_SCREENSHOTS") or tmp_path_factory.mktemp("screens"))
    d.mkdir(parents=True, exist_ok=True)
    return d


@pytest.fixture
def downloads(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("downloads")


@pytest.fixture
def browser(downloads: Path) -> Iterator[object]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM or "/usr/bin/chromium"
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--disable-background-networking", "--disable-component-update",
              "--disable-sync", "--no-first-run", "--window-size=1280,900"):
        opts.add_argument(a)
    drv = webdriver.Chrome(service=Service(DRIVER or "/usr/bin/chromedriver"), options=opts)
    drv.implicitly_wait(0)
    drv.execute_cdp_cmd("Browser.setDownloadBehavior",
                        {"behavior": "allow", "downloadPath": str(downloads)})
    yield drv
    drv.quit()


def wait(drv, fn, timeout: float = 30):  # type: ignore[no-untyped-def]
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    # The console re-renders lists after each change: an element found a moment ago may be
    # gone, which just means "not yet".
    return WebDriverWait(drv, timeout, poll_frequency=0.1, ignored_exceptions=(
        StaleElementReferenceException, IndexError)).until(lambda d: fn(d))


def css(drv, sel: str):  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.by import By

    return drv.find_elements(By.CSS_SELECTOR, sel)


def sign_in(drv, srv: Server, key: str) -> None:  # type: ignore[no-untyped-def]
    drv.get(srv.url + "/")
    css(drv, "#key")[0].send_keys(key)
    css(drv, "#signin-btn")[0].click()


def admin_classes(drv, srv: Server, group: str) -> None:  # type: ignore[no-untyped-def]
    """Signed in as admin, on the Classes tab, with `group` typed into its group box."""
    sign_in(drv, srv, KEY)
    wait(drv, lambda d: css(d, "#role")[0].text == "admin")
    css(drv, "#tab-classes-btn")[0].click()
    box = css(drv, "#class-group")[0]
    box.clear()
    box.send_keys(group)


def choose(drv, sel: str, value: str) -> None:  # type: ignore[no-untyped-def]
    """Pick `value` in the <select> `sel` once the console has listed it."""
    from selenium.webdriver.support.ui import Select

    wait(drv, lambda d: any(o.get_attribute("value") == value
                            for o in css(d, f"{sel} option")))
    Select(css(drv, sel)[0]).select_by_value(value)


def inspect(drv, group: str, files: list[str]) -> None:  # type: ignore[no-untyped-def]
    """On the Inspect tab, classify `files` in `group`."""
    css(drv, '#tabs button[data-tab="inspect"]')[0].click()
    choose(drv, "#group", group)
    css(drv, "#files")[0].send_keys("\n".join(files))
    css(drv, "#classify-btn")[0].click()


def write_images(d: Path, surf: str, defect: str, seeds: range) -> list[str]:
    """PNG files of `surf` with `defect` drawn on it ("" for a good part)."""
    d.mkdir(parents=True, exist_ok=True)
    paths = []
    for s in seeds:
        p = d / f"{surf}-{defect}-{s}.png"
        p.write_bytes(sample(surf, defect or None, s))
        paths.append(str(p))
    return paths


def test_wrong_key_shows_an_error(browser, server: Server, shots: Path) -> None:  # type: ignore[no-untyped-def]
    browser.get(server.url + "/")
    # nothing but the sign-in form before a key is given
    assert not css(browser, "#tabs")[0].is_displayed()
    assert not any(css(browser, f"#{s}")[0].is_displayed()
                   for s in ("inspect", "classes", "history"))
    sign_in(browser, server, "not-a-real-key-at-all")
    msg = wait(browser, lambda d: css(d, "#signin-error")[0].text)
    assert msg == "That key is not valid (or was revoked)."
    assert css(browser, "#inspect")[0].is_displayed() is False
    browser.save_screenshot(str(shots / "01-wrong-key.png"))


def test_admin_enrols_classifies_and_deletes(browser, server: Server, shots: Path,  # type: ignore[no-untyped-def]
                                             tmp_path: Path) -> None:
    group = f"ui-{uuid.uuid4().hex[:6]}"
    admin_classes(browser, server, group)
    for name, surf, defect, base in (("scratch", "brick", "scratch", 0),
                                     ("stain", "grass", "stain", 100)):
        css(browser, "#new-name")[0].send_keys(name)
        css(browser, "#new-desc")[0].send_keys(f"{defect} on {surf}")
        css(browser, "#create-btn")[0].click()
        card = f'.class-card[data-name="{name}"]'
        wait(browser, lambda d, card=card: css(d, card))
        files = write_images(tmp_path / name, surf, defect, range(base, base + 3))
        css(browser, f"{card} .add-files")[0].send_keys("\n".join(files))
        wait(browser, lambda d, n=name: f'Added 3 image(s) to "{n}"' in
             css(d, "#classes-info")[0].text)
        wait(browser, lambda d, card=card: "3 image(s)" in css(d, card)[0].text)
    wait(browser, lambda d: all(i.get_property("naturalWidth") > 0
                                for i in css(d, ".class-card img")))
    browser.save_screenshot(str(shots / "02-classes.png"))

    css(browser, '#tabs button[data-tab="inspect"]')[0].click()
    choose(browser, "#group", group)
    query = write_images(tmp_path / "q", "brick", "scratch", range(500, 501))
    assert not css(browser, "#evidence")[0].is_selected()  # evidence on demand only
    css(browser, "#evidence")[0].click()
    css(browser, "#files")[0].send_keys(query[0])
    css(browser, "#classify-btn")[0].click()
    wait(browser, lambda d: css(d, ".result .decision"))
    assert css(browser, ".result .decision")[0].text == "scratch"
    bars = [b.get_attribute("data-label") for b in css(browser, ".result .bar")]
    # each bar is as long as its score (the CSP refuses style attributes: set via CSSOM)
    fills = [f.size["width"] for f in css(browser, ".result .bar .fill")]
    tracks = [t.size["width"] for t in css(browser, ".result .bar .track")]
    scores = [int(b.text.split()[-1].rstrip("%")) for b in css(browser, ".result .bar")]
    for f, t, pct in zip(fills, tracks, scores, strict=True):
        assert abs(f / t - pct / 100) < 0.02
    assert bars[0] == "scratch" and set(bars) == {"scratch", "stain"}
    wait(browser, lambda d: len(css(d, ".evidence img")) >= 2 and all(
        i.get_property("naturalWidth") > 0 for i in css(d, ".evidence img")))
    assert "d=" in css(browser, ".evidence figcaption")[0].text
    browser.save_screenshot(str(shots / "03-inspect-desktop.png"))

    browser.set_window_size(390, 844)
    assert browser.execute_script("return document.documentElement.scrollWidth") <= 392
    browser.save_screenshot(str(shots / "04-inspect-phone.png"))
    browser.set_window_size(1280, 900)

    css(browser, "#tab-classes-btn")[0].click()
    card = '.class-card[data-name="stain"]'
    settled = '#class-list[aria-busy="false"]'
    wait(browser, lambda d: css(d, settled) and css(d, card))
    css(browser, f"{card} .show-images")[0].click()
    wait(browser, lambda d: len(css(d, "#class-detail .remove-image")) == 3)
    css(browser, "#class-detail .remove-image")[0].click()
    wait(browser, lambda d: css(d, settled) and "2 image(s)" in css(d, card)[0].text)
    wait(browser, lambda d: len(css(d, "#class-detail .remove-image")) == 2)
    css(browser, f"{card} .delete-class")[0].click()
    wait(browser, lambda d: d.switch_to.alert).accept()
    wait(browser, lambda d: not css(d, card))
    # the group's report is read again: the deleted class is gone from it
    wait(browser, lambda d: "stain" not in css(d, "#report")[0].text
         and "scratch" in css(d, "#report")[0].text)
    browser.save_screenshot(str(shots / "05-after-delete.png"))
    left = httpx.get(f"{server.url}/api/v1/classes", params={"group": group},
                     headers={"Authorization": f"Bearer {KEY}"}).json()["items"]
    assert [c["name"] for c in left] == ["scratch"]


def test_operator_sees_no_admin_pages_and_errors_are_plain(browser, server: Server,  # type: ignore[no-untyped-def]
                                                           shots: Path) -> None:
    r = httpx.post(f"{server.url}/api/v1/keys", json={"role": "operator"},
                   headers={"Authorization": f"Bearer {KEY}"})
    sign_in(browser, server, r.json()["key"])
    wait(browser, lambda d: css(d, "#role")[0].text == "operator")
    assert not css(browser, "#tab-classes-btn")[0].is_displayed()
    assert css(browser, "#tab-history-btn")[0].is_displayed()
    bogus = Path(os.environ.get("TMPDIR", "/tmp")) / f"op-{uuid.uuid4().hex[:6]}.png"
    bogus.write_bytes(b"this is not an image at all")
    css(browser, "#files")[0].send_keys(str(bogus))
    css(browser, "#classify-btn")[0].click()
    msg = wait(browser, lambda d: css(d, "#inspect-error")[0].text)
    # one plain message, said once
    assert "image" in msg and msg.count(".") <= 2 and "{" not in msg
    browser.save_screenshot(str(shots / "06-operator-error.png"))


def test_a_scoped_key_sees_only_its_groups(browser, server: Server,  # type: ignore[no-untyped-def]
                                           shots: Path) -> None:
    admin = {"Authorization": f"Bearer {KEY}"}
    mine, other = (f"scope-{uuid.uuid4().hex[:6]}" for _ in range(2))
    for grp in (mine, other):
        r = httpx.post(f"{server.url}/api/v1/classes", json={"name": "dent", "group": grp},
                       headers=admin)
        assert r.status_code == 201
        r = httpx.post(f"{server.url}/api/v1/classes/{r.json()['id']}/images", headers=admin,
                       files=[("files", ("d.png", sample("gravel", "hole", 5), "image/png"))])
        assert r.status_code == 201
    r = httpx.post(f"{server.url}/api/v1/keys", headers=admin,
                   json={"role": "operator", "groups": [mine]})
    sign_in(browser, server, r.json()["key"])
    wait(browser, lambda d: css(d, "#role")[0].text == "operator")
    choose(browser, "#group", mine)
    picked = [o.get_attribute("value") for o in css(browser, "#group option")]
    history = [o.get_attribute("value") for o in css(browser, "#h-group option")]
    assert picked == [mine] and history == ["", mine], (picked, history)
    browser.save_screenshot(str(shots / "06b-scoped-operator.png"))


def test_the_first_minute(browser, server: Server, shots: Path,  # type: ignore[no-untyped-def]
                          tmp_path: Path) -> None:
    """`fsdi demo`, then the console as a newcomer meets it: sign in with the printed key,
    Inspect, group demo, a defective demo part shows DEFECT first with its heatmap hottest
    on the defect; a good one shows OK."""
    import json
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "app.cli", "demo", "--url", server.url,
                          "--key", KEY, "--out", str(tmp_path / "demo-images")],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    root = tmp_path / "demo-images"
    box = json.loads((root / "defects.json").read_text())["scratch-01.png"]
    sign_in(browser, server, KEY)
    wait(browser, lambda d: css(d, "#role")[0].text == "admin")
    inspect(browser, "demo", [str(root / "scratch-01.png")])
    wait(browser, lambda d: len(css(d, ".result .verdict")) == 1)
    assert css(browser, ".result .verdict")[0].text == "DEFECT"
    assert "scratch" in css(browser, ".result .decision")[0].text
    wait(browser, lambda d: all(c.get_property("width") > 0 for c in css(d, "canvas.heat")))
    # where the overlay is most opaque, in the image's 224-pixel frame
    x, y, w, h = browser.execute_script("""
        const c = document.querySelector('canvas.heat');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let best = -1, at = 0;
        for (let i = 3; i < d.length; i += 4) if (d[i] > best) { best = d[i]; at = (i - 3) / 4; }
        return [at % c.width, Math.floor(at / c.width), c.width, c.height];""")
    x, y = x * 224 / w, y * 224 / h
    assert box[0] - 16 <= x <= box[2] + 16 and box[1] - 16 <= y <= box[3] + 16, (x, y, box)
    browser.save_screenshot(str(shots / "00-first-minute-defect.png"))
    inspect(browser, "demo", [str(root / "ok-01.png")])
    wait(browser, lambda d: "OK" in [v.text for v in css(d, ".result .verdict")])
    browser.save_screenshot(str(shots / "00-first-minute-ok.png"))


def test_good_parts_verdict_first_with_a_heatmap_overlay(browser, server: Server,  # type: ignore[no-untyped-def]
                                                         shots: Path, tmp_path: Path) -> None:
    """An admin enrols a good class from the console; an inspected part shows its OK/NG
    verdict first and its heatmap over the image, with an opacity slider and an on/off
    switch; on a phone the whole image stays visible."""
    group = f"ui-{uuid.uuid4().hex[:6]}"
    admin_classes(browser, server, group)
    css(browser, "#new-name")[0].send_keys("ok-parts")
    css(browser, '#new-kind option[value="good"]')[0].click()
    css(browser, "#create-btn")[0].click()
    card = '.class-card[data-name="ok-parts"]'
    wait(browser, lambda d: css(d, card))
    assert css(browser, card)[0].get_attribute("data-kind") == "good"
    assert css(browser, f"{card} .kind.good")[0].text == "good"
    files = write_images(tmp_path / "good", "brick", "", range(300, 312))
    css(browser, f"{card} .add-files")[0].send_keys("\n".join(files))
    wait(browser, lambda d: "12 image(s)" in css(d, card)[0].text)

    inspect(browser, group, write_images(tmp_path / "q", "brick", "hole", range(900, 901))
            + write_images(tmp_path / "q", "brick", "", range(950, 951)))
    wait(browser, lambda d: len(css(d, ".result .verdict")) == 2)
    verdicts = [v.text for v in css(browser, ".result .verdict")]
    assert verdicts == ["DEFECT", "OK"]
    assert css(browser, "#batch-summary")[0].text == "2 images: 1 OK · 1 defect · 1 unknown type"
    # the rejected result shows no class at any %; the OK one its good class
    first, second = css(browser, ".result")
    assert not first.find_elements("css selector", ".bar")
    assert second.find_elements("css selector", ".bar")
    # the verdict comes before everything else in the result
    first = browser.execute_script(
        "return document.querySelector('.result .head').nextElementSibling.className")
    assert first.startswith("decision")
    assert css(browser, ".result .decision")[0].text == "unknown defect type"
    # the heatmap is painted over the image, hottest where the hole is
    wait(browser, lambda d: all(c.get_property("width") > 0 for c in css(d, "canvas.heat")))
    hot = browser.execute_script("""
        const c = document.querySelectorAll('canvas.heat');
        const alpha = (k) => { const d = c[k].getContext('2d')
            .getImageData(0, 0, c[k].width, c[k].height).data;
            let m = 0; for (let i = 3; i < d.length; i += 4) m = Math.max(m, d[i]); return m; };
        return [alpha(0), alpha(1)];""")
    assert hot[0] > 200 and hot[1] < hot[0]
    browser.save_screenshot(str(shots / "07-good-parts-verdict-heatmap.png"))
    slider = css(browser, "#heat-opacity")[0]
    browser.execute_script("arguments[0].value = 20; arguments[0].dispatchEvent("
                           "new Event('input'))", slider)
    assert css(browser, "canvas.heat")[0].value_of_css_property("opacity") == "0.2"
    css(browser, "#heat-on")[0].click()
    assert not any(c.is_displayed() for c in css(browser, "canvas.heat"))
    css(browser, "#heat-on")[0].click()
    assert all(c.is_displayed() for c in css(browser, "canvas.heat"))

    browser.set_window_size(390, 844)
    assert browser.execute_script("return document.documentElement.scrollWidth") <= 392
    img = css(browser, ".result .frame img")[0]
    # the whole image is shown (no crop): its box keeps the file's aspect ratio
    w, h = img.get_property("clientWidth"), img.get_property("clientHeight")
    assert w > 300 and abs(w - h) <= 2
    browser.save_screenshot(str(shots / "08-good-parts-phone.png"))
    browser.set_window_size(1280, 900)


def test_feedback_promote_history_and_csv(browser, server: Server, shots: Path,  # type: ignore[no-untyped-def]
                                          tmp_path: Path, downloads: Path) -> None:
    """The operator's loop: the enrolment report where the admin is; ✓ in one click (or
    `y`), ✗ with the right class picked, promotion into that class; then the History tab
    filtered by verdict and feedback, and its CSV export with the same filters."""
    import csv
    import io
    import time

    group = f"ui-{uuid.uuid4().hex[:6]}"
    h = {"Authorization": f"Bearer {KEY}"}
    ids = {}
    for name, kind in (("ok", "good"), ("scratch", "defect"), ("hole", "defect")):
        ids[name] = httpx.post(f"{server.url}/api/v1/classes", headers=h,
                               json={"name": name, "group": group, "kind": kind}).json()["id"]
    for name, defect, n in (("scratch", "scratch", 3), ("hole", "hole", 3)):
        httpx.post(f"{server.url}/api/v1/classes/{ids[name]}/images", headers=h, files=[
            ("files", (f"{name}{i}.png", sample("brick", defect, 400 + 10 * n + i), "image/png"))
            for i in range(n)]).raise_for_status()
    admin_classes(browser, server, group)
    css(browser, "#reload-classes")[0].click()
    card = '.class-card[data-name="ok"]'
    wait(browser, lambda d: css(d, card))
    files = write_images(tmp_path / "good", "brick", "", range(600, 610))
    css(browser, f"{card} .add-files")[0].send_keys("\n".join(files))
    # the group's report appears where the admin is, with the good parts' calibration
    wait(browser, lambda d: css(d, "#report .good-parts"))
    report = css(browser, "#report")[0].text
    assert "Good parts: 10 image(s)" in report
    assert "enrol more good parts" in report  # 10 images cannot resolve 2%: said plainly
    # so the group's 6 defect images place the threshold meanwhile, and the report says
    # how many of them it flags
    assert "balanced against the defect images" in report
    assert re.search(r"Flags [0-6] of 6 enrolled defect image\(s\)", report)
    # the defect classes' scores rest on their 6 held-out images
    assert "Scores: calibrated on 6 held-out image(s)" in report
    browser.save_screenshot(str(shots / "09-enrolment-report.png"))

    inspect(browser, group, write_images(tmp_path / "q", "brick", "hole", range(700, 702))
            + write_images(tmp_path / "q", "brick", "", range(720, 721)))
    wait(browser, lambda d: len(css(d, ".result .fb")) == 3)
    results = css(browser, ".result")
    rid = [r.get_attribute("data-result-id") for r in results]
    # ✓ by keyboard on the first, ✗ with a class on the second, then promote it
    browser.find_element("tag name", "body").send_keys("y")
    wait(browser, lambda d: "recorded as correct" in css(d, ".result .fb")[0].text)
    css(browser, ".result")[1].find_element("css selector", ".fb-wrong").click()
    wait(browser, lambda d: css(d, ".result .fb-class"))
    choose(browser, ".result .fb-class", str(ids["scratch"]))
    css(browser, ".result .fb-save")[0].click()
    wait(browser, lambda d: "should be scratch" in css(d, ".result .fb")[1].text)
    css(browser, ".result .fb-promote")[0].click()
    wait(browser, lambda d: "added to its support set" in css(d, ".result .fb")[1].text)
    browser.save_screenshot(str(shots / "10-feedback.png"))
    imgs = httpx.get(f"{server.url}/api/v1/classes/{ids['scratch']}", headers=h).json()
    assert imgs["image_count"] == 4  # 3 enrolled + the promoted one

    css(browser, "#tab-history-btn")[0].click()
    choose(browser, "#h-group", group)
    css(browser, "#h-show")[0].click()
    wait(browser, lambda d: len(css(d, "#history-table tbody tr[data-result-id]")) == 3)
    choose(browser, "#h-feedback", "wrong")
    css(browser, "#h-show")[0].click()
    wait(browser, lambda d: [r.get_attribute("data-result-id") for r in
                             css(d, "#history-table tbody tr[data-result-id]")] == [rid[1]])
    assert "✗" in css(browser, "#history-table tbody tr")[0].text
    choose(browser, "#h-feedback", "")
    choose(browser, "#h-verdict", "ok")
    css(browser, "#h-show")[0].click()
    wait(browser, lambda d: all("OK" in r.text for r in
                                css(d, "#history-table tbody tr[data-result-id]")))
    shown = {r.get_attribute("data-result-id")
             for r in css(browser, "#history-table tbody tr[data-result-id]")}
    wait(browser, lambda d: all(i.get_property("naturalWidth") > 0
                                for i in css(d, "#history-table .h-thumb")))
    css(browser, "#history-table tbody tr[data-result-id]")[0].click()
    wait(browser, lambda d: css(d, "#history-detail canvas.heat")
         and css(d, "#history-detail canvas.heat")[0].get_property("width") > 0)
    assert css(browser, "#history-detail .verdict")[0].text == "OK"
    browser.save_screenshot(str(shots / "11-history.png"))
    css(browser, "#h-csv")[0].click()
    deadline = time.monotonic() + 20
    while not list(downloads.glob("*.csv")):
        assert time.monotonic() < deadline, "the CSV never arrived"
        time.sleep(0.1)
    rows = list(csv.DictReader(io.StringIO(next(downloads.glob("*.csv")).read_text())))
    assert {r["id"] for r in rows} == shown and all(r["verdict"] == "ok" for r in rows)
    browser.set_window_size(390, 844)
    assert browser.execute_script("return document.documentElement.scrollWidth") <= 392
    browser.save_screenshot(str(shots / "12-history-phone.png"))
    browser.set_window_size(1280, 900)


def test_compare_a_result_with_an_enrolled_image(browser, server: Server, shots: Path,  # type: ignore[no-untyped-def]
                                                 tmp_path: Path) -> None:
    """On a result, "Compare with…" an enrolled image: /verify on the group's own
    calibration, the verdict and p(same) shown beside it."""
    group = f"cmp-{uuid.uuid4().hex[:6]}"
    h = {"Authorization": f"Bearer {KEY}"}
    for name, surf, defect, base in (("scratch", "brick", "scratch", 0),
                                     ("stain", "grass", "stain", 100),
                                     ("hole", "gravel", "hole", 200)):
        c = httpx.post(f"{server.url}/api/v1/classes", json={"name": name, "group": group},
                       headers=h).json()
        r = httpx.post(f"{server.url}/api/v1/classes/{c['id']}/images", headers=h, files=[
            ("files", (f"{name}{s}.png", sample(surf, defect, s), "image/png"))
            for s in range(base, base + 4)], timeout=60)
        assert r.status_code == 201, r.text
    sign_in(browser, server, KEY)
    wait(browser, lambda d: css(d, "#role")[0].text == "admin")
    inspect(browser, group, write_images(tmp_path, "brick", "scratch", range(600, 601)))
    wait(browser, lambda d: css(d, ".result .cmp-open"))
    css(browser, ".result .cmp-open")[0].click()
    for name, same in (("scratch", "true"), ("hole", "false")):
        classes = {o.text: o.get_attribute("value") for o in
                   wait(browser, lambda d: [o for o in css(d, ".cmp-class option")
                                            if o.get_attribute("value")])}
        choose(browser, ".cmp-class", classes[name])
        wait(browser, lambda d: len(css(d, ".cmp-pick img")) == 4 and all(
            i.get_property("naturalWidth") > 0 for i in css(d, ".cmp-pick img")))
        css(browser, ".cmp-pick")[0].click()
        verdict = wait(browser, lambda d: css(d, ".cmp-result [data-same]"))[0]
        assert verdict.get_attribute("data-same") == same, (name, verdict.text)
        assert "group calibration" in css(browser, ".cmp-result")[0].text
        browser.save_screenshot(str(shots / f"10-compare-{name}.png"))
