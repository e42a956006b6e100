"""Calibration (`refquant quantize MODEL_DIR OUT_DIR --method gptq|awq|smoothquant --calibration
TEXT`) on SmolLM2-135M-Instruct's first two blocks (refquant.model.convert's Hugging Face form of
its GGUF) and a slice of Botchan: the inputs captured by the NumPy forward are those transformers'
own forward feeds its nn.Linear modules, and the checkpoints written load and run in transformers
through compressed-tensors."""
import json
import warnings

import numpy as np
import pytest

import torch  # noqa: E402  (an oracle)
from refquant.algorithms.rtn import output_error, rtn
from refquant.cli import main
from refquant.pipelines.hf_quantize import quantize_checkpoint
from refquant.io.safetensors import Checkpoint
from refquant.model.calibrate import InputStats, calibration_chunks, capture_inputs, tokenize
from refquant.model.convert import gguf_to_safetensors, hf_name, load_safetensors
from refquant.model.forward import Model
from tools.models import botchan_path, smollm2_path

N_LAYERS, CTX, N_TOKENS = 2, 128, 256


@pytest.fixture(scope="module")
def smol(tmp_path_factory):
    d = tmp_path_factory.mktemp("calib")
    gguf_to_safetensors(smollm2_path(), d / "hf", n_layers=N_LAYERS)
    text = d / "botchan.txt"
    text.write_bytes(botchan_path().read_bytes()[:6000])
    return d / "hf", text


def hf_model(path, **kw):
    from transformers import AutoModelForCausalLM
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager", **kw)


def hooked_inputs(m, chunks) -> dict:
    """Every nn.Linear's input under model.layers, as transformers' forward hands it over."""
    got = {}

    def hook(name):
        def pre(mod, args):
            got.setdefault(name, []).append(args[0][0].detach().numpy().copy())
        return pre
    for name, mod in m.named_modules():
        if isinstance(mod, torch.nn.Linear) and name.startswith("model.layers."):
            mod.register_forward_pre_hook(hook(name))
    with torch.no_grad():
        for c in chunks:
            m(torch.from_numpy(c)[None])
    return {k: np.concatenate(v) for k, v in got.items()}


def test_captured_inputs_equal_transformers_forward(smol):
    """Both run float32 with their own summation orders (BLAS, softmax, the RMS norm's mean),
    so equal means equal to float32 rounding: every element within 2^-14 of the largest magnitude
    of its row (measured: under 2^-16 over two blocks). The bound is far below what a wrong input
    gives (the q/k row order, a missing norm weight, a position off by one differ at 1e-1)."""
    d, text = smol
    model = Model(load_safetensors(d))
    chunks = tokenize(model, text.read_text(), CTX, N_TOKENS)
    assert [len(c) for c in chunks] == [CTX, CTX]            # SmolLM2 adds no BOS
    ours = capture_inputs(model, chunks)
    theirs = hooked_inputs(hf_model(d), chunks)
    assert len(ours) == len(theirs) == 7 * N_LAYERS
    for name, x in ours.items():
        h = theirs[hf_name(name, "llama")[:-len(".weight")]]
        assert x.shape == h.shape == (N_TOKENS, h.shape[1]), name
        bound = 2.0 ** -14 * np.abs(h).max(axis=1, keepdims=True)
        assert (np.abs(x - h) <= bound).all(), (name, float((np.abs(x - h) / bound).max()))


def test_input_stats_bounded_and_exact():
    """Statistics accumulated chunk by chunk equal those of all rows at once; the sample keeps
    every stride-th row whatever the chunking."""
    rng = np.random.default_rng(3)
    X = rng.standard_normal((100, 8)).astype(np.float32)
    st = InputStats(8, {"hessian", "mean_abs", "absmax", "sample"}, stride=7)
    for a, b in [(0, 13), (13, 50), (50, 51), (51, 100)]:
        st.add(X[a:b])
    X64 = X.astype(np.float64)
    assert st.n == 100
    np.testing.assert_array_equal(st.hessian(), (X64.T @ X64 * (2 / 100)).astype(np.float32))
    np.testing.assert_array_equal(st.absmax(), np.abs(X).max(axis=0))
    np.testing.assert_allclose(st.mean_abs(), np.abs(X64).mean(axis=0), rtol=1e-6)
    np.testing.assert_array_equal(st.inputs(), X[::7])
    assert [len(c) for c in calibration_chunks(range(10), 4, 1)] == [4, 4, 4, 2]
    assert [c[0] for c in calibration_chunks(range(10), 4, 1)] == [1] * 4
    assert [list(c) for c in calibration_chunks(range(10), 4, None, 6)] == [[0, 1, 2, 3], [4, 5]]


