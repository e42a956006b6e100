"""The conformance suite: any backend against the spec, generated from the format registry,
refquant.ggml.dot and refquant.gemm. A format or scheme that joins the spec is covered on every
backend that claims it, with no new test code.

Every (operation, key) the spec defines has paths (refquant.backend.operation_paths): quantize
without and with an importance matrix (and per extra search: IQ1_M's "prefix-sums"), dequantize,
vec_dot per activation variant, matmul per option value. A path the backend claims runs, in
this order (refquant.conformance.cases):

1. the edge catalog of its format (level 1 by default, 2 for deep runs);
2. the shape ladder (rows 1..65 x blocks 1..33 within the format's cost budget, a realistic
   matrix; M x N x K past every tile for vec_dot and matmul; act-order permutations);
3. non-contiguous inputs (a row stride, a Fortran-ordered view, an odd byte offset, a read-only
   array), compared with the spec on a contiguous copy;
4. with one thread, for backends that declare `threaded` (the rest runs with all of them);
5. Hypothesis examples, which shrink a failure to its smallest input.

Encode/decode, vec_dot and integer matmuls must be bit-exact in every element; float-accumulating
matmuls must meet refquant.gemm's bound for the order the backend states
(`Backend.accumulation`), or the hard cap of any order. A claimed path whose result the spec's
own row function computed is reported "spec ran", not exact; a backend that writes into its
input fails. Unclaimed paths are "not claimed": callers get the spec there.

    from refquant.conformance.suite import run
    report = run("numba", level=1)
    print(report.matrix())

Every failure comes with a reproducer that runs as printed. `run(..., shard=(i, n))` runs the
i-th of n disjoint parts of the case list (`Report.merge` joins them into the whole matrix);
`case_list` and `run_cases` hand the cases to any scheduler one by one.

Single properties, for a backend's own tests:

    @given(data=st.data())
    def test(data):
        c = data.draw(case(op, key))
        check(backend, op, key, c)
"""
from __future__ import annotations

import sys
import textwrap
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import seed as hseed
from hypothesis import strategies as st

from ..backend import (SPEC, Backend, Path, backend_reference, get_backend, operation_key, operation_keys,
                       operation_paths)
from ..errors import RefquantError
from ..ggml.layout import first_difference
from ..registry import IMATRIX_NONE, Format, all_formats, get_format
from . import cases as fixed
from .strategies import (EXACT_MATMUL_KINDS, MATMUL_KINDS, activations, float_rows, fp8_weights, importance, tie_grids_for,
                         w4a16_weights, w8a8_weights)

EXACT, BOUND, FAIL, NOT_CLAIMED, ERROR, SPEC_RAN = "exact", "within bound", "FAIL", "not claimed", "ERROR", "spec ran"
# a cell takes its worst case
SEVERITY = {EXACT: 0, BOUND: 1, SPEC_RAN: 2, ERROR: 3, FAIL: 4}
OPERATIONS_ORDER = ("quantize", "dequantize", "vec_dot", "matmul")
DEFAULT_MAX_EXAMPLES = 20

# kept for callers of the earlier column names
CHECKS = (("quantize", "quantize", False), ("quantize+imatrix", "quantize", True), ("dequantize", "dequantize", False))


@dataclass
class Failure:
    fmt: str          # the key: format or scheme
    check: str        # the path label
    message: str
    snippet: str
    case: str = ""


