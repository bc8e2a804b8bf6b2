"""The training-dynamics analysis against the kernels on small hand-built runs and a reduced bundled
reproduction: the per-epoch measures are measure_run's numbers at every t and q (read from cached spectra),
the verdict is dse_claims', the law tables are fit_entropy_law's, forecast_entropy_law's and
entropy_change_vs_covariance's; the batched DSE against the one-spectrum kernel and a float64 definition;
column suggestions, the sources, and the cache of recently studied runs."""

from __future__ import annotations

import io
import math
import threading

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from explorer.analyses.base import NotComputed
from explorer.analyses.training import (
    FRACTIONS,
    TrainingAnalysis,
    _claim_lines,
    offered_columns,
    suggested_columns,
)
from explorer.data.sources import LOG_SOURCES, TRAINING_SOURCES
from explorer.data.training_logs import ColumnMap, LoggedRun, RepresentationRun
from explorer.data.training_runs import (
    DataSizeTraining,
    DigitsTraining,
    DseClaims,
    dse_claims,
    load_digits_runs,
    measure_run,
    uncertainty_vs_data_size,
)
from explorer.data.uploads import Upload
from explorer.errors import InputError
from explorer.kernels.diversity import diffusion_eigenvalues, dse_from_eigenvalues
from explorer.kernels.training import (
    batched_dse,
    entropy_change_vs_covariance,
    fit_entropy_law,
    forecast_entropy_law,
)
from explorer.models.device import one_torch_thread

SMALL = DigitsTraining(width=16, epochs=3, batch_size=16, probe_rows=60, train_rows=80)
SMALL_SIZES = DataSizeTraining(sizes=(20, 40, 80), members=2, width=8, epochs=2, min_steps=5, probe_rows=30)


# ------------------------------------------------------------------------------------ hand-built data
def representation_run(name: str, growth: float, seed: int = 0, epochs: int = 4, n_per: int = 10, classes: int = 3,
                       labels: bool = True, inputs: bool = True) -> RepresentationRun:
    """Classes whose centres move apart by ``growth`` per epoch (0: the same cloud every epoch)."""
    gen = np.random.default_rng(seed)
    y = np.repeat(np.arange(classes), n_per)
    centres, noise = gen.normal(size=(classes, 5)), gen.normal(size=(classes * n_per, 5))
    layers = {layer: torch.tensor(np.stack([scale * (centres[y] * (1 + growth * e) + noise) for e in range(epochs)]),
                                  dtype=torch.float32) for layer, scale in (("first", 1.0), ("second", 2.0))}
    metrics = pd.DataFrame({"epoch": np.arange(epochs), "test_accuracy": np.linspace(0.1, 0.9, epochs)})
    return RepresentationRun(name, np.arange(epochs), layers, y if labels else None,
                             torch.tensor(gen.normal(size=(classes * n_per, 4)), dtype=torch.float32) if inputs else None,
                             metrics)


def logged_run(name: str = "law", n: int = 40, a: float = 0.2, b: float = 1.1, noise: float = 0.01, seed: int = 0,
               covariance: bool = True) -> LoggedRun:
    gen = np.random.default_rng(seed)
    H = np.linspace(1.8, 0.1, n) + gen.normal(scale=0.01, size=n)
    frame = pd.DataFrame({"step": np.arange(n, dtype=float) * 10, "entropy": H,
                          "reward": -a * np.exp(H) + b + gen.normal(scale=noise, size=n)})
    if covariance:
        frame["covariance"] = gen.normal(size=n)
    return LoggedRun(name, frame, f"{name}.csv")


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """Every test measures into its own cache dir (spectra are kept there)."""
    monkeypatch.setenv("ENTROPY_EXPLORER_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


# ------------------------------------------------------------------------------------ batched DSE
def test_batched_dse_hand_cases():
    two_equal = torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.5, -0.5, 0.5, -0.5]])
    assert batched_dse(two_equal).tolist() == pytest.approx([1.0, 0.0, 2.0])   # |lambda|: signs do not matter
    assert batched_dse(torch.zeros(2, 3)).tolist() == [0.0, 0.0]
    # t = 2 on (1, 1/2): mu = (4/5, 1/5)
    expected = -(0.8 * math.log2(0.8) + 0.2 * math.log2(0.2))
    assert float(batched_dse(torch.tensor([1.0, 0.5]), 2.0)) == pytest.approx(expected, rel=1e-14)
    with pytest.raises(ValueError, match="must be > 0"):
        batched_dse(two_equal, 0.0)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), rows=st.integers(1, 4), m=st.integers(1, 30), pad=st.integers(0, 5),
       t=st.floats(0.25, 10), scale=st.floats(1e-3, 1e3))
