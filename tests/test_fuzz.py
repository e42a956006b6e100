"""A structure-aware fuzzer over the files refquant reads: GGUF files, safetensors files and
checkpoint directories, built valid by the tests and then mutated (a header field set to a value
at a limit, bits flipped, bytes spliced in, the file cut short; JSON fields replaced by any JSON
value; index entries pointing out of the directory, links out of it, config.json broken).

The contract asserted for every input (spec/robustness.md):
  API   the reader returns, or raises a RefquantError; every value and tensor it returns can be
        read (a tensor decodes, or raises a RefquantError)
  CLI   exit status 0, or 2 with exactly one line on stderr; on 2 no output and no temporary
        file is left; nothing outside a checkpoint directory is read

Seeded (derandomize): the same run finds the same inputs. `make test` runs a short budget;
`make fuzz` (REFQUANT_FUZZ_EXAMPLES, default 2000 per target) the long one, with statistics.
"""
import contextlib
import io
import json
import os
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFValueType as V
from hypothesis import HealthCheck, event, given, settings, strategies as st

import refquant
from refquant.cli import main
from refquant.errors import RefquantError
from refquant.io.gguf import GGUFFile, StringArray, copy_gguf

EXAMPLES = int(os.environ.get("REFQUANT_FUZZ_EXAMPLES", "0")) or None
fuzz_settings = settings(max_examples=EXAMPLES or 25, derandomize=True, deadline=None, database=None,
                         suppress_health_check=list(HealthCheck))

# values at the edges of what a field can hold
INTERESTING = [0, 1, 2, 3, 7, 8, 31, 32, 33, 255, 256, 2**16, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**62,
               2**63 - 1, 2**63, 2**64 - 1]


