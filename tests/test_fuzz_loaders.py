"""Every loader of a user's file, fuzzed: malformed CSV / JSONL / Parquet / NPY / NPZ bytes (random
bytes, damaged valid files, valid files of random arrays and tables) may load or be refused, and a
refusal is one InputError in plain words (no exception type, no markup, not empty). Nothing else
may come out.

``pytest --slow`` runs twenty times as many examples.
"""

from __future__ import annotations

import io
import os
import re
import zipfile

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from explorer.data.classifier_outputs import read_uploaded
from explorer.data.embeddings import load_embedding_file
from explorer.data.questions import load_questions
from explorer.data.uploads import Upload, read_npy, read_npz, read_table
from explorer.errors import InputError

SCALE = int(os.environ.get("EXPLORER_FUZZ_SCALE", "1"))
FUZZ = settings(max_examples=400 * SCALE, deadline=None, derandomize=SCALE == 1,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
EXCEPTION_NAME = re.compile(r"\b[A-Z][A-Za-z]*(Error|Exception|Warning)\b|Traceback")


def plain(message: str) -> bool:
    """A message a page can show as it is: words, no exception type, no markup."""
    return bool(message.strip()) and not EXCEPTION_NAME.search(message) and "<" not in message \
        and ">" not in message


def only_input_errors(load, *args, **kwargs):
    """``load(...)``'s result, or None when it refused with a plain InputError; anything else fails."""
    try:
        return load(*args, **kwargs)
    except InputError as err:
        assert plain(str(err)), f"not plain words: {str(err)!r}"
        return None


# ------------------------------------------------------------------------------ file contents
def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


DTYPES = st.sampled_from([np.float64, np.float32, np.float16, np.int64, np.int8, np.uint8, np.bool_,
                          np.complex64, "U3", "S2", "datetime64[s]"])
ARRAYS = DTYPES.flatmap(lambda dtype: hnp.arrays(dtype, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0,
                                                                          max_side=6)))
NAMES = st.sampled_from(["X", "embeddings", "labels", "y", "probs", "logits", "label", "class_names", "scores",
                         "a", "ünï", "group"])
CELLS = st.one_of(st.none(), st.integers(-3, 12), st.floats(allow_nan=True, allow_infinity=True),
                  st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="<>"), max_size=6),
                  st.booleans())
COLUMNS = st.sampled_from(["question", "answer", "label", "text", "x0", "x1", "prob_a", "prob_b", "y", "group",
                           "", " ", "Question", "é", "0", "1"])


@st.composite
def tables(draw) -> pd.DataFrame:
    names = draw(st.lists(COLUMNS, min_size=1, max_size=5))
    rows = draw(st.integers(0, 6))
    data = {f"{name}" if names.count(name) == 1 else f"{name}.{i}": draw(st.lists(CELLS, min_size=rows,
                                                                                  max_size=rows))
            for i, name in enumerate(names)}
    return pd.DataFrame(data)


def table_bytes(frame: pd.DataFrame, suffix: str) -> bytes:
    if suffix == ".csv":
        return frame.to_csv(index=False).encode()
    if suffix == ".jsonl":
        return frame.to_json(orient="records", lines=True).encode()
    buffer = io.BytesIO()
    frame.astype({c: str for c in frame.columns if frame[c].dtype == object}).to_parquet(buffer)
    return buffer.getvalue()


@st.composite
def valid_files(draw) -> Upload:
    """A well-formed file of a random kind holding random content."""
    kind = draw(st.sampled_from([".npy", ".npz", ".csv", ".jsonl", ".parquet"]))
    if kind == ".npy":
        return Upload(f"f{kind}", npy_bytes(draw(ARRAYS)))
    if kind == ".npz":
        return Upload(f"f{kind}", npz_bytes(draw(st.dictionaries(NAMES, ARRAYS, max_size=3))))
    return Upload(f"f{kind}", table_bytes(draw(tables()), kind))


