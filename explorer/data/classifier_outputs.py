"""A classifier's outputs (probabilities or logits) with true labels, from arrays or uploaded files.

Accepted uploads (nothing is ever unpickled):

- ``.npz`` with a score array named ``probs``/``probabilities``/``proba``/``logits``/``scores``
  ``[n, K]``, a label array named ``labels``/``label``/``y``/``targets`` ``[n]`` and optionally
  ``class_names`` ``[K]`` (a string array);
- a pair of ``.npy`` files: the 2-D one holds the scores, the 1-D one the labels;
- ``.csv`` or ``.parquet``: one label column (``label``, ``labels``, ``y``, ``target`` or
  ``true_label``; integers or class names), one numeric column per class (the column names
  become the class names) and optionally a ``text`` column shown in the example browser.

Scores are probabilities (rows on the simplex) or logits (softmax applied); ``kind="auto"``
takes probabilities when the rows sum to one and says what to do otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from explorer.cache import cache_dir
from explorer.data.uploads import (Upload, check_rows, check_suffix, describe_dtype, pick_column, read_npy, read_npz,
                                   read_table, shown_columns, upload_from)
from explorer.errors import InputError

KINDS = ("auto", "probabilities", "logits")
SCORE_KEYS = ("probs", "probabilities", "proba", "logits", "scores")
LABEL_KEYS = ("labels", "label", "y", "targets", "target", "true_label")
SUM_TOLERANCE = 1e-3
MAX_ROWS = 1_000_000


@dataclass(frozen=True, eq=False)
class ClassifierOutputs:
    """Rows of class probabilities with their true labels, and what to show for each row."""

    probs: torch.Tensor              # [n, K] float64, rows sum to one
    labels: torch.Tensor             # [n] int64 in 0..K-1
    class_names: tuple[str, ...]
    name: str
    description: str = ""
    images: np.ndarray | None = None  # [n, h, w] grey images, or None
    texts: tuple[str, ...] | None = None  # one text per row (e.g. a question with its options)

    @property
    def num_rows(self) -> int:
        return int(self.probs.shape[0])

    @property
    def num_classes(self) -> int:
        return int(self.probs.shape[1])

    @property
    def accuracy(self) -> float:
        return float((self.probs.argmax(1) == self.labels).double().mean())

    @property
    def mean_confidence(self) -> float:
        return float(self.probs.max(1).values.mean())


def cache_path(filename: str) -> Path:
    """A file in the project's cache directory (:func:`explorer.cache.cache_dir`)."""
    return cache_dir() / filename


