"""``python -m calibration_lightning.report DIR [DIR ...]``: the paper-style table from finished runs.

Reads every ``metrics.json`` under the given folders (multirun folders, single runs, several of each),
and writes ``report.md``, ``report.csv`` and ``reliability.png`` (after-training reliability diagrams
side by side) into ``--out`` (default: the first DIR), then prints the table.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from calibration_lightning.outputs.diagrams import plot_reliability
from calibration_lightning.outputs.files import atomic_write, write_text

COLUMNS = (("conf_ece", "conf-ECE"), ("cw_ece", "cw-ECE"), ("accuracy", "acc"))
METHOD_ORDER = ("none", "ts", "label_smoothing", "cft", "rcft")


@dataclass
class RunResult:
    path: Path
    model: str
    method: str
    dataset: str
    sets: dict[str, dict]  # evaluation set -> after-training metrics (test set first)
    before: dict[str, dict]
    win_rate: float | None = None  # after training, when the run measured it
    n_bins: int = 10  # the bins the run's own metrics used (its config.yaml)


def find_runs(dirs: list[Path]) -> list[RunResult]:
    """Every finished run (a folder with metrics.json and config.yaml) under ``dirs``."""
    runs = []
    for root in dirs:
        if not root.exists():
            raise SystemExit(f"error: {root}: no such folder")
        for metrics_path in sorted(root.rglob("metrics.json")):
            folder = metrics_path.parent
            config = yaml.safe_load((folder / "config.yaml").read_text()) if (folder / "config.yaml").exists() else {}
            m = json.loads(metrics_path.read_text())
            sets = {"test": m["after"], **{n: v["after"] for n, v in m.get("eval_sets", {}).items()}}
            before = {"test": m["before"], **{n: v["before"] for n, v in m.get("eval_sets", {}).items()}}
            win_rate = (m.get("win_rate") or {}).get("after") or {}
            runs.append(
                RunResult(
                    folder,
                    config.get("model", {}).get("name", "?"),
                    m.get("method", "?"),
                    config.get("dataset", {}).get("name", "?"),
                    sets,
                    before,
                    win_rate.get("win_rate"),
                    int(config.get("n_bins", 10)),
                )
            )
    return runs


def _sort_key(run: RunResult):
    order = METHOD_ORDER.index(run.method) if run.method in METHOD_ORDER else len(METHOD_ORDER)
    return run.model, run.dataset, order, str(run.path)


def table_rows(runs: list[RunResult]) -> tuple[list[str], list[list[str]]]:
    """Header and rows: model, method, dataset, then conf-ECE / cw-ECE / accuracy per evaluation set."""
    set_names = []
    for r in runs:
        set_names += [s for s in r.sets if s not in set_names]
    with_win_rate = any(r.win_rate is not None for r in runs)
    header = ["model", "method", "dataset"] + [f"{s} {label}" for s in set_names for _, label in COLUMNS]
    header += ["win rate"] if with_win_rate else []
    rows = []
    for r in sorted(runs, key=_sort_key):
        cells = [r.model, r.method, r.dataset]
        for s in set_names:
            cells += [f"{r.sets[s][k]:.4f}" if s in r.sets else "-" for k, _ in COLUMNS]
        if with_win_rate:
            cells.append(f"{r.win_rate:.4f}" if r.win_rate is not None else "-")
        rows.append(cells)
    return header, rows


def markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows]) + "\n"


def to_csv(header: list[str], rows: list[list[str]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def reliability_figure(runs: list[RunResult], path: Path) -> None:
    """One after-training confidence reliability diagram per run, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = sorted(runs, key=_sort_key)
    fig, axes = plt.subplots(1, len(runs), figsize=(3.2 * len(runs), 3.4), dpi=110, squeeze=False)
    for ax, run in zip(axes[0], runs):
        rows = [json.loads(x) for x in (run.path / "predictions_after.jsonl").read_text().splitlines()]
        conf = torch.tensor([r["confidence"] for r in rows], dtype=torch.float64)
        hit = torch.tensor([float(r["correct"]) for r in rows], dtype=torch.float64)
        plot_reliability(
            ax, conf, hit, run.n_bins, f"{run.model} / {run.method}\nconf-ECE {run.sets['test']['conf_ece']:.3f}"
        )
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m calibration_lightning.report", description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+", type=Path, help="run or multirun folders")
    parser.add_argument("--out", type=Path, default=None, help="where to write report.md / .csv / .png")
    args = parser.parse_args(argv)
    runs = find_runs(args.dirs)
    if not runs:
        print(f"error: no finished run (metrics.json) under {', '.join(map(str, args.dirs))}", file=sys.stderr)
        return 2
    out = args.out or args.dirs[0]
    header, rows = table_rows(runs)
    text = markdown(header, rows)
    write_text(out / "report.md", text)
    write_text(out / "report.csv", to_csv(header, rows))
    reliability_figure(runs, out / "reliability.png")
    print(text)
    print(f"{len(runs)} runs -> {out}/report.md, report.csv, reliability.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
