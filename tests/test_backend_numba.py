"""The Numba backend against the spec, generated from what it claims.

Every (operation, key) the backend claims gets a Hypothesis comparison with the spec (bit-exact
for encode/decode, vec_dot and integer matmuls; refquant.gemm's bound for float matmuls, at the
accumulation order the backend states). Everything the spec defines but the backend does not
claim must be reported by supports() and fall back to the spec's own result.
"""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import refquant
from refquant.backend import OPERATIONS, operation_keys
from refquant.conformance.suite import case, check
from numba_ir import FAST_MATH_FLAG, FUSED_ASM

numba = pytest.importorskip("numba", reason="the numba extra is not installed")


@pytest.fixture(scope="module")
def nb():
    return refquant.get_backend("refquant_backends.numba:NumbaBackend")


def _claims():
    from refquant_backends.numba import NumbaBackend
    return sorted(NumbaBackend().claims())


def _unclaimed():
    claimed = set(_claims())
    return [(op, k) for op in OPERATIONS for k in operation_keys(op) if (op, k) not in claimed]


@pytest.mark.parametrize("op,key", _claims())
@settings(max_examples=30)
@given(data=st.data())
def test_claim_conforms_to_spec(nb, op, key, data):
    c = data.draw(case(op, key))
    acc = None
    if op == "matmul" and not refquant.gemm.get_scheme(key).exact:
        from refquant_backends.numba.gemm import accumulation
        acc = accumulation(op, key, c["a"].shape[1], c["weight"])
    check(nb, op, key, c, accumulation=acc)


@pytest.mark.parametrize("op,key", _claims())
def test_supports_what_it_claims(nb, op, key):
    assert nb.supports(op, key)


@pytest.mark.parametrize("op,key", _unclaimed())
@settings(max_examples=5)
@given(data=st.data())
def test_unclaimed_falls_back_to_spec(nb, op, key, data):
    assert not nb.supports(op, key)
    c = data.draw(case(op, key))
    check(nb, op, key, c)  # the fallback is the spec itself: exact, whatever the operation


def test_claims_cover_the_legacy_and_float_types(nb):
    for name in ["F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q8_1"]:
        assert nb.supports("quantize", name) and nb.supports("dequantize", name)
    for name in refquant.ggml.dot.VEC_DOT_TYPE:
        assert nb.supports("vec_dot", name)
    for scheme in refquant.gemm.SCHEMES:
        assert nb.supports("matmul", scheme)
    assert not nb.supports("quantize", "F32")  # a byte view: the spec's own is a copy


def test_declared_claims_are_the_twin_modules_tables():
    """The backend claims from its declaration (so that a call imports one twin module): every
    key declared is in the declared module's table, and every table's key is declared."""
    from refquant_backends.numba import NumbaBackend
    assert set(NumbaBackend.declarations()) == set(NumbaBackend.modules())   # every twin declares
    assert NumbaBackend.declared() == NumbaBackend.loaded()


def test_twin_modules_are_found_in_the_package_files():
    """The twin modules are the package's modules that define tables: the spec's mirror paths,
    not its helpers (numerics, simd, warm, ggml.search: no tables)."""
    from refquant_backends.numba import NumbaBackend
    assert set(NumbaBackend.modules()) == {
        "ggml.floats", "ggml.legacy", "ggml.kquants", "ggml.iquants", "ggml.iquants_grid", "ggml.iquants_iq1",
        "ggml.lowbit", "ggml.fp4", "ggml.dot", "minifloat", "gemm"}


