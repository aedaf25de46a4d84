"""The before/after table printed at the end of a run."""

from __future__ import annotations

from calibration_lightning.calibration.metrics import METRICS

COLUMNS = (*METRICS, "n")


def format_table(rows: list[tuple[str, dict]], columns: tuple[str, ...] = COLUMNS) -> str:
    """A plain-text table: one row per (label, metrics) pair."""
    width = max(len(label) for label, _ in rows) if rows else 5
    head = f"{'':<{width}}  " + "  ".join(f"{c:>9}" for c in columns)
    lines = [head, "-" * len(head)]
    for label, metrics in rows:
        cells = []
        for c in columns:
            v = metrics.get(c)
            cells.append(f"{v:>9}" if isinstance(v, int) else f"{v:>9.4f}" if isinstance(v, float) else f"{'-':>9}")
        lines.append(f"{label:<{width}}  " + "  ".join(cells))
    return "\n".join(lines)
