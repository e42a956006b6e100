"""The CuPy backend's plain kernels -- every dequantization kernel and the claimed float32
GEMMs (gemm_plain.cu) -- compiled as host C++ through backends/cupy/host_shim.h and run on the
CPU: the same CUDA source, one simulated thread at a time, against the spec. Dequantization must
be bit-exact on any bytes (NaN and inf scales included); the GEMMs must meet refquant.gemm's
bound at the order the backend states. This checks the kernels' index arithmetic and rounding
sequence without a GPU; it cannot check the device's own float behaviour (see
tests/test_backend_cupy.py for that)."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import refquant
from refquant.backend import Backend
from refquant.conformance.suite import case, check

from refquant_backends.cupy import _host

if _host.compiler() is None:
    pytest.skip("no C++ compiler on this machine to build the host-shim kernels", allow_module_level=True)

KERNELS = {"Q4_0": "dequantize_q4_0", "Q8_0": "dequantize_q8_0", "Q4_K": "dequantize_q4_k",
           "Q5_K": "dequantize_q5_k", "Q6_K": "dequantize_q6_k", "IQ4_XS": "dequantize_iq4_xs",
           "MXFP4": "dequantize_mxfp4"}


class HostKernels(Backend):
    """The CuPy backend's claims, served by the host-compiled kernels."""
    name = "cupy-host"

    def claims(self):
        return {("dequantize", f) for f in KERNELS} | {("matmul", "W4A16"), ("matmul", "FP8")}

    def dequantize_rows(self, fmt, data):
        return _host.dequantize(KERNELS[fmt.name], data, fmt.block_size, fmt.type_size)

    def matmul_rows(self, scheme, a, weight, **options):
        return {"W4A16": _host.w4a16_plain, "FP8": _host.fp8_plain}[scheme.name](a, weight, **options)

    def accumulation(self, op, key, K, weight=None):
        from refquant_backends.cupy.gemm import accumulation
        return accumulation(op, key, K, weight)


HK = HostKernels()


@pytest.mark.parametrize("fmt", sorted(KERNELS))
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_dequantize_kernel_is_bit_exact(fmt, data):
    c = data.draw(case("dequantize", fmt))
    check(HK, "dequantize", fmt, c)


@pytest.mark.parametrize("fmt", sorted(KERNELS))
@settings(max_examples=15, deadline=None)
@given(data=st.data())
def test_dequantize_kernel_on_quantizer_output(fmt, data):
    from refquant.conformance.strategies import float_rows
    f = refquant.registry.get_format(fmt)
    x = data.draw(float_rows(f.block_size, max_rows=2, max_blocks=3))
    raw = refquant.quantize(x, fmt)
    got = HK.dequantize(raw, fmt)
    assert np.array_equal(got.view(np.uint32), refquant.dequantize(raw, fmt).view(np.uint32))


@pytest.mark.parametrize("fmt", sorted(KERNELS))
def test_nan_and_inf_scales(fmt):
    """Scale fields of NaN (with payloads), +-inf and subnormal halves: x86's NaN rules (what the
    spec produces) through the kernels' rq_mul / rq_sub."""
    f = refquant.registry.get_format(fmt)
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, (16, f.type_size)).astype(np.uint8)
    specials = [0x7C00, 0xFC00, 0x7C01, 0xFE00, 0x7E55, 0x0001, 0x8001, 0x03FF, 0x0000, 0x8000]
    for i in range(16):
        h = specials[i % len(specials)]
        if fmt == "Q6_K":
            raw[i, 208:210] = [h & 0xFF, h >> 8]
        elif fmt == "MXFP4":
            raw[i, 0] = [0, 1, 2, 254, 255, 127, 128][i % 7]
        else:
            raw[i, 0:2] = [h & 0xFF, h >> 8]
            if fmt in ("Q4_K", "Q5_K"):
                h2 = specials[(i + 3) % len(specials)]
                raw[i, 2:4] = [h2 & 0xFF, h2 >> 8]
    got = HK.dequantize(raw.reshape(-1), fmt)
    want = refquant.dequantize(raw.reshape(-1), fmt)
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))


@pytest.mark.parametrize("key", ["W4A16", "FP8"])
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_plain_gemm_meets_the_bound_at_its_order(key, data):
    c = data.draw(case("matmul", key))
    check(HK, "matmul", key, c, accumulation=HK.accumulation("matmul", key, c["a"].shape[1], c["weight"]))


@pytest.mark.parametrize("key", ["W4A16", "FP8"])
@settings(max_examples=10, deadline=None)
@given(data=st.data())
def test_plain_gemm_writes_every_output(key, data):
    c = data.draw(case("matmul", key))
    y = HK.matmul(key, c["a"], c["weight"], **c["options"])
    R, _ = refquant.gemm.get_scheme(key).reference(c["a"], c["weight"], **c["options"])
    assert not np.any(np.isnan(y) & ~np.isnan(R))


