"""The CuPy backend's CUDA sources compile cleanly without a GPU, and the GEMM kernels keep
their accumulators in registers (no local-memory spills), read off the assembler's report.

NVRTC from pip (nvidia-cuda-nvrtc, through cupy.cuda.nvrtc, which needs no device) runs in every
CI; nvcc is used as a second compiler where it is installed. A missing compiler is a skip that
says so. Also: the NumPy model of the fused W4A16 kernel's thread/fragment mapping against the
spec (no GPU involved)."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refquant_backends.cupy import _runtime as rt

# kernels whose main loops must not touch local memory, per architecture they are claimed for
GEMM_KERNELS = {"w4a16_plain": rt.ARCHS, "fp8_plain": rt.ARCHS, "splitk_reduce": rt.ARCHS,
                "w4a16_fused": rt.ARCHS, "q4k_fused": rt.ARCHS, "fp8_wgmma": ("sm_90a",)}


def _nvrtc_or_skip():
    try:
        from cupy.cuda import nvrtc
        nvrtc.getVersion()
    except Exception as e:  # noqa: BLE001 - the reason is the skip message
        pytest.skip(f"NVRTC is not available here (pip install nvidia-cuda-nvrtc cupy-cuda13x): {e}")


@pytest.fixture(scope="module")
def nvrtc_reports():
    _nvrtc_or_skip()
    return {(s, a): rt.resource_report(rt.compile_nvrtc(s, a)[1]) for s in rt.SOURCES for a in rt.ARCHS}


@pytest.mark.parametrize("src", rt.SOURCES)
@pytest.mark.parametrize("arch", rt.ARCHS)
def test_nvrtc_compiles(nvrtc_reports, src, arch):
    rep = nvrtc_reports[(src, arch)]
    assert rep, f"no kernels reported for {src} on {arch}"


@pytest.mark.parametrize("kernel,archs", sorted(GEMM_KERNELS.items()))
def test_gemm_kernels_do_not_spill(nvrtc_reports, kernel, archs):
    found = 0
    for (src, arch), rep in nvrtc_reports.items():
        if kernel in rep and arch in archs:
            r = rep[kernel]
            found += 1
            assert r["spill_stores"] == 0 and r["spill_loads"] == 0 and r["stack"] == 0, (kernel, arch, r)
    assert found == len(archs)


def test_dequantization_kernels_do_not_spill(nvrtc_reports):
    for (src, arch), rep in nvrtc_reports.items():
        if src.startswith("ggml/"):
            for k, r in rep.items():
                assert r["spill_stores"] == 0 and r["stack"] == 0, (k, arch, r)


def test_wgmma_is_only_in_the_sm90a_build(nvrtc_reports):
    # sm_90a: the warpgroup kernel holds its 2 x 32 accumulators; elsewhere its body is empty
    assert nvrtc_reports[("gemm_sm90.cu", "sm_90a")]["fp8_wgmma"]["registers"] >= 64
    assert nvrtc_reports[("gemm_sm90.cu", "sm_80")]["fp8_wgmma"]["registers"] < 16


def test_sm90a_ptx_has_wgmma():
    _nvrtc_or_skip()
    from cupy.cuda import nvrtc
    opts = list(rt.OPTIONS) + ["--gpu-architecture=compute_90a", f"-I{rt.HERE}"]
    inc = rt.cuda_include_dir()
    if inc:
        opts.append(f"-I{inc}")
    prog = nvrtc.createProgram(rt.source("gemm_sm90.cu"), "gemm_sm90.cu", [], [])
    nvrtc.compileProgram(prog, opts)
    ptx = nvrtc.getPTX(prog)
    nvrtc.destroyProgram(prog)
    ptx = ptx.decode() if isinstance(ptx, bytes) else ptx
    assert "wgmma.mma_async.sync.aligned.m64n64k32.f32.e4m3.e4m3" in ptx
    assert "fence.proxy.async" in ptx


@pytest.mark.parametrize("src", rt.SOURCES)
def test_nvcc_compiles_sm90a(src):
    if rt.nvcc_path() is None:
        pytest.skip("nvcc is not installed on this machine (the NVRTC tests above cover compilation)")
    _, log = rt.compile_nvcc(src, "sm_90a")
    for k, r in rt.resource_report(log).items():
        if k in GEMM_KERNELS:
            assert r["spill_stores"] == 0 and r["stack"] == 0, (k, r)


# --------------------------------------------------------------------------- CPU model of the mappings

def test_b_fragment_columns_cover_each_k_step_once_per_column():
    from refquant_backends.cupy.gemm import b_fragment_columns
    for q in range(8):                     # the 4 lanes of one column (lane // 4 == q)
        cols = np.concatenate([b_fragment_columns(4 * q + t) for t in range(4)])
        assert sorted(cols.tolist()) == list(range(32))


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), tiles=st.integers(1, 3), ng=st.integers(1, 4),
       G=st.sampled_from([32, 64, 128]), act=st.booleans())
def test_pack_w4a16_roundtrips_through_the_lane_mapping(seed, tiles, ng, G, act):
    from refquant_backends.cupy.gemm import group_order, pack_w4a16, unpack_lane_codes
    from refquant.gemm import W4A16Weight
    rng = np.random.default_rng(seed)
    N, K = 32 * tiles, ng * G
    g_idx = (np.arange(K) // G).astype(np.int32)
    if act:
        g_idx = rng.permutation(g_idx).astype(np.int32)
    w = W4A16Weight(rng.integers(0, 16, (N, K)).astype(np.uint8), np.ones((N, ng), np.float32),
                    rng.integers(0, 16, (N, ng)).astype(np.uint8), g_idx)
    words, gorder, perm, Gp = pack_w4a16(w)
    assert Gp == G and np.array_equal(perm, group_order(g_idx)[0])
    assert np.array_equal(unpack_lane_codes(words, N, K), w.codes[:, perm])


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), M=st.integers(1, 20), ng=st.integers(1, 3),
       G=st.sampled_from([32, 64]), act=st.booleans(), splits=st.integers(1, 3))
def test_fused_w4a16_mapping_model_matches_the_spec_exactly(seed, M, ng, G, act, splits):
    """Integer activations, power-of-two scales: every product and sum is exact in float64, so
    the warp/lane/fragment model must reproduce the spec's R exactly -- a layout, permutation
    or group-order bug cannot hide inside a tolerance."""
    from refquant_backends.cupy.gemm import emulate_w4a16_fused
    from refquant.gemm import W4A16Weight, w4a16_reference
    rng = np.random.default_rng(seed)
    N, K = 32, ng * G
    g_idx = (np.arange(K) // G).astype(np.int32)
    if act:
        g_idx = rng.permutation(g_idx).astype(np.int32)
    scales = np.ldexp(np.float32(1), rng.integers(-4, 5, (N, ng))).astype(np.float32)
    w = W4A16Weight(rng.integers(0, 16, (N, K)).astype(np.uint8), scales,
                    rng.integers(0, 16, (N, ng)).astype(np.uint8), g_idx)
    a = rng.integers(-8, 9, (M, K)).astype(np.float32)
    R, _ = w4a16_reference(a, w)
    got = emulate_w4a16_fused(a.astype(np.float16), w, splits=min(splits, ng))
    assert np.array_equal(got, R)


def test_fused_w4a16_model_one_hot_rows_pick_single_columns():
    """A one-hot activation row selects one weight column: Y[m, n] = W[n, k_m] exactly."""
    from refquant_backends.cupy.gemm import emulate_w4a16_fused
    from refquant.gemm import W4A16Weight, dequantize_w4a16
    rng = np.random.default_rng(1)
    N, G, ng = 32, 32, 2
    K = G * ng
    g_idx = rng.permutation((np.arange(K) // G).astype(np.int32)).astype(np.int32)
    w = W4A16Weight(rng.integers(0, 16, (N, K)).astype(np.uint8), np.full((N, ng), 0.5, np.float32),
                    rng.integers(0, 16, (N, ng)).astype(np.uint8), g_idx)
    ks = rng.choice(K, 17, replace=False)
    a = np.zeros((17, K), np.float16)
    a[np.arange(17), ks] = 1
    assert np.array_equal(emulate_w4a16_fused(a, w), dequantize_w4a16(w)[:, ks].T)


def test_q4k_fused_mapping_model_matches_the_spec_exactly():
    """Power-of-two d, dmin and integer activations: every value exact, so the lane/byte/nibble
    mapping of q4k_fused must reproduce A @ dequantize(Q4_K)^T exactly."""
    import refquant
    from refquant_backends.cupy.gemm import emulate_q4k_fused
    rng = np.random.default_rng(11)
    N, K, M = 16, 512, 19
    raw = rng.integers(0, 256, (N, K // 256, 144)).astype(np.uint8)
    bits = (rng.integers(12, 17, (N, K // 256, 2)) << 10).astype("<u2")
    raw[:, :, 0:4] = bits.view(np.uint8).reshape(N, K // 256, 4)
    raw = raw.reshape(N, -1)
    a = rng.integers(-4, 5, (M, K)).astype(np.float32)
    want = a.astype(np.float64) @ refquant.dequantize(raw, "Q4_K").astype(np.float64).T
    for splits in (1, 2):
        assert np.array_equal(emulate_q4k_fused(a, raw, splits), want)


def test_wgmma_d_fragment_covers_the_tile_once():
    from refquant_backends.cupy.gemm import wgmma_d_fragment
    seen = {wgmma_d_fragment(w, L, i) for w in range(4) for L in range(32) for i in range(32)}
    assert seen == {(r, c) for r in range(64) for c in range(64)}


def test_core_matrix_layout_is_what_the_descriptors_address():
    from refquant_backends.cupy.gemm import core_matrix_offset, descriptor_read
    chunk = np.arange(64 * 128, dtype=np.int64).reshape(64, 128)
    smem = np.zeros(64 * 128, np.int64)
    for r in range(64):
        for kb in range(128):
            smem[core_matrix_offset(r, kb)] = chunk[r, kb]
    assert sorted(smem.tolist()) == list(range(64 * 128))   # a bijection
    for s in range(4):
        assert np.array_equal(descriptor_read(smem, 2 * s * 128, 128, 1024), chunk[:, 32 * s:32 * s + 32])


@pytest.mark.parametrize("gran", ["tensor", "channel", "block"])
def test_fp8_wgmma_mapping_model_matches_the_spec_exactly(gran):
    from refquant_backends.cupy.gemm import emulate_fp8_wgmma
    from refquant.gemm import FP8Weight, dequantize_fp8, e4m3_decode_table, e4m3_encode
    rng = np.random.default_rng({"tensor": 0, "channel": 1, "block": 2}[gran])
    M, N, K = 70, 72, 256
    shape = {"tensor": (), "channel": (N,), "block": (1, 2)}[gran]
    w = FP8Weight(e4m3_encode(rng.integers(-4, 5, (N, K)).astype(np.float32)),
                  np.asarray(np.ldexp(np.float32(1), rng.integers(-2, 3, shape)), np.float32))
    ac = e4m3_encode(rng.integers(-4, 5, (M, K)).astype(np.float32))
    sa = np.ldexp(np.float32(1), rng.integers(-2, 3, M)).astype(np.float32)
    A = e4m3_decode_table()[ac].astype(np.float64) * sa[:, None]
    assert np.array_equal(emulate_fp8_wgmma(ac, sa, w), A @ dequantize_fp8(w).T)


def test_sass_uses_the_tensor_cores_and_no_local_memory():
    """With nvcc and cuobjdump (CUDA_CUOBJDUMP or on PATH): the sm_90a SASS of the fused W4A16
    kernel has HMMA, the wgmma kernel QGMMA (e4m3), and neither touches local memory."""
    import os
    import shutil
    import subprocess
    import tempfile
    co = os.environ.get("CUDA_CUOBJDUMP") or shutil.which("cuobjdump")
    if rt.nvcc_path() is None or co is None:
        pytest.skip("needs nvcc and cuobjdump on this machine (neither ships with the pip NVRTC)")
    with tempfile.TemporaryDirectory() as tmp:
        sass = {}
        for src in ("gemm.cu", "gemm_sm90.cu"):
            cub, _ = rt.compile_nvcc(src, "sm_90a")
            path = os.path.join(tmp, src + ".cubin")
            open(path, "wb").write(cub)
            sass[src] = subprocess.run([co, "-sass", path], capture_output=True, text=True, check=True).stdout
    assert "HMMA" in sass["gemm.cu"]
    assert "QGMMA" in sass["gemm_sm90.cu"] and "E4M3" in sass["gemm_sm90.cu"]
    for s in sass.values():
        assert "LDL" not in s and "STL" not in s


def test_a_fragment_positions_cover_the_16x16_step_once():
    from refquant_backends.cupy.gemm import a_fragment_positions
    seen = [p for L in range(32) for p in a_fragment_positions(L)]
    assert sorted(seen) == [(r, c) for r in range(16) for c in range(16)]
