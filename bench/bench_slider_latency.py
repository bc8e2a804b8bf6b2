"""From a temperature-slider move to the redrawn page, in a real browser, for a 256-token text.

    python bench/bench_slider_latency.py [--moves 40]

Serves the app, scores a text of 256 tokens on the lens page, then presses the slider's arrow key
``--moves`` times. Each move changes the temperature by 0.05; the clock stops when the page shows the
new temperature in the summary, which is updated in the same server round trip as the curves,
the coloured tokens and the rank histogram. Prints p50 and p95 in milliseconds.
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

TEXT = ("Entropy measures how uncertain a language model is about the next token. When the model has seen a "
        "phrase many times, the distribution is sharp and the entropy is low; when many continuations are "
        "plausible, it is high. ") * 8


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--moves", type=int, default=40)
    args = parser.parse_args()
    from playwright.sync_api import expect

    from explorer.models.language_model import load_language_model

    tokenizer = load_language_model().tokenizer
    ids = tokenizer(TEXT, add_special_tokens=False)["input_ids"][:256]
    text = tokenizer.decode(ids)
    with served_app() as url, chromium() as browser:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"{url}?page=lens")
        page.locator(".lens-summary", has_text="scored").wait_for(timeout=180_000)  # default text, on open
        default_tokens = page.locator(".lens-card-tokens-value").inner_text()
        box = page.locator(".bk-input-group", has=page.locator("label", has_text="Text to score")).locator(
            "textarea")
        box.fill(text)
        box.press("Tab")
        page.get_by_role("button", name="Score text").click()
        expect(page.locator(".lens-card-tokens-value")).not_to_have_text(default_tokens, timeout=180_000)
        n_tokens = int(page.locator(".lens-card-tokens-value").inner_text())
        handle = page.locator(".noUi-handle").first
        handle.focus()
        latencies, temperature = [], 1.0
        for move in range(args.moves):
            key = "ArrowRight" if move < args.moves // 2 else "ArrowLeft"
            temperature = round(temperature + (0.05 if key == "ArrowRight" else -0.05), 2)
            started = time.perf_counter()
            handle.press(key)
            page.locator(".lens-summary", has_text=f"T = {temperature:.2f}").wait_for(timeout=30_000)
            latencies.append((time.perf_counter() - started) * 1e3)
    latencies.sort()
    p95 = latencies[min(len(latencies) - 1, int(round(0.95 * (len(latencies) - 1))))]
    print(f"slider move -> redrawn page, {n_tokens} tokens, {len(latencies)} moves: p50 {statistics.median(latencies):.0f} ms, "
          f"p95 {p95:.0f} ms, max {latencies[-1]:.0f} ms")


if __name__ == "__main__":
    main()
