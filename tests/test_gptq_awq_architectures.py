"""GPTQ (v1, v2) and AWQ (GEMM, GEMV) checkpoints of the architectures `--targets`/`--ignore`
reach (tests/test_targets.py's tiny random BERT, Gemma 3, Qwen 3 and Mixtral), loaded on the CPU
by transformers' own GPTQ and AWQ loaders: transformers 5.24 with optimum 2.3.0 and GPTQModel
7.7.0 (`tools.oracles.gptqmodel_hf`, a child process). Every quantized module's weight, as the
loader dequantizes it, equals refquant's dequantization bit for bit, and the loaded model's
logits are those of the float model that `refquant dequantize` writes, within float16's error.

What the loaders cannot do, shown here as what they do:
- AWQ GEMV: GPTQModel has no CPU kernel for the GEMV layout (AwqGEMVLinear is CUDA/ROCm only),
  so transformers refuses it on the CPU; its CPU reader of GEMV words (the MLX repacker,
  tests/test_layouts_gptq_awq.py) reads every GEMV layer here, and the GEMV checkpoint holds the
  weights the GEMM checkpoint of the same run loads with.
- Mixtral: transformers 5 fuses the experts into 3-D parameters, which its GPTQ/AWQ integrations
  never convert. GPTQModel's own loader first calls defuser.replace_fused_blocks("mixtral") (one
  Linear per expert, named gate_proj/up_proj/down_proj under mlp.experts.E); refquant writes the
  per-expert layout under Mixtral's original names (block_sparse_moe.experts.E.w1/w2/w3, as the
  original checkpoints and AutoGPTQ/AutoAWQ name them), so the load adds from_pretrained's
  key_mapping from those names to defuser's.
"""
import json
import os
import warnings

import numpy as np
import pytest

import torch  # noqa: E402  (an oracle)
from refquant.cli import main
from refquant.io.safetensors import Checkpoint
from refquant.layouts import awq as L_awq
from refquant.layouts import gptq as L_gptq
from tools.oracles import gptqmodel_hf as G
from test_targets import _build

DEEP = os.environ.get("HYPOTHESIS_PROFILE") == "thorough"
ARCHS = ["bert", "gemma3", "qwen3", "mixtral"]
FORMATS = ["gptq", "gptq_v2", "awq"]
# GPTQ in groups of 32 (two groups a row of 64); AWQ in groups of 64, the GEMV kernel's smallest
GROUP = {"gptq": 32, "gptq_v2": 32, "awq": 64, "awq-gemv": 64}
MOE_IGNORE = ("--ignore", "lm_head", "re:.*block_sparse_moe.gate$")
# Mixtral's original expert names -> defuser's (see the module docstring)
MIXTRAL_KEYS = {r"block_sparse_moe\.experts\.(\d+)\.w1\.": r"mlp.experts.\1.gate_proj.",
                r"block_sparse_moe\.experts\.(\d+)\.w2\.": r"mlp.experts.\1.down_proj.",
                r"block_sparse_moe\.experts\.(\d+)\.w3\.": r"mlp.experts.\1.up_proj."}


def _quantize(d, out, fmt, group_size, *extra):
    assert main(["quantize", str(d), str(out), "--format", fmt, "--bits", "4", "--group-size", str(group_size),
                 "--no-progress", *extra]) == 0


def _loaded_name(arch, name):
    if arch == "mixtral" and ".block_sparse_moe.experts." in name:
        layer, rest = name.split(".block_sparse_moe.experts.")
        e, w = rest.split(".")
        return f"{layer}.mlp.experts.{e}.{dict(w1='gate_proj', w2='down_proj', w3='up_proj')[w]}"
    return name


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    """Every architecture in every format, quantized by refquant and loaded by transformers in
    one child process: {(arch, fmt): (checkpoint dir, float model class, record)}."""
    if not G.installed():
        pytest.fail(f"GPTQModel {G.VERSION} is not installed in {G.DIR}: run make install")
    root = tmp_path_factory.mktemp("gptq-awq-archs")
    jobs, keys = [], []
    for arch in ARCHS:
        _, d, cls = _build(arch, tmp_path_factory)
        extra = MOE_IGNORE if arch == "mixtral" else ()
        for fmt in FORMATS + ["awq-gemv"]:
            out = root / f"{arch}-{fmt}"
            _quantize(d, out, fmt, GROUP[fmt], *extra)
            job = {"dir": out, "cls": cls.__name__, "method": "gptq" if fmt.startswith("gptq") else "awq", "bits": 4,
                   "backend": {"gptq": "gptq_torch", "gptq_v2": "gptq_torch", "awq": "torch_awq"}.get(fmt, "auto")}
            if arch == "mixtral":
                job.update(defuse="mixtral", key_mapping=MIXTRAL_KEYS)
            jobs.append(job)
            keys.append((arch, fmt, cls))
    # a layer inside the block left out: the loader must be told which ones to convert
    _, d, cls = _build("qwen3", tmp_path_factory)
    _quantize(d, root / "qwen3-ignore", "gptq", 32, "--ignore", "lm_head", "re:.*down_proj")
    jobs.append({"dir": root / "qwen3-ignore", "cls": cls.__name__, "method": "gptq", "bits": 4, "backend": "gptq_torch"})
    keys.append(("qwen3", "ignore", cls))
    recs = G.load(jobs, root / "loader")
    return {(a, f): (root / f"{a}-{f}", cls, r) for (a, f, cls), r in zip(keys, recs)}


