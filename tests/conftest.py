"""Shared fixtures: a seeded torch, the served app, and a headless Chromium driven by Playwright."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOTS = ROOT / "assets" / "screenshots"
CHROMIUM = os.environ.get("EXPLORER_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-quic", "--no-first-run",
]


def pytest_addoption(parser):
    parser.addoption("--slow", action="store_true", default=False,
                     help="also run the extended browser journeys, and fuzz the loaders with twenty times more "
                          "(random, not derandomised) examples")


def pytest_configure(config):
    if config.getoption("--slow"):
        os.environ["EXPLORER_FUZZ_SCALE"] = "20"   # read by tests/test_fuzz_loaders.py


def pytest_collection_modifyitems(config, items):
    """``extended`` tests (long browser journeys) run with ``--slow`` only: the default suite stays
    within CI's time budget and still opens and uses every page."""
    if config.getoption("--slow"):
        return
    skip = pytest.mark.skip(reason="extended browser journey: run with --slow")
    for item in items:
        if "extended" in item.keywords:
            item.add_marker(skip)


#: The served app's data directory (where served pages keep result stores): one per test session, so
#: the tests never write into the user's own; tests that hand the page a store write it here.
#: (Kept in the environment: this file is imported twice, as ``conftest`` and as ``tests.conftest``.)
if "EXPLORER_TESTS_SERVED_DATA_DIR" not in os.environ:
    os.environ["EXPLORER_TESTS_SERVED_DATA_DIR"] = tempfile.mkdtemp(prefix="explorer-served-data-")
SERVED_DATA_DIR = Path(os.environ["EXPLORER_TESTS_SERVED_DATA_DIR"])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def served_app(log_path: Path | None = None):
    """``panel serve apps/entropy_explorer.py`` on a free loopback port (offline); yields the app's URL.
    Used by the tests' ``app_url`` fixture and by the browser benchmarks."""
    port = _free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
           "ENTROPY_EXPLORER_DATA_DIR": str(SERVED_DATA_DIR)}
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "w") if log_path is not None else subprocess.DEVNULL
    server = subprocess.Popen(
        [sys.executable, "-m", "panel", "serve", "apps/entropy_explorer.py", "--port", str(port),
         "--address", "127.0.0.1", f"--allow-websocket-origin=127.0.0.1:{port}"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/entropy_explorer"
    where = f"; see {log_path}" if log_path is not None else ""
    try:
        deadline = time.time() + 300
        while time.time() < deadline:
            if server.poll() is not None:
                raise RuntimeError(f"panel serve exited early{where}")
            try:
                urllib.request.urlopen(url, timeout=5)
                break
            except OSError:
                time.sleep(0.5)
        else:
            raise RuntimeError(f"panel serve did not answer within 300 s{where}")
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
        if log_path is not None:
            log.close()


@contextmanager
def chromium():
    """Debian's Chromium, headless, driven by Playwright (its own browser download is not used)."""
    if not Path(CHROMIUM).exists():
        raise RuntimeError(f"{CHROMIUM} is missing: `bash dev.sh test` installs Debian's chromium.")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="session")
def app_url():
    """The served app for the whole session; its log goes to ``assets/screenshots/server-<pid>.log``."""
    with served_app(SCREENSHOTS / f"server-{os.getpid()}.log") as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    """Chromium for one test module. Not for the session: Playwright's sync API keeps its asyncio loop
    "running" in this thread while it is open, so the job runners of later (non-browser) tests would
    send their callbacks to that loop and never see them run."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `bash dev.sh test` installs Debian's chromium.")
    with chromium() as browser:
        yield browser


@pytest.fixture
def page(browser):
    """A fresh browser tab (1400 x 1000) whose console errors are collected in ``page.errors``."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    tab = context.new_page()
    tab.errors = []
    tab.on("pageerror", lambda err: tab.errors.append(str(err)))
    yield tab
    context.close()


@pytest.fixture
def screenshot():
    """``screenshot(page, name)`` saves ``assets/screenshots/<name>.png`` (full page)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    def take(tab, name: str) -> Path:
        path = SCREENSHOTS / f"{name}.png"
        tab.screenshot(path=str(path), full_page=True)
        return path

    return take


def wait_idle(tab, timeout_ms: int = 60_000) -> None:
    """Wait until the Panel page has rendered and no job's progress bar is visible."""
    tab.wait_for_load_state("networkidle", timeout=timeout_ms)
    tab.wait_for_function(
        "() => !document.querySelector('.pn-loading') ", timeout=timeout_ms
    )
