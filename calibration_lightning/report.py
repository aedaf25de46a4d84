"""``python -m calibration_lightning.report DIR [DIR ...]``: the paper-style table from finished runs.

Reads every ``metrics.json`` under the given folders (multirun folders, single runs, several of each),
and writes ``report.md`` (one row per run and evaluation set, runs in the paper's order: each metric before,
after, and the difference with its bootstrap interval; then per-subject tables), ``report.csv`` (the same rows,
every metric and interval, unrounded) and ``reliability.png`` (after-training reliability diagrams side by
side) into ``--out`` (default: the first DIR), then prints the table.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from calibration_lightning.outputs import diagrams
from calibration_lightning.outputs.files import write_text

# Report columns: every metric, its label; the markdown table shows SHOWN, report.csv all of them.
METRIC_LABELS = {
    "conf_ece": "conf-ECE",
    "cw_ece": "cw-ECE",
    "accuracy": "acc",
    "adaptive_ece": "adaptive ECE",
    "smooth_ece": "smECE",
    "brier": "Brier",
    "nll": "NLL",
    "mce": "MCE",
}
PHASES = ("before", "after")
SHOWN = ("conf_ece", "cw_ece", "accuracy", "adaptive_ece", "smooth_ece")
METHOD_ORDER = ("none", "ts", "label_smoothing", "cft", "rcft")  # the paper's rows: aligned, TS, LS, CFT, RCFT


@dataclass
class RunResult:
    path: Path
    model: str
    method: str
    dataset: str
    sets: dict[str, dict]  # evaluation set (test first) -> {"before", "after", "improvement"[, "subjects"]}
    win_rate: float | None = None  # after training, when the run measured it
    n_bins: int = 10  # the bins the run's own metrics used (its config.yaml)


def _model_name(m: dict, config: dict) -> str:
    """The run's own label (metrics.json ``model``); for runs written before it, the config's model name,
    or the hub id / folder of ``model=hf``."""
    if m.get("model"):
        return str(m["model"])
    model = config.get("model", {})
    path = (model.get("loader") or {}).get("name_or_path")
    return str(path) if model.get("name") == "hf" and path else model.get("name", "?")


def _one_set(node: dict) -> dict:
    """A set's before / after / improvement; runs written before intervals get the point difference only."""
    before, after = node["before"], node["after"]
    improvement = node.get("improvement") or {
        k: {"difference": after[k] - v, "ci95": None, "excludes_zero": None}
        for k, v in before.items()
        if k in METRIC_LABELS and k in after
    }
    return {**node, "improvement": improvement}


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
            sets = {"test": _one_set(m), **{n: _one_set(v) for n, v in m.get("eval_sets", {}).items()}}
            win_rate = (m.get("win_rate") or {}).get("after") or {}
            runs.append(
                RunResult(
                    folder,
                    _model_name(m, config),
                    m.get("method", "?"),
                    config.get("dataset", {}).get("name", "?"),
                    sets,
                    win_rate.get("win_rate"),
                    int(config.get("n_bins", 10)),
                )
            )
    return runs


def _sort_key(run: RunResult):
    order = METHOD_ORDER.index(run.method) if run.method in METHOD_ORDER else len(METHOD_ORDER)
    return run.model, run.dataset, order, str(run.path)


