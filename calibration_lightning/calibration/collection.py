"""The reported metrics as one torchmetrics MetricCollection (logged as ``val/*`` and ``test/*``)."""

from __future__ import annotations

from torch import Tensor
from torchmetrics import Metric, MetricCollection
from torchmetrics.utilities import dim_zero_cat

from calibration_lightning.calibration.metrics import METRICS, metric


class CalibrationMetric(Metric):
    """Accumulates ``probs [N, K]``, ``labels [N]`` and ``n_choices [N]``; computes ``METRICS[name]`` over the
    set's own options (the most any of its rows has)."""

    full_state_update = False

    def __init__(self, name: str, n_bins: int = 10, **kwargs) -> None:
        super().__init__(**kwargs)
        self.metric_name, self.n_bins = name, n_bins
        self.add_state("probs", default=[], dist_reduce_fx="cat")
        self.add_state("labels", default=[], dist_reduce_fx="cat")
        self.add_state("n_choices", default=[], dist_reduce_fx="cat")

    def update(self, probs: Tensor, labels: Tensor, n_choices: Tensor | None = None) -> None:
        """``n_choices [N]``: options per row (default: all K columns)."""
        self.probs.append(probs.detach().float())
        self.labels.append(labels.detach().long())
        width = n_choices.detach().long() if n_choices is not None else labels.new_full(labels.shape, probs.shape[1])
        self.n_choices.append(width)

    def compute(self) -> Tensor:
        probs, labels = dim_zero_cat(self.probs), dim_zero_cat(self.labels)
        probs = probs[:, : int(dim_zero_cat(self.n_choices).max())].contiguous()
        return metric(self.metric_name, probs, labels, self.n_bins)


def calibration_metrics(n_bins: int = 10) -> MetricCollection:
    """Every metric of ``METRICS`` under its name, sharing one state."""
    return MetricCollection({name: CalibrationMetric(name, n_bins) for name in METRICS}, compute_groups=[list(METRICS)])
