"""GGUF files: exact round trips, a real model decoded as ggml decodes it, bad files, atomic writes."""
import hashlib
import os
import struct

import numpy as np
import pytest
from gguf import GGUFReader, GGUFValueType

import refquant
from refquant.errors import FileFormatError
from refquant.io.gguf import KV, GGUFFile, TensorInfo, copy_gguf, write_gguf
from tools.models import smollm2_path


@pytest.fixture(scope="module")
def smol():
    return smollm2_path()


def md5(p):
    return hashlib.md5(open(p, "rb").read()).hexdigest()


def test_round_trip_real_model_is_byte_identical(smol, tmp_path):
    with GGUFFile(smol) as f:
        copy_gguf(f, tmp_path / "copy.gguf")
    assert md5(tmp_path / "copy.gguf") == md5(smol)


def test_real_model_dequantizes_as_ggml(smol, ggml):
    """Every tensor of SmolLM2-135M (Q8_0, Q4_1, F32) decoded by refquant equals ggml's to_float."""
    with GGUFFile(smol) as f:
        seen = set()
        for t in f.tensors:
            ours = f.dequantize(t.name, refquant.dequantize)
            raw = np.asarray(f.raw(t.name))
            theirs = raw.view(np.float32) if t.type_name == "F32" else ggml.dequantize(raw, t.type_name)
            np.testing.assert_array_equal(ours.view(np.uint32), theirs.reshape(ours.shape).view(np.uint32),
                                          err_msg=t.name)
            seen.add(t.type_name)
    assert seen == {"F32", "Q4_1", "Q8_0"}


def small_model(path, **kw):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 64)).astype(np.float32)
    tensors = {"a.weight": ("Q8_0", w), "b.norm": ("F32", rng.standard_normal(64).astype(np.float32))}
    kvs = [KV("general.architecture", GGUFValueType.STRING, "llama"),
           KV("general.name", GGUFValueType.STRING, "tiny"),
           KV("llama.block_count", GGUFValueType.UINT32, 1),
           KV("x.list", GGUFValueType.ARRAY, [1, 2, 3], GGUFValueType.INT32),
           KV("x.strs", GGUFValueType.ARRAY, ["a", "bc"], GGUFValueType.STRING),
           KV("x.f", GGUFValueType.FLOAT32, 0.5)]
    infos = [TensorInfo(n, refquant.get_format(t).ggml_type, x.shape) for n, (t, x) in tensors.items()]
    write_gguf(path, kvs, infos, lambda t: refquant.quantize(tensors[t.name][1].reshape(-1, 64)
                                                             if t.name == "a.weight" else tensors[t.name][1],
                                                             tensors[t.name][0]), **kw)
    return tensors


def test_written_file_reads_in_gguf_py(tmp_path):
    p = tmp_path / "m.gguf"
    tensors = small_model(p)
    r = GGUFReader(p)
    assert r.fields["general.name"].contents() == "tiny"
    assert r.fields["x.list"].contents() == [1, 2, 3]
    assert r.fields["x.strs"].contents() == ["a", "bc"]
    names = [t.name for t in r.tensors]
    assert names == ["a.weight", "b.norm"]
    assert r.tensors[0].tensor_type.name == "Q8_0" and list(r.tensors[0].shape) == [64, 4]
    np.testing.assert_array_equal(np.asarray(r.tensors[1].data), tensors["b.norm"][1])
    for t in r.tensors:
        assert t.data_offset % 32 == 0
    # same input, same bytes
    small_model(tmp_path / "again.gguf")
    assert md5(p) == md5(tmp_path / "again.gguf")


def test_failed_write_leaves_nothing(tmp_path):
    p = tmp_path / "out.gguf"

    def boom(t):
        raise RuntimeError("disk full")

    infos = [TensorInfo("a", 0, (8,))]
    with pytest.raises(RuntimeError):
        write_gguf(p, [], infos, boom)
    assert list(tmp_path.iterdir()) == []
    # an existing file survives a failed overwrite untouched
    p.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        write_gguf(p, [], infos, boom)
    assert p.read_bytes() == b"old" and list(tmp_path.iterdir()) == [p]


def test_written_file_has_ordinary_permissions(tmp_path):
    p = tmp_path / "m.gguf"
    small_model(p)
    umask = os.umask(0)
    os.umask(umask)
    assert p.stat().st_mode & 0o777 == 0o666 & ~umask


# ------------------------------------------------------------------ bad files

@pytest.fixture
def good(tmp_path):
    p = tmp_path / "good.gguf"
    small_model(p)
    return p


def corrupt(src, dst, edit):
    b = bytearray(src.read_bytes())
    b = edit(b)
    dst.write_bytes(bytes(b))
    return dst


def tensor_info_offset(b, name):
    i = bytes(b).index(name.encode())
    return i + len(name)  # just past the name: n_dims u32, ne[], type u32, offset u64


def test_wrong_magic(good, tmp_path):
    p = corrupt(good, tmp_path / "bad.gguf", lambda b: b"GGUX" + b[4:])
    with pytest.raises(FileFormatError, match="bad magic b'GGUX'"):
        GGUFFile(p)


@pytest.mark.parametrize("keep", [10, 100, 300])
def test_truncated_header(good, tmp_path, keep):
    p = corrupt(good, tmp_path / "bad.gguf", lambda b: b[:keep])
    with pytest.raises(FileFormatError):
        GGUFFile(p)


def test_truncated_data_names_the_tensor(good, tmp_path):
    p = corrupt(good, tmp_path / "bad.gguf", lambda b: b[:-200])
    with pytest.raises(FileFormatError, match="tensor 'b.norm'.*past the end of the file"):
        GGUFFile(p)


def test_unknown_type_names_the_tensor(good, tmp_path):
    def edit(b):
        at = tensor_info_offset(b, "a.weight") + 4 + 2 * 8
        b[at:at + 4] = struct.pack("<I", 77)
        return b
    p = corrupt(good, tmp_path / "bad.gguf", edit)
    with pytest.raises(FileFormatError, match="tensor 'a.weight': unknown ggml type id 77"):
        GGUFFile(p)


def test_offset_past_end_names_the_tensor(good, tmp_path):
    def edit(b):
        at = tensor_info_offset(b, "b.norm") + 4 + 8 + 4
        b[at:at + 8] = struct.pack("<Q", 1 << 20)
        return b
    p = corrupt(good, tmp_path / "bad.gguf", edit)
    with pytest.raises(FileFormatError, match=r"tensor 'b.norm': data at byte offset \d+\.\.\d+ runs past the end"):
        GGUFFile(p)


def test_missing_file(tmp_path):
    with pytest.raises(FileFormatError, match="cannot open"):
        GGUFFile(tmp_path / "nope.gguf")
