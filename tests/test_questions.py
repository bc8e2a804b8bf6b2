"""Question loading and answer matching."""

import json

import pandas as pd
import pytest

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
