"""The lens, deeper, in a real browser: the entropy x varentropy scatter linked both ways to the
coloured text, the logit lens, a branch from a clicked token, two models on the same text, reasoning
steps, and one clear message per bad input. Screenshots: ``assets/screenshots/lens_*.png``."""

from __future__ import annotations

import re

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.model]

JOB_TIMEOUT_MS = 180_000


def field(page, label: str):
    """The input of the widget whose label is ``label``."""
    return page.locator(".bk-input-group", has=page.locator("label", has_text=label)).locator("input, textarea").first


def enter(page, label: str, value: str) -> None:
    box = field(page, label)
    box.fill(value)
    box.press("Tab" if box.evaluate("e => e.tagName") == "TEXTAREA" else "Enter")


def open_tab(page, title: str) -> None:
    page.locator(".bk-tab", has_text=title).click()


def wait_note(page, tab: str, pattern: str) -> None:
    page.locator(f".lens-note-{tab}", has_text=re.compile(pattern)).wait_for(timeout=JOB_TIMEOUT_MS)


def shot(page, screenshot, name: str, selector: str = ".lens-deeper-tabs") -> None:
    """Bokeh draws on canvases: give it a moment, then the part of the page that matters."""
    page.wait_for_timeout(800)
    page.locator(selector).first.scroll_into_view_if_needed()
    screenshot(page, name)


def title_is(figure: str, text: str) -> str:
    """A script for ``wait_for_function``: the title of the Bokeh figure named ``figure`` contains ``text``."""
    return (f"() => {{ for (const d of Bokeh.documents) {{ const f = d.get_model_by_name('{figure}'); "
            f"if (f) return f.title.text.includes({text!r}); }} return false; }}")


def bokeh(page, uid: str, model: str, expression: str):
    """``expression`` over the page's Bokeh model ``lens-<uid>-<model>`` (named ``m``)."""
    return page.evaluate(f"() => {{ for (const d of Bokeh.documents) {{ const m = d.get_model_by_name("
                         f"'lens-{uid}-{model}'); if (m) return {expression}; }} return null; }}")


