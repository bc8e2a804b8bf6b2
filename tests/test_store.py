"""DuckDB results store: round trip, resumable batches, a writer killed mid-run (WAL replay), locked and
corrupt files, Parquet export."""

import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from explorer.data.store import SAMPLE_COLUMNS, ResultsStore
from explorer.errors import InputError

QUESTIONS = pd.DataFrame({"question": ["A?", "B?"], "answers": [["x"], []]})


def batch(t, texts):
    return pd.DataFrame([dict(kind="answer", temperature=t, question_index=i, variant=0, sample_index=0,
                              prompt="p", text=x, token_ids=[1, 2], token_log_probs=[-0.1, -0.2],
                              token_entropies=[0.5, 0.7]) for i, x in enumerate(texts)], columns=SAMPLE_COLUMNS)


def test_round_trip_and_batches_once(tmp_path):
    store = ResultsStore(tmp_path / "r.duckdb")
    run_id = store.create_run("m", {"temperatures": [0.3, 1.0]}, QUESTIONS)
    store.add_batch(run_id, "t0-b0", batch(0.3, ["x", "y"]))
    store.add_batch(run_id, "t0-b0", batch(0.3, ["dup", "dup"]))   # already stored: ignored
    assert store.finished_batches(run_id) == {"t0-b0"}
    samples = store.samples(run_id)
    assert samples["text"].tolist() == ["x", "y"]
    assert list(samples["token_ids"].iloc[0]) == [1, 2]
    assert store.questions(run_id)["answers"].tolist() == [["x"], []]
    assert store.run(run_id)["settings"] == {"temperatures": [0.3, 1.0]}
    store.replace_measures(run_id, pd.DataFrame({"question_index": [0, 1], "temperature": [0.3, 0.3],
                                                 "measure": ["se", "se"], "value": [0.1, 0.2]}))
    store.close()
    reopened = ResultsStore(tmp_path / "r.duckdb")
    assert reopened.runs()["answers"].tolist() == [2]
    assert reopened.measures(run_id)["value"].tolist() == [0.1, 0.2]
    paths = reopened.export_parquet(run_id, tmp_path / "out")
    assert pd.read_parquet(paths[1])["text"].tolist() == ["x", "y"]
    with pytest.raises(InputError, match="No run"):
        reopened.run("nope")


def test_corrupt_file_is_input_error_and_untouched(tmp_path):
    path = tmp_path / "bad.duckdb"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(InputError, match="not a valid results database|cannot be opened"):
        ResultsStore(path)
    assert path.read_bytes() == b"this is not a database" * 100


def test_locked_file_is_input_error(tmp_path):
    path = tmp_path / "locked.duckdb"
    ResultsStore(path).close()
    holder = subprocess.Popen([sys.executable, "-c", f"import duckdb, sys; c = duckdb.connect({str(path)!r}); "
                               "print('ready', flush=True); sys.stdin.read()"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        with pytest.raises(InputError, match="locked"):
            ResultsStore(path)
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)


CHILD = """
import os, signal, sys
import pandas as pd
sys.path.insert(0, {root!r})
from tests.test_store import QUESTIONS, batch
from explorer.data.store import ResultsStore
store = ResultsStore({path!r})
run_id = store.create_run("m", {{"temperatures": [0.3]}}, QUESTIONS)
store.add_batch(run_id, "t0-b0", batch(0.3, ["x", "y"]))
store.update_settings(run_id, equivalence="cosine")
print(run_id, flush=True)
os.kill(os.getpid(), signal.SIGKILL)     # no close, no checkpoint: the batch lives only in the WAL
"""


def test_killed_writer_is_recovered_from_the_wal(tmp_path):
    path = tmp_path / "killed.duckdb"
    root = str(Path(__file__).resolve().parents[1])
    child = subprocess.run([sys.executable, "-c", CHILD.format(root=root, path=str(path))], capture_output=True,
                           text=True, timeout=120)
    assert child.returncode == -signal.SIGKILL, child.stderr
    run_id = child.stdout.strip()
    assert path.with_name(path.name + ".wal").stat().st_size > 0
    store = ResultsStore(path)
    try:
        assert store.finished_batches(run_id) == {"t0-b0"}
        assert store.samples(run_id)["text"].tolist() == ["x", "y"]
        assert store.run(run_id)["settings"] == {"temperatures": [0.3], "equivalence": "cosine"}
        store.add_batch(run_id, "t0-b0", batch(0.3, ["again", "again"]))     # a resumed writer adds nothing twice
        assert store.samples(run_id)["text"].tolist() == ["x", "y"]
    finally:
        store.close()


def test_threads_opening_a_new_file_at_once(tmp_path):
    """A page's jobs may open a new results file at the same moment (the runs table and a run): the
    tables are created once, without a write-write conflict."""
    import threading

    for trial in range(5):
        path = tmp_path / f"runs-{trial}.duckdb"
        barrier, errors = threading.Barrier(4), []

        def open_store():
            barrier.wait()
            try:
                ResultsStore(path).close()
            except Exception as err:  # noqa: BLE001 - collected for the assertion
                errors.append(err)
        threads = [threading.Thread(target=open_store) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors, errors[0]
