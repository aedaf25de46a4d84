"""Shared fixtures: the tiny model built in code, a few bundled MMLU questions, a config composer."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir

from calibration_lightning.config import CONF_DIR
from calibration_lightning.data.datamodule import MultipleChoiceDataModule
from calibration_lightning.data.prompts import PromptFormat
from calibration_lightning.data.sources import bundled_mmlu
from calibration_lightning.data.splits import split_records
from calibration_lightning.models.loading import ModelSettings, load_model, load_tokenizer
from calibration_lightning.models.sources import tiny

TINY_SPLIT = ["dataset.split.train=24", "dataset.split.val=16", "dataset.split.test=24", "dataset.batch_size=4"]


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: runs the bundled SmolLM2 model (tens of seconds or more)")


@pytest.fixture(scope="session")
def tiny_source() -> str:
    return tiny()


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_source):
    return load_tokenizer(tiny_source, ModelSettings())


@pytest.fixture()
def tiny_model(tiny_source):
    return load_model(tiny_source, ModelSettings(), "cpu")


@pytest.fixture(scope="session")
def mmlu_splits():
    return split_records(bundled_mmlu(max_question_chars=200), 24, 16, 24, seed=0)


@pytest.fixture()
def tiny_datamodule(tiny_tokenizer, mmlu_splits):
    dm = MultipleChoiceDataModule(mmlu_splits, tiny_tokenizer, PromptFormat(), batch_size=4, eval_batch_size=8)
    dm.setup()
    return dm


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
