"""ModelOpt FP8 / NVFP4 checkpoints: refquant's against NVIDIA ModelOpt 0.47 (nvidia-modelopt, CPU
torch), the producer of these checkpoints.

1. The arithmetic: ModelOpt's NVFP4QTensor.quantize (weight_scale_2, E4M3 block scales, E2M1
   codes) and its FP8 weight export (to_quantized_weight) against refquant.mx.quantize_nvfp4_modelopt
   and refquant.fp8_scaling.quantize_tensor_modelopt, bit for bit, on Hypothesis matrices.
2. The whole checkpoint: a small random Llama, calibrated and quantized by mtq.quantize
   (NVFP4_DEFAULT_CFG / FP8_DEFAULT_CFG) and written by export_hf_checkpoint, against
   `refquant quantize --format modelopt-nvfp4 | modelopt-fp8` of the same weights with the same
   calibration inputs (captured by hooks during ModelOpt's calibration forward): the same tensor
   names, dtypes, shapes and bytes, and the same hf_quant_config.json and quantization_config
   (the producer aside)."""
import json
import warnings

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from refquant import fp8_scaling, mx
from refquant.errors import InputError
from refquant.layouts import fp8_block as F

import torch  # noqa: E402  (an oracle, as nvidia-modelopt: both in the test extra)

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from modelopt.torch.quantization.qtensor import NVFP4QTensor
    from modelopt.torch.export.quant_utils import to_quantized_weight

BF16 = np.dtype(ml_dtypes.bfloat16)
TORCH = {np.dtype(np.float32): torch.float32, np.dtype(np.float16): torch.float16, BF16: torch.bfloat16}


@st.composite
def weights(draw, dtypes=(np.float32,)):
    """Matrices (N, 16·B) of one dtype: Gaussian rows at a drawn magnitude, with all-zero blocks,
    outliers, values on E2M1 midpoints of their block's scale, and tiny blocks whose scale
    falls below E4M3's smallest subnormal."""
    dt = np.dtype(draw(st.sampled_from(dtypes)))
    N, B = draw(st.integers(1, 6)), draw(st.integers(1, 4))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    w = rng.standard_normal((N, B, 16)) * draw(st.sampled_from([1e-3, 0.05, 1.0, 300.0]))
    kind = draw(st.sampled_from(["plain", "zero-block", "outlier", "midpoints", "tiny-block"]))
    if kind == "zero-block":
        w[rng.integers(N), rng.integers(B)] = 0
    elif kind == "outlier":
        w[rng.integers(N), rng.integers(B), rng.integers(16)] *= 1e3
    elif kind == "midpoints":          # E2M1 midpoints 0.25 .. 5 (ties), scaled by a power of two
        mids = np.array([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.0])
        w = rng.choice(mids, (N, B, 16)) * rng.choice([-1, 1], (N, B, 16)) * 2.0 ** draw(st.integers(-6, 6))
    elif kind == "tiny-block":
        w[0, 0] *= 1e-7
    if dt == np.float16:               # keep float16 finite: its largest value is 65504
        w = np.clip(w, -65504, 65504)
    return np.asarray(w.reshape(N, B * 16).astype(np.float32).astype(dt))


def _t(a):
    return torch.from_numpy(np.ascontiguousarray(a).view(np.uint16)).view(torch.bfloat16) if a.dtype == BF16 \
        else torch.from_numpy(np.ascontiguousarray(a))


@settings(max_examples=60)
@given(weights(dtypes=(np.float32, np.float16, BF16)))
def test_nvfp4_quantize_vs_modelopt(w):
    wt = _t(w)
    if not torch.any(wt != 0):
        with pytest.raises(InputError, match="all zeros"):
            mx.quantize_nvfp4_modelopt(w.astype(np.float32))
        return
    qt, s, s2 = NVFP4QTensor.quantize(wt.clone(), 16)
    packed, codes, wsf2 = mx.quantize_nvfp4_modelopt(w.astype(np.float32))
    assert s.dtype == torch.float8_e4m3fn and s2.dtype == torch.float32 and s2.dim() == 0
    np.testing.assert_array_equal(np.array(wsf2, np.float32).view(np.uint32), s2.numpy().view(np.uint32))
    np.testing.assert_array_equal(codes, s.view(torch.uint8).numpy())
    np.testing.assert_array_equal(packed, qt._quantized_data.numpy())
    # and refquant reads ModelOpt's tensors back to ModelOpt's dequantized weights
    theirs = qt.dequantize(dtype=torch.float32, scale=s, double_scale=s2, block_sizes={-1: 16}).numpy()
    ours = F.dequantize_modelopt_nvfp4({"weight": packed, "weight_scale": codes.view(F.E4M3), "weight_scale_2": wsf2})
    np.testing.assert_array_equal(ours.view(np.uint32), theirs.view(np.uint32))


@settings(max_examples=60)
@given(weights(dtypes=(np.float32, np.float16, BF16)), st.sampled_from([1.0, 1.0, 3.0]))
def test_fp8_quantize_vs_modelopt(w, widen):
    """ModelOpt's FP8 export: weight_scale = amax / 448 (float32), weight / weight_scale in the
    model's dtype, cast to E4M3. `widen` > 1: an amax above max |w| (a fused group's)."""
    wf = w.astype(np.float32)
    amax = np.float32(np.max(np.abs(wf)) * widen)
    scale = torch.tensor(max(float(amax), float(np.finfo(np.float32).tiny)), dtype=torch.float32) / 448.0
    theirs = to_quantized_weight(_t(w), scale, "fp8").view(torch.uint8).numpy()
    t = F.modelopt_fp8(w, w.dtype, amax)
    np.testing.assert_array_equal(t["weight_scale"].view(np.uint32), scale.numpy().view(np.uint32))
    np.testing.assert_array_equal(t["weight"].view(np.uint8), theirs)


