"""Links that reproduce a view, and shares: every page's link settings against their parameters, a
page's whole state through a link and back, bad and malicious values, and the share store.

The served behaviour (the URL moving with the widgets, a link opened in a fresh browser, a share
link) is tested in tests/browser/test_sharing.py."""

from __future__ import annotations

import hashlib
import io
import json
import math
import types
from urllib.parse import parse_qsl, urlparse

import numpy as np
import pandas as pd
import param
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from explorer.analyses.conformal import ConformalAnalysis
from explorer.analyses.diversity import DiversityAnalysis
from explorer.analyses.temperature import TemperatureAnalysis
from explorer.analyses.token_lens import TokenLensAnalysis
from explorer.analyses.training import TrainingAnalysis
from explorer.data.classifier_outputs import outputs_from_arrays
from explorer.data.embeddings import validated
from explorer.data.shares import ShareStore
from explorer.data.training_runs import RUNS
from explorer.data.uploads import Upload
from explorer.errors import InputError
from explorer.views.links import (MAX_LINK_CHARS, PAGE_FIELDS, UPLOAD_SLOTS, PageLinks, apply_values, encode_value,
                                  link_query, page_report, parse_value, read_link, rejected_message)

SCRIPT = "<script>alert(1)</script>"
HOSTILE = [SCRIPT, "<img src=x onerror=alert(1)>", "a" * 100_000, "nan", "NaN", "inf", "-inf", "1e999", "",
           " ", "../../etc/passwd", "/etc/passwd", "~root", "javascript:alert(1)", "\x00", "1;DROP TABLE runs",
           "true; false", "0x10", "1_000", "١٢"]


def _outputs(n=120, k=4, seed=0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, k)) * 2
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return outputs_from_arrays(probs, rng.integers(0, k, n), name="toy")


def _embeddings(name="toy", n=30, seed=0):
    rng = np.random.default_rng(seed)
    return validated(name, rng.normal(size=(n, 4)), labels=[f"g{i % 3}" for i in range(n)])


def _training_page():
    """The training page over small hand-built runs and a logged run (as tests/test_training_view.py)."""
    from test_training_analysis import logged_run, representation_run

    from explorer.views.training import TrainingDynamics

    runs = {RUNS[0]: representation_run("t", 1.0), RUNS[1]: representation_run("s", 0.1, seed=1)}
    page = TrainingDynamics(analysis=TrainingAnalysis(runs=runs, logs=[logged_run()], bootstrap=200, clusters=3))
    page.jobs.wait()
    return page


@pytest.fixture
def training_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ENTROPY_EXPLORER_CACHE", str(tmp_path / "cache"))    # the page keeps its spectra there
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))                        # and its shares here


@pytest.fixture(scope="module")
def views(tmp_path_factory):
    """One real page component per page, outside a server (links are inactive there)."""
    from explorer.views.conformal import ConformalExplorer
    from explorer.views.diversity import DiversityExplorer
    from explorer.views.temperature import TemperatureSensitivity
    from explorer.views.token_lens import TokenEntropyLens

    db = tmp_path_factory.mktemp("runs") / "runs.duckdb"
    built = {"lens": TokenEntropyLens(analysis=TokenLensAnalysis(text="")),      # empty text: no model run
             "temperature": TemperatureSensitivity(analysis=TemperatureAnalysis(db_path=str(db))),
             "diversity": DiversityExplorer(analysis=DiversityAnalysis(dataset=_embeddings())),
             "conformal": ConformalExplorer(analysis=ConformalAnalysis(outputs=_outputs(), n_splits=20))}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ENTROPY_EXPLORER_CACHE", str(tmp_path_factory.mktemp("cache")))
        built["training"] = _training_page()
    for view in built.values():
        view.jobs.wait()
    return built


def _parameter(view, field):
    owner = view
    for part in field.path.split(".")[:-1]:
        owner = getattr(owner, part)
    return owner, owner.param[field.path.rsplit(".", 1)[-1]]


