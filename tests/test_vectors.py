"""The committed golden vectors match what the code writes now, and what ggml (GGUF types) or
ml_dtypes (minifloat element formats) writes."""
import json
from pathlib import Path

import numpy as np
import pytest

import refquant
from refquant.conformance.vectors import build, write_vectors

VECTORS = Path(__file__).resolve().parent.parent / "spec" / "vectors"
# one folder per format, each with its vectors.json (checkpoint layouts' vectors, such as
# compressed-tensors/, are folders of folders, checked by their own tests)
COMMITTED = sorted(p.name for p in VECTORS.iterdir() if (p / "vectors.json").is_file())
SETS = [n for n in COMMITTED if (VECTORS / n / "cases.txt.gz").is_file()]   # refquant.conformance.vector_sets
GGUF_TYPES = [n for n in COMMITTED if n not in SETS and refquant.get_format(n).ggml_type is not None]
MINIFLOATS = [n for n in COMMITTED if n not in SETS and refquant.get_format(n).family == "minifloat"]


def test_every_vector_format_has_vectors():
    from refquant.conformance.vectors import vector_formats
    assert sorted(vector_formats()) == COMMITTED


@pytest.mark.parametrize("name", COMMITTED)
def test_committed_vectors_are_current(name):
    arrays = build(name)
    d = VECTORS / name
    assert sorted(p.stem for p in d.glob("*.npy")) == sorted(arrays)
    for key, a in arrays.items():
        committed = np.load(d / f"{key}.npy")
        assert committed.dtype == a.dtype and committed.shape == a.shape, (name, key)
        assert committed.tobytes() == a.tobytes(), f"{name}/{key}.npy is stale: run refquant vectors --out spec/vectors"
    doc = json.loads((d / "vectors.json").read_text())
    assert doc["encoded"] == [r.tobytes().hex() for r in arrays["encoded"]]


@pytest.mark.parametrize("name", SETS)
def test_committed_cases_are_current(name):
    """A set's committed cases.txt.gz is what `refquant vectors` writes now (the oracles check
    its contents: tests/test_vectors_oracles.py)."""
    import gzip
    from refquant.conformance.vector_sets import SETS as DEFINED
    from refquant.conformance.vectors import CASES_FORMAT, text_cases
    assert sorted(DEFINED) == SETS
    committed = gzip.decompress((VECTORS / name / "cases.txt.gz").read_bytes()).decode()
    assert committed == CASES_FORMAT + "\n" + "\n".join(text_cases(name)) + "\n", \
        f"{name}/cases.txt.gz is stale: run refquant vectors --out spec/vectors --formats {name}"


@pytest.mark.parametrize("name", GGUF_TYPES)
def test_committed_vectors_are_ggmls_bytes(name, ggml):
    """ggml-python's ggml, or for the types newer than it (Q2_0) the ggml llama-cpp-python vendors."""
    import ggml as ggml_python
    d = VECTORS / name
    x = np.load(d / "input.npy")
    enc = np.load(d / "encoded.npy")
    fmt = refquant.get_format(name)
    if fmt.ggml_type >= ggml_python.GGML_TYPE_COUNT:
        from tools.oracles import llama_cpp
        quantize, dequantize = llama_cpp.ggml_quantize, llama_cpp.ggml_dequantize
    else:
        quantize, dequantize = ggml.quantize, ggml.dequantize
    im = np.load(d / "imatrix.npy") if fmt.needs_imatrix else None  # encoded with it, then
    theirs = ggml.quantize_row_ref(x, name) if name in ("Q8_1", "Q8_K") else quantize(x, name, im)
    np.testing.assert_array_equal(enc, theirs)
    if (d / "encoded_imatrix.npy").exists():
        np.testing.assert_array_equal(np.load(d / "encoded_imatrix.npy"), quantize(x, name, np.load(d / "imatrix.npy")))
    if name not in ("Q8_1",) and fmt.can_dequantize and name != "F32":
        dec = np.load(d / "decoded.npy")
        theirs = ggml.dequantize_row(enc, name) if name == "Q8_K" else dequantize(enc, name)
        np.testing.assert_array_equal(dec.view(np.uint32), theirs.view(np.uint32))


@pytest.mark.parametrize("name", MINIFLOATS)
def test_committed_minifloat_vectors_are_ml_dtypes_codes(name):
    """ml_dtypes 0.6.0's casts; E8M0's vectors round float32 subnormals to nearest, as refquant's
    default and ml_dtypes 0.7.0 do (0.6.0 differs there), so E8M0 is checked against 0.7.0."""
    import ml_dtypes
    from refquant.minifloat import get_minifloat
    f = get_minifloat(name)
    d = VECTORS / name
    x = np.load(d / "input.npy")
    dt = getattr(ml_dtypes, f.ml_dtypes_name)
    if name == "E8M0":
        from tools.oracles.ml_dtypes_07 import MlDtypes07
        o = MlDtypes07()
        codes = o.encode(x, f.ml_dtypes_name)
        o.close()
    else:
        with np.errstate(all="ignore"):
            codes = x.astype(dt).view(np.uint8)
    packed = codes[:, 0::2] | (codes[:, 1::2] << 4) if f.nbits == 4 else codes
    np.testing.assert_array_equal(np.load(d / "encoded.npy"), packed)
    np.testing.assert_array_equal(np.load(d / "decoded.npy").view(np.uint32),
                                  codes.view(dt).astype(np.float32).view(np.uint32))


