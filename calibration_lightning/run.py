"""One run, top to bottom: build its parts, evaluate the aligned model, train, evaluate again, write."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import lightning as L
import yaml
from omegaconf import DictConfig

from calibration_lightning import evaluation
from calibration_lightning.assembly import (
    build_datamodule,
    build_trainer,
    build_win_rate,
    describe_run,
    device,
)
from calibration_lightning.config import build
from calibration_lightning.models.loading import (
    ModelSettings,
    autocast_dtype,
    initial_scoring,
    load_model,
    load_tokenizer,
    merged_adapters,
    model_label,
)
from calibration_lightning.module import CalibrationModule, OptimSettings
from calibration_lightning.outputs import run_state
from calibration_lightning.outputs.files import atomic_write
from calibration_lightning.outputs.run_outputs import (
    redacted_config,
    write_phase,
    write_summary,
    write_win_rate,
)
from calibration_lightning.outputs.wandb_logger import publish_run
from calibration_lightning.startup import check_job
from calibration_lightning.training import train_methods

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict:
    """Run ``cfg`` and return the dict written to ``metrics.json`` (a finished run resumed: the one it holds).
    Its ``objective`` is the after-training validation conf-ECE, the value sweeps minimise (never a test metric).

    Raises:
        run_state.Preempted: a stop signal arrived (SIGTERM, SIGINT); the last checkpoint is saved.
    """
    out_dir = Path(cfg.output_dir)
    try:
        with run_state.stop_signals():
            return _run(cfg)
    except run_state.FinishedRun as e:
        log.warning("%s", e)
        return json.loads((out_dir / "metrics.json").read_text())
    finally:
        run_state.unlock_run_dir(out_dir)


def _run(cfg: DictConfig) -> dict:
    started = time.time()
    out_dir = Path(cfg.output_dir)
    job = check_job(cfg, out_dir)  # before any model loads; Hydra's callback ran it already (the data is kept)
    methods = job.methods
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    source, settings = build(cfg.model.loader), ModelSettings.from_config(cfg.model)
    tokenizer = load_tokenizer(source, settings)
    dm = build_datamodule(cfg, job.splits, job.eval_sets, tokenizer)
    log.info("%s", describe_run(cfg, dm, settings))  # which model, method, data sizes, device, precision
    L.seed_everything(cfg.seed, workers=True, verbose=False)  # LoRA init depends only on the seed
    model = load_model(source, settings, device(cfg), tokens_per_batch=cfg.dataset.batch_size * dm.longest("train"))
    logger = build(cfg.logger) if cfg.logger else False
    trainer = build_trainer(cfg, out_dir, logger)

    with initial_scoring(model, settings):  # the aligned model (or model.adapter) as the run starts
        scorer = CalibrationModule(model, None, dm.letter_ids, OptimSettings(), cfg.n_bins, autocast_dtype(settings))
        before = evaluation.evaluate(trainer, scorer, dm, cfg.n_bins)
    is_zero = L.fabric.utilities.rank_zero.rank_zero_only.rank == 0  # set by the launch
    win_rate = build_win_rate(cfg, model, tokenizer, device(cfg)) if cfg.win_rate.enabled and is_zero else None
    extra = {"model": model_label(cfg.model), "method": cfg.method.name, "requested_method": cfg.method.name}
    extra["regime"] = evaluation.regime(before, cfg.n_bins, cfg.regime.tolerance)
    if dm.truncation:  # prompts cut to dataset.max_length, per split: how many, and what they lost
        extra["truncation"] = {"max_length": cfg.dataset.max_length, **dm.truncation}
    if is_zero:  # written now, so a failure during training leaves them behind
        write_phase(out_dir, "before", before, dm.records, cfg.n_bins)
        if win_rate:
            scores = win_rate.evaluate("before", model, tokenizer, initial_scoring(model, settings))
            extra["win_rate"] = {"before": write_win_rate(out_dir, "before", *scores)}

    after = before
    if methods:
        if is_zero:
            run_state.save_settings(out_dir, cfg)  # what resume=true is compared against
        after, chosen = train_methods(cfg, methods, model, dm, out_dir, logger, settings, extra, before)
        if is_zero:
            atomic_write(out_dir / "adapter", model.save_pretrained, directory=True)
        if win_rate:
            scores = win_rate.evaluate("after", model, tokenizer, merged_adapters(model, settings.merge_for_eval))
            extra["win_rate"]["after"] = write_win_rate(out_dir, "after", *scores)
    if cfg.method.get("calibrator"):
        calibrator = build(cfg.method.calibrator)
        extra.update(calibrator.fit(after["val"]["letter_logits"], after["val"]["labels"]))
        after = evaluation.transform_logits(after, calibrator.transform, cfg.n_bins)

    if not is_zero:
        return {}
    write_phase(out_dir, "after", after, dm.records, cfg.n_bins, before=before)
    extra["objective"] = after["val"]["metrics"]["conf_ece"] if "val" in after else None  # what sweeps minimise
    extra["wall_time_s"] = round(time.time() - started, 1)
    summary, table = write_summary(out_dir, cfg, (before, after), dm.records, extra)
    diagrams = {p.stem: p for p in sorted(out_dir.glob("reliability_*.png"))}
    publish_run(logger, yaml.safe_load(redacted_config(cfg)), diagrams)
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
