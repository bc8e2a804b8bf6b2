"""The training-dynamics page without a browser: it builds over hand-built runs and logs; epoch, t, q,
measure and forecast-share moves patch the plots' sources in place from the caches (nothing rebuilt or
recomputed); a layer change measures in the job runner; uploads and column mapping; one clear message
for each bad input, with the page keeping what it showed."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from test_training_analysis import logged_run, representation_run

from explorer.analyses.training import TrainingAnalysis
from explorer.data.training_runs import RUNS, DataSizeTraining, uncertainty_vs_data_size
from explorer.views.training import TrainingDynamics

SMALL_SIZES = DataSizeTraining(sizes=(20, 40, 80), members=2, width=8, epochs=2, min_steps=5, probe_rows=30)


@pytest.fixture(scope="module")
def data_size(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ENTROPY_EXPLORER_CACHE", str(tmp_path_factory.mktemp("cache")))
        return uncertainty_vs_data_size(SMALL_SIZES)


@pytest.fixture
def view(data_size, tmp_path, monkeypatch):
    monkeypatch.setenv("ENTROPY_EXPLORER_CACHE", str(tmp_path / "cache"))   # the page keeps its spectra there
    runs = {RUNS[0]: representation_run("t", 1.0), RUNS[1]: representation_run("s", 0.1, seed=1)}
    page = TrainingDynamics(analysis=TrainingAnalysis(runs=runs, logs=[logged_run()], data_size=data_size,
                                                      bootstrap=200, clusters=3))
    page.jobs.wait()
    return page


def data(view, name):
    return {key: list(value) for key, value in view._src[name].data.items()}


def csv_text(table: pd.DataFrame) -> bytes:
    return table.to_csv(index=False).encode()


def npy(array) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def test_the_page_shows_every_part(view):
    a = view.analysis
    assert not view.jobs.message
    assert sorted(data(view, "measure_lines")["run"]) == sorted(RUNS)
    assert data(view, "measure_points")["value"] == pytest.approx(list(a.measures()["dse"]))
    assert len(data(view, "plane_points")["x"]) == 8 and set(data(view, "plane_points")["marker"]) == {
        "circle", "triangle"}
    assert "Claim 1, DSE rises during training" in view._verdict.object
    assert "tr-card-true-labels-dse" in view._verdict.object
    assert len(data(view, "law_points")["entropy"]) == 40 and len(data(view, "law_curves")["xs"]) == 1
    ceiling = a.law_table()["ceiling"].iloc[0]
    assert data(view, "law_ceiling")["ceiling"] == [pytest.approx(ceiling)] and f"{ceiling:.3f}" in view._law_cards.object
    assert len(data(view, "covariance_points")["covariance"]) == 39
    assert len(data(view, "forecast_error")["error"]) == 40 - 12          # the first 30 % (12 steps) are fitted
    assert data(view, "size_points")["n"] == [20, 40, 80] and "Exponent k" in view._size_cards.object


def test_slider_moves_patch_the_sources_in_place(view):
    a = view.analysis
    figures, sources = dict(view._figures), dict(view._src)
    objects = {name: id(source) for name, source in sources.items()}
    computed = dict(a.computations)
    before = data(view, "spectrum")["ys"][0]
    view._epoch.value = 1                         # the epoch slider
    assert a.epoch == 1 and view._epoch_span.location == 1
    spectrum = a.spectrum_at_epoch()
    first = spectrum[spectrum["run"] == RUNS[0]]
    first = first[first["mu"] > 1e-15]
    assert list(data(view, "spectrum")["ys"][0]) == pytest.approx(list(first["mu"]))
    assert list(data(view, "spectrum")["ys"][0]) != pytest.approx(list(before))
    a.t = 2.5
    assert data(view, "measure_points")["value"] == pytest.approx(list(a.measures()["dse"]))
    a.q = 2.0
    view.measure = "vendi"
    assert data(view, "measure_points")["value"] == pytest.approx(list(a.measures()["vendi"]))
    assert view._figures["measure"].title.text == "Vendi score (cosine) against epoch"
    a.fraction = 0.5
    assert len(data(view, "forecast_error")["error"]) == 20 and "first 50%" in view._figures["forecast"].title.text
    assert view._figures == figures and {name: id(s) for name, s in view._src.items()} == objects
    assert all(a.computations[name] == computed[name] for name in ("spectra", "law_fits", "forecasts"))


def test_a_layer_change_measures_it_in_the_job_runner(view):
    a = view.analysis
    a.layer = "first"
    view.jobs.wait()
    assert a.computations["spectra"] == 4 and set(a.measures()["layer"]) == {"first"}
    assert data(view, "measure_points")["value"] == pytest.approx(list(a.measures()["dse"]))
    a.layer = "second"                             # cached: nothing recomputed
    view.jobs.wait()
    assert a.computations["spectra"] == 4


def test_uploaded_log_column_mapping_and_csv_export(view):
    frame = logged_run("mine", n=30, a=0.4, b=1.5).frame.rename(columns={"entropy": "policy_entropy"})
    frame["accuracy"] = frame["reward"] * 0.9
    view._log_upload.value = {"mine.csv": csv_text(frame)}
    view.jobs.wait()
    a = view.analysis
    assert view.log_source == "upload" and [run.name for run in a.logs] == ["mine"]
    assert view._column_widgets["entropy"].value == "policy_entropy" and view._column_widgets["reward"].value == "reward"
    assert view._column_widgets["covariance"].value == "covariance"
    ceiling = a.law_table()["ceiling"].iloc[0]
    view._column_widgets["reward"].value = "accuracy"   # map the other column: reloaded and refitted
    view.jobs.wait()
    assert a.law_table()["ceiling"].iloc[0] == pytest.approx(0.9 * ceiling, rel=1e-9)
    exported = pd.read_csv(io.StringIO(view._fits_csv()))
    assert exported["ceiling"].iloc[0] == pytest.approx(0.9 * ceiling)
    assert len(pd.read_csv(io.StringIO(view._points_csv()))) == 30


def test_tensorboard_upload_without_the_usual_tag_names_is_mapped_by_hand(view, tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(tmp_path / "tb"))
    for step in range(10):
        writer.add_scalar("policy/H", 2.0 - 0.15 * step, step)
        writer.add_scalar("reward/mean", 1 - 0.2 * np.exp(2.0 - 0.15 * step), step)
    writer.close()
    path = next((tmp_path / "tb").glob("events.out.tfevents.*"))
    view._log_upload.value = {path.name: path.read_bytes()}
    view.jobs.wait()
    assert "No entropy column found among policy/H, reward/mean" in view.jobs.message
    assert [run.name for run in view.analysis.logs] == ["law"]   # the page keeps the log it showed
    assert view._column_widgets["entropy"].options == {"(choose a column)": "", "policy/H": "policy/H",
                                                       "reward/mean": "reward/mean"}
    assert view._column_widgets["entropy"].value == "" and view._column_widgets["reward"].value == "reward/mean"
    assert view._column_widgets["step"].disabled
    view._column_widgets["entropy"].value = "policy/H"
    view._column_widgets["reward"].value = "reward/mean"
    view.jobs.wait()
    assert len(view.analysis.logs[0].frame) == 10 and view.analysis.law_table()["r2"].iloc[0] > 0.99


@pytest.mark.parametrize("table, message", [
    (logged_run(n=8).frame.assign(entropy=["high"] + [1.0] * 7), "column 'entropy' is not numeric"),
    (logged_run(n=8).frame.assign(reward=[0.1, np.nan] + [0.5] * 6), "NaN or infinite value(s) (first at row 2)"),
    (logged_run(n=8).frame.assign(step=[0, 10, 20, 15, 40, 50, 60, 70]), "the step column must increase"),
    (logged_run(n=3).frame, "3 logged step(s); the entropy law needs at least 4"),
])
def test_a_bad_log_gives_one_message_and_the_page_keeps_its_log(view, table, message):
    view._log_upload.value = {"bad.csv": csv_text(table)}
    view.jobs.wait()
    assert message in view.jobs.message and view.jobs._alert.visible
    assert [view._column_widgets[name].value for name in ("step", "entropy", "reward", "covariance")] == [
        "step", "entropy", "reward", "covariance"]   # the mapping tried, to fix by hand
    assert [run.name for run in view.analysis.logs] == ["law"] and len(data(view, "law_points")["entropy"]) == 40


def good_checkpoints(count=3, n=8, d=3) -> dict[str, bytes]:
    gen = np.random.default_rng(0)
    return {f"epoch_{i}.npy": npy(gen.normal(size=(n, d))) for i in range(count)}


@pytest.mark.parametrize("files, message", [
    ({**good_checkpoints(), "epoch_1.npy": npy(np.zeros((7, 3)))}, "epoch_1.npy has 7 rows but epoch_0.npy has 8"),
    ({**good_checkpoints(), "epoch_4.npy": npy(np.zeros((8, 3)))}, "Epoch 3 is missing"),
    ({**good_checkpoints(), "epoch_2.npy": npy(np.full((8, 3), np.inf))}, "NaN or infinite value(s)"),
])
def test_bad_checkpoints_give_one_message_and_the_page_keeps_its_runs(view, files, message):
    view._upload.value = files
    view.jobs.wait()
    assert message in view.jobs.message
    assert list(view.analysis.runs) == list(RUNS) and len(data(view, "measure_lines")["run"]) == 2


def test_uploaded_checkpoints_replace_the_runs_and_back(view):
    runs = view.analysis.runs
    view._upload.value = good_checkpoints(count=4, n=12)
    view.jobs.wait()
    a = view.analysis
    assert view.source == "upload" and list(a.runs) == ["uploaded representations"] and a.layer == "representation"
    assert data(view, "measure_lines")["run"] == ["uploaded representations"]
    assert "claims compare a run on true labels with one on shuffled labels" in view._verdict.object
    assert "needs the probe set's labels and inputs" in view._figures["plane"].title.text
    assert (view._epoch.start, view._epoch.end) == (0, 3)
    a.runs = runs                                       # the runs studied before stay cached
    assert a.is_computed()