# ----------------------------------------------------------------------------- validation
def _first_bad_row(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def _check_scores(scores: np.ndarray) -> np.ndarray:
    if scores.dtype.kind not in "fiub":
        raise InputError(f"Scores must be numbers; got an array of {describe_dtype(scores.dtype)}.")
    if scores.ndim != 2:
        raise InputError(f"Scores must be a 2-D array [rows, classes]; got shape {tuple(scores.shape)}.")
    rows, classes = scores.shape
    if rows == 0:
        raise InputError("The scores have no rows.")
    if classes < 2:
        raise InputError(f"Need at least 2 classes; the scores have {classes} column(s).")
    scores = scores.astype(np.float64)
    bad = ~np.isfinite(scores).all(axis=1)
    if bad.any():
        raise InputError(f"{int(bad.sum())} row(s) of scores contain NaN or infinity "
                         f"(first: row {_first_bad_row(bad)}). Remove or fix them.")
    return scores


def _to_probabilities(scores: np.ndarray, kind: str) -> np.ndarray:
    if kind not in KINDS:
        raise InputError(f"Unknown score kind {kind!r}; choose one of {KINDS}.")
    if kind == "logits":
        return torch.softmax(torch.from_numpy(scores), dim=1).numpy()
    sums = scores.sum(axis=1)
    off = np.abs(sums - 1) > SUM_TOLERANCE
    negative = (scores < 0).any(axis=1)
    if negative.any() or off.any():
        row = _first_bad_row(negative | off)
        what = "has negative entries" if negative[row] else f"sums to {sums[row]:.4g}"
        advice = ("If these are logits or unnormalised scores, choose 'logits' to apply softmax."
                  if kind == "auto" else "Choose 'logits' to apply softmax instead.")
        raise InputError(f"The scores are not probabilities: {int((negative | off).sum())} of {len(scores)} "
                         f"rows do not sum to one (row {row} {what}). {advice}")
    return scores / sums[:, None]


def _check_labels(labels: np.ndarray, rows: int, class_names: tuple[str, ...]) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise InputError(f"Labels must be a 1-D array; got shape {tuple(labels.shape)}.")
    if len(labels) != rows:
        raise InputError(f"Mismatched lengths: {rows} rows of scores but {len(labels)} labels.")
    if labels.dtype.kind in "OUS":
        labels = _labels_from_names(labels, class_names)
    if labels.dtype.kind == "f":
        if not np.isfinite(labels).all():
            raise InputError(f"Labels contain NaN or infinity (first: row {_first_bad_row(~np.isfinite(labels))}).")
        if (labels != np.round(labels)).any():
            raise InputError("Labels must be whole numbers (class indices) or class names.")
    if labels.dtype.kind not in "fiub":
        raise InputError(f"Labels must be class indices or class names; got {describe_dtype(labels.dtype)}.")
    labels = labels.astype(np.int64)
    outside = (labels < 0) | (labels >= len(class_names))
    if outside.any():
        row = _first_bad_row(outside)
        raise InputError(f"{int(outside.sum())} label(s) out of range: row {row} has label {labels[row]}, "
                         f"but there are {len(class_names)} classes (labels 0..{len(class_names) - 1}).")
    return labels


def _labels_from_names(labels: np.ndarray, class_names: tuple[str, ...]) -> np.ndarray:
    index = {name: i for i, name in enumerate(class_names)}
    texts = [str(label) for label in labels]
    unknown = sorted({text for text in texts if text not in index})
    if unknown:
        raise InputError(f"Unknown label name(s) {unknown[:5]}: labels must be class indices or one of "
                         f"the class names {list(class_names)[:10]}.")
    return np.array([index[text] for text in texts], dtype=np.int64)


def outputs_from_arrays(scores, labels, kind: str = "auto", class_names=None, name: str = "uploaded",
                        description: str = "", images=None, texts=None) -> ClassifierOutputs:
    """Validate ``scores [n, K]`` and ``labels [n]`` and return :class:`ClassifierOutputs`."""
    scores = _check_scores(np.asarray(scores))
    classes = scores.shape[1]
    if class_names is None:
        class_names = tuple(str(i) for i in range(classes))
    class_names = tuple(str(name) for name in class_names)
    if len(class_names) != classes:
        raise InputError(f"{len(class_names)} class names given for {classes} score columns.")
    if len(set(class_names)) != classes:
        raise InputError("Class names must be distinct.")
    labels = _check_labels(labels, len(scores), class_names)
    probs = _to_probabilities(scores, kind)
    return ClassifierOutputs(torch.from_numpy(np.ascontiguousarray(probs)), torch.from_numpy(labels),
                             class_names, name, description, images,
                             None if texts is None else tuple(str(t) for t in texts))


# ----------------------------------------------------------------------------- files
def _pick(arrays: Mapping[str, np.ndarray], keys: tuple[str, ...], what: str, filename: str) -> tuple[str, np.ndarray]:
    for key in keys:
        if key in arrays:
            return key, arrays[key]
    raise InputError(f"{filename} has no {what} array: name it one of {list(keys)} "
                     f"(found {sorted(arrays)}).")


def _from_npz(upload: Upload, kind: str) -> ClassifierOutputs:
    arrays = read_npz(upload)
    score_key, scores = _pick(arrays, SCORE_KEYS, "scores", upload.name)
    _, labels = _pick(arrays, LABEL_KEYS, "labels", upload.name)
    if kind == "auto" and score_key == "logits":
        kind = "logits"
    names = arrays.get("class_names", arrays.get("classes"))
    if names is not None and names.ndim != 1:
        raise InputError(f"{upload.name}: class_names must be a 1-D array with one name per class.")
    return outputs_from_arrays(scores, labels, kind, None if names is None else list(names), name=upload.name)


def _from_npy_pair(uploads: list[Upload], kind: str) -> ClassifierOutputs:
    arrays = {upload.name: read_npy(upload) for upload in uploads}
    two_d = [f for f, a in arrays.items() if a.ndim == 2]
    one_d = [f for f, a in arrays.items() if a.ndim == 1]
    if len(two_d) != 1 or len(one_d) != 1:
        shapes = {f: tuple(a.shape) for f, a in arrays.items()}
        raise InputError(f"Upload two .npy files: a 2-D array of scores and a 1-D array of labels; got {shapes}.")
    return outputs_from_arrays(arrays[two_d[0]], arrays[one_d[0]], kind, name=f"{two_d[0]} + {one_d[0]}")


def _from_table(table: pd.DataFrame, filename: str, kind: str) -> ClassifierOutputs:
    check_rows(len(table), MAX_ROWS, "rows", filename)
    label_column = pick_column(table, None, LABEL_KEYS, "label", filename, required=True)
    text_column = pick_column(table, None, ("text",), "text", filename)
    score_columns = [c for c in table.columns if c not in (label_column, text_column)]
    non_numeric = [str(c) for c in score_columns if not pd.api.types.is_numeric_dtype(table[c])]
    if non_numeric:
        raise InputError(f"Score columns must be numeric; {shown_columns(non_numeric, 5)} are not. The label column is "
                         f"'{label_column}', a 'text' column is optional, every other column is a class.")
    labels = table[label_column].to_numpy()
    if labels.dtype.kind == "f" and np.isnan(labels).any():
        raise InputError(f"The label column has {int(np.isnan(labels).sum())} missing value(s).")
    texts = None if text_column is None else table[text_column].astype(str).tolist()
    return outputs_from_arrays(table[score_columns].to_numpy(dtype=np.float64, na_value=np.nan), labels, kind,
                               class_names=[str(c) for c in score_columns], name=filename, texts=texts)


def read_uploaded(files: Mapping[str, bytes] | list[Upload], kind: str = "auto") -> ClassifierOutputs:
    """Classifier outputs from uploaded files (``{filename: content}`` or :class:`Upload` s; see the
    module docstring)."""
    uploads = files if isinstance(files, list) else [Upload(name, data) for name, data in files.items()]
    outputs = _read_uploads(uploads, kind)
    check_rows(outputs.num_rows, MAX_ROWS, "rows", outputs.name)
    description = (f"{outputs.num_rows} rows, {outputs.num_classes} classes: accuracy {outputs.accuracy:.1%}, "
                   f"mean top probability {outputs.mean_confidence:.1%}.")
    return ClassifierOutputs(outputs.probs, outputs.labels, outputs.class_names, outputs.name, description,
                             outputs.images, outputs.texts)


def _read_uploads(uploads: list[Upload], kind: str) -> ClassifierOutputs:
    if not uploads:
        raise InputError("No file uploaded: choose an .npz, two .npy files, a .csv or a .parquet file.")
    if len(uploads) > 1 and {u.suffix for u in uploads} != {".npy"}:
        raise InputError("Upload one .npz, .csv or .parquet file, or exactly two .npy files.")
    uploads = [upload_from(u) for u in uploads]
    if uploads[0].suffix == ".npy":
        if len(uploads) != 2:
            raise InputError("A .npy file holds one array: upload two, a 2-D array of scores and a 1-D array of "
                             "labels.")
        return _from_npy_pair(uploads, kind)
    upload = uploads[0]
    if check_suffix(upload, (".npz", ".csv", ".parquet")) == ".npz":
        return _from_npz(upload, kind)
    return _from_table(read_table(upload), upload.name, kind)


def load_classifier_outputs(*paths: str | Path, kind: str = "auto") -> ClassifierOutputs:
    """Classifier outputs from files on disk (same formats as :func:`read_uploaded`)."""
    return read_uploaded([upload_from(path) for path in paths], kind)
