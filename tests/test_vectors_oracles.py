"""The committed golden vectors of the MX, bitsandbytes and NVFP4 sets (spec/vectors/<SET>/:
cases.txt.gz, the .npy arrays) against the real implementations, never against refquant:
every committed input is quantized by the oracle and its bytes compared with the committed
result, every committed encoded block decoded by the oracle and compared bit for bit.

    MX FP8/FP6/FP4, rules floor, ceil, even, rceil   torchao 0.18 to_mx / to_dtype (CPU torch)
    MX, rule ocp                                     torchao FLOOR where the scale is above 2^-127;
                                                     at 2^-127 the saturating cast of x * 2^127
                                                     (ONNX's saturate_cast, ml_dtypes)
    MXFP4, MXFP6_E2M3, MXFP8_E4M3, compressed-tensors compressed-tensors 0.20.1: calculate_qparams
                                                     and the MX presets' compressors (decoding is
                                                     the rules' common decoder, torchao's above)
    MXINT8                                           no implementation at hand (torchao has none):
                                                     OCP v1.0's definition, written out here
    BNB_NF4, BNB_FP4, *.nested, BNB_DYNAMIC8         bitsandbytes 0.50.2 on the CPU
    NVFP4_CT                                         compressed-tensors 0.20.1
    NVFP4_MODELOPT                                   NVIDIA ModelOpt 0.47 NVFP4QTensor.quantize /
                                                     dequantize
    NVFP4_TORCHAO_2L                                 torchao 0.18 nvfp4_quantize / NVFP4Tensor (torchao's
                                                     one-level NVFP4_TORCHAO, a registry format:
                                                     tests/test_vectors_vs_onnx_torchao.py)
"""
import gzip
import json
import math
import os
import warnings
from pathlib import Path

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import torch  # noqa: E402  (an oracle: missing it is an error, not a skip)
torch._dynamo.config.disable = True
import bitsandbytes.functional as BF  # noqa: E402
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from compressed_tensors.compressors import BaseCompressor
    from compressed_tensors.compressors.mxfp6.helpers import kE2M3ToFloat, pack_fp6_to_uint8
    from compressed_tensors.compressors.nvfp4.helpers import unpack_fp4_from_uint8
    from compressed_tensors.quantization import preset_name_to_scheme
    from compressed_tensors.quantization.quant_args import FP4_E2M1_DATA, FP6_E2M3_DATA
    from compressed_tensors.quantization.utils.helpers import calculate_qparams
    from compressed_tensors.quantization.utils.mxfp_utils import round_to_power_2
    from compressed_tensors.quantization.lifecycle.forward import dequantize as ct_dequantize
    from torchao.prototype.mx_formats.config import ScaleCalculationMode
    from torchao.prototype.mx_formats.constants import DTYPE_FP6_E2M3, DTYPE_FP6_E3M2
    from torchao.prototype.mx_formats.mx_tensor import to_dtype, to_mx
    from torchao.prototype.mx_formats.nvfp4_tensor import NVFP4Tensor, nvfp4_quantize, per_tensor_amax_to_scale

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from modelopt.torch.quantization.qtensor import NVFP4QTensor

from test_nvfp4_vs_compressed_tensors import ARGS as CT_NVFP4_ARGS, ct_quantize  # noqa: E402

VECTORS = Path(__file__).resolve().parent.parent / "spec" / "vectors"
F32 = np.float32

MX_ELEM = {"MXFP8_E4M3": torch.float8_e4m3fn, "MXFP8_E5M2": torch.float8_e5m2, "MXFP6_E2M3": DTYPE_FP6_E2M3,
           "MXFP6_E3M2": DTYPE_FP6_E3M2, "MXFP4_E2M1": torch.float4_e2m1fn_x2}
MX_MODES = {"floor": ScaleCalculationMode.FLOOR, "ceil": ScaleCalculationMode.CEIL,
            "even": ScaleCalculationMode.EVEN, "rceil": ScaleCalculationMode.RCEIL}
