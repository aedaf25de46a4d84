"""The config: one dataclass per section, the objects the code receives.

Hydra composes conf/config.yaml against them (ConfigStore), refusing wrong types and choices; defaults live in the
YAML files only. ``validate`` refuses unknown keys, checks each range in its class's ``check``, builds the method's
components and reports every problem in one refusal (``errors.every_problem``).
"""

from __future__ import annotations

import copy
import difflib
import inspect
import math
from dataclasses import dataclass, field, fields, is_dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.errors import InstantiationException
from hydra.utils import get_method, instantiate
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf, open_dict

from calibration_lightning.bundled import CONF_DIR
from calibration_lightning.calibration.bootstrap import MIN_RESAMPLES, resamples_allowed
from calibration_lightning.calibration.metrics import METRICS
from calibration_lightning.data.prompts import PromptFormat
from calibration_lightning.errors import ConfigError, Section, UserError, every_problem, is_integer, is_number, require

SCHEMA = "calibration_lightning_schema"  # the first entry of conf/config.yaml's defaults list
HIGHER_IS_BETTER = ("accuracy",)
MONITORS = tuple(f"val/{name}" for name in METRICS)
OBJECTIVES = (*MONITORS, "val/conf_ece_debiased", "val/cw_ece_debiased")  # what the run logs of validation


class Choice(str, Enum):
    """A config choice: compares and prints as its value."""

    def __str__(self) -> str:
        return self.value

    __format__ = str.__format__


Dtype = Choice("Dtype", [(v, v) for v in ("auto", "float32", "bfloat16", "float16")])  # auto: bf16 on CUDA
Quantize = Choice("Quantize", [(v, v) for v in ("auto", "nf4", "none")])  # auto: nf4 on CUDA, none on CPU
LoraCompute = Choice("LoraCompute", [(v, v) for v in ("float32", "bfloat16")])
Scheduler = Choice("Scheduler", [(v, v) for v in ("cosine", "constant")])


def _one_of(key: str, value, allowed: tuple) -> None:
    ok = any(value is a if isinstance(a, bool) else value == a for a in allowed)  # 1 is not true here
    require(key, value, ok, "allowed: " + ", ".join(map(str, allowed)).lower())


@dataclass
class LoraConf(Section):
    r: int = MISSING
    alpha: Any = MISSING  # int or float: written as given into adapter_config.json
    dropout: float = MISSING
    target_modules: Any = MISSING  # "all-linear" or a list of module names

    def check(self) -> None:
        require("model.lora.r", self.r, self.r >= 1, "the LoRA rank must be an integer >= 1")
        require("model.lora.alpha", self.alpha, is_number(self.alpha) and self.alpha > 0, "must be > 0")
        require("model.lora.dropout", self.dropout, 0 <= self.dropout < 1, "must be in [0, 1)")


@dataclass
class ModelConf(Section):
    """``model``: where the model comes from (``loader``, a ``_target_`` node) and how it is loaded and adapted."""

    name: str = MISSING
    loader: Any = MISSING
    dtype: Dtype = MISSING
    quantize: Quantize = MISSING
    trust_remote_code: bool = MISSING
    use_safetensors: bool | None = MISSING
    revision: str | None = None
    gradient_checkpointing: Any = MISSING  # auto | true | false
    compile: bool = MISSING
    merge_for_eval: Any = MISSING  # auto | dequantize | true | false
    lora_compute: LoraCompute = MISSING
    tf32: bool = MISSING
    liger: bool = MISSING
    adapter: str | None = None
    lora: LoraConf = field(default_factory=LoraConf)

    def check(self) -> None:
        _one_of("model.merge_for_eval", self.merge_for_eval, ("auto", "dequantize", True, False))
        _one_of("model.gradient_checkpointing", self.gradient_checkpointing, ("auto", True, False))
        if self.liger:
            import importlib.util

            import torch

            cuda = torch.cuda.is_available()
            require(
                "model.liger", True, cuda and importlib.util.find_spec("liger_kernel") is not None,
                "Liger's kernels are Triton GPU kernels: they need a CUDA GPU and the liger-kernel package "
                f"(CUDA available: {cuda}; pip install liger-kernel); use model.liger=false",
            )  # fmt: skip
        if self.adapter is not None:
            from calibration_lightning.models.artifacts import check_adapter

            folder = Path(self.adapter).expanduser()
            local = folder.exists() or self.adapter.startswith((".", "/", "~")) or self.adapter.count("/") != 1
            found = not local or (folder / "adapter_config.json").is_file()
            require("model.adapter", self.adapter, found, "no peft adapter there (a folder with adapter_config.json, "
                    "e.g. a run's adapter/ folder, or a hub id ORG/NAME)")  # fmt: skip
            if found:
                check_adapter(self.adapter)  # complete and loadable, before the base model loads

    @property
    def label(self) -> str:
        """How runs name the model: the hub id or folder of ``model=hf``, else ``name``; ``+ADAPTER`` after it."""
        path = (self.loader or {}).get("name_or_path")
        label = str(path) if path else self.name
        return f"{label}+{self.adapter}" if self.adapter else label


