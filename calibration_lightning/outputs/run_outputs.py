"""Everything a finished run writes into its directory."""

from __future__ import annotations

import platform
from importlib import metadata
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from calibration_lightning import evaluation
from calibration_lightning.errors import UserError
from calibration_lightning.methods import describe_training
from calibration_lightning.outputs.diagrams import save_set_figure
from calibration_lightning.outputs.files import write_json, write_jsonl, write_text
from calibration_lightning.outputs.summary import format_comparison, format_table
from calibration_lightning.redaction import scrub

PHASES = ("before", "after")
VERSIONED = ("torch", "transformers", "peft", "bitsandbytes", "lightning", "torchmetrics", "hydra-core", "relplot")


def versions() -> dict[str, str | None]:
    found = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def check_run_dir(out_dir: Path, resume: bool) -> None:
    """Refuse to overwrite a finished run; a resumed run may reuse its own directory."""
    if resume:
        return
    if (out_dir / "metrics.json").exists():
        raise UserError(f"{out_dir} already holds a finished run (metrics.json); choose another hydra.run.dir")
    if (out_dir / "checkpoints").exists() and any((out_dir / "checkpoints").iterdir()):
        raise UserError(
            f"{out_dir} holds an unfinished run (checkpoints/); pass resume=true to continue it, "
            "or choose another hydra.run.dir"
        )


def redacted_config(cfg: DictConfig) -> str:
    """The resolved config as YAML with any secret-looking value blanked."""
    return OmegaConf.to_yaml(OmegaConf.create(scrub(OmegaConf.to_container(cfg, resolve=True))))


def write_phase(
    out_dir: Path, phase: str, scored: dict, records: dict, n_bins: int, before: dict | None = None
) -> dict[str, dict]:
    """Predictions, diagrams and metrics of one phase ("before"/"after") for every evaluation set.

    ``reliability_{set}.png`` holds one column per phase: the "before" column alone when written before
    training (so a failed run keeps it), rewritten with both columns after training when ``before`` (the
    "before" scores) is given.
    """
    results = {}
    for name, s in scored.items():
        if name == "val":
            continue
        stem = phase if name == "test" else f"{name}_{phase}"
        write_jsonl(out_dir / f"predictions_{stem}.jsonl", evaluation.prediction_rows(s, records[name]))
        phases = {"before": before[name]} if before is not None else {}
        phases[phase] = s
        columns = {p: (evaluation.probabilities(x), x["labels"]) for p, x in phases.items()}
        save_set_figure(out_dir, name, columns, n_bins)
        results[name] = evaluation.metrics(s, n_bins)
    return results


def write_win_rate(out_dir: Path, phase: str, summary: dict, rows: list[dict]) -> dict:
    """Per-prompt answers and judgments to ``win_rate_{phase}.jsonl``; returns the summary."""
    write_jsonl(out_dir / f"win_rate_{phase}.jsonl", rows)
    return summary


def write_summary(
    out_dir: Path,
    cfg: DictConfig,
    before: dict,
    after: dict,
    extra: dict,
    scored: tuple[dict, dict] | None = None,
    records: dict | None = None,
) -> str:
    """metrics.json and config.yaml; returns the printed before/after table.

    ``before``/``after``: each set's point metrics (``write_phase``); they get ``ci95`` (bootstrap intervals,
    ``cfg.bootstrap``) when ``scored`` (the before and after scores of every split) is given. Each set gets an
    ``improvement`` (after - before, with the interval of the paired difference), and ``subjects`` (conf-ECE,
    accuracy and n per subject) when ``records`` (every split's records) carry subjects.
    """
    boot = cfg.bootstrap
    improvement, subjects = {}, {}
    for name in before:
        ci = {}
        if scored is not None and boot.resamples > 0 and before[name]["n"] > 0:
            ci = evaluation.intervals(
                scored[0][name], scored[1][name], cfg.n_bins, boot.resamples, boot.seed, boot.level
            )
            before[name]["ci95"], after[name]["ci95"] = ci["before"], ci["after"]
        paired = ci.get("improvement", {})
        improvement[name] = {
            m: {
                "difference": after[name][m] - v,
                "ci95": paired.get(m, {}).get("ci95"),
                "excludes_zero": paired.get(m, {}).get("excludes_zero"),
            }
            for m, v in before[name].items()
            if m not in ("n", "ci95")
        }
        if scored is not None and records is not None:
            per_phase = [evaluation.subject_metrics(s[name], records[name], cfg.n_bins) for s in scored]
            if per_phase[0] is not None:
                subjects[name] = {k: dict(zip(PHASES, (p[k] for p in per_phase))) for k in per_phase[0]}

    def one_set(name: str) -> dict:
        node = {"before": before[name], "after": after[name], "improvement": improvement[name]}
        return {**node, "subjects": subjects[name]} if name in subjects else node

    test = one_set("test")
    summary = {
        **test,
        "eval_sets": {n: one_set(n) for n in before if n != "test"},
        **extra,
        "bootstrap": {"resamples": boot.resamples, "level": boot.level, "seed": boot.seed, "interval": "percentile"},
        "seed": cfg.seed,
        "versions": versions(),
    }
    write_text(out_dir / "config.yaml", redacted_config(cfg))
    write_json(out_dir / "metrics.json", summary)
    table = "\n\n".join(
        format_comparison(name, extra["method"], before[name], after[name], improvement[name]) for name in before
    )
    if "ci95" in before["test"]:
        table += (
            f"\n[lo, hi]: {boot.level:.0%} percentile bootstrap interval, {boot.resamples} resamples of the questions"
            "\n(after - before: the same resamples before and after, a paired difference)"
        )
    if "temperature" in extra:
        table += f"\ntemperature fitted on val: T = {extra['temperature']:.4f}"
    if "training" in extra:
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
