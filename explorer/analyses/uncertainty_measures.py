"""Sequence-level uncertainty measures of a sampled run: every measure per question and temperature.

:func:`compute_measures` reads a run's stored answers, groups them into meaning classes
(:class:`Equivalence`: NLI bidirectional entailment when an NLI model is named and loads, else
embedding cosine >= threshold with all-MiniLM-L6-v2, the offline fallback, recorded with the run),
scores each (question, temperature) with :func:`answer_measures`, P(True) and Inv-Entropy
(:func:`inv_entropy_bootstrap` over the stored perturbations), and stores the long table. The
kernels are in :mod:`explorer.kernels.uncertainty`; definitions in formulas.md section 3.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from explorer.data.questions import is_correct
from explorer.data.store import ResultsStore
from explorer.errors import InputError
from explorer.kernels import uncertainty as unc
from explorer.kernels.diversity import vendi_score
from explorer.kernels.entropy import log_probs
from explorer.progress import Progress

P_TRUE_TEMPLATE = ("Question: {question}\nPossible answer: {answer}\nIs the possible answer:\n (A) True\n (B) False\n"
                   "Reply with the letter only.")
PERTURBATION_LABELS = {
    "paraphrase": "paraphrases written by the model itself",
    "gaap": "GAAP (genetic algorithm over WordNet synonyms of the question's keywords, similarity >= 0.7)",
}
MEASURE_LABELS = {
    "msp": "Max sequence probability (-log p)", "mean_token_entropy": "Mean token entropy",
    "mc_entropy": "MC sequence entropy", "mc_entropy_norm": "MC sequence entropy (length-norm.)",
    "perplexity": "Perplexity", "se_discrete": "Semantic entropy (discrete)",
    "se_weighted": "Semantic entropy (prob.-weighted)", "semantic_sets": "Number of semantic sets",
    "eigv": "EigV", "degree": "Degree", "eccentricity": "Eccentricity", "lexical": "Lexical similarity (-ROUGE-L)",
    "kle": "Kernel language entropy", "vendi": "Vendi score of answers", "p_true": "P(True) (-log p(A))",
    "inv_entropy": "Inv-Entropy",
}


def _padded(rows) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = [len(r) for r in rows]
    width = max(max(lengths), 1)
    values = torch.zeros(len(rows), width, dtype=torch.float64)
    mask = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, r in enumerate(rows):
        values[i, :len(r)] = torch.as_tensor(list(r), dtype=torch.float64)
        mask[i, :len(r)] = True
    return values, mask


def answer_measures(texts: list[str], token_lp, token_ent, embeddings: torch.Tensor, threshold: float,
                    mapping: str, equivalence: torch.Tensor | None = None) -> dict[str, float]:
    """Every sample-based measure of one question at one temperature (N answers).

    Semantic classes come from ``equivalence`` (N x N booleans, e.g. NLI bidirectional entailment)
    when given, else from embedding cosine >= ``threshold``; the graph measures use the embeddings.
    """
    lp, mask = _padded(token_lp)
    ent, _ = _padded(token_ent)
    seq_lp = unc.sequence_log_prob(lp, mask)
    lengths = mask.sum(-1)
    cos = (embeddings @ embeddings.T).double().clamp(-1, 1)
    sim = unc.cosine_to_similarity(cos, mapping)
    ids = unc.semantic_clusters(equivalence) if equivalence is not None else unc.semantic_clusters(cos, threshold)
    return {
        "msp": float(-seq_lp.max()), "mean_token_entropy": float(unc.mean_token_entropy(ent, mask).mean()),
        "mc_entropy": float(unc.mc_sequence_entropy(seq_lp)),
        "mc_entropy_norm": float(unc.mc_sequence_entropy(seq_lp, lengths)),
        "perplexity": float(unc.perplexity(lp, mask).mean()),
        "se_discrete": float(unc.semantic_entropy_discrete(ids)), "se_weighted": float(unc.semantic_entropy_weighted(ids, seq_lp)),
        "semantic_sets": float(unc.number_of_semantic_sets(ids)), "eigv": float(unc.eigv(sim)),
        "degree": float(unc.degree(sim)), "eccentricity": float(unc.eccentricity(sim)),
        "lexical": unc.lexical_similarity(texts), "kle": float(unc.kernel_language_entropy(sim)),
        "vendi": float(vendi_score(K=sim.float())),
    }


def inv_entropy_bootstrap(x_emb: torch.Tensor, y_emb: torch.Tensor, bootstrap: int, seed: int, mapping: str) -> float:
    """Inv-Entropy averaged over B draws: for each input one of its r replicate answers at random.

    ``x_emb``: [n+1, d] embeddings of the question and its paraphrases; ``y_emb``: [n+1, r, d].
    """
    g = torch.Generator().manual_seed(seed)
    sim_x = unc.cosine_to_similarity((x_emb @ x_emb.T).double().clamp(-1, 1), mapping)
    pick = torch.randint(y_emb.shape[1], (bootstrap, y_emb.shape[0]), generator=g)
    drawn = y_emb[torch.arange(y_emb.shape[0]), pick].double()                  # [B, n+1, d]
    sim_y = unc.cosine_to_similarity((drawn @ drawn.transpose(1, 2)).clamp(-1, 1), mapping)
    return float(unc.inv_entropy(sim_x.expand_as(sim_y), sim_y).mean())


def p_true_scores(lm, questions: list[str], answers: list[str]) -> list[float]:
    """-log p("A") for "(A) True" after each question and proposed answer (one batched forward pass)."""
    prompts = [lm.format_prompt(P_TRUE_TEMPLATE.format(question=q, answer=a or "(no answer)")) for q, a in zip(questions, answers)]
    token_a = lm.tokenizer.convert_tokens_to_ids("A")
    return unc.p_true_uncertainty(log_probs(lm.next_token_logits(prompts)), token_a).tolist()


class Equivalence:
    """How answers are grouped into meaning classes: NLI bidirectional entailment when ``nli_model``
    names a model that loads, else embedding cosine >= ``threshold``. A model that cannot be had
    (offline and not cached, unknown id) falls back to cosine and says why in ``description``."""

    def __init__(self, nli_model: str = "", threshold: float = 0.85, embedder=None):
        from explorer.models.nli import load_nli_model

        self.threshold, self.nli, self.fallback_reason = float(threshold), None, ""
        self._embedder = embedder
        if (nli_model or "").strip():
            try:
                self.nli = load_nli_model(nli_model.strip())
            except InputError as err:
                self.fallback_reason = str(err)

    @property
    def method(self) -> str:
        return "nli" if self.nli is not None else "cosine"

    @property
    def description(self) -> str:
        if self.nli is not None:
            return f"NLI bidirectional entailment with {self.nli.name}"
        text = f"embedding cosine >= {self.threshold:g} with all-MiniLM-L6-v2 (offline fallback, not NLI)"
        return text + (f"; the NLI model could not be used: {self.fallback_reason}" if self.fallback_reason else "")

    def matrix(self, question: str, texts: list[str], embeddings: torch.Tensor | None = None) -> torch.Tensor:
        """N x N boolean: [a, b] when answers a and b mean the same."""
        if self.nli is not None:
            return self.nli.equivalence(texts, question)
        if embeddings is None:
            embeddings = self._embedder.encode([x or " " for x in texts])
        return (embeddings @ embeddings.T).double().clamp(-1, 1) >= self.threshold


def compute_measures(study, store: ResultsStore, run_id: str, lm, progress: Progress | None = None) -> pd.DataFrame:
    """Score every (question, temperature) of a sampled run and store the measures (long format).

    ``study``: the run's settings (a :class:`~explorer.analyses.temperature.TemperatureAnalysis`)."""
    from explorer.models.embedder import load_embedder

    embedder = load_embedder()
    equivalence = Equivalence(study.nli_model, study.equivalence_threshold, embedder)
    store.update_settings(run_id, equivalence=equivalence.description, equivalence_method=equivalence.method)
    questions = store.questions(run_id)
    samples = store.samples(run_id)
    answers = samples[samples.kind == "answer"]
    rows = []
    groups = list(answers.groupby(["question_index", "temperature"], sort=True))
    for k, ((qi, t), group) in enumerate(groups):
        texts = group["text"].tolist()
        emb = embedder.encode([x or " " for x in texts])
        same = equivalence.matrix(questions["question"].iloc[qi], texts, emb) if equivalence.nli is not None else None
        values = answer_measures(texts, group["token_log_probs"], group["token_entropies"], emb,
                                 study.equivalence_threshold, study.similarity_mapping, same)
        best = texts[int(np.argmax([sum(r) for r in group["token_log_probs"]]))]
        aliases = questions["answers"].iloc[qi]
        if aliases:
            values["correct"] = float(_correct(best, aliases, study, embedder))
            values["accuracy"] = float(np.mean([_correct(x, aliases, study, embedder) for x in texts]))
        if study.with_p_true:
            values["p_true"] = float(np.mean(p_true_scores(lm, [questions["question"].iloc[qi]] * len(texts), texts)))
        if study.with_inv_entropy:
            values["inv_entropy"] = _inv_entropy_of(samples, qi, t, questions["question"].iloc[qi], embedder, study)
        rows += [dict(question_index=qi, temperature=t, measure=m, value=v) for m, v in values.items()]
        if progress is not None:
            progress.update(k + 1, len(groups), f"measures: question {qi + 1}, T={t:g}")
    frame = pd.DataFrame(rows, columns=["question_index", "temperature", "measure", "value"])
    store.replace_measures(run_id, frame)
    return frame


def _correct(answer: str, aliases: list[str], study, embedder) -> bool:
    if study.correctness != "embedding":
        return is_correct(answer, aliases, study.correctness)
    emb = embedder.encode([answer or " ", *aliases])
    return bool((emb[1:] @ emb[0]).max() >= study.correctness_threshold)


def _inv_entropy_of(samples: pd.DataFrame, qi: int, t: float, question: str, embedder, study) -> float:
    mine = samples[(samples.kind == "perturbed") & (samples.question_index == qi) & (samples.temperature == t)]
    if mine.empty:
        return float("nan")
    inputs = mine.groupby("variant")["prompt"].first().tolist()
    inputs[0] = question
    n_inputs, r = len(inputs), study.replicates
    if n_inputs < 2:  # no perturbation survived (GAAP can find none): Inv-Entropy is undefined, not 0
        return float("nan")
    y = embedder.encode([x or " " for x in mine.sort_values(["variant", "sample_index"])["text"]]).reshape(n_inputs, r, -1)
    return inv_entropy_bootstrap(embedder.encode(inputs), y, study.bootstrap, study.seed, study.similarity_mapping)

