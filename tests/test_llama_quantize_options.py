"""llama-quantize's options (llama_model_quantize_params), each and combined, against the vendored
llama.cpp's `llama_model_quantize` with the same parameters, byte for byte.

The inputs are the real models cut small: SmolLM2-135M (rows of 576, F32) and Gemma 3 270M (rows
of 640, F16), each with its first three layers and the first 512 rows of its token embedding
(llama_model_quantize reads the hyperparameters only, never the vocabulary), so every case runs
in seconds. Cheap types (Q8_0, Q4_0) where the option is what is tested.
"""
import numpy as np
import pytest
from gguf import GGUFValueType as V

import refquant
from refquant.cli import main
from refquant.errors import FormatError, InputError
from refquant.ggml.imatrix import write_imatrix_gguf
from refquant.io.gguf import KV, GGUFFile, TensorInfo, write_gguf
from tools.models import gemma3_path, smollm2_path
from refquant.pipelines import recipes
from refquant.registry import get_format

from test_recipes_vs_llama_cpp import imatrix_for, no_leftovers, normalized, same_bytes

N_LAYERS, N_VOCAB = 3, 512


@pytest.fixture(scope="session")
def llama():
    from tools.oracles import llama_cpp  # runs llama.cpp in a worker process of its own
    return llama_cpp


def cut_model(src, out, dtype, n_layers=N_LAYERS, n_vocab=N_VOCAB):
    """A real model's first n_layers layers and first n_vocab embedding rows, decoded by refquant
    and stored as `dtype` (F32 or F16); 1-D tensors as F32."""
    with GGUFFile(src) as f:
        arch = f.get("general.architecture")
        kvs = [KV(kv.key, V.UINT32, n_layers) if kv.key == f"{arch}.block_count" else kv for kv in f.kvs]
        keep = [t for t in f.tensors
                if not t.name.startswith("blk.") or int(t.name.split(".")[1]) < n_layers]
        data, infos = {}, []
        for t in keep:
            if "token_embd" in t.name:  # only the rows kept are decoded
                x = refquant.dequantize(np.asarray(f.raw(t.name))[:n_vocab], t.ggml_type)
            else:
                x = f.dequantize(t.name, refquant.dequantize)
            ty = dtype if x.ndim > 1 else "F32"
            data[t.name] = x if ty == "F32" else get_format(ty).quantize_rows(x.reshape(-1, x.shape[-1]), None)
            infos.append(TensorInfo(t.name, get_format(ty).ggml_type, x.shape))
        write_gguf(out, kvs, infos, lambda t: data[t.name])
    return out


@pytest.fixture(scope="session")
def cut(tmp_path_factory):
    d = tmp_path_factory.mktemp("cut")
    return {"smollm2": cut_model(smollm2_path(), d / "smollm2-3l.gguf", "F32"),
            "gemma3": cut_model(gemma3_path(), d / "gemma3-3l.gguf", "F16")}


def tid(name):
    return recipes.GGML_TYPES[name].id


def ours_vs_llama(llama, src, tmp_path, ft, ours_kw, llama_kw):
    ours, ref = tmp_path / "ours.gguf", tmp_path / "ref.gguf"
    recipes.quantize_model(src, ours, ft, **ours_kw)
    assert llama.quantize(src, ref, recipes.file_type(ft).id, **llama_kw) == 0
    same_bytes(ours, ref)


# each option alone: (refquant's keyword arguments, llama_model_quantize_params' fields)
OPTIONS = {
    "output-tensor-type": ("Q8_0", dict(output_tensor_type="Q4_0"), dict(output_tensor_type=tid("Q4_0"))),
    "token-embedding-type": ("Q4_0", dict(token_embedding_type="Q8_0"), dict(token_embedding_type=tid("Q8_0"))),
    "leave-output-tensor": ("Q4_0", dict(quantize_output_tensor=False), dict(quantize_output_tensor=False)),
    "pure": ("Q4_K_M", dict(pure=True), dict(pure=True)),
    "tensor-type": ("Q4_0", dict(tensor_types=[("attn_v", "Q8_0"), ("blk\\.1\\..*ffn", "Q5_1"), ("ffn", "Q4_1")]),
                    dict(tensor_types=[("attn_v", tid("Q8_0")), ("blk\\.1\\..*ffn", tid("Q5_1")),
                                       ("ffn", tid("Q4_1"))])),
    "override-kv": ("Q8_0", dict(kv_overrides=["general.name=str:renamed", "general.file_type=int:-7",
                                               "x.scale=float:0.1", "x.flag=bool:true"]),
                    dict(kv_overrides=[("general.name", "str", "renamed"), ("general.file_type", "int", -7),
                                       ("x.scale", "float", 0.1), ("x.flag", "bool", True)])),
    "prune-layers": ("Q4_0", dict(prune_layers=[1]), dict(prune_layers=[1])),
}


