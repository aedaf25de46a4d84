"""Loading a causal LM in the chosen dtype / quantization and wrapping it with LoRA."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from calibration_lightning.errors import ConfigError

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class LoraSettings:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: str | list[str] = "all-linear"


@dataclass
class ModelSettings:
    """What ``load_model`` needs besides the source folder (the ``model`` config group minus the loader)."""

    dtype: str = "auto"          # auto: bfloat16 on CUDA, float32 on CPU
    quantize: str = "auto"       # nf4 | none | auto (nf4 on CUDA, none on CPU)
    trust_remote_code: bool = False
    use_safetensors: bool = True
    revision: str | None = None
    lora: LoraSettings = field(default_factory=LoraSettings)


def resolve_dtype(name: str, device: str) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device == "cuda" else torch.float32
    if name not in DTYPES:
        raise ConfigError(f"model.dtype={name!r}; allowed: auto, {', '.join(DTYPES)}")
    return DTYPES[name]


def resolve_quantize(name: str, device: str) -> str:
    if name == "auto":
        return "nf4" if device == "cuda" else "none"
    if name not in ("nf4", "none"):
        raise ConfigError(f"model.quantize={name!r}; allowed: auto, nf4, none")
    return name


def load_tokenizer(source: str, settings: ModelSettings):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source, revision=settings.revision,
                                              trust_remote_code=settings.trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def load_model(source: str, settings: ModelSettings, device: str = "cpu", with_lora: bool = True):
    """The base model in ``settings.dtype`` (optionally nf4-quantized), wrapped in LoRA adapters.

    Only adapter weights are trainable; every base weight has ``requires_grad=False``.
    """
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    dtype = resolve_dtype(settings.dtype, device)
    quantize = resolve_quantize(settings.quantize, device)
    kwargs = dict(dtype=dtype, revision=settings.revision, trust_remote_code=settings.trust_remote_code,
                  use_safetensors=settings.use_safetensors)
    if quantize == "nf4":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
        kwargs["device_map"] = {"": 0 if device == "cuda" else "cpu"}
    model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    model.config.use_cache = False
    if quantize == "nf4":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    if not with_lora:
        return model.requires_grad_(False)
    lora = settings.lora
    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                        target_modules=list(lora.target_modules) if not isinstance(lora.target_modules, str)
                        else lora.target_modules, task_type="CAUSAL_LM")
    return get_peft_model(model, config)