@dataclass
class Report:
    backend: str
    results: dict = field(default_factory=dict)   # (key, path) -> status
    failures: list = field(default_factory=list)
    cases: dict = field(default_factory=dict)     # (key, path) -> cases run
    level: int = 1
    shard: Optional[tuple] = None

    @property
    def ok(self) -> bool:
        return not any(s in (FAIL, ERROR, SPEC_RAN) for s in self.results.values())

    def _set(self, cell, status):
        old = self.results.get(cell)
        if old is None or old == NOT_CLAIMED or SEVERITY.get(status, -1) > SEVERITY.get(old, -1):
            self.results[cell] = status

    def merge(self, other: "Report") -> "Report":
        """The union of two shards' reports: each cell its worst status, cases added up."""
        out = Report(self.backend, dict(self.results), list(self.failures), dict(self.cases), self.level, None)
        for cell, st_ in other.results.items():
            if st_ == NOT_CLAIMED and cell in out.results:
                continue
            out._set(cell, st_)
        out.failures += other.failures
        for cell, n in other.cases.items():
            out.cases[cell] = out.cases.get(cell, 0) + n
        return out

    def matrix(self) -> str:
        keys = sorted({k for k, _ in self.results}, key=_key_order)
        cols = sorted({p for _, p in self.results}, key=_path_order)
        w = max([len(k) for k in keys] + [6])
        cws = [max(len(c), 12) for c in cols]
        title = f"conformance of backend {self.backend!r} against the spec (level {self.level}"
        title += f", shard {self.shard[0]}/{self.shard[1]})" if self.shard else ")"
        lines = [title, (f"{'key':<{w}}  " + "  ".join(f"{c:<{cw}}" for c, cw in zip(cols, cws))).rstrip()]
        for k in keys:
            lines.append((f"{k:<{w}}  " + "  ".join(f"{self.results.get((k, c), '-'):<{cw}}"
                                                    for c, cw in zip(cols, cws))).rstrip())
        n = {s: sum(1 for v in self.results.values() if v == s) for s in (EXACT, BOUND, FAIL, ERROR, SPEC_RAN, NOT_CLAIMED)}
        lines.append(f"\n{n[EXACT]} exact, {n[BOUND]} within bound, {n[FAIL]} failed, {n[ERROR]} errors, "
                     f"{n[SPEC_RAN]} claimed but the spec ran, {n[NOT_CLAIMED]} not claimed; "
                     f"{sum(self.cases.values())} cases run")
        for fl in self.failures:
            where = f" [{fl.case}]" if fl.case else ""
            lines.append(f"\nFAIL {fl.fmt} {fl.check}{where}: {fl.message}")
            if fl.snippet:
                lines.append(f"reproduce with:\n{textwrap.indent(fl.snippet, '    ')}")
        return "\n".join(lines)


def _key_order(name):
    order = {f.name: i for i, f in enumerate(all_formats())}
    return order.get(name, 1 << 30), name


def _path_order(label):
    """quantize, quantize+imatrix, then their extra searches; dequantize; vec_dot; matmul."""
    op = label.split("+")[0].split("[")[0]
    return OPERATIONS_ORDER.index(op), op == "quantize" and "[" in label, label


def plan(backend: Backend = None, formats=None, checks=None, paths=None) -> list[tuple[str, Path]]:
    """Every (key, path) the spec defines, filtered by `formats` (keys), `checks` (path labels or
    operation names) and `paths` (path labels only), in the order the suite runs them."""
    wanted = None if formats is None else {f.upper() for f in formats}
    out = []
    for op in OPERATIONS_ORDER:
        for key in operation_keys(op):
            if wanted is not None and key.upper() not in wanted:
                continue
            for p in operation_paths(op, key):
                if checks is not None and p.label not in checks and p.op not in checks:
                    continue
                if paths is not None and p.label not in paths:
                    continue
                out.append((key, p))
    out.sort(key=lambda kp: (_key_order(kp[0]), _path_order(kp[1].label)))
    return out


def merge_shards(reports: list, threaded: bool = False) -> Report:
    """The reports of shards 0..n-1 as the one report an unsharded run gives: each cell its worst
    status, cases added up, and each failing path's failure the one of its first failing case in
    the run's case order, with the cases up to it (an unsharded run stops a path there)."""
    out = reports[0]
    for r in reports[1:]:
        out = out.merge(r)
    first = {}
    for fl in out.failures:
        ids = fixed.case_ids(fl.check, fl.fmt, out.level, threaded) + ["hypothesis"]
        rank = ids.index(fl.case) if fl.case in ids else len(ids)
        if (fl.fmt, fl.check) not in first or rank < first[(fl.fmt, fl.check)][0]:
            first[(fl.fmt, fl.check)] = (rank, fl)
    out.failures = [fl for _, fl in sorted(first.values(), key=lambda rf: (_key_order(rf[1].fmt),
                                                                            _path_order(rf[1].check)))]
    for cell, (rank, _) in first.items():
        out.cases[cell] = rank + 1            # the cases the unsharded run ran before it stopped
    out.shard = None
    return out