@dataclass
class OptimConf(Section):
    """``method.optim``: AdamW and its schedule (``warmup_steps`` overrides ``warmup_ratio`` when set)."""

    lr: float = MISSING
    weight_decay: float = MISSING
    scheduler: Scheduler = MISSING
    warmup_ratio: float = MISSING  # of all optimizer steps
    warmup_steps: int | None = None

    def check(self) -> None:
        require("method.optim.lr", self.lr, self.lr > 0, "the learning rate must be > 0")
        require("method.optim.weight_decay", self.weight_decay, self.weight_decay >= 0, "must be >= 0")
        require("method.optim.warmup_ratio", self.warmup_ratio, 0 <= self.warmup_ratio < 1, "must be in [0, 1)")
        steps = self.warmup_steps
        require("method.optim.warmup_steps", steps, steps is None or steps >= 0, "must be null or an integer >= 0")


@dataclass
class SelectConf(Section):
    """``method.select``: the training length (and a smaller learning rate) chosen on the validation split, every
    ``every_n_steps`` optimizer steps (0: every pass); ``selection.Backtracking``, docs/methods.md."""

    monitor: str = MISSING
    min_delta: float = MISSING
    patience: int = MISSING
    every_n_steps: int = MISSING
    backtrack_factor: float | None = None
    max_backtracks: int = MISSING
    backtrack_z: float | None = None

    def check(self) -> None:
        require("method.select.monitor", self.monitor, self.monitor in MONITORS, f"allowed: {', '.join(MONITORS)}")
        require("method.select.min_delta", self.min_delta, self.min_delta >= 0, "must be a number >= 0")
        require("method.select.patience", self.patience, self.patience >= 1, "must be an integer >= 1")
        require("method.select.every_n_steps", self.every_n_steps, self.every_n_steps >= 0, "must be an integer >= 0")
        f = self.backtrack_factor
        ok = f is None or (is_number(f) and 0 < f < 1)
        require("method.select.backtrack_factor", f, ok, "must be null (no backtracking) or a number in (0, 1)")
        n = self.max_backtracks
        require("method.select.max_backtracks", n, n >= 0, "must be an integer >= 0")
        z = self.backtrack_z
        require("method.select.backtrack_z", z, z is None or (is_number(z) and z >= 0), "must be null or a number >= 0")

    @property
    def mode(self) -> str:
        return "max" if self.monitor.removeprefix("val/") in HIGHER_IS_BETTER else "min"


@dataclass
class LRSearchConf(Section):
    """``method.lr_search``: the learning rate chosen on validation by successive halving (``lr_search.py``)."""

    lrs: list[float] = MISSING
    probe_steps: int = MISSING
    eta: int = MISSING
    z: float = MISSING

    def check(self) -> None:
        ok = len(self.lrs) >= 1 and all(is_number(x) and x > 0 for x in self.lrs)
        require("method.lr_search.lrs", list(self.lrs), ok, "must be a non-empty list of learning rates > 0")
        require("method.lr_search.probe_steps", self.probe_steps, self.probe_steps >= 1, "must be an integer >= 1")
        require("method.lr_search.eta", self.eta, self.eta >= 2, "must be an integer >= 2")
        require("method.lr_search.z", self.z, self.z >= 0, "must be a number >= 0")

    def rungs(self) -> list[tuple[int, int]]:
        """``(candidates trained, steps each)`` per rung; the best ``ceil(n / eta)`` go on, ``eta`` times longer."""
        n, steps, plan = len(self.lrs), self.probe_steps, []
        while n > 1:
            plan.append((n, steps))
            n, steps = math.ceil(n / self.eta), steps * self.eta
        return plan


