"""Loading and compiling the CuPy backend's CUDA sources.

Sources are the .cu files beside the launchers; each is compiled as one module with the options
below (no fast math, no contraction: -fmad=false), behind the block-layout macros generated from
the spec (`layout_defines`: sizes and field offsets, so that no kernel writes a byte offset). On a machine with a GPU, `module(path)` loads
it through cupy.RawModule (NVRTC, for the device's own architecture). Without one,
`compile_nvrtc(path, arch)` calls NVRTC directly through cupy.cuda.nvrtc -- which needs no
device -- and `compile_nvcc(path, arch)` runs nvcc when it is installed; both return the cubin
and the assembler's resource report.
"""
from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
OPTIONS = ("--std=c++17", "-fmad=false", "--ftz=false", "--prec-div=true", "--prec-sqrt=true")
# Architectures every source is compiled for (sm_90a: Hopper with wgmma; the plain paths and
# mma.sync need sm_80+).
ARCHS = ("sm_80", "sm_89", "sm_90a")
SOURCES = ("ggml/legacy.cu", "ggml/kquants.cu", "ggml/iquants.cu", "ggml/fp4.cu", "gemm_plain.cu", "gemm.cu", "gemm_sm90.cu")


@functools.lru_cache(maxsize=None)
def layout_defines() -> str:
    """C macros for every ggml block layout of the spec (refquant.ggml.layout), put in front of
    each source when it is compiled: RQ_<type>_BLOCK_SIZE (values per block),
    RQ_<type>_TYPE_SIZE (bytes per block) and RQ_<type>_<FIELD> (the field's byte offset in
    the block), so that the kernels name fields, not byte offsets. tests/test_cupy_twins.py holds
    them equal to the layouts."""
    from refquant.registry import all_formats
    lines = ["// Generated from the spec's block layouts (refquant.ggml.layout) by _runtime.layout_defines."]
    for f in sorted(all_formats(), key=lambda f: f.name):
        layout = getattr(f, "layout", None)
        if layout is None:
            continue
        t = re.sub(r"\W", "_", f.name.upper())
        lines.append(f"#define RQ_{t}_BLOCK_SIZE {layout.block_size}")
        lines.append(f"#define RQ_{t}_TYPE_SIZE {layout.type_size}")
        for field in layout.fields:
            name = field.name.upper()
            if name in ("BLOCK_SIZE", "TYPE_SIZE"):
                raise ValueError(f"{f.name}: a field named {field.name} would shadow the block's size macro")
            lines.append(f"#define RQ_{t}_{name} {layout.offset(field.name)}")
    return "\n".join(lines) + "\n"


def source(rel: str) -> str:
    """The text compiled for a source: the layout macros, then the file (line numbers kept)."""
    return layout_defines() + f'#line 1 "{rel}"\n' + (HERE / rel).read_text()


def _include_dirs(rel: str) -> list[str]:
    return [str((HERE / rel).parent), str(HERE)]


def cuda_include_dir() -> str | None:
    """Where cuda_fp16.h lives: the pip CUDA headers (nvidia-cuda-runtime / cuda-toolkit) or
    a local toolkit."""
    cands = []
    try:
        import nvidia  # namespace package of the NVIDIA wheels
        for p in nvidia.__path__:
            cands += [Path(p) / "cu13" / "include", Path(p) / "cuda_runtime" / "include",
                      Path(p) / "cuda_nvrtc" / "include"]
    except ImportError:
        pass
    for env in ("CUDA_PATH", "CUDA_HOME"):
        if os.environ.get(env):
            cands.append(Path(os.environ[env]) / "include")
    cands += [Path("/usr/local/cuda/include")]
    for c in cands:
        if (c / "cuda_fp16.h").exists():
            return str(c)
    return None


@functools.lru_cache(maxsize=None)
def module(rel: str):
    """The compiled module of a source, for the current device (needs a GPU and a driver)."""
    import cupy
    opts = OPTIONS + tuple(f"-I{d}" for d in _include_dirs(rel))
    inc = cuda_include_dir()
    if inc:
        opts += (f"-I{inc}",)
    return cupy.RawModule(code=source(rel), options=opts)


def kernel(rel: str, name: str):
    return module(rel).get_function(name)


# --------------------------------------------------------------------------- compiling without a GPU

class CompileError(RuntimeError):
    pass


def compile_nvrtc(rel: str, arch: str) -> tuple[bytes, str]:
    """(cubin, log) from NVRTC through cupy.cuda.nvrtc, with `-Xptxas -v` for the resource report."""
    from cupy.cuda import nvrtc
    opts = list(OPTIONS) + [f"--gpu-architecture={arch}", "-Xptxas", "-v"]
    opts += [f"-I{d}" for d in _include_dirs(rel)]
    inc = cuda_include_dir()
    if inc:
        opts.append(f"-I{inc}")
    src = source(rel)
    prog = nvrtc.createProgram(src, rel, [], [])
    try:
        try:
            nvrtc.compileProgram(prog, opts)
        except nvrtc.NVRTCError as e:
            raise CompileError(f"{rel} for {arch}: {e}\n{nvrtc.getProgramLog(prog)}") from None
        log = nvrtc.getProgramLog(prog)
        return nvrtc.getCUBIN(prog), log
    finally:
        nvrtc.destroyProgram(prog)


def nvcc_path() -> str | None:
    return shutil.which("nvcc")


def compile_nvcc(rel: str, arch: str) -> tuple[bytes, str]:
    nv = nvcc_path()
    if nv is None:
        raise CompileError("nvcc is not installed")
    code = arch
    virt = "compute_" + arch[3:]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "k.cubin"
        src = Path(tmp) / Path(rel).name
        src.write_text(source(rel))
        cmd = [nv, *OPTIONS, f"-gencode=arch={virt},code={code}", "-cubin", "-Xptxas", "-v",
               *(f"-I{d}" for d in _include_dirs(rel)), "-o", str(out), str(src)]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode:
            raise CompileError(f"{' '.join(cmd)}\n{r.stderr}")
        return out.read_bytes(), r.stderr


_FN = re.compile(r"Compiling entry function '(\w+)'")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_REGS = re.compile(r"Used (\d+) registers")


def resource_report(log: str) -> dict[str, dict]:
    """ptxas -v output -> {kernel: {registers, stack, spill_stores, spill_loads}}."""
    out: dict[str, dict] = {}
    cur = None
    for line in log.splitlines():
        m = _FN.search(line)
        if m:
            cur = m.group(1)
            out[cur] = {}
            continue
        if cur is None:
            continue
        m = _FRAME.search(line)
        if m:
            out[cur].update(stack=int(m.group(1)), spill_stores=int(m.group(2)), spill_loads=int(m.group(3)))
        m = _REGS.search(line)
        if m:
            out[cur]["registers"] = int(m.group(1))
    return out
