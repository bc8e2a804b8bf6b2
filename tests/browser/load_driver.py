"""Driving a served Entropy Explorer like a team does: ``explorer serve`` on loopback, Chromium
sessions that open pages and move widgets (timed from the key press to the redrawn text), the
server's memory sampled. Used by ``tests/browser/test_load.py`` (short, bounded) and
``bench/bench_server.py`` (the long version).

Every action returns its latency in milliseconds, measured in this process from just before the key
press (or the navigation) to the moment Playwright sees the new text in the page: the round trip,
the server's work and the browser's redraw. A widget move also records the server's share as
"<action> (server)": from the browser sending the change on the websocket to the last message the
server sent back before the page showed the new text (Chromium's own timestamps, DevTools protocol).
On a machine that runs the browsers too, the rest is the browsers' rendering.
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
PAGES = ("lens", "temperature", "diversity", "conformal", "training")
#: what each page shows once it has opened with its results (the lens scores its text on open; the
#: training page measures its bundled runs and states the claims)
READY = {"conformal": (".cp-summary-body", "Digits MLP"), "diversity": (".dv-card-vendi", ""),
         "lens": (".lens-summary", "scored"), "temperature": (".ts-cost", "Cost:"),
         "training": (".tr-claim", "")}
TIMEOUT_MS = 240_000
#: every element matching a CSS selector, through Panel's shadow roots (a JavaScript function expression)
DEEP_MATCHES = """(selector) => {
  const found = [], roots = [document];
  while (roots.length) {
    const root = roots.pop();
    found.push(...root.querySelectorAll(selector));
    for (const el of root.querySelectorAll('*')) { if (el.shadowRoot) roots.push(el.shadowRoot); }
  }
  return found;
}"""
#: a Bokeh figure's title, by the figure's name (titles are drawn on a canvas, not in the DOM)
FIGURE_TITLE = """(name) => {
  for (const doc of Bokeh.documents) {
    const fig = doc.get_model_by_name(name);
    if (fig) { return fig.title.text; }
  }
  return null;
}"""


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
    """Latencies (ms) per (page, action); ``events`` keeps each one's start (``time.perf_counter()``)
    and end, to tell which actions overlapped a job in another session."""

    samples: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    events: list[tuple[str, str, float, float]] = field(default_factory=list)

    def add(self, page: str, action: str, ms: float, started: float | None = None) -> None:
        self.samples.setdefault((page, action), []).append(ms)
        if started is not None:
            self.events.append((page, action, started, started + ms / 1e3))

    def within(self, page: str, action: str, start: float, end: float) -> list[float]:
        """Latencies (ms) of the ``(page, action)`` events that began and ended between ``start`` and ``end``."""
        return [(stop - begin) * 1e3 for p, a, begin, stop in self.events
                if p == page and a == action and start <= begin and stop <= end]

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
    """One browser tab on one page of the app. ``action`` names the timings it records ("open" and
    "interact" unless changed, e.g. "interact during job"); ``timeout_ms`` bounds every wait."""

    def __init__(self, browser, url: str, key: str, timings: Timings, timeout_ms: int = TIMEOUT_MS):
        self.browser, self.url, self.key, self.timings, self.timeout_ms = browser, url, key, timings, timeout_ms
        self.context = self.tab = None
        self.step = 0
        self._started, self._sent_before = None, 0   # the move under way (see _begin)
        self.errors: list[str] = []
        self.sent: list[float] = []        # websocket frames: Chromium's monotonic timestamps (s)
        self.received: list[float] = []

    async def open(self, action: str = "open") -> float:
        """Open the page; milliseconds until it shows its results, recorded as ``action``."""
        self.context = await self.browser.new_context(viewport={"width": 1400, "height": 1400})
        self.tab = await self.context.new_page()
        self.tab.on("pageerror", lambda error: self.errors.append(str(error)))
        devtools = await self.context.new_cdp_session(self.tab)
        devtools.on("Network.webSocketFrameSent", lambda event: self.sent.append(event["timestamp"]))
        devtools.on("Network.webSocketFrameReceived", lambda event: self.received.append(event["timestamp"]))
        await devtools.send("Network.enable")
        started = time.perf_counter()
        await self.tab.goto(f"{self.url}?page={self.key}", timeout=self.timeout_ms)
        selector, text = READY[self.key]
        await self.tab.locator(selector, has_text=text).first.wait_for(timeout=self.timeout_ms)
        ms = (time.perf_counter() - started) * 1e3
        self.timings.add(self.key, action, ms, started)
        return ms

    async def close(self) -> None:
        if self.context is not None:
            await self.context.close()
            self.context = self.tab = None

    async def interact(self, action: str = "interact") -> float:
        """Move the page's main widget one step (four steps up, four down, and so on: it never leaves
        its range); milliseconds until the page shows the new value, recorded as ``action``."""
        self.step += 1
        forward = ((self.step - 1) // 4) % 2 == 0
        ms = await getattr(self, f"_move_{self.key}")(forward)
        self.timings.add(self.key, action, ms, self._started)
        await asyncio.sleep(0.05)   # the last frames' events may reach us just after the page's text
        if len(self.sent) > self._sent_before:
            first = self.sent[self._sent_before]
            answers = [t for t in self.received if first <= t <= first + ms / 1e3]
            if answers:
                self.timings.add(self.key, f"{action} (server)", (max(answers) - first) * 1e3, self._started)
        return ms

    def _begin(self) -> float:
        """The move starts now: its clock, and the first websocket frame it may send."""
        self._sent_before = len(self.sent)
        self._started = time.perf_counter()
        return self._started

    async def _press_and_wait(self, handle, key: str, shown, started: float | None = None,
                              before: str | None = None) -> float:
        """Press ``key`` on ``handle``; milliseconds (from ``started``, else the press) until the text of
        ``shown`` differs from ``before`` (else its text before the press)."""
        from playwright.async_api import expect

        before = await shown.inner_text() if before is None else before
        started = started or self._begin()
        await handle.press(key)
        await expect(shown).not_to_have_text(before, timeout=self.timeout_ms)
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

    async def _move_training(self, forward: bool) -> float:
        """The epoch slider by one step (it opens on the last epoch: down first): the spectrum's title
        names the new epoch (patched in place)."""
        handle = self.tab.locator(".tr-epoch .noUi-handle").first
        await handle.focus()
        before = await self.tab.evaluate(FIGURE_TITLE, "tr-spectrum-figure")
        started = self._begin()
        await handle.press("ArrowLeft" if forward else "ArrowRight")
        await self.tab.wait_for_function(f"(before) => ({FIGURE_TITLE})('tr-spectrum-figure') !== before",
                                         arg=before, timeout=self.timeout_ms)
        return (time.perf_counter() - started) * 1e3

    async def _move_temperature(self, forward: bool) -> float:
        """The number of questions, typed and entered (timed from the typing): the cost line follows."""
        box = self.tab.locator(".bk-input-group", has=self.tab.locator("label", has_text=re.compile("^Questions"))) \
            .locator("input").first
        shown = self.tab.locator(".ts-cost").first
        value = int(await box.input_value() or 5)
        before = await shown.inner_text()
        started = self._begin()
        await box.fill(str(value + 1 if forward else max(value - 1, 1)))
        return await self._press_and_wait(box, "Enter", shown, started, before)

    # -------------------------------------------------------------- a long job: the lens generates
    async def start_generation(self, max_new_tokens: int, seed: int) -> float:
        """Lens page: set "Max new tokens" and the seed (a new seed is a new generation, not a cached
        one), press Generate; returns the ``time.perf_counter()`` of the click."""
        for label, value in (("^Max new tokens$", max_new_tokens), ("^Seed$", seed)):
            box = self.tab.locator(".bk-input-group", has=self.tab.locator("label", has_text=re.compile(label))) \
                .locator("input").first
            await box.fill(str(value))
            await box.press("Enter")
        await self.tab.wait_for_timeout(300)   # the values reach the server before the click
        started = time.perf_counter()
        await self.tab.get_by_role("button", name="Generate").click()
        await self.tab.locator(".task-status").first.wait_for(timeout=self.timeout_ms)
        return started

    async def job_running(self) -> bool:
        """True while the page's job runner shows a running job."""
        return await self.tab.locator(".task-status").first.is_visible()

    async def stop_job(self) -> float:
        """Press Stop (a stopped generation keeps its tokens and the page then shows them); returns the
        ``time.perf_counter()`` when no job runs any more."""
        if await self.job_running():
            await self.tab.get_by_role("button", name="Stop").click()
        await self.tab.locator(".task-status").first.wait_for(state="hidden", timeout=self.timeout_ms)
        return time.perf_counter()


