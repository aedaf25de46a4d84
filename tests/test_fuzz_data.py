"""Property-based fuzzing of the data layer: every generated row and every generated file either
loads into valid records or raises our DataError naming the file and the location; nothing else escapes,
and a valid file is read back exactly.

Deterministic (``derandomize``) and bounded: about 12,000 rows and 400 files by default. ``make fuzz`` (or
``FUZZ_SCALE=10``) multiplies the example counts. Run with ``-s`` to see the outcome counts.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import string
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from calibration_lightning.data.records import LETTERS, MCRecord, make_record
from calibration_lightning.data.sources import read_records_file
from calibration_lightning.errors import DataError
from tests.conftest import config

SCALE = float(os.environ.get("FUZZ_SCALE", "1"))
ROWS_PER_EXAMPLE = 24
ROW_EXAMPLES = max(1, round(500 * SCALE))  # x ~24 rows: at least 10,000 rows
FILE_EXAMPLES = max(1, round(340 * SCALE))
VALID_FILE_EXAMPLES = max(1, round(80 * SCALE))
FIELDS = ("question", "choices", "answer", "id", "subject")
WHERE = "fuzz.jsonl: line 7"


def fuzz_settings(n: int):
    return settings(
        max_examples=n,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )


# ---------------------------------------------------------------- values a hostile user can write

ODD = [
    "²", "①", "١", "５", "٣", "ﬆ", "ſ", "ı", "K", "Ⅳ", "\u2028", "\u2029", "\x85", "\x0b", "\x0c", "\x1c",
    "\ud800", "\udfff", "\ufeff", "\x00", "\u200b", "\u202e", "𝔄", "a\u0301", "\r", "\n", "\t", " ", "",
    "A", "b", "z", "0", "3", "25", "26", "-1", "+1", "1.0", "1e2", "0x1", "007", " 1 ", "①②", "nan", "[]",
]  # fmt: skip
odd_text = st.sampled_from(ODD)
VISIBLE = [c for c in ODD if len(c) == 1 and not c.isspace() and c not in "\x00\u200b\ufeff"] + list("qQ?+-")
NONBLANK = [v + w for v in VISIBLE for w in ("", " x", "\u2028y", "\x85", " ")] + ["What is 2 + 2?", "Paris", "a,b"]


def _nested(depth: int) -> list:
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


HUGE_INT = 10**4400  # past Python's 4,300-digit int/str limit
HOSTILE = [
    None, True, False, 0, 1, -1, 2, 25, 26, 2**63, -(2**70), HUGE_INT, -HUGE_INT, 0.0, 1.0, 1.5, -0.0,
    float("nan"), float("inf"), -float("inf"), 1e308, "1" * 5000, "0" * 5000 + "1", b"", b"q", bytearray(b"a"),
    [], [[]], ["a"], ["a", "b"], [1, 2], [None, "a"], [HUGE_INT], ("a", "b"), {}, {"a": 1}, {"text": ["a", "b"]},
    {1: "a", 2: "b"}, set(), {"a", "b"}, frozenset({"a", "b"}), _nested(3), _nested(900), _nested(1100),
    _nested(5000), range(3), iter(["a", "b"]), object(),
]  # fmt: skip
# Draws are the suite's cost: mostly one draw from a pool, some generated text, a little recursion.
text = st.one_of(odd_text, st.sampled_from(NONBLANK), st.text(max_size=6), st.lists(odd_text, max_size=3).map("".join))
nonblank = st.one_of(
    st.sampled_from(NONBLANK), st.sampled_from(NONBLANK), st.tuples(text, st.sampled_from(VISIBLE)).map("".join)
)
scalar = st.one_of(st.integers(0, len(HOSTILE) - 1).map(lambda i: HOSTILE[i]), text, st.integers(), st.floats())
value = st.one_of(
    scalar,
    scalar,
    st.recursive(
        scalar,
        lambda kids: st.one_of(st.lists(kids, max_size=3), st.lists(st.tuples(text, kids), max_size=2).map(dict)),
        max_leaves=3,
    ),
)
options = st.lists(st.sampled_from(NONBLANK), min_size=2, max_size=6)
choices = st.one_of(
    options,
    st.lists(nonblank, min_size=2, max_size=4),
    st.lists(st.sampled_from(NONBLANK), min_size=7, max_size=28),
    st.lists(st.one_of(nonblank, value), max_size=4),
    options.map(tuple),
    options.map(set),
    options.map(frozenset),
    options.map(lambda o: {k: i for i, k in enumerate(o)}),
    value,
)
answer = st.one_of(
    st.integers(-2, 27),
    st.integers(0, 3),
    st.sampled_from(list("ABCDabcd" + LETTERS)),
    st.integers(0, 30).map(lambda i: f" {i:03d} "),
    odd_text,
    value,
)
row = st.one_of(
    st.fixed_dictionaries(
        {"question": nonblank, "choices": options, "answer": st.one_of(st.integers(0, 5), st.sampled_from("ABCabc"))},
        optional={"id": scalar, "subject": text},
    ),
    st.fixed_dictionaries(
        {"question": st.one_of(nonblank, value), "choices": choices, "answer": answer},
        optional={"id": value, "subject": value, "extra": value},
    ),
    st.fixed_dictionaries({}, optional={k: value for k in FIELDS}),
    value,
)


# ---------------------------------------------------------------- the property


def _answer_oracle(raw, n: int) -> int | None:
    """The index a correct reader must take from ``raw``, computed independently; None if it must refuse."""
    if isinstance(raw, bool):
        return None
    if isinstance(raw, str):
        s = raw.strip()
        if len(s) == 1 and s in string.ascii_letters:
            return LETTERS.index(s.upper()) if LETTERS.index(s.upper()) < n else None
        if re.fullmatch(r"[0-9]+\.0+", s):  # "1.0", as a spreadsheet writes the index 1
            s = s.split(".")[0]
        if s and all(c in string.digits for c in s):
            s = s.lstrip("0") or "0"
            return int(s) if len(s) < 10 and int(s) < n else None
        return None
    if isinstance(raw, float) and raw.is_integer() and 0 <= raw < n:
        return int(raw)
    if isinstance(raw, int) and 0 <= raw < n:
        return raw
    return None


def _safe_repr(raw) -> str:
    try:
        return repr(raw)[:500]
    except (ValueError, RecursionError):
        return f"<a {type(raw).__name__} too large or deep to print>"


def check_valid(record: MCRecord, tokenizer=None) -> None:
    """What every accepted record guarantees to the rest of the pipeline."""
    texts = [record.id, record.question, *record.choices] + ([record.subject] if record.subject is not None else [])
    assert all(isinstance(t, str) and t.strip() for t in texts), record
    for t in texts:
        t.encode("utf-8")  # no unpaired surrogate
    assert 2 <= len(record.choices) <= 26 and 0 <= record.answer < len(record.choices), record
    if tokenizer is not None:
        assert tokenizer(config().dataset.prompt.render(record))["input_ids"]


def check_row(raw, tokenizer, others: list[str]) -> str:
    """``accepted``, ``DataError`` or ``other`` (described in ``others``); asserts the property on the first two."""
    try:
        record = make_record(raw, WHERE, "fz-0")
    except DataError as e:
        msg = str(e)
        assert msg.startswith(WHERE + ": ") and "\n" not in msg, msg
        assert re.search(r"field '(question|choices|answer|id|subject)'|expected an object", msg), msg
        return "DataError"
    except Exception as e:  # anything else is the bug this suite looks for
        others.append(f"{type(e).__name__}: {e!s:.300} for row {_safe_repr(raw)}")
        return "other"
    check_valid(record, tokenizer)
    # never misread: the options are the list's items in order, the answer the one the row names
    assert isinstance(raw["choices"], (list, tuple)) and record.choices == tuple(c.strip() for c in raw["choices"])
    assert record.answer == _answer_oracle(raw["answer"], len(record.choices)), (raw["answer"], record)
    return "accepted"


def test_fuzz_rows(tiny_tokenizer):
    """>= 10,000 generated rows through the record validation; accepted ones render and tokenize."""
    counts: Counter = Counter()
    others: list[str] = []

    @fuzz_settings(ROW_EXAMPLES)
    @given(st.lists(row, min_size=ROWS_PER_EXAMPLE, max_size=ROWS_PER_EXAMPLE))
    def run(rows):
        for raw in rows:
            counts[check_row(raw, tiny_tokenizer, others)] += 1

    run()
    total = sum(counts.values())
    print(
        f"\nfuzz rows: {total} rows, {counts['accepted']} accepted, {counts['DataError']} DataError, "
        f"{counts['other']} other"
    )
    assert counts["other"] == 0, "\n".join(others[:5])
    assert total >= 10_000 * min(SCALE, 1) and counts["accepted"] > total // 20 and counts["DataError"] > total // 4


# ---------------------------------------------------------------- files


FORMATS = (".jsonl", ".json", ".csv", ".parquet")
FILE_LEVEL = ("holds no records", "not a readable Parquet file", "a JSON file must hold a list", "not valid JSON (")
good_row = st.fixed_dictionaries(
    {"question": nonblank, "choices": st.lists(nonblank, min_size=2, max_size=5), "answer": st.integers(0, 1)},
    optional={"id": st.one_of(text, st.integers()), "subject": text},
)
file_rows = st.one_of(st.lists(good_row, min_size=1, max_size=6), st.lists(st.one_of(good_row, row), max_size=6))


def _json_safe(raw):
    """``raw`` as JSON text where JSON can hold it (sets and tuples become lists; bytes and cycles cannot)."""
    try:
        return json.dumps(raw, ensure_ascii=False, default=lambda o: sorted(o, key=repr))
    except (TypeError, ValueError, RecursionError):
        return json.dumps(str(type(raw).__name__))


def _csv_cell(v) -> str:
    if isinstance(v, str):
        return v
    if v is None:
        return ""
    return _json_safe(v)


def _encode(fmt: str, rows: list, top: str, crlf: bool) -> bytes:
    nl = "\r\n" if crlf else "\n"
    if fmt == ".jsonl":
        text = nl.join(_json_safe(r) for r in rows) + nl
    elif fmt == ".json":
        body = "[" + ("," + nl).join(_json_safe(r) for r in rows) + "]"
        text = {"list": body, "data": '{"data": ' + body + "}", "object": '{"rows": ' + body + "}", "scalar": "3"}[top]
    elif fmt == ".csv":
        out = io.StringIO()
        # Python's writer leaves a lone CR unquoted unless it ends lines, and no reader (its own neither) reads
        # such a cell back: quote every cell then
        writer = csv.writer(out, lineterminator=nl, quoting=csv.QUOTE_MINIMAL if crlf else csv.QUOTE_ALL)
        writer.writerow(FIELDS)
        for r in rows:
            writer.writerow([_csv_cell(r.get(k)) if isinstance(r, dict) else _csv_cell(r) for k in FIELDS])
        text = out.getvalue()
    else:
        return _parquet(rows, top)
    return text.encode("utf-8", "surrogatepass")  # an unpaired surrogate makes the file invalid UTF-8


def _parquet(rows: list, top: str) -> bytes:
    """Columns of the types pyarrow infers for the common mistakes: struct / map choices, string answers."""
    dicts = [r for r in rows if isinstance(r, dict)] or [{}]

    def col(key, conv):
        return [conv(r.get(key)) for r in dicts]

    def s(v):  # Parquet strings are UTF-8: an unpaired surrogate cannot be written, so it becomes "?"
        return None if v is None else (v if isinstance(v, str) else _json_safe(v)).encode("utf-8", "replace").decode()

    def opts(v):
        return [s(x) for x in v] if isinstance(v, (list, tuple)) and v else None

    data = {"question": col("question", s), "answer": col("answer", s), "subject": col("subject", s)}
    if top == "object":
        data["choices"] = pa.array([{"a": "x", "b": "y"}] * len(dicts))
    elif top == "scalar":
        data["choices"] = pa.array([[("a", 1), ("b", 2)]] * len(dicts), type=pa.map_(pa.string(), pa.int64()))
    else:
        data["choices"] = col("choices", opts)
    out = pa.BufferOutputStream()
    pq.write_table(pa.table(data), out)
    return out.getvalue().to_pybytes()


def _mutate(content: bytes, fmt: str, how: str, at: float, junk: bytes) -> bytes:
    cut = int(len(content) * at)
    if how == "truncate":
        return content[:cut]
    if how == "bom":
        return b"\xef\xbb\xbf" + content
    if how == "junk":
        return content[:cut] + junk + content[cut:]
    if how == "flip" and content:
        i = min(cut, len(content) - 1)
        return content[:i] + bytes([content[i] ^ 0x5A]) + content[i + 1 :]
    if how == "binary":
        return junk * 3
    if how == "nested":  # deep nesting where a value goes: the whole line, the choices cell
        deep = "[" * 100_000 + "]" * 100_000
        return {
            ".jsonl": f'{{"question": "q", "choices": ["a", "b"], "answer": 0, "x": {deep}}}\n',
            ".json": f"[{deep}]",
            ".csv": f'question,choices,answer\nq,"{deep}",0\n',
        }.get(fmt, deep).encode() + content
    if how == "huge":  # a cell past the csv module's field limit, an integer past 4,300 digits
        big = "x" * 140_000
        return {
            ".jsonl": f'{{"question": "{big}", "choices": ["a", "b"], "answer": {"9" * 4400}}}\n',
            ".json": f'[{{"question": "{big}", "choices": ["a", "b"], "answer": 1}}]',
            ".csv": f'question,choices,answer\n{big},"[""a"", ""b""]",{"1" * 5000}\n',
        }.get(fmt, big).encode()
    return content


file_case = st.tuples(
    st.sampled_from(FORMATS),
    file_rows,
    st.sampled_from(["list", "list", "list", "data", "object", "scalar"]),
    st.booleans(),
    st.sampled_from(["none", "none", "truncate", "bom", "junk", "flip", "binary", "nested", "huge"]),
    st.floats(0, 1),
    st.binary(min_size=1, max_size=40),
)


def check_file(path, others: list[str], tokenizer=None) -> str:
    try:
        records = read_records_file(str(path))
    except DataError as e:
        msg = str(e)
        assert msg.startswith(f"{path}: ") and "\n" not in msg, msg
        located = re.match(r"(line \d+|record \d+ \(line \d+\)|row \d+): ", msg[len(f"{path}: ") :])
        assert located or any(p in msg for p in FILE_LEVEL), msg
        return "DataError"
    except Exception as e:
        others.append(f"{type(e).__name__}: {e!s:.300} reading {path.read_bytes()[:300]!r}")
        return "other"
    for record in records:
        check_valid(record, tokenizer)
    return "accepted"


def test_fuzz_files(tmp_path, tiny_tokenizer):
    """>= 300 generated files over the four formats: truncated, nested, huge, binary, BOM, CRLF, mixed types,
    wrong top level, odd Unicode; each loads into valid records or raises a located DataError."""
    counts: Counter = Counter()
    others: list[str] = []

    @fuzz_settings(FILE_EXAMPLES)
    @given(file_case)
    def run(case):
        fmt, rows, top, crlf, how, at, junk = case
        path = tmp_path / f"fuzz{fmt}"
        path.write_bytes(_mutate(_encode(fmt, rows, top, crlf), fmt, how, at, junk))
        outcome = check_file(path, others, tiny_tokenizer)
        counts[outcome] += 1
        counts[fmt] += 1

    run()
    total = counts["accepted"] + counts["DataError"] + counts["other"]
    print(
        f"\nfuzz files: {total} files ({', '.join(f'{counts[f]} {f}' for f in FORMATS)}), "
        f"{counts['accepted']} accepted, {counts['DataError']} DataError, {counts['other']} other"
    )
    assert counts["other"] == 0, "\n".join(others[:5])
    assert total >= 300 * min(SCALE, 1) and all(counts[f] >= total // 10 for f in FORMATS)
    assert counts["accepted"] > 0 and counts["DataError"] > total // 4


# ---------------------------------------------------------------- valid files are read back exactly

line_text = st.text(st.one_of(st.characters(exclude_categories=["Cs"]), st.sampled_from("\u2028\u2029\x85\r\n,\"'")))
valid_row = st.fixed_dictionaries(
    {
        "question": line_text.filter(lambda s: s.strip()),
        "choices": st.lists(line_text.filter(lambda s: s.strip()), min_size=2, max_size=26),
        "answer": st.integers(0, 1),
    },
    optional={"subject": line_text, "id": st.text(string.ascii_letters + string.digits, min_size=1, max_size=6)},
)


@fuzz_settings(VALID_FILE_EXAMPLES)
@given(
    st.sampled_from(FORMATS),
    st.lists(valid_row, min_size=1, max_size=5, unique_by=lambda r: r.get("id", object())),  # ids are unique
    st.booleans(),
    st.booleans(),
    st.booleans(),
)
def test_valid_files_read_back_exactly(tmp_path_factory, fmt, rows, bom, crlf, letters):
    """Raw U+2028 / U+0085 in JSON strings, BOMs, CRLF, quoted multi-line CSV cells: read, not refused or split."""
    rows = [{**r, "answer": LETTERS[r["answer"]] if letters else r["answer"]} for r in rows]
    content = _encode(fmt, rows, "list", crlf)
    if fmt == ".parquet":
        table = pa.table(
            {
                "question": [r["question"] for r in rows],
                "choices": [r["choices"] for r in rows],
                "answer": [str(r["answer"]) for r in rows],
                "id": [r.get("id") for r in rows],
                "subject": [r.get("subject") for r in rows],
            }
        )
        out = pa.BufferOutputStream()
        pq.write_table(table, out)
        content = out.getvalue().to_pybytes()
    path = tmp_path_factory.mktemp("valid") / f"d{fmt}"
    path.write_bytes((b"\xef\xbb\xbf" if bom and fmt != ".parquet" else b"") + content)
    got = read_records_file(str(path))
    want = [make_record(r, "want", f"d-{i}") for i, r in enumerate(rows)]
    assert got == want
    assert [r.answer for r in got] == [LETTERS.index(r["answer"]) if letters else r["answer"] for r in rows]


@pytest.mark.parametrize("bad", ["\ud800", "x\udfff", "\udc00\ud800"])
def test_unpaired_surrogates_never_reach_the_tokenizer(tiny_tokenizer, bad):
    """The tokenizer itself refuses them with a TypeError: so must the record validation, naming the field."""
    with pytest.raises(TypeError):
        tiny_tokenizer("q" + bad)
    for field, raw in (
        ("question", {"question": bad, "choices": ["a", "b"], "answer": 0}),
        ("choices' option B", {"question": "q", "choices": ["a", bad], "answer": 0}),
        ("subject", {"question": "q", "choices": ["a", "b"], "answer": 0, "subject": bad}),
    ):
        with pytest.raises(DataError, match=rf"^{WHERE}: field '{field}.* unpaired UTF-16 surrogate"):
            make_record(raw, WHERE, "x")
