"""Instruction sets: built in, a local JSONL, or AlpacaEval from the hub. Each returns [(instruction, reference)]."""

from __future__ import annotations

import json
from importlib import resources

from calibration_lightning.data.sources import jsonl_rows, resolve_path
from calibration_lightning.errors import DataError

Instruction = tuple[str, "str | None"]


def _from_rows(rows, where: str, limit: int | None) -> list[Instruction]:
    items = []
    for i, row in enumerate(rows, 1):
        if not isinstance(row, dict) or not isinstance(row.get("instruction"), str) or not row["instruction"].strip():
            raise DataError(f"{where}: record {i}: field 'instruction' is missing or empty")
        ref = row.get("reference", row.get("output"))
        if ref is not None and not isinstance(ref, str):
            raise DataError(f"{where}: record {i}: field 'reference' must be text")
        items.append((row["instruction"].strip(), ref.strip() if ref else None))
        if limit and len(items) >= limit:
            break
    if not items:
        raise DataError(f"{where}: no instructions")
    return items


def builtin(limit: int | None = None) -> list[Instruction]:
    """A small set written for this project: everyday, factual, writing and reasoning requests (no references)."""
    text = resources.files("calibration_lightning.winrate").joinpath("builtin_instructions.jsonl").read_text("utf-8")
    return _from_rows([json.loads(x) for x in text.splitlines() if x.strip()], "builtin instructions", limit)


def jsonl(path: str, limit: int | None = None) -> list[Instruction]:
    """A local JSONL with ``instruction`` and optional ``reference`` per line."""
    p = resolve_path(path)
    if not p.exists():
        raise DataError(f"{p}: no such file (win_rate.instructions.path)")
    return _from_rows([row for _, row in jsonl_rows(p)], str(p), limit)


def alpaca_eval(limit: int | None = None, data_dir: str | None = None) -> list[Instruction]:
    """tatsu-lab/alpaca_eval (``alpaca_eval.json``: instruction, output = the reference model's answer)."""
    if data_dir:
        path = resolve_path(data_dir) / "alpaca_eval.json"
    else:
        from huggingface_hub import hf_hub_download

        try:
            path = hf_hub_download("tatsu-lab/alpaca_eval", "alpaca_eval.json", repo_type="dataset")
        except Exception as e:
            raise DataError(
                f"cannot download tatsu-lab/alpaca_eval ({type(e).__name__}: {e}); "
                "pass win_rate.instructions.data_dir=LOCAL_COPY"
            ) from e
    try:
        rows = json.loads(open(path, encoding="utf-8").read())
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: cannot read AlpacaEval ({e})") from e
    return _from_rows(rows, str(path), limit)
