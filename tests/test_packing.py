"""refquant.packing against the real packers: compressed-tensors' pack_to_int32 /
unpack_from_int32 (every width 1..8, both axes), AutoGPTQ's QuantLinear.pack (qweight along the
input axis, qzeros along the output axis, 2/3/4/8 bits, v1 zero - 1), compressed-tensors'
pack_fp4_to_uint8 (4-bit codes in uint8 words) and numpy.packbits (1-bit)."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from refquant.errors import InputError
from refquant.packing import pack_bits, packed_length, unpack_bits

import torch  # noqa: E402  (the oracles are in the test extra: a missing one is a failure, not a skip)

from tools.oracles import pytorch as pt  # noqa: E402


@st.composite
def codes(draw, bits, max_side=70):
    shape = draw(st.tuples(st.integers(1, 5), st.integers(1, max_side)))
    return draw(hnp.arrays(np.int32, shape, elements=st.integers(0, 2**bits - 1)))


@given(data=st.data(), bits=st.integers(1, 8), axis=st.sampled_from([0, 1]))
def test_matches_compressed_tensors_pack_to_int32(data, bits, axis):
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32, unpack_from_int32
    c = data.draw(codes(bits))
    if axis == 0:
        c = np.ascontiguousarray(c.T)
    signed = (c - (1 << (bits - 1))).astype(np.int8)  # compressed-tensors stores q + 2^(b-1)
    theirs = pack_to_int32(torch.from_numpy(signed), bits, packed_dim=axis).numpy()
    ours = pack_bits(c, bits, axis=axis)
    assert ours.dtype == np.int32
    np.testing.assert_array_equal(ours, theirs)
    back = unpack_from_int32(torch.from_numpy(ours), bits, torch.Size(c.shape), packed_dim=axis).numpy()
    np.testing.assert_array_equal(unpack_bits(ours, bits, c.shape[axis], axis=axis).astype(np.int32) - (1 << (bits - 1)),
                                  back.astype(np.int32))


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@given(data=st.data())
def test_matches_auto_gptq_pack(bits, data):
    """QuantLinear.pack (AutoGPTQ 0.7.1, the GPTQ v1 packer): qweight [K*b/32, N] packed along K,
    qzeros [G, N*b/32] packed along N holding zero - 1; 3-bit is one dense stream."""
    QL = pt.auto_gptq_qlinear().QuantLinear
    K = 32 * data.draw(st.integers(1, 3))
    N = 32 * data.draw(st.integers(1, 2))
    g = data.draw(st.sampled_from([d for d in (32, 64, K) if K % d == 0]))
    G = K // g
    q = data.draw(hnp.arrays(np.int32, (K, N), elements=st.integers(0, 2**bits - 1)))
    zeros = data.draw(hnp.arrays(np.int32, (G, N), elements=st.integers(1, 2**bits - 1)))  # v1 cannot hold 0
    gidx = np.arange(K) // g
    w = (q - zeros[gidx]).astype(np.float32)  # with scale 1: round(w + zero) = q
    lin = torch.nn.Linear(K, N, bias=False)
    lin.weight.data = torch.from_numpy(np.ascontiguousarray(w.T))
    ql = QL(bits, g, K, N, bias=False, weight_dtype=torch.float32)
    ql.pack(lin, torch.ones(N, G), torch.from_numpy(np.ascontiguousarray(zeros.T)).float(), torch.from_numpy(gidx))
    np.testing.assert_array_equal(pack_bits(q, bits, axis=0), ql.qweight.numpy())
    np.testing.assert_array_equal(pack_bits(zeros - 1, bits, axis=1), ql.qzeros.numpy())
    np.testing.assert_array_equal(unpack_bits(ql.qweight.numpy(), bits, K, axis=0), q)


E2M1 = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]


@given(c=codes(4, max_side=40).filter(lambda a: a.shape[1] % 2 == 0))
def test_uint8_nibbles_match_compressed_tensors_fp4(c):
    from compressed_tensors.compressors.nvfp4.helpers import pack_fp4_to_uint8
    vals = np.array([(-1.0 if v & 8 else 1.0) * E2M1[v & 7] for v in c.ravel()], np.float32).reshape(c.shape)
    theirs = pack_fp4_to_uint8(torch.from_numpy(vals)).numpy()
    np.testing.assert_array_equal(pack_bits(c, 4, word="uint8"), theirs)


@given(c=codes(1))
def test_one_bit_uint8_matches_numpy_packbits(c):
    np.testing.assert_array_equal(pack_bits(c, 1, word="uint8"), np.packbits(c.astype(np.uint8), axis=1, bitorder="little"))


@given(data=st.data(), bits=st.integers(1, 8), word=st.sampled_from(["int32", "uint8"]))
def test_unpack_inverts_pack(data, bits, word):
    c = data.draw(codes(bits))
    p = pack_bits(c, bits, word=word)
    assert p.shape[1] == packed_length(c.shape[1], bits, word)
    np.testing.assert_array_equal(unpack_bits(p, bits, c.shape[1], word=word), c)


def test_bad_input():
    with pytest.raises(InputError, match="does not fit in 3 bits"):
        pack_bits(np.array([[8]]), 3)
    with pytest.raises(InputError, match="does not fit"):
        pack_bits(np.array([[-1]]), 3)
    with pytest.raises(InputError, match="bits must be"):
        pack_bits(np.array([[1]]), 9)
    with pytest.raises(InputError, match="integers"):
        pack_bits(np.array([[1.0]]), 4)
    with pytest.raises(InputError, match="word"):
        pack_bits(np.array([[1]]), 4, word="int16")
    with pytest.raises(InputError, match="need 2 int32 words"):
        unpack_bits(np.zeros((1, 1), np.int32), 4, 16)
    with pytest.raises(InputError, match="dtype int32"):
        unpack_bits(np.zeros((1, 1), np.uint32), 4, 8)
    with pytest.raises(InputError, match="axis"):
        pack_bits(np.zeros((2, 2), np.int32), 4, axis=2)
