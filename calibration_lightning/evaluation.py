"""Scoring every evaluation split with a Trainer and turning letter logits into results."""

from __future__ import annotations

from collections.abc import Callable

import lightning as L
from torch import Tensor

from calibration_lightning.calibration.confidence import set_probabilities
from calibration_lightning.calibration.metrics import all_metrics
from calibration_lightning.calibration.regime import diagnose
from calibration_lightning.data.records import LETTERS, MCRecord

Scored = dict[str, Tensor]  # letter_logits [N, K], labels [N], n_choices [N], index [N], in split order


def evaluate(trainer: L.Trainer, module, datamodule) -> dict[str, Scored]:
    """Letter logits of the validation split and of every test set (``test`` first)."""
    module.scored.clear()
    if datamodule.records["val"]:
        trainer.validate(module, datamodule=datamodule, verbose=False)
    trainer.test(module, datamodule=datamodule, verbose=False)
    return dict(module.scored)


def regime(scored: dict[str, Scored], n_bins: int, tolerance: float) -> dict | None:
    """The regime diagnosis from the validation and test scores (None without a validation split)."""
    if "val" not in scored:
        return None
    return diagnose(
        probabilities(scored["val"]),
        scored["val"]["labels"],
        probabilities(scored["test"]),
        scored["test"]["labels"],
        n_bins,
        tolerance,
    )


def transform_logits(scored: dict[str, Scored], fn: Callable[[Tensor], Tensor]) -> dict[str, Scored]:
    """Apply a post-hoc calibrator's transform to every split's letter logits."""
    return {name: {**s, "letter_logits": fn(s["letter_logits"])} for name, s in scored.items()}


def probabilities(scored: Scored) -> Tensor:
    """``[N, K_set]`` probabilities over each row's own options, K_set = the most options any row of the
    set has: a set's classes are its own options, whatever the width of other sets in the run."""
    return set_probabilities(scored["letter_logits"], scored["n_choices"])


def metrics(scored: Scored, n_bins: int) -> dict:
    return all_metrics(probabilities(scored), scored["labels"], n_bins)


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
