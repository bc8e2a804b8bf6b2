"""Self-contained HTML reports: every page's report from Python and from ``explorer report``, offline
(BokehJS inline, no URL to load), escaped, with settings, provenance and versions.

That a report opens from disk in Chromium with the network blocked and draws its plots is tested in
tests/browser/test_sharing.py."""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytest

from explorer.analyses.conformal import ConformalAnalysis
from explorer.analyses.diversity import DiversityAnalysis
from explorer.analyses.report import Bars, Cards, Facts, Heatmap, Line, Note, Plot, Points, Table, TokenText, render, \
    report_html
from explorer.cli import main
from explorer.data.classifier_outputs import outputs_from_arrays
from explorer.data.embeddings import validated
from explorer.data.store import ResultsStore

SCRIPT = "<script>alert(1)</script>"
ROOT = re.compile(r'data-root-id="')


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
                 "--window", "4", "-o", str(out)]) == 0
    text = out.read_text(encoding="utf-8")
    _offline(text)
    assert "SmolLM2-135M-Instruct" in text and "scored (teacher-forced)" in text and "T = 1.5" in text
    assert "&lt;script&gt;" in text and "<script>alert" not in text
    assert "Mean attention entropy" in text and "Rank of the actual token" in text and _plots(text) == 4
