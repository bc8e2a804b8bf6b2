"""Every file a user gives us, read one way: one size limit, no pickles, plain-word errors.

An :class:`Upload` is a file's name and bytes (from a page's file widget or a path). The readers
turn it into a NumPy array (``.npy``, never unpickled), a dict of arrays (``.npz``, never
unpickled) or a DataFrame (``.csv``, ``.jsonl``, ``.parquet``; text files must be UTF-8). Anything
wrong (too large, empty, not the format its name says, damaged, pickled, not UTF-8) becomes one
:class:`~explorer.errors.InputError` saying what to do. :func:`pick_column` finds a column by the
user's choice or by usual names.
"""

from __future__ import annotations

import io
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from explorer.errors import InputError

MAX_UPLOAD_BYTES = 200 * 2**20            # every upload, every page
ARRAY_SUFFIXES = (".npy", ".npz")
TABLE_SUFFIXES = (".csv", ".jsonl", ".parquet")


@dataclass(frozen=True)
class Upload:
    """One file: its name (whose suffix says the format) and its bytes."""

    name: str
    data: bytes

    @property
    def suffix(self) -> str:
        return Path(self.name).suffix.lower()

    def __repr__(self) -> str:
        return f"Upload({self.name!r}, {len(self.data):,} bytes)"


def upload_from(source: str | Path | bytes | Upload, name: str | None = None, limit: int | None = None) -> Upload:
    """An :class:`Upload` from bytes (``name`` gives the type), a path, or an Upload; checked for
    existence, size (before reading a file; ``limit`` defaults to :data:`MAX_UPLOAD_BYTES`) and emptiness."""
    limit = MAX_UPLOAD_BYTES if limit is None else limit
    if isinstance(source, Upload):
        upload = source
    elif isinstance(source, (bytes, bytearray, memoryview)):
        upload = Upload(name or "upload", bytes(source))
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise InputError(f"File not found: {path}")
        if path.stat().st_size > limit:
            raise InputError(_too_large(path.name, path.stat().st_size, limit))
        upload = Upload(name or path.name, path.read_bytes())
    if len(upload.data) > limit:
        raise InputError(_too_large(upload.name, len(upload.data), limit))
    if not upload.data:
        raise InputError(f"{upload.name} is empty.")
    return upload


def _too_large(name: str, size: int, limit: int) -> str:
    return (f"{name} is {human_size(size)}; files up to {human_size(limit)} are accepted. "
            "Subsample it or keep only the columns you need.")


def human_size(size: int) -> str:
    """Bytes as a short text: 812 bytes, 3.4 KiB, 200 MiB."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= scale:
            return f"{size / scale:.3g} {unit}"
    return f"{size} bytes"


def check_suffix(upload: Upload, allowed: tuple[str, ...]) -> str:
    """The upload's suffix, if it is one of ``allowed``."""
    if upload.suffix not in allowed:
        raise InputError(f"{upload.name}: unsupported file type {upload.suffix or '(none)'}; "
                         f"use {', '.join(allowed)}.")
    return upload.suffix


NPY_MAGIC, ZIP_MAGIC = b"\x93NUMPY", b"PK\x03\x04"


def read_npy(upload: Upload) -> np.ndarray:
    """A plain ``.npy`` array (object arrays, which would need unpickling, are refused)."""
    _not_empty(upload)
    if not upload.data.startswith(NPY_MAGIC):
        raise InputError(f"{upload.name} is not a NumPy .npy file (save it with numpy.save).")
    try:
        return np.load(io.BytesIO(upload.data), allow_pickle=False)
    except Exception as err:  # noqa: BLE001 - a damaged header fails in many ways (even SyntaxError)
        _refuse_pickles(upload, err)
        raise InputError(f"{upload.name} is not a readable NumPy .npy file ({_damage(err)}).") from err


def _refuse_pickles(upload: Upload, err: BaseException) -> None:
    if isinstance(err, ValueError) and "pickle" in str(err).lower():
        raise InputError(f"{upload.name} holds Python objects (pickled), which are never loaded: "
                         "save plain numeric or string arrays.") from err


def _damage(err: BaseException) -> str:
    """Why an array file could not be read, in words."""
    if isinstance(err, MemoryError):
        return "its header announces an array too large for this server"
    if isinstance(err, (ValueError, OSError)) and not isinstance(err, zipfile.BadZipFile):
        return plain_words(err)
    return "it is damaged or truncated"


