"""Sweeps on Dask: a 2-worker LocalCluster run equals the single-process run exactly; a worker SIGKILLed
mid-run loses and duplicates nothing; ``explorer sweep --cluster local:2`` killed with its whole
process group resumes with ``--resume``; an unreachable scheduler and a worker of another project
version are refused with clear messages."""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from explorer.analyses.distributed import (CONNECT_TIMEOUT_S, SweepWorkerPlugin, connect, fingerprint,
                                           fingerprint_difference, local_cluster, local_workers)
from explorer.analyses.runs import RunResults
from explorer.analyses.temperature import TemperatureAnalysis
from explorer.errors import InputError
from explorer.progress import Progress

ROOT = Path(__file__).resolve().parents[1]
KEY = ["kind", "temperature", "question_index", "variant", "sample_index"]
TINY = dict(max_questions=2, temperatures=[0.3, 1.2], n_samples=2, max_new_tokens=6, batch_questions=1,
            n_perturbations=1, replicates=1, bootstrap=3, with_p_true=False)
BATCHES = 2 + 4 + 4        # paraphrases, answers, perturbed: one question per batch


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---------------------------------------------------------------------- no model

def test_unreachable_scheduler_is_a_clear_error():
    assert CONNECT_TIMEOUT_S == 10
    with pytest.raises(InputError, match=r"scheduler at tcp://127\.0\.0\.1:\d+ did not answer within 2 s"):
        connect(f"127.0.0.1:{_free_port()}", timeout_s=2)              # nothing listens there
    with pytest.raises(InputError, match=r"did not answer within 2 s"):
        connect("tcp://192.0.2.1:8786", timeout_s=2)                   # TEST-NET-1: never answers


def test_the_sweep_command_reports_an_unreachable_scheduler(tmp_path, capsys):
    from explorer.cli_sweep import main

    db = tmp_path / "runs.duckdb"
    code = main(["--db", str(db), "--scheduler", f"tcp://127.0.0.1:{_free_port()}", "--max-questions", "1"])
    assert code == 2
    assert "did not answer within 10 s" in capsys.readouterr().err
    from explorer.analyses.runs import list_runs
    assert list_runs(str(db)).empty                                    # nothing was stored


def test_cluster_settings_are_checked():
    assert local_workers("local:3") == 3
    for bad in ("local:0", "local", "3", "local:two"):
        with pytest.raises(InputError, match="local:N"):
            local_workers(bad)
    with pytest.raises(InputError, match="not both"):
        TemperatureAnalysis(cluster="local:2", scheduler="tcp://h:8786").validate()
    settings = TemperatureAnalysis(cluster="local:2").settings()
    assert "cluster" not in settings and "scheduler" not in settings   # where a run ran is not what it is


def test_fingerprint_difference_names_what_differs():
    mine = fingerprint()
    assert fingerprint_difference(mine, mine) is None
    theirs = {"version": "0.0.9", "digest": "x",
              "files": {**{k: v for k, v in mine["files"].items() if k != "cli.py"}, "analyses/runs.py": "0" * 16,
                        "old.py": "1" * 16}}
    text = fingerprint_difference(mine, theirs)
    assert f"explorer 0.0.9 (client: {mine['version']})" in text
    assert "different source files: analyses/runs.py" in text
    assert "missing source files: cli.py" in text and "extra source files: old.py" in text


def test_a_worker_of_another_version_is_refused():
    """A real (in-process) worker compares its own sources with a client's that differ."""
    distributed = pytest.importorskip("distributed")
    client_side = {**fingerprint(), "version": "9.9.9", "digest": "other",
                   "files": {**fingerprint()["files"], "analyses/runs.py": "0" * 16}}
    with distributed.LocalCluster(n_workers=1, processes=False, dashboard_address=None) as cluster, \
            distributed.Client(cluster, set_as_default=False) as client:
        with pytest.raises(InputError, match=r"another version of the project.*explorer \S+ \(client: 9\.9\.9\)"
                                             r".*different source files: analyses/runs\.py"):
            client.register_plugin(SweepWorkerPlugin(client_side, load_model=False))


