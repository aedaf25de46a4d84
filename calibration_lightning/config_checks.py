"""Start-up checks of the composed config: run before any model or data loads."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from calibration_lightning.errors import ConfigError

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def options(group: str) -> list[str]:
    """The options of a config group (files under conf/GROUP, hidden ``_*`` files excluded)."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml") if not p.stem.startswith("_"))


def _require(cfg: DictConfig, key: str, ok, message: str) -> None:
    value = OmegaConf.select(cfg, key, default=None)
    if value is not None and not ok(value):
        raise ConfigError(f"{key}={value!r}: {message}")


def check_config(cfg: DictConfig) -> None:
    """Name the key and the allowed range of every out-of-range setting.

    Raises:
        ConfigError: on the first bad setting.
    """
    is_num = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)  # noqa: E731
    _require(cfg, "method.optim.lr", lambda v: is_num(v) and v > 0, "the learning rate must be > 0")
    _require(cfg, "method.optim.weight_decay", lambda v: is_num(v) and v >= 0, "must be >= 0")
    _require(cfg, "method.optim.warmup_ratio", lambda v: is_num(v) and 0 <= v < 1, "must be in [0, 1)")
    _require(cfg, "method.optim.scheduler", lambda v: v in ("cosine", "constant"), "allowed: cosine, constant")
    _require(cfg, "method.epochs", lambda v: isinstance(v, int) and v >= 1, "must be an integer >= 1")
    _require(cfg, "method.loss.lam", lambda v: is_num(v) and v >= 0, "lambda must be >= 0")
    _require(cfg, "method.loss.n_bins", lambda v: isinstance(v, int) and v >= 2, "bins must be an integer >= 2")
    _require(cfg, "method.loss.epsilon", lambda v: is_num(v) and 0 <= v < 1, "must be in [0, 1)")
    _require(cfg, "n_bins", lambda v: isinstance(v, int) and v >= 2, "bins must be an integer >= 2")
    _require(cfg, "model.lora.r", lambda v: isinstance(v, int) and v >= 1, "the LoRA rank must be an integer >= 1")
    _require(cfg, "model.lora.alpha", lambda v: is_num(v) and v > 0, "must be > 0")
    _require(cfg, "model.lora.dropout", lambda v: is_num(v) and 0 <= v < 1, "must be in [0, 1)")
    _require(cfg, "model.quantize", lambda v: v in ("auto", "nf4", "none"), "allowed: auto, nf4, none")
    _require(
        cfg,
        "model.dtype",
        lambda v: v in ("auto", "float32", "bfloat16", "float16"),
        "allowed: auto, float32, bfloat16, float16",
    )
    _require(cfg, "dataset.batch_size", lambda v: isinstance(v, int) and v >= 1, "must be an integer >= 1")
    _require(cfg, "dataset.eval_batch_size", lambda v: isinstance(v, int) and v >= 1, "must be an integer >= 1")
    _require(cfg, "dataset.max_length", lambda v: isinstance(v, int) and v >= 8, "must be an integer >= 8")
    _require(cfg, "regime.tolerance", lambda v: is_num(v) and 0 <= v <= 1, "must be in [0, 1]")
    for split in ("train", "val", "test"):
        _require(cfg, f"dataset.split.{split}", lambda v: is_num(v) and v >= 0, "must be a count >= 0 or a fraction")
    if cfg.method.get("train") and not OmegaConf.select(cfg, "dataset.split.train"):
        raise ConfigError(f"method={cfg.method.name} trains, but dataset.split.train is 0")
    _require(cfg, "regime.accuracy_tolerance", lambda v: is_num(v) and 0 <= v <= 1, "must be in [0, 1]")
    needs_val = cfg.method.get("calibrator") is not None or cfg.method.get("candidates")
    if needs_val and not OmegaConf.select(cfg, "dataset.split.val"):
        raise ConfigError(f"method={cfg.method.name} fits on the validation split, but dataset.split.val is 0")
