"""The conformance kit catches real bugs: deliberately broken backends, each one caught by the
default run (level 1, default Hypothesis budget), with the failing case named and a snippet that
reproduces it as printed.

Each class of bug a kernel really has gets one backend: rounding and layout slips (tie rule, nibble
order, zero point, scale rounding, an unwritten element), row tiling that goes wrong from the third
row, a block tail past the eighth block, the last of two equal-magnitude extremes kept, a
non-contiguous input read as contiguous, a thread split that drops the remainder rows, an imatrix
path handed back to the spec, float activations in vec_dot, and an ignored act-order g_idx."""
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from refquant.backend import SPEC, Backend
from refquant.conformance.suite import BOUND, EXACT, FAIL, NOT_CLAIMED, SPEC_RAN, run
from refquant.ggml import legacy
from refquant.ggml.kquants import quantize_q4_k
from refquant.gemm import w4a16_matmul
from refquant.ggml.dot import vec_dot

# The broken backends below start from the spec's arithmetic, taken once at import as a kernel's
# own copy would be: the suite watches calls made through the spec's entry points while a claimed
# path runs (those are "spec ran"), and these stand for code of the backend's own.
quantize_q4_0, dequantize_q4_0 = legacy.quantize_q4_0, legacy.dequantize_q4_0
quantize_q8_0, dequantize_q8_0 = legacy.quantize_q8_0, legacy.dequantize_q8_0
from refquant.ggml.blocks import u16
from refquant.ggml.legacy import Q4_0, Q8_0
from refquant.numerics import F32, c_max_abs, fp16_bits_to_fp32, fp32_to_fp16_bits, safe_reciprocal


class WrongTieRule(Backend):
    """Q8_0 with NumPy's round-half-to-even where ggml uses roundf (half away from zero)."""
    name = "wrong-tie-rule"

    def claims(self):
        return {("quantize", "Q8_0")}

    def quantize_rows(self, fmt, x, imatrix):
        xb = x.reshape(-1, 32)
        amax, _ = c_max_abs(xb)
        d = amax / F32(127)
        qs = np.rint(xb * safe_reciprocal(d)[:, None]).astype(np.int8)
        return Q8_0.join(x.shape[0], d=fp32_to_fp16_bits(d), qs=qs)


class SwappedNibbles(Backend):
    """Q4_0 decoded with the high nibble as the first half of the block."""
    name = "swapped-nibbles"

    def claims(self):
        return {("dequantize", "Q4_0")}

    def dequantize_rows(self, fmt, data):
        f = Q4_0.split(data)
        d = fp16_bits_to_fp32(u16(f["d"]))
        q = np.concatenate([f["qs"] >> 4, f["qs"] & 0x0F], axis=1).astype(np.int32) - 8
        return (q.astype(F32) * d[:, None]).reshape(data.shape[0], -1)


class OffByOneZeroPoint(Backend):
    """Q4_0 decoded around 7 instead of 8."""
    name = "off-by-one-zero"

    def claims(self):
        return {("dequantize", "Q4_0")}

    def dequantize_rows(self, fmt, data):
        f = Q4_0.split(data)
        d = fp16_bits_to_fp32(u16(f["d"]))
        q = np.concatenate([f["qs"] & 0x0F, f["qs"] >> 4], axis=1).astype(np.int32) - 7
        return (q.astype(F32) * d[:, None]).reshape(data.shape[0], -1)


class ScaleRoundedDown(Backend):
    """Q8_0 whose fp16 scale is truncated toward zero instead of rounded to nearest even."""
    name = "scale-rounded-down"

    def claims(self):
        return {("quantize", "Q8_0")}

    def quantize_rows(self, fmt, x, imatrix):
        out = quantize_q8_0(x).reshape(-1, 34).copy()
        xb = x.reshape(-1, 32)
        amax, _ = c_max_abs(xb)
        d = amax / F32(127)
        h = fp32_to_fp16_bits(d)
        back = fp16_bits_to_fp32(h)
        too_big = np.isfinite(back) & (np.abs(back) > np.abs(d))
        h = np.where(too_big, h - 1, h).astype("<u2")  # one ulp toward zero where RNE went up
        out[:, :2] = h.view(np.uint8).reshape(-1, 2)
        return out.reshape(x.shape[0], -1)