@pytest.fixture(scope="module")
def local_models(tmp_path_factory):
    """A tiny random model with the default tokenizer, and one whose vocabulary has one more token."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from explorer.models.language_model import prepare_default_model

    paths = []
    for extra in (False, True):
        tokenizer = AutoTokenizer.from_pretrained(prepare_default_model())
        if extra:
            tokenizer.add_tokens(["<an-extra-token>"])
        config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                             num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256)
        path = tmp_path_factory.mktemp("tiny-extra" if extra else "tiny")
        LlamaForCausalLM(config).save_pretrained(path)
        tokenizer.save_pretrained(path)
        paths.append(str(path))
    return paths


@pytest.mark.extended   # CI time budget: --slow
def test_the_deeper_lens_end_to_end(app_url, page, screenshot, local_models):
    same_vocabulary, other_vocabulary = local_models
    page.goto(f"{app_url}?page=lens")
    page.locator(".lens-summary", has_text=re.compile(r"scored · shown at T = 1\.00")).wait_for(timeout=JOB_TIMEOUT_MS)
    uid = page.locator(".lens-text").first.get_attribute("class").split("lens-text-")[1].split()[0]
    n_tokens = page.locator(".lens-tok").count()

    # Entropy x varentropy (the first tab: no job): every token is a point, four regions.
    wait_note(page, "regions", r"Every position of the text at T = 1\.00")
    assert bokeh(page, uid, "regions", "m.data.position.length") == n_tokens
    # A box selection over the left of the plot outlines exactly the selected tokens in the text.
    canvas = page.locator(".lens-regions-figure canvas").first
    canvas.scroll_into_view_if_needed()
    box = canvas.bounding_box()
    page.mouse.move(box["x"] + 60, box["y"] + 30)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.55, steps=8)
    page.mouse.up()
    selected = bokeh(page, uid, "regions", "m.selected.indices")
    assert selected, "the box selected no point"
    picked = page.locator(".lens-tok.lens-picked")
    assert sorted(int(p) for p in picked.evaluate_all("els => els.map(e => e.dataset.pos)")) == sorted(selected)
    # Hovering a token rings its point.
    token = page.locator(".lens-tok").nth(5)
    token.hover()
    ring = bokeh(page, uid, "ring", "[m.data.x[0], m.data.y[0]]")
    point = bokeh(page, uid, "regions", "[m.data.entropy_bits[5], m.data.varentropy_bits2[5]]")
    assert ring == pytest.approx(point)
    page.set_viewport_size({"width": 1400, "height": 2700})   # the text and the scatter in one picture
    token.hover()
    screenshot(page, "lens_regions_linked")
    page.set_viewport_size({"width": 1400, "height": 1000})

    # Layer by layer: computed in a job when the tab opens; the slider re-scores every layer.
    open_tab(page, "Layer by layer")
    wait_note(page, "lens", "re-scores every layer")
    cells = bokeh(page, uid, "layers", "m.data.value.length")
    assert cells % n_tokens == 0 and cells // n_tokens > 10
    page.locator(".lens-tok").nth(4).click()              # a click on a token draws its column
    page.locator(".lens-column-figure").first.wait_for()
    field(page, "Position").wait_for()
    page.wait_for_function(title_is("lens-column-figure", "Position 4 "), timeout=JOB_TIMEOUT_MS)
    shot(page, screenshot, "lens_layers", ".lens-layers-figure")
    handle = page.locator(".noUi-handle").first            # the page's temperature slider, to 1.5
    handle.focus()
    for _ in range(10):
        handle.press("ArrowRight")
    page.wait_for_function(title_is("lens-layers-figure", "at T = 1.5"), timeout=JOB_TIMEOUT_MS)
    shot(page, screenshot, "lens_layers_temperature_1.5", ".lens-layers-figure")

    # Branches from the clicked token: k continuations in one batched call.
    open_tab(page, "Branches")
    enter(page, "Branches (k)", "4")
    enter(page, "Tokens per branch", "10")
    wait_note(page, "branches", r"4 continuations of the prefix before position 4")
    assert page.locator(".lens-branch").count() == 5      # the text's own continuation and 4 branches
    mass = float(page.locator(".lens-branch-card-mass-of-the-alternatives-value").inner_text())
    assert 0 <= mass <= 1
    shot(page, screenshot, "lens_branches", ".lens-branches-figure")
    enter(page, "Branches (k)", "0")
    wait_note(page, "branches", "k must be from 1 to 64")
    enter(page, "Branches (k)", "4")
    enter(page, "Branch at position", "999")
    wait_note(page, "branches", "past the end")
    shot(page, screenshot, "lens_branch_past_the_end")

    # Two models on the same text: the default model against itself (KL 0), then a tiny local model.
    open_tab(page, "Two models")
    wait_note(page, "compare", "Type a second model")
    enter(page, "Second model", "SmolLM2-135M-Instruct")
    wait_note(page, "compare", "A = SmolLM2-135M-Instruct, B = SmolLM2-135M-Instruct")
    assert page.locator(".lens-card-compare-mean-kl-a-b-value").inner_text() == "0.000 nats"
    enter(page, "Second model", same_vocabulary)
    wait_note(page, "compare", re.escape(f"B = {same_vocabulary}"))
    assert page.locator(".lens-card-compare-mean-kl-a-b-value").inner_text() != "0.000 nats"
    before = page.locator(".lens-card-compare-handed-to-b-value").inner_text()
    handle = page.locator(".bk-input-group", has_text="Hand-over threshold").locator(".noUi-handle").first
    handle.focus()
    for _ in range(20):                                     # the threshold up by 2 bits: fewer steps go to B
        handle.press("ArrowRight")
    page.locator(".lens-card-compare-handed-to-b-value", has_not_text=before).wait_for(timeout=30_000)
    shot(page, screenshot, "lens_two_models", ".lens-compare-ead")
    enter(page, "Second model", "no-such-org/no-such-model")
    wait_note(page, "compare", "not in the local Hugging Face cache")
    enter(page, "Second model", other_vocabulary)
    wait_note(page, "compare", "different vocabularies")
    shot(page, screenshot, "lens_two_models_bad_vocabulary")

    # Reasoning steps: the default question, chain and answer, scored when the tab opens.
    open_tab(page, "Reasoning steps")
    wait_note(page, "reasoning", "scored after the question and the first k steps")
    assert page.locator(".lens-step").count() == 5 and page.locator(".lens-step-marked").count() >= 1
    shot(page, screenshot, "lens_reasoning", ".lens-reasoning-figure")
    enter(page, "Answer", "$2.00")
    wait_note(page, "reasoning", "not found in the reasoning chain")
    enter(page, "Answer", "$1.50")
    enter(page, "Reasoning chain", "   ")
    wait_note(page, "reasoning", "chain is empty")
    shot(page, screenshot, "lens_reasoning_empty_chain")
    assert not page.errors, page.errors
