"""``python -m calibration_lightning.report DIR [DIR ...] [--out DIR]``: the paper's tables and figures from runs.

Reads every finished run (``metrics.json``, ``config.yaml``) under the folders and writes ``report.md``, ``.csv``,
``.tex`` and ``reliability.{pdf,svg,png}`` into ``--out`` (default: the first DIR); docs/outputs.md describes them.
Every number is read from metrics.json, never recomputed; an interval appears only beside its value (``reported``).
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

from calibration_lightning.errors import UserError
from calibration_lightning.outputs import diagrams
from calibration_lightning.outputs.files import write_text
from calibration_lightning.outputs.summary import with_interval
from calibration_lightning.predictions import interval_key
from calibration_lightning.predictions.readers import read_predictions

LABELS = {
    "conf_ece": "conf-ECE", "cw_ece": "cw-ECE", "accuracy": "accuracy", "brier": "Brier", "nll": "NLL", "mce": "MCE",
    "adaptive_ece": "adaptive ECE", "smooth_ece": "smECE",
    "conf_ece_debiased": "conf-ECE l2 (debiased)", "cw_ece_debiased": "cw-ECE l2 (debiased)",
}  # fmt: skip
TABLE = ("conf_ece", "cw_ece", "accuracy")  # the paper's columns, before and after
CHANGES = ("conf_ece", "cw_ece", "conf_ece_debiased", "cw_ece_debiased", "accuracy", "brier", "nll")
DEBIASED = {"conf_ece": "conf_ece_debiased", "cw_ece": "cw_ece_debiased"}  # the plug-in ECEs' debiased estimates
PHASES = ("before", "after")
SET_KEYS = ("before", "after", "improvement", "subjects")
MODEL_NAMES = {"smollm2_135m": "SmolLM2-135M-Instruct", "tiny": "tiny random Llama"}
METHOD_NAMES = {  # in the paper's row order
    "none": "aligned (no fine-tuning)", "ts": "temperature scaling (post-hoc)", "label_smoothing": "label smoothing",
    "cft": "CFT", "rcft": "RCFT", "auto": "auto: CFT or RCFT",
}  # fmt: skip


def reported(block: dict | None, metric: str, level: float) -> tuple[float | None, list[float] | None]:
    """``metric``'s value in a phase block of metrics.json and its interval at ``level`` (or ``None``)."""
    if not block or block.get(metric) is None:
        return None, None
    return block[metric], (block.get(interval_key(level)) or {}).get(metric)


def reported_change(
    improvement: dict | None, metric: str, level: float
) -> tuple[float | None, list | None, bool | None]:
    """``improvement[metric]``'s difference after - before, its interval at ``level`` and ``excludes_zero``."""
    d = (improvement or {}).get(metric)
    if d is None:
        return None, None, None
    return d["difference"], d.get(interval_key(level)), d.get("excludes_zero")


@dataclass
class RunResult:
    path: Path
    model: str  # metrics.json's label: the config's name, or the hub id / folder of model=hf
    method: str  # the method asked for (``auto``, not the candidate it kept)
    dataset: str
    sets: dict[str, dict]  # evaluation set (test first) -> {"before", "after", "improvement"[, "subjects"]}
    kept: str | None = None  # method=auto: the candidate it kept
    posthoc: bool = False  # fitted on the validation split after the model was scored (temperature scaling)
    level: float = 0.95
    win_rate: float | None = None  # after training, when the run measured it
    n_bins: int = 10  # the bins the run's own metrics used (its config.yaml)


def _v1(node: dict, level: float) -> dict:
    """A set of metrics.json schema 1 in schema 2's shape (schema 1 wrote ``ci95`` at every level). Its ``conf_ece``
    and ``cw_ece`` intervals were for the population l2 value, so they go with the debiased estimates of it."""
    key, node = interval_key(level), dict(node)
    for phase in PHASES:
        block = dict(node[phase])
        intervals = block.pop("ci95", None) or {}
        block[key] = {DEBIASED.get(m, m): ci for m, ci in intervals.items()}
        node[phase] = block
    old = node.get("improvement") or {}
    node["improvement"] = {
        m: {
            "difference": node["after"][m] - v,
            key: None if m in DEBIASED else (old.get(m) or {}).get("ci95"),
            "excludes_zero": None if m in DEBIASED else (old.get(m) or {}).get("excludes_zero"),
        }
        for m, v in node["before"].items()
        if m in LABELS and isinstance(v, (int, float)) and m in node["after"]
    }
    return node