def _reset(view, page):
    for field in PAGE_FIELDS[page]:
        owner, parameter = _parameter(view, field)
        setattr(owner, parameter.name, parameter.default)


# ------------------------------------------------------------------------------------------- the fields
@pytest.mark.parametrize("page", list(PAGE_FIELDS))
def test_every_field_is_a_parameter_whose_default_and_choices_survive_a_link(views, page):
    view = views[page]
    keys = [field.key for field in PAGE_FIELDS[page]]
    assert len(keys) == len(set(keys)), "one query key per setting"
    assert not set(keys) & {"page", "share", "theme"}
    assert not any(view.links.active for view in views.values())     # no server: links do nothing
    for field in PAGE_FIELDS[page]:
        _owner, parameter = _parameter(view, field)
        if parameter.default is not None:
            assert parse_value(parameter, encode_value(parameter.default), field.pattern) == parameter.default
        for choice in getattr(parameter, "objects", None) or []:
            assert parse_value(parameter, encode_value(choice)) == choice


def test_the_issue_lists_are_in_the_links():
    wanted = {"lens": {"model_name", "prompt", "text", "mode", "decoding", "top_p", "min_p", "temperature",
                       "colour_by", "window"},
              "temperature": {"run_id", "measure", "question_index"},
              "diversity": {"source", "kernel", "sigma", "q", "t", "compare_with"},
              "conformal": {"source", "method", "alpha", "calibration_fraction", "seed", "class_conditional"},
              "training": {"source", "log_source", "measure", "sigma", "t", "q", "clusters", "seed", "bootstrap",
                           "level", "fraction", "epoch"}}
    wanted["lens"] |= {"lens_measure", "lens_position", "quadrant_entropy_bits", "quadrant_varentropy_bits2",
                       "branch_position", "branches_k", "branch_tokens", "second_model", "ead_threshold_bits",
                       "question", "chain", "answer", "split_by"}
    for page, names in wanted.items():
        assert names <= {f.path.rsplit(".", 1)[-1] for f in PAGE_FIELDS[page]}, page


def _valid_values(view, page):
    """A strategy for one valid value of every field of a page (drawn per field)."""
    draws = {}
    for field in PAGE_FIELDS[page]:
        _owner, p = _parameter(view, field)
        if field.uploads:
            draws[field] = st.sampled_from([o for o in p.objects if o != "upload"])
        elif isinstance(p, param.Selector):
            draws[field] = st.sampled_from(list(p.objects))
        elif isinstance(p, param.Boolean):
            draws[field] = st.booleans()
        elif isinstance(p, param.Number):
            low, high = p.bounds or p.softbounds or (None, None)
            low = -1e6 if low is None else low
            high = 1e6 if high is None else high
            if isinstance(p, param.Integer):
                draws[field] = st.integers(int(math.ceil(low)), int(math.floor(high)))
            else:
                draws[field] = st.floats(low, high, allow_nan=False, allow_infinity=False,
                                         exclude_min=not p.inclusive_bounds[0], exclude_max=not p.inclusive_bounds[1])
        elif field.pattern is not None:
            draws[field] = st.from_regex(field.pattern, fullmatch=True).filter(lambda s: len(s) <= MAX_LINK_CHARS)
        else:
            draws[field] = st.text(max_size=300)
    return st.fixed_dictionaries(draws)


def _copied(parameter):
    if isinstance(parameter, param.Selector):
        return param.Selector(objects=list(parameter.objects), default=parameter.default)
    if isinstance(parameter, param.Integer):
        return param.Integer(default=parameter.default, bounds=parameter.bounds)
    return param.String(default=parameter.default)


def _stand_in(view, page):
    """A fresh copy of a page's link settings: its analysis class at defaults and its own settings,
    without the page's watchers (no jobs start while hypothesis draws)."""
    own = {f.path: _copied(view.param[f.path]) for f in PAGE_FIELDS[page] if "." not in f.path}
    stand_in = type(f"{page}_settings", (param.Parameterized,), own)()
    stand_in.analysis = type(view.analysis)()
    return stand_in


