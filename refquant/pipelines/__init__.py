"""Whole-file pipelines, above dispatch: GGUF recipes and conversion (`recipes`, `convert`) and
Hugging Face checkpoint quantization (`hf_quantize`) and the quality table (`quality`)."""
