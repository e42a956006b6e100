"""Golden vectors for compressed-tensors' presets: `spec/vectors/compressed-tensors/<PRESET>/`.

For each preset of refquant.layouts.compressed_tensors.PRESETS, from one float32 weight (8, 128),
`input.npy` beside the presets' folders, whose rows are kinds of input (`ROW_KINDS`): the tensors refquant writes for it (the names and dtypes
compressed-tensors' compressor writes; float8 and bfloat16 arrays stored as their bytes, uint8 /
uint16, with the dtype in `vectors.json`), and the weight those tensors decompress to. The static
input scales come from an input amax of 3.25. tests/test_ct_presets.py checks the same function
against compressed-tensors' compressors; tests/test_ct_vectors.py checks the files.
Regenerate: python -m refquant.pipelines.ct_vectors spec/vectors/compressed-tensors
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from ..layouts import compressed_tensors as L_ct
from .hf_quantize import preset_tensors

ROW_KINDS = ("gaussian", "zeros", "neg_zeros_and_ties", "tiny", "huge", "outlier", "positive", "mixed_scale")
X_AMAX = np.float32(3.25)


def weight() -> np.ndarray:
    rng = np.random.default_rng(2026)
    W = np.empty((8, 128), np.float32)
    W[0] = rng.standard_normal(128) * 0.02
    W[1] = 0
    W[2] = np.where(np.arange(128) % 2, -0.0, np.tile(np.float32([0.25, 0.75, 1.25, 2.5]), 32)[np.arange(128)])
    W[3] = rng.standard_normal(128) * 1e-30
    W[4] = rng.standard_normal(128) * 1e20
    W[5] = rng.standard_normal(128) * 0.01
    W[5, 7] = 40.0
    W[6] = np.abs(rng.standard_normal(128)) + 0.5
    W[7] = rng.standard_normal(128) * np.repeat(np.float32([1e-3, 1, 1e3, 1e-6]), 32)
    return W.astype(np.float32)


def _raw(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    if a.dtype.kind == "V" or a.dtype.name in ("bfloat16", "float8_e4m3fn"):
        return a.view(f"u{a.itemsize}")
    return a


def write(out_dir) -> None:
    out_dir = Path(out_dir)
    W = weight()
    out_dir.mkdir(parents=True, exist_ok=True)
    np.save(out_dir / "input.npy", W)
    for name in sorted(L_ct.PRESETS):
        d = out_dir / name
        d.mkdir(parents=True, exist_ok=True)
        fmt, w, a = L_ct.preset(name)
        t = preset_tensors(name, W, x_amax=X_AMAX)
        dec = L_ct.dequantize(t, fmt, w)
        meta = {"preset": name, "format": fmt, "weights": w, "input_activations": a, "row_kinds": list(ROW_KINDS),
                "input_amax": float(X_AMAX), "tensors": {}}
        for k, v in sorted(t.items()):
            np.save(d / f"{k}.npy", _raw(v))
            meta["tensors"][k] = {"dtype": np.asarray(v).dtype.name, "shape": list(np.shape(v))}
        np.save(d / "decoded.npy", _raw(dec))
        meta["decoded"] = {"dtype": dec.dtype.name, "shape": list(dec.shape)}
        (d / "vectors.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    write(sys.argv[1] if len(sys.argv) > 1 else "spec/vectors/compressed-tensors")
