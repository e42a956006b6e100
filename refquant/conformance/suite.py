"""The conformance suite: any backend against the spec, generated from the format registry,
refquant.ggml.dot and refquant.gemm. A format or scheme that joins the spec is covered on every
backend that claims it, with no new test code.

For every (operation, key) the spec defines, a backend either claims it — and is then run on
Hypothesis-generated inputs and compared with the spec — or does not, and the spec is what
callers get. Encode/decode, vec_dot and integer matmuls must be bit-exact; float-accumulating
matmuls must meet refquant.gemm's bound for the order the backend states
(`Backend.accumulation`), or the hard cap of any order. A quantize/dequantize failure is
reported with the smallest failing block and a snippet that reproduces it.

    from refquant.conformance.suite import run
    report = run("numba", max_examples=100, seed=0)
    print(report.matrix())

Single properties, for a backend's own tests:

    @given(data=st.data())
    def test(data):
        c = data.draw(case(op, key))
        check(backend, op, key, c)
"""
from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import seed as hseed
from hypothesis import strategies as st

from ..backend import SPEC, Backend, get_backend, operation_key, operation_keys
from ..errors import RefquantError
from ..ggml.layout import first_difference
from ..registry import IMATRIX_NONE, Format, all_formats, get_format
from .strategies import (EXACT_MATMUL_KINDS, MATMUL_KINDS, activations, float_rows, fp8_weights, importance, tie_grids_for,
                         w4a16_weights, w8a8_weights)

EXACT, BOUND, FAIL, NOT_CLAIMED, ERROR = "exact", "within bound", "FAIL", "not claimed", "ERROR"

# (operation label, backend operation, uses an importance matrix)
CHECKS = (("quantize", "quantize", False), ("quantize+imatrix", "quantize", True), ("dequantize", "dequantize", False))
COLUMNS = tuple(c for c, _, _ in CHECKS) + ("vec_dot", "matmul")


@dataclass
class Failure:
    fmt: str
    check: str
    message: str
    snippet: str


@dataclass
class Report:
    backend: str
    results: dict = field(default_factory=dict)   # (format, check) -> status
    failures: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(s in (FAIL, ERROR) for s in self.results.values())

    def matrix(self) -> str:
        fmts = sorted({f for f, _ in self.results}, key=_format_order)
        cols = [c for c in COLUMNS if any(k == c for _, k in self.results)]
        w = max([len(f) for f in fmts] + [6])
        lines = [f"conformance of backend {self.backend!r} against the spec",
                 f"{'format':<{w}}  " + "  ".join(f"{c:<16}" for c in cols)]
        for f in fmts:
            lines.append(f"{f:<{w}}  " + "  ".join(f"{self.results.get((f, c), '-'):<16}" for c in cols))
        n = {s: sum(1 for v in self.results.values() if v == s) for s in (EXACT, BOUND, FAIL, ERROR, NOT_CLAIMED)}
        lines.append(f"\n{n[EXACT]} exact, {n[BOUND]} within bound, {n[FAIL]} failed, {n[ERROR]} errors, "
                     f"{n[NOT_CLAIMED]} not claimed")
        for fl in self.failures:
            lines.append(f"\nFAIL {fl.fmt} {fl.check}: {fl.message}\nreproduce with:\n{textwrap.indent(fl.snippet, '    ')}")
        return "\n".join(lines)


def _format_order(name):
    order = {f.name: i for i, f in enumerate(all_formats())}
    return order.get(name, 1 << 30), name


def _array_literal(a: np.ndarray) -> str:
    if a.dtype == np.float32:
        # exact: float32 values written by their bit patterns
        return f"np.array({a.view(np.uint32).tolist()}, dtype=np.uint32).view(np.float32).reshape({a.shape})"
    return f"np.array({a.tolist()}, dtype=np.{a.dtype}).reshape({a.shape})"


