"""Every shipped config composes and passes the start-up checks; the schema names a wrong type, an unknown
key or a value outside a choice; strategies and launchers instantiate."""

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from calibration_lightning.config import CONF_DIR, build, options
from calibration_lightning.startup import check_settings

GROUPS = ("model", "method", "dataset", "trainer", "logger", "judge", "win_rate")


def _compose(*overrides, hydra=False):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=["output_dir=/tmp/unused", *overrides], return_hydra_config=hydra)


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_group_option_composes_and_passes_checks(group, option):
    extra = ["dataset.path=x.jsonl"] if (group, option) == ("dataset", "jsonl") else []
    extra += ["model.loader.name_or_path=org/name"] if (group, option) == ("model", "hf") else []
    cfg = _compose(f"{group}={option}", *extra)
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    methods = check_settings(cfg)
    assert sorted(methods) == {"auto": ["cft", "rcft"], "none": [], "ts": []}.get(cfg.method.name, [cfg.method.name])


def test_no_private_fragment_is_an_option():
    assert all(not p.name.startswith("_") for p in CONF_DIR.glob("*/**/*.yaml") if "_base" not in p.parts)
    assert sorted(p.stem for p in (CONF_DIR / "_base").glob("*.yaml")) == [
        "dataset", "model", "model_paper", "paper_grid"
    ]  # fmt: skip


@pytest.mark.parametrize(
    "override,key,cause",
    [
        ("n_bins=abc", "n_bins", "could not be converted to Integer"),
        ("model.lora.dropout=high", "model.lora.dropout", "could not be converted to Float"),
        ("method.optim.lrr=0.1", "method.optim.lrr", "Key 'lrr' not in 'OptimConf'"),
        ("trainer.max_step=3", "trainer.max_step", "Key 'max_step' not in 'TrainerConf'"),
        ("model.dtype=fp8", "model.dtype", "Invalid value 'fp8', expected one of [auto, float32, bfloat16, float16]"),
        ("resume=maybe", "resume", "Value 'maybe' is not a valid bool"),
    ],
)
def test_schema_names_wrong_types_unknown_keys_and_choices(override, key, cause):
    with pytest.raises(ConfigCompositionException) as raised:
        _compose("model=tiny", override)
    assert key in str(raised.value) and cause in str(raised.value.__cause__), (raised.value, raised.value.__cause__)


def test_schema_keeps_counts_and_fractions_apart():
    """dataset.split takes a count (int) or a fraction (float): neither is converted into the other."""
    cfg = _compose("dataset.split.train=0.5", "dataset.split.val=3")
    assert type(cfg.dataset.split.train) is float and type(cfg.dataset.split.val) is int


@pytest.mark.parametrize(
    "trainer,expected",
    [
        ("default", {"accelerator": "auto", "devices": 1, "strategy": "auto", "precision": None}),
        ("gpu", {"accelerator": "gpu", "devices": 1, "strategy": "auto", "precision": None}),
        ("ddp", {"accelerator": "gpu", "devices": "auto", "strategy": "ddp", "precision": None}),
        ("ddp_cpu", {"accelerator": "cpu", "devices": 2, "strategy": "ddp", "precision": None}),
    ],
)
def test_trainer_configs_instantiate(trainer, expected):
    kwargs = build(_compose(f"trainer={trainer}").trainer, _convert_="all")
    assert {k: kwargs[k] for k in expected} == expected
    assert kwargs["checkpoint_every_n_steps"] == 50 and kwargs["gradient_clip_val"] == 1.0


def test_fsdp_strategy_builds_its_wrap_policy_without_a_gpu():
    from lightning.pytorch.strategies import FSDPStrategy
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    kwargs = build(_compose("trainer=fsdp", "model.quantize=none").trainer, _convert_="all")
    assert isinstance(kwargs["strategy"], FSDPStrategy) and kwargs["precision"] == "bf16-true"
    assert LlamaDecoderLayer in kwargs["strategy"].kwargs["auto_wrap_policy"]._module_classes


def test_slurm_launcher_composes():
    launcher = _compose("hydra/launcher=slurm", hydra=True).hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher") and launcher.gpus_per_node == 1


@pytest.mark.parametrize("method", ["rcft", "auto"])
def test_rcft_bins_follow_the_run_bins(method):
    """One bin count: the E-step and L_ECE of RCFT use the run's n_bins (also as an auto candidate)."""
    cfg = _compose(f"method={method}", "n_bins=15")
    rcft = cfg.method if method == "rcft" else cfg.method.candidates.rcft
    assert rcft.loss.n_bins == 15 and check_settings(cfg)["rcft"].loss.n_bins == 15
