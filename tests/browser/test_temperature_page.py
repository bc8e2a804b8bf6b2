"""The temperature sensitivity page in a real browser: bad input, a tiny run with progress, the
curves and TSU table, the drill-down and its link to the lens page, a second run compared side by
side with the first, the Parquet export, and reopening a run after a reload."""

from __future__ import annotations

import io
import re
import zipfile

import pandas as pd
import pytest
from playwright.sync_api import expect

from tests.conftest import SCREENSHOTS as SCREENSHOT_DIR
from tests.conftest import SERVED_DATA_DIR
from tests.conftest import wait_idle

pytestmark = [pytest.mark.browser, pytest.mark.model]

RUN_TIMEOUT_MS = 400_000
TALL = {"width": 1400, "height": 3700}


def field(page, label: str, kind: str = "input"):
    group = page.locator(".bk-input-group", has=page.locator("label", has_text=re.compile(f"^{re.escape(label)}")))
    return group.locator(kind).first


def set_text(page, label: str, value: str) -> None:
    box = field(page, label)
    box.fill(value)
    box.press("Enter")


def checkbox(page, css_class: str):
    return page.locator(f".{css_class} input[type=checkbox]").first


def _wait_visible(page, text: str, timeout_ms: int) -> bool:
    try:
        page.get_by_text(text).first.wait_for(timeout=timeout_ms)
        return True
    except Exception:  # noqa: BLE001 - playwright's TimeoutError: the caller retries
        return False


def open_page(page, app_url, db: str) -> None:
    page.set_viewport_size(TALL)
    page.goto(f"{app_url}?page=temperature")
    page.get_by_text("Run settings").wait_for(timeout=120_000)
    wait_idle(page)
    set_text(page, "Results database", db)