def _number(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def _difference(d: dict | None) -> str:
    """``-0.0442 [-0.091, -0.003]*``: the difference after - before, its interval, * when it excludes 0."""
    if d is None:
        return "-"
    if d["ci95"] is None:
        return f"{d['difference']:+.4f}"
    return f"{d['difference']:+.4f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]" + ("*" if d["excludes_zero"] else "")


def table_rows(runs: list[RunResult]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of report.md: one row per run and evaluation set (runs in the paper's order), with
    each shown metric before, after, and after - before with its interval."""
    with_win_rate = any(r.win_rate is not None for r in runs)
    header = ["model", "method", "dataset", "set", "n"]
    for k in SHOWN:
        header += [f"{METRIC_LABELS[k]} before", f"{METRIC_LABELS[k]} after", f"{METRIC_LABELS[k]} after - before"]
    header += ["win rate"] if with_win_rate else []
    rows = []
    for r in sorted(runs, key=_sort_key):
        for name, s in r.sets.items():
            cells = [r.model, r.method, r.dataset, name, str(s["after"]["n"])]
            for k in SHOWN:
                cells += [_number(s["before"].get(k)), _number(s["after"].get(k)), _difference(s["improvement"].get(k))]
            if with_win_rate:
                cells.append(_number(r.win_rate) if name == "test" else "")
            rows.append(cells)
    return header, rows


def csv_rows(runs: list[RunResult]) -> tuple[list[str], list[list]]:
    """report.csv: one row per run and evaluation set; for every metric its value before and after, the
    difference, and the three intervals (empty when the run has none), unrounded."""
    header = ["model", "method", "dataset", "set", "n"]
    for k in METRIC_LABELS:
        header += [f"{k} {p}{end}" for p in ("before", "after", "difference") for end in ("", " lo", " hi")]
        header += [f"{k} excludes zero"]
    header += ["win rate", "path"]
    rows = []
    for r in sorted(runs, key=_sort_key):
        for name, s in r.sets.items():
            row = [r.model, r.method, r.dataset, name, s["after"]["n"]]
            for k in METRIC_LABELS:
                d = s["improvement"].get(k) or {}
                for value, ci in (
                    (s["before"].get(k), (s["before"].get("ci95") or {}).get(k)),
                    (s["after"].get(k), (s["after"].get("ci95") or {}).get(k)),
                    (d.get("difference"), d.get("ci95")),
                ):
                    row += [value, *(ci or ("", ""))]
                row.append("" if d.get("excludes_zero") is None else d["excludes_zero"])
            rows.append([*row, r.win_rate if r.win_rate is not None and name == "test" else "", str(r.path)])
    return header, rows


def subject_tables(runs: list[RunResult]) -> str:
    """report.md's per-subject tables: one per run and set whose questions carry a subject."""
    parts = []
    for r in sorted(runs, key=_sort_key):
        for name, s in r.sets.items():
            if not s.get("subjects"):
                continue
            header = ["subject", "n", "conf-ECE before", "conf-ECE after", "acc before", "acc after"]
            rows = [
                [subject, str(v["after"]["n"]), *(_number(v[p][k]) for k in ("conf_ece", "accuracy") for p in PHASES)]
                for subject, v in s["subjects"].items()
            ]
            title = f"\n### {r.model} / {r.method} / {r.dataset}: {name}, per subject\n\n"
            parts.append(title + markdown(header, rows))
    return "".join(parts)


LEGEND = (
    "\nafter - before [lo, hi]: the difference and its bootstrap interval (paired: the same resampled questions"
    " before and after); * the interval excludes 0. smECE: point values only.\n"
)


def markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows]) + "\n"


def to_csv(header: list[str], rows: list[list]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def _after_column(run: RunResult) -> diagrams.Column:
    """The run's after-training test predictions, as one column of the figure."""
    probs, labels = diagrams.read_predictions(run.path / "predictions_after.jsonl")
    heading = f"{run.model} / {run.method}\n{run.dataset}, after training (N = {len(labels)})"
    return diagrams.Column(heading, probs, labels, run.n_bins, run.sets["test"]["after"])


def reliability_figure(runs: list[RunResult], path: Path) -> None:
    """The after-training reliability diagrams of every run side by side: one column per run, drawn as the
    columns of each run's own ``reliability_test.png``."""
    columns = [_after_column(run) for run in sorted(runs, key=_sort_key)]
    diagrams.save_figure(diagrams.reliability_figure(columns, title="After training, test set"), path)


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
    text = markdown(*table_rows(runs)) + LEGEND
    subjects = subject_tables(runs)
    write_text(out / "report.md", text + subjects)
    write_text(out / "report.csv", to_csv(*csv_rows(runs)))
    reliability_figure(runs, out / "reliability.png")
    print(text + ("\n(per-subject tables in report.md)" if subjects else ""))
    print(f"{len(runs)} runs -> {out}/report.md, report.csv, reliability.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
