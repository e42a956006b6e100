"""KV-cache schemes: the INT8/FP8 quantizers bit-exact with compressed-tensors (TENSOR,
ATTN_HEAD and TOKEN strategies), the llama.cpp cache types bit-exact with ggml, the error table
reported for every scheme, exact cases reproduced exactly, and attention from a quantized cache
checked against torch's scaled_dot_product_attention in float64."""
import ml_dtypes
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refquant import kvcache as KV
from refquant.errors import InputError
from refquant.registry import all_formats

import torch  # noqa: E402  (the oracles are in the test extra: a missing one is a failure, not a skip)

from tools.oracles import pytorch as pt  # noqa: E402


@st.composite
def caches(draw, max_heads=3, max_tokens=5, dims=(32, 64)):
    H = draw(st.integers(1, max_heads))
    T = draw(st.integers(1, max_tokens))
    D = draw(st.sampled_from(dims))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    scale = draw(st.sampled_from([1e-3, 1.0, 50.0]))
    k = (rng.standard_normal((H, T, D)) * scale).astype(np.float32)
    if draw(st.booleans()):  # an outlier channel, as real K caches have
        k[:, :, draw(st.integers(0, D - 1))] *= 30
    if draw(st.booleans()):
        k[draw(st.integers(0, H - 1))] = 0  # an all-zero head
    return k


@pytest.mark.parametrize("family", ["int", "float"])
@pytest.mark.parametrize("granularity", KV.GRANULARITIES)
@given(k=caches())
def test_int8_fp8_match_compressed_tensors(family, granularity, k):
    from compressed_tensors.quantization import QuantizationArgs
    from compressed_tensors.quantization.lifecycle.forward import dequantize, quantize
    from compressed_tensors.quantization.utils import calculate_qparams
    name = ("int8-" if family == "int" else "fp8-") + granularity
    enc = KV.quantize_kv(k, name)
    strategy = {"per-tensor": "tensor", "per-head": "attn_head", "per-token": "token"}[granularity]
    args = QuantizationArgs(num_bits=8, type=family, symmetric=True, strategy=strategy,
                            dynamic=(strategy == "token"))
    tk = torch.from_numpy(k)[None]  # (batch, heads, tokens, head_dim)
    dims = {"tensor": (0, 1, 2, 3), "attn_head": (0, 2, 3), "token": (3,)}[strategy]
    mn, mx = tk.amin(dim=dims, keepdim=True)[0], tk.amax(dim=dims, keepdim=True)[0]
    if strategy == "tensor":
        mn, mx = tk.amin(), tk.amax()
    ts, tz = calculate_qparams(mn, mx, args)
    codes, s = enc[0], enc[1]
    np.testing.assert_array_equal(s.reshape(-1).view(np.uint32), ts.reshape(-1).numpy().view(np.uint32))
    tq = quantize(tk, ts, tz, args, dtype=torch.int8 if family == "int" else torch.float8_e4m3fn)
    np.testing.assert_array_equal(codes.view(np.uint8), pt.to_numpy(tq)[0].view(np.uint8))
    td = dequantize(tq, ts, tz, args)
    np.testing.assert_array_equal(KV.dequantize_kv(enc, name).view(np.uint32), td[0].numpy().view(np.uint32))


@given(k=caches())
def test_llama_cpp_cache_rows_match_ggml(ggml, k):
    H, T, D = k.shape
    for name in KV.llama_cpp_cache_types():
        data = KV.quantize_kv(k, name)
        np.testing.assert_array_equal(data.reshape(H * T, -1), ggml.quantize(k.reshape(H * T, D), name))
        if name == "F32":  # ggml has no to_float for F32: the bytes are the floats
            np.testing.assert_array_equal(KV.dequantize_kv(data, name), k)
            continue
        np.testing.assert_array_equal(KV.dequantize_kv(data, name).reshape(H * T, D).view(np.uint32),
                                      ggml.dequantize(data.reshape(H * T, -1), name).view(np.uint32))


def test_cache_types_come_from_the_registry():
    registered = {f.name.upper() for f in all_formats()}
    types = KV.llama_cpp_cache_types()
    assert types == [t for t in KV.LLAMA_CPP_CACHE_TYPES if t in registered]
    assert {"F16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"} <= set(types)
    assert ("IQ4_NL" in types) == ("IQ4_NL" in registered)  # joins when it is registered


@given(k=caches(), v=caches(), hq_mult=st.sampled_from([1, 2]))
def test_error_is_reported_for_every_scheme(k, v, hq_mult):
    v = np.resize(v, k.shape).astype(np.float32)
    rng = np.random.default_rng(0)
    q = rng.standard_normal((k.shape[0] * hq_mult, 3, k.shape[2])).astype(np.float32)
    rows = KV.kv_error_table(q, k, v)
    assert [r["scheme"] for r in rows] == [s.name for s in KV.kv_schemes()]
    for r in rows:
        assert "error" not in r, r
        for c in ("k_max_abs", "v_max_abs", "scores_max_abs", "out_max_abs", "out_rel"):
            assert np.isfinite(r[c]) and r[c] >= 0, (r["scheme"], c, r[c])
    assert all(r["k_max_abs"] == 0 for r in rows if r["scheme"] == "F32")
    assert "scheme" in KV.format_table(rows)


