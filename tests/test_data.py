"""Records, file sources, splits, prompts and the letter-token check."""

import csv
import dataclasses
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from calibration_lightning.data.letters import letter_token_ids
from calibration_lightning.data.records import MCRecord, make_record
from calibration_lightning.data.sources import bundled_mmlu, read_records_file
from calibration_lightning.data.splits import split_records
from calibration_lightning.errors import ConfigError, DataError, TokenizerError
from tests.conftest import config

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
    for wrong in ("astrology", "topic"):  # "topic": the header rows' value, not a subject
        with pytest.raises(DataError, match=f"unknown MMLU subjects \\['{wrong}'\\]"):
            bundled_mmlu(subjects=[wrong])
    with pytest.raises(DataError, match="only 152"):
        split_records(records, 100, 50, 50)


def test_bundled_mmlu_full_size():
    assert len(bundled_mmlu()) == 14042


def test_prompt_rendering():
    rec = MCRecord("1", "What is 2+2?", ("3", "4"), 1, "math")
    text = config().dataset.prompt.render(rec)
    assert text == "The following is a multiple choice question about math.\n\nWhat is 2+2?\nA. 3\nB. 4\nAnswer:"
    with pytest.raises(ConfigError, match="must contain {question}"):
        dataclasses.replace(config().dataset.prompt, template="{choices}")


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


# ------------------------------------------------------------------------- hostile files, one per case

