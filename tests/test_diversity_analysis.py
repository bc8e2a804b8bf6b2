"""DiversityAnalysis: scores equal the kernels, caches make q/t moves free, curves and groups are right."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from explorer.analyses.base import _Identity
from explorer.analyses.diversity import DiversityAnalysis, NotComputed, comparison_frame
from explorer.data.embeddings import validated
from explorer.errors import InputError
from explorer.kernels.diversity import (
    diffusion_spectral_entropy,
    diffusion_spectral_mutual_information,
    median_bandwidth,
    vendi_score,
)
from explorer.progress import Cancelled, Progress


def clusters(n_per=30, seed=0, spread=0.3):
    gen = np.random.default_rng(seed)
    centres = gen.normal(size=(3, 6)) * 3
    labels = np.repeat(["a", "b", "c"], n_per)
    X = centres[np.repeat(np.arange(3), n_per)] + gen.normal(size=(3 * n_per, 6)) * spread
    return validated("clusters", X, labels, [f"sample {i}" for i in range(3 * n_per)])


@pytest.fixture
def analysis():
    return DiversityAnalysis(dataset=clusters())


def test_scores_match_kernels(analysis):
    X = analysis.dataset.X.double()
    scores = analysis.scores()
    assert scores["vendi"] == pytest.approx(vendi_score(X), rel=1e-9)
    assert scores["rke"] == pytest.approx(vendi_score(X, q=2), rel=1e-9)
    assert scores["renyi_bits"] == pytest.approx(math.log2(scores["vendi"]), rel=1e-9)
    sigma = median_bandwidth(analysis.dataset.X)
    assert scores["dse_bits"] == pytest.approx(diffusion_spectral_entropy(X, sigma), rel=1e-9)
    assert scores["dsmi_bits"] == pytest.approx(
        diffusion_spectral_mutual_information(X, analysis.dataset.labels, sigma), rel=1e-9)
    assert scores["exact"] and scores["n"] == 90
    analysis.param.update(kernel="rbf", sigma=2.0, q=math.inf, t=3.0, dse_sigma=1.5)
    scores = analysis.scores()
    assert scores["vendi"] == pytest.approx(vendi_score(X, kernel="rbf", sigma=2.0, q=math.inf), rel=1e-9)
    assert scores["dse_bits"] == pytest.approx(diffusion_spectral_entropy(X, 1.5, t=3.0), rel=1e-9)


def test_q_and_t_reuse_cached_spectra(analysis):
    analysis.compute()
    spectrum, diffusion = analysis.spectrum(), analysis.diffusion_spectrum()
    analysis.param.update(q=3.0, t=2.0)
    assert analysis.spectrum() is spectrum and analysis.diffusion_spectrum() is diffusion
    groups_before = analysis._group_spectra()
    analysis.group_scores()
    assert analysis._group_spectra() is groups_before
    analysis.kernel = "linear"
    assert analysis.spectrum() is not spectrum


def test_curves_groups_projection(analysis):
    curve = analysis.vendi_curve()
    assert (np.diff(curve["vendi"]) <= 1e-9).all() and curve["vendi"].iloc[0] >= curve["vendi"].iloc[-1]
    assert (analysis.dse_curve()["dse_bits"].diff().dropna() <= 1e-9).all()  # more diffusion, less entropy
    spectrum = analysis.spectrum_frame()
    assert (spectrum["eigenvalue"] > 0).all() and spectrum["eigenvalue"].sum() == pytest.approx(1.0)
    groups = analysis.group_scores()
    assert list(groups["group"]) == ["a", "b", "c"] and (groups["n"] == 30).all()
    assert groups["vendi"].iloc[0] == pytest.approx(vendi_score(analysis.dataset.X[:30].double()), rel=1e-9)
    sub = analysis.subsample_curve()
    assert sub["size"].iloc[-1] == 90 and sub["mean"].iloc[-1] == pytest.approx(analysis.scores()["vendi"])
    assert sub["mean"].iloc[0] < sub["mean"].iloc[-1]
    proj = analysis.projection()
    assert proj.shape == (90, 4) and proj["text"].iloc[5] == "sample 5"
    # the 3 clusters separate along the first two components
    centroid_gap = proj.groupby("group")[["pc1", "pc2"]].mean().diff().abs().sum(axis=1).iloc[1:]
    assert (centroid_gap > 1).all()


def test_large_n_is_approximate_and_says_so():
    data = clusters(n_per=200, seed=1)
    analysis = DiversityAnalysis(dataset=data, kernel="rbf", sigma=3.0, approx_above=300, landmarks=150)
    scores = analysis.scores()
    assert not scores["exact"] and scores["spectrum"].startswith("nystrom") and scores["estimated_error"] >= 0
    assert scores["dse_rows"] == 300
    exact = vendi_score(data.X.double(), kernel="rbf", sigma=3.0)
    assert scores["vendi"] == pytest.approx(exact, rel=0.1)


def test_comparison_and_export(analysis):
    other = DiversityAnalysis(dataset=clusters(spread=3.0, seed=2))
    frame = comparison_frame(analysis, other)
    assert frame.shape == (8, 3)
    vendi_row = frame.set_index("measure").loc["vendi"]
    assert vendi_row.iloc[0] < vendi_row.iloc[1]  # the spread-out set is more diverse
    assert set(analysis.scores_frame().columns) >= {"vendi", "rke", "dse_bits", "exact"}


def test_missing_data_labels_and_cancel():
    with pytest.raises(InputError, match="No data loaded"):
        DiversityAnalysis().scores()
    unlabelled = DiversityAnalysis(dataset=validated("x", torch.randn(20, 3).numpy()))
    assert unlabelled.scores()["dsmi_bits"] is None and unlabelled.group_scores().empty
    progress = Progress()
    progress.cancel()
    with pytest.raises(Cancelled):
        DiversityAnalysis(dataset=clusters()).compute(progress)


def test_dsmi_at_any_t_is_read_from_cached_spectra_and_equals_the_kernel(analysis):
    X, labels = analysis.dataset.X.double(), analysis.dataset.labels
    sigma = median_bandwidth(analysis.dataset.X)
    analysis.compute()
    parts = analysis._dsmi_spectra()
    for t in (0.25, 1.0, 2.5, 7.0):
        analysis.t = t
        with analysis.reading():  # no computation: a t move only re-reads
            value = analysis.dsmi()
        assert value == pytest.approx(diffusion_spectral_mutual_information(X, labels, sigma, t), rel=1e-9)
        assert analysis._dsmi_spectra() is parts


def test_reading_never_computes_and_is_computed_tracks_settings(analysis):
    with pytest.raises(NotComputed), analysis.reading():
        analysis.scores()
    assert not analysis.is_computed() and not analysis._results
    analysis.compute()
    assert analysis.is_computed()
    analysis.param.update(q=math.inf, t=4.0)
    assert analysis.is_computed()  # q and t need nothing new
    with analysis.reading():
        assert analysis.scores()["vendi"] == pytest.approx(vendi_score(analysis.dataset.X.double(), q=math.inf))
    analysis.kernel = "rbf"
    assert not analysis.is_computed()
    with pytest.raises(NotComputed), analysis.reading():
        analysis.subsample_curve()
    analysis.compute()
    assert analysis.is_computed()


def test_results_follow_the_data_set_object():
    first, second = clusters(seed=3), clusters(seed=4, spread=2.0)
    analysis = DiversityAnalysis(dataset=first)
    analysis.compute()
    analysis.dataset = second
    assert not analysis.is_computed()
    assert analysis.scores()["vendi"] == pytest.approx(vendi_score(second.X.double()), rel=1e-9)
    referenced = {id(part.value) for key in analysis._results for part in key[1] if isinstance(part, _Identity)}
    assert referenced == {id(second)}  # the first set's results are released
    copy = validated("copy", first.X.numpy(), first.labels)
    analysis.dataset = copy
    assert analysis.scores()["vendi"] == pytest.approx(vendi_score(first.X.double()), rel=1e-9)


def test_centring_changes_only_the_mean_sensitive_kernels():
    data = validated("shifted", np.random.default_rng(5).normal(size=(40, 6)) + 25.0, ["a", "b"] * 20)
    plain, centred = DiversityAnalysis(dataset=data), DiversityAnalysis(dataset=data, center=True)
    X = data.X.double()
    assert centred.scores()["vendi"] == pytest.approx(vendi_score(X - X.mean(0)), rel=1e-6)
    assert centred.scores()["vendi"] > 5 * plain.scores()["vendi"]  # the shared offset dominated the cosine
    for analysis in (plain, centred):
        analysis.kernel = "rbf"
    assert centred.scores()["vendi"] == pytest.approx(plain.scores()["vendi"], rel=1e-6)
    assert centred.scores()["dse_bits"] == pytest.approx(plain.scores()["dse_bits"], rel=1e-12)


def test_depth_profile_over_layers():
    layers = [validated(f"layer {i}", clusters(seed=6, spread=0.2 * (i + 1)).X.numpy(), clusters().labels)
              for i in range(4)]
    analysis = DiversityAnalysis(layers=layers)
    assert analysis.layer == 0 and analysis.dataset is layers[0] and analysis.param.layer.bounds == (0, 3)
    analysis.compute()
    assert analysis.is_computed()
    analysis.param.update(q=2.0, t=3.0)
    with analysis.reading():
        profile = analysis.depth_profile()
    assert list(profile["layer"]) == [0, 1, 2, 3]
    for i, data in enumerate(layers):
        X = data.X.double()
        assert profile["vendi"][i] == pytest.approx(vendi_score(X, q=2.0), rel=1e-9)
        assert profile["renyi_bits"][i] == pytest.approx(math.log2(profile["vendi"][i]))
        assert profile["dse_bits"][i] == pytest.approx(diffusion_spectral_entropy(X, median_bandwidth(data.X), t=3.0),
                                                      rel=1e-9)
    assert profile["vendi"].is_monotonic_increasing  # more spread around the same centres, more diverse
    analysis.layer = 2
    assert analysis.dataset is layers[2]
    assert analysis.scores()["vendi"] == pytest.approx(profile["vendi"][2], rel=1e-9)
    with pytest.raises(InputError, match="per-layer profile needs hidden states"):
        DiversityAnalysis(dataset=layers[0]).depth_profile()


def test_settings_changed_during_a_computation_do_not_poison_the_cache(monkeypatch):
    from explorer.analyses import diversity

    data = clusters(n_per=30, seed=3)
    analysis = DiversityAnalysis(dataset=data, kernel="cosine")
    real = diversity.kernel_spectrum

    def compute_while_the_user_switches_kernel(*args, **kwargs):
        analysis.kernel = "rbf"  # what a widget does while a job runs in its thread
        return real(*args, **kwargs)

    monkeypatch.setattr(diversity, "kernel_spectrum", compute_while_the_user_switches_kernel)
    mixed = analysis.spectrum()  # returned to its caller ...
    monkeypatch.undo()
    analysis.kernel = "cosine"
    assert analysis.spectrum() is not mixed  # ... but not stored: recomputed under the settings it is read with
    assert analysis.computations["_spectrum_of"] == 2
