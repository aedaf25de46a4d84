"""Model loading (hub, local, bundled GGUF, tiny), quantization, adapters and letter tokens."""