def parse_shard(text: str) -> tuple[int, int]:
    """"I/N" -> (I, N), 0 <= I < N."""
    try:
        i, n = (int(v) for v in str(text).split("/"))
    except ValueError:
        raise RefquantError(f"--shard must be I/N with integers, got {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise RefquantError(f"--shard I/N needs 0 <= I < N, got {text!r}")
    return i, n


def run(backend, max_examples: int = DEFAULT_MAX_EXAMPLES, seed: int = 0, formats: Optional[list[str]] = None,
        checks: Optional[list[str]] = None, level: int = 1, shard: Optional[tuple] = None,
        fixed_cases: bool = True, paths: Optional[list[str]] = None) -> Report:
    """Run every check the registry generates against `backend` (a name, a 'module:object' path,
    a './file.py:object' path or a Backend). shard=(i, n): only the cases of part i of n."""
    be = get_backend(backend) if not isinstance(backend, Backend) else backend
    ref = backend_reference(backend)
    report = Report(ref or be.name, level=level, shard=tuple(shard) if shard else None)
    if be.threaded:
        be.set_num_threads(be.max_threads())
    for key, path in plan(be, formats, checks, paths):
        cell = (key, path.label)
        if not be.runs(path.label, key):
            report.results[cell] = NOT_CLAIMED
            continue
        ids = (fixed.case_ids(path.label, key, level, be.threaded) if fixed_cases else []) + ["hypothesis"]
        for cid in ids:
            if shard and fixed.shard_of(key, path.label, cid, shard[1]) != shard[0]:
                continue
            status, failure = run_case(be, ref, path, key, cid, max_examples, seed)
            report._set(cell, status)
            report.cases[cell] = report.cases.get(cell, 0) + 1
            if failure is not None:
                report.failures.append(failure)
            if status in (FAIL, ERROR, SPEC_RAN):
                break   # one reproducer per path; the rest of its cases would repeat it
    return report


def case_list(backend, formats=None, checks=None, level: int = 1, paths=None) -> list[tuple[str, str, str]]:
    """Every (key, path label, case id) a run of `backend` checks, in order: the unit a scheduler
    hands out (`run_cases` runs any subset; the reports of disjoint subsets merge)."""
    be = get_backend(backend) if not isinstance(backend, Backend) else backend
    out = []
    for key, path in plan(be, formats, checks, paths):
        if be.runs(path.label, key):
            out += [(key, path.label, cid) for cid in fixed.case_ids(path.label, key, level, be.threaded) + ["hypothesis"]]
    return out


def run_cases(backend, cases, max_examples: int = DEFAULT_MAX_EXAMPLES, seed: int = 0, level: int = 1) -> Report:
    """Run the given (key, path label, case id) triples of `case_list` -> a Report of those cells."""
    be = get_backend(backend) if not isinstance(backend, Backend) else backend
    ref = backend_reference(backend)
    report = Report(ref or be.name, level=level)
    if be.threaded:
        be.set_num_threads(be.max_threads())
    for key, label, cid in cases:
        status, failure = run_case(be, ref, path_of(label, key), key, cid, max_examples, seed)
        report._set((key, label), status)
        report.cases[(key, label)] = report.cases.get((key, label), 0) + 1
        if failure is not None:
            report.failures.append(failure)
    return report


def run_case(be: Backend, ref: Optional[str], path: Path, key: str, case_id: str, max_examples: int = 20,
             seed: int = 0):
    """One case of one path -> (status, Failure or None)."""
    if case_id == "hypothesis":
        return _run_hypothesis(be, ref, path, key, max_examples, seed)
    try:
        c = fixed.build(path.label, key, case_id)
    except Exception as e:  # noqa: BLE001
        return ERROR, Failure(key, path.label, f"building the case failed: {type(e).__name__}: {e}", "", case_id)
    threads = c.pop("threads")
    try:
        if threads is not None and be.threaded:
            be.set_num_threads(threads)
        status, detail = compare(be, path, key, c)
    finally:
        if threads is not None and be.threaded:
            be.set_num_threads(be.max_threads())
    if detail is None:
        return status, None
    return status, Failure(key, path.label, detail, _fixed_snippet(ref, path, key, case_id, threads), case_id)


# ------------------------------------------------------------------ comparing one input

class _Watch:
    """Records whether the spec's own row function for (op, key) computed a result while the
    backend ran: patched on the format record (or scheme) and in its module."""

    def __init__(self, op: str, key: str):
        self.op, self.key, self.calls, self._undo = op, key, 0, []

    def _wrap(self, fn):
        def watched(*a, **k):
            out = fn(*a, **k)
            self.calls += 1
            return out
        return watched

    def _patch(self, obj, attr, fn):
        old = getattr(obj, attr)
        w = self._wrap(fn)
        if isinstance(obj, type(sys)):
            setattr(obj, attr, w)
            self._undo.append(lambda: setattr(obj, attr, old))
        else:
            object.__setattr__(obj, attr, w)
            self._undo.append(lambda: object.__setattr__(obj, attr, old))

    def __enter__(self):
        if self.key is None:
            return self
        if self.op in ("quantize", "dequantize"):
            fmt = get_format(self.key)
            fn = getattr(fmt, f"{self.op}_rows")
            mod = sys.modules.get(getattr(fn, "__module__", ""), None)
            name = getattr(fn, "__name__", None)
            self._patch(fmt, f"{self.op}_rows", fn)
            if mod is not None and name and getattr(mod, name, None) is fn:
                self._patch(mod, name, fn)
        elif self.op == "vec_dot":
            from ..ggml import dot
            self._patch(dot, "vec_dot", dot.vec_dot)
        elif self.op == "matmul":
            from ..gemm import SCHEMES
            sc = SCHEMES[self.key]
            self._patch(sc, "matmul", sc.matmul)
        return self

    def __exit__(self, *exc):
        for undo in reversed(self._undo):
            undo()
        return False


def _watched(be: Backend) -> bool:
    """The spec (the base class itself) runs its own row functions: only others are watched."""
    return type(be) is not Backend


def _call(be: Backend, path: Path, key: str, c: dict, contiguous: bool = False):
    cc = (lambda a: np.ascontiguousarray(a)) if contiguous else (lambda a: a)
    if path.op == "quantize":
        return be.quantize(cc(c["x"]), key, c["imatrix"], search=c.get("search"))
    if path.op == "dequantize":
        return be.dequantize(cc(c["data"]), key)
    if path.op == "vec_dot":
        return be.vec_dot(cc(c["w"]), key, cc(c["a"]), c["variant"])
    return be.matmul(key, cc(c["a"]), c["weight"], **c["options"])


_SPLIT = {"quantize": "x", "dequantize": "data", "vec_dot": "a", "matmul": "a"}


def _snapshot(c: dict) -> dict:
    return {k: v.tobytes() for k, v in c.items() if isinstance(v, np.ndarray)}


def compare(be: Backend, path: Path, key: str, c: dict):
    """Run one input through the backend and the spec -> (status, None) or (FAIL/ERROR/SPEC_RAN,
    message). Where the spec refuses a multi-row input, the rows are compared in halves, so one
    refused row does not hide the others."""
    try:
        with np.errstate(all="ignore"):
            want = _call(SPEC, path, key, c, contiguous=True)
    except RefquantError:
        name = _SPLIT[path.op]
        rows = c[name].shape[0]
        if rows > 1:
            h = rows // 2
            worst = (EXACT, None)
            for part in (slice(0, h), slice(h, rows)):
                sub = dict(c, **{name: c[name][part]})
                r = compare(be, path, key, sub)
                if SEVERITY[r[0]] > SEVERITY[worst[0]]:
                    worst = r
            return worst
        try:
            _call(be, path, key, c)
        except RefquantError:
            return EXACT, None
        except Exception as e:  # noqa: BLE001
            return ERROR, f"the spec refuses this input; the backend raised {type(e).__name__}: {e}"
        return FAIL, "the backend accepted an input the spec refuses"
    before = _snapshot(c)
    try:
        with _Watch(path.op, key if _watched(be) else None) as watch, np.errstate(all="ignore"):
            got = _call(be, path, key, c)
    except RefquantError as e:
        return FAIL, f"the backend refused an input the spec accepts: {e}"
    except Exception as e:  # noqa: BLE001
        return ERROR, f"{type(e).__name__}: {e}"
    if _snapshot(c) != before:
        return FAIL, "the backend wrote into its input"
    got = np.asarray(got)
    if got.shape != want.shape or got.dtype != want.dtype:
        return FAIL, f"returned {got.dtype}{got.shape}, expected {want.dtype}{want.shape}"
    if path.op == "matmul":
        from ..gemm import depth, get_scheme, within_bound
        sc = get_scheme(key)
        if not sc.exact:
            R, S = sc.reference(np.ascontiguousarray(c["a"]), c["weight"], **c["options"])
            K = c["a"].shape[1]
            acc = be.accumulation("matmul", key, K, c["weight"])
            h = depth(K=K, **acc) if acc else K
            ok = within_bound(got, R, S, K, h=h, products=sc.products)
            if not ok.all():
                i = tuple(int(v) for v in np.argwhere(~ok)[0])
                return FAIL, (f"Y{list(i)} = {got[i]!r}, R = {R[i]!r}, S = {S[i]!r}: |Y - R| = "
                              f"{abs(float(got[i]) - R[i]):.3e} exceeds the bound (h={h})")
            return (SPEC_RAN, "the spec's matmul computed the result") if watch.calls else (BOUND, None)
    gb, wb = _bits(got), _bits(want)
    if not np.array_equal(gb, wb):
        return FAIL, _difference(path, key, got, want)
    if watch.calls:
        return SPEC_RAN, f"claimed, but the spec's {path.op} row function computed the result"
    return EXACT, None


def _bits(a: np.ndarray) -> np.ndarray:
    if a.dtype == np.float32:
        return a.view(np.uint32)
    if a.dtype == np.float64:
        return a.view(np.uint64)
    return a


def _difference(path: Path, key: str, got: np.ndarray, want: np.ndarray) -> str:
    """Where the first difference is, in the format's terms."""
    bad = np.argwhere(_bits(got) != _bits(want))
    nbad = len(bad)
    idx = tuple(int(v) for v in bad[0])
    if path.op == "quantize":
        fmt = get_format(key)
        r, off = idx[0], idx[-1]
        blk, at = divmod(off, fmt.type_size)
        g = got.reshape(got.shape[0], -1, fmt.type_size)[r, blk]
        w = want.reshape(want.shape[0], -1, fmt.type_size)[r, blk]
        msg = (f"row {r}, block {blk}, byte {at} of a {got.shape[0]}x{got.shape[1] // fmt.type_size}-block "
               f"result: block bytes {g.tolist()} where the spec gives {w.tolist()} ({nbad} bytes differ)")
        if fmt.layout is not None:   # the field and element first differing, by the declared layout
            msg = f"{msg}; {first_difference(fmt.layout, got, want)}"
        return msg
    if path.op == "dequantize":
        fmt = get_format(key)
        r, col = idx[0], idx[-1]
        return (f"row {r}, element {col} (block {col // fmt.block_size}, position {col % fmt.block_size}) "
                f"decodes to {float(got[idx])!r}, the spec gives {float(want[idx])!r} ({nbad} elements differ)")
    return f"Y{list(idx)} = {got[idx]!r}, the spec gives {want[idx]!r} ({nbad} of {got.size} outputs differ)"


# ------------------------------------------------------------------------------ reproducers

def _backend_line(ref: Optional[str]) -> str:
    if ref is None:
        return "be = BACKEND  # the backend object under test (it has no importable name)"
    return f"be = refquant.get_backend({ref!r})"


def _fixed_snippet(ref, path: Path, key: str, case_id: str, threads) -> str:
    lines = ["import numpy as np, refquant",
             "from refquant.conformance import cases, suite",
             f"c = cases.build({path.label!r}, {key!r}, {case_id!r})   # the inputs, as the suite built them",
             _backend_line(ref)]
    if threads is not None:
        lines.append(f"be.set_num_threads({threads})")
    if path.op == "quantize":
        search = "" if path.call.get("search") is None else f", search={path.call['search']!r}"
        lines += [f"ours = be.quantize(c['x'], {key!r}, c['imatrix']{search})",
                  f"spec = refquant.get_backend('numpy').quantize(np.ascontiguousarray(c['x']), {key!r}, c['imatrix']{search})",
                  "print(np.argwhere(ours != spec)[:10])   # [row, byte] of the first differences"]
    elif path.op == "dequantize":
        lines += [f"ours = be.dequantize(c['data'], {key!r})",
                  f"spec = refquant.dequantize(np.ascontiguousarray(c['data']), {key!r})",
                  "print(np.argwhere(ours.view(np.uint32) != spec.view(np.uint32))[:10])"]
    elif path.op == "vec_dot":
        lines += [f"ours = be.vec_dot(c['w'], {key!r}, c['a'], c['variant'])",
                  f"spec = refquant.get_backend('numpy').vec_dot(np.ascontiguousarray(c['w']), {key!r}, "
                  f"np.ascontiguousarray(c['a']), c['variant'])",
                  "print(np.argwhere(ours.view(np.uint32) != spec.view(np.uint32))[:10])"]
    else:
        lines += [f"print(suite.compare(be, suite.path_of({path.label!r}, {key!r}), {key!r}, c))   # (status, message)"]
    return "\n".join(lines)


def path_of(label: str, key: str) -> Path:
    op = label.split("+")[0].split("[")[0]
    (p,) = [p for p in operation_paths(op, key) if p.label == label]
    return p


# ------------------------------------------------------------------------ Hypothesis examples

def _run_hypothesis(be: Backend, ref, path: Path, key: str, max_examples: int, seed: int):
    if path.op == "quantize":
        return _hyp_quantize(be, ref, path, get_format(key), max_examples, seed)
    if path.op == "dequantize":
        return _hyp_dequantize(be, ref, get_format(key), max_examples, seed)
    return _hyp_operation(be, path, key, max_examples, seed)


def _settings(max_examples, seed):
    def deco(f):
        return hseed(seed)(settings(max_examples=max_examples, deadline=None, database=None,
                                    suppress_health_check=list(HealthCheck))(f))
    return deco


def _hyp_quantize(be: Backend, ref, path: Path, fmt: Format, max_examples: int, seed: int):
    found = {}
    with_imatrix, search = path.call["imatrix"], path.call["search"]

    @_settings(max_examples, seed)
    @given(data=st.data())
    def prop(data):
        x = data.draw(float_rows(fmt.block_size, max_rows=2, max_blocks=4 if fmt.block_size <= 32 else 2,
                                 tie_grids=tie_grids_for(fmt.name)))
        im = data.draw(importance(x.shape[1])) if with_imatrix else None
        status, msg = compare(be, path, fmt.name, {"x": x, "imatrix": im, "search": search})
        if status != EXACT:
            found["case"] = (x, im, status, msg)
            raise AssertionError(msg)

    try:
        prop()
        return EXACT, None
    except Exception as e:  # noqa: BLE001 - every failure becomes a report line
        if "case" not in found:
            return ERROR, Failure(fmt.name, path.label, f"{type(e).__name__}: {e}", "", "hypothesis")
    x, im, status, msg = found["case"]
    if status != FAIL or not msg.startswith("row "):
        return status, Failure(fmt.name, path.label, msg, "", "hypothesis")
    # narrow the failure to one block run alone, or its row (the imatrix path needs the row)
    row, blk = int(msg.split()[1].rstrip(",")), int(msg.split()[3].rstrip(","))
    xs = x[row:row + 1]
    if im is None:
        single = xs[:, blk * fmt.block_size:(blk + 1) * fmt.block_size]
        if compare(be, path, fmt.name, {"x": single, "imatrix": None, "search": search})[0] == FAIL:
            xs = single
    _, msg = compare(be, path, fmt.name, {"x": xs, "imatrix": im, "search": search})
    sarg = "" if search is None else f", search={search!r}"
    snippet = "\n".join([
        "import numpy as np, refquant",
        f"x = {_array_literal(xs)}",
        *([f"im = {_array_literal(im)}"] if im is not None else ["im = None"]),
        _backend_line(ref),
        f"ours = be.quantize(x, {fmt.name!r}, im{sarg})",
        f"spec = refquant.get_backend('numpy').quantize(x, {fmt.name!r}, im{sarg})",
        "print(np.flatnonzero(ours != spec))",
    ])
    return FAIL, Failure(fmt.name, path.label, f"{msg} — input {xs.shape[0]}x{xs.shape[1]}", snippet, "hypothesis")


def _hyp_dequantize(be: Backend, ref, fmt: Format, max_examples: int, seed: int):
    found = {}
    path = path_of("dequantize", fmt.name)

    @_settings(max_examples, seed)
    @given(data=st.data())
    def prop(data):
        nblocks = data.draw(st.integers(1, 8))
        raw = None
        if fmt.can_quantize and data.draw(st.booleans()):
            # bytes a quantizer writes (realistic scales) ...
            x = data.draw(float_rows(fmt.block_size, max_rows=1, max_blocks=nblocks))
            try:
                with np.errstate(all="ignore"):
                    raw = SPEC.quantize(x, fmt, np.ones(x.shape[1], np.float32) if fmt.needs_imatrix else None).reshape(-1)
            except RefquantError:
                raw = None  # an input the quantizer refuses: take arbitrary bytes instead
        if raw is None:
            # ... or any bytes at all (NaN/inf scales, every code)
            raw = np.frombuffer(data.draw(st.binary(min_size=nblocks * fmt.type_size,
                                                    max_size=nblocks * fmt.type_size)), np.uint8).copy()
        status, msg = compare(be, path, fmt.name, {"data": raw.reshape(1, -1)})
        if status != EXACT:
            found["case"] = (raw, status, msg)
            raise AssertionError(msg)

    try:
        prop()
        return EXACT, None
    except Exception as e:  # noqa: BLE001
        if "case" not in found:
            return ERROR, Failure(fmt.name, "dequantize", f"{type(e).__name__}: {e}", "", "hypothesis")
    raw, status, msg = found["case"]
    if status != FAIL or not msg.startswith("row "):
        return status, Failure(fmt.name, "dequantize", msg, "", "hypothesis")
    blk = int(msg.split("(block ")[1].split(",")[0])
    block = raw.reshape(-1, fmt.type_size)[blk:blk + 1].reshape(1, -1).copy()
    if compare(be, path, fmt.name, {"data": block})[0] != FAIL:
        block = raw.reshape(1, -1)  # fails only in context: report the whole input
    _, msg = compare(be, path, fmt.name, {"data": block})
    snippet = "\n".join([
        "import numpy as np, refquant",
        f"data = {_array_literal(block)}",
        _backend_line(ref),
        f"ours = be.dequantize(data, {fmt.name!r})",
        f"spec = refquant.dequantize(data, {fmt.name!r})",
        "print(np.flatnonzero(ours.view(np.uint32) != spec.view(np.uint32)))",
    ])
    return FAIL, Failure(fmt.name, "dequantize", f"{msg} — a {block.size}-byte input", snippet, "hypothesis")


def _hyp_operation(be: Backend, path: Path, key: str, max_examples: int, seed: int):
    """vec_dot and matmul: `case` inputs, on the path's variant or options."""
    found = {}

    @_settings(max_examples, seed)
    @given(data=st.data())
    def prop(data):
        c = data.draw(case(path.op, key))
        c.update(path.call)
        status, msg = compare(be, path, key, c)
        if status not in (EXACT, BOUND):
            found["r"] = (status, msg)
            raise AssertionError(msg)

    try:
        prop()
    except Exception as e:  # noqa: BLE001
        status, msg = found.get("r", (ERROR, f"{type(e).__name__}: {e}"))
        return status, Failure(key, path.label, str(msg).strip().splitlines()[0][:500], "", "hypothesis")
    return (EXACT if path.op == "vec_dot" or _scheme_exact(key) else BOUND), None


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


def _scheme_exact(key: str) -> bool:
    from ..gemm import get_scheme
    return get_scheme(key).exact


def _array_literal(a: np.ndarray) -> str:
    if a.dtype == np.float32:
        # exact: float32 values written by their bit patterns
        return f"np.array({a.view(np.uint32).tolist()}, dtype=np.uint32).view(np.float32).reshape({a.shape})"
    return f"np.array({a.tolist()}, dtype=np.{a.dtype}).reshape({a.shape})"


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