def _read_run(metrics_path: Path) -> RunResult:
    folder = metrics_path.parent
    try:
        m = json.loads(metrics_path.read_text())
        config = yaml.safe_load((folder / "config.yaml").read_text()) if (folder / "config.yaml").exists() else {}
    except (OSError, ValueError, yaml.YAMLError) as e:
        raise UserError(f"{metrics_path.parent}: cannot read the run ({type(e).__name__}: {e})") from None
    if not isinstance(m, dict) or not {"before", "after"} <= set(m):
        raise UserError(f"{metrics_path}: no 'before' and 'after' blocks: not the metrics.json of a run")
    level = float((m.get("bootstrap") or {}).get("level", 0.95))
    sets = {"test": m, **m.get("eval_sets", {})}
    if m.get("schema_version", 1) < 2:
        sets = {name: _v1(node, level) for name, node in sets.items()}
    method = m.get("method", "?")
    requested = m.get("requested_method", method)
    model = config.get("model") or {}
    return RunResult(
        path=folder,
        model=str(m.get("model") or (model.get("loader") or {}).get("name_or_path") or model.get("name", "?")),
        method=requested,
        dataset=config.get("dataset", {}).get("name", "?"),
        sets={n: {k: v for k, v in node.items() if k in SET_KEYS} for n, node in sets.items()},
        kept=method if requested != method else None,
        posthoc=bool((config.get("method") or {}).get("calibrator")) or method == "ts",
        level=level,
        win_rate=((m.get("win_rate") or {}).get("after") or {}).get("win_rate"),
        n_bins=int(config.get("n_bins", 10)),
    )


def find_runs(dirs: list[Path]) -> list[RunResult]:
    """Every finished run (a folder with metrics.json) under ``dirs``, in the report's order."""
    runs = []
    for root in dirs:
        if not root.exists():
            raise UserError(f"{root}: no such folder")
        runs += [_read_run(p) for p in sorted(root.rglob("metrics.json"))]
    return sorted(runs, key=_sort_key)


def _sort_key(run: RunResult):
    order = list(METHOD_NAMES).index(run.method) if run.method in METHOD_NAMES else len(METHOD_NAMES)
    return run.dataset, model_name(run.model).casefold(), order, str(run.path)


def model_name(label: str) -> str:
    """``smollm2_135m`` -> ``SmolLM2-135M-Instruct``; a hub id as it is; a local folder by its name; ``+ADAPTER``
    (``model.adapter``) as ``+ adapter NAME``."""
    base, _, adapter = label.partition("+")
    path = Path(base)
    local = path.is_absolute() or base.startswith((".", "~")) or len(path.parts) > 2
    name = MODEL_NAMES.get(base, path.name if local else base)
    return f"{name} + adapter {Path(adapter).name}" if adapter else name


def method_name(method: str, kept: str | None = None) -> str:
    """``CFT``, ``temperature scaling (post-hoc)``, ``auto: CFT or RCFT (kept RCFT)``, ..."""
    name = METHOD_NAMES.get(method, method)
    return f"{name} (kept {METHOD_NAMES.get(kept, kept)})" if kept else name


def after_label(method: str, kept: str | None = None, posthoc: bool = False) -> str:
    """What a run's "after" column shows: ``after CFT``, ``after temperature scaling (post-hoc)``, ..."""
    if method == "none":
        return "aligned (no fine-tuning)"
    name = method_name(method, kept)
    return f"after {name}" + (" (post-hoc)" if posthoc and "post-hoc" not in name else "")


def _cell(value, ci=None, signed: bool = False) -> str:
    return "-" if value is None else with_interval(value, ci, signed=signed)