@pytest.mark.parametrize("model", ["smollm2", "gemma3"])
@pytest.mark.parametrize("option", list(OPTIONS))
def test_each_option_byte_identical(llama, cut, tmp_path, model, option):
    ft, ours_kw, llama_kw = OPTIONS[option]
    ours_vs_llama(llama, cut[model], tmp_path, ft, ours_kw, llama_kw)


@pytest.mark.parametrize("model", ["smollm2", "gemma3"])
def test_options_combined_byte_identical(llama, cut, tmp_path, model):
    """Every option at once, with an imatrix cut down by --include-weights: the tensor types,
    pure (the patterns still apply), the token-embedding and output types, a pruned layer (the
    imatrix is looked up by the old names), overrides (the user's before the imatrix's)."""
    src = cut[model]
    sc = imatrix_for(src, seed=4, skip=("token_embd.weight",))
    im_path = tmp_path / "imatrix.gguf"
    write_imatrix_gguf(im_path, sc, ["calibration.txt"], chunk_count=3, chunk_size=512)
    kept = {k: v for k, v in sc.items() if "ffn" in k or "attn_q" in k}
    ours_kw = dict(imatrix=im_path, include_weights=["ffn", "attn_q"], pure=True, token_embedding_type="Q8_0",
                   tensor_types=[("attn_(k|v)", "Q8_0"), ("ffn_down", "Q4_1")], prune_layers=[0, 2],
                   kv_overrides=["general.name=str:pruned"])
    llama_kw = dict(imatrix=normalized(kept), pure=True, token_embedding_type=tid("Q8_0"),
                    tensor_types=[("attn_(k|v)", tid("Q8_0")), ("ffn_down", tid("Q4_1"))], prune_layers=[0, 2],
                    kv_overrides=[("general.name", "str", "pruned"), ("quantize.imatrix.file", "str", str(im_path)),
                                  ("quantize.imatrix.dataset", "str", "calibration.txt"),
                                  ("quantize.imatrix.entries_count", "int", len(kept)),
                                  ("quantize.imatrix.chunks_count", "int", 3)])
    ours_vs_llama(llama, src, tmp_path, "Q4_0", ours_kw, llama_kw)


def test_exclude_weights_and_requantize(llama, cut, tmp_path):
    """--exclude-weights drops the entries it names; --allow-requantize decodes a quantized input
    (SmolLM2's cut stored as Q8_0) first."""
    src = cut["smollm2"]
    q8 = tmp_path / "q8.gguf"
    recipes.quantize_model(src, q8, "Q8_0")
    sc = imatrix_for(src, seed=6, skip=("token_embd.weight",))
    im_path = tmp_path / "imatrix.gguf"
    write_imatrix_gguf(im_path, sc, ["c.txt"], chunk_count=2, chunk_size=512)
    kept = {k: v for k, v in sc.items() if "attn" not in k}
    with pytest.raises(InputError, match="already quantized"):
        recipes.quantize_model(q8, tmp_path / "x.gguf", "Q4_0")
    ours_vs_llama(llama, q8, tmp_path, "Q4_0",
                  dict(imatrix=im_path, exclude_weights=["attn"], allow_requantize=True),
                  dict(imatrix=normalized(kept), allow_requantize=True,
                       kv_overrides=[("quantize.imatrix.file", "str", str(im_path)),
                                     ("quantize.imatrix.dataset", "str", "c.txt"),
                                     ("quantize.imatrix.entries_count", "int", len(kept)),
                                     ("quantize.imatrix.chunks_count", "int", 2)]))
    with pytest.raises(InputError, match="cannot be used together"):
        recipes.quantize_model(src, tmp_path / "x.gguf", "Q4_0", imatrix=im_path, include_weights=["a"],
                               exclude_weights=["b"])


