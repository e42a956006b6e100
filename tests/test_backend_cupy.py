"""The CuPy backend on a GPU: dequantization bit-exact with the spec, claimed GEMMs within
refquant.gemm's bound at the stated order (the conformance suite), and exact tests (integer
activations, power-of-two scales, one-hot rows) that catch layout and permutation bugs a
tolerance would hide. Outputs are poisoned (NaN) before each launch so an unwritten element
fails. Skipped, saying so, where there is no CUDA device or driver."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import refquant
from refquant.conformance.suite import case, check

cupy = pytest.importorskip("cupy", reason="cupy is not installed (the cupy extra)")
from refquant_backends.cupy import CupyBackend, gpu_available  # noqa: E402

_ok, _why = gpu_available()
pytestmark = pytest.mark.skipif(not _ok, reason=f"no GPU: {_why}")

DEQUANT = ["Q4_0", "Q8_0", "Q4_K", "Q5_K", "Q6_K", "IQ4_XS", "MXFP4"]


@pytest.fixture(scope="module")
def cu():
    return CupyBackend()


@pytest.fixture(autouse=True)
def poison(monkeypatch):
    import refquant_backends.cupy.gemm as g
    monkeypatch.setattr(g, "POISON", True)  # NaN in every output and workspace before each launch


def test_claims(cu):
    for f in DEQUANT:
        assert cu.supports("dequantize", f)
    assert cu.supports("matmul", "W4A16") and cu.supports("matmul", "FP8")
    assert not cu.supports("matmul", "W8A8")


@pytest.mark.parametrize("op,key", sorted(CupyBackend().claims()))
@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_claim_conforms_to_spec(cu, op, key, data):
    c = data.draw(case(op, key))
    acc = cu.accumulation(op, key, c["a"].shape[1], c["weight"]) if op == "matmul" else None
    check(cu, op, key, c, accumulation=acc)


@pytest.mark.parametrize("fmt", DEQUANT)
def test_dequantize_writes_every_element(fmt):
    from refquant_backends.cupy.ggml._dequant import launch
    f = refquant.registry.get_format(fmt)
    raw = np.random.default_rng(0).integers(0, 256, (3, 4 * f.type_size)).astype(np.uint8)
    out = cupy.full((3, 4 * f.block_size), np.nan, cupy.float32)
    name = {"Q4_0": "legacy", "Q8_0": "legacy", "Q4_K": "kquants", "Q5_K": "kquants", "Q6_K": "kquants",
            "IQ4_XS": "iquants", "MXFP4": "fp4"}[fmt]
    launch(f"ggml/{name}.cu", f"dequantize_{fmt.lower()}", raw, f.block_size, f.type_size, out=out)
    want = refquant.dequantize(raw, fmt)
    assert np.array_equal(out.get().view(np.uint32), want.view(np.uint32))


def _w4(rng, N, K, G, act):
    from refquant.gemm import W4A16Weight
    ng = K // G
    g = (np.arange(K) // G).astype(np.int32)
    if act:
        g = rng.permutation(g).astype(np.int32)
    sc = np.ldexp(np.float32(1), rng.integers(-3, 4, (N, ng))).astype(np.float32)
    return W4A16Weight(rng.integers(0, 16, (N, K)).astype(np.uint8), sc,
                       rng.integers(0, 16, (N, ng)).astype(np.uint8), g)


@pytest.mark.parametrize("M", [1, 16, 33])
@pytest.mark.parametrize("act", [False, True])
def test_w4a16_fused_exact_on_integer_inputs(M, act):
    """Integer activations (|a| <= 8), power-of-two scales, K small enough that every partial sum
    is an integer below 2^24: exact whatever the tensor cores' rounding."""
    from refquant_backends.cupy.gemm import w4a16_fused
    from refquant.gemm import w4a16_reference
    rng = np.random.default_rng(M + 100 * act)
    w = _w4(rng, 64, 512, 128, act)
    a = rng.integers(-8, 9, (M, 512)).astype(np.float16)
    for splits in (1, 2, 4):
        y = w4a16_fused(a, w, splits=splits).get()
        R, _ = w4a16_reference(a.astype(np.float32), w)
        assert np.array_equal(y, R.astype(np.float32)), splits


def test_w4a16_fused_one_hot_rows():
    from refquant_backends.cupy.gemm import w4a16_fused
    from refquant.gemm import dequantize_w4a16
    rng = np.random.default_rng(7)
    w = _w4(rng, 96, 256, 64, True)
    ks = rng.choice(256, 40, replace=False)
    a = np.zeros((40, 256), np.float16)
    a[np.arange(40), ks] = 1
    y = w4a16_fused(a, w).get()
    assert np.array_equal(y, dequantize_w4a16(w)[:, ks].T.astype(np.float32))


def test_q4k_fused_exact_on_integer_inputs():
    """Q4_K rows with power-of-two d and dmin: d1 q - m1 and every sum exact."""
    from refquant_backends.cupy.gemm import q4k_fused
    rng = np.random.default_rng(3)
    N, K, M = 16, 512, 5
    raw = rng.integers(0, 256, (N, K // 256, 144)).astype(np.uint8)
    bits = (rng.integers(12, 17, (N, K // 256, 2)) << 10).astype("<u2")   # d, dmin: 2^-3 .. 2^1
    raw[:, :, 0:4] = bits.view(np.uint8).reshape(N, K // 256, 4)
    raw = raw.reshape(N, -1)
    W = refquant.dequantize(raw, "Q4_K").astype(np.float64)
    a = rng.integers(-4, 5, (M, K)).astype(np.float16)
    y = q4k_fused(a, cupy.asarray(raw)).get()
    assert np.array_equal(y, (a.astype(np.float64) @ W.T).astype(np.float32))


@pytest.mark.parametrize("gran", ["tensor", "channel", "block"])
def test_fp8_wgmma_exact_on_small_integers(gran):
    """e4m3 codes of small integers (|v| <= 4) and power-of-two scales: each 128-column chunk sum
    is an integer of at most 12 bits, exact even in Hopper's reduced-precision FP8 accumulator."""
    dev = cupy.cuda.Device(0)
    if dev.compute_capability != "90":
        pytest.skip(f"fp8_wgmma needs sm_90a; this device is sm_{dev.compute_capability}")
    from refquant_backends.cupy.gemm import fp8_wgmma
    from refquant.gemm import FP8Weight, dequantize_fp8, e4m3_encode
    rng = np.random.default_rng(5)
    M, N, K = 80, 192, 384
    wv = rng.integers(-4, 5, (N, K)).astype(np.float32)
    shape = {"tensor": (), "channel": (N,), "block": (2, 3)}[gran]
    sc = np.ldexp(np.float32(1), rng.integers(-2, 3, shape)).astype(np.float32)
    w = FP8Weight(e4m3_encode(wv), np.asarray(sc, np.float32))
    ac = e4m3_encode(rng.integers(-4, 5, (M, K)).astype(np.float32))
    sa = np.ldexp(np.float32(1), rng.integers(-2, 3, M)).astype(np.float32)
    y = fp8_wgmma(ac, sa, w).get()
    from refquant.gemm import e4m3_decode_table
    A = e4m3_decode_table()[ac].astype(np.float64) * sa[:, None]
    assert np.array_equal(y, (A @ dequantize_fp8(w).T).astype(np.float32))
