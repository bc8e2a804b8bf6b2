"""Question loading (files, uploads, Hugging Face datasets and folders laid out like them) and answer matching."""

import json
import socket
import time

import pandas as pd
import pytest

from explorer.data.hub_datasets import pick_data_file
from explorer.data.questions import is_correct, load_questions, normalize_answer
from explorer.errors import InputError


def test_bundled_set():
    table = load_questions()
    assert 90 <= len(table) <= 120
    assert table["question"].is_unique
    assert all(len(a) >= 1 for a in table["answers"])
    assert table.loc[table.question == "What is the capital of Brazil?", "answers"].item() == ["Brasilia", "Brasília"]


def test_csv_jsonl_parquet_and_uploads(tmp_path):
    frame = pd.DataFrame({"q": ["A?", "B?"], "a": ["x|y", ""]})
    frame.to_parquet(tmp_path / "s.parquet")
    (tmp_path / "s.jsonl").write_text("\n".join(json.dumps(r) for r in frame.to_dict("records")))
    for name in ("s.parquet", "s.jsonl"):
        table = load_questions(tmp_path / name, question_column="q", answer_column="a")
        assert table["question"].tolist() == ["A?", "B?"]
        assert table["answers"].tolist() == [["x", "y"], []]
    upload = load_questions(b"question\nWhy?\nHow?\n", name="u.csv")
    assert upload["answers"].tolist() == [[], []]


@pytest.mark.parametrize("content, name, message", [
    (b"question\n", "e.csv", "no questions"),
    (b"prompt\nWhy?\n", "m.csv", "no column 'question'"),
    (b"question\nWhy?\nWhy?\n", "d.csv", "duplicate"),
    (b"question\nWhy?\n\"\"\n", "b.csv", "blank"),
    (b"\x00\x01garbage", "g.parquet", "could not be read"),
    (b"question\nWhy?\n", "x.txt", "unsupported"),
])
def test_bad_files(content, name, message):
    with pytest.raises(InputError, match=message):
        load_questions(content, name=name)


def test_missing_file():
    with pytest.raises(InputError, match="not found"):
        load_questions("/nonexistent/q.csv")


def test_answer_matching():
    assert normalize_answer("The  Eiffel-Tower!") == "eiffel tower"
    assert is_correct("It is Paris.", ["Paris"])
    assert not is_correct("It is Paris.", ["Paris"], mode="exact")
    assert is_correct("paris", ["Paris"], mode="exact")
    assert not is_correct("Parisian food", ["Paris"])
    assert is_correct("The answer is 7 days", ["7", "seven"])
    assert not is_correct("", ["Paris"])


# ---------------------------------------------------------------- Hugging Face datasets

def test_pick_data_file_prefers_validation_parquet_first_shard():
    files = [".gitattributes", "README.md", "rc/train-00000-of-00002.parquet", "rc/train-00001-of-00002.parquet",
             "rc/validation-00001-of-00002.parquet", "rc/validation-00000-of-00002.parquet",
             "unfiltered/validation-00000-of-00001.parquet", "rc/validation.csv", "extra/test.jsonl"]
    assert pick_data_file(files) == "rc/validation-00000-of-00002.parquet"
    assert pick_data_file(files, "unfiltered") == "unfiltered/validation-00000-of-00001.parquet"
    assert pick_data_file(files, "extra/test.jsonl") == "extra/test.jsonl"
    assert pick_data_file(["data/train.csv", "data/test.jsonl"]) == "data/test.jsonl"     # test before train
    assert pick_data_file(["questions.csv", "notes.txt"]) == "questions.csv"              # no split named
    assert pick_data_file(["train.csv", "retrain_log.csv"]) == "train.csv"                  # "retrain" is no split
    with pytest.raises(InputError, match="no Parquet, JSONL or CSV"):
        pick_data_file(["README.md", ".hidden/q.csv"])
    with pytest.raises(InputError, match="under 'nope'"):
        pick_data_file(files, "nope")


def _dataset_repo(root):
    """A folder laid out like a Hub dataset repository (TriviaQA-like records, SQuAD-like lists)."""
    (root / "rc.nocontext").mkdir(parents=True)
    (root / "README.md").write_text("---\nconfigs: []\n---\n")
    (root / ".gitattributes").write_text("*.parquet filter=lfs\n")
    pd.DataFrame({"question": ["Train Q?"], "answer": [{"value": "x", "aliases": ["x"]}]}).to_parquet(
        root / "rc.nocontext" / "train-00000-of-00001.parquet")
    pd.DataFrame({"question_id": ["a", "b", "c"],
                  "question": ["Capital of France?", "Largest planet?", "Capital of France?"],
                  "answer": [{"value": "Paris", "aliases": ["Paris", "City of Light"]},
                             {"value": "Jupiter", "aliases": ["Jupiter"]}, {"value": "Paris", "aliases": []}]}) \
        .to_parquet(root / "rc.nocontext" / "validation-00000-of-00001.parquet")
    return root


def test_dataset_folder_picks_file_and_columns(tmp_path):
    repo = _dataset_repo(tmp_path / "trivia")
    table = load_questions(str(repo))
    assert table["question"].tolist() == ["Capital of France?", "Largest planet?"]     # repeated question kept once
    assert table["answers"].tolist() == [["Paris", "City of Light"], ["Jupiter"]]
    # other column names and answer shapes: "query" + a list of aliases, JSON Lines
    other = tmp_path / "squadish"
    (other / "data").mkdir(parents=True)
    rows = [{"query": "Who wrote Hamlet?", "answers": {"text": ["Shakespeare", "William Shakespeare"]}},
            {"query": "2 + 2?", "answers": {"text": ["4", "four"]}}]
    (other / "data" / "test.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    table = load_questions(str(other))
    assert table["question"].tolist() == ["Who wrote Hamlet?", "2 + 2?"]
    assert table["answers"].tolist() == [["Shakespeare", "William Shakespeare"], ["4", "four"]]
    nolist = tmp_path / "nocol"
    nolist.mkdir()
    pd.DataFrame({"context": ["..."]}).to_parquet(nolist / "test.parquet")
    with pytest.raises(InputError, match="no question column"):
        load_questions(str(nolist))


def test_dataset_id_offline_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(InputError, match="not in the local Hugging Face cache and the Hub is off"):
        load_questions("hf:someone/some-questions")
    with pytest.raises(InputError, match="not a Hugging Face dataset id"):
        load_questions("hf:just-a-name")


def test_dataset_id_offline_reads_the_cache(tmp_path, monkeypatch):
    """A dataset already in the Hugging Face cache (its standard layout) loads offline."""
    cache = tmp_path / "hub"
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / "datasets--someone--quiz"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    _dataset_repo(repo / "snapshots" / commit)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    table = load_questions("hf:someone/quiz")
    assert table["question"].tolist() == ["Capital of France?", "Largest planet?"]


def test_dataset_id_unreachable_hub_fails_fast(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    with socket.socket() as sock:                      # a local port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", f"http://127.0.0.1:{port}")
    started = time.monotonic()
    with pytest.raises(InputError, match="cannot be reached"):
        load_questions("hf:someone/quiz")
    assert time.monotonic() - started < 5