@dataclass
class MethodConf(Section):
    """``method``: what is trained (after ``validate``, ``loss`` and ``callbacks`` are built objects) and chosen on
    validation; a post-hoc ``calibrator``; for ``method=auto``, ``candidates`` and ``accuracy_z``."""

    name: str = MISSING
    train: bool = MISSING
    epochs: int | None = None  # the most, with select
    select: SelectConf | None = None
    lr_search: LRSearchConf | None = None
    accuracy_z: float | None = None
    loss: Any = None
    callbacks: list[Any] = field(default_factory=list)
    calibrator: Any = None
    optim: OptimConf | None = None
    candidates: dict[str, MethodConf] = field(default_factory=dict)

    def check(self) -> None:
        if self.epochs is not None:
            require("method.epochs", self.epochs, self.epochs >= 1, "must be an integer >= 1")
        z = self.accuracy_z
        require("method.accuracy_z", z, z is None or (is_number(z) and z >= 0), "must be null or a number >= 0")
        if self.train:
            for key in ("loss", "optim", "epochs"):
                value = getattr(self, key)
                require(f"method.{key}", value, value is not None, "a trained method needs it")

    def trained(self) -> dict[str, MethodConf]:
        """The methods a run trains: this one, or auto's candidates (inheriting auto's ``lr_search``); empty for
        none and ts."""
        if self.candidates:
            for candidate in self.candidates.values():
                candidate.lr_search = candidate.lr_search or self.lr_search
            return dict(self.candidates)
        return {self.name: self} if self.train else {}


@dataclass
class SplitConf(Section):
    seed: int = MISSING
    train: Any = MISSING  # a count (int) or a fraction of the source (float); OmegaConf 2.3 has no Union
    val: Any = MISSING
    test: Any = MISSING

    def check(self) -> None:
        for k in ("train", "val", "test"):
            v = getattr(self, k)
            ok = is_number(v) and v >= 0 and (isinstance(v, int) or v < 1 or float(v).is_integer())
            require(f"dataset.split.{k}", v, ok, "must be a count >= 0 or a fraction in (0, 1)")


@dataclass
class DatasetConf(Section):
    """``dataset``: records from ``source`` (and ``test_source``), split, turned into prompts, batched."""

    name: str = MISSING
    path: str | None = None  # dataset=jsonl
    source: Any = MISSING
    test_source: Any = None
    split: SplitConf = field(default_factory=SplitConf)
    prompt: PromptFormat = field(default_factory=PromptFormat)
    batch_size: int = MISSING
    eval_batch_size: int = MISSING
    eval_tokens_per_batch: int = MISSING  # > 0: scoring batches by a token budget instead of eval_batch_size
    max_length: int = MISSING

    def check(self) -> None:
        for k, low in (("batch_size", 1), ("eval_batch_size", 1), ("eval_tokens_per_batch", 0), ("max_length", 8)):
            require(f"dataset.{k}", getattr(self, k), getattr(self, k) >= low, f"must be an integer >= {low}")


@dataclass
class WinRateConf(Section):
    enabled: bool = MISSING
    instructions: Any = None
    max_new_tokens: int | None = None
    batch_size: int | None = None
    greedy: bool | None = None


@dataclass
class BootstrapConf(Section):
    resamples: int = MISSING
    level: float = MISSING
    seed: int = MISSING

    def check(self) -> None:
        ok = resamples_allowed(self.resamples)
        off = f"must be 0 (no intervals) or at least {MIN_RESAMPLES} (fewer leave an interval's ends to few draws)"
        require("bootstrap.resamples", self.resamples, ok, off)
        require("bootstrap.level", self.level, 0 < self.level < 1, "must be in (0, 1), e.g. 0.95")


@dataclass
class RegimeConf(Section):
    tolerance: float = MISSING
    accuracy_tolerance: float = MISSING

    def check(self) -> None:
        for k in ("tolerance", "accuracy_tolerance"):
            require(f"regime.{k}", getattr(self, k), 0 <= getattr(self, k) <= 1, "must be in [0, 1]")


