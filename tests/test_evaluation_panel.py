"""The evaluation of a stored run (``RunResults``): every table against scikit-learn, the evaluation
kernels or a direct float64 computation on the same resampled questions; undefined cases said in
words; paired differences of two measures and of two runs; TSU intervals."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn import metrics as skm

from explorer.analyses.runs import (RunComparison, RunResults, evaluation_display, paired_statistic,
                                    with_intervals)
from explorer.analyses.uncertainty_measures import MEASURE_LABELS
from explorer.data.store import ResultsStore
from explorer.errors import InputError
from explorer.kernels import evaluation as E
from explorer.kernels import uncertainty as unc

TEMPS = [0.5, 1.0, 1.5]
N_QUESTIONS, UNLABELLED = 40, 4          # the last 4 questions have no reference answer
RESAMPLES = 200


def synthetic_measures(seed: int = 0, shift: float = 1.0) -> pd.DataFrame:
    """Long measures table: msp and p_true (continuous, >= 0), se_discrete (few values: ties),
    inv_entropy (NaN for question 3), correct (every answer right at T = 1.5)."""
    g = np.random.default_rng(seed)
    rows = []
    for k, t in enumerate(TEMPS):
        correct = (g.random(N_QUESTIONS) < 0.6).astype(float) if t < 1.5 else np.ones(N_QUESTIONS)
        values = {
            "msp": np.abs(g.normal(size=N_QUESTIONS) + shift * (1 - correct)) + 0.1 * k,
            "p_true": np.abs(g.normal(0.3, 0.3, size=N_QUESTIONS) + 0.5 * shift * (1 - correct)),
            "se_discrete": np.round(g.random(N_QUESTIONS) * 3 + shift * (1 - correct)) / 2 + 0.05 * k,
            "inv_entropy": g.random(N_QUESTIONS) + 0.5 * (1 - correct) + 0.2 * k,
        }
        values["inv_entropy"][3] = np.nan
        for q in range(N_QUESTIONS):
            for m, v in values.items():
                rows.append(dict(question_index=q, temperature=t, measure=m, value=float(v[q])))
            if q < N_QUESTIONS - UNLABELLED:
                rows.append(dict(question_index=q, temperature=t, measure="correct", value=float(correct[q])))
    return pd.DataFrame(rows)


def stored_run(store: ResultsStore, measures: pd.DataFrame, questions: list[str] | None = None) -> str:
    questions = questions or [f"Q{i}?" for i in range(N_QUESTIONS)]
    answers = [[f"a{i}"] if i < N_QUESTIONS - UNLABELLED else [] for i in range(len(questions))]
    run_id = store.create_run("m", {"temperatures": TEMPS, "n_samples": 4}, pd.DataFrame(
        {"question": questions, "answers": answers}))
    store.replace_measures(run_id, measures)
    store.set_status(run_id, "done")
    return run_id


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    db = str(tmp_path_factory.mktemp("evaluation") / "runs.duckdb")
    store = ResultsStore(db)
    try:
        first = stored_run(store, synthetic_measures(0))
        second = stored_run(store, synthetic_measures(1, shift=0.3))
        other = stored_run(store, synthetic_measures(2), [f"Other {i}?" for i in range(N_QUESTIONS)])
    finally:
        store.close()
    return db, first, second, other


@pytest.fixture
def results(runs):
    db, first, _, _ = runs
    return RunResults(db, first, n_resamples=RESAMPLES, bootstrap_seed=3).compute()


def _labelled(measures: pd.DataFrame, t: float, m: str) -> tuple[np.ndarray, np.ndarray]:
    """u and correct of one measure at one temperature, straight from the long table."""
    at = measures[measures.temperature == t].pivot(index="question_index", columns="measure", values="value")
    at = at[at["correct"].notna()]
    return at[m].to_numpy(), at["correct"].to_numpy()


@pytest.mark.parametrize("t", [0.5, 1.0])
def test_point_estimates_match_sklearn_and_the_kernels(results, t):
    table = results.evaluation(t)
    measures = synthetic_measures(0)
    assert list(table["measure"]) == ["msp", "se_discrete", "p_true", "inv_entropy"]
    for m in table["measure"]:
        u, ok = _labelled(measures, t, m)
        keep = ~np.isnan(u)
        row = table.loc[MEASURE_LABELS[m]]
        assert row["questions"] == keep.sum() == (N_QUESTIONS - UNLABELLED - (m == "inv_entropy"))
        assert row["wrong"] == (1 - ok[keep]).sum()
        assert row["AUROC"] == pytest.approx(skm.roc_auc_score(1 - ok[keep], u[keep]), abs=1e-12)
        assert row["PR-AUC"] == pytest.approx(skm.average_precision_score(1 - ok[keep], u[keep]), abs=1e-12)
        ut, okt = torch.tensor(u), torch.tensor(ok)
        assert row["PRR"] == pytest.approx(float(E.prr(ut, okt)), abs=1e-12)
        assert row["AURC"] == pytest.approx(float(E.aurc(ut, 1 - okt)), abs=1e-12)
        assert row["E-AURC"] == pytest.approx(float(E.e_aurc(ut, 1 - okt)), abs=1e-12)
        assert row["note"] == ""
        if m in ("msp", "p_true"):
            p = np.exp(-u)
            assert row["Brier"] == pytest.approx(skm.brier_score_loss(ok, p), abs=1e-12)
            assert row["ECE"] == pytest.approx(float(E.expected_calibration_error(torch.tensor(p), okt, 10).ece),
                                               abs=1e-12)
        else:
            assert math.isnan(row["ECE"]) and math.isnan(row["Brier"])


def test_intervals_are_the_bootstrap_of_the_same_resampled_questions(results):
    """Each interval equals percentiles of the statistic recomputed on each resample by scikit-learn
    (rows repeated as drawn); every measure sees the same resamples."""
    t = 1.0
    table = results.evaluation(t)
    measures = synthetic_measures(0)
    counts = E.bootstrap_weights(N_QUESTIONS - UNLABELLED, RESAMPLES, seed=3).numpy().astype(int)
    for m in ("msp", "se_discrete"):
        u, ok = _labelled(measures, t, m)
        replicates = {"AUROC": [], "PR-AUC": []}
        for w in counts:
            rows = np.repeat(np.arange(len(u)), w)
            if 0 < ok[rows].sum() < len(rows):
                replicates["AUROC"].append(skm.roc_auc_score(1 - ok[rows], u[rows]))
                replicates["PR-AUC"].append(skm.average_precision_score(1 - ok[rows], u[rows]))
        row = table.loc[MEASURE_LABELS[m]]
        for name, values in replicates.items():
            low, high = np.quantile(values, [0.025, 0.975])
            assert row[f"{name} low"] == pytest.approx(low, abs=1e-9) and row[f"{name} high"] == pytest.approx(high, abs=1e-9)
            assert row[f"{name} low"] <= row[name] <= row[f"{name} high"]


def test_prr_cap_and_settings_invalidate_the_table(results):
    t = 1.0
    full = results.evaluation(t).loc[MEASURE_LABELS["msp"], "PRR"]
    results.max_rejection = 0.5
    u, ok = _labelled(synthetic_measures(0), t, "msp")
    capped = results.evaluation(t).loc[MEASURE_LABELS["msp"], "PRR"]
    assert capped == pytest.approx(float(E.prr(torch.tensor(u), torch.tensor(ok), max_rejection=0.5)), abs=1e-12)
    assert capped != pytest.approx(full)


def test_every_answer_right_is_undefined_in_words(results):
    table = results.evaluation(1.5)
    row = table.loc[MEASURE_LABELS["se_discrete"]]
    assert math.isnan(row["AUROC"]) and math.isnan(row["PR-AUC"]) and math.isnan(row["PRR"])
    assert "every answer is right (36 questions)" in row["note"] and "PR-AUC" in row["note"]
    assert row["AURC"] == 0.0                                 # defined: nothing is wrong, no risk
    shown = evaluation_display(table)
    assert shown.loc[MEASURE_LABELS["se_discrete"], "AUROC"] == "undefined"
    assert shown.loc[MEASURE_LABELS["se_discrete"], "ECE"] == "n/a"
    assert "nan" not in shown.drop(columns="note").to_string().lower()
    with pytest.raises(InputError, match="no temperature 0.7"):
        results.evaluation(0.7)


def test_every_temperature_at_once(results):
    table = results.evaluation()
    assert sorted(set(table["temperature"])) == TEMPS and len(table) == 3 * 4
    one = results.evaluation(1.0)
    assert np.allclose(table[table.temperature == 1.0]["AUROC"].to_numpy(), one["AUROC"].to_numpy())
    assert results.default_temperature == 1.0


def test_curves_match_sklearn(results):
    t, measures = 1.0, synthetic_measures(0)
    roc = results.roc_curves(t, ("msp", "se_discrete"))
    pr = results.pr_curves(t, ("se_discrete",))
    for m in ("msp", "se_discrete"):
        u, ok = _labelled(measures, t, m)
        fpr, tpr, thresholds = skm.roc_curve(1 - ok, u)
        mine = roc[roc.measure == m]
        assert np.allclose(mine["fpr"], fpr) and np.allclose(mine["tpr"], tpr)
        assert np.array_equal(mine["threshold"].to_numpy()[1:], thresholds[1:])
    u, ok = _labelled(measures, t, "se_discrete")
    precision, recall, _ = skm.precision_recall_curve(1 - ok, u)
    assert np.allclose(pr["precision"], precision) and np.allclose(pr["recall"], recall)


def test_risk_coverage_by_direct_computation(results):
    """Keep the k least uncertain; a tie block is kept as a whole at its end (thresholded curve)."""
    t = 1.0
    u, ok = _labelled(synthetic_measures(0), t, "se_discrete")
    curve = results.risk_coverage_curves(t, ("se_discrete",))
    assert np.allclose(curve["coverage"], np.arange(1, len(u) + 1) / len(u))
    for threshold in np.unique(u):
        kept = u <= threshold
        at_end = curve[np.isclose(curve["coverage"], kept.sum() / len(u))]
        assert at_end["risk"].iloc[0] == pytest.approx((1 - ok[kept]).mean(), abs=1e-12)


def test_reliability_diagram_of_probability_measures(results):
    t = 1.0
    u, ok = _labelled(synthetic_measures(0), t, "p_true")
    bins = results.reliability(t, "p_true")
    p = np.exp(-u)
    order = np.argsort(p, kind="stable")
    bin_of = np.arange(len(p)) * 10 // len(p)                     # position i of m goes to bin floor(10 i / m)
    for b in range(10):                                           # no ties in p: plain equal-mass bins
        part = order[bin_of == b]
        assert bins["count"][b] == len(part)
        assert bins["confidence"][b] == pytest.approx(p[part].mean(), abs=1e-12)
        assert bins["accuracy"][b] == pytest.approx(ok[part].mean(), abs=1e-12)
    assert bins.attrs["ece"] == pytest.approx(results.evaluation(t).loc[MEASURE_LABELS["p_true"], "ECE"], abs=1e-12)
    with pytest.raises(InputError, match="not a probability"):
        results.reliability(t, "se_discrete")


def test_paired_difference_of_two_measures(results):
    t = 1.0
    measures = synthetic_measures(0)
    diff = results.paired_difference("msp", "se_discrete", t)
    ua, ok = _labelled(measures, t, "msp")
    ub, _ = _labelled(measures, t, "se_discrete")
    assert diff["estimate"] == pytest.approx(skm.roc_auc_score(1 - ok, ua) - skm.roc_auc_score(1 - ok, ub), abs=1e-12)
    counts = E.bootstrap_weights(len(ok), RESAMPLES, seed=3).numpy().astype(int)
    replicates = []
    for w in counts:
        rows = np.repeat(np.arange(len(ok)), w)
        replicates.append(skm.roc_auc_score(1 - ok[rows], ua[rows]) - skm.roc_auc_score(1 - ok[rows], ub[rows]))
    low, high = np.quantile(replicates, [0.025, 0.975])
    assert (diff["low"], diff["high"]) == pytest.approx((low, high), abs=1e-9)
    share = min(np.mean(np.array(replicates) <= 0), np.mean(np.array(replicates) >= 0))
    assert diff["p_value"] == pytest.approx(min(1.0, 2 * share))
    assert diff["questions"] == len(ok) and diff["note"] == ""
    # inv_entropy lacks question 3: the pair uses the questions both have
    assert results.paired_difference("msp", "inv_entropy", t)["questions"] == len(ok) - 1
    undefined = results.paired_difference("msp", "se_discrete", 1.5)
    assert math.isnan(undefined["estimate"]) and "every answer is right" in undefined["note"]


def test_tsu_intervals(results):
    tsu = results.tsu_intervals()
    point = results.tsu_table()
    label = MEASURE_LABELS["msp"]
    assert list(tsu.columns.get_level_values(0).unique()) == list(point.columns)
    for column in point.columns:
        assert tsu.loc[label, (column, "TSU")] == pytest.approx(point.loc[label, column])
    u = torch.tensor(results.u_matrix("msp").to_numpy())
    rising = (u.diff(dim=1) > 0).all(1).double().numpy()                  # the chain 0.5 < 1 < 1.5
    counts = E.bootstrap_weights(N_QUESTIONS, RESAMPLES, seed=3).numpy()
    shares = 100 * counts @ rising / N_QUESTIONS
    low, high = np.quantile(shares, [0.025, 0.975])
    chain = "TSU(0.5-1.5)"
    assert tsu.loc[label, (chain, "low")] == pytest.approx(low) and tsu.loc[label, (chain, "high")] == pytest.approx(high)
    assert tsu.loc[label, (chain, "TSU")] == pytest.approx(unc.tsu(u))
    # inv_entropy's question 3 is NaN: it fails the chain, as in the TSU definition
    assert tsu.loc[MEASURE_LABELS["inv_entropy"], (chain, "high")] < 100


def test_no_reference_answers_gives_an_empty_table(tmp_path):
    db = str(tmp_path / "runs.duckdb")
    store = ResultsStore(db)
    measures = synthetic_measures(0)
    run_id = stored_run(store, measures[measures.measure != "correct"])
    store.close()
    results = RunResults(db, run_id).compute()
    assert results.evaluation(1.0).empty and not results.has_labels


def test_paired_difference_between_two_runs(runs):
    db, first, second, other = runs
    a = RunResults(db, first, n_resamples=RESAMPLES, bootstrap_seed=3)
    b = RunResults(db, second, n_resamples=RESAMPLES, bootstrap_seed=3)
    comparison = RunComparison(a, b).compute()
    assert comparison.same_questions and comparison.default_temperature == 1.0
    diff = comparison.paired_difference("msp", 1.0)
    ua, oka = _labelled(synthetic_measures(0), 1.0, "msp")
    ub, okb = _labelled(synthetic_measures(1, shift=0.3), 1.0, "msp")
    assert diff["estimate"] == pytest.approx(skm.roc_auc_score(1 - oka, ua) - skm.roc_auc_score(1 - okb, ub), abs=1e-12)
    direct = paired_statistic("AUROC", *map(torch.tensor, (ua, oka, ub, okb)), a)
    assert (diff["low"], diff["high"]) == (direct["low"], direct["high"])
    side = comparison.side_by_side(1.0)
    label = MEASURE_LABELS["msp"]
    assert side.loc[label, "A AUROC"] == pytest.approx(a.evaluation(1.0).loc[label, "AUROC"])
    assert side.loc[label, "B AUROC"] == pytest.approx(b.evaluation(1.0).loc[label, "AUROC"])
    assert side.loc[label, "ΔAUROC (A - B)"] == pytest.approx(diff["estimate"])
    assert side.loc[label, "A TSU"] == pytest.approx(a.tsu_table().loc[label, "TSU(0.5-1.5)"])
    different = RunComparison(a, RunResults(db, other)).compute()
    assert not different.same_questions
    with pytest.raises(InputError, match="same questions"):
        different.paired_difference("msp", 1.0)
    assert "ΔAUROC (A - B)" not in different.side_by_side(1.0)


def test_interval_text():
    table = pd.DataFrame({"AUROC": [0.7, math.nan], "AUROC low": [0.6, math.nan], "AUROC high": [0.8, math.nan]},
                         index=["a", "b"])
    assert with_intervals(table, ["AUROC"])["AUROC"].tolist() == ["0.700 [0.600, 0.800]", "undefined"]


# ---------------------------------------------------------------------- the panel (no browser)

def test_panel_fills_and_patches_its_plots_in_place(runs):
    from explorer.views.run_evaluation import EvaluationPanel

    db, first, _, _ = runs
    panel = EvaluationPanel(n_resamples=RESAMPLES)
    panel.results = RunResults(db, first).compute()
    panel.jobs.wait()
    assert panel.temperature == 1.0 and panel.measures == ["se_discrete", "msp", "p_true"]
    table = panel._table.value
    assert table["measure"].tolist()[:2] == [MEASURE_LABELS["msp"], MEASURE_LABELS["se_discrete"]]
    expected = panel.results.evaluation(1.0).loc[MEASURE_LABELS["msp"]]
    assert table.loc[0, "AUROC"] == f"{expected['AUROC']:.3f} [{expected['AUROC low']:.3f}, {expected['AUROC high']:.3f}]"
    assert table.loc[1, "ECE"] == "n/a" and "bins" in table.loc[0, "ECE"]
    roc = panel._src["roc"]
    assert roc.data["label"] == [MEASURE_LABELS[m] for m in ("se_discrete", "msp", "p_true")]
    assert "ECE" in panel._figures["reliability"].title.text
    assert panel._pair.object.startswith("**AUROC(") and "interval" in panel._pair.object
    panel.measures = ["inv_entropy"]                       # the same source, new data
    assert panel._src["roc"] is roc and roc.data["label"] == [MEASURE_LABELS["inv_entropy"]]
    assert not panel._notes.visible
    panel.temperature = 1.5                                # every answer right: said in words, no NaN shown
    panel.jobs.wait()
    assert panel._notes.visible and "every answer is right" in panel._notes.object
    # measures with the same reason share one line (inv_entropy lacks a question: its own line)
    lines = panel._notes.object.split("  \n")
    assert len(lines) == 2 and "(36 questions)" in lines[0] and lines[1].startswith("**Inv-Entropy** at T=1.5")
    assert set(panel._table.value["AUROC"]) == {"undefined"}
    assert panel._src["roc"].data["xs"] == []              # no ROC curve without wrong answers, and why
    assert panel._figures["roc"].title.text == "ROC (wrong = positive): undefined, needs right and wrong answers"
    assert "undefined" in panel._pair.object
    panel.max_rejection = 0.5                              # a setting reaches the analysis and recomputes
    panel.temperature = 1.0
    panel.jobs.wait()
    assert panel.results.max_rejection == 0.5
    capped = panel.results.evaluation(1.0).loc[MEASURE_LABELS["msp"], "PRR"]
    u, ok = _labelled(synthetic_measures(0), 1.0, "msp")
    assert capped == pytest.approx(float(E.prr(torch.tensor(u), torch.tensor(ok), max_rejection=0.5)), abs=1e-12)
    assert panel._tsu.value.columns.tolist()[:2] == ["measure", "TSU(0.5, 1)"]


# ---------------------------------------------------------------------- properties (hypothesis)

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@st.composite
def small_runs(draw):
    """A few questions at two temperatures: tied uncertainties (few distinct values) and any labels."""
    n = draw(st.integers(3, 12))
    values = st.lists(st.sampled_from([0.0, 0.5, 1.0, 2.0]), min_size=n, max_size=n)
    return n, draw(values), draw(values), draw(st.lists(st.booleans(), min_size=n, max_size=n))


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(small_runs())
def test_tables_equal_the_kernels_and_ignore_question_order(tmp_path, run):
    """On any small run: the table equals the kernels' evaluation table on the same resamples; the
    point estimates do not depend on the order of the questions; a measure minus itself is 0."""
    n, u_msp, u_se, right = run
    temps = [0.5, 1.0]
    db = str(tmp_path / f"runs-{abs(hash(str(run)))}.duckdb")
    order = list(reversed(range(n)))
    ids = []
    store = ResultsStore(db)
    for permutation in (list(range(n)), order):
        rows = [dict(question_index=q, temperature=t, measure=m, value=float(v[p]))
                for q, p in enumerate(permutation) for t in temps
                for m, v in (("msp", u_msp), ("se_discrete", u_se), ("correct", [float(x) for x in right]))]
        run_id = store.create_run("m", {"temperatures": temps}, pd.DataFrame(
            {"question": [f"Q{p}" for p in permutation], "answers": [["a"]] * n}))
        store.replace_measures(run_id, pd.DataFrame(rows))
        ids.append(run_id)
    store.close()
    first, reversed_run = (RunResults(db, r, n_resamples=50).compute() for r in ids)
    table = first.evaluation(1.0)
    u = torch.tensor([u_msp, u_se], dtype=torch.float64)
    ok = torch.tensor(right, dtype=torch.float64)
    kernel = E.evaluation_table(u, ok, n_resamples=50, seed=0)
    for name, statistic in (("AUROC", "auroc"), ("PRR", "prr"), ("AURC", "aurc"), ("E-AURC", "e_aurc")):
        for column, field in ((name, "estimate"), (f"{name} low", "low"), (f"{name} high", "high")):
            assert np.allclose(table[column].to_numpy(), getattr(kernel[statistic], field).numpy(), equal_nan=True)
    assert np.allclose(table["AUROC"], reversed_run.evaluation(1.0)["AUROC"], equal_nan=True)
    assert np.allclose(table["PRR"], reversed_run.evaluation(1.0)["PRR"], equal_nan=True)
    assert (table["note"] != "").tolist() == [math.isnan(a) or math.isnan(p) or math.isnan(ap) for a, p, ap in
                                              zip(table["AUROC"], table["PRR"], table["PR-AUC"])]
    same = first.paired_difference("msp", "msp", 1.0)
    assert math.isnan(same["estimate"]) or (same["estimate"] == 0 and same["p_value"] == 1.0)
