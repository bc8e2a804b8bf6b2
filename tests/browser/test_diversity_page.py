"""The diversity page in a real browser: bundled sets, the q slider patching the plots in place, kernel,
comparison with a bundled set and with a second uploaded file, hidden states per layer, bad uploads."""

from __future__ import annotations

import re

import numpy as np
import pytest
from playwright.sync_api import expect

from load_driver import DEEP_MATCHES

pytestmark = pytest.mark.browser

JOB_TIMEOUT_MS = 240_000
MODEL_TIMEOUT_MS = 420_000  # first load of the language model on a busy 2-core CPU
TALL = {"width": 1400, "height": 2000}

# Bokeh models live in the page's documents; these read them by name (the page names its sources).
SOURCE_COLUMN = """([name, column]) => {
  for (const doc of Bokeh.documents) {
    const model = doc.get_model_by_name(name);
    if (model) {
      const data = model.data instanceof Map ? Object.fromEntries(model.data) : model.data;
      return Array.from(data[column] ?? []);
    }
  }
  return null;
}"""
MODEL_IDS = """() => Bokeh.documents.flatMap(doc => Array.from(doc._all_models.keys())).sort()"""
# The Vendi card as the browser shows it right after the first change a move makes to the document (the
# page's client-side callback; the server's reply comes a round trip later), read in a microtask.
FIRST_CHANGE_CARD = """() => {
  window.__firstCard = null;
  const deep = """ + DEEP_MATCHES + """;
  let seen = false;
  for (const doc of Bokeh.documents) {
    doc.on_change((event) => {
      if (seen || ['css_classes', 'value', 'value_throttled', 'search', 'href'].includes(event.attr)) return;
      seen = true;
      queueMicrotask(() => { window.__firstCard = deep('.dv-card-vendi').map((el) => el.innerText).join('|'); });
    });
  }
}"""
LEGEND_VISIBLE = """(name) => {
  for (const doc of Bokeh.documents) {
    const fig = doc.get_model_by_name(name);
    if (fig) {
      const legends = fig.center.filter(r => r.type === 'Legend' || r.constructor.__name__ === 'Legend');
      return legends.length > 0 && legends.every(l => l.visible);
    }
  }
  return null;
}"""


def card(page, name: str) -> str:
    return page.locator(f".dv-card-{name} .dv-card-value").inner_text()


def expect_card(page, name: str, text: str) -> None:
    expect(page.locator(f".dv-card-{name} .dv-card-value")).to_have_text(text, timeout=JOB_TIMEOUT_MS)


def wait_for_dataset(page, name: str, timeout: int = JOB_TIMEOUT_MS) -> None:
    page.locator(".dv-summary", has_text=name).wait_for(timeout=timeout)
    page.locator(".dv-card-vendi").wait_for(timeout=timeout)
    page.locator(".dv-vendi-plot").wait_for(timeout=timeout)
    # cards can show warm results before the plots' sources are filled (the job's end fills them)
    page.wait_for_function(f"() => ((c) => c && c.length > 0)(({SOURCE_COLUMN})(['dv-marker', 'q']))", timeout=timeout)


def column(page, source: str, name: str) -> list:
    return page.evaluate(SOURCE_COLUMN, [source, name])


def clusters_csv(path, spread: float, seed: int, n_per: int = 20) -> None:
    gen = np.random.default_rng(seed)
    centres = gen.normal(size=(3, 5)) * 3
    rows = ["e0,e1,e2,e3,e4,group"]
    for i in range(3 * n_per):
        x = centres[i % 3] + gen.normal(size=5) * spread
        rows.append(",".join(f"{v:.5f}" for v in x) + f",g{i % 3}")
    path.write_text("\n".join(rows) + "\n")


def nan_npy(path) -> None:
    array = np.random.default_rng(0).normal(size=(20, 4))
    array[3, 1] = np.nan
    np.save(path, array)


