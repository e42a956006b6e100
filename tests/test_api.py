"""The public surface: quantize / dequantize / formats / get_backend, and its errors."""
import warnings

import gguf
import numpy as np
import pytest

import refquant
from refquant.errors import FormatError, InputError, RefquantError


def test_names_and_enum_are_the_same_type():
    x = np.random.default_rng(0).standard_normal((2, 64)).astype(np.float32)
    a = refquant.quantize(x, "q4_0")
    b = refquant.quantize(x, "Q4_0")
    c = refquant.quantize(x, gguf.GGMLQuantizationType.Q4_0)
    assert a.dtype == np.uint8 and a.shape == (2, 36)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)
    assert refquant.dequantize(a, "Q4_0").shape == (2, 64)


def test_leading_dimensions_are_kept():
    x = np.random.default_rng(0).standard_normal((2, 3, 64)).astype(np.float32)
    q = refquant.quantize(x, "Q8_0")
    assert q.shape == (2, 3, 68)
    np.testing.assert_array_equal(q.reshape(6, 68), refquant.quantize(x.reshape(6, 64), "Q8_0"))
    assert refquant.dequantize(q, "Q8_0").shape == (2, 3, 64)


def test_formats_records():
    recs = {r["name"]: r for r in refquant.formats()}
    q40 = recs["Q4_0"]
    assert (q40["block_size"], q40["type_size"], q40["bits_per_weight"]) == (32, 18, 4.5)
    assert q40["family"] == "ggml-legacy" and q40["quantize"] and q40["dequantize"]
    assert q40["imatrix"] == "optional" and not q40["needs_imatrix"]
    for r in recs.values():   # types newer than gguf-py's table: test_newer_types_agree_with_llama_cpps_ggml
        if r["ggml_type"] in GGUF_IDS:
            assert gguf.GGMLQuantizationType(r["ggml_type"]).name == r["name"]


GGUF_IDS = {int(t) for t in gguf.GGMLQuantizationType}


def test_block_sizes_agree_with_gguf_py():
    """gguf-py's table and ggml's headers agree on every type, except Q8_1, whose ggml block is
    two fp16 and 32 int8 (36 bytes) while gguf-py still lists 40."""
    for r in refquant.formats():
        if r["ggml_type"] not in GGUF_IDS:
            continue
        bs, ts = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(r["ggml_type"])]
        if r["name"] == "Q8_1":
            assert (bs, ts, r["type_size"]) == (32, 40, 36)
        else:
            assert (bs, ts) == (r["block_size"], r["type_size"]), r["name"]


def test_ggml_agrees_on_block_sizes(ggml):
    import ggml as ggml_python   # its ggml knows the ids below GGML_TYPE_COUNT
    for r in refquant.formats():
        if r["ggml_type"] is not None and r["ggml_type"] < ggml_python.GGML_TYPE_COUNT:
            assert ggml.row_size(r["name"], r["block_size"]) == r["type_size"], r["name"]


def test_newer_types_agree_with_llama_cpps_ggml():
    """Types newer than ggml-python's ggml or gguf-py's table: their block in llama.cpp's ggml
    (ggml_row_size of one block, as ggml_quantize_chunk lays out a row)."""
    import ggml as ggml_python
    from tools.oracles import llama_cpp
    newer = [r for r in refquant.formats() if r["ggml_type"] is not None
             and (r["ggml_type"] >= ggml_python.GGML_TYPE_COUNT or r["ggml_type"] not in GGUF_IDS)]
    for r in newer:
        row = llama_cpp.ggml_quantize(np.zeros((1, r["block_size"]), np.float32), r["name"])
        assert row.shape == (1, r["type_size"]), r["name"]


def test_get_backend_numpy_is_the_spec():
    be = refquant.get_backend("numpy")
    x = np.random.default_rng(0).standard_normal((1, 32)).astype(np.float32)
    np.testing.assert_array_equal(be.quantize(x, "Q5_1"), refquant.quantize(x, "Q5_1"))
    assert be.supports("quantize", "Q5_1") and be.supports("dequantize", "q5_1")


def test_get_backend_by_path_and_unknown():
    assert refquant.get_backend("refquant.backend:SPEC") is refquant.get_backend("numpy")
    with pytest.raises(RefquantError, match="unknown backend 'nope'"):
        refquant.get_backend("nope")
    with pytest.raises(RefquantError, match="cannot load backend"):
        refquant.get_backend("no_such_module:thing")


# ------------------------------------------------------------------ bad input

@pytest.mark.parametrize("value, where", [(np.nan, (1, 40)), (np.inf, (0, 3)), (-np.inf, (2, 63))])
def test_non_finite_input_names_row_and_column(value, where):
    x = np.zeros((3, 64), np.float32)
    x[where] = value
    with pytest.raises(InputError, match=rf"row {where[0]}, column {where[1]}"):
        refquant.quantize(x, "Q4_0")


def test_wrong_length_names_value_and_block():
    with pytest.raises(InputError, match="is 33; it must be a positive multiple of the block size 32"):
        refquant.quantize(np.zeros((2, 33), np.float32), "Q8_0")


def test_wrong_dtype():
    with pytest.raises(InputError, match="dtype float32, got float64"):
        refquant.quantize(np.zeros(32), "Q8_0")
    with pytest.raises(InputError, match="dtype uint8.*got int8"):
        refquant.dequantize(np.zeros(34, np.int8), "Q8_0")
    with pytest.raises(InputError, match="numpy.ndarray"):
        refquant.quantize([0.0] * 32, "Q8_0")


def test_wrong_byte_length():
    with pytest.raises(InputError, match="35 bytes; it must be a positive multiple of the block's 34 bytes"):
        refquant.dequantize(np.zeros(35, np.uint8), "Q8_0")


def test_unknown_type():
    with pytest.raises(FormatError, match="unknown format 'Q9_0'"):
        refquant.quantize(np.zeros(32, np.float32), "Q9_0")
    with pytest.raises(FormatError, match="ggml type id 99"):
        refquant.dequantize(np.zeros(32, np.uint8), 99)


def test_bad_imatrix():
    x = np.zeros((1, 64), np.float32)
    with pytest.raises(InputError, match=r"shape \(64,\)"):
        refquant.quantize(x, "Q4_0", imatrix=np.ones(32, np.float32))
    with pytest.raises(InputError, match="non-finite value nan at column 5"):
        im = np.ones(64, np.float32)
        im[5] = np.nan
        refquant.quantize(x, "Q4_0", imatrix=im)


def test_no_numpy_warnings_leak():
    """Inputs whose C arithmetic overflows (scales past fp16, 1/d past float32) raise no warnings."""
    x = np.full((1, 32), 3e38, np.float32)
    x[0, 1] = 1e-45
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for r in refquant.formats():
            if r["quantize"] and r["block_size"] <= 32 and not r["needs_imatrix"]:
                q = refquant.quantize(x, r["name"])
                refquant.dequantize(q, r["name"])
                refquant.quantize(x, r["name"], imatrix=np.ones(32, np.float32))