@pytest.mark.parametrize("key", ["W4A16", "FP8"])
@settings(max_examples=20, deadline=None)
@given(data=st.data())
def test_plain_gemm_agrees_bitwise_with_the_numba_backend(key, data):
    """Two independent implementations of one stated summation order (backends/numba/gemm.py
    and gemm_plain.cu) must round identically, bit for bit."""
    pytest.importorskip("numba", reason="the numba extra is not installed")
    from refquant_backends.numba import gemm as ng
    c = data.draw(case("matmul", key))
    ours = HK.matmul(key, c["a"], c["weight"], **c["options"])
    theirs = {"W4A16": ng.w4a16_matmul, "FP8": ng.fp8_matmul}[key](c["a"], c["weight"], **c["options"])
    assert np.array_equal(ours.view(np.uint32), theirs.view(np.uint32))


# --------------------------------------------------------------------------- the backend itself,
# end to end on the CPU: CupyBackend -> its Python launchers -> the kernels' source, with CuPy
# replaced by NumPy and each launch run by the host build (same argument tuple, same grid)

class _FakeArray(np.ndarray):
    def get(self):
        return np.asarray(self)


def _fake_cupy():
    import types
    cp = types.ModuleType("cupy")
    wrap = lambda a: np.ascontiguousarray(a).view(_FakeArray)  # noqa: E731
    cp.asarray = lambda x, dtype=None: wrap(np.asarray(x, dtype=dtype))
    cp.ascontiguousarray = lambda x, dtype=None: wrap(np.asarray(x, dtype=dtype))
    cp.empty = lambda shape, dtype: wrap(np.full(shape, np.nan, dtype) if np.dtype(dtype).kind == "f"
                                         else np.empty(shape, dtype))
    cp.full = lambda shape, v, dtype: wrap(np.full(shape, v, dtype))
    cp.zeros = lambda shape, dtype: wrap(np.zeros(shape, dtype))
    cp.float32, cp.float16, cp.uint8 = np.float32, np.float16, np.uint8
    return cp


def _host_kernel(src, name):
    import ctypes
    fn = getattr(_host.library(), f"host_{name}")

    def launch(grid, block, args):
        conv = []
        for a in args:
            if isinstance(a, np.ndarray):
                assert a.flags.c_contiguous
                conv.append(a.ctypes.data_as(ctypes.c_void_p))
            elif isinstance(a, np.int64):
                conv.append(ctypes.c_longlong(int(a)))
            elif isinstance(a, np.int32):
                conv.append(ctypes.c_int(int(a)))
            else:
                raise TypeError(f"{name}: argument of type {type(a).__name__} would not reach a kernel")
        fn(*conv, ctypes.c_uint(grid[0]), ctypes.c_uint(block[0]))
    return launch


@pytest.fixture
def cpu_cupy(monkeypatch):
    import sys
    from refquant_backends.cupy import _runtime
    monkeypatch.setitem(sys.modules, "cupy", _fake_cupy())
    monkeypatch.setattr(_runtime, "kernel", _host_kernel)
    import refquant_backends.cupy.ggml._dequant as dq
    monkeypatch.setattr(dq, "kernel", _host_kernel)
    monkeypatch.setattr(dq, "THREADS", 32)
    from refquant_backends.cupy import CupyBackend
    return CupyBackend()


@pytest.mark.parametrize("fmt", sorted(KERNELS))
def test_backend_launchers_dequantize_on_the_cpu(cpu_cupy, fmt):
    f = refquant.registry.get_format(fmt)
    raw = np.random.default_rng(4).integers(0, 256, (3, 5 * f.type_size)).astype(np.uint8)
    got = cpu_cupy.dequantize(raw, fmt)
    assert np.array_equal(got.view(np.uint32), refquant.dequantize(raw, fmt).view(np.uint32))


@pytest.mark.parametrize("key", ["W4A16", "FP8"])
@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_backend_launchers_matmul_on_the_cpu(cpu_cupy, key, data):  # the fixture holds no state
    c = data.draw(case("matmul", key))
    check(cpu_cupy, "matmul", key, c, accumulation=cpu_cupy.accumulation("matmul", key, c["a"].shape[1], c["weight"]))


# The fused kernels cannot run on the CPU (their mma / wgmma are warp-collective), but their
# launchers can: a NumPy stand-in reads each launch's argument tuple exactly as the kernel's
# signature declares it (the packed words through the lane mapping, group order, splits) and
# writes the workspace, so argument order, device preparation and the split-K reduction run.

