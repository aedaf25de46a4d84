"""The before/after tables printed at the end of a run."""

from __future__ import annotations

from calibration_lightning.calibration.metrics import METRICS

# Short column headers (the auto candidates' table must fit 120 columns).
HEADERS = {"adaptive_ece": "adapt_ece", "smooth_ece": "smooth_ece"}
COLUMNS = tuple(m for m in METRICS if m != "mce") + ("n",)
LABELS = {
    "conf_ece": "conf-ECE",
    "cw_ece": "cw-ECE",
    "accuracy": "accuracy",
    "brier": "Brier",
    "nll": "NLL",
    "mce": "MCE",
    "adaptive_ece": "adaptive ECE",
    "smooth_ece": "smECE",
}


def format_table(rows: list[tuple[str, dict]], columns: tuple[str, ...] = COLUMNS) -> str:
    """A plain-text table: one row per (label, metrics) pair, one column per metric."""
    width = max(len(label) for label, _ in rows) if rows else 5
    heads = [HEADERS.get(c, c) for c in columns]
    widths = [max(9, len(h)) for h in heads]
    head = f"{'':<{width}}  " + "  ".join(f"{h:>{w}}" for h, w in zip(heads, widths))
    lines = [head, "-" * len(head)]
    for label, metrics in rows:
        cells = []
        for c, w in zip(columns, widths):
            v = metrics.get(c)
            text = f"{v}" if isinstance(v, int) else f"{v:.4f}" if isinstance(v, float) else "-"
            cells.append(f"{text:>{w}}")
        lines.append(f"{label:<{width}}  " + "  ".join(cells))
    return "\n".join(lines)


def with_interval(value: float, ci: list[float] | None, signed: bool = False) -> str:
    """``0.0792 [0.041, 0.121]``; the value alone without an interval."""
    point = f"{value:+.4f}" if signed else f"{value:.4f}"
    return point if ci is None else f"{point} [{ci[0]:.3f}, {ci[1]:.3f}]"


def format_comparison(name: str, method: str, before: dict, after: dict, improvement: dict) -> str:
    """One evaluation set, one row per metric: before and after with their intervals, the paired difference
    after - before with its interval, and whether that interval excludes 0."""
    head = (f"{name} (n={before['n']})", "before", f"after ({method})", "after - before", "excludes 0")
    rows = []
    for m, label in LABELS.items():
        if m not in before:
            continue
        d = improvement[m]
        excludes = "-" if d["excludes_zero"] is None else "yes" if d["excludes_zero"] else "no"
        rows.append(
            (
                label,
                with_interval(before[m], (before.get("ci95") or {}).get(m)),
                with_interval(after[m], (after.get("ci95") or {}).get(m)),
                with_interval(d["difference"], d["ci95"], signed=True),
                excludes,
            )
        )
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(f"{c:<{w}}" if i == 0 else f"{c:>{w}}" for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([line(head), "-" * len(line(head)), *map(line, rows)])
