"""Affine INT-N conventions, bit-exact with the libraries that define them: torchao's
quant_primitives, compressed-tensors' calculate_qparams + forward quantize/dequantize, AutoGPTQ's
Quantizer, AutoAWQ's pseudo_quantize_tensor. Inputs: float32/float16/bfloat16, every block kind
of refquant.conformance.strategies plus exact-tie blocks."""
import ml_dtypes
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refquant import affine as A
from refquant.conformance.strategies import affine_matrix, as_float_dtype, block_sizes
from refquant.errors import InputError

import torch  # noqa: E402  (the oracles are in the test extra: a missing one is a failure, not a skip)

from tools.oracles import pytorch as pt  # noqa: E402

DTYPES = [np.dtype(np.float32), np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16)]


def bits_of(a):
    a = np.ascontiguousarray(a)
    return a.view({1: np.uint8, 2: np.uint16, 4: np.uint32}[a.dtype.itemsize]) if a.dtype.kind == "f" or \
        a.dtype == A.BF16 else a


def same(ours, theirs):
    """Equal bit for bit (floats compared by their bits, so -0 != 0 and NaN payloads count)."""
    theirs = np.asarray(theirs).reshape(ours.shape)
    assert ours.dtype == theirs.dtype, (ours.dtype, theirs.dtype)
    np.testing.assert_array_equal(bits_of(ours), bits_of(theirs))


def refused(fn, x, s, *args):
    """True when refquant refuses to quantize with `s` because a scale overflowed its dtype
    (a float16 range beyond 65504): the library would divide by inf. Any other refusal fails."""
    try:
        fn(x, s, *args)
    except InputError:
        f = A.f32(s)
        assert not (np.isfinite(f) & (f > 0)).all()
        return True
    return False


def same_value(ours, theirs):
    """Equal as numbers: for GPTQ's and AWQ's float-held integer zero points, whose sign of
    zero (which end of a tie torch's min reduction returns) changes no code and no output."""
    theirs = np.asarray(theirs).reshape(ours.shape)
    assert ours.dtype == theirs.dtype
    np.testing.assert_array_equal(A.f32(ours), A.f32(theirs))


@st.composite
def case(draw, dtypes=DTYPES, partial=False, kinds=("tensor", "channel", "group", "block")):
    bits = draw(st.integers(2, 8))
    dt = draw(st.sampled_from(dtypes))
    x = as_float_dtype(draw(affine_matrix(unit=16, bits=bits)), dt)
    kind, block = draw(block_sizes(x.shape, partial=partial, kinds=kinds))
    return x, bits, kind, block


# ---------------------------------------------------------------------------------------- torchao

@given(c=case(), signed=st.booleans(), mapping=st.sampled_from(A.MAPPING_TYPES),
       scale_dtype=st.sampled_from([None, None, "float32", "float16", "bfloat16"]),
       eps=st.sampled_from([None, None, 1e-6, float(np.finfo(np.float32).eps)]))
def test_torchao_choose_quantize_dequantize(c, signed, mapping, scale_dtype, eps):
    from torchao.quantization.quant_primitives import (MappingType, choose_qparams_affine, dequantize_affine,
                                                       quantize_affine)
    x, bits, _, block = c
    if all(b == 1 for b in block):
        block = (1, x.shape[1])  # torchao reduces an all-ones block_size over everything: see test below
    if mapping == "SYMMETRIC_NO_CLIPPING_ERR":
        signed = True
    qmin, qmax = A.code_range(bits, signed)
    tdt = torch.int8 if signed else torch.uint8
    tx = pt.to_torch(x)
    ts, tz = choose_qparams_affine(tx, getattr(MappingType, mapping), block, tdt, qmin, qmax, eps=eps,
                                   scale_dtype=None if scale_dtype is None else pt.torch_dtype(A.float_dtype(scale_dtype)))
    s, z = A.choose_qparams_torchao(x, block, bits, mapping, signed, eps=eps, scale_dtype=scale_dtype)
    same(s, pt.to_numpy(ts))
    same(z, pt.to_numpy(tz))
    try:
        q = A.quantize_torchao(x, s, z, block, bits, signed)
    except InputError:
        # refquant refuses a scale that is zero, or whose reciprocal overflows its dtype; torchao
        # would multiply by inf. Only a scale cast to float16/bfloat16 (or a float16 input) can.
        f = A.f32(s)
        with np.errstate(divide="ignore", over="ignore"):
            assert ((f == 0) | ~np.isfinite(f) | ~np.isfinite(A.rnd(1 / f, s.dtype).astype(np.float32))).any()
        return
    tq = quantize_affine(tx, block, ts, tz, tdt, qmin, qmax)
    same(q, pt.to_numpy(tq))
    out = x.dtype
    td = dequantize_affine(tq, block, ts, tz, tdt, qmin, qmax, output_dtype=pt.torch_dtype(out))
    same(A.dequantize_torchao(q, s, z, block, out), pt.to_numpy(td))


