"""The training-dynamics page in a real browser: the bundled digits runs (the DSE paper's claims), layers,
the measure selector, the epoch slider patching the spectrum in place, uploaded checkpoints and back; the
entropy law on the bundled RL log, the forecast share, an uploaded CSV log and a bad one; uncertainty
against data size. The bundled training, its spectra and the data-size ensembles are cached on disk after
their first use (the first run of this test trains and measures them: several minutes on 2 busy cores)."""

from __future__ import annotations

import numpy as np
import pytest
from playwright.sync_api import expect

pytestmark = pytest.mark.browser

FIRST_USE_MS = 900_000   # training and measuring every checkpoint of one layer on a cold cache, 2 busy cores
JOB_TIMEOUT_MS = 240_000
TALL = {"width": 1400, "height": 1900}

SOURCE_COLUMN = """([name, column]) => {
  for (const doc of Bokeh.documents) {
    const model = doc.get_model_by_name(name);
    if (model) {
      const data = model.data instanceof Map ? Object.fromEntries(model.data) : model.data;
      return Array.from(data[column] ?? [], v => (v && v.length !== undefined && typeof v !== 'string') ? Array.from(v) : v);
    }
  }
  return null;
}"""
TITLE = """(name) => {
  for (const doc of Bokeh.documents) {
    const fig = doc.get_model_by_name(name);
    if (fig) { return fig.title.text; }
  }
  return '';
}"""
MODEL_IDS = """() => Bokeh.documents.flatMap(doc => Array.from(doc._all_models.keys())).sort()"""


def column(page, source: str, name: str) -> list:
    return page.evaluate(SOURCE_COLUMN, [source, name])


def wait_for_column(page, source: str, name: str, condition: str, timeout: int = JOB_TIMEOUT_MS) -> None:
    """Wait until ``condition`` (JS, over the column ``c``) holds."""
    page.wait_for_function(f"() => {{ const c = ({SOURCE_COLUMN})(['{source}', '{name}']); return c && ({condition}); }}",
                           timeout=timeout)


def card_value(page, key: str) -> str:
    return page.locator(f".tr-card-{key}-value").inner_text()


def tab(page, title: str) -> None:
    page.locator(".bk-tab", has_text=title).click()


def checkpoint_files(folder) -> list:
    """Five epochs of 60 probe rows in 3 classes drawing apart, with labels.npy and inputs.npy."""
    gen = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 20)
    centres, noise = gen.normal(size=(3, 8)), gen.normal(size=(60, 8))
    paths = []
    for epoch in range(5):
        path = folder / f"epoch_{epoch}.npy"
        np.save(path, centres[labels] * (0.5 + epoch) + noise)
        paths.append(path)
    np.save(folder / "labels.npy", labels)
    np.save(folder / "inputs.npy", gen.normal(size=(60, 4)))
    return paths + [folder / "labels.npy", folder / "inputs.npy"]


def law_csv(path, a=0.3, b=1.2, n=60) -> None:
    """A log following R = -a exp(H) + b with noise, under other column names than the usual ones."""
    gen = np.random.default_rng(1)
    H = np.linspace(2.0, 0.2, n)
    rows = ["iteration,policy_entropy,acc"] + [f"{10 * i},{h:.5f},{-a * np.exp(h) + b + gen.normal(0, 0.01):.5f}"
                                              for i, h in enumerate(H)]
    path.write_text("\n".join(rows) + "\n")


def test_representations_layers_epochs_and_uploads(app_url, page, screenshot, tmp_path):
    page.set_viewport_size(TALL)
    page.goto(f"{app_url}?page=training")
    page.locator(".tr-claim").first.wait_for(timeout=FIRST_USE_MS)
    wait_for_column(page, "tr-measure-points", "value", "c.length === 122")   # 61 epochs x 2 runs
    verdict = page.locator(".tr-verdict-body").inner_text()
    assert "hidden 2" in verdict and "Claim 1, DSE rises during training" in verdict and "Claim 2" in verdict
    dse = card_value(page, "true-labels-dse")   # e.g. "0.06 → 6.10"
    first, last = (float(v) for v in dse.split(" → "))
    assert column(page, "tr-measure-points", "value")[0] == pytest.approx(first, abs=0.006)
    assert column(page, "tr-measure-points", "value")[60] == pytest.approx(last, abs=0.006)
    assert len(column(page, "tr-plane-points", "x")) == 122 and len(column(page, "tr-spectrum", "xs")) == 2
    page.wait_for_timeout(1500)
    screenshot(page, "training_representations")

    # The epoch slider: the spectrum is patched in place (no Bokeh model created or replaced).
    models = page.evaluate(MODEL_IDS)
    spectrum = column(page, "tr-spectrum", "ys")[0]
    handle = page.locator(".tr-epoch .noUi-handle").first
    handle.focus()
    for _ in range(50):
        handle.press("ArrowLeft")                   # the last epoch (60) -> 10
    page.wait_for_function(f"() => ({TITLE})('tr-spectrum-figure').includes('at epoch 10 ')", timeout=30_000)
    assert column(page, "tr-spectrum", "ys")[0] != pytest.approx(spectrum)
    expect(page.locator(".tr-epoch .bk-slider-value")).to_have_text("10")
    assert page.evaluate(MODEL_IDS) == models
    page.wait_for_timeout(1000)
    screenshot(page, "training_epoch_10")

    # Another layer (measured, or read back from the cache) and another measure.
    page.locator(".tr-layer select").select_option("hidden 1")
    page.locator(".tr-summary", has_text="hidden 1").wait_for(timeout=FIRST_USE_MS)
    wait_for_column(page, "tr-measure-points", "value", "c.length === 122")
    page.locator(".tr-measure select").select_option(label="DSMI with the labels (bits)")
    dsmi = card_value(page, "true-labels-dsmi")
    wait_for_column(page, "tr-measure-points", "value",
                    f"Math.abs(c[60] - {float(dsmi.split(' → ')[1])}) < 0.006", timeout=30_000)
    page.wait_for_timeout(1500)
    screenshot(page, "training_hidden_1_dsmi")

    # Uploaded checkpoints (a folder's files): one run, then back to the bundled runs (kept cached).
    page.locator(".tr-upload input[type=file]").set_input_files([str(p) for p in checkpoint_files(tmp_path)])
    page.locator(".tr-summary", has_text="uploaded representations").wait_for(timeout=JOB_TIMEOUT_MS)
    wait_for_column(page, "tr-plane-points", "x", "c.length === 5")
    assert "claims compare a run on true labels with one on shuffled labels" in page.locator(".tr-verdict-body").inner_text()
    page.wait_for_timeout(1500)
    screenshot(page, "training_uploaded_checkpoints")
    page.locator(".tr-source select").select_option(label="Digits MLP: true vs shuffled labels")
    page.locator(".tr-summary", has_text="true labels").wait_for(timeout=30_000)
    wait_for_column(page, "tr-measure-points", "value", "c.length === 122", timeout=30_000)
    assert not page.errors, page.errors