def test_tiny_run_drill_down_and_reopen(app_url, page, screenshot, tmp_path):
    db = str(SERVED_DATA_DIR / f"{tmp_path.name}.duckdb")   # served: stores live in the data directory
    open_page(page, app_url, db)

    # bad input: a decreasing temperature list and a question file without a question column
    set_text(page, "Temperatures (increasing)", "1.0, 0.5")
    expect(page.get_by_text("strictly increasing").first).to_be_visible()
    bad = tmp_path / "bad.csv"
    bad.write_text("prompt\nWhy?\n")
    page.locator("input[type=file]").set_input_files(str(bad))
    expect(page.get_by_text("has no column 'question'")).to_be_visible(timeout=30_000)
    screenshot(page, "temperature_bad_input")

    # a tiny run: 2 questions, 2 temperatures, N = 2, 6 tokens, one paraphrase
    set_text(page, "Temperatures (increasing)", "0.3, 1.2")
    for label, value in (("Questions", "2"), ("Samples per question (N)", "2"), ("Max new tokens", "6"),
                         ("Perturbations (n)", "1"), ("Replicates (r)", "1"), ("Bootstrap draws (B)", "3")):
        set_text(page, label, value)
    expect(page.get_by_text(re.compile(r"18 generations")).first).to_be_visible()
    page.get_by_role("button", name="Start run").click()
    expect(page.get_by_role("button", name="Stop")).to_be_visible(timeout=30_000)
    screenshot(page, "temperature_running")
    runs = page.locator(".bk-panel-models-tabulator-DataTabulator, .tabulator").first
    expect(runs).to_contain_text("done", timeout=RUN_TIMEOUT_MS)
    expect(page.get_by_text("TSU with bootstrap intervals (% of questions strictly increasing)")).to_be_visible(
        timeout=60_000)
    expect(page.locator(".ev-tsu")).to_contain_text("TSU(0.3, 1.2)", timeout=60_000)
    expect(page.get_by_text("Evaluation against correctness")).to_be_visible()
    expect(page.locator(".ev-table")).to_contain_text("AUROC")
    assert page.locator(".bk-Canvas, canvas").count() > 0
    screenshot(page, "temperature_results")

    # drill-down: pick the second question, its samples and matrices appear
    field(page, "Question", "select").select_option(index=1)
    expect(page.get_by_text("Perturbed questions (T=0.3").first).to_be_visible(timeout=60_000)
    expect(page.locator("strong", has_text="What is the capital of Japan?")).to_be_visible(timeout=30_000)
    screenshot(page, "temperature_drill_down")

    # a sample's link opens the lens page with the question as prompt and the answer as text
    link = page.locator("a", has_text="open in lens").first
    expect(link).to_be_visible(timeout=30_000)
    with page.context.expect_page() as opened:
        link.click()
    lens = opened.value
    lens.set_viewport_size({"width": 1400, "height": 1400})
    lens.get_by_text("Text to score").first.wait_for(timeout=120_000)
    expect(field(lens, "Prompt", "textarea")).to_have_value("What is the capital of Japan?", timeout=30_000)
    expect(field(lens, "Text to score", "textarea")).not_to_have_value("", timeout=30_000)
    expect(field(lens, "Text to score", "textarea")).not_to_have_value(re.compile("quick brown fox"))
    lens.locator(".lens-summary", has_text=re.compile("scored")).wait_for(timeout=180_000)  # scored on open
    screenshot(lens, "temperature_sample_in_lens")
    lens.close()

    # a second, cheaper run (3 questions, no Inv-Entropy, no P(True), other temperatures)
    set_text(page, "Temperatures (increasing)", "0.5, 1.5")
    set_text(page, "Questions", "3")
    checkbox(page, "ts-with-inv-entropy").uncheck()
    checkbox(page, "ts-with-p-true").uncheck()
    expect(page.get_by_text(re.compile(r"\b12 generations")).first).to_be_visible(timeout=30_000)
    page.get_by_role("button", name="Start run").click()
    expect(page.get_by_text("TSU(0.5, 1.5)").first).to_be_visible(timeout=RUN_TIMEOUT_MS)
    expect(runs.locator(".tabulator-row")).to_have_count(2, timeout=30_000)
    # one thin line per question beside the mean and its band (plot titles are drawn on the canvas:
    # the screenshot shows the redraw)
    field(page, "Measure", "select").select_option(label="Mean token entropy")
    page.wait_for_timeout(2000)
    screenshot(page, "temperature_curves_per_question")

    # compared side by side with the first run
    field(page, "Compare with run", "select").select_option(index=1)
    expect(page.get_by_text("TSU side by side")).to_be_visible(timeout=60_000)
    expect(page.get_by_text("A: TSU(0.5, 1.5)").first).to_be_visible()
    expect(page.get_by_text("B: TSU(0.3, 1.2)").first).to_be_visible()
    page.wait_for_timeout(2000)
    screenshot(page, "temperature_compare")

    # export the open run as Parquet files in a zip
    with page.expect_download(timeout=60_000) as download:
        page.get_by_text("Export run (Parquet, zip)").click()
    archive_path = tmp_path / "export.zip"
    download.value.save_as(archive_path)
    with zipfile.ZipFile(archive_path) as archive:
        names = sorted(archive.namelist())
        assert [n.split("_", 1)[1] for n in names] == ["measures.parquet", "questions.parquet", "samples.parquet"]
        samples = pd.read_parquet(io.BytesIO(archive.read(next(n for n in names if n.endswith("samples.parquet")))))
    assert len(samples) == 12 and set(samples["temperature"]) == {0.5, 1.5}

    # reopen the stored run after a reload: select it in the past runs table
    open_page(page, app_url, db)
    expect(page.get_by_text("No run selected.")).to_be_visible(timeout=30_000)
    runs = page.locator(".tabulator").first
    expect(runs.locator(".tabulator-row")).to_have_count(2, timeout=30_000)
    expect(runs.locator(".tabulator-row").last).to_contain_text("done")
    page.wait_for_timeout(1000)  # the table is re-filled when the database path is set: let it settle
    # A click can land while the table is being re-filled and be lost; a second click on a selected
    # row toggles it off, so a third selects it again. The run must open within those attempts.
    for _attempt in range(3):
        runs.locator(".tabulator-row").last.locator(".tabulator-cell[tabulator-field='status']").click()
        if page.get_by_text("TSU(0.3, 1.2)").first.is_visible() or _wait_visible(page, "TSU(0.3, 1.2)", 20_000):
            break
    expect(page.locator(".ev-tsu")).to_contain_text("TSU(0.3, 1.2)", timeout=60_000)
    screenshot(page, "temperature_reopened")
    assert not page.errors, page.errors


# ---------------------------------------------------------------------- the evaluation panel (stored runs, no sampling)

def _answers(n_used: dict[tuple[int, float], int]) -> pd.DataFrame:
    from explorer.data.store import SAMPLE_COLUMNS

    rows = [dict(kind="answer", temperature=t, question_index=q, variant=0, sample_index=j, prompt=f"Q{q}?",
                 text=f"answer {j % 3}", token_ids=[1, 2], token_log_probs=[-0.5, -0.2], token_entropies=[1.0, 0.5])
            for (q, t), n in n_used.items() for j in range(n)]
    return pd.DataFrame(rows, columns=SAMPLE_COLUMNS)


