"""Hostile data files through the real command line (``__main__.main``, in this process): exit code 2, exactly one
``error:`` line naming the file and the line / record / row and field, no traceback, and an existing run directory
left as it was. The other cases of each category are checked at the reader in test_data.py."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.helpers import call_main

Q = '"question": "2 + 2 = ?", "choices": ["3", "4"]'
LONG = "/tmp/" + "d" * 5000 + ".jsonl"  # longer than any file system allows a name to be


def _struct_choices(path: Path) -> None:
    table = pa.table({"question": ["q", "Sky?"], "choices": [{"a": "x", "b": "y"}] * 2, "answer": [0, 1]})
    pq.write_table(table, path)


# name: (file name, content or writer, the error line's location and message after "FILE: ")
CASES = {
    "unicode digit answer": ("d.jsonl", f'{{{Q}, "answer": 1}}\n\n{{{Q}, "answer": "²"}}\n', "line 3: field 'answer'"),
    "integer past 4300 digits": ("d.jsonl", f'{{{Q}, "answer": {"1" * 5000}}}\n', "line 1: not valid JSON (a number"),
    "nesting in a CSV cell": (
        "d.csv",
        'question,choices,answer\nq,"' + "[" * 50_000 + "]" * 50_000 + '",0\n',
        "line 2: field 'choices' must be a JSON list in a CSV cell, got invalid JSON (nested too deeply",
    ),
    "unpaired surrogate": (
        "d.json",
        f'[\n  {{{Q}, "answer": 0}},\n  {{"question": "caf\\udce9", "choices": ["a", "b"], "answer": 0}}\n]\n',
        "record 2 (line 3): field 'question' holds an unpaired UTF-16 surrogate",
    ),
    "choices as a Parquet struct": ("d.parquet", _struct_choices, "row 0: field 'choices' must be a list of strings"),
    "multi-line CSV cells": (
        "d.csv",
        'question,choices,answer\n"first\nsecond\nthird","[""a"", ""b""]",0\nq2,"[""a"", ""b""]",5\n',
        "record 2 (line 5): field 'answer' is 5, out of range",
    ),
    "corrupt Parquet": ("d.parquet", b"PAR1" + b"\x00" * 64 + b"PAR1", "not a readable Parquet file ("),
    "path too long": (None, None, "File name too long"),
}


def _snapshot(run_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


@pytest.fixture()
def case(tmp_path, request):
    """The case's data file next to an unfinished run: (data path, run dir, files before, returncode, out, err)."""
    name = request.param
    file_name, content, _ = CASES[name]
    case = tmp_path / name.replace(" ", "_")
    run_dir = case / "run"  # an unfinished run: resume=true, so the data is the first thing that fails
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"adapters and optimizer state")
    (run_dir / "predictions_before.jsonl").write_text(json.dumps({"id": "q1", "gold": 1}) + "\n")
    (run_dir / ".hydra").mkdir()
    (run_dir / ".hydra" / "config.yaml").write_text("the unfinished run's own config\n")
    (run_dir / "calibration_lightning.log").write_text("the unfinished run's log\n")
    data: Path | str = LONG
    if file_name:
        data = case / file_name
        if callable(content):
            content(data)
        elif isinstance(content, bytes):
            data.write_bytes(content)
        else:
            data.write_text(content, encoding="utf-8")
    before = _snapshot(run_dir)
    args = ["model=tiny", "dataset=jsonl", f"dataset.path={data}", f"hydra.run.dir={run_dir}", "resume=true"]
    result = call_main(*args)
    return data, run_dir, before, result.returncode, result.stdout, result.stderr


@pytest.mark.parametrize("case", list(CASES), indirect=True)
def test_hostile_file_gives_one_located_error_line(case, request):
    name = request.node.callspec.params["case"]
    data, run_dir, before, returncode, stdout, stderr = case
    where = CASES[name][2]
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert returncode == 2, stderr[-2000:]
    assert len(errors) == 1 and stderr.rstrip().splitlines()[-1] == errors[0], stderr[-2000:]  # the message's end
    assert "Traceback" not in stdout + stderr and "Error in call to target" not in stdout + stderr
    if name == "path too long":
        assert errors[0].startswith("error: dataset.path=/tmp/ddd") and "5011 characters" in errors[0], errors[0]
    else:
        assert errors[0].startswith(f"error: {data}: {where}"), errors[0]
    # nothing of the run is written or rewritten, Hydra's own .hydra/ and job log included
    assert _snapshot(run_dir) == before
