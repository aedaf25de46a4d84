"""Scoring every evaluation split with a Trainer and turning letter logits into results."""

from __future__ import annotations

from collections.abc import Callable

import lightning as L
import torch
from torch import Tensor

from calibration_lightning.calibration.confidence import set_probabilities
from calibration_lightning.calibration.metrics import metric
from calibration_lightning.calibration.regime import diagnose
from calibration_lightning.data.records import LETTERS, MCRecord
from calibration_lightning.predictions import paired_block, phase_metrics

Scored = dict  # letter_logits [N, K], labels [N], n_choices [N], index [N] in split order; "metrics": see below


def evaluate(
    trainer: L.Trainer, module, datamodule, n_bins: int, val: Scored | None = None, tests: bool = True
) -> dict[str, Scored]:
    """Score the validation split (unless its scores are known: ``val``) and every test set (``test`` first; none
    when ``tests`` is False) with ``trainer.predict``. The run's one scoring path: each split's tensors, gathered
    from every process, and its ``"metrics"``, computed here once for every output and logged as ``val/*``,
    ``test/*`` and ``test/NAME/*``."""
    datamodule.score_val, datamodule.score_tests = val is None, tests
    try:
        names = datamodule.predict_split_names
        outputs = trainer.predict(module, datamodule=datamodule) if names else []
    finally:
        datamodule.score_val = datamodule.score_tests = True
    per_split = outputs if len(names) > 1 else [outputs]
    scored = {name: with_metrics(gathered(trainer, parts), n_bins) for name, parts in zip(names, per_split)}
    if val is not None:
        scored = {"val": with_metrics(val, n_bins), **scored}
    if trainer.is_global_zero:
        logged = {}
        for name, s in scored.items():
            prefix = "val" if name == "val" else "test" if name == "test" else f"test/{name}"
            logged.update({f"{prefix}/{k}": v for k, v in s["metrics"].items() if k != "n"})
        for logger in trainer.loggers:
            logger.log_metrics(logged, step=trainer.global_step)
            logger.save()
    return scored


def with_metrics(scored: Scored, n_bins: int) -> Scored:
    """The split's scores with their metrics (``metrics``) under ``"metrics"``."""
    scored = {k: v for k, v in scored.items() if k != "metrics"}
    return {**scored, "metrics": metrics(scored, n_bins)}


def gathered(trainer: L.Trainer, parts: list[Scored]) -> Scored:
    """One split's batches from every process, concatenated and sorted by question index."""
    if trainer.world_size > 1:
        everyone = [None] * trainer.world_size
        torch.distributed.all_gather_object(everyone, parts)  # pickled: no device placement to get wrong
        parts = [p for rank_parts in everyone for p in rank_parts]
    merged = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    order = merged["index"].argsort()
    return {k: v[order] for k, v in merged.items()}


def regime(scored: dict[str, Scored], n_bins: int, tolerance: float) -> dict | None:
    """The regime diagnosis from the validation and test scores (None without a validation split)."""
    if "val" not in scored:
        return None
    val, test = scored["val"], scored["test"]
    val_probs, test_probs = probabilities(val), probabilities(test)
    return diagnose(val_probs, val["labels"], test_probs, test["labels"], test["metrics"], n_bins, tolerance)


def transform_logits(scored: dict[str, Scored], fn: Callable[[Tensor], Tensor], n_bins: int) -> dict[str, Scored]:
    """Apply a post-hoc calibrator's transform to every split's letter logits (and measure them again)."""
    return {name: with_metrics({**s, "letter_logits": fn(s["letter_logits"])}, n_bins) for name, s in scored.items()}


def probabilities(scored: Scored) -> Tensor:
    """``[N, K_set]`` probabilities over each row's own options, K_set = the most options any row of the
    set has: a set's classes are its own options, whatever the width of other sets in the run."""
    return set_probabilities(scored["letter_logits"], scored["n_choices"])


def metrics(scored: Scored, n_bins: int) -> dict:
    """Every metric of ``METRICS``, the debiased ECEs and the size ``n`` of one split (``phase_metrics``)."""
    return phase_metrics(probabilities(scored), scored["labels"], n_bins)


def compare(before: Scored, after: Scored, n_bins: int, resamples: int, seed: int, level: float) -> dict:
    """One evaluation set's block of metrics.json (``paired_block``'s, with ``metrics`` not computed again): the
    intervals from one paired bootstrap of the same questions before and after (none when ``resamples`` is 0)."""
    if not torch.equal(before["index"], after["index"]):
        raise ValueError("before and after must score the same questions in the same order")
    options = {"n_bins": n_bins, "resamples": resamples, "level": level, "seed": seed}
    points = (before["metrics"], after["metrics"])
    return paired_block(probabilities(before), probabilities(after), before["labels"], points, **options)


def subject_metrics(scored: Scored, records: list[MCRecord], n_bins: int) -> dict[str, dict] | None:
    """conf-ECE, accuracy and n per subject (sorted by name), or None when no record of the set has a subject."""
    subjects = [records[i].subject for i in scored["index"].tolist()]
    if all(s is None for s in subjects):
        return None
    groups: dict[str, list[int]] = {}
    for row, subject in enumerate(subjects):
        groups.setdefault(subject or "(none)", []).append(row)
    probs, labels = probabilities(scored), scored["labels"]
    per_subject = {}
    for name in sorted(groups):
        rows = torch.tensor(groups[name], device=labels.device)
        values = {m: float(metric(m, probs[rows], labels[rows], n_bins)) for m in ("conf_ece", "accuracy")}
        per_subject[name] = {**values, "n": len(rows)}
    return per_subject


def prediction_rows(scored: Scored, records: list[MCRecord]) -> list[dict]:
    """One JSON-ready row per question: id, subject, gold, prediction, confidence, probabilities."""
    probs = probabilities(scored)
    rows = []
    for i, p in zip(scored["index"].tolist(), probs):
        rec, k = records[i], len(records[i].choices)
        pred = int(p[:k].argmax())
        rows.append(
            {
                "id": rec.id,
                "subject": rec.subject,
                "gold": LETTERS[rec.answer],
                "prediction": LETTERS[pred],
                "correct": pred == rec.answer,
                "confidence": float(p[pred]),  # unrounded: every metric is recomputable from this file
                "probabilities": {LETTERS[j]: float(p[j]) for j in range(k)},
            }
        )
    return rows