def evaluation_store(db: str) -> tuple[str, str]:
    """Two stored runs of the same 36 labelled questions: a fixed-N run (N = 10) and an adaptive one
    (4 to 10 answers), with synthetic measures (every answer right at T = 1.5)."""
    from explorer.data.store import ResultsStore
    from tests.test_evaluation_panel import N_QUESTIONS, TEMPS, stored_run, synthetic_measures

    store = ResultsStore(db)
    try:
        fixed = stored_run(store, synthetic_measures(0))
        adaptive = stored_run(store, synthetic_measures(1, shift=0.6))
        settings = dict(temperatures=TEMPS, n_samples=10, questions_path="synthetic", max_questions=N_QUESTIONS,
                        model_name="", seed=0)
        store.update_settings(fixed, **settings, adaptive=False)
        store.update_settings(adaptive, **settings, adaptive=True, adaptive_round=2, adaptive_epsilon=0.1,
                              adaptive_rounds=2, adaptive_min=4)
        store.add_batch(fixed, "answer", _answers({(q, t): 10 for q in range(N_QUESTIONS) for t in TEMPS}))
        store.add_batch(adaptive, "answer", _answers({(q, t): 4 + 2 * ((q + int(2 * t)) % 4)
                                                      for q in range(N_QUESTIONS) for t in TEMPS}))
    finally:
        store.close()
    return fixed, adaptive


def select_run(page, run_id: str, expected_text: str) -> None:
    runs = page.locator(".tabulator").first
    row = runs.locator(".tabulator-row", has_text=run_id)
    expect(row).to_have_count(1, timeout=30_000)
    page.wait_for_timeout(1000)          # the table is re-filled when the database path is set: let it settle
    for _attempt in range(3):            # a click lost during a refill (see the test above)
        row.locator(".tabulator-cell[tabulator-field='status']").click()
        if _wait_visible(page, expected_text, 20_000):
            return
    expect(page.get_by_text(expected_text).first).to_be_visible(timeout=30_000)


def test_evaluation_panel(app_url, page, screenshot, tmp_path):
    db = str(SERVED_DATA_DIR / f"{tmp_path.name}.duckdb")   # served: stores live in the data directory
    fixed, adaptive = evaluation_store(db)
    open_page(page, app_url, db)

    # the fixed-N run: the table with intervals at T = 1 (closest to 1), three curves, reliability with ECE
    select_run(page, fixed, "Evaluation against correctness")
    panel = page.locator(".ev-panel")
    expect(panel.get_by_text(re.compile(r"At T=1: 36 questions with reference answers")).first).to_be_visible(timeout=60_000)
    table = page.locator(".ev-table")
    expect(table).to_contain_text(re.compile(r"0\.\d{3} \[0\.\d{3}, 0\.\d{3}\]"))
    expect(table).to_contain_text("bins")                                   # ECE of MSP / P(True)
    expect(page.locator(".ev-tsu")).to_contain_text("TSU(0.5-1.5)")
    expect(page.locator(".ev-paired")).to_contain_text("two-sided bootstrap p", timeout=60_000)
    expect(panel.locator("canvas").nth(3)).to_be_attached(timeout=30_000)  # ROC, PR, risk-coverage, reliability
    page.wait_for_timeout(1500)
    panel.screenshot(path=str(SCREENSHOT_DIR / "temperature_evaluation_panel.png"))
    screenshot(page, "temperature_evaluation")

    # overlay one more measure: the curves are patched in place (no new plot)
    choice = page.locator(".ev-measures input").first
    choice.click()
    choice.fill("Inv")
    page.keyboard.press("Enter")
    page.keyboard.press("Escape")
    page.wait_for_timeout(1500)

    # every answer right at T = 1.5: said in words, no NaN anywhere
    field(page, "Evaluate at T", "select").select_option(label="1.5")
    notes = page.locator(".ev-undefined")
    expect(notes).to_contain_text("every answer is right (36 questions)", timeout=60_000)
    expect(table).to_contain_text("undefined")
    expect(page.locator(".ev-paired")).to_contain_text("undefined", timeout=60_000)
    assert "NaN" not in panel.inner_text() and "nan" not in table.inner_text()
    page.wait_for_timeout(1000)
    panel.screenshot(path=str(SCREENSHOT_DIR / "temperature_evaluation_undefined.png"))

    # the adaptive run: answers saved, and compared with the fixed-N run of the same questions
    select_run(page, adaptive, "adaptive sampling (rounds of 2")
    expect(page.locator(".ts-run-summary")).to_contain_text("fewer than a fixed N")
    expect(page.get_by_text("AUROC at T=1 and TSU over each run's temperatures, side by side").first).to_be_visible(
        timeout=120_000)
    expect(page.locator(".comparison-answers")).to_contain_text("A: ")
    expect(page.locator(".comparison-answers")).to_contain_text("(fixed N)")
    page.wait_for_timeout(1500)
    screenshot(page, "temperature_adaptive_vs_fixed")
    assert not page.errors, page.errors
