"""Speed of refquant's affine and FP8 specs against torchao and compressed-tensors on the same
matrix, in the same run. Prints best-of times and ratios (refquant time / peer time: above 1 is
slower). torch runs on one thread, as NumPy does for this work.

    python benchmarks/bench_affine.py [--rows 1024] [--cols 4096] [--repeat 3] [--dtype float32]
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root: tools/

import numpy as np

from refquant import affine as A
from refquant import fp8_scaling as F
from tools.oracles import pytorch as pt

import timing  # benchmarks/timing.py


def best_of(fn, repeat):
    return timing.best_of(fn, repeat)[0]


def cases(x, bits=4, group=128):
    import torch
    from compressed_tensors.quantization import QuantizationArgs
    from compressed_tensors.quantization.lifecycle.forward import quantize as ct_quantize
    from compressed_tensors.quantization.utils import compute_dynamic_scales_and_zp
    from torchao.quantization.quant_primitives import (MappingType, _choose_scale_float8, _quantize_affine_float8,
                                                       choose_qparams_affine, dequantize_affine, quantize_affine)
    tx = pt.to_torch(x)
    block = A.per_group(x.shape, group)
    qmin, qmax = A.code_range(bits, False)

    def ours_torchao():
        s, z = A.choose_qparams_torchao(x, block, bits, "ASYMMETRIC", signed=False)
        q = A.quantize_torchao(x, s, z, block, bits, signed=False)
        return A.dequantize_torchao(q, s, z, block, x.dtype)

    def ref_torchao():
        s, z = choose_qparams_affine(tx, MappingType.ASYMMETRIC, block, torch.uint8, qmin, qmax)
        q = quantize_affine(tx, block, s, z, torch.uint8, qmin, qmax)
        return dequantize_affine(q, block, s, z, torch.uint8, qmin, qmax, output_dtype=tx.dtype)

    args = QuantizationArgs(num_bits=bits, type="int", symmetric=True, strategy="group", group_size=group, dynamic=True)

    def ours_ct():
        s, z = A.choose_qparams_compressed_tensors(x, block, bits, True)
        return A.quantize_compressed_tensors(x, s, z, block, bits)

    def ref_ct():
        s, z = compute_dynamic_scales_and_zp(tx, args, None)
        return ct_quantize(tx, s, z, args, dtype=torch.int8)

    fblock = F.weight_blocks(x.shape, 128)

    def ours_fp8():
        s = F.choose_scale(x, fblock, "torchao")
        return F.quantize(x, s, fblock, "torchao")

    def ref_fp8():
        s = _choose_scale_float8(tx, list(fblock), torch.float8_e4m3fn)
        return _quantize_affine_float8(tx, s, torch.float8_e4m3fn)

    return [(f"torchao int{bits} asym g{group} (choose+q+dq)", ours_torchao, ref_torchao),
            (f"compressed-tensors int{bits} sym g{group} (choose+q)", ours_ct, ref_ct),
            ("torchao fp8 128x128 (choose+q)", ours_fp8, ref_fp8)]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1024)
    ap.add_argument("--cols", type=int, default=4096)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    a = ap.parse_args(argv)
    import torch
    torch.set_num_threads(1)
    x = (np.random.default_rng(0).standard_normal((a.rows, a.cols)) * 0.02).astype(np.float32)
    x = x.astype(A.float_dtype(a.dtype))
    print(f"matrix {a.rows}x{a.cols} {a.dtype}, best of {a.repeat}")
    print(f"{'work':52} {'refquant s':>11} {'peer s':>9} {'ratio':>7}")
    with np.errstate(all="ignore"):
        for name, ours, ref in cases(x):
            ours(), ref()  # warm-up
            to, tr = best_of(ours, a.repeat), best_of(ref, a.repeat)
            print(f"{name:52} {to:11.4f} {tr:9.4f} {to / tr:7.2f}")


if __name__ == "__main__":
    main()
