"""The bundled digits reproductions on reduced settings: seeded and reproducible, cached, measured per
epoch and layer with the diversity kernels; the DSE claims check; ensemble uncertainty against data size."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from explorer.data import training_runs
from explorer.data.training_runs import (
    DataSizeTraining,
    DigitsTraining,
    DseClaims,
    dse_claims,
    input_clusters,
    load_digits_runs,
    measure_run,
    uncertainty_vs_data_size,
)
from explorer.kernels.training import ensemble_uncertainty, representation_entropy

SMALL = DigitsTraining(width=16, epochs=2, batch_size=16, probe_rows=40, train_rows=60)
SMALL_SIZES = DataSizeTraining(sizes=(20, 40, 80), members=2, width=8, epochs=2, min_steps=5, probe_rows=30)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ENTROPY_EXPLORER_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_training_is_seeded_and_reproducible(cache, monkeypatch):
    threads = torch.get_num_threads()
    first = load_digits_runs(SMALL)
    assert torch.get_num_threads() == threads  # training on one thread leaves the setting as it was
    assert len(list(cache.glob("digits-training-*.npz"))) == 2
    monkeypatch.setenv("ENTROPY_EXPLORER_CACHE", str(cache.parent / "elsewhere"))
    second = load_digits_runs(SMALL)  # trained again from scratch
    for name in ("true labels", "shuffled labels"):
        for layer in ("hidden 1", "hidden 2"):
            assert torch.equal(first[name].layers[layer], second[name].layers[layer])
        pd.testing.assert_frame_equal(first[name].metrics, second[name].metrics)


def test_run_shapes_metrics_and_labels(cache):
    runs = load_digits_runs(SMALL)
    true, shuffled = runs["true labels"], runs["shuffled labels"]
    assert true.epochs.tolist() == [0, 1, 2] and true.layers["hidden 2"].shape == (3, 40, 16)
    assert list(true.metrics.columns) == ["epoch", "train_accuracy", "test_accuracy", "train_loss", "test_loss"]
    # same initialisation and probe set: epoch 0 is identical, training then differs
    assert torch.equal(true.layers["hidden 1"][0], shuffled.layers["hidden 1"][0])
    assert not torch.equal(true.layers["hidden 1"][2], shuffled.layers["hidden 1"][2])
    assert np.array_equal(true.labels, shuffled.labels) and true.inputs.shape == (40, 64)
    accuracies = true.metrics[["train_accuracy", "test_accuracy"]].to_numpy()
    assert ((accuracies >= 0) & (accuracies <= 1)).all()


def test_shuffled_labels_are_a_permutation_of_the_training_labels():
    _, y = training_runs._digits()
    _, pool = training_runs._split(500, 0)
    shuffled = np.random.default_rng(1).permutation(y[pool])
    assert np.array_equal(np.bincount(shuffled), np.bincount(y[pool])) and (shuffled != y[pool]).mean() > 0.8


def test_damaged_cache_is_rebuilt(cache):
    reference = load_digits_runs(SMALL)["true labels"].layers["hidden 1"]
    for path in cache.glob("digits-training-*.npz"):
        path.write_bytes(b"not an npz")
    assert torch.equal(load_digits_runs(SMALL)["true labels"].layers["hidden 1"], reference)


def test_measures_per_epoch_and_layer_are_the_kernels(cache):
    run = load_digits_runs(SMALL)["true labels"]
    table = measure_run(run, sigma=None, t=2.0, q=1.0, clusters=4)
    assert len(table) == 3 * 2 and set(table["layer"]) == {"hidden 1", "hidden 2"}
    assert {"dse", "dsmi_labels", "dsmi_inputs", "vendi", "effective_rank", "sigma", "test_accuracy"} <= set(
        table.columns)
    row = table[(table["layer"] == "hidden 2") & (table["epoch"] == 1)].iloc[0]
    direct = representation_entropy(run.layers["hidden 2"][1], None, 2.0, run.labels, input_clusters(run.inputs, 4))
    assert row["dse"] == pytest.approx(direct.dse) and row["dsmi_labels"] == pytest.approx(direct.dsmi_labels)
    assert row["dsmi_inputs"] == pytest.approx(direct.dsmi_inputs) and row["vendi"] == pytest.approx(direct.vendi)


def test_input_clusters_are_seeded():
    X = torch.from_numpy(np.random.default_rng(0).normal(size=(50, 3)))
    assert np.array_equal(input_clusters(X, 5, seed=1), input_clusters(X, 5, seed=1))
    assert len(np.unique(input_clusters(X, 5))) == 5


def claims_tables(true_dsmi, shuffled_dsmi, true_dse=(1.0, 2.0), shuffled_dse=(1.0, 1.5)):
    table = lambda dse, dsmi: pd.DataFrame({"epoch": [0, 1], "layer": "h", "dse": dse, "dsmi_labels": dsmi})
    return {"true labels": table(true_dse, true_dsmi), "shuffled labels": table(shuffled_dse, shuffled_dsmi)}


def test_dse_claims_by_hand():
    holds = dse_claims(claims_tables((0.5, 1.5), (0.5, 0.6)), "h")
    assert holds.dse_increases == {"true labels": True, "shuffled labels": True}
    assert holds.dsmi_rises_with_true_labels and holds.dsmi_flat_with_shuffled_labels
    assert "claim 2 (DSMI rises with true labels, flat with shuffled): holds" in holds.summary()
    rises_too = dse_claims(claims_tables((0.5, 1.5), (0.5, 1.0)), "h")  # shuffled rose by half the true rise
    assert not rises_too.dsmi_flat_with_shuffled_labels and "does not hold" in rises_too.summary()
    falls = dse_claims(claims_tables((1.5, 0.5), (0.5, 0.5), true_dse=(2.0, 1.0)), "h")
    assert not falls.dsmi_rises_with_true_labels and not falls.dsmi_flat_with_shuffled_labels
    assert falls.dse_increases["true labels"] is False
    assert isinstance(falls, DseClaims) and "2.00 -> 1.00" in falls.summary()


def test_uncertainty_against_data_size(cache):
    result = uncertainty_vs_data_size(SMALL_SIZES)
    assert result.table["n"].tolist() == [20, 40, 80] and result.probs.shape == (3, 2, 30, 10)
    parts = ensemble_uncertainty(result.probs[1])
    assert result.table["predictive"][1] == pytest.approx(float(parts.predictive.mean()))
    assert result.table["mutual_information"][1] == pytest.approx(float(parts.mutual_information.mean()))
    np.testing.assert_allclose(result.table["predictive"],
                               result.table["expected"] + result.table["mutual_information"], atol=1e-9)
    assert result.predictive_fit.fitted.shape == (3,)
    again = uncertainty_vs_data_size(SMALL_SIZES)  # from the cache
    assert torch.equal(again.probs, result.probs)


def test_a_run_trains_in_a_thread_whose_gradients_are_off():
    """A caller in ``torch.no_grad()`` (a benchmark, a notebook cell) still gets a trained network."""
    from explorer.data.training_runs import DigitsTraining, _train_run

    with torch.no_grad():
        arrays = _train_run(DigitsTraining(width=16, epochs=1, probe_rows=100, train_rows=64), False, None)
    assert arrays["epochs"].tolist() == [0, 1]
