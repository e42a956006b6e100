"""Every weight preset of compressed-tensors 0.20.1 (`--scheme PRESET`): the config refquant
writes is the preset's scheme and format as compressed-tensors itself builds them; the tensors
are what its own compressors write from the same weight and scales, bit for bit; the scales are
what its min-max observer (calculate_qparams) chooses; the checkpoint loads in transformers
through compressed-tensors' decompression, equal to refquant's dequantization."""
import json
import warnings

import ml_dtypes
import numpy as np
import pytest

import torch  # noqa: E402  (an oracle)
from refquant import mx
from refquant.cli import main
from refquant.io.safetensors import Checkpoint
from refquant.layouts import compressed_tensors as CT
from refquant.pipelines.hf_quantize import preset_tensors
from tools.oracles.pytorch import to_numpy, to_torch

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from compressed_tensors.compressors import BaseCompressor
    from compressed_tensors.compressors.format import infer_module_format
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme, preset_name_to_scheme
    from compressed_tensors.quantization.quant_scheme import PRESET_SCHEMES
    from compressed_tensors.quantization.utils.helpers import calculate_qparams

NAMES = sorted(n for n in PRESET_SCHEMES if n != "UNQUANTIZED")
MX_FORMATS = ("mxfp4-pack-quantized", "mxfp6-pack-quantized", "mxfp8-quantized")


def _weight(dtype=np.float32, seed=0):
    """A (16, 256) weight: rows of different magnitudes, an all-zero group, -0.0, a tiny block,
    a huge one."""
    rng = np.random.default_rng(seed)
    W = (rng.standard_normal((16, 256)) * np.exp(2 * rng.standard_normal((16, 1)))).astype(np.float32)
    W[0, :128] = 0
    W[1, 5] = -0.0
    small, big = (1e-4, 1e3) if dtype == np.float16 else (1e-30, 1e20)
    W[2, :40] *= np.float32(small)
    W[3, 32:64] *= np.float32(big)
    return W.astype(dtype)


def test_preset_table_is_compressed_tensors():
    assert sorted(CT.PRESETS) == NAMES
    for name in NAMES:
        cfg = CT.preset_config(name)
        g = cfg["config_groups"]["group_0"]
        ours = QuantizationScheme(targets=g["targets"], weights=QuantizationArgs(**g["weights"]),
                                  input_activations=None if g["input_activations"] is None
                                  else QuantizationArgs(**g["input_activations"]))
        theirs = preset_name_to_scheme(name, ["Linear"])
        assert ours.model_dump() == theirs.model_dump(), name
        assert cfg["format"] == g["format"] == infer_module_format(torch.nn.Linear, theirs).value, name


def _state_dict(name, W, ours):
    """What llm-compressor's module holds when it compresses: the weight, its scales as floats
    in their dtype (an MX scale as 2^(e - 127), NVFP4's as the E4M3 value), zero points (zeros
    when symmetric), the input scales."""
    fmt = CT.preset(name)[0]
    scheme = preset_name_to_scheme(name, ["Linear"])
    sd = {"weight": to_torch(W)}
    if fmt in MX_FORMATS:
        sd["weight_scale"] = torch.from_numpy(mx.e8m0_to_float32(ours["weight_scale"]))
    elif fmt == "nvfp4-pack-quantized":
        sd["weight_scale"] = torch.from_numpy(ours["weight_scale"].astype(np.float32))
        sd["weight_global_scale"] = to_torch(ours["weight_global_scale"])
    else:
        sd["weight_scale"] = to_torch(ours["weight_scale"])
    if "weight_zero_point" in ours:
        z = CT.unpack_quantized(ours, scheme.weights.num_bits)[2] if fmt == "pack-quantized" else ours["weight_zero_point"]
        sd["weight_zero_point"] = to_torch(z)
    else:
        sd["weight_zero_point"] = torch.zeros(sd["weight_scale"].shape, dtype=scheme.weights.zp_dtype or torch.int8)
    for k in ("input_scale", "input_global_scale"):
        if k in ours:
            sd[k] = to_torch(ours[k])
    return sd, scheme


def _dtypes(name):
    fmt = CT.preset(name)[0]
    return [np.float32] if fmt in MX_FORMATS + ("nvfp4-pack-quantized",) else [np.float32, ml_dtypes.bfloat16, np.float16]


