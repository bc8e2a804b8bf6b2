"""The token lens study (settings in, cached results out), its page component and the `explorer score` CLI."""

from __future__ import annotations

import pytest
import torch

from explorer.analyses.token_lens import SMALL_MULTIPLE_TEMPERATURES, TokenLensStudy
from explorer.errors import InputError

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def scored_study():
    study = TokenLensStudy(mode="score", text="Uncertainty is highest where many words could follow.",
                           prompt="", chat=False)
    study.set_results(study.run())
    return study


def test_constructor_only_stores_settings():
    study = TokenLensStudy(temperature=0.7)
    assert study.trace is None and study.attention is None
    with pytest.raises(InputError, match="Nothing scored yet"):
        study.summary()


def test_results_are_derived_from_the_cached_trace(scored_study):
    study = scored_study
    trace = study.trace
    frame = study.frame()
    assert len(frame) == len(trace) and frame["token"].str.cat() == trace.text
    assert {"entropy", "surprisal", "varentropy", "rank", "entropy_rolling", "top_alternatives"} <= set(frame)
    assert study.rank_histogram()["tokens"].sum() == len(trace)
    study.temperature = 2.0
    hot = study.scored
    assert hot is study.scored, "the trace at a temperature is cached"
    torch.testing.assert_close(hot.entropy, trace.at_temperature(2.0).entropy)
    assert study.summary()["mean_entropy"] > trace.summary()["mean_entropy"]
    study.temperature = 1.0
    sweep = study.entropy_at_temperatures()
    assert len(sweep) == len(SMALL_MULTIPLE_TEMPERATURES) * len(trace)
    at_one = sweep[sweep.temperature == 1.0]["entropy"].to_numpy()
    torch.testing.assert_close(torch.from_numpy(at_one), trace.entropy.cpu(), atol=1e-4, rtol=1e-4)
    layers, heads, n = study.attention.shape
    assert n == len(trace) and len(study.attention_frame()) == layers * heads
    study.layer, study.head = layers - 1, heads - 1
    assert len(study.attention_curve()) == n


def test_rolling_window_is_a_trailing_mean(scored_study):
    scored_study.window = 3
    frame = scored_study.frame()
    expected = frame["entropy"].iloc[2:5].mean()
    assert frame["entropy_rolling"].iloc[4] == pytest.approx(expected)


def test_generation_settings_reach_the_decoding_rule():
    study = TokenLensStudy(mode="generate", prompt="Say hello.", decoding="top_k", max_new_tokens=5,
                           generation_temperature=0.7)
    study.decoding_settings["top_k"].top_k = 3
    study.set_results(study.run())
    assert bool((study.trace.n_kept == 3).all()) and bool((study.trace.rank <= 3).all())


def test_bad_settings_raise_one_clear_error():
    study = TokenLensStudy(mode="generate", prompt="Hi", generation_temperature=-1.0, max_new_tokens=3)
    with pytest.raises(InputError, match="temperature"):
        study.run()
    with pytest.raises(InputError, match="empty"):
        TokenLensStudy(mode="score", text=" ").run()


def test_page_component_renders_alone():
    import panel as pn
    from bokeh.models import Button

    from explorer.views import TokenEntropyLens

    root = pn.panel(TokenEntropyLens()).get_root()
    labels = {button.label for button in root.select({"type": Button})}
    assert {"Generate", "Score text"} <= labels


def test_cli_score_prints_a_table(capsys):
    from explorer.cli import main

    assert main(["score", "The capital of France is Paris."]) == 0
    out = capsys.readouterr().out
    assert "entropy" in out and "surprisal" in out and "log-perplexity" in out
    assert main(["score", "   "]) == 2
    assert "empty" in capsys.readouterr().err
