"""Temperature study: validation, measure assembly by hand, comparison and export of stored runs, and
small end-to-end runs with the real default model: one stopped from the page's Stop path, one
``explorer sweep`` killed with SIGKILL; both resume without duplicates or losses."""

import io
import math
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from explorer.analyses.runs import RunComparison, RunResults, export_run, list_runs
from explorer.analyses.temperature import TemperatureAnalysis, parse_temperatures, resume_run
from explorer.analyses.uncertainty_measures import MEASURE_LABELS, answer_measures, inv_entropy_bootstrap
from explorer.data.store import ResultsStore
from explorer.errors import InputError
from explorer.kernels import uncertainty as unc
from explorer.progress import Cancelled, Progress

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("temps, n, message", [
    ([0.7, 0.3], 5, "increasing"), ([0.0, 1.0], 5, "positive"), ([1.0], 5, "two"), ([0.3, 1.0], 1, "at least 2"),
    ([0.3, 0.3], 5, "increasing"),
])
def test_bad_settings(temps, n, message):
    with pytest.raises(InputError, match=message):
        TemperatureAnalysis(temperatures=temps, n_samples=n).validate()


@pytest.mark.parametrize("text, expected", [("0.3, 0.7; 1.4", [0.3, 0.7, 1.4]), ([0.5, 1], [0.5, 1.0])])
def test_temperatures_from_text_or_list(text, expected):
    assert parse_temperatures(text) == expected
    with pytest.raises(InputError, match="numbers"):
        parse_temperatures("0.3, warm")


def test_the_sweep_command_shares_the_analysis_defaults():
    from explorer.cli_sweep import FLAG_NAMES, NOT_FLAGS, parser

    args = parser().parse_args([])
    defaults = TemperatureAnalysis()
    for name in TemperatureAnalysis.param:
        if name not in NOT_FLAGS:
            expected = getattr(defaults, name)
            value = parse_temperatures(args.temperatures) if name == "temperatures" else getattr(args, name)
            assert value == expected, name
    flags = parser().format_help()
    assert all(flag in flags for flag in FLAG_NAMES.values()) and "--correctness-threshold" in flags


def test_cost_counts_every_generation():
    study = TemperatureAnalysis(max_questions=3, temperatures=[0.3, 1.0], n_samples=4, n_perturbations=2, replicates=2)
    assert study.generations() == 2 * (3 * 4 + 3 * 3 * 2) + 3 * 2
    assert TemperatureAnalysis(max_questions=3, temperatures=[0.3, 1.0], n_samples=4, with_inv_entropy=False).generations() == 24


def test_answer_measures_by_hand():
    emb = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.01], [0.0, 1.0]]), dim=1)
    lp = [[-1.0, -1.0], [-0.5], [-2.0, -1.0, -3.0]]
    ent = [[1.0, 3.0], [2.0], [0.0, 0.0, 3.0]]
    m = answer_measures(["Paris", "paris", "Lyon"], lp, ent, emb, threshold=0.9, mapping="paper")
    assert m["msp"] == pytest.approx(0.5)
    assert m["mean_token_entropy"] == pytest.approx((2 + 2 + 1) / 3)
    assert m["mc_entropy"] == pytest.approx((2 + 0.5 + 6) / 3)
    assert m["mc_entropy_norm"] == pytest.approx((1 + 0.5 + 2) / 3)
    assert m["semantic_sets"] == 2
    assert m["se_discrete"] == pytest.approx(-(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3)))
    assert m["lexical"] == pytest.approx(-1 / 3)
    assert 1.0 <= m["vendi"] <= 3.0   # two near-identical answers and one apart: between 1 and 3 effective answers


def test_inv_entropy_bootstrap_identical_replicates_equals_single_draw():
    x = torch.nn.functional.normalize(torch.randn(3, 5, generator=torch.Generator().manual_seed(0)), dim=1)
    y = torch.nn.functional.normalize(torch.randn(3, 5, generator=torch.Generator().manual_seed(1)), dim=1)
    value = inv_entropy_bootstrap(x, y.unsqueeze(1).expand(3, 4, 5), bootstrap=7, seed=0, mapping="paper")
    sx, sy = (unc.cosine_to_similarity((a @ a.T).double()) for a in (x, y))
    assert value == pytest.approx(float(unc.inv_entropy(sx, sy)))


class StopAfter(Progress):
    """A real Progress whose user presses Stop after ``calls`` progress updates."""

    def __init__(self, calls):
        super().__init__()
        self.calls = calls

    def update(self, done, total=1.0, text=None):
        self.calls -= 1
        if self.calls < 0:
            self.cancel()
        super().update(done, total, text)


