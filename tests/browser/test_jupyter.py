"""An example notebook in JupyterLab, in a real browser: JupyterLab (installed by the set-up, no network
at run time) starts with a token on a free loopback port, Chromium opens examples/04_conformal.ipynb and
runs every cell, then moves the alpha slider of the displayed page and sees its cards and plots change:
the slider's value travels to the kernel over Jupyter comms and the kernel's new figures come back
(a static render could not change)."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from playwright.sync_api import expect

from tests.conftest import SCREENSHOTS, _free_port

pytestmark = [pytest.mark.browser, pytest.mark.extended]   # JupyterLab start-up and a kernel: --slow

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = "04_conformal.ipynb"
RUN_TIMEOUT_MS = 300_000


@pytest.fixture(scope="module")
def jupyterlab(tmp_path_factory):
    """JupyterLab serving a copy of the examples; yields (base URL, token)."""
    pytest.importorskip("jupyterlab", reason="the test extras install jupyterlab")
    home = tmp_path_factory.mktemp("jupyter")
    notebooks = home / "notebooks"
    shutil.copytree(ROOT / "examples", notebooks)
    port, token = _free_port(), secrets.token_hex(16)
    settings = home / "settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)       # no "get notified about Jupyter news?" toast over the notebook
    (settings / "notification.jupyterlab-settings").write_text('{"fetchNews": "false", "checkForUpdates": false}')
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "JUPYTER_CONFIG_DIR": str(home / "config"), "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
           "JUPYTERLAB_SETTINGS_DIR": str(home / "settings"), "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces"),
           "XDG_DATA_HOME": str(home / "data")}
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    log_path = SCREENSHOTS / f"jupyterlab-{os.getpid()}.log"
    log = open(log_path, "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}", "--ServerApp.ip=127.0.0.1",
         "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={notebooks}",
         "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
         "--LabApp.extension_manager=readonly", *(["--allow-root"] if os.geteuid() == 0 else [])],
        cwd=notebooks, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            assert server.poll() is None, f"JupyterLab exited; see {log_path}"
            try:
                urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=5)
                break
            except OSError:
                time.sleep(0.5)
        yield base, token
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def tracebacks(tab) -> list[str]:
    """Tracebacks in the notebook's outputs: a cell's stderr, or a widget message the kernel failed to
    apply (Panel shows those in the output of the component's cell)."""
    outputs = tab.locator(".jp-OutputArea-output", has_text=re.compile("Traceback|Error:"))
    return [outputs.nth(i).inner_text()[-3000:] for i in range(outputs.count())]


def test_an_example_runs_in_jupyterlab_and_its_widgets_are_live(jupyterlab, browser, screenshot):
    base, token = jupyterlab
    context = browser.new_context(viewport={"width": 1500, "height": 1100})
    outside = []

    def local_only(route):              # no network: the notebook must work from the local server alone
        if route.request.url.startswith(base):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()
    context.route("**/*", local_only)
    tab = context.new_page()
    errors = []
    tab.on("pageerror", lambda err: errors.append(str(err)))
    tab.on("console", lambda message: errors.append(message.text) if message.type == "error" and (
        "fragment" in message.text or "apply_json_patch" in message.text) else None)   # dropped comm messages
    tab.goto(f"{base}/lab/tree/{NOTEBOOK}?token={token}")
    tab.locator(".jp-Notebook .jp-Cell").first.wait_for(timeout=120_000)
    expect(tab.locator("#jp-main-statusbar")).to_contain_text(re.compile(r"Python 3.*\| Idle"), timeout=120_000)

    tab.locator(".lm-MenuBar-itemLabel", has_text=re.compile("^Run$")).click()
    tab.locator(".lm-Menu-itemLabel", has_text=re.compile("^Run All Cells$")).click()
    summary = tab.locator(".cp-summary-body")
    expect(summary).to_contain_text("target ≥ 90.0%", timeout=RUN_TIMEOUT_MS)
    expect(tab.locator(".jp-OutputArea-output", has_text="conformal_report.html")).to_be_visible(timeout=RUN_TIMEOUT_MS)
    assert not tracebacks(tab)
    size_card = tab.locator(".cp-card-mean-set-size-value").first
    expect(size_card).not_to_have_text("", timeout=RUN_TIMEOUT_MS)
    size_before = size_card.inner_text()
    summary.scroll_into_view_if_needed()

    handle = tab.locator(".jp-OutputArea-output .noUi-handle").first     # alpha up from 0.100, step 0.005
    handle.focus()
    # The kernel recomputes on the move (live comms, not a static render). It may answer for one step
    # less than the slider shows: in JupyterLab the last of a key's value messages was seen to be lost
    # (README "Known gaps"), so the test asks for a larger alpha, not for the slider's exact value.
    handle.press("ArrowRight")
    expect(handle).not_to_have_attribute("aria-valuetext", re.compile(r"^0\.10*$"), timeout=30_000)
    expect(summary).to_contain_text(re.compile(r"target ≥ 8\d\.\d%"), timeout=RUN_TIMEOUT_MS)   # the kernel's answer
    expect(tab.locator("#jp-main-statusbar")).to_contain_text(re.compile(r"\| Idle"), timeout=RUN_TIMEOUT_MS)
    assert float(size_card.inner_text()) < float(size_before)        # a larger alpha: smaller sets
    tab.wait_for_timeout(1500)    # Bokeh draws on canvases: a moment before the picture
    screenshot(tab, "jupyter_conformal_notebook")
    assert not tracebacks(tab)
    assert not errors, errors
    context.close()
