"""NLI equivalence for semantic entropy with a real (tiny, randomly initialised) sequence classifier
built locally: batched bidirectional-entailment matrix against one-pair-at-a-time predictions, the
strict and relaxed rules, label discovery, and the offline fallback for an unknown id."""

from __future__ import annotations

import math

import pytest
import torch

from explorer.analyses.uncertainty_measures import Equivalence, answer_measures
from explorer.errors import InputError
from explorer.kernels import uncertainty as unc
from explorer.models.nli import NLIModel, load_nli_model

WORDS = ("[PAD] [UNK] [CLS] [SEP] [MASK] what is the capital of france paris lyon rome city it a in "
         "country big small river seine south north").split()
LABELS = {0: "CONTRADICTION", 1: "NEUTRAL", 2: "ENTAILMENT"}
QUESTION = "what is the capital of france"
ANSWERS = ["paris", "it is paris", "lyon", "paris", "rome in the south", "a big city", "the seine river", "lyon"]


def _build(folder, labels=LABELS, seed=0, bias=None, init=0.2):
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(WORDS) + "\n")
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt"), do_lower_case=True).save_pretrained(folder)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(WORDS), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, num_labels=len(labels), id2label=labels,
                        label2id={v: k for k, v in labels.items()}, initializer_range=init)
    model = BertForSequenceClassification(config)   # wide initial weights: predictions depend on the input
    if bias is not None:
        with torch.no_grad():
            model.classifier.weight.zero_()
            model.classifier.bias.copy_(torch.tensor(bias))
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module", params=[0.2, 0.5], ids=["init0.2", "init0.5"])
def nli(request, tmp_path_factory):
    """Two random tiny classifiers: one mixing entailment and contradiction, one entailment and neutral."""
    return load_nli_model(str(_build(tmp_path_factory.mktemp("nli") / "tiny", init=request.param)), device="cpu")


def _one_pair(nli: NLIModel, premise: str, hypothesis: str) -> int:
    batch = nli.tokenizer(premise, hypothesis, return_tensors="pt")
    with torch.inference_mode():
        return int(nli.model(**batch).logits.argmax(-1))


def test_equivalence_matches_pairwise_predictions_and_clusters(nli):
    texts = [f"{QUESTION} {a}" for a in ANSWERS]
    n = len(texts)
    label = [[_one_pair(nli, texts[i], texts[j]) if texts[i] != texts[j] else 2 for j in range(n)] for i in range(n)]
    strict = torch.tensor([[label[i][j] == 2 and label[j][i] == 2 for j in range(n)] for i in range(n)])
    relaxed = torch.tensor([[label[i][j] != 0 and label[j][i] != 0 and not (label[i][j] == 1 and label[j][i] == 1)
                             for j in range(n)] for i in range(n)])
    off = ~torch.eye(n, dtype=torch.bool)
    assert 0 < int(strict[off].sum()) < int(off.sum())        # a mixed case: some pairs equivalent, some not
    assert torch.equal(nli.equivalence(ANSWERS, QUESTION), strict)
    assert torch.equal(nli.equivalence(ANSWERS, QUESTION, strict=False), relaxed)
    # the greedy clustering over it: every answer is equivalent both ways to its class leader
    ids = unc.semantic_clusters(strict)
    leaders = {int(c): j for j, c in reversed(list(enumerate(ids.tolist())))}
    for j, c in enumerate(ids.tolist()):
        assert strict[leaders[c], j] and strict[j, leaders[c]]
    assert ids[0] == ids[3] and ids[2] == ids[7]                # identical answers share a class
    # answer_measures uses the NLI classes instead of the cosine threshold
    emb = torch.nn.functional.normalize(torch.eye(n), dim=1)     # orthogonal: cosine alone would give n classes
    lp = [[-1.0]] * n
    m = answer_measures(ANSWERS, lp, lp, emb, threshold=0.9, mapping="paper", equivalence=strict)
    counts = torch.bincount(ids).double() / n
    assert m["semantic_sets"] == len(counts)
    assert m["se_discrete"] == pytest.approx(float(-(counts * counts.log()).sum()))
    assert answer_measures(ANSWERS, lp, lp, emb, threshold=0.9, mapping="paper")["semantic_sets"] == n


def test_forced_labels_give_one_class_or_all_apart(tmp_path):
    always = load_nli_model(str(_build(tmp_path / "entail", bias=[0.0, 0.0, 30.0])), device="cpu")
    assert always.equivalence(ANSWERS, QUESTION).all()
    never = load_nli_model(str(_build(tmp_path / "contradict", bias=[30.0, 0.0, 0.0])), device="cpu")
    same = never.equivalence(ANSWERS, QUESTION)
    distinct = len(set(ANSWERS))
    assert int(same.sum()) == len(ANSWERS) + 2 * 2              # the diagonal and the two repeated answers
    assert unc.number_of_semantic_sets(unc.semantic_clusters(same)) == distinct
    neutral = load_nli_model(str(_build(tmp_path / "neutral", bias=[0.0, 30.0, 0.0])), device="cpu")
    assert int(neutral.equivalence(ANSWERS, QUESTION, strict=False).sum()) == len(ANSWERS) + 4
    assert math.isclose(float(unc.semantic_entropy_discrete(unc.semantic_clusters(
        always.equivalence(ANSWERS, QUESTION)))), 0.0, abs_tol=1e-12)


def test_labels_must_name_entailment(tmp_path):
    folder = _build(tmp_path / "sentiment", labels={0: "NEGATIVE", 1: "POSITIVE"})
    with pytest.raises(InputError, match="not an NLI model"):
        load_nli_model(str(folder), device="cpu")
    binary = load_nli_model(str(_build(tmp_path / "rte", labels={0: "entailment", 1: "not_entailment"})), device="cpu")
    assert binary.entailment == 0 and binary.contradiction is None


def test_unknown_id_offline_falls_back_to_cosine(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(InputError, match="not in the local Hugging Face cache"):
        load_nli_model("nobody/no-such-nli")
    fallback = Equivalence("nobody/no-such-nli", threshold=0.9)
    assert fallback.method == "cosine"
    assert "could not be used" in fallback.description and "nobody/no-such-nli" in fallback.description
    emb = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.05], [0.0, 1.0]]), dim=1)
    assert fallback.matrix("q", ["a", "b", "c"], emb).tolist() == [[True, True, False], [True, True, False],
                                                                  [False, False, True]]
    used = Equivalence(str(_build(tmp_path / "ok")), threshold=0.9)
    assert used.method == "nli" and used.description.startswith("NLI bidirectional entailment")
    assert Equivalence("", threshold=0.9).description.startswith("embedding cosine >= 0.9")
