"""The lens, deeper, on the default model: every result of ``TokenLensAnalysis`` equals the
``lens_tools`` function it wraps; the page's new tabs build, show them, patch their sources in place
on a threshold move (no new job) and say what is wrong with bad input, without a browser."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import panel as pn
import pytest
import torch
from bokeh.models import ColumnDataSource

from explorer.analyses import token_lens
from explorer.analyses.token_lens import TokenLensAnalysis
from explorer.errors import InputError
from explorer.kernels.entropy import token_entropy
from explorer.models.lens_tools import compare_models, entropy_regions, split_steps
from explorer.views.token_lens import DEEPER_TABS, DEEPER_TITLES, TokenEntropyLens

pytestmark = pytest.mark.model

TEXT = "The cat sat on the mat because it was tired."
SMALL = {"branches_k": 3, "branch_tokens": 4, "branch_position": 2}


@pytest.fixture(scope="module")
def lm():
    from explorer.models.language_model import load_language_model

    return load_language_model()


@pytest.fixture(scope="module")
def study():
    return TokenLensAnalysis(mode="score", text=TEXT, prompt="", chat=False, **SMALL)


@pytest.fixture(scope="module")
def trace(study):
    return study.trace()


# ------------------------------------------------------------------ analysis results = lens_tools
def test_logit_lens_follows_the_slider_from_the_kept_logits(study, trace, lm):
    reference = lm.logit_lens(trace, temperature=1.0)
    lens = study.logit_lens()
    assert lens.logits is not None and study.lens_follows_temperature()
    torch.testing.assert_close(lens.entropy, reference.entropy)
    torch.testing.assert_close(lens.kl_to_final, reference.kl_to_final)
    assert torch.equal(lens.top_ids, reference.top_ids)
    study.temperature = 1.0
    assert study.lens_scored() is lens
    study.temperature, study.lens_position = 1.5, 4
    hot = lm.logit_lens(trace, temperature=1.5, keep_logits_mb=0)   # a fresh pass at T = 1.5
    for key in ("entropy", "kl_to_final", "top_probs"):
        torch.testing.assert_close(getattr(study.lens_scored(), key), getattr(hot, key), atol=1e-5, rtol=1e-5)
    pd.testing.assert_frame_equal(study.lens_column(), study.lens_scored().column(4))
    assert len(study.lens_frame()) == hot.entropy.numel()
    study.lens_position = 999                                        # clipped to the last position
    assert study.lens_column()["top_token"].tolist() == [row[-1] for row in study.lens_scored().top_tokens]
    study.temperature, study.lens_position = 1.0, 0


def test_logit_lens_over_the_budget_applies_the_slider_to_the_final_layer_only(trace, monkeypatch):
    monkeypatch.setattr(token_lens, "LENS_KEEP_LOGITS_MB", 0.0)
    study = TokenLensAnalysis(mode="score", text=TEXT, prompt="", chat=False)
    lens = study.logit_lens()
    assert lens.logits is None and not study.lens_follows_temperature()
    study.temperature = 2.0
    assert study.lens_scored() is lens and study.lens_scored().temperature == 1.0


def test_regions_are_entropy_regions_of_the_trace_at_the_display_temperature(study, trace):
    study.param.update(temperature=1.5, quadrant_entropy_bits=2.5, quadrant_varentropy_bits2=4.0)
    frame = study.regions()
    expected = entropy_regions(trace.at_temperature(1.5), 2.5, 4.0)
    pd.testing.assert_frame_equal(frame[expected.columns], expected, atol=1e-5, rtol=1e-5)
    bits = trace.at_temperature(1.5).entropy.double() / math.log(2)
    bits2 = trace.at_temperature(1.5).varentropy.double() / math.log(2) ** 2
    by_hand = ((bits > 2.5).long() + 2 * (bits2 > 4.0).long()).tolist()   # 0 low/low, 1 high H, 2 high V, 3 both
    assert frame["quadrant"].tolist() == by_hand
    assert sum(study.quadrant_counts().values()) == len(trace)
    study.param.update(temperature=1.0, quadrant_entropy_bits=token_lens.QUADRANT_ENTROPY_BITS,
                       quadrant_varentropy_bits2=token_lens.QUADRANT_VARENTROPY_BITS2)
    assert (study.quadrant_entropy_bits, study.quadrant_varentropy_bits2) == (3.0, 5.0)   # entropix's defaults


def test_branches_equal_lens_tools_branch(study, trace, lm):
    result = study.branches()
    reference = lm.branch(trace, 2, k=3, max_new_tokens=4, seed=0, decoding="top_p", temperature=1.0, top_p=0.9)
    assert result.texts == reference.texts and len(result.branches) == 3
    curves = study.branch_curves()
    text = curves[curves.curve == "text"]
    torch.testing.assert_close(torch.tensor(text["entropy"].to_numpy()), token_entropy(trace.logits[2:6]).double())
    assert text["token"].tolist() == trace.tokens[2:6]
    for b, branch in enumerate(reference.branches):
        rows = curves[curves.curve == f"branch {b + 1}"]
        assert rows["token"].tolist() == branch.tokens
        torch.testing.assert_close(torch.tensor(rows["entropy"].to_numpy(), dtype=torch.float32), branch.full_entropy)
    alternatives = study.branch_alternatives()
    own = alternatives[alternatives.is_text_token]
    assert len(own) == 1 and own["p"].iloc[0] == pytest.approx(reference.original_prob)
    probs = torch.softmax(trace.logits[2].double(), -1)
    assert alternatives["p"].iloc[0] == pytest.approx(float(probs.max()), abs=1e-5)


def test_two_models_equal_compare_models_and_a_threshold_move_needs_no_pass(study, lm):
    study.second_model = "SmolLM2-135M-Instruct"
    comparison = study.comparison()
    reference = compare_models(TEXT, lm, lm)
    assert torch.equal(comparison.kl_ab, torch.zeros_like(comparison.kl_ab))   # a model against itself
    torch.testing.assert_close(comparison.entropy_a, reference.entropy_a)
    assert comparison.detection_a == comparison.detection_b == pytest.approx(reference.detection_a)
    computed = study.computations["comparison"]
    for threshold in (1.0, 3.0, 4.5):
        study.ead_threshold_bits = threshold
        expected = compare_models(TEXT, lm, lm, threshold_bits=threshold).handed_over.numpy()
        assert study.handover()["handed_over"].tolist() == expected.tolist()
    assert study.computations["comparison"] == computed


def test_reasoning_equals_lens_tools_and_edited_steps_are_used(study, lm):
    steps = split_steps(study.chain, answer=study.answer)
    assert study.reasoning_steps() == steps == study.chain_steps()
    result = study.reasoning()
    reference = lm.reasoning_entropy(study.question, steps, study.answer)
    torch.testing.assert_close(result.token_entropy, reference.token_entropy)
    assert result.marked == reference.marked
    assert study.reasoning_frame()["entropy_mean"].tolist() == pytest.approx(reference.entropy_mean.tolist())
    study.steps = "Each pencil costs 15 cents.\n\n  Ten cost 150 cents.  "
    assert study.reasoning_steps() == ["Each pencil costs 15 cents.", "Ten cost 150 cents."]
    assert len(study.reasoning().steps) == 2
    study.steps = ""
    study.split_by = "sentences"
    assert study.reasoning_steps() == split_steps(study.chain, by="sentences", answer=study.answer)
    study.split_by = "lines"


# ------------------------------------------------------------------ the page, without a browser
@pytest.fixture(scope="module")
def page():
    page = TokenEntropyLens(analysis=TokenLensAnalysis(mode="score", text=TEXT, prompt="", chat=False, **SMALL))
    page.root = pn.panel(page).get_root()
    page.jobs.wait()   # scored when shown
    return page


def open_tab(page, name: str):
    """Show a tab as a click on it does: it computes its results in the page's job runner."""
    page._deeper._tabs.active = DEEPER_TABS.index(name)
    page.jobs.wait()
    return page._deeper


