"""Checks of the model files a run reads, made before they load: a saved adapter (``model.adapter``), a model
folder, the converted models in the cache. Each problem is one ``ConfigError`` naming the file and what to do,
not a traceback from safetensors or peft after the base model has loaded."""

from __future__ import annotations

import json
import struct
from pathlib import Path

from calibration_lightning.errors import ConfigError, is_number

ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


def _names(v) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def _count(v, least: int = 1) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= least


def _layers(v) -> bool:
    return v is None or _count(v, 0) or (isinstance(v, list) and all(_count(x, 0) for x in v))


# What peft builds tensors from, by LoRA's adapter_config.json key: peft itself takes these as they are and
# fails later, when the layers are made (``"r": "abc"`` is a TypeError inside torch).
LORA_FIELDS = {
    "r": (_count, "an integer >= 1"),
    "lora_alpha": (lambda v: is_number(v) and v > 0, "a number > 0"),
    "lora_dropout": (lambda v: is_number(v) and 0 <= v < 1, "a number in [0, 1)"),
    "target_modules": (lambda v: v is None or isinstance(v, str) or _names(v), "a name pattern or a list of names"),
    "modules_to_save": (lambda v: v is None or _names(v), "null or a list of module names"),
    "bias": (lambda v: v in ("none", "all", "lora_only"), "one of none, all, lora_only"),
    "fan_in_fan_out": (lambda v: isinstance(v, bool), "true or false"),
    "use_rslora": (lambda v: isinstance(v, bool), "true or false"),
    "use_dora": (lambda v: isinstance(v, bool), "true or false"),
    "layers_to_transform": (_layers, "null, a layer index or a list of them"),
    "rank_pattern": (lambda v: isinstance(v, dict) and all(_count(x) for x in v.values()), "a map name -> rank"),
    "alpha_pattern": (lambda v: isinstance(v, dict) and all(is_number(x) for x in v.values()), "a map name -> alpha"),
}  # fmt: skip


class Unloadable(Exception):
    """A weights file ``torch.load(weights_only=True)`` refuses; the message says why, in words. ``unsafe``: it
    names code to import (refused, never run)."""

    def __init__(self, reason: str, unsafe: bool = False) -> None:
        super().__init__(reason)
        self.unsafe = unsafe


def load_tensors(path: Path):
    """``path`` as ``torch.load`` reads it with ``weights_only=True`` (memory-mapped when it is a zip archive, so
    checking a large file reads little of it): never runs code a pickle names."""
    import pickle
    import zipfile

    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as e:
        if "Unsupported global" in str(e):  # a class or function to import: code, not tensors
            raise Unloadable("refused: it holds Python objects other than tensors", unsafe=True) from None
    except (RuntimeError, EOFError, ValueError, OSError, AttributeError, IndexError, KeyError):
        pass
    raise Unloadable("empty" if path.stat().st_size == 0 else "truncated or damaged")


