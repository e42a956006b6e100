"""ggml's lattice IQ types (IQ2_XXS IQ2_XS IQ2_S IQ3_XXS IQ3_S IQ1_S IQ1_M), bit-exact with ggml.

The oracle calls ggml_quantize_init(type) before ggml_quantize_chunk. These quantizers are
slow in ggml too; the property tests draw at most 2 rows of 2 super-blocks and run
`max_examples=EXAMPLES` (below the quick profile's 60) to keep this file near two minutes.

Where ggml aborts (GGML_ASSERT / GGML_ABORT), refquant raises InputError; every such refusal
met by a property test is checked by running ggml on the same input in a forked child, which
must die.
"""
import multiprocessing
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import refquant
from refquant.conformance.strategies import float_rows, importance
from refquant.errors import InputError
from refquant.ggml import grids
from edge_rows import zero_sub_blocks

ALL = ["IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ1_S", "IQ1_M"]
NEEDS_IMATRIX = ["IQ2_XXS", "IQ2_XS", "IQ1_S"]
EXAMPLES = int(os.environ.get("IQ_GRID_EXAMPLES", "25"))


def implemented(qtype):
    return refquant.get_format(qtype).can_quantize


QUANT = [pytest.param(t, marks=pytest.mark.skipif(not implemented(t), reason="quantizer not written"))
         for t in ALL]
OPTIONAL = [t for t in QUANT if t.values[0] not in NEEDS_IMATRIX]


def bits(a):
    return a.view(np.uint32)


def _ggml_dies(x, qtype, im) -> bool:
    """Run ggml's quantizer on x in a forked child; True when the child is killed or exits != 0."""
    def child():
        import faulthandler
        faulthandler.disable()
        os.environ["GGML_NO_BACKTRACE"] = "1"   # ggml_abort would otherwise start gdb
        os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
        from tools.oracles import ggml
        ggml.quantize(x, qtype, im)
        os._exit(0)
    ctx = multiprocessing.get_context("fork")
    p = ctx.Process(target=child)
    p.start()
    p.join(60)
    return p.exitcode != 0


def check_against_ggml(ggml, x, qtype, im):
    try:
        ours = refquant.quantize(x, qtype, imatrix=im)
    except InputError as e:
        assert "ggml aborts" in str(e)
        assert _ggml_dies(x, qtype, im), f"refquant refused an input ggml quantizes: {e}"
        return
    np.testing.assert_array_equal(ours, ggml.quantize(x, qtype, im))


# ------------------------------------------------------------------ tables and structures

@pytest.mark.parametrize("name,qtype,bsize", [("iq2xxs", "IQ2_XXS", 66), ("iq2xs", "IQ2_XS", 74),
                                              ("iq2s", "IQ2_S", 82), ("iq3xxs", "IQ3_XXS", 98),
                                              ("iq3s", "IQ3_S", 110), ("iq1s", "IQ1_S", 50)])
def test_every_grid_point_dequantizes_as_in_ggml(ggml, name, qtype, bsize):
    """The shipped codebooks equal ggml's: a block that selects grid point k in one group, with
    a scale that makes the output the grid bytes themselves, decodes to table row k in ggml."""
    table = grids.dequant_grid(name)
    n, dims = table.shape
    one = np.float16(1.0).view(np.uint16)
    blocks = np.zeros((n, bsize), np.uint8)
    blocks[:, 0:2] = np.frombuffer(np.uint16(one).tobytes(), np.uint8)
    k = np.arange(n)
    if qtype == "IQ2_XXS":       # first group's index byte; scale nibble 0 -> d*0.5*0.25 = 1/8
        blocks[:, 2] = k
        expect = table * 0.125
    elif qtype == "IQ2_XS":      # qs[0] = index (9 bits), scales 0 -> 1/8
        blocks[:, 2] = k & 255
        blocks[:, 3] = k >> 8
        expect = table * 0.125
    elif qtype == "IQ2_S":       # qs[0] low 8 bits, qh[0] bits 0-1 high bits
        blocks[:, 2] = k & 255
        blocks[:, 66] = k >> 8
        expect = table * 0.125
    elif qtype == "IQ3_XXS":     # qs[0]; scale nibble 0 -> d*0.5*0.5 = 1/4
        blocks[:, 2] = k
        expect = table * 0.25
    elif qtype == "IQ3_S":       # qs[0] and qh[0] bit 0; scale 0 -> d*1
        blocks[:, 2] = k & 255
        blocks[:, 66] = k >> 8
        expect = table * 1.0
    else:                        # IQ1_S: qs[0] low 8 bits, qh[0] bits 0-2; scale 0 -> d*1, delta +1/8
        blocks[:, 2] = k & 255
        blocks[:, 34] = k >> 8
        expect = table + 0.125
    got = ggml.dequantize(blocks, qtype)[:, :dims]
    np.testing.assert_array_equal(got, expect.astype(np.float32))
    if qtype == "IQ1_S":         # IQ1_M reads the same codebook
        m = np.zeros((n, 56), np.uint8)
        m[:, 0] = k & 255
        m[:, 32] = k >> 8
        h = 0x3C00               # fp16 1.0, spread over the top nibbles of the scale words
        sc = np.array([(h & 0xF) << 12, (h & 0xF0) << 8, (h & 0xF00) << 4, h & 0xF000], "<u2")
        m[:, 48:56] = np.frombuffer(sc.tobytes(), np.uint8)
        np.testing.assert_array_equal(ggml.dequantize(m, "IQ1_M")[:, :8], (table + 0.125).astype(np.float32))


