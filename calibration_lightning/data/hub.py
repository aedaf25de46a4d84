"""Hugging Face hub datasets in their published schemas, read from the Parquet files of one split; ``data_dir``
reads a local copy laid out like the hub repository instead (offline use, tests)."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from pathlib import Path
from typing import Any

from calibration_lightning.data.records import MCRecord, make_record
from calibration_lightning.data.sources import parquet_rows, resolve_path
from calibration_lightning.errors import DataError


def download_error(repo_id: str, revision: str | None, e: Exception) -> str:
    """One line for a failed dataset download: what went wrong, where we looked, what to do."""
    from huggingface_hub import constants
    from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError

    if isinstance(e, GatedRepoError):
        why = f"the dataset is gated: accept its terms on https://huggingface.co/datasets/{repo_id} and set HF_TOKEN"
    elif isinstance(e, RepositoryNotFoundError):
        why = "no such dataset on the hub (or it is private: set HF_TOKEN)"
    elif isinstance(e, LocalEntryNotFoundError):
        offline = "HF_HUB_OFFLINE=1 forbids downloads" if constants.HF_HUB_OFFLINE else "the hub cannot be reached"
        why = f"{offline}, and it is not in the cache {constants.HF_HUB_CACHE}"
    else:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        why = f"{type(e).__name__}: {first}" if first else type(e).__name__
    at = f" at revision {revision}" if revision else ""
    return (
        f"cannot download {repo_id}{at} from the Hugging Face hub ({why}); check the network or HF_TOKEN, "
        "or pass the dataset's data_dir= (e.g. dataset.source.data_dir=FOLDER) to a local copy laid out like the hub"
    )


def split_files(
    repo_id: str, patterns: list[str], data_dir: str | None = None, revision: str | None = None
) -> list[Path]:
    """The Parquet files of one split: from ``data_dir`` if given, else downloaded from the hub."""
    if data_dir:
        root = resolve_path(data_dir)
        if not root.is_dir():
            raise DataError(f"{root}: no such folder (data_dir for {repo_id})")
    else:
        from huggingface_hub import snapshot_download

        try:
            root = Path(snapshot_download(repo_id, repo_type="dataset", revision=revision, allow_patterns=patterns))
        except Exception as e:  # network, auth, missing repo: one message naming the repo
            raise DataError(download_error(repo_id, revision, e)) from None
    files = sorted(
        p
        for p in root.rglob("*.parquet")
        if any(fnmatch.fnmatch(p.relative_to(root).as_posix(), pat) for pat in patterns)
    )
    if not files:
        raise DataError(f"{repo_id}: no Parquet file matches {patterns} under {root}")
    return files


def _load(
    repo_id: str,
    patterns: list[str],
    to_record: Callable[[dict], dict[str, Any]],
    name: str,
    data_dir: str | None,
    revision: str | None,
    limit: int | None,
    keep: Callable[[dict], bool] = lambda row: True,
) -> list[MCRecord]:
    records = []
    for path in split_files(repo_id, patterns, data_dir, revision):
        for where, row in parquet_rows(path):
            if not keep(row):
                continue
            records.append(make_record(to_record(row), f"{path}: {where}", f"{name}-{len(records)}"))
            if limit and len(records) >= limit:
                return records
    if not records:
        raise DataError(f"{repo_id}: the split holds no usable records")
    return records


def mmlu(
    split: str = "test",
    subjects: list[str] | None = None,
    data_dir: str | None = None,
    revision: str | None = None,
    limit: int | None = None,
) -> list[MCRecord]:
    """cais/mmlu (config ``all``): question, subject, choices (list), answer (index)."""
    wanted = set(subjects) if subjects else None
    return _load(
        "cais/mmlu",
        [f"all/{split}-*.parquet"],
        lambda r: {
            "question": r["question"],
            "choices": r["choices"],
            "answer": r["answer"],
            "subject": r.get("subject"),
        },
        "mmlu",
        data_dir,
        revision,
        limit,
        keep=lambda r: wanted is None or r.get("subject") in wanted,
    )


def medmcqa(
    split: str = "validation", data_dir: str | None = None, revision: str | None = None, limit: int | None = None
) -> list[MCRecord]:
    """openlifescienceai/medmcqa: opa..opd, cop (index; the public test split is unlabelled, cop = -1)."""
    if split == "test":
        raise DataError("medmcqa: the public test split has no answers (cop = -1); use split=validation")
    return _load(
        "openlifescienceai/medmcqa",
        [f"data/{split}-*.parquet"],
        lambda r: {
            "id": r.get("id"),
            "question": r["question"],
            "choices": [r["opa"], r["opb"], r["opc"], r["opd"]],
            "answer": r["cop"],
            "subject": r.get("subject_name"),
        },
        "medmcqa",
        data_dir,
        revision,
        limit,
    )


def _labelled_choices(r: dict, stem: str) -> dict[str, Any]:
    """Schemas with ``choices: {text: [...], label: [...]}`` and ``answerKey`` naming a label."""
    labels = [str(x) for x in r["choices"]["label"]]
    key = str(r.get("answerKey", "")).strip()
    answer = labels.index(key) if key in labels else None
    return {"id": r.get("id"), "question": r[stem], "choices": r["choices"]["text"], "answer": answer}


def openbookqa(
    split: str = "test", data_dir: str | None = None, revision: str | None = None, limit: int | None = None
) -> list[MCRecord]:
    """allenai/openbookqa (config ``main``): question_stem, choices.text / choices.label, answerKey."""
    return _load(
        "allenai/openbookqa",
        [f"main/{split}-*.parquet"],
        lambda r: _labelled_choices(r, "question_stem"),
        "openbookqa",
        data_dir,
        revision,
        limit,
    )


def arc_challenge(
    split: str = "test", data_dir: str | None = None, revision: str | None = None, limit: int | None = None
) -> list[MCRecord]:
    """allenai/ai2_arc, ARC-Challenge. Some rows have 3 or 5 options and numeric labels ("1".."4"):
    options are relabelled A, B, ... in order and the answer follows its label's position."""
    return _load(
        "allenai/ai2_arc",
        [f"ARC-Challenge/{split}-*.parquet"],
        lambda r: _labelled_choices(r, "question"),
        "arc_challenge",
        data_dir,
        revision,
        limit,
    )


def paper_mix(
    split: str = "calibration_train", data_dir: str | None = None, revision: str | None = None, limit: int | None = None
) -> list[MCRecord]:
    """aaronwzl/mcqa_calibration_dataset, the authors' in-domain mixture: question, choices, answer (index)."""
    return _load(
        "aaronwzl/mcqa_calibration_dataset",
        [f"*{split}-*.parquet", f"*/{split}-*.parquet"],
        lambda r: {"id": r.get("id"), "question": r["question"], "choices": r["choices"], "answer": r["answer"]},
        "paper_mix",
        data_dir,
        revision,
        limit,
    )


def mixture(parts: list[list[MCRecord]]) -> list[MCRecord]:
    """Concatenate several sources (e.g. MMLU + MedMCQA + OpenBookQA), keeping ids unique."""
    out, seen = [], set()
    for records in parts:
        for r in records:
            if r.id in seen:
                raise DataError(f"mixture: record id {r.id!r} appears in two sources")
            seen.add(r.id)
            out.append(r)
    return out