@dataclass
class Config(Section):
    model: ModelConf = field(default_factory=ModelConf)
    method: MethodConf = field(default_factory=MethodConf)
    dataset: DatasetConf = field(default_factory=DatasetConf)
    trainer: dict[str, Any] = field(default_factory=dict)  # Lightning's Trainer arguments (trainer.py)
    logger: Any = None  # a _target_ node, or none
    win_rate: WinRateConf = field(default_factory=WinRateConf)
    judge: Any = None  # a _target_ node
    seed: int = MISSING
    n_bins: int = MISSING
    resume: bool = MISSING
    output_dir: str = MISSING
    eval_sets: dict[str, Any] = field(default_factory=dict)
    bootstrap: BootstrapConf = field(default_factory=BootstrapConf)
    regime: RegimeConf = field(default_factory=RegimeConf)
    optimized_metric: str = MISSING  # the run's objective: a validation metric after training (what sweeps optimise)

    def check(self) -> None:
        require("n_bins", self.n_bins, self.n_bins >= 2, "bins must be an integer >= 2")
        ok = self.optimized_metric in OBJECTIVES
        require("optimized_metric", self.optimized_metric, ok, f"a validation metric: {', '.join(OBJECTIVES)}")
        check_trainer_args(self.trainer)


# -- trainer: Lightning's own arguments ---------------------------------------------------------------------
OURS = ("checkpoint_every_n_steps",)
OWNED = {  # Trainer arguments the run sets itself -> what to use instead
    "callbacks": "method.callbacks",
    "logger": "the logger group (logger=csv, logger=[csv,wandb], logger=tensorboard, ...)",
    "default_root_dir": "hydra.run.dir",
    "enable_checkpointing": "trainer.checkpoint_every_n_steps (checkpoints/last.ckpt is always written)",
    "use_distributed_sampler": "nothing: the run's own samplers shard batches across processes",
    "val_check_interval": "method.select.every_n_steps",
    "check_val_every_n_epoch": "method.select.every_n_steps",
    "limit_val_batches": "dataset.split.val (validation scores every question of the split)",
    "limit_test_batches": "dataset.split.test",
    "limit_predict_batches": "dataset.split.test (scoring covers every question)",
    "overfit_batches": "dataset.split.train",
    "reload_dataloaders_every_n_epochs": "nothing: training batches are dealt anew every pass",
    "fast_dev_run": "a short run: model=tiny, small dataset.split counts and trainer.max_steps=N",
    "barebones": "nothing: the run needs its logger, checkpoints and callbacks",
}


def trainer_keys() -> set[str]:
    """Lightning's Trainer arguments and ours."""
    import lightning as L

    return set(inspect.signature(L.Trainer.__init__).parameters) - {"self"} | set(OURS)


def check_trainer_args(args: dict) -> None:
    """Refuse a ``trainer`` key that is no Trainer argument or one the run sets itself, and out-of-range values."""
    allowed = trainer_keys()
    for key, value in args.items():
        if key in OWNED:
            require(f"trainer.{key}", value, False, f"the run sets it itself; use {OWNED[key]}")
        elif key not in allowed:
            hint = did_you_mean(f"trainer.{key}", allowed)
            require(f"trainer.{key}", value, False, f"not a Lightning Trainer argument{hint}")
    for key, low in (("checkpoint_every_n_steps", 0), ("log_every_n_steps", 1), ("accumulate_grad_batches", 1)):
        value = args.get(key, low)
        require(f"trainer.{key}", value, is_integer(value) and value >= low, f"must be an integer >= {low}")
    epochs = args.get("max_epochs")
    require("trainer.max_epochs", epochs, epochs is None or (is_integer(epochs) and epochs >= 1),
            "must be null (method.epochs decides) or an integer >= 1")  # fmt: skip


# -- validation --------------------------------------------------------------------------------------------
HYDRA_KEYS = ("_target_", "_convert_", "_recursive_", "_partial_", "_args_")


def did_you_mean(key: str, valid) -> str:
    """``"; did you mean A or B?"``: the valid names closest to ``key``'s last part (empty when none is close)."""
    head, dot, last = key.rpartition(".")
    close = difflib.get_close_matches(last, sorted(str(v) for v in valid), n=3, cutoff=0.5)
    return f"; did you mean {' or '.join(head + dot + c for c in close)}?" if close else ""


def nearest(key: str, valid) -> str:
    """The refusal of a key the config does not have, with the closest valid names."""
    return f"{key}: no such key{did_you_mean(key, valid)} (`python -m calibration_lightning --cfg job` lists every key)"


