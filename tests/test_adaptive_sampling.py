"""Adaptive sampling through the analysis: the control flow on scripted answers (a scripted sampler and
an exact-match equivalence stand in for the model and the embedder), a stopped adaptive run resumed
to the same answers, and once end to end with the real model."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

import explorer.analyses.temperature as temperature
from explorer.analyses.runs import RunResults, list_runs
from explorer.analyses.temperature import AdaptiveRule, Batch, TemperatureAnalysis, resume_run, sample_batch
from explorer.analyses.uncertainty_measures import Equivalence
from explorer.errors import InputError
from explorer.kernels.adaptive import adaptive_stop, round_class_counts
from explorer.kernels.uncertainty import semantic_clusters
from explorer.models.sampling import Sample, batch_seed
from explorer.progress import Cancelled

#: answers to each question in the order they are drawn
SCRIPT = {
    "same?": ["Paris"] * 10,                                     # SE 0, 0, 0: settled after round 3 (6 answers)
    "spread?": [f"answer {i}" for i in range(10)],              # SE = log n keeps moving: all 10 (N_max)
    "two?": ["x", "x", "x", "y", "x", "y", "x", "x", "y", "y"],  # SE 0, .562, .637, .562: settled after round 4 (8)
}
RULE = AdaptiveRule(round_size=2, epsilon=0.1, patience=2, n_min=4, n_max=10)
BATCH_SEED = 1234


class ExactMatch(Equivalence):
    """Answers mean the same when their texts are equal (no embedder, no NLI)."""

    def __init__(self, *args, **kwargs):
        self.threshold, self.nli, self.fallback_reason = 1.0, None, ""

    def matrix(self, question, texts, embeddings=None):
        return torch.tensor([[a == b for b in texts] for a in texts])


class ScriptedSampler:
    """Stands in for ``sample_answers``: answer j of a question is ``SCRIPT[question][j]``, where j
    follows from the round, found from the seed it is given (``batch_seed(batch seed, round)``)."""

    def __init__(self, batch_seeds):
        self.batch_seeds, self.calls = list(batch_seeds), []

    def round_of(self, seed: int) -> int:
        return next(r for base in self.batch_seeds for r in range(20) if batch_seed(base, r) == seed)

    def __call__(self, lm, prompts, temperature, n_samples, max_new_tokens, seed=0, chat=True, progress=None):
        r = self.round_of(seed)
        self.calls.append((tuple(prompts), n_samples, r))
        return [Sample(p, j, SCRIPT[prompt][r * RULE.round_size + j], [7, j], [-0.5, -0.1 * (j + 1)], [1.0, 0.5])
                for p, prompt in enumerate(prompts) for j in range(n_samples)]


@pytest.fixture
def scripted(monkeypatch):
    monkeypatch.setattr(temperature, "Equivalence", ExactMatch)

    def install(batch_seeds):
        sampler = ScriptedSampler(batch_seeds)
        monkeypatch.setattr(temperature, "sample_answers", sampler)
        return sampler
    return install


def test_rounds_stop_each_question_by_the_rule(scripted, monkeypatch):
    monkeypatch.setattr("explorer.models.embedder.load_embedder", lambda *a, **k: None)
    sampler = scripted([BATCH_SEED])
    prompts = tuple((i, 0, q) for i, q in enumerate(SCRIPT))
    rows = sample_batch(Batch("answer-t0-q0", "answer", 1.0, prompts, RULE.n_max, BATCH_SEED, 6, RULE))
    # round by round: only the open questions are sampled, each round from its own seed
    assert sampler.calls == [(("same?", "spread?", "two?"), 2, 0), (("same?", "spread?", "two?"), 2, 1),
                             (("same?", "spread?", "two?"), 2, 2), (("spread?", "two?"), 2, 3), (("spread?",), 2, 4)]
    used = rows.groupby("question_index").size().to_dict()
    assert used == {0: 6, 1: 10, 2: 8}
    for i, question in enumerate(SCRIPT):
        mine = rows[rows.question_index == i]
        assert mine["sample_index"].tolist() == list(range(used[i]))
        assert mine["text"].tolist() == SCRIPT[question][:used[i]]
        # the same rule replayed on the whole scripted sequence stops at the same count
        ids = semantic_clusters(ExactMatch().matrix(question, SCRIPT[question]))
        replay = adaptive_stop(round_class_counts(ids, RULE.round_size, RULE.n_max), RULE.epsilon, RULE.patience,
                               RULE.n_min, RULE.n_max)
        assert int(replay.n_used) == used[i]
    assert rows["kind"].eq("answer").all() and rows["temperature"].eq(1.0).all()


def test_last_round_is_cut_at_n_max(scripted, monkeypatch):
    monkeypatch.setattr("explorer.models.embedder.load_embedder", lambda *a, **k: None)
    sampler = scripted([BATCH_SEED])
    rule = AdaptiveRule(round_size=4, epsilon=0.1, patience=2, n_min=4, n_max=10)
    rows = sample_batch(Batch("b", "answer", 1.0, ((0, 0, "spread?"),), 10, BATCH_SEED, 6, rule))
    assert [n for _, n, _ in sampler.calls] == [4, 4, 2] and len(rows) == 10


def test_settings_are_checked():
    with pytest.raises(InputError, match="N_min"):
        TemperatureAnalysis(adaptive=True, adaptive_min=12, n_samples=10).validate()
    TemperatureAnalysis(adaptive=False, adaptive_min=12, n_samples=10, temperatures=[0.5, 1.0]).validate()
    assert TemperatureAnalysis().adaptive_rule() is None
    rule = TemperatureAnalysis(adaptive=True, n_samples=8, nli_model="x").adaptive_rule()
    assert (rule.n_max, rule.round_size, rule.n_min, rule.nli_model) == (8, 2, 4, "x")


class FakeModel:
    name = "scripted"


class StopAfterBatches(temperature.Progress):
    def __init__(self, batches):
        super().__init__()
        self.left = batches

    def update(self, done, total=1.0, text=None):
        if text and text.startswith("stored batch"):
            self.left -= 1
            if self.left < 0:
                self.cancel()
        super().update(done, total, text)


def test_adaptive_run_is_stored_resumable_and_deterministic(scripted, tmp_path):
    """A stopped adaptive run resumes to exactly the answers of an uninterrupted one; the answers each
    question used are read back from the run."""
    questions = tmp_path / "q.csv"
    pd.DataFrame({"question": list(SCRIPT), "answer": ["Paris", "none", "x"]}).to_csv(questions, index=False)
    db = str(tmp_path / "runs.duckdb")
    study = TemperatureAnalysis(questions_path=str(questions), max_questions=3, temperatures=[0.5, 1.0], n_samples=10,
                                batch_questions=2, adaptive=True, adaptive_round=2, adaptive_epsilon=0.1,
                                adaptive_rounds=2, adaptive_min=4, with_p_true=False, with_inv_entropy=False,
                                db_path=db)
    scripted([batch_seed(0, t, q) for t in range(2) for q in (0, 2)])
    whole = study.run(lm=FakeModel())
    with pytest.raises(Cancelled):
        study.run(StopAfterBatches(1), lm=FakeModel())
    runs = list_runs(db)
    stopped = runs.loc[runs.status == "stopped", "run_id"].iloc[0]
    partial = RunResults(db, stopped).samples
    assert 0 < len(partial) < len(RunResults(db, whole).samples)
    resume_run(db, stopped, lm=FakeModel())
    a, b = (RunResults(db, r).compute() for r in (whole, stopped))
    key = ["kind", "temperature", "question_index", "variant", "sample_index"]
    assert a.samples[key + ["text"]].equals(b.samples[key + ["text"]])
    used = a.answers_used()
    assert used.to_dict("index") == {0: {0.5: 6, 1.0: 6}, 1: {0.5: 10, 1.0: 10}, 2: {0.5: 8, 1.0: 8}}
    summary = a.answers_summary()
    assert summary["adaptive"] and summary["answers"] == 48 and summary["fixed_n_answers"] == 60
    assert summary["saved"] == pytest.approx(0.2)
    se = a.u_matrix("semantic_sets")
    assert se.loc[0].tolist() == [1.0, 1.0]      # the measures see each question's own answers


@pytest.mark.model
def test_adaptive_run_with_the_real_model(tmp_path, monkeypatch):
    """Tiny and real: every question uses between N_min and N answers in whole rounds, and the rule
    replayed on the stored answers (the run's own equivalence) stops exactly there."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from explorer.models.embedder import load_embedder

    db = str(tmp_path / "runs.duckdb")
    study = TemperatureAnalysis(max_questions=2, temperatures=[0.3, 1.5], n_samples=6, max_new_tokens=6,
                                batch_questions=2, adaptive=True, adaptive_round=2, adaptive_rounds=1,
                                adaptive_min=2, adaptive_epsilon=0.05, with_p_true=False, with_inv_entropy=False,
                                db_path=db)
    results = RunResults(db, study.run()).compute()
    used = results.answers_used()
    assert used.shape == (2, 2)
    assert ((used >= 2) & (used <= 6) & (used % 2 == 0)).all().all()
    equivalence = Equivalence("", study.equivalence_threshold, load_embedder())
    answers = results.samples[results.samples.kind == "answer"]
    for (qi, t), group in answers.groupby(["question_index", "temperature"]):
        ids = semantic_clusters(equivalence.matrix("", group.sort_values("sample_index")["text"].tolist()))
        counts = round_class_counts(ids, 2, 6)
        stop = adaptive_stop(counts, 0.05, 1, 2, 6)
        assert bool(stop.done) and int(stop.n_used) == len(group)
        # and it had not stopped a round earlier
        if len(group) > 2:
            assert not bool(adaptive_stop(counts[:-1], 0.05, 1, 2, 6).done)
    assert not math.isnan(results.u_matrix("se_discrete").to_numpy().sum())