QA = '"question": "2 + 2 = ?", "choices": ["3", "4"]'
TWENTY = json.dumps([f"option {i}" for i in range(20)])
HOSTILE = {  # name: (file name, content, the message after "FILE: ")
    "answer of superscript digit": (
        "d.jsonl",
        f'{{{QA}, "answer": "²"}}\n',
        "line 1: field 'answer' must be a 0-based",
    ),
    "answer of circled digit": ("d.csv", 'question,choices,answer\nq,"[""a"",""b""]",①\n', "line 2: field 'answer'"),
    "answer of fullwidth digit": ("d.jsonl", f'{{{QA}, "answer": "１"}}\n', "line 1: field 'answer' must be"),
    "answer ligature st": (
        "d.jsonl",
        f'{{"question": "q", "choices": {TWENTY}, "answer": "ﬆ"}}\n',
        "line 1: field 'answer' must be a 0-based index (ASCII digits) or a letter A-T, got 'ﬆ'",
    ),
    "integer past 4300 digits": (
        "d.json",
        f'[{{{QA}, "answer": 0}},\n{{{QA}, "answer": {"7" * 4301}}}]',
        "record 2 (line 2): not valid JSON (a number has more than 4300 digits)",
    ),
    "digit string past 4300 digits": (
        "d.jsonl",
        f'{{{QA}, "answer": "{"0" * 4000 + "1" * 4000}"}}\n',
        "line 1: field 'answer' is a number of 8000 digits, out of range for 2 choices",
    ),
    "deep JSON line": ("d.jsonl", "[" * 100_000 + "]" * 100_000 + "\n", "line 1: not valid JSON (nested too deeply"),
    "deep JSON record": (
        "d.json",
        "[" + "[" * 100_000 + "]" * 100_000 + "]",
        "record 1 (line 1): not valid JSON (nested",
    ),
    "deep CSV cell": (
        "d.csv",
        'question,choices,answer\nq,"' + "[" * 100_000 + "]" * 100_000 + '",0\n',
        "line 2: field 'choices' must be a JSON list in a CSV cell, got invalid JSON (nested too deeply",
    ),
    "subject an object": ("d.jsonl", f'{{{QA}, "answer": 0, "subject": {{"a": 1}}}}\n', "line 1: field 'subject' must"),
    "subject a list": ("d.jsonl", f'{{{QA}, "answer": 0, "subject": ["bio"]}}\n', "line 1: field 'subject' must be"),
    "unpaired surrogate question": (
        "d.jsonl",
        '{"question": "q\\ud800", "choices": ["a", "b"], "answer": 0}\n',
        "line 1: field 'question' holds an unpaired UTF-16 surrogate ('\\ud800' at character 1)",
    ),
    "unpaired surrogate option": (
        "d.csv",
        'question,choices,answer\nq,"[""a"", ""\\udc00""]",0\n',
        "line 2: field 'choices' option B (index 1) holds an unpaired UTF-16 surrogate",
    ),
    "choices an object": (
        "d.jsonl",
        '{"question": "q", "choices": {"a": "x", "b": "y"}, "answer": 0}\n',
        "line 1: field 'choices' must be a list of strings, got an object",
    ),
    "choices an object in a CSV cell": (
        "d.csv",
        'question,choices,answer\nq,"{""a"": 1, ""b"": 2}",0\n',
        "line 2: field 'choices' must be a list of strings, got an object",
    ),
    "record after quoted line breaks": (
        "d.csv",
        'question,choices,answer\n"one\ntwo","[""a"", ""b""]",0\n\nq,"[""a"", ""b""]",9\n',
        "record 2 (line 5): field 'answer' is 9, out of range",
    ),
    "JSON record on its own line": (
        "d.json",
        f'{{"data": [\n  {{{QA}, "answer": 0}},\n\n  {{{QA}, "answer": 2}}\n]}}',
        "record 2 (line 4): field 'answer' is 2, out of range",
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_file_names_the_location(tmp_path, case):
    name, content, message = HOSTILE[case]
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError) as err:
        read_records_file(str(path))
    assert str(err.value).startswith(f"{path}: {message}"), str(err.value)


def test_corrupt_parquet_is_one_line_and_struct_choices_refused(tmp_path):
    path = tmp_path / "d.parquet"
    path.write_bytes(b"PAR1" + b"\x00" * 64 + b"PAR1")
    with pytest.raises(DataError, match=r"not a readable Parquet file \(OSError: Could not open") as err:
        read_records_file(str(path))
    assert "\n" not in str(err.value)
    pq.write_table(pa.table({"question": ["q"], "choices": [{"a": "x", "b": "y"}], "answer": [0]}), path)
    with pytest.raises(DataError, match="row 0: field 'choices' must be a list of strings, got an object"):
        read_records_file(str(path))


def test_sets_and_mappings_are_not_lists_of_options():
    for choices in ({"x", "y"}, frozenset({"x", "y"}), {"x": 0, "y": 1}):
        with pytest.raises(DataError, match=r"^f: row 1: field 'choices' must be a list of strings, got an? "):
            make_record({"question": "q", "choices": choices, "answer": 0}, "f: row 1", "r")
    record = make_record({"question": "q", "choices": ("x", "y"), "answer": "b"}, "f: row 1", "r")
    assert record.choices == ("x", "y") and record.answer == 1


def test_path_longer_than_the_file_system_allows():
    path = "d" * 5000 + ".jsonl"
    with pytest.raises(DataError, match=r"^dataset.path=d{60}\.\.\.d{10}\.jsonl \(5006 characters\): cannot open"):
        read_records_file(path)


def test_valid_files_that_were_refused_or_split(tmp_path):
    """Raw U+2028 / U+0085 in JSON strings are legal; BOMs (Excel, Notepad) are not part of the data; a CSV cell
    may be longer than the csv module's default field limit."""
    rows = [
        {"question": "first\u2028line", "choices": ["a\x85b", "c"], "answer": 1},
        {"question": "q", "choices": ["x", "y"], "answer": "A"},
    ]
    want = [("first\u2028line", ("a\x85b", "c"), 1), ("q", ("x", "y"), 0)]
    (tmp_path / "d.jsonl").write_text("\ufeff" + "\r\n".join(json.dumps(r, ensure_ascii=False) for r in rows))
    (tmp_path / "d.json").write_text("\ufeff" + json.dumps(rows, ensure_ascii=False))
    with open(tmp_path / "d.csv", "w", newline="", encoding="utf-8-sig") as f:
        writer = csv.writer(f)
        writer.writerows(
            [["question", "choices", "answer"], *([r["question"], json.dumps(r["choices"]), r["answer"]] for r in rows)]
        )
    for ext in ("jsonl", "json", "csv"):
        got = read_records_file(str(tmp_path / f"d.{ext}"))
        assert [(r.question, r.choices, r.answer) for r in got] == want, ext
    (tmp_path / "big.csv").write_text(f'question,choices,answer\n{"x" * 200_000},"[""a"", ""b""]",B\n')
    (big,) = read_records_file(str(tmp_path / "big.csv"))
    assert len(big.question) == 200_000 and big.answer == 1