def keys_at(path: str) -> list[str] | None:
    """The keys the config node at dotted ``path`` may have (for hints): a section's fields, Lightning's Trainer
    arguments under ``trainer``; None where the schema does not say (``_target_`` nodes, unknown paths)."""
    import typing

    kind: Any = Config
    for part in [p for p in path.split(".") if p]:
        if kind is Config and part == "trainer":
            kind = "trainer"
        elif typing.get_origin(kind) is dict:
            kind = typing.get_args(kind)[1]
        elif is_dataclass(kind):
            kind = typing.get_type_hints(kind).get(part)
            args = [a for a in typing.get_args(kind) if a is not type(None)]
            kind = args[0] if typing.get_origin(kind) is not dict and len(args) == 1 else kind
        else:
            return None
    if kind == "trainer":
        return sorted(trainer_keys())
    return sorted(f.name for f in fields(kind)) if is_dataclass(kind) else None


def _target_parameters(target: str) -> set[str] | None:
    """The keys of a ``_target_`` node (its callable's keyword parameters, Hydra's); None: any or unknown."""
    try:
        fn = get_method(target)
    except Exception:  # a target that cannot be imported: instantiate says so
        return None
    params = inspect.signature(fn).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params if p.name not in ("self", "args")} | set(HYDRA_KEYS)


def unknown_keys(node, kind=None, path: str = "") -> list[str]:
    """Keys of ``node`` that its section does not have: in typed sections (dataclasses) and ``_target_`` nodes
    (the target's parameters); each with the nearest valid names."""
    if isinstance(node, ListConfig):
        return [p for i, item in enumerate(node) for p in unknown_keys(item, None, f"{path}[{i}]")]
    if not isinstance(node, DictConfig) or node._is_missing() or node._is_none():
        return []
    kind = OmegaConf.get_type(node) if kind is None else kind
    problems: list[str] = []
    if is_dataclass(kind):
        valid: set[str] | None = {f.name for f in fields(kind)}
    else:
        valid = _target_parameters(str(node._get_node("_target_")._value())) if "_target_" in node else None
    for key in node.keys():
        child = f"{path}.{key}" if path else str(key)
        if valid is not None and key not in valid:
            problems.append(nearest(child, sorted(valid - set(HYDRA_KEYS))))
        elif path != "trainer":
            problems += unknown_keys(node._get_node(key), None, child)
    return problems


def build(node: Any, key: str, **kwargs):
    """``hydra.utils.instantiate`` of a ``_target_`` node; our own user errors come out unwrapped, others as one
    ConfigError naming ``key``."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as e:
        cause = e.__cause__
        if isinstance(cause, UserError):
            raise cause from None
        raise ConfigError(f"{key}: cannot build {dict(node).get('_target_')} ({cause or e})") from None


def validate(cfg: DictConfig) -> Config:
    """The composed config (without its ``hydra`` node) as ``Config``: unknown and missing keys, then every range
    and the method's components; a ConfigError lists every problem of a round at once."""
    problems = unknown_keys(cfg, Config)
    if not cfg.method.train and not cfg.method.candidates:  # none, ts: the settings of training do not apply
        cfg = copy.deepcopy(cfg)
        with open_dict(cfg):
            for key in ("epochs", "select", "lr_search", "loss", "optim"):
                cfg.method[key] = None
    problems += [f"{k}: no value given; pass {k}=..." for k in sorted(OmegaConf.missing_keys(cfg)) if k != "hydra"]
    if problems:
        raise ConfigError(problems)
    with every_problem():
        config: Config = OmegaConf.to_object(cfg)
        for name, method in config.method.trained().items():
            prefix = "method" if name == config.method.name else f"method.candidates.{name}"
            method.loss = build(method.loss, f"{prefix}.loss")
            method.callbacks = [build(c, f"{prefix}.callbacks") for c in method.callbacks]
        if config.method.calibrator is not None:
            config.method.calibrator = build(config.method.calibrator, "method.calibrator")
    return config


def compose(*overrides: str) -> Config:
    """conf/config.yaml with Hydra ``overrides`` (``"model=tiny"``, ``"method.optim.lr=1e-3"``), validated: the
    run's config objects outside a run (notebooks, benchmarks, tests). ``output_dir`` defaults to ``.``."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return validate(hydra_compose("config", overrides=["output_dir=.", *overrides]))


def load(path) -> Config:
    """A run's written ``config.yaml`` (resolved) as the config objects it ran with."""
    return validate(OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.load(path)))


ConfigStore.instance().store(name=SCHEMA, node=Config)
