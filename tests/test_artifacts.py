"""Adapters, model folders and cache entries a run reads are checked before they load: one error naming the file."""

import json
import shutil

import pytest

from calibration_lightning.errors import ConfigError
from calibration_lightning.models.artifacts import safetensors_problem
from calibration_lightning.models.loading import load_model
from calibration_lightning.models.sources import pretrained, tiny
from tests.conftest import model_conf


@pytest.fixture(scope="module")
def adapters(tmp_path_factory, tiny_source):
    """A fresh LoRA adapter of the tiny model, and one of a tiny model of another shape."""
    root = tmp_path_factory.mktemp("adapters")
    load_model(tiny_source, model_conf(), "cpu").save_pretrained(root / "good")
    load_model(tiny(hidden_size=32), model_conf(), "cpu").save_pretrained(root / "other_shape")
    return root


def _copy(adapters, tmp_path, name="good"):
    folder = tmp_path / name
    shutil.copytree(adapters / name, folder)
    return folder


def _cut(path, keep):
    path.write_bytes(path.read_bytes()[:keep])


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda f: (f / "adapter_config.json").write_text(""), "adapter_config.json is empty; save the adapter again"),
        (lambda f: (f / "adapter_config.json").write_text("{oops"), "adapter_config.json is not valid JSON"),
        (lambda f: (f / "adapter_config.json").write_text("[]"), "is not a peft adapter config (no peft_type)"),
        (lambda f: (f / "adapter_model.safetensors").unlink(), "holds no adapter weights"),
        (lambda f: _cut(f / "adapter_model.safetensors", 4), "adapter_model.safetensors is truncated (no header)"),
        (lambda f: _cut(f / "adapter_model.safetensors", 9000), "adapter_model.safetensors is truncated (9000 of"),
        (lambda f: _cut(f / "adapter_model.safetensors", 900), "adapter_model.safetensors is truncated (the header"),
    ],
)
def test_a_damaged_adapter_folder_is_refused_when_the_config_is_checked(adapters, tmp_path, damage, message):
    folder = _copy(adapters, tmp_path)
    damage(folder)
    with pytest.raises(ConfigError) as caught:
        model_conf(adapter=str(folder))
    assert str(caught.value).startswith(f"model.adapter={folder}: ") and message in str(caught.value)


def test_an_adapter_of_another_shape_is_one_error(adapters, tmp_path, tiny_source):
    folder = _copy(adapters, tmp_path, "other_shape")
    with pytest.raises(ConfigError) as caught:
        load_model(tiny_source, model_conf(adapter=str(folder)), "cpu")
    assert str(caught.value).startswith(f"model.adapter={folder}: the adapter (trained on ")
    assert "was trained on a model of another shape than" in str(caught.value)


def test_an_adapter_of_modules_the_model_lacks_is_one_error(adapters, tmp_path, tiny_source):
    folder = _copy(adapters, tmp_path)
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**config, "target_modules": ["wq_missing"]}))
    with pytest.raises(ConfigError, match=r"adapts modules that .* does not have"):
        load_model(tiny_source, model_conf(adapter=str(folder)), "cpu")


def test_a_hub_adapter_while_offline(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    with pytest.raises(ConfigError) as caught:
        model_conf(adapter="nobody/no-adapter")
    assert str(caught.value).startswith(
        "model.adapter=nobody/no-adapter: cannot download nobody/no-adapter from the Hugging Face hub "
        "(HF_HUB_OFFLINE=1 forbids downloads)"
    )


def test_a_damaged_cache_entry_is_rebuilt(monkeypatch, tmp_path):
    monkeypatch.setenv("CALIBRATION_LIGHTNING_CACHE", str(tmp_path / "cache"))
    folder = tiny(seed=3)
    weights = next(p for p in sorted(__import__("pathlib").Path(folder).glob("*.safetensors")))
    whole = weights.read_bytes()
    _cut(weights, len(whole) // 2)
    assert safetensors_problem(weights).startswith("truncated")
    assert tiny(seed=3) == folder
    assert weights.read_bytes() == whole  # built again from the same seed


def test_a_model_folder_with_truncated_weights_is_refused(tmp_path, tiny_source):
    folder = tmp_path / "model"
    shutil.copytree(tiny_source, folder)
    weights = next(folder.glob("*.safetensors"))
    _cut(weights, weights.stat().st_size - 100)
    with pytest.raises(ConfigError) as caught:
        pretrained(str(folder))
    assert str(caught.value) == (
        f"model.loader.name_or_path={folder}: {weights} is truncated ({weights.stat().st_size} of "
        f"{weights.stat().st_size + 100} bytes); copy or download the model again"
    )
