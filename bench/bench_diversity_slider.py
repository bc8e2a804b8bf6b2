"""From a q or t slider move to the redrawn diversity page, in a real browser, on cached spectra.

    python bench/bench_diversity_slider.py [--moves 20] [--source "Digits (8x8 pixels)"]

Serves the app, opens the diversity page on a bundled set and waits for its spectra. Then it presses
the q slider's arrow keys ``--moves`` times, then the t slider's. A move is redrawn in the browser by
the page's client-side callback from the tables of every slider position sent with the results; the
server applies the same move a round trip later. Two clocks start at the keydown in the page:
- redrawn: the first animation frame after the first change to the page's Bokeh document (the
  slider's own value, the template's busy spinner and the URL, rewritten 300 ms after a move, are
  not counted);
- settled: the first frame after the last change (no further change for 400 ms), the server's reply
  included.
At the redrawn frame the bench records the score cards' text and the q marker's data; at settled it
reads them again: a move counts as redrawn at the first frame only where the two agree (printed as
"first frame = settled page in k/n moves"). Prints p50 / p95 / max per slider in milliseconds. The
measure watches the whole document, so it works on any version of the page.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "browser"))

from conftest import chromium, served_app  # noqa: E402
from load_driver import DEEP_MATCHES  # noqa: E402

HOOK = """() => {
  const state = window.__dv = {t0: 0, first: 0, redrawn: 0, last: 0, painted: 0, changes: 0, seen: ''};
  const deep = """ + DEEP_MATCHES + """;
  const marker = () => {
    for (const doc of Bokeh.documents) {
      for (const model of doc.all_models) {
        const data = model.data;
        if (data && Object.keys(data).sort().join() === 'q,vendi') return JSON.stringify([Array.from(data.q), Array.from(data.vendi)]);
      }
    }
    return '';
  };
  state.page = () => deep('.dv-cardrow').map((el) => el.innerText).join('|') + '#' + marker();
  document.addEventListener('keydown', () => { state.t0 = performance.now(); state.first = 0; }, true);
  for (const doc of Bokeh.documents) {
    doc.on_change((event) => {
      // the slider's own value, the template's busy spinner and the address bar (the link follows a
      // move 300 ms later, coalesced) are not the page being redrawn
      if (event.attr === 'css_classes' || event.attr === 'value' || event.attr === 'value_throttled') return;
      if (event.attr === 'search' || event.attr === 'href' || (event.model && event.model.type === 'Location')) return;
      state.changes += 1;
      state.last = performance.now();
      if (!state.first) {
        state.first = state.last;
        requestAnimationFrame(() => { state.redrawn = performance.now(); state.seen = state.page(); });
      }
      requestAnimationFrame(() => { state.painted = performance.now(); });
    });
  }
}"""
QUIET_MS = 400


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(share * (len(ordered) - 1))))]


def move_and_time(page, handle, key: str) -> tuple[float, float, bool]:
    """Press ``key`` on the slider handle: milliseconds from keydown to the first redrawn frame and to
    the settled page, and whether the first frame already showed the settled cards and marker."""
    before = page.evaluate("() => window.__dv.changes")
    handle.press(key)
    page.wait_for_function(f"(n) => window.__dv.changes > n && performance.now() - window.__dv.last > {QUIET_MS} "
                           "&& window.__dv.painted >= window.__dv.last && window.__dv.redrawn >= window.__dv.first",
                           arg=before, timeout=60_000)
    redrawn, settled, same = page.evaluate("() => [window.__dv.redrawn - window.__dv.t0, "
                                           "window.__dv.painted - window.__dv.t0, "
                                           "window.__dv.seen === window.__dv.page()]")
    return redrawn, settled, same


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
            moves = []
            for move in range(args.moves):
                key = "ArrowRight" if (move // 4) % 2 == 0 else "ArrowLeft"
                moves.append(move_and_time(page, handle, key))
            results[name] = moves
        n = page.locator(".dv-card-n .dv-card-value").inner_text()
    for name, moves in results.items():
        redrawn, settled, same = zip(*moves)
        print(f"{name} slider move -> redrawn page, {args.source} (n = {n}), {len(moves)} moves: "
              f"p50 {statistics.median(redrawn):.0f} ms, p95 {percentile(redrawn, 0.95):.0f} ms, "
              f"max {max(redrawn):.0f} ms; first frame = settled page in {sum(same)}/{len(same)} moves; "
              f"settled (server's reply applied) median {statistics.median(settled):.0f} ms, "
              f"95th percentile {percentile(settled, 0.95):.0f} ms")
    sys.stdout.flush()
    time.sleep(0.1)


if __name__ == "__main__":
    main()
