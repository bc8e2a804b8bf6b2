"""The conformal sets page in a real browser: alpha, methods, examples, uploads, LLM multiple choice."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

pytestmark = pytest.mark.browser

JOB_TIMEOUT_MS = 180_000
TALL = {"width": 1400, "height": 2300}  # the whole page in one screenshot


def card(page, name: str) -> str:
    return page.locator(f".cp-card-{name}-value").inner_text()


def widget(page, label: str, kind: str = "select"):
    """The input of the widget whose label is exactly ``label``."""
    labelled = page.locator(".bk-input-group", has=page.locator("label", has_text=re.compile(f"^{re.escape(label)}")))
    return labelled.locator(kind).first


def summary(page) -> str:
    return page.locator(".cp-summary-body").inner_text()


def wait_for_summary(page, pattern: str) -> None:
    page.locator(".cp-summary-body", has_text=re.compile(pattern)).wait_for(timeout=JOB_TIMEOUT_MS)


def wait_for_change(page, name: str, before: str) -> str:
    expect(page.locator(f".cp-card-{name}-value")).not_to_have_text(before, timeout=30_000)
    return card(page, name)


def open_page(page, app_url):
    page.set_viewport_size(TALL)
    page.goto(f"{app_url}?page=conformal")
    wait_for_summary(page, "Digits MLP")


def test_alpha_methods_examples_and_uploads(app_url, page, screenshot, tmp_path):
    open_page(page, app_url)
    assert card(page, "coverage").endswith("%") and "k = " in summary(page)
    screenshot(page, "conformal_digits_lac")

    # Move alpha with the keyboard (0.100 -> 0.150): the sets shrink, coverage follows.
    size_before, coverage_before = card(page, "mean-set-size"), card(page, "coverage")
    handle = page.locator(".noUi-handle").first
    handle.focus()
    for _ in range(10):
        handle.press("ArrowRight")
    wait_for_summary(page, "target ≥ 85\\.0%")
    size_after = wait_for_change(page, "mean-set-size", size_before)
    assert float(size_after) < float(size_before)
    assert card(page, "coverage") != coverage_before
    screenshot(page, "conformal_alpha_0.15")

    # Browse the rows whose set missed the true label; pick the second one.
    widget(page, "Show").select_option(label="missed (true label not in set)")
    page.locator(".cp-example-body", has_text="missed").wait_for(timeout=30_000)
    rows = page.locator(".cp-examples .tabulator-row")
    second = rows.nth(1).locator(".tabulator-cell").first.inner_text().replace(",", "")
    rows.nth(1).click()
    page.locator(".cp-example-body", has_text=f"Row {second} ").wait_for(timeout=30_000)
    screenshot(page, "conformal_examples_missed")

    # Switch to APS with class-conditional thresholds.
    widget(page, "Score").select_option(label="APS (adaptive sets)")
    page.locator(".cp-class-conditional input[type=checkbox]").check()
    page.locator(".cp-card-threshold-qhat", has_text="per class").wait_for(timeout=30_000)
    screenshot(page, "conformal_aps_class_conditional")

    # A bad upload: a clear message, and the page keeps its data.
    bad = tmp_path / "no_labels.csv"
    bad.write_text("cat,dog\n0.5,0.5\n0.1,0.9\n")
    page.locator("input[type=file]").set_input_files(str(bad))
    page.get_by_role("button", name="Load uploaded file").click()
    page.locator(".task-alert", has_text="has no label column").wait_for(timeout=JOB_TIMEOUT_MS)
    assert "Digits MLP" in summary(page)
    screenshot(page, "conformal_bad_upload")

    # A good upload: logits with too few calibration rows for alpha = 0.15 -> +inf explained.
    good = tmp_path / "three_classes.csv"
    lines = ["a,b,c,label"] + [f"{i % 3},{(i * 7) % 5},{(i * 3) % 4},{['a', 'b', 'c'][i % 3]}" for i in range(10)]
    good.write_text("\n".join(lines) + "\n")
    page.locator("input[type=file]").set_input_files(str(good))
    page.get_by_role("button", name="logits").click()
    page.get_by_role("button", name="Load uploaded file").click()
    wait_for_summary(page, "three_classes.csv")
    assert page.locator(".cp-warning").count() >= 1
    screenshot(page, "conformal_upload")
    assert not page.errors, page.errors


@pytest.mark.extended   # CI time budget: --slow
@pytest.mark.model
def test_llm_multiple_choice(app_url, page, screenshot):
    open_page(page, app_url)
    widget(page, "Data").select_option(label="LLM multiple choice (SmolLM2-135M)")
    wait_for_summary(page, "Multiple choice")
    page.locator(".cp-example-text", has_text="A. ").wait_for(timeout=30_000)
    assert "chance 25%" in summary(page)
    screenshot(page, "conformal_mcq")
    assert not page.errors, page.errors
