"""Prediction files: a run's ``predictions_*.jsonl`` and lm-evaluation-harness ``--log_samples`` files.

JSON lines, the format told by the first row's keys, values read as float64. Ours: ``gold`` (a letter) and
``probabilities`` (``{"A": p, ...}``). lm-eval multiple-choice rows: the softmax of the choices' log-likelihoods,
with ``acc`` and ``acc_norm`` scored as lm-eval's ``process_results`` does (``docs/outputs.md``).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from calibration_lightning.data.records import LETTERS
from calibration_lightning.errors import DataError

SAMPLES = re.compile(r"samples_(?P<task>.+)_(?P<date>\d{4}-\d{2}-\d{2}T[\d.\-]+)$")  # lm-eval's file names


@dataclass
class Predictions:
    """One file's questions: ``probs [N, K]`` (float64), ``labels [N]``, their ids, the file's format, its task
    (lm-eval's task name, else the file's stem) and, for lm-eval, ``correct``: lm-eval's per-question ``acc``
    and ``acc_norm`` (``[N]``, 1.0 / 0.0)."""

    probs: Tensor
    labels: Tensor
    ids: list[str]
    format: str
    task: str
    correct: dict[str, Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class LmEvalRun:
    """What an lm-eval ``results_{date}.json`` tells about its samples files."""

    delimiters: dict[str, str]  # task -> the target_delimiter its requests used
    groups: dict[str, list[str]]  # group -> its subtasks and subgroups (``group_subtasks``)


def lm_eval_run(samples: Path) -> LmEvalRun | None:
    """The ``results_{date}.json`` written with an lm-eval samples file (None when it is not beside it)."""
    match = SAMPLES.match(samples.stem)
    results = samples.parent / f"results_{match['date']}.json" if match else None
    if results is None or not results.exists():
        return None
    try:
        data = json.loads(results.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{results}: cannot read lm-eval's results ({e})") from None
    delimiters = {}
    for task, config in (data.get("configs") or {}).items():
        delimiter = config.get("target_delimiter", " ")
        prefix = config.get("gen_prefix")
        if data.get("chat_template") and not (prefix and not prefix[-1].isspace()):
            delimiter = ""  # lm-eval's construct_requests drops it under a chat template
        delimiters[task] = delimiter
    return LmEvalRun(delimiters, {g: list(s) for g, s in (data.get("group_subtasks") or {}).items()})


def _ours(row: dict, where: str) -> tuple[list[float], int]:
    probs = row.get("probabilities")
    if not isinstance(probs, dict) or len(probs) < 2:
        raise DataError(f"{where}: 'probabilities' must map the option letters A, B, ... to probabilities")
    letters = list(LETTERS[: len(probs)])
    if sorted(probs) != letters:
        raise DataError(f"{where}: 'probabilities' has options {sorted(probs)}, expected {letters}")
    values = [probs[c] for c in letters]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1 for v in values):
        raise DataError(f"{where}: every probability must be a number in [0, 1]")
    if abs(math.fsum(values) - 1) > 1e-3:
        raise DataError(f"{where}: probabilities sum to {math.fsum(values):.6f}, not 1")
    gold = row.get("gold")
    if gold not in letters:
        raise DataError(f"{where}: 'gold' must be one of {letters}, got {gold!r}")
    return [float(v) for v in values], letters.index(gold)


def _continuations(row: dict) -> list:
    args = row.get("arguments")
    pairs = list(args.values()) if isinstance(args, dict) else args if isinstance(args, list) else []
    return [
        p.get("arg_1") if isinstance(p, dict) else p[1] if isinstance(p, list) and len(p) > 1 else None for p in pairs
    ]


def _lm_eval(row: dict, where: str, delimiter: str) -> tuple[Tensor, int, list[int]]:
    """A row's choice log-likelihoods ``[K]`` (float64), its gold index and its choices' lengths."""
    if "acc_mutual_info" in (row.get("metrics") or []):
        raise DataError(f"{where}: acc_mutual_info rows also hold unconditional log-likelihoods; not supported")
    try:
        lls = torch.tensor([float(r[0]) for r in row.get("filtered_resps")], dtype=torch.float64)
    except (TypeError, ValueError, IndexError, KeyError):
        raise DataError(f"{where}: 'filtered_resps' must hold one [loglikelihood, is_greedy] per choice") from None
    if len(lls) < 2 or not bool(torch.isfinite(lls).all()):
        raise DataError(f"{where}: a multiple-choice row needs >= 2 finite choice log-likelihoods, got {lls.tolist()}")
    continuations = _continuations(row)
    if len(continuations) != len(lls) or not all(isinstance(c, str) and c.startswith(delimiter) for c in continuations):
        raise DataError(
            f"{where}: 'arguments' must hold one (context, target_delimiter + choice) per choice, with target_delimiter"
            f" {delimiter!r} (--target-delimiter)"
        )
    choices = [c[len(delimiter) :] for c in continuations]
    target = row.get("target")
    gold = None
    if isinstance(target, int) and not isinstance(target, bool):
        gold = target
    elif isinstance(target, str) and target.strip().isdigit():  # lm-eval reads a digit target as an index too
        gold = int(target)
    elif isinstance(target, str) and target in choices:
        gold = choices.index(target)
    if gold is None or not 0 <= gold < len(lls):
        raise DataError(f"{where}: 'target' {target!r} is not one gold choice of the {len(lls)} (one answer only)")
    return lls, gold, [len(c) for c in choices]


def _rows(path: Path) -> list[tuple[str, dict]]:
    """``(where, row)`` for every non-empty line of a JSON-lines file."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) else "not UTF-8 text"
        raise DataError(f"{path}: cannot read ({reason})") from None
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}: row {number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: not JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise DataError(f"{where}: not a JSON object")
        rows.append((where, row))
    if not rows:
        raise DataError(f"{path}: no predictions")
    return rows


def padded(rows: list[Tensor]) -> Tensor:
    """The rows as one float64 ``[N, widest row]`` matrix, zero-padded."""
    out = torch.zeros(len(rows), max(len(r) for r in rows), dtype=torch.float64)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def read_predictions(path: str | Path, target_delimiter: str | None = None) -> Predictions:
    """Read one prediction file (format told by its first row); a bad file raises ``DataError`` naming the
    file and the row (1-based line number). ``target_delimiter``: an lm-eval task's, when no
    ``results_{date}.json`` beside the file says it (default: lm-eval's default, one space)."""
    path = Path(path)
    rows = _rows(path)
    where, first = rows[0]
    if "filtered_resps" not in first and "probabilities" not in first:
        raise DataError(
            f"{where}: neither our prediction row ('probabilities', 'gold') nor an lm-eval --log_samples "
            "row ('filtered_resps', 'target')"
        )
    ids = [str(row.get("doc_id" if "filtered_resps" in first else "id", i)) for i, (_, row) in enumerate(rows)]
    if len(set(ids)) != len(ids):
        raise DataError(f"{path}: question ids are not unique")
    if "probabilities" in first:
        parsed = [_ours(row, where) for where, row in rows]
        probs = padded([torch.tensor(p, dtype=torch.float64) for p, _ in parsed])
        labels = torch.tensor([gold for _, gold in parsed], dtype=torch.long)
        return Predictions(probs, labels, ids, "calibration_lightning", path.stem)
    match, run = SAMPLES.match(path.stem), lm_eval_run(path)
    task = match["task"] if match else path.stem
    if target_delimiter is None:
        target_delimiter = run.delimiters.get(task, " ") if run else " "
    parsed = [_lm_eval(row, where, target_delimiter) for where, row in rows]
    labels = torch.tensor([gold for _, gold, _ in parsed], dtype=torch.long)
    # lm-eval's np.argmax and torch's argmax both take the first of equal maxima
    pred = torch.tensor([int(lls.argmax()) for lls, _, _ in parsed])
    pred_norm = torch.tensor([int((lls / torch.tensor(n, dtype=torch.float64)).argmax()) for lls, _, n in parsed])
    correct = {"acc": (pred == labels).double(), "acc_norm": (pred_norm == labels).double()}
    probs = padded([lls.softmax(0) for lls, _, _ in parsed])
    return Predictions(probs, labels, ids, "lm-eval", task, correct)
