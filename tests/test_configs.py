"""Every shipped config composes and validates; the schema refuses wrong types, unknown keys and values outside a
choice while composing, and every range problem of a composed config at once; strategies and launchers build."""

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from calibration_lightning.errors import ConfigError
from calibration_lightning.schema import CONF_DIR, build, keys_at, validate
from calibration_lightning.trainer import lightning_kwargs
from tests.conftest import compose_config

GROUPS = ("model", "method", "dataset", "trainer", "logger", "judge", "win_rate")


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_group_option_composes_and_validates(group, option):
    extra = ["dataset.path=x.jsonl"] if (group, option) == ("dataset", "jsonl") else []
    extra += ["model.loader.name_or_path=org/name"] if (group, option) == ("model", "hf") else []
    cfg = compose_config(f"{group}={option}", *extra)
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    config = validate(cfg)
    trained = {"auto": ["cft", "rcft"], "none": [], "ts": []}.get(config.method.name, [config.method.name])
    assert sorted(config.method.trained()) == trained
    for method in config.method.trained().values():  # the components are built, once
        assert callable(method.loss) and all(not isinstance(c, dict) for c in method.callbacks)


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
        ("model.dtype=fp8", "model.dtype", "Invalid value 'fp8', expected one of [auto, float32, bfloat16, float16]"),
        ("resume=maybe", "resume", "Value 'maybe' is not a valid bool"),
    ],
)
def test_schema_names_wrong_types_unknown_keys_and_choices(override, key, cause):
    with pytest.raises(ConfigCompositionException) as raised:
        compose_config("model=tiny", override)
    assert key in str(raised.value) and cause in str(raised.value.__cause__), (raised.value, raised.value.__cause__)


def test_three_independent_problems_are_refused_together():
    cfg = compose_config(
        "method=rcft", "method.accuracy_z=-1", "dataset.prompt.template='{question} only'", "method.loss.lam=-2"
    )
    with pytest.raises(ConfigError) as raised:
        validate(cfg)
    assert raised.value.problems == [
        "method.accuracy_z=-1.0: must be null or a number >= 0",
        "dataset.prompt.template='{question} only': must contain {question} and {choices} (and may {about}), "
        "nothing else",
        "method.loss.lam=-2: must be >= 0",
    ]
    assert str(raised.value).startswith("3 problems in the config: (1) method.accuracy_z=-1.0")


@pytest.mark.parametrize(
    "override,message",
    [
        ("+foo=1", "foo: no such key"),
        ("+method.optim.lrate=1", "method.optim.lrate: no such key; did you mean method.optim.lr?"),
        ("+dataset.source.subject=x", "dataset.source.subject: no such key; did you mean dataset.source.subjects?"),
        ("+trainer.max_epoch=3", "trainer.max_epoch=3: not a Lightning Trainer argument; did you mean trainer.max"),
        ("+trainer.callbacks=[]", "trainer.callbacks=[]: the run sets it itself; use method.callbacks"),
        ("+trainer.limit_val_batches=2", "use dataset.split.val"),
        ("trainer.log_every_n_steps=0", "trainer.log_every_n_steps=0: must be an integer >= 1"),
        ("trainer.max_epochs=0", "trainer.max_epochs=0: must be null (method.epochs decides) or an integer >= 1"),
        ("+trainer.max_epochs=true", "trainer.max_epochs=True: must be null (method.epochs decides) or an integer"),
        ("trainer.log_every_n_steps=true", "trainer.log_every_n_steps=True: must be an integer >= 1"),
        ("dataset.prompt.choice_format='{letter}) {txt}'", "dataset.prompt.choice_format='{letter}) {txt}': must"),
        ("dataset.split.train=1.5", "dataset.split.train=1.5: must be a count >= 0 or a fraction in (0, 1)"),
    ],
)
def test_unknown_keys_and_out_of_range_values_name_their_key(override, message):
    with pytest.raises(ConfigError, match=None) as raised:
        validate(compose_config("model=tiny", override))
    assert message in str(raised.value)


def test_lightning_trainer_arguments_pass_through():
    cfg = validate(compose_config("model=tiny", "+trainer.max_time=00:00:10:00", "+trainer.limit_train_batches=3"))
    kwargs = lightning_kwargs(cfg.trainer)
    assert kwargs["max_time"] == "00:00:10:00" and kwargs["limit_train_batches"] == 3
    assert "checkpoint_every_n_steps" not in kwargs and "max_epochs" not in kwargs  # ours, and the run's
    assert "max_epochs" in keys_at("trainer") and keys_at("method.candidates.cft.optim") == keys_at("method.optim")


def test_schema_keeps_counts_and_fractions_apart():
    """dataset.split takes a count (int) or a fraction (float): neither is converted into the other."""
    cfg = compose_config("dataset.split.train=0.5", "dataset.split.val=3")
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
def test_trainer_configs_give_their_arguments(trainer, expected):
    kwargs = lightning_kwargs(validate(compose_config(f"trainer={trainer}")).trainer)
    assert {k: kwargs[k] for k in expected} == expected and kwargs["gradient_clip_val"] == 1.0


def test_fsdp_strategy_builds_its_wrap_policy_without_a_gpu():
    from lightning.pytorch.strategies import FSDPStrategy
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    kwargs = lightning_kwargs(validate(compose_config("trainer=fsdp", "model.quantize=none")).trainer)
    assert isinstance(kwargs["strategy"], FSDPStrategy) and kwargs["precision"] == "bf16-true"
    assert LlamaDecoderLayer in kwargs["strategy"].kwargs["auto_wrap_policy"]._module_classes


def test_slurm_launcher_composes():
    launcher = compose_config("hydra/launcher=slurm", hydra=True).hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher") and launcher.gpus_per_node == 1


@pytest.mark.parametrize("method", ["rcft", "auto"])
def test_rcft_bins_follow_the_run_bins(method):
    """One bin count: the E-step and L_ECE of RCFT use the run's n_bins (also as an auto candidate)."""
    config = validate(compose_config(f"method={method}", "n_bins=15"))
    assert config.method.trained()["rcft"].loss.n_bins == 15


def test_a_target_that_cannot_be_built_names_its_key():
    cfg = compose_config("model=tiny", "method.loss._target_=calibration_lightning.losses.sft.NoSuchLoss")
    with pytest.raises(ConfigError, match="method.loss: cannot build calibration_lightning.losses.sft.NoSuchLoss"):
        validate(cfg)
    assert build({"_target_": "calibration_lightning.losses.sft.CompletionSFT"}, "method.loss") is not None
