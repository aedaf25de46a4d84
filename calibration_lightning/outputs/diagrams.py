"""Reliability diagrams (docs/outputs.md): a run's ``reliability_{set}.png``, the report's figures and the public
``reliability_diagram`` all draw their columns here. Titles carry the numbers of metrics.json (``Column.metrics``),
never computed here. Figures are built without pyplot: no global backend or figure list is touched, so a notebook's
own backend stays as it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from calibration_lightning.calibration.binning import bin_index, binned_sums
from calibration_lightning.calibration.metrics import accuracy, classwise_ece, conf_ece, top_label
from calibration_lightning.outputs.files import atomic_write

FEW = 10  # a bin with fewer samples is drawn pale: its observed frequency is too noisy to read
Z95 = 1.959964
BAR, BAR_EDGE, SPARSE, GAP, GAP_FILL = "#2f6fb0", "#1f3f66", "#b4cde8", "#d62728", "#fbe3e3"
HIST, HIST_SPARSE, FEW_SHADE = "#7f7f7f", "#d9d9d9", "#ececec"


@dataclass(frozen=True)
class Column:
    """What one column of a reliability figure shows: ``probs [N, K]`` and gold ``labels [N]`` on ``n_bins``,
    titled with ``metrics`` (the run's reported conf_ece, accuracy and cw_ece of these predictions)."""

    heading: str
    probs: Tensor
    labels: Tensor
    n_bins: int
    metrics: dict


def reliability_bins(p: Tensor, y: Tensor, n_bins: int) -> tuple[Tensor, Tensor, Tensor]:
    """Per bin: mean predicted probability, observed frequency, count (flat ``p`` and ``y``)."""
    idx = bin_index(p, n_bins)
    count = binned_sums(idx, torch.ones_like(p), n_bins)
    mean_p = binned_sums(idx, p, n_bins) / count.clamp_min(1)
    freq = binned_sums(idx, y.to(p.dtype), n_bins) / count.clamp_min(1)
    return mean_p, freq, count


def wilson_interval(freq: Tensor, count: Tensor, z: float = Z95) -> tuple[Tensor, Tensor]:
    """Wilson score interval of a binomial proportion ``freq`` observed on ``count`` trials (``[0, 1]`` if none)."""
    n = count.clamp_min(1)
    centre = (freq + z**2 / (2 * n)) / (1 + z**2 / n)
    half = z / (1 + z**2 / n) * torch.sqrt(freq * (1 - freq) / n + z**2 / (4 * n**2))
    empty = count == 0
    # at freq 0 or 1 a bound equals freq up to a rounding error: keep freq inside its interval
    low = torch.minimum(centre - half, freq).clamp(0, 1).masked_fill(empty, 0.0)
    high = torch.maximum(centre + half, freq).clamp(0, 1).masked_fill(empty, 1.0)
    return low, high


def plot_reliability(
    ax, p: Tensor, y: Tensor, n_bins: int, title: str, *, hist_ax=None, xlabel="confidence", ylabel="accuracy"
) -> None:
    """Observed frequency per bin of ``p`` (flat ``[M]``) against the diagonal; ``y`` (``[M]``, 0/1) the outcome.
    The gap to the bin's mean prediction is a wider hatched box behind the bar, so it never covers it. With
    ``hist_ax`` the histogram of ``p`` is drawn there on the same bins and takes the x label."""
    mean_p, freq, count = reliability_bins(p.double(), y.double(), n_bins)
    width = 1.0 / n_bins
    centers = (torch.arange(n_bins, dtype=torch.float64) + 0.5) * width
    sparse, dense, nonempty = (count > 0) & (count < FEW), count >= FEW, count > 0
    ax.plot([0, 1], [0, 1], color="0.35", linestyle="--", linewidth=1, zorder=1, label="perfect calibration")
    _shade_few(ax, centers[sparse], width)
    ax.bar(
        centers[nonempty], (mean_p - freq)[nonempty], bottom=freq[nonempty], width=width * 0.9, color=GAP_FILL,
        hatch="////", edgecolor=GAP, linewidth=0.8, zorder=2, label="gap to mean prediction",
    )  # fmt: skip
    for mask, color, hatch, label in ((dense, BAR, None, "observed"), (sparse, SPARSE, "...", f"observed, n < {FEW}")):
        if mask.any():
            ax.bar(
                centers[mask], freq[mask], width=width * 0.55, color=color, hatch=hatch,
                edgecolor=BAR_EDGE, linewidth=0.8, zorder=3, label=label,
            )  # fmt: skip
    low, high = wilson_interval(freq, count)
    ax.errorbar(
        centers[nonempty], freq[nonempty], yerr=torch.stack([freq - low, high - freq])[:, nonempty],
        fmt="none", ecolor="black", elinewidth=0.9, capsize=2.5, zorder=4, label="95% interval",
    )  # fmt: skip
    ax.set(xlim=(0, 1), ylim=(0, 1.02), ylabel=ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.25, linewidth=0.5)
    if hist_ax is None:
        ax.set_xlabel(xlabel)
        return
    ax.tick_params(labelbottom=False)
    hist_ax.bar(centers[dense], count[dense], width=width * 0.9, color=HIST, edgecolor="none", label="count")
    hist_ax.bar(
        centers[sparse], count[sparse], width=width * 0.9, color=HIST_SPARSE, hatch="...", edgecolor="0.45",
        label=f"count < {FEW}",
    )  # fmt: skip
    _shade_few(hist_ax, centers[sparse], width)
    hist_ax.set(xlim=(0, 1), xlabel=xlabel, ylabel="count")
    hist_ax.set_ylim(0, max(float(count.max()), 1.0) * 1.35)
    for c, n in zip(centers.tolist(), count.tolist()):
        if n > 0:
            hist_ax.text(c, n, f"{int(n)}", ha="center", va="bottom", fontsize=6)
    hist_ax.grid(alpha=0.25, linewidth=0.5)


def _shade_few(ax, centers: Tensor, width: float) -> None:
    """Grey the whole height of each low-count bin, so it shows even where its bar has height 0."""
    for c in centers.tolist():
        ax.axvspan(c - width / 2, c + width / 2, color=FEW_SHADE, zorder=0, linewidth=0, gid="few")


def legend_handles() -> list:
    """Proxy artists for the key of ``plot_reliability`` (the same in every panel, shown once per figure)."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    return [
        Line2D([], [], color="0.35", linestyle="--", linewidth=1, label="perfect calibration"),
        Patch(facecolor=BAR, edgecolor=BAR_EDGE, label="observed"),
        Patch(facecolor=SPARSE, edgecolor=BAR_EDGE, hatch="...", label=f"observed, n < {FEW} samples (grey bin)"),
        Line2D([], [], color="black", marker="_", markersize=8, linewidth=0.9, label="95% interval (Wilson)"),
        Patch(facecolor=GAP_FILL, edgecolor=GAP, hatch="////", label="gap to mean prediction"),
    ]


def draw_column(axes, column: Column) -> None:
    """The panels of one column, ``axes`` top to bottom: confidence reliability and its histogram, then (with
    four axes) classwise reliability and its histogram."""
    probs, labels, n_bins, m = column.probs.double(), column.labels, column.n_bins, column.metrics
    conf, hit = top_label(probs, labels)
    conf_title = f"confidence: conf-ECE {m['conf_ece']:.4f}, accuracy {m['accuracy']:.3f}"
    plot_reliability(axes[0], conf, hit, n_bins, conf_title, hist_ax=axes[1])
    if len(axes) == 2:
        return
    onehot = torch.nn.functional.one_hot(labels, probs.shape[1]).to(probs.dtype)
    cw_title = f"classwise, classes pooled\ncw-ECE {m['cw_ece']:.4f} (the mean of the per-class ECEs)"
    plot_reliability(
        axes[2], probs.flatten(), onehot.flatten(), n_bins, cw_title,
        hist_ax=axes[3], xlabel="predicted probability", ylabel="class frequency",
    )  # fmt: skip
    axes[3].set_yscale("symlog", linthresh=10)  # the pooled 0-bin dwarfs the rest
    axes[3].set_ylim(0, max(float(len(labels) * probs.shape[1]), 10.0) * 4)


def reliability_figure(
    columns: list[Column | None], title: str | None = None, per_row: int = 5, dpi: int = 150, classwise: bool = True
):
    """A figure with one column of panels (``draw_column``) per entry of ``columns`` (``None``: an empty slot), at
    most ``per_row`` side by side; without ``classwise``, the confidence panels only. Its columns: ``fig.subfigs``."""
    from matplotlib.figure import Figure

    ncols = min(len(columns), per_row)
    nrows = -(-len(columns) // ncols)
    fig = Figure(figsize=(4.1 * ncols, (9.6 if classwise else 4.9) * nrows), dpi=dpi, layout="constrained")
    if title:
        fig.suptitle(title, fontsize=11, fontweight="bold")
    key_columns = {1: 2, 2: 3}.get(ncols, 5)
    fig.legend(handles=legend_handles(), loc="outside lower center", ncol=key_columns, fontsize=7.5, frameon=False)
    ratios = [3, 1, 0.12, 3, 1] if classwise else [3, 1]
    for sub, column in zip(fig.subfigures(nrows, ncols, squeeze=False).flat, columns):
        if column is None:
            continue
        grid = sub.add_gridspec(len(ratios), 1, height_ratios=ratios)
        axes = []
        for row in (0, 3) if classwise else (0,):
            axes.append(sub.add_subplot(grid[row]))
            axes.append(sub.add_subplot(grid[row + 1], sharex=axes[-1]))
        sub.suptitle(column.heading, fontsize=10)
        draw_column(axes, column)
    return fig


FORMATS = {".png": "png", ".pdf": "pdf", ".svg": "svg"}
# no creation date inside vector files: the same figure gives the same bytes
METADATA = {"pdf": {"CreationDate": None}, "svg": {"Date": None}}


def save_figure(fig, path: str | Path) -> Path:
    """Write ``fig`` to ``path`` atomically, in the format its suffix names (.png, .pdf or .svg)."""
    path = Path(path)
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"{path}: a figure is written as {', '.join(FORMATS)}, not {path.suffix or 'no suffix'!r}")
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format=fmt, metadata=METADATA.get(fmt)))


def _as_tensor(x) -> Tensor:
    if isinstance(x, Tensor):
        return x.detach().cpu()
    import numpy as np

    return torch.as_tensor(np.ascontiguousarray(x))  # numpy views with negative strides included


def as_probabilities(probs, labels) -> tuple[Tensor, Tensor]:
    """``probs [N, K]`` (float64) and ``labels [N]`` (long) from torch or numpy; a 1-D ``probs`` is the
    probability of class 1 of a binary problem (``labels`` 0/1). Anything else raises ``ValueError``."""
    probs, labels = _as_tensor(probs).double(), _as_tensor(labels)
    if probs.ndim == 1:
        probs = torch.stack([1 - probs, probs], dim=1)
    if probs.ndim != 2 or probs.shape[1] < 2 or len(probs) == 0:
        raise ValueError(f"probs must be [N, K] (K >= 2, N >= 1) or [N] binary, got shape {tuple(probs.shape)}")
    if labels.shape != probs.shape[:1] or labels.dtype.is_floating_point and bool((labels != labels.round()).any()):
        raise ValueError(f"labels must be [N] = [{len(probs)}] class indices, got {labels.dtype} {tuple(labels.shape)}")
    labels = labels.long()
    if not bool(((labels >= 0) & (labels < probs.shape[1])).all()):
        raise ValueError(f"labels must be in [0, {probs.shape[1]}), got {labels.min().item()}..{labels.max().item()}")
    if not bool(torch.isfinite(probs).all() & (probs >= 0).all()) or not torch.allclose(
        probs.sum(1), torch.ones(len(probs), dtype=probs.dtype), atol=1e-3
    ):
        raise ValueError("probs must be probabilities: finite, >= 0, each row summing to 1 (not logits)")
    return probs, labels


def reliability_diagram(
    probs, labels, *, n_bins: int = 10, title: str | None = None, path: str | Path | None = None,
    metrics: dict | None = None, classwise: bool = True, dpi: int = 150,
):  # fmt: skip
    """Draw the reliability diagram a run draws for its test set, from arrays; returns the matplotlib ``Figure``.

    Args:
        probs: ``[N, K]`` probabilities (rows sum to 1), or ``[N]`` probabilities of class 1 of a binary problem;
            a torch tensor or a numpy array.
        labels: ``[N]`` gold class indices (0/1 for binary).
        path: when given, the figure is written there (atomically), as .png, .pdf or .svg from its suffix.
        metrics: the numbers for the panel titles (``conf_ece``, ``accuracy``, ``cw_ece``), e.g. a phase block of
            metrics.json; by default they are computed from ``probs`` and ``labels``.
    """
    probs, labels = as_probabilities(probs, labels)
    if metrics is None:
        ece = {"conf_ece": conf_ece(probs, labels, n_bins), "cw_ece": classwise_ece(probs, labels, n_bins)}
        metrics = {k: float(v) for k, v in {**ece, "accuracy": accuracy(probs, labels)}.items()}
    heading = title or f"N = {len(labels)}, {n_bins} bins"
    fig = reliability_figure([Column(heading, probs, labels, n_bins, metrics)], dpi=dpi, classwise=classwise)
    if path is not None:
        save_figure(fig, path)
    return fig


def save_set_figure(
    out_dir: Path, set_name: str, phases: dict[str, tuple[Tensor, Tensor, dict]], n_bins: int,
    after_label: str = "after training",
):  # fmt: skip
    """Write ``reliability_{set_name}.png``: one column per phase (``"before"``, then ``"after"`` when given),
    each from ``probs [N, K]``, ``labels [N]`` and their reported metrics. Returns the Figure."""
    labels = {"before": "before training", "after": after_label}
    columns = [
        Column(f"{set_name}, {labels[phase]} (N = {len(y)})", p, y, n_bins, m) for phase, (p, y, m) in phases.items()
    ]
    fig = reliability_figure(columns, title=f"Reliability on {set_name} ({n_bins} bins)")
    save_figure(fig, out_dir / f"reliability_{set_name}.png")
    return fig
