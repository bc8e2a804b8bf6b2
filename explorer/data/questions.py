"""Question sets for the temperature-sensitivity study.

``data/questions.csv`` (written for this project: 103 short factual questions, easy to hard, with
reference answers; aliases separated by ``|``). Users may load their own CSV, JSONL or Parquet
file with a question column and an optional answer column, or a Hugging Face dataset
(``hf:owner/name``, see :mod:`explorer.data.hub_datasets`; a local folder laid out like one works
too). In a dataset the question and answer columns are found by name when the defaults are absent,
answers may be strings, lists of aliases or records (``{"value", "aliases"}``, ``{"text": [...]}``),
and repeated questions are kept once.
"""

from __future__ import annotations

import re
import string
from pathlib import Path

import pandas as pd

from explorer.data.hub_datasets import dataset_file, is_dataset_source
from explorer.data.uploads import Upload, check_rows, pick_column, read_table, shown, shown_columns, upload_from
from explorer.errors import InputError

DEFAULT_QUESTIONS = Path(__file__).resolve().parents[2] / "data" / "questions.csv"
ALIAS_SEPARATOR = "|"
MAX_QUESTIONS = 20_000
QUESTION_COLUMNS = ("question", "query", "prompt", "input", "problem")
ANSWER_COLUMNS = ("answer", "answers", "target", "reference", "output")


def load_questions(source: str | Path | bytes | Upload | None = None, name: str | None = None,
                   question_column: str = "question", answer_column: str | None = "answer") -> pd.DataFrame:
    """Read and check a question table -> DataFrame ``question`` (str), ``answers`` (list[str], maybe empty).

    ``source``: a path (default: the bundled set), an :class:`Upload`, the bytes of an upload (then
    ``name`` gives its file type), or a Hugging Face dataset (``hf:owner/name``). The answer column is
    optional: missing -> no reference answers.
    """
    if is_dataset_source(source):
        path, name = dataset_file(str(source))
        table = read_table(upload_from(path, name), as_text=True)
        question_column = pick_column(table, None, (question_column, *QUESTION_COLUMNS), "question", name, True)
        answer_column = pick_column(table, None, (answer_column, *ANSWER_COLUMNS), "answer", name) \
            if answer_column else None
        table = table.loc[~table[question_column].astype(str).str.strip().duplicated()]
    else:
        upload = upload_from(source if source is not None else DEFAULT_QUESTIONS, name)
        name = upload.name
        table = read_table(upload, as_text=True)
    check_rows(len(table), MAX_QUESTIONS, "questions", name)
    return _checked(table, name, question_column, answer_column)


def _checked(table: pd.DataFrame, name: str, question_column: str, answer_column: str | None) -> pd.DataFrame:
    if question_column not in table.columns:
        raise InputError(f"{name} has no column {shown(question_column)}; its columns are "
                         f"{shown_columns(table.columns)}.")
    questions = table[question_column].map(lambda v: "" if v is None or (isinstance(v, float) and v != v) else str(v).strip())
    if (questions != "").sum() == 0:
        raise InputError(f"{name} has no questions (the column {question_column!r} is empty).")
    blank = questions.eq("")
    if blank.any():
        raise InputError(f"{name}: {int(blank.sum())} blank question(s), first at row {int(blank.to_numpy().argmax())}.")
    duplicated = questions[questions.duplicated()]
    if len(duplicated):
        raise InputError(f"{name}: {len(duplicated)} duplicate question(s), e.g. {shown(duplicated.iloc[0])}; "
                         "each question must appear once.")
    has_answers = answer_column is not None and answer_column in table.columns
    answers = table[answer_column].map(_aliases) if has_answers else pd.Series([[]] * len(table))
    return pd.DataFrame({"question": questions.to_numpy(), "answers": list(answers)})


def _aliases(value) -> list[str]:
    """Reference answers from a cell: "a|b", a list / array of strings, or a record holding them
    (``value`` and ``aliases`` as in TriviaQA, ``text`` as in SQuAD)."""
    if value is None or (isinstance(value, float) and value != value):
        return []
    if isinstance(value, dict):
        parts = [value.get(k) for k in ("value", "aliases", "text", "answer") if value.get(k) is not None]
        return list(dict.fromkeys(a for part in parts for a in _aliases(part)))
    if isinstance(value, str):
        return [a.strip() for a in value.split(ALIAS_SEPARATOR) if a.strip()]
    if hasattr(value, "__iter__"):
        return list(dict.fromkeys(a for item in value for a in _aliases(item)))
    return _aliases(str(value))


def normalize_answer(text: str) -> str:
    """Lower case, no punctuation, no articles (a, an, the), single spaces (SQuAD normalisation)."""
    text = "".join(ch if ch not in string.punctuation else " " for ch in text.lower())
    return " ".join(w for w in text.split() if w not in {"a", "an", "the"})


def is_correct(answer: str, aliases: list[str], mode: str = "contains") -> bool:
    """Normalised match of an answer with any alias: ``exact`` equality, or ``contains`` (the alias
    appears as whole words in the answer, e.g. "It is Paris." matches "Paris")."""
    said = normalize_answer(answer)
    for alias in map(normalize_answer, aliases):
        if not alias:
            continue
        if said == alias or (mode == "contains" and re.search(rf"(^| ){re.escape(alias)}( |$)", said)):
            return True
    return False