def run_cli(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, err.getvalue()


def assert_cli_contract(rc, err, out_path=None, directory=None):
    assert rc in (0, 2), (rc, err)
    if rc == 2:
        assert err.startswith("refquant: error: ") and err.count("\n") == 1, err
        if out_path is not None:
            assert not Path(out_path).exists()
    if directory is not None:
        assert not [p for p in os.listdir(directory) if p.endswith(".tmp")], os.listdir(directory)


# ------------------------------------------------------------------ GGUF

class Builder:
    """GGUF bytes, remembering where each integer field lies (offset, size) for the mutations."""

    def __init__(self):
        self.b = bytearray()
        self.fields = []

    def int(self, fmt, v):
        self.fields.append((len(self.b), struct.calcsize(fmt)))
        self.b += struct.pack(fmt, v)

    def str(self, s: bytes):
        self.int("<Q", len(s))
        self.b += s


def gguf_bytes(kvs, tensors, alignment):
    g = Builder()
    g.b += b"GGUF"
    g.int("<I", 3)
    g.int("<Q", len(tensors))
    g.int("<Q", len(kvs) + 1)
    g.str(b"general.alignment")
    g.int("<I", int(V.UINT32))
    g.int("<I", alignment)
    for key, vtype, payload in kvs:
        g.str(key)
        g.int("<I", vtype)
        if vtype == V.ARRAY:
            sub, items = payload
            g.int("<I", sub)
            g.int("<Q", len(items))
            for it in items:
                if sub == V.STRING:
                    g.str(it)
                else:
                    g.b += it
        elif vtype == V.STRING:
            g.str(payload)
        else:
            g.b += payload
    offsets, at = [], 0
    for name, ggml_type, ne, data in tensors:
        g.str(name)
        g.int("<I", len(ne))
        for d in ne:
            g.int("<Q", d)
        g.int("<I", ggml_type)
        g.int("<Q", at)
        offsets.append(at)
        at += -(-len(data) // alignment) * alignment
    g.b += bytes(-len(g.b) % alignment)
    for (_, _, _, data), off in zip(tensors, offsets):
        g.b += data + bytes(-len(data) % alignment)
    return g


SCALARS = {V.UINT8: "<B", V.INT8: "<b", V.UINT16: "<H", V.INT16: "<h", V.UINT32: "<I", V.INT32: "<i",
           V.FLOAT32: "<f", V.UINT64: "<Q", V.INT64: "<q", V.FLOAT64: "<d", V.BOOL: "<B"}
utf8 = st.text(max_size=6).map(lambda s: s.encode())
raw_bytes = st.binary(max_size=6)


@st.composite
def kv_entries(draw):
    key = draw(st.sampled_from([b"general.name", b"x.a", b"tokenizer.ggml.tokens", b"\xc3\xa9", b"k"])) + \
        str(draw(st.integers(0, 99))).encode()
    kind = draw(st.sampled_from(["scalar", "string", "array", "string_array"]))
    if kind == "scalar":
        t = draw(st.sampled_from(sorted(SCALARS)))
        return key, int(t), draw(st.binary(min_size=struct.calcsize(SCALARS[t]),
                                           max_size=struct.calcsize(SCALARS[t])))
    if kind == "string":
        return key, int(V.STRING), draw(st.one_of(utf8, raw_bytes))
    if kind == "array":
        t = draw(st.sampled_from(sorted(SCALARS)))
        n = struct.calcsize(SCALARS[t])
        return key, int(V.ARRAY), (int(t), draw(st.lists(st.binary(min_size=n, max_size=n), max_size=5)))
    return key, int(V.ARRAY), (int(V.STRING), draw(st.lists(st.one_of(utf8, raw_bytes), max_size=5)))


TYPES = {0: (1, 4), 1: (1, 2), 8: (32, 34), 2: (32, 18), 12: (256, 144), 30: (1, 2), 39: (32, 17)}  # F32 F16 Q8_0 Q4_0 Q4_K BF16 MXFP4


@st.composite
def tensor_entries(draw, i):
    t = draw(st.sampled_from(sorted(TYPES)))
    bs, ts = TYPES[t]
    ne0 = bs * draw(st.integers(0, 2))
    ne = [ne0] + draw(st.lists(st.integers(0, 3), max_size=2))
    n = 1
    for d in ne:
        n *= d
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    data = rng.integers(0, 256, n // bs * ts, dtype=np.uint8)
    if t in (0, 1, 30):                          # finite floats, as a float model holds them
        dt = {0: np.float32, 1: np.float16, 30: np.float32}[t]
        vals = rng.standard_normal(n).astype(dt)
        data = vals.view(np.uint8) if t != 30 else (vals.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8)
    return f"t{i}.weight".encode(), t, ne, data.tobytes()


@st.composite
def gguf_files(draw):
    kvs = draw(st.lists(kv_entries(), max_size=4, unique_by=lambda kv: kv[0]))
    n = draw(st.integers(0, 3))
    tensors = [draw(tensor_entries(i)) for i in range(n)]
    alignment = draw(st.sampled_from([32, 32, 64, 8, 1]))
    g = gguf_bytes(kvs, tensors, alignment)
    data = bytearray(g.b)
    strings = [kv[0] for kv in kvs] + [kv[2] for kv in kvs if kv[1] == V.STRING] + \
        [s for kv in kvs if kv[1] == V.ARRAY and kv[2][0] == V.STRING for s in kv[2][1]]
    valid = all(_is_utf8(s) for s in strings)
    mutations = draw(st.lists(st.tuples(st.sampled_from(["field", "flip", "splice", "cut"]),
                                        st.integers(0, 2**32), st.integers(0, 2**32)), max_size=3))
    for kind, a, b in mutations:
        if not data:
            break
        if kind == "field" and g.fields:
            off, size = g.fields[a % len(g.fields)]
            v = INTERESTING[b % len(INTERESTING)] % (1 << (8 * size))
            if off + size <= len(data):
                data[off:off + size] = v.to_bytes(size, "little")
        elif kind == "flip":
            data[a % len(data)] ^= 1 << (b % 8)
        elif kind == "splice":
            at = a % (len(data) + 1)
            data[at:at] = (b % 2**32).to_bytes(4, "little")[: 1 + b % 4]
        elif kind == "cut":
            del data[a % len(data):]
    return bytes(data), valid and not mutations


def _is_utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def read_everything(f: GGUFFile):
    for kv in f.kvs:
        v = kv.value
        if isinstance(v, StringArray):
            list(v)
        elif isinstance(v, np.ndarray):
            v.tolist()
    for t in f.tensors:
        try:
            x = f.dequantize(t.name, refquant.dequantize)
            assert x.shape == t.shape and x.dtype == np.float32
        except RefquantError:
            pass


@fuzz_settings
@given(gguf_files())
def test_fuzz_gguf(case):
    data, pristine = case
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "in.gguf"
        p.write_bytes(data)
        try:
            f = GGUFFile(p)
            event("GGUF read")
        except RefquantError:
            f = None
            event("GGUF refused")
            assert not pristine, "a file built valid was refused"
        if f is not None:
            with f:
                read_everything(f)
                if pristine:                   # what was read writes back byte for byte
                    copy_gguf(f, Path(d) / "copy.gguf")
                    assert (Path(d) / "copy.gguf").read_bytes() == data
        rc, err = run_cli(["inspect", str(p)])
        assert_cli_contract(rc, err)
        assert (rc == 0) == (f is not None)
        out = Path(d) / "out.gguf"
        rc, err = run_cli(["dequantize", str(p), str(out), "--no-progress"])
        assert_cli_contract(rc, err, out, d)
        if rc == 0:
            with GGUFFile(out) as g:
                read_everything(g)


# ------------------------------------------------------------------ safetensors

json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-2**65, 2**65), st.floats(allow_nan=True, allow_infinity=True),
              st.text(max_size=4)),
    lambda c: st.one_of(st.lists(c, max_size=3), st.dictionaries(st.text(max_size=3), c, max_size=3)),
    max_leaves=6)