def test_declarations_are_read_without_importing(tmp_path):
    """In a fresh process, making the backend and reading every declaration imports no twin module."""
    import subprocess
    import sys
    code = ("import sys; from refquant_backends.numba import NumbaBackend; b = NumbaBackend(); "
            "assert b._claimed >= {('quantize', 'Q4_0'), ('quantize', 'E4M3FN'), ('vec_dot', 'Q2_0'), ('matmul', 'FP8')}; "
            "print(' '.join(sorted(m for m in sys.modules if m.startswith('refquant_backends.numba.'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == [], out


def test_a_declaration_must_be_a_literal_of_operations(tmp_path):
    from refquant.backend import _declares
    from refquant.errors import RefquantError
    assert _declares(tmp_path / "m.py", 'X = 1\nDECLARES = {"quantize": "A B",\n            "vec_dot": "A"}  # c\nY = 2\n') \
        == {"quantize": "A B", "vec_dot": "A"}
    assert _declares(tmp_path / "m.py", "QUANTIZE = {}\n") is None
    with pytest.raises(RefquantError):
        _declares(tmp_path / "m.py", "DECLARES = {'quantize': KEYS}\n")
    with pytest.raises(RefquantError):
        _declares(tmp_path / "m.py", "DECLARES = {'quantize': ['A']}\n")


def test_a_key_missing_from_the_declaration_is_still_claimed():
    """The declaration only saves imports: a key it lacks is found by importing every module."""
    from refquant_backends.numba import NumbaBackend

    class Partial(NumbaBackend):
        @classmethod
        def declarations(cls):
            return {"ggml.legacy": {"quantize": "Q4_0"}}
    b = Partial()
    assert b.supports("quantize", "Q4_0") and b.supports("quantize", "Q8_0") and b.supports("vec_dot", "Q2_K")
    assert b.claims() == NumbaBackend().claims()


def test_warm_calls_every_operation_of_a_type():
    """`make install`'s cache warm-up (backends/numba/warm.py) reaches each claimed operation."""
    from refquant_backends.numba.warm import warm
    seen = []
    assert warm({"Q8_0"}, seen.append) == 3
    assert [s.split()[0] for s in seen] == ["dequantize", "quantize", "vec_dot"]


def test_a_quantize_imports_only_its_twin_module(tmp_path):
    """In a fresh process, the backend's Q4_0 quantizer imports refquant_backends.numba.ggml.legacy
    and no other twin module with kernels (the kernel itself is not called: no compile or cache
    load)."""
    import subprocess
    import sys
    code = ("import sys, refquant; nb = refquant.get_backend('refquant_backends.numba:NumbaBackend'); "
            "assert nb.supports('quantize', 'Q4_0') and callable(nb._t['quantize']['Q4_0']); "
            "print(' '.join(sorted(m for m in sys.modules if m.startswith('refquant_backends.numba.'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert "refquant_backends.numba.ggml.legacy" in out
    twins = {"ggml.kquants", "ggml.iquants_grid", "ggml.dot", "gemm", "minifloat", "affine"}
    assert not {f"refquant_backends.numba.{m}" for m in twins} & set(out), out


def test_a_kernel_loads_without_scipy_linalg_and_the_blas_probe_answers_as_numba():
    """In a fresh process, a kernel runs without Numba's target set-up importing SciPy's linalg
    (backends/numba/startup.py), and the deferred probe, once read, gives Numba's own answer."""
    import subprocess
    import sys
    code = ("import sys, numpy as np, refquant; nb = refquant.get_backend('refquant_backends.numba:NumbaBackend'); "
            "nb.quantize(np.ones((1, 32), np.float32), 'Q8_0'); print('scipy.linalg' in sys.modules); "
            "from numba.np import arraymath; print(bool(arraymath._HAVE_BLAS) == arraymath._check_blas())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "True"], out


def test_unknown_operation_and_key_are_refused(nb):
    with pytest.raises(refquant.RefquantError):
        nb.supports("transpose", "Q4_0")
    with pytest.raises(refquant.FormatError):
        nb.supports("vec_dot", "Q8_1")  # ggml has no vec_dot with Q8_1 weights
    with pytest.raises(refquant.InputError):
        nb.supports("matmul", "W3A5")


def test_entry_point_names_the_backend():
    """`refquant.get_backend("numba")` works where the package is installed (pip install -e .)."""
    eps = refquant.available_backends()
    if "numba" not in eps:
        pytest.skip("refquant is not pip-installed here, so its entry points are not registered")
    b = refquant.get_backend("numba")
    assert b.name == "numba" and b.supports("quantize", "Q4_0")


# ----------------------------------------------------------------------------- near-ties, no FMA

def test_no_contraction_on_near_ties(nb):
    """Q4_1/Q5_1 round (x - min) * id + 0.5 and Q4_0 x * id + 8.5: were LLVM to fuse the multiply
    and the add, inputs whose product lands within half an ulp of a code boundary would round
    differently. Build such rows deliberately and compare with the spec."""
    rng = np.random.default_rng(3)
    rows = []
    for _ in range(400):
        d = np.float32(2.0) ** rng.integers(-10, 10)
        k = rng.integers(-16, 16, 32).astype(np.float32)
        x = (k + np.float32(0.5)) * d                # exact ties of d
        x = np.nextafter(x, x + rng.choice([-1, 1], 32).astype(np.float32) * np.inf)  # one ulp off
        x[0] = 8 * d
        x[1] = -8 * d * np.float32(1.0000001)
        rows.append(x.astype(np.float32))
    x = np.stack(rows)
    for qt in ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q8_1"]:
        np.testing.assert_array_equal(nb.quantize(x, qt), refquant.quantize(x, qt))
    w = refquant.quantize(x[:16], "Q4_1")
    np.testing.assert_array_equal(nb.vec_dot(w, "Q4_1", x[16:19]).view(np.uint32),
                                  refquant.get_backend().vec_dot(w, "Q4_1", x[16:19]).view(np.uint32))


@pytest.mark.parametrize("qtype", ["Q4_1", "Q5_1"])
def test_min_max_scan_keeps_the_first_zeros_sign(nb, ggml, qtype):
    """Q4_1/Q5_1 find a block's min and max as integer min/max of order keys (vectorised), which
    rank -0 below +0; C keeps the first zero it meets. Blocks whose min or max is a zero of either
    sign, or both signs in either order, against ggml's bytes (the min is stored)."""
    rng = np.random.default_rng(11)
    rows = []
    for first, second in ((0.0, -0.0), (-0.0, 0.0), (0.0, 0.0), (-0.0, -0.0)):
        for sign in (1, -1):
            x = (rng.random(32) * np.float32(sign)).astype(np.float32)  # all of one sign: a zero is the min or max
            i, j = sorted(rng.choice(32, 2, replace=False))
            x[i], x[j] = first, second
            rows.append(x)
            y = x.copy()
            y[:] = first
            y[j] = second
            rows.append(y)
    x = np.stack(rows).astype(np.float32)
    np.testing.assert_array_equal(nb.quantize(x, qtype), ggml.quantize(x, qtype))
    np.testing.assert_array_equal(nb.quantize(x, qtype), refquant.quantize(x, qtype))


def test_q8_k_scale_from_the_first_of_equal_magnitudes(nb, ggml):
    """Q8_K finds its block's largest magnitude as an integer max and its first position as an
    integer min (vectorised); C keeps the first value of that magnitude (its sign sets the codes'
    signs). Blocks with +a before -a and after it, all zeros of either sign, small integers."""
    rng = np.random.default_rng(12)
    x = (rng.standard_normal((6, 256)) * 0.02).astype(np.float32)
    x[0] = 0
    x[1] = -0.0
    x[2, 5], x[2, 9] = 1.0, -1.0
    x[3, 7], x[3, 100] = -1.0, 1.0
    x[4] = rng.integers(-3, 4, 256).astype(np.float32)
    x[5, :] = -0.0
    x[5, 200] = 0.0
    np.testing.assert_array_equal(nb.quantize(x, "Q8_K"), ggml.quantize_row_ref(x, "Q8_K"))


@pytest.mark.parametrize("qtype", ["Q2_K", "Q4_K", "Q5_K"])
def test_searches_side_by_side_match_ggml_on_every_lane_count(nb, ggml, qtype):
    """Q2_K/Q4_K/Q5_K run the sub-blocks' searches of several super-blocks side by side (one
    lane each; past a row's last super-block the lanes hold copies whose results are unused).
    Rows of 1 to 6 super-blocks, with flat sub-blocks (C's early return), all-zero, all-positive,
    all-negative and signed-zero sub-blocks, without and with an importance matrix (zero
    weights included), against ggml's bytes."""
    rng = np.random.default_rng(18)
    for nsb in range(1, 7):
        x = (rng.standard_normal((6, 256 * nsb)) * 0.02).astype(np.float32)
        x[0, :32] = 0.25
        x[1, 16:48] = 0.0
        x[2] = np.abs(x[2])
        x[3] = -np.abs(x[3])
        x[4, ::3] = -0.0
        x[5, 256 * nsb - 64:] = np.float32(-1e-3)
        np.testing.assert_array_equal(nb.quantize(x, qtype), ggml.quantize(x, qtype))
        im = (rng.random(256 * nsb) + 0.25).astype(np.float32)
        im[:16] = 0.0
        np.testing.assert_array_equal(nb.quantize(x, qtype, im), ggml.quantize(x, qtype, im))


def test_few_long_rows_are_cut_into_more_rows_with_the_same_bytes(nb):
    """A call with fewer rows than the threads need is cut into shorter rows for the types that
    work block by block (NumbaBackend.BLOCKWISE): the bytes and floats are the spec's, which
    runs the rows whole, and an importance matrix keeps the rows whole."""
    from refquant.registry import get_format
    assert nb._split(get_format("Q4_0"), 1, 16384 // 32) == 4         # pieces of 4096 values
    assert nb._split(get_format("Q4_0"), 64, 4096 // 32) == 1
    assert nb._split(get_format("IQ2_XXS"), 1, 16384 // 256) == 1      # not block by block here
    rng = np.random.default_rng(21)
    for qt in sorted(nb.BLOCKWISE):
        for shape in [(1, 4 * 4096), (3, 2 * 4096 + 512), (1, 3 * 4096)]:
            x = (rng.standard_normal(shape) * 0.02).astype(np.float32)
            q = refquant.quantize(x, qt)
            np.testing.assert_array_equal(nb.quantize(x, qt), q, err_msg=f"{qt} {shape}")
            np.testing.assert_array_equal(nb.dequantize(q, qt).view(np.uint32),
                                          refquant.dequantize(q, qt).view(np.uint32), err_msg=f"{qt} {shape}")
    x = (rng.standard_normal((1, 4 * 4096)) * 0.02).astype(np.float32)
    im = (rng.random(4 * 4096) + 0.5).astype(np.float32)
    np.testing.assert_array_equal(nb.quantize(x, "Q4_0", im), refquant.quantize(x, "Q4_0", im))


def test_large_matrix_bit_exact(nb):
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((64, 1024)) * 0.02).astype(np.float32)
    x[3, 100] = 4.0
    im = rng.random(1024).astype(np.float32)
    for qt in ["Q4_0", "Q4_1", "Q5_0", "Q5_1"]:
        np.testing.assert_array_equal(nb.quantize(x, qt, im), refquant.quantize(x, qt, im))


@pytest.mark.parametrize("threads_from", [None, 1 << 17])
def test_input_check_on_the_threads_gives_the_specs_answer_and_message(nb, monkeypatch, threads_from):
    """The Numba backend's NaN/Inf test (one pass over the bits, on the calling thread or a chunk
    per thread) against the spec's all_finite on arrays above its threshold, with the bad value at a chunk's
    first and last position, on one thread and on all; the error a quantize raises is the
    spec's, word for word."""
    from refquant.api import all_finite
    from refquant.errors import InputError
    from refquant_backends.numba import api
    from refquant_backends.numba.api import PARALLEL_MIN, all_finite as nb_finite
    if threads_from is not None:     # the chunk-per-thread pass on an array this small too
        monkeypatch.setattr(api, "THREADS_FROM", threads_from)
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((2 * PARALLEL_MIN // 1024 + 2, 1024)) * 0.02).astype(np.float32)
    n = x.size
    bad = [np.nan, -np.nan, np.inf, -np.inf, np.float32(3.4e38), -0.0, np.float32(1e-45)]
    try:
        for threads in (1, numba.config.NUMBA_NUM_THREADS):
            numba.set_num_threads(threads)
            assert nb_finite(x) and all_finite(x)
            for v in bad:
                for pos in (0, n // 2 - 1, n // 2, n - 1):
                    y = x.copy()
                    y.reshape(-1)[pos] = v
                    assert nb_finite(y) == all_finite(y), (v, pos, threads)
                    if not all_finite(y):
                        with pytest.raises(InputError) as spec_err:
                            refquant.quantize(y, "Q8_0")
                        with pytest.raises(InputError) as nb_err:
                            nb.quantize(y, "Q8_0")
                        assert str(nb_err.value) == str(spec_err.value)
    finally:
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    assert nb_finite(x[:, ::2].copy()) and not nb_finite(np.full((PARALLEL_MIN,), np.nan, np.float32))
    y = x[:, ::2]                      # not contiguous: the spec's reductions
    assert nb_finite(y) == all_finite(y)


# ------------------------------------------------- K-quants, IQ4, low-bit, FP4, minifloats

NEW_GGML = ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_K", "IQ4_NL", "IQ4_XS",
            "TQ1_0", "TQ2_0", "Q1_0", "MXFP4", "NVFP4"]
MINIFLOATS = ["E4M3FN", "E4M3FNUZ", "E5M2", "E5M2FNUZ", "E4M3", "E3M4", "E4M3B11FNUZ", "E2M3", "E3M2", "E2M1",
              "E8M0"]


def test_claims_cover_every_gguf_type_and_minifloat(nb):
    for name in NEW_GGML + MINIFLOATS:
        assert nb.supports("quantize", name) and nb.supports("dequantize", name)


def _kernels(mod):
    """The module's compiled kernels, each recompiled without the on-disk cache (numba cannot
    show the IR of code it loaded from the cache) for the signatures it was called with. prange
    is compiled as range here (parallel=False): the loop bodies and their float flags are the
    same, and the parallel lowering would multiply the compile time."""
    from numba import njit
    from numba.core.registry import CPUDispatcher
    out = []
    for n, f in vars(mod).items():
        if isinstance(f, CPUDispatcher) and f.signatures and f.py_func.__module__ == mod.__name__:
            opts = {k: v for k, v in f.targetoptions.items() if k in ("fastmath", "nogil")}
            g = njit(**opts)(f.py_func)
            for sig in f.signatures:
                g.compile(sig)
            out.append((n, g))
    return out


def test_kernels_have_no_fma_and_no_fast_math(nb):
    """Bit-exactness needs every float32 operation rounded on its own: no FMA contraction, no
    reassociation. Compile every quantize/dequantize kernel (the prange bodies are part of the
    same LLVM module) and read its IR and machine code: no llvm.fma / llvm.fmuladd, no fast-math
    flags on any float instruction, no vfmadd-family instruction."""
    from refquant_backends.numba import affine, minifloat
    from refquant_backends.numba.ggml import fp4, iquants, kquants, legacy, lowbit
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((2, 256)) * 0.1).astype(np.float32)
    im = rng.random(256).astype(np.float32)
    for name in NEW_GGML + MINIFLOATS:
        nb.dequantize(nb.quantize(x, name), name)
        if name not in MINIFLOATS and refquant.registry.get_format(name).imatrix != refquant.registry.IMATRIX_NONE:
            nb.quantize(x, name, im)
    from refquant_backends.numba import affine as nba
    from refquant import affine as A
    for xa in (x, x.astype(np.float16)):
        for conv, opts in (("torchao", {}), ("compressed-tensors", {"symmetric": False}), ("gptq", {"symmetric": False}),
                           ("awq", {})):
            s, z = A.choose_qparams(xa, (1, 32), 4, conv, **opts)
            nba.dequantize(nba.quantize(xa, s, z, (1, 32), 4, conv), s, z, (1, 32), conv)
        s, z = A.choose_qparams_torchao_float_zero(xa, (1, 32), 4)
        nba.dequantize_torchao_float_zero(nba.quantize_torchao_float_zero(xa, s, z, (1, 32), 4), s, z, (1, 32), 4)
    flags, fused = FAST_MATH_FLAG, FUSED_ASM
    checked = 0
    for mod in (legacy, kquants, iquants, lowbit, fp4, minifloat, affine):
        for name, f in _kernels(mod):
            for sig in f.signatures:
                ir = f.inspect_llvm(sig)
                assert "llvm.fma." not in ir and "llvm.fmuladd" not in ir, f"{mod.__name__}.{name}: fma in IR"
                assert not flags.search(ir), f"{mod.__name__}.{name}: fast-math flag: {flags.search(ir).group(0)}"
                assert not fused.search(f.inspect_asm(sig)), f"{mod.__name__}.{name}: fused multiply-add in asm"
                checked += 1
    assert checked >= 16


def _near_tie_rows(rng, n, nrows):
    """Rows whose values sit one ulp either side of ties of power-of-two scales, with the
    extreme values placed so the scales come out as those powers of two."""
    rows = []
    for _ in range(nrows):
        d = np.float32(2.0) ** rng.integers(-10, 10)
        k = rng.integers(-16, 16, n).astype(np.float32)
        x = (k + np.float32(0.5)) * d
        x = np.nextafter(x, x + rng.choice([-1, 1], n).astype(np.float32) * np.inf).astype(np.float32)
        x[::32] = 8 * d
        rows.append(x)
    return np.stack(rows).astype(np.float32)


def test_new_types_bit_exact_on_near_ties_and_a_larger_matrix(nb):
    """Inputs a contracted multiply-add or a reordered sum would round differently, and a matrix
    with more rows than threads (every prange chunk), with and without an importance matrix."""
    rng = np.random.default_rng(11)
    ties = _near_tie_rows(rng, 256, 6)
    big = (rng.standard_normal((24, 512)) * 0.02).astype(np.float32)
    big[5, 17] = 3.0
    im = rng.random(512).astype(np.float32)
    for name in NEW_GGML:
        for x in (ties, big):
            np.testing.assert_array_equal(nb.quantize(x, name), refquant.quantize(x, name), err_msg=name)
        if refquant.registry.get_format(name).imatrix != refquant.registry.IMATRIX_NONE:
            np.testing.assert_array_equal(nb.quantize(big, name, im), refquant.quantize(big, name, im),
                                          err_msg=f"{name} imatrix")
        q = refquant.quantize(big, name)
        np.testing.assert_array_equal(nb.dequantize(q, name).view(np.uint32),
                                      refquant.dequantize(q, name).view(np.uint32), err_msg=name)


@pytest.mark.parametrize("name", MINIFLOATS)
@settings(max_examples=40)
@given(data=st.data())
def test_minifloat_encode_decode_on_the_grid(name, data):
    """refquant_backends.numba.minifloat.encode/decode against the spec on values on, between and just off
    the format's grid (ties, overflow, subnormals, ±0, ±Inf, NaN), both overflow rules."""
    from refquant_backends.numba import minifloat as nbmf
    from refquant import minifloat as mf
    from refquant.conformance.strategies import grid_floats
    f = mf.get_minifloat(name)
    emax = (1 << f.ebits) - 1 - f.bias
    x = data.draw(grid_floats(f.mbits, f.emin, emax))
    sat = data.draw(st.booleans())
    np.testing.assert_array_equal(nbmf.encode(x, name, saturate=sat), mf.encode(x, name, saturate=sat))
    codes = data.draw(st.binary(min_size=1, max_size=64))
    c = np.frombuffer(codes, np.uint8) & np.uint8((1 << f.nbits) - 1)
    np.testing.assert_array_equal(nbmf.decode(c, name).view(np.uint32), mf.decode(c, name).view(np.uint32))


@pytest.mark.parametrize("round_mode", ["nearest", "nearest_bits", "up", "down"])
def test_e8m0_round_modes_match_the_spec(round_mode):
    """E8M0's round modes on every float32 exponent field with mantissas around each rule's cut
    (bit 22, 0x00600000 for subnormals), both signs, 0, Inf and NaN, both overflow rules."""
    from refquant_backends.numba import minifloat as nbmf
    from refquant import minifloat as mf
    m = np.array([0, 1, 0x1FFFFF, 0x200000, 0x3FFFFF, 0x400000, 0x400001, 0x5FFFFF, 0x600000, 0x600001,
                  0x7FFFFF], np.uint32)
    u = ((np.arange(256, dtype=np.uint32) << 23)[:, None] | m[None, :]).ravel()
    x = np.concatenate([u, u | 0x80000000]).view(np.float32)
    for sat in (False, True):
        np.testing.assert_array_equal(nbmf.encode(x, "E8M0", sat, round_mode), mf.encode(x, "E8M0", sat, round_mode))


@pytest.mark.parametrize("name,sub", [("Q2_K", 16), ("Q3_K", 16), ("Q4_K", 32), ("Q5_K", 32), ("Q6_K", 16),
                                      ("IQ4_XS", 32)])
@settings(max_examples=40)
@given(data=st.data())
def test_searches_on_search_stress_rows(nb, name, sub, data):
    """The K-quant and IQ4_XS searches on the spec's search-stress inputs (exact ties between
    candidate scales, one-sided blocks, cancelling least-squares sums), with and without an
    importance matrix."""
    from refquant.conformance.strategies import importance, search_rows
    x = data.draw(search_rows(256, sub, max_rows=2, max_blocks=1))
    im = data.draw(importance(x.shape[1])) if data.draw(st.booleans()) else None
    np.testing.assert_array_equal(nb.quantize(x, name, im), refquant.quantize(x, name, im))


# ------------------------------------------------------------- the lattice IQ types (IQ2, IQ3, IQ1)

LATTICE_QUANT = ["IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S"]
LATTICE_DEQUANT = LATTICE_QUANT + ["IQ1_S", "IQ1_M"]


def test_claims_cover_the_lattice_types(nb):
    for name in LATTICE_QUANT:
        assert nb.supports("quantize", name)
    for name in LATTICE_DEQUANT:
        assert nb.supports("dequantize", name)


@pytest.mark.parametrize("name", ["IQ2_XXS", "IQ2_XS"])
def test_lattice_types_that_need_an_imatrix_refuse_without_one(nb, name):
    x = np.ones((1, 256), np.float32)
    with pytest.raises(refquant.InputError, match="requires an importance matrix"):
        nb.quantize(x, name)


@pytest.mark.parametrize("name", LATTICE_QUANT)
@settings(max_examples=6)
@given(data=st.data())
def test_lattice_quantize_matches_ggml(nb, ggml, name, data):
    """The backend against ggml itself (not only the spec), with and without an importance
    matrix, on whole-block kinds and on rows whose sub-blocks are drawn one by one (zero, tiny,
    huge and tied sub-blocks side by side). Where ggml aborts the spec refuses, and the backend
    must refuse the same input."""
    from refquant.conformance.strategies import float_rows, importance, search_rows
    sub = 16 if name in ("IQ2_XS", "IQ2_S") else 32
    x = data.draw(st.one_of(float_rows(256, max_rows=2, max_blocks=2), search_rows(256, sub)))
    needs = refquant.registry.get_format(name).needs_imatrix
    im = data.draw(importance(x.shape[1])) if needs or data.draw(st.booleans()) else None
    try:
        ours = nb.quantize(x, name, im)
    except refquant.InputError as e:
        assert "ggml aborts" in str(e)
        with pytest.raises(refquant.InputError, match="ggml aborts"):
            refquant.quantize(x, name, im)
        return
    np.testing.assert_array_equal(ours, ggml.quantize(x, name, im))


def test_lattice_types_on_a_larger_matrix(nb, ggml):
    """More rows than threads (every prange chunk), near-zero and all-zero sub-blocks, a large
    outlier, with and without an importance matrix: against ggml, and dequantized against the
    spec."""
    rng = np.random.default_rng(21)
    x = (rng.standard_normal((12, 512)) * 0.02).astype(np.float32)
    x[2, 17] = 3.0
    x[4, :32] = 0
    x[5, 256:288] = np.float32(1e-9)
    x[7, :16] = -x[7, :16]
    im = rng.random(512).astype(np.float32)
    for name in LATTICE_QUANT:
        for m in ((im,) if refquant.registry.get_format(name).needs_imatrix else (im, None)):
            q = nb.quantize(x, name, m)
            np.testing.assert_array_equal(q, ggml.quantize(x, name, m), err_msg=f"{name} {m is None}")
        np.testing.assert_array_equal(nb.dequantize(q, name).view(np.uint32),
                                      refquant.dequantize(q, name).view(np.uint32), err_msg=name)


def test_lattice_dequantize_matches_ggml(nb, ggml):
    """Random bytes (every grid index, sign and scale code) decode as in ggml. The fp16
    super-scale's top byte is masked to a positive finite value (ggml's NaN signs depend on how
    its build compiles the sign flip; the conformance suite covers NaN and Inf against the spec)."""
    rng = np.random.default_rng(22)
    for name in LATTICE_DEQUANT:
        ts = refquant.registry.get_format(name).type_size
        raw = rng.integers(0, 256, (4, 16, ts), dtype=np.uint8)
        # the byte with the fp16 d's sign and top exponent bits: byte 1, or IQ1_M's last byte
        # (d's top nibble is the top nibble of its fourth scale word)
        raw[:, :, ts - 1 if name == "IQ1_M" else 1] &= 0x3F
        raw = raw.reshape(4, -1)
        np.testing.assert_array_equal(nb.dequantize(raw, name).view(np.uint32),
                                      ggml.dequantize(raw, name).view(np.uint32), err_msg=name)


def test_lattice_kernels_have_no_fma_and_no_fast_math(nb):
    """As test_kernels_have_no_fma_and_no_fast_math, for the quantize kernels of
    backends/numba/ggml/iquants_grid.py (the search, and the super-scale in each packer: the
    places with a multiply followed by an add). The dequantize kernels have no such pair."""
    from refquant_backends.numba.ggml import iquants_grid
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((2, 256)) * 0.1).astype(np.float32)
    im = rng.random(256).astype(np.float32)
    for name in LATTICE_QUANT:
        nb.quantize(x, name, im)
    flags, fused = FAST_MATH_FLAG, FUSED_ASM
    checked = 0
    for name, f in _kernels(iquants_grid):
        if not name.startswith(("_quantize", "_pack")):
            continue
        for sig in f.signatures:
            ir = f.inspect_llvm(sig)
            assert "llvm.fma." not in ir and "llvm.fmuladd" not in ir, f"{name}: fma in IR"
            assert not flags.search(ir), f"{name}: fast-math flag: {flags.search(ir).group(0)}"
            assert not fused.search(f.inspect_asm(sig)), f"{name}: fused multiply-add in asm"
            checked += 1
    assert checked >= 6



DOT_NESTED_AND_LATTICE = LATTICE_DEQUANT + ["Q1_0", "NVFP4"]


def test_dot_claims_cover_the_lattice_and_nested_types(nb):
    for name in DOT_NESTED_AND_LATTICE:
        assert nb.supports("vec_dot", name)


def test_dot_on_raw_weight_bytes_and_more_rows_than_threads(nb):
    """vec_dot of every bit pattern the quantizers never write (odd scale and sign bits, grid
    indices, fp16 scales that are inf or NaN), on more weight rows than threads, both activation
    variants: the same bits as the spec."""
    rng = np.random.default_rng(23)
    spec = refquant.get_backend()
    for name in DOT_NESTED_AND_LATTICE:
        fmt = refquant.registry.get_format(name)
        nblk = 2 if fmt.block_size == 256 else 4
        w = rng.integers(0, 256, (37, nblk * fmt.type_size), dtype=np.uint8)
        w[3, :2] = (0x00, 0x7C)        # +inf fp16 d where d sits at byte 0 (NaN products follow)
        a = (rng.standard_normal((3, nblk * fmt.block_size)) * 10.0).astype(np.float32)
        for variant in ("ref", "x86"):
            np.testing.assert_array_equal(nb.vec_dot(w, name, a, variant).view(np.uint32),
                                          spec.vec_dot(w, name, a, variant).view(np.uint32),
                                          err_msg=f"{name} {variant}")


def test_activation_quantizer_is_the_specs():
    """The twin's Q8_0/Q8_1 activation quantizer (the Q8_0/Q8_1 format twin for "ref", a jitted
    kernel of its own for "x86") writes the bytes of the spec's definition
    (refquant.ggml.dot.quantize_activation): ordinary rows, an all-zero block, values halfway
    between integers after scaling (round half away vs half to even), and blocks whose scale
    overflows fp16."""
    from refquant.ggml import dot as spec_dot
    from refquant_backends.numba.ggml import dot
    rng = np.random.default_rng(31)
    a = (rng.standard_normal((6, 128)) * rng.uniform(0.01, 100, (6, 1))).astype(np.float32)
    a[1, :32] = 0
    a[2, :32] = np.arange(32, dtype=np.float32) - 15.5     # halfway values once scaled by 127/127
    a[2, 0] = 127
    a[3, 32:64] = 3e38                                     # near float32's max
    a[4, 64:96] = rng.choice([-1, 1], 32).astype(np.float32) * np.float32(1e7)   # d = 1e7 / 127 > 65504
    for qtype in ("Q8_0", "Q8_1"):
        for variant in ("ref", "x86"):
            np.testing.assert_array_equal(dot.quantize_activation(a, qtype, variant),
                                          spec_dot.quantize_activation(a, qtype, variant),
                                          err_msg=f"{qtype} {variant}")


def test_dot_kernels_fuse_only_where_the_spec_does(nb):
    """The vec_dot kernels (backends/numba/ggml/dot.py): no fast-math flag on any float
    instruction and no contraction (llvm.fmuladd) anywhere; a kernel that does not call fmaf
    (the spec's explicit fma_f32 steps: Q4_1/Q5_1, Q2_K/Q4_K/Q5_K, IQ1_S/IQ1_M) has no llvm.fma
    and no vfmadd-family instruction at all."""
    import inspect
    from refquant_backends.numba.ggml import dot
    rng = np.random.default_rng(0)
    for name in dot.VEC_DOT:
        fmt = refquant.registry.get_format(name)
        w = refquant.quantize((rng.standard_normal((2, 256)) * 0.1).astype(np.float32), name,
                              rng.random(256).astype(np.float32) if name in LATTICE_DEQUANT else None)
        for variant in ("ref", "x86"):
            nb.vec_dot(w, name, (rng.standard_normal((1, 256))).astype(np.float32), variant)
    flags, fused = FAST_MATH_FLAG, FUSED_ASM
    checked = fusing = 0
    for name, f in _kernels(dot):
        calls_fmaf = "fmaf(" in inspect.getsource(f.py_func)
        for sig in f.signatures:
            ir = f.inspect_llvm(sig)
            assert "llvm.fmuladd" not in ir, f"{name}: contraction in IR"
            assert not flags.search(ir), f"{name}: fast-math flag: {flags.search(ir).group(0)}"
            if calls_fmaf:
                assert "llvm.fma.f32" in ir, f"{name}: its fmaf is not an fma"
                fusing += 1
            else:
                assert "llvm.fma." not in ir, f"{name}: fma in IR"
                assert not fused.search(f.inspect_asm(sig)), f"{name}: fused multiply-add in asm"
            checked += 1
    assert checked >= 11 and fusing >= 3


# ----------------------------------------------------------------------------- affine encode/decode

def _same_or_same_error(spec_fn, nb_fn, *args, **kw):
    """Both raise InputError with the same message, or both return arrays equal bit for bit (dtype
    included). Returns the spec's result (None when it refused)."""
    from refquant.errors import InputError
    try:
        want = spec_fn(*args, **kw)
    except InputError as e:
        with pytest.raises(InputError) as got:
            nb_fn(*args, **kw)
        assert str(got.value) == str(e)
        return None
    got = nb_fn(*args, **kw)
    assert got.dtype == want.dtype and got.shape == want.shape, (got.dtype, want.dtype, got.shape, want.shape)
    bits = {1: np.uint8, 2: np.uint16, 4: np.uint32}[want.dtype.itemsize]
    np.testing.assert_array_equal(np.ascontiguousarray(got).view(bits), np.ascontiguousarray(want).view(bits))
    return want


@st.composite
def _affine_case(draw, partial=False):
    """x (float32/float16/bfloat16, from affine_matrix: float_block kinds and exact-tie blocks),
    bits, a block_size of every granularity; sometimes with a leading axis of 1 or 2 (per-token
    style shapes the twin folds to 2-D) or a leading block extent of 2 (which it hands back to
    the spec)."""
    import ml_dtypes
    from refquant.conformance.strategies import affine_matrix, as_float_dtype, block_sizes
    bits = draw(st.integers(2, 8))
    dt = draw(st.sampled_from([np.float32, np.float16, ml_dtypes.bfloat16]))
    x = as_float_dtype(draw(affine_matrix(unit=16, bits=bits)), dt)
    _, block = draw(block_sizes(x.shape, partial=partial))
    lead = draw(st.sampled_from([0, 0, 1, 2]))
    if lead:
        x = np.stack([x] * lead) if draw(st.booleans()) else np.stack([x, -x])[:lead]
        block = (draw(st.sampled_from([1, lead])),) + tuple(block)
    return x, bits, tuple(block)


@settings(max_examples=60)
@given(c=_affine_case(), signed=st.booleans(), mapping=st.sampled_from(["SYMMETRIC", "SYMMETRIC_NO_CLIPPING_ERR", "ASYMMETRIC"]),
       scale_dtype=st.sampled_from([None, "float32", "float16", "bfloat16"]),
       zdt=st.sampled_from([np.int32, np.int8, np.float32, "bfloat16"]), no_zero=st.booleans(),
       out=st.sampled_from(["float32", "float16", "bfloat16"]))
def test_affine_torchao_twin(c, signed, mapping, scale_dtype, zdt, no_zero, out):
    from refquant_backends.numba import affine as nba
    from refquant import affine as A
    x, bits, block = c
    if mapping == "SYMMETRIC_NO_CLIPPING_ERR":
        signed = True
    zdt = A.float_dtype(zdt) if isinstance(zdt, str) else zdt
    s, z = A.choose_qparams_torchao(x, block, bits, mapping, signed, scale_dtype=scale_dtype, zero_point_dtype=zdt)
    z = None if no_zero else z
    q = _same_or_same_error(A.quantize_torchao, nba.quantize_torchao, x, s, z, block, bits, signed)
    if q is not None:
        _same_or_same_error(A.dequantize_torchao, nba.dequantize_torchao, q, s, z, block, out)
        _same_or_same_error(A.dequantize, nba.dequantize, q, s, z, block, "torchao", output_dtype=out)


@settings(max_examples=60)
@given(c=_affine_case(), sdt=st.sampled_from([None, "float32", "bfloat16", "float16"]),
       zdt=st.sampled_from([None, "float32", "bfloat16"]), out=st.sampled_from(["float32", "float16", "bfloat16"]))
def test_affine_torchao_float_zero_twin(c, sdt, zdt, out):
    from refquant_backends.numba import affine as nba
    from refquant import affine as A
    x, bits, block = c
    s, z = A.choose_qparams_torchao_float_zero(x, block, bits, scale_dtype=sdt, zero_point_dtype=zdt)
    q = _same_or_same_error(A.quantize_torchao_float_zero, nba.quantize_torchao_float_zero, x, s, z, block, bits)
    if q is not None:
        _same_or_same_error(A.dequantize_torchao_float_zero, nba.dequantize_torchao_float_zero, q, s, z, block,
                            bits, out)


@settings(max_examples=60)
@given(c=_affine_case(partial=True), symmetric=st.booleans(), zero_dim=st.booleans(),
       out=st.sampled_from([None, "float32", "float16", "bfloat16"]))
def test_affine_compressed_tensors_twin(c, symmetric, zero_dim, out):
    from refquant_backends.numba import affine as nba
    from refquant import affine as A
    x, bits, block = c
    s, z = A.choose_qparams_compressed_tensors(x, block, bits, symmetric, zero_dim_minmax=zero_dim)
    z = None if symmetric else z
    q = _same_or_same_error(A.quantize_compressed_tensors, nba.quantize_compressed_tensors, x, s, z, block, bits)
    if q is not None:
        _same_or_same_error(A.dequantize_compressed_tensors, nba.dequantize_compressed_tensors, q, s, z, block, out)


@settings(max_examples=60)
@given(c=_affine_case(), symmetric=st.booleans(), awq_zero=st.booleans())
def test_affine_gptq_and_awq_twins(c, symmetric, awq_zero):
    from refquant_backends.numba import affine as nba
    from refquant import affine as A
    x, bits, block = c
    s, z = A.choose_qparams_gptq(x, block, bits, symmetric)
    q = _same_or_same_error(A.quantize_gptq, nba.quantize_gptq, x, s, z, block, bits)
    if q is not None:
        _same_or_same_error(A.dequantize_gptq, nba.dequantize_gptq, q, s, z, block)
        _same_or_same_error(A.dequantize, nba.dequantize, q, s, z, block, "gptq")
    s, z = A.choose_qparams_awq(x, block, bits, awq_zero)
    q = _same_or_same_error(A.quantize_awq, nba.quantize_awq, x, s, z, block, bits)
    if q is not None:
        _same_or_same_error(A.dequantize_awq, nba.dequantize_awq, q, s, z, block)
    _same_or_same_error(A.quantize, nba.quantize, x, s, z, block, bits, "awq")


def test_affine_twin_refuses_what_the_spec_refuses():
    from refquant_backends.numba import affine as nba
    from refquant import affine as A
    x = np.ones((2, 32), np.float32)
    bad_scale = np.array([[1.0], [0.0]], np.float32)
    _same_or_same_error(A.quantize_torchao, nba.quantize_torchao, x, bad_scale, None, (1, 32), 4)
    _same_or_same_error(A.quantize_gptq, nba.quantize_gptq, x, np.ones((2, 1), np.float32), None, (1, 32), 9)
    _same_or_same_error(A.dequantize_awq, nba.dequantize_awq, np.full((2, 32), 300), np.ones((2, 1), np.float32),
                        None, (1, 32))
    _same_or_same_error(A.quantize, nba.quantize, x, np.ones((2, 1), np.float32), None, (1, 32), 4, "nope")


def _blocked_w4a16(a, w):
    """The order refquant_backends.numba.gemm states for W4A16 ("blocked"), emulated in NumPy float32:
    groups in increasing group number, each group's columns in increasing k summed sequentially
    as float32(a * (code - zero)), the group sum times its scale added to a sequential total."""
    F = np.float32
    out = np.empty((a.shape[0], w.codes.shape[0]), F)
    for m in range(a.shape[0]):
        tot = np.zeros(w.codes.shape[0], F)
        for g in range(w.scales.shape[1]):
            acc = np.zeros(w.codes.shape[0], F)
            for k in np.flatnonzero(w.g_idx == g):
                acc = acc + a[m, k] * (w.codes[:, k].astype(F) - w.zeros[:, g].astype(F))
            tot = tot + acc * w.scales[:, g]
        out[m] = tot
    return out


def _w4a16_weight(rng, N, G, ng, act_order):
    from refquant.gemm import W4A16Weight
    K = G * ng
    g_idx = (np.arange(K) // G).astype(np.int32)
    if act_order:
        g_idx = rng.permutation(g_idx).astype(np.int32)
    return W4A16Weight(rng.integers(0, 16, (N, K)).astype(np.uint8),
                       rng.random((N, ng)).astype(np.float32),
                       rng.integers(0, 16, (N, ng)).astype(np.uint8), g_idx)


def _as_bf16(x):
    import ml_dtypes
    return x.astype(ml_dtypes.bfloat16).astype(np.float32)


# Activation rows and whether the kernel's fused path may take them: float32 with full 24-bit
# significands (unfused path); float16 and bfloat16 values (fused); bfloat16 values beyond
# 2^100 or below 2^-100, where a fused product could overflow or a/16 lose bits (unfused).
ACTIVATIONS = {
    "float32": (lambda x: x, False),
    "float16": (lambda x: x.astype(np.float16).astype(np.float32), True),
    "bfloat16": (lambda x: _as_bf16(x * np.float32(2.0**60)), True),
    "bfloat16 beyond 2^100": (lambda x: _as_bf16(x * np.float32(2.0**110)), False),
    "bfloat16 below 2^-100": (lambda x: _as_bf16(x * np.float32(2.0**-110)), False),
}


@pytest.mark.parametrize("N,G,ng,M", [(1, 5, 3, 1), (3, 7, 2, 2), (513, 32, 3, 1), (1100, 6, 5, 2)])
@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("acts", list(ACTIVATIONS))
def test_w4a16_kernel_runs_the_stated_order(N, G, ng, M, act_order, acts):
    """The packed W4A16 kernel (several chunks of 128 outputs, a partial last chunk, odd N,
    groups of 5-32 columns, one or two rows), on its fused path and its unfused one, gives the
    bits of its stated order."""
    from refquant_backends.numba.gemm import _fusable, accumulation, w4a16_matmul
    rng = np.random.default_rng(N * 1000 + G)
    w = _w4a16_weight(rng, N, G, ng, act_order)
    cast, fused = ACTIVATIONS[acts]
    a = cast(rng.standard_normal((M, G * ng)).astype(np.float32))
    assert _fusable(a) == fused
    assert accumulation("matmul", "W4A16", G * ng, w) == dict(order="blocked", block=G)
    y = w4a16_matmul(a, w)
    assert np.array_equal(y.view(np.uint32), _blocked_w4a16(a, w).view(np.uint32))


def _fp16_values():
    """Every finite float16 value class: zeros, subnormals (down to 2^-24), normals up to 65504."""
    bits = st.integers(0, 0x7BFF) | st.sampled_from([0, 1, 0x3FF, 0x400, 0x7BFF])
    return st.tuples(bits, st.booleans()).map(
        lambda t: float(np.array([t[0] | (0x8000 if t[1] else 0)], np.uint16).view(np.float16)[0]))


@settings(max_examples=40)
@given(vals=st.lists(_fp16_values(), min_size=12, max_size=12), seed=st.integers(0, 2**32 - 1),
       bf16=st.booleans())
def test_w4a16_fused_path_matches_the_unfused_order(vals, seed, bf16):
    """The fused path's bits equal the order's product-then-add on float16 extremes (subnormals,
    65504, signed zeros) and on bfloat16 values over its whole fusable range."""
    from refquant_backends.numba.gemm import _fusable, w4a16_matmul
    rng = np.random.default_rng(seed)
    w = _w4a16_weight(rng, 37, 4, 3, True)
    a = np.array([vals], np.float32)
    if bf16:
        a = _as_bf16(a * np.float32(2.0 ** rng.integers(-76, 85)))   # 2^-24..65504 -> 2^-100..2^100
    assert _fusable(a)
    y = w4a16_matmul(a, w)
    assert np.array_equal(y.view(np.uint32), _blocked_w4a16(a, w).view(np.uint32))


def test_gemm_kernels_have_no_fma_and_no_fast_math():
    """As test_kernels_have_no_fma_and_no_fast_math, for the matmul kernels: no fast-math flag
    anywhere, and no fused multiply-add but the W4A16 kernel's explicit llvm.fma calls, on the
    path _fusable opens (its products exact, so fused and unfused give the same bits: the
    tests above). Its unfused path holds none: the same kernel compiled with that branch
    folded away has no fma."""
    from numba import njit
    from refquant_backends.numba import gemm as nbg
    from refquant import gemm
    rng = np.random.default_rng(1)
    a = rng.standard_normal((1, 64)).astype(np.float32)
    W = rng.standard_normal((4, 64)).astype(np.float32)
    nbg.w4a16_matmul(a, gemm.quantize_w4a16(W, 32))
    nbg.w8a8_matmul(a, gemm.quantize_w8a8_weight(W))
    nbg.fp8_matmul(a, gemm.quantize_fp8_weight(W), activation="per_token")
    flags, fused = FAST_MATH_FLAG, FUSED_ASM
    names = []
    for name, f in _kernels(nbg):
        for sig in f.signatures:
            ir = f.inspect_llvm(sig)
            assert not flags.search(ir), f"gemm.{name}: fast-math flag"
            assert "llvm.fmuladd" not in ir, f"gemm.{name}: contracted multiply-add"
            if name == "_w4a16":
                assert "llvm.fma.f32" in ir or "llvm.fma.v" in ir
                continue
            assert "llvm.fma." not in ir, f"gemm.{name}: fma in IR"
            assert not fused.search(f.inspect_asm(sig)), f"gemm.{name}: fused multiply-add in asm"
            names.append(name)
    assert {"_w8a8", "_fp8", "_quantize_int8_rows", "_quantize_fp8_rows"} <= set(names)

    # the unfused path alone: `fused` a compile-time False
    k = njit(fastmath=False, inline="always")(nbg._w4a16.py_func)
    plain = njit(fastmath=False)(lambda a1, a16, a256, a4096, pk, s, z, gs, gid, out:
                                 k(a1, a16, a256, a4096, False, pk, s, z, gs, gid, out))
    w = gemm.quantize_w4a16(W, 32)
    perm, pk, s, z, gs, gid, _ = nbg._prepack(w)
    out = np.empty((1, 4), np.float32)
    plain(a, a / 16, a / 256, a / 4096, pk, s, z, gs, gid, out)
    assert np.array_equal(out, nbg.w4a16_matmul(a, w))
    sig = plain.signatures[0]
    assert "llvm.fma" not in plain.inspect_llvm(sig) and not fused.search(plain.inspect_asm(sig))
