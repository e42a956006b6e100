"""The PyTorch implementations the affine, FP8 and KV-cache specs are checked against:
torchao's quant_primitives, compressed-tensors' forward quantize/dequantize and calculate_qparams,
AutoGPTQ's Quantizer and QuantLinear.pack, AutoAWQ's pseudo_quantize_tensor.

Nothing in the spec imports this module; tests and benchmarks do. Conversions between NumPy
(ml_dtypes.bfloat16 for bf16) and torch tensors are bit-preserving views.
"""
from __future__ import annotations

import functools
import importlib.util
import sys
import types
from pathlib import Path

import ml_dtypes
import numpy as np

BF16 = np.dtype(ml_dtypes.bfloat16)
E4M3 = np.dtype(ml_dtypes.float8_e4m3fn)


def torch():
    import torch as t
    return t


def to_torch(a: np.ndarray):
    """NumPy -> torch, bit for bit (bfloat16 and float8_e4m3fn through their bits)."""
    t = torch()
    a = np.ascontiguousarray(a)
    if a.dtype == BF16:
        return t.from_numpy(a.view(np.int16).copy()).view(t.bfloat16)
    if a.dtype == E4M3:
        return t.from_numpy(a.view(np.uint8).copy()).view(t.float8_e4m3fn)
    return t.from_numpy(a.copy())


def to_numpy(x) -> np.ndarray:
    t = torch()
    x = x.detach().cpu().contiguous()
    if x.dtype == t.bfloat16:
        return x.view(t.int16).numpy().view(BF16)
    if x.dtype == t.float8_e4m3fn:
        return x.view(t.uint8).numpy().view(E4M3)
    return x.numpy()


def torch_dtype(np_dtype):
    t = torch()
    return {np.dtype(np.float32): t.float32, np.dtype(np.float16): t.float16, BF16: t.bfloat16,
            np.dtype(np.int8): t.int8, np.dtype(np.uint8): t.uint8, np.dtype(np.int32): t.int32,
            E4M3: t.float8_e4m3fn}[np.dtype(np_dtype)]


@functools.lru_cache(None)
def auto_gptq_qlinear():
    """AutoGPTQ 0.7.1's `qlinear_cuda_old` module (its QuantLinear.pack is the GPTQ v1 packer),
    loaded from its file: the `auto_gptq` package's own __init__ imports model code that fails
    with transformers 5, and the packer needs none of it."""
    spec = importlib.util.find_spec("auto_gptq")
    if spec is None:
        raise ImportError("auto-gptq is not installed")
    root = Path(list(spec.submodule_search_locations)[0])
    return _load_file("refquant_oracle_auto_gptq_qlinear", root / "nn_modules" / "qlinear" / "qlinear_cuda_old.py")


@functools.lru_cache(None)
def auto_gptq_quantizer():
    """AutoGPTQ 0.7.1's `quantization/quantizer.py` (GPTQ's Quantizer.find_params), from its file."""
    spec = importlib.util.find_spec("auto_gptq")
    if spec is None:
        raise ImportError("auto-gptq is not installed")
    root = Path(list(spec.submodule_search_locations)[0])
    return _load_file("refquant_oracle_auto_gptq_quantizer", root / "quantization" / "quantizer.py")


def _load_file(name: str, path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


@functools.lru_cache(None)
def awq_pseudo_quantize():
    """AutoAWQ's AwqQuantizer.pseudo_quantize_tensor as a function (w, w_bit, group_size,
    zero_point) -> (fake-quantized w, scales, zeros)."""
    from awq.quantize.quantizer import AwqQuantizer

    def run(w, w_bit, group_size, zero_point):
        cfg = types.SimpleNamespace(w_bit=w_bit, group_size=group_size, zero_point=zero_point)
        return AwqQuantizer.pseudo_quantize_tensor(cfg, w)
    return run


@functools.lru_cache(None)
def auto_gptq_gptq():
    """AutoGPTQ 0.7.1's `quantization/gptq.py` (the GPTQ class, fasterquant), imported as a
    submodule of a bare package over its folder so that neither auto_gptq's nor
    auto_gptq.quantization's __init__ (model code that fails with transformers 5) runs."""
    spec = importlib.util.find_spec("auto_gptq")
    if spec is None:
        raise ImportError("auto-gptq is not installed")
    root = Path(list(spec.submodule_search_locations)[0])
    pkg = types.ModuleType("refquant_oracle_auto_gptq_quantization")
    pkg.__path__ = [str(root / "quantization")]
    sys.modules[pkg.__name__] = pkg
    return importlib.import_module(pkg.__name__ + ".gptq")


@functools.lru_cache(None)
def auto_gptq_qlinear_cuda():
    """AutoGPTQ 0.7.1's `qlinear_cuda` module: its CPU forward dequantizes with g_idx."""
    spec = importlib.util.find_spec("auto_gptq")
    if spec is None:
        raise ImportError("auto-gptq is not installed")
    root = Path(list(spec.submodule_search_locations)[0])
    return _load_file("refquant_oracle_auto_gptq_qlinear_cuda", root / "nn_modules" / "qlinear" / "qlinear_cuda.py")


LLMC_DIR = "llmcompressor-nodeps"


def llmcompressor_dir() -> Path:
    """Where the Makefile installs llm-compressor 0.14.0.1 without its dependencies: a folder of its
    own inside the venv (it pins transformers <= 5.17 and compressed-tensors 0.19; the test extra
    has 5.24 and 0.20.1, and the parts used here run on them)."""
    return Path(sys.prefix) / LLMC_DIR


def llmcompressor(module: str):
    """Import an llm-compressor module from llmcompressor_dir() (put on sys.path), or from the
    environment when llm-compressor is installed there. ModuleNotFoundError when neither has it."""
    d = llmcompressor_dir()
    if d.is_dir() and str(d) not in sys.path:
        sys.path.append(str(d))
    return importlib.import_module(module)


def gptqmodel_mlx_packing():
    """GPTQModel 7.7.0's `gptqmodel/utils/mlx_packing.py` (NumPy only: repack_awq_gemv decodes AWQ
    GEMV checkpoints on the CPU), from its sdist file in refquant's cache (`make install` fetches
    it with python -m tools.models fetch; downloaded with pip on first use otherwise)."""
    from ..models import gptqmodel_mlx_packing_path
    return _load_file("gptqmodel_mlx_packing", gptqmodel_mlx_packing_path())