@given(c=case(), sdt=st.sampled_from([None, "float32", "bfloat16"]), zdt=st.sampled_from([None, "float32", "bfloat16"]),
       out=st.sampled_from(DTYPES))
def test_torchao_float_zero_point_domain(c, sdt, zdt, out):
    """The tinygemm (FLOAT zero-point domain) ops: _choose_qparams_affine_tinygemm,
    _quantize_affine_tinygemm, _dequantize_affine_tinygemm."""
    from torchao.quantization.quant_primitives import (MappingType, _choose_qparams_affine_tinygemm,
                                                       _dequantize_affine_tinygemm, _quantize_affine_tinygemm)
    x, bits, _, block = c
    if all(b == 1 for b in block):
        block = (1, x.shape[1])
    qmin, qmax = A.code_range(bits, False)
    tx = pt.to_torch(x)
    tsd = None if sdt is None else pt.torch_dtype(A.float_dtype(sdt))
    tzd = None if zdt is None else pt.torch_dtype(A.float_dtype(zdt))
    ts, tz = _choose_qparams_affine_tinygemm(tx, MappingType.ASYMMETRIC, block, torch.uint8, qmin, qmax,
                                             scale_dtype=tsd, zero_point_dtype=tzd)
    s, z = A.choose_qparams_torchao_float_zero(x, block, bits, scale_dtype=sdt, zero_point_dtype=zdt)
    same(s, pt.to_numpy(ts))
    same(z, pt.to_numpy(tz))
    if not np.isfinite(A.f32(z)).all() or refused(A.quantize_torchao_float_zero, x, s, z, block, bits):
        return
    q = A.quantize_torchao_float_zero(x, s, z, block, bits)
    tq = _quantize_affine_tinygemm(tx, block, ts, tz, torch.uint8, qmin, qmax)
    same(q, pt.to_numpy(tq))
    td = _dequantize_affine_tinygemm(tq, block, ts, tz, torch.uint8, qmin, qmax, output_dtype=pt.torch_dtype(out))
    same(A.dequantize_torchao_float_zero(q, s, z, block, bits, out), pt.to_numpy(td))


def test_torchao_all_ones_block_size_is_per_tensor():
    """torchao's _get_reduction_params leaves no reduction dim for block_size (1, 1), and
    torch.amin(dim=[]) then reduces over every element: one scale for the tensor. refquant's
    (1, 1) is one scale per element (spec/divergences-affine.md)."""
    from torchao.quantization.quant_primitives import MappingType, choose_qparams_affine
    x = np.arange(1, 9, dtype=np.float32).reshape(2, 4)
    ts, _ = choose_qparams_affine(pt.to_torch(x), MappingType.SYMMETRIC, (1, 1), torch.int8)
    assert ts.numel() == 1
    s, _ = A.choose_qparams_torchao(x, (1, 1), 8)
    assert s.shape == (2, 4) and len(np.unique(s)) == 8


@given(c=case(dtypes=[np.dtype(np.float32)]), out=st.sampled_from(DTYPES), signed=st.booleans(),
       sdt=st.sampled_from(DTYPES), zdt=st.sampled_from([np.int32, np.int8, np.float32]))
def test_torchao_dequantize_any_codes(c, out, signed, sdt, zdt):
    """dequantize_affine on arbitrary codes, scales of every float dtype and float or int zero points."""
    from torchao.quantization.quant_primitives import dequantize_affine
    x, bits, _, block = c
    qmin, qmax = A.code_range(bits, signed)
    rng = np.random.default_rng(int(abs(x.view(np.int32)).sum()) % 2**32)
    cd = A.code_dtype(bits, signed)
    q = rng.integers(qmin, qmax + 1, size=x.shape).astype(cd)
    shp = A.scale_shape(x.shape, block)
    s = as_float_dtype((rng.standard_normal(shp) * 10.0 ** rng.integers(-8, 8)).astype(np.float32), sdt)
    z = rng.integers(qmin if zdt != np.uint8 else 0, qmax + 1, size=shp).clip(-128, 127).astype(zdt)
    td = dequantize_affine(pt.to_torch(q), block, pt.to_torch(s), pt.to_torch(z), pt.torch_dtype(cd), qmin, qmax,
                           output_dtype=pt.torch_dtype(out))
    same(A.dequantize_torchao(q, s, z, block, out), pt.to_numpy(td))


