"""The parts of a run, built from the composed config: data, datamodule, trainers, win rate, adapter weights."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping
from omegaconf import DictConfig

from calibration_lightning.config import build
from calibration_lightning.data.datamodule import MultipleChoiceDataModule
from calibration_lightning.data.prompts import PromptFormat
from calibration_lightning.data.splits import Splits, split_records
from calibration_lightning.errors import ConfigError
from calibration_lightning.methods import Method
from calibration_lightning.outputs.checkpoints import BestCheckpoint, last_checkpoints
from calibration_lightning.winrate.evaluate import WinRate


def device(cfg: DictConfig) -> str:
    """Where the model loads: CUDA when the trainer may use a GPU and one is there."""
    wants_gpu = cfg.trainer.accelerator in ("auto", "gpu", "cuda")
    return "cuda" if wants_gpu and torch.cuda.is_available() else "cpu"


def build_trainer(
    cfg: DictConfig,
    out_dir: Path,
    logger,
    method: Method | None = None,
    ckpt_dir: Path | None = None,
    validates: bool = True,
    baseline: float | None = None,
    initial: dict | None = None,
    baseline_terms=None,
) -> L.Trainer:
    """A Lightning Trainer: for evaluation only (``method=None``), or for training ``method`` with its
    callbacks, its ``max_epochs`` and checkpoints in ``ckpt_dir``, all given to the constructor
    (``validates``: the run has a validation split, evaluated after every epoch; ``baseline``: the
    selection monitor of the model before training, the score every epoch must beat; ``initial``: the
    untrained adapters, where ``method.select.backtrack_factor`` goes back to when no round beat them;
    ``baseline_terms``: the untrained model's per-question monitor terms, for backtracking's noise test)."""
    kwargs = dict(build(cfg.trainer, _convert_="all"))  # a strategy may itself be a _target_ node
    every = kwargs.pop("checkpoint_every_n_steps")
    callbacks = []
    if method is not None:
        kwargs["max_epochs"] = method.epochs  # passes; training.py turns them into rounds
        callbacks = list(method.callbacks)
        if method.select:  # both decide at validation end, and before last.ckpt saves their state (order kept)
            s = method.select
            stopping = EarlyStopping(
                monitor=s.monitor,
                mode=s.mode,
                min_delta=s.min_delta,
                patience=s.patience,
                check_on_train_epoch_end=False,
            )
            if baseline is not None:  # the untrained model is epoch 0: patience counts from it (in state_dict)
                stopping.best_score = torch.tensor(float(baseline))
            best = BestCheckpoint(ckpt_dir, s.monitor, s.mode, s.min_delta, baseline)
            callbacks += [stopping, best]
            if s.backtrack_factor is not None and initial is not None:
                from calibration_lightning.backtracking import Backtrack

                callbacks.append(
                    Backtrack(
                        stopping, best, initial, s.backtrack_factor, s.max_backtracks, s.backtrack_z, baseline_terms
                    )
                )
        callbacks += last_checkpoints(ckpt_dir, every, validates)
    # Batches are sharded across ranks by our own samplers (length-grouped), not by DistributedSampler.
    return L.Trainer(
        **kwargs,
        logger=logger,
        default_root_dir=out_dir,
        callbacks=callbacks,
        enable_checkpointing=method is not None,  # a Trainer that does not train saves nothing
        enable_model_summary=False,
        use_distributed_sampler=False,
    )


def describe_run(cfg: DictConfig, dm: MultipleChoiceDataModule, settings) -> str:
    """The run's first line: model, method, data sizes, device and precision."""
    from calibration_lightning.models.loading import model_label, resolve_dtype, resolve_quantize

    where = device(cfg)
    sizes = ", ".join(f"{name} {len(records)}" for name, records in dm.records.items())
    dtype = str(resolve_dtype(settings.dtype, where)).removeprefix("torch.")
    return (
        f"model {model_label(cfg.model)}, method {cfg.method.name}; questions: {sizes}; device {where}, "
        f"{dtype}, quantization {resolve_quantize(settings.quantize, where)}"
    )


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
        cfg.dataset.get("eval_tokens_per_batch", 0),
    )


def check_splits(cfg: DictConfig, splits: Splits, methods: dict[str, Method]) -> None:
    """Refuse, before any model loads, a split the method needs that came out empty."""
    selects = any(m.select or m.lr_search for m in methods.values())
    chooses = bool(cfg.method.get("calibrator")) or len(methods) > 1 or selects
    needs = {"train": bool(methods), "val": chooses, "test": True}
    why = {"train": "trains on it", "val": "fits or chooses on it", "test": "reports on it"}
    if selects and not splits.val:
        why["val"] += (
            " (method.select chooses the training length and method.lr_search the learning rate; "
            "method.select=null method.lr_search=null train method.epochs at method.optim.lr)"
        )
    for split, needed in needs.items():
        if needed and not getattr(splits, split):
            raise ConfigError(
                f"dataset.split.{split}: the {split} split is empty, and method={cfg.method.name} {why[split]} "
                f"(found train={len(splits.train)}, val={len(splits.val)}, test={len(splits.test)}); "
                f"give dataset.split.{split} a count > 0 or a fraction (or use a larger data file)"
            )


def adapter_weights(model) -> dict[str, torch.Tensor]:
    """A CPU copy of the LoRA weights (what ``save_pretrained`` writes)."""
    from peft import get_peft_model_state_dict

    return {k: v.detach().cpu().clone() for k, v in get_peft_model_state_dict(model).items()}


def set_adapter_weights(model, weights: dict[str, torch.Tensor]) -> None:
    from peft import set_peft_model_state_dict

    set_peft_model_state_dict(model, weights)