@pytest.mark.parametrize("name", NAMES)
def test_tensors_equal_the_compressor(name):
    fmt = CT.preset(name)[0]
    for dt in _dtypes(name):
        W = _weight(dt)
        ours = preset_tensors(name, W, x_amax=np.float32(3.25))
        sd, scheme = _state_dict(name, W, ours)
        theirs = {k: to_numpy(v) for k, v in BaseCompressor.get_value_from_registry(fmt).compress(sd, scheme).items()}
        assert sorted(theirs) == sorted(ours), (name, dt)
        for k in ours:
            a, b = np.ascontiguousarray(ours[k]), np.ascontiguousarray(theirs[k])
            assert a.dtype == b.dtype and a.shape == b.shape, (name, dt, k, a.dtype, b.dtype, a.shape, b.shape)
            np.testing.assert_array_equal(a.view(np.uint8), b.view(np.uint8), err_msg=f"{name} {dt} {k}")
        # and refquant's dequantization is the compressor's decompression
        dec = to_numpy(BaseCompressor.get_value_from_registry(fmt).decompress(
            {k: to_torch(v) for k, v in ours.items()}, scheme)["weight"])
        mine = CT.dequantize(ours, fmt, CT.preset(name)[1])
        assert mine.dtype == dec.dtype, (name, mine.dtype, dec.dtype)
        np.testing.assert_array_equal(mine.view(np.uint16 if mine.itemsize == 2 else np.uint32),
                                      dec.view(np.uint16 if dec.itemsize == 2 else np.uint32), err_msg=name)


@pytest.mark.parametrize("name", ["MXFP4A16", "MXFP6A16", "MXFP8A16", "W4A16", "W4A16_ASYM", "W8A8", "FP8",
                                  "FP8_DYNAMIC"])
