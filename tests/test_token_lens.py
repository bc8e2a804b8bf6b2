"""The token lens analysis (settings in, cached results out), its page component and the `explorer score` CLI."""

from __future__ import annotations

import pytest
import torch

from explorer.analyses.base import NotComputed
from explorer.analyses.token_lens import SMALL_MULTIPLE_TEMPERATURES, TEMPERATURE_GRID, TokenLensAnalysis
from explorer.errors import InputError

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def scored_study():
    study = TokenLensAnalysis(mode="score", text="Uncertainty is highest where many words could follow.",
                              prompt="", chat=False)
    return study.compute()


def test_constructor_only_stores_settings():
    study = TokenLensAnalysis(temperature=0.7)
    assert not study.computations and not study.is_computed()
    with pytest.raises(NotComputed, match="Press Score"), study.reading():
        study.summary()


def test_results_are_derived_from_the_cached_trace(scored_study):
    study = scored_study
    trace = study.trace()
    frame = study.frame()
    assert len(frame) == len(trace) and frame["token"].str.cat() == trace.text
    assert {"entropy", "surprisal", "varentropy", "rank", "entropy_rolling", "top_alternatives"} <= set(frame)
    assert study.rank_histogram()["tokens"].sum() == len(trace)
    study.temperature = 2.0
    hot = study.scored()
    assert hot is study.scored(), "the trace at a temperature is cached"
    assert hot is study.temperature_grid()[2.0][0] and len(study.temperature_grid()) == len(TEMPERATURE_GRID)
    study.temperature = 2.01
    torch.testing.assert_close(study.scored().entropy, trace.at_temperature(2.01).entropy)
    study.temperature = 2.0
    torch.testing.assert_close(hot.entropy, trace.at_temperature(2.0).entropy)
    assert study.summary()["mean_entropy"] > trace.summary()["mean_entropy"]
    study.temperature = 1.0
    sweep = study.entropy_at_temperatures()
    assert len(sweep) == len(SMALL_MULTIPLE_TEMPERATURES) * len(trace)
    at_one = sweep[sweep.temperature == 1.0]["entropy"].to_numpy()
    torch.testing.assert_close(torch.from_numpy(at_one), trace.entropy.cpu(), atol=1e-4, rtol=1e-4)
    layers, heads, n = study.attention().shape
    assert n == len(trace) and len(study.attention_frame()) == layers * heads
    study.layer, study.head = layers - 1, heads - 1
    assert len(study.attention_curve()) == n


def test_rolling_window_is_a_trailing_mean(scored_study):
    scored_study.window = 3
    frame = scored_study.frame()
    expected = frame["entropy"].iloc[2:5].mean()
    assert frame["entropy_rolling"].iloc[4] == pytest.approx(expected)


def test_generation_settings_reach_the_decoding_rule():
    study = TokenLensAnalysis(mode="generate", prompt="Say hello.", decoding="top_k", max_new_tokens=5,
                              generation_temperature=0.7, top_k=3)
    trace = study.trace()
    assert bool((trace.n_kept == 3).all()) and bool((trace.rank <= 3).all())
    study.top_p = 0.5        # another rule's setting does not touch this run
    study.text = "changed"   # nor does the text to score, in generate mode
    assert study.trace() is trace
    study.top_k = 4
    with pytest.raises(NotComputed), study.reading():
        study.trace()


def test_bad_settings_raise_one_clear_error():
    study = TokenLensAnalysis(mode="generate", prompt="Hi", generation_temperature=-1.0, max_new_tokens=3)
    with pytest.raises(InputError, match="temperature"):
        study.compute()
    with pytest.raises(InputError, match="empty"):
        TokenLensAnalysis(mode="score", text=" ").compute()


def test_page_component_renders_alone():
    import panel as pn
    from bokeh.models import Button

    from explorer.views import TokenEntropyLens

    page = TokenEntropyLens(analysis=TokenLensAnalysis(mode="score", text="A short text to score.", chat=False))
    root = pn.panel(page).get_root()
    labels = {button.label for button in root.select({"type": Button})}
    assert {"Generate", "Score text"} <= labels
    page.jobs.wait()   # a notebook or a script scores the text when the page is shown
    assert "scored · shown at T = 1.00" in page._summary.object and page._tokens.object.count("lens-tok'") > 3
    assert len(page._source.data["entropy"]) == len(page.analysis.trace())
    page.analysis.temperature = 1.5   # a move patches the curves' data in place
    assert "T = 1.50" in page._summary.object
    torch.testing.assert_close(torch.as_tensor(page._source.data["entropy"]),
                               page.analysis.trace().at_temperature(1.5).entropy.cpu(), check_dtype=False)


def test_cli_score_prints_a_table(capsys):
    from explorer.cli import main

    assert main(["score", "The capital of France is Paris."]) == 0
    out = capsys.readouterr().out
    assert "entropy" in out and "surprisal" in out and "log-perplexity" in out
    assert main(["score", "   "]) == 2
    assert "empty" in capsys.readouterr().err
