"""Shared fixtures: the tiny model built in code, a few bundled MMLU questions, configs composed from conf/."""

from __future__ import annotations

import dataclasses
import functools

import pytest
from hydra import compose, initialize_config_dir

from calibration_lightning import schema
from calibration_lightning.data.datamodule import MultipleChoiceDataModule
from calibration_lightning.data.sources import bundled_mmlu
from calibration_lightning.data.splits import split_records
from calibration_lightning.models.loading import load_model, load_tokenizer
from calibration_lightning.models.sources import tiny
from calibration_lightning.schema import CONF_DIR, Config

TINY_SPLIT = ["dataset.split.train=24", "dataset.split.val=16", "dataset.split.test=24", "dataset.batch_size=4"]


# `make test` deals whole files to two workers (--dist loadfile --no-loadscope-reorder) in the order collected: the
# files that take longest go first, so no worker is left running a long one alone at the end (seconds measured by
# `make test ARGS=--durations=0`, one torch thread a worker).
LONGEST_FIRST = (
    "test_resume.py",
    "test_multirun_ddp_and_sweeps.py",
    "test_bundled_model.py",
    "test_run_life.py",
    "test_cli_errors.py",
    "test_training_length.py",
    "test_runs.py",
    "test_install.py",
    "test_resume_checkpoints_and_secrets.py",
    "test_lm_eval_bridge.py",
    "test_secrets.py",
    "test_sweeps.py",
    "test_configs.py",
    "test_fuzz_data.py",
    "test_lever_probe.py",
    "test_speed_levers.py",
    "test_adapter_reuse.py",
    "test_coverage.py",
    "test_diagrams.py",
)


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the others keep pytest's order


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: starts a run or a process (make test-fast leaves it out)")
    config.addinivalue_line("markers", "gpu_check: the GPU check's CPU dry run (make test-gpu-check; not in make test)")
    _parse_each_config_file_once()


def _parse_each_config_file_once() -> None:
    """Hydra parses every YAML file again at each compose (two composes per command line): in this test process,
    a file unchanged since its last parse is given as a copy of that parse (a third of a compose's time)."""
    import copy
    import os

    from hydra._internal.core_plugins.file_config_source import FileConfigSource

    parse, parsed = FileConfigSource.load_config, {}

    def load_config(self, config_path: str):
        path = os.path.realpath(os.path.join(self.path, self._normalize_file_name(config_path)))
        stat = os.stat(path) if os.path.exists(path) else None
        key = (self.path, config_path, stat and (stat.st_mtime_ns, stat.st_size))
        if stat is None or key not in parsed:
            parsed[key] = parse(self, config_path)
        return copy.deepcopy(parsed[key])

    FileConfigSource.load_config = load_config


def compose_config(*overrides: str, hydra: bool = False):
    """conf/config.yaml composed with ``overrides`` (a DictConfig, as Hydra gives the run)."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=["output_dir=/tmp/unused", *overrides], return_hydra_config=hydra)


@functools.lru_cache(maxsize=64)
def config(*overrides: str) -> Config:
    """The validated config objects of ``overrides`` (the defaults of conf/ otherwise); composed once per set of
    overrides (callers copy with ``dataclasses.replace``, never change it)."""
    return schema.compose(*overrides)


@pytest.fixture(scope="session")
def defaults() -> Config:
    """The default config's objects: model, method, dataset (prompt, batch sizes), ... as the YAML gives them."""
    return config("model=tiny")


@pytest.fixture(scope="session")
def tiny_source() -> str:
    return tiny()


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_source, defaults):
    return load_tokenizer(tiny_source, defaults.model)


@pytest.fixture()
def tiny_model(tiny_source, defaults):
    return load_model(tiny_source, defaults.model, "cpu")


@pytest.fixture(scope="session")
def mmlu_splits():
    return split_records(bundled_mmlu(max_question_chars=200), 24, 16, 24, seed=0)


def make_datamodule(splits, tokenizer, dataset, **changes) -> MultipleChoiceDataModule:
    """A datamodule over ``splits`` with ``dataset`` (a DatasetConf) changed by ``changes`` (batch sizes, ...)."""
    dm = MultipleChoiceDataModule(splits, tokenizer, dataclasses.replace(dataset, **changes))
    dm.setup()
    return dm


@pytest.fixture()
def tiny_datamodule(tiny_tokenizer, mmlu_splits, defaults):
    return make_datamodule(mmlu_splits, tiny_tokenizer, defaults.dataset, batch_size=4, eval_batch_size=8)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """``tiny_run(method)``: the folder of a finished run of ``method`` on the tiny model (``TINY_SPLIT``, CSV logger),
    run once per session and shared by the tests that read a finished run's outputs."""
    from calibration_lightning.recipe import run

    root, done = tmp_path_factory.mktemp("tiny_runs"), {}

    def get(method: str):
        if method not in done:
            out = root / method
            run(compose_config("model=tiny", f"method={method}", *TINY_SPLIT, "logger=csv", f"output_dir={out}"))
            done[method] = out
        return done[method]

    return get


@pytest.fixture()
def make_cfg(tmp_path):
    """Compose conf/config.yaml with overrides, writing into a fresh directory under tmp_path."""

    def make(*overrides: str, out: str = "run"):
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose("config", overrides=[f"output_dir={tmp_path / out}", "logger=csv", *overrides])

    return make


def train_steps(module, batch, steps: int, lr: float = 1e-2) -> list[float]:
    """``steps`` AdamW steps of the module's loss head on one batch (adapters only); the losses seen."""
    import torch

    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=lr)
    module.train()
    losses = []
    for _ in range(steps):
        loss = module.loss_head(module(batch), batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def optim(**changes):
    """``method.optim`` of the default method (CFT) with ``changes``."""
    return dataclasses.replace(config("model=tiny").method.optim, **changes)


def model_conf(**changes):
    """``model`` of ``model=tiny`` with ``changes`` (checked as the config would be)."""
    return dataclasses.replace(config("model=tiny").model, **changes)
