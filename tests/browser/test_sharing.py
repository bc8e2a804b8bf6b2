"""Sharing in a real browser, against ``explorer serve`` (the command users run): a link reproduces the
view in a fresh browser context, a hostile link opens with defaults and a message, a share link
restores an uploaded file (and a long text), a missing share says so, and a downloaded report opens
from disk with the network blocked and draws its plots."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from playwright.sync_api import expect

from tests.conftest import SCREENSHOTS, _free_port

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
JOB_TIMEOUT_MS = 240_000
MODEL_TIMEOUT_MS = 420_000
TALL = {"width": 1400, "height": 1600}
CONFORMAL_CARDS = ("coverage", "mean-set-size", "threshold-qhat", "rows", "coverage-gap", "c-ip-estimate")
HOSTILE = "<img src=x onerror=window.__pwned=1>"
# Canvases (in the page and in Bokeh's shadow roots) with at least one painted pixel.
DRAWN = """(n) => { let drawn = 0;
  const walk = (root) => root.querySelectorAll('*').forEach(e => {
    if (e.tagName === 'CANVAS' && e.width > 50 && e.height > 50) {
      const data = e.getContext('2d').getImageData(0, 0, e.width, e.height).data;
      for (let i = 3; i < data.length; i += 4 * 97) { if (data[i] > 0) { drawn++; return; } }
    }
    if (e.shadowRoot) { walk(e.shadowRoot); } });
  walk(document)"""


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """``explorer serve`` on a free loopback port with its own data directory (shares, runs)."""
    data = tmp_path_factory.mktemp("data")
    port = _free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "XDG_DATA_HOME": str(data),
           "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    log_path = SCREENSHOTS / f"sharing-server-{os.getpid()}.log"
    log = open(log_path, "w")
    server = subprocess.Popen([sys.executable, "-m", "explorer.cli", "serve", "--port", str(port),
                               "--allow-websocket-origin", f"127.0.0.1:{port}"], cwd=ROOT, env=env, stdout=log,
                              stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/entropy_explorer"
    try:
        deadline = time.time() + 300
        while time.time() < deadline:
            assert server.poll() is None, f"explorer serve exited; see {log_path}"
            try:
                urllib.request.urlopen(f"{url}?page=none", timeout=10)
                break
            except OSError:
                time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def fresh_tab(browser):
    """A new browser context (no cookies, no storage: a colleague's browser) and its tab."""
    context = browser.new_context(viewport=TALL, accept_downloads=True)
    tab = context.new_page()
    tab.errors = []
    tab.on("pageerror", lambda err: tab.errors.append(str(err)))
    return context, tab


def cards(tab, prefix: str, names) -> dict[str, str]:
    return {name: tab.locator(f".{prefix}-card-{name}-value").first.inner_text() for name in names}


def widget(tab, label: str, kind: str = "select"):
    labelled = tab.locator(".bk-input-group", has=tab.locator("label", has_text=re.compile(f"^{re.escape(label)}")))
    return labelled.locator(kind).first


def settled(tab, prefix: str, names, timeout_s: float = 120) -> dict[str, str]:
    """The cards once no job runs and they stayed the same for a second."""
    deadline, last = time.time() + timeout_s, None
    while time.time() < deadline:
        tab.wait_for_timeout(1000)
        busy = tab.locator(".task-status").first.is_visible() if tab.locator(".task-status").count() else False
        now = cards(tab, prefix, names)
        if now == last and not busy:
            return now
        last = now
    raise AssertionError(f"the cards kept changing: {last}")


def wait_for_query(tab, *parts: str) -> None:
    tab.wait_for_function("(parts) => parts.every(p => decodeURIComponent(location.search).includes(p))",
                          arg=list(parts), timeout=60_000)


def test_a_copied_link_shows_the_same_view_in_a_fresh_browser(served, browser, screenshot, tmp_path):
    context, tab = fresh_tab(browser)
    tab.goto(f"{served}?page=conformal")
    tab.locator(".cp-summary-body", has_text="Digits MLP").wait_for(timeout=JOB_TIMEOUT_MS)
    widget(tab, "Score").select_option(label="APS (adaptive sets)")
    tab.locator(".cp-summary-body", has_text="k = ").wait_for(timeout=JOB_TIMEOUT_MS)
    handle = tab.locator(".noUi-handle").first                      # alpha: 0.100 -> 0.150
    handle.focus()
    for _ in range(10):
        handle.press("ArrowRight")
    wait_for_query(tab, "alpha=0.15")
    settled(tab, "cp", CONFORMAL_CARDS)    # the moves' jobs are done: the checkbox is not re-rendered under the click
    tab.locator(".cp-class-conditional input").check()
    wait_for_query(tab, "method=aps", "class_conditional=true", "alpha=0.15")
    shown = settled(tab, "cp", CONFORMAL_CARDS)
    assert "target ≥ 85.0%" in tab.locator(".cp-summary-body").inner_text()
    url = tab.url
    assert "page=conformal" in url and "seed" not in url            # defaults are not written
    screenshot(tab, "sharing_link_set")

    # The report of this view, downloaded from the header, for the offline test below.
    with tab.expect_download(timeout=JOB_TIMEOUT_MS) as download:
        tab.get_by_role("button", name="Download report").click()
    report = tmp_path / "conformal-report.html"
    download.value.save_as(report)
    assert not tab.errors, tab.errors
    context.close()

    colleague, other = fresh_tab(browser)
    other.goto(url)
    other.locator(".cp-summary-body", has_text="target ≥ 85.0%").wait_for(timeout=JOB_TIMEOUT_MS)
    assert settled(other, "cp", CONFORMAL_CARDS) == shown
    expect(widget(other, "Score")).to_have_value(re.compile("aps|APS"))
    expect(other.locator(".cp-class-conditional input")).to_be_checked()
    assert not other.locator(".link-warning").count()
    screenshot(other, "sharing_link_opened")
    assert not other.errors, other.errors
    colleague.close()
    report_opens_offline(browser, report, screenshot)


def report_opens_offline(browser, report: Path, screenshot) -> None:
    """The downloaded report, from disk, with every request but file:// aborted: its plots draw."""
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    blocked = []

    def route(request_route):
        if request_route.request.url.startswith("file://"):
            request_route.continue_()
        else:
            blocked.append(request_route.request.url)
            request_route.abort()
    context.route("**/*", route)
    tab = context.new_page()
    errors = []
    tab.on("pageerror", lambda err: errors.append(str(err)))
    tab.goto(report.as_uri())
    plots = len(re.findall(r'data-root-id="', report.read_text(encoding="utf-8")))
    assert plots >= 7
    tab.wait_for_function(DRAWN + "; return drawn >= n; }", arg=plots, timeout=60_000)
    drawn = tab.evaluate(DRAWN + "; return drawn; }", plots)
    assert drawn >= plots, f"{drawn} drawn canvases for {plots} plots"
    assert "Conformal sets" in tab.locator("h1").inner_text()
    assert tab.locator("table.facts").count() >= 3          # data, settings, versions
    assert not blocked and not errors, (blocked, errors)
    tab.set_viewport_size({"width": 1100, "height": 2400})
    screenshot(tab, "sharing_report_offline")
    context.close()


@pytest.mark.extended   # the parsing is tested in test_links.py: --slow
def test_a_hostile_link_opens_with_defaults_and_says_which_settings(served, browser, screenshot):
    context, tab = fresh_tab(browser)
    query = {"page": "conformal", "alpha": "nan", "seed": "<script>window.__pwned=1</script>", "method": "bogus",
             "calibration": "0." + "5" * 100_000, "x" + HOSTILE: HOSTILE, "class_conditional": "true"}
    tab.goto(f"{served}?{urllib.parse.urlencode(query)}")
    message = tab.locator(".link-warning")
    message.wait_for(timeout=JOB_TIMEOUT_MS)
    text = message.inner_text()
    for name in ("alpha (not a finite number)", "seed (not a whole number)", "method (not one of the choices)",
                 "calibration (too long"):
        assert name in text
    tab.locator(".cp-summary-body", has_text="target ≥ 90.0%").wait_for(timeout=JOB_TIMEOUT_MS)   # default alpha
    expect(tab.locator(".cp-class-conditional input")).to_be_checked()                      # the good one applies
    assert tab.evaluate("() => window.__pwned") is None
    assert tab.locator("img[src=x]").count() == 0
    wait_for_query(tab, "class_conditional=true")
    assert all(bad not in tab.url for bad in ("alpha=", "seed=", "method=", "calibration=", "pwned"))
    screenshot(tab, "sharing_bad_link")
    assert not tab.errors, tab.errors
    tab.goto(f"{served}?page=diversity&share=0123456789abcdef")
    expect(tab.locator(".link-warning")).to_contain_text("does not exist", timeout=JOB_TIMEOUT_MS)
    tab.goto(f"{served}?page=diversity&share=../../etc/passwd")
    expect(tab.locator(".link-warning")).to_contain_text("malformed", timeout=JOB_TIMEOUT_MS)
    context.close()


def test_a_share_link_restores_an_uploaded_file(served, browser, screenshot, tmp_path):
    rng = np.random.default_rng(7)
    upload = tmp_path / "my_embeddings.npy"
    np.save(upload, np.concatenate([rng.normal(size=(25, 6)), rng.normal(size=(25, 6)) + 4]))
    context, tab = fresh_tab(browser)
    tab.goto(f"{served}?page=diversity&kernel=rbf")
    tab.locator(".dv-upload input[type=file]").set_input_files(str(upload))
    tab.locator(".dv-summary", has_text="my_embeddings.npy").wait_for(timeout=JOB_TIMEOUT_MS)
    names = ("vendi", "rke", "renyi", "effective-rank", "dse", "n")
    tab.locator(".dv-card-vendi").wait_for(timeout=JOB_TIMEOUT_MS)
    shown = {k: tab.locator(f".dv-card-{k} .dv-card-value").first.inner_text() for k in names}
    assert shown["n"] == "50" and "source=" not in tab.url           # an upload cannot go in a URL
    tab.get_by_role("button", name="Share").click()
    link = tab.locator(".link-share-url")
    link.wait_for(timeout=JOB_TIMEOUT_MS)
    share_url = link.input_value()
    assert re.search(r"[?&]share=[0-9a-f]{16}$", share_url) and "page=diversity" in share_url
    screenshot(tab, "sharing_share_made")
    context.close()

    colleague, other = fresh_tab(browser)
    other.goto(share_url)
    other.locator(".dv-summary", has_text="my_embeddings.npy").wait_for(timeout=JOB_TIMEOUT_MS)
    expect(other.locator(".dv-card-vendi .dv-card-value")).to_have_text(shown["vendi"], timeout=JOB_TIMEOUT_MS)
    assert {k: other.locator(f".dv-card-{k} .dv-card-value").first.inner_text() for k in names} == shown
    expect(other.locator(".dv-kernel select")).to_have_value("rbf")
    wait_for_query(other, "share=")
    screenshot(other, "sharing_share_opened")
    assert not other.errors, other.errors
    colleague.close()


@pytest.mark.model
@pytest.mark.extended   # scores a 495-token text twice: --slow
def test_a_share_link_carries_a_text_too_long_for_a_url(served, browser):
    text = " ".join(f"Sentence {i} says that entropy measures how unsure the model is." for i in range(36))
    assert len(text) > 2000
    context, tab = fresh_tab(browser)
    tab.goto(f"{served}?page=lens")
    tab.locator(".lens-summary", has_text="scored · shown at T = 1.00").wait_for(timeout=MODEL_TIMEOUT_MS)
    area = tab.locator(".bk-input-group", has=tab.locator("label", has_text="Text to score")).locator("textarea")
    area.fill(text)
    area.press("Tab")
    tab.get_by_role("button", name="Score text").click()
    tab.locator(".lens-card-tokens-value", has_text=re.compile(r"^[3-9]\d\d$")).wait_for(timeout=MODEL_TIMEOUT_MS)
    shown = cards(tab, "lens", ("tokens", "mean-entropy", "log-perplexity", "detection-statistic-d"))
    wait_for_query(tab, "mode=score")
    assert "text=" not in tab.url                      # too long for a link: only a share carries it
    tab.get_by_role("button", name="Share").click()
    tab.locator(".link-share-url").wait_for(timeout=JOB_TIMEOUT_MS)
    share_url = tab.locator(".link-share-url").input_value()
    context.close()
    colleague, other = fresh_tab(browser)
    other.goto(share_url)
    other.locator(".lens-card-tokens-value", has_text=shown["tokens"]).wait_for(timeout=MODEL_TIMEOUT_MS)
    assert cards(other, "lens", shown) == shown
    expect(other.locator(".bk-input-group", has=other.locator("label", has_text="Text to score"))
           .locator("textarea")).to_have_value(text)
    assert not other.errors, other.errors
    colleague.close()