@pytest.mark.parametrize("page", list(PAGE_FIELDS))
def test_a_page_state_goes_through_its_link_and_back(views, page):
    """Any valid settings -> the link's query -> a page at its defaults reading that query: the same settings."""
    view = _stand_in(views[page], page)

    @settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(_valid_values(view, page))
    def check(values):
        _reset(view, page)
        assert not apply_values(view, values)
        query = link_query(view, PAGE_FIELDS[page])
        assert all(len(text) <= MAX_LINK_CHARS for text in query.values())
        _reset(view, page)
        parsed, rejected = read_link(view, PAGE_FIELDS[page], query)
        assert rejected == {}
        apply_values(view, parsed)
        for field, value in values.items():
            owner, parameter = _parameter(view, field)
            assert getattr(owner, parameter.name) == value, field.key
    check()


def test_the_temperature_page_link_to_the_lens_is_read_by_the_lens(views):
    from explorer.views.temperature import lens_url

    query = dict(parse_qsl(urlparse(lens_url("Why? <b>", "Because & so", 1.35)).query))
    assert query.pop("page") == "lens"
    values, rejected = read_link(views["lens"], PAGE_FIELDS["lens"], query)
    assert rejected == {}
    assert {f.key: v for f, v in values.items()} == {"prompt": "Why? <b>", "text": "Because & so", "temperature": 1.35}


# ------------------------------------------------------------------------------------------- training, lens deeper
TRAINING_LINK = {"measure": "test_accuracy", "sigma": 0.0, "t": 2.5, "q": math.inf, "clusters": 4, "seed": 3,
                 "epoch": 1, "bootstrap": 300, "level": 0.9, "fraction": 0.5}


def _checkpoints(count=4, n=12, seed=0) -> dict[str, bytes]:
    gen = np.random.default_rng(seed)
    files = {}
    for epoch in range(count):
        buffer = io.BytesIO()
        np.save(buffer, gen.normal(size=(n, 3)))
        files[f"epoch_{epoch}.npy"] = buffer.getvalue()
    return files


def test_a_training_link_gives_a_fresh_page_the_same_view(training_cache):
    """Non-default settings on the page -> its link -> a fresh page reading it: the same settings, the same numbers."""
    page = _training_page()
    page.measure = "test_accuracy"
    page.analysis.param.update(**{k: v for k, v in TRAINING_LINK.items() if k != "measure"})
    page.jobs.wait()
    query = link_query(page, PAGE_FIELDS["training"])
    assert query == {key: encode_value(value) for key, value in TRAINING_LINK.items()}
    fresh = _training_page()
    assert fresh.analysis.epoch == 3 and fresh.analysis.clusters == 3
    values, rejected = read_link(fresh, PAGE_FIELDS["training"], query)
    assert rejected == {} and not apply_values(fresh, values)
    fresh.jobs.wait()
    assert {"measure": fresh.measure, **{k: getattr(fresh.analysis, k) for k in TRAINING_LINK if k != "measure"}} \
        == TRAINING_LINK
    assert fresh._figures["measure"].title.text == "Test accuracy against epoch" and not fresh.jobs.message
    with page.analysis.reading(), fresh.analysis.reading():
        for result in ("measures", "spectrum_at_epoch", "law_table", "forecast_summary"):
            pd.testing.assert_frame_equal(getattr(fresh.analysis, result)(), getattr(page.analysis, result)())


def test_a_bad_training_link_is_refused_setting_by_setting(views):
    raw = {"sigma": "-1", "t": "20", "q": "2.5", "clusters": "1", "epoch": "-3", "bootstrap": "5", "level": "nan",
           "fraction": "0.33", "measure": SCRIPT, "source": "upload", "log": "upload", "layer": "hidden 1"}
    values, rejected = read_link(views["training"], PAGE_FIELDS["training"], raw)
    assert values == {} and set(rejected) == set(raw)
    assert rejected["layer"] == "not a setting of this page"          # its choices come with the runs: not linked
    assert rejected["sigma"].startswith("out of range") and rejected["level"] == "not a finite number"
    assert rejected["fraction"] == rejected["measure"] == "not one of the choices" and "Share" in rejected["log"]
    message = rejected_message(rejected)
    assert "sigma (out of range" in message and SCRIPT not in message and "hidden 1" not in message


