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
GGUF_TYPES = [n for n in COMMITTED if refquant.get_format(n).ggml_type is not None]
MINIFLOATS = [n for n in COMMITTED if refquant.get_format(n).family == "minifloat"]


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
        from ml_dtypes_07 import MlDtypes07
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
