"""The conformance kit catches real bugs: deliberately broken backends, each one caught, with the
smallest failing block reported and a snippet that reproduces it."""
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from refquant.backend import SPEC, Backend
from refquant.conformance.suite import BOUND, EXACT, FAIL, NOT_CLAIMED, run
from refquant.ggml import legacy
from refquant.ggml.blocks import u16
from refquant.ggml.legacy import Q4_0, Q8_0
from refquant.numerics import F32, c_max_abs, fp16_bits_to_fp32, fp32_to_fp16_bits, safe_reciprocal


class WrongTieRule(Backend):
    """Q8_0 with NumPy's round-half-to-even where ggml uses roundf (half away from zero)."""
    name = "wrong-tie-rule"

    def claims(self):
        return {("quantize", "Q8_0")}

    def quantize_rows(self, fmt, x, imatrix):
        xb = x.reshape(-1, 32)
        amax, _ = c_max_abs(xb)
        d = amax / F32(127)
        qs = np.rint(xb * safe_reciprocal(d)[:, None]).astype(np.int8)
        return Q8_0.join(x.shape[0], d=fp32_to_fp16_bits(d), qs=qs)


class SwappedNibbles(Backend):
    """Q4_0 decoded with the high nibble as the first half of the block."""
    name = "swapped-nibbles"

    def claims(self):
        return {("dequantize", "Q4_0")}

    def dequantize_rows(self, fmt, data):
        f = Q4_0.split(data)
        d = fp16_bits_to_fp32(u16(f["d"]))
        q = np.concatenate([f["qs"] >> 4, f["qs"] & 0x0F], axis=1).astype(np.int32) - 8
        return (q.astype(F32) * d[:, None]).reshape(data.shape[0], -1)


class OffByOneZeroPoint(Backend):
    """Q4_0 decoded around 7 instead of 8."""
    name = "off-by-one-zero"

    def claims(self):
        return {("dequantize", "Q4_0")}

    def dequantize_rows(self, fmt, data):
        f = Q4_0.split(data)
        d = fp16_bits_to_fp32(u16(f["d"]))
        q = np.concatenate([f["qs"] & 0x0F, f["qs"] >> 4], axis=1).astype(np.int32) - 7
        return (q.astype(F32) * d[:, None]).reshape(data.shape[0], -1)


class ScaleRoundedDown(Backend):
    """Q8_0 whose fp16 scale is truncated toward zero instead of rounded to nearest even."""
    name = "scale-rounded-down"

    def claims(self):
        return {("quantize", "Q8_0")}

    def quantize_rows(self, fmt, x, imatrix):
        out = legacy.quantize_q8_0(x).reshape(-1, 34).copy()
        xb = x.reshape(-1, 32)
        amax, _ = c_max_abs(xb)
        d = amax / F32(127)
        h = fp32_to_fp16_bits(d)
        back = fp16_bits_to_fp32(h)
        too_big = np.isfinite(back) & (np.abs(back) > np.abs(d))
        h = np.where(too_big, h - 1, h).astype("<u2")  # one ulp toward zero where RNE went up
        out[:, :2] = h.view(np.uint8).reshape(-1, 2)
        return out.reshape(x.shape[0], -1)


class UnwrittenElement(Backend):
    """Q8_0 decode into a reused buffer that never writes the last element of each row."""
    name = "unwritten-element"

    def claims(self):
        return {("dequantize", "Q8_0")}

    def dequantize_rows(self, fmt, data):
        full = legacy.dequantize_q8_0(data)
        out = np.full_like(full, np.float32(-1.2345e-7))  # what a stale buffer holds
        out[:, :-1] = full[:, :-1]
        return out


@pytest.mark.parametrize("broken, fmt, check", [
    (WrongTieRule(), "Q8_0", "quantize"),
    (SwappedNibbles(), "Q4_0", "dequantize"),
    (OffByOneZeroPoint(), "Q4_0", "dequantize"),
    (ScaleRoundedDown(), "Q8_0", "quantize"),
    (UnwrittenElement(), "Q8_0", "dequantize"),
], ids=lambda v: getattr(v, "name", v))
def test_broken_backend_is_caught(broken, fmt, check):
    report = run(broken, max_examples=60, seed=0, formats=[fmt])
    assert report.results[(fmt, check)] == FAIL
    assert not report.ok
    (failure,) = [f for f in report.failures if f.check == check]
    assert failure.snippet.startswith("import numpy as np, refquant")
    assert "FAIL" in report.matrix()
    # the reported block alone reproduces the failure
    ns = {}
    code = failure.snippet.replace(f"refquant.get_backend({broken.name!r})", "BROKEN")
    exec(code.replace("print(", "result = ("), {"BROKEN": broken, **ns}, ns)
    assert ns["result"].size > 0


def test_quantize_failure_is_narrowed_to_one_block():
    report = run(WrongTieRule(), max_examples=60, seed=0, formats=["Q8_0"])
    (failure,) = report.failures
    assert "of a 1x32 input" in failure.message
    # named by field and element, from Q8_0's declared layout: a tie rounded the other way
    assert re.match(r"Q8_0 block 0, row 0: qs\[\d+\] -?\d+, spec -?\d+; ", failure.message), failure.message


def test_the_spec_passes_and_unclaimed_is_visible():
    # the kit run on the spec itself, over one format of each family and every matmul scheme
    report = run("numpy", max_examples=5, seed=0,
                 formats=["F16", "Q4_1", "E4M3FN", "MXFP4_E2M1", "IQ4_XS", "BNB_NF4", "W4A16", "W8A8", "FP8"])
    assert report.ok and set(report.results.values()) == {EXACT, BOUND}
    assert report.results[("W8A8", "matmul")] == EXACT and report.results[("W4A16", "matmul")] == BOUND
    partial = run(WrongTieRule(), max_examples=5, seed=0, formats=["Q4_0"])
    assert set(partial.results.values()) == {NOT_CLAIMED}


def test_cli_exit_status_and_matrix():
    ok = subprocess.run([sys.executable, "-m", "refquant.cli", "conformance", "--backend", "numpy",
                         "--max-examples", "5", "--formats", "Q4_0,Q8_0"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    # Q4_0: quantize, quantize+imatrix, dequantize, vec_dot; Q8_0: the same less the imatrix path
    assert "7 exact, 0 within bound, 0 failed" in ok.stdout
    here = Path(__file__).parent
    bad = subprocess.run([sys.executable, "-m", "refquant.cli", "conformance", "--backend",
                          "test_conformance_kit:WrongTieRule", "--max-examples", "60", "--formats", "Q8_0"],
                         capture_output=True, text=True, cwd=here,
                         env={**os.environ, "PYTHONPATH": f"{here}{os.pathsep}{here.parent}"})
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "FAIL Q8_0 quantize" in bad.stdout and "refquant.get_backend('test_conformance_kit:WrongTieRule')" in bad.stdout