@pytest.mark.parametrize("model", ["smollm2", "gemma3"])
def test_dry_run_table_is_llama_cpps(llama, cut, tmp_path, model, capsys):
    """--dry-run prints llama.cpp's table (each tensor's shape, type and sizes) and its totals,
    and writes nothing."""
    src = cut[model]
    rc, log = llama.quantize_log(src, tmp_path / "none.gguf", recipes.file_type("Q4_K_M").id, dry_run=True,
                                 tensor_types=[("attn_v", tid("Q8_0"))], prune_layers=[1])
    assert rc == 0
    theirs = [ln for ln in log.splitlines() if ln.startswith("[")]
    theirs += [ln.split(": ", 1)[1] for ln in log.splitlines() if "model size" in ln or "quant size" in ln]
    assert main(["quantize", "--dry-run", str(src), "Q4_K_M", "--tensor-type", "attn_v=q8_0",
                 "--prune-layers", "1"]) == 0
    ours = capsys.readouterr().out.splitlines()
    assert [ln for ln in ours if not ln.startswith("warning")] == theirs
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_copy_byte_identical(llama, cut, tmp_path):
    """llama-quantize's COPY (only_copy): every tensor copied, quantized or not; general.file_type
    is the input's, or llama.cpp's guess (the most frequent tensor type, marked GUESSED) when it
    has none."""
    src = cut["gemma3"]
    ours_vs_llama(llama, src, tmp_path, "F32", dict(only_copy=True, prune_layers=[0]),
                  dict(only_copy=True, prune_layers=[0]))
    bare = tmp_path / "bare.gguf"
    with GGUFFile(cut["smollm2"]) as f:
        write_gguf(bare, [kv for kv in f.kvs if kv.key != "general.file_type"], f.tensors,
                   lambda t: np.array(f.raw(t.name)))
    ours, ref = tmp_path / "ours.gguf", tmp_path / "ref.gguf"
    assert main(["quantize", "--no-progress", str(bare), str(ours), "COPY"]) == 0
    assert llama.quantize(bare, ref, recipes.file_type("F32").id, only_copy=True) == 0
    same_bytes(ours, ref)
    with GGUFFile(ours) as f:
        assert f.get("general.file_type") == 1024  # ALL_F32 | LLAMA_FTYPE_GUESSED


def test_command_line_options_byte_identical(llama, cut, tmp_path):
    """The command line, as a llama-quantize user types it (IN OUT TYPE NTHREADS, options first;
    pattern and type in any case), writes llama_model_quantize's bytes for the same params."""
    src = cut["gemma3"]
    ttf = tmp_path / "types.txt"
    ttf.write_text("ATTN_Q=q5_0\n  ffn_up=Q8_0 ")
    ours, ref = tmp_path / "ours.gguf", tmp_path / "ref.gguf"
    assert main(["quantize", "--tensor-type", "attn_v=q8_0", "--tensor-type-file", str(ttf),
                 "--output-tensor-type", "q8_0", "--leave-output-tensor", "--override-kv", "a.b=int:5",
                 "--prune-layers", "2", "--no-progress", str(src), str(ours), "q4_0", "1"]) == 0
    assert llama.quantize(src, ref, recipes.file_type("Q4_0").id, nthread=1, output_tensor_type=tid("Q8_0"),
                          quantize_output_tensor=False, kv_overrides=[("a.b", "int", 5)], prune_layers=[2],
                          tensor_types=[("attn_v", tid("Q8_0")), ("attn_q", tid("Q5_0")),
                                        ("ffn_up", tid("Q8_0"))]) == 0
    same_bytes(ours, ref)


