"""``python -m calibration_lightning.predictions FILE [FILE ...] [--before FILE] [--group NAME] --out DIR``.

Scores each prediction file as a run scores a phase (``docs/outputs.md``); a group's subtasks are also pooled
into one row, their questions together: lm-eval's group value where it weights subtasks by size, as mmlu does.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from calibration_lightning.calibration.bootstrap import INTERVALS, MIN_RESAMPLES, resamples_allowed
from calibration_lightning.errors import DataError, UserError
from calibration_lightning.outputs.diagrams import reliability_diagram
from calibration_lightning.outputs.files import write_json
from calibration_lightning.outputs.summary import with_interval
from calibration_lightning.predictions import SCHEMA_VERSION, evaluate_predictions
from calibration_lightning.predictions.readers import Predictions, lm_eval_run, padded, read_predictions
from calibration_lightning.report import LABELS, reported_change

COLUMNS = {"acc": "acc", "acc_norm": "acc_norm", "conf_ece": "conf-ECE", "cw_ece": "cw-ECE", "brier": "Brier"}
COLUMNS["nll"] = "NLL"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, as every user error of the project
        raise UserError(message)


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = _Parser(prog="python -m calibration_lightning.predictions", description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path, metavar="FILE", help="prediction files (.jsonl)")
    parser.add_argument("--before", type=Path, help="predictions of the same questions before a change")
    parser.add_argument("--out", type=Path, required=True, help="folder for one JSON (and figure) per file and group")
    parser.add_argument("--group", help="pool every FILE into one more row of this name")
    parser.add_argument("--target-delimiter", help="lm-eval files without results_*.json beside them (default ' ')")
    parser.add_argument("--figures", choices=("png", "pdf", "svg", "none"), default="png")
    parser.add_argument("--n-bins", type=int, default=10)
    parser.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples (0: no intervals)")
    parser.add_argument("--level", type=float, default=0.95)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.n_bins < 1:
        raise UserError(f"--n-bins={args.n_bins}: must be >= 1")
    if not resamples_allowed(args.resamples):
        raise UserError(f"--resamples={args.resamples}: must be 0 (no intervals) or at least {MIN_RESAMPLES}")
    if not 0 < args.level < 1:
        raise UserError(f"--level={args.level}: must be in (0, 1), e.g. 0.95")
    if args.out.exists() and not args.out.is_dir():
        raise UserError(f"--out {args.out}: not a folder")
    return args


def _paired(before: Predictions, file: Path, after: Predictions):
    """``before``'s probabilities in ``after``'s question order (matched by id)."""
    if sorted(before.ids) != sorted(after.ids):
        raise DataError(f"{file}: its question ids differ from those of --before {len(after.ids)} vs {len(before.ids)}")
    if before.probs.shape[1] != after.probs.shape[1]:
        raise DataError(f"{file}: {after.probs.shape[1]} options, --before has {before.probs.shape[1]}")
    row = {q: i for i, q in enumerate(before.ids)}
    order = [row[q] for q in after.ids]
    if not bool((before.labels[order] == after.labels).all()):
        raise DataError(f"{file}: gold answers differ from those of --before")
    return before.probs[order]


def _leaves(name: str, groups: dict[str, list[str]]) -> list[str]:
    """The tasks under ``name``, through its subgroups (``name`` itself when it is a task)."""
    return [t for m in groups[name] for t in _leaves(m, groups)] if name in groups else [name]


def _groups(files: dict[Path, Predictions], group: str | None) -> dict[str, list[str]]:
    """Group -> its members (tasks and subgroups): ``--group``'s, else those of lm-eval's results files whose
    every subtask is among the files."""
    tasks = {p.task for p in files.values()}
    if group:
        return {group: [p.task for p in files.values()]}
    tree: dict[str, list[str]] = {}
    for f in files:
        run = lm_eval_run(f)
        tree.update(run.groups if run else {})
    return {g: members for g, members in tree.items() if set(_leaves(g, tree)) <= tasks}


def _order(groups: dict[str, list[str]], tasks: list[str]) -> list[tuple[str, int]]:
    """Every group and task once, as lm-eval prints them: a group, then its members indented under it."""
    out: list[tuple[str, int]] = []
    members = {m for ms in groups.values() for m in ms}

    def visit(name: str, depth: int) -> None:
        out.append((name, depth))
        for member in groups.get(name, []):
            visit(member, depth + 1)

    for name in [g for g in groups if g not in members] + [t for t in tasks if t not in members]:
        visit(name, 0)
    return out


def _pooled(parts: list[Predictions], name: str) -> Predictions:
    """The questions of ``parts`` together (ids prefixed by their task)."""
    probs = padded([row for p in parts for row in p.probs])
    keys = set.intersection(*(set(p.correct) for p in parts))
    correct = {k: torch.cat([p.correct[k] for p in parts]) for k in sorted(keys)}
    ids = [f"{p.task}/{i}" for p in parts for i in p.ids]
    formats = "+".join(sorted({p.format for p in parts}))
    return Predictions(probs, torch.cat([p.labels for p in parts]), ids, formats, name, correct)


@dataclass
class Inputs:
    """Every file read and checked, before anything is written."""

    predictions: dict[str, Predictions]  # by name: each file's task (or stem), then each group pooled
    paths: dict[str, Path]  # file of each task
    groups: dict[str, list[str]]
    order: list[tuple[str, int]]  # (name, depth) in the table's order
    before: Predictions | None = None
    pairs: dict[str, Tensor] = field(default_factory=dict)  # task -> --before's probabilities in its order


def _read(args: argparse.Namespace) -> Inputs:
    files = {f: read_predictions(f, args.target_delimiter) for f in args.files}
    predictions = {p.task: p for p in files.values()}
    if len(predictions) != len(files):
        raise UserError(f"two files have one name ({[p.task for p in files.values()]}): each writes DIR/<name>.json")
    groups = _groups(files, args.group)
    if args.before and groups:
        raise UserError("--before pairs one file with each FILE: it cannot be combined with pooled groups")
    if set(groups) & set(predictions):
        raise UserError(f"a group and a file share a name ({sorted(set(groups) & set(predictions))})")
    inputs = Inputs(predictions, {p.task: f for f, p in files.items()}, groups, _order(groups, list(predictions)))
    for g in groups:
        predictions[g] = _pooled([predictions[t] for t in _leaves(g, groups)], g)
    if args.before:
        inputs.before = read_predictions(args.before, args.target_delimiter)
        inputs.pairs = {p.task: _paired(inputs.before, f, p) for f, p in files.items()}
    return inputs


def _table(rows: list[tuple[str, Predictions, dict]]) -> str:
    """One row per file and group (members indented under their group), lm-eval's 4 decimals."""
    lines = [("", "n", *COLUMNS.values())]
    for label, p, block in rows:
        values = {**block, "acc": block["accuracy"], **{k: float(v.mean()) for k, v in p.correct.items()}}
        lines.append((label, str(block["n"]), *(f"{values[k]:.4f}" if k in values else "-" for k in COLUMNS)))
    widths = [max(len(r[i]) for r in lines) for i in range(len(lines[0]))]
    text = ["  ".join(f"{c:<{w}}" if i == 0 else f"{c:>{w}}" for i, (c, w) in enumerate(zip(r, widths))) for r in lines]
    return "\n".join([text[0], "-" * len(text[0]), *text[1:]])


