"""Reliability diagrams: one PNG per evaluation set, before and after training side by side.

Each column (one phase, or one run in the report) holds two reliability panels, each with the histogram of
its predicted probabilities aligned below on the same x axis:

* confidence: accuracy of the top-label prediction per confidence bin, against the diagonal;
* classwise: how often class j is the gold answer per bin of ``p_j``, all classes pooled ("class frequency").

Observed values are bars with a 95% Wilson interval whisker; the gap to the bin's mean predicted probability is
a wider hatched box drawn behind the bar, so it never covers it; bins with fewer than ``FEW`` samples are greyed
over their whole height, their bars pale and dotted. Titles carry the numbers of metrics.json, given with each
column (``Column.metrics``), never computed here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from calibration_lightning.calibration.binning import bin_index, binned_sums
from calibration_lightning.calibration.metrics import top_label
from calibration_lightning.data.records import LETTERS
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

    Bars (labels ``observed`` and ``observed, n < FEW``) with a Wilson 95% whisker (``95% interval``); the gap to
    the bin's mean predicted probability is a wider hatched box behind the bar (``gap to mean prediction``), so
    it shows on both sides of the bar and never covers it. With ``hist_ax`` the histogram of ``p`` is drawn there
    on the same bins and takes the x label. See ``legend_handles`` for the key.
    """
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
    """The four panels of one column: confidence reliability and histogram, classwise reliability and
    histogram (``axes`` top to bottom)."""
    probs, labels, n_bins, m = column.probs.double(), column.labels, column.n_bins, column.metrics
    conf, hit = top_label(probs, labels)
    onehot = torch.nn.functional.one_hot(labels, probs.shape[1]).to(probs.dtype)
    conf_title = f"confidence: conf-ECE {m['conf_ece']:.4f}, accuracy {m['accuracy']:.3f}"
    plot_reliability(axes[0], conf, hit, n_bins, conf_title, hist_ax=axes[1])
    cw_title = f"classwise, classes pooled\ncw-ECE {m['cw_ece']:.4f} (the mean of the per-class ECEs)"
    plot_reliability(
        axes[2], probs.flatten(), onehot.flatten(), n_bins, cw_title,
        hist_ax=axes[3], xlabel="predicted probability", ylabel="class frequency",
    )  # fmt: skip
    axes[3].set_yscale("symlog", linthresh=10)  # the pooled 0-bin dwarfs the rest
    axes[3].set_ylim(0, max(float(len(labels) * probs.shape[1]), 10.0) * 4)


def reliability_figure(columns: list[Column], title: str | None = None, per_row: int = 5, dpi: int = 110):
    """A figure with one column of panels (``draw_column``) per entry of ``columns``, at most ``per_row`` side
    by side (more wrap onto further rows); returns the Figure, its columns in ``fig.subfigs``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ncols = min(len(columns), per_row)
    nrows = -(-len(columns) // ncols)
    fig = plt.figure(figsize=(4.1 * ncols, 9.6 * nrows), dpi=dpi, layout="constrained")
    if title:
        fig.suptitle(title, fontsize=11, fontweight="bold")
    key_columns = {1: 2, 2: 3}.get(ncols, 5)
    fig.legend(handles=legend_handles(), loc="outside lower center", ncol=key_columns, fontsize=7.5, frameon=False)
    for sub, column in zip(fig.subfigures(nrows, ncols, squeeze=False).flat, columns):
        grid = sub.add_gridspec(5, 1, height_ratios=[3, 1, 0.12, 3, 1])
        axes = [sub.add_subplot(grid[0])]
        axes.append(sub.add_subplot(grid[1], sharex=axes[0]))
        axes.append(sub.add_subplot(grid[3]))
        axes.append(sub.add_subplot(grid[4], sharex=axes[2]))
        sub.suptitle(column.heading, fontsize=10)
        draw_column(axes, column)
    return fig


def save_figure(fig, path: Path) -> Path:
    """Write ``fig`` to ``path`` as PNG, atomically, and close it."""
    import matplotlib.pyplot as plt

    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    return path


def read_predictions(path: Path) -> tuple[Tensor, Tensor]:
    """``probs [N, K]`` (float64, zeros past a row's own options) and gold ``labels [N]`` from a
    ``predictions_*.jsonl`` file of a run."""
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    probs = torch.zeros(len(rows), max((len(r["probabilities"]) for r in rows), default=1), dtype=torch.float64)
    for i, r in enumerate(rows):
        probs[i, : len(r["probabilities"])] = torch.tensor(list(r["probabilities"].values()), dtype=torch.float64)
    return probs, torch.tensor([LETTERS.index(r["gold"]) for r in rows], dtype=torch.long)


def phase_heading(set_name: str, phase: str, n: int) -> str:
    """The heading of a run's column, e.g. ``test, before training (N = 240)``."""
    return f"{set_name}, {phase} training (N = {n})"


def save_set_figure(out_dir: Path, set_name: str, phases: dict[str, tuple[Tensor, Tensor, dict]], n_bins: int):
    """Write ``reliability_{set_name}.png``: one column per phase (``"before"``, then ``"after"`` when given),
    each from ``probs [N, K]``, ``labels [N]`` and their reported metrics. Returns the (closed) Figure."""
    columns = [Column(phase_heading(set_name, phase, len(y)), p, y, n_bins, m) for phase, (p, y, m) in phases.items()]
    fig = reliability_figure(columns, title=f"Reliability on {set_name} ({n_bins} bins)")
    save_figure(fig, out_dir / f"reliability_{set_name}.png")
    return fig
