"""The composed config at start-up: the config folder, instantiation, and every check before data or a model
loads. Components check their own values (``OptimSettings``, ``LoraSettings``, ``ModelSettings``, the loss
heads, ``EStepRefresh``); ``check_config`` builds them, and checks what no component owns."""

from __future__ import annotations

from pathlib import Path

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig

from calibration_lightning.errors import UserError, is_integer, is_number, require
from calibration_lightning.methods import LRSearch, Method, Selection

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def options(group: str) -> list[str]:
    """The options of a config group (files under conf/GROUP, hidden ``_*`` files excluded)."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml") if not p.stem.startswith("_"))


def build(node: DictConfig, **kwargs):
    """``hydra.utils.instantiate``, re-raising our own user errors unwrapped (Hydra wraps them)."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as e:
        cause = e.__cause__
        if isinstance(cause, UserError):
            raise cause from None
        raise


def build_methods(cfg: DictConfig) -> dict[str, Method]:
    """The training methods of the run, built: ``method`` itself, or each of ``method.candidates`` (auto);
    empty for methods that do not train (none, ts)."""
    from calibration_lightning.module import OptimSettings

    nodes = dict(cfg.method.get("candidates") or ({cfg.method.name: cfg.method} if cfg.method.train else {}))
    methods = {}
    for name, node in nodes.items():
        require(
            "method.epochs", node.epochs, isinstance(node.epochs, int) and node.epochs >= 1, "must be an integer >= 1"
        )
        select, lr_search = node.get("select"), node.get("lr_search")
        methods[name] = Method(
            name,
            build(node.loss),
            OptimSettings(**node.optim),
            node.epochs,
            [build(c) for c in node.callbacks],
            Selection(**select) if select else None,
            LRSearch(**lr_search) if lr_search else None,
        )
    return methods


def check_config(cfg: DictConfig) -> dict[str, Method]:
    """Check every setting and build the run's training methods.

    Raises:
        ConfigError: on the first bad setting, naming its key and the allowed range.
    """
    from calibration_lightning.models.loading import ModelSettings

    for key, value, ok, message in (
        ("n_bins", cfg.n_bins, isinstance(cfg.n_bins, int) and cfg.n_bins >= 2, "bins must be an integer >= 2"),
        *(
            (
                f"dataset.{k}",
                cfg.dataset[k],
                isinstance(cfg.dataset[k], int) and cfg.dataset[k] >= low,
                f"must be an integer >= {low}",
            )
            for k, low in (("batch_size", 1), ("eval_batch_size", 1), ("max_length", 8))
        ),
        (
            "bootstrap.resamples",
            cfg.bootstrap.resamples,
            isinstance(cfg.bootstrap.resamples, int) and cfg.bootstrap.resamples >= 0,
            "must be an integer >= 0 (0 turns intervals off)",
        ),
        (
            "bootstrap.level",
            cfg.bootstrap.level,
            is_number(cfg.bootstrap.level) and 0 < cfg.bootstrap.level < 1,
            "must be in (0, 1), e.g. 0.95",
        ),
        ("bootstrap.seed", cfg.bootstrap.seed, isinstance(cfg.bootstrap.seed, int), "must be an integer"),
        *(
            (f"regime.{k}", cfg.regime[k], is_number(cfg.regime[k]) and 0 <= cfg.regime[k] <= 1, "must be in [0, 1]")
            for k in ("tolerance", "accuracy_tolerance")
        ),
        *(
            (f"dataset.split.{k}", v, is_number(v) and v >= 0, "must be a count >= 0 or a fraction")
            for k, v in cfg.dataset.split.items()
            if k != "seed"
        ),
        *(  # Lightning would refuse these only when a Trainer is built, after the model has loaded
            (f"trainer.{k}", cfg.trainer[k], is_integer(cfg.trainer[k]) and cfg.trainer[k] >= low, f"must be {what}")
            for k, low, what in (
                ("checkpoint_every_n_steps", 0, "an integer >= 0 (0: only at each epoch end)"),
                ("log_every_n_steps", 1, "an integer >= 1"),
                ("accumulate_grad_batches", 1, "an integer >= 1"),
            )
            if cfg.trainer.get(k) is not None
        ),
    ):
        require(key, value, ok, message)
    ModelSettings.from_config(cfg.model)
    return build_methods(cfg)
