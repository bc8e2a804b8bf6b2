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
    assert len(boxes) == 2 and all(box.max_length == TEXT_MAX_CHARS >= 500 * MAX_SCORED_TOKENS for box in boxes)
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


@pytest.fixture
def link(monkeypatch):
    """Open pages as if from a link with these query arguments."""
    def set_args(**query):
        args = {key: [value.encode()] for key, value in query.items()}
        monkeypatch.setattr(type(pn.state), "session_args", property(lambda self: args))
    return set_args


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "9", "hot", "<script>alert(1)</script>"])
def test_a_bad_temperature_in_a_lens_link_is_named(link, value):
    from explorer.views.token_lens import TokenEntropyLens

    link(temperature=value, text="")
    view = TokenEntropyLens()
    assert view.analysis.temperature == 1.0
    assert "The link's temperature" in view.jobs.message and "T = 1" in view.jobs.message
    assert "<script" not in view.jobs._alert.object


def test_a_good_temperature_in_a_lens_link_is_used(link):
    from explorer.views.token_lens import TokenEntropyLens

    link(temperature="1.35", text="")
    view = TokenEntropyLens()
    assert view.analysis.temperature == 1.35 and not view.jobs.message


def test_messages_show_names_as_text_not_markup():
    jobs = JobRunner()
    jobs.show_error(InputError("<img src=x onerror=alert(1)>.csv is empty."))
    assert "<img" not in jobs._alert.object and "&lt;img" in jobs._alert.object
    assert jobs.message == "<img src=x onerror=alert(1)>.csv is empty."   # the plain text, for tests and logs
    jobs.show_message("Loaded <b>3</b> questions")
    assert "<b>" not in jobs._alert.object
