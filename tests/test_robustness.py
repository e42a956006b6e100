"""The error contract (spec/robustness.md): every expected failure is one line and exit status 2,
an internal error one line and exit status 3; an output that is an input is refused; temporary
files do not outlive a failed, interrupted, terminated or killed write; bad GGUF headers are
refused before anything is allocated from them."""
import os
import signal
import struct
import subprocess
import sys
import time

import numpy as np
import pytest
from gguf import GGUFValueType as V

import refquant
from refquant.cli import main
from refquant.errors import FileFormatError, RefquantError
from refquant.io.gguf import KV, GGUFFile, TensorInfo, write_gguf
from test_gguf_io import small_model


@pytest.fixture
def model(tmp_path):
    p = tmp_path / "m.gguf"
    small_model(p)
    return p


def one_line(capsys, argv, status=2):
    assert main(argv) == status
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("refquant: "), err
    return err


# ------------------------------------------------------------------ nothing lost

@pytest.mark.parametrize("how", ["same", "spelled", "hardlink", "symlink"])
def test_output_that_is_the_input_is_refused(model, tmp_path, capsys, how):
    before = model.read_bytes()
    out = {"same": model, "spelled": tmp_path / "." / "m.gguf", "hardlink": tmp_path / "h.gguf",
           "symlink": tmp_path / "s.gguf"}[how]
    if how == "hardlink":
        os.link(model, out)
    elif how == "symlink":
        out.symlink_to(model)
    for argv in (["dequantize", str(model), str(out)], ["quantize", str(model), str(out), "--type", "Q8_0"]):
        err = one_line(capsys, argv)
        assert "refusing to overwrite an input" in err
        assert model.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted({"m.gguf", out.name})


def test_api_write_over_an_open_input_is_refused(model, tmp_path):
    with GGUFFile(model) as f:
        with pytest.raises(RefquantError, match="refusing to overwrite an input"):
            write_gguf(model, f.kvs, f.tensors, lambda t: f.raw(t.name))
    assert GGUFFile(model).tensors
    from refquant.io.safetensors import SafetensorsFile, save_file
    st = tmp_path / "a.safetensors"
    save_file(st, {"a": np.ones(3, np.float32)})
    f = SafetensorsFile(st)
    with pytest.raises(RefquantError, match="refusing to overwrite an input"):
        save_file(st, {"a": np.asarray(f["a"]) * 2})
    del f
    save_file(st, {"a": np.zeros(3, np.float32)})    # once the reader is gone, the file is free


def test_missing_output_directory_and_directory_inputs(model, tmp_path, capsys):
    err = one_line(capsys, ["dequantize", str(model), str(tmp_path / "no" / "o.gguf")])
    assert "output directory" in err and "does not exist" in err
    assert "is a directory" in one_line(capsys, ["inspect", str(tmp_path)])
    assert "is a directory" in one_line(capsys, ["dequantize", str(model), str(tmp_path)])


def test_quantize_of_a_file_that_is_not_gguf_names_it(tmp_path, capsys):
    from refquant.io.safetensors import save_file
    st = tmp_path / "model.safetensors"
    save_file(st, {"a": np.ones((4, 32), np.float32)})
    for argv in (["quantize", str(st), str(tmp_path / "o")], ["quantize", str(st), str(tmp_path / "o"), "Q4_0"]):
        err = one_line(capsys, argv)
        assert "model.safetensors" in err and "not a GGUF file" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]


def test_internal_error_is_one_line_and_status_3(model, monkeypatch, capsys):
    import refquant.cli as cli

    def broken(args):
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(cli, "cmd_inspect", broken)
    err = one_line(capsys, ["inspect", str(model)], status=3)
    assert "internal error (ZeroDivisionError: boom)" in err and "report" in err
    assert main(["--debug", "inspect", str(model)]) == 3
    err = capsys.readouterr().err
    assert "Traceback" in err and err.rstrip().endswith("traceback)")