def test_a_linked_epoch_applies_to_the_first_runs_the_page_loads(training_cache):
    """Loading runs moves the epoch to their last checkpoint: the first runs loaded keep a link's epoch instead."""
    page = _training_page()
    page.links.applied = {"epoch": 1}          # what PageLinks records of a link in a served session
    page.analysis.epoch = 1
    page._upload.value = _checkpoints()
    page.jobs.wait()
    assert page.source == "upload" and page.analysis.epoch == 1 and page._epoch.value == 1 and not page.links.message
    page._upload.value = _checkpoints(seed=1)  # later runs open at their last checkpoint
    page.jobs.wait()
    assert page.analysis.epoch == 3
    other = _training_page()
    other.links.applied = {"epoch": 9}
    other._upload.value = _checkpoints()
    other.jobs.wait()
    assert other.analysis.epoch == 3 and "epoch has no checkpoint" in other.links.message


def test_a_training_share_restores_the_uploaded_checkpoints_and_log(training_cache):
    from test_training_analysis import logged_run

    page = _training_page()
    page._upload.value = _checkpoints()
    page._log_upload.value = {"mine.csv": logged_run("mine", n=30, a=0.4, b=1.5).frame.to_csv(index=False).encode()}
    page.jobs.wait()
    page.analysis.t = 2.0
    page.jobs.wait()
    assert page.source == page.log_source == "upload" and [run.name for run in page.analysis.logs] == ["mine"]
    shared = ShareStore().load(page.links.share())
    assert set(shared.uploads) == {"source", "log"} and shared.fields["t"] == "2.0"
    assert "source" not in shared.fields and "log" not in shared.fields
    fresh = _training_page()
    values, rejected = read_link(fresh, PAGE_FIELDS["training"], shared.fields, frozenset(shared.uploads))
    assert not rejected and not apply_values(fresh, values)
    for key, files in shared.uploads.items():
        UPLOAD_SLOTS["training"][key].restore(fresh, files)
    fresh.jobs.wait()
    assert fresh.source == fresh.log_source == "upload" and fresh.analysis.t == 2.0 and not fresh.jobs.message
    with page.analysis.reading(), fresh.analysis.reading():
        pd.testing.assert_frame_equal(fresh.analysis.measures(), page.analysis.measures())
        pd.testing.assert_frame_equal(fresh.analysis.law_table(), page.analysis.law_table())


def test_the_training_page_report_shows_its_measure_and_the_law_fit(views):
    page = views["training"]
    page.measure = "test_accuracy"
    text = page_report(page, "training")
    with page.analysis.reading():
        fit = page.analysis.law_table().iloc[0]
    assert "Training dynamics" in text and "Test accuracy against epoch" in text and "Nothing to report" not in text
    assert f"interval {fit.ceiling_low:.4g} to {fit.ceiling_high:.4g}" in text and "Forecast per run" in text


LENS_LINK = {"lens_measure": "kl_to_final", "lens_position": 5, "quadrant_entropy_bits": 2.5,
             "quadrant_varentropy_bits2": 7.0, "branch_position": 3, "branches_k": 4, "branch_tokens": 12,
             "second_model": "HuggingFaceTB/SmolLM2-360M-Instruct", "ead_threshold_bits": 1.5,
             "question": "Why <b>?", "chain": "First we add.\nThen 40 + 2 = 42.", "answer": "42", "split_by": "sentences"}