@st.composite
def damaged(draw, files=valid_files()) -> Upload:
    """A valid file cut short, with bytes flipped, inserted or dropped, or renamed to another kind."""
    upload = draw(files)
    data = bytearray(upload.data)
    for _ in range(draw(st.integers(1, 4))):
        action = draw(st.sampled_from(["cut", "flip", "insert", "delete"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if action == "cut":
            data = data[:at]
        elif action == "flip" and data:
            data[at] ^= draw(st.integers(1, 255))
        elif action == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif data:
            del data[at:at + draw(st.integers(1, 16))]
    name = draw(st.sampled_from([upload.name, "f.npy", "f.npz", "f.csv", "f.jsonl", "f.parquet", "f.txt", "f"]))
    return Upload(name, bytes(data))


GARBAGE = st.builds(Upload, st.sampled_from(["g.npy", "g.npz", "g.csv", "g.jsonl", "g.parquet"]),
                    st.one_of(st.binary(max_size=300), st.sampled_from([b"\x93NUMPY", b"PK\x03\x04", b"PAR1",
                                                                         b"\xef\xbb\xbf", b"\x00" * 64])))
ANY_FILE = st.one_of(valid_files(), damaged(), GARBAGE)


# ------------------------------------------------------------------------------ the readers
@FUZZ
@given(ANY_FILE)
def test_readers(upload):
    if upload.suffix == ".npy":
        only_input_errors(read_npy, upload)
    elif upload.suffix == ".npz":
        only_input_errors(read_npz, upload)
    else:
        only_input_errors(read_table, upload)
        only_input_errors(read_table, upload, as_text=True)


@FUZZ
@given(ANY_FILE)
def test_embedding_loader(upload):
    loaded = only_input_errors(load_embedding_file, upload)
    if loaded is not None:
        assert loaded.X.ndim == 2 and len(loaded.X) == loaded.n and np.isfinite(loaded.X).all()


@FUZZ
@given(st.lists(ANY_FILE, min_size=1, max_size=2), st.sampled_from(["auto", "probabilities", "logits"]))
def test_classifier_output_loader(uploads, kind):
    loaded = only_input_errors(read_uploaded, uploads, kind)
    if loaded is not None:
        probs = loaded.probs.numpy()
        assert np.isfinite(probs).all() and np.allclose(probs.sum(1), 1, atol=1e-6)
        assert ((loaded.labels >= 0) & (loaded.labels < loaded.num_classes)).all()


@FUZZ
@given(ANY_FILE)
def test_question_loader(upload):
    assume(upload.suffix in (".csv", ".jsonl", ".parquet") or upload.suffix not in (".npy", ".npz"))
    loaded = only_input_errors(load_questions, upload)
    if loaded is not None:
        assert list(loaded.columns) == ["question", "answers"] and loaded["question"].is_unique
        assert all(q.strip() for q in loaded["question"])


# ------------------------------------------------------------------------------ random arrays, right format
FLOATS = hnp.arrays(np.float64, hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=8),
                    elements=st.floats(allow_nan=True, allow_infinity=True, width=64))


@FUZZ
@given(FLOATS, st.one_of(st.none(), hnp.arrays(np.int64, st.integers(0, 9), elements=st.integers(-2, 5))))
def test_classifier_outputs_from_random_arrays(scores, labels):
    arrays = {"probs": scores} if labels is None else {"probs": scores, "labels": labels}
    loaded = only_input_errors(read_uploaded, [Upload("r.npz", npz_bytes(arrays))])
    if loaded is not None:
        assert np.isfinite(loaded.probs.numpy()).all()


@FUZZ
@given(FLOATS)
def test_embeddings_from_random_arrays(X):
    loaded = only_input_errors(load_embedding_file, Upload("r.npy", npy_bytes(X)))
    if loaded is not None:
        assert X.ndim == 2 and np.isfinite(loaded.X).all()


# ------------------------------------------------------------------------------ cases fuzzing found once
@pytest.mark.parametrize("upload", [
    Upload("e.npz", b""), Upload("e.csv", b""), Upload("e.npy", b"\x93NUMPY"), Upload("z.npz", b"PK\x03\x04"),
    Upload("p.parquet", b"PAR1"), Upload("j.jsonl", b"{"), Upload("b.csv", b"\xff\xfe\x00"),
    Upload("o.npy", npy_bytes(np.array([{"a": 1}], dtype=object))),
    Upload("s.npz", npz_bytes({"X": np.zeros((2, 2), dtype=[("a", "f4"), ("b", "i4")])})),
])
def test_known_bad_files_are_plain_input_errors(upload):
    for load in (load_embedding_file, lambda u: read_uploaded([u]), load_questions):
        with pytest.raises(InputError) as err:
            load(upload)
        assert plain(str(err.value)), str(err.value)


def test_class_names_that_are_not_a_list_are_refused():
    """Found by fuzzing: a 0-d class_names array raised TypeError."""
    upload = Upload("c.npz", npz_bytes({"probs": np.eye(2), "labels": np.arange(2), "class_names": np.array(1.0)}))
    with pytest.raises(InputError, match="class_names must be a 1-D array"):
        read_uploaded([upload])


@pytest.mark.parametrize("X", [np.array([[3.5e38], [0.0]]), np.array([[1 + 2j, 0], [0, 1]]),
                               np.array([[True, False], [False, True]])])
def test_embeddings_that_float32_cannot_hold_are_refused(X):
    """Found by fuzzing: 3.5e38 became inf in the stored float32 embeddings; complex parts were dropped."""
    with pytest.raises(InputError) as err:
        load_embedding_file(Upload("x.npy", npy_bytes(X)))
    assert plain(str(err.value))


def test_a_zip_bomb_like_npz_is_refused_plainly():
    """An .npz whose member announces a huge array (a tiny file) is refused plainly, nothing allocated."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": (10**12, 8)})
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("X.npy", header.getvalue() + b"\x00" * 64)
    with pytest.raises(InputError) as err:
        load_embedding_file(Upload("bomb.npz", buffer.getvalue()))
    assert plain(str(err.value)) and "bomb.npz" in str(err.value)
