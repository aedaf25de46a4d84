"""One run, top to bottom: evaluate the aligned model, fix it with the chosen method, evaluate again."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import lightning as L
import torch
import yaml
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from calibration_lightning import evaluation
from calibration_lightning.config_checks import check_config
from calibration_lightning.data.datamodule import MultipleChoiceDataModule
from calibration_lightning.data.prompts import PromptFormat
from calibration_lightning.data.splits import Splits, split_records
from calibration_lightning.errors import ConfigError, UserError
from calibration_lightning.method_selection import choose_method
from calibration_lightning.models.adapters import (
    LoraSettings,
    ModelSettings,
    base_model_scoring,
    load_model,
    load_tokenizer,
    merged_adapters,
)
from calibration_lightning.module import CalibrationModule, OptimSettings
from calibration_lightning.outputs.checkpoints import AtomicCheckpointIO, EpochEndCheckpoint
from calibration_lightning.outputs.files import atomic_directory
from calibration_lightning.outputs.run_outputs import (
    check_run_dir,
    redacted_config,
    write_phase,
    write_summary,
    write_win_rate,
)
from calibration_lightning.outputs.wandb_logger import publish_run
from calibration_lightning.winrate.evaluate import WinRate

log = logging.getLogger(__name__)


def _device(cfg: DictConfig) -> str:
    wants_gpu = cfg.trainer.accelerator in ("auto", "gpu", "cuda")
    return "cuda" if wants_gpu and torch.cuda.is_available() else "cpu"


def _model_settings(model_cfg: DictConfig) -> ModelSettings:
    fields = OmegaConf.to_container(model_cfg, resolve=True)
    lora = LoraSettings(**fields.pop("lora"))
    return ModelSettings(**{k: v for k, v in fields.items() if k not in ("name", "loader")}, lora=lora)


def build_trainer(
    cfg: DictConfig, out_dir: Path, logger, method: DictConfig | None = None, ckpt_dir: Path | None = None
) -> L.Trainer:
    """A Lightning Trainer: for evaluation only (``method=None``), or for training ``method`` with its
    callbacks, its ``max_epochs`` and checkpoints in ``ckpt_dir``, all given to the constructor."""
    kwargs = dict(build(cfg.trainer, _convert_="all"))  # a strategy may itself be a _target_ node
    every = kwargs.pop("checkpoint_every_n_steps")
    callbacks, checkpointing = [], False
    if method is not None:
        callbacks = [EpochEndCheckpoint(ckpt_dir / "last.ckpt"), *(build(c) for c in method.callbacks)]
        kwargs["max_epochs"] = method.epochs
        if every:
            checkpointing = True
            callbacks.append(
                L.pytorch.callbacks.ModelCheckpoint(
                    dirpath=ckpt_dir, save_last=True, save_top_k=0, every_n_train_steps=every
                )
            )
    # Batches are sharded across ranks by our own samplers (length-grouped), not by DistributedSampler.
    return L.Trainer(
        **kwargs,
        logger=logger,
        default_root_dir=out_dir,
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
        enable_checkpointing=checkpointing,  # else Lightning adds a default ModelCheckpoint of its own
        enable_model_summary=False,
        use_distributed_sampler=False,
    )


def build(node: DictConfig, **kwargs):
    """``hydra.utils.instantiate``, re-raising our own user errors unwrapped (Hydra wraps them)."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as e:
        cause = e.__cause__
        if isinstance(cause, UserError):
            raise cause from None
        raise


def build_win_rate(cfg: DictConfig, model, tokenizer, device: str) -> WinRate:
    """The win-rate evaluation (``win_rate=on``) with its judge (``judge=local|openai``) bound to this run."""
    judge = build(cfg.judge)
    judge.bind(model, tokenizer, device)
    wr = cfg.win_rate
    return WinRate(build(wr.instructions), judge, wr.max_new_tokens, wr.batch_size, wr.greedy, cfg.seed)