def test_batched_dse_is_the_one_spectrum_kernel_row_by_row(seed, rows, m, pad, t, scale):
    """Each row's value is dse_from_eigenvalues' and the float64 definition's, unchanged by zero padding and by
    scaling the eigenvalues, and within [0, log2 m]."""
    eigenvalues = torch.rand(rows, m, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2 - 1
    padded = torch.cat([eigenvalues, torch.zeros(rows, pad, dtype=torch.float64)], 1)
    values = batched_dse(padded, t)
    for row, value in zip(eigenvalues, values.tolist()):
        mu = row.abs() ** t / (row.abs() ** t).sum()
        mu = mu[mu > 0]
        assert value == pytest.approx(float(-(mu * mu.log2()).sum()), abs=1e-12)
        assert value == pytest.approx(dse_from_eigenvalues(row, t), abs=1e-12)
        assert -1e-12 <= value <= math.log2(m) + 1e-12
    assert torch.allclose(batched_dse(eigenvalues * scale, t), values, atol=1e-10)


# ------------------------------------------------------------------------------------ representations
def test_measures_are_measure_runs_numbers_at_every_t_q_and_sigma(cache):
    runs = load_digits_runs(SMALL)
    analysis = TrainingAnalysis(runs=runs, clusters=4, layer="hidden 1")
    for sigma, t, q in ((10.0, 1.0, 1.0), (10.0, 2.5, 2.0), (0.0, 0.5, math.inf)):
        analysis.param.update(sigma=sigma, t=t, q=q)
        analysis.compute()
        with analysis.reading():
            ours = analysis.measures()
        for name, run in runs.items():
            theirs = measure_run(run, sigma=sigma or None, t=t, q=q, clusters=4)
            theirs = theirs[theirs["layer"] == "hidden 1"].reset_index(drop=True)
            mine = ours[ours["run"] == name].reset_index(drop=True)
            for column in ("dse", "dsmi_labels", "dsmi_inputs", "vendi", "effective_rank", "sigma", "test_accuracy"):
                np.testing.assert_allclose(mine[column], theirs[column], rtol=1e-10, atol=1e-12, err_msg=column)
    assert analysis.computations["spectra"] == 4   # one per run and sigma: t and q moves only re-read them


def test_t_and_q_moves_read_cached_spectra_and_epochs_the_spectrum():
    analysis = TrainingAnalysis(runs={"a": representation_run("a", 1.0), "b": representation_run("b", 0.0, seed=1)},
                                clusters=3)
    with pytest.raises(NotComputed), analysis.reading():
        analysis.measures()
    analysis.compute()
    with analysis.reading():
        before = analysis.measures()
        analysis.t, analysis.q = 3.0, 2.0
        after = analysis.measures()
        analysis.epoch = 2
        spectrum = analysis.spectrum_at_epoch()
    assert not np.allclose(before["dse"], after["dse"]) and not np.allclose(before["vendi"], after["vendi"])
    assert analysis.computations["spectra"] == 2
    # the spectrum at epoch 2: mu in descending order summing to 1, whose entropy is that epoch's DSE at t
    for run in ("a", "b"):
        mu = spectrum[spectrum["run"] == run]["mu"].to_numpy()
        assert np.all(np.diff(mu) <= 1e-15) and mu.sum() == pytest.approx(1.0)
        positive = mu[mu > 0]
        dse = after[(after["run"] == run) & (after["epoch"] == 2)]["dse"].iloc[0]
        assert -(positive * np.log2(positive)).sum() == pytest.approx(dse, rel=1e-9)
        Z = analysis.runs[run].layers["second"][2]
        assert dse == pytest.approx(dse_from_eigenvalues(diffusion_eigenvalues(Z, 10.0), 3.0), rel=1e-12)


def test_spectra_are_kept_on_disk_for_the_same_data_and_settings(cache):
    run = representation_run("a", 1.0)
    first = TrainingAnalysis(runs={"a": run}).compute()
    assert len(list(cache.glob("training-spectra-*.npz"))) == 1
    same = representation_run("a", 1.0)             # equal data, another object: read back, not measured
    second = TrainingAnalysis(runs={"a": same})
    second.compute()
    pd.testing.assert_frame_equal(first.measures(), second.measures())
    for one, two in zip(first.spectra(run, "second").cosine, second.spectra(same, "second").cosine):
        assert torch.equal(one.eigenvalues, two.eigenvalues) and (one.n, one.method) == (two.n, two.method)
    second.sigma = 3.0                               # other settings, or other data: measured anew
    second.compute()
    TrainingAnalysis(runs={"b": representation_run("b", 1.0, seed=5)}).compute()
    assert len(list(cache.glob("training-spectra-*.npz"))) == 3


def test_a_run_without_labels_or_inputs_has_nan_dsmi_and_no_plane():
    run = representation_run("plain", 0.5, labels=False, inputs=False)
    analysis = TrainingAnalysis(runs={"plain": run}).compute()
    table = analysis.measures()
    assert table["dsmi_labels"].isna().all() and table["dsmi_inputs"].isna().all() and table["dse"].notna().all()
    assert analysis.information_plane().dropna().empty
    assert set(analysis.measure_names()) == {"dse", "vendi", "effective_rank", "scale", "test_accuracy"}
    assert "claims compare a run on true labels with one on shuffled labels" in " ".join(analysis.verdict())


def test_verdict_is_dse_claims_on_the_measures(cache):
    analysis = TrainingAnalysis(runs=load_digits_runs(SMALL), clusters=4).compute()
    table = analysis.measures()
    claims = dse_claims({name: part for name, part in table.groupby("run")}, analysis.layer)
    verdict = analysis.verdict()
    assert verdict[:2] == _claim_lines(claims)
    assert f"{claims.dse['true labels'][0]:.2f} → {claims.dse['true labels'][1]:.2f}" in verdict[0]
    analysis.sigma = 0.0
    analysis.compute()
    assert "median pairwise distance" in analysis.verdict()[-1]


def test_claim_lines_in_words():
    holds = DseClaims("h", {"true labels": (1.0, 3.0), "shuffled labels": (1.0, 2.0)},
                      {"true labels": (0.1, 1.1), "shuffled labels": (0.1, 0.2)})
    fails = DseClaims("h", {"true labels": (3.0, 2.0), "shuffled labels": (1.0, 2.0)},
                      {"true labels": (0.1, 1.1), "shuffled labels": (0.5, 0.1)})
    first, second = _claim_lines(holds)
    assert "holds here" in first and "Claim 2" in second and "holds here" in second and "stays flat" in second
    first, second = _claim_lines(fails)
    assert "does not hold here: DSE falls with true labels" in first
    assert "does not hold here" in second and "it falls by 0.40, more than 25%" in second


def test_scale_caution_only_for_a_fixed_sigma_and_a_growing_scale():
    growing = {"g": representation_run("g", 3.0, epochs=3)}
    analysis = TrainingAnalysis(runs=growing, sigma=10.0).compute()
    assert analysis.verdict()[-1].startswith("Caution: the activations' scale")
    steady = TrainingAnalysis(runs={"s": representation_run("s", 0.0)}, sigma=10.0).compute()
    assert "changes little" in steady.verdict()[-1]


def test_runs_studied_just_before_stay_cached():
    a, b, c = ({"x": representation_run("x", 1.0, seed=seed)} for seed in range(3))
    analysis = TrainingAnalysis(runs=a).compute()
    analysis.runs = b
    analysis.compute()
    analysis.runs = a
    assert analysis.is_computed() and analysis.computations["spectra"] == 2   # back to a: nothing recomputed
    analysis.runs = c
    analysis.compute()
    analysis.runs = b                          # b is two run sets back: released
    assert not analysis.is_computed()


def test_layer_choice_follows_the_runs_and_bad_layers_are_refused():
    analysis = TrainingAnalysis(runs={"x": representation_run("x", 1.0)})
    assert analysis.layer == "second" and analysis.param.layer.objects == ["first", "second"]
    assert analysis.epoch == 3                 # the last checkpoint
    later = representation_run("x", 1.0)
    later.epochs = later.epochs * 5 + 5
    analysis.runs = {"x": later}
    assert analysis.epoch == 20
    other = representation_run("y", 1.0)
    other.layers = {"third": other.layers["first"]}
    analysis.runs = {"x": representation_run("x", 1.0), "y": other}
    with pytest.raises(InputError, match="different layers"):
        analysis.measures()


# ------------------------------------------------------------------------------------ logged runs
def test_law_tables_are_the_kernels():
    runs = [logged_run("one"), logged_run("two", a=0.5, b=2.0, seed=1, covariance=False)]
    analysis = TrainingAnalysis(logs=runs, bootstrap=300, seed=3, level=0.9).compute()
    table = analysis.law_table().set_index("run")
    for run in runs:
        fit = fit_entropy_law(run.frame["entropy"], run.frame["reward"], 300, 3, 0.9)
        row = table.loc[run.name]
        assert (row["a"], row["b"], row["ceiling"], row["r2"]) == pytest.approx((fit.a, fit.b, fit.ceiling, fit.r2))
        assert (row["ceiling_low"], row["ceiling_high"]) == pytest.approx(fit.ceiling_interval)
    assert table.loc["two", "ceiling"] == pytest.approx(1.5, abs=0.05)   # b - a of the generating law
    analysis.fraction = 0.5
    forecast = analysis.forecast_table()
    expected = forecast_entropy_law(runs[0].frame["entropy"], runs[0].frame["reward"], 0.5, 300, 3, 0.9)
    one = forecast[forecast["run"] == "one"]
    np.testing.assert_allclose(one["error"], expected.error.numpy())
    np.testing.assert_array_equal(one["step"], runs[0].frame["step"].iloc[expected.split:])
    summary = analysis.forecast_summary().set_index("run")
    assert summary.loc["one", "split_step"] == 200 and summary.loc["one", "mean_absolute_error"] == pytest.approx(
        expected.mean_absolute_error)
    covariance = analysis.covariance_table()
    assert set(covariance["run"]) == {"one"}   # only the run that logs it
    found = entropy_change_vs_covariance(runs[0].frame["entropy"], runs[0].frame["covariance"], runs[0].frame["step"])
    np.testing.assert_allclose(covariance["entropy_change"], found.entropy_change.numpy())
    assert covariance["correlation"].iloc[0] == pytest.approx(found.correlation)
    curves = analysis.law_curves()
    assert curves.groupby("run")["entropy"].min().tolist() == [0.0, 0.0]
    ceiling = curves[(curves["run"] == "two") & (curves["entropy"] == 0)]["reward"].iloc[0]
    assert ceiling == pytest.approx(table.loc["two", "ceiling"])


def test_a_run_the_law_cannot_fit_is_said_in_words_and_the_others_are_fitted():
    flat = LoggedRun("flat", pd.DataFrame({"step": np.arange(6.0), "entropy": np.ones(6), "reward": np.arange(6.0)}),
                     "flat.csv")
    analysis = TrainingAnalysis(logs=[flat, logged_run()], bootstrap=200).compute()
    table = analysis.law_table().set_index("run")
    assert "entropy is constant" in table.loc["flat", "note"] and math.isnan(table.loc["flat", "a"])
    assert table.loc["law", "note"] == "" and table.loc["law", "r2"] > 0.9
    assert set(analysis.law_curves()["run"]) == {"law"}
    summary = analysis.forecast_summary().set_index("run")
    assert "no forecast" in summary.loc["flat", "note"]


def test_every_forecast_share_is_computed_once():
    analysis = TrainingAnalysis(logs=[logged_run()], bootstrap=200)
    analysis.compute()
    held_out = []
    for fraction in FRACTIONS:
        analysis.fraction = fraction
        with analysis.reading():
            held_out.append(len(analysis.forecast_table()))
    assert analysis.computations["forecasts"] == 1
    assert held_out == sorted(held_out, reverse=True) and held_out[0] == 40 - 4   # 10 % of 40 steps: the minimum 4


# ------------------------------------------------------------------------------------ columns and sources
def test_suggested_columns():
    assert suggested_columns(["step", "entropy", "reward", "accuracy", "covariance", "advantage_abs_mean"]) == \
        ColumnMap("step", "entropy", "reward", "covariance", "advantage_abs_mean")
    assert suggested_columns(["Global_Step", "actor/entropy", "eval/accuracy"]) == \
        ColumnMap("Global_Step", "actor/entropy", "eval/accuracy")
    assert suggested_columns(["policy/entropy", "reward/mean"], tensorboard=True).step == "step"
    with pytest.raises(InputError, match="No entropy column found among step, loss"):
        suggested_columns(["step", "loss", "reward"])


def csv_upload(name: str, table: pd.DataFrame) -> Upload:
    return Upload(name, table.to_csv(index=False).encode())


def test_offered_columns_are_those_every_file_has():
    one = csv_upload("a.csv", pd.DataFrame({"step": [0], "entropy": [1.0], "reward": [0.0], "kl": [0.1]}))
    two = csv_upload("b.csv", pd.DataFrame({"reward": [0.0], "step": [0], "entropy": [1.0]}))
    assert offered_columns([one, two]) == ["step", "entropy", "reward"]
    with pytest.raises(InputError, match="share no column"):
        offered_columns([one, csv_upload("c.csv", pd.DataFrame({"x": [1]}))])


def test_sources_load_the_bundled_log_and_uploads():
    bundled = LOG_SOURCES.load("rl_addition")
    assert [run.name for run in bundled] == ["rl_addition_log"] and "covariance" in bundled[0].frame
    frame = logged_run().frame
    uploads = [csv_upload("first.csv", frame), csv_upload("second.csv", frame.iloc[:10])]
    runs = LOG_SOURCES.load("upload", uploads=uploads, columns=suggested_columns(list(frame.columns)))
    assert [(run.name, run.steps) for run in runs] == [("first", 40), ("second", 10)]
    with pytest.raises(InputError, match="Choose a file"):
        LOG_SOURCES.load("upload")


def test_uploaded_checkpoints_become_one_run():
    def npy(array) -> bytes:
        buffer = io.BytesIO()
        np.save(buffer, array)
        return buffer.getvalue()
    run = representation_run("x", 1.0)
    uploads = [Upload(f"epoch_{e}.npy", npy(run.layers["first"][e].numpy())) for e in range(4)]
    uploads.append(Upload("labels.npy", npy(run.labels)))
    loaded = TRAINING_SOURCES.load("upload", uploads=uploads)
    assert list(loaded) == ["uploaded representations"]
    analysis = TrainingAnalysis(runs=loaded).compute()
    assert analysis.layer == "representation" and analysis.measures()["dsmi_labels"].notna().all()


# ------------------------------------------------------------------------------------ data size
def test_data_size_tables_are_the_fits(cache):
    found = uncertainty_vs_data_size(SMALL_SIZES)
    analysis = TrainingAnalysis(data_size=found)
    table = analysis.data_size_table()
    np.testing.assert_allclose(table["predictive_fit"], found.predictive_fit.predict(table["n"]).numpy())
    fits = analysis.data_size_fits().set_index("uncertainty")
    assert fits.loc["predictive entropy", "k"] == found.predictive_fit.k
    assert fits.loc["mutual information", "k_low"] == found.mutual_information_fit.k_interval[0]
    with pytest.raises(InputError, match="not loaded"):
        TrainingAnalysis().data_size_table()


# ------------------------------------------------------------------------------------ one torch thread
def test_one_torch_thread_is_per_thread_and_restored():
    before, seen = torch.get_num_threads(), []

    def job():
        with one_torch_thread():
            seen.append((torch.get_num_threads(), before))
    worker = threading.Thread(target=job)
    worker.start()
    worker.join()
    assert seen == [(1, before)] and torch.get_num_threads() == before   # a job thread leaves this one alone
    with one_torch_thread():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
