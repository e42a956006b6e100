"""Weights of a model: read from GGUF (or a Hugging Face safetensors checkpoint converted to the
GGUF layout), kept in their stored format, dequantized on use.

A `Linear` holds one weight matrix (out_features, in_features) as its GGUF bytes and decodes it
with the spec (`GGUFFile.dequantize`) when the forward needs it, so a model in any refquant
format runs without a float copy of every tensor. Every linear layer's input can be observed
with `Weights.hooks` (name -> callback(name, x)): the calibration algorithms and the importance
matrix capture (refquant.model.imatrix) use it.

`Weights.with_tensors` gives a copy whose named tensors are replaced by float arrays (a model
whose weights went through a quantizer and back: refquant.pipelines.quality). A replaced linear
layer may also carry its encoded form for a refquant.gemm scheme (`encoded`: name ->
(scheme, weight), "W4A16" or "FP8"); with `matmul_backend` set, its product runs as that
backend's `matmul(scheme, x, weight)` on the codes instead of BLAS on the decoded array.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from ..errors import FormatError
from ..ggml.dot import VEC_DOT_TYPE as DOT_VEC_DOT_TYPE
from ..io.gguf import GGUFFile

F32 = np.float32

# The type ggml's CPU backend rounds a matmul's activations to before the dot product: the
# quantized weight types' `vec_dot_type` (refquant.ggml.dot), and F16/BF16 for those weights.
VEC_DOT_TYPE = {**DOT_VEC_DOT_TYPE, "F16": "F16", "BF16": "BF16", "F32": "F32"}


def quantize_activations(x: np.ndarray, vec_dot_type: str, variant: str = "x86") -> np.ndarray:
    """x (rows, n) float32 as ggml's CPU backend hands it to the dot product: rounded to
    `vec_dot_type` (Q8_0, Q8_1, Q8_K: quantized then decoded; F16/BF16: rounded).

    variant: which Q8_0/Q8_1 activation quantizer (refquant.ggml.dot.quantize_activation):
    "x86", the AVX/AVX2 `quantize_row_q8_0`/`_q8_1` that llama.cpp's CPU backend runs on x86
    (multiplier 127/amax, ties to even), or "ref", the scalar reference (1/d, ties away from
    zero). Q8_K has one quantizer on every build (x86's calls the reference)."""
    import refquant
    if vec_dot_type == "F32":
        return x
    if vec_dot_type == "F16":
        return x.astype(np.float16).astype(F32)
    if vec_dot_type == "BF16":
        from ..numerics import bf16_bits_to_fp32, fp32_to_bf16_bits
        return bf16_bits_to_fp32(fp32_to_bf16_bits(x))
    x2 = np.ascontiguousarray(x, dtype=F32).reshape(-1, x.shape[-1])
    if vec_dot_type in ("Q8_0", "Q8_1"):
        from ..ggml.dot import quantize_activation
        q = quantize_activation(x2, vec_dot_type, variant)
    else:
        q = refquant.quantize(x2, vec_dot_type)
    return refquant.dequantize(q, vec_dot_type).reshape(x.shape)


class Linear:
    """y = x @ W.T for a weight W stored as GGUF bytes. `chunk_rows` bounds the float copy made
    at a time (the 262144-row Gemma embedding is decoded 16384 rows at a time)."""

    def __init__(self, name: str, source: "Weights", type_name: str, shape: tuple[int, int]):
        self.name, self.source, self.type_name = name, source, type_name
        self.out_features, self.in_features = shape

    def weight(self, rows: slice | None = None) -> np.ndarray:
        return self.source.dequantize(self.name, rows)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        src = self.source
        for hook in src.hooks.values():
            hook(self.name, x)
        dt = src.dtype
        enc = src.encoded.get(self.name) if src.matmul_backend is not None else None
        if enc is not None and dt == F32:
            x2 = np.ascontiguousarray(x, dtype=F32).reshape(-1, self.in_features)
            y = src.matmul_backend.matmul(enc[0], x2, enc[1])
            return y.reshape(x.shape[:-1] + (self.out_features,))
        if src.act_quant and dt == F32 and self.type_name in ("Q4_1", "Q5_1") and VEC_DOT_TYPE[self.type_name] == "Q8_1":
            return self._q8_1_product(x)
        if src.act_quant and dt == F32:
            x = quantize_activations(x, VEC_DOT_TYPE.get(self.type_name, "F32"), src.act_variant)
        acc = src.accumulate or dt
        x = x.astype(acc, copy=False)
        if self.out_features <= src.chunk_rows:
            return (x @ self.weight().astype(acc, copy=False).T).astype(dt, copy=False)
        out = np.empty(x.shape[:-1] + (self.out_features,), dt)
        for r0 in range(0, self.out_features, src.chunk_rows):
            r1 = min(r0 + src.chunk_rows, self.out_features)
            out[..., r0:r1] = x @ self.weight(slice(r0, r1)).astype(acc, copy=False).T
        return out


    def _q8_1_product(self, x: np.ndarray) -> np.ndarray:
        """ggml_vec_dot_q4_1_q8_1 / _q5_1_q8_1 per block: d_w*d_x*sum(q_w*q_x) + m_w*s_x, where
        s_x = fp16(d_x * sum(q_x)) is the F16 sum Q8_1 stores: the minimum's term is taken with
        that rounded sum, not with the decoded activations (a visible difference, ~2^-11
        relative, on the largest term of the dot product)."""
        from ..ggml.blocks import u16
        from ..ggml.dot import quantize_activation
        from ..numerics import fp16_bits_to_fp32
        from ..registry import get_format
        fmt = get_format(self.type_name)
        ops = fmt.vec_dot.decode(np.asarray(self.source.raw_bytes(self.name)).reshape(-1, fmt.type_size))
        nb = self.in_features // 32
        dq = (ops["q"].astype(F32) * ops["d"][:, None]).reshape(self.out_features, -1)   # codes, d, m as vec_dot reads them
        m = ops["m"].reshape(self.out_features, nb)
        x2 = np.ascontiguousarray(x, dtype=F32).reshape(-1, self.in_features)
        qx = quantize_activation(x2, "Q8_1", self.source.act_variant).reshape(-1, 36)
        g = get_format("Q8_1").layout.split(qx)
        xd = (g["qs"].view(np.int8).astype(F32) * fp16_bits_to_fp32(u16(g["d"]))[:, None]).reshape(x2.shape)
        s = fp16_bits_to_fp32(u16(g["s"])).reshape(-1, nb)
        acc = self.source.accumulate or F32
        y = xd.astype(acc) @ dq.T.astype(acc) + s.astype(acc) @ m.T.astype(acc)
        return y.astype(F32).reshape(x.shape[:-1] + (self.out_features,))


class Weights:
    """The tensors of one model, by their llama.cpp names, decoded on use.

    dtype: float32 (default) or float64 for the whole forward.
    act_quant: round each matmul's input to the weight's vec_dot_type, as ggml's CPU backend
    does (float32 only), with the Q8_0/Q8_1 quantizer `act_variant` ("x86": what llama.cpp runs
    on x86; "ref": ggml's scalar reference).
    cache: keep decoded matrices (faster, float32 copies of every weight in memory).
    accumulate: float64 sums every linear layer's products in float64 and rounds each output
    once to dtype (the reference against which summation-order effects are measured,
    spec/model.md); None sums in dtype through BLAS."""

    def __init__(self, tensors: dict[str, tuple[str, tuple, Callable]], metadata: dict,
                 dtype=F32, act_quant: bool = False, act_variant: str = "x86", cache: bool = True,
                 chunk_rows: int = 16384, raw: dict | None = None, accumulate=None):
        self._tensors = tensors       # name -> (type_name, numpy shape, decode(rows) -> f32)
        self.metadata = metadata
        self.dtype = np.dtype(dtype).type
        if self.dtype not in (np.float32, np.float64):
            raise FormatError(f"the forward runs in float32 or float64, not {np.dtype(dtype)}")
        self.act_quant = act_quant
        self.act_variant = act_variant
        self.accumulate = None if accumulate is None else np.dtype(accumulate).type
        self.cache = cache
        self.chunk_rows = chunk_rows
        self.hooks: dict[str, Callable[[str, np.ndarray], None]] = {}
        self._cached: dict[str, np.ndarray] = {}
        self.raw = raw or {}
        self.encoded: dict[str, tuple] = {}
        self.matmul_backend = None

    @classmethod
    def from_gguf(cls, path, **kw) -> "Weights":
        from ..io.split import open_gguf
        f = open_gguf(path)  # a split model is read as one
        tensors = {}
        for t in f.tensors:
            tensors[t.name] = (t.type_name, tuple(t.shape), _gguf_decoder(f, t.name))
        w = cls(tensors, f.metadata, raw={t.name: (lambda n=t.name: f.raw(n)) for t in f.tensors}, **kw)
        w.file = f
        return w

    def names(self):
        return self._tensors.keys()

    def with_tensors(self, arrays: dict[str, np.ndarray], encoded: dict[str, tuple] | None = None,
                     matmul_backend=None) -> "Weights":
        """A copy whose tensors `arrays` (name -> float array of the same shape) replace the
        stored ones; the others are shared. `encoded` (name -> (scheme, weight)) and
        `matmul_backend` (a refquant backend or its name): see the module docstring."""
        tensors = dict(self._tensors)
        for name, a in arrays.items():
            if name not in tensors:
                raise FormatError(f"the model has no tensor {name!r}")
            if tuple(a.shape) != tuple(tensors[name][1]):
                raise FormatError(f"{name}: replacement has shape {a.shape}, the tensor {tensors[name][1]}")
            a = np.asarray(a, F32)
            tensors[name] = ("F32", tuple(a.shape), lambda rows=None, a=a: a if rows is None else a[rows])
        w = Weights(tensors, self.metadata, dtype=self.dtype, act_quant=self.act_quant, cache=False,
                    chunk_rows=self.chunk_rows)
        w._cached = {n: v for n, v in self._cached.items() if n not in arrays}
        w.encoded = dict(encoded or {})
        if matmul_backend is not None:
            from ..backend import get_backend
            w.matmul_backend = get_backend(matmul_backend)
        return w

    def __contains__(self, name):
        return name in self._tensors

    def type_name(self, name):
        return self._tensors[name][0]

    def shape(self, name):
        return self._tensors[name][1]

    def dequantize(self, name: str, rows: slice | None = None) -> np.ndarray:
        if name not in self._tensors:
            raise FormatError(f"the model has no tensor {name!r}")
        if rows is None and name in self._cached:
            return self._cached[name]
        v = self._tensors[name][2](rows)
        if rows is None and self.cache and v.size <= self.chunk_rows * 4096:
            self._cached[name] = v
        return v

    def replace(self, name: str, value: np.ndarray) -> None:
        """Put a float tensor in place of `name` (same shape), e.g. a layer's weight after it has
        been quantized and decoded again; the forward reads it from then on."""
        if name not in self._tensors:
            raise FormatError(f"the model has no tensor {name!r}")
        v = np.ascontiguousarray(value, dtype=F32)
        if v.shape != tuple(self._tensors[name][1]):
            raise FormatError(f"{name}: replacement has shape {v.shape}, the tensor {self._tensors[name][1]}")
        self._tensors[name] = ("F32", v.shape, lambda rows=None: v if rows is None else v[rows])
        self._cached.pop(name, None)
        self.raw.pop(name, None)

    def raw_bytes(self, name: str) -> np.ndarray:
        """The stored bytes (rows, row_bytes) of a tensor."""
        if name not in self.raw:
            raise FormatError(f"no stored bytes for {name!r}")
        return self.raw[name]()

    def get(self, name: str) -> np.ndarray:
        return self.dequantize(name).astype(self.dtype, copy=False)

    def linear(self, name: str) -> Linear:
        shape = self.shape(name)
        if len(shape) != 2:
            raise FormatError(f"{name}: a linear layer's weight is 2-D, this one has shape {shape}")
        return Linear(name, self, self.type_name(name), shape)

    def embedding_rows(self, name: str, ids: np.ndarray) -> np.ndarray:
        """Rows `ids` of an embedding matrix, decoded one distinct row at a time (get_rows)."""
        uniq, inv = np.unique(ids, return_inverse=True)
        f = getattr(self, "file", None)
        if f is not None and name not in self._cached and name in self.raw:
            from ..backend import SPEC
            t = f.info(name)
            raw = np.asarray(f.raw(name))[uniq]
            from ..io.gguf import _PLAIN_NUMPY
            if t.ggml_type in _PLAIN_NUMPY:
                rows = raw.view(_PLAIN_NUMPY[t.ggml_type]).astype(F32).reshape(len(uniq), -1)
            else:
                rows = SPEC.dequantize(raw, t.ggml_type).reshape(len(uniq), -1)
        else:
            rows = self.dequantize(name)[uniq]
        return rows[inv].astype(self.dtype, copy=False)


def _gguf_decoder(f: GGUFFile, name: str):
    def decode(rows=None):
        from ..backend import SPEC
        from ..io.gguf import _PLAIN_NUMPY
        t = f.info(name)
        raw = np.asarray(f.raw(name))
        if rows is not None:
            raw = raw[rows]
        shape = (raw.shape[0],) + tuple(t.shape[1:]) if rows is not None else tuple(t.shape)
        if t.ggml_type in _PLAIN_NUMPY:
            return raw.view(_PLAIN_NUMPY[t.ggml_type]).astype(F32).reshape(shape)
        return SPEC.dequantize(raw, t.ggml_type).reshape(shape)
    return decode
