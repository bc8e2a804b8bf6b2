"""What a user gives a page is never changed or dropped silently: an empty upload is answered on every
page that takes uploads, the lens's text boxes never cut a paste (its length limit comes from the
model and is stated), a bad temperature in a lens link is named, and messages show file names and
typed values as text, never as markup."""

from __future__ import annotations

import panel as pn
import pytest

from explorer.analyses.token_lens import TokenLensAnalysis
from explorer.errors import InputError
from explorer.models.language_model import MAX_SCORED_TOKENS
from explorer.views.jobs import JobRunner


def _widgets(view, kind):
    return [w for w in view.__panel__().select(kind)]


@pytest.mark.parametrize("make, upload, load", [
    ("explorer.views.diversity:DiversityExplorer", "_upload", None),
    ("explorer.views.conformal:ConformalExplorer", "_upload", "_load_upload"),
    ("explorer.views.temperature:TemperatureSensitivity", "_upload", None),
])
@pytest.mark.parametrize("content", [b"", ""])
def test_an_empty_upload_is_answered(make, upload, load, content):
    from importlib import import_module

    module, name = make.split(":")
    view = getattr(import_module(module), name)()
    view.jobs.wait()
    getattr(view, upload).value = {"empty.csv": content}     # what the drop zone holds after an empty file
    if load:
        getattr(view, load)(None)
    view.jobs.wait()
    assert "empty.csv is empty" in view.jobs.message


def test_the_lens_text_boxes_never_cut_a_paste_and_state_the_limit():
    from explorer.views.token_lens import TEXT_MAX_CHARS, TokenEntropyLens

    view = TokenEntropyLens(analysis=TokenLensAnalysis(text=""))   # nothing to score on open
    boxes = _widgets(view, pn.widgets.TextAreaInput)
    assert len(boxes) == 4 and all(box.max_length == TEXT_MAX_CHARS >= 500 * MAX_SCORED_TOKENS for box in boxes)   # + chain, steps
    text_box = next(box for box in boxes if box.name.startswith("Text to score"))
    assert f"{MAX_SCORED_TOKENS:,} tokens" in text_box.name
    text_box.value = "word " * 20_000                 # a 100,000-character paste
    assert view.analysis.text == "word " * 20_000


@pytest.mark.model
def test_a_text_over_the_token_limit_is_refused_with_a_message():
    from explorer.views.token_lens import TokenEntropyLens

    view = TokenEntropyLens(analysis=TokenLensAnalysis(text="word " * 20_000, mode="score"))
    view.jobs.wait()
    assert "tokens long" in view.jobs.message and f"at most {MAX_SCORED_TOKENS}" in view.jobs.message


# A bad value in a link (temperature=nan, markup, ...) is named by the page's links: tests/test_links.py.


def test_messages_show_names_as_text_not_markup():
    jobs = JobRunner()
    jobs.show_error(InputError("<img src=x onerror=alert(1)>.csv is empty."))
    assert "<img" not in jobs._alert.object and "&lt;img" in jobs._alert.object
    assert jobs.message == "<img src=x onerror=alert(1)>.csv is empty."   # the plain text, for tests and logs
    jobs.show_message("Loaded <b>3</b> questions")
    assert "<b>" not in jobs._alert.object