def test_abort_cases_are_one_line_errors(llama, cut, tmp_path, capsys):
    """A token-embedding type whose block does not divide the row: llama.cpp takes it without a
    fallback, quantizes past the row and fails ("quantized data validation failed", naming no
    tensor); refquant names the tensor and writes nothing. A --tensor-type whose type has no
    fallback for the row: llama.cpp refuses, refquant too, naming the tensor."""
    src = cut["smollm2"]  # rows of 576: not a multiple of 256
    assert llama.quantize(src, tmp_path / "ref.gguf", recipes.file_type("Q4_0").id,
                          token_embedding_type=tid("Q4_K")) != 0
    out = tmp_path / "out.gguf"
    with pytest.raises(InputError, match="tensor 'token_embd.weight': --token-embedding-type Q4_K .* 576"):
        recipes.quantize_model(src, out, "Q4_0", token_embedding_type="Q4_K")
    no_leftovers(out)
    assert main(["quantize", str(src), str(out), "Q4_0", "--token-embedding-type", "q4_k"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "token_embd.weight" in err
    assert llama.quantize(src, tmp_path / "ref.gguf", recipes.file_type("Q4_0").id,
                          tensor_types=[("attn_q", tid("Q1_0"))]) != 0
    with pytest.raises(FormatError, match="tensor .blk.0.attn_q.weight.: no tensor type fallback .* Q1_0"):
        recipes.quantize_model(src, out, "Q4_0", tensor_types=[("attn_q", "Q1_0")])
    no_leftovers(out)


def test_option_parsing_errors(tmp_path, cut, capsys):
    src = str(cut["smollm2"])
    for argv, want in [(["--tensor-type", "attn_v"], "expected PATTERN=TYPE"),
                       (["--tensor-type", "attn_v=q4km"], "did you mean"),
                       (["--override-kv", "a=long:1"], "TYPE must be int, float, bool or str"),
                       (["--override-kv", "a=bool:yes"], "true or false"),
                       (["--prune-layers", "1,x"], "invalid layer id"),
                       (["--tensor-type", "(=q8_0"], "not a regular expression"),
                       (["--output-tensor-type", "q9"], "not a ggml type")]:
        assert main(["quantize", src, str(tmp_path / "o.gguf"), "Q4_0", *argv]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and want in err, (argv, err)
    assert not (tmp_path / "o.gguf").exists()


# ------------------------------------------------------------------------------ split models

def gguf_py_split(src, path, max_tensors):
    """The model at `src` written by gguf-py's GGUFWriter as a split model of at most max_tensors
    tensors a file (PATH-00001-of-0000N.gguf, ...); returns the first file's path."""
    from gguf import GGUFWriter
    with GGUFFile(src) as f:
        w = GGUFWriter(path, f.get("general.architecture"), split_max_tensors=max_tensors)
        for kv in f.kvs:
            if kv.key != "general.architecture":
                value = list(kv.value) if kv.vtype == V.ARRAY else kv.value
                w.add_key_value(kv.key, value, kv.vtype, kv.sub_type)
        for t in f.tensors:  # F32 and F16 tensors, as gguf-py takes them: NumPy arrays of those dtypes
            dt = {"F32": np.float32, "F16": np.float16}[t.type_name]
            w.add_tensor(t.name, np.array(f.raw(t.name)).view(dt).reshape(t.shape))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    first = path.with_name(path.stem + "-00001-of-" + f"{-(-len(f.tensors) // max_tensors):05d}.gguf")
    assert first.exists()
    return first


@pytest.fixture(scope="session")
def split(cut, tmp_path_factory):
    d = tmp_path_factory.mktemp("split")
    return {m: gguf_py_split(cut[m], d / f"{m}.gguf", 12) for m in ("smollm2", "gemma3")}


def test_split_model_reads_as_one(cut, split, tmp_path, capsys):
    """inspect, dequantize and the forward's weights read a split model (gguf-py's writer) as the
    model it was split from."""
    from refquant.io.split import SplitGGUF, open_gguf
    from refquant.model.weights import Weights
    src, first = cut["smollm2"], split["smollm2"]
    with GGUFFile(src) as whole, open_gguf(first) as parts:
        assert isinstance(parts, SplitGGUF) and len(parts.paths) == 3
        assert sorted(t.name for t in parts.tensors) == sorted(t.name for t in whole.tensors)
        for t in whole.tensors:
            np.testing.assert_array_equal(np.asarray(parts.raw(t.name)), np.asarray(whole.raw(t.name)))
    w = Weights.from_gguf(first)
    np.testing.assert_array_equal(w.dequantize("blk.2.ffn_down.weight"),
                                  Weights.from_gguf(src).dequantize("blk.2.ffn_down.weight"))
    assert main(["inspect", str(first)]) == 0
    assert "(3 split files)" in capsys.readouterr().out
    a, b = tmp_path / "a.gguf", tmp_path / "b.gguf"
    assert main(["dequantize", str(first), str(a), "--type", "f16", "--no-progress"]) == 0
    assert main(["dequantize", str(src), str(b), "--type", "f16", "--no-progress"]) == 0
    with GGUFFile(a) as fa, GGUFFile(b) as fb:
        assert not [kv.key for kv in fa.kvs if kv.key.startswith("split.")]
        for t in fb.tensors:
            np.testing.assert_array_equal(np.asarray(fa.raw(t.name)), np.asarray(fb.raw(t.name)))


@pytest.mark.parametrize("model", ["smollm2", "gemma3"])
def test_split_input_quantized_as_llama_cpp(llama, split, tmp_path, model):
    """A split input, quantized to one file, and with keep_split to as many files: each file is
    llama_model_quantize's (keep_split) for the same params."""
    first = split[model]
    ours_vs_llama(llama, first, tmp_path, "Q4_0", dict(tensor_types=[("attn_v", "Q8_0")]),
                  dict(tensor_types=[("attn_v", tid("Q8_0"))]))
    ours, ref = tmp_path / "ours", tmp_path / "ref"
    tps = recipes.quantize_model(first, ours, "Q8_0", keep_split=True, prune_layers=[1])
    assert llama.quantize(first, ref, recipes.file_type("Q8_0").id, keep_split=True, prune_layers=[1]) == 0
    paths = recipes.split_output_paths(ours, tps)
    with GGUFFile(first) as f:
        assert len(paths) == f.get("split.count") > 2
    for p in paths:
        same_bytes(p, str(p).replace(str(ours), str(ref)))


def test_keep_split_command_line(llama, cut, split, tmp_path, capsys):
    """--keep-split as llama-quantize takes it: OUT.gguf names the prefix; an unsplit input
    gives OUT-00001-of-00001.gguf, as llama.cpp writes it. A missing part is a one-line error."""
    first = split["smollm2"]
    assert main(["quantize", "--keep-split", "--no-progress", str(first), str(tmp_path / "q.gguf"), "Q8_0"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"q-0000{i}-of-00003.gguf" for i in (1, 2, 3)]
    one = tmp_path / "one"
    one.mkdir()
    assert main(["quantize", "--keep-split", "--no-progress", str(cut["gemma3"]), str(one / "q.gguf"), "Q8_0"]) == 0
    assert llama.quantize(cut["gemma3"], one / "ref", recipes.file_type("Q8_0").id, keep_split=True) == 0
    same_bytes(one / "q-00001-of-00001.gguf", one / "ref-00001-of-00001.gguf")
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    (lonely / first.name).write_bytes(first.read_bytes())
    capsys.readouterr()
    assert main(["inspect", str(lonely / first.name)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "split 2 of 3" in err and "not found" in err


def test_perplexity_of_a_split_model(tmp_path, capsys):
    """`refquant perplexity` on the first file of SmolLM2 split in three by gguf-py's writer
    prints what it prints for the whole file."""
    from gguf import GGMLQuantizationType, GGUFWriter
    from tools.models import botchan_path
    path = tmp_path / "smol.gguf"
    with GGUFFile(smollm2_path()) as f:
        w = GGUFWriter(path, f.get("general.architecture"), split_max_tensors=100)
        for kv in f.kvs:
            if kv.key != "general.architecture":
                w.add_key_value(kv.key, list(kv.value) if kv.vtype == V.ARRAY else kv.value, kv.vtype, kv.sub_type)
        for t in f.tensors:  # the stored bytes, as gguf-py takes a quantized tensor
            w.add_tensor(t.name, np.array(f.raw(t.name)),
                         raw_dtype=GGMLQuantizationType(t.ggml_type))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    first = tmp_path / "smol-00001-of-00003.gguf"
    text = tmp_path / "t.txt"
    text.write_bytes(botchan_path().read_bytes()[:400])
    outs = []
    for model in (smollm2_path(), first):
        assert main(["perplexity", str(model), "--text", str(text), "--ctx", "16", "--chunks", "1"]) == 0
        outs.append(capsys.readouterr().out)
    assert outs[0] == outs[1] and "[1]" in outs[0]


# ------------------------------------------------------------------------------ names, progress

def test_names_people_type(cut, tmp_path, capsys):
    """`formats` lists llama.cpp's file types beside the block types; an unknown type gets the
    closest names the command accepts; `inspect` names the file type and says the shape order."""
    assert main(["formats"]) == 0
    out = capsys.readouterr().out
    rows = {ln.split()[0]: ln.split() for ln in out.splitlines() if ln.strip()}
    assert rows["Q4_K_M"][1:3] == ["15", "Q4_K"] and rows["IQ3_M"][1:3] == ["27", "IQ3_S"]
    assert "Q4_K is Q4_K_M" in out
    assert main(["quantize", str(cut["smollm2"]), str(tmp_path / "o.gguf"), "--type", "q4km"]) == 2
    err = capsys.readouterr().err
    assert "did you mean Q4_K_M" in err and err.count("\n") == 1
    from refquant.cli import accepted_types
    named = err.split("did you mean ")[1].rstrip("?\n").split(" or ")
    assert named and set(named) <= set(accepted_types())
    q = tmp_path / "q.gguf"
    assert main(["quantize", "--no-progress", str(cut["smollm2"]), str(q), "Q4_K"]) == 0  # llama-quantize's alias
    capsys.readouterr()
    assert main(["inspect", str(q)]) == 0
    out = capsys.readouterr().out
    assert next(ln for ln in out.splitlines() if "general.file_type" in ln).split()[-2:] == ["15", "(Q4_K_M)"]
    assert "NumPy order, outermost first: the reverse of gguf-py's" in out
    line = next(ln for ln in out.splitlines() if ln.strip().startswith("blk.0.ffn_down.weight"))
    assert line.split()[2:4] == ["[576,", "1536]"]  # ffn_down's ne is [1536, 576]


def test_progress_on_a_pipe_and_summary(cut, tmp_path):
    """Piped, each tensor gets a line on stderr, and the run ends with what was written, its
    size, bits per weight and time; stdout stays empty."""
    import os
    import subprocess
    import sys
    src, out = cut["smollm2"], tmp_path / "q.gguf"
    env = dict(os.environ, REFQUANT_PROGRESS_SECONDS="0")
    r = subprocess.run([sys.executable, "-m", "refquant.cli", "quantize", str(src), str(out), "Q8_0"],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    with GGUFFile(src) as f:
        n = len(f.tensors)
        elements = sum(t.n_elements for t in f.tensors)
    assert len(lines) == n + 1 and all(ln.startswith("quantize [") for ln in lines[:-1])
    assert lines[n - 1].startswith(f"quantize [{n}/{n}] ")
    assert "blk.0.attn_q.weight Q8_0" in r.stderr
    with GGUFFile(out) as f:
        bpw = 8 * sum(t.nbytes for t in f.tensors) / elements
    summary = lines[-1]
    assert summary.startswith(f"quantize: wrote {out}: {out.stat().st_size / 1048576:.2f} MiB, {bpw:.3f} bits per weight")
    assert r.stdout == ""


def test_checkpoint_quantize_summary(tmp_path, capsys):
    """A checkpoint directory's run ends with the same kind of line: the directory, its size,
    bits per weight (the safetensors bytes over the input's weights), time."""
    import os
    from hf_checkpoint import smollm2_checkpoint
    src = tmp_path / "ck"
    t = smollm2_checkpoint(src, n_layers=1)
    out = tmp_path / "q"
    capsys.readouterr()
    assert main(["quantize", str(src), str(out), "--bits", "4", "--group-size", "64", "--format", "gptq",
                 "--no-progress"]) == 0
    line = capsys.readouterr().err.splitlines()[-1]
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    data = sum(p.stat().st_size for p in out.rglob("*.safetensors"))
    bpw = 8 * data / sum(w.size for w in t.values())
    assert line.startswith(f"quantize: wrote {out}: {size / 1048576:.2f} MiB, {bpw:.3f} bits per weight, "), line