def test_vectors_gguf_reads_back(tmp_path):
    from refquant.io.gguf import GGUFFile
    write_vectors(tmp_path, ["Q4_0", "Q8_0"])
    with GGUFFile(tmp_path / "vectors.gguf") as f:
        assert [t.name for t in f.tensors] == ["Q4_0", "Q8_0"]
        np.testing.assert_array_equal(np.asarray(f.raw("Q4_0")), np.load(tmp_path / "Q4_0" / "encoded.npy"))


# ------------------------------------------------------------------ plain-text cases, verifier

def _case_lines(name):
    from refquant.conformance.vectors import text_cases
    return [ln for ln in text_cases(name) if not ln.startswith("#")]


@pytest.mark.parametrize("name", ["Q4_0", "Q4_K", "IQ4_XS", "MXFP4"])
def test_text_cases_are_ggmls_bytes(name, ggml):
    """The plain-text catalog cases of a GGUF type: every quantize line's result is what ggml
    writes for that block (with its importance matrix), every dequantize line what ggml decodes."""
    q = [ln.split() for ln in _case_lines(name) if ln.split()[1] == "quantize" and ln.split()[4] != "refused"]
    plain = [f for f in q if f[3] == "-"]
    x = np.stack([np.frombuffer(bytes.fromhex(f[2]), "<f4") for f in plain]).astype(np.float32)
    ours = np.stack([np.frombuffer(bytes.fromhex(f[4]), np.uint8) for f in plain])
    np.testing.assert_array_equal(ggml.quantize(x, name), ours)
    for f in [f for f in q if f[3] != "-"][::7]:   # with an imatrix: a line at a time (a seventh of them)
        xi = np.frombuffer(bytes.fromhex(f[2]), "<f4").astype(np.float32)[None, :]
        im = np.frombuffer(bytes.fromhex(f[3]), "<f4").astype(np.float32)
        assert ggml.quantize(xi, name, im).reshape(-1).tobytes().hex() == f[4], f[:2]
    d = [ln.split() for ln in _case_lines(name) if ln.split()[1] == "dequantize"]
    data = np.stack([np.frombuffer(bytes.fromhex(f[2]), np.uint8) for f in d])
    want = np.stack([np.frombuffer(bytes.fromhex(f[4]), "<u4") for f in d])
    np.testing.assert_array_equal(ggml.dequantize(data, name).reshape(len(d), -1).view(np.uint32), want)


def test_text_cases_hold_the_catalog_and_every_code():
    lines = _case_lines("E4M3FN")
    codes = {ln.split()[2] for ln in lines if ln.split()[1] == "dequantize"}
    assert len(codes) == 256
    from refquant.conformance.vectors import text_cases
    comments = [ln for ln in text_cases("Q4_K") if ln.startswith("# quantize")]
    assert {"# quantize: extremes", "# quantize+imatrix: imatrix-zeros", "# quantize+imatrix: imatrix-huge"} <= set(comments)


def test_verify_vectors_reads_answers_on_stdin():
    """An implementation's answers, one per case line: the verifier finds the one wrong answer."""
    import subprocess
    import sys
    lines = _case_lines("Q8_0")
    f = lines[5].split()
    wrong = f[4][:-2] + ("00" if f[4][-2:] != "00" else "01")
    answers = lines[:5] + [" ".join(f[:4] + [wrong])] + lines[6:]
    out = subprocess.run([sys.executable, "-m", "refquant.cli", "verify-vectors"], input="\n".join(answers) + "\n",
                         capture_output=True, text=True)
    assert out.returncode == 1, out.stderr
    assert f"{len(lines)} cases, 1 differ from the spec" in out.stdout
    assert "spec: " + f[4] in out.stdout
    ok = subprocess.run([sys.executable, "-m", "refquant.cli", "verify-vectors"], input="\n".join(lines) + "\n",
                        capture_output=True, text=True)
    assert ok.returncode == 0 and f"{len(lines)} cases, 0 differ" in ok.stdout


def test_verify_vectors_reads_the_sets_cases(tmp_path):
    """The committed cases of a set, through the CLI: every line as committed passes; a changed
    answer to a scale rule's line and to a double-quantized tensor's is found."""
    import gzip
    import subprocess
    import sys
    lines = []
    for name, fmt in (("MXFP8_E4M3", "MXFP8_E4M3.rceil"), ("BNB_NF4.nested", "BNB_NF4.nested")):
        text = gzip.decompress((VECTORS / name / "cases.txt.gz").read_bytes()).decode().splitlines()
        mine = [ln for ln in text if ln.startswith(fmt + " ")]
        lines += mine[:40] + [ln for ln in mine if " dequantize " in ln][:10]
    f = lines[3].split()
    wrong = " ".join(f[:4] + [("0" if f[4][0] != "0" else "1") + f[4][1:]])
    run = lambda ls: subprocess.run([sys.executable, "-m", "refquant.cli", "verify-vectors"],  # noqa: E731
                                    input="\n".join(ls) + "\n", capture_output=True, text=True)
    ok = run(lines)
    assert ok.returncode == 0 and f"{len(lines)} cases, 0 differ" in ok.stdout, ok.stdout + ok.stderr
    bad = run(lines[:3] + [wrong] + lines[4:])
    assert bad.returncode == 1 and "1 differ from the spec" in bad.stdout, bad.stdout + bad.stderr


@pytest.mark.parametrize("name", ["MXFP4_E2M1", "MXINT8", "BNB_NF4", "BNB_FP4", "E4M3FN", "NVFP4", "MXFP6_E3M2.even",
                                  "BNB_FP4.nested", "NVFP4_TORCHAO_2L"])
def test_vectors_write_for_every_family(tmp_path, name):
    from refquant.conformance.vectors import _folder
    paths = write_vectors(tmp_path, [name])
    d = tmp_path / _folder(name)
    assert (d / "cases.txt") in paths and (d / "vectors.json") in paths