def _first_bad_block(ours: np.ndarray, theirs: np.ndarray, unit: int) -> int:
    a = ours.reshape(-1, unit)
    b = theirs.reshape(-1, unit)
    if a.dtype == np.float32:
        bad = np.any(a.view(np.uint32) != b.view(np.uint32), axis=1)
    else:
        bad = np.any(a != b, axis=1)
    return int(np.argmax(bad))


def _check_quantize(backend: Backend, ref: str, fmt: Format, with_imatrix: bool, max_examples: int, seed: int):
    found = {}

    @hseed(seed)
    @settings(max_examples=max_examples, deadline=None, database=None, derandomize=False,
              suppress_health_check=list(HealthCheck))
    @given(data=st.data())
    def prop(data):
        x = data.draw(float_rows(fmt.block_size, max_rows=2, max_blocks=4 if fmt.block_size <= 32 else 2,
                                 tie_grids=tie_grids_for(fmt.name)))
        im = data.draw(importance(x.shape[1])) if with_imatrix else None
        if im is None and fmt.needs_imatrix:
            im = np.ones(x.shape[1], np.float32)
        try:
            want = SPEC.quantize(x, fmt, im)
        except RefquantError:
            # an input the spec refuses (where ggml aborts): the backend must refuse it too
            try:
                backend.quantize(x, fmt, im)
            except RefquantError:
                return
            raise AssertionError(f"{fmt.name}: the backend accepted an input the spec refuses") from None
        got = backend.quantize(x, fmt, im)
        if got.shape != want.shape or got.dtype != want.dtype or not np.array_equal(got, want):
            found["case"] = (x, im, got, want)
            raise AssertionError("mismatch")

    try:
        prop()
        return EXACT, None
    except Exception as e:  # noqa: BLE001 - every failure becomes a report line
        if "case" not in found:
            return ERROR, Failure(fmt.name, "quantize", f"{type(e).__name__}: {e}", "")
    x, im, got, want = found["case"]
    if got.shape != want.shape or got.dtype != want.dtype:
        return FAIL, Failure(fmt.name, "quantize", f"returned {got.dtype}{got.shape}, expected {want.dtype}{want.shape}", "")
    # narrow the failure to one block, run alone (whole rows when the imatrix path needs the row)
    blk = _first_bad_block(got, want, fmt.type_size)
    nb = x.shape[1] // fmt.block_size
    row, col = divmod(blk, nb)
    xs, ims = x[row:row + 1], im
    if im is None:
        single = x.reshape(-1, fmt.block_size)[blk:blk + 1]
        if not np.array_equal(backend.quantize(single, fmt), SPEC.quantize(single, fmt)):
            xs, col = single, 0
    w0, g0 = SPEC.quantize(xs, fmt, ims), backend.quantize(xs, fmt, ims)
    at = col * fmt.type_size
    msg = (f"block {col} of a {xs.shape[0]}x{xs.shape[1]} input: bytes {g0.reshape(-1)[at:at + fmt.type_size].tolist()} "
           f"where the spec gives {w0.reshape(-1)[at:at + fmt.type_size].tolist()}")
    if fmt.layout is not None:   # the field and element first differing, by the declared layout
        msg = f"{first_difference(fmt.layout, g0, w0)}; {msg}"
    im_arg = "" if ims is None else f", imatrix=im"
    snippet = "\n".join([
        "import numpy as np, refquant",
        f"x = {_array_literal(xs)}",
        *([f"im = {_array_literal(ims)}"] if ims is not None else []),
        f"ours = refquant.get_backend({ref!r}).quantize(x, {fmt.name!r}{im_arg})",
        f"spec = refquant.quantize(x, {fmt.name!r}{im_arg})",
        "print(np.flatnonzero(ours != spec))",
    ])
    return FAIL, Failure(fmt.name, "quantize+imatrix" if with_imatrix else "quantize", msg, snippet)