# ---------------------------------------------------------------------- with the model

@pytest.fixture(scope="module")
def cluster():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")          # the worker processes inherit it
    with local_cluster(2) as started:
        yield started


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The single-process run with the workers' arithmetic (one torch thread)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    db = str(tmp_path_factory.mktemp("reference") / "runs.duckdb")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_id = TemperatureAnalysis(db_path=db, **TINY).run()
    finally:
        torch.set_num_threads(threads)
    return RunResults(db, run_id).compute()


def _assert_same_run(results: RunResults, reference: RunResults) -> None:
    a = results.samples.sort_values(KEY).reset_index(drop=True)
    b = reference.samples.sort_values(KEY).reset_index(drop=True)
    keys = list(a[KEY].itertuples(index=False, name=None))
    assert len(keys) == len(set(keys)) and keys == list(b[KEY].itertuples(index=False, name=None))
    for column in ("prompt", "text", "token_ids", "token_log_probs", "token_entropies"):
        assert all((list(x) == list(y)) if column.startswith("token") else x == y
                   for x, y in zip(a[column], b[column])), column
    assert results.measures.equals(reference.measures)


@pytest.mark.model
def test_two_workers_equal_one_process_exactly(cluster, reference, tmp_path):
    db = str(tmp_path / "runs.duckdb")
    links = []
    run_id = TemperatureAnalysis(db_path=db, scheduler=cluster.scheduler_address, **TINY).run(
        on_cluster=links.append)
    results = RunResults(db, run_id).compute()
    _assert_same_run(results, reference)
    assert links and links[0].startswith("http")
    assert len(results.samples) == TemperatureAnalysis(**TINY).generations(2) == 18


class KillAWorker(Progress):
    """After the first stored batch, SIGKILL a worker that is running a batch (once)."""

    def __init__(self, client):
        super().__init__()
        self.client, self.killed, self.stored_before = client, None, []

    def update(self, done, total=1.0, text=None):
        if text and text.startswith("stored batch") and self.killed is None:
            self.stored_before.append(text.split()[2])
            busy = [address for address, keys in self.client.processing().items() if keys]
            if busy:
                pid = self.client.run(os.getpid, workers=[busy[0]])[busy[0]]
                os.kill(pid, signal.SIGKILL)
                self.killed = (busy[0], pid)
        super().update(done, total, text)


@pytest.mark.model
def test_a_worker_killed_mid_run_loses_and_duplicates_nothing(cluster, reference, tmp_path):
    import distributed

    db = str(tmp_path / "runs.duckdb")
    with distributed.Client(cluster, set_as_default=False) as client:
        progress = KillAWorker(client)
        run_id = TemperatureAnalysis(db_path=db, scheduler=cluster.scheduler_address, **TINY).run(progress)
    assert progress.killed is not None, "no worker was busy after the first batch"
    results = RunResults(db, run_id).compute()
    assert results.info["status"] == "done"
    # every key once, and every answer (those stored before the kill too) equal to the single-process run
    _assert_same_run(results, reference)


def _lines(stream, sink: queue.Queue) -> None:
    for line in iter(stream.readline, ""):
        sink.put(line.rstrip("\n"))
    sink.put(None)


def _wait_for(lines: queue.Queue, pattern: str, seen: list[str], timeout_s: float) -> re.Match:
    while True:
        line = lines.get(timeout=timeout_s)
        if line is None:
            raise AssertionError("the sweep ended early:\n" + "\n".join(seen))
        seen.append(line)
        match = re.search(pattern, line)
        if match:
            return match