DT = {"F32": 4, "F16": 2, "BF16": 2, "I8": 1, "U8": 1, "F8_E4M3": 1, "I64": 8, "BOOL": 1}


@st.composite
def safetensors_files(draw):
    h, at = {}, 0
    for i in range(draw(st.integers(0, 3))):
        dt = draw(st.sampled_from(sorted(DT)))
        shape = draw(st.lists(st.integers(0, 3), max_size=3))
        n = DT[dt]
        for s in shape:
            n *= s
        h[f"t{i}"] = {"dtype": dt, "shape": shape, "data_offsets": [at, at + n]}
        at += n
    if draw(st.booleans()):
        h["__metadata__"] = {"format": "pt"}
    for _ in range(draw(st.integers(0, 2))):                 # a field, an entry or the header replaced
        v = draw(json_values)
        if not isinstance(h, dict):
            break
        names = sorted(k for k in h if k != "__metadata__")
        entries = [k for k in names if isinstance(h[k], dict)]
        where = draw(st.sampled_from(["field", "entry", "header", "new"]))
        if where == "field" and entries:
            h[draw(st.sampled_from(entries))][draw(st.sampled_from(["dtype", "shape", "data_offsets", "x"]))] = v
        elif where == "entry" and names:
            h[draw(st.sampled_from(names))] = v
        elif where == "header":
            h = v
        else:
            h[draw(st.text(max_size=3))] = v
    js = json.dumps(h).encode()
    data = struct.pack("<Q", len(js)) + js + bytes(draw(st.integers(0, at + 8)))
    cut = draw(st.one_of(st.none(), st.integers(0, len(data))))
    return data[:cut] if cut is not None else data


@fuzz_settings
@given(safetensors_files())
def test_fuzz_safetensors(data):
    from refquant.io.safetensors import SafetensorsFile
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "x.safetensors"
        p.write_bytes(data)
        try:
            f = SafetensorsFile(p)
            event("safetensors read")
        except RefquantError:
            event("safetensors refused")
            return
        for name in f:
            a = f[name]
            assert a.shape == f.entries[name][1]


# ------------------------------------------------------------------ checkpoint directories

LAYER = "model.layers.0.self_attn.q_proj.weight"


