"""A NumPy reference forward of llama-family models read from GGUF, its tokenizer, and
perplexity as llama.cpp computes it. See spec/model.md."""
from .forward import Config, Model
from .weights import Linear, Weights

__all__ = ["Config", "Model", "Linear", "Weights"]