MX_ELEM_ML_DTYPES = {"MXFP8_E4M3": "float8_e4m3fn", "MXFP8_E5M2": "float8_e5m2", "MXFP6_E2M3": "float6_e2m3fn",
                     "MXFP6_E3M2": "float6_e3m2fn", "MXFP4_E2M1": "float4_e2m1fn"}
MX_SETS = list(MX_ELEM)
CEA = torch._C.DispatchKeySet(torch._C.DispatchKey.CompositeExplicitAutograd)


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Thousands of tiny oracle calls: on one thread each takes microseconds, not the
    milliseconds a thread pool's start takes on a loaded machine. Restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ------------------------------------------------------------------------------ reading

def read_cases(set_name, path=None):
    """(format, op, input bytes, result bytes or None for `refused`) per line of cases.txt.gz."""
    path = path or VECTORS / set_name / "cases.txt.gz"
    out = []
    for line in gzip.decompress(path.read_bytes()).decode().splitlines():
        if not line or line.startswith("#"):
            continue
        f = line.split()
        assert len(f) == 5 and f[3] == "-", line[:80]
        out.append((f[0], f[1], bytes.fromhex(f[2]), None if f[4] == "refused" else bytes.fromhex(f[4])))
    return out


def quantize_cases(cases, fmt):
    """x (k, n) float32 and the committed results (k, type_size) uint8 (None rows: refused)."""
    sel = [c for c in cases if c[0] == fmt and c[1] == "quantize"]
    assert sel, f"no quantize cases of {fmt}"
    x = np.stack([np.frombuffer(c[2], "<f4") for c in sel]).astype(F32)
    return x, [c[3] for c in sel]


def dequantize_cases(cases, fmt):
    sel = [c for c in cases if c[0] == fmt and c[1] == "dequantize"]
    assert sel, f"no dequantize cases of {fmt}"
    return (np.stack([np.frombuffer(c[2], np.uint8) for c in sel]),
            np.stack([np.frombuffer(c[3], "<u4") for c in sel]))


def npy_cases(set_name):
    """The committed .npy arrays (input, each member's encoded and decoded) as cases, block by
    block, in read_cases' form: each member's blocks quantized, and decoded (under the set's
    name: a set's members share their decoder)."""
    d = VECTORS / set_name
    doc = json.loads((d / "vectors.json").read_text())
    x = np.load(d / "input.npy")
    out = []
    for m in doc["members"]:
        enc, dec = (np.load(d / f"{k}.npy") for k in m["keys"])
        xb, eb = x.reshape(-1, m["block_size"]), enc.reshape(-1, m["type_size"])
        db = np.ascontiguousarray(dec).reshape(-1, m["block_size"])
        out += [(m["format"], "quantize", a.tobytes(), b.tobytes()) for a, b in zip(xb, eb)]
        out += [(set_name, "dequantize", b.tobytes(), v.tobytes()) for b, v in zip(eb, db)]
    return out


def all_results(results):
    assert all(r is not None for r in results), "a committed case is `refused` where the oracle has an answer"
    return np.stack([np.frombuffer(r, np.uint8) for r in results])


def same_floats(ours_bits, ref, nan_any=False):
    """Bit-equal float32; with nan_any a NaN need only be a NaN (torch widens an FP8 NaN keeping
    its mantissa bits, refquant writes the canonical quiet NaN)."""
    ref = np.ascontiguousarray(ref, F32).reshape(ours_bits.shape)
    ours = np.ascontiguousarray(ours_bits).view(F32)
    if nan_any:
        nan = np.isnan(ref)
        np.testing.assert_array_equal(np.isnan(ours), nan)
        ours, ref = ours[~nan], ref[~nan]
    np.testing.assert_array_equal(ours.view(np.uint32), ref.view(np.uint32))


# ------------------------------------------------------------------------------ MX oracles

