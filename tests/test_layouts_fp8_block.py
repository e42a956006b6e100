"""Block FP8 (DeepSeek-V3 weight_scale_inv) read back by transformers' own FP8 dequantization."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import torch  # noqa: E402  (an oracle)
from refquant.conformance.strategies import float_block
from refquant.errors import InputError
from refquant.layouts import fp8_block as F
from tools.oracles.pytorch import to_numpy, to_torch


@settings(max_examples=20)
@given(st.integers(1, 300), st.integers(1, 300), st.integers(0, 2**32 - 1), st.sampled_from([1e-3, 1.0, 1e4]))
def test_block_fp8_read_by_transformers(N, K, seed, mag):
    from transformers.integrations.finegrained_fp8 import _dequantize_fp8_weight
    w = (np.random.default_rng(seed).standard_normal((N, K)) * mag).astype(np.float32)
    t = F.block_fp8(w)
    assert t["weight_scale_inv"].shape == (-(-N // 128), -(-K // 128))
    theirs = to_numpy(_dequantize_fp8_weight(to_torch(t["weight"]), to_torch(t["weight_scale_inv"]),
                                             [128, 128], torch.float32))
    np.testing.assert_array_equal(F.dequantize_block_fp8(t).view(np.uint32), theirs.view(np.uint32))


def test_bad_input():
    with pytest.raises(InputError):
        F.block_fp8(np.zeros(4, np.float32))
    with pytest.raises(InputError):
        F.quantization_config_modelopt("INT4")