def _sections(runs: list[RunResult]) -> dict[tuple[str, str], list[tuple[RunResult, dict]]]:
    """Runs grouped by (dataset, evaluation set), each with its set's node, in the report's order."""
    sections: dict[tuple[str, str], list] = {}
    for run in runs:
        for name, node in run.sets.items():
            sections.setdefault((run.dataset, name), []).append((run, node))
    return sections


def markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows]) + "\n"


def markdown_report(runs: list[RunResult]) -> str:
    """report.md: per (dataset, set) the paper's columns before and after, then the paired changes, the legend."""
    with_win_rate = any(r.win_rate is not None for r in runs)
    parts = []
    for (dataset, name), entries in _sections(runs).items():
        header = ["model", "method", "n", *(f"{LABELS[m]} {p}" for m in TABLE for p in PHASES)]
        header += ["win rate"] if with_win_rate and name == "test" else []
        changes = ["model", "method", *(LABELS[m] for m in CHANGES)]
        rows, change_rows = [], []
        for run, node in entries:
            ids = [model_name(run.model), method_name(run.method, run.kept)]
            cells = [_cell(*reported(node[p], m, run.level)) for m in TABLE for p in PHASES]
            win = [_cell(run.win_rate)] if with_win_rate and name == "test" else []
            rows.append([*ids, str(node["after"].get("n", "-")), *cells, *win])
            moved = [reported_change(node["improvement"], m, run.level) for m in CHANGES]
            if run.method != "none":  # its "after" is its "before"
                change_rows.append([*ids, *(_cell(d, ci, signed=True) + ("*" if z else "") for d, ci, z in moved)])
        paired = "after - before, paired (the same resampled questions before and after):"
        parts.append(f"## {dataset}: {name}\n\n{markdown(header, rows)}\n{paired}\n\n{markdown(changes, change_rows)}")
    return "\n".join(parts) + (
        f"\n[lo, hi]: the {_levels(runs)} bootstrap interval of the value it follows, where metrics.json has one"
        " for that very value; * the interval of a change excludes 0. conf-ECE and cw-ECE are the paper's plug-in"
        " binned ECE (l1); the l2 (debiased) columns estimate the squared-gap binned ECE of the population.\n"
    )


def subject_tables(runs: list[RunResult]) -> str:
    """report.md's per-subject tables: one per run and set whose questions carry a subject."""
    parts = []
    for r in runs:
        for name, s in r.sets.items():
            if not s.get("subjects"):
                continue
            header = ["subject", "n", "conf-ECE before", "conf-ECE after", "acc before", "acc after"]
            rows = [
                [subject, str(v["after"]["n"]), *(_cell(v[p][m]) for m in ("conf_ece", "accuracy") for p in PHASES)]
                for subject, v in s["subjects"].items()
            ]
            title = f"{model_name(r.model)} / {method_name(r.method, r.kept)} / {r.dataset}: {name}, per subject"
            parts.append(f"\n### {title}\n\n{markdown(header, rows)}")
    return "".join(parts)


CSV_HEADER = ["model", "method", "dataset", "set", "metric", "n", "level"]
CSV_HEADER += [f"{p}{end}" for p in ("before", "after", "difference") for end in ("", "_lo", "_hi")]
CSV_HEADER += ["excludes_zero", "run"]


def csv_rows(runs: list[RunResult]) -> list[dict]:
    """report.csv: one row per run, set and metric (metrics.json's keys), unrounded; empty where none."""
    rows = []
    for run in runs:
        ids = {"model": run.model, "method": f"auto ({run.kept})" if run.kept else run.method, "run": str(run.path)}
        for name, node in run.sets.items():
            for m in (m for m in LABELS if m in node["after"]):
                row = {**ids, "dataset": run.dataset, "set": name, "metric": m, "n": node["after"].get("n")}
                row["level"] = run.level
                for phase in PHASES:
                    row[phase], ci = reported(node[phase], m, run.level)
                    row[f"{phase}_lo"], row[f"{phase}_hi"] = ci or (None, None)
                row["difference"], ci, row["excludes_zero"] = reported_change(node["improvement"], m, run.level)
                row["difference_lo"], row["difference_hi"] = ci or (None, None)
                rows.append(row)
        if run.win_rate is not None:
            rows.append({**ids, "dataset": run.dataset, "set": "test", "metric": "win_rate", "after": run.win_rate})
    return rows


