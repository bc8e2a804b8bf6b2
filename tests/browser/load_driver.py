"""Driving a served Entropy Explorer like a team does: ``explorer serve`` on loopback, Chromium
sessions that open pages and move widgets (timed from the key press to the redrawn text), the
server's memory sampled. Used by ``tests/browser/test_load.py`` (short, bounded) and
``bench/bench_server.py`` (the long version).

Every action returns its latency in milliseconds, measured in this process from just before the key
press (or the navigation) to the moment Playwright sees the new text in the page: the round trip,
the server's work and the browser's redraw.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("EXPLORER_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-quic", "--no-first-run", "--disable-renderer-backgrounding",
                 "--disable-background-timer-throttling", "--disable-backgrounding-occluded-windows"]
PAGES = ("lens", "temperature", "diversity", "conformal")
#: what each page shows once it has opened with its results (the lens scores its text on open)
READY = {"conformal": (".cp-summary-body", "Digits MLP"), "diversity": (".dv-card-vendi", ""),
         "lens": (".lens-summary", "scored"), "temperature": (".task-status, .bk-panel-models-markup-HTML", "")}
TIMEOUT_MS = 240_000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    log: Path

    def rss_mb(self) -> float:
        """Resident memory of the server and its worker processes, in MB."""
        import psutil

        root = psutil.Process(self.process.pid)
        total = 0
        for proc in [root, *root.children(recursive=True)]:
            try:
                total += proc.memory_info().rss
            except psutil.NoSuchProcess:
                pass
        return total / 2**20

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@contextmanager
def explorer_server(*options: str, log: Path, data_dir: Path | None = None, wait_s: float = 300):
    """``explorer serve`` (any of its options) on a free loopback port; yields a :class:`Server`."""
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": str(ROOT)}
    if data_dir is not None:
        options = (*options, "--data-dir", str(data_dir))
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        process = subprocess.Popen([sys.executable, "-m", "explorer.cli", "serve", "--port", str(port),
                                    "--address", "127.0.0.1", *options], cwd=ROOT, env=env, stdout=out,
                                   stderr=subprocess.STDOUT)
    url = f"http://localhost:{port}/entropy_explorer"
    try:
        deadline = time.time() + wait_s
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"explorer serve exited early; see {log}")
            try:
                urllib.request.urlopen(url, timeout=10).read()
                break
            except OSError:
                if time.time() > deadline:
                    raise RuntimeError(f"explorer serve did not answer within {wait_s} s; see {log}") from None
                time.sleep(0.5)
        yield Server(url, process, log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class Timings:
    """Latencies (ms) per (page, action)."""

    samples: dict[tuple[str, str], list[float]] = field(default_factory=dict)

    def add(self, page: str, action: str, ms: float) -> None:
        self.samples.setdefault((page, action), []).append(ms)

    def all(self, action: str) -> list[float]:
        return [v for (_, a), values in self.samples.items() if a == action for v in values]

    def table(self) -> list[dict]:
        return [{"page": page, "action": action, "n": len(v), "p50_ms": percentile(v, 0.5),
                 "p95_ms": percentile(v, 0.95), "max_ms": max(v)} for (page, action), v in sorted(self.samples.items())]


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(round(share * (len(ordered) - 1))))]


def summary_line(values: list[float]) -> str:
    return (f"n={len(values)} p50 {percentile(values, 0.5):.0f} ms, p95 {percentile(values, 0.95):.0f} ms, "
            f"max {max(values):.0f} ms") if values else "n=0"


# ------------------------------------------------------------------------------ a session (async Playwright)
async def launch(playwright):
    if not Path(CHROMIUM).exists():
        raise RuntimeError(f"{CHROMIUM} is missing: `bash dev.sh test` installs Debian's chromium.")
    return await playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)


class Session:
    """One browser tab on one page of the app."""

    def __init__(self, browser, url: str, key: str, timings: Timings):
        self.browser, self.url, self.key, self.timings = browser, url, key, timings
        self.context = self.tab = None
        self.step = 0

    async def open(self) -> float:
        """Open the page; milliseconds until it shows its results."""
        self.context = await self.browser.new_context(viewport={"width": 1400, "height": 1400})
        self.tab = await self.context.new_page()
        started = time.perf_counter()
        await self.tab.goto(f"{self.url}?page={self.key}", timeout=TIMEOUT_MS)
        selector, text = READY[self.key]
        if self.key == "temperature":
            await self.tab.get_by_text("Cost:").first.wait_for(timeout=TIMEOUT_MS)
        else:
            await self.tab.locator(selector, has_text=text).first.wait_for(timeout=TIMEOUT_MS)
        ms = (time.perf_counter() - started) * 1e3
        self.timings.add(self.key, "open", ms)
        return ms

    async def close(self) -> None:
        if self.context is not None:
            await self.context.close()
            self.context = self.tab = None

    async def interact(self) -> float:
        """Move the page's main widget one step; milliseconds until the page shows the new value."""
        self.step += 1
        forward = (self.step // 4) % 2 == 0
        ms = await getattr(self, f"_move_{self.key}")(forward)
        self.timings.add(self.key, "interact", ms)
        return ms

    async def _press_and_wait(self, handle, key: str, shown) -> float:
        """Press ``key`` on ``handle``; milliseconds until the text of ``shown`` differs from before."""
        from playwright.async_api import expect

        before = await shown.inner_text()
        started = time.perf_counter()
        await handle.press(key)
        await expect(shown).not_to_have_text(before, timeout=TIMEOUT_MS)
        return (time.perf_counter() - started) * 1e3

    async def _slider_step(self, css: str, shown_css: str, forward: bool) -> float:
        handle = self.tab.locator(f"{css} .noUi-handle").first
        await handle.focus()
        return await self._press_and_wait(handle, "ArrowRight" if forward else "ArrowLeft",
                                          self.tab.locator(shown_css).first)

    async def _move_conformal(self, forward: bool) -> float:
        """alpha by one step: the coverage card's target follows."""
        return await self._slider_step(".cp-alpha", ".cp-card-coverage", forward)

    async def _move_diversity(self, forward: bool) -> float:
        """Diffusion time t by one step: the DSE card names the new t."""
        return await self._slider_step(".dv-t", ".dv-card-dse", forward)

    async def _move_lens(self, forward: bool) -> float:
        """Display temperature by one step: the summary names it."""
        return await self._slider_step(".lens-temperature", ".lens-summary", forward)

    async def _move_temperature(self, forward: bool) -> float:
        """The number of questions: the cost line follows."""
        box = self.tab.locator(".bk-input-group", has=self.tab.locator("label", has_text=re.compile("^Questions"))) \
            .locator("input").first
        value = int(await box.input_value() or 5)
        await box.fill(str(value + 1 if forward else max(value - 1, 1)))
        return await self._press_and_wait(box, "Enter", self.tab.get_by_text(re.compile("generations \\(")).first)


async def sessions_moving(browser, url: str, keys: list[str], moves: int, timings: Timings,
                          pause_s: float = 0.3) -> None:
    """One session per key: open, then ``moves`` widget moves with ``pause_s`` between them, all at once."""
    async def run(key):
        session = Session(browser, url, key, timings)
        try:
            await session.open()
            for _ in range(moves):
                await session.interact()
                await asyncio.sleep(pause_s)
        finally:
            await session.close()
    await asyncio.gather(*(run(key) for key in keys))


def load_average() -> str:
    return "load average " + " ".join(f"{v:.2f}" for v in os.getloadavg())


def mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else float("nan")
