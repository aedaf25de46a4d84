"""Data a run can trust: splits rounded down, unique ids, spreadsheet answers, no FIFO hang, truncation reported."""

import json
import os

import pytest

from calibration_lightning.data.records import LETTERS, MCRecord
from calibration_lightning.data.sources import read_records_file
from calibration_lightning.data.splits import Splits, split_records
from calibration_lightning.errors import DataError
from calibration_lightning.outputs.run_outputs import truncation_line
from tests.conftest import config, make_datamodule


@pytest.mark.parametrize("n", [5, 8, 13, 18, 98, 99, 100])
def test_default_fractions_round_down_and_never_refuse_a_file_with_enough_rows(n):
    splits = split_records(list(range(n)), 0.6, 0.2, 0.2)
    want = (6 * n // 10, 2 * n // 10, 2 * n // 10)  # floor, in integers
    assert (len(splits.train), len(splits.val), len(splits.test)) == want


def test_too_large_counts_name_the_split_to_lower():
    with pytest.raises(DataError, match=r"= 110 records, but the source has only 100; lower dataset.split.train$"):
        split_records(list(range(100)), 90, 0.1, 0.1)
    with pytest.raises(DataError, match=r"make the fractions add up to at most 1$"):
        split_records(list(range(100)), 0.5, 0.3, 0.3)


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("ids", "second"),
    [(['"q1"', '"q1"'], '"q1"'), (["0", '"0"'], '"0"'), (["1.5", '"1.5"'], '"1.5"')],
)
def test_duplicate_ids_are_refused_naming_both_rows(tmp_path, ids, second):
    rows = "".join(f'{{"id": {i}, "question": "q", "choices": ["a", "b"], "answer": 0}}\n' for i in ids)
    path = _write(tmp_path, "d.jsonl", rows)
    with pytest.raises(DataError) as caught:
        read_records_file(str(path))
    assert str(caught.value).startswith(f"{path}: line 2: id {json.loads(second)!r} is also the id of line 1")


def test_csv_answers_as_spreadsheets_write_them(tmp_path):
    path = _write(tmp_path, "d.csv", 'question,choices,answer\nq1,"[""a"", ""b""]",1.0\nq2,"[""a"", ""b""]",0.00\n')
    assert [r.answer for r in read_records_file(str(path))] == [1, 0]
    bad = _write(tmp_path, "bad.csv", 'question,choices,answer\nq1,"[""a"", ""b""]",1.5\n')
    with pytest.raises(DataError, match="field 'answer' must be a 0-based index"):
        read_records_file(str(bad))


def test_a_named_pipe_is_refused_instead_of_hanging(tmp_path):
    fifo = tmp_path / "data.jsonl"
    os.mkfifo(fifo)
    with pytest.raises(DataError, match=r"not a regular file \(a named pipe or a device\)"):
        read_records_file(str(fifo))


def test_truncation_counts_rows_cut_and_what_they_lost(tiny_tokenizer):
    prompt = config().dataset.prompt
    short = MCRecord("s", "Short?", ("yes", "no"), 0)
    # 26 long options: the window below keeps only the last option line and the cue
    options = tuple(f"option {LETTERS[j]} " + "word " * 20 for j in range(26))
    gold_first = MCRecord("a", "Which one?", options, 0)
    gold_last = MCRecord("z", "Which one?", options, 25)
    tail = "\n" + prompt.choice_format.format(letter="Z", text=options[25].strip()) + "\n" + prompt.answer_cue
    keep = len(tiny_tokenizer(tail, add_special_tokens=False)["input_ids"])
    records = [short, gold_first, gold_last]
    dm = make_datamodule(Splits(records, records, records), tiny_tokenizer, config().dataset, max_length=keep)
    assert "test" in dm.truncation and len(tiny_tokenizer(prompt.render(short))["input_ids"]) <= keep
    assert dm.truncation["test"] == {
        "rows": 3,
        "rows_cut": 2,  # short fits
        "question_cut": 2,
        "gold_option_cut": 1,  # gold_first's option A; gold_last keeps option Z, the last line before the cue
        "answer_cue_cut": 0,
    }
    line = truncation_line({"max_length": keep, "test": dm.truncation["test"]})
    assert line == (
        f"prompts cut to dataset.max_length={keep} tokens: test 2/3 (2 lost the question, 1 lost the gold option)"
    )
