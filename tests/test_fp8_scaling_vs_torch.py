"""FP8 E4M3 scaling rules, bit-exact with compressed-tensors (calculate_qparams / dynamic
qparams + forward quantize/dequantize) and torchao (_choose_scale_float8,
_quantize_affine_float8, _dequantize_affine_float8), on float32/float16/bfloat16 inputs."""
import ml_dtypes
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refquant import affine as A
from refquant import fp8_scaling as F
from refquant.conformance.strategies import affine_matrix, as_float_dtype, block_sizes
from refquant.errors import InputError

import torch  # noqa: E402  (the oracles are in the test extra: a missing one is a failure, not a skip)

from tools.oracles import pytorch as pt  # noqa: E402

from test_affine_vs_torch import DTYPES, bits_of, ct_args, ct_qparams, same  # noqa: E402


@st.composite
def fp8_case(draw, partial=False, kinds=("tensor", "channel", "group", "block")):
    dt = draw(st.sampled_from(DTYPES))
    x = as_float_dtype(draw(affine_matrix(unit=16, bits=8)), dt)
    if draw(st.integers(0, 4)) == 0:  # values exactly on the E4M3 grid times a power of two
        e = draw(st.integers(-10, 10))
        codes = np.arange(256, dtype=np.uint8).view(ml_dtypes.float8_e4m3fn).astype(np.float32)
        codes = codes[np.isfinite(codes)]
        x = as_float_dtype(np.ldexp(np.random.default_rng(draw(st.integers(0, 2**31))).choice(codes, x.shape),
                                    e).astype(np.float32), dt)
    kind, block = draw(block_sizes(x.shape, partial=partial, kinds=kinds))
    return x, kind, block


def refused(x, s, block, rule):
    try:
        F.quantize(x, s, block, rule)
    except InputError:
        f = A.f32(s)
        assert not (np.isfinite(f) & (f > 0)).all()
        return True
    return False


@given(c=fp8_case(partial=True))
def test_compressed_tensors_fp8(c):
    from compressed_tensors.quantization.lifecycle.forward import dequantize, quantize
    x, kind, block = c
    args = ct_args(8, True, kind, block, typ="float")
    tx = pt.to_torch(x)
    ts, tz = ct_qparams(tx, args, kind, block)
    s = F.choose_scale(x, block, "compressed-tensors")
    same(s, pt.to_numpy(ts))
    if refused(x, s, block, "compressed-tensors"):
        return
    q = F.quantize(x, s, block, "compressed-tensors")
    tq = quantize(tx, ts, tz, args, dtype=torch.float8_e4m3fn)
    same(q, pt.to_numpy(tq))
    same(F.dequantize(q, s, block, "compressed-tensors"), pt.to_numpy(dequantize(tq, ts, tz, args)))


@given(dt=st.sampled_from(DTYPES), x=affine_matrix(unit=16, max_rows=6, max_blocks=2))
def test_compressed_tensors_fp8_dynamic_per_token(dt, x):
    from compressed_tensors.quantization.lifecycle.forward import dequantize, quantize
    x3 = as_float_dtype(x, dt)[None]
    args = ct_args(8, True, "token", None, typ="float")
    tx = pt.to_torch(x3)
    ts, tz = ct_qparams(tx, args, "token", None)
    block = F.per_token(x3.shape)
    s = F.choose_scale(x3, block)
    same(s, pt.to_numpy(ts))
    if refused(x3, s, block, "compressed-tensors"):
        return
    q = F.quantize(x3, s, block)
    tq = quantize(tx, ts, tz, args, dtype=torch.float8_e4m3fn)
    same(q, pt.to_numpy(tq))
    same(F.dequantize(q, s, block), pt.to_numpy(dequantize(tq, ts, tz, args)))


@given(c=fp8_case(), out=st.sampled_from(DTYPES))
def test_torchao_float8(c, out):
    from torchao.quantization.quant_primitives import (_choose_scale_float8, _dequantize_affine_float8,
                                                       _quantize_affine_float8)
    x, kind, block = c
    if all(b == 1 for b in block):
        block = (1, x.shape[1])
    tx = pt.to_torch(x)
    ts = _choose_scale_float8(tx, list(block), torch.float8_e4m3fn)
    s = F.choose_scale(x, block, "torchao")
    same(s, pt.to_numpy(ts))
    if refused(x, s, block, "torchao"):
        return
    q = F.quantize(x, s, block, "torchao")
    tq = _quantize_affine_float8(tx, ts, torch.float8_e4m3fn)
    same(q, pt.to_numpy(tq))
    td = _dequantize_affine_float8(tq, ts, pt.torch_dtype(out))
    same(F.dequantize(q, s, block, "torchao", out), pt.to_numpy(td))