def test_gptq_calibrated_checkpoint_loads_and_beats_rtn(smol, tmp_path):
    """GPTQ on the text, written as compressed-tensors: transformers loads it (decompressing
    through compressed-tensors) and runs it; on the inputs each layer was calibrated on (those of
    the blocks before it, already quantized), every layer's output error ‖XWᵀ − XŴᵀ‖ is at most
    round-to-nearest's on the same grid (measured: 0.11 to 0.36 of it, in sample: 256 rows for
    K = 576 or 1536)."""
    d, text = smol
    out = tmp_path / "gptq"
    record = {}
    quantize_checkpoint(d, out, "gptq", 4, 64, "compressed-tensors", calibration=text.read_text(), ctx=CTX,
                        calibration_tokens=N_TOKENS, record=record)
    from transformers.utils.quantization_config import CompressedTensorsConfig
    m = hf_model(out, quantization_config=CompressedTensorsConfig(run_compressed=False))
    src = Checkpoint(d)
    assert len(record) == 7 * N_LAYERS
    for name, mod in m.named_modules():
        if isinstance(mod, torch.nn.Linear) and name.startswith("model.layers."):
            W = np.asarray(src[f"{name}.weight"])
            X = record[f"{name}.weight"]
            assert X.shape == (N_TOKENS, W.shape[1])
            w_gptq = mod.weight.detach().numpy()
            w_rtn = rtn(W, 4, 64, True).dequantize()
            e_gptq, e_rtn = output_error(X, W, w_gptq), output_error(X, W, w_rtn)
            assert e_gptq <= e_rtn, (name, e_gptq, e_rtn)
    # sequential: block 1's q/k/v inputs are those transformers feeds them in the quantized model
    # (block 0 quantized), to the float32 bound of the capture test, and not the float model's
    float_model = Model(load_safetensors(d))
    chunks = tokenize(float_model, text.read_text(), CTX, N_TOKENS)
    theirs = hooked_inputs(m, chunks)["model.layers.1.self_attn.q_proj"]
    float_x = capture_inputs(float_model, chunks, ["blk.1.attn_q.weight"])["blk.1.attn_q.weight"]
    x = record["model.layers.1.self_attn.q_proj.weight"]
    rowmax = np.abs(theirs).max(axis=1, keepdims=True)
    assert (np.abs(x - theirs) <= 2.0 ** -14 * rowmax).all()
    assert (np.abs(float_x - theirs) > 2.0 ** -8 * rowmax).any()
    np.testing.assert_array_equal(record["model.layers.0.self_attn.q_proj.weight"],
                                  capture_inputs(float_model, chunks, ["blk.0.attn_q.weight"])["blk.0.attn_q.weight"])
    ids = torch.tensor([list(tokenize(float_model, "I was a reckless boy.", CTX)[0])])
    logits = m(ids).logits
    assert logits.shape == (1, ids.shape[1], 49152) and torch.isfinite(logits).all()
    assert (out / "gguf_metadata.json").is_file()      # the result can be calibrated / converted again
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is True


def test_smoothquant_cli_writes_w8a8(smol, tmp_path):
    """`--method smoothquant`: INT8 per-channel weights (compressed-tensors int-quantized, dynamic
    per-token INT8 activations), the smoothing folded into the RMS norms before q/k/v and
    gate/up: decoded weight / s equals the original weight to the INT8 step (s = γ / γ')."""
    d, text = smol
    out = tmp_path / "sq"
    assert main(["quantize", str(d), str(out), "--method", "smoothquant", "--calibration", str(text),
                 "--calibration-tokens", "128", "--ctx", "64", "--no-progress"]) == 0
    cfg = json.loads((out / "config.json").read_text())["quantization_config"]
    g = cfg["config_groups"]["group_0"]
    assert cfg["format"] == "int-quantized" and g["weights"]["num_bits"] == 8 and g["weights"]["strategy"] == "channel"
    assert g["input_activations"]["strategy"] == "token" and g["input_activations"]["dynamic"] is True
    src, ck = Checkpoint(d), Checkpoint(out)
    p = "model.layers.1."
    for norm, lins in [("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
                       ("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj"))]:
        s = np.asarray(src[p + norm + ".weight"], np.float64) / np.asarray(ck[p + norm + ".weight"], np.float64)
        assert not np.allclose(s, 1)
        for lin in lins:
            q = np.asarray(ck[p + lin + ".weight"])
            scale = np.asarray(ck[p + lin + ".weight_scale"], np.float64)
            assert q.dtype == np.int8 and scale.shape == (q.shape[0], 1)
            W = np.asarray(src[p + lin + ".weight"], np.float64)
            err = np.abs(q * scale / s - W)
            assert (err <= (0.5 + 1e-3) * scale / s).all(), lin
    m = hf_model(out)
    with torch.no_grad():
        assert torch.isfinite(m(torch.tensor([[1, 2, 3, 4]])).logits).all()


