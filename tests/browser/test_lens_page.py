"""The token entropy lens in a real browser: score, re-score at another temperature, hover, generate, bad input."""

from __future__ import annotations

import re

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.model]

JOB_TIMEOUT_MS = 180_000


def summary_text(page) -> str:
    return page.locator(".lens-summary").inner_text()


def wait_for_summary(page, pattern: str) -> None:
    page.locator(".lens-summary", has_text=re.compile(pattern)).wait_for(timeout=JOB_TIMEOUT_MS)


def field(page, label: str):
    """The input of the widget whose label is ``label``."""
    return page.locator(".bk-input-group", has=page.locator("label", has_text=label)).locator("input, textarea").first


def test_lens_page_end_to_end(app_url, page, screenshot):
    page.goto(f"{app_url}?page=lens")
    # The page scores its default text as soon as it opens: no click needed.
    wait_for_summary(page, r"scored · shown at T = 1\.00")
    screenshot(page, "lens_open")
    tokens = page.locator(".lens-tok")
    assert tokens.count() > 10
    screenshot(page, "lens_scored")

    # Move the temperature slider with the keyboard: the summary and the curves are re-scored.
    before = page.locator(".lens-card-mean-entropy-value").inner_text()
    handle = page.locator(".noUi-handle").first
    handle.focus()
    for _ in range(10):
        handle.press("ArrowRight")
    wait_for_summary(page, r"T = 1\.50")
    after = page.locator(".lens-card-mean-entropy-value").inner_text()
    assert after != before and float(after.split()[0]) > float(before.split()[0])
    screenshot(page, "lens_temperature_1.5")

    # Hover a token: its top-10 alternatives appear.
    tokens.nth(3).hover()
    tip = tokens.nth(3).locator(".lens-tip")
    assert tip.is_visible() and "top 10" in tip.inner_text()
    screenshot(page, "lens_hover")

    # Generate from the prompt with the default rule (top-p).
    field(page, "Max new tokens").fill("12")
    field(page, "Max new tokens").press("Enter")
    page.get_by_role("button", name="Generate").click()
    wait_for_summary(page, r"generated \(")
    assert page.locator(".lens-tok").count() <= 12
    screenshot(page, "lens_generated")
    page.locator(".bk-tab", has_text="Decoding rule").click()
    page.wait_for_timeout(1500)  # Bokeh draws on a canvas: give it a moment before the picture
    assert not page.get_by_text("Generate from a prompt to see what").is_visible()
    screenshot(page, "lens_decoding_rule")
    page.locator(".bk-tab", has_text="Attention entropy").click()
    page.wait_for_timeout(1500)
    screenshot(page, "lens_attention")

    # A bad setting: temperature 0 gives a clear message and the page keeps working.
    field(page, "Sampling temperature").fill("0")
    field(page, "Sampling temperature").press("Enter")
    page.get_by_role("button", name="Generate").click()
    alert = page.locator(".task-alert", has_text=re.compile("temperature", re.I))
    alert.wait_for(timeout=JOB_TIMEOUT_MS)
    screenshot(page, "lens_bad_temperature")

    # Empty text to score: a clear message too.
    field(page, "Text to score").fill("   ")
    field(page, "Text to score").press("Tab")
    page.get_by_role("button", name="Score text").click()
    page.locator(".task-alert", has_text="empty").wait_for(timeout=JOB_TIMEOUT_MS)
    screenshot(page, "lens_empty_text")
    assert not page.errors, page.errors