# ------------------------------------------------------------------------------ compressed-tensors

def ct_args(bits, symmetric, kind, block, typ="int"):
    from compressed_tensors.quantization import QuantizationArgs
    kw = dict(num_bits=bits, type=typ, symmetric=symmetric)
    if kind == "tensor":
        kw.update(strategy="tensor", dynamic=True)
    elif kind == "channel":
        kw.update(strategy="channel")
    elif kind == "group":
        kw.update(strategy="group", group_size=block[-1], dynamic=True)
    elif kind == "token":
        kw.update(strategy="token", dynamic=True)
    else:
        kw.update(strategy="block", block_structure=list(block))
    return QuantizationArgs(**kw)


def ct_qparams(tx, args, kind, block):
    """Scales as compressed-tensors produces them: the dynamic path where it has one (tensor,
    group, token), else calculate_qparams on torch's per-channel / per-block min and max (what
    an observer hands it)."""
    from compressed_tensors.quantization.utils import calculate_qparams, compute_dynamic_scales_and_zp
    if kind in ("tensor", "group", "token"):
        return compute_dynamic_scales_and_zp(tx, args, None)
    if kind == "channel":
        return calculate_qparams(tx.amin(1, keepdim=True), tx.amax(1, keepdim=True), args)
    bh, bw = block
    R, K = tx.shape
    nr, nc = -(-R // bh), -(-K // bw)
    padded = torch.nn.functional.pad(tx, (0, nc * bw - K, 0, nr * bh - R))  # zeros: min(.,0)/max(.,0) unchanged
    v = padded.reshape(nr, bh, nc, bw)
    return calculate_qparams(v.amin(dim=(1, 3)), v.amax(dim=(1, 3)), args)


@given(c=case(partial=True), symmetric=st.booleans())
def test_compressed_tensors_quantize_dequantize(c, symmetric):
    from compressed_tensors.quantization.lifecycle.forward import dequantize, quantize
    x, bits, kind, block = c
    args = ct_args(bits, symmetric, kind, block)
    tx = pt.to_torch(x)
    ts, tz = ct_qparams(tx, args, kind, block)
    s, z = A.choose_qparams_compressed_tensors(x, block, bits, symmetric, zero_dim_minmax=(kind == "tensor"))
    same(s, pt.to_numpy(ts))
    same(z, pt.to_numpy(tz))
    if refused(A.quantize_compressed_tensors, x, s, z, block, bits):
        return
    q = A.quantize_compressed_tensors(x, s, z, block, bits)
    tq = quantize(tx, ts, tz, args, dtype=torch.int8)
    same(q, pt.to_numpy(tq))
    td = dequantize(tq, ts, tz, args)
    same(A.dequantize_compressed_tensors(q, s, z, block), pt.to_numpy(td))


@given(bits=st.integers(2, 8), dt=st.sampled_from(DTYPES), symmetric=st.booleans(),
       x=affine_matrix(unit=16, max_rows=6, max_blocks=2))
def test_compressed_tensors_dynamic_per_token(bits, dt, symmetric, x):
    """TOKEN strategy on (batch, tokens, hidden): one scale per token."""
    from compressed_tensors.quantization.lifecycle.forward import dequantize, quantize
    x3 = as_float_dtype(x, dt)[None]
    args = ct_args(bits, symmetric, "token", None)
    tx = pt.to_torch(x3)
    ts, tz = ct_qparams(tx, args, "token", None)
    block = A.per_token(x3.shape)
    s, z = A.choose_qparams_compressed_tensors(x3, block, bits, symmetric)
    same(s, pt.to_numpy(ts))
    same(z, pt.to_numpy(tz))
    if refused(A.quantize_compressed_tensors, x3, s, z, block, bits):
        return
    q = A.quantize_compressed_tensors(x3, s, z, block, bits)
    tq = quantize(tx, ts, tz, args, dtype=torch.int8)
    same(q, pt.to_numpy(tq))
    same(A.dequantize_compressed_tensors(q, s, z, block), pt.to_numpy(dequantize(tq, ts, tz, args)))


def test_compressed_tensors_zero_dim_promotion():
    """One scale for a bfloat16 tensor: the dynamic TENSOR path hands calculate_qparams 0-dim
    min/max and `bit_min - min / scale` is evaluated in float32; a BLOCK covering the same
    tensor hands it (1, 1) tensors and it is evaluated in bfloat16. Their zero points differ on
    some inputs; zero_dim_minmax reproduces each."""
    rng = np.random.default_rng(1)
    seen = 0
    for _ in range(400):
        x = (rng.standard_normal((2, 16)) * 3 + rng.uniform(-2, 5)).astype(np.float32).astype(A.BF16)
        tx = pt.to_torch(x)
        _, zt = ct_qparams(tx, ct_args(8, False, "tensor", x.shape), "tensor", x.shape)
        _, zb = ct_qparams(tx, ct_args(8, False, "block", x.shape), "block", x.shape)
        _, z0 = A.choose_qparams_compressed_tensors(x, x.shape, 8, False, zero_dim_minmax=True)
        _, z1 = A.choose_qparams_compressed_tensors(x, x.shape, 8, False)
        assert int(z0.flat[0]) == int(zt.flatten()[0]) and int(z1.flat[0]) == int(zb.flatten()[0])
        seen += int(zt.flatten()[0]) != int(zb.flatten()[0])
    assert seen > 0


def test_compressed_tensors_token_on_2d_is_per_tensor():
    """A 2-D activation under the TOKEN strategy reduces over everything (dims 0 and 1 are kept
    out of the reduction, leaving none): compressed-tensors gives one scale. refquant's
    per_token granularity is one scale per row; the quirk is recorded in spec/divergences-affine.md."""
    x = np.arange(-8, 8, dtype=np.float32).reshape(2, 8)
    args = ct_args(8, True, "token", None)
    ts, _ = ct_qparams(pt.to_torch(x), args, "token", None)
    assert tuple(ts.shape) == (1,)
    s, _ = A.choose_qparams_compressed_tensors(x, A.per_token(x.shape), 8, True)
    assert s.shape == (2, 1) and s[0, 0] != s[1, 0]


# --------------------------------------------------------------------------------------- GPTQ

@given(c=case(dtypes=[np.dtype(np.float32)], kinds=("tensor", "channel", "group")), symmetric=st.booleans())
def test_gptq_quantizer(c, symmetric):
    Q = pt.auto_gptq_quantizer()
    x, bits, kind, block = c
    tx = pt.to_torch(x)
    R, K = x.shape
    g = block[1]
    scales, zeros, fakes = [], [], []
    for j in range(0, K, g):
        qz = Q.Quantizer()
        qz.configure(bits, perchannel=(kind != "tensor"), sym=symmetric)
        w = tx if kind == "tensor" else tx[:, j:j + g]
        qz.find_params(w, weight=True)
        scales.append(pt.to_numpy(qz.scale).reshape(R, 1))
        zeros.append(pt.to_numpy(qz.zero).reshape(R, 1))
        fakes.append(pt.to_numpy(Q.quantize(w, qz.scale, qz.zero, qz.maxq)))
        if kind == "tensor":
            break
    s, z = A.choose_qparams_gptq(x, block, bits, symmetric)
    ts = np.concatenate(scales, 1)
    tzero = np.concatenate(zeros, 1)
    if kind == "tensor":
        ts, tzero = ts[:1, :1], tzero[:1, :1]
    same(s, ts)
    same_value(z, tzero)
    if refused(A.quantize_gptq, x, s, z, block, bits):
        return
    q = A.quantize_gptq(x, s, z, block, bits)
    same(A.dequantize_gptq(q, s, z, block), np.concatenate(fakes, 1))


# ---------------------------------------------------------------------------------------- AWQ

@given(c=case(kinds=("channel", "group")), zero_point=st.booleans())
def test_awq_pseudo_quantize(c, zero_point):
    run = pt.awq_pseudo_quantize()
    x, bits, kind, block = c
    g = block[1] if kind == "group" else 0
    s, z = A.choose_qparams_awq(x, block, bits, zero_point)
    if refused(A.quantize_awq, x, s, z, block, bits):
        # a range beyond the dtype's (inf scale): AutoAWQ's own NaN assertion fires, or its scale is inf
        try:
            _, tscales, _ = run(pt.to_torch(x), bits, g, zero_point)
        except AssertionError:
            return
        same(s, pt.to_numpy(tscales))
        return
    tw, tscales, tzeros = run(pt.to_torch(x), bits, g, zero_point)
    same(s, pt.to_numpy(tscales))
    if zero_point:
        same_value(z, pt.to_numpy(tzeros))
    else:
        assert z is None and tzeros is None
    q = A.quantize_awq(x, s, z, block, bits)
    # pseudo_quantize_tensor never forms integer codes, so a -0 input stays -0 in its output;
    # from stored codes (what a checkpoint holds) it is +0. Every other value is equal bit for bit.
    same_value(A.dequantize_awq(q, s, z, block), pt.to_numpy(tw))
    d = A.dequantize_awq(q, s, z, block)
    nz = A.f32(d) != 0
    np.testing.assert_array_equal(bits_of(d)[nz], bits_of(pt.to_numpy(tw))[nz])


# ------------------------------------------------------------------------------------ bad input

@pytest.mark.parametrize("conv", list(A.CONVENTIONS))
def test_bad_input_is_refused(conv):
    x = np.ones((4, 32), np.float32)
    with pytest.raises(InputError, match="bits"):
        A.choose_qparams(x, (1, 32), 9, conv)
    with pytest.raises(InputError, match="bits"):
        A.choose_qparams(x, (1, 32), 1, conv)
    if conv != "compressed-tensors":  # compressed-tensors pads partial blocks
        with pytest.raises(InputError, match="multiple of the block/group size 5"):
            A.choose_qparams(x, (1, 5), 4, conv)
    with pytest.raises(InputError, match="block_size"):
        A.choose_qparams(x, (32,), 4, conv)
    with pytest.raises(InputError, match="non-finite"):
        A.choose_qparams(np.full((4, 32), np.inf, np.float32), (1, 32), 4, conv)
    with pytest.raises(InputError, match="dtype"):
        A.choose_qparams(x.astype(np.float64), (1, 32), 4, conv)
    s, z = A.choose_qparams(x, (1, 32), 4, conv)
    for bad in (np.inf, np.nan, 0.0, -1.0):
        sb = np.array(s, copy=True)
        sb.flat[1] = bad
        with pytest.raises(InputError, match="scale"):
            A.quantize(x, sb, z, (1, 32), 4, conv)
    with pytest.raises(InputError, match="scale has shape"):
        A.quantize(x, np.ones((3, 1), s.dtype), z, (1, 32), 4, conv)
    with pytest.raises(InputError, match="unknown affine convention"):
        A.choose_qparams(x, (1, 32), 4, "nope")


# --------------------------------------------------------------------------- a realistic weight

@pytest.mark.parametrize("dt", DTYPES, ids=str)
def test_realistic_weight_all_conventions(dt):
    """A 64 x 1024 weight (std 0.02, one outlier channel) at group size 128, 4 bits, under every
    convention, and 8-bit per-channel: many blocks in one call, as a checkpoint quantizer does."""
    from compressed_tensors.quantization.lifecycle.forward import quantize
    from torchao.quantization.quant_primitives import MappingType, choose_qparams_affine, quantize_affine
    rng = np.random.default_rng(11)
    w32 = (rng.standard_normal((64, 1024)) * 0.02).astype(np.float32)
    w32[:, 77] *= 40
    w = as_float_dtype(w32, dt)
    tw = pt.to_torch(w)
    for bits, block in ((4, (1, 128)), (8, (1, 1024))):
        qmin, qmax = A.code_range(bits, False)
        ts, tz = choose_qparams_affine(tw, MappingType.ASYMMETRIC, block, torch.uint8, qmin, qmax)
        s, z = A.choose_qparams_torchao(w, block, bits, "ASYMMETRIC", signed=False)
        same(s, pt.to_numpy(ts))
        same(A.quantize_torchao(w, s, z, block, bits, signed=False),
             pt.to_numpy(quantize_affine(tw, block, ts, tz, torch.uint8, qmin, qmax)))
        kind = "group" if block[1] == 128 else "channel"
        args = ct_args(bits, True, kind, block)
        cs, cz = ct_qparams(tw, args, kind, block)
        s, z = A.choose_qparams_compressed_tensors(w, block, bits, True)  # symmetric: no zero-point path
        same(s, pt.to_numpy(cs))
        same(A.quantize_compressed_tensors(w, s, z, block, bits), pt.to_numpy(quantize(tw, cs, cz, args, dtype=torch.int8)))
        aw, ascale, _ = pt.awq_pseudo_quantize()(tw, bits, block[1] if kind == "group" else 0, True)
        s, z = A.choose_qparams_awq(w, block, bits, True)
        same(s, pt.to_numpy(ascale))
        same(A.dequantize_awq(A.quantize_awq(w, s, z, block, bits), s, z, block), pt.to_numpy(aw))


def test_torchao_refuses_a_scale_whose_reciprocal_overflows():
    """A float16 scale below 1/65504 has no float16 reciprocal: torchao's x * (1.0 / scale)
    would multiply by inf (and 0 * inf = NaN codes)."""
    x = np.zeros((1, 4), np.float16)
    s = np.array([[1e-5]], np.float16)
    with pytest.raises(InputError, match="no finite reciprocal in float16"):
        A.quantize_torchao(x, s, np.zeros((1, 1), np.int32), (1, 4), 8)