def mx_oracle_quantize(x, name, rule):
    """torchao's to_mx (rules floor, ceil, even, rceil); the OCP rule: torchao FLOOR, and where
    its scale is 2^-127 the saturating cast of x * 2^127 (OCP divides by the scale itself,
    torchao by 2^-126; see tests/test_mx_vs_torchao.py). -> (k, 1 + element bytes)"""
    mode = MX_MODES.get(rule, ScaleCalculationMode.FLOOR)
    scale, data = to_mx(torch.from_numpy(x.copy()), MX_ELEM[name], 32, mode)
    s = scale.view(torch.uint8).numpy().reshape(-1, 1)
    d = data.view(torch.uint8).numpy().reshape(x.shape[0], -1).copy()
    if rule == "ocp" and (s == 0).any():
        import ml_dtypes
        import onnx.numpy_helper as nh
        from refquant.mx import pack_fp4
        low = s[:, 0] == 0
        codes = nh.saturate_cast(np.ldexp(x[low].astype(np.float64), 127).astype(F32),
                                 getattr(ml_dtypes, MX_ELEM_ML_DTYPES[name])).view(np.uint8)
        d[low] = pack_fp4(codes) if name == "MXFP4_E2M1" else codes
    return np.concatenate([s, d], axis=1)


def mx_oracle_dequantize(blocks, name):
    """torchao's to_dtype on | scale | elements | blocks -> float32 (k, 32)."""
    d = torch.from_numpy(np.ascontiguousarray(blocks[:, 1:]))
    if name.startswith("MXFP8"):
        d = d.view(MX_ELEM[name])
    s = torch.from_numpy(np.ascontiguousarray(blocks[:, :1])).view(torch.float8_e8m0fnu)
    return to_dtype(d, s, MX_ELEM[name], 32, torch.float32).numpy()


CT_MX = {"MXFP4_E2M1": ("MXFP4A16", "mxfp4-pack-quantized"), "MXFP6_E2M3": ("MXFP6A16", "mxfp6-pack-quantized"),
         "MXFP8_E4M3": ("MXFP8A16", "mxfp8-quantized")}


def ct_fp6_pack(codes):
    """compressed-tensors' own FP6 packing of 6-bit codes (k, 32): each code's value from its
    E2M3 table (bit 5 the sign), packed by pack_fp6_to_uint8 -> (k, 24)."""
    c = torch.from_numpy(codes.astype(np.int64))
    v = kE2M3ToFloat[c & 0x1F]
    return pack_fp6_to_uint8(torch.where((c & 0x20) != 0, -v, v)).numpy()


def mx_ct_quantize(x, name):
    """compressed-tensors 0.20.1: each block (k, 32) a group of a (k, 32) weight; scales from
    calculate_qparams on its min and max (the preset's MX args: generate_mx_scales), the codes
    from the preset format's compressor -> (k, 1 + element bytes), FP6 as compressed-tensors
    packs it (three bytes per four codes)."""
    preset, fmt = CT_MX[name]
    scheme = preset_name_to_scheme(preset, ["Linear"])
    w = torch.from_numpy(x.copy())
    s, _ = calculate_qparams(w.amin(-1, keepdim=True), w.amax(-1, keepdim=True), scheme.weights)
    sd = {"weight": w, "weight_scale": s,
          "weight_zero_point": torch.zeros(s.shape, dtype=scheme.weights.zp_dtype or torch.int8)}
    out = BaseCompressor.get_value_from_registry(fmt).compress(sd, scheme)
    data = out["weight_packed"] if "weight_packed" in out else out["weight"]
    return np.concatenate([out["weight_scale"].view(torch.uint8).numpy().reshape(-1, 1),
                           data.view(torch.uint8).numpy().reshape(x.shape[0], -1)], axis=1)


