"""Hadamard rotations against compressed-tensors 0.20.1 on CPU: its deterministic and random
constructions (the random signs reproduced from the seed), its offline fusing into weights
(HadamardTransform through a TransformFactory), and `refquant quantize --transform`'s R2 rotation
with the transform config its ModelCompressor reads."""
import json
import warnings

import ml_dtypes
import numpy as np
import pytest

import torch  # noqa: E402  (an oracle)
from refquant import hadamard as RH
from refquant.cli import main
from refquant.errors import InputError
from refquant.io.safetensors import Checkpoint

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import compressed_tensors.transform.utils.hadamard as CTH
    from compressed_tensors.transform import TransformArgs, TransformConfig, TransformFactory, TransformScheme
    from safetensors import safe_open

TORCH = {np.dtype(np.float32): torch.float32, np.dtype(np.float16): torch.float16,
         np.dtype(ml_dtypes.bfloat16): torch.bfloat16}


def _table(n):
    """compressed-tensors' known Hadamard matrix for order n, as its _fetch_hadamard_divisor picks it."""
    with safe_open(str(CTH.REPO_PATH), "np") as f:
        for d in sorted((int(k) for k in f.keys()), reverse=True):
            if n % d == 0 and RH._is_pow2(n // d):
                return f.get_tensor(str(d))


@pytest.mark.parametrize("n", [1, 2, 4, 16, 32, 48, 64, 96, 128, 192, 512, 1536])
def test_random_hadamard_from_the_seed(n):
    for seed in (0, 1234):
        g = torch.Generator()
        g.manual_seed(seed)
        theirs = CTH.random_hadamard_matrix(n, torch.float64, gen=g).numpy()
        signs = RH.random_signs(n, RH.mt19937_uint32(seed, n))
        hk = None if RH._is_pow2(n) and n != 32 else _table(n)
        np.testing.assert_array_equal(RH.random_hadamard(n, signs, hk), theirs)
    if n in (32, 48):
        with pytest.raises(InputError, match="had_k"):
            RH.random_hadamard(n, signs)


def test_deterministic_hadamard():
    for n in (1, 2, 8, 256):
        np.testing.assert_array_equal(RH.deterministic_hadamard(n), CTH.deterministic_hadamard_matrix(n, torch.float64))
    with pytest.raises(InputError):
        RH.deterministic_hadamard(12)


def _weight(shape, dt, seed):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(shape).astype(np.float32)
    w[0, :3] = 0
    w[1, 1] = -0.0
    return w.astype(dt)


@pytest.mark.parametrize("typ", ["hadamard", "random-hadamard"])
@pytest.mark.parametrize("loc,inv,head_dim", [("weight_input", False, None), ("weight_input", True, 16),
                                              ("weight_output", False, 16), ("weight_output", True, None)])
def test_fuse_equals_compressed_tensors(typ, loc, inv, head_dim):
    for dt in (np.float32, ml_dtypes.bfloat16, np.float16):
        W = _weight((64, 128), dt, 3)
        lin = torch.nn.Linear(128, 64, bias=False).to(TORCH[np.dtype(dt)])
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(W.view(np.int16) if W.itemsize == 2 else W)
                             .view(TORCH[np.dtype(dt)]) if W.itemsize == 2 else torch.from_numpy(W))
        sch = TransformScheme(type=typ, head_dim=head_dim,
                              apply=[TransformArgs(targets=["Linear"], location=loc, inverse=inv)])
        TransformFactory.from_scheme(sch, name="t", seed=5).apply_to_model(torch.nn.Sequential(lin), use_tqdm=False)
        theirs = lin.weight.detach().contiguous()
        n = head_dim or (128 if loc == "weight_input" else 64)
        Hm = RH.deterministic_hadamard(n) if typ == "hadamard" else RH.random_hadamards([n], 5)[n]
        ours = RH.fuse(W, Hm, loc, inv)
        assert ours.dtype == W.dtype
        np.testing.assert_array_equal(np.ascontiguousarray(ours).view(np.uint8),
                                      theirs.view(torch.uint8).numpy().reshape(64, -1), err_msg=f"{typ} {loc} {dt}")