def to_csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, CSV_HEADER, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in rows)
    return buffer.getvalue()


def tex_escape(text: str) -> str:
    """``text`` as LaTeX typesets it literally."""
    special = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_"}
    special.update({"{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"})
    return "".join(special.get(c, c) for c in text)


def _tex_cell(value, ci) -> str:
    if value is None:
        return "--"
    return f"{value:.4f}" + ("" if ci is None else rf" {{\scriptsize[{ci[0]:.3f}, {ci[1]:.3f}]}}")


def latex_table(runs: list[RunResult]) -> str:
    """report.tex: the paper's Table 2 (models x methods; before and after: conf-ECE, cw-ECE, accuracy), in a
    small article pdflatex compiles alone."""
    width = 2 + 2 * len(TABLE)
    heads = " & ".join(["Model", "Method", *[{"accuracy": "Acc."}.get(m, LABELS[m]) for m in TABLE] * 2])
    lines = [
        rf"\begin{{tabular}}{{ll{'r' * 2 * len(TABLE)}}}",
        r"\toprule",
        rf" & & \multicolumn{{{len(TABLE)}}}{{c}}{{before}} & \multicolumn{{{len(TABLE)}}}{{c}}{{after}} \\",
        rf"\cmidrule(lr){{3-{2 + len(TABLE)}}}\cmidrule(lr){{{3 + len(TABLE)}-{width}}}",
        heads + r" \\",
    ]
    for (dataset, name), entries in _sections(runs).items():
        sizes = sorted({node["after"].get("n", 0) for _, node in entries})
        lines += [r"\midrule", rf"\multicolumn{{{width}}}{{l}}{{\textit{{{tex_escape(f'{dataset}, {name}')}"
                  rf" (N = {', '.join(map(str, sizes))})}}}} \\"]  # fmt: skip
        previous = None
        for run, node in entries:
            model = model_name(run.model)
            cells = [_tex_cell(*reported(node[p], m, run.level)) for p in PHASES for m in TABLE]
            shown = tex_escape(model) if model != previous else ""
            lines.append(" & ".join([shown, tex_escape(method_name(run.method, run.kept)), *cells]) + r" \\")
            previous = model
    lines += [r"\bottomrule", r"\end{tabular}"]
    note = (
        rf"ECE: the plug-in binned ECE ($\ell_1$, {', '.join(sorted({str(r.n_bins) for r in runs}))} equal-width"
        r" bins) the paper reports; conf-ECE bins the top-label confidence, cw-ECE averages over the classes."
        rf" [lo, hi]: the {tex_escape(_levels(runs))} bootstrap interval of the value it follows (questions"
        r" resampled). Post-hoc methods are fitted on the validation split and applied to the evaluation set;"
        r" ``before'' is the aligned model."
    )
    return "\n".join(
        [
            "% python -m calibration_lightning.report: compiles with pdflatex; copy the tabular into a paper",
            r"\documentclass{article}",
            r"\usepackage{booktabs}",
            r"\pagestyle{empty}",
            r"\newsavebox{\tablebox}\newsavebox{\pagebox}",
            r"\begin{document}",
            r"\begin{lrbox}{\tablebox}\small",
            *lines,
            r"\end{lrbox}",
            # a page cut to the table and its note (what the standalone class does; texlive-latex-base lacks it)
            r"\begin{lrbox}{\pagebox}\begin{minipage}{\wd\tablebox}",
            rf"\usebox{{\tablebox}}\par\smallskip{{\raggedright\footnotesize {note}\par}}",
            r"\end{minipage}\end{lrbox}",
            r"\pdfpagewidth=\dimexpr\wd\pagebox+1cm\relax \pdfpageheight=\dimexpr\ht\pagebox+\dp\pagebox+1cm\relax",
            r"\hoffset=-1in \voffset=-1in \oddsidemargin=0.5cm \topmargin=0.5cm \headheight=0pt \headsep=0pt",
            r"\hsize=\wd\pagebox \noindent\usebox{\pagebox}",
            r"\end{document}",
            "",
        ]
    )


