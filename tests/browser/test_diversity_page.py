"""The diversity page in a real browser: bundled sets, q slider, kernel, comparison, a bad upload."""

from __future__ import annotations

import numpy as np
import pytest
from playwright.sync_api import expect

pytestmark = pytest.mark.browser

JOB_TIMEOUT_MS = 240_000
TALL = {"width": 1400, "height": 2000}


def card(page, name: str) -> str:
    return page.locator(f".dv-card-{name} .dv-card-value").inner_text()


def expect_card(page, name: str, text: str) -> None:
    expect(page.locator(f".dv-card-{name} .dv-card-value")).to_have_text(text, timeout=JOB_TIMEOUT_MS)


def wait_for_dataset(page, name: str) -> None:
    page.locator(".dv-summary", has_text=name).wait_for(timeout=JOB_TIMEOUT_MS)
    page.locator(".dv-card-vendi").wait_for(timeout=JOB_TIMEOUT_MS)


def test_sets_q_kernel_comparison_and_bad_upload(app_url, page, screenshot, tmp_path):
    page.set_viewport_size(TALL)
    page.goto(f"{app_url}?page=diversity")
    wait_for_dataset(page, "paraphrases")
    texts_vendi = float(card(page, "vendi"))
    assert 1 < texts_vendi < 60 and card(page, "n") == "60"
    assert page.locator(".dv-card-dsmi .dv-card-value").inner_text() != "n/a"
    page.wait_for_timeout(1500)
    screenshot(page, "diversity_texts")

    # q slider with the keyboard: 1 -> 2 -> 3; the Vendi card shrinks (non-increasing in q).
    handle = page.locator(".dv-q .noUi-handle").first
    handle.focus()
    handle.press("ArrowRight")
    handle.press("ArrowRight")
    page.locator(".dv-card-vendi", has_text="q = 2").wait_for(timeout=30_000)
    q2_vendi = float(card(page, "vendi"))
    assert q2_vendi < texts_vendi
    assert float(card(page, "rke")) == pytest.approx(q2_vendi, rel=1e-3)
    page.wait_for_timeout(1000)
    screenshot(page, "diversity_texts_q2")

    # Switch to the digits: n, Vendi and DSMI change.
    page.locator(".dv-source select").select_option(label="Digits (8x8 pixels)")
    wait_for_dataset(page, "digits")
    expect_card(page, "n", "1797")
    digits_vendi = card(page, "vendi")
    # RBF kernel: a new spectrum, a different score.
    page.locator(".dv-kernel select").select_option("rbf")
    expect(page.locator(".dv-card-rke")).to_contain_text("rbf kernel", timeout=JOB_TIMEOUT_MS)
    assert card(page, "vendi") != digits_vendi
    page.wait_for_timeout(1500)
    screenshot(page, "diversity_digits_rbf")

    # Compare with the text set: a table with both columns.
    page.locator(".dv-compare select").select_option(label="Texts: paraphrases vs topics")
    expect(page.locator(".dv-comparison")).to_contain_text("paraphrases", timeout=JOB_TIMEOUT_MS)
    expect(page.locator(".dv-comparison")).to_contain_text("digits", timeout=JOB_TIMEOUT_MS)
    page.wait_for_timeout(1500)
    screenshot(page, "diversity_compare")

    # A bad upload (a NaN row): a clear message, the page keeps serving its data.
    bad = tmp_path / "bad.npy"
    array = np.random.default_rng(0).normal(size=(20, 4))
    array[3, 1] = np.nan
    np.save(bad, array)
    page.locator(".dv-upload input[type=file]").set_input_files(str(bad))
    page.locator(".task-alert", has_text="NaN or inf (first: row 3)").wait_for(timeout=JOB_TIMEOUT_MS)
    screenshot(page, "diversity_bad_upload")

    # A good upload works after it.
    good = tmp_path / "good.csv"
    rows = ["e0,e1,e2,group"] + [f"{i % 5},{(i * 7) % 3},{(i * 3) % 4},{'ab'[i % 2]}" for i in range(30)]
    good.write_text("\n".join(rows) + "\n")
    page.locator(".dv-upload input[type=file]").set_input_files(str(good))
    wait_for_dataset(page, "good.csv")
    expect_card(page, "n", "30")
    assert not page.errors, page.errors