def test_sets_q_kernel_comparison_and_bad_upload(app_url, page, screenshot, tmp_path):
    page.set_viewport_size(TALL)
    page.goto(f"{app_url}?page=diversity")
    wait_for_dataset(page, "paraphrases")
    texts_vendi = float(card(page, "vendi"))
    assert 1 < texts_vendi < 60 and card(page, "n") == "60"
    assert page.locator(".dv-card-dsmi .dv-card-value").inner_text() != "n/a"
    assert column(page, "dv-marker", "q") == [1.0]
    assert len(column(page, "dv-vendi_a", "vendi")) == 57 and column(page, "dv-vendi_b", "vendi") == []
    page.wait_for_timeout(1500)
    screenshot(page, "diversity_texts")

    # q slider with the keyboard: 1 -> 1.5 -> 2; the Vendi card shrinks (non-increasing in q), the marker
    # moves to q = 2 at the card's value, and no Bokeh model is created or replaced (data patched in place).
    models_before = page.evaluate(MODEL_IDS)
    subsample_before = column(page, "dv-subsample", "mean")
    handle = page.locator(".dv-q .noUi-handle").first
    handle.focus()
    page.evaluate(FIRST_CHANGE_CARD)
    handle.press("ArrowRight")
    # the browser redraws the cards itself (as markup, not stripped text), before the server's reply
    page.wait_for_function("() => window.__firstCard !== null", timeout=30_000)
    assert "Vendi (q = 1.5)" in page.evaluate("() => window.__firstCard")
    handle.press("ArrowRight")
    page.locator(".dv-card-vendi", has_text="q = 2").wait_for(timeout=30_000)
    q2_vendi = float(card(page, "vendi"))
    assert q2_vendi < texts_vendi
    assert float(card(page, "rke")) == pytest.approx(q2_vendi, rel=1e-3)
    page.wait_for_function(f"() => ({SOURCE_COLUMN})(['dv-marker', 'q'])[0] === 2", timeout=30_000)
    marker_vendi = column(page, "dv-marker", "vendi")[0]
    assert marker_vendi == pytest.approx(q2_vendi, rel=1e-3)
    subsample_after = column(page, "dv-subsample", "mean")  # the largest subsample is the whole set
    assert subsample_after[-1] == pytest.approx(marker_vendi, rel=1e-9) and subsample_after != subsample_before
    assert page.evaluate(MODEL_IDS) == models_before
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

    # Compare with the bundled text set: B's cards beside A's, B's curves in the plots, legends on.
    page.locator(".dv-compare select").select_option(label="Texts: paraphrases vs topics")
    expect(page.locator(".dv-cards-b")).to_contain_text("paraphrases", timeout=JOB_TIMEOUT_MS)
    expect(page.locator(".dv-cardrow").first).to_contain_text("digits")
    assert page.locator(".dv-card-b-n .dv-card-value").inner_text() == "60"
    page.wait_for_function(f"() => ({SOURCE_COLUMN})(['dv-vendi_b', 'vendi']).length === 57", timeout=30_000)
    assert len(column(page, "dv-marker", "q")) == 2
    assert page.evaluate(LEGEND_VISIBLE, "dv-vendi-figure")
    page.wait_for_timeout(1500)
    screenshot(page, "diversity_compare")

    # A bad upload (a NaN row): a clear message, the page keeps serving its data.
    bad = tmp_path / "bad.npy"
    nan_npy(bad)
    page.locator(".dv-upload input[type=file]").set_input_files(str(bad))
    page.locator(".task-alert", has_text=re.compile(r"NaN or inf .*first: row 3\)")).wait_for(timeout=JOB_TIMEOUT_MS)
    expect_card(page, "n", "1797")
    screenshot(page, "diversity_bad_upload")

    # A good upload works after it.
    good = tmp_path / "good.csv"
    rows = ["e0,e1,e2,group"] + [f"{i % 5},{(i * 7) % 3},{(i * 3) % 4},{'ab'[i % 2]}" for i in range(30)]
    good.write_text("\n".join(rows) + "\n")
    page.locator(".dv-upload input[type=file]").set_input_files(str(good))
    wait_for_dataset(page, "good.csv")
    expect_card(page, "n", "30")
    assert not page.errors, page.errors


