"""The before/after tables printed at the end of a run."""

from __future__ import annotations

import textwrap

from calibration_lightning.calibration.metrics import METRICS
from calibration_lightning.predictions import interval_key

# Short column headers (the auto candidates' table must fit 120 columns).
HEADERS = {"adaptive_ece": "adapt_ece", "smooth_ece": "smooth_ece"}
COLUMNS = tuple(m for m in METRICS if m != "mce") + ("n",)
# The before/after table's rows: each plug-in ECE (the paper's, no interval) above its debiased l2 estimate.
ROWS = {
    "conf_ece": "conf-ECE plug-in (paper)", "conf_ece_debiased": "conf-ECE debiased l2",
    "cw_ece": "cw-ECE plug-in (paper)", "cw_ece_debiased": "cw-ECE debiased l2",
    "accuracy": "accuracy", "brier": "Brier", "nll": "NLL",
    "adaptive_ece": "adaptive ECE (plug-in)", "smooth_ece": "smECE",
}  # fmt: skip


def format_table(rows: list[tuple[str, dict]]) -> str:
    """A plain-text table: one row per (label, metrics) pair, one column per metric."""
    width = max(len(label) for label, _ in rows) if rows else 5
    heads = [HEADERS.get(c, c) for c in COLUMNS]
    widths = [max(9, len(h)) for h in heads]
    head = f"{'':<{width}}  " + "  ".join(f"{h:>{w}}" for h, w in zip(heads, widths))
    lines = [head, "-" * len(head)]
    for label, metrics in rows:
        cells = []
        for c, w in zip(COLUMNS, widths):
            v = metrics.get(c)
            text = f"{v}" if isinstance(v, int) else f"{v:.4f}" if isinstance(v, float) else "-"
            cells.append(f"{text:>{w}}")
        lines.append(f"{label:<{width}}  " + "  ".join(cells))
    return "\n".join(lines)


def with_interval(value: float, ci: list[float] | None, signed: bool = False) -> str:
    """``0.0792 [0.041, 0.121]``; the value alone without an interval."""
    point = f"{value:+.4f}" if signed else f"{value:.4f}"
    return point if ci is None else f"{point} [{ci[0]:.3f}, {ci[1]:.3f}]"


def _cell(value: float, intervals: dict | None, metric: str, signed: bool = False) -> str:
    """The value with its interval; ``[n/a]`` where the interval is null (its reason is in metrics.json)."""
    ci = (intervals or {}).get(metric)
    return with_interval(value, ci, signed) + (" [n/a]" if ci is None and metric in (intervals or {}) else "")


def format_comparison(name: str, method: str, before: dict, after: dict, improvement: dict, level: float = 0.95) -> str:
    """One evaluation set, one row per metric: before, after and the paired difference, each with its interval,
    and whether the difference's excludes 0; below, the reason of every null interval."""
    key = interval_key(level)
    head = (f"{name} (n={before['n']})", "before", f"after ({method})", "after - before", "excludes 0")
    rows, reasons, blocks = [], {}, (before, after)
    for m, label in ROWS.items():
        if m not in before:
            continue
        d, has_interval = improvement[m], m in before.get(key, {})
        excludes = "-" if d["excludes_zero"] is None else "yes" if d["excludes_zero"] else "no"
        change = _cell(d["difference"], {m: d[key]} if has_interval else None, m, signed=True)
        rows.append((label, _cell(before[m], before.get(key), m), _cell(after[m], after.get(key), m), change, excludes))
        nulls = {phase: (block.get(f"{key}_null") or {}).get(m) for phase, block in zip(("before", "after"), blocks)}
        nulls["change"] = d.get(f"{key}_null") if has_interval else None
        for where, why in nulls.items():
            if why:
                reasons.setdefault(why, {}).setdefault(label, []).append(where)
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(f"{c:<{w}}" if i == 0 else f"{c:>{w}}" for i, (c, w) in enumerate(zip(cells, widths)))

    notes = []
    for why, where in reasons.items():
        spots = "; ".join(f"{label} {'/'.join(phases)}" for label, phases in where.items())
        notes.append(textwrap.fill(f"[n/a] {spots}: {why}", 120, subsequent_indent="  "))
    return "\n".join([line(head), "-" * len(line(head)), *map(line, rows), *notes])


def interval_note(level: float, resamples: int) -> str:
    """The footnote of the before/after table (lines within 120 columns)."""
    return (
        f"[lo, hi]: {100 * level:g}% interval for the population value of the number beside it, {resamples} resamples"
        " of the questions;\ndebiased l2 ECE (sqrt of the unbiased binned squared gap): bootstrap test inversion;"
        " accuracy, Brier, NLL: percentile.\nThe paper's plug-in ECEs, adaptive ECE and smECE: no interval (a plug-in"
        " ECE is biased upward near calibration).\nafter - before: paired (the same resamples); excludes 0: the paired"
        f" test of no change at level {1 - level:.4g}. docs/statistics.md"
    )
