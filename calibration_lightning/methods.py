"""Training methods, built from their config, and ``method=auto``'s rule for keeping one of several."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from calibration_lightning.calibration.metrics import METRICS
from calibration_lightning.errors import is_number, require

HIGHER_IS_BETTER = ("accuracy",)


def _require_positive_int(key: str, value, low: int = 1) -> None:  # the type: schema.py
    require(key, value, value >= low, f"must be an integer >= {low}")


@dataclass
class Selection:
    """``method.select``: choose the training length, and back off the learning rate, on the validation split.

    Validation runs every ``every_n_steps`` optimizer steps (a round; 0: after every pass over the training
    split). The model before training counts as round 0: a round is better only if it improves the best so
    far (round 0 included) by more than ``min_delta``; training stops after ``patience`` rounds without such an
    improvement (Lightning's EarlyStopping, its best score starting at the untrained model's), and the best
    round's adapters are kept, the untrained ones when no round beat them.

    ``backtrack_factor``: on a round that does not improve and is worse than the best round by more than
    ``backtrack_z`` standard errors of the paired per-question difference of the monitor (null: any round
    that does not improve; a round within the noise only counts toward ``patience``), training goes back to
    the best adapters so far (the untrained ones if none) and goes on with the learning rate multiplied by
    this factor and a fresh optimizer state (reduce-on-plateau with a return to the best weights, the
    "newbob" schedule of speech recognition). A model for which the configured rate overshoots (validation
    clearly worse than before training) is thus retrained from the start at a smaller rate. After
    ``max_backtracks`` backtracks, the next such round ends training (a bound on what a plateau can cost).
    When patience runs out and a backtrack is left, the backtrack replaces the stop. Patience and the noise
    test, not a threshold, are what see through the validation split's noise: the standard error of a mean
    NLL over 80 questions is a few hundredths, as large as a real round's gain.
    """

    monitor: str = "val/nll"
    min_delta: float = 0.0
    patience: int = 2
    every_n_steps: int = 0
    backtrack_factor: float | None = None
    max_backtracks: int = 1
    backtrack_z: float | None = 1.0

    def __post_init__(self) -> None:
        allowed = [f"val/{name}" for name in METRICS]
        require("method.select.monitor", self.monitor, self.monitor in allowed, f"allowed: {', '.join(allowed)}")
        require("method.select.min_delta", self.min_delta, self.min_delta >= 0, "must be a number >= 0")
        require("method.select.patience", self.patience, self.patience >= 1, "must be an integer >= 1")
        _require_positive_int("method.select.every_n_steps", self.every_n_steps, low=0)
        f = self.backtrack_factor
        ok = f is None or (is_number(f) and 0 < f < 1)
        require("method.select.backtrack_factor", f, ok, "must be null (no backtracking) or a number in (0, 1)")
        _require_positive_int("method.select.max_backtracks", self.max_backtracks, low=0)
        z = self.backtrack_z
        require("method.select.backtrack_z", z, z is None or (is_number(z) and z >= 0), "must be null or a number >= 0")

    @property
    def mode(self) -> str:
        return "max" if self.monitor.removeprefix("val/") in HIGHER_IS_BETTER else "min"

    def improves(self, value: float, best: float) -> bool:
        """``value`` beats ``best`` by more than ``min_delta`` in the monitor's direction."""
        gain = best - value if self.mode == "min" else value - best
        return gain > self.min_delta