def test_a_lens_link_carries_the_deeper_settings(views):
    from explorer.views.token_lens import TokenEntropyLens

    page = TokenEntropyLens(analysis=TokenLensAnalysis(text=""))           # empty text: no model run
    page.analysis.param.update(**LENS_LINK)
    query = link_query(page, PAGE_FIELDS["lens"])
    assert {key: query[key] for key in LENS_LINK} == {key: encode_value(value) for key, value in LENS_LINK.items()}
    assert "steps" not in query                    # the page fills them from the chain's split
    fresh = TokenEntropyLens(analysis=TokenLensAnalysis(text=""))
    values, rejected = read_link(fresh, PAGE_FIELDS["lens"], query)
    assert rejected == {} and not apply_values(fresh, values)
    assert {key: getattr(fresh.analysis, key) for key in LENS_LINK} == LENS_LINK
    assert fresh.analysis.reasoning_steps() == page.analysis.reasoning_steps() == ["First we add.", "Then 40 + 2 ="]
    bad = {"second_model": "/etc/passwd", "lens_position": "-1", "ead_threshold_bits": "25", "lens_measure": "bogus",
           "branches_k": "2.5", "split_by": SCRIPT}
    values, rejected = read_link(fresh, PAGE_FIELDS["lens"], bad)
    assert values == {} and set(rejected) == set(bad) and rejected["second_model"] == "not a valid name"


# ------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("page", list(PAGE_FIELDS))
def test_hostile_values_are_refused_or_kept_as_plain_text(views, page):
    view = views[page]
    for field in PAGE_FIELDS[page]:
        _owner, parameter = _parameter(view, field)
        for raw in HOSTILE:
            values, rejected = read_link(view, PAGE_FIELDS[page], {field.key: raw})
            if field in values:      # only text accepts these, verbatim (pages escape what they show), or a choice
                if isinstance(parameter, param.Selector):
                    assert values[field] in parameter.objects                      # "", "inf", "1e999" = inf
                    assert encode_value(values[field]) == raw or float(raw) == values[field]
                else:
                    assert isinstance(parameter, param.String) and values[field] == raw and len(raw) <= MAX_LINK_CHARS
                    assert field.pattern is None or field.pattern.fullmatch(raw)
            else:
                assert field.key in rejected and "<" not in rejected[field.key] and len(rejected[field.key]) < 200


def test_numbers_out_of_range_nan_and_infinite_are_refused():
    alpha = ConformalAnalysis.param.alpha
    for raw, reason in (("0.9", "out of range"), ("0.001", "out of range"), ("nan", "finite"), ("inf", "finite"),
                        ("-inf", "finite"), ("1e999", "finite"), ("abc", "not a number"), ("0.1.2", "not a number")):
        with pytest.raises(ValueError, match=reason):
            parse_value(alpha, raw)
    assert parse_value(alpha, "0.25") == 0.25 and parse_value(alpha, " 0.5 ") == 0.5
    seed = ConformalAnalysis.param.seed
    for raw in ("1.5", "-1", "1e3", "99999999999999999999", ""):
        with pytest.raises(ValueError):
            parse_value(seed, raw)
    top_p = TokenLensAnalysis.param.top_p      # soft bounds only: a link keeps to them too
    with pytest.raises(ValueError, match="out of range"):
        parse_value(top_p, "5")
    q = DiversityAnalysis.param.q               # a selector holding infinity: "inf" is one of its choices
    assert parse_value(q, "inf") == math.inf and parse_value(q, "2") == 2.0 and parse_value(q, "2.0") == 2.0
    with pytest.raises(ValueError, match="choices"):
        parse_value(q, "2.5")


def test_names_in_links_are_names_never_paths():
    field = next(f for f in PAGE_FIELDS["lens"] if f.key == "model")
    parameter = TokenLensAnalysis.param.model_name
    for good in ("SmolLM2-135M-Instruct", "HuggingFaceTB/SmolLM2-360M-Instruct", "gpt2", "org/model.v1_2"):
        assert parse_value(parameter, good, field.pattern) == good
    for bad in ("/etc", "~/models", "../x", "./x", "a/b/c", "a b", SCRIPT, "org/../x", ".hidden"):
        with pytest.raises(ValueError, match="name"):
            parse_value(parameter, bad, field.pattern)