@pytest.mark.model
def test_end_to_end_stop_and_resume(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    db = str(tmp_path / "runs.duckdb")
    study = TemperatureAnalysis(max_questions=2, temperatures=[0.3, 1.2], n_samples=2, max_new_tokens=6,
                             batch_questions=2, n_perturbations=1, replicates=2, bootstrap=5, db_path=db)
    with pytest.raises(Cancelled):
        study.run(StopAfter(2))
    runs = list_runs(db)
    assert runs["status"].tolist() == ["stopped"]
    run_id = runs["run_id"].iloc[0]
    partial = RunResults(db, run_id).samples
    assert 0 < len(partial) < study.generations(2)
    resume_run(db, run_id)
    results = RunResults(db, run_id)
    assert results.info["status"] == "done"
    s = results.samples
    assert len(s) == study.generations(2)
    assert not s.duplicated(["kind", "temperature", "question_index", "variant", "sample_index"]).any()
    # the batches stored before the stop are unchanged
    key = ["kind", "temperature", "question_index", "variant", "sample_index"]
    merged = partial.merge(s, on=key, suffixes=("", "_after"))
    assert len(merged) == len(partial) and (merged["text"] == merged["text_after"]).all()
    assert {"se_discrete", "inv_entropy", "p_true", "eigv", "correct"} <= set(results.measure_names + ["correct"])
    u = results.u_matrix("se_discrete")
    assert u.shape == (2, 2) and u.notna().all().all()
    assert list(results.tsu_table().columns) == ["TSU(0.3, 1.2)"]
    assert results.tsu_table().to_numpy().min() >= 0
    table = results.evaluation()
    assert set(table["temperature"]) == {0.3, 1.2} and {"AUROC low", "PR-AUC", "PRR high", "E-AURC", "note"} <= set(table.columns)
    assert all(len(ids) == len(lp) for ids, lp in zip(s["token_ids"], s["token_log_probs"]))


def _lines(stream, sink: queue.Queue) -> None:
    for line in iter(stream.readline, ""):
        sink.put(line.rstrip("\n"))
    sink.put(None)


def _wait_for(lines: queue.Queue, pattern: str, seen: list[str], timeout_s: float) -> re.Match:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=max(deadline - time.monotonic(), 0.01))
        except queue.Empty:
            break
        if line is None:
            break
        seen.append(line)
        match = re.search(pattern, line)
        if match:
            return match
    raise AssertionError(f"no line matching {pattern!r} within {timeout_s} s; output so far:\n" + "\n".join(seen))


SWEEP = ["--max-questions", "2", "--temperatures", "0.3,1.2", "--samples", "2", "--max-new-tokens", "8",
         "--batch-questions", "2", "--perturbations", "1", "--replicates", "2", "--bootstrap", "3", "--no-p-true"]
SAMPLE_KEY = ["kind", "temperature", "question_index", "variant", "sample_index"]