@st.composite
def checkpoints(draw):
    """(files, links, expect_refusal): a one-layer checkpoint, its index and config, mutated."""
    config = {"model_type": "llama", "hidden_size": 128}
    wm = {LAYER: "model-00001-of-00001.safetensors"}
    links = {}
    for _ in range(draw(st.integers(0, 2))):
        kind = draw(st.sampled_from(["shard_out", "shard_abs", "shard_value", "index", "config", "link_out",
                                     "link_in", "missing_tensor"]))
        if kind in ("shard_out", "shard_abs", "shard_value", "missing_tensor") and not isinstance(wm, dict):
            continue
        if kind == "shard_out":
            wm[LAYER] = "../outside.safetensors"
        elif kind == "shard_abs":
            wm[LAYER] = "@OUTSIDE@"
        elif kind == "shard_value":
            wm[LAYER] = draw(json_values)
        elif kind == "index":
            wm = draw(json_values)
        elif kind == "config":
            config = draw(st.one_of(json_values, st.binary(max_size=12)))
        elif kind == "link_out":
            links["tokenizer.json"] = "../secret.txt"
        elif kind == "link_in":
            links["tokenizer.json"] = "special_tokens_map.json"
        else:
            wm["model.layers.0.mlp.up_proj.weight"] = "model-00001-of-00001.safetensors"
    refuse = links.get("tokenizer.json") == "../secret.txt" or (
        isinstance(wm, dict) and wm.get(LAYER) in ("../outside.safetensors", "@OUTSIDE@"))
    return wm, config, links, refuse


@fuzz_settings
@given(checkpoints())
def test_fuzz_checkpoint_dirs(case):
    from refquant.io.safetensors import save_file
    wm, config, links, refuse = case
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        (d / "secret.txt").write_text("SECRET-OUTSIDE")
        save_file(d / "outside.safetensors", {LAYER: np.full((32, 128), 7, np.float32)})
        ck = d / "ck"
        ck.mkdir()
        save_file(ck / "model-00001-of-00001.safetensors", {LAYER: np.ones((32, 128), np.float32)})
        if isinstance(wm, dict) and wm.get(LAYER) == "@OUTSIDE@":
            wm[LAYER] = str(d / "outside.safetensors")
        (ck / "model.safetensors.index.json").write_text(json.dumps({"weight_map": wm}))
        (ck / "config.json").write_bytes(config if isinstance(config, bytes) else json.dumps(config).encode())
        (ck / "special_tokens_map.json").write_text("{}")
        for name, target in links.items():
            (ck / name).symlink_to(target)
        out = d / "out"
        rc, err = run_cli(["quantize", str(ck), str(out), "--method", "rtn", "--group-size", "128",
                           "--no-progress"])
        assert_cli_contract(rc, err, out, d)
        event(f"checkpoint exit {rc}")
        if refuse:
            assert rc == 2, "a path out of the checkpoint was followed"
        if rc == 0:
            for p in out.iterdir():
                assert b"SECRET-OUTSIDE" not in p.read_bytes()


# ------------------------------------------------------------------ imatrix files

@st.composite
def imatrix_files(draw):
    from refquant.ggml.imatrix import write_imatrix_gguf, write_imatrix_legacy
    n = draw(st.integers(1, 3))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    legacy = draw(st.booleans())
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "i"
        if legacy:
            write_imatrix_legacy(p, {f"blk.{i}.w": (rng.random(32).astype(np.float32), 4) for i in range(n)},
                                 draw(st.integers(0, 9)), "text.txt")
        else:
            write_imatrix_gguf(p, {f"blk.{i}.w": (rng.random((1, 32)).astype(np.float32), np.float32([4]))
                                   for i in range(n)}, ["text.txt"], 3, 512)
        data = bytearray(p.read_bytes())
    for kind, a, b in draw(st.lists(st.tuples(st.sampled_from(["int", "flip", "cut", "f32"]),
                                              st.integers(0, 2**32), st.integers(0, 2**32)), max_size=3)):
        if not data:
            break
        at = a % len(data)
        if kind == "int":                     # a 4-byte window set to a limit value
            data[at:at + 4] = (INTERESTING[b % len(INTERESTING)] % 2**32).to_bytes(4, "little")
        elif kind == "f32":                   # a value made negative, NaN or Inf
            data[at:at + 4] = struct.pack("<f", [-1.0, float("nan"), float("inf"), -0.0][b % 4])
        elif kind == "flip":
            data[at] ^= 1 << (b % 8)
        else:
            del data[at:]
    return bytes(data)


@fuzz_settings
@given(imatrix_files())
def test_fuzz_imatrix(data):
    from refquant.ggml.imatrix import read_imatrix
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "imatrix.dat"
        p.write_bytes(data)
        try:
            im = read_imatrix(p)
            event("imatrix read")
        except RefquantError:
            event("imatrix refused")
            return
        for v in im.entries.values():           # what is accepted is what ggml's contract allows
            assert v.dtype == np.float32 and np.isfinite(v).all() and (v >= 0).all()