async def move_all(sessions: list[Session], moves: int, action: str = "interact", pause_s: float = 0.3) -> None:
    """Every session moves its widget ``moves`` times, ``pause_s`` apart, all sessions at once."""
    async def moving(session):
        for _ in range(moves):
            await session.interact(action)
            await asyncio.sleep(pause_s)
    await asyncio.gather(*(moving(session) for session in sessions))


async def settle(sessions: list[Session], pause_s: float = 1.0) -> None:
    """Wait until no session's page runs a job (a page keeps computing after it shows its first
    results), then ``pause_s`` for the browsers to finish drawing."""
    while any([await session.job_running() for session in sessions]):
        await asyncio.sleep(0.2)
    await asyncio.sleep(pause_s)


async def keep_generating(lens: Session, done: asyncio.Event, windows: list[tuple[float, float]],
                          max_new_tokens: int = 200) -> None:
    """The lens session generates with seed 1, 2, ... until ``done`` is set (a generation may end early at
    its end-of-text token); each generation's (click on Generate, result shown or stopped) in ``windows``."""
    seed = 0
    while not done.is_set():
        seed += 1
        started = await lens.start_generation(max_new_tokens, seed)
        while not done.is_set() and await lens.job_running():
            await asyncio.sleep(0.1)
        windows.append((started, await lens.stop_job()))


