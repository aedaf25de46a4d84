"""torchmetrics wrappers of the functional metrics, gathered in one MetricCollection."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

from torch import Tensor
from torchmetrics import Metric, MetricCollection
from torchmetrics.utilities import dim_zero_cat

from calibration_lightning.calibration import metrics as F


class _ProbabilityMetric(Metric):
    """Accumulates ``probs [N, K]`` and ``labels [N]`` and applies a functional metric at compute."""

    full_state_update = False
    higher_is_better: ClassVar[bool] = False
    fn: ClassVar[Callable[..., Tensor]]
    binned: ClassVar[bool] = True

    def __init__(self, n_bins: int = 10, **kwargs) -> None:
        super().__init__(**kwargs)
        self.n_bins = n_bins
        self.add_state("probs", default=[], dist_reduce_fx="cat")
        self.add_state("labels", default=[], dist_reduce_fx="cat")
        self.add_state("n_choices", default=[], dist_reduce_fx="cat")

    def update(self, probs: Tensor, labels: Tensor, n_choices: Tensor | None = None) -> None:
        """``n_choices [N]``: options per row; the set's classes are its widest row's (default: all K)."""
        self.probs.append(probs.detach().float())
        self.labels.append(labels.detach().long())
        width = n_choices.detach().long() if n_choices is not None else labels.new_full(labels.shape, probs.shape[1])
        self.n_choices.append(width)

    def compute(self) -> Tensor:
        probs, labels = dim_zero_cat(self.probs), dim_zero_cat(self.labels)
        probs = probs[:, : int(dim_zero_cat(self.n_choices).max())].contiguous()
        fn = type(self).fn
        return fn(probs, labels, self.n_bins) if self.binned else fn(probs, labels)


class ConfECE(_ProbabilityMetric):
    fn = staticmethod(F.conf_ece)


class ClasswiseECE(_ProbabilityMetric):
    fn = staticmethod(F.classwise_ece)


class MaxCalibrationError(_ProbabilityMetric):
    fn = staticmethod(F.max_calibration_error)


class LetterAccuracy(_ProbabilityMetric):
    fn = staticmethod(F.accuracy)
    binned = False
    higher_is_better = True


class BrierScore(_ProbabilityMetric):
    fn = staticmethod(F.brier_score)
    binned = False


class NegativeLogLikelihood(_ProbabilityMetric):
    fn = staticmethod(F.negative_log_likelihood)
    binned = False


def calibration_metrics(n_bins: int = 10) -> MetricCollection:
    """The reported metrics under the names used in logs and metrics.json (share one state)."""
    return MetricCollection(
        {
            "conf_ece": ConfECE(n_bins),
            "cw_ece": ClasswiseECE(n_bins),
            "accuracy": LetterAccuracy(n_bins),
            "brier": BrierScore(n_bins),
            "nll": NegativeLogLikelihood(n_bins),
            "mce": MaxCalibrationError(n_bins),
        },
        compute_groups=[["conf_ece", "cw_ece", "accuracy", "brier", "nll", "mce"]],
    )