def test_sign_tables():
    """ksigns_iq2xs: even parity of minus signs; kmask: one bit per coordinate."""
    for i in range(128):
        s = int(grids.KSIGNS_IQ2XS[i])
        assert s & 127 == i and bin(s).count("1") % 2 == 0
    assert list(grids.KMASK_IQ2XS) == [1, 2, 4, 8, 16, 32, 64, 128]


@pytest.mark.parametrize("qtype", ["IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S"])
def test_neighbour_lists_choose_as_ggml(ggml, qtype, monkeypatch):
    """Inputs built so that each group's rounded levels form an off-grid code and equal weights
    make several neighbours tie: ggml's bytes then depend on the order of the neighbour lists."""
    name = {"IQ2_XXS": "iq2xxs", "IQ2_XS": "iq2xs", "IQ2_S": "iq2s", "IQ3_XXS": "iq3xxs", "IQ3_S": "iq3s"}[qtype]
    lat = grids.lattice(name)
    rng = np.random.default_rng(5)
    off = np.flatnonzero(lat.nbr_row >= 0)
    codes = rng.choice(off, 8 * 256 // lat.dims)
    levels = grids.unpack_levels(codes, lat.bits, lat.dims).astype(np.float32)
    x = (2 * levels + 1).reshape(8, 256) * np.float32(0.01)
    x *= np.where(rng.random(x.shape) < 0.3, -1, 1).astype(np.float32)
    im = np.ones(256, np.float32)
    check_against_ggml(ggml, x, qtype, im)
    if qtype not in NEEDS_IMATRIX:
        check_against_ggml(ggml, x, qtype, None)
    # teeth: with every neighbour list reversed, the same input no longer gives ggml's bytes
    import dataclasses
    from refquant.ggml import iquants_grid
    flat = lat.nbr_flat.copy()
    for r in range(len(lat.nbr_start) - 1):
        a, b = lat.nbr_start[r], lat.nbr_start[r + 1]
        flat[a:b] = flat[a:b][::-1].copy()
    reversed_lat = dataclasses.replace(lat, nbr_flat=flat, nbr_levels=lat.levels[flat])
    real = grids.lattice
    monkeypatch.setattr(iquants_grid.grids, "lattice", lambda n: reversed_lat if n == name else real(n))
    assert not np.array_equal(refquant.quantize(x, qtype, imatrix=im), ggml.quantize(x, qtype, im))


# ------------------------------------------------------------------ quantize, property tests

@pytest.mark.parametrize("qtype", QUANT)
@settings(max_examples=EXAMPLES)
@given(data=st.data())
def test_quantize_with_imatrix_matches_ggml(ggml, qtype, data):
    x = data.draw(float_rows(256, max_rows=2, max_blocks=2))
    im = data.draw(importance(x.shape[1]))
    check_against_ggml(ggml, x, qtype, im)


@pytest.mark.parametrize("qtype", OPTIONAL)
@settings(max_examples=EXAMPLES)
@given(x=float_rows(256, max_rows=2, max_blocks=2))
def test_quantize_without_imatrix_matches_ggml(ggml, qtype, x):
    check_against_ggml(ggml, x, qtype, None)


@pytest.mark.parametrize("qtype", NEEDS_IMATRIX)
def test_imatrix_required(ggml, qtype):
    assert ggml.requires_imatrix(qtype)
    assert refquant.get_format(qtype).needs_imatrix
    with pytest.raises(InputError, match="requires an importance matrix"):
        refquant.quantize(np.zeros((1, 256), np.float32), qtype)


@pytest.mark.parametrize("qtype", [t for t in ALL if t not in NEEDS_IMATRIX])
def test_imatrix_optional_as_in_ggml(ggml, qtype):
    assert not ggml.requires_imatrix(qtype)
    assert not refquant.get_format(qtype).needs_imatrix


@pytest.mark.parametrize("qtype", QUANT)
def test_realistic_matrix_matches(ggml, qtype):
    """A gaussian weight matrix with an outlier, with an importance matrix (and without one
    where ggml allows it)."""
    rng = np.random.default_rng(11)
    x = (rng.standard_normal((8, 1024)) * 0.02).astype(np.float32)
    x[3, 100] = 0.5
    im = (rng.random(1024) ** 2).astype(np.float32)
    np.testing.assert_array_equal(refquant.quantize(x, qtype, imatrix=im), ggml.quantize(x, qtype, im))
    if qtype not in NEEDS_IMATRIX:
        np.testing.assert_array_equal(refquant.quantize(x, qtype), ggml.quantize(x, qtype))


# ------------------------------------------------------------------ dequantize

@pytest.mark.parametrize("qtype", ALL)
@given(data=st.data())
def test_dequantize_matches_ggml_on_any_bytes(ggml, qtype, data):
    fmt = refquant.get_format(qtype)
    nblocks = data.draw(st.integers(1, 8))
    raw = np.frombuffer(data.draw(st.binary(min_size=nblocks * fmt.type_size,
                                            max_size=nblocks * fmt.type_size)), np.uint8).copy()
    np.testing.assert_array_equal(bits(refquant.dequantize(raw, qtype)), bits(ggml.dequantize(raw, qtype)))


@pytest.mark.parametrize("qtype", QUANT)
def test_zero_sub_blocks_between_others(ggml, qtype):
    """All-zero sub-blocks among non-zero ones (IQ3_S then moves later grid bytes and signs
    down, as ggml's pointer arithmetic does), and a lone non-zero value."""
    rng = np.random.default_rng(3)
    x, im = zero_sub_blocks(rng)
    check_against_ggml(ggml, x, qtype, im)
    if qtype not in NEEDS_IMATRIX:
        check_against_ggml(ggml, x, qtype, None)


@pytest.mark.parametrize("qtype", ["IQ1_S", "IQ1_M"])
def test_sort_ties_follow_glibc_merge_sort(ggml, qtype, monkeypatch):
    """IQ1_S/IQ1_M sort each sub-block with qsort and a comparator without tie-break. Blocks of
    few distinct values with distinct weights make the order among equal values matter; glibc
    sorts these small arrays with its stable merge sort, and refquant's stable order matches.
    For IQ1_M (two halves with their own shifts, so equal values may deserve different levels)
    the same inputs with ties broken the other way disagree with ggml: the test has teeth. For
    IQ1_S equal values always share a level at the optimum, and the tie order reaches the
    result only through the rounding of the prefix sums (no input found where it does)."""
    from refquant.ggml import iquants_grid
    rng = np.random.default_rng(17)
    x = (rng.integers(-2, 3, (16, 512)) * 0.25).astype(np.float32)
    x[:, ::7] = -0.0
    im = (rng.random(512) * 4).astype(np.float32)
    theirs = ggml.quantize(x, qtype, im)
    np.testing.assert_array_equal(refquant.quantize(x, qtype, imatrix=im), theirs)

    def ties_last_first(xb):     # ascending values, equal values in reverse position order
        pos = np.broadcast_to(-np.arange(xb.shape[1]), xb.shape)
        return np.lexsort((pos, xb), axis=1)
    if qtype == "IQ1_S":
        return
    monkeypatch.setattr(iquants_grid, "_sorted_order", ties_last_first)
    assert not np.array_equal(refquant.quantize(x, qtype, imatrix=im), theirs)


@pytest.mark.parametrize("qtype", ["IQ2_XXS", "IQ2_XS", "IQ3_XXS"])
def test_negative_scale_flips_signs_as_ggml(ggml, qtype):
    """The 'should never happen' branch: with 7 stored sign bits, the element whose sign is
    flipped back has a negative magnitude; give it a small value and a large weight, the other
    seven large values and tiny weights, and the best scale comes out negative, so ggml negates
    it and complements the stored sign bits."""
    rng = np.random.default_rng(2)
    x = rng.uniform(50, 100, (2, 256)).astype(np.float32)
    x[:, ::8] = -0.01
    im = np.full(256, 1e-6, np.float32)
    im[::8] = 10.0
    check_against_ggml(ggml, x, qtype, im)
