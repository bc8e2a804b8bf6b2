"""Self-contained HTML reports: every page's report from Python and from ``explorer report``, offline
(BokehJS inline, no URL to load), escaped, with settings, provenance and versions.

That a report opens from disk in Chromium with the network blocked and draws its plots is tested in
tests/browser/test_sharing.py."""

from __future__ import annotations

import html
import math
import re

import numpy as np
import pandas as pd
import pytest

from explorer.analyses.conformal import ConformalAnalysis
from explorer.analyses.diversity import DiversityAnalysis
from explorer.analyses.token_lens import TokenLensAnalysis
from explorer.analyses.training import TrainingAnalysis
from explorer.analyses.report import Bars, Cards, Facts, Heatmap, Line, Note, Plot, Points, Table, TokenText, render, \
    report_html
from explorer.cli import main
from explorer.data.classifier_outputs import outputs_from_arrays
from explorer.data.embeddings import validated
from explorer.data.sources import LOG_SOURCES
from explorer.data.store import ResultsStore
from explorer.data.training_runs import RUNS, load_digits_runs, uncertainty_vs_data_size

SCRIPT = "<script>alert(1)</script>"
ROOT = re.compile(r'data-root-id="')
#: the headings of the lens's deeper results in its report
DEEPER = ("Layer by layer (logit lens)", "Branches from position", "Two models: A =", "Reasoning steps")


def _outputs(names=None):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(200, 3)) * 2
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return outputs_from_arrays(probs, rng.integers(0, 3, 200), class_names=names, name=f"toy {SCRIPT}")


def _offline(text: str) -> None:
    """No resource is fetched: no script or stylesheet with a src/href URL, BokehJS inline."""
    assert not re.search(r"<script[^>]+src=", text) and not re.search(r"<link[^>]+href=\"?https?:", text)
    assert "Bokeh" in text and len(text) > 500_000          # BokehJS is inside the file


def _plots(text: str) -> int:
    return len(ROOT.findall(text))


def test_a_conformal_report_has_its_plots_cards_settings_provenance_and_versions(tmp_path):
    analysis = ConformalAnalysis(outputs=_outputs(("cat", SCRIPT, "dog")), method="aps", alpha=0.2, n_splits=20)
    path = analysis.report(tmp_path / "conformal.html")
    text = path.read_text(encoding="utf-8")
    _offline(text)
    parts = analysis.report_sections()
    assert _plots(text) == sum(isinstance(p, Plot) for p in parts) >= 7
    s = analysis.summary()
    assert f"{s['coverage']:.1%}" in text and "mean set size" in text
    assert "APS (adaptive sets)" in text and ">alpha<" in text and ">0.2<" in text        # settings
    assert "toy &lt;script&gt;" in text and SCRIPT not in text                            # escaped data
    for package in ("python", "torch", "bokeh", "entropy-explorer"):
        assert f"<th>{package}</th>" in text


def test_a_diversity_report_with_a_comparison(tmp_path):
    rng = np.random.default_rng(1)
    a = DiversityAnalysis(dataset=validated("spread", rng.normal(size=(60, 5)), labels=["x", "y"] * 30), kernel="rbf")
    b = DiversityAnalysis(dataset=validated("tight", rng.normal(size=(50, 5)) * 0.1), kernel="rbf")
    text = report_html(a, other=b.compute())
    _offline(text)
    assert "Data A: spread" in text and "Data B: tight" in text and "Vendi within each group" not in text
    assert "Vendi_q within each group of A" in text and "PCA of A" in text
    with a.reading():
        assert f"{a.scores()['vendi']:.4g}" in text
    assert _plots(text) == sum(isinstance(p, Plot) for p in a.report_sections(other=b))


def test_a_page_report_from_cached_results_says_what_is_missing():
    analysis = ConformalAnalysis(outputs=_outputs())
    text = report_html(analysis, compute=False)
    assert "Nothing to report yet" in text and _plots(text) == 1     # only the empty placeholder root
    assert not [n for n in analysis.computations if ConformalAnalysis.result_specs()[n].heavy]


def test_parts_render_escaped_numbers_and_long_tables():
    frame = pd.DataFrame({"x": np.arange(1000), "label": [SCRIPT] * 1000, "v": [math.nan, math.inf] * 500})
    text = render("T <b>", [Cards([("a <i>", 1 / 3, "note & more"), ("b", math.nan, ""), ("c", -math.inf, "")]),
                            Facts("F", {"k": SCRIPT}), Note(SCRIPT, warning=True), Table("rows", frame),
                            TokenText(["<a>", " b\n"], [0.0, 5.0], 5.0, "entropy"),
                            Plot("p", "x", "y", [Line([1, 2], [3, 4], "l"), Points([1], [2], hover={"t": [SCRIPT]}),
                                                 Bars(["<u>", "v"], [1, 2]),
                                                 Heatmap([0, 1], [0, 0], [0.5, math.nan], "e")])],
                  {"setting": SCRIPT})
    assert SCRIPT not in text and "</script><" not in text.replace("</script>\n<", "")  # nor in Bokeh's JSON
    html_part = re.sub(r"<script.*?</script>", "", text, flags=re.S)     # the page outside Bokeh's scripts
    assert "<b>" not in html_part.split("<body>")[1] and "&lt;i&gt;" in html_part and "&lt;a&gt;" in html_part
    assert "0.3333" in html_part and "n/a" in html_part and "−∞" in html_part and "∞" in html_part
    assert "First 300 of 1,000 rows" in html_part and html_part.count("<tr>") < 400
    assert "<script>alert" not in html_part


