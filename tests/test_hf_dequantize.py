"""`refquant dequantize CHECKPOINT_DIR OUT_DIR`: every layout `refquant quantize` writes, read back
into a plain safetensors checkpoint that transformers loads, each weight equal bit for bit to the
real loader's dequantization: compressed-tensors' decompression (through transformers),
AutoGPTQ's QuantLinear, AutoAWQ's dequantize_gemm, transformers' fine-grained FP8, ModelOpt's
NVFP4QTensor, bitsandbytes' CPU dequantization."""
import json
import warnings

import ml_dtypes
import numpy as np
import pytest

import torch  # noqa: E402  (an oracle)
from refquant.cli import main
from refquant.io.safetensors import Checkpoint
from tools.oracles import pytorch as pt

LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
           "mlp.up_proj", "mlp.down_proj")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    import transformers as tf
    d = tmp_path_factory.mktemp("llama") / "m"
    cfg = tf.LlamaConfig(hidden_size=128, intermediate_size=256, num_attention_heads=4, num_key_value_heads=2,
                         num_hidden_layers=1, vocab_size=96, max_position_embeddings=64)
    torch.manual_seed(0)
    tf.LlamaForCausalLM(cfg).eval().save_pretrained(d)
    adir = d.parent / "acts"
    adir.mkdir()
    rng = np.random.default_rng(1)
    for m in LINEARS:
        K = 256 if m == "mlp.down_proj" else 128
        np.save(adir / f"model.layers.0.{m}.npy", rng.standard_normal((16, K)).astype(np.float32))
    return d, adir


def _quantize(d, out, *args):
    assert main(["quantize", str(d), str(out), "--no-progress", *map(str, args)]) == 0


def _dequantize(src, out, *args):
    assert main(["dequantize", str(src), str(out), *args]) == 0
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    return Checkpoint(out)


def _load_plain(out):
    from transformers import AutoModelForCausalLM
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert m(torch.tensor([[1, 2, 3]])).logits.shape == (1, 3, 96)
    return m


def _same(a, b, what):
    a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape, (what, a.dtype, b.dtype, a.shape, b.shape)
    np.testing.assert_array_equal(a.view(f"u{a.itemsize}"), b.view(f"u{b.itemsize}"), err_msg=what)


# every format (the preset tests check refquant's dequantization against the decompression of
# every preset; here the whole command, one preset a format)
@pytest.mark.parametrize("args", [("--bits", 4, "--group-size", 32), ("--scheme", "W4A16_ASYM"),
                                  ("--scheme", "W8A8"), ("--scheme", "FP8_BLOCK"), ("--scheme", "NVFP4A16"),
                                  ("--scheme", "MXFP4A16"), ("--scheme", "MXFP6A16"), ("--scheme", "MXFP8A16"),
                                  ("--bits", 4, "--format", "nvfp4")],
                         ids=lambda a: "-".join(map(str, a)))
def test_compressed_tensors_equals_its_decompression(tiny, tmp_path, args):
    from transformers import AutoModelForCausalLM
    from transformers.utils.quantization_config import CompressedTensorsConfig
    d, adir = tiny
    _quantize(d, tmp_path / "q", "--format", "compressed-tensors", *args)
    ck = _dequantize(tmp_path / "q", tmp_path / "f")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = AutoModelForCausalLM.from_pretrained(tmp_path / "q", dtype=torch.float32,
                                                      quantization_config=CompressedTensorsConfig(run_compressed=False))
    ours = _load_plain(tmp_path / "f")
    for m in LINEARS:
        name = f"model.layers.0.{m}"
        w = np.asarray(ck[f"{name}.weight"])
        # the file holds the decompressed dtype; transformers widened its own to float32
        _same(w.astype(np.float32), theirs.get_submodule(name).weight.detach().numpy(), name)
        _same(ours.get_submodule(name).weight.detach().numpy(), w.astype(np.float32), name)


def test_gptq_v1_v2_equal_autogptq(tiny, tmp_path):
    d, adir = tiny
    QL = pt.auto_gptq_qlinear_cuda().QuantLinear
    for fmt in ("gptq", "gptq_v2"):
        _quantize(d, tmp_path / fmt, "--method", "gptq", "--bits", 4, "--group-size", 32, "--format", fmt,
                  "--activations", adir)
    q1 = Checkpoint(tmp_path / "gptq")
    f1 = _dequantize(tmp_path / "gptq", tmp_path / "f1")
    f2 = _dequantize(tmp_path / "gptq_v2", tmp_path / "f2")
    _load_plain(tmp_path / "f1")
    for m in LINEARS:
        name = f"model.layers.0.{m}"
        tens = {k: np.asarray(q1[f"{name}.{k}"]) for k in ("qweight", "qzeros", "scales", "g_idx")}
        N, K = tens["scales"].shape[1], tens["g_idx"].shape[0]
        layer = QL(4, 32, K, N, bias=False)
        for k, v in tens.items():
            setattr(layer, k, torch.from_numpy(v.copy()))
        theirs = layer(torch.eye(K, dtype=torch.float16)).detach().numpy().T
        w = np.asarray(f1[f"{name}.weight"])
        _same(np.where(w == 0, np.float16(0), w), theirs, name)       # x·0 in the matmul: +0
        _same(np.asarray(f2[f"{name}.weight"]), w, name)              # v2 stores the same weights


