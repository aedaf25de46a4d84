"""Everything a finished run writes into its directory."""

from __future__ import annotations

import platform
import re
import time
from importlib import metadata
from pathlib import Path

import yaml
from omegaconf import DictConfig, OmegaConf

from calibration_lightning import evaluation
from calibration_lightning.calibration.bootstrap import INTERVALS
from calibration_lightning.outputs.diagrams import save_set_figure
from calibration_lightning.outputs.files import write_json, write_jsonl, write_text
from calibration_lightning.outputs.loggers import publish_run
from calibration_lightning.outputs.summary import format_comparison, format_table, interval_note
from calibration_lightning.predictions import SCHEMA_VERSION, interval_key
from calibration_lightning.redaction import scrub

PHASES = ("before", "after")


def versions() -> dict[str, str | None]:
    """The versions of Python and of every dependency pyproject.toml declares (the package's own metadata)."""
    found = {"python": platform.python_version()}
    for requirement in metadata.requires("calibration-lightning") or []:
        if "extra ==" not in requirement:
            name = re.split(r"[\s;<>=!~\[]", requirement, maxsplit=1)[0]
            try:
                found[name] = metadata.version(name)
            except metadata.PackageNotFoundError:
                found[name] = None
    return found


def redacted_config(cfg: DictConfig) -> str:
    """The resolved config as YAML with any secret-looking value blanked."""
    return OmegaConf.to_yaml(OmegaConf.create(scrub(OmegaConf.to_container(cfg, resolve=True))))


def write_phase(
    out_dir: Path, phase: str, scored: dict, records: dict, n_bins: int, before: dict | None = None,
    after_label: str = "after training",
):  # fmt: skip
    """Predictions and diagrams of one phase ("before"/"after") for every evaluation set. ``reliability_{set}.png``
    holds the "before" column alone when written before training (so a failed run keeps it), both columns when
    ``before`` (the "before" scores) is given."""
    for name, s in scored.items():
        if name == "val":
            continue
        stem = phase if name == "test" else f"{name}_{phase}"
        write_jsonl(out_dir / f"predictions_{stem}.jsonl", evaluation.prediction_rows(s, records[name]))
        phases = {"before": before[name]} if before is not None else {}
        phases[phase] = s
        columns = {p: (evaluation.probabilities(x), x["labels"], x["metrics"]) for p, x in phases.items()}
        save_set_figure(out_dir, name, columns, n_bins, after_label=after_label)


def write_win_rate(out_dir: Path, phase: str, summary: dict, rows: list[dict]) -> dict:
    """Per-prompt answers and judgments to ``win_rate_{phase}.jsonl``; returns the summary."""
    write_jsonl(out_dir / f"win_rate_{phase}.jsonl", rows)
    return summary


def write_run(out_dir: Path, raw: DictConfig, cfg, scored: tuple[dict, dict], records: dict, extra: dict, loggers,
              started: float) -> dict:  # fmt: skip
    """Everything a finished run writes after training: the "after" predictions and diagrams, metrics.json,
    config.yaml, the loggers' summary; prints the before/after table. Returns what metrics.json holds."""
    from calibration_lightning.report import after_label

    before, after = scored
    posthoc = cfg.method.calibrator is not None
    label = after_label(cfg.method.name, extra.get("method") if cfg.method.candidates else None, posthoc)
    write_phase(out_dir, "after", after, records, cfg.n_bins, before=before, after_label=label)
    metric = cfg.optimized_metric.removeprefix("val/")
    extra["objective"] = after["val"]["metrics"][metric] if "val" in after else None  # what sweeps optimise
    extra["wall_time_s"] = round(time.time() - started, 1)
    summary, table = write_summary(out_dir, raw, cfg, scored, records, extra)
    diagrams = {p.stem: p for p in sorted(out_dir.glob("reliability_*.png"))}
    publish_run(loggers, yaml.safe_load(redacted_config(raw)), summary, diagrams)
    if "truncation" in extra:
        table += "\n" + truncation_line(extra["truncation"])
    print(f"\n{table}\n\nOutputs: {out_dir}")
    return summary


def truncation_line(report: dict) -> str:
    """One line of the printed table: prompts cut to ``dataset.max_length`` and what they lost, per split."""
    parts = []
    for split, r in report.items():
        if split == "max_length":
            continue
        lost = ", ".join(
            f"{r[k]} lost the {k[:-4].replace('_', ' ')}" for k in r if k.endswith("_cut") and k != "rows_cut" and r[k]
        )
        parts.append(f"{split} {r['rows_cut']}/{r['rows']}" + (f" ({lost})" if lost else ""))
    return f"prompts cut to dataset.max_length={report['max_length']} tokens: {'; '.join(parts)}"


def write_summary(
    out_dir: Path, raw: DictConfig, cfg, scored: tuple[dict, dict], records: dict, extra: dict
) -> tuple[dict, str]:
    """metrics.json and config.yaml; returns what metrics.json holds and the printed before/after table. Each
    evaluation set's block (``evaluation.compare``) is computed once here, and both are written from it."""
    boot = cfg.bootstrap
    sets = {}
    for name in (n for n in scored[1] if n != "val"):
        sets[name] = evaluation.compare(
            scored[0][name], scored[1][name], cfg.n_bins, boot.resamples, boot.seed, boot.level
        )
        per_phase = [evaluation.subject_metrics(s[name], records[name], cfg.n_bins) for s in scored]
        if per_phase[0] is not None:
            sets[name]["subjects"] = {k: dict(zip(PHASES, (p[k] for p in per_phase))) for k in per_phase[0]}
    summary = {
        "schema_version": SCHEMA_VERSION,
        **sets["test"],
        "eval_sets": {n: block for n, block in sets.items() if n != "test"},
        **extra,
        "bootstrap": {"resamples": boot.resamples, "level": boot.level, "seed": boot.seed, "interval": INTERVALS},
        "seed": cfg.seed,
        "versions": versions(),
    }
    write_text(out_dir / "config.yaml", redacted_config(raw))
    write_json(out_dir / "metrics.json", summary)
    return summary, format_summary(sets, extra, boot)


def format_summary(sets: dict[str, dict], extra: dict, boot) -> str:
    """The table printed at the end of a run, from the blocks metrics.json holds."""
    level = boot.level
    table = "\n\n".join(
        format_comparison(name, extra["method"], s["before"], s["after"], s["improvement"], level)
        for name, s in sets.items()
    )
    if interval_key(level) in sets["test"]["before"]:
        table += "\n" + interval_note(level, boot.resamples)
    if "temperature" in extra:
        table += f"\ntemperature fitted on val: T = {extra['temperature']:.4f}"
    if "training" in extra:
        from calibration_lightning.selection import describe_training

        table += f"\nchosen on validation: {describe_training(extra['method'], extra['training'])}"
    if "auto" in extra:
        auto = extra["auto"]
        table += "\n\nmethod=auto candidates on the validation split:\n" + format_table(
            [(f"val after ({name})", m) for name, m in auto["candidates"].items()]
        )
        table += f"\nmethod=auto chose {auto['chosen']}: {auto['rule']} ({auto['accuracy_tolerance']})"
    for phase, wr in (extra.get("win_rate") or {}).items():
        table += (
            f"\nwin rate {phase}: {wr['win_rate']:.3f} (95% CI {wr['ci95'][0]:.3f}-{wr['ci95'][1]:.3f}, "
            f"n={wr['n']}, judge {wr['judge']}, position bias {wr['position_bias']:+.3f})"
        )
    return table