@given(c=fp8_case(kinds=("group", "block")))
def test_deepseek_v3_is_torchao_on_float32(c):
    """DeepSeek-V3's kernels convert x to float32 before anything: on the float32 copy they
    perform torchao's operations (absmax / 448, divide, cast). Its kernels need a GPU, so that
    is the check this machine can make."""
    from torchao.quantization.quant_primitives import _choose_scale_float8, _quantize_affine_float8
    x, _, block = c
    if all(b == 1 for b in block):
        block = (1, x.shape[1])
    s = F.choose_scale(x, block, "deepseek-v3")
    tx = pt.to_torch(A.f32(x))
    ts = _choose_scale_float8(tx, list(block), torch.float8_e4m3fn)
    same(s, pt.to_numpy(ts))
    if refused(x, s, block, "deepseek-v3"):
        return
    same(F.quantize(x, s, block, "deepseek-v3"), pt.to_numpy(_quantize_affine_float8(tx, ts, torch.float8_e4m3fn)))


@given(data=st.data())
def test_deepseek_v3_edge_blocks_as_compressed_tensors_pads(data):
    """Partial 128x128 edge blocks: only the real elements set the scale. compressed-tensors pads
    with zeros, which leaves absmax unchanged, so on float32 input both give the same scales and
    codes (compressed-tensors' `+ 0` aside, which makes an exact -0 quotient +0)."""
    from compressed_tensors.quantization.lifecycle.forward import quantize
    R = data.draw(st.integers(1, 200))
    K = data.draw(st.integers(1, 300))
    seed = data.draw(st.integers(0, 2**32 - 1))
    w = (np.random.default_rng(seed).standard_normal((R, K)) * data.draw(st.sampled_from([1e-3, 1.0, 100.0]))).astype(np.float32)
    q, s = F.quantize_weight_128x128(w)
    assert s.shape == (-(-R // 128), -(-K // 128)) and s.dtype == np.float32
    block = (128, 128)
    args = ct_args(8, True, "block", block, typ="float")
    tx = pt.to_torch(w)
    ts, tz = ct_qparams(tx, args, "block", block)
    same(s, pt.to_numpy(ts))
    tq = pt.to_numpy(quantize(tx, ts, tz, args, dtype=torch.float8_e4m3fn))
    plus_zero = q.view(np.uint8).copy()
    plus_zero[(w == 0) & (plus_zero == 0x80)] = 0  # x / s exactly -0: compressed-tensors adds +0
    np.testing.assert_array_equal(plus_zero, tq.view(np.uint8))


@given(c=fp8_case(kinds=("group", "block")), tile=st.sampled_from([16, 32]))
def test_torchao_blockwise_training(c, tile):
    """torch_blockwise_scale_act_quant_lhs (1 x tile) and torch_blockwise_scale_weight_quant
    (tile x tile) on every float dtype, zero blocks included."""
    from torchao.prototype.blockwise_fp8_training.kernels import (torch_blockwise_scale_act_quant_lhs,
                                                                  torch_blockwise_scale_weight_quant)
    x, kind, _ = c
    R, K = x.shape
    tx = pt.to_torch(x)
    if kind == "group":
        if K % tile:
            return
        tq, ts = torch_blockwise_scale_act_quant_lhs(tx, tile)
        q, s = F.quantize_blockwise_training(x, (1, tile))
    else:
        x = np.ascontiguousarray(np.resize(x, (tile, 2 * tile)))
        tq, ts = torch_blockwise_scale_weight_quant(pt.to_torch(x), tile)
        q, s = F.quantize_blockwise_training(x, (tile, tile))
    same(q, pt.to_numpy(tq))
    same(s, pt.to_numpy(ts))


def test_zero_block_is_refused_where_the_rule_divides_by_zero():
    x = np.zeros((2, 256), np.float32)
    for rule in ("torchao", "deepseek-v3"):
        s = F.choose_scale(x, F.act_groups(x.shape), rule)
        assert (s == 0).all()
        with pytest.raises(InputError, match="not positive"):
            F.quantize(x, s, F.act_groups(x.shape), rule)
    s = F.choose_scale(x, F.act_groups(x.shape), "compressed-tensors")
    assert (s == np.finfo(np.float32).eps).all()  # its zero scales become epsilon
    assert (F.quantize(x, s, F.act_groups(x.shape)).view(np.uint8) == 0).all()


def test_bad_input():
    x = np.ones((4, 256), np.float32)
    with pytest.raises(InputError, match="unknown FP8 scale rule"):
        F.choose_scale(x, (1, 128), "e5m2")
    with pytest.raises(InputError, match="not a multiple"):
        F.choose_scale(x, (1, 100), "torchao")
    with pytest.raises(InputError, match="non-finite"):
        F.choose_scale(np.full((4, 256), np.nan, np.float32), (1, 128))
    s = F.choose_scale(x, (1, 128))
    s[0, 0] = np.inf
    with pytest.raises(InputError, match="scale"):
        F.quantize(x, s, (1, 128))
    with pytest.raises(InputError, match="float8_e4m3fn"):
        F.dequantize(np.zeros((4, 256), np.uint8), s, (1, 128))
