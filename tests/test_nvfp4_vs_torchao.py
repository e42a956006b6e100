"""NVFP4 as torchao computes it (refquant.mx.quantize_nvfp4_torchao) against torchao 0.18's
`nvfp4_quantize` on CPU torch, one and two levels, and NVFP4Tensor's dequantize; and the cases
where torchao and compressed-tensors (refquant.mx.quantize_nvfp4) differ, as
spec/divergences-nvfp4.md shows them."""
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given

from refquant import mx
from refquant.conformance.strategies import f32_range, float_rows
from refquant.errors import InputError

import torch  # noqa: E402  (an oracle: missing it is an error, not a skip)
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from torchao.prototype.mx_formats.nvfp4_tensor import NVFP4Tensor, nvfp4_quantize, per_tensor_amax_to_scale

PAGE = Path(__file__).resolve().parent.parent / "spec" / "divergences-nvfp4.md"


def ta_quantize(x, per_tensor_scale=None):
    """torchao: (packed uint8, E4M3 scale codes)."""
    p = None if per_tensor_scale is None else torch.tensor(per_tensor_scale, dtype=torch.float32)
    scales, packed = nvfp4_quantize(torch.from_numpy(x.copy()), 16, p)
    return packed.view(torch.uint8).numpy(), scales.view(torch.uint8).numpy()


def assert_matches(x, per_tensor_scale=None):
    p_ref, s_ref = ta_quantize(x, per_tensor_scale)
    try:
        p, s = mx.quantize_nvfp4_torchao(x, per_tensor_scale)
    except InputError:
        # refused only where torchao computes 0 * Inf: 1 / p overflows float32 and x has a zero
        with np.errstate(all="ignore"):
            assert np.isinf(np.float32(1) / np.float32(per_tensor_scale)) and (x == 0).any()
        return
    np.testing.assert_array_equal(s, s_ref, err_msg="E4M3 block scales")
    np.testing.assert_array_equal(p, p_ref, err_msg="packed E2M1 codes")


def amax_scale(x):
    """torchao's per-tensor scale from the tensor's amax; 0 when it is 0 or its reciprocal
    overflows float32 (where refquant refuses a block of zeros: torchao computes 0 * Inf)."""
    p = np.float32(per_tensor_amax_to_scale(torch.tensor(np.abs(x).max())).item())
    with np.errstate(all="ignore"):
        return p if p > 0 and np.isfinite(np.float32(1) / p) else np.float32(0)


@given(x=float_rows(16, max_rows=3, max_blocks=4))
def test_one_level_matches_torchao(x):
    assert_matches(x)


@given(x=float_rows(16, max_rows=3, max_blocks=4))
def test_two_level_from_the_tensors_amax_matches_torchao(x):
    p = amax_scale(x)
    if p > 0:
        assert np.float32(p) == mx.nvfp4_per_tensor_scale_torchao(np.abs(x).max())
        assert_matches(x, np.float32(p))


@given(x=float_rows(16, max_rows=2, max_blocks=3), p=f32_range(1e-6, 1e3))
def test_two_level_with_any_scale_matches_torchao(x, p):
    assert_matches(x, np.float32(p))


@given(x=float_rows(16, max_rows=2, max_blocks=3))
def test_bfloat16_input_matches_torchao(x):
    import ml_dtypes
    b = x.astype(ml_dtypes.bfloat16)
    t = torch.from_numpy(b.view(np.int16).copy()).view(torch.bfloat16)
    for p in (None, amax_scale(b.astype(np.float32)) or None):
        pt = None if p is None else torch.tensor(p, dtype=torch.float32)
        scales, packed = nvfp4_quantize(t, 16, pt)
        ours_p, ours_s = mx.quantize_nvfp4_torchao(b, p)
        np.testing.assert_array_equal(ours_s, scales.view(torch.uint8).numpy())
        np.testing.assert_array_equal(ours_p, packed.view(torch.uint8).numpy())