class UnwrittenElement(Backend):
    """Q8_0 decode into a reused buffer that never writes the last element of each row."""
    name = "unwritten-element"

    def claims(self):
        return {("dequantize", "Q8_0")}

    def dequantize_rows(self, fmt, data):
        full = dequantize_q8_0(data)
        out = np.full_like(full, np.float32(-1.2345e-7))  # what a stale buffer holds
        out[:, :-1] = full[:, :-1]
        return out


class TilingFromThirdRow(Backend):
    """Q4_0 quantized in tiles of two rows; from the third row on, each row's first block keeps
    the scale of the row two above (a tile index that is not advanced)."""
    name = "tiling-from-third-row"

    def claims(self):
        return {("quantize", "Q4_0")}

    def quantize_rows(self, fmt, x, imatrix):
        out = quantize_q4_0(x, imatrix)
        out[2:, :2] = out[:-2, :2]
        return out


class BlockTailPastEight(Backend):
    """Q4_0 decoded eight blocks at a time, every block after the eighth with the scale of its
    lane in the first eight (a tail loop that reuses the vector of scales)."""
    name = "block-tail-past-eight"

    def claims(self):
        return {("dequantize", "Q4_0")}

    def dequantize_rows(self, fmt, data):
        blocks = data.reshape(data.shape[0], -1, 18).copy()
        nb = blocks.shape[1]
        for b in range(8, nb):
            blocks[:, b, :2] = blocks[:, b % 8, :2]
        return dequantize_q4_0(blocks.reshape(data.shape[0], -1))


class LastOfEqualExtremes(Backend):
    """Q4_0 whose scale takes the last of two equal-magnitude extremes (+m, -m), not the first."""
    name = "last-of-equal-extremes"

    def claims(self):
        return {("quantize", "Q4_0")}

    def quantize_rows(self, fmt, x, imatrix):
        from refquant.ggml.blocks import as_blocks
        xb = as_blocks(x, 32)
        _, vmax = c_max_abs(xb[:, ::-1])          # the scan runs from the end: the last one wins
        d = vmax / F32(-8)
        idv = safe_reciprocal(d)
        with np.errstate(invalid="ignore", over="ignore"):
            from refquant.numerics import c_float_to_int8
            q = np.minimum(15, c_float_to_int8(xb * idv[:, None] + F32(8.5)))
        lo, hi = q[:, :16].astype(np.uint8), q[:, 16:].astype(np.uint8)
        return Q4_0.join(x.shape[0], d=fp32_to_fp16_bits(d), qs=(lo | (hi << 4)).astype(np.uint8))


class ReadsAsContiguous(Backend):
    """Q8_0 whose quantize hands the array's buffer to a kernel as if it were C-contiguous
    (the pointer-and-shape mistake of a C binding)."""
    name = "reads-as-contiguous"

    def claims(self):
        return {("quantize", "Q8_0")}

    def quantize(self, x, qtype, imatrix=None, search=None):
        x = np.asarray(x)
        flat = np.lib.stride_tricks.as_strided(x, shape=x.shape, strides=(x.shape[-1] * 4, 4))
        return quantize_q8_0(np.array(flat, dtype=np.float32))


