"""The conformance suite any backend runs: one Hypothesis property per (operation, key) it
claims, generated from the registry, refquant.ggml.dot and refquant.gemm. A format or scheme
that joins the spec is covered on every backend that claims it, with no new test code.

    from refquant.conformance.suite import case, check
    @given(data=st.data())
    def test(data):
        c = data.draw(case(op, key))
        check(backend, op, key, c)

Encode/decode, vec_dot and integer matmuls must be bit-exact; float-accumulating matmuls must
meet refquant.gemm's bound for the order the backend states (or the hard cap of any order).
"""
from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from ..backend import SPEC, operation_key
from ..registry import IMATRIX_NONE, get_format
from .strategies import (EXACT_MATMUL_KINDS, activations, float_rows, fp8_weights, importance, w4a16_weights,
                         w8a8_weights)


def _bits(a: np.ndarray) -> np.ndarray:
    return a.view(np.uint32) if a.dtype == np.float32 else a


@st.composite
def case(draw, op: str, key: str) -> dict:
    """Inputs for one (operation, key)."""
    key = operation_key(op, key)
    if op == "quantize":
        fmt = get_format(key)
        x = draw(float_rows(max(fmt.block_size, 32) if fmt.block_size == 1 else fmt.block_size))
        im = None
        if fmt.imatrix != IMATRIX_NONE and draw(st.booleans()):
            im = draw(importance(x.shape[1]))
        return {"x": x, "imatrix": im}
    if op == "dequantize":
        fmt = get_format(key)
        nblocks = draw(st.integers(1, 64))
        raw = draw(st.binary(min_size=nblocks * fmt.type_size, max_size=nblocks * fmt.type_size))
        rows = draw(st.sampled_from([d for d in (1, 2, 4) if nblocks % d == 0]))
        return {"data": np.frombuffer(raw, np.uint8).copy().reshape(rows, -1)}
    if op == "vec_dot":
        fmt = get_format(key)
        w = SPEC.quantize(draw(float_rows(fmt.block_size, max_rows=5)), fmt)
        K = w.shape[1] // fmt.type_size * fmt.block_size
        a = draw(float_rows(32, max_rows=3, min_blocks=K // 32, max_blocks=K // 32))
        return {"w": w, "a": a, "variant": draw(st.sampled_from(["ref", "x86"]))}
    if op == "matmul":
        if key == "W4A16":
            w = draw(w4a16_weights())
            return {"weight": w, "a": draw(activations(w.shape[1])), "options": {}}
        if key == "W8A8":
            w = draw(w8a8_weights())
            return {"weight": w, "a": draw(activations(w.shape[1], kinds=EXACT_MATMUL_KINDS)), "options": {}}
        if key == "FP8":
            w = draw(fp8_weights())
            return {"weight": w, "a": draw(activations(w.shape[1])),
                    "options": {"activation": draw(st.sampled_from(["none", "per_token"]))}}
    raise AssertionError(f"no conformance case for ({op}, {key})")


def check(backend, op: str, key: str, c: dict, accumulation: dict | None = None) -> None:
    """Assert that `backend` agrees with the spec on case `c`. `accumulation` (refquant.gemm.depth
    arguments) tightens the float bound to the backend's stated order; without it, the hard cap."""
    key = operation_key(op, key)
    if op == "quantize":
        ours = backend.quantize(c["x"], key, c["imatrix"])
        np.testing.assert_array_equal(ours, SPEC.quantize(c["x"], key, c["imatrix"]))
    elif op == "dequantize":
        ours = backend.dequantize(c["data"], key)
        np.testing.assert_array_equal(_bits(ours), _bits(SPEC.dequantize(c["data"], key)))
    elif op == "vec_dot":
        ours = backend.vec_dot(c["w"], key, c["a"], c["variant"])
        np.testing.assert_array_equal(_bits(ours), _bits(SPEC.vec_dot(c["w"], key, c["a"], c["variant"])))
    elif op == "matmul":
        from ..gemm import depth, get_scheme, within_bound
        sc = get_scheme(key)
        ours = backend.matmul(key, c["a"], c["weight"], **c["options"])
        if sc.exact:
            np.testing.assert_array_equal(_bits(ours), _bits(SPEC.matmul(key, c["a"], c["weight"], **c["options"])))
            return
        R, S = sc.reference(c["a"], c["weight"], **c["options"])
        K = c["a"].shape[1]
        h = depth(K=K, **accumulation) if accumulation else K
        ok = within_bound(ours, R, S, K, h=h, products=sc.products)
        if not ok.all():
            i = tuple(int(v) for v in np.argwhere(~ok)[0])
            raise AssertionError(f"{key}: Y{list(i)} = {ours[i]!r}, R = {R[i]!r}, S = {S[i]!r}: "
                                 f"|Y - R| = {abs(float(ours[i]) - R[i]):.3e} exceeds the bound (h={h})")
    else:
        raise AssertionError(op)