def _temps(d):
    return [p.name for p in d.iterdir() if p.name.endswith(".tmp")]


def _start_slow_write(src, out):
    # a float model dequantized to F32 tensor by tensor; every progress step sleeps
    code = ("import sys, time, refquant.cli as c\n"
            "class P(c.Progress):\n"
            "    def __call__(self, item=None):\n"
            "        time.sleep(0.2)\n"
            "c.Progress = P\n"
            "sys.exit(c.main(sys.argv[1:]))\n")
    return subprocess.Popen([sys.executable, "-c", code, "dequantize", str(src), str(out), "--no-progress"],
                            stderr=subprocess.PIPE, text=True)


def _wait_for_temp(d, proc):
    for _ in range(6000):                # up to a minute: a loaded machine starts Python slowly
        if _temps(d) or proc.poll() is not None:
            return
        time.sleep(0.01)


def test_sigterm_and_sigkill_during_a_write(tmp_path):
    src = tmp_path / "m.gguf"
    infos = [TensorInfo(f"t{i}", 0, (4, 64)) for i in range(40)]
    write_gguf(src, [KV("general.architecture", V.STRING, "llama"), KV("llama.block_count", V.UINT32, 1)], infos,
               lambda t: np.full((4, 64), float(t.name[1:]), np.float32))
    out = tmp_path / "o.gguf"
    proc = _start_slow_write(src, out)
    _wait_for_temp(tmp_path, proc)
    assert _temps(tmp_path)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM and "terminated" in err and err.count("\n") == 1, (proc.returncode, err)
    assert _temps(tmp_path) == [] and not out.exists()
    proc = _start_slow_write(src, out)
    _wait_for_temp(tmp_path, proc)
    proc.kill()
    proc.wait()
    left = _temps(tmp_path)
    assert len(left) == 1 and not out.exists()
    # the next run into that directory names the killed run's file and removes it
    r = subprocess.run([sys.executable, "-m", "refquant.cli", "dequantize", str(src), str(out), "--no-progress"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert left[0] in r.stderr and "interrupted run" in r.stderr
    assert _temps(tmp_path) == [] and out.exists()


# ------------------------------------------------------------------ GGUF headers

def _header(n_tensors, kvs: bytes, n_kv, version=3, tail=b""):
    return struct.pack("<4sIQQ", b"GGUF", version, n_tensors, n_kv) + kvs + tail


def _s(b: bytes) -> bytes:
    return struct.pack("<Q", len(b)) + b


def _kv(key: bytes, vtype: int, payload: bytes) -> bytes:
    return _s(key) + struct.pack("<I", vtype) + payload


BAD_HEADERS = {
    "string not UTF-8": (_header(0, _kv(b"k", V.STRING, _s(b"\xff\xfe")), 1), "not UTF-8"),
    "key not UTF-8": (_header(0, _kv(b"k\xc3", V.UINT8, b"\0"), 1), "not UTF-8"),
    "string array element not UTF-8": (
        _header(0, _kv(b"k", V.ARRAY, struct.pack("<IQ", V.STRING, 3) + _s(b"ok") + _s(b"\xe2\x82") + _s(b"")), 1),
        "string 1 of 3 is not UTF-8"),
    "character split across elements": (
        _header(0, _kv(b"k", V.ARRAY, struct.pack("<IQ", V.STRING, 2) + _s(b"a\xc3") + _s(b"\xa9")), 1),
        "is not UTF-8"),
    "array of arrays": (_header(0, _kv(b"k", V.ARRAY, struct.pack("<IQ", V.ARRAY, 900) + bytes(64)), 1),
                        "array of arrays"),
    "10M strings in 80 bytes": (_header(0, _kv(b"k", V.ARRAY, struct.pack("<IQ", V.STRING, 10**7) + bytes(80)), 1),
                                "left in the file"),
    "2^62 u8": (_header(0, _kv(b"k", V.ARRAY, struct.pack("<IQ", V.UINT8, 2**62)), 1), "exceeds the limit"),
    "huge key length": (_header(0, struct.pack("<Q", 2**63) + bytes(16), 1), "exceeds the limit"),
    "alignment 2^31": (_header(0, _kv(b"general.alignment", V.UINT32, struct.pack("<I", 2**31)), 1),
                       "is not a power of two from 1 to"),
    "alignment 3": (_header(0, _kv(b"general.alignment", V.UINT32, struct.pack("<I", 3)), 1), "power of two"),
    "alignment as u64": (_header(0, _kv(b"general.alignment", V.UINT64, struct.pack("<Q", 32)), 1), "UINT32"),
    "unknown value type": (_header(0, _kv(b"k", 99, bytes(8)), 1), "unknown value type 99"),
    "duplicate key": (_header(0, _kv(b"k", V.UINT8, b"\0") * 2, 2), "appears twice"),
    "n_kv beyond the file": (_header(0, b"", 2**40, tail=bytes(64)), "cannot fit"),
    "big-endian": (struct.pack(">4sIQQ", b"GGUF", 3, 0, 0)[:4] + struct.pack(">IQQ", 3, 0, 0) + bytes(32),
                   "big-endian"),
    "dimension 2^63": (_header(1, b"", 0, tail=_s(b"t") + struct.pack("<IQ", 1, 2**63) + struct.pack("<IQ", 0, 0)),
                       "dimension 0"),
    "5 dimensions": (_header(1, b"", 0, tail=_s(b"t") + struct.pack("<I5Q", 5, 1, 1, 1, 1, 1) + bytes(12)),
                     "5 dimensions"),
    "elements overflow int64": (
        _header(1, b"", 0, tail=_s(b"t") + struct.pack("<I2Q", 2, 2**32, 2**32) + struct.pack("<IQ", 0, 0)),
        "more than 2^63"),
    "unknown ggml type": (_header(1, b"", 0, tail=_s(b"t") + struct.pack("<IQ", 1, 32) + struct.pack("<IQ", 999, 0)),
                          "unknown ggml type id 999"),
}


@pytest.mark.parametrize("case", sorted(BAD_HEADERS))
def test_bad_gguf_headers_are_one_line(case, tmp_path, capsys):
    data, expect = BAD_HEADERS[case]
    p = tmp_path / "bad.gguf"
    p.write_bytes(data)
    with pytest.raises(FileFormatError, match="byte offset|big-endian|alignment") as e:
        GGUFFile(p)
    assert expect in str(e.value) and str(p) in str(e.value)
    err = one_line(capsys, ["inspect", str(p)])
    assert expect in err
    err = one_line(capsys, ["dequantize", str(p), str(tmp_path / "o.gguf")])
    assert not (tmp_path / "o.gguf").exists()


def test_big_endian_gguf_from_gguf_py_is_refused(tmp_path, capsys):
    from gguf import GGUFEndian, GGUFWriter
    p = tmp_path / "be.gguf"
    w = GGUFWriter(str(p), "llama", endianess=GGUFEndian.BIG)
    w.add_tensor("w", np.array([[-0.902, 1.0]], dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    assert "big-endian GGUF file (version field 0x03000000)" in one_line(capsys, ["inspect", str(p)])


def test_a_large_string_array_is_one_array_of_offsets(tmp_path):
    """10^6 empty strings (an 8 MB array): read with memory in proportion, not a str per element."""
    n = 10**6
    p = tmp_path / "many.gguf"
    p.write_bytes(_header(0, _kv(b"k", V.ARRAY, struct.pack("<IQ", V.STRING, n) + bytes(8 * n)), 1))
    with GGUFFile(p) as f:
        v = f.kvs[0].value
        assert len(v) == n and v[0] == "" and v[-1] == ""
        assert v._starts.nbytes + v._lengths.nbytes == 16 * n


# ------------------------------------------------------------------ safetensors and checkpoints

def _st(header, data=b""):
    js = header if isinstance(header, bytes) else __import__("json").dumps(header).encode()
    return struct.pack("<Q", len(js)) + js + data


BAD_SAFETENSORS = {
    "entry null": (_st({"a": None}), "entry is a NoneType"),
    "entry a string": (_st({"a": "x"}), "entry is a str"),
    "entry a number": (_st({"a": 3}), "entry is a int"),
    "dtype a list": (_st({"a": {"dtype": ["F32"], "shape": [1], "data_offsets": [0, 4]}}, bytes(4)), "unknown dtype"),
    "no data_offsets": (_st({"a": {"dtype": "F32", "shape": [1]}}, bytes(4)), "data_offsets None"),
    "no shape": (_st({"a": {"dtype": "F32", "data_offsets": [0, 4]}}, bytes(4)), "shape None"),
    "shape 2^63": (_st({"a": {"dtype": "F32", "shape": [2**63], "data_offsets": [0, 4]}}, bytes(4)), "do not hold"),
    "shape a string": (_st({"a": {"dtype": "F32", "shape": ["1"], "data_offsets": [0, 4]}}, bytes(4)), "shape ['1']"),
    "shape NaN": (_st(b'{"a": {"dtype": "F32", "shape": [NaN], "data_offsets": [0, 4]}}', bytes(4)), "NaN"),
    "shape Infinity": (_st(b'{"a": {"dtype": "F32", "shape": [Infinity], "data_offsets": [0, 4]}}', bytes(4)),
                       "Infinity"),
    "offsets reversed": (_st({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}}, bytes(4)), "do not hold"),
    "not an object": (_st([1, 2]), "not a JSON object"),
    "not UTF-8": (_st(b'{"\xff": 1}'), "not UTF-8"),
    "deep nesting": (_st(b'{"a":' + b"[" * 100000 + b"]" * 100000 + b"}"), "nests too deeply"),
    "header past the end": (struct.pack("<Q", 2**40) + b"{}", "runs past the file"),
}


@pytest.mark.parametrize("case", sorted(BAD_SAFETENSORS))
def test_bad_safetensors_headers(case, tmp_path):
    from refquant.io.safetensors import SafetensorsFile
    data, expect = BAD_SAFETENSORS[case]
    p = tmp_path / "x.safetensors"
    p.write_bytes(data)
    with pytest.raises(FileFormatError) as e:
        SafetensorsFile(p)
    assert expect in str(e.value) and str(p) in str(e.value), str(e.value)


def _checkpoint(d, weight_map=None, config=b'{"model_type": "llama"}', name="a"):
    from refquant.io.safetensors import save_file
    d.mkdir()
    save_file(d / "model-00001-of-00001.safetensors", {name: np.zeros((4, 128), np.float32)})
    wm = {name: "model-00001-of-00001.safetensors"} if weight_map is None else weight_map
    (d / "model.safetensors.index.json").write_text(__import__("json").dumps({"weight_map": wm}))
    if config is not None:
        (d / "config.json").write_bytes(config)
    return d


@pytest.mark.parametrize("weight_map,expect", [
    ({"a": "/etc/passwd"}, "points outside the checkpoint"),
    ({"a": "../outside.safetensors"}, "points outside the checkpoint"),
    ({"a": 3}, "not a file name"),
    ([1], "weight_map"),
])
def test_index_is_confined_and_checked(tmp_path, weight_map, expect):
    from refquant.io.safetensors import Checkpoint
    d = _checkpoint(tmp_path / "ck")
    (d / "model.safetensors.index.json").write_text(__import__("json").dumps(
        {"weight_map": weight_map} if isinstance(weight_map, dict) else weight_map))
    with pytest.raises(RefquantError, match=expect):
        Checkpoint(d)


def test_index_naming_a_tensor_its_shard_lacks(tmp_path):
    from refquant.io.safetensors import Checkpoint
    d = _checkpoint(tmp_path / "ck", {"a": "model-00001-of-00001.safetensors", "b": "model-00001-of-00001.safetensors"})
    ck = Checkpoint(d)
    assert ck["a"].shape == (4, 128)
    with pytest.raises(FileFormatError, match="names tensor 'b'.*does not hold it"):
        ck["b"]


def test_a_link_out_of_the_checkpoint_is_refused(tmp_path):
    from refquant.io.safetensors import extra_files
    d = _checkpoint(tmp_path / "ck")
    (tmp_path / "secret").write_text("x")
    (d / "tokenizer.json").symlink_to(tmp_path / "secret")
    with pytest.raises(RefquantError, match="outside the checkpoint directory"):
        extra_files(d)
    (d / "tokenizer.json").unlink()
    (d / "tok.txt").write_text("t")
    (d / "tokenizer.json").symlink_to("tok.txt")          # a link inside is followed
    assert extra_files(d)["tokenizer.json"] == b"t"


@pytest.mark.parametrize("config,expect", [
    (b"", "not JSON"), (b'{"a": ', "not JSON"), (b'\xef\xbb\xbf{}', "byte-order mark"),
    (b'{"\xff": 1}', "not UTF-8"), (b"[1]", "not a JSON object"),
])
def test_bad_config_json(tmp_path, capsys, config, expect):
    d = _checkpoint(tmp_path / "ck", config=config, name="model.layers.0.self_attn.q_proj.weight")
    err = one_line(capsys, ["quantize", str(d), str(tmp_path / "out"), "--method", "rtn"])
    assert expect in err and "config.json" in err
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ right or refused

def test_negative_or_non_finite_imatrix_is_refused(tmp_path):
    import refquant
    from refquant.ggml.imatrix import read_imatrix, write_imatrix_legacy
    x = np.ones((1, 256), np.float32)
    for bad in (-1.0, np.nan, np.inf):
        im = np.ones(256, np.float32)
        im[7] = bad
        with pytest.raises(RefquantError, match="column 7"):
            refquant.quantize(x, "Q4_K", im)
        write_imatrix_legacy(tmp_path / "i.dat", {"w": (im, 1)})
        with pytest.raises(RefquantError, match="entry 'w' has a (negative|non-finite) value, .*, at 7"):
            read_imatrix(tmp_path / "i.dat")


@pytest.mark.parametrize("fmt", ["Q4_0", "Q8_0", "Q4_K", "Q6_K", "IQ2_XXS", "IQ4_NL", "TQ1_0", "MXFP4", "F16"])
def test_zero_rows_in_zero_rows_out(fmt):
    import refquant
    x = np.zeros((0, 256), np.float32)
    q = refquant.quantize(x, fmt, np.ones(256, np.float32))
    f = refquant.get_format(fmt)
    assert q.shape == (0, 256 // f.block_size * f.type_size) and q.dtype == np.uint8
    d = refquant.dequantize(q, fmt)
    assert d.shape == (0, 256) and d.dtype == np.float32


def test_zero_row_tensors_in_a_gguf_file(tmp_path, capsys):
    src = tmp_path / "z.gguf"
    infos = [TensorInfo("rows0", 0, (0, 64)), TensorInfo("ne0", 0, (0,)), TensorInfo("w", 0, (2, 64))]
    write_gguf(src, [KV("general.architecture", V.STRING, "llama"), KV("llama.block_count", V.UINT32, 1)], infos,
               lambda t: np.ones(t.shape, np.float32))
    assert main(["dequantize", str(src), str(tmp_path / "d.gguf"), "--no-progress"]) == 0
    for typ in ("MXFP4", "Q4_0"):                  # one ggml type everywhere; llama.cpp's file type
        assert main(["quantize", str(src), str(tmp_path / f"{typ}.gguf"), "--type", typ, "--no-progress"]) == 0
        with GGUFFile(tmp_path / f"{typ}.gguf") as f:
            assert {t.name: t.shape for t in f.tensors} == {"rows0": (0, 64), "ne0": (0,), "w": (2, 64)}
            assert f.dequantize("rows0", refquant.dequantize).shape == (0, 64)
            assert f.dequantize("ne0", refquant.dequantize).shape == (0,)


def test_scalar_and_block_size_edges():
    from refquant import affine, minifloat
    assert int(minifloat.encode(1.5, "E8M0")) == int(minifloat.encode(np.array([1.5]), "E8M0")[0])
    assert int(minifloat.encode(1e300, "E4M3FN")) == int(minifloat.encode(np.array([1e300]), "E4M3FN")[0])
    with pytest.raises(RefquantError, match="block_size must be a tuple of integers"):
        affine.choose_qparams(np.ones((2, 4), np.float32), (1, 1.5), 4)


def test_a_killed_checkpoint_write_is_removed_by_the_next(tmp_path, capsys):
    from refquant.io.files import _HOST
    from refquant.io.safetensors import save_checkpoint
    dead = tmp_path / f".out.refquant-{_HOST}-999999999-abc.tmp"     # no such process
    dead.mkdir()
    (dead / "model.safetensors").write_bytes(b"partial")
    other = tmp_path / ".out.refquant-otherhost-999999999-abc.tmp"    # another machine's: kept
    other.mkdir()
    save_checkpoint(tmp_path / "out", {"a": np.zeros(2, np.float32)})
    assert not dead.exists() and other.exists() and (tmp_path / "out" / "model.safetensors").exists()
    assert str(dead) in capsys.readouterr().err


def _split_model(d, n_parts):
    """A split GGUF model of n_parts files of two F16 tensors each in `d`; its first file."""
    from refquant.io.split import split_path
    names = [f"blk.{i}.{k}.weight" for i in range(n_parts) for k in ("attn_q", "ffn_up")]
    for p in range(n_parts):
        kvs = [KV("general.architecture", V.STRING, "llama"), KV("llama.block_count", V.UINT32, n_parts)]
        kvs = kvs if p == 0 else []
        kvs += [KV("split.no", V.UINT16, p), KV("split.count", V.UINT16, n_parts),
                KV("split.tensors.count", V.INT32, len(names))]
        write_gguf(split_path(d / "m", p, n_parts), kvs,
                   [TensorInfo(n, 1, (2, 256)) for n in names[2 * p:2 * p + 2]], lambda t: np.ones(512, np.float16))
    return split_path(d / "m", 0, n_parts)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_split_write_scans_its_directory_once(tmp_path, monkeypatch, capsys, workers):
    """--keep-split writes one file a part into one directory: a killed run's temporary there is
    removed (and named) once, and the directory is scanned once, not once a part (a scan a file
    is quadratic in the parts: 2,000 parts spent 3.4 s of CPU in it)."""
    from refquant.io import files
    from refquant.io.split import split_path
    from refquant.pipelines.recipes import quantize_model
    n_parts = 6
    src_dir, out_dir = tmp_path / "in", tmp_path / "out"
    src_dir.mkdir()
    out_dir.mkdir()
    src = _split_model(src_dir, n_parts)
    dead = out_dir / f".q-00001-of-00006.gguf.refquant-{files._HOST}-999999999-abc.tmp"     # no such process
    dead.write_bytes(b"partial")
    scans = []
    scandir = os.scandir
    monkeypatch.setattr(files.os, "scandir", lambda d=".": scans.append(os.path.abspath(d)) or scandir(d))
    quantize_model(src, out_dir / "q", "Q8_0", keep_split=True, workers=workers)
    assert scans.count(str(out_dir)) == 1, scans
    assert not dead.exists() and capsys.readouterr().err.count(str(dead)) == 1
    assert sorted(p.name for p in out_dir.iterdir()) == [os.path.basename(split_path("q", i, n_parts))
                                                         for i in range(n_parts)]


@pytest.mark.parametrize("workers", [1, 2])
def test_a_split_write_holds_few_descriptors_a_part(tmp_path, workers):
    """--keep-split of N parts holds one file descriptor a part for its input's map and, written
    in parallel, one for its output; no more (it held two more a part and ran out of them:
    "Too many open files" at some hundreds of parts under the usual limit of 1,024)."""
    import resource
    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("counts this process's descriptors in /proc/self/fd (Linux)")
    n = 40
    src = _split_model(tmp_path, n)
    a_part = 2 if workers > 1 else 1
    code = ("import os, resource\n"
            "from refquant.pipelines.recipes import quantize_model\n"
            "base = len(os.listdir('/proc/self/fd'))\n"
            f"limit = base + {a_part * n} + 16\n"      # 16: the few the run opens and closes as it goes
            "resource.setrlimit(resource.RLIMIT_NOFILE, (limit, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))\n"
            f"quantize_model({str(src)!r}, {str(tmp_path / 'q')!r}, 'Q8_0', keep_split=True, workers={workers})\n")
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[1] >= 200
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert len(list(tmp_path.glob(f"q-*-of-{n:05d}.gguf"))) == n


def test_inspect_shows_arrays_as_values(model, capsys):
    assert main(["inspect", str(model)]) == 0
    out = capsys.readouterr().out
    assert "[1, 2, 3] (3 items)" in out and "['a', 'bc'] (2 items)" in out


def test_a_full_disk_names_the_output(model, tmp_path, monkeypatch, capsys):
    import errno
    import refquant.io.files as files

    class Full:
        def __init__(self, fh):
            self.fh = fh

        def write(self, b):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __getattr__(self, k):
            return getattr(self.fh, k)

    real = files.AtomicFile.__enter__
    monkeypatch.setattr(files.AtomicFile, "__enter__", lambda self: Full(real(self)))
    out = tmp_path / "o.gguf"
    err = one_line(capsys, ["dequantize", str(model), str(out), "--no-progress"])
    assert f"{out}: cannot write: No space left on device" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf"]


def test_writers_start_the_writeback_of_whole_pages_once(tmp_path, monkeypatch):
    """Outputs have their writeback started as they are written (sync_file_range, so the fsync
    before the rename waits for little), in whole pages, each page at most once (a page the next
    bytes fill too is left to the fsync): the serial GGUF writer's batches tile the file from
    byte 0, the planned writer's ranges lie inside the tensors' bytes and cover most of them;
    pwrite_all writes an array's bytes at its offset."""
    from refquant.io import files
    from refquant.pipelines.recipes import quantize_model
    if sys.platform.startswith("linux"):
        assert files._sync_file_range() is not None          # glibc has it since 2.6
        fd = os.open(tmp_path / "probe", os.O_RDWR | os.O_CREAT)
        try:
            os.write(fd, b"x" * 8192)
            assert files._SYNC_FILE_RANGE(fd, 0, 8192, files._SYNC_FILE_RANGE_WRITE) == 0
        finally:
            os.close(fd)
    a = np.arange(12, dtype=np.float16).reshape(3, 4)
    (tmp_path / "w").write_bytes(b"\xff" * 40)
    fd = os.open(tmp_path / "w", os.O_WRONLY)
    try:
        files.pwrite_all(fd, a, 5)
    finally:
        os.close(fd)
    assert (tmp_path / "w").read_bytes() == b"\xff" * 5 + a.tobytes() + b"\xff" * 11

    seen = []
    monkeypatch.setattr(files, "_SYNC_FILE_RANGE", lambda fd, at, n, flags: seen.append((at, n, flags)) or 0)
    monkeypatch.setattr(files, "WRITEBACK_MIN", 2 * files.PAGE)
    monkeypatch.setattr(files, "WRITEBACK_BATCH", 16 * files.PAGE)

    def pages(ranges):
        assert all(at % files.PAGE == 0 and n % files.PAGE == 0 and n >= files.WRITEBACK_MIN for at, n, _ in ranges)
        assert all(f == files._SYNC_FILE_RANGE_WRITE for *_, f in ranges)
        got = [p for at, n, _ in ranges for p in range(at // files.PAGE, (at + n) // files.PAGE)]
        assert len(got) == len(set(got)), "a page in writeback twice"
        return set(got)

    rng = np.random.default_rng(0)
    ts = {f"blk.0.{n}.weight": rng.standard_normal((64, 1024 + 32 * i)).astype(np.float32)
          for i, n in enumerate(["ffn_up", "ffn_gate", "ffn_down", "attn_q"])}
    src = tmp_path / "m.gguf"
    write_gguf(src, [KV("general.architecture", V.STRING, "llama"), KV("llama.block_count", V.UINT32, 1)],
               [TensorInfo(n, 0, x.shape) for n, x in ts.items()], lambda t: ts[t.name])
    got = pages(seen)
    assert got == set(range(len(got))) and len(got) * files.PAGE > src.stat().st_size - files.WRITEBACK_BATCH
    for workers in (1, 2):
        seen.clear()
        out = tmp_path / f"q{workers}.gguf"
        quantize_model(src, out, "Q8_0", workers=workers)
        f = GGUFFile(out)
        got = pages(seen)
        inside = set()
        for t in f.tensors:
            at = f.data_offset + t.offset
            inside |= set(range(-(-at // files.PAGE), (at + t.nbytes) // files.PAGE))
        if workers == 1:            # the serial path streams the file: batches from byte 0
            assert got == set(range(len(got))) and len(got) >= len(inside) // 2
        else:                       # slabs written at their offsets: pages inside the tensors
            assert got <= inside and len(got) >= len(inside) // 2, (len(got), len(inside))


def test_imatrix_with_a_nan_count_is_refused(tmp_path):
    """Found by the fuzzer: a NaN count reached lround (undefined in C; a NumPy warning here)."""
    from refquant.ggml.imatrix import read_imatrix, write_imatrix_gguf
    p = tmp_path / "i.gguf"
    write_imatrix_gguf(p, {"blk.0.w": (np.ones((1, 32), np.float32), np.float32([np.nan]))}, ["t"], 1, 512)
    with pytest.raises(FileFormatError, match="'blk.0.w.counts' count 0 is nan"):
        read_imatrix(p)


def test_every_command_refuses_an_output_that_is_an_input(model, tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text("hello")
    before = model.read_bytes()
    for argv in (["imatrix", str(model), "--text", str(text), "-o", str(model)],
                 ["imatrix", str(model), "--text", str(text), "-o", str(text)],
                 ["eval", str(model), "--text", str(text), "--markdown", str(text)]):
        assert "refusing to overwrite an input" in one_line(capsys, argv)
    assert model.read_bytes() == before and text.read_text() == "hello"


def test_a_hugging_face_cache_snapshot_is_read_through_its_links(tmp_path):
    """A cache snapshot (models--ORG--NAME/snapshots/REV) is links into the repository's blobs/."""
    from refquant.io.safetensors import Checkpoint, extra_files, save_file
    repo = tmp_path / "models--org--name"
    blobs, snap = repo / "blobs", repo / "snapshots" / "abc123"
    blobs.mkdir(parents=True)
    snap.mkdir(parents=True)
    save_file(blobs / "1111", {"a": np.ones(4, np.float32)})
    (blobs / "2222").write_text("{}")
    (snap / "model.safetensors").symlink_to("../../blobs/1111")
    (snap / "tokenizer.json").symlink_to("../../blobs/2222")
    assert Checkpoint(snap)["a"].tolist() == [1, 1, 1, 1]
    assert extra_files(snap) == {"tokenizer.json": b"{}"}
