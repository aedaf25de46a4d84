"""The multiple-choice record and its validation."""

from __future__ import annotations

import string
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from calibration_lightning.errors import DataError

LETTERS = string.ascii_uppercase
MIN_CHOICES, MAX_CHOICES = 2, len(LETTERS)


@dataclass(frozen=True)
class MCRecord:
    """One question with K options labelled A, B, C, ...; ``answer`` is a 0-based index."""

    id: str
    question: str
    choices: tuple[str, ...]
    answer: int
    subject: str | None = None


def _parse_answer(value: Any, n_choices: int, where: str) -> int:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise DataError(f"{where}: field 'answer' is missing")
    if isinstance(value, bool):
        raise DataError(f"{where}: field 'answer' must be a 0-based index or a letter, got {value!r}")
    if isinstance(value, str):
        text = value.strip()
        if text.isdigit():
            value = int(text)
        elif len(text) == 1 and text.upper() in LETTERS:
            index = LETTERS.index(text.upper())
            if index >= n_choices:
                raise DataError(
                    f"{where}: field 'answer' is the letter {text!r}, but the row has only "
                    f"{n_choices} choices ({LETTERS[0]}-{LETTERS[n_choices - 1]})"
                )
            return index
        else:
            raise DataError(f"{where}: field 'answer' must be a 0-based index or a letter, got {value!r}")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int):
        raise DataError(f"{where}: field 'answer' must be a 0-based index or a letter, got {value!r}")
    if not 0 <= value < n_choices:
        raise DataError(f"{where}: field 'answer' is {value}, out of range for {n_choices} choices (0-{n_choices - 1})")
    return value


def make_record(row: Mapping[str, Any], where: str, default_id: str) -> MCRecord:
    """Validate one raw row (question, choices, answer; optional id, subject) into an MCRecord.

    Args:
        row: the raw fields.
        where: "FILE: row N" prefix used in every error message.
        default_id: id used when the row has none.

    Raises:
        DataError: naming ``where`` and the offending field.
    """
    if not isinstance(row, Mapping):
        raise DataError(f"{where}: expected an object with fields question, choices, answer; got {type(row).__name__}")
    question = row.get("question")
    if not isinstance(question, str) or not question.strip():
        raise DataError(f"{where}: field 'question' is missing or empty")
    choices = row.get("choices")
    if choices is None:
        raise DataError(f"{where}: field 'choices' is missing")
    if isinstance(choices, str) or not hasattr(choices, "__iter__"):
        raise DataError(f"{where}: field 'choices' must be a list of strings, got {type(choices).__name__}")
    choices = list(choices)
    if not MIN_CHOICES <= len(choices) <= MAX_CHOICES:
        raise DataError(
            f"{where}: field 'choices' has {len(choices)} options; between {MIN_CHOICES} and {MAX_CHOICES} are allowed"
        )
    for j, text in enumerate(choices):
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{where}: field 'choices' option {LETTERS[j]} (index {j}) is empty or not text")
    answer = _parse_answer(row.get("answer"), len(choices), where)
    rid = row.get("id")
    subject = row.get("subject")
    return MCRecord(
        id=str(rid) if rid is not None and str(rid) != "" else default_id,
        question=question.strip(),
        choices=tuple(c.strip() for c in choices),
        answer=answer,
        subject=str(subject) if subject not in (None, "") else None,
    )