def _ours(ck, name, fmt):
    if fmt.startswith("gptq"):
        tens = {k: np.asarray(ck[f"{name}.{k}"]) for k in ("qweight", "qzeros", "scales", "g_idx")}
        return L_gptq.dequantize(tens, 4, "v2" if fmt == "gptq_v2" else "v1")
    # AutoAWQ's layout: (in, out)
    return L_awq.dequantize({k: np.asarray(ck[f"{name}.{k}"]) for k in ("qweight", "qzeros", "scales")}).T


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("arch", ARCHS)
def test_loaded_by_transformers_equal_refquant(loaded, tmp_path, arch, fmt):
    out, cls, rec = loaded[(arch, fmt)]
    assert "error" not in rec, rec.get("traceback")
    assert (rec["gptqmodel"], rec["transformers"]) == (G.VERSION, "5.24.0")
    # nothing left behind, nothing made up
    assert rec["missing"] == [] and rec["unexpected"] == [], (rec["missing"][:8], rec["unexpected"][:8])
    ck = Checkpoint(out)
    quantized = sorted(k[:-len(".qweight")] for k in ck if k.endswith(".qweight"))
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    if fmt.startswith("gptq"):      # only BERT's layers are out of reach of optimum's block patterns
        blocks = {"block_name_to_quantize": "", "modules_in_block_to_quantize": [quantized]} if arch == "bert" else {}
        assert {k: qc[k] for k in ("block_name_to_quantize", "modules_in_block_to_quantize") if k in qc} == blocks
    assert quantized and sorted(rec["kinds"]) == sorted(_loaded_name(arch, n) for n in quantized)
    want = "TorchLinear" if fmt.startswith("gptq") else "AwqTorchLinear"
    assert set(rec["kinds"].values()) == {want}
    for name in quantized:
        theirs = rec["weights"][_loaded_name(arch, name)]
        ours = _ours(ck, name, fmt)
        assert theirs.dtype == ours.dtype == np.float16 and theirs.shape == ours.shape, name
        np.testing.assert_array_equal(theirs.view(np.uint16), ours.view(np.uint16), err_msg=name)
    # the logits: the float model refquant dequantize writes, run in float32, against the loaded
    # model run in float16 (its activations in float16: a relative error of a few 1e-3)
    assert main(["dequantize", str(out), str(tmp_path / "f"), "--dtype", "float32"]) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = cls.from_pretrained(tmp_path / "f", dtype=torch.float32).eval()
    with torch.no_grad():
        o = m(torch.tensor(G.IDS))
    ref = (o.logits if hasattr(o, "logits") else o[0]).numpy()
    assert rec["logits"].shape == ref.shape
    np.testing.assert_allclose(rec["logits"], ref, rtol=0, atol=0.02 * np.abs(ref).max())


@pytest.mark.parametrize("arch", ARCHS)
def test_awq_gemv(loaded, arch):
    """GEMV: transformers' loader finds no GPTQModel kernel for it on the CPU (AwqGEMVLinear runs
    on CUDA/ROCm only) and says so. GPTQModel's CPU reader of GEMV words (repack_awq_gemv, the MLX
    path) reads every layer back to refquant's codes, scales and zeros, and the weights they make
    are those the loader dequantized from the GEMM checkpoint of the same run."""
    from tools.oracles.pytorch import gptqmodel_mlx_packing
    out, cls, rec = loaded[(arch, "awq-gemv")]
    assert "No valid quant linear" in rec.get("error", ""), rec
    gemv = Checkpoint(out)
    gemm = loaded[(arch, "awq")][2]
    assert "error" not in gemm
    names = sorted(k[:-len(".qweight")] for k in gemv if k.endswith(".qweight"))
    assert names and sorted(gemm["kinds"]) == sorted(_loaded_name(arch, n) for n in names)
    repack = gptqmodel_mlx_packing().repack_awq_gemv
    for name in names:
        t = {k: np.asarray(gemv[f"{name}.{k}"]) for k in ("qweight", "qzeros", "scales")}
        N, K = t["qweight"].shape[0], t["qweight"].shape[1] * 8
        w, s, b = repack(t["qweight"], t["qzeros"], t["scales"], K, N, 64)
        codes = ((np.asarray(w, np.uint32)[..., None] >> (4 * np.arange(8, dtype=np.uint32))) & 15).reshape(N, K)
        c, s_r, z_r = L_awq.unpack_gemv(t, 64)
        np.testing.assert_array_equal(codes, c, err_msg=name)
        np.testing.assert_array_equal(s.view(np.uint16), s_r.view(np.uint16), err_msg=name)
        np.testing.assert_array_equal(b.view(np.uint32), (-z_r.astype(np.float32) * s_r.astype(np.float32)).view(np.uint32))
        ours = L_awq.dequantize_gemv(t, 64)
        np.testing.assert_array_equal(ours.view(np.uint16), gemm["weights"][_loaded_name(arch, name)].view(np.uint16),
                                      err_msg=name)