@pytest.mark.model
def test_client_killed_with_its_cluster_resumes(reference, tmp_path, capsys):
    """``explorer sweep --cluster local:2`` and its worker processes (one process group) are SIGKILLed
    after a stored batch; ``--resume`` here finishes the run to the single-process answers and prints
    the TSU and evaluation tables."""
    from explorer.cli_sweep import main

    db = tmp_path / "runs.duckdb"
    flags = ["--max-questions", "2", "--temperatures", "0.3,1.2", "--samples", "2", "--max-new-tokens", "6",
             "--batch-questions", "1", "--perturbations", "1", "--replicates", "1", "--bootstrap", "3", "--no-p-true"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    child = subprocess.Popen([sys.executable, "-m", "explorer.cli", "sweep", "--db", str(db), "--cluster", "local:2",
                              *flags], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env, cwd=ROOT,
                             start_new_session=True)
    lines, seen = queue.Queue(), []
    threading.Thread(target=_lines, args=(child.stderr, lines), daemon=True).start()
    try:
        _wait_for(lines, r"^Dask dashboard: http", seen, 300)
        run_id = _wait_for(lines, r"^run (\w+) started in", seen, 300).group(1)
        _wait_for(lines, r"\] stored batch \S+ ", seen, 300)
        os.killpg(child.pid, signal.SIGKILL)                 # the client, its scheduler and its workers
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    assert any(re.search(r"\d+/18 answers, [\d.]+/s, ETA", line) for line in seen), seen   # counts, rate, ETA

    threads = torch.get_num_threads()
    torch.set_num_threads(1)                                  # the workers' arithmetic (see the reference)
    try:
        assert main(["--db", str(db), "--resume", run_id]) == 0
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr()
    assert "kept stored batch" in out.err
    assert "TSU, % of questions" in out.out and "Evaluation against correctness" in out.out and "T = 1.2" in out.out
    results = RunResults(str(db), run_id).compute()
    assert results.info["status"] == "done"
    _assert_same_run(results, reference)


def test_progress_bar_counts_answers_then_measures(capsys):
    from explorer.cli_sweep import _BarProgress, _LineProgress

    bar = _BarProgress()
    bar.update(4, 18, "stored batch answer-t0-q0 (answer answers at T=0.3)")
    assert (bar._bar.n, bar._bar.total, bar._unit) == (4, 18, "answers")
    bar.update(18, 18, "stored batch perturbed-t1-q1 (perturbed answers at T=1.2)")
    bar.update(1, 4, "measures: question 1, T=0.3")
    assert (bar._bar.n, bar._bar.total, bar._unit) == (1, 4, "measures")
    bar.close()
    assert "answers" in capsys.readouterr().err
    lines = _LineProgress()
    lines.update(2, 18, "stored batch para-q0 (paraphrase answers at T=1)")
    err = capsys.readouterr().err
    assert re.search(r"^\[ 11\.1%\] stored batch para-q0 .* · 2/18 answers, [\d.]+/s, ETA ", err)


@pytest.mark.model
def test_the_page_samples_on_a_configured_scheduler_and_links_its_dashboard(cluster, reference, tmp_path):
    from explorer.views.temperature import TemperatureSensitivity

    page = TemperatureSensitivity()
    settings = {k: v for k, v in TINY.items() if k != "temperatures"}
    page.analysis.param.update(db_path=str(tmp_path / "runs.duckdb"), scheduler=cluster.scheduler_address, **settings)
    page.temperatures_text = "0.3, 1.2"
    page._on_start(None)
    page.jobs.wait()
    assert re.search(r"Sampling on a Dask cluster: \[open its dashboard\]\(http://\S+\)", page._dashboard.object)
    assert page.results is not None and page.results.info["status"] == "done", page.jobs.message
    assert len(page.results.samples) == len(reference.samples)
    assert not page.jobs.message


def test_a_batch_that_keeps_killing_workers_is_a_clear_error():
    from distributed.scheduler import KilledWorker

    from explorer.analyses.distributed import _result
    from explorer.analyses.temperature import Batch

    class KillsEveryWorker:                     # a finished future whose task killed its workers 3 times
        def result(self):
            raise KilledWorker("explorer-batch-answer-t0-q0", "tcp://127.0.0.1:1", allowed_failures=3)

    batch = Batch("answer-t0-q0", "answer", 1.0, ((0, 0, "Q?"),), 2, 0, 4)
    with pytest.raises(InputError, match=r"Batch answer-t0-q0 was running on every worker that died.*--resume"):
        _result(KillsEveryWorker(), batch)