def test_entropy_law_bundled_uploaded_and_bad_logs(app_url, page, screenshot, tmp_path):
    page.set_viewport_size(TALL)
    page.goto(f"{app_url}?page=training")
    tab(page, "Logged runs: the entropy law")
    page.locator(".tr-card-rl-addition-log-ceiling").wait_for(timeout=JOB_TIMEOUT_MS)
    ceiling = float(card_value(page, "rl-addition-log-ceiling"))
    assert 0.95 < ceiling <= 1.0
    assert "GRPO-style" in page.locator(".tr-log-about-body").inner_text()
    wait_for_column(page, "tr-law-points", "entropy", "c.length === 3000")
    wait_for_column(page, "tr-forecast-error", "error", "c.length === 2100")   # fitted on the first 30 %
    assert column(page, "tr-law-ceiling", "ceiling")[0] == pytest.approx(ceiling, abs=0.0006)
    page.wait_for_timeout(1500)
    screenshot(page, "training_entropy_law")

    # The forecast share: 30 % -> 50 %.
    handle = page.locator(".tr-fraction .noUi-handle").first
    handle.focus()
    for _ in range(4):
        handle.press("ArrowRight")
    wait_for_column(page, "tr-forecast-error", "error", "c.length === 1500", timeout=30_000)
    expect(page.locator(".tr-forecast-body")).to_contain_text("first 1500 steps", timeout=30_000)

    # An uploaded CSV with other column names: mapped by their usual names, fitted.
    log = tmp_path / "my_run.csv"
    law_csv(log)
    page.locator(".tr-log-upload input[type=file]").set_input_files(str(log))
    page.locator(".tr-card-my-run-ceiling").wait_for(timeout=JOB_TIMEOUT_MS)
    assert float(card_value(page, "my-run-ceiling")) == pytest.approx(0.9, abs=0.02)   # b - a of the generating law
    expect(page.locator(".tr-column-entropy select")).to_have_value("policy_entropy")
    wait_for_column(page, "tr-law-points", "entropy", "c.length === 60")
    page.wait_for_timeout(1500)
    screenshot(page, "training_uploaded_log")

    # A second run dropped beside it whose steps go back: one message; the page keeps the fitted log.
    bad = tmp_path / "bad.csv"
    bad.write_text("iteration,policy_entropy,acc\n0,1.5,0.1\n10,1.2,0.3\n5,1.0,0.5\n30,0.8,0.6\n40,0.5,0.7\n")
    page.locator(".tr-log-upload input[type=file]").set_input_files(str(bad))
    page.locator(".task-alert", has_text="the step column must increase").wait_for(timeout=JOB_TIMEOUT_MS)
    assert page.locator(".tr-card-my-run-ceiling").count() == 1
    screenshot(page, "training_bad_log")
    assert not page.errors, page.errors


@pytest.mark.extended   # CI time budget: --slow
def test_uncertainty_against_data_size(app_url, page, screenshot):
    page.set_viewport_size(TALL)
    page.goto(f"{app_url}?page=training")
    tab(page, "Uncertainty vs data size")
    page.locator(".tr-size-body", has_text="Exponent k").wait_for(timeout=FIRST_USE_MS)
    wait_for_column(page, "tr-size-points", "n", "c.length === 6")
    k = float(card_value(page, "k-predictive-entropy"))
    assert 0 < k < 2
    page.wait_for_timeout(1500)
    screenshot(page, "training_data_size")
    assert not page.errors, page.errors