def load_data(cfg: DictConfig) -> tuple[Splits, dict]:
    """Train / val (/ test) from ``dataset.source``; test from ``dataset.test_source`` when the dataset
    has its own test split; extra evaluation sets (e.g. out-of-domain) from ``eval_sets``."""
    test_node = cfg.dataset.get("test_source")
    split = dict(cfg.dataset.split)
    if test_node:
        split["test"] = 0
    splits = split_records(build(cfg.dataset.source), **split)
    if test_node:
        splits = Splits(splits.train, splits.val, build(test_node))
    eval_sets = {name: build(node) for name, node in (cfg.get("eval_sets") or {}).items()}
    return splits, eval_sets


def build_datamodule(cfg: DictConfig, splits: Splits, eval_sets: dict, tokenizer) -> MultipleChoiceDataModule:
    """The run's datamodule: prompts, batch sizes and truncation from ``cfg.dataset``."""
    return MultipleChoiceDataModule(
        splits,
        tokenizer,
        PromptFormat(**cfg.dataset.prompt),
        cfg.dataset.batch_size,
        cfg.dataset.eval_batch_size,
        cfg.dataset.max_length,
        cfg.seed,
        eval_sets,
    )


def check_splits(cfg: DictConfig, splits: Splits) -> None:
    """Refuse, before any model loads, a split the method needs that came out empty."""
    name = cfg.method.name
    needs = {"test": True, "train": bool(cfg.method.get("train") or cfg.method.get("candidates"))}
    needs["val"] = bool(cfg.method.get("calibrator") or cfg.method.get("candidates"))
    why = {"train": "trains on it", "val": "fits or chooses on it", "test": "reports on it"}
    for split, needed in needs.items():
        if needed and not getattr(splits, split):
            raise ConfigError(
                f"dataset.split.{split}: the {split} split is empty, and method={name} {why[split]}; "
                f"give dataset.split.{split} a count > 0 or a fraction (or use a larger data file)"
            )


def adapter_weights(model) -> dict[str, torch.Tensor]:
    """A CPU copy of the LoRA weights (what ``save_pretrained`` writes)."""
    from peft import get_peft_model_state_dict

    return {k: v.detach().cpu().clone() for k, v in get_peft_model_state_dict(model).items()}


def set_adapter_weights(model, weights: dict[str, torch.Tensor]) -> None:
    from peft import set_peft_model_state_dict

    set_peft_model_state_dict(model, weights)


def train_and_evaluate(
    cfg: DictConfig, method: DictConfig, model, dm, out_dir: Path, ckpt_dir: Path, logger, merge
) -> dict:
    """Fit ``method`` on the training split (resuming from ``ckpt_dir`` when asked), then score every
    evaluation split (``merge``: with the adapters folded in, as ``model.merge_for_eval``)."""
    module = CalibrationModule(
        model, build(method.loss), dm.letter_ids, OptimSettings(**method.optim), cfg.n_bins, dm.eval_set_names
    )
    trainer = build_trainer(cfg, out_dir, logger, method, ckpt_dir)
    model.train()  # from_pretrained returns eval mode; LoRA dropout must be live
    last = ckpt_dir / "last.ckpt"
    trainer.fit(module, datamodule=dm, ckpt_path=str(last) if cfg.resume and last.exists() else None, weights_only=True)
    with merged_adapters(model, merge):
        return evaluation.evaluate(trainer, module, dm)