@dataclass
class LRSearch:
    """``method.lr_search``: the learning rate chosen on the validation split by successive halving.

    Every learning rate of ``lrs`` trains from the same initial adapters for ``probe_steps`` optimizer
    steps (same batches, same seed) and is scored on the validation split by ``method.select.monitor``;
    the best ``1/eta`` go on to a rung ``eta`` times longer, until one is left (Jamieson and Talwalkar
    2016; Li et al. 2018, Hyperband). The run then trains with it from the initial adapters.
    ``method.optim.lr``, when it is one of ``lrs``, is the reference: a rung ranks it above every rate that
    does not beat it by more than ``z`` standard errors of the paired per-question difference of the monitor.
    """

    lrs: list[float] = field(default_factory=lambda: [1.5e-4, 5.0e-4, 1.5e-3])
    probe_steps: int = 10
    eta: int = 3
    z: float = 1.0

    def __post_init__(self) -> None:
        self.lrs = list(self.lrs)
        ok = len(self.lrs) >= 1 and all(is_number(x) and x > 0 for x in self.lrs)
        require("method.lr_search.lrs", self.lrs, ok, "must be a non-empty list of learning rates > 0")
        _require_positive_int("method.lr_search.probe_steps", self.probe_steps)
        _require_positive_int("method.lr_search.eta", self.eta, low=2)
        require("method.lr_search.z", self.z, is_number(self.z) and self.z >= 0, "must be a number >= 0")

    def rungs(self) -> list[tuple[int, int]]:
        """``(candidates trained, steps each)`` per rung: ``len(lrs)`` at ``probe_steps``, then the best
        ``ceil(n / eta)`` at ``eta`` times the steps, while more than one is left."""
        n, steps, plan = len(self.lrs), self.probe_steps, []
        while n > 1:
            plan.append((n, steps))
            n, steps = math.ceil(n / self.eta), steps * self.eta
        return plan


@dataclass
class Method:
    """A training method as a run uses it: its loss head, optimizer settings, epochs (the most, with
    ``select``), callbacks, training-length selection (None: train ``epochs``, keep the last adapters) and
    learning-rate search (None: ``optim.lr``)."""

    name: str
    loss: Any  # a LossHead
    optim: Any  # an OptimSettings
    epochs: int
    callbacks: list = field(default_factory=list)
    select: Selection | None = None
    lr_search: LRSearch | None = None


RULE = (
    "train each candidate from the same initial adapters; a candidate is eligible unless its validation "
    "accuracy is below the best's by more than regime.accuracy_tolerance plus method.accuracy_z standard "
    "errors of the paired difference (the same validation questions, exact counts); among the eligible, the one "
    "with the lowest validation conf-ECE and every one whose conf-ECE is above it within the noise (the paired "
    "bootstrap interval of the difference, over bootstrap.resamples resamples of the validation questions at "
    "bootstrap.level, reaches 0) are tied; among the tied, keep the lowest validation NLL (ties: the first listed)"
)


def paired_difference(best: list[bool], other: list[bool]) -> tuple[int, float]:
    """Correct answers of ``best`` minus those of ``other`` on the same questions, and the standard error
    of that count (from the discordant pairs: ``sqrt(b + c - (b - c)^2 / n)``, the paired, McNemar-type
    variance of a sum of per-question differences)."""
    if len(best) != len(other):
        raise ValueError("candidates must be scored on the same validation questions")
    b = sum(x and not y for x, y in zip(best, other))
    c = sum(y and not x for x, y in zip(best, other))
    n = len(best)
    return b - c, math.sqrt(max(b + c - (b - c) ** 2 / n, 0.0)) if n else 0.0