def test_uploads_cannot_travel_in_a_plain_link(views):
    view = views["diversity"]
    values, rejected = read_link(view, PAGE_FIELDS["diversity"], {"source": "upload", "compare": "upload"})
    assert not values and set(rejected) == {"source", "compare"} and "Share" in rejected["source"]
    values, rejected = read_link(view, PAGE_FIELDS["diversity"], {"source": "upload"}, frozenset({"source"}))
    assert not values and not rejected        # a share's files stand for it: its drop zone restores them


def test_the_message_names_settings_never_their_values():
    rejected = {"alpha": "not a number", SCRIPT * 3: "not a setting of this page",
                **{f"k{i}": "not a setting of this page" for i in range(20)}}
    message = rejected_message(rejected)
    assert "alpha (not a number)" in message and "and 14 more" in message
    assert SCRIPT * 3 not in message and len(message) < 1000
    links = PageLinks(types.SimpleNamespace(analysis=ConformalAnalysis(), source="digits", upload_kind="auto",
                                            example_filter="all"), "conformal")
    links.message = message
    assert "<script>" not in links._pane.object and "&lt;script&gt;" in links._pane.object
    links.share_url = 'http://h/?page=conformal&share=0123456789abcdef"><script>'
    assert "<script>" not in links._pane.object


def test_an_unknown_page_in_the_url_is_shown_as_text():
    from explorer.views.app import build_page

    alert = build_page("<img src=x onerror=alert(1)>" + "x" * 1000)
    assert "<img" not in alert.object and len(alert.object) < 200


# ------------------------------------------------------------------------------------------- shares
def test_a_share_is_content_addressed_json_and_the_files_bytes(tmp_path):
    store = ShareStore(tmp_path / "shares")
    upload = Upload("emb.npy", b"\x93NUMPY" + bytes(range(256)))
    share_id = store.save("diversity", {"kernel": "rbf", "q": "2.0"}, {"source": [upload]})
    assert len(share_id) == 16 and all(c in "0123456789abcdef" for c in share_id)
    assert store.save("diversity", {"q": "2.0", "kernel": "rbf"}, {"source": [upload]}) == share_id   # same inputs
    assert store.save("diversity", {"kernel": "rbf", "q": "2.0"}, {"source": [Upload("emb.npy", b"other")]}) != share_id
    assert store.save("conformal", {"kernel": "rbf", "q": "2.0"}, {"source": [upload]}) != share_id
    record = json.loads((tmp_path / "shares" / f"{share_id}.json").read_text())
    digest = hashlib.sha256(upload.data).hexdigest()
    assert record["uploads"] == {"source": [{"name": "emb.npy", "bytes": len(upload.data), "sha256": digest}]}
    assert (tmp_path / "shares" / "blobs" / digest).read_bytes() == upload.data
    assert (tmp_path / "shares").stat().st_mode & 0o077 == 0                 # private to the server's user
    shared = store.load(share_id)
    assert (shared.page, shared.fields, shared.uploads) == ("diversity", {"kernel": "rbf", "q": "2.0"},
                                                            {"source": [upload]})
    assert list(store.list()["share"]).count(share_id) == 1


def test_a_deleted_or_unknown_share_says_so_and_keeps_files_other_shares_use(tmp_path):
    store = ShareStore(tmp_path)
    upload = Upload("q.csv", b"question\nA?\n")
    first = store.save("temperature", {"run": "abc"}, {"questions": [upload]})
    second = store.save("temperature", {"run": "def"}, {"questions": [upload]})
    store.delete(first)
    with pytest.raises(InputError, match="does not exist"):
        store.load(first)
    with pytest.raises(InputError, match="does not exist"):
        store.delete(first)
    assert store.load(second).uploads["questions"] == [upload]     # the shared file stays for the other share
    store.delete(second)
    assert not list((tmp_path / "blobs").iterdir())
    for bad in ("../../etc/passwd", "0123", "0123456789ABCDEF", SCRIPT, "0123456789abcdef/../x"):
        with pytest.raises(InputError, match="malformed"):
            store.load(bad)


