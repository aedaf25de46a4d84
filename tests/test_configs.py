"""Every shipped config composes; bad settings fail at start-up naming the key."""

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from calibration_lightning.config import CONF_DIR, check_config, options
from calibration_lightning.errors import ConfigError

GROUPS = ("model", "method", "dataset", "trainer", "logger")


def _compose(*overrides):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=["output_dir=/tmp/unused", *overrides])


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_group_option_composes_and_passes_checks(group, option):
    extra = ["dataset.path=x.jsonl"] if (group, option) == ("dataset", "jsonl") else []
    extra += ["model.loader.name_or_path=org/name"] if (group, option) == ("model", "hf") else []
    cfg = _compose(f"{group}={option}", *extra)
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    check_config(cfg)


def test_unknown_option_lists_the_allowed_ones():
    with pytest.raises(ConfigCompositionException, match="(?s)Could not find 'method/rcf'.*rcft"):
        _compose("method=rcf")


def test_misspelt_key_is_rejected():
    with pytest.raises(ConfigCompositionException, match="lrr"):
        _compose("method.optim.lrr=0.1")


@pytest.mark.parametrize(
    "override,key",
    [
        ("method.optim.lr=-1e-4", "method.optim.lr"),
        ("method.optim.lr=0", "method.optim.lr"),
        ("n_bins=1", "n_bins"),
        ("model.lora.r=0", "model.lora.r"),
        ("method.epochs=0", "method.epochs"),
        ("model.quantize=int3", "model.quantize"),
    ],
)
def test_out_of_range_numbers_are_named(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        check_config(_compose(override))


@pytest.mark.parametrize(
    "override,key",
    [
        ("method.loss.lam=-0.5", "method.loss.lam"),
        ("method.loss.n_bins=1", "method.loss.n_bins"),
    ],
)
def test_rcft_ranges(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        check_config(_compose("method=rcft", override))


@pytest.mark.parametrize("trainer", ["fsdp", "ddp", "gpu", "ddp_cpu", "default"])
def test_trainer_configs_instantiate(trainer):
    """Strategies given as _target_ nodes (FSDP with its wrap policy) build without a GPU."""
    from calibration_lightning.config import build

    kwargs = build(_compose(f"trainer={trainer}", "model.quantize=none").trainer, _convert_="all")
    if trainer == "fsdp":
        from lightning.pytorch.strategies import FSDPStrategy
        from transformers.models.llama.modeling_llama import LlamaDecoderLayer

        assert isinstance(kwargs["strategy"], FSDPStrategy)
        assert LlamaDecoderLayer in kwargs["strategy"].kwargs["auto_wrap_policy"]._module_classes


def test_slurm_launcher_composes():
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["hydra/launcher=slurm", "output_dir=/tmp/x"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher") and launcher.gpus_per_node == 1


@pytest.mark.parametrize("method", ["rcft", "auto"])
def test_rcft_bins_follow_the_run_bins(method):
    """One bin count: the E-step and L_ECE of RCFT use the run's n_bins (also as an auto candidate)."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[f"method={method}", "n_bins=15", "output_dir=/tmp/x"])
    rcft = cfg.method if method == "rcft" else cfg.method.candidates.rcft
    assert rcft.loss.n_bins == 15
