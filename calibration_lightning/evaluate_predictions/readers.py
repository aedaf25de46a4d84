"""Prediction files: a run's ``predictions_*.jsonl`` and lm-evaluation-harness ``--log_samples`` files.

Both are JSON lines, one question a line; the format is told by the first row's keys.

- Ours (``evaluation.prediction_rows``): ``gold`` (a letter) and ``probabilities`` (``{"A": p, "B": p, ...}``
  over the question's own options, rows of fewer options padded with zeros to the file's widest row).
- lm-eval, multiple-choice tasks (``output_type: multiple_choice``): ``filtered_resps``, one ``[loglikelihood,
  is_greedy]`` per choice (written as strings), and ``target``, the gold choice's index or text; the
  probabilities are the softmax of the choices' log-likelihoods, so the argmax is lm-eval's ``acc``
  prediction. Question ids are ``doc_id``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from calibration_lightning.data.records import LETTERS
from calibration_lightning.errors import DataError


@dataclass
class Predictions:
    """One file's questions: ``probs [N, K]`` (float32), ``labels [N]``, their ids and the file's format."""

    probs: Tensor
    labels: Tensor
    ids: list[str]
    format: str


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


def _lm_eval(row: dict, where: str) -> tuple[list[float], int]:
    resps = row.get("filtered_resps")
    try:
        lls = [float(r[0]) for r in resps]
    except (TypeError, ValueError, IndexError, KeyError):
        raise DataError(f"{where}: 'filtered_resps' must hold one [loglikelihood, is_greedy] per choice") from None
    if len(lls) < 2 or not all(math.isfinite(v) for v in lls):
        raise DataError(f"{where}: a multiple-choice row needs >= 2 finite choice log-likelihoods, got {lls}")
    target = row.get("target")
    gold = None
    if isinstance(target, int) and not isinstance(target, bool):
        gold = target
    elif isinstance(target, str) and target.strip().lstrip("-").isdigit():
        gold = int(target)
    elif isinstance(target, str):  # the gold choice's text: match the choices' continuations
        args = row.get("arguments")
        pairs = list(args.values()) if isinstance(args, dict) else args if isinstance(args, list) else []
        continuations = [
            (p.get("arg_1") if isinstance(p, dict) else p[1] if isinstance(p, list) and len(p) > 1 else None)
            for p in pairs
        ]
        matches = [i for i, c in enumerate(continuations) if isinstance(c, str) and c.strip() == target.strip()]
        gold = matches[0] if len(matches) == 1 else None
    if gold is None or not 0 <= gold < len(lls):
        raise DataError(f"{where}: 'target' {target!r} is not one gold choice of the {len(lls)} (one answer only)")
    return torch.tensor(lls, dtype=torch.float64).softmax(0).tolist(), gold


def read_predictions(path: str | Path) -> Predictions:
    """Read one prediction file (format told by its first row); a bad file raises ``DataError`` naming the
    file and the row (1-based line number)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) else "not UTF-8 text"
        raise DataError(f"{path}: cannot read ({reason})") from None
    rows, ids, kind = [], [], None
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
        if kind is None:
            kind = "lm-eval" if "filtered_resps" in row else "calibration_lightning" if "probabilities" in row else None
            if kind is None:
                raise DataError(
                    f"{where}: neither our prediction row ('probabilities', 'gold') nor an lm-eval --log_samples "
                    "row ('filtered_resps', 'target')"
                )
        rows.append((_lm_eval if kind == "lm-eval" else _ours)(row, where))
        ids.append(str(row.get("doc_id" if kind == "lm-eval" else "id", len(ids))))
    if not rows:
        raise DataError(f"{path}: no predictions")
    if len(set(ids)) != len(ids):
        raise DataError(f"{path}: question ids are not unique")
    width = max(len(p) for p, _ in rows)
    probs = torch.zeros(len(rows), width, dtype=torch.float32)
    for i, (p, _) in enumerate(rows):
        probs[i, : len(p)] = torch.tensor(p, dtype=torch.float32)
    labels = torch.tensor([gold for _, gold in rows], dtype=torch.long)
    return Predictions(probs, labels, ids, kind)
