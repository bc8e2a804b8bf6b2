"""Where each page's data comes from: one registry pattern for bundled sets, uploads, a language
model's hidden states and Hugging Face datasets.

A :class:`Source` has a stable key (what a link or a report records), a label (what a select shows)
and a loader ``load(progress, uploads=(), location="")``: bundled sources ignore the uploads, upload
sources read them (through :mod:`explorer.data.uploads`), location sources read a path or an
``hf:owner/name`` id. Every loader raises :class:`~explorer.errors.InputError` for bad input.
Pages list a registry's ``options()`` and load with ``registry.load(key, progress, ...)`` in their job
runner, never on the event loop. Bundled and model-computed sources are loaded once per process and
shared by every session (:data:`SHARED_KINDS`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from explorer.cache import already_computed, once_per_process
from explorer.data.uploads import MAX_UPLOAD_BYTES, Upload, human_size
from explorer.errors import InputError
from explorer.progress import Progress

Loader = Callable[..., Any]
#: sources whose data is the same for everyone: loaded once per process and shared by every session
SHARED_KINDS = ("bundled", "model")


@dataclass(frozen=True)
class Source:
    """One place data comes from (see the module docstring)."""

    key: str
    label: str
    load: Loader
    description: str = ""
    kind: str = "bundled"    # "bundled", "upload", "model" (computed by a model) or "location" (a path or hf: id)


class Sources:
    """An ordered registry of :class:`Source` s for one kind of data."""

    def __init__(self, what: str, *sources: Source):
        self.what = what
        self._sources = {source.key: source for source in sources}

    def __getitem__(self, key: str) -> Source:
        if key not in self._sources:
            raise InputError(f"Unknown {self.what} source {key!r}; choose one of {list(self._sources)}.")
        return self._sources[key]

    def __iter__(self) -> Iterator[Source]:
        return iter(self._sources.values())

    def __contains__(self, key) -> bool:
        return key in self._sources

    def keys(self) -> list[str]:
        return list(self._sources)

    def options(self) -> dict[str, str]:
        """``{label: key}`` for a select widget."""
        return {source.label: source.key for source in self}

    def loaded(self, key: str) -> Any:
        """Source ``key`` when a shared source of this process has loaded it already (a page can show it
        at once, without a job), else None."""
        source = self._sources.get(key)
        return already_computed(("source", self.what, key)) if source and source.kind in SHARED_KINDS else None

    def load(self, key: str, progress: Progress | None = None, uploads: tuple[Upload, ...] | list[Upload] = (),
             location: str = "", **options) -> Any:
        """Load source ``key`` (``uploads`` for an upload source, ``location`` for a path or hub id;
        ``options`` go to the loader, e.g. ``kind="logits"`` for uploaded classifier scores)."""
        source = self[key]
        if source.kind in SHARED_KINDS:   # the same for everyone: upload options do not apply
            return once_per_process(("source", self.what, key), lambda: source.load(progress, uploads=(), location=""))
        if source.kind == "upload" and not uploads:
            raise InputError(f"Choose a file to upload (up to {human_size(MAX_UPLOAD_BYTES)}).")
        if source.kind == "location" and not str(location).strip():
            raise InputError("Type a file path or a Hugging Face dataset id (hf:owner/name).")
        return source.load(progress, uploads=tuple(uploads), location=str(location).strip(), **options)


# ------------------------------------------------------------------------------ the registries
def _texts(progress, **_):
    from explorer.data.embeddings import load_text_set
    return load_text_set(progress)


def _digits_pixels(progress, **_):
    from explorer.data.embeddings import load_digits_set
    return load_digits_set()


def _hidden_states(progress, **_):
    from explorer.data.hidden_states import text_set_hidden_states
    return text_set_hidden_states(progress=progress)


def _embedding_upload(progress, uploads, **_):
    from explorer.data.embeddings import load_embedding_file
    return load_embedding_file(uploads[0], progress=progress)


EMBEDDING_SOURCES = Sources(
    "embedding",
    Source("texts", "Texts: paraphrases vs topics", _texts,
           "data/diversity_texts.csv embedded with all-MiniLM-L6-v2: paraphrases of one sentence, one topic, "
           "many topics."),
    Source("digits", "Digits (8x8 pixels)", _digits_pixels, "scikit-learn's 1,797 handwritten digits as pixels."),
    Source("hidden", "Hidden states of SmolLM2-135M (texts, per layer)", _hidden_states,
           "Mean-pooled hidden states of every layer for the bundled texts.", kind="model"),
    Source("upload", "Uploaded file", _embedding_upload, ".npy, .npz, .csv or .parquet embeddings.", kind="upload"),
)


def _digits_outputs(overconfident: bool):
    def load(progress, **_):
        from explorer.data.digits_classifier import load_digits_outputs
        return load_digits_outputs(overconfident=overconfident, progress=progress)
    return load


def _mcq(progress, **_):
    from explorer.data.mcq import mcq_outputs
    return mcq_outputs(progress=progress)


def _classifier_upload(progress, uploads, kind: str = "auto", **_):
    from explorer.data.classifier_outputs import read_uploaded
    return read_uploaded(list(uploads), kind)


CLASSIFIER_SOURCES = Sources(
    "classifier outputs",
    Source("digits", "Digits: small MLP", _digits_outputs(False), "A 64-32-10 MLP on held-out digits."),
    Source("digits_overconfident", "Digits: overconfident MLP (logits x 4)", _digits_outputs(True),
           "The same network with its logits multiplied by 4."),
    Source("mcq", "LLM multiple choice (SmolLM2-135M)", _mcq,
           "data/mcq.csv answered by the language model (letters A-D).", kind="model"),
    Source("upload", "Uploaded file", _classifier_upload,
           "Probabilities or logits with labels: .npz, two .npy, .csv or .parquet.", kind="upload"),
)


def _bundled_questions(progress, **_):
    from explorer.data.questions import load_questions
    return load_questions()


def _question_upload(progress, uploads, **_):
    from explorer.data.questions import load_questions
    return load_questions(uploads[0])


def _question_location(progress, location, **_):
    from explorer.data.questions import load_questions
    return load_questions(location)


QUESTION_SOURCES = Sources(
    "question",
    Source("bundled", "Bundled: 103 factual questions", _bundled_questions,
           "data/questions.csv, written for this project, with reference answers."),
    Source("upload", "Uploaded file", _question_upload, "CSV, JSONL or Parquet with a question column.",
           kind="upload"),
    Source("location", "File path or Hugging Face dataset", _question_location,
           "A path on this machine, a dataset folder, or hf:owner/name.", kind="location"),
)


def _digits_runs(progress, **_):
    from explorer.data.training_runs import load_digits_runs
    return load_digits_runs(progress=progress)


def _representation_upload(progress, uploads, **_):
    from explorer.data.training_logs import load_representation_run
    run = load_representation_run({upload.name: upload.data for upload in uploads})
    return {run.name: run}


TRAINING_SOURCES = Sources(
    "representation",
    Source("digits", "Digits MLP: true vs shuffled labels", _digits_runs,
           "A 64-256-256-10 MLP trained on scikit-learn's digits twice (true labels; labels shuffled among the "
           "training rows), both hidden layers saved on 500 held-out digits at epochs 0-60 (trained on first use, "
           "cached)."),
    Source("upload", "Uploaded checkpoints", _representation_upload,
           "One .npy/.npz/.parquet file per epoch (the epoch in the file name; labels.npy and inputs.npy beside "
           "them), or one Parquet file with an epoch column.", kind="upload"),
)


def _bundled_log(progress, columns=None, **_):
    from explorer.data.training_logs import BUNDLED_RL_LOG, ColumnMap, load_training_logs
    bundled = ColumnMap(covariance="covariance", advantage="advantage_abs_mean")
    return load_training_logs([BUNDLED_RL_LOG], columns or bundled)


def _log_upload(progress, uploads, columns=None, **_):
    from explorer.data.training_logs import ColumnMap, load_training_logs
    return load_training_logs({upload.name: upload.data for upload in uploads}, columns or ColumnMap())


LOG_SOURCES = Sources(
    "training log",
    Source("rl_addition", "Bundled RL run: addition, GRPO-style", _bundled_log,
           "data/rl_addition_log.csv, made by scripts/make_rl_log.py."),
    Source("upload", "Uploaded log(s)", _log_upload,
           "CSV, JSONL, Parquet or TensorBoard event files; one run per file, or a run column.", kind="upload"),
)


def _digits_data_size(progress, **_):
    from explorer.data.training_runs import uncertainty_vs_data_size
    return uncertainty_vs_data_size(progress=progress)


DATA_SIZE_SOURCES = Sources(
    "data-size",
    Source("digits", "Digits MLP ensembles on 50 to 1,200 digits", _digits_data_size,
           "Deep ensembles of 5 members of the same MLP trained on nested subsets of the digits (trained on first "
           "use, cached)."),
)