def test_scales_are_the_observers(name):
    """The weight scales equal calculate_qparams on each block's min and max (llm-compressor's
    min-max observer), float32 weights."""
    W = _weight()
    ours = preset_tensors(name, W)
    args = preset_name_to_scheme(name, ["Linear"]).weights
    fmt = CT.preset(name)[0]
    N, K = W.shape
    if args.strategy == "tensor":
        bl = (N, K)
    elif args.strategy == "channel":
        bl = (1, K)
    elif args.strategy == "block":
        bl = tuple(args.block_structure)
    else:
        bl = (1, args.group_size)
    Wb = torch.from_numpy(W).reshape(N // bl[0], bl[0], K // bl[1], bl[1])
    mn, mx_ = Wb.amin(dim=(1, 3)), Wb.amax(dim=(1, 3))
    s, z = calculate_qparams(mn, mx_, args)
    theirs = s.numpy()
    if fmt in MX_FORMATS:
        mine = mx.e8m0_to_float32(ours["weight_scale"])
    elif fmt == "pack-quantized" and not args.symmetric:
        mine = ours["weight_scale"]
        np.testing.assert_array_equal(CT.unpack_quantized(ours, 4)[2], z.numpy().astype(np.int8))
    else:
        mine = ours["weight_scale"]
    np.testing.assert_array_equal(np.asarray(mine, np.float32).reshape(theirs.shape), theirs)


def _tiny_llama(d):
    import transformers as tf
    cfg = tf.LlamaConfig(hidden_size=128, intermediate_size=256, num_attention_heads=4, num_key_value_heads=2,
                         num_hidden_layers=1, vocab_size=96, max_position_embeddings=64)
    torch.manual_seed(0)
    m = tf.LlamaForCausalLM(cfg).eval()
    m.save_pretrained(d)
    adir = d.parent / "acts"
    adir.mkdir()
    rng = np.random.default_rng(1)
    for n, mod in m.named_modules():
        if isinstance(mod, torch.nn.Linear) and n != "lm_head":
            np.save(adir / f"{n}.npy", rng.standard_normal((16, mod.in_features)).astype(np.float32))
    return adir


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("llama") / "m"
    return d, _tiny_llama(d)


# one preset a format, the asymmetric one and both with static input scales
LOADED = ["W4A16", "W3A16", "W4A16_ASYM", "W8A8", "W4A8", "FP8", "FP8_DYNAMIC", "NVFP4", "MXFP4A16", "MXFP6A16",
          "MXFP8"]


@pytest.mark.parametrize("name", LOADED)
def test_cli_scheme_loads_in_transformers(tiny, tmp_path, name):
    from transformers import AutoModelForCausalLM
    from transformers.utils.quantization_config import CompressedTensorsConfig
    d, adir = tiny
    out = tmp_path / name
    extra = ["--activations", str(adir)] if name in ("FP8", "NVFP4") else []
    assert main(["quantize", str(d), str(out), "--scheme", name, "--no-progress", *extra]) == 0
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    fmt, w, a = CT.preset(name)
    assert qc["format"] == fmt and qc["config_groups"]["group_0"]["input_activations"] == a
    ck = Checkpoint(out)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = AutoModelForCausalLM.from_pretrained(out, quantization_config=CompressedTensorsConfig(run_compressed=False),
                                                 dtype=torch.float32)
    n = 0
    for mname, mod in m.named_modules():
        if isinstance(mod, torch.nn.Linear) and mname != "lm_head":
            t = {k[len(mname) + 1:]: np.asarray(ck[k]) for k in ck if k.startswith(mname + ".")}
            ours = CT.dequantize(t, fmt, w).astype(np.float32)
            np.testing.assert_array_equal(mod.weight.detach().numpy(), ours, err_msg=f"{name} {mname}")
            n += 1
    assert n == 7
    assert m(torch.tensor([[1, 2, 3]])).logits.shape == (1, 3, 96)


def test_scheme_errors(tiny, tmp_path, capsys):
    d, adir = tiny
    out = tmp_path / "bad"
    assert main(["quantize", str(d), str(out), "--scheme", "W4A17", "--no-progress"]) == 2
    assert main(["quantize", str(d), str(out), "--scheme", "FP8", "--no-progress"]) == 2          # no input scales
    assert main(["quantize", str(d), str(out), "--scheme", "MXFP4", "--method", "gptq", "--activations", str(adir),
                 "--no-progress"]) == 2
    assert main(["quantize", str(d), str(out), "--scheme", "W4A16", "--bits", "4", "--no-progress"]) == 2
    assert main(["quantize", str(d), str(out), "--scheme", "W4A16", "--format", "gptq", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "W4A17" in err and "activations" in err
    assert not out.exists()


@pytest.mark.parametrize("method,name", [("gptq", "W4A16"), ("gptq", "W4A16_ASYM"), ("awq", "W4A16_ASYM"),
                                         ("gptq", "W8A8")])
def test_calibrated_presets_are_what_the_compressor_writes(tiny, tmp_path, method, name):
    """GPTQ / AWQ codes under a preset: compressing the weight they decode to with their scales
    and zero points (what llm-compressor hands its compressor after GPTQ) gives refquant's
    tensors back, bit for bit."""
    d, adir = tiny
    out = tmp_path / "q"
    assert main(["quantize", str(d), str(out), "--scheme", name, "--method", method, "--activations", str(adir),
                 "--no-progress"]) == 0
    ck = Checkpoint(out)
    fmt, w, a = CT.preset(name)
    scheme = preset_name_to_scheme(name, ["Linear"])
    comp = BaseCompressor.get_value_from_registry(fmt)
    for m in ("model.layers.0.self_attn.q_proj", "model.layers.0.mlp.down_proj"):
        ours = {k[len(m) + 1:]: np.asarray(ck[k]) for k in ck if k.startswith(m + ".")}
        W = CT.dequantize(ours, fmt, w)
        sd = {"weight": to_torch(W), "weight_scale": to_torch(ours["weight_scale"])}
        z = ours.get("weight_zero_point")
        if z is not None and fmt == "pack-quantized":
            z = CT.unpack_quantized(ours, w["num_bits"])[2]
        sd["weight_zero_point"] = to_torch(z) if z is not None else torch.zeros(sd["weight_scale"].shape, dtype=torch.int8)
        theirs = {k: to_numpy(v) for k, v in comp.compress(sd, scheme).items()}
        assert sorted(theirs) == sorted(ours), m
        for k in ours:
            np.testing.assert_array_equal(np.ascontiguousarray(ours[k]).view(np.uint8),
                                          np.ascontiguousarray(theirs[k]).view(np.uint8), err_msg=f"{m} {k}")