def _model_kernel(src, name):
    from refquant_backends.cupy.gemm import unpack_lane_codes
    from refquant.gemm import e4m3_decode_table

    def w4a16_fused(grid, block, args):
        A, words, scales, zeros, gorder, M, N, K, ng, G, splits, ws = args
        codes = unpack_lane_codes(np.asarray(words), int(N), int(K)).astype(np.float64)
        A = np.asarray(A, np.float64)
        for s in range(int(splits)):
            tot = np.zeros((int(M), int(N)))
            for gi in range(s * int(ng) // int(splits), (s + 1) * int(ng) // int(splits)):
                g = int(gorder[gi])
                cols = slice(gi * int(G), (gi + 1) * int(G))
                acc = A[:, cols] @ (codes[:, cols] - zeros[:, g:g + 1].astype(np.float64)).T
                tot += acc * scales[:, g][None, :].astype(np.float64)
            ws[s] = tot

    def splitk_reduce(grid, block, args):
        ws, splits, MN, out = args
        out.reshape(-1)[:] = np.asarray(ws).reshape(int(splits), -1).sum(axis=0)

    def fp8_wgmma(grid, block, args):
        ac, sa, codes, scale, gran, M, N, K, out = args
        tab = e4m3_decode_table().astype(np.float64)
        nkb = int(K) // 128
        full = {0: lambda: np.full((int(N), nkb), scale[0]), 1: lambda: np.repeat(scale[:, None], nkb, 1),
                2: lambda: np.repeat(np.asarray(scale).reshape(-1, nkb), 128, 0)[:int(N)]}[int(gran)]()
        A, W = tab[np.asarray(ac)], tab[np.asarray(codes)]
        tot = np.zeros((int(M), int(N)))
        for kb in range(nkb):
            c = slice(128 * kb, 128 * kb + 128)
            tot += (A[:, c] @ W[:, c].T) * (np.asarray(sa, np.float64)[:, None] * full[None, :, kb])
        out[:] = tot

    return {"w4a16_fused": w4a16_fused, "splitk_reduce": splitk_reduce, "fp8_wgmma": fp8_wgmma}[name]


@pytest.fixture
def model_cupy(monkeypatch):
    import sys
    from refquant_backends.cupy import _runtime
    monkeypatch.setitem(sys.modules, "cupy", _fake_cupy())
    monkeypatch.setattr(_runtime, "kernel", _model_kernel)
    import refquant_backends.cupy.gemm as g
    monkeypatch.setattr(g, "POISON", True)
    return g


@pytest.mark.parametrize("act", [False, True])
@pytest.mark.parametrize("M", [1, 17])
def test_w4a16_fused_launcher(model_cupy, act, M):
    from refquant.gemm import W4A16Weight, w4a16_reference
    rng = np.random.default_rng(M + act)
    N, G, ng = 64, 64, 4
    K = G * ng
    g_idx = (np.arange(K) // G).astype(np.int32)
    if act:
        g_idx = rng.permutation(g_idx).astype(np.int32)
    w = W4A16Weight(rng.integers(0, 16, (N, K)).astype(np.uint8),
                    np.ldexp(np.float32(1), rng.integers(-3, 4, (N, ng))).astype(np.float32),
                    rng.integers(0, 16, (N, ng)).astype(np.uint8), g_idx)
    a = rng.integers(-8, 9, (M, K)).astype(np.float16)
    R, _ = w4a16_reference(a.astype(np.float32), w)
    wd = model_cupy.W4A16Device(w)
    for splits in (None, 1, 3):
        y = model_cupy.w4a16_fused(a, wd, splits=splits).get()
        assert np.array_equal(y, R.astype(np.float32)), splits


@pytest.mark.parametrize("gran", ["tensor", "channel", "block"])
def test_fp8_wgmma_launcher(model_cupy, gran):
    from refquant.gemm import FP8Weight, dequantize_fp8, e4m3_decode_table, e4m3_encode
    rng = np.random.default_rng(9)
    M, N, K = 20, 200, 384
    shape = {"tensor": (), "channel": (N,), "block": (2, 3)}[gran]
    w = FP8Weight(e4m3_encode(rng.integers(-4, 5, (N, K)).astype(np.float32)),
                  np.asarray(np.ldexp(np.float32(1), rng.integers(-2, 3, shape)), np.float32))
    ac = e4m3_encode(rng.integers(-4, 5, (M, K)).astype(np.float32))
    sa = np.ldexp(np.float32(1), rng.integers(-2, 3, M)).astype(np.float32)
    A = e4m3_decode_table()[ac].astype(np.float64) * sa[:, None]
    y = model_cupy.fp8_wgmma(ac, sa, w).get()
    assert np.array_equal(y, (A @ dequantize_fp8(w).T).astype(np.float32))