def test_gptq_ignore_inside_the_block(loaded):
    """--ignore re:.*down_proj: the loader's block (model.layers) holds linear layers refquant left
    as they are, so the config lists the quantized ones (modules_in_block_to_quantize); without
    it the loader turns down_proj into a quantized layer too and reads garbage."""
    out, cls, rec = loaded[("qwen3", "ignore")]
    assert "error" not in rec, rec.get("traceback")
    assert rec["missing"] == [] and rec["unexpected"] == []
    ck = Checkpoint(out)
    quantized = sorted(k[:-len(".qweight")] for k in ck if k.endswith(".qweight"))
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc["block_name_to_quantize"] == "model.layers" and qc["modules_in_block_to_quantize"] == [quantized]
    assert "model.layers.0.mlp.down_proj.weight" in ck and not any("down_proj" in n for n in quantized)
    assert sorted(rec["kinds"]) == quantized
    for name in quantized:
        np.testing.assert_array_equal(rec["weights"][name].view(np.uint16), _ours(ck, name, "gptq").view(np.uint16))


@pytest.fixture(scope="module")
def loaded_bits(tmp_path_factory):
    """GPTQ v1 and v2 at 2, 3 and 8 bits (GPTQ's other widths; 3 bits straddle words), every
    architecture, through the loader in one child process."""
    root = tmp_path_factory.mktemp("gptq-bits")
    jobs, keys = [], []
    for arch in ARCHS:
        _, d, cls = _build(arch, tmp_path_factory)
        for bits in (2, 3, 8):
            for fmt in ("gptq", "gptq_v2"):
                out = root / f"{arch}-{fmt}-{bits}"
                assert main(["quantize", str(d), str(out), "--format", fmt, "--bits", str(bits), "--group-size", "32",
                             "--no-progress", *(MOE_IGNORE if arch == "mixtral" else ())]) == 0
                job = {"dir": out, "cls": cls.__name__, "method": "gptq", "bits": bits, "backend": "gptq_torch"}
                if arch == "mixtral":
                    job.update(defuse="mixtral", key_mapping=MIXTRAL_KEYS)
                jobs.append(job)
                keys.append((arch, fmt, bits))
    return {k: (j["dir"], r) for k, j, r in zip(keys, jobs, G.load(jobs, root / "loader"))}


@pytest.mark.skipif(not DEEP, reason="24 more loads (a minute on 2 cores): the thorough profile "
                    "(HYPOTHESIS_PROFILE=thorough, make test-deep); 4 bits run by default")
@pytest.mark.parametrize("arch", ARCHS)
def test_gptq_other_widths_loaded_by_transformers(loaded_bits, arch):
    for (a, fmt, bits), (out, rec) in loaded_bits.items():
        if a != arch:
            continue
        assert "error" not in rec, (fmt, bits, rec.get("traceback"))
        assert rec["missing"] == [] and rec["unexpected"] == [], (fmt, bits)
        ck = Checkpoint(out)
        quantized = sorted(k[:-len(".qweight")] for k in ck if k.endswith(".qweight"))
        assert quantized and sorted(rec["kinds"]) == sorted(_loaded_name(arch, n) for n in quantized)
        for name in quantized:
            tens = {k: np.asarray(ck[f"{name}.{k}"]) for k in ("qweight", "qzeros", "scales", "g_idx")}
            ours = L_gptq.dequantize(tens, bits, "v2" if fmt == "gptq_v2" else "v1")
            np.testing.assert_array_equal(rec["weights"][_loaded_name(arch, name)].view(np.uint16),
                                          ours.view(np.uint16), err_msg=f"{fmt} {bits} {name}")
