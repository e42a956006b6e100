"""Whole-model quantization (refquant.pipelines.recipes) against llama.cpp's llama_model_quantize.

Real models: SmolLM2-135M (llama architecture, rows of 576) and Gemma 3 270M (gemma3, rows of
640), both shipped by registry packages; and small synthetic llama models built here for what the
real ones lack (experts, an untied output, rows that fit no block, importance matrices).
Files are compared byte for byte; the per-tensor type choice is compared for every file type,
from llama.cpp's dry run.
"""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFValueType as V

from refquant.backend import Backend, get_backend
from refquant.errors import FileFormatError, FormatError, InputError
from refquant.pipelines import recipes
from refquant.ggml.imatrix import read_imatrix, write_imatrix_gguf, write_imatrix_legacy
from refquant.io.gguf import KV, GGUFFile, TensorInfo, write_gguf
from tools.models import gemma3_path, smollm2_path
from refquant.registry import get_format

LEGACY = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"]
ALL_FTYPES = list(recipes.FILE_TYPES)
# `make test-deep` (the thorough profile) runs every combination on the real models; the quick
# profile a subset that still covers each path
DEEP = os.environ.get("HYPOTHESIS_PROFILE") == "thorough"


@pytest.fixture(scope="session")
def llama():
    from tools.oracles import llama_cpp  # runs llama.cpp in a worker process of its own
    return llama_cpp


def same_bytes(a, b):
    a, b = Path(a).read_bytes(), Path(b).read_bytes()
    if a != b:
        n = min(len(a), len(b))
        diff = next((i for i in range(n) if a[i] != b[i]), n)
        pytest.fail(f"files differ: sizes {len(a)} vs {len(b)}, first difference at byte {diff}")


def no_leftovers(path):
    path = Path(path)
    assert not path.exists()
    assert not [p for p in path.parent.iterdir() if p.name.startswith("." + path.name)]


# ------------------------------------------------------------------------------ real models

@pytest.fixture(scope="session")
def models():
    return {"smollm2": smollm2_path(), "gemma3": gemma3_path()}


@pytest.fixture(scope="session")
def smol_float(tmp_path_factory, llama):
    """SmolLM2 dequantized by refquant to F32, F16 and BF16 (made once per session)."""
    d = tmp_path_factory.mktemp("smol")
    out = {}
    for ft in ("F32", "F16", "BF16"):
        out[ft] = d / f"smol-{ft}.gguf"
        recipes.dequantize_model(smollm2_path(), out[ft], ft)
    return out


@pytest.fixture(scope="session")
def gemma_f16(models, tmp_path_factory, llama):
    """Gemma 3 270M as F16. refquant dequantizes it when it has every type the file holds;
    otherwise llama.cpp does (only the input is made that way; the comparison is unchanged)."""
    src = models["gemma3"]
    out = tmp_path_factory.mktemp("gemma") / "gemma-F16.gguf"
    with GGUFFile(src) as f:
        types = {recipes.ggml_type(t.ggml_type).name for t in f.tensors}
    try:
        can = all(get_format(t).can_dequantize for t in types)
    except FormatError:
        can = False
    if can:
        recipes.dequantize_model(src, out, "F16")
    else:
        assert llama.quantize(src, out, recipes.file_type("F16").id, allow_requantize=True) == 0
    return out


@pytest.mark.parametrize("ft", ["F32", "F16", "BF16"])
def test_dequantize_model_matches_llama_cpp(smol_float, llama, tmp_path, ft):
    ref = tmp_path / "ref.gguf"
    assert llama.quantize(smollm2_path(), ref, recipes.file_type(ft).id, allow_requantize=True) == 0
    same_bytes(smol_float[ft], ref)


@pytest.mark.parametrize("ft", LEGACY)
def test_legacy_ftypes_byte_identical_smollm2(smol_float, llama, tmp_path, ft):
    ours, ref = tmp_path / "ours.gguf", tmp_path / "ref.gguf"
    recipes.quantize_model(smol_float["F32"], ours, ft)
    assert llama.quantize(smol_float["F32"], ref, recipes.file_type(ft).id) == 0
    same_bytes(ours, ref)


@pytest.mark.parametrize("src,ft", [("F16", "Q5_1"), ("BF16", "Q4_0"), ("BF16", "F16")]
                         + ([("F16", "BF16"), ("F16", "F32"), ("BF16", "Q8_0"), ("F16", "Q4_1")] if DEEP else []))
def test_f16_bf16_inputs_byte_identical(smol_float, llama, tmp_path, src, ft):
    ours, ref = tmp_path / "ours.gguf", tmp_path / "ref.gguf"
    recipes.quantize_model(smol_float[src], ours, ft)
    assert llama.quantize(smol_float[src], ref, recipes.file_type(ft).id) == 0
    same_bytes(ours, ref)


@pytest.mark.parametrize("ft", LEGACY if DEEP else ["Q4_0"])
def test_legacy_ftypes_byte_identical_gemma3(gemma_f16, llama, tmp_path, ft):
    # rows of 640: every 256-block choice falls back (Q6_K -> Q8_0, Q4_K -> Q5_0, ...)
    ours, ref = tmp_path / "ours.gguf", tmp_path / "ref.gguf"
    recipes.quantize_model(gemma_f16, ours, ft)
    assert llama.quantize(gemma_f16, ref, recipes.file_type(ft).id) == 0
    same_bytes(ours, ref)


