"""The diversity page without a browser: a q/t move patches the plots' data in place from the caches
(nothing rebuilt, nothing computed on the event loop), B beside A, rasterised projections for large n."""

from __future__ import annotations

import math

import holoviews as hv
import numpy as np
import pytest

from explorer.analyses.diversity import DiversityAnalysis
from explorer.data.embeddings import validated
from explorer.views.diversity import DiversityExplorer


def clusters(n_per=30, seed=0, spread=0.3):
    gen = np.random.default_rng(seed)
    centres = gen.normal(size=(3, 6)) * 3
    X = centres[np.repeat(np.arange(3), n_per)] + gen.normal(size=(3 * n_per, 6)) * spread
    return validated(f"clusters {seed}", X, np.repeat(["a", "b", "c"], n_per), [f"sample {i}" for i in range(3 * n_per)])


@pytest.fixture
def view():
    page = DiversityExplorer(analysis=DiversityAnalysis(dataset=clusters()))
    page.jobs.wait()  # the page computes its spectra in its job runner when it opens
    return page


def data(view, name):
    return {key: list(value) for key, value in view._src[name].data.items()}


def test_q_and_t_moves_patch_the_sources_in_place(view):
    a = view.analysis
    assert view._shown and data(view, "marker") == {"q": [1.0], "vendi": [pytest.approx(a.spectrum().vendi(1.0))]}
    figures, sources = dict(view._figures), dict(view._src)
    projection, spectrum = view._projection.object, data(view, "spectrum_a")
    a.q = 3.0
    assert data(view, "marker") == {"q": [3.0], "vendi": [pytest.approx(a.spectrum().vendi(3.0))]}
    assert data(view, "subsample")["mean"] == pytest.approx(list(a.subsample_curve()["mean"]))
    assert data(view, "groups")["vendi"] == pytest.approx(list(a.group_scores()["vendi"]))
    assert "Vendi (q = 3)" in view._cards.object
    a.q = math.inf
    assert data(view, "marker")["q"] == [20.0] and "q = ∞" in view._cards.object
    a.t = 4.0
    assert view._t_span.location == 4.0 and "t = 4" in view._cards.object
    assert view._figures == figures and view._src == sources and view._projection.object is projection
    assert data(view, "spectrum_a") == spectrum


def test_a_move_before_the_job_ends_computes_nothing(view):
    a = view.analysis
    view._quiet_depth += 1  # as if a job were queued: no background job starts in this test
    a.kernel = "rbf"
    view._quiet_depth -= 1
    cached = dict(a.computations)
    a.q = 2.0
    assert a.computations == cached and not a.is_computed()  # no spectrum computed on the event loop
    assert "computing" in view._cards.object
    a.compute()
    view.results += 1
    assert data(view, "marker")["vendi"] == [pytest.approx(a.spectrum().vendi(2.0))]


def test_comparison_fills_b_and_its_cards(view):
    view.other = DiversityAnalysis(dataset=clusters(seed=2, spread=3.0))
    view._sync_other()
    view.other.compute()
    view.results += 1
    assert len(data(view, "vendi_b")["vendi"]) == 57 and len(data(view, "marker")["q"]) == 2
    assert "dv-card-b-vendi" in view._cards.object and "clusters 2" in view._cards.object
    assert all(view._figures[name].legend[0].visible for name in ("vendi", "spectrum", "dse"))
    view.analysis.q = 2.0
    assert data(view, "marker")["vendi"][1] == pytest.approx(view.other.spectrum().vendi(2.0))
    view.other = None
    view.results += 1
    assert data(view, "vendi_b")["vendi"] == [] and not view._figures["vendi"].legend[0].visible


def test_projection_has_hover_text_for_small_n_and_is_rasterised_above(view):
    points = view._projection.object
    assert isinstance(points, hv.Points) and "text" in [d.name for d in points.vdims]
    assert len(points) == 90 and points.dframe()["text"].iloc[5] == "sample 5"
    view.hover_points = 50
    raster = view._projection.object
    assert isinstance(raster, hv.DynamicMap)
    image = raster[()]
    assert isinstance(image, hv.ImageStack) and sorted(d.name for d in image.vdims) == ["a", "b", "c"]
    counts = image.data.to_array().values if hasattr(image.data, "data_vars") else image.data.values
    assert float(np.nansum(counts)) == pytest.approx(90)  # every point, none subsampled away


def test_q_and_t_set_together_patch_both(view):
    """A link sets q and t in one update: the watcher gets two events at once."""
    a = view.analysis
    a.param.update(q=2.0, t=3.0)
    assert data(view, "marker")["vendi"] == [pytest.approx(a.spectrum().vendi(2.0))]
    assert view._t_span.location == 3.0