def _refuses_alike(ours, spec, *args):
    """Bytes the spec refuses (non-finite scales some formats reject) must be refused by the
    backend too: returns True when both refuse, None when the spec accepts, raises otherwise."""
    try:
        spec(*args)
        return None
    except RefquantError:
        pass
    try:
        ours(*args)
    except RefquantError:
        return True
    raise AssertionError("the backend accepted bytes the spec refuses")


def _check_dequantize(backend: Backend, ref: str, fmt: Format, max_examples: int, seed: int):
    found = {}

    @hseed(seed)
    @settings(max_examples=max_examples, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(data=st.data())
    def prop(data):
        nblocks = data.draw(st.integers(1, 8))
        raw = None
        if fmt.can_quantize and data.draw(st.booleans()):
            # bytes a quantizer writes (realistic scales) ...
            x = data.draw(float_rows(fmt.block_size, max_rows=1, max_blocks=nblocks))
            try:
                raw = SPEC.quantize(x, fmt, np.ones(x.shape[1], np.float32) if fmt.needs_imatrix else None).reshape(-1)
            except RefquantError:
                raw = None  # an input the quantizer refuses: take arbitrary bytes instead
        if raw is None:
            # ... or any bytes at all (NaN/inf scales, every code)
            raw = np.frombuffer(data.draw(st.binary(min_size=nblocks * fmt.type_size,
                                                    max_size=nblocks * fmt.type_size)), np.uint8).copy()
        if _refuses_alike(backend.dequantize, SPEC.dequantize, raw, fmt) is not None:
            return
        want = SPEC.dequantize(raw, fmt)
        got = backend.dequantize(raw, fmt)
        if got.shape != want.shape or got.dtype != want.dtype or not np.array_equal(
                got.view(np.uint32), want.view(np.uint32)):
            found["case"] = (raw, got, want)
            raise AssertionError("mismatch")

    try:
        prop()
        return EXACT, None
    except Exception as e:  # noqa: BLE001
        if "case" not in found:
            return ERROR, Failure(fmt.name, "dequantize", f"{type(e).__name__}: {e}", "")
    raw, got, want = found["case"]
    if got.shape != want.shape or got.dtype != want.dtype:
        return FAIL, Failure(fmt.name, "dequantize", f"returned {got.dtype}{got.shape}, expected {want.dtype}{want.shape}", "")
    blk = _first_bad_block(got.reshape(-1), want.reshape(-1), fmt.block_size)
    block = raw.reshape(-1, fmt.type_size)[blk:blk + 1].reshape(-1).copy()
    g1, w1 = backend.dequantize(block, fmt), SPEC.dequantize(block, fmt)
    if np.array_equal(g1.view(np.uint32), w1.view(np.uint32)):
        block = raw  # fails only in context: report the whole input
        g1, w1 = got, want
    diff = np.flatnonzero(g1.view(np.uint32) != w1.view(np.uint32))
    i = int(diff[0])
    msg = f"element {i} of a {block.size}-byte input decodes to {float(g1[i])!r}, the spec gives {float(w1[i])!r}"
    snippet = "\n".join([
        "import numpy as np, refquant",
        f"data = {_array_literal(block)}",
        f"ours = refquant.get_backend({ref!r}).dequantize(data, {fmt.name!r})",
        f"spec = refquant.dequantize(data, {fmt.name!r})",
        "print(np.flatnonzero(ours.view(np.uint32) != spec.view(np.uint32)))",
    ])
    return FAIL, Failure(fmt.name, "dequantize", msg, snippet)


def run(backend, max_examples: int = 100, seed: int = 0, formats: Optional[list[str]] = None,
        checks: Optional[list[str]] = None) -> Report:
    """Run every check the registry generates against `backend` (a name, a 'module:object' path
    or a Backend)."""
    be = get_backend(backend) if not isinstance(backend, Backend) else backend
    ref = backend if isinstance(backend, str) else be.name  # how the snippets name it
    report = Report(ref)
    wanted = None if formats is None else {f.upper() for f in formats}
    for fmt in all_formats():
        if wanted is not None and fmt.name not in wanted:
            continue
        for label, op, with_im in CHECKS:
            if checks is not None and label not in checks:
                continue
            possible = fmt.can_quantize if op == "quantize" else fmt.can_dequantize
            if with_im and fmt.imatrix == IMATRIX_NONE:
                possible = False
            if not possible:
                continue
            if not be.supports(op, fmt):
                report.results[(fmt.name, label)] = NOT_CLAIMED
                continue
            if op == "quantize":
                status, failure = _check_quantize(be, ref, fmt, with_im, max_examples, seed)
            else:
                status, failure = _check_dequantize(be, ref, fmt, max_examples, seed)
            report.results[(fmt.name, label)] = status
            if failure is not None:
                failure.check = label
                report.failures.append(failure)
    for op in ("vec_dot", "matmul"):
        if checks is not None and op not in checks:
            continue
        for key in operation_keys(op):
            if wanted is not None and key not in wanted:
                continue
            if not be.supports(op, key):
                report.results[(key, op)] = NOT_CLAIMED
                continue
            status, failure = _check_operation(be, op, key, max_examples, seed)
            report.results[(key, op)] = status
            if failure is not None:
                report.failures.append(failure)
    return report


def _check_operation(backend: Backend, op: str, key: str, max_examples: int, seed: int):
    """vec_dot and matmul: `check` on `case` inputs, at the accumulation order the backend states."""
    @hseed(seed)
    @settings(max_examples=max_examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(data=st.data())
    def prop(data):
        c = data.draw(case(op, key))
        acc = None
        if op == "matmul" and not _scheme_exact(key):
            acc = backend.accumulation(op, key, c["a"].shape[1], c["weight"])
        check(backend, op, key, c, accumulation=acc)

    try:
        prop()
    except AssertionError as e:
        return FAIL, Failure(key, op, str(e).strip().splitlines()[0][:500], "")
    except Exception as e:  # noqa: BLE001
        return ERROR, Failure(key, op, f"{type(e).__name__}: {e}", "")
    return (EXACT if op == "vec_dot" or _scheme_exact(key) else BOUND), None


def _scheme_exact(key: str) -> bool:
    from ..gemm import get_scheme
    return get_scheme(key).exact


# ----------------------------------------------------------- single properties

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
        if fmt.needs_imatrix or (fmt.imatrix != IMATRIX_NONE and draw(st.booleans())):
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
        big = fmt.block_size > 32     # super-blocks of 256: fewer, or the draw overruns
        from ..ggml.dot import IQ1, LATTICE
        if fmt.name in LATTICE or fmt.name in IQ1:   # grid searches: an importance matrix, inputs they accept
            x = draw(float_rows(256, max_rows=2, max_blocks=2, kinds=MATMUL_KINDS))
            w = SPEC.quantize(x, fmt, draw(importance(x.shape[1])))
        else:
            w = SPEC.quantize(draw(float_rows(fmt.block_size, max_rows=2 if big else 5, max_blocks=2 if big else 4)), fmt)
        K = w.shape[1] // fmt.type_size * fmt.block_size
        bs = draw(st.sampled_from([32, fmt.block_size]))
        a = draw(float_rows(bs, max_rows=2 if big else 3, min_blocks=K // bs, max_blocks=K // bs))
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
        try:
            want = SPEC.quantize(c["x"], key, c["imatrix"])
        except RefquantError:  # where ggml aborts, the spec refuses: so must the backend
            try:
                backend.quantize(c["x"], key, c["imatrix"])
            except RefquantError:
                return
            raise AssertionError(f"{key}: the backend accepted an input the spec refuses") from None
        np.testing.assert_array_equal(backend.quantize(c["x"], key, c["imatrix"]), want)
    elif op == "dequantize":
        if _refuses_alike(backend.dequantize, SPEC.dequantize, c["data"], key) is not None:
            return
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
