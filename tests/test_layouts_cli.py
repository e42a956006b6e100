"""`refquant quantize MODEL_DIR OUT_DIR` on a checkpoint derived from SmolLM2-135M-Instruct (one
layer), each output read back by the loaders' own code: compressed-tensors' compressors,
AutoGPTQ's QuantLinear, AutoAWQ's dequantize_gemm, transformers' FP8 dequantization."""
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
from tools.oracles import pytorch as pt
from hf_checkpoint import smollm2_checkpoint, with_activations

LAYER = "model.layers.0.self_attn.o_proj"


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    d = tmp_path_factory.mktemp("hf") / "smollm2-1layer"
    t = smollm2_checkpoint(d, n_layers=1)
    return d, with_activations(d, t), t


def run(*args):
    return main(["quantize", *map(str, args), "--no-progress"])


def test_gptq_format_read_by_autogptq(model, tmp_path):
    d, adir, t = model
    out = tmp_path / "gptq"
    assert run(d, out, "--method", "gptq", "--bits", "4", "--group-size", "64", "--format", "gptq",
               "--activations", adir) == 0
    ck = Checkpoint(out)
    cfg = json.loads((out / "config.json").read_text())["quantization_config"]
    assert cfg["quant_method"] == "gptq" and cfg["bits"] == 4 and cfg["group_size"] == 64
    tens = {k: np.asarray(ck[f"{LAYER}.{k}"]) for k in ("qweight", "qzeros", "scales", "g_idx")}
    QL = pt.auto_gptq_qlinear_cuda().QuantLinear
    N, K = t[f"{LAYER}.weight"].shape
    layer = QL(4, 64, K, N, bias=False)
    for k, v in tens.items():
        setattr(layer, k, torch.from_numpy(v.copy()))
    theirs = layer(torch.eye(K, dtype=torch.float16)).numpy().T
    ours = L_gptq.dequantize(tens, 4)
    np.testing.assert_array_equal(np.where(ours == 0, 0, ours), theirs)
    # the embedding and norms pass through unchanged
    np.testing.assert_array_equal(ck["model.embed_tokens.weight"], t["model.embed_tokens.weight"])


def test_awq_format_read_by_autoawq(model, tmp_path):
    from awq.utils.packing_utils import dequantize_gemm
    d, adir, t = model
    out = tmp_path / "awq"
    assert run(d, out, "--method", "awq", "--bits", "4", "--group-size", "64", "--format", "awq",
               "--activations", adir) == 0
    ck = Checkpoint(out)
    tens = {k: np.asarray(ck[f"{LAYER}.{k}"]) for k in ("qweight", "qzeros", "scales")}
    theirs = dequantize_gemm(*(torch.from_numpy(tens[k].copy()) for k in ("qweight", "qzeros", "scales")), 4, 64)
    np.testing.assert_array_equal(L_awq.dequantize(tens).view(np.uint16), theirs.numpy().view(np.uint16))
    # the AWQ scales were folded into the norm before q/k/v
    assert not np.array_equal(ck["model.layers.0.input_layernorm.weight"], t["model.layers.0.input_layernorm.weight"])


def test_awq_gemv_format(model, tmp_path):
    """The GEMV output holds the weights AutoAWQ's dequantize_gemm reads from the GEMM output of
    the same run (the GEMV packing itself is checked against WQLinear_GEMV.from_linear)."""
    from awq.utils.packing_utils import dequantize_gemm
    d, adir, t = model
    for fmt in ("awq", "awq-gemv"):
        assert run(d, tmp_path / fmt, "--bits", "4", "--group-size", "64", "--format", fmt) == 0
    cfg = json.loads((tmp_path / "awq-gemv" / "config.json").read_text())["quantization_config"]
    assert cfg["version"] == "gemv" and cfg["group_size"] == 64
    gemm, gemv = Checkpoint(tmp_path / "awq"), Checkpoint(tmp_path / "awq-gemv")
    theirs = dequantize_gemm(*(torch.from_numpy(np.asarray(gemm[f"{LAYER}.{k}"]).copy())
                               for k in ("qweight", "qzeros", "scales")), 4, 64).numpy()
    tens = {k: np.asarray(gemv[f"{LAYER}.{k}"]) for k in ("qweight", "qzeros", "scales")}
    N, K = t[f"{LAYER}.weight"].shape
    assert tens["qweight"].shape == (N, K // 8) and tens["qzeros"].shape == (N, L_awq.zeros_width(K, 64))
    np.testing.assert_array_equal(L_awq.dequantize_gemv(tens, 64).T.view(np.uint16), theirs.view(np.uint16))
    assert run(d, tmp_path / "bad", "--bits", "4", "--group-size", "48", "--format", "awq-gemv") != 0


@pytest.mark.parametrize("bits,sym_group", [(4, 32), (8, -1), (3, 64)])
def test_compressed_tensors_format_decompressed_by_compressed_tensors(model, tmp_path, bits, sym_group):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from compressed_tensors.compressors import PackedQuantizationCompressor
        from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    from refquant.layouts import compressed_tensors as CT
    d, adir, t = model
    out = tmp_path / "ct"
    assert run(d, out, "--method", "rtn", "--bits", bits, "--group-size", sym_group, "--format",
               "compressed-tensors") == 0
    ck = Checkpoint(out)
    cfg = json.loads((out / "config.json").read_text())["quantization_config"]
    scheme = QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(**cfg["config_groups"]["group_0"]["weights"]))
    for k in [k for k in ck if k.endswith(".weight_packed")]:
        m = k[:-len(".weight_packed")]
        tens = {n: np.asarray(ck[f"{m}.{n}"]) for n in ("weight_packed", "weight_scale", "weight_shape")}
        theirs = PackedQuantizationCompressor.decompress({n: torch.from_numpy(v.copy()) for n, v in tens.items()},
                                                         scheme)["weight"].numpy()
        np.testing.assert_array_equal(CT.dequantize_pack_quantized(tens, bits).view(np.uint8), theirs.view(np.uint8))


