"""GGUFFile's own header parser against gguf-py's GGUFReader, on files written by gguf-py's
GGUFWriter: the same values, the same raw bytes, the same types; numeric arrays as one NumPy array,
string arrays as a StringArray."""
import numpy as np
import pytest
from gguf import GGUFReader, GGUFValueType, GGUFWriter

import refquant
from refquant.io.gguf import GGUFFile


@pytest.fixture
def gguf_with_arrays(tmp_path):
    p = tmp_path / "arrays.gguf"
    w = GGUFWriter(str(p), "llama")
    w.add_array("t.strings", ["", "a", "héllo", "x" * 300, "\u2581tok"])
    w.add_array("t.one_string", ["only"])
    w.add_array("t.ints", [1, -2, 3, 2**31 - 1])
    w.add_array("t.floats", [0.5, -1.25, 3e38])
    w.add_array("t.bools", [True, False, True])
    w.add_array("t.empty", [])
    w.add_string("t.scalar", "s")
    w.add_uint32("t.u32", 7)
    w.add_tensor("w", np.arange(64, dtype=np.float32).reshape(2, 32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return p


def test_arrays_match_gguf_reader(gguf_with_arrays):
    ref = GGUFReader(gguf_with_arrays)
    with GGUFFile(gguf_with_arrays) as f:
        ours = {kv.key: kv for kv in f.kvs}
        for key, field in ref.fields.items():
            if key.startswith("GGUF."):
                continue
            kv = ours[key]
            raw = b"".join(bytes(np.asarray(p).reshape(-1).view(np.uint8)) for p in field.parts)
            assert kv.raw == raw, key
            value = kv.value.tolist() if isinstance(kv.value, np.ndarray) else kv.value
            assert value == field.contents(), key
            if isinstance(kv.value, np.ndarray):      # a numeric array is one NumPy array
                assert kv.value.size == len(field.contents()), key
            assert kv.vtype == field.types[0], key
            if field.types[0] == GGUFValueType.ARRAY and len(field.types) > 1:
                assert kv.sub_type == field.types[1], key
        assert np.array_equal(f.dequantize("w", refquant.dequantize), np.arange(64, dtype=np.float32).reshape(2, 32))