def note(page, tab: str) -> str:
    return page._deeper._notes[tab].object


def test_only_the_open_tab_is_rendered_and_every_tab_builds_with_its_figures(page):
    """The deeper tabs are dynamic: a page opens with one tab's figures in its document (the clicks source
    the coloured text writes to is always there); each other tab renders its own when opened."""
    deeper = page._deeper

    def names(root) -> set[str]:
        return {model.name for model in root.references() if model.name}
    shown = names(page.root)
    assert deeper._tabs.active == 0 and "lens-regions-figure" in shown and f"lens-{deeper.uid}-clicks" in shown
    assert not {"lens-layers-figure", "lens-branches-figure", "lens-reasoning-figure"} & shown
    expected = [{"lens-layers-figure", "lens-column-figure"}, {"lens-branches-figure", "lens-alternatives-figure"},
                {"lens-compare-entropy", "lens-compare-ead"}, {"lens-reasoning-figure"}]
    for tab, figures in zip(deeper._tabs.objects[1:], expected):
        assert figures <= names(pn.panel(tab).get_root())
    assert deeper._tabs._names == list(DEEPER_TITLES)
    assert "data-pos='3'" in page._tokens.object and f"lens-text-{page._deeper.uid}" in page._tokens.object


def test_the_scatter_follows_the_trace_and_a_threshold_move_patches_it_in_place(page):
    deeper, a = page._deeper, page.analysis
    source = deeper._regions_source
    assert isinstance(source, ColumnDataSource) and len(source.data["position"]) == len(a.trace())
    np.testing.assert_allclose(source.data["entropy_bits"], a.trace().entropy.numpy() / math.log(2), rtol=1e-5)
    jobs_before = dict(a.computations)
    a.quadrant_entropy_bits = 0.0                     # every position is "high entropy" now
    assert deeper._regions_source is source and deeper._entropy_span.location == 0.0
    assert set(source.data["quadrant_name"]) <= {"high entropy, low varentropy", "high entropy, high varentropy"}
    a.quadrant_entropy_bits = 100.0
    assert set(source.data["quadrant_name"]) <= {"low entropy, low varentropy", "low entropy, high varentropy"}
    assert {k: v for k, v in a.computations.items() if k != "regions" and k != "quadrant_counts"} == \
        {k: v for k, v in jobs_before.items() if k != "regions" and k != "quadrant_counts"}
    a.quadrant_entropy_bits = 3.0
    source.selected.indices = [1, 3]                  # as a box selection in the browser
    page._show_measures()
    assert page._tokens.object.count("lens-tok lens-picked") == 2
    source.selected.indices = []


