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


def _one_string_array(path, strings: list[bytes], cut: int = 0, lengths=None):
    """A GGUF file of one key 'k' holding an array of strings (the bytes as given, each after its
    u64 length, or `lengths`), nothing else, less its last `cut` bytes."""
    import struct
    body = b"".join(struct.pack("<Q", len(s) if lengths is None else lengths[i]) + s for i, s in enumerate(strings))
    raw = (struct.pack("<IIQQ", 0x46554747, 3, 0, 1) + struct.pack("<Q", 1) + b"k"
           + struct.pack("<IIQ", 9, 8, len(strings)) + body)
    path.write_bytes(raw[:len(raw) - cut])
    return path


BODY = 24 + 9 + 16    # the header, the key (its length and one byte), the types and the count


def test_string_array_cut_inside_a_length_prefix(tmp_path):
    p = _one_string_array(tmp_path / "a.gguf", [b"a" * 12, b"cde"], cut=3 + 5)   # 3 of string 1's 8 length bytes left
    at = BODY + 8 + 12
    with pytest.raises(refquant.FileFormatError, match=rf"key 'k': string 1 of 2: 8 bytes needed, 3 left in the file "
                                                       rf"\(byte offset {at}\)$"):
        GGUFFile(p)


def test_string_array_length_past_the_end(tmp_path):
    p = _one_string_array(tmp_path / "a.gguf", [b"ab", b"cde", b"f"], lengths=[2, 3, 2])   # 'f' claims 2 bytes
    at = BODY + 8 + 2 + 8 + 3
    with pytest.raises(refquant.FileFormatError, match=rf"key 'k': string 2 of 3: length 2 runs past the end of the "
                                                       rf"file \(byte offset {at}\)$"):
        GGUFFile(p)


@pytest.mark.parametrize("strings", [[b"ab", b"", b"c" * 300], [b"a\0b", b"c"], [b"", b"\0"], [b"x"] * 3 + [b"y\0"]])
def test_string_array_nul_and_values(tmp_path, strings):
    """Length prefixes hold NUL bytes too: only a NUL inside a string counts."""
    with GGUFFile(_one_string_array(tmp_path / "a.gguf", strings)) as f:
        (kv,) = f.kvs
        assert list(kv.value) == [s.decode() for s in strings]
        assert kv.value.any_contains_nul() == any(b"\0" in s for s in strings)


@pytest.mark.parametrize("strings,bad", [([b"ok", b"\xff"], 1), ([b"\xc3\xa9", b"\xe2\x82"], 1), ([b"\x80a", b"b"], 0)])
def test_string_array_not_utf8_names_the_string(tmp_path, strings, bad):
    with pytest.raises(refquant.FileFormatError, match=rf"key 'k': string {bad} of 2 is not UTF-8"):
        GGUFFile(_one_string_array(tmp_path / "a.gguf", strings))
