"""`--targets` / `--ignore` (llm-compressor's spelling) on tiny random models of several
architectures built from transformers' own configs: a BERT encoder (MiniLM's `encoder.layer.N`
names), Gemma 3, Qwen 3 and Mixtral (experts one linear each). Each written compressed-tensors
checkpoint is loaded by transformers through compressed-tensors' decompression, and every
quantized linear's weight equals refquant's dequantization bit for bit."""
import json
import warnings

import numpy as np
import pytest

import torch  # noqa: E402  (an oracle)
from refquant.cli import main
from refquant.errors import InputError
from refquant.io.safetensors import Checkpoint
from refquant.layouts import compressed_tensors as CT
from refquant.layouts import targets as T

SMALL = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_hidden_layers=2, vocab_size=96,
             max_position_embeddings=64)


def _config(arch):
    import transformers as tf
    if arch == "bert":
        return tf.BertConfig(**SMALL), tf.BertModel
    if arch == "gemma3":
        return tf.Gemma3TextConfig(**SMALL, num_key_value_heads=2, head_dim=16), tf.Gemma3ForCausalLM
    if arch == "qwen3":
        return tf.Qwen3Config(**SMALL, num_key_value_heads=2, head_dim=16), tf.Qwen3ForCausalLM
    if arch == "mixtral":
        return (tf.MixtralConfig(**SMALL, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2),
                tf.MixtralForCausalLM)
    raise AssertionError(arch)


_BUILT = {}


def _build(arch, tmp_path_factory):
    if arch not in _BUILT:
        cfg, cls = _config(arch)
        torch.manual_seed(0)
        m = cls(cfg).eval()
        d = tmp_path_factory.mktemp(arch)
        m.save_pretrained(d)
        _BUILT[arch] = (arch, d, cls)
    return _BUILT[arch]


@pytest.fixture(scope="module", params=["bert", "gemma3", "qwen3", "mixtral"])
def tiny(request, tmp_path_factory):
    return _build(request.param, tmp_path_factory)


def _loaded_weight(modules, name):
    """The weight transformers loaded for checkpoint module `name`. Transformers 5 fuses
    Mixtral's experts on load: experts.E.w1 / w3 are gate_up_proj[E]'s halves, w2 down_proj[E]."""
    if ".block_sparse_moe.experts." in name:
        layer, rest = name.split(".block_sparse_moe.experts.")
        e, w = rest.split(".")
        experts = modules[f"{layer}.mlp.experts"]
        if w == "w2":
            return experts.down_proj[int(e)].detach().numpy()
        gu = experts.gate_up_proj[int(e)].detach().numpy()
        half = gu.shape[0] // 2
        return gu[:half] if w == "w1" else gu[half:]
    return modules[name].weight.detach().numpy()


def quantize(d, out, *extra):
    return main(["quantize", str(d), str(out), "--format", "compressed-tensors", "--bits", "4", "--group-size", "32",
                 "--no-progress", *extra])


def test_every_linear_quantized_and_loaded_by_transformers(tiny, tmp_path):
    arch, d, cls = tiny
    from transformers.utils.quantization_config import CompressedTensorsConfig
    out = tmp_path / "ct"
    extra = ("--ignore", "lm_head", "re:.*block_sparse_moe.gate$") if arch == "mixtral" else ()
    assert quantize(d, out, *extra) == 0
    ck = Checkpoint(out)
    packed = sorted(k[:-len(".weight_packed")] for k in ck if k.endswith(".weight_packed"))
    src = Checkpoint(d)
    linears = {k[:-len(".weight")] for k in src if k.endswith(".weight") and src[k].ndim == 2}
    embeddings = ("word_embeddings", "position_embeddings", "token_type_embeddings", "embed_tokens")
    want = sorted(m for m in linears if not m.endswith(embeddings) and m != "lm_head"
                  and not m.endswith("block_sparse_moe.gate"))
    assert packed == want and packed
    if arch == "bert":
        assert "encoder.layer.1.attention.self.query" in packed and "pooler.dense" in packed
    if arch == "mixtral":
        assert "model.layers.1.block_sparse_moe.experts.3.w2" in packed
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = cls.from_pretrained(out, quantization_config=CompressedTensorsConfig(run_compressed=False),
                                dtype=torch.float32)
    loaded = dict(m.named_modules())
    for name in packed:
        tens = {n: np.asarray(ck[f"{name}.{n}"]) for n in ("weight_packed", "weight_scale", "weight_shape")}
        np.testing.assert_array_equal(_loaded_weight(loaded, name), CT.dequantize_pack_quantized(tens, 4))
    ids = torch.tensor([[1, 2, 3]])
    assert m(ids)[0].shape[:2] == (1, 3)


def test_targets_patterns_and_errors():
    shapes = {"embeddings.word_embeddings.weight": (96, 64), "embeddings.LayerNorm.weight": (64,),
              "encoder.layer.0.attention.self.query.weight": (64, 64),
              "encoder.layer.0.attention.self.query.bias": (64,),
              "encoder.layer.0.output.dense.weight": (64, 128), "pooler.dense.weight": (64, 64),
              "model.norm.weight": (64,), "lm_head.weight": (96, 64)}
    assert T.select(shapes) == ["encoder.layer.0.attention.self.query.weight", "encoder.layer.0.output.dense.weight",
                                "pooler.dense.weight"]
    assert T.select(shapes, ["re:.*query"]) == ["encoder.layer.0.attention.self.query.weight"]
    assert T.select(shapes, ["Linear"], ["lm_head", "pooler.dense", "re:.*output"]) == \
        ["encoder.layer.0.attention.self.query.weight"]
    assert T.select(shapes, ["Linear"], []) == ["encoder.layer.0.attention.self.query.weight",
                                                "encoder.layer.0.output.dense.weight", "pooler.dense.weight",
                                                "lm_head.weight"]
    assert T.select(shapes, ["Embedding"], []) == ["embeddings.word_embeddings.weight"]
    # re: is anchored at the start only, as re.match
    assert T.select(shapes, ["re:encoder"]) == ["encoder.layer.0.attention.self.query.weight",
                                                "encoder.layer.0.output.dense.weight"]
    with pytest.raises(InputError, match="matches no layer"):
        T.select(shapes, ["Linear", "re:.*k_proj"])
    with pytest.raises(InputError, match="not a regular expression"):
        T.select(shapes, ["re:(("])


def test_cli_targets_errors(tmp_path_factory, tmp_path, capsys):
    arch, d, cls = _build("bert", tmp_path_factory)
    out = tmp_path / "bad"
    assert quantize(d, out, "--targets", "re:.*k_proj") == 2
    assert quantize(d, out, "--targets", "Linear", "--ignore", "re:.*") == 2
    err = capsys.readouterr().err
    assert "k_proj" in err and "selects" in err
    assert not out.exists()