@pytest.mark.model
def test_sweep_killed_mid_run_resumes_without_duplicates_or_losses(tmp_path):
    """``explorer sweep`` in a subprocess is SIGKILLed after some batches are stored; the DuckDB file
    (its write-ahead log unflushed) reopens, ``--resume`` finishes the run, and every (kind,
    temperature, question, variant, sample) is stored exactly once with the pre-kill samples unchanged."""
    db = tmp_path / "runs.duckdb"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "explorer.cli", "sweep", "--db", str(db)]
    child = subprocess.Popen(command + SWEEP, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                             env=env, cwd=ROOT)
    lines, seen = queue.Queue(), []
    threading.Thread(target=_lines, args=(child.stderr, lines), daemon=True).start()
    try:
        run_id = _wait_for(lines, r"^run (\w+) started in", seen, 300).group(1)
        # while the sweep holds the file, a second writer gets a clear message and changes nothing
        with pytest.raises(InputError, match="locked"):
            ResultsStore(db)
        _wait_for(lines, r"\] stored batch answer-t0-q0 ", seen, 300)   # the paraphrase batch, then this one
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    assert db.with_name(db.name + ".wal").exists()        # the killed process never checkpointed

    store = ResultsStore(db)                              # replays the write-ahead log
    try:
        before, batches_before, status = store.samples(run_id), store.finished_batches(run_id), store.run(run_id)["status"]
    finally:
        store.close()
    assert status == "running"                            # killed: never marked stopped or done
    assert {"para-q0", "answer-t0-q0"} <= batches_before
    assert len(batches_before) < 5                        # 1 paraphrase + 2 answer + 2 perturbed batches in all
    assert not before.duplicated(SAMPLE_KEY).any()

    resumed = subprocess.run(command + ["--resume", run_id], capture_output=True, text=True, env=env, cwd=ROOT,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    kept = re.findall(r"kept stored batch (\S+)", resumed.stderr)
    assert set(kept) == batches_before                    # nothing stored before the kill is drawn again

    results = RunResults(str(db), run_id)
    assert results.info["status"] == "done"
    after = results.samples
    expected = {("paraphrase", 1.0, q, 0, s) for q in range(2) for s in range(1)}
    expected |= {("answer", t, q, 0, s) for t in (0.3, 1.2) for q in range(2) for s in range(2)}
    expected |= {("perturbed", t, q, v, s) for t in (0.3, 1.2) for q in range(2) for v in range(2) for s in range(2)}
    keys = list(after[SAMPLE_KEY].itertuples(index=False, name=None))
    assert len(keys) == len(set(keys)) == 26 and set(keys) == expected
    merged = before.merge(after, on=SAMPLE_KEY, suffixes=("", "_after"))
    assert len(merged) == len(before)
    for column in ("text", "prompt", "token_ids", "token_log_probs", "token_entropies"):
        assert all(list(a) == list(b) if column.startswith("token") else a == b
                   for a, b in zip(merged[column], merged[column + "_after"])), column
    u = results.u_matrix("se_discrete")
    assert u.shape == (2, 2) and u.notna().all().all()
    assert results.u_matrix("inv_entropy").notna().all().all()


# ---------------------------------------------------------------- comparison and export (stored runs, no model)

def _stored_run(store: ResultsStore, temps, values: dict[str, list[list[float]]]) -> str:
    questions = pd.DataFrame({"question": ["A?", "B?", "C?"], "answers": [["a"], ["b"], []]})
    run_id = store.create_run("m", {"temperatures": temps, "n_samples": 2}, questions)
    rows = [dict(question_index=q, temperature=t, measure=m, value=u[q][k])
            for m, u in values.items() for q in range(3) for k, t in enumerate(temps)]
    store.replace_measures(run_id, pd.DataFrame(rows))
    store.set_status(run_id, "done")
    return run_id


def test_comparison_of_two_stored_runs(tmp_path):
    db = str(tmp_path / "runs.duckdb")
    store = ResultsStore(db)
    first = _stored_run(store, [0.3, 1.0], {"se_discrete": [[0.0, 1.0], [0.5, 0.5], [0.2, 0.9]],
                                            "mc_entropy": [[1.0, 2.0], [1.0, 3.0], [2.0, 1.0]]})
    second = _stored_run(store, [0.3, 0.7, 1.4], {"se_discrete": [[0.1, 0.2, 0.3], [0.3, 0.2, 0.1], [0.0, 0.0, 0.6]]})
    store.close()
    cmp = RunComparison(RunResults(db, first), RunResults(db, second))
    assert cmp.measure_names == ["se_discrete"]
    curves = cmp.mean_curves("se_discrete")
    a = curves[curves.run == "A"]
    assert a["temperature"].tolist() == [0.3, 1.0]
    assert a["mean"].tolist() == pytest.approx([0.7 / 3, 2.4 / 3])
    assert a["sd"].iloc[0] == pytest.approx(float(np.std([0.0, 0.5, 0.2])))
    b = curves[curves.run == "B"]
    assert b["mean"].tolist() == pytest.approx([0.4 / 3, 0.4 / 3, 1.0 / 3]) and b["questions"].tolist() == [3, 3, 3]
    assert set(cmp.mean_curves()["measure"]) == {"se_discrete"}
    tsu = cmp.tsu()
    label = MEASURE_LABELS["se_discrete"]
    assert tsu.loc[label, "A: TSU(0.3, 1)"] == pytest.approx(200 / 3)        # rows 1 and 3 rise, row 2 ties
    assert tsu.loc[label, "B: TSU(0.3-1.4)"] == pytest.approx(100 / 3)       # only row 1 rises strictly all along
    assert tsu.loc[label, "B: TSU(0.3, 1.4)"] == pytest.approx(200 / 3)
    assert math.isnan(tsu.loc[MEASURE_LABELS["mc_entropy"], "B: TSU(0.3, 0.7)"])   # not measured in run B
    assert tsu.loc[MEASURE_LABELS["mc_entropy"], "A: TSU(0.3, 1)"] == pytest.approx(200 / 3)
    assert cmp.overview().loc["B", "temperatures"] == "0.3, 0.7, 1.4"
    assert "offline fallback" in cmp.overview().loc["A", "equivalence"]


def test_export_run_zip_of_parquet(tmp_path):
    db = str(tmp_path / "runs.duckdb")
    store = ResultsStore(db)
    run_id = _stored_run(store, [0.3, 1.0], {"se_discrete": [[0.0, 1.0], [0.5, 0.5], [0.2, 0.9]]})
    store.close()
    with zipfile.ZipFile(io.BytesIO(export_run(db, run_id))) as archive:
        assert sorted(archive.namelist()) == sorted(f"{run_id}_{t}.parquet" for t in ("questions", "samples", "measures"))
        measures = pd.read_parquet(io.BytesIO(archive.read(f"{run_id}_measures.parquet")))
        questions = pd.read_parquet(io.BytesIO(archive.read(f"{run_id}_questions.parquet")))
    assert measures["value"].tolist() == RunResults(db, run_id).measures["value"].tolist()
    assert questions["question"].tolist() == ["A?", "B?", "C?"]
    with pytest.raises(InputError, match="No run"):
        export_run(db, "nope")