def check_mx_ct(set_name, cases):
    fmt = f"{set_name}.compressed-tensors"
    x, res = quantize_cases(cases, fmt)
    # refused exactly where compressed-tensors' own round_to_power_2 (generate_mx_scales' first
    # step, with its mantissa width) takes the block's amax to Inf
    mant = (FP6_E2M3_DATA if set_name == "MXFP6_E2M3" else FP4_E2M1_DATA).mantissa
    to_inf = torch.isinf(round_to_power_2(torch.from_numpy(np.abs(x).max(axis=1)), mant)).numpy()
    np.testing.assert_array_equal(np.array([r is None for r in res]), to_inf, err_msg=f"{fmt}: refused")
    x, res = x[~to_inf], [r for r, i in zip(res, to_inf) if not i]
    ours = all_results(res)
    if set_name == "MXFP6_E2M3":           # compare as compressed-tensors stores them
        ours = np.concatenate([ours[:, :1], ct_fp6_pack(ours[:, 1:])], axis=1)
    np.testing.assert_array_equal(ours, mx_ct_quantize(x, set_name), err_msg=f"{fmt}")


@pytest.mark.parametrize("set_name", list(CT_MX))
def test_mx_compressed_tensors_rule_vectors_are_compressed_tensors(set_name):
    check_mx_ct(set_name, read_cases(set_name))
    check_mx_ct(set_name, npy_cases(set_name))


def check_mx(set_name, rule, cases):
    fmt = set_name if rule == "ocp" else f"{set_name}.{rule}"
    x, res = quantize_cases(cases, fmt)
    np.testing.assert_array_equal(all_results(res), mx_oracle_quantize(x, set_name, rule), err_msg=f"{fmt} cases.txt")
    data, want = dequantize_cases(cases, set_name)
    same_floats(want, mx_oracle_dequantize(data, set_name), nan_any=True)


@pytest.mark.parametrize("rule", ["ocp", *MX_MODES])
@pytest.mark.parametrize("set_name", MX_SETS)
def test_mx_vectors_are_torchaos(set_name, rule):
    check_mx(set_name, rule, read_cases(set_name))
    check_mx(set_name, rule, npy_cases(set_name))


def mxint8_by_definition(x):
    """OCP MX v1.0 (sections 5.3, 6.3), written out in float64: X = 2^(floor(log2 amax) - 0)
    clamped to [2^-127, 2^127] (an all-zero block takes 2^-127); P_i = V_i / X as int8 with an
    implicit 2^-6, i.e. round(V_i / X * 64) to nearest even, saturated to [-127, 127]."""
    out = []
    for blk in x.astype(np.float64):
        amax = np.max(np.abs(blk))
        e = -127 if amax == 0 else min(max(math.frexp(amax)[1] - 1, -127), 127)   # floor(log2 amax), exactly
        q = np.clip(np.round(blk / 2.0 ** e * 64.0), -127, 127).astype(np.int8).view(np.uint8)
        out.append(np.concatenate([[e + 127], q]).astype(np.uint8))
    return np.stack(out)


def check_mxint8(cases):
    x, res = quantize_cases(cases, "MXINT8")
    np.testing.assert_array_equal(all_results(res), mxint8_by_definition(x))
    data, want = dequantize_cases(cases, "MXINT8")
    scale = np.where(data[:, :1] == 255, np.nan, np.ldexp(1.0, data[:, :1].astype(np.int64) - 127))
    same_floats(want, (data[:, 1:].view(np.int8) / 64.0 * scale).astype(F32), nan_any=True)


def test_mxint8_vectors_follow_the_ocp_definition():
    """No implementation of MXINT8 is at hand (torchao has none): the committed bytes against
    OCP v1.0's definition, and the decoded values against P * 2^-6 * 2^(scale - 127)."""
    check_mxint8(read_cases("MXINT8"))
    check_mxint8(npy_cases("MXINT8"))


# ------------------------------------------------------------------------------ bitsandbytes

def bnb_4bit_dequant(packed, absmax, quant_type, n):
    """bitsandbytes' dequantize_4bit through its PyTorch CPU kernel (the one refquant's rows
    follow; its native scalar kernel gives FP4's index 8 the sign -0.0, see refquant.bnb)."""
    out = torch.ops.bitsandbytes.dequantize_4bit.default.redispatch(
        CEA, torch.from_numpy(packed.reshape(-1, 1).copy()), torch.from_numpy(absmax.astype(F32)), 64, quant_type,
        [n], torch.float32)
    return out.numpy()


