"""Adapters, model folders and cache entries a run reads are checked before they load: one error naming the file,
whether the file is cut short, random, an unsafe pickle (refused, never run) or a config peft would choke on."""

import json
import shutil
import struct

import pytest
import torch
from safetensors.torch import load_file

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


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"r": "abc"}, "r is 'abc', expected an integer >= 1"),
        ({"r": 0}, "r is 0, expected an integer >= 1"),
        ({"r": 8.5}, "r is 8.5, expected an integer >= 1"),
        ({"r": True}, "r is True, expected an integer >= 1"),
        ({"lora_alpha": "x"}, "lora_alpha is 'x', expected a number > 0"),
        ({"lora_dropout": 2}, "lora_dropout is 2, expected a number in [0, 1)"),
        ({"target_modules": 5}, "target_modules is 5, expected a name pattern or a list of names"),
        ({"target_modules": ["q_proj", 3]}, "target_modules is ['q_proj', 3], expected a name pattern or a list"),
        ({"bias": "bogus"}, "bias is 'bogus', expected one of none, all, lora_only"),
        ({"use_dora": "yes"}, "use_dora is 'yes', expected true or false"),
        ({"layers_to_transform": "x"}, "layers_to_transform is 'x', expected null, a layer index or a list of them"),
        ({"rank_pattern": {"q_proj": "8"}}, "rank_pattern is {'q_proj': '8'}, expected a map name -> rank"),
        ({"peft_type": "FOO"}, "peft cannot read it (KeyError: 'FOO')"),
        ({"task_type": "BOGUS"}, "peft cannot read it (ValueError: Invalid task type: 'BOGUS'."),
    ],
)
def test_an_adapter_config_peft_would_choke_on_is_refused(adapters, tmp_path, patch, message):
    folder = _copy(adapters, tmp_path)
    config = folder / "adapter_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), **patch}))
    with pytest.raises(ConfigError) as caught:
        model_conf(adapter=str(folder))
    assert str(caught.value).startswith(f"model.adapter={folder}: {config}: {message}")
    assert str(caught.value).endswith("; save the adapter again")


def _as_bin(folder):
    """The adapter's weights as ``save_pretrained(safe_serialization=False)`` writes them."""
    weights = folder / "adapter_model.safetensors"
    torch.save(load_file(weights), folder / "adapter_model.bin")
    weights.unlink()
    return folder / "adapter_model.bin"


class _Opens:
    """Unpickled, it would create ``path``: the stand-in for code an unsafe pickle runs."""

    def __init__(self, path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda p: p.write_bytes(b""), "is not readable adapter weights (empty)"),
        (lambda p: _cut(p, p.stat().st_size // 2), "is not readable adapter weights (truncated or damaged)"),
        (lambda p: p.write_bytes(bytes(range(256)) * 16), "is not readable adapter weights (truncated or damaged)"),
        (lambda p: torch.save({"w": _Opens(p.parent / "ran")}, p), "(refused: it holds Python objects other than"),
        (lambda p: torch.save([torch.ones(2)], p), "holds no tensors by name (not peft adapter weights)"),
        (lambda p: torch.save({"w": 3}, p), "holds no tensors by name (not peft adapter weights)"),
    ],
)
def test_damaged_or_unsafe_bin_weights_are_refused_and_never_run(adapters, tmp_path, damage, message):
    folder = _copy(adapters, tmp_path)
    weights = _as_bin(folder)
    damage(weights)
    with pytest.raises(ConfigError) as caught:
        model_conf(adapter=str(folder))
    assert str(caught.value).startswith(f"model.adapter={folder}: {weights} ") and message in str(caught.value)
    assert not (folder / "ran").exists()  # the unsafe pickle was refused, not executed


def test_a_whole_bin_adapter_passes_the_checks_and_loads(adapters, tmp_path, tiny_source):
    folder = _copy(adapters, tmp_path)
    saved = load_file(folder / "adapter_model.safetensors")
    _as_bin(folder)
    model = load_model(tiny_source, model_conf(adapter=str(folder)), "cpu")
    loaded = {k: v for k, v in model.state_dict().items() if "lora_" in k}
    assert len(loaded) == len(saved) == 28
    assert all(torch.equal(loaded[k.replace(".weight", ".default.weight")], v) for k, v in saved.items())


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


@pytest.mark.parametrize("entry", [{"dtype": "F32", "shape": [1]}, 5, {"data_offsets": [0, 4.0]}])
def test_a_header_entry_without_valid_data_offsets_is_damaged(tmp_path, entry):
    header = json.dumps({"w": entry}).encode()
    path = tmp_path / "model.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(4))
    assert safetensors_problem(path) == "damaged (a tensor entry of the header without valid data_offsets)"


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
