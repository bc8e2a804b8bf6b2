"""Post-processing cost per question (N = 10 answers) of every sequence-level measure.

Run: HF_HUB_OFFLINE=1 python bench/bench_uncertainty.py [--quick] [--nli] [--device cpu|cuda]
Prints ours per measure, and Inv-Entropy and semantic entropy (embeddings included) next to the
Inv-Entropy paper's reported per-question figures (1.99 s for Inv-Entropy, 13.99 s for semantic
entropy, both including their NLI / SBERT calls, on the paper's hardware: reported, not measured
here). AUROC and PRR against scikit-learn / numpy: ``bench/bench_evaluation.py``.

``--nli`` also times NLI equivalence with a DeBERTa-large-MNLI-sized classifier (24 layers, hidden
1024, the size Kuhn et al. use; randomly initialised here because no weights can be downloaded, so
the time is real and the classes are not): our batched all-pairs matrix against the reference
implementation's greedy loop that classifies one pair at a time.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python bench/bench_uncertainty.py` finds bench.*

from bench.common import no_cuda, result, table  # noqa: E402
from explorer.kernels import uncertainty as U  # noqa: E402
from explorer.models.embedder import load_embedder  # noqa: E402

BENCH = "uncertainty"

ANSWERS = ["Paris", "It is Paris.", "Lyon", "The capital is Paris", "Marseille", "Paris, France",
           "paris", "I think it is Lyon", "Paris", "Nice"]
PERTURBED = ["What is the capital of France?", "Which city is France's capital?", "Name the French capital.",
             "France's capital city is?", "What city is the capital of France?", "Capital of France?",
             "Tell me the capital of France.", "Which is the capital city of France?",
             "The capital of France is which city?", "What's France's capital?"]


def per_call(fn, repeats: int = 20) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def measure_timings(device: str = "cpu") -> list[dict]:
    embedder = load_embedder(device=device)
    embed_s = per_call(lambda: embedder.encode(ANSWERS + PERTURBED), 5)
    y = embedder.encode(ANSWERS).double()
    x = embedder.encode(PERTURBED).double()
    sim_y, sim_x = U.cosine_to_similarity(y @ y.T), U.cosine_to_similarity(x @ x.T)
    log_p = torch.randn(10, dtype=torch.float64).to(y.device) - 5
    ids = U.semantic_clusters(y @ y.T, threshold=0.8)
    timings = {
        "embedding 20 texts (MiniLM)": embed_s,
        "semantic clusters + SE (discrete+weighted)": per_call(lambda: (
            U.semantic_entropy_discrete(U.semantic_clusters(y @ y.T, threshold=0.8)),
            U.semantic_entropy_weighted(ids, log_p))),
        "EigV + Degree + Eccentricity": per_call(lambda: (U.eigv(sim_y), U.degree(sim_y), U.eccentricity(sim_y))),
        "KLE": per_call(lambda: U.kernel_language_entropy(sim_y)),
        "lexical similarity (ROUGE-L)": per_call(lambda: U.lexical_similarity(ANSWERS)),
        "Inv-Entropy (one draw)": per_call(lambda: U.inv_entropy(sim_x, sim_y)),
        "Inv-Entropy (B=30 bootstrap draws, batched)": per_call(
            lambda: U.inv_entropy(sim_x.expand(30, 10, 10), sim_y.expand(30, 10, 10))),
    }
    rows = [result(BENCH, f"{name}, per question ({device})", seconds, None, None) for name, seconds in timings.items()]
    reported = "reported by the Inv-Entropy paper (its hardware and NLI/SBERT calls; not measured here)"
    rows.append(result(BENCH, f"Inv-Entropy incl. embeddings, per question ({device})",
                       embed_s + timings["Inv-Entropy (B=30 bootstrap draws, batched)"], "paper, reported", 1.99,
                       None, reported))
    rows.append(result(BENCH, f"semantic entropy incl. embeddings, per question ({device})",
                       embed_s + timings["semantic clusters + SE (discrete+weighted)"], "paper, reported", 13.99,
                       None, reported + "; not like for like: our offline equivalence is embedding cosine"))
    return rows


def run(device: str = "cpu", quick: bool = False, nli: bool | None = None) -> list[dict]:
    if no_cuda(device):
        return []
    rows = measure_timings(device)
    if nli if nli is not None else not quick:
        rows += bench_nli()
    return rows


def _deberta_large_nli(folder):
    from transformers import BertTokenizerFast, DebertaConfig, DebertaForSequenceClassification

    from explorer.models.nli import NLIModel

    words = sorted({w for text in ANSWERS + PERTURBED for w in U.rouge_tokens(text)})
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(folder / "vocab.txt"), do_lower_case=True)
    config = DebertaConfig(vocab_size=len(words) + 5, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                           intermediate_size=4096, relative_attention=True, pos_att_type=["c2p", "p2c"],
                           max_relative_positions=-1, position_biased_input=False, num_labels=3,
                           id2label={0: "CONTRADICTION", 1: "NEUTRAL", 2: "ENTAILMENT"},
                           label2id={"CONTRADICTION": 0, "NEUTRAL": 1, "ENTAILMENT": 2})
    torch.manual_seed(0)
    return NLIModel("random DeBERTa-large-sized NLI", DebertaForSequenceClassification(config), tokenizer,
                    torch.device("cpu"))


def _greedy_one_pair_at_a_time(nli, texts: list[str]) -> list[int]:
    """The reference implementation's loop: each answer against each class leader, one pair per call."""
    def entails(a, b):
        if a == b:
            return True          # as ours: identical texts are equivalent without a call
        with torch.inference_mode():
            return int(nli.model(**nli.tokenizer(a, b, return_tensors="pt")).logits.argmax(-1)) == nli.entailment
    leaders, ids = [], []
    for j, text in enumerate(texts):
        cls = next((c for c, lead in enumerate(leaders) if entails(texts[lead], text) and entails(text, texts[lead])),
                   None)
        if cls is None:
            leaders.append(j)
            cls = len(leaders) - 1
        ids.append(cls)
    return ids


def bench_nli() -> list[dict]:
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        nli = _deberta_large_nli(Path(folder))
        question = PERTURBED[0]
        texts = [f"{question} {a}" for a in ANSWERS]
        ours = per_call(lambda: U.semantic_clusters(nli.equivalence(ANSWERS, question)), 1)
        naive = per_call(lambda: _greedy_one_pair_at_a_time(nli, texts), 1)
        same = U.semantic_clusters(nli.equivalence(ANSWERS, question)).tolist() == _greedy_one_pair_at_a_time(nli, texts)
    return [result(BENCH, "NLI equivalence classes, N = 10, DeBERTa-large-sized model (cpu)", ours,
                   "reference loop, one pair per call", naive, None if same else 1.0,
                   f"same classes: {same} (error 1 if not); paper 13.99 s per question")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--nli", action="store_true", help="also time NLI equivalence (slow)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    print(table(run(args.device, args.quick, args.nli or None)))


if __name__ == "__main__":
    main()
