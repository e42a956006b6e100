"""The whole-file write loop's shortcuts against the plain code they replace."""
import numpy as np
import pytest

from refquant.io.gguf import KV, GGUFFile, GGUFValueType, StringArray, TensorInfo, write_gguf
from refquant.pipelines.recipes import _c_str_kv

V = GGUFValueType


@pytest.mark.parametrize("strings", [
    ["a", "bc", "", "def"],                          # no NUL (the length prefixes hold NULs)
    ["a", "b\0c", "d"],                              # a NUL inside a string
    ["\0", "x"], ["x", "y\0"], ["", "", "\0"],       # at a string's first and last byte
    [], [""], ["é\0ü"],
])
def test_string_array_nul_lookup_agrees_with_decoding(tmp_path, strings):
    p = tmp_path / "s.gguf"
    write_gguf(p, [KV("general.architecture", V.STRING, "llama"), KV("t.tokens", V.ARRAY, strings, V.STRING)],
               [TensorInfo("w", 0, (1, 32))], lambda t: np.zeros((1, 32), np.float32))
    with GGUFFile(p) as f:
        kv = next(kv for kv in f.kvs if kv.key == "t.tokens")
        assert isinstance(kv.value, StringArray)
        assert kv.value.any_contains_nul() == any("\0" in s for s in strings)
        out = _c_str_kv(kv)
        assert list(out.value) == [s.split("\0", 1)[0] for s in strings]
