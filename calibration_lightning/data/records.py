"""The multiple-choice record and its validation."""

from __future__ import annotations

import numbers
import re
import string
from collections.abc import Mapping, Set
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


def _show(value: Any) -> str:
    """A short repr for messages: long values are cut, huge integers are never written out in full."""
    if isinstance(value, int) and value.bit_length() > 64:
        return f"an integer of about {int(value.bit_length() * 0.30103) + 1} digits"
    try:
        text = repr(value)
    except (ValueError, RecursionError):  # an int past Python's digit limit, or deep nesting, inside a container
        return f"a {type(value).__name__}"
    return text if len(text) <= 40 else text[:37] + "..."


def _valid_unicode(text: str, where: str, field: str) -> str:
    """``text`` unchanged, or a DataError if it holds an unpaired surrogate (which no tokenizer can encode)."""
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise DataError(
                f"{where}: {field} holds an unpaired UTF-16 surrogate ({text[e.start]!r} at character {e.start}); "
                "write the character itself, or a complete \\ud83d\\ude00-style pair in JSON"
            ) from None
    return text


def _scalar_text(value: Any, where: str, field: str) -> str | None:
    """Optional text fields (id, subject): text or a number; None when absent or empty."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, str):
        return _valid_unicode(value, where, f"field '{field}'")
    if isinstance(value, (int, float)) and not (isinstance(value, int) and value.bit_length() > 64):
        return str(value)
    raise DataError(f"{where}: field '{field}' must be text or a number, got {type(value).__name__} {_show(value)}")


def _parse_answer(value: Any, n_choices: int, where: str) -> int:
    last = f"{LETTERS[0]}-{LETTERS[n_choices - 1]}"
    if value is None or (isinstance(value, str) and not value.strip()):
        raise DataError(f"{where}: field 'answer' is missing")

    def wrong() -> DataError:
        return DataError(
            f"{where}: field 'answer' must be a 0-based index (ASCII digits) or a letter {last}, got {_show(value)}"
        )

    if isinstance(value, bool):
        raise wrong()
    if isinstance(value, str):
        text = value.strip()
        if not text.isascii():  # "²", "①", "５" are digits to str.isdigit; "ﬆ".upper() is "ST"
            raise wrong()
        if len(text) == 1 and text.isalpha():
            index = LETTERS.index(text.upper())
            if index >= n_choices:
                raise DataError(
                    f"{where}: field 'answer' is the letter {text!r}, but the row has only {n_choices} choices ({last})"
                )
            return index
        if re.fullmatch(r"[0-9]+\.0+", text):  # "1.0": how spreadsheets write the index that JSON writes as 1.0
            text = text.split(".")[0]
        if not text.isdigit():
            raise wrong()
        if len(text.lstrip("0")) > 3:  # out of range anyway; never convert thousands of digits
            raise DataError(
                f"{where}: field 'answer' is a number of {len(text)} digits, out of range for {n_choices} choices"
            )
        value = int(text)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, numbers.Integral):
        raise wrong()
    if not 0 <= value < n_choices:
        raise DataError(
            f"{where}: field 'answer' is {_show(value)}, out of range for {n_choices} choices (0-{n_choices - 1})"
        )
    return int(value)


def _parse_choices(choices: Any, where: str) -> tuple[str, ...]:
    if choices is None:
        raise DataError(f"{where}: field 'choices' is missing")
    if isinstance(choices, Mapping):
        raise DataError(
            f"{where}: field 'choices' must be a list of strings, got an object ({_show(choices)}); "
            'a mapping is not a list of options: write ["first", "second", ...] in order'
        )
    if isinstance(choices, Set):
        raise DataError(
            f"{where}: field 'choices' must be a list of strings, got a {type(choices).__name__}, whose order is "
            "arbitrary: give the options as a list in order"
        )
    if not isinstance(choices, (list, tuple)):
        raise DataError(f"{where}: field 'choices' must be a list of strings, got {type(choices).__name__}")
    if not MIN_CHOICES <= len(choices) <= MAX_CHOICES:
        raise DataError(
            f"{where}: field 'choices' has {len(choices)} options; between {MIN_CHOICES} and {MAX_CHOICES} are allowed"
        )
    for j, text in enumerate(choices):
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{where}: field 'choices' option {LETTERS[j]} (index {j}) is empty or not text")
        _valid_unicode(text, where, f"field 'choices' option {LETTERS[j]} (index {j})")
    return tuple(c.strip() for c in choices)


def make_record(row: Mapping[str, Any], where: str, default_id: str) -> MCRecord:
    """Validate one raw row (question, choices, answer; optional id, subject) into an MCRecord. Text must be valid
    Unicode (no unpaired surrogates); ``choices`` a list (or tuple) of 2-26 non-empty strings, never a mapping or a
    set; ``answer`` an integer index or a string of ASCII digits or one ASCII letter among the row's options; ``id``
    and ``subject`` text or a number (``default_id`` when absent). Every DataError starts with ``where`` ("FILE: row
    N") and names the offending field."""
    if not isinstance(row, Mapping):
        raise DataError(f"{where}: expected an object with fields question, choices, answer; got {type(row).__name__}")
    question = row.get("question")
    if question is None or (isinstance(question, str) and not question.strip()):
        raise DataError(f"{where}: field 'question' is missing or empty")
    if not isinstance(question, str):
        raise DataError(f"{where}: field 'question' must be text, got {type(question).__name__} {_show(question)}")
    question = _valid_unicode(question, where, "field 'question'")
    choices = _parse_choices(row.get("choices"), where)
    answer = _parse_answer(row.get("answer"), len(choices), where)
    subject = _scalar_text(row.get("subject"), where, "subject")
    return MCRecord(
        id=_scalar_text(row.get("id"), where, "id") or default_id,
        question=question.strip(),
        choices=choices,
        answer=answer,
        subject=subject.strip() if subject else None,
    )


def check_unique_ids(records: list[MCRecord], wheres: list[str], source: str) -> None:
    """Refuse two rows with the same id (``0`` and ``"0"`` are the same id): prediction rows are joined back
    to the data by id."""
    first: dict[str, str] = {}
    for record, where in zip(records, wheres):
        if record.id in first:
            raise DataError(
                f"{source}: {where}: id {record.id!r} is also the id of {first[record.id]} (the number 0 and the "
                'text "0" are the same id); ids must be unique so that prediction rows can be joined back to the '
                "data: give each row its own id, or leave the id field out"
            )
        first[record.id] = where