def test_awq_cli_folds_scales_into_norms(smol, tmp_path):
    """`--method awq --format awq`: AutoAWQ's dequantize_gemm reads the output; for the norm
    groups, s = γ / γ' is not 1 and the decoded weight / s equals the original weight to half a
    4-bit step (the weights were scaled by s, then rounded; the F16 scales and products of the
    AWQ layout add at most 2^-10 relative)."""
    from awq.utils.packing_utils import dequantize_gemm
    d, text = smol
    out = tmp_path / "awq"
    assert main(["quantize", str(d), str(out), "--method", "awq", "--format", "awq", "--group-size", "64",
                 "--calibration", str(text), "--calibration-tokens", "64", "--ctx", "64", "--no-progress"]) == 0
    src, ck = Checkpoint(d), Checkpoint(out)
    p = "model.layers.1."
    for norm, lins in [("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
                       ("post_attention_layernorm", ("mlp.gate_proj",))]:     # up_proj: rows / down's s too
        s = np.asarray(src[p + norm + ".weight"], np.float64) / np.asarray(ck[p + norm + ".weight"], np.float64)
        assert not np.allclose(s, 1)
        for lin in lins:
            t = [torch.from_numpy(np.asarray(ck[f"{p}{lin}.{k}"]).copy()) for k in ("qweight", "qzeros", "scales")]
            w_hat = dequantize_gemm(*t, 4, 64).numpy().astype(np.float64).T           # (N, K)
            step = np.repeat(t[2].numpy().astype(np.float64).T, 64, axis=1)          # (N, K)
            W = np.asarray(src[p + lin + ".weight"], np.float64)
            err = np.abs(w_hat - W * s)
            assert (err <= 0.5 * step * (1 + 2.0 ** -8) + 2.0 ** -10 * np.abs(w_hat)).all(), lin


def test_calibration_errors_leave_no_output(smol, tmp_path, capsys):
    d, text = smol
    out = tmp_path / "bad"

    def run(*a):
        return main(["quantize", str(d), str(out), *map(str, a), "--group-size", "64", "--no-progress"])
    assert run("--method", "smoothquant") == 2                                          # no text
    assert run("--method", "rtn", "--calibration", text) == 2                           # rtn takes no data
    assert run("--method", "gptq", "--calibration", tmp_path / "none.txt") == 2         # unreadable
    assert run("--method", "gptq", "--calibration", text, "--ctx", "1") == 2
    assert run("--method", "gptq", "--calibration", text, "--calibration-tokens", "0") == 2
    assert run("--method", "smoothquant", "--calibration", text, "--format", "gptq") == 2
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert run("--method", "gptq", "--calibration", empty) == 2
    plain = tmp_path / "plain"                                  # no gguf_metadata.json: no tokenizer
    plain.mkdir()
    for f in ("config.json", "model.safetensors"):
        (plain / f).symlink_to(d / f)
    assert main(["quantize", str(plain), str(out), "--method", "gptq", "--calibration", str(text),
                 "--group-size", "64", "--no-progress"]) == 2
    with pytest.raises(SystemExit):                                                     # exclusive
        run("--method", "gptq", "--calibration", text, "--activations", tmp_path)
    err = capsys.readouterr().err
    for what in ("needs a calibration text", "rtn uses no data", "cannot read", "context", "tokens", "W8A8", "empty", "gguf_metadata.json"):
        assert what in err, what
    assert not out.exists()


def test_static_input_scales_from_the_calibration_text(smol, tmp_path):
    """`--scheme FP8 --calibration TEXT`: each layer's input_scale is the largest |input| the
    forward fed it (blocks before it quantized) / 448, as the preset's static min-max observer
    records it; the weights are the preset's (compressed-tensors' compressor, tests/test_ct_presets.py)."""
    from refquant.layouts import compressed_tensors as CT
    d, text = smol
    out = tmp_path / "fp8"
    record = {}
    quantize_checkpoint(d, out, "rtn", 8, -1, "compressed-tensors", calibration=text.read_text(), ctx=CTX,
                        calibration_tokens=N_TOKENS, record=record, scheme="FP8")
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc["format"] == "float-quantized" and qc["config_groups"]["group_0"]["input_activations"]["observer"] == \
        "static_minmax"
    ck = Checkpoint(out)
    assert len(record) == 7 * N_LAYERS
    for k, X in record.items():
        m = k[:-len(".weight")]
        want = np.float32(np.abs(X).max()) / np.float32(448.0)
        np.testing.assert_array_equal(np.asarray(ck[f"{m}.input_scale"]), np.array([want], np.float32))
        t = {n: np.asarray(ck[f"{m}.{n}"]) for n in ("weight", "weight_scale")}
        assert t["weight"].dtype == CT.ml_dtypes.float8_e4m3fn and t["weight_scale"].shape == (1,)   # per tensor