def test_awq_gemm_gemv_equal_autoawq(tiny, tmp_path):
    from awq.utils.packing_utils import dequantize_gemm
    d, adir = tiny
    for fmt in ("awq", "awq-gemv"):
        _quantize(d, tmp_path / fmt, "--bits", 4, "--group-size", 64, "--format", fmt)
    q = Checkpoint(tmp_path / "awq")
    fa = _dequantize(tmp_path / "awq", tmp_path / "fa", "--dtype", "float32")
    fv = _dequantize(tmp_path / "awq-gemv", tmp_path / "fv")
    _load_plain(tmp_path / "fa")
    for m in LINEARS:
        name = f"model.layers.0.{m}"
        theirs = dequantize_gemm(*(torch.from_numpy(np.asarray(q[f"{name}.{k}"]).copy())
                                   for k in ("qweight", "qzeros", "scales")), 4, 64).numpy().T
        _same(np.asarray(fv[f"{name}.weight"]), theirs, name)
        _same(np.asarray(fa[f"{name}.weight"]), theirs.astype(np.float32), name)


def test_fp8_block_and_modelopt(tiny, tmp_path):
    from transformers.integrations.finegrained_fp8 import _dequantize_fp8_weight
    from modelopt.torch.quantization.qtensor import NVFP4QTensor
    d, adir = tiny
    _quantize(d, tmp_path / "fp8", "--bits", 8, "--format", "fp8-block")
    _quantize(d, tmp_path / "mo4", "--bits", 4, "--format", "modelopt-nvfp4", "--activations", adir)
    _quantize(d, tmp_path / "mo8", "--bits", 8, "--format", "modelopt-fp8", "--activations", adir)
    for fmt in ("fp8", "mo4", "mo8"):
        q = Checkpoint(tmp_path / fmt)
        f = _dequantize(tmp_path / fmt, tmp_path / f"f{fmt}", "--dtype", "bfloat16")
        raw = _dequantize(tmp_path / fmt, tmp_path / f"r{fmt}")
        _load_plain(tmp_path / f"f{fmt}")
        for m in LINEARS:
            name = f"model.layers.0.{m}"
            if fmt == "fp8":
                theirs = _dequantize_fp8_weight(pt.to_torch(np.asarray(q[f"{name}.weight"])),
                                                pt.to_torch(np.asarray(q[f"{name}.weight_scale_inv"])), [128, 128],
                                                torch.float32).numpy()
            elif fmt == "mo4":
                w = np.asarray(q[f"{name}.weight"])
                qt = NVFP4QTensor(torch.Size((w.shape[0], w.shape[1] * 2)), torch.float32, torch.from_numpy(w.copy()))
                theirs = qt.dequantize(dtype=torch.float32, scale=pt.to_torch(np.asarray(q[f"{name}.weight_scale"])),
                                       double_scale=torch.from_numpy(np.asarray(q[f"{name}.weight_scale_2"]).copy()),
                                       block_sizes={-1: 16}).numpy()
            else:   # ModelOpt FP8: weight.to(float32) * weight_scale, as its export reads it back
                theirs = (pt.to_torch(np.asarray(q[f"{name}.weight"])).to(torch.float32)
                          * torch.from_numpy(np.asarray(q[f"{name}.weight_scale"], np.float32).copy())).numpy()
            _same(np.asarray(raw[f"{name}.weight"]), theirs, name)
            _same(np.asarray(f[f"{name}.weight"]), theirs.astype(ml_dtypes.bfloat16), name)
        # the unquantized tensors were cast to bfloat16 too
        assert np.asarray(f["model.embed_tokens.weight"]).dtype == ml_dtypes.bfloat16


