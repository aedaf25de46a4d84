"""Reliability diagrams (confidence and classwise) as PNG files."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from calibration_lightning.calibration.binning import bin_index, binned_sums
from calibration_lightning.calibration.metrics import classwise_ece, conf_ece, top_label
from calibration_lightning.outputs.files import atomic_write


def reliability_bins(p: Tensor, y: Tensor, n_bins: int) -> tuple[Tensor, Tensor, Tensor]:
    """Per bin: mean predicted probability, observed frequency, count (flat ``p`` and ``y``)."""
    idx = bin_index(p, n_bins)
    count = binned_sums(idx, torch.ones_like(p), n_bins)
    mean_p = binned_sums(idx, p, n_bins) / count.clamp_min(1)
    freq = binned_sums(idx, y.to(p.dtype), n_bins) / count.clamp_min(1)
    return mean_p, freq, count


def plot_reliability(ax, p: Tensor, y: Tensor, n_bins: int, title: str) -> None:
    """Bars of observed frequency per bin against the diagonal; bar shade shows the bin's share."""
    mean_p, freq, count = reliability_bins(p, y, n_bins)
    width = 1.0 / n_bins
    centers = (torch.arange(n_bins) + 0.5) * width
    share = (count / count.sum().clamp_min(1)).tolist()
    nonempty = count > 0
    ax.bar(centers[nonempty], freq[nonempty], width=width * 0.95, color="tab:blue", alpha=0.8, label="observed")
    ax.bar(
        centers[nonempty],
        (mean_p - freq)[nonempty],
        bottom=freq[nonempty],
        width=width * 0.95,
        color="tab:red",
        alpha=0.3,
        label="gap to mean confidence",
    )
    for c, s in zip(centers.tolist(), share):
        if s > 0:
            ax.text(c, 0.02, f"{s:.0%}", ha="center", fontsize=6, rotation=90)
    ax.plot([0, 1], [0, 1], "k--", linewidth=1)
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy", title=title)
    ax.legend(loc="upper left", fontsize=7)


def save_reliability_diagrams(
    probs: Tensor, labels: Tensor, n_bins: int, out_dir: Path, stem: str, label: str
) -> list[Path]:
    """Write ``{stem}_conf.png`` (top-label) and ``{stem}_classwise.png`` (all classes pooled)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conf, hit = top_label(probs, labels)
    onehot = torch.nn.functional.one_hot(labels, probs.shape[1]).to(probs.dtype)
    panels = {
        "conf": (conf, hit, f"{label}: conf-ECE {float(conf_ece(probs, labels, n_bins)):.3f}"),
        "classwise": (
            probs.flatten(),
            onehot.flatten(),
            f"{label}: cw-ECE {float(classwise_ece(probs, labels, n_bins)):.3f}",
        ),
    }
    paths = []
    for kind, (p, y, title) in panels.items():
        fig, ax = plt.subplots(figsize=(4, 4), dpi=120)
        plot_reliability(ax, p, y, n_bins, title)
        fig.tight_layout()
        path = out_dir / f"{stem}_{kind}.png"
        atomic_write(path, lambda tmp, figure=fig: figure.savefig(tmp, format="png"))
        plt.close(fig)
        paths.append(path)
    return paths
