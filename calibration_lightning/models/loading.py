"""Loading a causal LM in the chosen dtype / quantization and wrapping it with LoRA."""

from __future__ import annotations

import logging
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch

ModelConf = LoraConf = Any  # schema.ModelConf, schema.LoraConf: the config sections (the schema imports this layer)

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(name: str, device: str) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device == "cuda" else torch.float32
    return DTYPES[str(name)]  # the schema's Dtype choices


def resolve_quantize(name: str, device: str) -> str:
    if name == "auto":
        return "nf4" if device == "cuda" else "none"
    return str(name)


def load_tokenizer(source: str, settings: ModelConf):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(
        source, revision=settings.revision, trust_remote_code=settings.trust_remote_code
    )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def load_model(
    source: str, settings: ModelConf, device: str = "cpu", with_lora: bool = True, tokens_per_batch: int = 0
):
    """The base model in ``settings.dtype`` (optionally nf4-quantized), wrapped in LoRA adapters (the only trainable
    weights), with gradient checkpointing (resolved for ``tokens_per_batch``) and regional compilation as configured."""
    dtype = resolve_dtype(settings.dtype, device)
    quantize = resolve_quantize(settings.quantize, device)
    if quantize != "nf4":  # bitsandbytes' notice about its optional CPU 4-bit kernels concerns nf4 runs only
        logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    kwargs = dict(
        dtype=dtype,
        revision=settings.revision,
        trust_remote_code=settings.trust_remote_code,
        use_safetensors=settings.use_safetensors,
    )
    if quantize == "nf4":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
        kwargs["device_map"] = {"": 0 if device == "cuda" else "cpu"}
    model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    model.config.use_cache = False
    if settings.tf32 and device == "cuda":
        allow_tf32()
    if settings.liger:
        apply_liger(model)
    # No prepare_model_for_kbit_training: it upcasts embeddings and lm_head to float32 (about 4 GiB more
    # on an 8B model, and slower); frozen bf16 weights around 4-bit layers train LoRA just as well.
    if not with_lora:
        return model.requires_grad_(False)
    model = add_lora(model, settings.lora) if settings.adapter is None else load_adapter(model, settings)
    if settings.lora_compute == "bfloat16":
        set_lora_input_casting(model, False)
    if use_gradient_checkpointing(model, settings.gradient_checkpointing, tokens_per_batch, device):
        enable_gradient_checkpointing(model)
    if settings.compile:  # each decoder layer in place: parameter names unchanged, short compile times
        for module in model.modules():
            if type(module).__name__.endswith("DecoderLayer"):
                module.compile()
    return model


def autocast_dtype(settings: ModelConf) -> torch.dtype | None:
    """The autocast dtype of every forward (``CalibrationModule(autocast=...)``), or None for none."""
    return torch.bfloat16 if settings.lora_compute == "bfloat16" else None


def set_lora_input_casting(model, enabled: bool) -> None:
    """peft casts each LoRA input to the adapters' float32; under bf16 autocast that copy is wasted (autocast
    casts it back for the matmul), so ``model.lora_compute=bfloat16`` turns it off (peft's own switch)."""
    for module in model.modules():
        if hasattr(module, "cast_input_dtype_enabled"):
            module.cast_input_dtype_enabled = enabled


def allow_tf32() -> None:
    """TF32 tensor cores for float32 matmuls and convolutions on CUDA (about 10 mantissa bits instead of 23)."""
    if hasattr(torch.backends.cuda.matmul, "fp32_precision"):  # the API that replaced allow_tf32
        torch.backends.cuda.matmul.fp32_precision = "tf32"
        torch.backends.cudnn.conv.fp32_precision = "tf32"
    else:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def apply_liger(model) -> None:
    """Liger's fused RMSNorm, RoPE and SwiGLU on this model instance (before LoRA wraps its linear layers).
    Its fused linear cross-entropy stays off: our losses read logits (the answer position's, or every
    position's for L_SFT2), which that kernel never materializes."""
    from liger_kernel.transformers import _apply_liger_kernel_to_instance

    _apply_liger_kernel_to_instance(
        model=model, rope=True, rms_norm=True, swiglu=True, cross_entropy=False, fused_linear_cross_entropy=False
    )


