"""refquant.io.safetensors against the safetensors package (0.8.0): files either one writes the
other reads, FP8 through the package's torch API (its NumPy API cannot load F8_*), same bytes for
the same input, shards and index, atomic writes, bad files."""
import json
import os

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import safetensors.numpy as stn
import safetensors.torch as stt
from refquant.errors import FileFormatError, InputError
from refquant.io import safetensors as S
from tools.oracles.pytorch import to_numpy

NP_DTYPES = ["F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL"]
ALL = NP_DTYPES + ["F8_E4M3", "F8_E5M2"]


@st.composite
def tensor_dicts(draw, dtypes=ALL):
    n = draw(st.integers(0, 5))
    out = {}
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    for i in range(n):
        dt = S.DTYPES[draw(st.sampled_from(dtypes))]
        shape = tuple(draw(st.lists(st.integers(0, 4), max_size=3)))
        raw = rng.integers(0, 256, int(np.prod(shape, dtype=int)) * dt.itemsize, dtype=np.uint8)
        a = raw.view(dt).reshape(shape) if dt != np.bool_ else (raw > 127).reshape(shape)
        out[draw(st.sampled_from(["a", "b.weight", "model.layers.0.x", "z", "é"])) + str(i)] = a
    return out


def same(a, b):
    assert a.dtype == b.dtype and a.shape == b.shape
    np.testing.assert_array_equal(np.ascontiguousarray(a).view(np.uint8), np.ascontiguousarray(b).view(np.uint8))


@settings(max_examples=40)
@given(tensor_dicts(), st.dictionaries(st.sampled_from(["format", "x", "b"]), st.text(max_size=5), max_size=3))
def test_package_reads_ours_and_we_read_its(tmp_path_factory, t, meta):
    d = tmp_path_factory.mktemp("st")
    S.save_file(d / "ours.safetensors", t, meta)
    theirs = stt.load_file(str(d / "ours.safetensors"))      # torch API: every dtype, FP8 included
    assert set(theirs) == set(t)
    for k, a in t.items():
        same(_np(theirs[k]), a)
    from safetensors import safe_open
    with safe_open(str(d / "ours.safetensors"), "pt") as f:
        assert (f.metadata() or {}) == meta
    np_only = {k: v for k, v in t.items() if S.dtype_name(v.dtype) in NP_DTYPES}
    stn.save_file(np_only, str(d / "pkg.safetensors"), metadata=meta or None)
    got = S.SafetensorsFile(d / "pkg.safetensors")
    assert set(got) == set(np_only) and got.metadata == meta
    for k, a in np_only.items():
        same(got[k], a)
    # same input, same bytes
    S.save_file(d / "again.safetensors", dict(reversed(list(t.items()))), dict(reversed(list(meta.items()))))
    assert (d / "ours.safetensors").read_bytes() == (d / "again.safetensors").read_bytes()


def _np(x):
    """torch -> NumPy through the bits (bf16 and FP8 have no NumPy type in torch)."""
    import torch
    if x.dtype == torch.bfloat16:
        return x.contiguous().view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    if x.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
        dt = ml_dtypes.float8_e4m3fn if x.dtype == torch.float8_e4m3fn else ml_dtypes.float8_e5m2
        return x.contiguous().view(torch.uint8).numpy().view(dt)
    return x.numpy()


def test_fp8_round_trip_and_package_numpy_limit(tmp_path):
    a = np.arange(256, dtype=np.uint8).view(ml_dtypes.float8_e4m3fn).reshape(16, 16)
    S.save_file(tmp_path / "f.safetensors", {"w": a})
    same(S.SafetensorsFile(tmp_path / "f.safetensors")["w"], a)
    with pytest.raises(Exception):
        stn.load_file(str(tmp_path / "f.safetensors"))


def test_sharded_checkpoint(tmp_path):
    t = {f"layer.{i}.weight": np.full((4, 8), i, np.float32) for i in range(5)}
    S.save_checkpoint(tmp_path / "ck", t, max_shard_bytes=300, extra_files={"config.json": "{}"})
    files = sorted(os.listdir(tmp_path / "ck"))
    assert S.INDEX in files and "model-00001-of-00003.safetensors" in files
    idx = json.loads((tmp_path / "ck" / S.INDEX).read_text())
    assert idx["metadata"]["total_size"] == 5 * 128
    ck = S.Checkpoint(tmp_path / "ck")
    for k, a in t.items():
        same(ck[k], a)
        same(stn.load_file(str(tmp_path / "ck" / idx["weight_map"][k]))[k], a)
    with pytest.raises(InputError, match="exists"):
        S.save_checkpoint(tmp_path / "ck", t)


def test_failed_write_leaves_nothing(tmp_path):
    class Bad:
        pass
    with pytest.raises(InputError):
        S.save_checkpoint(tmp_path / "out", {"a": np.zeros(2, np.float32), "b": np.zeros(2, np.complex64)})
    assert os.listdir(tmp_path) == []


def test_bad_files(tmp_path):
    p = tmp_path / "x.safetensors"
    p.write_bytes(b"\x05")
    with pytest.raises(FileFormatError, match="short"):
        S.SafetensorsFile(p)
    p.write_bytes((1000).to_bytes(8, "little") + b"{}")
    with pytest.raises(FileFormatError, match="runs past"):
        S.SafetensorsFile(p)
    h = json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}).encode()
    p.write_bytes(len(h).to_bytes(8, "little") + h + b"\0" * 8)
    with pytest.raises(FileFormatError, match="offsets"):
        S.SafetensorsFile(p)
