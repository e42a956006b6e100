"""The plan of a round-to-nearest checkpoint (hf_quantize.plan_linear) comes from the layouts'
shape rules, nothing quantized: for every --format and --scheme the planned path takes (each
format's bits, group sizes -1, 32, 64 and 128, both symmetries), bfloat16, float16 and float32
layers whose rows and columns are no multiple of 256, of the group size or of the blocks, each
planned tensor is the dtype and shape of the tensor the
packer writes (quantize_linear on random data, whole and 256 rows at a time), and a layer the
packer refuses is refused by the plan too (before any output exists)."""
import ml_dtypes
import numpy as np
import pytest

from refquant.errors import RefquantError
from refquant.io.safetensors import spec_of
from refquant.layouts import compressed_tensors as CT
from refquant.pipelines import hf_quantize as hq

BF16, F16, F32 = np.dtype(ml_dtypes.bfloat16), np.dtype(np.float16), np.dtype(np.float32)

# (N, K, source dtype): tiny; K one group of 32 or under 128; rows past 256 in no multiple of
# 128 or 256 (FP8's partial edge blocks); K*b/32 not whole (3-bit compressed-tensors); groups
# needing AWQ GEMV's zero padding (640 / 32 = 20 groups: 3 words rounded to 4)
SHAPES = [(32, 64, BF16), (96, 96, F16), (288, 384, F32), (520, 640, BF16), (208, 1024, F16), (40, 48, F32),
          (1056, 128, BF16)]
GROUPS = (-1, 32, 64, 128)


def layouts():
    """Every (fmt, scheme, bits, group size, sym) the planned path writes (_check_options: the
    bits each format holds; AWQ GEMV's group sizes)."""
    for fmt, bits in [("gptq", (2, 3, 4, 8)), ("gptq_v2", (2, 3, 4, 8)), ("awq", (4,)), ("awq-gemv", (4,)),
                      ("compressed-tensors", tuple(range(2, 9)))]:
        for b in bits:
            for g in GROUPS:
                for sym in (True, False):
                    yield dict(fmt=fmt, scheme=None, bits=b, group_size=g, sym=sym)
    for fmt, b in [("fp8-block", 8), ("nvfp4", 4), ("modelopt-fp8", 8), ("modelopt-nvfp4", 4)]:
        yield dict(fmt=fmt, scheme=None, bits=b, group_size=128, sym=True)
    for name in CT.PRESETS:
        yield dict(fmt="compressed-tensors", scheme=name, bits=4, group_size=128, sym=True)


LAYOUTS = list(layouts())


def _id(kw):
    return kw["scheme"] or f"{kw['fmt']}-b{kw['bits']}-g{kw['group_size']}-{'sym' if kw['sym'] else 'asym'}"


def _job(w, kw, x_amax):
    j = dict(module="m", w=w, method="rtn", x=None, xa=np.float32(2.5), w_amax=None, x_amax=None, blas=None, **kw)
    if kw["fmt"].startswith("modelopt-"):
        j["w_amax"], j["x_amax"] = np.float32(np.max(np.abs(w.astype(np.float32)))), x_amax
    return j


def _outcome(fn, job):
    try:
        return {k: spec_of(a) for k, a in fn(job).items()}
    except RefquantError as e:
        return f"refused: {type(e).__name__}"


@pytest.mark.parametrize("kw", LAYOUTS, ids=_id)
def test_plan_is_what_the_packer_writes(kw, tmp_path):
    rng = np.random.default_rng(0)
    checked = 0
    for N, K, dt in SHAPES:
        w = (rng.standard_normal((N, K)) * 0.05).astype(dt)
        for x_amax in ([np.float32(3.0), None] if kw["fmt"].startswith("modelopt-") else [None]):
            job = _job(w, kw, x_amax)
            written = _outcome(hq.quantize_linear, job)
            planned = _outcome(hq.plan_linear, job)
            assert isinstance(planned, str) == isinstance(written, str), (N, K, dt, written, planned)
            if isinstance(written, str):
                continue
            assert planned == written, (N, K, dt)
            checked += 1
            if N > 256:                  # as a task writes it: a Source, 256 rows at a time
                (tmp_path / "w").write_bytes(w.tobytes())
                src = dict(job, w=hq.Source(tmp_path / "w", 0, w.dtype, w.shape))
                assert hq.chunkable(src)
                assert {k: spec_of(a) for k, a in hq.quantize_chunked(src, planned).items()} == planned
    assert checked >= 2, "fewer than two shapes accepted: the layout is hardly tested"


def test_plan_refuses_what_the_packer_refuses():
    """Layers each layout cannot hold: the plan says so with the packer's one-line message,
    naming the layer."""
    cases = [(dict(fmt="gptq", bits=3, group_size=-1), (264, 64), "multiples of 32"),
             (dict(fmt="awq", bits=4, group_size=64), (36, 64), "multiple of 8"),
             (dict(fmt="awq-gemv", bits=4, group_size=-1), (64, 96), "no padding rule"),
             (dict(fmt="compressed-tensors", bits=4, group_size=64), (64, 96), "group.size 64"),
             (dict(fmt="nvfp4", bits=4, group_size=128), (64, 40), "multiple of NVFP4's 16")]
    for kw, (N, K), msg in cases:
        job = dict(_job(np.zeros((N, K), F32), dict(scheme=None, sym=True, **kw), None),
                   module="model.layers.3.mlp.up_proj")
        with pytest.raises(RefquantError, match=msg):
            hq.quantize_linear(job)
        with pytest.raises(RefquantError, match=msg) as e:
            hq.plan_linear(job)
        assert "model.layers.3.mlp.up_proj" in str(e.value) and "\n" not in str(e.value)   # the layer, one line
