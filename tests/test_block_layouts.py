"""Every ggml block type's declared layout (refquant.ggml.layout) against ggml: its fields sit where
the C structs put them (its size, which the record reads from it, is checked against ggml's in
tests/test_api.py), and a difference between two blocks is named by field and element."""
import numpy as np
import pytest

import refquant
from refquant.ggml.layout import first_difference
from refquant.registry import all_formats, get_format

BLOCK_TYPES = [f for f in all_formats() if f.layout is not None]

# (field, offset) of ggml-common.h's structs, read off the C declarations (ggml_half = 2 bytes,
# no padding): block_q4_K { ggml_half d; ggml_half dmin; uint8_t scales[12]; uint8_t qs[128]; } ...
C_OFFSETS = {
    "Q4_0": {"d": 0, "qs": 2}, "Q4_1": {"d": 0, "m": 2, "qs": 4}, "Q5_0": {"d": 0, "qh": 2, "qs": 6},
    "Q5_1": {"d": 0, "m": 2, "qh": 4, "qs": 8}, "Q8_0": {"d": 0, "qs": 2}, "Q8_1": {"d": 0, "s": 2, "qs": 4},
    "Q2_K": {"scales": 0, "qs": 16, "d": 80, "dmin": 82}, "Q3_K": {"hmask": 0, "qs": 32, "scales": 96, "d": 108},
    "Q4_K": {"d": 0, "dmin": 2, "scales": 4, "qs": 16}, "Q5_K": {"d": 0, "dmin": 2, "scales": 4, "qh": 16, "qs": 48},
    "Q6_K": {"ql": 0, "qh": 128, "scales": 192, "d": 208}, "Q8_K": {"d": 0, "qs": 4, "bsums": 260},
    "IQ4_NL": {"d": 0, "qs": 2}, "IQ4_XS": {"d": 0, "scales_h": 2, "scales_l": 4, "qs": 8},
    "IQ2_XXS": {"d": 0, "qs": 2}, "IQ2_XS": {"d": 0, "qs": 2, "scales": 66},
    "IQ2_S": {"d": 0, "qs": 2, "qh": 66, "scales": 74},            # qs[64]: grid bytes, then signs
    "IQ3_XXS": {"d": 0, "qs": 2},                                  # qs[96]: grid bytes, then scales_and_signs
    "IQ3_S": {"d": 0, "qs": 2, "qh": 66, "signs": 74, "scales": 106}, "IQ1_S": {"d": 0, "qs": 2, "qh": 34},
    "IQ1_M": {"qs": 0, "qh": 32, "scales": 48}, "TQ1_0": {"qs": 0, "qh": 48, "d": 52}, "TQ2_0": {"qs": 0, "d": 64},
    "Q1_0": {"d": 0, "qs": 2}, "Q2_0": {"d": 0, "qs": 2}, "MXFP4": {"e": 0, "qs": 1}, "NVFP4": {"d": 0, "qs": 4},
}


@pytest.mark.parametrize("fmt", [f for f in BLOCK_TYPES if f.family != "ggml-float"], ids=lambda f: f.name)
def test_fields_sit_where_the_c_struct_puts_them(fmt):
    for name, at in C_OFFSETS[fmt.name].items():
        assert fmt.layout.offset(name) == at, (fmt.name, name)


def test_split_and_join_are_inverse():
    rng = np.random.default_rng(0)
    for fmt in BLOCK_TYPES:
        data = rng.integers(0, 256, (3, 2 * fmt.type_size), dtype=np.uint8)
        f = fmt.layout.split(data)
        assert np.array_equal(fmt.layout.join(3, **f), data), fmt.name


def test_a_difference_is_named_by_field_and_element():
    x = np.random.default_rng(1).standard_normal((20, 2560)).astype(np.float32)
    want = refquant.quantize(x, "Q4_K")
    got = want.copy()
    got[17, 9 * 144 + 4 + 5] ^= 1                    # row 17, block 9: byte 5 of scales
    w, g = want[17, 9 * 144 + 9], got[17, 9 * 144 + 9]
    assert first_difference(get_format("Q4_K").layout, got, want) == \
        f"Q4_K block 9, row 17: scales[5] (6-bit min) {g}, spec {w}"
    got = want.copy()
    got[0, 144:146] = np.array([0x00, 0x3C], np.uint8)  # block 1's d = 1.0
    msg = first_difference(get_format("Q4_K").layout, got, want)
    assert msg.startswith("Q4_K block 1, row 0: d 1.0 (0x3c00), spec ")
    assert first_difference(get_format("Q4_K").layout, want, want) is None


def test_recipe_tables_agree_with_llama_cpp_and_gguf_py():
    """The whole-file pipeline's tables, read from the records: every file type's id is
    llama-cpp-python's LLAMA_FTYPE_* of that name and every LLAMA_FTYPE_MOSTLY_* is there; every
    ggml type's id is gguf-py's GGMLQuantizationType of that name (Q2_0, newer, is 42 in
    llama.cpp's ggml.h) and a type without a block has gguf-py's size."""
    import gguf
    import json
    import subprocess
    import sys
    from refquant.pipelines import recipes
    code = "import json, llama_cpp; print(json.dumps({n: getattr(llama_cpp, n) for n in dir(llama_cpp) " \
           "if n.startswith('LLAMA_FTYPE_')}))"   # libllama loaded in a process of its own
    llama = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                      check=True).stdout)
    names = {("ALL_F32" if ft.name == "F32" else f"MOSTLY_{ft.name}"): ft.id for ft in recipes.FILE_TYPES.values()}
    assert {f"LLAMA_FTYPE_{n}": i for n, i in names.items()} == \
        {n: i for n, i in llama.items() if n != "LLAMA_FTYPE_GUESSED"}
    for t in recipes.GGML_TYPES.values():
        if t.name == "Q2_0":
            assert t.id == 42
            continue
        gt = gguf.GGMLQuantizationType[t.name]
        assert t.id == int(gt), t.name
        if not t.quantized:
            assert (t.blck_size, t.type_size) == gguf.GGML_QUANT_SIZES[gt], t.name
    assert {int(t) for t in gguf.GGMLQuantizationType} <= set(recipes._BY_ID)
