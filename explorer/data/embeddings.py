"""Embedding sets for the diversity page: files (.npy, .npz, .csv, .parquet), bundled sets, validation.

An :class:`EmbeddingSet` is an ``n x d`` float tensor with optional per-row labels and texts. Every
problem with the input (NaN/inf rows, constant columns, n < 2, label length, non-numeric columns,
unreadable or oversized files) becomes one :class:`InputError` that says what to fix.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from explorer.data.uploads import (Upload, check_rows, check_suffix, describe_dtype, pick_column, read_npy, read_npz,
                                   read_table, shown_columns, upload_from)
from explorer.errors import InputError
from explorer.progress import Progress

DATA_DIR = Path(__file__).resolve().parents[2] / "data"
TEXT_SET = DATA_DIR / "diversity_texts.csv"
SUFFIXES = (".npy", ".npz", ".csv", ".parquet")
MAX_ROWS = 200_000
LABEL_NAMES = ("label", "labels", "group", "class", "y")
TEXT_NAMES = ("text", "sentence", "sample", "generation")


@dataclass
class EmbeddingSet:
    """``X``: n x d float32 embeddings; ``labels``/``texts``: one string per row or None."""

    name: str
    X: torch.Tensor
    labels: list[str] | None = None
    texts: list[str] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def n(self) -> int:
        return int(self.X.shape[0])

    @property
    def dim(self) -> int:
        return int(self.X.shape[1])

    def subset(self, rows: np.ndarray, name: str) -> "EmbeddingSet":
        pick = lambda values: None if values is None else [values[i] for i in rows]  # noqa: E731
        return EmbeddingSet(name, self.X[torch.as_tensor(rows)], pick(self.labels), pick(self.texts))


def validated(name: str, X, labels=None, texts=None) -> EmbeddingSet:
    """Check shape, values and label length; drop constant columns with a note."""
    X = np.asarray(X)
    if X.dtype.kind not in "iuf":
        raise InputError(f"{name}: the embeddings must be real numbers, got {describe_dtype(X.dtype)}.")
    if X.ndim != 2:
        raise InputError(f"{name}: expected a 2-D array (samples x dimensions), got shape {X.shape}.")
    if X.shape[0] < 2:
        raise InputError(f"{name}: at least 2 samples are needed, got {X.shape[0]}.")
    if X.shape[1] < 1:
        raise InputError(f"{name}: the embeddings have no columns.")
    with np.errstate(over="ignore", invalid="ignore"):
        X = X.astype(np.float32)       # what is stored: a value beyond float32's range would become inf
    bad = np.flatnonzero(~np.isfinite(X).all(axis=1))
    if bad.size:
        raise InputError(f"{name}: {bad.size} row(s) contain NaN or inf (or values beyond ±3.4e38; first: "
                         f"row {bad[0]}); remove or fix them.")
    if labels is not None and len(labels) != X.shape[0]:
        raise InputError(f"{name}: {len(labels)} labels for {X.shape[0]} samples; they must match.")
    notes = []
    constant = np.ptp(X, axis=0) == 0
    if constant.all():
        raise InputError(f"{name}: every column is constant: all samples are identical.")
    if constant.any():
        notes.append(f"dropped {int(constant.sum())} constant columns")
        X = X[:, ~constant]
    as_strings = lambda values: None if values is None else [str(v) for v in values]  # noqa: E731
    return EmbeddingSet(name, torch.from_numpy(np.ascontiguousarray(X)), as_strings(labels),
                        as_strings(texts), notes)


# -------------------------------------------------------------------------------------------- files
def load_embedding_file(source: str | Path | bytes | Upload, filename: str | None = None,
                        text_column: str | None = None, label_column: str | None = None,
                        progress: Progress | None = None) -> EmbeddingSet:
    """Read an embedding set from a path, an :class:`Upload` or uploaded bytes (``filename`` gives the type).

    .npy: an n x d array. .npz: arrays ``X``/``embeddings`` (or the first 2-D one) and optional
    ``labels``. .csv/.parquet: numeric columns are the embedding, a label column (``label_column``
    or one named label/group/class) and a text column (``text_column`` or one named text/...);
    a table with a text column and no numeric ones is embedded with all-MiniLM-L6-v2.
    """
    upload = upload_from(source, filename)
    suffix = check_suffix(upload, SUFFIXES)
    if suffix == ".npy":
        return validated(upload.name, read_npy(upload))
    if suffix == ".npz":
        return _from_npz(upload.name, read_npz(upload))
    return from_table(upload.name, read_table(upload), text_column, label_column, progress)


def _from_npz(name: str, arrays: dict[str, np.ndarray]) -> EmbeddingSet:
    key = next((k for k in ("X", "embeddings", "x") if k in arrays), None) or \
        next((k for k, v in arrays.items() if v.ndim == 2), None)
    if key is None:
        raise InputError(f"{name}: no 2-D array in the .npz (expected one named X or embeddings).")
    labels = next((arrays[k] for k in ("labels", "y", "label", "groups") if k in arrays), None)
    return validated(name, arrays[key], labels)


def from_table(name: str, table: pd.DataFrame, text_column: str | None = None, label_column: str | None = None,
               progress: Progress | None = None) -> EmbeddingSet:
    """Numeric columns as the embedding, or the text column embedded when there are none."""
    check_rows(len(table), MAX_ROWS, "rows", name)
    label_col = pick_column(table, label_column, LABEL_NAMES, "label", name)
    text_col = pick_column(table, text_column, TEXT_NAMES, "text", name)
    features = table.drop(columns=[c for c in (label_col, text_col) if c is not None])
    labels = None if label_col is None else table[label_col].tolist()
    texts = None if text_col is None else table[text_col].astype(str).tolist()
    if features.shape[1] == 0:
        if texts is None:
            raise InputError(f"{name}: no numeric embedding columns and no text column to embed.")
        return embed_texts(name, texts, labels, progress)
    non_numeric = [str(c) for c in features.columns if not pd.api.types.is_numeric_dtype(features[c])]
    if non_numeric:
        raise InputError(f"{name}: non-numeric columns {shown_columns(non_numeric, 5)}; keep only embedding "
                         f"columns plus one label column ({'/'.join(LABEL_NAMES)}) and one text column.")
    return validated(name, features.to_numpy(dtype=np.float64), labels, texts)


def embed_texts(name: str, texts: list[str], labels=None, progress: Progress | None = None) -> EmbeddingSet:
    """Embed ``texts`` with the shared sentence embedder (all-MiniLM-L6-v2 by default)."""
    from explorer.models.embedder import load_embedder

    texts = [str(t) for t in texts]
    if progress is not None:
        progress.update(0, 1, f"Embedding {len(texts)} texts with all-MiniLM-L6-v2")
    chunks, embedder = [], load_embedder()
    for start in range(0, len(texts), 256):
        chunks.append(embedder.encode(texts[start:start + 256]).cpu())
        if progress is not None:
            progress.update(start + 256, len(texts), f"Embedded {min(start + 256, len(texts))}/{len(texts)} texts")
    result = validated(name, torch.cat(chunks).numpy(), labels, texts)
    result.notes.append("texts embedded with all-MiniLM-L6-v2")
    return result


# ------------------------------------------------------------------------------------------ bundled
def load_digits_set() -> EmbeddingSet:
    """scikit-learn's 1,797 8x8 digits: 64 pixel values per row, labelled 0-9."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    result = validated("digits (pixels)", digits.data, digits.target)
    return result


def load_text_set(progress: Progress | None = None) -> EmbeddingSet:
    """data/diversity_texts.csv: paraphrases of one sentence, one topic, many topics (embedded)."""
    table = pd.read_csv(TEXT_SET)
    return embed_texts("texts (paraphrases / one topic / many topics)", table["text"].tolist(),
                       table["group"].tolist(), progress)


BUNDLED = {"Texts: paraphrases vs topics": load_text_set, "Digits (8x8 pixels)": lambda progress=None: load_digits_set()}