def test_fuse_outside_the_exact_bound_is_correctly_rounded():
    """A row spanning more binary orders than float64 can sum exactly: refquant sums exactly
    and rounds once (BLAS's order may round differently: spec/rotations.md)."""
    import math
    W = np.ones((1, 8), np.float32)
    W[0, 0] = 2.0 ** 60
    W[0, 1:] = np.float32(1.0) + np.float32(2.0 ** -20)
    out = RH.fuse(W, RH.deterministic_hadamard(8), "weight_input")
    want = [math.fsum(float(x) * h for x, h in zip(W[0], row)) / math.sqrt(8) for row in RH.deterministic_hadamard(8)]
    np.testing.assert_array_equal(out[0], np.array(want, np.float64).astype(np.float32))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    import transformers as tf
    d = tmp_path_factory.mktemp("llama") / "m"
    cfg = tf.LlamaConfig(hidden_size=128, intermediate_size=256, num_attention_heads=2, num_key_value_heads=1,
                         num_hidden_layers=1, vocab_size=96, max_position_embeddings=64)
    torch.manual_seed(0)
    m = tf.LlamaForCausalLM(cfg).eval()
    m.save_pretrained(d)
    return d, m


@pytest.mark.parametrize("typ", ["hadamard", "random-hadamard"])
def test_cli_r2_rotation(tiny, tmp_path, typ):
    """--transform fuses SpinQuant's R2 as compressed-tensors fuses it (its factory applied to the
    same float weights gives the same bits), the model computes the same function, and the
    transform config is what compressed-tensors' TransformConfig (vLLM's reader) reads: for the
    deterministic Hadamard, apply_transform_config of that config reproduces the weights.
    (transformers 5.24's CompressedTensorsConfig does not read transform_config; the rotation is
    fused, so it loads the checkpoint as a plain quantized one.)"""
    from compressed_tensors.transform import apply_transform_config
    from transformers import AutoModelForCausalLM
    from transformers.utils.quantization_config import CompressedTensorsConfig
    from refquant.pipelines.hf_quantize import rotate_r2
    d, model = tiny
    out = tmp_path / "q"
    assert main(["quantize", str(d), str(out), "--scheme", "W8A16", "--transform", typ, "--transform-seed", "9",
                 "--no-progress"]) == 0
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    tc = TransformConfig.model_validate(qc["transform_config"])
    assert tc.model_dump() == TransformConfig(config_groups={"R2": TransformScheme(type=typ, head_dim=64, apply=[
        TransformArgs(targets=["re:.*v_proj$"], location="weight_output"),
        TransformArgs(targets=["re:.*o_proj$"], location="weight_input", inverse=True)])}).model_dump()
    # compressed-tensors' own fusing of the same config on the float model
    import copy
    theirs = copy.deepcopy(model)
    if typ == "hadamard":
        apply_transform_config(theirs, tc)
    else:                                   # the seed is the factory's (llm-compressor passes it)
        for name, sch in tc.config_groups.items():
            TransformFactory.from_scheme(sch, name=name, seed=9).apply_to_model(theirs, use_tqdm=False)
    ck = Checkpoint(d)
    w = {k: np.asarray(ck[k]) for k in ck}
    rotate_r2(w, json.loads((d / "config.json").read_text()), typ, 9)
    for p in ("model.layers.0.self_attn.v_proj", "model.layers.0.self_attn.o_proj"):
        np.testing.assert_array_equal(w[f"{p}.weight"], theirs.get_submodule(p).weight.detach().numpy(), err_msg=p)
    # the function is unchanged (float32 rounding aside)
    ids = torch.tensor([[1, 5, 9, 2]])
    with torch.no_grad():
        np.testing.assert_allclose(theirs(ids).logits.numpy(), model(ids).logits.numpy(), atol=1e-4)
    # and the quantized checkpoint loads in transformers
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32,
                                                 quantization_config=CompressedTensorsConfig(run_compressed=False))
    assert q(ids).logits.shape == (1, 4, 96)
    assert main(["quantize", str(d), str(tmp_path / "bad"), "--scheme", "W4A16", "--transform", typ, "--method",
                 "gptq", "--activations", str(tmp_path), "--no-progress"]) == 2
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("nrot", [64, 128, 256])
def test_llama_attention_rotation_equals_ggml(nrot):
    """llama.cpp's K/V rotation (ggml_mul_mat of ggml_gen_hadamard's matrix with rows of the
    head) equals ggml's own CPU mul_mat bit for bit (ggml-python, this machine's ISA)."""
    from refquant.model.ggml_cpu import isa
    from tools.oracles import ggml as G
    rng = np.random.default_rng(nrot)
    X = (rng.standard_normal((6, 2 * nrot)) * np.exp(3 * rng.standard_normal((6, 1)))).astype(np.float32)
    X[0, :5] = 0
    X[1, 3] = np.float32(1e-30)
    X[2, 7] = -0.0
    theirs = G.mul_mat_f32(RH.llama_hadamard(nrot), X.reshape(-1, nrot)).reshape(X.shape)
    ours = RH.llama_rotate(X, nrot, isa())
    np.testing.assert_array_equal(ours.view(np.uint32), theirs.view(np.uint32))
    # H·H = I up to float32 rounding: the rotation is its own inverse
    np.testing.assert_allclose(RH.llama_rotate(ours, nrot, isa()), X, rtol=0, atol=1e-5 * np.abs(X).max())
    assert [RH.llama_k_nrot(d) for d in (64, 96, 128, 192, 256)] == [64, 64, 128, 64, 256]


