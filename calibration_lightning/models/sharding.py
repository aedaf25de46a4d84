"""FSDP wrapping: one FSDP unit per transformer decoder layer of the supported architectures."""

from __future__ import annotations


def decoder_layer_policy() -> set[type]:
    """The decoder-layer classes of Llama, Mistral and OLMo-2 (the paper's models), for FSDP auto-wrap."""
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer
    from transformers.models.mistral.modeling_mistral import MistralDecoderLayer
    from transformers.models.olmo2.modeling_olmo2 import Olmo2DecoderLayer

    return {LlamaDecoderLayer, MistralDecoderLayer, Olmo2DecoderLayer}