def test_fp8_block_format(model, tmp_path):
    from transformers.integrations.finegrained_fp8 import _dequantize_fp8_weight
    from refquant.layouts import fp8_block as F
    d, adir, t = model
    out = tmp_path / "fp8"
    assert run(d, out, "--method", "rtn", "--bits", "8", "--format", "fp8-block") == 0
    ck = Checkpoint(out)
    tens = {n: np.asarray(ck[f"{LAYER}.{n}"]) for n in ("weight", "weight_scale_inv")}
    theirs = _dequantize_fp8_weight(pt.to_torch(tens["weight"]), pt.to_torch(tens["weight_scale_inv"]), [128, 128],
                                    torch.float32).numpy()
    np.testing.assert_array_equal(F.dequantize_block_fp8(tens), theirs)
    assert json.loads((out / "config.json").read_text())["quantization_config"]["weight_block_size"] == [128, 128]


def test_errors_leave_no_output(model, tmp_path, capsys):
    d, adir, t = model
    out = tmp_path / "bad"
    assert run(d, out, "--method", "gptq", "--format", "gptq") == 2                 # no activations
    assert run(d, out, "--bits", "4", "--format", "modelopt-nvfp4") == 2            # no input scales
    assert run(d, out, "--method", "gptq", "--bits", "8", "--format", "modelopt-fp8", "--activations", adir) == 2
    assert run(d, out, "--bits", "5", "--format", "gptq") == 2                      # unsupported width
    assert run(d, out, "--bits", "4", "--group-size", "100", "--format", "gptq") == 2   # K % g
    empty = tmp_path / "acts"
    empty.mkdir()
    assert run(d, out, "--method", "gptq", "--format", "gptq", "--activations", empty) == 2   # missing layer
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    for f in os.listdir(adir):
        np.save(wrong / f, np.zeros((4, 3), np.float32))
    assert run(d, out, "--method", "gptq", "--format", "gptq", "--activations", wrong) == 2   # shape mismatch
    err = capsys.readouterr().err
    assert "activations" in err and "5" in err and "shape" in err
    assert not out.exists() and not [p for p in os.listdir(tmp_path) if p.startswith(".bad")]


def test_transformers_loads_compressed_tensors_checkpoint(model, tmp_path):
    """transformers 5.24 loads the whole checkpoint (config.json's quantization_config included)
    through compressed-tensors, decompressing to float32: its weights equal refquant's dequantized
    ones bit for bit, and the model runs."""
    from transformers import AutoModelForCausalLM
    from transformers.utils.quantization_config import CompressedTensorsConfig
    from refquant.layouts import compressed_tensors as CT
    d, adir, t = model
    out = tmp_path / "ct-model"
    assert run(d, out, "--bits", "4", "--group-size", "64", "--format", "compressed-tensors") == 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = AutoModelForCausalLM.from_pretrained(out, quantization_config=CompressedTensorsConfig(run_compressed=False),
                                                 dtype=torch.float32)
    ck = Checkpoint(out)
    for name, mod in m.named_modules():
        if isinstance(mod, torch.nn.Linear) and name.startswith("model.layers."):
            tens = {n: np.asarray(ck[f"{name}.{n}"]) for n in ("weight_packed", "weight_scale", "weight_shape")}
            np.testing.assert_array_equal(mod.weight.detach().numpy(), CT.dequantize_pack_quantized(tens, 4))
    assert m(torch.tensor([[1, 2, 3]])).logits.shape == (1, 3, t["model.embed_tokens.weight"].shape[0])