def test_known_hadamard_is_compressed_tensors_pick():
    from refquant.io.safetensors import SafetensorsFile
    table = SafetensorsFile(CTH.REPO_PATH)
    for n in (12, 32, 48, 96, 160, 512, 1536):
        np.testing.assert_array_equal(RH.known_hadamard(table, n),
                                      CTH._fetch_hadamard_divisor(n, torch.int8).numpy())
    with pytest.raises(InputError, match="none for order"):
        RH.known_hadamard(table, 7)


def test_r2_with_the_table_for_head_dim_32(tmp_path):
    """random-hadamard of order 32 (the table's own, not Sylvester's): --hadamard-table gives
    the same fused weights as compressed-tensors' factory."""
    import copy
    import transformers as tf
    d = tmp_path / "m"
    cfg = tf.LlamaConfig(hidden_size=128, intermediate_size=256, num_attention_heads=4, num_key_value_heads=2,
                         num_hidden_layers=1, vocab_size=96, max_position_embeddings=64)
    torch.manual_seed(1)
    model = tf.LlamaForCausalLM(cfg).eval()
    model.save_pretrained(d)
    out = tmp_path / "q"
    assert main(["quantize", str(d), str(out), "--scheme", "W8A16", "--transform", "random-hadamard",
                 "--no-progress"]) == 2                                   # no table: refused
    from refquant.pipelines.hf_quantize import rotate_r2
    ck = Checkpoint(d)
    w = {k: np.asarray(ck[k]) for k in ck}
    tc = TransformConfig.model_validate(rotate_r2(w, json.loads((d / "config.json").read_text()), "random-hadamard",
                                                  4, CTH.REPO_PATH))
    theirs = copy.deepcopy(model)
    for name, sch in tc.config_groups.items():
        TransformFactory.from_scheme(sch, name=name, seed=4).apply_to_model(theirs, use_tqdm=False)
    for p in ("model.layers.0.self_attn.v_proj", "model.layers.0.self_attn.o_proj"):
        np.testing.assert_array_equal(w[f"{p}.weight"], theirs.get_submodule(p).weight.detach().numpy(), err_msg=p)
    assert main(["quantize", str(d), str(out), "--scheme", "W8A16", "--transform", "random-hadamard",
                 "--hadamard-table", str(CTH.REPO_PATH), "--no-progress"]) == 0
