"""Post-processing cost per question (N = 10 answers) of every sequence-level measure.

Run: HF_HUB_OFFLINE=1 python bench/bench_uncertainty.py
Prints ours per measure next to the Inv-Entropy paper's reported per-question figures (1.99 s for
Inv-Entropy, 13.99 s for semantic entropy, both including their NLI / SBERT calls), and our AUROC
next to scikit-learn's roc_auc_score on the same data (ratio = sklearn / ours).
"""

from __future__ import annotations

import time

import torch
from sklearn.metrics import roc_auc_score

from explorer.kernels import uncertainty as U
from explorer.models.embedder import load_embedder

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


def main() -> None:
    embedder = load_embedder()
    embed_s = per_call(lambda: embedder.encode(ANSWERS + PERTURBED), 5)
    y = embedder.encode(ANSWERS).double()
    x = embedder.encode(PERTURBED).double()
    sim_y, sim_x = U.cosine_to_similarity(y @ y.T), U.cosine_to_similarity(x @ x.T)
    log_p = torch.randn(10, dtype=torch.float64) - 5
    ids = U.semantic_clusters(y @ y.T, threshold=0.8)
    timings = {
        "embedding 20 texts (MiniLM, CPU)": embed_s,
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
    print(f"{'measure':48s} {'ours per question':>18s}")
    for name, seconds in timings.items():
        print(f"{name:48s} {seconds * 1e3:15.3f} ms")
    total_inv = embed_s + timings["Inv-Entropy (B=30 bootstrap draws, batched)"]
    total_se = embed_s + timings["semantic clusters + SE (discrete+weighted)"]
    print(f"\nInv-Entropy incl. embeddings: ours {total_inv:.4f} s vs paper 1.99 s  (ratio {1.99 / total_inv:.0f}x)")
    print(f"Semantic entropy incl. embeddings: ours {total_se:.4f} s vs paper 13.99 s (NLI model; ratio "
          f"{13.99 / total_se:.0f}x, not like for like: our offline equivalence is embedding cosine)")
    g = torch.Generator().manual_seed(0)
    u, wrong = torch.rand(5000, generator=g), torch.rand(5000, generator=g) < 0.4
    ours = per_call(lambda: U.auroc(u, wrong))
    peer = per_call(lambda: roc_auc_score(wrong.numpy(), u.numpy()))
    print(f"\nAUROC n=5000: ours {ours * 1e3:.3f} ms, sklearn {peer * 1e3:.3f} ms, ratio sklearn/ours {peer / ours:.2f}"
          f" (values {U.auroc(u, wrong):.6f} vs {roc_auc_score(wrong.numpy(), u.numpy()):.6f})")


if __name__ == "__main__":
    main()