def _levels(runs: list[RunResult]) -> str:
    """The runs' interval levels in words: ``95%`` (``90%, 95%`` when they differ)."""
    return ", ".join(f"{level * 100:g}%" for level in sorted({r.level for r in runs}))


def _phase_column(run: RunResult, set_name: str, phase: str, heading: str) -> diagrams.Column | None:
    """One phase of a run's set as a figure column (None when the run kept no predictions for it)."""
    stem = phase if set_name == "test" else f"{set_name}_{phase}"
    path = run.path / f"predictions_{stem}.jsonl"
    if not path.exists():
        return None
    p = read_predictions(path)
    block = run.sets[set_name][phase]
    return diagrams.Column(f"{heading} (N = {len(p.labels)})", p.probs, p.labels, run.n_bins, block)


def _same(a: diagrams.Column, b: diagrams.Column) -> bool:
    return a.probs.shape == b.probs.shape and torch.equal(a.probs, b.probs) and torch.equal(a.labels, b.labels)


def figure_rows(runs: list[RunResult], set_name: str) -> list[list[diagrams.Column]]:
    """Per model and dataset, a row of columns: the aligned model once (when every run scored it alike, else
    before each run), then each run's "after"."""
    rows: dict[tuple[str, str], list] = {}
    for run in (r for r in runs if set_name in r.sets):
        model = model_name(run.model)
        before = _phase_column(run, set_name, "before", f"{model}\naligned model (before)")
        after = _phase_column(run, set_name, "after", f"{model}\n{after_label(run.method, run.kept, run.posthoc)}")
        row = rows.setdefault((run.dataset, model), [])
        if before is not None and not any(_same(before, c) for c in row):
            row.append(before)
        if after is not None and run.method != "none":  # method=none's "after" is its "before"
            row.append(after)
    return [row for row in rows.values() if row]


def write_figures(runs: list[RunResult], out: Path) -> list[Path]:
    """``reliability.{pdf,svg,png}`` for the test set (``reliability_{set}.*`` for the others): one row per
    model, its aligned model then each method (confidence panels only)."""
    written = []
    for set_name in dict.fromkeys(name for r in runs for name in r.sets):
        rows = figure_rows(runs, set_name)
        if not rows:
            continue
        per_row = max(len(row) for row in rows)
        columns = [c for row in rows for c in row + [None] * (per_row - len(row))]
        title = f"Reliability on {set_name}: the aligned model and each method"
        fig = diagrams.reliability_figure(columns, title=title, per_row=per_row, classwise=False)
        stem = "reliability" if set_name == "test" else f"reliability_{set_name}"
        written += [diagrams.save_figure(fig, out / f"{stem}.{fmt}") for fmt in ("pdf", "svg", "png")]
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m calibration_lightning.report", description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+", type=Path, help="run or multirun folders")
    parser.add_argument("--out", type=Path, default=None, help="where to write report.md / .csv / .tex and figures")
    args = parser.parse_args(argv)
    try:
        runs = find_runs(args.dirs)
        if not runs:
            raise UserError(f"no finished run (metrics.json) under {', '.join(map(str, args.dirs))}")
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = args.out or args.dirs[0]
    text, subjects = markdown_report(runs), subject_tables(runs)
    write_text(out / "report.md", text + subjects)
    write_text(out / "report.csv", to_csv(csv_rows(runs)))
    write_text(out / "report.tex", latex_table(runs))
    figures = write_figures(runs, out)
    print(text + ("\n(per-subject tables in report.md)" if subjects else ""))
    names = ["report.md", "report.csv", "report.tex", *(p.name for p in figures)]
    print(f"{len(runs)} runs -> {out}/: {', '.join(names)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
