"""Loaders for the conformal page: uploads, the digits network, the multiple-choice questions."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
import torch

from explorer.data import classifier_outputs as co
from explorer.data import mcq
from explorer.errors import InputError

PROBS = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.3, 0.4, 0.3]])
LABELS = np.array([0, 2, 1])


def npy_bytes(array) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


def npz_bytes(**arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ENTROPY_EXPLORER_CACHE", str(tmp_path / "cache"))


# ----------------------------------------------------------------------------- arrays
def test_probabilities_and_logits_by_hand():
    outputs = co.outputs_from_arrays(PROBS, LABELS)
    assert outputs.probs.dtype == torch.float64 and outputs.labels.tolist() == [0, 2, 1]
    assert outputs.class_names == ("0", "1", "2") and outputs.num_classes == 3
    assert outputs.accuracy == pytest.approx(1.0)
    logits = co.outputs_from_arrays(np.log(PROBS) + 5.0, LABELS, kind="logits")
    assert torch.allclose(logits.probs, torch.tensor(PROBS))


def test_rows_not_summing_to_one_offer_softmax():
    with pytest.raises(InputError, match="choose 'logits' to apply softmax"):
        co.outputs_from_arrays(PROBS * 2, LABELS)
    with pytest.raises(InputError, match="negative"):
        co.outputs_from_arrays(np.array([[1.5, -0.5], [0.5, 0.5]]), [0, 1], kind="probabilities")


@pytest.mark.parametrize("scores, labels, message", [
    (np.array([[0.5, np.nan], [0.5, 0.5]]), [0, 1], "NaN or infinity"),
    (PROBS, [0, 1], "Mismatched lengths: 3 rows of scores but 2 labels"),
    (PROBS, [0, 3, 1], "out of range: row 1 has label 3"),
    (PROBS, [0, -1, 1], "out of range"),
    (PROBS, [0.0, 1.5, 1.0], "whole numbers"),
    (PROBS, [0.0, np.nan, 1.0], "NaN"),
    (np.ones((3, 1)), [0, 0, 0], "at least 2 classes"),
    (np.ones(3), [0, 0, 0], "2-D array"),
    (np.zeros((0, 3)), [], "no rows"),
    (PROBS, ["a", "b", "c"], "Unknown label name"),
])
def test_bad_arrays_give_one_clear_error(scores, labels, message):
    with pytest.raises(InputError, match=message):
        co.outputs_from_arrays(scores, np.array(labels))


def test_label_names_map_to_indices():
    outputs = co.outputs_from_arrays(PROBS, np.array(["cat", "fox", "dog"]), class_names=["cat", "dog", "fox"])
    assert outputs.labels.tolist() == [0, 2, 1]
    with pytest.raises(InputError, match="2 class names given for 3"):
        co.outputs_from_arrays(PROBS, LABELS, class_names=["a", "b"])


# ----------------------------------------------------------------------------- files
def test_npz_upload_with_names_and_logits_key():
    data = npz_bytes(probs=PROBS, labels=LABELS, class_names=np.array(["x", "y", "z"]))
    outputs = co.read_uploaded({"out.npz": data})
    assert outputs.class_names == ("x", "y", "z") and outputs.name == "out.npz"
    logits = co.read_uploaded({"out.npz": npz_bytes(logits=np.log(PROBS), y=LABELS)})  # auto: softmax
    assert torch.allclose(logits.probs, torch.tensor(PROBS))


def test_npz_with_pickled_objects_is_refused():
    data = npz_bytes(probs=PROBS, labels=np.array([0, 2, 1], dtype=object))
    with pytest.raises(InputError, match="pickled"):
        co.read_uploaded({"evil.npz": data})


def test_npz_missing_arrays_named():
    with pytest.raises(InputError, match="no labels array"):
        co.read_uploaded({"out.npz": npz_bytes(probs=PROBS)})


def test_npy_pair_either_order():
    outputs = co.read_uploaded({"labels.npy": npy_bytes(LABELS), "probs.npy": npy_bytes(PROBS)})
    assert outputs.labels.tolist() == [0, 2, 1] and outputs.num_rows == 3
    with pytest.raises(InputError, match="two .npy files"):
        co.read_uploaded({"a.npy": npy_bytes(PROBS), "b.npy": npy_bytes(PROBS)})
    with pytest.raises(InputError, match="pickled"):
        co.read_uploaded({"a.npy": npy_bytes(np.array([{"x": 1}], dtype=object)), "b.npy": npy_bytes(LABELS)})


def test_csv_and_parquet_tables():
    table = pd.DataFrame({"cat": PROBS[:, 0], "dog": PROBS[:, 1], "fox": PROBS[:, 2],
                          "label": ["cat", "fox", "dog"], "text": ["one", "two", "three"]})
    from_csv = co.read_uploaded({"t.csv": table.to_csv(index=False).encode()})
    buffer = io.BytesIO()
    table.to_parquet(buffer)
    from_parquet = co.read_uploaded({"t.parquet": buffer.getvalue()})
    for outputs in (from_csv, from_parquet):
        assert outputs.class_names == ("cat", "dog", "fox")
        assert outputs.labels.tolist() == [0, 2, 1] and outputs.texts == ("one", "two", "three")
        assert torch.allclose(outputs.probs, torch.tensor(PROBS))


@pytest.mark.parametrize("files, message", [
    ({}, "No file uploaded"),
    ({"x.txt": b"hello"}, "unsupported file type"),
    ({"x.npz": b"not a zip"}, "not an .npz archive"),
    ({"x.csv": b"a,b\n0.5,0.5\n"}, "has no label column"),
    ({"x.csv": b"a,b,label\n0.5,zz,0\n"}, "must be numeric"),
    ({"x.csv": b"a,b,label\n0.5,0.5,0\n0.2,,1\n"}, "NaN"),
    ({"x.parquet": b"PAR1 broken"}, "could not be read"),
    ({"a.npz": b"", "b.csv": b""}, "Upload one"),
])
def test_bad_uploads(files, message):
    with pytest.raises(InputError, match=message):
        co.read_uploaded(files)


def test_load_from_disk(tmp_path):
    path = tmp_path / "o.npz"
    path.write_bytes(npz_bytes(probs=PROBS, labels=LABELS))
    assert co.load_classifier_outputs(path).num_rows == 3
    with pytest.raises(InputError, match="File not found"):
        co.load_classifier_outputs(tmp_path / "missing.npz")


# ----------------------------------------------------------------------------- digits network
def test_digits_network_trains_caches_and_has_an_overconfident_twin(tmp_path):
    from explorer.data.digits_classifier import CACHE_FILE, load_digits_outputs

    first = load_digits_outputs()
    assert (tmp_path / "cache" / CACHE_FILE).exists()
    assert first.probs.shape == (1297, 10) and first.images.shape == (1297, 8, 8)
    assert first.accuracy > 0.9
    assert torch.allclose(first.probs.sum(1), torch.ones(1297, dtype=torch.float64))
    again = load_digits_outputs()  # read from the cache
    assert torch.equal(again.probs, first.probs)
    bold = load_digits_outputs(overconfident=True)
    assert torch.equal(bold.probs.argmax(1), first.probs.argmax(1))
    assert bold.mean_confidence > first.mean_confidence + 0.03 and bold.mean_confidence > bold.accuracy


# ----------------------------------------------------------------------------- multiple choice
def test_bundled_questions_are_valid_and_balanced():
    table = mcq.load_mcq_questions()
    assert 60 <= len(table) <= 100
    counts = table["answer"].value_counts()
    assert set(counts.index) == set(mcq.LETTERS) and counts.min() >= 15
    assert set(table["difficulty"]) == {"easy", "medium", "hard"}
    assert table["question"].is_unique
    row = table.iloc[0]
    prompt = mcq.mcq_prompt(row)
    assert prompt.startswith(mcq.INSTRUCTION) and prompt.endswith("Answer:")
    assert f"A. {row['A']}\nB. {row['B']}\nC. {row['C']}\nD. {row['D']}" in prompt


@pytest.mark.parametrize("content, message", [
    ("question,A,B,C\nq,1,2,3\n", "lacks the column"),
    ("question,A,B,C,D,answer\nq,1,2,3,4,E\n", "Answers must be one of"),
    ("question,A,B,C,D,answer\nq,1,,3,4,A\n", "blank field"),
    ("question,A,B,C,D,answer\n", "no questions"),
])
def test_bad_question_files(tmp_path, content, message):
    path = tmp_path / "q.csv"
    path.write_text(content)
    with pytest.raises(InputError, match=message):
        mcq.load_mcq_questions(path)


@pytest.mark.model
def test_language_model_answers_letters_and_caches(tmp_path):
    from explorer.models.language_model import load_language_model

    path = tmp_path / "few.csv"
    mcq.load_mcq_questions().head(6).to_csv(path, index=False)
    outputs = mcq.mcq_outputs(questions_path=path)
    assert outputs.probs.shape == (6, 4) and outputs.class_names == mcq.LETTERS
    assert torch.allclose(outputs.probs.sum(1), torch.ones(6, dtype=torch.float64))
    # Same numbers as restricting the model's next-token logits to the letters by hand.
    model = load_language_model()
    table = mcq.load_mcq_questions(path)
    prompt = model.format_prompt(mcq.mcq_prompt(table.iloc[2]))
    logits = model.next_token_logits([prompt])[0].double()
    letters = [model.tokenizer.encode(letter, add_special_tokens=False)[0] for letter in mcq.LETTERS]
    assert torch.allclose(outputs.probs[2], torch.softmax(logits[letters], 0), atol=1e-4)
    cached = list((tmp_path / "cache").glob("mcq-*.npz"))
    assert len(cached) == 1
    assert torch.equal(mcq.mcq_outputs(questions_path=path).probs, outputs.probs)
