"""One run, top to bottom: build its parts, evaluate the aligned model, train, evaluate again, write."""

from __future__ import annotations

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
    check_splits,
    describe_run,
    device,
    load_data,
)
from calibration_lightning.config import build, check_config
from calibration_lightning.models.loading import (
    ModelSettings,
    initial_scoring,
    load_model,
    load_tokenizer,
    merged_adapters,
    model_label,
)
from calibration_lightning.module import CalibrationModule, OptimSettings
from calibration_lightning.outputs.files import atomic_directory
from calibration_lightning.outputs.run_outputs import (
    check_run_dir,
    redacted_config,
    write_phase,
    write_summary,
    write_win_rate,
)
from calibration_lightning.outputs.wandb_logger import publish_run
from calibration_lightning.training import train_methods

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict:
    """Run ``cfg``; returns the test split's results before and after, ``metrics.json``'s other entries, and
    ``objective``: the after-training validation conf-ECE, the value sweeps minimise (never a test metric)."""
    started = time.time()
    methods = check_config(cfg)  # every setting checked, the training methods built
    out_dir = Path(cfg.output_dir)
    check_run_dir(out_dir, cfg.resume)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    splits, eval_sets = load_data(cfg)  # a bad file fails here, before any model loads
    check_splits(cfg, splits, methods)
    source, settings = build(cfg.model.loader), ModelSettings.from_config(cfg.model)
    tokenizer = load_tokenizer(source, settings)
    dm = build_datamodule(cfg, splits, eval_sets, tokenizer)
    log.info("%s", describe_run(cfg, dm, settings))  # which model, method, data sizes, device, precision
    L.seed_everything(cfg.seed, workers=True, verbose=False)  # LoRA init depends only on the seed
    model = load_model(source, settings, device(cfg), tokens_per_batch=cfg.dataset.batch_size * dm.longest("train"))
    logger = build(cfg.logger) if cfg.logger else False
    trainer = build_trainer(cfg, out_dir, logger)

    with initial_scoring(model, settings):  # the aligned model (or model.adapter) as the run starts
        before = evaluation.evaluate(
            trainer, CalibrationModule(model, None, dm.letter_ids, OptimSettings(), cfg.n_bins), dm, cfg.n_bins
        )
    is_zero = L.fabric.utilities.rank_zero.rank_zero_only.rank == 0  # set by the launch
    win_rate = build_win_rate(cfg, model, tokenizer, device(cfg)) if cfg.win_rate.enabled and is_zero else None
    extra = {"model": model_label(cfg.model), "method": cfg.method.name, "requested_method": cfg.method.name}
    extra["regime"] = evaluation.regime(before, cfg.n_bins, cfg.regime.tolerance)
    if is_zero:  # written now, so a failure during training leaves them behind
        results_before = write_phase(out_dir, "before", before, dm.records, cfg.n_bins)
        if win_rate:
            scores = win_rate.evaluate("before", model, tokenizer, initial_scoring(model, settings))
            extra["win_rate"] = {"before": write_win_rate(out_dir, "before", *scores)}

    after = before
    if methods:
        after, chosen = train_methods(cfg, methods, model, dm, out_dir, logger, settings, extra, before)
        if is_zero:
            atomic_directory(out_dir / "adapter", model.save_pretrained)
        if win_rate:
            scores = win_rate.evaluate("after", model, tokenizer, merged_adapters(model, settings.merge_for_eval))
            extra["win_rate"]["after"] = write_win_rate(out_dir, "after", *scores)
    if cfg.method.get("calibrator"):
        calibrator = build(cfg.method.calibrator)
        extra.update(calibrator.fit(after["val"]["letter_logits"], after["val"]["labels"]))
        after = evaluation.transform_logits(after, calibrator.transform)

    if not is_zero:
        return {}
    results_after = write_phase(out_dir, "after", after, dm.records, cfg.n_bins, before=before)
    extra["wall_time_s"] = round(time.time() - started, 1)
    table = write_summary(out_dir, cfg, results_before, results_after, extra, (before, after), dm.records)
    diagrams = {p.stem: p for p in sorted(out_dir.glob("reliability_*.png"))}
    publish_run(logger, yaml.safe_load(redacted_config(cfg)), diagrams)
    print(f"\n{table}\n\nOutputs: {out_dir}")
    objective = evaluation.metrics(after["val"], cfg.n_bins)["conf_ece"] if "val" in after else None
    return {"before": results_before["test"], "after": results_after["test"], **extra, "objective": objective}