@pytest.mark.extended   # CI time budget: --slow
def test_compare_two_uploaded_files(app_url, page, screenshot, tmp_path):
    page.set_viewport_size(TALL)
    page.goto(f"{app_url}?page=diversity")
    wait_for_dataset(page, "paraphrases")
    tight, spread = tmp_path / "tight.csv", tmp_path / "spread.csv"
    clusters_csv(tight, spread=0.2, seed=1)
    clusters_csv(spread, spread=3.0, seed=2)
    page.locator(".dv-upload input[type=file]").set_input_files(str(tight))
    wait_for_dataset(page, "tight.csv")
    page.locator(".dv-upload-b input[type=file]").set_input_files(str(spread))
    expect(page.locator(".dv-cards-b")).to_contain_text("spread.csv", timeout=JOB_TIMEOUT_MS)
    expect(page.locator(".dv-compare select")).to_have_value("Second uploaded file")
    assert card(page, "n") == "60" and page.locator(".dv-card-b-n .dv-card-value").inner_text() == "60"
    vendi_a, vendi_b = float(card(page, "vendi")), float(page.locator(".dv-card-b-vendi .dv-card-value").inner_text())
    assert vendi_b > vendi_a  # the spread-out set is the more diverse
    page.wait_for_function(f"() => ({SOURCE_COLUMN})(['dv-vendi_b', 'vendi']).length === 57", timeout=30_000)
    assert column(page, "dv-vendi_b", "vendi")[10] == pytest.approx(vendi_b, rel=1e-3)  # q = 1 on B's curve
    page.wait_for_timeout(1500)
    screenshot(page, "diversity_compare_uploads")

    # A bad second file: a clear message; A and B stay on the page.
    bad = tmp_path / "bad_b.npy"
    nan_npy(bad)
    page.locator(".dv-upload-b input[type=file]").set_input_files(str(bad))
    page.locator(".task-alert", has_text=re.compile(r"NaN or inf .*first: row 3\)")).wait_for(timeout=JOB_TIMEOUT_MS)
    expect(page.locator(".dv-cards-b")).to_contain_text("spread.csv")
    assert card(page, "n") == "60"
    assert not page.errors, page.errors


@pytest.mark.extended   # CI time budget: --slow
@pytest.mark.model
def test_hidden_states_per_layer(app_url, page, screenshot):
    page.set_viewport_size(TALL)
    page.goto(f"{app_url}?page=diversity")
    wait_for_dataset(page, "paraphrases")
    page.locator(".dv-source select").select_option(label="Hidden states of SmolLM2-135M (texts, per layer)")
    wait_for_dataset(page, "layer 30", timeout=MODEL_TIMEOUT_MS)
    assert card(page, "n") == "60"
    page.locator(".dv-depth-plot").wait_for(timeout=30_000)
    page.wait_for_function(f"() => ({SOURCE_COLUMN})(['dv-depth', 'layer']).length === 31", timeout=30_000)
    depth_vendi = column(page, "dv-depth", "vendi")
    assert depth_vendi[30] == pytest.approx(float(card(page, "vendi")), rel=1e-3)
    assert all(1 <= v <= 60 for v in depth_vendi) and len(set(depth_vendi)) > 5
    page.wait_for_timeout(1500)
    screenshot(page, "diversity_hidden_states")

    # Another layer: its own cards; the depth profile stays the same.
    handle = page.locator(".dv-layer .noUi-handle").first
    handle.focus()
    handle.press("ArrowLeft")
    wait_for_dataset(page, "layer 29")
    expect(page.locator(".dv-card-vendi .dv-card-value")).to_have_text(f"{depth_vendi[29]:.4g}",
                                                                        timeout=JOB_TIMEOUT_MS)
    assert column(page, "dv-depth", "vendi") == pytest.approx(depth_vendi)

    # Centring removes the direction every hidden state shares: the cosine Vendi of layer 29 rises.
    page.locator(".dv-center input").check()
    page.wait_for_function(f"(before) => ({SOURCE_COLUMN})(['dv-depth', 'vendi'])[29] > 2 * before",
                           arg=depth_vendi[29], timeout=JOB_TIMEOUT_MS)
    page.wait_for_timeout(1500)
    screenshot(page, "diversity_hidden_states_centred")
    assert not page.errors, page.errors
