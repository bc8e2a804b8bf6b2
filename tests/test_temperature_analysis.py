"""Temperature study: validation, measure assembly by hand, and a small end-to-end run with the real
default model that is stopped mid-run and resumed without duplicates or losses."""

import math

import pytest
import torch

from explorer.analyses.temperature import (RunResults, TemperatureStudy, answer_measures, inv_entropy_bootstrap,
                                           list_runs, resume_run)
from explorer.errors import InputError
from explorer.kernels import uncertainty as unc
from explorer.progress import Cancelled, Progress


@pytest.mark.parametrize("temps, n, message", [
    ([0.7, 0.3], 5, "increasing"), ([0.0, 1.0], 5, "positive"), ([1.0], 5, "two"), ([0.3, 1.0], 1, "at least 2"),
    ([0.3, 0.3], 5, "increasing"),
])
def test_bad_settings(temps, n, message):
    with pytest.raises(InputError, match=message):
        TemperatureStudy(temperatures=temps, n_samples=n).validate()


def test_cost_counts_every_generation():
    study = TemperatureStudy(max_questions=3, temperatures=[0.3, 1.0], n_samples=4, n_perturbations=2, replicates=2)
    assert study.generations() == 2 * (3 * 4 + 3 * 3 * 2) + 3 * 2
    assert TemperatureStudy(max_questions=3, temperatures=[0.3, 1.0], n_samples=4, with_inv_entropy=False).generations() == 24


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
    study = TemperatureStudy(max_questions=2, temperatures=[0.3, 1.2], n_samples=2, max_new_tokens=6,
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
    assert list(results.tsu_table.columns) == ["TSU(0.3, 1.2)"]
    assert results.tsu_table.to_numpy().min() >= 0
    assert set(results.evaluation.columns) == {"AUROC", "PRR"}
    assert all(len(ids) == len(lp) for ids, lp in zip(s["token_ids"], s["token_log_probs"]))
