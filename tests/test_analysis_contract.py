"""The one analysis contract, checked on a toy analysis and on every page's analysis (like
scikit-learn's check_estimator): constructing stores settings only; a derived result is cached and
recomputed exactly when a setting it depends on changes; a long result is NotComputed inside
``reading()`` until ``compute``; a setting changed while ``compute`` runs never leaves a stale result."""

from __future__ import annotations

import dataclasses
import math
import threading

import numpy as np
import pandas as pd
import param
import pytest
import torch

from explorer.analyses.base import Analysis, NotComputed, result
from explorer.analyses.conformal import ConformalAnalysis
from explorer.analyses.diversity import DiversityAnalysis
from explorer.analyses.runs import RunResults
from explorer.analyses.temperature import TemperatureAnalysis
from explorer.analyses.token_lens import TokenLensAnalysis
from explorer.analyses.training import TrainingAnalysis
from explorer.data.classifier_outputs import outputs_from_arrays
from explorer.data.embeddings import validated
from explorer.data.store import ResultsStore
from explorer.data.training_logs import LoggedRun, RepresentationRun
from explorer.progress import Progress


class Toy(Analysis):
    data = param.List(default=[1.0, 2.0, 3.0])
    scale = param.Number(default=1.0)
    shift = param.Number(default=0.0)
    label = param.String(default="x")

    @result("data", "scale", heavy=True)
    def scaled(self, progress=None):
        if progress is not None:
            progress.update(0.5, 1, "scaling")
        return [self.scale * v for v in self.data]

    @result("scaled", "shift")
    def shifted(self):
        return [v + self.shift for v in self.scaled()]

    @result("data")
    def power(self, k: int):
        return [v ** k for v in self.data]

    def compute_steps(self):
        return [("scale", self.scaled), ("shift", lambda progress: self.shifted())]


def test_toy_results_follow_their_settings():
    toy = Toy()
    assert not toy.computations and not toy.is_computed()
    with pytest.raises(NotComputed), toy.reading():
        toy.shifted()
    toy.compute()
    assert toy.is_computed() and toy.computations == {"scaled": 1, "shifted": 1}
    with toy.reading():
        assert toy.shifted() == [1.0, 2.0, 3.0]
    toy.shift = 1.0                           # shifted depends on it, scaled does not
    with toy.reading():
        assert toy.shifted() == [2.0, 3.0, 4.0]
    assert toy.computations == {"scaled": 1, "shifted": 2}
    toy.label = "y"                           # nothing depends on it
    assert toy.is_cached("scaled") and toy.is_cached("shifted")
    toy.scale = 2.0                           # through scaled, shifted depends on it too
    assert not toy.is_cached("scaled") and not toy.is_cached("shifted")
    assert toy.power(2) == [1.0, 4.0, 9.0] and toy.power(2) is toy.power(2) and toy.computations["power"] == 1
    assert toy.power(3) == [1.0, 8.0, 27.0] and toy.computations["power"] == 2   # keyed by its argument


def test_a_setting_changed_during_compute_is_not_cached_under_it():
    toy = Toy()
    progress = Progress()
    progress.listener = lambda: setattr(toy, "scale", 3.0)   # the user moves a widget while the job runs
    toy.scaled(progress=progress)             # computed under mixed settings: returned to its caller ...
    assert not toy.is_cached("scaled")        # ... but stored under neither
    assert toy.scaled() == [3.0, 6.0, 9.0]


def test_unknown_dependencies_are_refused():
    class Broken(Analysis):
        x = param.Number(1.0)

        @result("y")
        def value(self):
            return self.x

    with pytest.raises(TypeError, match="unknown names"):
        Broken()


def test_reading_is_per_thread():
    toy = Toy()
    seen = []
    with toy.reading():
        worker = threading.Thread(target=lambda: seen.append(toy.compute().is_computed()))
        worker.start()
        worker.join()
    assert seen == [True]


# ------------------------------------------------------------------ every page's analysis
def _clusters(seed=0):
    gen = np.random.default_rng(seed)
    centres = gen.normal(size=(3, 5)) * 3
    X = centres[np.repeat(np.arange(3), 12)] + gen.normal(size=(36, 5)) * 0.4
    return validated("clusters", X, np.repeat(["a", "b", "c"], 12))


def _outputs():
    generator = torch.Generator().manual_seed(0)
    probs = torch.softmax(2 * torch.randn(300, 5, generator=generator, dtype=torch.float64), 1)
    labels = torch.multinomial(probs, 1, generator=generator).squeeze(1)
    return outputs_from_arrays(probs.numpy(), labels.numpy(), name="synthetic")


@pytest.fixture(scope="module")
def stored_run(tmp_path_factory):
    db = str(tmp_path_factory.mktemp("runs") / "runs.duckdb")
    store = ResultsStore(db)
    questions = pd.DataFrame({"question": ["A?", "B?"], "answers": [["a"], []]})
    run_id = store.create_run("m", {"temperatures": [0.3, 1.0], "n_samples": 2}, questions)
    rows = [dict(question_index=q, temperature=t, measure="se_discrete", value=v)
            for q in range(2) for t, v in ((0.3, 0.1 * q), (1.0, 0.5 + q))]
    rows += [dict(question_index=q, temperature=t, measure="correct", value=float(q == 0))
             for q in range(2) for t in (0.3, 1.0)]
    store.replace_measures(run_id, pd.DataFrame(rows))
    store.close()
    return db, run_id