def test_a_damaged_share_is_refused(tmp_path):
    store = ShareStore(tmp_path)
    share_id = store.save("diversity", {}, {"source": [Upload("a.npy", b"12345")]})
    blob = next((tmp_path / "blobs").iterdir())
    blob.write_bytes(b"54321")
    with pytest.raises(InputError, match="damaged"):
        store.load(share_id)
    blob.unlink()
    with pytest.raises(InputError, match="missing"):
        store.load(share_id)
    (tmp_path / f"{share_id}.json").write_text("{not json")
    with pytest.raises(InputError, match="damaged"):
        store.load(share_id)


def test_a_diversity_share_with_an_upload_restores_the_same_view(views, tmp_path, monkeypatch):
    """Share a page studying an uploaded file, then restore the share into a fresh page: same data,
    same settings, same Vendi."""
    from explorer.views.diversity import DiversityExplorer

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    rng = np.random.default_rng(3)
    buffer = io.BytesIO()
    np.save(buffer, rng.normal(size=(40, 5)))
    page = views["diversity"]
    page._upload.value = {"mine.npy": buffer.getvalue()}
    page.jobs.wait()
    page.analysis.param.update(kernel="rbf", q=2.0)
    page.jobs.wait()
    assert page.source == "upload" and page.analysis.dataset.name.startswith("mine.npy")
    share_id = page.links.share()
    shared = ShareStore().load(share_id)
    assert shared.fields["kernel"] == "rbf" and shared.fields["q"] == "2.0" and "source" not in shared.fields
    fresh = DiversityExplorer(analysis=DiversityAnalysis(dataset=_embeddings("other", seed=9)))
    fresh.jobs.wait()
    values, rejected = read_link(fresh, PAGE_FIELDS["diversity"], shared.fields, frozenset(shared.uploads))
    assert not rejected and not apply_values(fresh, values)
    UPLOAD_SLOTS["diversity"]["source"].restore(fresh, shared.uploads["source"])
    fresh.jobs.wait()
    assert fresh.source == "upload" and fresh.analysis.dataset.name == page.analysis.dataset.name
    with fresh.analysis.reading(), page.analysis.reading():
        assert fresh.analysis.scores()["vendi"] == pytest.approx(page.analysis.scores()["vendi"], rel=1e-12)


def test_a_page_report_reads_cached_results_only(views):
    page = views["conformal"]
    page.jobs.wait()
    text = page_report(page, "conformal")
    assert "Conformal sets" in text and "coverage" in text and "Nothing to report yet" not in text
    fresh = ConformalAnalysis(outputs=_outputs(seed=4))
    text = page_report(types.SimpleNamespace(analysis=fresh), "conformal")
    assert "Nothing to report yet" in text          # and no long result computed on the caller's thread:
    assert not [name for name in fresh.computations if ConformalAnalysis.result_specs()[name].heavy]
    assert "Open a run first" in page_report(views["temperature"], "temperature")


def test_a_share_holds_a_text_longer_than_a_link():
    from explorer.data.shares import MAX_FIELD_CHARS
    from explorer.views.links import MAX_LINK_CHARS, PAGE_FIELDS, read_link

    view = types.SimpleNamespace(analysis=TokenLensAnalysis())
    text = "entropy " * (MAX_LINK_CHARS // 4)
    values, rejected = read_link(view, PAGE_FIELDS["lens"], {"text": text})
    assert "text" in rejected and "use Share" in rejected["text"] and not values
    values, rejected = read_link(view, PAGE_FIELDS["lens"], {"text": text}, limit=MAX_FIELD_CHARS)
    assert not rejected and [v for f, v in values.items() if f.key == "text"] == [text]