class ThreadSplitDropsRemainder(Backend):
    """Q8_0 decoded in equal row chunks per thread; rows past threads * (rows // threads) are
    never written."""
    name = "thread-split"
    threaded = True

    def __init__(self):
        self.threads = 4

    def max_threads(self):
        return 4

    def set_num_threads(self, n):
        self.threads = n

    def claims(self):
        return {("dequantize", "Q8_0")}

    def dequantize_rows(self, fmt, data):
        out = np.zeros((data.shape[0], data.shape[1] // 34 * 32), np.float32)
        chunk = max(data.shape[0] // self.threads, 1) if self.threads > 1 else data.shape[0]
        for t in range(min(self.threads, data.shape[0])):
            out[t * chunk:(t + 1) * chunk] = dequantize_q8_0(data[t * chunk:(t + 1) * chunk])
        return out


class ImatrixHandedToSpec(Backend):
    """Claims Q4_K's quantize, but calls with an importance matrix go back to the spec."""
    name = "imatrix-to-spec"

    def claims(self):
        return {("quantize", "Q4_K")}

    def quantize_rows(self, fmt, x, imatrix):
        if imatrix is not None:
            return fmt.quantize_rows(x, imatrix)
        return quantize_q4_k(x, None)


class FloatActivations(Backend):
    """Q8_0 vec_dot on float activations (no Q8_0 quantization of the activation rows)."""
    name = "float-activations"

    def claims(self):
        return {("vec_dot", "Q8_0")}

    def vec_dot_rows(self, fmt, w, a, variant):
        wd = dequantize_q8_0(w)
        return (a.astype(np.float64) @ wd.astype(np.float64).T).astype(np.float32)


class IgnoredActOrder(Backend):
    """W4A16 that takes group k // G for column k, ignoring the act-order g_idx."""
    name = "ignored-act-order"

    def claims(self):
        return {("matmul", "W4A16")}

    def matmul_rows(self, scheme, a, weight, **options):
        from refquant.gemm import W4A16Weight
        G = weight.codes.shape[1] // weight.scales.shape[1]
        plain = W4A16Weight(weight.codes, weight.scales, weight.zeros,
                            (np.arange(weight.codes.shape[1]) // G).astype(np.int32))
        return w4a16_matmul(a, plain, **options)


BROKEN = [
    (WrongTieRule(), "Q8_0", "quantize"),
    (SwappedNibbles(), "Q4_0", "dequantize"),
    (OffByOneZeroPoint(), "Q4_0", "dequantize"),
    (ScaleRoundedDown(), "Q8_0", "quantize"),
    (UnwrittenElement(), "Q8_0", "dequantize"),
    (TilingFromThirdRow(), "Q4_0", "quantize"),
    (BlockTailPastEight(), "Q4_0", "dequantize"),
    (LastOfEqualExtremes(), "Q4_0", "quantize"),
    (ReadsAsContiguous(), "Q8_0", "quantize"),
    (ThreadSplitDropsRemainder(), "Q8_0", "dequantize"),
    (ImatrixHandedToSpec(), "Q4_K", "quantize+imatrix"),
    (FloatActivations(), "Q8_0", "vec_dot[ref]"),
    (IgnoredActOrder(), "W4A16", "matmul"),
]


@pytest.mark.parametrize("broken, key, path", BROKEN, ids=lambda v: getattr(v, "name", v))
def test_broken_backend_is_caught_by_the_default_run(broken, key, path):
    op = path.split("+")[0].split("[")[0]
    report = run(broken, formats=[key], checks=[op])     # the default run: level 1, default examples
    assert report.results[(key, path)] in (FAIL, SPEC_RAN), report.matrix()
    assert not report.ok
    (failure,) = [f for f in report.failures if f.check == path]
    assert failure.case != "hypothesis" or broken.name in ("wrong-tie-rule",), \
        f"caught only by a random example, not by construction: {failure}"
    assert failure.snippet.startswith("import numpy as np, refquant")
    assert ("FAIL" in report.matrix())


def test_only_the_claimed_paths_are_exact():
    # quantize of Q4_K claimed as a whole, the imatrix path handed back: that path is not "exact"
    report = run(ImatrixHandedToSpec(), formats=["Q4_K"], checks=["quantize"], max_examples=3)
    assert report.results[("Q4_K", "quantize")] == EXACT
    assert report.results[("Q4_K", "quantize+imatrix")] == SPEC_RAN

    class ImatrixOnly(Backend):
        def claims(self):
            return {("quantize+imatrix", "Q4_K"), ("vec_dot[x86]", "Q4_0")}

        def quantize_rows(self, fmt, x, imatrix):
            return quantize_q4_k(x, imatrix)

        def vec_dot_rows(self, fmt, w, a, variant):
            return vec_dot(w, fmt, a, variant)

    be = ImatrixOnly()
    assert be.runs("quantize+imatrix", "Q4_K") and not be.runs("quantize", "Q4_K")
    assert be.runs("vec_dot[x86]", "Q4_0") and not be.runs("vec_dot[ref]", "Q4_0")
    r = run(be, formats=["Q4_K", "Q4_0"], checks=["quantize", "vec_dot"], max_examples=2)
    assert r.results[("Q4_K", "quantize")] == NOT_CLAIMED and r.results[("Q4_K", "quantize+imatrix")] == EXACT
    assert r.results[("Q4_0", "vec_dot[ref]")] == NOT_CLAIMED and r.results[("Q4_0", "vec_dot[x86]")] == EXACT


def test_quantize_failure_is_narrowed_to_one_block():
    report = run(WrongTieRule(), max_examples=60, seed=0, formats=["Q8_0"], fixed_cases=False)
    (failure,) = report.failures
    assert "input 1x32" in failure.message
    # named by field and element, from Q8_0's declared layout: a tie rounded the other way
    assert re.search(r"Q8_0 block 0, row 0: qs\[\d+\] -?\d+, spec -?\d+", failure.message), failure.message


def test_the_spec_passes_and_unclaimed_is_visible():
    # the kit run on the spec itself, over one format of each family and every matmul scheme
    report = run("numpy", max_examples=3, seed=0, fixed_cases=False,
                 formats=["F16", "Q4_1", "E4M3FN", "MXFP4_E2M1", "IQ4_XS", "BNB_NF4", "W4A16", "W8A8", "FP8"])
    assert report.ok and set(report.results.values()) == {EXACT, BOUND}
    assert report.results[("W8A8", "matmul")] == EXACT and report.results[("W4A16", "matmul")] == BOUND
    partial = run(WrongTieRule(), max_examples=5, seed=0, formats=["Q4_0"])
    assert set(partial.results.values()) == {NOT_CLAIMED}


def test_reproducer_runs_as_printed(tmp_path):
    """The snippet of a fixed case names the backend by a path a fresh process loads."""
    report = run(TilingFromThirdRow(), formats=["Q4_0"], checks=["quantize"])
    failure = report.failures[0]
    assert str(Path(__file__).resolve()) in failure.snippet
    out = subprocess.run([sys.executable, "-c", failure.snippet], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() not in ("", "[]"), out.stdout


def test_cli_exit_status_and_matrix(tmp_path):
    ok = subprocess.run([sys.executable, "-m", "refquant.cli", "conformance", "--backend", "numpy",
                         "--max-examples", "3", "--formats", "Q8_0", "--checks", "quantize"],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "1 exact, 0 within bound, 0 failed" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "refquant.cli", "conformance", "--backend",
                          f"{Path(__file__).resolve()}:LastOfEqualExtremes", "--formats", "Q4_0", "--checks", "quantize"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "FAIL Q4_0 quantize [catalog extremes]" in bad.stdout


def _example_backend_source() -> str:
    page = (Path(__file__).resolve().parent.parent / "spec" / "backends.md").read_text()
    block = page.split("## A complete example", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    return block


def test_the_example_backend_of_spec_backends_md(tmp_path):
    """The page's example, as printed, passes the kit from a file path and as a module in the
    current directory with nothing on PYTHONPATH for it (python -P: the cwd is not on sys.path)."""
    src = _example_backend_source()
    assert 25 <= len(src.strip().splitlines()) <= 45
    (tmp_path / "mybackend.py").write_text(src)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    here = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in os.environ.get("PYTHONPATH", here).split(os.pathsep)
                                        if p and Path(p).resolve() != tmp_path.resolve())
    for ref in ("./mybackend.py:Q8Backend", "mybackend:Q8Backend"):
        out = subprocess.run([sys.executable, "-P", "-m", "refquant.cli", "conformance", "--backend", ref,
                              "--formats", "Q8_0", "--max-examples", "5"],
                             capture_output=True, text=True, cwd=tmp_path, env=env)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "2 exact, 0 within bound, 0 failed, 0 errors, 0 claimed but the spec ran" in out.stdout, out.stdout
        assert "quantize+imatrix" not in out.stdout or "not claimed" in out.stdout


class OwnQ8(Backend):
    """Q8_0 quantize and dequantize by the spec's arithmetic, held as the backend's own copy."""
    name = "own-q8"

    def claims(self):
        return {("quantize", "Q8_0"), ("dequantize", "Q8_0")}

    def quantize_rows(self, fmt, x, imatrix):
        return quantize_q8_0(x)

    def dequantize_rows(self, fmt, data):
        return dequantize_q8_0(data)


@pytest.mark.parametrize("backend", [OwnQ8(), TilingFromThirdRow()], ids=lambda b: b.name)
def test_shards_together_are_the_whole_matrix(backend):
    key = "Q8_0" if isinstance(backend, OwnQ8) else "Q4_0"
    whole = run(backend, formats=[key], checks=["quantize", "dequantize"], max_examples=3)
    parts = [run(backend, formats=[key], checks=["quantize", "dequantize"], max_examples=3, shard=(i, 3))
             for i in range(3)]
    merged = parts[0].merge(parts[1]).merge(parts[2])
    assert merged.results == whole.results
    assert merged.ok == whole.ok
    if whole.ok:   # every case ran in exactly one shard
        assert sum(merged.cases.values()) == sum(whole.cases.values())
        assert all(sum(p.cases.values()) < sum(whole.cases.values()) for p in parts)


def test_shard_and_level_on_the_cli():
    out = subprocess.run([sys.executable, "-m", "refquant.cli", "conformance", "--backend", "numpy",
                          "--formats", "Q8_0", "--checks", "dequantize", "--max-examples", "2", "--shard", "1/2"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "(level 1, shard 1/2)" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "refquant.cli", "conformance", "--shard", "2/2"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "0 <= I < N" in bad.stderr


def test_level_2_adds_catalog_entries_and_shapes():
    from refquant.conformance.cases import case_ids
    one, two = case_ids("quantize", "E4M3FN", 1), case_ids("quantize", "E4M3FN", 2)
    assert set(one) < set(two) and {"catalog float16-all", "catalog sweep"} <= set(two)
    assert "ladder 3x9" in case_ids("quantize+imatrix", "IQ1_M", 1)


def test_pytest_form_runs_in_parallel(tmp_path):
    """`pytest --pyargs refquant.conformance -n 2` with the backend named by file path: one test per
    (key, path), the claimed ones pass, the rest are skipped as not claimed."""
    env = {**os.environ, "REFQUANT_BACKEND": f"{Path(__file__).resolve()}:OwnQ8", "REFQUANT_FORMATS": "Q8_0",
           "REFQUANT_MAX_EXAMPLES": "3"}
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "2",
                          "--pyargs", "refquant.conformance"], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "2 passed, 2 skipped" in out.stdout, out.stdout[-2000:]


def test_case_list_and_run_cases_split_as_a_scheduler_would():
    from refquant.conformance.suite import case_list, run_cases
    cases = case_list(OwnQ8(), formats=["Q8_0"], checks=["dequantize"])
    assert cases[0][:2] == ("Q8_0", "dequantize") and cases[-1][2] == "hypothesis"
    parts = [run_cases(OwnQ8(), cases[i::2], max_examples=3) for i in range(2)]
    merged = parts[0].merge(parts[1])
    assert merged.results == {("Q8_0", "dequantize"): EXACT} and sum(merged.cases.values()) == len(cases)


def test_pytest_form_reproducer_runs_as_printed(tmp_path):
    """A failure under the pytest form prints a reproducer that a fresh interpreter runs."""
    env = {**os.environ, "REFQUANT_BACKEND": f"{Path(__file__).resolve()}:LastOfEqualExtremes",
           "REFQUANT_FORMATS": "Q4_0", "REFQUANT_MAX_EXAMPLES": "3"}
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x",
                          "--pyargs", "refquant.conformance", "-k", "Q4_0-quantize]"],
                         capture_output=True, text=True, cwd=tmp_path, env=env)
    assert out.returncode == 1, out.stdout[-3000:]
    import textwrap
    text = out.stdout.split("Captured stdout call", 1)[1].split("reproduce with:\n", 1)[1]
    snippet = textwrap.dedent(text.split("\n\n", 1)[0].split("\n=", 1)[0].split("\n_", 1)[0])
    assert snippet.startswith("import numpy as np, refquant"), snippet
    run_ = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True, cwd=tmp_path)
    assert run_.returncode == 0, snippet + "\n" + run_.stderr
    assert run_.stdout.strip() not in ("", "[]")


def test_numba_declares_threads_and_gets_the_one_thread_cases():
    pytest.importorskip("numba", reason="the numba extra is not installed")
    from refquant.backend import get_backend
    from refquant.conformance.suite import case_list
    nb = get_backend("refquant_backends.numba:NumbaBackend")
    assert nb.threaded and nb.max_threads() >= 1
    ids = [c for _, _, c in case_list(nb, formats=["Q4_0"], checks=["quantize"])]
    assert {"threads=1 3x9", "threads=1 65x1"} <= set(ids)
    r = run(nb, formats=["Q4_0"], paths=["quantize"], max_examples=2)
    assert r.results == {("Q4_0", "quantize"): EXACT}