def _stored_run(db):
    store = ResultsStore(db)
    questions = pd.DataFrame({"question": ["What is 2+2?", f"Q {SCRIPT}"], "answers": [["4"], []]})
    run_id = store.create_run("toy-model", {"temperatures": [0.3, 1.0], "n_samples": 2}, questions)
    rows = [dict(question_index=q, temperature=t, measure=m, value=v) for m in ("se_discrete", "msp")
            for q in range(2) for t, v in ((0.3, 0.1 * q), (1.0, 0.5 + q))]
    rows += [dict(question_index=q, temperature=t, measure="correct", value=float(q == 0)) for q in range(2)
             for t in (0.3, 1.0)]
    store.replace_measures(run_id, pd.DataFrame(rows))
    store.close()
    return run_id


def test_explorer_report_run_and_conformal_from_the_command_line(tmp_path, capsys):
    db = tmp_path / "runs.duckdb"
    run_id = _stored_run(db)
    out = tmp_path / "run.html"
    assert main(["report", "run", run_id, "--db", str(db), "--measure", "msp", "-o", str(out)]) == 0
    text = out.read_text(encoding="utf-8")
    _offline(text)
    assert f"Run {run_id}" in text and "toy-model" in text and "TSU" in text and "Q &lt;script&gt;" in text
    assert main(["report", "run", "nope", "--db", str(db), "-o", str(tmp_path / "x.html")]) == 2
    assert "No run 'nope'" in capsys.readouterr().err
    out = tmp_path / "cp.html"
    assert main(["report", "conformal", "--source", "digits", "--method", "raps", "--alpha", "0.05",
                 "--class-conditional", "true", "-o", str(out)]) == 0
    text = out.read_text(encoding="utf-8")
    assert "Digits" in text and "RAPS" in text and "per class" in text
    assert main(["report", "conformal", "--alpha", "0.9", "-o", str(tmp_path / "bad.html")]) == 2
    assert "--alpha: out of range" in capsys.readouterr().err and not (tmp_path / "bad.html").exists()


@pytest.mark.model
def test_explorer_report_lens_scores_the_text(tmp_path):
    out = tmp_path / "lens.html"
    assert main(["report", "lens", "--text", f"Entropy is {SCRIPT} surprise.", "--temperature", "1.5",
                 "--window", "4", "--branch-position", "2", "--branches-k", "2", "--branch-tokens", "3",
                 "-o", str(out)]) == 0
    text = out.read_text(encoding="utf-8")
    _offline(text)
    assert "SmolLM2-135M-Instruct" in text and "scored (teacher-forced)" in text and "T = 1.5" in text
    assert "&lt;script&gt;" in text and "<script>alert" not in text
    assert "Mean attention entropy" in text and "Rank of the actual token" in text
    assert _plots(text) == 6 and "Entropy × varentropy at T = 1.5" in text     # 4, the regions' scatter, branches
    assert [heading for heading in DEEPER if heading in text] == ["Branches from position"]   # the one asked for


# ------------------------------------------------------------------------------------------- training, lens deeper
@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ENTROPY_EXPLORER_CACHE", str(tmp_path / "cache"))   # spectra and small trainings go here


def test_a_training_report_of_the_bundled_digits_runs_and_rl_log_has_the_law_fit(tmp_path, cache):
    from test_training_analysis import SMALL     # the bundled reproduction, trained small

    analysis = TrainingAnalysis(runs=load_digits_runs(SMALL), logs=LOG_SOURCES.load("rl_addition"), bootstrap=100,
                                clusters=4, t=2.0, fraction=0.5)
    text = analysis.report(tmp_path / "training.html", measure="test_accuracy").read_text(encoding="utf-8")
    _offline(text)
    parts = analysis.report_sections(measure="test_accuracy")
    # DSE, DSMI x 2, Vendi, test accuracy, the plane, the spectrum; the law, covariance; forecast, its error
    assert _plots(text) == sum(isinstance(p, Plot) for p in parts) == 11
    fit = analysis.law_table().iloc[0]
    assert fit.run == "rl_addition_log" and fit.note == ""
    for value in (fit.a, fit.b, fit.ceiling, fit.r2):
        assert f">{value:.4g}<" in text                                   # the cards
    for low, high in ((fit.a_low, fit.a_high), (fit.b_low, fit.b_high), (fit.ceiling_low, fit.ceiling_high)):
        assert f"95% interval {low:.4g} to {high:.4g}" in text
    forecast = analysis.forecast_summary().iloc[0]
    assert f"Ceiling from the first {forecast.fitted_steps} steps" in text and f">{forecast.ceiling:.4g}<" in text
    assert "fit on the first 50% of the steps" in text and "Forecast on the held-out steps" in text
    assert "Test accuracy against epoch" in text and "Diffusion spectrum of hidden 2 at epoch 3 (t = 2" in text
    assert all(html.escape(line) in text for line in analysis.verdict()) and "Claim 1, DSE rises" in text
    assert "(rl_addition_log.csv)" in text and "/data/rl_addition_log.csv" not in text   # no server path


