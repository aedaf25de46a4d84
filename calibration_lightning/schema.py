"""The composed config's schema: Hydra ConfigStore dataclasses under the YAML files of ``conf/``.

OmegaConf checks every value against these while Hydra composes the config, so a wrong type
(``n_bins=abc``), an unknown key (``method.optim.lrr``) or a value outside a choice (``model.quantize=int3``)
is refused naming its key before anything runs. Ranges are checked in ``__post_init__`` when the composed
config becomes objects (``validate``); the settings of components (``OptimSettings``, ``LoraSettings``,
``ModelSettings``, ``Selection``, the loss heads, ``EStepRefresh``) check their own ranges when built.
``_target_`` nodes (a dataset's source, a model's loader, a loss head) are ``Any``: their component checks them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from calibration_lightning.errors import is_number, require

SCHEMA = "calibration_lightning_schema"  # the first entry of conf/config.yaml's defaults list


class Dtype(str, Enum):
    auto = "auto"  # bfloat16 on CUDA, float32 on CPU
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


class Quantize(str, Enum):
    auto = "auto"  # nf4 on CUDA, none on CPU
    nf4 = "nf4"
    none = "none"


class LoraCompute(str, Enum):
    float32 = "float32"
    bfloat16 = "bfloat16"  # LoRA matmuls under bf16 autocast, fp32 master weights


class Scheduler(str, Enum):
    cosine = "cosine"
    constant = "constant"


@dataclass
class LoraConf:
    r: int = 8
    alpha: Any = 16  # int or float: written as given into adapter_config.json
    dropout: float = 0.0
    target_modules: Any = "all-linear"  # "all-linear" or a list of module names


@dataclass
class ModelConf:
    name: str = MISSING
    loader: Any = MISSING
    dtype: Dtype = Dtype.auto
    quantize: Quantize = Quantize.auto
    trust_remote_code: bool = False
    use_safetensors: bool | None = True
    revision: str | None = None
    gradient_checkpointing: Any = "auto"  # auto | true | false
    compile: bool = False
    merge_for_eval: Any = "auto"  # auto | dequantize | true | false
    lora_compute: LoraCompute = LoraCompute.float32
    tf32: bool = False
    liger: bool = False
    adapter: str | None = None
    lora: LoraConf = field(default_factory=LoraConf)

    def __post_init__(self) -> None:
        for key, allowed in (
            ("merge_for_eval", ("auto", "dequantize", True, False)),
            ("gradient_checkpointing", ("auto", True, False)),
        ):
            value = getattr(self, key)
            ok = any(value is a if isinstance(a, bool) else value == a for a in allowed)  # 1 is not true here
            require(f"model.{key}", value, ok, "allowed: " + ", ".join(map(str, allowed)).lower())


@dataclass
class OptimConf:
    lr: float = 1e-4
    weight_decay: float = 0.0
    scheduler: Scheduler = Scheduler.cosine
    warmup_ratio: float = 0.1
    warmup_steps: int | None = None


@dataclass
class SelectConf:
    monitor: str = "val/nll"
    min_delta: float = 0.0
    patience: int = 2
    every_n_steps: int = 0
    backtrack_factor: float | None = None
    max_backtracks: int = 1
    backtrack_z: float | None = 1.0


@dataclass
class LRSearchConf:
    lrs: list[float] = field(default_factory=lambda: [1.5e-4, 5.0e-4, 1.5e-3])
    probe_steps: int = 10
    eta: int = 3
    z: float = 1.0


@dataclass
class MethodConf:
    name: str = MISSING
    train: bool = False
    epochs: int = 1
    select: SelectConf | None = None
    lr_search: LRSearchConf | None = None
    accuracy_z: float = 1.96  # method=auto: the noise allowance of its accuracy test
    loss: Any = None
    callbacks: list[Any] = field(default_factory=list)
    calibrator: Any = None
    optim: OptimConf = field(default_factory=OptimConf)
    candidates: dict[str, MethodConf] = field(default_factory=dict)  # method=auto

    def __post_init__(self) -> None:
        require("method.epochs", self.epochs, self.epochs >= 1, "must be an integer >= 1")


@dataclass
class SplitConf:
    seed: int = 0
    # A count (int) or a fraction of the source (float): OmegaConf 2.3 has no Union, so typed here.
    train: Any = 0.6
    val: Any = 0.2
    test: Any = 0.2

    def __post_init__(self) -> None:
        for k in ("train", "val", "test"):
            v = getattr(self, k)
            require(f"dataset.split.{k}", v, is_number(v) and v >= 0, "must be a count >= 0 or a fraction")


@dataclass
class PromptConf:
    template: str = MISSING
    choice_format: str = MISSING
    answer_cue: str = MISSING
    answer_prefix: str = MISSING
    chat_template: bool = False
    system_prompt: str | None = None


@dataclass
class DatasetConf:
    name: str = MISSING
    path: str | None = None  # dataset=jsonl
    source: Any = MISSING
    test_source: Any = None
    split: SplitConf = field(default_factory=SplitConf)
    prompt: PromptConf = field(default_factory=PromptConf)
    batch_size: int = 8
    eval_batch_size: int = 16
    eval_tokens_per_batch: int = 0  # > 0: scoring batches by a token budget instead of eval_batch_size
    max_length: int = 1024

    def __post_init__(self) -> None:
        for k, low in (("batch_size", 1), ("eval_batch_size", 1), ("eval_tokens_per_batch", 0), ("max_length", 8)):
            require(f"dataset.{k}", getattr(self, k), getattr(self, k) >= low, f"must be an integer >= {low}")


@dataclass
class TrainerConf:
    """Lightning Trainer arguments (everything but max_epochs, logger and callbacks, which the run sets)."""

    accelerator: str = "auto"
    devices: Any = 1  # a count, a list of indices or "auto"
    strategy: Any = "auto"  # a name or a _target_ node
    precision: Any = None
    accumulate_grad_batches: int = 1
    gradient_clip_val: float | None = None
    log_every_n_steps: int = 50
    num_sanity_val_steps: int = 0
    enable_progress_bar: bool = True
    deterministic: Any = False  # true | false | warn
    inference_mode: bool = True
    checkpoint_every_n_steps: int = 0  # ours, not Lightning's: also saved at every epoch end

    def __post_init__(self) -> None:
        # Lightning would refuse these only when a Trainer is built, after the model has loaded.
        for k, low, what in (
            ("checkpoint_every_n_steps", 0, "an integer >= 0 (0: only at each epoch end)"),
            ("log_every_n_steps", 1, "an integer >= 1"),
            ("accumulate_grad_batches", 1, "an integer >= 1"),
        ):
            require(f"trainer.{k}", getattr(self, k), getattr(self, k) >= low, f"must be {what}")


@dataclass
class WinRateConf:
    enabled: bool = False
    instructions: Any = None
    max_new_tokens: int = 64
    batch_size: int = 8
    greedy: bool = True


@dataclass
class BootstrapConf:
    resamples: int = 1000
    level: float = 0.95
    seed: int = 0

    def __post_init__(self) -> None:
        off = "must be an integer >= 0 (0 turns intervals off)"
        require("bootstrap.resamples", self.resamples, self.resamples >= 0, off)
        require("bootstrap.level", self.level, 0 < self.level < 1, "must be in (0, 1), e.g. 0.95")


@dataclass
class RegimeConf:
    tolerance: float = 0.05
    accuracy_tolerance: float = 0.02

    def __post_init__(self) -> None:
        for k in ("tolerance", "accuracy_tolerance"):
            require(f"regime.{k}", getattr(self, k), 0 <= getattr(self, k) <= 1, "must be in [0, 1]")


@dataclass
class Config:
    model: ModelConf = field(default_factory=ModelConf)
    method: MethodConf = field(default_factory=MethodConf)
    dataset: DatasetConf = field(default_factory=DatasetConf)
    trainer: TrainerConf = field(default_factory=TrainerConf)
    logger: Any = None  # a _target_ node, or none
    win_rate: WinRateConf = field(default_factory=WinRateConf)
    judge: Any = None  # a _target_ node
    seed: int = 0
    n_bins: int = 10
    resume: bool = False
    output_dir: str = MISSING
    eval_sets: dict[str, Any] = field(default_factory=dict)
    bootstrap: BootstrapConf = field(default_factory=BootstrapConf)
    regime: RegimeConf = field(default_factory=RegimeConf)

    def __post_init__(self) -> None:
        require("n_bins", self.n_bins, self.n_bins >= 2, "bins must be an integer >= 2")


def validate(cfg: DictConfig) -> Config:
    """The composed config as objects: every ``__post_init__`` range check runs (types were checked while
    composing). Raises ``ConfigError`` naming the first key out of range."""
    return OmegaConf.to_object(cfg)


ConfigStore.instance().store(name=SCHEMA, node=Config)
