"""Training-log and representation loaders: every format from hand-built files (TensorBoard written by its
own SummaryWriter), column mapping, several runs, and one clear InputError for each bad input."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest

from explorer.data import training_logs, uploads
from explorer.data.training_logs import (
    ColumnMap,
    fit_run_law,
    load_bundled_rl_log,
    load_representation_run,
    load_training_log,
    load_training_logs,
    log_columns,
)
from explorer.errors import InputError


def log_table(n=8, **extra):
    step = np.arange(n) * 10
    entropy = np.linspace(2.0, 0.2, n)
    table = pd.DataFrame({"step": step, "entropy": entropy, "reward": 1 - 0.3 * np.exp(entropy) / 7,
                          "cov": np.linspace(0.3, 0.1, n)})
    return table.assign(**extra)


def csv_bytes(table: pd.DataFrame) -> bytes:
    return table.to_csv(index=False).encode()


# ------------------------------------------------------------------------------------- formats
def test_csv_jsonl_and_parquet_give_the_same_run(tmp_path):
    table = log_table()
    (tmp_path / "a.csv").write_bytes(csv_bytes(table))
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(row) for row in table.to_dict("records")) + "\n")
    table.to_parquet(tmp_path / "a.parquet")
    columns = ColumnMap(covariance="cov")
    runs = [load_training_log(tmp_path / f"a.{suffix}", columns=columns)[0] for suffix in ("csv", "jsonl", "parquet")]
    for run in runs:
        assert run.name == "a" and run.steps == 8
        assert list(run.frame.columns) == ["step", "entropy", "reward", "covariance"]
        np.testing.assert_allclose(run.frame["entropy"], table["entropy"], rtol=1e-14)  # text round trip
        np.testing.assert_allclose(run.frame["covariance"], table["cov"], rtol=1e-14)


def test_uploaded_bytes_need_their_file_name():
    assert load_training_log(csv_bytes(log_table()), "upload.csv")[0].steps == 8
    with pytest.raises(InputError, match="file name"):
        load_training_log(csv_bytes(log_table()))


def test_user_mapping_and_run_column():
    table = pd.concat([log_table(run="grpo").rename(columns={"entropy": "H", "reward": "acc"}),
                       log_table(6, run="ppo").rename(columns={"entropy": "H", "reward": "acc"})])
    runs = load_training_log(csv_bytes(table), "runs.csv", ColumnMap(entropy="H", reward="acc"))
    assert [(r.name, r.steps) for r in runs] == [("grpo", 8), ("ppo", 6)]
    with pytest.raises(InputError, match=r"no column 'entropy' for the entropy; columns are step, H, acc"):
        load_training_log(csv_bytes(table), "runs.csv")
    assert log_columns(csv_bytes(table), "runs.csv") == ["step", "H", "acc", "cov", "run"]


def test_several_files_one_run_each_with_unique_names(tmp_path):
    for folder in ("x", "y"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "log.csv").write_bytes(csv_bytes(log_table()))
    runs = load_training_logs([tmp_path / "x" / "log.csv", tmp_path / "y" / "log.csv"])
    assert [r.name for r in runs] == ["log", "log (2)"]
    uploads = load_training_logs({"first.csv": csv_bytes(log_table()), "second.csv": csv_bytes(log_table(5))})
    assert [(r.name, r.steps) for r in uploads] == [("first", 8), ("second", 5)]
    assert len(load_training_logs([tmp_path])) == 2  # a folder: every log file in it


def test_booleans_and_numbers_written_as_text_are_numbers():
    table = log_table().astype({"entropy": str})
    table["reward"] = np.arange(8) % 2 == 0
    run = load_training_log(csv_bytes(table), "t.csv")[0]
    assert run.frame["reward"].tolist() == [1.0, 0.0] * 4


def write_tensorboard(folder, steps=range(6), extra_tag=True):
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(folder))
    for step in steps:
        writer.add_scalar("policy/entropy", 2.0 / (step + 1), step)
        writer.add_scalar("reward/mean", 0.1 * step, step)
        if extra_tag and step % 2 == 0:
            writer.add_scalar("policy/cov", 0.5 - 0.05 * step, step)
    writer.close()
    return next(folder.glob("events.out.tfevents.*"))


def test_tensorboard_file_written_by_summary_writer(tmp_path):
    path = write_tensorboard(tmp_path / "grpo-run", steps=range(8))
    assert log_columns(path) == ["policy/cov", "policy/entropy", "reward/mean"]
    run = load_training_log(path, columns=ColumnMap(entropy="policy/entropy", reward="reward/mean"))[0]
    assert run.name == "grpo-run"
    assert run.frame["step"].tolist() == list(range(8))
    np.testing.assert_allclose(run.frame["entropy"], [2.0 / (s + 1) for s in range(8)], rtol=1e-7)  # float32 events
    np.testing.assert_allclose(run.frame["reward"], [0.1 * s for s in range(8)], rtol=1e-6, atol=1e-7)
    # a tag logged every other step: the run keeps the steps where every mapped tag was logged
    with_cov = load_training_log(path.read_bytes(), path.name,
                                 ColumnMap(entropy="policy/entropy", reward="reward/mean", covariance="policy/cov"))[0]
    assert with_cov.frame["step"].tolist() == [0, 2, 4, 6]
    np.testing.assert_allclose(with_cov.frame["covariance"], [0.5, 0.4, 0.3, 0.2], rtol=1e-6)


def test_tensorboard_without_the_chosen_tag(tmp_path):
    path = write_tensorboard(tmp_path / "run")
    with pytest.raises(InputError, match=r"no scalar tag 'entropy' in this TensorBoard file; its tags are policy/cov"):
        load_training_log(path, columns=ColumnMap(reward="reward/mean"))


def test_tensorboard_folder_of_runs(tmp_path):
    write_tensorboard(tmp_path / "a")
    write_tensorboard(tmp_path / "b", steps=range(5))
    runs = load_training_logs([tmp_path], ColumnMap(entropy="policy/entropy", reward="reward/mean"))
    assert sorted((r.name, r.steps) for r in runs) == [("a", 6), ("b", 5)]


# ------------------------------------------------------------------------------------- bad logs
@pytest.mark.parametrize("table, message", [
    (log_table().assign(entropy=["high"] + [1.0] * 7), r"column 'entropy' is not numeric \(e.g. the value 'high'\)"),
    (log_table().assign(reward=[0.1, np.nan] + [0.5] * 6),
     r"column 'reward' has 1 NaN or infinite value\(s\) \(first at row 2\)"),
    (log_table().assign(entropy=[np.inf] + [1.0] * 7), "NaN or infinite"),
    (log_table().assign(step=[0, 10, 20, 15, 40, 50, 60, 70]), r"must increase: step 15 \(row 4\) follows step 20"),
    (log_table().assign(step=[0, 10, 10, 30, 40, 50, 60, 70]), "must increase: step 10"),
    (log_table(3), r"3 logged step\(s\); the entropy law needs at least 4"),
])
def test_bad_logs(table, message):
    with pytest.raises(InputError, match=message):
        load_training_log(csv_bytes(table), "bad.csv")


def test_empty_unreadable_unsupported_and_oversized_logs(monkeypatch):
    with pytest.raises(InputError, match="empty.csv is empty"):
        load_training_log(b"", "empty.csv")
    with pytest.raises(InputError, match="the log has no rows"):
        load_training_log(b"step,entropy,reward\n", "header.csv")
    with pytest.raises(InputError, match="could not be read as JSONL"):
        load_training_log(b"{not json\n", "broken.jsonl")
    with pytest.raises(InputError, match="unsupported log type .txt"):
        load_training_log(b"1,2,3", "log.txt")
    with pytest.raises(InputError, match="no scalar values|could not read it as a TensorBoard"):
        load_training_log(b"garbage bytes", "events.out.tfevents.123.host")
    monkeypatch.setattr(uploads, "MAX_UPLOAD_BYTES", 100)
    with pytest.raises(InputError, match="files up to 100 bytes are accepted"):
        load_training_log(csv_bytes(log_table()), "big.csv")


def test_fit_errors_become_input_errors():
    run = load_training_log(csv_bytes(log_table().assign(entropy=0.5)), "flat.csv")[0]
    with pytest.raises(InputError, match="run 'flat': no entropy-law fit: the entropy is constant"):
        fit_run_law(run, bootstrap=10)


def test_bundled_rl_log_collapses_and_fits_the_law():
    run = load_bundled_rl_log()
    assert run.steps == 3000 and set(run.frame.columns) >= {"entropy", "reward", "covariance"}
    first, last = run.frame.iloc[:100].mean(), run.frame.iloc[-100:].mean()
    assert first["entropy"] > 1.5 and last["entropy"] < 0.2 and last["reward"] > first["reward"] + 0.5
    fit = fit_run_law(run, bootstrap=200)
    assert fit.a > 0 and fit.r2 > 0.8 and fit.ceiling_interval[0] <= fit.ceiling <= fit.ceiling_interval[1]


# ----------------------------------------------------------------------------- representations
def save_npy(folder, name, array):
    folder.mkdir(exist_ok=True)
    np.save(folder / name, array)


def epochs_of(rng, count=4, n=20, d=5):
    return [rng.normal(size=(n, d)) for _ in range(count)]


def test_folder_of_npy_with_side_labels_and_inputs(tmp_path):
    arrays = epochs_of(np.random.default_rng(0))
    for epoch, array in enumerate(arrays):
        save_npy(tmp_path, f"epoch_{epoch:02d}.npy", array)
    save_npy(tmp_path, "labels.npy", np.arange(20) % 3)
    save_npy(tmp_path, "inputs.npy", np.ones((20, 7)) * np.arange(20)[:, None])
    run = load_representation_run(tmp_path)
    assert run.epochs.tolist() == [0, 1, 2, 3] and list(run.layers) == ["representation"]
    np.testing.assert_allclose(run.layers["representation"].numpy(), np.stack(arrays), rtol=1e-6)
    assert run.labels.tolist() == (np.arange(20) % 3).tolist() and run.inputs.shape == (20, 7) and run.n == 20


def test_npz_layers_and_strided_steps(tmp_path):
    rng = np.random.default_rng(1)
    files = {}
    for step in (0, 100, 200):
        buffer = io.BytesIO()
        np.savez(buffer, h1=rng.normal(size=(10, 4)), h2=rng.normal(size=(10, 3)), labels=np.array(list("ab") * 5))
        files[f"ckpt-step{step}.npz"] = buffer.getvalue()
    run = load_representation_run(files)
    assert run.epochs.tolist() == [0, 100, 200] and {k: tuple(v.shape) for k, v in run.layers.items()} == {
        "h1": (3, 10, 4), "h2": (3, 10, 3)}
    assert run.labels.tolist() == list("ab") * 5


def test_parquet_per_epoch_and_one_long_parquet(tmp_path):
    rng = np.random.default_rng(2)
    long = []
    for epoch in range(3):
        table = pd.DataFrame(rng.normal(size=(6, 3)), columns=["z0", "z1", "z2"]).assign(label=list("xyzxyz"))
        table.to_parquet(tmp_path / f"e{epoch}.parquet")
        long.append(table.assign(epoch=epoch))
    per_epoch = load_representation_run(tmp_path)
    assert per_epoch.layers["representation"].shape == (3, 6, 3) and per_epoch.labels.tolist() == list("xyzxyz")
    pd.concat(long).to_parquet(tmp_path / "all.parquet")
    single = load_representation_run(tmp_path / "all.parquet")
    np.testing.assert_array_equal(single.layers["representation"].numpy(), per_epoch.layers["representation"].numpy())
    assert single.labels.tolist() == list("xyzxyz")


def npy_bytes(array, allow_pickle=False) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=allow_pickle)
    return buffer.getvalue()


def good(count=3, n=8, d=3, seed=0):
    return {f"epoch_{i}.npy": npy_bytes(a) for i, a in enumerate(epochs_of(np.random.default_rng(seed), count, n, d))}


@pytest.mark.parametrize("change, message", [
    (lambda f: {**f, "epoch_1.npy": npy_bytes(np.zeros((7, 3)))}, "epoch_1.npy has 7 rows but epoch_0.npy has 8"),
    (lambda f: {**f, "epoch_3.npy": npy_bytes(np.zeros((8, 3))), "epoch_5.npy": npy_bytes(np.zeros((8, 3)))},
     "Epoch 4 is missing: the checkpoints go every 1 up to 3, then jump to 5"),
    (lambda f: {**f, "step1.npz": f["epoch_1.npy"]}, "both hold epoch 1"),
    (lambda f: {**f, "final.npy": f["epoch_1.npy"]}, "cannot tell its epoch"),
    (lambda f: {**f, "epoch_1.npy": npy_bytes(np.array([{"a": 1}] * 8, dtype=object), allow_pickle=True)},
     "Python objects \\(pickled\\), which are never loaded"),
    (lambda f: {**f, "epoch_2.npy": npy_bytes(np.full((8, 3), np.nan))}, r"epoch_2.npy: 24 NaN or infinite value\(s\)"),
    (lambda f: {**f, "epoch_2.npy": npy_bytes(np.array([["a"] * 3] * 8))}, "must be numbers"),
    (lambda f: {**f, "epoch_2.npy": npy_bytes(np.zeros(8))}, "expected a 2-D array"),
    (lambda f: {**f, "epoch_2.npy": npy_bytes(np.zeros((8, 4)))}, "has 4 dimensions but 3"),
    (lambda f: {"epoch_0.npy": f["epoch_0.npy"]}, "Only one checkpoint"),
    (lambda f: {**f, "labels.npy": npy_bytes(np.arange(5))}, "5 labels for a probe set of 8 rows"),
    (lambda f: {**f, "epoch_1.npy": b""}, "epoch_1.npy is empty"),
    (lambda f: {**f, "notes.txt": b"hello"}, "notes.txt: unsupported type"),
    (lambda f: {}, "No .npy, .npz or .parquet files: give one representation file per epoch"),
])
def test_bad_representations(change, message):
    with pytest.raises(InputError, match=message):
        load_representation_run(change(good()))


def test_checkpoints_with_different_layers_or_labels(tmp_path):
    def npz(**arrays):
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        return buffer.getvalue()
    z = np.zeros((4, 2)) + np.arange(4)[:, None]
    with pytest.raises(InputError, match="every checkpoint must hold the same layers"):
        load_representation_run({"e0.npz": npz(a=z, b=z), "e1.npz": npz(a=z)})
    with pytest.raises(InputError, match="e1.npz: its labels differ"):
        load_representation_run({"e0.npz": npz(a=z, labels=np.arange(4)),
                                 "e1.npz": npz(a=z, labels=np.arange(4)[::-1])})


def test_representation_size_limit(monkeypatch):
    monkeypatch.setattr(training_logs, "MAX_UPLOAD_BYTES", 500)
    with pytest.raises(InputError, match=r"hold .* together \(limit 500 bytes\)"):
        load_representation_run(good(n=8, d=3))
