"""From a q or t slider move to the redrawn diversity page, in a real browser, on cached spectra.

    python bench/bench_diversity_slider.py [--moves 20] [--source "Digits (8x8 pixels)"]

Serves the app, opens the diversity page on a bundled set and waits for its spectra. Then it presses
the q slider's arrow keys ``--moves`` times, then the t slider's. The clock starts at the keydown in
the page and stops at the first animation frame after the last change the server's reply makes to
the page's Bokeh document (no further change for 400 ms; the slider's own value, the template's
busy spinner and the URL, rewritten 300 ms after a move, are not counted): that covers the round trip, the server's
update and the browser's redraw. Prints p50 / p95 / max per slider in milliseconds. The same
measure works on any version of the page (it watches the whole document, not named models).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from conftest import chromium, served_app  # noqa: E402

HOOK = """() => {
  const state = window.__dv = {t0: 0, last: 0, painted: 0, changes: 0};
  document.addEventListener('keydown', () => { state.t0 = performance.now(); }, true);
  for (const doc of Bokeh.documents) {
    doc.on_change((event) => {
      // the slider's own value, the template's busy spinner and the address bar (the link follows a
      // move 300 ms later, coalesced) are not the page being redrawn
      if (event.attr === 'css_classes' || event.attr === 'value' || event.attr === 'value_throttled') return;
      if (event.attr === 'search' || event.attr === 'href' || (event.model && event.model.type === 'Location')) return;
      state.changes += 1;
      state.last = performance.now();
      requestAnimationFrame(() => { state.painted = performance.now(); });
    });
  }
}"""
QUIET_MS = 400


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(share * (len(ordered) - 1))))]


def move_and_time(page, handle, key: str) -> float:
    """Press ``key`` on the slider handle; milliseconds from keydown to the frame after the last change."""
    before = page.evaluate("() => window.__dv.changes")
    handle.press(key)
    page.wait_for_function(f"(n) => window.__dv.changes > n && performance.now() - window.__dv.last > {QUIET_MS} "
                           "&& window.__dv.painted >= window.__dv.last", arg=before, timeout=60_000)
    return page.evaluate("() => window.__dv.painted - window.__dv.t0")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--moves", type=int, default=20)
    parser.add_argument("--source", default="Digits (8x8 pixels)")
    args = parser.parse_args()
    with served_app() as url, chromium() as browser:
        page = browser.new_page(viewport={"width": 1400, "height": 2000})
        page.goto(f"{url}?page=diversity")
        page.locator(".dv-card-vendi").wait_for(timeout=300_000)
        page.locator(".dv-source select").select_option(label=args.source)
        page.locator(".dv-summary", has_text=args.source.split()[0].lower()).wait_for(timeout=300_000)
        page.locator(".dv-card-vendi").wait_for(timeout=300_000)
        page.wait_for_timeout(5000)  # the plots' first render settles
        page.evaluate(HOOK)
        results = {}
        for name in ("q", "t"):
            handle = page.locator(f".dv-{name} .noUi-handle").first
            handle.focus()
            latencies = []
            for move in range(args.moves):
                key = "ArrowRight" if (move // 4) % 2 == 0 else "ArrowLeft"
                latencies.append(move_and_time(page, handle, key))
            results[name] = latencies
        n = page.locator(".dv-card-n .dv-card-value").inner_text()
    for name, latencies in results.items():
        print(f"{name} slider move -> redrawn page, {args.source} (n = {n}), {len(latencies)} moves: "
              f"p50 {statistics.median(latencies):.0f} ms, p95 {percentile(latencies, 0.95):.0f} ms, "
              f"max {max(latencies):.0f} ms")
    sys.stdout.flush()
    time.sleep(0.1)


if __name__ == "__main__":
    main()
