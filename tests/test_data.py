"""Records, file sources, splits, prompts and the letter-token check."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from calibration_lightning.data.letters import letter_token_ids
from calibration_lightning.data.prompts import PromptFormat
from calibration_lightning.data.records import MCRecord
from calibration_lightning.data.sources import bundled_mmlu, read_records_file
from calibration_lightning.data.splits import split_records
from calibration_lightning.errors import ConfigError, DataError, TokenizerError

GOOD = {"question": "2 + 2 = ?", "choices": ["3", "4", "5"], "answer": 1}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


BAD_ROWS = {
    "missing question": ({"choices": ["a", "b"], "answer": 0}, "line 2: field 'question' is missing or empty"),
    "empty question": ({"question": "  ", "choices": ["a", "b"], "answer": 0}, "line 2: field 'question'"),
    "missing choices": ({"question": "q", "answer": 0}, "line 2: field 'choices' is missing"),
    "one choice": ({"question": "q", "choices": ["a"], "answer": 0}, "line 2: field 'choices' has 1 options"),
    "27 choices": (
        {"question": "q", "choices": [f"c{i}" for i in range(27)], "answer": 0},
        "line 2: field 'choices' has 27 options",
    ),
    "empty choice": ({"question": "q", "choices": ["a", ""], "answer": 0}, "line 2: field 'choices' option B"),
    "choices not a list": ({"question": "q", "choices": "ab", "answer": 0}, "line 2: field 'choices' must be a list"),
    "answer missing": ({"question": "q", "choices": ["a", "b"]}, "line 2: field 'answer' is missing"),
    "answer out of range": (
        {"question": "q", "choices": ["a", "b"], "answer": 2},
        "line 2: field 'answer' is 2, out of range",
    ),
    "answer negative": ({"question": "q", "choices": ["a", "b"], "answer": -1}, "line 2: field 'answer' is -1"),
    "answer letter not offered": (
        {"question": "q", "choices": ["a", "b"], "answer": "C"},
        "line 2: field 'answer' is the letter 'C'",
    ),
    "answer gibberish": ({"question": "q", "choices": ["a", "b"], "answer": "yes"}, "line 2: field 'answer' must be"),
}


@pytest.mark.parametrize("case", sorted(BAD_ROWS))
def test_bad_row_names_file_row_and_field(tmp_path, case):
    row, message = BAD_ROWS[case]
    path = write_jsonl(tmp_path / "data.jsonl", [GOOD, row])
    with pytest.raises(DataError) as err:
        read_records_file(str(path))
    assert str(path) in str(err.value) and message in str(err.value)


@pytest.mark.parametrize(
    "content,message",
    [
        (b"", "holds no records"),
        (b"\n\n", "holds no records"),
        (b'{"question": "q", "choices": ["a", "b"], "answer": 0}\n{broken\n', "line 2: not valid JSON"),
        (b'{"question": "caf\xe9"}\n', "not valid UTF-8"),
    ],
)
def test_bad_files(tmp_path, content, message):
    path = tmp_path / "data.jsonl"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message):
        read_records_file(str(path))


def test_missing_path_directory_and_unknown_format(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_records_file(str(tmp_path / "nope.jsonl"))
    with pytest.raises(DataError, match="is a directory"):
        read_records_file(str(tmp_path))
    (tmp_path / "data.xlsx").write_text("x")
    with pytest.raises(DataError, match="unknown file format '.xlsx'"):
        read_records_file(str(tmp_path / "data.xlsx"))
    with pytest.raises(DataError, match="dataset.path is not set"):
        read_records_file("???")


def test_all_formats_give_the_same_records(tmp_path):
    rows = [GOOD, {"id": "q2", "question": "Sky?", "choices": ["blue", "green"], "answer": "A", "subject": "science"}]
    jsonl = read_records_file(str(write_jsonl(tmp_path / "d.jsonl", rows)))
    (tmp_path / "d.json").write_text(json.dumps(rows))
    csv_text = "question,choices,answer,id,subject\n" + "\n".join(
        f'"{r["question"]}","{json.dumps(r["choices"]).replace(chr(34), chr(34) * 2)}",{r["answer"]},{r.get("id", "")},'
        f"{r.get('subject', '')}"
        for r in rows
    )
    (tmp_path / "d.csv").write_text(csv_text)
    # from_pylist takes its columns from the first row, so every row names every field
    table = [{"id": r.get("id"), "subject": r.get("subject"), **r, "answer": str(r["answer"])} for r in rows]
    pq.write_table(pa.Table.from_pylist(table), tmp_path / "d.parquet")
    for ext in ("json", "csv", "parquet"):
        other = read_records_file(str(tmp_path / f"d.{ext}"))
        assert [(r.question, r.choices, r.answer, r.subject) for r in other] == [
            (r.question, r.choices, r.answer, r.subject) for r in jsonl
        ], ext
    assert jsonl[1] == MCRecord(id="q2", question="Sky?", choices=("blue", "green"), answer=0, subject="science")


def test_bundled_mmlu_and_split_are_deterministic():
    records = bundled_mmlu(subjects=["astronomy"])
    assert len(records) == 152 and all(r.subject == "astronomy" and len(r.choices) == 4 for r in records)
    a = split_records(records, 50, 20, 30, seed=3)
    b = split_records(records, 50, 20, 30, seed=3)
    c = split_records(records, 50, 20, 30, seed=4)
    assert [r.id for r in a.test] == [r.id for r in b.test] != [r.id for r in c.test]
    ids = [r.id for r in a.train + a.val + a.test]
    assert len(ids) == len(set(ids)) == 100
    with pytest.raises(DataError, match="unknown MMLU subjects"):
        bundled_mmlu(subjects=["astrology"])
    with pytest.raises(DataError, match="only 152"):
        split_records(records, 100, 50, 50)


def test_bundled_mmlu_full_size():
    assert len(bundled_mmlu()) == 14042


def test_prompt_rendering():
    rec = MCRecord("1", "What is 2+2?", ("3", "4"), 1, "math")
    text = PromptFormat().render(rec)
    assert text == "The following is a multiple choice question about math.\n\nWhat is 2+2?\nA. 3\nB. 4\nAnswer:"
    with pytest.raises(ConfigError, match="must contain {question}"):
        PromptFormat(template="{choices}")


class CharTokenizer:
    """One token per character: a space before the letter is a token of its own."""

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": [ord(c) for c in text]}

    def convert_ids_to_tokens(self, ids):
        return [chr(i) for i in ids]


def test_letter_check_names_the_letter_and_the_fix():
    tok = CharTokenizer()
    assert letter_token_ids(tok, "Answer:", "", 3) == [ord("A"), ord("B"), ord("C")]
    with pytest.raises(TokenizerError, match="option letter 'A' is not a single token.*answer_prefix"):
        letter_token_ids(tok, "Answer:", " ", 4)