def add_lora(model, lora: LoraConf):
    """Wrap a causal LM in LoRA adapters; every base weight is frozen."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules) if not isinstance(lora.target_modules, str) else lora.target_modules,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def load_adapter(model, settings: ModelConf):
    """Put a saved peft adapter (``model.adapter``: ours or any peft LoRA) on the base model, trainable, so a
    run can evaluate it (``method=none``) or train on from it; ``model.lora`` does not apply then."""
    from peft import PeftModel

    local = Path(settings.adapter).expanduser()
    source = str(local) if local.exists() else settings.adapter
    try:
        model = PeftModel.from_pretrained(model, source, is_trainable=True, revision=settings.revision)
    except (RuntimeError, ValueError, KeyError, OSError) as e:  # another shape or base model: one line
        from calibration_lightning.models.artifacts import adapter_load_error

        raise adapter_load_error(e, settings.adapter, model.config.name_or_path) from None
    log.info("adapter loaded from %s (its own LoRA settings; model.lora is not used)", settings.adapter)
    return model


def initial_scoring(model, settings: ModelConf):
    """Scoring of the model as the run starts: the base path while the adapters are fresh (exact, since
    LoRA's B starts at zero), the loaded adapters as they are when ``model.adapter`` is set."""
    return base_model_scoring(model) if settings.adapter is None else nullcontext()


def _is_quantized(model) -> bool:
    return bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model.base_model, "is_loaded_in_4bit", False))


def base_model_scoring(model):
    """Score the model as loaded: LoRA B matrices start at zero, so disabling the adapters gives the same
    numbers at the base model's speed (no adapter matmuls)."""
    return model.disable_adapter() if hasattr(model, "disable_adapter") else nullcontext()


@contextmanager
def merged_adapters(model, setting: str | bool = "auto"):
    """Fold LoRA into the base weights for scoring (base-model speed), and unfold afterwards. ``auto`` merges unless
    the base is 4-bit (merging into nf4 would requantize the weights); ``dequantize`` also scores a 4-bit base
    merged, through ``dequantized_merged``. Unfolding restores the base weights up to float rounding, so runs merge
    only once training is over."""
    if setting == "dequantize" and _is_quantized(model):
        with dequantized_merged(model):
            yield
        return
    merge = (not _is_quantized(model)) if setting == "auto" else bool(setting)
    if merge and hasattr(model, "merge_adapter"):
        model.merge_adapter()
        try:
            yield
        finally:
            model.unmerge_adapter()
    else:
        yield


@contextmanager
def dequantized_merged(model):
    """Score a 4-bit model as a merged bf16 one: each 4-bit base layer is swapped for a dense layer holding
    its dequantized weight plus the LoRA update, the adapters are off while scoring, and the 4-bit layers
    come back afterwards untouched (nothing is requantized). The dense copy costs 2 bytes per base weight (about
    14 GiB for an 8B model); when the GPU has not that much free, the adapters are scored unmerged (logged)."""
    import bitsandbytes as bnb

    layers = [m for m in model.modules() if isinstance(getattr(m, "base_layer", None), bnb.nn.Linear4bit)]
    need = sum(m.base_layer.in_features * m.base_layer.out_features * 2 for m in layers)
    device = next(model.parameters()).device
    if device.type == "cuda" and need > 0.9 * torch.cuda.mem_get_info(device)[0]:
        log.info("merge_for_eval=dequantize: %.1f GiB needed, not free; scoring unmerged", need / 2**30)
        yield
        return
    from bitsandbytes.functional import dequantize_4bit

    swapped = []
    try:
        for module in layers:
            base = module.base_layer
            weight = dequantize_4bit(base.weight.data, base.weight.quant_state).to(base.compute_dtype or torch.bfloat16)
            for name in module.active_adapters:
                if name in module.lora_A:
                    weight += module.get_delta_weight(name).to(weight.dtype)
            dense = torch.nn.Linear(base.in_features, base.out_features, bias=base.bias is not None, device="meta")
            dense.weight = torch.nn.Parameter(weight, requires_grad=False)
            if base.bias is not None:
                dense.bias = torch.nn.Parameter(base.bias.detach().to(weight.dtype), requires_grad=False)
            module.base_layer = dense
            swapped.append((module, base))
        with model.disable_adapter():
            yield
    finally:
        for module, base in swapped:
            module.base_layer = base


def use_gradient_checkpointing(model, setting: str | bool, tokens_per_batch: int, device: str) -> bool:
    """Resolve ``auto``: checkpoint only on CUDA when the step's activations would not fit in free memory."""
    if setting != "auto":
        return bool(setting)
    if device != "cuda":
        return False
    free, _ = torch.cuda.mem_get_info()
    # rough activations of one LoRA step without checkpointing (bf16, SDPA): ~34 hidden-size vectors per token per layer
    need = tokens_per_batch * 34 * model.config.hidden_size * model.config.num_hidden_layers * 2
    log.info("gradient checkpointing auto: ~%.1f GiB of activations, %.1f GiB free", need / 2**30, free / 2**30)
    return need > 0.8 * free


def enable_gradient_checkpointing(model) -> None:
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()


def adapter_weights(model) -> dict[str, torch.Tensor]:
    """A CPU copy of the LoRA weights (what ``save_pretrained`` writes)."""
    from peft import get_peft_model_state_dict

    return {k: v.detach().cpu().clone() for k, v in get_peft_model_state_dict(model).items()}


def set_adapter_weights(model, weights: dict[str, torch.Tensor]) -> None:
    from peft import set_peft_model_state_dict

    set_peft_model_state_dict(model, weights)