def test_layer_tab_computes_in_a_job_and_follows_clicks_and_the_slider(page):
    deeper = open_tab(page, "lens")
    a = page.analysis
    lens = a.logit_lens()
    n_layers, n = lens.shape
    assert len(deeper._lens_source.data["value"]) == n_layers * n and "re-scores every layer" in note(page, "lens")
    np.testing.assert_allclose(deeper._lens_source.data["value"], lens.entropy.flatten().numpy())
    a.lens_measure = "kl_to_final"
    np.testing.assert_allclose(deeper._lens_source.data["value"], lens.kl_to_final.flatten().numpy())
    deeper._clicks.data = {"position": [4], "time": [1]}   # a token clicked in the text
    assert a.lens_position == 4 and a.branch_position == 4
    np.testing.assert_allclose(deeper._column_source.data["entropy"], lens.entropy[:, 4].numpy())
    deeper._lens_source.selected.indices = [n * 2 + 6]     # a heatmap cell (layer 2, position 6) tapped
    assert a.lens_position == 6 and deeper._lens_span.location == 6
    a.temperature = 2.0                                    # re-scored in a job, from the kept logits
    page.jobs.wait()
    np.testing.assert_allclose(deeper._lens_source.data["value"], lens.at_temperature(2.0).kl_to_final.flatten().numpy(),
                               rtol=1e-5, atol=1e-6)
    assert "T = 2" in deeper._lens_figure.title.text
    a.param.update(temperature=1.0, lens_measure="entropy", branch_position=2)
    page.jobs.wait()


def test_branch_tab_shows_the_branches_and_bad_input(page):
    deeper = open_tab(page, "branches")
    a = page.analysis
    result = a.branches()
    assert len(deeper._branch_source.data["xs"]) == len(result.branches) + 1
    assert f"#{result.position}" in deeper._branch_cards.object and "mass of the alternatives" in deeper._branch_cards.object
    assert deeper._branch_texts.object.count("lens-branch'") == len(result.branches) + 1
    for setting, value, message in (("branches_k", 0, "k must be from 1 to 64"), ("branches_k", 65, "k must be from 1 to 64"),
                                    ("branch_position", 99, "past the end")):
        a.param.update({setting: value})            # the tab is on screen: a new job, which fails
        page.jobs.wait()
        assert message in note(page, "branches") and message in page.jobs.message
        a.param.update(**SMALL)
        page.jobs.wait()
    assert "lens-deeper-error" not in note(page, "branches")