@pytest.mark.parametrize("mode", ["4bit", "8bit"])
def test_bitsandbytes_equals_its_dequantization(tiny, tmp_path, mode):
    import bitsandbytes.functional as F
    from refquant.bnb import blockwise as rbw
    from refquant.bnb import int8 as ri8
    from refquant.layouts import bnb as lay
    d, adir = tiny
    src = lay.read_safetensors(str(d / "model.safetensors"))
    out = {}
    for m in LINEARS:
        name = f"model.layers.0.{m}"
        w = src.pop(f"{name}.weight")
        if mode == "4bit":
            packed, state = rbw.quantize_4bit(w, 64, "nf4", True)
            out.update(lay.quant_state_entries(name, packed, state))
        else:
            cb, scb, _ = ri8.int8_vectorwise_quant(w)
            out.update(lay.int8_entries(name, cb, scb))
    out.update(src)
    q = tmp_path / "bnb"
    q.mkdir()
    lay.write_safetensors(str(q / "model.safetensors"), out)
    cfg = json.loads((d / "config.json").read_text())
    cfg["quantization_config"] = lay.quantization_config_4bit("nf4", True) if mode == "4bit" \
        else lay.quantization_config_8bit()
    (q / "config.json").write_text(json.dumps(cfg))
    f = _dequantize(q, tmp_path / "f")
    _load_plain(tmp_path / "f")
    for m in LINEARS:
        name = f"model.layers.0.{m}"
        if mode == "4bit":
            qs = F.QuantState.from_dict({k[len(name) + len(".weight."):]: torch.from_numpy(np.asarray(v).copy())
                                         for k, v in out.items() if k.startswith(name + ".weight.")}, device="cpu")
            theirs = torch.ops.bitsandbytes.dequantize_4bit.default.redispatch(
                torch._C.DispatchKeySet(torch._C.DispatchKey.CompositeExplicitAutograd),
                torch.from_numpy(np.asarray(out[f"{name}.weight"]).copy()),
                F.dequantize_blockwise(qs.absmax, qs.state2) + qs.offset, qs.blocksize, qs.quant_type,
                list(qs.shape), qs.dtype).numpy()
        else:
            cb = torch.from_numpy(np.asarray(out[f"{name}.weight"]).copy())
            scb = torch.from_numpy(np.asarray(out[f"{name}.SCB"]).copy())
            theirs = F.int8_vectorwise_dequant(cb, scb).numpy()
        _same(np.asarray(f[f"{name}.weight"]), theirs, name)


def test_errors(tiny, tmp_path, capsys):
    d, adir = tiny
    assert main(["dequantize", str(d), str(tmp_path / "o")]) == 2                   # not quantized
    _quantize(d, tmp_path / "q", "--bits", 4, "--group-size", 32, "--format", "compressed-tensors")
    assert main(["dequantize", str(tmp_path / "q"), str(d)]) == 2                   # output exists
    err = capsys.readouterr().err
    assert "quantization_config" in err and "exists" in err
    assert not (tmp_path / "o").exists()


def test_bad_configs_one_line(tiny, tmp_path, capsys):
    """A malformed quantization_config gives exit 2 and one line, never a traceback."""
    d, adir = tiny
    _quantize(d, tmp_path / "q", "--bits", 4, "--group-size", 32, "--format", "gptq", "--method", "rtn")
    cfg = json.loads((tmp_path / "q" / "config.json").read_text())
    for i, bad in enumerate([{"bits": "four"}, {"bits": 5}, {"quant_method": 3}, {"quant_method": "exl2"}]):
        q = tmp_path / f"b{i}"
        q.mkdir()
        for f in (tmp_path / "q").iterdir():
            (q / f.name).write_bytes(f.read_bytes())
        c = dict(cfg, quantization_config={**cfg["quantization_config"], **bad})
        (q / "config.json").write_text(json.dumps(c))
        assert main(["dequantize", str(q), str(tmp_path / f"o{i}")]) == 2, bad
        assert not (tmp_path / f"o{i}").exists()
    err = capsys.readouterr().err
    assert "Traceback" not in err and "internal error" not in err


def test_bad_tensors_one_line(tiny, tmp_path, capsys):
    """A quantized layer whose tensors do not fit together (a scale of the wrong shape, a missing
    or mistyped tensor) is refused in one line naming it, exit 2, no output."""
    import os
    from refquant.io.safetensors import save_file
    d, adir = tiny
    L = "model.layers.0.self_attn.q_proj"
    cases = [(("--bits", 4, "--group-size", 32, "--format", "compressed-tensors"), f"{L}.weight_scale",
              lambda a: a[:, :1].copy()),
             (("--bits", 4, "--group-size", 32, "--format", "gptq"), f"{L}.qzeros", None),
             (("--scheme", "FP8_BLOCK"), f"{L}.weight_scale", lambda a: np.zeros((3, 5), np.float32)),
             (("--bits", 4, "--group-size", 32, "--format", "awq"), f"{L}.qweight", lambda a: a.astype(np.int64))]
    for i, (args, key, change) in enumerate(cases):
        q = tmp_path / f"q{i}"
        _quantize(d, q, *args)
        capsys.readouterr()  # quantize's own summary line; only dequantize's output is checked below
        t = {k: np.asarray(v) for k, v in Checkpoint(q).items()}
        if change is None:
            del t[key]
        else:
            t[key] = change(t[key])
        os.remove(q / "model.safetensors")
        save_file(q / "model.safetensors", t)
        assert main(["dequantize", str(q), str(tmp_path / f"o{i}")]) == 2, key
        err = capsys.readouterr().err
        assert L in err and "internal error" not in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / f"o{i}").exists()
