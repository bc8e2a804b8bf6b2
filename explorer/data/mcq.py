"""Four-option multiple-choice questions answered by a language model, as classifier outputs.

``data/mcq.csv`` (written for this project: 83 questions, easy to hard, ten subjects, correct
letters balanced over A-D) has the columns ``id, subject, difficulty, question, A, B, C, D,
answer``. Each question becomes one prompt asking for the letter only; the model's next-token
logits restricted to the four letter tokens, softmaxed, are the row's class probabilities
(formulas.md section 5, "LLM multiple choice"). Probabilities are cached per model and question
file, so the conformal page opens them instantly after the first run.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from explorer.data.classifier_outputs import ClassifierOutputs, cache_path, outputs_from_arrays
from explorer.errors import InputError
from explorer.progress import Progress

DEFAULT_QUESTIONS = Path(__file__).resolve().parents[2] / "data" / "mcq.csv"
LETTERS = ("A", "B", "C", "D")
COLUMNS = ("question", *LETTERS, "answer")
PROMPT_VERSION = "v1"
BATCH = 8
INSTRUCTION = "Answer the multiple-choice question with the letter of the correct option only (A, B, C or D)."


def load_mcq_questions(path: str | Path | None = None) -> pd.DataFrame:
    """The question table, checked: required columns, no blanks, answers among A-D."""
    path = Path(path or DEFAULT_QUESTIONS)
    if not path.is_file():
        raise InputError(f"Question file not found: {path}")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as err:  # noqa: BLE001 - a parser failure is a bad file
        raise InputError(f"{path.name} could not be read as CSV: {err}") from err
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise InputError(f"{path.name} lacks the column(s) {missing}; needed: {list(COLUMNS)}.")
    if table.empty:
        raise InputError(f"{path.name} has no questions.")
    table = table.assign(**{c: table[c].str.strip() for c in COLUMNS})
    blank = table[list(COLUMNS)].eq("").any(axis=1)
    if blank.any():
        raise InputError(f"{int(blank.sum())} question(s) have a blank field (first: row {int(np.flatnonzero(blank)[0])}).")
    bad = ~table["answer"].isin(LETTERS)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise InputError(f"Answers must be one of {LETTERS}; row {row} has {table['answer'].iloc[row]!r}.")
    return table.reset_index(drop=True)


def question_text(row: pd.Series) -> str:
    """The question and its lettered options, as shown to the model and in the example browser."""
    options = "\n".join(f"{letter}. {row[letter]}" for letter in LETTERS)
    return f"{row['question']}\n{options}"


def mcq_prompt(row: pd.Series) -> str:
    """The user message for one question (the model's chat template is applied on top)."""
    return f"{INSTRUCTION}\n\nQuestion: {question_text(row)}\nAnswer:"


def letter_token_ids(model, leading_space: bool) -> list[int]:
    """The single token of each option letter (with a leading space after a plain 'Answer:')."""
    ids = []
    for letter in LETTERS:
        pieces = model.encode((" " if leading_space else "") + letter).tolist()
        if len(pieces) != 1:
            raise InputError(f"The tokenizer splits the option letter {letter!r} into {len(pieces)} tokens; "
                             "this model cannot be scored on the letters alone.")
        ids.append(pieces[0])
    return ids


def letter_logits(model, prompts: list[str], progress: Progress | None = None) -> np.ndarray:
    """Next-token logits of the four letters after each prompt: ``[n, 4]`` (float64)."""
    chat = bool(model.has_chat_template)
    ids = torch.tensor(letter_token_ids(model, leading_space=not chat))
    full = [model.format_prompt(prompt, chat=chat) for prompt in prompts]
    rows = []
    for start in range(0, len(full), BATCH):
        if progress is not None:
            progress.update(start, len(full), f"Asking {model.name}: question {start + 1} of {len(full)}")
        logits = model.next_token_logits(full[start:start + BATCH], progress=progress)
        rows.append(logits[:, ids.to(logits.device)].double().cpu())
    return torch.cat(rows).numpy()


def _cache_file(model_name: str, questions: Path) -> Path:
    digest = hashlib.sha1(questions.read_bytes() + PROMPT_VERSION.encode()).hexdigest()[:12]
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", model_name)[:80]
    return cache_path(f"mcq-{safe}-{digest}.npz")


def mcq_outputs(model_name: str | None = None, questions_path: str | Path | None = None,
                progress: Progress | None = None) -> ClassifierOutputs:
    """The language model's option probabilities for every question (cached per model and file)."""
    from explorer.models.language_model import DEFAULT_MODEL, load_language_model

    questions_path = Path(questions_path or DEFAULT_QUESTIONS)
    table = load_mcq_questions(questions_path)
    name = model_name or DEFAULT_MODEL
    cache = _cache_file(name, questions_path)
    if cache.exists():
        with np.load(cache, allow_pickle=False) as archive:
            logits = archive["logits"]
    else:
        if progress is not None:
            progress.update(0, 1, f"Loading {name}")
        model = load_language_model(model_name)
        logits = letter_logits(model, [mcq_prompt(row) for _, row in table.iterrows()], progress)
        np.savez(cache.with_suffix(".tmp.npz"), logits=logits)
        cache.with_suffix(".tmp.npz").replace(cache)
    labels = table["answer"].map(LETTERS.index).to_numpy()
    outputs = outputs_from_arrays(logits, labels, kind="logits", class_names=LETTERS,
                                  name=f"Multiple choice ({name})",
                                  texts=[question_text(row) for _, row in table.iterrows()])
    description = (f"{outputs.num_rows} four-option questions (data/mcq.csv) answered by {name}: next-token "
                   f"logits of the letters A-D, softmaxed. Accuracy {outputs.accuracy:.1%} (chance 25%), "
                   f"mean top probability {outputs.mean_confidence:.1%}.")
    return ClassifierOutputs(outputs.probs, outputs.labels, outputs.class_names, outputs.name, description,
                             None, outputs.texts)
