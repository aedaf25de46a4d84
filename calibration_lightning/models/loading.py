"""Loading a causal LM in the chosen dtype / quantization and wrapping it with LoRA."""

from __future__ import annotations

import logging
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch

from calibration_lightning.errors import is_number, require

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class LoraSettings:
    """``model.lora``. Out-of-range values raise ConfigError naming the key."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: str | list[str] = "all-linear"

    def __post_init__(self) -> None:
        r, alpha, dropout = self.r, self.alpha, self.dropout
        require("model.lora.r", r, r >= 1, "the LoRA rank must be an integer >= 1")
        require("model.lora.alpha", alpha, is_number(alpha) and alpha > 0, "must be > 0")  # int or float: Any
        require("model.lora.dropout", dropout, 0 <= dropout < 1, "must be in [0, 1)")


@dataclass
class ModelSettings:
    """What ``load_model`` needs besides the source folder (the ``model`` config group minus the loader)."""

    dtype: str = "auto"  # auto: bfloat16 on CUDA, float32 on CPU
    quantize: str = "auto"  # nf4 | none | auto (nf4 on CUDA, none on CPU)
    trust_remote_code: bool = False
    use_safetensors: bool = True
    revision: str | None = None
    gradient_checkpointing: str | bool = "auto"  # auto: on only when the batch would not fit in free GPU memory
    compile: bool = False  # torch.compile each decoder layer (regional; GPU)
    merge_for_eval: str | bool = "auto"  # auto: merge unless quantized; dequantize: nf4 through a bf16 copy
    lora_compute: str = "float32"  # bfloat16: LoRA matmuls under bf16 autocast, fp32 master weights
    tf32: bool = False  # CUDA: float32 matmuls that remain run on TF32 tensor cores
    liger: bool = False  # CUDA: Liger's Triton RMSNorm, RoPE and SwiGLU kernels in the decoder layers
    adapter: str | None = None  # a saved peft adapter (folder or hub id) to start from instead of fresh LoRA
    lora: LoraSettings = field(default_factory=LoraSettings)

    def __post_init__(self) -> None:  # types and the choices of dtype, quantize and lora_compute: schema.ModelConf
        if self.liger:
            import importlib.util

            require(
                "model.liger",
                True,
                torch.cuda.is_available() and importlib.util.find_spec("liger_kernel") is not None,
                "Liger's kernels are Triton GPU kernels: they need a CUDA GPU and the liger-kernel package "
                f"(CUDA available: {torch.cuda.is_available()}; pip install liger-kernel); use model.liger=false",
            )
        if self.adapter is not None:
            require("model.adapter", self.adapter, bool(self.adapter), "must be a path")
            folder = Path(self.adapter).expanduser()
            local = folder.exists() or self.adapter.startswith((".", "/", "~")) or self.adapter.count("/") != 1
            require(
                "model.adapter",
                self.adapter,
                not local or (folder / "adapter_config.json").is_file(),
                "no peft adapter there (a folder with adapter_config.json, e.g. a run's adapter/ folder, "
                "or a hub id ORG/NAME)",
            )
            from calibration_lightning.models.artifacts import check_adapter

            check_adapter(self.adapter)  # complete and loadable, before the base model loads

    @classmethod
    def from_config(cls, node) -> ModelSettings:
        """From the ``model`` config group (its ``name`` and ``loader`` say where the model comes from)."""
        from omegaconf import OmegaConf

        fields = OmegaConf.to_container(node, resolve=True, enum_to_str=True)
        lora = LoraSettings(**fields.pop("lora"))
        return cls(**{k: v for k, v in fields.items() if k not in ("name", "loader")}, lora=lora)


def model_label(node) -> str:
    """How runs name a model: the hub id or folder of ``model=hf`` (``model.loader.name_or_path``), else the
    config's ``name``; with ``model.adapter``, the adapter's path after a ``+``."""
    path = (node.get("loader") or {}).get("name_or_path")
    label = str(path) if path and path != "???" else node.name
    return f"{label}+{node.adapter}" if node.get("adapter") else label


def resolve_dtype(name: str, device: str) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device == "cuda" else torch.float32
    return DTYPES[name]  # the schema's Dtype choices


def resolve_quantize(name: str, device: str) -> str:
    if name == "auto":
        return "nf4" if device == "cuda" else "none"
    return name


def load_tokenizer(source: str, settings: ModelSettings):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(
        source, revision=settings.revision, trust_remote_code=settings.trust_remote_code
    )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def load_model(
    source: str, settings: ModelSettings, device: str = "cpu", with_lora: bool = True, tokens_per_batch: int = 0
):
    """The base model in ``settings.dtype`` (optionally nf4-quantized), wrapped in LoRA adapters, with
    gradient checkpointing (resolved for ``tokens_per_batch``) and regional compilation as configured.

    Only adapter weights are trainable; every base weight has ``requires_grad=False``.
    """
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
    if settings.compile:
        compile_layers(model)
    return model


def autocast_dtype(settings: ModelSettings) -> torch.dtype | None:
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


def add_lora(model, lora: LoraSettings):
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


def load_adapter(model, settings: ModelSettings):
    """Put a saved peft adapter (``model.adapter``: ours or any peft LoRA) on the base model, trainable, so a
    run can evaluate it (``method=none``) or train on from it; ``model.lora`` does not apply then."""
    from peft import PeftModel

    source = (
        str(Path(settings.adapter).expanduser()) if Path(settings.adapter).expanduser().exists() else settings.adapter
    )
    try:
        model = PeftModel.from_pretrained(model, source, is_trainable=True, revision=settings.revision)
    except (RuntimeError, ValueError, KeyError, OSError) as e:  # another shape or base model: one line
        from calibration_lightning.models.artifacts import adapter_load_error

        raise adapter_load_error(e, settings.adapter, model.config.name_or_path) from None
    log.info("adapter loaded from %s (its own LoRA settings; model.lora is not used)", settings.adapter)
    return model


def initial_scoring(model, settings: ModelSettings):
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
    """Fold LoRA into the base weights for scoring (base-model speed), and unfold afterwards.

    ``auto`` merges unless the base is 4-bit (merging into nf4 would requantize the weights);
    ``dequantize`` also scores a 4-bit base merged, through ``dequantized_merged``. Unfolding restores the
    base weights up to float rounding, so runs merge only once training is over.
    """
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


def _four_bit_lora_layers(model) -> list:
    import bitsandbytes as bnb

    return [m for m in model.modules() if isinstance(getattr(m, "base_layer", None), bnb.nn.Linear4bit)]


@contextmanager
def dequantized_merged(model):
    """Score a 4-bit model as a merged bf16 one: each 4-bit base layer is swapped for a dense layer holding
    its dequantized weight plus the LoRA update, the adapters are off while scoring, and the 4-bit layers
    come back afterwards untouched (nothing is requantized).

    The dense copy costs 2 bytes per base weight (about 14 GiB for an 8B model). When the GPU has not that
    much free, the adapters are scored unmerged instead, and the log says so.
    """
    layers = _four_bit_lora_layers(model)
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


def activation_bytes(model, tokens: int) -> int:
    """Rough activation memory of one LoRA training step without checkpointing (bf16, SDPA):
    about 34 hidden-size vectors per token per layer, plus the logits."""
    cfg = model.config
    per_token = 34 * cfg.hidden_size * cfg.num_hidden_layers * 2
    return tokens * per_token


def use_gradient_checkpointing(model, setting: str | bool, tokens_per_batch: int, device: str) -> bool:
    """Resolve ``auto``: checkpoint only on CUDA when the step's activations would not fit in free memory."""
    if setting != "auto":
        return bool(setting)
    if device != "cuda":
        return False
    free, _ = torch.cuda.mem_get_info()
    need = activation_bytes(model, tokens_per_batch)
    log.info("gradient checkpointing auto: ~%.1f GiB of activations, %.1f GiB free", need / 2**30, free / 2**30)
    return need > 0.8 * free


def enable_gradient_checkpointing(model) -> None:
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()


def compile_layers(model) -> None:
    """``torch.compile`` each decoder layer in place (parameter names unchanged, short compile times)."""
    for module in model.modules():
        if type(module).__name__.endswith("DecoderLayer"):
            module.compile()
