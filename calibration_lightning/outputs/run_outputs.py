"""Everything a finished run writes into its directory."""

from __future__ import annotations

import platform
from importlib import metadata
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from calibration_lightning import evaluation
from calibration_lightning.errors import UserError
from calibration_lightning.outputs.diagrams import save_reliability_diagrams
from calibration_lightning.outputs.files import write_json, write_jsonl, write_text
from calibration_lightning.outputs.summary import format_table

VERSIONED = ("torch", "transformers", "peft", "bitsandbytes", "lightning", "torchmetrics", "hydra-core")
SECRET_KEYS = ("key", "token", "secret", "password")


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
    data = OmegaConf.to_container(cfg, resolve=True)

    def scrub(node):
        if isinstance(node, dict):
            return {
                k: ("<redacted>" if any(s in str(k).lower() for s in SECRET_KEYS) and v else scrub(v))
                for k, v in node.items()
            }
        if isinstance(node, list):
            return [scrub(v) for v in node]
        return node

    return OmegaConf.to_yaml(OmegaConf.create(scrub(data)))


def write_phase(out_dir: Path, phase: str, scored: dict, records: dict, n_bins: int) -> dict[str, dict]:
    """Predictions, diagrams and metrics of one phase ("before"/"after") for every evaluation set."""
    results = {}
    for name, s in scored.items():
        if name == "val":
            continue
        stem = phase if name == "test" else f"{name}_{phase}"
        write_jsonl(out_dir / f"predictions_{stem}.jsonl", evaluation.prediction_rows(s, records[name]))
        save_reliability_diagrams(
            evaluation.probabilities(s), s["labels"], n_bins, out_dir, f"reliability_{stem}", f"{name} {phase}"
        )
        results[name] = evaluation.metrics(s, n_bins)
    return results


def write_win_rate(out_dir: Path, phase: str, summary: dict, rows: list[dict]) -> dict:
    """Per-prompt answers and judgments to ``win_rate_{phase}.jsonl``; returns the summary."""
    write_jsonl(out_dir / f"win_rate_{phase}.jsonl", rows)
    return summary


def write_summary(out_dir: Path, cfg: DictConfig, before: dict, after: dict, extra: dict) -> str:
    """metrics.json and config.yaml; returns the printed before/after table."""
    summary = {
        "before": before["test"],
        "after": after["test"],
        "eval_sets": {n: {"before": before[n], "after": after[n]} for n in before if n != "test"},
        **extra,
        "seed": cfg.seed,
        "versions": versions(),
    }
    write_text(out_dir / "config.yaml", redacted_config(cfg))
    write_json(out_dir / "metrics.json", summary)
    rows = []
    for name in before:
        rows += [(f"{name} before", before[name]), (f"{name} after ({extra['method']})", after[name])]
    table = format_table(rows)
    if "temperature" in extra:
        table += f"\ntemperature fitted on val: T = {extra['temperature']:.4f}"
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
