"""The temperature page's plot builders and links, rendered to Bokeh without a browser: the
uncertainty-vs-temperature plot draws one thin line per question besides the mean and its band."""

from __future__ import annotations

from urllib.parse import parse_qs, urlparse

import holoviews as hv
import pandas as pd
from bokeh.models import GlyphRenderer, Line

from explorer.views.temperature import comparison_curves, lens_url, uncertainty_curves


def _lines(overlay) -> list:
    figure = hv.render(overlay, backend="bokeh")
    return [r for r in figure.renderers if isinstance(r, GlyphRenderer) and isinstance(r.glyph, Line)]


def test_one_thin_line_per_question_and_a_mean():
    u = pd.DataFrame([[0.1, 0.5, 0.9], [0.4, 0.3, 0.2], [0.0, 0.0, 1.0], [0.6, 0.7, 0.8]], columns=[0.3, 0.7, 1.4])
    lines = _lines(uncertainty_curves(u, "test"))
    thin = [r for r in lines if r.glyph.line_width < 2]
    thick = [r for r in lines if r.glyph.line_width >= 2]
    assert len(thin) == 4 and len(thick) == 1
    assert sorted(tuple(r.data_source.data["uncertainty"]) for r in thin) == sorted(map(tuple, u.to_numpy().tolist()))
    assert list(thick[0].data_source.data["uncertainty"]) == list(u.mean().to_numpy())
    assert all(r.glyph.line_alpha < 1 for r in thin)


def test_comparison_draws_both_runs():
    curves = pd.DataFrame({"run": ["A", "A", "B", "B", "B"], "temperature": [0.3, 1.0, 0.3, 0.7, 1.4],
                           "mean": [0.1, 0.5, 0.2, 0.3, 0.9], "sd": [0.0, 0.1, 0.1, 0.1, 0.2]})
    lines = _lines(comparison_curves(curves, {"A": "run-a", "B": "run-b"}, "cmp"))
    assert [list(r.data_source.data["uncertainty"]) for r in lines] == [[0.1, 0.5], [0.2, 0.3, 0.9]]
    assert lines[0].glyph.line_color != lines[1].glyph.line_color


def test_lens_link_carries_prompt_text_and_temperature():
    url = lens_url("What is 2 + 2? & more", "It is 4 = four", 1.2)
    query = parse_qs(urlparse(url).query)
    assert query == {"page": ["lens"], "prompt": ["What is 2 + 2? & more"], "text": ["It is 4 = four"],
                     "temperature": ["1.2"]}


def test_the_cost_line_changes_its_text_in_place(tmp_path):
    """A changed setting rewrites the cost line's text in the model already shown (a new pane per
    keystroke made the browser lay the page out again)."""
    from explorer.analyses.temperature import TemperatureAnalysis
    from explorer.views.temperature import TemperatureSensitivity

    page = TemperatureSensitivity(analysis=TemperatureAnalysis(db_path=str(tmp_path / "runs.duckdb")))
    cost = page._cost
    shown = cost.get_root()
    assert "(4 temperatures x 5 questions)" in cost.object
    page.analysis.max_questions = 7
    generations = page.analysis.generations(temperatures=4)
    assert page._cost is cost and f"**Cost:** {generations:,} generations (4 temperatures x 7 questions)" in cost.object
    assert "7 questions" in shown.text
    page.temperatures_text = "0.5, 0.4"
    assert "**Temperatures:**" in cost.object and cost.styles == {"color": "#b91c1c"}
    page.temperatures_text = "0.5, 1.0"
    assert cost.object.startswith("**Cost:**") and "2 temperatures" in shown.text and not cost.styles