def run(cfg: DictConfig) -> dict:
    """Run ``cfg`` and return the dict written to ``metrics.json``."""
    started = time.time()
    check_config(cfg)
    out_dir = Path(cfg.output_dir)
    check_run_dir(out_dir, cfg.resume)
    L.seed_everything(cfg.seed, workers=True, verbose=False)

    # Data first: a bad file fails here, before any model loads.
    splits, eval_sets = load_data(cfg)
    check_splits(cfg, splits)
    source = build(cfg.model.loader)
    settings = _model_settings(cfg.model)
    tokenizer = load_tokenizer(source, settings)
    dm = build_datamodule(cfg, splits, eval_sets, tokenizer)
    L.seed_everything(cfg.seed, workers=True, verbose=False)  # LoRA init depends only on the seed
    device = _device(cfg)
    model = load_model(source, settings, device, tokens_per_batch=cfg.dataset.batch_size * dm.longest("train"))
    module = CalibrationModule(model, None, dm.letter_ids, OptimSettings(), cfg.n_bins, dm.eval_set_names)
    logger = build(cfg.logger) if cfg.logger else False

    trainer = build_trainer(cfg, out_dir, logger)
    with base_model_scoring(module.model):
        before = evaluation.evaluate(trainer, module, dm)
    regime = evaluation.regime(before, cfg.n_bins, cfg.regime.tolerance)
    extra = {"method": cfg.method.name, "requested_method": cfg.method.name, "regime": regime}
    is_zero = L.fabric.utilities.rank_zero.rank_zero_only.rank == 0
    win_rate = build_win_rate(cfg, module.model, tokenizer, device) if cfg.win_rate.enabled and is_zero else None
    if is_zero:  # written now, so a failure during training leaves them behind
        results_before = write_phase(out_dir, "before", before, dm.records, cfg.n_bins)
        if win_rate:
            extra["win_rate"] = {
                "before": write_win_rate(
                    out_dir,
                    "before",
                    *win_rate.evaluate("before", module.model, tokenizer, base_model_scoring(module.model)),
                )
            }

    after = before
    candidates = dict(cfg.method.get("candidates") or ({cfg.method.name: cfg.method} if cfg.method.train else {}))
    if candidates:
        several = len(candidates) > 1  # method=auto: every candidate starts from the same initial adapters
        initial = adapter_weights(model) if several else None
        trained, weights = {}, {}
        for i, (name, method) in enumerate(candidates.items()):
            if several:
                set_adapter_weights(model, initial)
            L.seed_everything(cfg.seed, workers=True, verbose=False)  # each candidate starts alike
            ckpt_dir = out_dir / "checkpoints" / (name if several else "")
            # bf16 merging does not unfold exactly: only the last candidate's scoring may merge
            merge = settings.merge_for_eval if i == len(candidates) - 1 else False
            trained[name] = train_and_evaluate(cfg, method, model, dm, out_dir, ckpt_dir, logger, merge)
            if several:
                weights[name] = adapter_weights(model)
        chosen = next(iter(trained))
        if several:
            val = {name: evaluation.metrics(scored["val"], cfg.n_bins) for name, scored in trained.items()}
            extra["auto"] = choose_method(val, cfg.regime.accuracy_tolerance)
            chosen = extra["auto"]["chosen"]
            scores = {n: round(m["conf_ece"], 4) for n, m in val.items()}
            log.info("method=auto: validation conf-ECE %s; keeping %s", scores, chosen)
            set_adapter_weights(model, weights[chosen])
        after = trained[chosen]
        extra["method"] = chosen
        if trainer.is_global_zero:
            atomic_directory(out_dir / "adapter", model.save_pretrained)
        if win_rate:
            extra["win_rate"]["after"] = write_win_rate(
                out_dir,
                "after",
                *win_rate.evaluate("after", model, tokenizer, merged_adapters(model, settings.merge_for_eval)),
            )
    if cfg.method.get("calibrator"):
        calibrator = build(cfg.method.calibrator)
        extra.update(calibrator.fit(after["val"]["letter_logits"], after["val"]["labels"]))
        after = evaluation.transform_logits(after, calibrator.transform)

    if not is_zero:
        return {}
    results_after = write_phase(out_dir, "after", after, dm.records, cfg.n_bins)
    extra["wall_time_s"] = round(time.time() - started, 1)
    table = write_summary(out_dir, cfg, results_before, results_after, extra)
    publish_run(
        logger, yaml.safe_load(redacted_config(cfg)), {p.stem: p for p in sorted(out_dir.glob("reliability_*.png"))}
    )
    print(f"\n{table}\n\nOutputs: {out_dir}")
    return {"before": results_before["test"], "after": results_after["test"], **extra}