def _edge_matrices():
    rng = np.random.default_rng(5)
    w = (rng.standard_normal((4, 64)) * 0.02).astype(np.float32)
    yield np.zeros((2, 32), np.float32)
    yield np.full((2, 32), -0.0, np.float32)
    m = w.copy()
    m[0, :16] = 0
    m[1, :16] = -0.0
    m[2, :16] *= np.float32(1e-12)
    m[3, 5] = -1e-9
    yield m
    yield np.full((1, 16), 3.4028235e38, np.float32)
    yield np.linspace(-3.4e38, 3.4e38, 64, dtype=np.float32).reshape(2, 32)
    yield (np.arange(-8, 8, dtype=np.float32).reshape(1, 16) * np.float32(0.25))
    yield (np.arange(-15, 17, 2, dtype=np.float32) / np.float32(32)).reshape(1, 16)
    yield np.array([[1e-45] * 16], np.float32)


def test_edge_matrices_match_torchao():
    for x in _edge_matrices():
        assert_matches(x)
        p = amax_scale(x)
        if p > 0:
            assert_matches(x, np.float32(p))


@given(x=float_rows(16, max_rows=2, max_blocks=3))
def test_dequantize_matches_torchao(x):
    for p in (None, amax_scale(x) or None):
        packed, scales = mx.quantize_nvfp4_torchao(x, p)
        pt = None if p is None else torch.tensor(p, dtype=torch.float32)
        t = NVFP4Tensor(torch.from_numpy(packed.copy()), torch.from_numpy(scales.copy()).view(torch.float8_e4m3fn),
                        16, torch.float32, per_tensor_scale=pt)
        ref = t.dequantize(torch.float32).numpy()
        ours = mx.dequantize_nvfp4_torchao(packed, scales, p)
        np.testing.assert_array_equal(ours.view(np.uint32), ref.view(np.uint32))


def test_errors():
    x = np.ones((2, 16), np.float32)
    with pytest.raises(InputError, match="per_tensor_scale"):
        mx.quantize_nvfp4_torchao(x, 0.0)
    with pytest.raises(InputError, match="matrix"):
        mx.quantize_nvfp4_torchao(np.ones(16, np.float32))
    with pytest.raises(InputError, match="non-finite"):
        mx.quantize_nvfp4_torchao(np.full((1, 16), np.nan, np.float32))


# ----------------------------------------------------------------------------- the divergence page

def page_cases():
    """The page's cases: (name, x as one row, the text below it) from its `input` lines."""
    text = PAGE.read_text()
    cases = []
    for m in re.finditer(r"^### (\d+)\. (.+?)\n.*?^input: `(.+?)`", text, re.S | re.M):
        x = np.array(eval(m.group(3)), np.float32).reshape(1, -1)
        cases.append((m.group(2), x, text[m.end():].split("###")[0]))
    return cases


def test_divergence_page_shows_what_both_implementations_give():
    """Every case on spec/divergences-nvfp4.md: the codes printed under torchao are torchao's, those
    under compressed-tensors are compressed-tensors' (refquant's quantize_nvfp4 is tested equal to
    it in test_nvfp4_vs_compressed_tensors.py), and the two differ."""
    from test_nvfp4_vs_compressed_tensors import ct_quantize
    cases = page_cases()
    assert len(cases) >= 4
    for name, x, body in cases:
        got = dict(re.findall(r"^\| (torchao|compressed-tensors) \| `([0-9a-f]+)` \|", body, re.M))
        scales = dict(re.findall(r"^\| (torchao|compressed-tensors) \| `[0-9a-f]+` \| `([0-9a-f]+)` \|", body, re.M))
        p = amax_scale(x)             # torchao's two levels, one where the tensor is all zeros
        p = p if p > 0 else None
        tp, ts = ta_quantize(x, p)
        cp, cs, _, _, _ = ct_quantize(x)
        assert got["torchao"] == tp.tobytes().hex() and scales["torchao"] == ts.tobytes().hex(), name
        assert got["compressed-tensors"] == cp.tobytes().hex() and scales["compressed-tensors"] == cs.tobytes().hex(), name
        assert (tp.tobytes(), ts.tobytes()) != (cp.tobytes(), cs.tobytes()), name
        np.testing.assert_array_equal(mx.quantize_nvfp4_torchao(x, p)[0], tp)
        np.testing.assert_array_equal(mx.quantize_nvfp4(x)[0], cp)