def safetensors_problem(path: Path) -> str | None:
    """Why ``path`` is not a complete safetensors file (empty, truncated, bad header), or None if it is."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return "empty" if size == 0 else "truncated (no header)"
            (n,) = struct.unpack("<Q", head)
            if n > size - 8:
                return "truncated (the header is cut)"
            header = json.loads(f.read(n))
    except OSError as e:
        return f"unreadable ({e.strerror})"
    except (ValueError, UnicodeDecodeError):
        return "damaged (the header is not valid JSON)"
    if not isinstance(header, dict):
        return "damaged (the header is not valid JSON)"
    tensors = [t for k, t in header.items() if k != "__metadata__"]
    ends = [t.get("data_offsets") if isinstance(t, dict) else None for t in tensors]
    if not all(isinstance(e, list) and len(e) == 2 and all(isinstance(x, int) for x in e) for e in ends):
        return "damaged (a tensor entry of the header without valid data_offsets)"
    need = 8 + n + max((e[1] for e in ends), default=0)
    if size < need:
        return f"truncated ({size} of {need} bytes)"
    return None


def check_model_folder(folder: Path, key: str) -> None:
    """Refuse a model folder whose weights are cut short (a copy or download interrupted)."""
    for path in sorted(folder.glob("*.safetensors")):
        problem = safetensors_problem(path)
        if problem:
            raise ConfigError(f"{key}: {path} is {problem}; copy or download the model again")


def damaged_cache_file(folder: Path) -> Path | None:
    """The first damaged file of a converted model in the cache (weights, config, tokenizer), or None."""
    for path in sorted(folder.glob("*.safetensors")):
        if safetensors_problem(path):
            return path
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        path = folder / name
        if path.exists():
            try:
                json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                return path
    return None


def check_adapter(adapter: str) -> None:
    """``model.adapter``: a local peft adapter folder, complete, or a hub adapter that can be fetched."""
    key = f"model.adapter={adapter}"
    folder = Path(adapter).expanduser()
    if not folder.exists():
        _check_hub_adapter(adapter, key)
        return
    config = folder / "adapter_config.json"
    try:
        text = config.read_text(encoding="utf-8")
        data = json.loads(text) if text.strip() else None
    except OSError as e:
        raise ConfigError(f"{key}: cannot read {config} ({e.strerror})") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise ConfigError(f"{key}: {config} is not valid JSON ({e}); save the adapter again") from None
    if data is None:
        raise ConfigError(f"{key}: {config} is empty; save the adapter again (peft's save_pretrained)")
    if not isinstance(data, dict) or not data.get("peft_type"):
        raise ConfigError(f"{key}: {config} is not a peft adapter config (no peft_type); save the adapter again")
    _check_adapter_config(folder, data, f"{key}: {config}")
    weights = [folder / name for name in ADAPTER_WEIGHTS if (folder / name).is_file()]
    if not weights:
        raise ConfigError(
            f"{key}: {folder} holds no adapter weights ({' or '.join(ADAPTER_WEIGHTS)}); pass the folder "
            "peft's save_pretrained wrote (a run's adapter/ folder)"
        )
    if weights[0].suffix == ".safetensors":
        problem = safetensors_problem(weights[0])
        if problem:
            raise ConfigError(f"{key}: {weights[0]} is {problem}; copy or save the adapter again")
        return
    import torch

    try:
        state = load_tensors(weights[0])
    except Unloadable as e:
        raise ConfigError(f"{key}: {weights[0]} is not readable adapter weights ({e}); save it again") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"{key}: {weights[0]} holds no tensors by name (not peft adapter weights); save it again")


def _check_adapter_config(folder: Path, data: dict, where: str) -> None:
    """The values of a LoRA ``adapter_config.json`` peft would build tensors from (``LORA_FIELDS``), then the
    config as peft reads it (its type of adapter and task)."""
    if data["peft_type"] == "LORA":
        for name, (ok, expected) in LORA_FIELDS.items():
            if name in data and not ok(data[name]):
                raise ConfigError(f"{where}: {name} is {data[name]!r}, expected {expected}; save the adapter again")
    from peft import PeftConfig

    try:
        PeftConfig.from_pretrained(str(folder))
    except (KeyError, ValueError, TypeError) as e:
        raise ConfigError(f"{where}: peft cannot read it ({type(e).__name__}: {e}); save the adapter again") from None


def _check_hub_adapter(repo_id: str, key: str) -> None:
    from huggingface_hub import constants, errors, hf_hub_download

    offline = " (HF_HUB_OFFLINE=1 forbids downloads)" if constants.HF_HUB_OFFLINE else ""
    local_hint = "pass a local adapter folder: model.adapter=/path/to/adapter"
    try:
        hf_hub_download(repo_id, "adapter_config.json")
    except errors.HFValidationError:
        raise ConfigError(f"{key}: neither an existing folder nor a hub id ORG/NAME; {local_hint}") from None
    except errors.RepositoryNotFoundError:
        raise ConfigError(f"{key}: the Hugging Face hub has no adapter {repo_id} (or it is private)") from None
    except errors.LocalEntryNotFoundError:  # before EntryNotFoundError, its parent class
        raise ConfigError(
            f"{key}: cannot download {repo_id} from the Hugging Face hub{offline}, and it is not in the cache; "
            f"check the network, or {local_hint}"
        ) from None
    except errors.EntryNotFoundError:
        raise ConfigError(f"{key}: {repo_id} on the Hugging Face hub has no adapter_config.json") from None
    except OSError as e:  # HTTP errors and connection failures
        reason = " ".join(str(e).split())[:200] or type(e).__name__
        raise ConfigError(
            f"{key}: cannot download {repo_id} from the Hugging Face hub ({reason}); {local_hint}"
        ) from None


def adapter_load_error(e: Exception, adapter: str, model_name: str) -> ConfigError:
    """The one-line error for an adapter peft could not put on the base model (after ``check_adapter``)."""
    text = " ".join(str(e).split())
    base = ""
    try:
        saved = json.loads((Path(adapter).expanduser() / "adapter_config.json").read_text(encoding="utf-8"))
        if saved.get("base_model_name_or_path"):
            base = f" (trained on {saved['base_model_name_or_path']})"
    except (OSError, ValueError, AttributeError):
        pass
    key = f"model.adapter={adapter}"
    if "size mismatch" in text:
        first = text[text.index("size mismatch") :][:200]
        return ConfigError(
            f"{key}: the adapter{base} was trained on a model of another shape than {model_name} ({first}); "
            "use an adapter trained on this base model"
        )
    if "not found in the base model" in text or "Target module" in text:
        return ConfigError(
            f"{key}: the adapter{base} adapts modules that {model_name} does not have ({text[:200]}); "
            "use an adapter trained on this base model"
        )
    return ConfigError(f"{key}: peft cannot load this adapter{base} ({type(e).__name__}: {text[:200]})")