def _exact_cache(name, rng, H=2, T=3, D=64):
    """A cache on the scheme's grid (or None where its rule has no such cache but zeros)."""
    e = int(rng.integers(-6, 6))
    if name.startswith("fp8-"):
        grid = np.arange(256, dtype=np.uint8).view(ml_dtypes.float8_e4m3fn).astype(np.float32)
        grid = grid[np.isfinite(grid)]
        k = rng.choice(grid, (H, T, D)).astype(np.float32)
        k[..., 0] = 448.0  # every token's, head's and the tensor's absmax: scale = 2^e exactly
        return np.ldexp(k, e).astype(np.float32)
    if name == "Q8_0":
        k = rng.integers(-127, 128, (H, T, D)).astype(np.float32)
        k[..., ::32] = 127.0  # each 32-block's absmax: d = 2^e exactly
        return np.ldexp(k, e).astype(np.float32)
    if name in ("Q4_0", "Q5_0"):
        m = 8 if name == "Q4_0" else 16
        k = rng.integers(-m, m, (H, T, D)).astype(np.float32)
        k[..., ::32] = -m  # the block's max-magnitude value -m: d = 2^e exactly
        return np.ldexp(k, e).astype(np.float32)
    if name in ("Q4_1", "Q5_1"):
        n = 15 if name == "Q4_1" else 31
        k = rng.integers(0, n + 1, (H, T, D)).astype(np.float32)
        k[..., ::32], k[..., 1::32] = 0, n  # min 0, max n: d = 2^e, m = 0
        return np.ldexp(k, e).astype(np.float32)
    if name == "IQ4_NL":
        # values on ggml's non-linear grid with each block's extreme at -127: the first candidate
        # scale fits exactly, no later one can do better, and d = 2^e
        grid = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], np.float32)
        k = rng.choice(grid, (H, T, D)).astype(np.float32)
        k[..., ::32] = -127.0
        return np.ldexp(k, e).astype(np.float32)
    if name in ("F32", "F16", "BF16"):
        return np.ldexp(rng.integers(-100, 100, (H, T, D)).astype(np.float32), e).astype(np.float32)
    return None


@pytest.mark.parametrize("name", [s.name for s in KV.kv_schemes()])
def test_exact_cases_reproduce_exactly(name):
    rng = np.random.default_rng(abs(hash(name)) % 2**32)
    zero = np.zeros((2, 3, 64), np.float32)
    assert (KV.dequantize_kv(KV.quantize_kv(zero, name), name) == 0).all()
    k = _exact_cache(name, rng)
    if k is None:
        # compressed-tensors' INT8 rule maps absmax to 127.5 (scale = absmax / 127.5), so no
        # non-zero cache sits on its grid; zeros are its exact case
        assert name.startswith("int8-")
        return
    kd = KV.dequantize_kv(KV.quantize_kv(k, name), name)
    np.testing.assert_array_equal(kd, k)
    q = rng.standard_normal((2, 4, 64)).astype(np.float32)
    row = KV.kv_error_table(q, k, k, [name])[0]
    assert row["k_max_abs"] == row["v_max_abs"] == row["scores_max_abs"] == row["out_max_abs"] == 0


def gamma(n, u=2.0**-53):
    return n * u / (1 - n * u)


@given(k=caches(dims=(64,)))
def test_attention_matches_torch_sdpa_float64(k):
    """The float64 attention the errors are measured with, against torch's
    scaled_dot_product_attention in float64 (GQA by repeating cache heads). Two float64
    evaluations in different orders may differ by what each may be off from the exact result,
    first order (Higham's gamma_n = n u / (1 - n u), u = 2^-53):
        score error      |ds| <= gamma(D + 4) * S,   S = max over (q, k) of sum_d |q_d k_d| / sqrt(D)
        softmax weights  relative error <= 4 |ds| + gamma(T + 4)
        output           error <= max|v| * (4 gamma(D + 4) S + gamma(2 T + 4))
    so the two differ by at most twice that."""
    H, T, D = k.shape
    rng = np.random.default_rng(int(abs(k).sum() * 1000) % 2**32)
    q = rng.standard_normal((2 * H, 2, D)).astype(np.float32)
    v = rng.standard_normal(k.shape).astype(np.float32)
    _, out = KV.attention(q, k, v)
    kk, vv = np.repeat(k, 2, 0), np.repeat(v, 2, 0)
    tq, tk, tv = (torch.from_numpy(a.astype(np.float64)) for a in (q, kk, vv))
    ref = torch.nn.functional.scaled_dot_product_attention(tq[None], tk[None], tv[None])[0].numpy()
    S = np.max(np.einsum("htd,hsd->hts", np.abs(q.astype(np.float64)), np.abs(kk.astype(np.float64)))) / np.sqrt(D)
    bound = 2 * np.abs(v).max() * (4 * gamma(D + 4) * S + gamma(2 * T + 4))
    assert np.max(np.abs(out - ref)) <= bound


def test_bad_input():
    k = np.zeros((2, 3, 64), np.float32)
    with pytest.raises(InputError, match="float32"):
        KV.quantize_kv(k.astype(np.float64), "Q8_0")
    with pytest.raises(InputError, match="heads, tokens, head_dim"):
        KV.quantize_kv(k[0], "Q8_0")
    bad = k.copy()
    bad[1, 2, 3] = np.nan
    with pytest.raises(InputError, match=r"\(1, 2, 3\)"):
        KV.quantize_kv(bad, "int8-per-head")
    with pytest.raises(InputError, match="head_dim 48 is not a multiple"):
        KV.quantize_kv(np.zeros((1, 1, 48), np.float32), "Q4_0")
    with pytest.raises(Exception, match="unknown KV-cache scheme"):
        KV.get_scheme("Q3_K_XL")
    rows = KV.kv_error_table(np.ones((1, 1, 48), np.float32), np.ones((1, 2, 48), np.float32),
                             np.ones((1, 2, 48), np.float32), ["Q8_0", "fp8-per-head"])
    assert "error" in rows[0] and "error" not in rows[1]
    with pytest.raises(InputError, match="query heads"):
        KV.kv_error_table(np.ones((3, 1, 64), np.float32), k, k)
