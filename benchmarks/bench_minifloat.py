"""Speed of refquant's element formats and MX/NVFP4 quantizers against their peers, on the same
data, in the same run. Prints times and ratios (refquant time / peer time: above 1 is slower).

    python benchmarks/bench_minifloat.py [--rows 1024] [--cols 4096] [--repeat 3]

Peers: ml_dtypes' casts (encode/decode), torchao's to_mx / to_dtype on CPU torch (MX),
compressed-tensors' NVFP4 path on CPU torch. torch runs on one thread for a like-for-like
comparison with single-threaded NumPy.
"""
from __future__ import annotations

import argparse
import warnings

import ml_dtypes
import numpy as np

from refquant import minifloat as mf
from refquant import mx

import timing  # benchmarks/timing.py


def best_of(fn, repeat):
    return timing.best_of(fn, repeat)[0]


def row(label, ours, peer):
    ratio = f"{ours / peer:6.2f}" if peer else "   n/a"
    peer_s = f"{peer * 1e3:9.1f}" if peer else "      n/a"
    print(f"{label:<34} {ours * 1e3:9.1f} {peer_s} {ratio}")


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1024)
    ap.add_argument("--cols", type=int, default=4096)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((args.rows, args.cols)) * 0.02).astype(np.float32)
    print(f"matrix {args.rows}x{args.cols} float32 ({x.nbytes / 1e6:.0f} MB), best of {args.repeat}")
    print(f"{'operation':<34} {'refquant':>9} {'peer':>9} {'ratio':>6}   (ms; ratio = refquant / peer)")

    print("-- element formats vs ml_dtypes")
    for name, f in mf.FORMATS.items():
        dt = getattr(ml_dtypes, f.ml_dtypes_name)
        xs = x * np.float32(1000.0) if name == "E8M0" else x / np.float32(0.02)
        with np.errstate(all="ignore"):
            codes = xs.astype(dt).view(np.uint8)
            t_ours = best_of(lambda: mf.encode(xs, name), args.repeat)
            t_peer = best_of(lambda: xs.astype(dt), args.repeat)
        row(f"encode {name}", t_ours, t_peer)
        t_ours = best_of(lambda: mf.decode(codes, name), args.repeat)
        t_peer = best_of(lambda: codes.view(dt).astype(np.float32), args.repeat)
        row(f"decode {name}", t_ours, t_peer)

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import torch
            from torchao.prototype.mx_formats.config import ScaleCalculationMode
            from torchao.prototype.mx_formats.constants import DTYPE_FP6_E2M3, DTYPE_FP6_E3M2
            from torchao.prototype.mx_formats.mx_tensor import to_dtype, to_mx
    except ImportError:
        print("torchao not installed: MX comparisons skipped")
        return
    torch.set_num_threads(1)
    elem = {"MXFP8_E4M3": torch.float8_e4m3fn, "MXFP8_E5M2": torch.float8_e5m2, "MXFP6_E2M3": DTYPE_FP6_E2M3,
            "MXFP6_E3M2": DTYPE_FP6_E3M2, "MXFP4_E2M1": torch.float4_e2m1fn_x2}
    modes = {"floor": ScaleCalculationMode.FLOOR, "rceil": ScaleCalculationMode.RCEIL}
    xt = torch.from_numpy(x)
    print("-- MX vs torchao (CPU torch, 1 thread)")
    for name, dt in elem.items():
        for rule, mode in modes.items():
            t_ours = best_of(lambda: mx.quantize_mx(x, name, rule), args.repeat)
            t_peer = best_of(lambda: to_mx(xt, dt, 32, mode), args.repeat)
            row(f"quantize {name} {rule}", t_ours, t_peer)
        s, d = mx.quantize_mx(x, name, "floor")
        st, dtt = to_mx(xt, dt, 32, ScaleCalculationMode.FLOOR)
        t_ours = best_of(lambda: mx.dequantize_mx(s, d, name), args.repeat)
        t_peer = best_of(lambda: to_dtype(dtt, st, dt, 32, torch.float32), args.repeat)
        row(f"dequantize {name}", t_ours, t_peer)

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from compressed_tensors.compressors.nvfp4.helpers import quantize_and_pack_fp4
            from compressed_tensors.quantization.quant_scheme import NVFP4
            from compressed_tensors.quantization.utils.helpers import calculate_qparams, generate_gparam
    except ImportError:
        print("compressed-tensors not installed: NVFP4 comparison skipped")
        return
    args_w = NVFP4["weights"]

    def ct_nvfp4():
        gs = generate_gparam(xt.min(), xt.max())
        g = xt.reshape(xt.shape[0], -1, 16)
        scale, _ = calculate_qparams(g.amin(-1), g.amax(-1), args_w, global_scale=gs)
        return quantize_and_pack_fp4(xt, scale, global_scale=gs, zero_point=None, group_size=16)

    print("-- NVFP4 vs compressed-tensors (CPU torch, 1 thread)")
    row("quantize NVFP4", best_of(lambda: mx.quantize_nvfp4(x), args.repeat), best_of(ct_nvfp4, args.repeat))


if __name__ == "__main__":
    main()
