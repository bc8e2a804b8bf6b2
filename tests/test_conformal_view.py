"""The conformal page without a browser: a settings change patches the Bokeh sources it owns in place
(no new Bokeh model, no new source, nothing refilled that did not change), from cached results only."""

from __future__ import annotations

import numpy as np
import panel as pn
import pytest
import torch
from bokeh.document import Document
from bokeh.document.events import ColumnDataChangedEvent, ModelChangedEvent

from explorer.analyses.conformal import ConformalAnalysis
from explorer.data.classifier_outputs import outputs_from_arrays
from explorer.views.conformal import SOURCES, ConformalExplorer


def synthetic_outputs(n=600, k=6, seed=0, images=False):
    generator = torch.Generator().manual_seed(seed)
    probs = torch.softmax(2 * torch.randn(n, k, generator=generator, dtype=torch.float64), 1)
    labels = torch.multinomial(probs, 1, generator=generator).squeeze(1)
    pictures = np.random.default_rng(seed).uniform(size=(n, 8, 8)) if images else None
    return outputs_from_arrays(probs.numpy(), labels.numpy(), class_names=[f"c{i}" for i in range(k)], name="synthetic",
                               images=pictures)


@pytest.fixture(scope="module")
def outputs():
    return synthetic_outputs()


def served(view):
    """The page rendered into a Bokeh document, as the server does; returns (document, changes seen)."""
    doc = Document()
    doc.add_root(pn.panel(view).get_root(doc))
    changes = []
    doc.on_change(lambda event: changes.append(event))
    return doc, changes


def data(view, name):
    return {key: list(value) for key, value in view._src[name].data.items()}


def changed_sources(changes) -> set[str]:
    """Names of the page's sources whose data the server sent again."""
    names = set()
    for event in changes:
        if isinstance(event, (ColumnDataChangedEvent, ModelChangedEvent)) and getattr(event, "attr", "data") == "data":
            name = getattr(event.model, "name", None) or ""
            if name.startswith("cp-"):
                names.add(name.removeprefix("cp-"))
    return names


def test_an_alpha_move_patches_the_sources_in_place(outputs):
    view = ConformalExplorer(analysis=ConformalAnalysis(outputs=outputs))
    view.jobs.wait()  # the page computes its sets in its job runner
    doc, changes = served(view)
    a = view.analysis
    models, figures, sources = set(doc.models), dict(view._figures), dict(view._src)
    curve = view._src["alpha_curve"].data
    a.alpha = 0.3
    view.jobs.wait()
    s = a.summary()
    assert "target ≥ 70.0%" in view._summary.object
    assert data(view, "current") == {"alpha": [0.3], "target": [pytest.approx(0.7)], "coverage": [s["coverage"]],
                                     "mean_size": [s["mean_size"]], "cip_bits": [s["cip_bits"]]}
    assert data(view, "sizes")["rows"] == list(a.size_table()["rows"])
    assert data(view, "classes")["coverage"] == pytest.approx(list(a.class_table()["coverage"]))
    sizes, hit = a.test_sizes_and_coverage()
    assert data(view, "scatter")["size"] == sizes.tolist()
    assert data(view, "scatter")["status"] == ["covered" if h else "missed" for h in hit.tolist()]
    assert view._spans["size_target"].location == pytest.approx(0.7)
    assert f"mean {a.split_coverage().mean():.3f}" in view._figures["split_coverage"].title.text
    assert len(view._table.value) == s["n_test"]
    # nothing rebuilt: the same figures, sources and Bokeh models; the alpha curves were not resent
    assert view._figures == figures and view._src == sources and set(doc.models) == models
    assert view._src["alpha_curve"].data is curve
    sent = changed_sources(changes)
    assert {"current", "sizes", "classes", "scatter", "split_hist"} <= sent and "alpha_curve" not in sent


def test_a_new_split_refills_the_alpha_curves(outputs):
    view = ConformalExplorer(analysis=ConformalAnalysis(outputs=outputs))
    view.jobs.wait()
    before = data(view, "alpha_curve")
    view.analysis.seed = 3
    view.jobs.wait()
    after = data(view, "alpha_curve")
    assert after["coverage"] == pytest.approx(list(view.analysis.alpha_curve()["coverage"]))
    assert after != before


def test_one_alpha_move_computes_each_result_once(outputs):
    view = ConformalExplorer(analysis=ConformalAnalysis(outputs=outputs, method="aps"))
    view.jobs.wait()
    before = dict(view.analysis.computations)
    view.analysis.alpha = 0.2
    view.jobs.wait()
    moved = {name: count - before.get(name, 0) for name, count in view.analysis.computations.items()
             if count > before.get(name, 0)}
    assert max(moved.values()) == 1, moved                     # nothing computed twice
    assert moved.get("summary") == 1 and moved.get("test_sizes_and_coverage") == 1
    assert "ranked" not in moved and "alpha_curve" not in moved  # alpha-independent results are reused


def test_a_move_shows_cached_parts_at_once_and_the_rest_after_the_job(outputs):
    view = ConformalExplorer(analysis=ConformalAnalysis(outputs=outputs))
    view.jobs.wait()
    a = view.analysis
    title = view._figures["split_coverage"].title.text
    a.param.update(alpha=0.25)           # the page's job computes split coverage off the loop ...
    assert data(view, "current")["alpha"] == [0.25]   # ... while the markers moved at once
    view.jobs.wait()
    assert view._figures["split_coverage"].title.text != title


def test_the_example_browser_follows_the_selection():
    outputs = synthetic_outputs(n=200, images=True)
    view = ConformalExplorer(analysis=ConformalAnalysis(outputs=outputs))
    view.jobs.wait()
    listed = view._table.value
    view.selected_row = int(listed["row"].iloc[3])
    row = view.selected_row
    bars = data(view, "example_bars")
    assert bars["probability"] == pytest.approx(outputs.probs[row].tolist())
    true = int(outputs.labels[row])
    assert bars["status"][true].startswith("true label")
    assert f"Row {row}</b>" in view._example.object
    assert np.array_equal(view._src["example_image"].data["image"][0], np.flipud(outputs.images[row]))
    view.example_filter = "empty"
    if not (view.analysis.examples()["size"] == 0).any():
        assert data(view, "example_bars")["label"] == [] and "No test row" in view._example.object


def test_an_impossible_setting_is_explained_in_the_plots():
    view = ConformalExplorer(analysis=ConformalAnalysis(outputs=synthetic_outputs(n=4)))
    view.jobs.wait()
    view.analysis.param.update(method="raps", raps_tuning=True)   # 2 calibration rows: no tuning row
    view.jobs.wait()
    assert "RAPS tuning needs more calibration rows" in view._summary.object
    assert "RAPS tuning" in view._figures["coverage_curve"].title.text
    assert all(not column for column in view._src["alpha_curve"].data.values())
    view.analysis.raps_tuning = False
    view.jobs.wait()
    assert len(view._src["alpha_curve"].data["alpha"]) > 0 and "RAPS tuning" not in view._summary.object


def test_every_source_is_declared():
    view = ConformalExplorer(analysis=ConformalAnalysis())
    assert {name: tuple(source.data) for name, source in view._src.items()} == SOURCES