def overlapping(timings: Timings, key: str, action: str, windows: list[tuple[float, float]]) -> list[float]:
    """Latencies (ms) of ``key``'s ``action`` events that overlapped one of ``windows`` (perf_counter)."""
    return [(end - begin) * 1e3 for page, name, begin, end in timings.events
            if page == key and name == action and any(begin < stop and end > start for start, stop in windows)]


def job_delays(timings: Timings, keys, windows, quiet: str = "interact", busy: str = "interact (job)",
               suffix: str = "") -> dict[str, tuple[float, float, float, int]]:
    """Per session key: (quiet median, median of its ``busy`` moves overlapping a job, their max, how
    many) in ms; ``suffix`` " (server)" compares the server's share."""
    found = {}
    for key in keys:
        calm = timings.samples.get((key, quiet + suffix), [])
        during = overlapping(timings, key, busy + suffix, windows)
        if calm and during:
            found[key] = (statistics.median(calm), statistics.median(during), max(during), len(during))
    return found


async def wait_warm(server: Server, steps=("conformal", "diversity", "lens"), timeout_s: float = 300) -> dict[str, str]:
    """Wait until the server's log reports every warm-up step (warmed or failed); returns their lines."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and server.process.poll() is None:
        lines = server.log_text().splitlines()
        found = {step: next((line for line in lines if f"warmed {step} in" in line or f"warming {step} failed" in line),
                            None) for step in steps}
        if all(found.values()):
            return found
        await asyncio.sleep(1)
    raise RuntimeError(f"the server did not report its warm-up within {timeout_s} s:\n{server.log_text()[-3000:]}")


def load_average() -> str:
    return "load average " + " ".join(f"{v:.2f}" for v in os.getloadavg())


def mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


async def churn(browser, url: str, keys: list[str], cycles: int, timings: Timings, rss, timeout_ms: int = TIMEOUT_MS,
                action: str = "open (churn)") -> list[float]:
    """``cycles`` session cycles, the pages of ``keys`` in turn: a new tab opens the page, waits for its
    results and closes. Returns ``rss()`` (the server's MB) after each cycle. The server discards a
    closed session 15-32 s later (Bokeh's unused-session lifetime and check interval), so the figures
    include the sessions of the last half minute."""
    after = []
    for cycle in range(cycles):
        session = Session(browser, url, keys[cycle % len(keys)], timings, timeout_ms)
        try:
            await session.open(action)
        finally:
            await session.close()
        after.append(rss())
    return after


async def sample_rss(server: Server, into: list[tuple[float, float]], every_s: float = 0.5) -> None:
    """Append (``time.perf_counter()``, the server's RSS in MB) every ``every_s`` until cancelled."""
    while True:
        into.append((time.perf_counter(), server.rss_mb()))
        await asyncio.sleep(every_s)