def test_a_training_report_from_cached_results_shows_what_is_computed(cache):
    from test_training_analysis import SMALL_SIZES, logged_run, representation_run

    runs = {RUNS[0]: representation_run("t", 1.0), RUNS[1]: representation_run("s", 0.1, seed=1)}
    analysis = TrainingAnalysis(runs=runs, logs=[logged_run(), logged_run("short", n=3)], bootstrap=100, clusters=3)
    text = report_html(analysis, compute=False)
    assert text.count("Not computed yet when this report was made") == 2 and _plots(text) == 1
    analysis.compute_representations()
    analysis.law_fits()
    text = report_html(analysis, compute=False)
    assert "DSE (bits) against epoch" in text and "Information plane" in text and "Entropy-law fits" in text
    assert "the entropy law needs at least 4" in text                    # the run it cannot fit, in words
    assert "forecast from the first steps was not computed yet" in text and "Forecast per run" not in text
    assert not analysis.computations["forecasts"]
    analysis.forecasts()
    analysis.data_size = uncertainty_vs_data_size(SMALL_SIZES)
    text = report_html(analysis, compute=False)
    assert "Forecast per run" in text and "Not computed yet" not in text
    k = analysis.data_size_fits().set_index("uncertainty")["k"]
    assert f">{k['predictive entropy']:.4g}<" in text and f">{k['mutual information']:.4g}<" in text
    assert _plots(text) == sum(isinstance(p, Plot) for p in analysis.report_sections())
    assert "Uncertainty against data size" in report_html(TrainingAnalysis(data_size=analysis.data_size))


def test_explorer_report_training_from_the_command_line(tmp_path, capsys):
    out = tmp_path / "training.html"
    assert main(["report", "training", "--source", "none", "--bootstrap", "100", "--fraction", "0.5",
                 "-o", str(out)]) == 0
    text = out.read_text(encoding="utf-8")
    _offline(text)
    assert "rl_addition_log" in text and "fit on the first 50% of the steps" in text and ">bootstrap<" in text
    assert "Representations across training" not in text and _plots(text) == 4
    assert main(["report", "training", "--source", "none", "--level", "2", "-o", str(tmp_path / "bad.html")]) == 2
    assert "--level: out of range" in capsys.readouterr().err and not (tmp_path / "bad.html").exists()
    assert main(["report", "training", "--source", "none", "--log-source", "none", "-o", str(tmp_path / "x.html")]) == 2
    assert "Nothing to report" in capsys.readouterr().err


@pytest.mark.model
def test_a_lens_report_shows_the_deeper_results_only_once_computed():
    analysis = TokenLensAnalysis(mode="score", text=f"The cat sat on the mat {SCRIPT}.", prompt="", chat=False,
                                 branches_k=2, branch_tokens=3, branch_position=2,
                                 second_model="SmolLM2-135M-Instruct").compute()
    text = report_html(analysis, compute=False)
    assert "Entropy × varentropy at T = 1" in text and "high entropy, high varentropy" in text
    assert not [heading for heading in DEEPER if heading in text]
    assert not {"logit_lens", "lens_scored", "branches", "comparison", "reasoning"} & set(analysis.computations)
    analysis.lens_scored(), analysis.branches(), analysis.comparison(), analysis.reasoning()
    text = report_html(analysis, compute=False)
    assert [heading for heading in DEEPER if heading in text] == list(DEEPER)
    assert _plots(text) == sum(isinstance(p, Plot) for p in analysis.report_sections()) == 4 + 1 + 2 + 1 + 3 + 1
    assert f">{analysis.branches().branch_point_entropy:.4g}<" in text
    assert f">{analysis.comparison().detection_a:.4g}<" in text
    assert f">{float(analysis.reasoning().entropy_mean[0]):.4g}<" in text
    assert "&lt;script&gt;" in text and "<script>alert" not in text
    analysis.param.update(temperature=1.5, branches_k=3)       # the lens at T = 1 stays; those branches go
    text = report_html(analysis, compute=False)
    assert "Computed at T = 1: the layers were not re-scored" in text and "Branches from position" not in text
    assert "Two models: A =" in text and "Entropy × varentropy at T = 1.5" in text