def check_bnb_4bit(set_name, cases):
    qt = set_name[4:].lower()
    x, res = quantize_cases(cases, set_name)
    packed, st = BF.quantize_4bit(torch.from_numpy(x.reshape(-1).copy()), blocksize=64, quant_type=qt)
    nb = x.shape[0]
    ref = np.concatenate([st.absmax.numpy().astype("<f4").view(np.uint8).reshape(nb, 4),
                          packed.numpy().reshape(nb, 32)], axis=1)
    np.testing.assert_array_equal(all_results(res), ref)
    data, want = dequantize_cases(cases, set_name)
    absmax = np.ascontiguousarray(data[:, :4]).view("<f4").reshape(-1)
    same_floats(want, bnb_4bit_dequant(data[:, 4:], absmax, qt, data.shape[0] * 64))


def check_bnb_nested(set_name, cases):
    qt = set_name[4:7].lower()
    data, want = dequantize_cases(cases, set_name)
    # every block's two absmax codes at once: one 64-code block per case, scaled by its absmax2
    # (bitsandbytes' code[q] * absmax2, as at its nested blocksize of 256), plus its offset
    k = data.shape[0]
    codes = np.zeros((k, 64), np.uint8)
    codes[:, :2] = data[:, 8:10]
    absmax2 = torch.from_numpy(np.ascontiguousarray(data[:, 4:8]).view("<f4").reshape(-1).copy())
    inner = BF.dequantize_blockwise(torch.from_numpy(codes.reshape(-1)), absmax=absmax2,
                                    code=BF.create_dynamic_map().to(torch.float32), blocksize=64).reshape(k, 64)[:, :2]
    absmax = (inner + torch.from_numpy(np.ascontiguousarray(data[:, :4]).view("<f4").copy())).numpy().reshape(-1)
    same_floats(want, bnb_4bit_dequant(data[:, 10:], absmax, qt, k * 128))
    x, res = quantize_cases(cases, set_name)
    for xi, r in zip(x, res):
        packed, st = BF.quantize_4bit(torch.from_numpy(xi.copy()), blocksize=64, quant_type=qt,
                                      compress_statistics=True)
        offset = np.float32(st.offset.item())
        if r is None:      # refused only where bitsandbytes' own state is not finite
            assert not np.isfinite(offset), xi[:4]
            continue
        ref = np.concatenate([np.array([offset], "<f4").view(np.uint8), st.state2.absmax.numpy().astype("<f4").view(np.uint8),
                              st.absmax.numpy().reshape(-1), packed.numpy().reshape(-1)])
        assert ref.tobytes() == r, (set_name, xi[:4])


def check_bnb_dynamic8(cases):
    x, res = quantize_cases(cases, "BNB_DYNAMIC8")
    q, st = BF.quantize_blockwise(torch.from_numpy(x.reshape(-1).copy()), blocksize=64)
    nb = x.shape[0]
    ref = np.concatenate([st.absmax.numpy().astype("<f4").view(np.uint8).reshape(nb, 4), q.numpy().reshape(nb, 64)], axis=1)
    np.testing.assert_array_equal(all_results(res), ref)
    data, want = dequantize_cases(cases, "BNB_DYNAMIC8")
    absmax = torch.from_numpy(np.ascontiguousarray(data[:, :4]).view("<f4").reshape(-1).copy())
    out = BF.dequantize_blockwise(torch.from_numpy(np.ascontiguousarray(data[:, 4:]).reshape(-1)), absmax=absmax,
                                  code=BF.create_dynamic_map().to(torch.float32), blocksize=64)
    same_floats(want, out.numpy())