def test_bad_input():
    with pytest.raises(InputError, match="all zeros"):
        mx.quantize_nvfp4_modelopt(np.zeros((2, 16), np.float32))
    with pytest.raises(InputError, match="amax"):
        mx.quantize_nvfp4_modelopt(np.ones((2, 16), np.float32), global_amax=0.5)
    with pytest.raises(InputError, match="dtype"):
        fp8_scaling.quantize_tensor_modelopt(np.ones((2, 16), np.float32), dtype=np.float64)
    with pytest.raises(InputError, match="representable"):
        fp8_scaling.quantize_tensor_modelopt(np.full((2, 16), 1 + 2**-12, np.float32), dtype=BF16)
    with pytest.raises(InputError, match="input amax"):
        F.modelopt_fp8(np.ones((2, 16), np.float32), input_amax=0.0)


# ---- whole checkpoints ---------------------------------------------------------------------

def _tiny_llama(dtype, tied):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    c = LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                    architectures=["LlamaForCausalLM"], tie_word_embeddings=tied)
    m = LlamaForCausalLM(c)
    with torch.no_grad():                       # outlier input channels, as real layers have
        for n, p in m.named_parameters():
            if p.ndim == 2 and "layers" in n:
                p[:, :3] *= 8
    return m.to(dtype).eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """{algo: (ModelOpt's export dir, refquant's output dir)} for one small Llama in bfloat16 (its
    embeddings tied to lm_head for NVFP4, untied for FP8)."""
    import modelopt.torch.quantization as mtq
    from modelopt.torch.export import export_hf_checkpoint
    from refquant.pipelines.hf_quantize import quantize_checkpoint
    out = {}
    for algo, cfg in (("NVFP4", mtq.NVFP4_DEFAULT_CFG), ("FP8", mtq.FP8_DEFAULT_CFG)):
        base = tmp_path_factory.mktemp(algo)
        m = _tiny_llama(torch.bfloat16, tied=algo == "NVFP4")
        m.save_pretrained(base / "orig")
        ids = torch.randint(0, 96, (3, 24), generator=torch.Generator().manual_seed(1))
        acts = {}

        def loop(model):
            hooks = [mod.register_forward_pre_hook(lambda mod, args, n=n: acts.setdefault(n, []).append(
                args[0].detach().float().reshape(-1, args[0].shape[-1]).numpy().copy()))
                for n, mod in model.named_modules() if n.startswith("model.layers.") and hasattr(mod, "weight")
                and getattr(mod, "weight", None) is not None and mod.weight.ndim == 2]
            with torch.no_grad():
                model(ids)
            for h in hooks:
                h.remove()

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mq = mtq.quantize(m, cfg, loop)
            export_hf_checkpoint(mq, dtype=torch.bfloat16, export_dir=base / "modelopt")
        (base / "acts").mkdir()
        for n, xs in acts.items():
            np.save(base / "acts" / f"{n}.npy", np.concatenate(xs))
        quantize_checkpoint(base / "orig", base / "refquant", method="rtn", bits=4 if algo == "NVFP4" else 8,
                            fmt=f"modelopt-{algo.lower()}", activations=base / "acts")
        out[algo] = (base / "modelopt", base / "refquant")
    return out


def _tensors(d):
    from safetensors import safe_open
    res = {}
    for f in sorted(d.glob("*.safetensors")):
        with safe_open(f, "pt") as h:
            for k in h.keys():
                res[k] = h.get_tensor(k)
    return res


def _bytes(t):
    return t.contiguous().view(torch.uint8).numpy().tobytes() if t.dim() else t.reshape(1).view(torch.uint8).numpy().tobytes()


@pytest.mark.parametrize("algo", ["NVFP4", "FP8"])
def test_checkpoint_as_modelopt_exports_it(exported, algo):
    theirs_dir, ours_dir = exported[algo]
    theirs, ours = _tensors(theirs_dir), _tensors(ours_dir)
    assert sorted(ours) == sorted(theirs)
    for k in sorted(theirs):
        a, b = ours[k], theirs[k]
        assert (a.dtype, tuple(a.shape)) == (b.dtype, tuple(b.shape)), (k, a.dtype, a.shape, b.dtype, b.shape)
        assert _bytes(a) == _bytes(b), k
    hq_t = json.loads((theirs_dir / "hf_quant_config.json").read_text())
    hq_o = json.loads((ours_dir / "hf_quant_config.json").read_text())
    assert hq_t["producer"]["name"] == "modelopt" and hq_o["producer"]["name"] == "refquant"
    assert hq_o["quantization"] == hq_t["quantization"]
    qc_t = json.loads((theirs_dir / "config.json").read_text())["quantization_config"]
    qc_o = json.loads((ours_dir / "config.json").read_text())["quantization_config"]
    qc_t.pop("producer"), qc_o.pop("producer")
    assert qc_o == qc_t