def test_two_models_tab_patches_the_threshold_in_place_and_explains_bad_models(page, lm, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    deeper = open_tab(page, "compare")
    a = page.analysis
    assert "Type a second model" in note(page, "compare")
    a.second_model = "SmolLM2-135M-Instruct"
    page.jobs.wait()
    source = deeper._compare_source
    assert list(source.data["kl_ab"]) == [0.0] * len(a.trace())
    computed = a.computations["comparison"]
    a.ead_threshold_bits = 0.0
    assert deeper._compare_source is source and set(source.data["colour"]) == {"#dc2626"}
    assert "100% of steps" in deeper._compare_cards.object and deeper._ead_span.location == 0.0
    a.ead_threshold_bits = 20.0
    assert "0% of steps" in deeper._compare_cards.object and a.computations["comparison"] == computed
    assert not page.jobs.busy()
    a.second_model = "no-such-org/no-such-model"
    page.jobs.wait()
    assert "not in the local Hugging Face cache" in note(page, "compare")
    a.second_model = different_vocabulary_model(lm, tmp_path)
    page.jobs.wait()
    assert "different vocabularies" in note(page, "compare")


def different_vocabulary_model(lm, path) -> str:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(lm.model.name_or_path)
    tokenizer.add_tokens(["<an-extra-token>"])
    config = LlamaConfig(vocab_size=lm.vocab_size + 1, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128)
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def test_reasoning_tab_marks_steps_and_explains_bad_chains(page):
    deeper = open_tab(page, "reasoning")
    a = page.analysis
    result = a.reasoning()
    assert list(deeper._reasoning_source.data["k"]) == list(range(len(result.steps) + 1))
    assert deeper._reasoning_steps.object.count("class='lens-step lens-step-marked'") == len(result.marked)
    assert a.steps.splitlines() == result.steps      # the editor shows the split
    chain = a.chain
    a.answer = "$2.00"
    page.jobs.wait()
    assert "not found in the reasoning chain" in note(page, "reasoning")
    a.param.update(answer=token_lens.REASONING_ANSWER, chain="   ")
    page.jobs.wait()
    assert "chain is empty" in note(page, "reasoning")
    a.chain = chain
    page.jobs.wait()
    assert "lens-deeper-error" not in note(page, "reasoning")


def test_bad_page_input_is_an_input_error_in_python_too(study):
    for settings, message in (({"branches_k": 0}, "k must be from 1 to 64"), ({"branch_position": 99}, "past the end")):
        study.param.update(settings)
        with pytest.raises(InputError, match=message):
            study.branches()
        study.param.update(**SMALL)
    study.chain = ""
    with pytest.raises(InputError, match="chain is empty"):
        study.reasoning()


def test_a_run_shown_recomputes_the_served_document_once(study, monkeypatch):
    """Showing a run replaces ten HoloViews plots: Bokeh recomputes the document's model graph once
    (not after each plot: 1-2 s of a served page's event loop with its ~800 models), and no plot's axes
    are linked to another's (Panel redid that for the whole page on every plot replaced)."""
    from bokeh.document import Document
    from panel.io.state import set_curdoc

    doc = Document()
    with set_curdoc(doc):
        analysis = TokenLensAnalysis(mode="score", text=TEXT, prompt="", chat=False, **SMALL)
        analysis.adopt_results(study)
        view = TokenEntropyLens(analysis=analysis)
        view.jobs.wait()
        pn.panel(view).server_doc(doc)
        recomputes, recompute = [], doc.models.recompute
        monkeypatch.setattr(doc.models, "recompute", lambda: (recomputes.append(1), recompute())[-1])
        view._show_run()
    assert len(recomputes) == 1
    panes = [pane for pane in pn.panel(view).select(pn.pane.HoloViews)]
    assert len(panes) >= 10 and not [pane for pane in panes if pane.linked_axes]
