"""The config folder, instantiation, and the training methods built from the composed config.

Types, choices and unknown keys are checked by the schema while Hydra composes (``schema.py``); ranges when
the composed config becomes objects (``schema.validate``) and when components are built (``build_methods``,
``ModelSettings``)."""

from __future__ import annotations

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from calibration_lightning import schema  # noqa: F401 (registers the schema every composition starts from)
from calibration_lightning.bundled import CONF_DIR  # the checkout's conf/, or the wheel's copy inside the package
from calibration_lightning.errors import UserError
from calibration_lightning.methods import LRSearch, Method, Selection


def options(group: str) -> list[str]:
    """The options of a config group (files under conf/GROUP)."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def build(node: DictConfig, **kwargs):
    """``hydra.utils.instantiate``, re-raising our own user errors unwrapped (Hydra wraps them)."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as e:
        cause = e.__cause__
        if isinstance(cause, UserError):
            raise cause from None
        raise


def plain(node: DictConfig) -> dict:
    """A config node as a plain dict, choices (enums) as their names."""
    return OmegaConf.to_container(node, resolve=True, enum_to_str=True)


def build_methods(cfg: DictConfig) -> dict[str, Method]:
    """The training methods of the run, built: ``method`` itself, or each of ``method.candidates`` (auto);
    empty for methods that do not train (none, ts)."""
    from calibration_lightning.module import OptimSettings

    nodes = dict(cfg.method.get("candidates") or ({cfg.method.name: cfg.method} if cfg.method.train else {}))
    methods = {}
    for name, node in nodes.items():
        # method=auto: a learning-rate search set on the method itself (+experiment=lr_search) is every candidate's
        select, lr_search = node.get("select"), node.get("lr_search") or cfg.method.get("lr_search")
        methods[name] = Method(
            name,
            build(node.loss),
            OptimSettings(**plain(node.optim)),
            node.epochs,
            [build(c) for c in node.callbacks],
            Selection(**plain(select)) if select else None,
            LRSearch(**plain(lr_search)) if lr_search else None,
        )
    return methods