def read_npz(upload: Upload) -> dict[str, np.ndarray]:
    """Every array of a ``.npz`` archive (object arrays refused)."""
    _not_empty(upload)
    if upload.data.startswith(NPY_MAGIC):
        raise InputError(f"{upload.name} is a single .npy array, not an .npz archive: rename it to .npy.")
    if not upload.data.startswith(ZIP_MAGIC):
        raise InputError(f"{upload.name} is not an .npz archive (save it with numpy.savez).")
    try:
        with np.load(io.BytesIO(upload.data), allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    except Exception as err:  # noqa: BLE001 - a damaged archive or member fails in many ways
        _refuse_pickles(upload, err)
        raise InputError(f"{upload.name} is not a readable .npz archive ({_damage(err)}).") from err


def read_table(upload: Upload, as_text: bool = False) -> pd.DataFrame:
    """A ``.csv``, ``.jsonl`` or ``.parquet`` table. ``as_text``: every CSV cell as a string
    (no type guessing, empty cells stay "")."""
    suffix = check_suffix(upload, TABLE_SUFFIXES)
    _not_empty(upload)
    try:
        if suffix == ".parquet":
            return pd.read_parquet(io.BytesIO(upload.data))
        text = _utf8(upload)
        if suffix == ".jsonl":
            return pd.read_json(io.StringIO(text), lines=True, dtype=False)
        if as_text:
            return pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
        return pd.read_csv(io.StringIO(text))
    except InputError:
        raise
    except pd.errors.EmptyDataError as err:
        raise InputError(f"{upload.name} has no columns: the file holds no table.") from err
    except Exception as err:  # noqa: BLE001 - any parser failure is a bad file
        raise InputError(f"{upload.name} could not be read as {suffix[1:].upper()} ({plain_words(err)}).") from err


def _utf8(upload: Upload) -> str:
    try:
        return upload.data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise InputError(f"{upload.name} is not UTF-8 text (byte {err.start} cannot be decoded): save it as UTF-8.") \
            from err


def plain_words(err: BaseException) -> str:
    """A parser's own explanation as plain words: its first line, without markup or exception names."""
    lines = [line for line in str(err).splitlines() if line.strip()]
    text = re.sub(r"<[^>]*>|[<>]", "", lines[0] if lines else "")
    text = re.sub(r"\b[A-Z]\w*(Error|Exception|Warning)\b:?\s*", "", text).strip(" :'\"")
    return text[:200] or "unreadable"


DTYPE_WORDS = {"b": "true/false values", "i": "integers", "u": "integers", "f": "decimal numbers",
               "c": "complex numbers", "m": "time spans", "M": "dates", "O": "Python objects", "S": "bytes",
               "U": "text", "V": "records"}


def describe_dtype(dtype) -> str:
    """What an array holds, in words ("text", "dates", ...), for messages."""
    return DTYPE_WORDS.get(np.dtype(dtype).kind, "values of an unknown kind")


def _not_empty(upload: Upload) -> None:
    if not upload.data:
        raise InputError(f"{upload.name} is empty.")


def shown(value, limit: int = 40, quote: bool = True) -> str:
    """A value from the user's file for a message: one line, at most ``limit`` characters, no control
    characters, no angle brackets (a message is text, never markup), quoted unless ``quote`` is off."""
    text = re.sub(r"[\x00-\x1f\x7f\s]+", " ", str(value)).strip().replace("<", "‹").replace(">", "›")
    text = text if len(text) <= limit else text[:limit - 1] + "…"
    return repr(text) if quote else text


def shown_columns(columns, limit: int = 20) -> str:
    """A table's column names for a message (the first ``limit``)."""
    names = [shown(c, quote=False) for c in list(columns)[:limit]]
    return ", ".join(names) + (f" and {len(columns) - limit} more" if len(columns) > limit else "")


def pick_column(table: pd.DataFrame, wanted: str | None, candidates: tuple[str, ...], what: str,
                name: str, required: bool = False) -> str | None:
    """``wanted`` if given (it must exist), else the first column whose lower-cased name is one of
    ``candidates``; None when there is none and it is optional."""
    if wanted:
        if wanted not in table.columns:
            raise InputError(f"{name} has no column {shown(wanted)}; its columns are {shown_columns(table.columns)}.")
        return wanted
    by_name = {str(c).lower(): c for c in table.columns}
    candidates = tuple(dict.fromkeys(c.lower() for c in candidates if c))
    found = next((by_name[c] for c in candidates if c in by_name), None)
    if found is None and required:
        raise InputError(f"{name} has no {what} column: name one of {list(candidates)}; its columns are "
                         f"{shown_columns(table.columns)}.")
    return found


def check_rows(count: int, limit: int, what: str, name: str) -> None:
    """Refuse inputs with no rows or more than ``limit`` rows."""
    if count == 0:
        raise InputError(f"{name} has no {what}.")
    if count > limit:
        raise InputError(f"{name} has {count:,} {what}; at most {limit:,} are accepted. Subsample it first.")