def _record(args: argparse.Namespace, inputs: Inputs, name: str, block: dict) -> dict:
    """What ``DIR/<name>.json`` holds."""
    p = inputs.predictions[name]
    if name in inputs.groups:
        where = {"files": [str(inputs.paths[t]) for t in _leaves(name, inputs.groups)], "members": inputs.groups[name]}
    else:
        where = {"file": str(inputs.paths[name])}
    record = {
        "schema_version": SCHEMA_VERSION,
        "name": name,
        **where,
        "format": p.format,
        "before": None if args.before is None else str(args.before),
    }
    record["n_bins"] = args.n_bins
    record["bootstrap"] = {"resamples": args.resamples, "level": args.level, "seed": args.seed, "interval": INTERVALS}
    if p.correct:  # float64 means of 1.0 / 0.0: 0.3, not float32's 0.30000001192092896
        record["lm_eval"] = {k: float(v.mean()) for k, v in p.correct.items()}
    return {**record, "metrics": block}


def main(argv: list[str] | None = None) -> int:
    try:
        args = _arguments(argv)
        inputs = _read(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    options = {"n_bins": args.n_bins, "resamples": args.resamples, "level": args.level, "seed": args.seed}
    rows = []
    if inputs.before is not None:
        before = inputs.before
        rows.append(
            (f"{args.before.stem} (before)", before, evaluate_predictions(before.probs, before.labels, **options))
        )
    blocks = {}
    for name, depth in inputs.order:
        p = inputs.predictions[name]
        blocks[name] = evaluate_predictions(p.probs, p.labels, **options, before=inputs.pairs.get(name))
        write_json(args.out / f"{name}.json", _record(args, inputs, name, blocks[name]))
        if args.figures != "none":
            path = args.out / f"{name}.{args.figures}"
            title = f"{name} (N = {len(p.labels)}, {args.n_bins} bins)"
            reliability_diagram(p.probs, p.labels, n_bins=args.n_bins, title=title, path=path, metrics=blocks[name])
        rows.append((" " * depth + ("- " if depth else "") + name, p, blocks[name]))
    print(_table(rows))
    for name, block in blocks.items():
        if block.get("improvement"):
            print(f"\n{name} - {args.before.stem} [{args.level * 100:g}% interval], * when it excludes 0:")
            for m, label in LABELS.items():
                difference, ci, excludes = reported_change(block["improvement"], m, args.level)
                if difference is not None:
                    print(f"  {label:<24} {with_interval(difference, ci, signed=True)}{'*' if excludes else ''}")
    if any(p.correct for p in inputs.predictions.values()):
        print("\nacc, acc_norm: as lm-eval scores them (acc_norm: log-likelihood per character of the choice);")
        print("the calibration metrics are those of the softmax of the choices' log-likelihoods.")
    intervals = f" with its {args.level * 100:g}% interval ({args.resamples} resamples of the questions)"
    print(f"\nEvery metric{intervals if args.resamples else ''}: {args.out}/<name>.json")
    if args.resamples:
        print(INTERVALS.replace("; ", ";\n") + ".")
    return 0


if __name__ == "__main__":
    sys.exit(main())