def _training():
    gen = np.random.default_rng(0)
    labels = np.repeat(np.arange(2), 8)
    runs = {name: RepresentationRun(name, np.arange(3), {layer: torch.tensor(
        gen.normal(size=(3, 16, 4)) + np.arange(3)[:, None, None] * labels[None, :, None], dtype=torch.float32)
        for layer in ("first", "second")}, labels, torch.tensor(gen.normal(size=(16, 3)), dtype=torch.float32))
        for name in ("true labels", "shuffled labels")}
    H = np.linspace(1.5, 0.2, 12)
    log = LoggedRun("log", __import__("pandas").DataFrame({"step": np.arange(12.0), "entropy": H,
                                                          "reward": 1 - 0.2 * np.exp(H) + gen.normal(0, 0.01, 12)}),
                    "log.csv")
    return TrainingAnalysis(runs=runs, logs=[log], bootstrap=100, clusters=2)


FACTORIES = {
    "diversity": lambda run: DiversityAnalysis(dataset=_clusters()),
    "conformal": lambda run: ConformalAnalysis(outputs=_outputs(), method="aps", n_splits=20),
    "runs": lambda run: RunResults(*run),
    "training": lambda run: _training(),
}
NO_DATA = {"diversity": DiversityAnalysis, "conformal": ConformalAnalysis, "lens": TokenLensAnalysis,
           "temperature": TemperatureAnalysis, "runs": RunResults, "training": TrainingAnalysis}


def _other_value(parameter: param.Parameter, value):
    """A different valid value of a setting (None when the contract test should not change it)."""
    if isinstance(parameter, param.Boolean):
        return not value
    if isinstance(parameter, param.Selector):
        objects = list(parameter.objects.values() if isinstance(parameter.objects, dict) else parameter.objects)
        return next((o for o in objects if o != value and not (isinstance(o, float) and math.isinf(o))), None)
    if isinstance(parameter, param.Integer):
        low, high = parameter.bounds or (None, None)
        return value + 1 if high is None or value + 1 <= high else value - 1
    if isinstance(parameter, param.Number):
        low, high = parameter.bounds or (None, None)
        candidate = value * 1.1 + 0.01
        return candidate if high is None or candidate <= high else (value + (low or 0)) / 2
    return None


@pytest.mark.parametrize("kind", sorted(NO_DATA))
def test_constructing_stores_settings_only(kind, monkeypatch):
    def refuse(*_args, **_kwargs):
        raise AssertionError("constructing an analysis must not load a model or open a store")
    for target in ("explorer.models.language_model.load_language_model", "explorer.models.embedder.load_embedder",
                   "explorer.data.store.ResultsStore.__init__"):
        monkeypatch.setattr(target, refuse)
    analysis = NO_DATA[kind]()
    assert not analysis.computations and not analysis._results


@pytest.mark.parametrize("kind", sorted(FACTORIES))
def test_long_results_wait_for_compute(kind, stored_run):
    analysis = FACTORIES[kind](stored_run)
    heavy = [name for name, spec in analysis.result_specs().items() if spec.heavy]
    assert heavy, "every page analysis has a long part"
    with analysis.reading():
        for _label, read in analysis.compute_steps():
            with pytest.raises(NotComputed):
                read(progress=None)
    assert not analysis.is_computed()
    analysis.compute()
    assert analysis.is_computed()


@pytest.mark.parametrize("kind", sorted(FACTORIES))
def test_results_are_recomputed_exactly_when_a_setting_they_depend_on_changes(kind, stored_run):
    analysis = FACTORIES[kind](stored_run).compute()
    specs = analysis.result_specs()
    plain = [name for name in specs if analysis.is_cached(name)]   # results without arguments, computed
    assert plain
    for name, parameter in analysis.param.objects().items():
        value = getattr(analysis, name)
        other = _other_value(parameter, value)
        if other is None or name == "name":
            continue
        analysis.compute()
        cached_before = {r for r in plain if analysis.is_cached(r)}
        setattr(analysis, name, other)
        for r in cached_before:
            depends = name in type(analysis)._parameters_of(r)
            assert analysis.is_cached(r) != depends, f"{kind}: {r} after {name} changed"
        setattr(analysis, name, value)


@pytest.mark.parametrize("kind, setting, value", [("diversity", "kernel", "rbf"), ("conformal", "seed", 7),
                                                  ("training", "sigma", 2.0), ("training", "bootstrap", 150)])
def test_a_setting_changed_while_compute_runs_leaves_no_stale_result(kind, setting, value, stored_run):
    analysis = FACTORIES[kind](stored_run)
    progress = Progress()
    progress.listener = lambda: setattr(analysis, setting, value)   # a widget moved during the job
    analysis.compute(progress)
    fresh = FACTORIES[kind](stored_run)
    setattr(fresh, setting, value)
    fresh.compute()
    for name in analysis.result_specs():
        if analysis.is_cached(name) and fresh.is_cached(name):
            ours, theirs = getattr(analysis, name)(), getattr(fresh, name)()
            assert _same(ours, theirs), f"{kind}: {name} was cached from the settings before the change"


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if hasattr(a, "equals"):
        return a.equals(b)
    if isinstance(a, np.ndarray):
        return np.array_equal(a, b)
    if hasattr(a, "eigenvalues"):
        return torch.equal(a.eigenvalues, b.eigenvalues)
    if dataclasses.is_dataclass(a):
        return all(_same(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a))
    return a == b or (isinstance(a, float) and math.isnan(a) and math.isnan(b))
