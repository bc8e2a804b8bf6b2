"""Embedding files, bundled sets and hidden states: valid inputs load, every bad input is one clear InputError."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
import torch

from explorer.data.embeddings import load_digits_set, load_embedding_file, load_text_set, validated
from explorer.errors import InputError


def npy_bytes(array) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def test_npy_npz_csv_parquet_round_trip(tmp_path):
    X = np.random.default_rng(0).normal(size=(12, 4))
    labels = np.array(["a", "b"] * 6)
    assert torch.allclose(load_embedding_file(npy_bytes(X), "x.npy").X, torch.from_numpy(X).float())
    buffer = io.BytesIO()
    np.savez(buffer, embeddings=X, labels=labels)
    from_npz = load_embedding_file(buffer.getvalue(), "x.npz")
    assert from_npz.labels == list(labels) and from_npz.X.shape == (12, 4)
    table = pd.DataFrame(X, columns=[f"e{i}" for i in range(4)]).assign(group=labels, text=[f"t{i}" for i in range(12)])
    table.to_csv(tmp_path / "x.csv", index=False)
    table.to_parquet(tmp_path / "x.parquet")
    for path in (tmp_path / "x.csv", tmp_path / "x.parquet"):
        loaded = load_embedding_file(path)
        assert loaded.X.shape == (12, 4) and loaded.labels == list(labels) and loaded.texts[3] == "t3"
        assert np.allclose(loaded.X.numpy(), X, atol=1e-6)


@pytest.mark.parametrize("array,needle", [
    (np.array([[1.0, np.nan], [2, 3], [4, 5]]), "NaN or inf"),
    (np.array([[1.0, np.inf], [2, 3]]), "NaN or inf"),
    (np.ones((1, 3)), "at least 2 samples"),
    (np.ones(5), "2-D"),
    (np.ones((4, 3)), "constant"),
])
def test_bad_arrays(array, needle):
    with pytest.raises(InputError, match=needle):
        load_embedding_file(npy_bytes(array), "bad.npy")


def test_bad_files_and_tables(tmp_path):
    with pytest.raises(InputError, match="unsupported file type"):
        load_embedding_file(b"abc", "x.txt")
    with pytest.raises(InputError, match="not a NumPy .npy file"):
        load_embedding_file(b"not a numpy file", "x.npy")
    with pytest.raises(InputError, match="empty"):
        load_embedding_file(b"", "x.csv")
    with pytest.raises(InputError, match="File not found"):
        load_embedding_file(tmp_path / "missing.csv")
    objects = io.BytesIO()
    np.save(objects, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match="pickled"):  # never unpickled
        load_embedding_file(objects.getvalue(), "x.npy")
    with pytest.raises(InputError, match="non-numeric columns colour"):
        load_embedding_file(b"a,b,colour\n1,2,red\n3,4,blue\n", "x.csv")
    with pytest.raises(InputError, match="3 labels for 2 samples"):
        validated("x", np.eye(2), labels=["a", "b", "c"])
    with pytest.raises(InputError, match="no column 'nope'"):
        load_embedding_file(b"a,b\n1,2\n3,4\n", "x.csv", label_column="nope")


def test_too_large_file_is_refused(tmp_path, monkeypatch):
    import explorer.data.uploads as uploads

    monkeypatch.setattr(uploads, "MAX_UPLOAD_BYTES", 100)
    path = tmp_path / "big.npy"
    path.write_bytes(npy_bytes(np.zeros((50, 4))))
    with pytest.raises(InputError, match="files up to 100 bytes are accepted"):
        load_embedding_file(path)


def test_constant_columns_dropped_with_note():
    loaded = validated("x", np.array([[1.0, 5, 0], [2, 5, 1], [3, 5, 0]]))
    assert loaded.X.shape == (3, 2) and "dropped 1 constant columns" in loaded.notes


def test_digits_bundled():
    digits = load_digits_set()
    assert digits.n == 1797 and set(digits.labels) == {str(i) for i in range(10)}
    assert digits.dim < 64  # always-blank pixels dropped


@pytest.mark.model
def test_text_set_groups_have_the_designed_diversity():
    from explorer.kernels.diversity import vendi_score

    texts = load_text_set()
    assert texts.n == 60 and texts.X.shape[1] == 384 and texts.texts[0].startswith("The cat")
    labels = np.array(texts.labels)
    score = {g: vendi_score(texts.X[torch.from_numpy(np.flatnonzero(labels == g))]) for g in set(texts.labels)}
    assert score["paraphrases of one sentence"] < score["one topic: the weather"] < score["many topics"]


@pytest.mark.model
def test_csv_text_column_is_embedded():
    loaded = load_embedding_file(b"text,label\nhello there,a\ngood morning,a\nquantum physics,b\n", "t.csv")
    assert loaded.X.shape == (3, 384) and loaded.labels == ["a", "a", "b"]
    assert torch.allclose(loaded.X.norm(dim=1), torch.ones(3), atol=1e-5)


@pytest.mark.model
def test_hidden_states_per_layer():
    from explorer.data.hidden_states import hidden_state_sets

    sets = hidden_state_sets(["The cat sleeps.", "Stocks fell today.", "Bees dance."], labels=["a", "b", "b"])
    assert len(sets) >= 2 and all(s.n == 3 and s.labels == ["a", "b", "b"] for s in sets)
    assert not torch.allclose(sets[0].X, sets[-1].X[:, : sets[0].dim])
    with pytest.raises(InputError, match="at least 2 texts"):
        hidden_state_sets(["only one"])


@pytest.mark.model
def test_padded_batch_pools_like_each_text_alone():
    """Right padding and the mask: a short text batched with a long one pools to what it gives alone."""
    from explorer.data.hidden_states import mean_pooled_hidden_states
    from explorer.models.language_model import load_language_model

    texts = ["Bees dance.", "The committee postponed its decision on the new bridge until the spring survey."]
    tokenizer = load_language_model().tokenizer
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # another page's setting must be restored, not overwritten
    try:
        batched = mean_pooled_hidden_states(texts, batch_size=2)
        assert tokenizer.padding_side == "left"
    finally:
        tokenizer.padding_side = side
    alone = torch.cat([mean_pooled_hidden_states([t, t], batch_size=1)[:, :1] for t in texts], dim=1)
    assert batched.shape == alone.shape and batched.shape[0] == 31  # embeddings + 30 layers of SmolLM2-135M
    assert torch.allclose(batched, alone, rtol=1e-3, atol=1e-3)


@pytest.mark.model
def test_text_set_hidden_states_computed_once_per_process():
    from explorer.data.hidden_states import text_set_hidden_states

    first = text_set_hidden_states()
    assert len(first) == 31 and all(s.n == 60 and s.labels[0] == "paraphrases of one sentence" for s in first)
    assert first[5].texts[0].startswith("The cat") and "layer 5" in first[5].name
    assert text_set_hidden_states() is first