@pytest.mark.parametrize("set_name", ["BNB_NF4", "BNB_FP4", "BNB_NF4.nested", "BNB_FP4.nested", "BNB_DYNAMIC8"])
def test_bnb_vectors_are_bitsandbytes(set_name):
    for cases in (read_cases(set_name), npy_cases(set_name)):
        if set_name == "BNB_DYNAMIC8":
            check_bnb_dynamic8(cases)
        elif set_name.endswith(".nested"):
            check_bnb_nested(set_name, cases)
        else:
            check_bnb_4bit(set_name, cases)


# ------------------------------------------------------------------------------ NVFP4

def e4m3_floats(codes):
    return torch.from_numpy(np.ascontiguousarray(codes)).view(torch.float8_e4m3fn).to(torch.float32)


def check_nvfp4_ct(cases):
    x, res = quantize_cases(cases, "NVFP4_CT")
    for xi, r in zip(x, res):
        p, s, g, _, _ = ct_quantize(xi[None, :])
        ref = np.concatenate([np.array([g], "<f4").view(np.uint8), s.reshape(-1), p.reshape(-1)])
        assert r is not None and ref.tobytes() == r, xi[:4]
    data, want = dequantize_cases(cases, "NVFP4_CT")
    for blk, w in zip(data, want):
        vals = unpack_fp4_from_uint8(torch.from_numpy(blk[8:][None, :].copy()), 1, 64, dtype=torch.float32)
        gs = torch.from_numpy(np.ascontiguousarray(blk[:4]).view("<f4").copy())
        ref = ct_dequantize(vals, e4m3_floats(blk[4:8][None, :]), args=CT_NVFP4_ARGS, global_scale=gs,
                            dtype=torch.float32).numpy()
        same_floats(w, ref)


def torchao_nvfp4(x, p=None):
    pt = None if p is None else torch.tensor(p, dtype=torch.float32)
    scales, packed = nvfp4_quantize(torch.from_numpy(x.copy()), 16, pt)
    return packed.view(torch.uint8).numpy(), scales.view(torch.uint8).numpy()


def torchao_nvfp4_dequant(packed, scales, p=None):
    pt = None if p is None else torch.tensor(p, dtype=torch.float32)
    t = NVFP4Tensor(torch.from_numpy(packed.copy()), torch.from_numpy(scales.copy()).view(torch.float8_e4m3fn),
                    16, torch.float32, per_tensor_scale=pt)
    return t.dequantize(torch.float32).numpy()


def check_nvfp4_torchao_2l(cases):
    x, res = quantize_cases(cases, "NVFP4_TORCHAO_2L")
    for xi, r in zip(x, res):
        p = np.float32(per_tensor_amax_to_scale(torch.tensor(np.abs(xi).max())).item())
        if r is None:      # refused only where torchao computes 0 * Inf: p = 0
            assert p == 0, xi[:4]
            continue
        packed, scales = torchao_nvfp4(xi[None, :], p)
        ref = np.concatenate([np.array([p], "<f4").view(np.uint8), scales.reshape(-1), packed.reshape(-1)])
        assert ref.tobytes() == r, xi[:4]
    data, want = dequantize_cases(cases, "NVFP4_TORCHAO_2L")
    for blk, w in zip(data, want):
        p = np.ascontiguousarray(blk[:4]).view("<f4")[0]
        same_floats(w, torchao_nvfp4_dequant(blk[8:][None, :], blk[4:8][None, :], p))


def check_nvfp4_modelopt(cases):
    x, res = quantize_cases(cases, "NVFP4_MODELOPT")
    for xi, r in zip(x, res):
        qt, s, s2 = NVFP4QTensor.quantize(torch.from_numpy(xi[None, :].copy()), 16)
        if r is None:      # refused only where ModelOpt's block scales are 0 / 0: an all-zero tensor
            assert s2.item() == 0 and np.isnan(s.to(torch.float32).numpy()).all(), xi[:4]
            continue
        ref = np.concatenate([np.array([s2.item()], "<f4").view(np.uint8), s.view(torch.uint8).numpy().reshape(-1),
                              qt._quantized_data.numpy().reshape(-1)])
        assert ref.tobytes() == r, xi[:4]
    data, want = dequantize_cases(cases, "NVFP4_MODELOPT")
    for blk, w in zip(data, want):
        qt = NVFP4QTensor((1, 64), torch.float32, torch.from_numpy(blk[8:][None, :].copy()))
        s = torch.from_numpy(blk[4:8][None, :].copy()).view(torch.float8_e4m3fn)
        s2 = torch.tensor(np.ascontiguousarray(blk[:4]).view("<f4")[0])
        same_floats(w, qt.dequantize(dtype=torch.float32, scale=s, double_scale=s2, block_sizes={-1: 16}).numpy())


