"""Golden vectors of operations that take more than a byte row: ONNX's QuantizeLinear /
DequantizeLinear to and from INT16 and UINT16 (a scale and a zero point per tensor, per axis,
per block) and its casts from DOUBLE (a float64 input), under `spec/vectors/onnx-operators/`,
and torchao's two-level NVFP4 (a per-tensor scale), under `spec/vectors/torchao-nvfp4/`. The
row formats' vectors are refquant.conformance.vectors'.

Per case, `<DIR>/<case>/`: every input and output as `<name>.npy` and `case.json` (the operator,
its attributes, each array's dtype and shape). tests/test_vectors_vs_onnx_torchao.py runs ONNX's
ReferenceEvaluator and torchao on the inputs and compares their outputs with these files, and
checks that refquant writes them now.

Regenerate: python -m refquant.conformance.tensor_vectors spec/vectors
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from .. import mx
from .. import onnx_ops as ox

F32 = np.float32
SEED = 20260102


def _qdq_input(lo: int, hi: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """x (4, 12) float32 for a scale of 1 (scaled by the case): ties k + 1/2 of both signs (rint
    sends them to even), values past both ends of the range, ±0, the range's ends and one past,
    and Gaussian values; the zero points (4,) used per row."""
    ties = np.arange(-6, 6, dtype=F32) + F32(0.5)
    ends = np.array([lo, hi, lo - 1, hi + 1, lo - 0.5, hi + 0.5, lo + 0.5, hi - 0.5, 0.0, -0.0, 2.0 ** 20, -(2.0 ** 20)], F32)
    gauss = (rng.standard_normal(12) * (hi - lo) / 8).astype(F32)
    near = np.array([0.49999997, 0.5, 0.50000006, 1.5, 2.5, -0.5, -1.5, -2.5, 1e-30, -1e-30, 3.0, -3.0], F32)
    return np.stack([ties, ends, gauss, near]), np.array([0, lo, hi, (lo + hi) // 2], np.int64)


def onnx_qdq_cases() -> dict[str, dict]:
    """case name -> {"op", "attributes", "inputs": {name: array}, "outputs": {name: array}}."""
    rng = np.random.default_rng(SEED)
    out = {}
    for to in ("INT16", "UINT16"):
        lo, hi = ox.int_range(to)
        dt = ox.INT_TYPES[to][2]
        x, zrows = _qdq_input(lo, hi, rng)
        grans = {
            "tensor": (np.array(0.5, F32), np.array(zrows[3], dt), 1, 0),
            "axis": (np.array([0.25, 1.0, 3.0, 2.0 ** -10], F32), zrows.astype(dt), 0, 0),
            "blocked": (np.array([[0.5, 2.0, 0.125]] * 4, F32) * np.array([[1], [2], [4], [0.5]], F32),
                        np.repeat(zrows[:, None], 3, axis=1).astype(dt), 1, 4),
        }
        for gran, (s, z, axis, block) in grans.items():
            xs = (x * (s.reshape(-1, 1) if gran == "axis" else np.repeat(s, 4, axis=1) if gran == "blocked" else s)).astype(F32)
            attrs = {"axis": axis} | ({"block_size": block} if block else {})
            y = ox.quantize_linear(xs, s, z.astype(np.int64), axis, block, to)
            back = ox.dequantize_linear(y, s, z.astype(np.int64), axis, block)
            out[f"quantizelinear_{to.lower()}_{gran}"] = {
                "op": "QuantizeLinear", "attributes": attrs,
                "inputs": {"x": xs, "y_scale": s, "y_zero_point": z}, "outputs": {"y": y}}
            out[f"dequantizelinear_{to.lower()}_{gran}"] = {
                "op": "DequantizeLinear", "attributes": attrs,
                "inputs": {"x": y, "x_scale": s, "x_zero_point": z}, "outputs": {"y": back}}
    return out


def double_input() -> np.ndarray:
    """float64 values where casting them once and through float32 part: the midpoints of float32
    and float16 neighbours and one float64 ulp either side, float32's and float16's largest and
    past them, subnormals of each, ±0, ±Inf."""
    f32 = np.array([1.0, 1.5, 3.0, 448.0, 57344.0, 6.0, 0.1, 2.0 ** -126, 2.0 ** -149], np.float64)
    mids = (f32 + np.nextafter(f32.astype(F32), F32(np.inf)).astype(np.float64)) / 2
    f16 = np.array([1.0, 65504.0, 2.0 ** -14, 2.0 ** -24], np.float64)
    mids16 = f16 + np.array([2.0 ** -11, 16.0, 2.0 ** -25, 2.0 ** -25])      # half an fp16 ulp up
    both = np.concatenate([mids, mids16])
    v = np.concatenate([both, np.nextafter(both, np.inf), np.nextafter(both, -np.inf),
                        [3.4028234663852886e38, 3.4028235677973366e38, 1e39, 65520.0, 65519.99, 1e-50,
                         5e-324, 0.0, -0.0, np.inf, -np.inf, 0.3, 2.0 ** 128]])
    v = np.concatenate([v, -v])
    return v.reshape(-1)


def onnx_double_cases() -> dict[str, dict]:
    x = double_input()
    out = {}
    for to in ("FLOAT", "FLOAT16"):
        out[f"cast_double_to_{to.lower()}"] = {"op": "Cast", "attributes": {"to": to},
                                               "inputs": {"x": x}, "outputs": {"y": ox.cast_double(x, to)}}
    for to in ox.FLOAT_ELEMENT_TYPES:
        for sat in ((1, 0) if to != "FLOAT4E2M1" else (1,)):
            with np.errstate(all="ignore"):
                y = ox.cast_to_element(x, to, bool(sat))
            out[f"cast_double_to_{to.lower()}_saturate{sat}"] = {
                "op": "Cast", "attributes": {"to": to, "saturate": sat}, "inputs": {"x": x}, "outputs": {"y": y}}
    return out


def torchao_nvfp4_two_level() -> dict:
    """The NVFP4_TORCHAO vectors' input, quantized with two levels: p from the tensor's amax
    (torchao's per_tensor_amax_to_scale)."""
    from .vectors import vector_input
    x, kinds = vector_input("NVFP4_TORCHAO")
    p = mx.nvfp4_per_tensor_scale_torchao(np.max(np.abs(x)))
    packed, scales = mx.quantize_nvfp4_torchao(x, p)
    return {"op": "nvfp4_quantize", "attributes": {"block_size": 16, "row_kinds": kinds},
            "inputs": {"x": x, "per_tensor_scale": np.array([p], F32)},
            "outputs": {"qdata": packed, "scale": scales,
                        "dequantized": mx.dequantize_nvfp4_torchao(packed, scales, p)}}


def _write_case(d: Path, case: dict) -> list[Path]:
    d.mkdir(parents=True, exist_ok=True)
    written, doc = [], {"op": case["op"], "attributes": case["attributes"], "inputs": {}, "outputs": {}}
    for part in ("inputs", "outputs"):
        for name, a in case[part].items():
            a = np.asarray(a)
            np.save(d / f"{name}.npy", a, allow_pickle=False)
            written.append(d / f"{name}.npy")
            doc[part][name] = {"dtype": a.dtype.name, "shape": list(a.shape)}
    (d / "case.json").write_text(json.dumps(doc, indent=1) + "\n")
    return written + [d / "case.json"]


def write(out_dir) -> list[Path]:
    out_dir = Path(out_dir)
    written = []
    with np.errstate(all="ignore"):
        for name, case in {**onnx_qdq_cases(), **onnx_double_cases()}.items():
            written += _write_case(out_dir / "onnx-operators" / name, case)
        written += _write_case(out_dir / "torchao-nvfp4" / "two-level", torchao_nvfp4_two_level())
    return written


if __name__ == "__main__":
    print(f"wrote {len(write(sys.argv[1] if len(sys.argv) > 1 else 'spec/vectors'))} files")