K_FTYPES = ["Q2_K", "Q2_K_S", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_K_S", "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K"]


# Whole real-model files for the K file types: Q4_K_M in every run, all of them with the
# thorough profile (make test-deep); their type choice is checked for every file type in every run.
K_FTYPES_RUN = K_FTYPES if DEEP else ["Q4_K_M"]


def check_k_ftype(llama, src, tmp_path, ft):
    """Byte-identical where refquant has every type the recipe picks; otherwise a FormatError
    naming the missing type before anything is written."""
    ours, ref = tmp_path / "ours.gguf", tmp_path / "ref.gguf"
    with GGUFFile(src) as f:
        missing = available(recipes.plan(f, ft))
    rc = llama.quantize(src, ref, recipes.file_type(ft).id)
    if rc != 0:  # e.g. Q2_K_S: its Q2_K tensors need an imatrix
        with pytest.raises((FormatError, InputError)):
            recipes.quantize_model(src, ours, ft)
        no_leftovers(ours)
    elif missing:
        with pytest.raises(FormatError, match="has no (" + "|".join(sorted(missing)) + ") quantizer"):
            recipes.quantize_model(src, ours, ft)
        no_leftovers(ours)
    else:
        recipes.quantize_model(src, ours, ft)
        same_bytes(ours, ref)


@pytest.mark.parametrize("ft", K_FTYPES_RUN)
def test_k_ftypes_smollm2(smol_float, llama, tmp_path, ft):
    check_k_ftype(llama, smol_float["F32"], tmp_path, ft)


@pytest.mark.parametrize("ft", K_FTYPES_RUN)
def test_k_ftypes_gemma3(gemma_f16, llama, tmp_path, ft):
    check_k_ftype(llama, gemma_f16, tmp_path, ft)


@pytest.fixture(scope="session")
def opened(models):
    files = {k: GGUFFile(p) for k, p in models.items()}
    yield files
    for f in files.values():
        f.close()


def our_types(f, ft, **kw):
    try:
        return {p.name: p.dst_type for p in recipes.plan(f, ft, **kw)}
    except (FormatError, InputError) as e:
        return e


def check_types(llama, path, f, ft, **kw):
    """Type choice vs llama.cpp's dry run; both refusing counts as agreement."""
    theirs = llama.tensor_types(path, recipes.file_type(ft).id, **kw)
    ours = our_types(f, ft, has_imatrix=kw.get("imatrix") is not None,
                     **{k: v for k, v in kw.items() if k != "imatrix"})
    if isinstance(theirs, str):
        assert isinstance(ours, Exception), f"llama.cpp refuses {ft} ({theirs}); refquant chose {ours}"
        return
    assert not isinstance(ours, Exception), f"refquant refuses {ft}: {ours}"
    assert list(ours) == list(theirs), "tensor order differs"
    diff = {k: (ours[k], theirs[k]) for k in theirs if ours[k] != theirs[k]}
    assert not diff, f"{ft}: (refquant, llama.cpp) differ for {diff}"


@pytest.mark.parametrize("model", ["smollm2", "gemma3"])
@pytest.mark.parametrize("ft", ALL_FTYPES)
def test_type_choice_matches_llama_cpp(llama, models, opened, model, ft):
    check_types(llama, models[model], opened[model], ft)


# the file types whose choice depends on whether an imatrix is given
IMATRIX_SENSITIVE = ["Q4_0", "Q5_0", "IQ3_XXS", "IQ4_NL", "IQ4_XS", "Q2_K_S"]


@pytest.mark.parametrize("model", ["smollm2", "gemma3"])
@pytest.mark.parametrize("ft", IMATRIX_SENSITIVE)
def test_type_choice_with_imatrix_matches_llama_cpp(llama, models, opened, model, ft):
    check_types(llama, models[model], opened[model], ft, imatrix={"unused": np.ones(1, np.float32)})


@pytest.mark.parametrize("kw", [dict(pure=True), dict(output_tensor_type=2, token_embedding_type=14),
                                dict(token_embedding_type=8), dict(quantize_output_tensor=False)])
@pytest.mark.parametrize("ft", ["Q4_K_M", "Q2_K", "IQ2_M"])
def test_type_choice_with_params_matches_llama_cpp(llama, models, opened, ft, kw):
    check_types(llama, models["smollm2"], opened["smollm2"], ft, **kw)


# ------------------------------------------------------------------------------ synthetic models

def synthetic_model(path, *, n_layer=4, n_expert=0, tied=True, n_head=4, n_head_kv=1, arch="llama",
                    dtype="F32", seed=0, extra=(), width=96, ff=64):
    """A small llama-architecture model llama.cpp accepts for quantization: attention, FFN (or
    experts), norms, a router, and a tensor whose rows (40) fit no 32-block."""
    rng = np.random.default_rng(seed)
    W, FF = width, ff
    kvs = [KV("general.architecture", V.STRING, arch), KV("general.name", V.STRING, "synthetic"),
           KV(f"{arch}.block_count", V.UINT32, n_layer), KV(f"{arch}.context_length", V.UINT32, 128),
           KV(f"{arch}.embedding_length", V.UINT32, W), KV(f"{arch}.feed_forward_length", V.UINT32, FF),
           KV(f"{arch}.attention.head_count", V.UINT32, n_head),
           KV(f"{arch}.attention.head_count_kv", V.UINT32, n_head_kv),
           KV(f"{arch}.attention.layer_norm_rms_epsilon", V.FLOAT32, 1e-5),
           KV("general.file_type", V.UINT32, 0), KV("general.quantization_version", V.UINT32, 2)]
    if n_expert:
        kvs += [KV(f"{arch}.expert_count", V.UINT32, n_expert), KV(f"{arch}.expert_used_count", V.UINT32, 2)]
    shapes = {"token_embd.weight": (200, W), "output_norm.weight": (W,)}
    if not tied:
        shapes["output.weight"] = (200, W)
    for i in range(n_layer):
        b = f"blk.{i}."
        shapes.update({b + "attn_q.weight": (W, W), b + "attn_k.weight": (W * n_head_kv // n_head, W),
                       b + "attn_v.weight": (W * n_head_kv // n_head, W), b + "attn_output.weight": (W, W),
                       b + "attn_norm.weight": (W,), b + "ffn_norm.weight": (W,), b + "odd.weight": (8, 40)})
        if n_expert:
            shapes.update({b + "ffn_gate_inp.weight": (n_expert, W), b + "ffn_gate_exps.weight": (n_expert, FF, W),
                           b + "ffn_up_exps.weight": (n_expert, FF, W), b + "ffn_down_exps.weight": (n_expert, W, FF)})
        else:
            shapes.update({b + "ffn_gate.weight": (FF, W), b + "ffn_up.weight": (FF, W),
                           b + "ffn_down.weight": (W, FF)})
    shapes.update(dict(extra))
    gt = recipes.GGML_TYPES[dtype]
    data = {}
    for name, s in shapes.items():
        x = (rng.standard_normal(s) * rng.uniform(0.01, 0.1)).astype(np.float32)
        x.reshape(-1)[rng.integers(0, x.size, 3)] *= 20  # a few outliers
        t = gt if len(s) > 1 else recipes.GGML_TYPES["F32"]
        data[name] = (t.id, x if t.name == "F32" else get_format(t.name).quantize_rows(x.reshape(-1, s[-1]), None))
    infos = [TensorInfo(n, data[n][0], s) for n, s in shapes.items()]
    write_gguf(path, kvs, infos, lambda t: data[t.name][1])
    return path


SYNTHETIC = {
    "dense": dict(),
    "untied": dict(tied=False, n_layer=9),
    "moe8": dict(n_expert=8, tied=False),
    "moe4_mha": dict(n_expert=4, n_head_kv=4, n_layer=3),
    "bf16": dict(dtype="BF16", n_layer=2),
}


@pytest.fixture(scope="session")
def synth(tmp_path_factory):
    d = tmp_path_factory.mktemp("synth")
    out = {k: synthetic_model(d / f"{k}.gguf", **kw) for k, kw in SYNTHETIC.items()}
    # rows of 256 and 512: the 256-block types are kept, not fallen back from
    out["wide"] = synthetic_model(d / "wide.gguf", n_layer=2, width=256, ff=512)
    return out


@pytest.mark.parametrize("which", list(SYNTHETIC) + ["wide"])
@pytest.mark.parametrize("ft", ALL_FTYPES)
def test_type_choice_synthetic(llama, synth, which, ft):
    with GGUFFile(synth[which]) as f:
        check_types(llama, synth[which], f, ft)


@pytest.mark.parametrize("which", list(SYNTHETIC))
@pytest.mark.parametrize("ft", LEGACY + ["F16", "BF16", "F32"])
def test_synthetic_byte_identical(llama, synth, tmp_path, which, ft):
    ours, ref = tmp_path / "ours.gguf", tmp_path / "ref.gguf"
    recipes.quantize_model(synth[which], ours, ft)
    assert llama.quantize(synth[which], ref, recipes.file_type(ft).id) == 0
    same_bytes(ours, ref)


@pytest.mark.parametrize("ft", ["F32", "F16"])
def test_cli_dequantize_is_llama_cpps(llama, synth, tmp_path, ft):
    """`refquant dequantize` is the one GGUF dequantizer (eval's base file too): on a quantized
    model it writes the bytes of llama-quantize --allow-requantize to a float file type."""
    from refquant.cli import main
    q, ours, ref = tmp_path / "q.gguf", tmp_path / "ours.gguf", tmp_path / "ref.gguf"
    recipes.quantize_model(synth["untied"], q, "Q5_1")
    assert main(["dequantize", str(q), str(ours), "--type", ft.lower(), "--no-progress"]) == 0
    assert llama.quantize(q, ref, recipes.file_type(ft).id, allow_requantize=True) == 0
    same_bytes(ours, ref)


def available(plan_):
    missing = set()
    for p in plan_:
        if p.converted:
            try:
                if not get_format(p.dst_type).can_quantize:
                    missing.add(p.dst_type)
            except FormatError:
                missing.add(p.dst_type)
    return missing


@pytest.mark.parametrize("which", list(SYNTHETIC) + ["wide"])
@pytest.mark.parametrize("ft", [f for f in ALL_FTYPES if f not in LEGACY + ["F16", "BF16", "F32"]])
def test_every_ftype_synthetic(llama, synth, tmp_path, which, ft):
    """Every other file type: byte-identical where refquant has each type the recipe picks (rows
    of 96 make the 256-block types fall back to Q4_0/Q5_0/Q5_1/Q8_0); otherwise a FormatError
    naming the missing type, before anything is written."""
    ours, ref = tmp_path / "ours.gguf", tmp_path / "ref.gguf"
    rc = llama.quantize(synth[which], ref, recipes.file_type(ft).id)
    with GGUFFile(synth[which]) as f:
        try:
            missing = available(recipes.plan(f, ft))
        except FormatError:
            missing = None
    if rc != 0:
        with pytest.raises((FormatError, InputError)):
            recipes.quantize_model(synth[which], ours, ft)
        no_leftovers(ours)
    elif missing:
        with pytest.raises(FormatError, match="has no (" + "|".join(sorted(missing)) + ") quantizer"):
            recipes.quantize_model(synth[which], ours, ft)
        no_leftovers(ours)
    else:
        recipes.quantize_model(synth[which], ours, ft)
        same_bytes(ours, ref)


def test_output_and_embedding_overrides_byte_identical(llama, synth, tmp_path):
    ours, ref = tmp_path / "ours.gguf", tmp_path / "ref.gguf"
    recipes.quantize_model(synth["untied"], ours, "Q5_0", output_tensor_type="Q8_0", token_embedding_type="Q4_1")
    assert llama.quantize(synth["untied"], ref, recipes.file_type("Q5_0").id, output_tensor_type=8,
                          token_embedding_type=3) == 0
    same_bytes(ours, ref)


# ------------------------------------------------------------------------------ importance matrices

def imatrix_for(path, seed=1, skip=()):
    """Synthetic calibration sums for every matrix the recipe quantizes: name -> (sums (n_expert,
    n_per_row), counts (n_expert,))."""
    rng = np.random.default_rng(seed)
    out = {}
    with GGUFFile(path) as f:
        for t in f.tensors:
            if len(t.shape) < 2 or "norm" in t.name or t.name in skip:
                continue
            ne2 = t.shape[0] if len(t.shape) == 3 else 1
            counts = rng.integers(0, 4, ne2).astype(np.float32) * 512 + 512
            if ne2 > 1:
                counts[0] = 0  # an expert never routed to: weights of 1
            sums = (rng.gamma(2.0, 0.05, (ne2, t.shape[-1])) * counts[:, None]).astype(np.float32)
            out[t.name] = (sums, counts)
    return out


def normalized(sums_counts):
    """What llama-quantize hands to llama_model_quantize (tools/quantize: sums / count, 1 for an
    expert with count 0), computed here from the raw sums for the oracle."""
    out = {}
    for name, (s, c) in sums_counts.items():
        c = np.round(c).astype(np.int64).astype(np.float32)
        v = np.where(c[:, None] > 0, s / np.where(c > 0, c, 1)[:, None], np.float32(1)).astype(np.float32)
        out[name] = v.reshape(-1)
    return out


def imatrix_overrides(path, n_entries, dataset, chunks):
    ov = [("quantize.imatrix.file", str(path))]
    if dataset:
        ov.append(("quantize.imatrix.dataset", dataset))
    ov.append(("quantize.imatrix.entries_count", n_entries))
    if chunks > 0:
        ov.append(("quantize.imatrix.chunks_count", chunks))
    return ov


@pytest.mark.parametrize("which", ["dense", "moe8", "untied"])
@pytest.mark.parametrize("ft", ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"])
def test_gguf_imatrix_byte_identical(llama, synth, tmp_path, which, ft):
    sc = imatrix_for(synth[which], skip=("token_embd.weight",))
    im_path = tmp_path / "imatrix.gguf"
    write_imatrix_gguf(im_path, sc, ["calibration.txt"], chunk_count=7, chunk_size=512)
    ours, ref = tmp_path / "ours.gguf", tmp_path / "ref.gguf"
    recipes.quantize_model(synth[which], ours, ft, imatrix=im_path)
    assert llama.quantize(synth[which], ref, recipes.file_type(ft).id, imatrix=normalized(sc),
                          kv_overrides=imatrix_overrides(im_path, len(sc), "calibration.txt", 7)) == 0
    same_bytes(ours, ref)


def test_legacy_imatrix_byte_identical(llama, synth, tmp_path):
    rng = np.random.default_rng(5)
    entries = {}
    with GGUFFile(synth["dense"]) as f:
        for t in f.tensors:
            if len(t.shape) == 2 and "norm" not in t.name:
                entries[t.name] = (rng.gamma(2.0, 0.1, t.shape[-1]).astype(np.float32) * 10, int(rng.integers(0, 20)))
    im_path = tmp_path / "imatrix.dat"
    write_imatrix_legacy(im_path, entries, chunk_count=11, dataset="wiki.txt")
    im = read_imatrix(im_path)
    assert im.is_legacy and im.chunk_count == 11 and im.datasets == ["wiki.txt"]
    expect = {n: (v / np.float32(c) if c > 0 else v).astype(np.float32) for n, (v, c) in entries.items()}
    ours, ref = tmp_path / "ours.gguf", tmp_path / "ref.gguf"
    recipes.quantize_model(synth["dense"], ours, "Q4_0", imatrix=im_path)
    assert llama.quantize(synth["dense"], ref, 2, imatrix=expect,
                          kv_overrides=imatrix_overrides(im_path, len(entries), "wiki.txt", 11)) == 0
    same_bytes(ours, ref)


def llama_quantize_tool():
    exe = os.environ.get("LLAMA_QUANTIZE")
    return exe if exe and Path(exe).is_file() else None


@pytest.mark.skipif(llama_quantize_tool() is None,
                    reason="set LLAMA_QUANTIZE to a llama-quantize binary built from the llama-cpp-python "
                           "0.3.36 sdist (vendor/llama.cpp, target llama-quantize) to check imatrix files end to end")
@pytest.mark.parametrize("kind", ["gguf", "dat"])
def test_imatrix_files_vs_llama_quantize_tool(synth, tmp_path, kind):
    sc = imatrix_for(synth["moe8"] if kind == "gguf" else synth["dense"])
    src = synth["moe8"] if kind == "gguf" else synth["dense"]
    im_path = tmp_path / f"imatrix.{kind}"
    if kind == "gguf":
        write_imatrix_gguf(im_path, sc, ["calib-a.txt", "calib-b.txt"], chunk_count=3, chunk_size=512)
    else:
        write_imatrix_legacy(im_path, {n: (s[0] / 3, 5) for n, (s, c) in sc.items()}, chunk_count=9, dataset="d.txt")
    ours, ref = tmp_path / "ours.gguf", tmp_path / "ref.gguf"
    recipes.quantize_model(src, ours, "Q5_0", imatrix=im_path)
    r = subprocess.run([llama_quantize_tool(), "--imatrix", str(im_path), str(src), str(ref), "Q5_0", "1"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    same_bytes(ours, ref)


def llama_imatrix_tool():
    exe = os.environ.get("LLAMA_IMATRIX")
    return exe if exe and Path(exe).is_file() else None


@pytest.mark.skipif(llama_quantize_tool() is None or llama_imatrix_tool() is None,
                    reason="set LLAMA_QUANTIZE and LLAMA_IMATRIX to llama-quantize and llama-imatrix built from "
                           "the llama-cpp-python 0.3.36 sdist to check a real imatrix on SmolLM2 (about 2 minutes)")
@pytest.mark.parametrize("fmt", ["gguf", "dat"])
def test_real_imatrix_smollm2_vs_llama_quantize_tool(smol_float, tmp_path, fmt):
    calib = Path(__file__).parent.parent / "spec" / "ggml" / "recipes.md"
    im_path = tmp_path / f"imatrix.{fmt}"
    r = subprocess.run([llama_imatrix_tool(), "-m", str(smollm2_path()), "-f", str(calib), "-o", str(im_path),
                        "--output-format", fmt, "-c", "128", "--chunks", "4", "--no-ppl"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    ours, ref = tmp_path / "ours.gguf", tmp_path / "ref.gguf"
    recipes.quantize_model(smol_float["F32"], ours, "Q4_0", imatrix=im_path)
    r = subprocess.run([llama_quantize_tool(), "--imatrix", str(im_path), str(smol_float["F32"]), str(ref), "Q4_0"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    same_bytes(ours, ref)


# ------------------------------------------------------------------------------ bad input

def test_quantized_input_is_refused(tmp_path):
    out = tmp_path / "out.gguf"
    with pytest.raises(InputError, match=r"already quantized \(tensor .token_embd.weight. is Q8_0\)"):
        recipes.quantize_model(smollm2_path(), out, "Q4_0")
    no_leftovers(out)


def test_imatrix_size_mismatch(llama, synth, tmp_path):
    sc = imatrix_for(synth["dense"])
    s, c = sc["blk.1.attn_q.weight"]
    sc["blk.1.attn_q.weight"] = (s[:, :64], c)
    im_path = tmp_path / "im.gguf"
    write_imatrix_gguf(im_path, sc, ["x"], 1, 512)
    out = tmp_path / "out.gguf"
    with pytest.raises(InputError, match="blk.1.attn_q.weight.* 64 values.* needs 96"):
        recipes.quantize_model(synth["dense"], out, "Q4_0", imatrix=im_path)
    no_leftovers(out)
    assert llama.quantize(synth["dense"], tmp_path / "ref.gguf", 2, imatrix=normalized(sc)) != 0


def test_imatrix_for_another_model(synth, tmp_path):
    im_path = tmp_path / "im.gguf"
    write_imatrix_gguf(im_path, {"model.layers.0.mlp.down_proj": (np.ones((1, 64), np.float32),
                                                                   np.ones(1, np.float32))}, ["x"], 1, 512)
    out = tmp_path / "out.gguf"
    with pytest.raises(InputError, match="none of its 1 entries names a tensor"):
        recipes.quantize_model(synth["dense"], out, "Q4_0", imatrix=im_path)
    no_leftovers(out)


def test_imatrix_non_finite(llama, synth, tmp_path):
    sc = imatrix_for(synth["dense"])
    sc["blk.0.attn_k.weight"][0][0, 3] = np.inf
    im_path = tmp_path / "im.gguf"
    write_imatrix_gguf(im_path, sc, ["x"], 1, 512)
    out = tmp_path / "out.gguf"
    with pytest.raises(InputError, match="non-finite"):
        recipes.quantize_model(synth["dense"], out, "Q4_0", imatrix=im_path)
    no_leftovers(out)
    assert llama.quantize(synth["dense"], tmp_path / "ref.gguf", 2, imatrix=normalized(sc)) != 0


def test_imatrix_file_errors(tmp_path):
    p = tmp_path / "bad.gguf"
    write_gguf(p, [KV("general.type", V.STRING, "imatrix")],
               [TensorInfo("a.in_sum2", 0, (1, 4))], lambda t: np.ones(4, "<f4"))
    with pytest.raises(FileFormatError, match="missing imatrix metadata"):
        read_imatrix(p)
    write_gguf(p, [KV("imatrix.datasets", V.ARRAY, ["x"], V.STRING), KV("imatrix.chunk_count", V.UINT32, 1),
                   KV("imatrix.chunk_size", V.UINT32, 1)],
               [TensorInfo("a.in_sum2", 0, (1, 4))], lambda t: np.ones(4, "<f4"))
    with pytest.raises(FileFormatError, match="mismatched sums and counts for 'a'"):
        read_imatrix(p)
    q = tmp_path / "bad.dat"
    q.write_bytes(b"\x02\x00\x00\x00\x03\x00\x00\x00abc")
    with pytest.raises(FileFormatError, match="truncated legacy imatrix"):
        read_imatrix(q)
    q.write_bytes(b"\x00\x00\x00\x00")
    with pytest.raises(FileFormatError, match="no data"):
        read_imatrix(q)


def test_row_length_no_type_can_take(llama, models, tmp_path, smol_float):
    # Q1_0 has 128-blocks and no fallback: rows of 576 cannot take it, llama.cpp refuses too
    out = tmp_path / "out.gguf"
    with pytest.raises(FormatError, match="no tensor type fallback .* Q1_0"):
        recipes.quantize_model(smol_float["F32"], out, "Q1_0")
    no_leftovers(out)
    assert llama.quantize(smol_float["F32"], tmp_path / "ref.gguf", recipes.file_type("Q1_0").id) != 0


def test_requires_imatrix(llama, tmp_path):
    # rows of 256 keep IQ2_XXS (rows of 96 fall back to IQ4_NL, which needs no imatrix)
    src = synthetic_model(tmp_path / "m.gguf", n_layer=1, extra=[("blk.0.wide.weight", (16, 256))])
    out = tmp_path / "out.gguf"
    with pytest.raises(InputError, match="blk.0.wide.weight.*IQ2_XXS.*needs an importance matrix"):
        recipes.quantize_model(src, out, "IQ2_XXS")
    no_leftovers(out)
    assert llama.quantize(src, tmp_path / "ref.gguf", recipes.file_type("IQ2_XXS").id) != 0


def test_invalid_file_type(llama, synth, tmp_path):
    out = tmp_path / "out.gguf"
    with pytest.raises(FormatError, match="NVFP4"):
        recipes.quantize_model(synth["dense"], out, "NVFP4")
    with pytest.raises(FormatError, match="unknown llama.cpp file type"):
        recipes.quantize_model(synth["dense"], out, "Q4_K_XL")
    no_leftovers(out)


def test_non_finite_weights(tmp_path):
    src = synthetic_model(tmp_path / "nan.gguf", n_layer=1,
                          extra=[("blk.0.ffn_up.weight", (64, 96))])
    with GGUFFile(src) as f:
        t = f.info("blk.0.attn_q.weight")
        at = f.data_offset + t.offset + 4 * (5 * 96 + 7)
    with open(src, "r+b") as fh:
        fh.seek(at)
        fh.write(np.float32(np.nan).tobytes())
    out = tmp_path / "out.gguf"
    with pytest.raises(InputError, match="blk.0.attn_q.weight.*non-finite"):
        recipes.quantize_model(src, out, "Q8_0")
    no_leftovers(out)


# ------------------------------------------------------------------------------ streaming

def test_peak_memory_smollm2(smol_float, tmp_path):
    """Streaming: the peak resident set stays under 4x the largest tensor (as F32) + 300 MB."""
    # the peak resident set of the child alone: /proc's VmHWM (ru_maxrss survives exec, so a
    # child of a large pytest process would report the parent's peak)
    code = (
        "import resource, sys\n"
        "from refquant.pipelines import recipes\n"
        "def hwm():\n"
        "    try:\n"
        "        for line in open('/proc/self/status'):\n"
        "            if line.startswith('VmHWM:'):\n"
        "                return int(line.split()[1]) * 1024\n"
        "    except OSError:\n"
        "        pass\n"
        "    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024\n"
        "recipes.quantize_model(sys.argv[1], sys.argv[2], 'Q4_0')\n"
        "print(hwm())\n")
    r = subprocess.run([sys.executable, "-c", code, str(smol_float["F32"]), str(tmp_path / "o.gguf")],
                       capture_output=True, text=True, cwd=Path(__file__).parent.parent)
    assert r.returncode == 0, r.stderr
    rss = int(r.stdout)
    with GGUFFile(smol_float["F32"]) as f:
        largest = max(t.n_elements for t in f.tensors) * 4
    assert rss < 4 * largest + 300e6, (rss, largest)


# ------------------------------------------------------------------------------ real models, other file types

# the non-K file types on the real models, each with an importance matrix (several need one):
# TQ2_0 on SmolLM2 in every run (about 20 s); with the thorough profile (make test-deep) the
# block-search types on both models. The lattice types (IQ1_*, IQ2_*, IQ3_*) search every
# ffn_down of the whole model (1-7 minutes a file type with the Numba backend, 4-20 with the NumPy
# spec, on a 2-core host), so whole models need REFQUANT_LATTICE_REAL_MODELS=1 as well; the thorough profile runs
# them on each model's first layer (below), every run on the synthetic models, and their type
# choice on the real models.
IQ_FTYPES = ["IQ4_NL", "IQ4_XS", "TQ1_0", "TQ2_0", "MXFP4_MOE", "NVFP4", "Q1_0", "Q2_0"]
LATTICE_FTYPES = ["IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "IQ3_XXS", "IQ3_XS", "IQ3_S", "IQ3_M"]
IQ_RUN = [(m, ft) for m in ("smollm2", "gemma3") for ft in IQ_FTYPES] if DEEP else [("smollm2", "TQ2_0")]
LATTICE_REAL = os.environ.get("REFQUANT_LATTICE_REAL_MODELS") == "1"


@pytest.fixture(scope="session")
def real_imatrix(tmp_path_factory):
    """A synthetic imatrix file for a real model's matrices (token_embd left out, as
    llama-imatrix leaves it out), and the raw sums and counts (for the values llama-quantize
    would hand to llama.cpp); made once per model."""
    d = tmp_path_factory.mktemp("real_imatrix")
    cache = {}

    def make(name, src):
        if name not in cache:
            sc = imatrix_for(src, seed=3, skip=("token_embd.weight",))
            p = d / f"{name}.imatrix.gguf"
            write_imatrix_gguf(p, sc, ["calibration.txt"], chunk_count=5, chunk_size=512)
            cache[name] = (p, sc)
        return cache[name]
    return make


def check_ftype_with_imatrix(llama, src, im, tmp_path, ft, backend="numpy"):
    """As check_k_ftype, with the same importance matrix given to both; refquant's rows run on
    `backend` (the spec by default)."""
    im_path, sc = im
    ours, ref = tmp_path / "ours.gguf", tmp_path / "ref.gguf"
    with GGUFFile(src) as f:
        try:
            missing = available(recipes.plan(f, ft, has_imatrix=True))
        except FormatError:
            missing = None
    rc = llama.quantize(src, ref, recipes.file_type(ft).id, imatrix=normalized(sc),
                        kv_overrides=imatrix_overrides(im_path, len(sc), "calibration.txt", 5))
    if rc != 0:  # NVFP4 (no such output file type), Q1_0 (no fallback for rows of 576/640)
        with pytest.raises((FormatError, InputError)):
            recipes.quantize_model(src, ours, ft, imatrix=im_path)
        no_leftovers(ours)
    elif missing:
        with pytest.raises(FormatError, match="has no (" + "|".join(sorted(missing)) + ") quantizer"):
            recipes.quantize_model(src, ours, ft, imatrix=im_path)
        no_leftovers(ours)
    else:
        recipes.quantize_model(src, ours, ft, imatrix=im_path, backend=backend)
        same_bytes(ours, ref)


def numba_or_spec():
    """The Numba backend where numba is importable, else the spec: a bit-exact backend, the
    bytes still compared with llama.cpp's."""
    try:
        import numba  # noqa: F401
    except ImportError:
        return "numpy"
    return "refquant_backends.numba:NumbaBackend"


@pytest.mark.parametrize("model,ft", IQ_RUN)
def test_iq_ftypes_real_models_with_imatrix(request, real_imatrix, llama, tmp_path, model, ft):
    src = request.getfixturevalue("smol_float")["F32"] if model == "smollm2" else request.getfixturevalue("gemma_f16")
    check_ftype_with_imatrix(llama, src, real_imatrix(model, src), tmp_path, ft)


@pytest.mark.skipif(not (DEEP and LATTICE_REAL), reason="1-7 minutes a file type and model with the Numba backend (the 20 "
                    "cases under an hour on 2 cores): set HYPOTHESIS_PROFILE=thorough and REFQUANT_LATTICE_REAL_MODELS=1")
@pytest.mark.parametrize("model,ft", [(m, ft) for m in ("smollm2", "gemma3") for ft in LATTICE_FTYPES])
def test_lattice_ftypes_real_models_with_imatrix(request, real_imatrix, llama, tmp_path, model, ft):
    """Whole models with the Numba backend where it is importable (its lattice quantizers where
    it claims them, the spec's elsewhere): the file is still compared with llama.cpp's."""
    src = request.getfixturevalue("smol_float")["F32"] if model == "smollm2" else request.getfixturevalue("gemma_f16")
    check_ftype_with_imatrix(llama, src, real_imatrix(model, src), tmp_path, ft, backend=numba_or_spec())


def first_layer(src, out):
    """A real model cut to its first layer (block_count 1): real weights and row lengths, small
    enough for the lattice IQ searches of the spec backend."""
    with GGUFFile(src) as f:
        arch = f.get("general.architecture")
        kvs = [KV(kv.key, V.UINT32, 1) if kv.key == f"{arch}.block_count" else kv for kv in f.kvs]
        infos = [TensorInfo(t.name, t.ggml_type, t.shape) for t in f.tensors
                 if not t.name.startswith("blk.") or t.name.startswith("blk.0.")]
        write_gguf(out, kvs, infos, lambda t: np.array(f.raw(t.name)))
    return out


@pytest.fixture(scope="session")
def one_layer(tmp_path_factory, request):
    d = tmp_path_factory.mktemp("one_layer")
    cache = {}

    def make(model):
        if model not in cache:
            src = request.getfixturevalue("smol_float")["F32"] if model == "smollm2" else request.getfixturevalue("gemma_f16")
            cache[model] = first_layer(src, d / f"{model}-1layer.gguf")
        return cache[model]
    return make


# The lattice file types on the first layer of each real model, with an importance matrix: rows
# of 576 (SmolLM2) and 640 (Gemma) fall back to IQ4_NL / Q4_0, so the lattice searches run on
# ffn_down (rows of 1536 and 2048); 20-40 s each with the thorough profile (make test-deep).
@pytest.mark.skipif(not DEEP, reason="20-40 s each: with the thorough profile (make test-deep)")
@pytest.mark.parametrize("model,ft", [(m, ft) for m in ("smollm2", "gemma3") for ft in LATTICE_FTYPES])
def test_lattice_ftypes_real_first_layer(one_layer, real_imatrix, llama, tmp_path, model, ft):
    """IQ1_M here is the prefix-sums search (recipes.LLAMA_CPP_ROWS): with ggml-python's
    split-sums, one block of Gemma's blk.0.ffn_down (row 248) differs in 4 bytes."""
    src = one_layer(model)
    check_ftype_with_imatrix(llama, src, real_imatrix(model + "-1layer", src), tmp_path, ft)


@pytest.mark.skipif(not DEEP, reason="with the thorough profile (make test-deep), as the first-layer tests")
def test_iq1m_split_sums_differs_on_gemma_first_layer(one_layer, real_imatrix, llama):
    """Teeth for the choice above: with the registered (ggml-python 0.0.45) IQ1_M in its place,
    Gemma's first layer is no longer llama.cpp's file (the row that differs is row 248 of
    blk.0.ffn_down, whose 2048 values make eight IQ1_M blocks)."""
    from refquant.ggml.iquants_grid import quantize_iq1_m
    src = one_layer("gemma3")
    im_path, sc = real_imatrix("gemma3-1layer", src)
    with GGUFFile(src) as f:
        t = next(t for t in f.tensors if t.name == "blk.0.ffn_down.weight")
        rows = recipes._to_f32(np.array(f.raw(t.name)), recipes.ggml_type(t.ggml_type).name, t.shape[0])
    w = normalized({t.name: sc[t.name]})[t.name]
    row = rows[248:249]
    prefix = recipes.LLAMA_CPP_ROWS["IQ1_M"](row, w)
    np.testing.assert_array_equal(prefix, llama.ggml_quantize(row, "IQ1_M", w))
    assert not np.array_equal(quantize_iq1_m(row, w), prefix)


# ------------------------------------------------------------------------------ backends

class Recording(Backend):
    """Runs another backend's row functions, recording each (operation, type) it is asked to
    run itself (Backend.quantize sends the others to the spec)."""
    name = "recording"

    def __init__(self, inner):
        self.inner = get_backend(inner)
        self.calls = set()

    def claims(self):
        return self.inner.claims()

    def quantize_rows(self, fmt, x, imatrix):
        self.calls.add(("quantize", fmt.name))
        return self.inner.quantize_rows(fmt, x, imatrix)

    def dequantize_rows(self, fmt, data):
        self.calls.add(("dequantize", fmt.name))
        return self.inner.dequantize_rows(fmt, data)


class OnlyQ4KAndIQ1M(Backend):
    """Claims the quantizers of Q4_K and IQ1_M only (running the spec's code for them)."""
    name = "q4k-iq1m"

    def claims(self):
        return {("quantize", "Q4_K"), ("quantize", "IQ1_M")}


def test_backend_runs_what_it_claims_and_spec_the_rest(llama, synth, tmp_path):
    """quantize_model(backend=...): the backend quantizes the types it claims; the spec the
    others; IQ1_M, whose llama.cpp variant is not the registered quantizer, always by the
    spec's prefix-sums search. The file is llama.cpp's."""
    src = synth["wide"]
    sc = imatrix_for(src, skip=("token_embd.weight",))
    im_path = tmp_path / "imatrix.gguf"
    write_imatrix_gguf(im_path, sc, ["calibration.txt"], chunk_count=3, chunk_size=512)
    be = Recording(OnlyQ4KAndIQ1M())
    ours, ref = tmp_path / "ours.gguf", tmp_path / "ref.gguf"
    recipes.quantize_model(src, ours, "IQ1_M", imatrix=im_path, backend=be)
    assert be.calls == {("quantize", "Q4_K")}
    assert llama.quantize(src, ref, recipes.file_type("IQ1_M").id, imatrix=normalized(sc),
                          kv_overrides=imatrix_overrides(im_path, len(sc), "calibration.txt", 3)) == 0
    same_bytes(ours, ref)


def test_numba_backend_byte_identical(llama, synth, tmp_path):
    """The Numba backend (`refquant quantize --backend numba`) writes llama.cpp's file: an
    IQ2_XXS file type (IQ2_XXS, Q4_K, Q5_K and F16 tensors), each type on Numba where it claims
    it."""
    pytest.importorskip("numba")
    ft = "IQ2_XXS"
    src = synth["wide"]
    sc = imatrix_for(src, skip=("token_embd.weight",))
    im_path = tmp_path / "imatrix.gguf"
    write_imatrix_gguf(im_path, sc, ["calibration.txt"], chunk_count=3, chunk_size=512)
    be = Recording("refquant_backends.numba:NumbaBackend")
    ours, ref = tmp_path / "ours.gguf", tmp_path / "ref.gguf"
    recipes.quantize_model(src, ours, ft, imatrix=im_path, backend=be)
    assert {("quantize", "Q4_K"), ("quantize", "Q5_K")} <= be.calls
    assert be.calls == {c for c in be.calls if be.inner.supports(*c)}
    assert llama.quantize(src, ref, recipes.file_type(ft).id, imatrix=normalized(sc),
                          kv_overrides=imatrix_overrides(im_path, len(sc), "calibration.txt", 3)) == 0
    same_bytes(ours, ref)