@pytest.mark.parametrize("set_name", ["NVFP4_CT", "NVFP4_TORCHAO_2L", "NVFP4_MODELOPT"])
def test_nvfp4_vectors_are_the_oracles(set_name):
    check = {"NVFP4_CT": check_nvfp4_ct, "NVFP4_TORCHAO_2L": check_nvfp4_torchao_2l,
             "NVFP4_MODELOPT": check_nvfp4_modelopt}[set_name]
    check(read_cases(set_name))
    check(npy_cases(set_name))


# ------------------------------------------------------------------------------ the checks can fail

def _flip(cases, op, fmt):
    """The cases with one byte of one result flipped: the middle `op` case of format `fmt`."""
    idx = [i for i, c in enumerate(cases) if c[0] == fmt and c[1] == op and c[3] is not None]
    i = idx[len(idx) // 2]
    f, o, inp, r = cases[i]
    r = bytearray(r)
    r[len(r) // 2 if op == "dequantize" else 0] ^= 0x01
    return cases[:i] + [(f, o, inp, bytes(r))] + cases[i + 1:]


ALTERED = [   # (set, the format whose line is altered, the check, ops)
    ("MXFP8_E4M3", "MXFP8_E4M3.rceil", lambda c: check_mx("MXFP8_E4M3", "rceil", c), ["quantize"]),
    ("MXFP8_E4M3", "MXFP8_E4M3", lambda c: check_mx("MXFP8_E4M3", "ocp", c), ["quantize", "dequantize"]),
    ("MXFP6_E2M3", "MXFP6_E2M3.compressed-tensors", lambda c: check_mx_ct("MXFP6_E2M3", c), ["quantize"]),
    ("MXINT8", "MXINT8", check_mxint8, ["quantize", "dequantize"]),
    ("BNB_NF4", "BNB_NF4", lambda c: check_bnb_4bit("BNB_NF4", c), ["quantize", "dequantize"]),
    ("BNB_NF4.nested", "BNB_NF4.nested", lambda c: check_bnb_nested("BNB_NF4.nested", c), ["quantize", "dequantize"]),
    ("BNB_DYNAMIC8", "BNB_DYNAMIC8", check_bnb_dynamic8, ["quantize", "dequantize"]),
    ("NVFP4_CT", "NVFP4_CT", check_nvfp4_ct, ["quantize", "dequantize"]),
    ("NVFP4_TORCHAO_2L", "NVFP4_TORCHAO_2L", check_nvfp4_torchao_2l, ["quantize", "dequantize"]),
    ("NVFP4_MODELOPT", "NVFP4_MODELOPT", check_nvfp4_modelopt, ["quantize", "dequantize"]),
]


@pytest.mark.parametrize("form", ["cases.txt.gz", "npy"])
@pytest.mark.parametrize("set_name,fmt,check,op", [(a, b, c, op) for a, b, c, ops in ALTERED for op in ops],
                         ids=lambda v: v if isinstance(v, str) else "")
def test_an_altered_vector_is_caught(set_name, fmt, check, op, form):
    """One bit of one committed result changed (a scale byte of a quantized block, a byte of a
    decoded value): the oracle check fails."""
    cases = read_cases(set_name) if form == "cases.txt.gz" else npy_cases(set_name)
    if op == "dequantize":
        fmt = set_name            # decoded under the set's name
    with pytest.raises(AssertionError):
        check(_flip(cases, op, fmt))