def choose_method(
    val_metrics: dict[str, dict],
    correct: dict[str, list[bool]],
    accuracy_tolerance: float,
    z: float = 1.96,
    probabilities: dict | None = None,
    labels=None,
    n_bins: int = 10,
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> dict:
    """Apply ``RULE`` to each candidate's validation metrics (``{name: {"accuracy", "conf_ece", "nll", ...}}``)
    and per-question correctness (``{name: [bool, ...]}``, the same questions in the same order).

    The accuracy test uses integer counts: a loss of ``d`` questions out of ``n`` is within the tolerance
    when ``d <= tolerance * n`` exactly (``Fraction``), so 29/100 against 31/100 is within 0.02.
    ``probabilities`` (``{name: [N, K] tensor}``) and ``labels`` (``[N]``) of the validation questions feed the
    noise test of conf-ECE (``calibration_ties``); without them, or with ``resamples`` 0, the lowest
    validation conf-ECE among the eligible is kept.

    Returns:
        ``{"candidates": val_metrics, "paired": {name: {"correct", "behind_best", "se"}}, "eligible": [...],
        "calibration": {name: {"above_lowest", "ci", "tied"}}, "tied": [...], "chosen": name, "rule": RULE,
        "accuracy_tolerance": ..., "accuracy_z": z}`` (metrics.json ``auto``).
    """
    if not val_metrics:
        raise ValueError("no candidate to choose from")
    require("method.accuracy_z", z, is_number(z) and z >= 0, "must be a number >= 0")
    counts = {name: sum(correct[name]) for name in val_metrics}
    leader = max(val_metrics, key=lambda name: counts[name])  # the first listed among ties
    n = len(correct[leader])
    allowed = Fraction(str(accuracy_tolerance)) * n
    paired, eligible = {}, []
    for name in val_metrics:
        behind, se = paired_difference(correct[leader], correct[name])
        paired[name] = {"correct": counts[name], "n": n, "behind_best": behind, "se": round(se, 4)}
        if behind <= allowed or behind - allowed <= z * se:
            eligible.append(name)
    lowest = min(eligible, key=lambda name: val_metrics[name]["conf_ece"])
    calibration, tied = {}, [lowest]
    if probabilities is not None and labels is not None and resamples > 0 and len(eligible) > 1:
        ece = {name: val_metrics[name]["conf_ece"] for name in eligible}
        calibration = calibration_ties(
            {name: probabilities[name] for name in eligible}, labels, ece, lowest, n_bins, resamples, level, seed
        )
        tied = [name for name in eligible if calibration[name]["tied"]]
    chosen = min(tied, key=lambda name: val_metrics[name]["nll"]) if len(tied) > 1 else lowest
    return {
        "candidates": val_metrics,
        "paired": paired,
        "eligible": eligible,
        "calibration": calibration,
        "tied": tied,
        "chosen": chosen,
        "rule": RULE,
        "accuracy_tolerance": accuracy_tolerance,
        "accuracy_z": z,
    }


def calibration_ties(
    probabilities: dict, labels, ece: dict, lowest: str, n_bins: int, resamples: int, level: float, seed: int
) -> dict:
    """Per candidate: its validation conf-ECE (``ece``) minus ``lowest``'s (``above_lowest``), the paired
    bootstrap percentile interval of that difference (``ci``: the same ``resamples`` resamples of the questions
    for every candidate, ``bootstrap.resampled_conf_ece``) and whether the candidate is ``tied`` with ``lowest``
    (the interval reaches 0; ``lowest`` is tied with itself)."""
    import torch

    from calibration_lightning.calibration.bootstrap import resampled_conf_ece

    names = list(probabilities)
    resampled = dict(
        zip(names, resampled_conf_ece([(probabilities[n], labels) for n in names], n_bins, resamples, seed))
    )
    quantiles = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)
    result = {}
    for name in names:
        lo, hi = torch.quantile(resampled[name] - resampled[lowest], quantiles).tolist()
        above = round(ece[name] - ece[lowest], 6)
        result[name] = {"above_lowest": above, "ci": [round(lo, 6), round(hi, 6)], "tied": lo <= 0}
    return result


def describe_training(name: str, training: dict) -> str:
    """One line for the log and the printed table: the settings the run chose on validation."""
    text = f"{name}: lr {training['lr']:g}"
    if "lr_search" in training:
        grid = ", ".join(f"{lr:g}" for lr in training["lr_search"]["lrs"])
        text += f" (chosen on validation from {grid})"
    rounds = training.get("rounds_per_epoch", 1)
    if rounds > 1:
        text += f"; {training['rounds_run']} round(s) of {1 / rounds:.2g} epoch run"
    else:
        text += f"; {training['rounds_run']} epoch(s) run"
    text += f" of at most {training['epochs_max']} epoch(s)"
    for b in training.get("backtracks", []):
        text += f"; after round {b['after_round']} back to round {b['back_to_round']} at lr {b['lr']:.3g}"
    if "monitor" not in training:
        return text + ", the last kept"
    before, kept = training.get("monitor_before"), training.get("monitor_kept")
    if training["kept_round"] == 0:
        text += f"; no round beat the model before training on {training['monitor']}"
        if before is not None:
            text += f" ({before:.4f})"
        return text + ": the untrained adapters are kept"
    text += f"; round {training['kept_round']} kept" if rounds > 1 else f"; epoch {training['kept_round']} kept"
    if before is not None and kept is not None:
        text += f" ({training['monitor']} {before:.4f} before training -> {kept:.4f})"
    return text
