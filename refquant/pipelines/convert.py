"""One ggml type everywhere: a float GGUF model's quantizable weights all in one type.

    quantize_file(IN, OUT, "MXFP4")   every quantizable weight in that type; the rest kept

A weight is quantizable when it has two or more dimensions and its rows are a whole number of
the type's blocks; other tensors (norms, biases) are written as they are. llama.cpp's file
types (Q4_K_M, ..., and the float ones, which are also how a model is dequantized) are
`refquant.pipelines.recipes`: `quantize_model`, `dequantize_model`.
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from ..backend import get_backend
from ..errors import FileFormatError, FormatError
from ..io.gguf import KV, TensorInfo
from ..io.split import SPLIT_KEYS, open_gguf
from ..registry import get_format
from .recipes import FILE_TYPES

FLOAT_TYPES = ("F32", "F16", "BF16")
FILE_TYPE_KEY = "general.file_type"


def _with_file_type(kvs: list[KV], name: str) -> list[KV]:
    """general.file_type set to llama.cpp's id for a file of `name` (its LLAMA_FTYPE_MOSTLY_*,
    where that file type's default type is `name`), or removed where there is none."""
    from gguf import GGUFValueType
    out = [kv for kv in kvs]
    ft = FILE_TYPES.get(name)
    ftype = ft.id if ft is not None and ft.default == name else None
    for i, kv in enumerate(out):
        if kv.key == FILE_TYPE_KEY:
            if ftype is None:
                del out[i]
            else:
                out[i] = KV(FILE_TYPE_KEY, GGUFValueType.UINT32, ftype)
            return out
    if ftype is not None:
        out.append(KV(FILE_TYPE_KEY, GGUFValueType.UINT32, ftype))
    return out


def is_quantizable(t: TensorInfo, block_size: int) -> bool:
    return len(t.shape) >= 2 and t.shape[-1] > 0 and t.shape[-1] % block_size == 0


def quantize_file(src_path, dst_path, qtype: str, imatrix: Optional[dict[str, np.ndarray]] = None,
                  backend: str = "numpy", progress: Optional[Callable[[TensorInfo], None]] = None,
                  workers: Optional[int] = 1, scheduler: Optional[str] = None,
                  threads: Optional[int] = None) -> None:
    """Quantize every quantizable weight of a float GGUF model to `qtype`; `workers`,
    `scheduler` and `threads` as recipes.quantize_model takes them."""
    from .recipes import _SLAB_ELEMENTS, Kept, Slab, write_tasks
    from .scale import Runner
    fmt = get_format(qtype)
    if not fmt.can_quantize or fmt.ggml_type is None:
        raise FormatError(f"{fmt.name} is not a GGUF type refquant can quantize to")
    be = get_backend(backend)
    with open_gguf(src_path) as src:  # a split model is read as one and written as one file
        for t in src.tensors:
            if t.type_name not in FLOAT_TYPES:
                raise FileFormatError(f"{src_path}: tensor {t.name!r} is already quantized ({t.type_name}); "
                                      f"dequantize the model first (refquant dequantize IN OUT)")
        infos = [TensorInfo(t.name, fmt.ggml_type if is_quantizable(t, fmt.block_size) else t.ggml_type, t.shape)
                 for t in src.tensors]
        bname = backend if isinstance(backend, str) else be
        part_of = getattr(src, "part", lambda name: src)
        work = {}
        for t, o in zip(src.tensors, infos):
            part = part_of(t.name)
            ncols = t.shape[-1] if t.shape else 1
            at = part.data_offset + t.offset
            rows_at = max(1, _SLAB_ELEMENTS // max(ncols, 1))
            row_bytes = t.nbytes // max(t.n_elements // max(ncols, 1), 1)
            if o.ggml_type != fmt.ggml_type:
                work[t.name] = Kept(str(part.path), at, t.nbytes, max(rows_at * row_bytes, 1))
                continue
            nrows = t.n_elements // ncols
            im = None if imatrix is None else imatrix.get(t.name)
            work[t.name] = [Slab(str(part.path), t.name, at + r * row_bytes, min(rows_at, nrows - r) * row_bytes,
                                 min(rows_at, nrows - r), r, t.type_name, fmt.name, im, bname, recipe=False)
                            for r in range(0, nrows, rows_at)]
        kvs = [kv for kv in src.kvs if kv.key not in SPLIT_KEYS]
        with Runner(workers, scheduler, threads) as rn:
            write_tasks(rn, [(dst_path, _with_file_type(kvs, fmt.name), infos)], work, progress or (lambda t: None))
