"""Input checking shared by the public functions and every backend: shapes, dtypes, lengths,
non-finite values. Errors name the offending value and what was expected."""
from __future__ import annotations

from typing import Optional

import ml_dtypes
import numpy as np

from .errors import InputError
from .registry import IMATRIX_REQUIRED, Format

_GGML_NAN = "ggml's output for NaN and Inf is undefined, so refquant refuses it"
_DTYPE_NAMES = {np.dtype(np.float32): "float32", np.dtype(np.float16): "float16",
                np.dtype(ml_dtypes.bfloat16): "bfloat16"}


def all_finite(x: np.ndarray) -> bool:
    """Whether every value of a float array is finite, in two vectorised reductions and no
    temporary array: NaN propagates through min and max, and an infinity is the max or the min."""
    if x.size == 0:
        return True
    return bool(np.isfinite(x.min()) and np.isfinite(x.max()))


def _where(idx: tuple) -> str:
    """An element's place as the messages name it: column c; row r, column c; row (i, j), column c."""
    row, col = idx[:-1], idx[-1]
    if not row:
        return f"column {col}"
    return f"row {row[0] if len(row) == 1 else row}, column {col}"


def check_floats(x, who, what: str = "x", *, block: Optional[int] = None, dtypes: tuple = (np.float32,),
                 why: Optional[str] = None, finite=all_finite) -> np.ndarray:
    """The one input check of float arrays: `x` a numpy array of one of `dtypes` (float32 unless
    said) with at least one dimension and no NaN or Inf; with `block`, its last dimension a
    positive multiple of the block size (otherwise: not empty). `who` names the caller in the
    one-line message: a format record (its name, and its block size unless `block` is given) or
    a string. `why` ends the message on a non-finite value (a record's default: ggml's output for
    NaN and Inf is undefined). `finite`: the test of the float32 values (a backend may pass its
    own, e.g. on several threads; same answer as all_finite). Returns x as it is."""
    if isinstance(who, Format):
        block = who.block_size if block is None else block
        why = _GGML_NAN if why is None else why
        who = who.name
    names = [_DTYPE_NAMES.get(np.dtype(d), str(np.dtype(d))) for d in dtypes]
    names = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]
    if not isinstance(x, np.ndarray):
        raise InputError(f"{who}: {what} must be a numpy.ndarray of {names}, got {type(x).__name__}")
    if x.dtype not in dtypes:
        raise InputError(f"{who}: {what} must have dtype {names}, got {x.dtype} "
                         f"(convert explicitly, e.g. {what}.astype(np.float32))")
    if x.ndim == 0:
        raise InputError(f"{who}: {what} must have at least one dimension, got a scalar")
    n = x.shape[-1]
    if block is not None and (n == 0 or n % block):
        raise InputError(f"{who}: the last dimension of {what} is {n}; it must be a positive "
                         f"multiple of the block size {block}")
    if block is None and x.size == 0:
        raise InputError(f"{who}: {what} is empty (shape {x.shape})")
    xf = x if x.dtype == np.float32 else x.astype(np.float32)
    if not finite(xf):
        idx = tuple(int(i) for i in np.argwhere(~np.isfinite(xf))[0])
        raise InputError(f"{who}: {what} has a non-finite value {float(x[idx])} at {_where(idx)}"
                         + (f"; {why}" if why else ""))
    return x


def check_imatrix(imatrix, fmt: Format, n: int):
    if imatrix is None:
        if fmt.imatrix == IMATRIX_REQUIRED:
            raise InputError(f"{fmt.name} requires an importance matrix (imatrix=...), none was given")
        return None
    im = np.asarray(imatrix)
    if im.dtype != np.float32:
        raise InputError(f"{fmt.name}: imatrix must have dtype float32, got {im.dtype}")
    if im.shape != (n,):
        raise InputError(f"{fmt.name}: imatrix must have shape ({n},) (one weight per column), got {im.shape}")
    if not all_finite(im):
        i = int(np.argwhere(~np.isfinite(im))[0][0])
        raise InputError(f"{fmt.name}: imatrix has a non-finite value {float(im[i])} at column {i}")
    neg = im < 0
    if neg.any():   # importance weights are sums of squares: a negative one inverts the error searches
        i = int(np.argwhere(neg)[0][0])
        raise InputError(f"{fmt.name}: imatrix has a negative value {float(im[i])} at column {i}; importance "
                         f"weights are sums of squares, >= 0")
    return np.ascontiguousarray(im)


def check_bytes(data, fmt: Format) -> np.ndarray:
    """data: uint8 array (..., nbytes) with nbytes a multiple of the block's byte size."""
    if not isinstance(data, np.ndarray):
        raise InputError(f"{fmt.name}: data must be a numpy.ndarray of uint8, got {type(data).__name__}")
    if data.dtype != np.uint8:
        raise InputError(f"{fmt.name}: data must have dtype uint8 (the bytes as ggml stores them), got {data.dtype}")
    if data.ndim == 0:
        raise InputError(f"{fmt.name}: data must have at least one dimension, got a scalar")
    nb = data.shape[-1]
    if nb == 0 or nb % fmt.type_size:
        raise InputError(f"{fmt.name}: the last dimension of data is {nb} bytes; it must be a positive "
                         f"multiple of the block's {fmt.type_size} bytes")
    return data


def quantized_shape(shape: tuple, fmt: Format) -> tuple:
    return shape[:-1] + (shape[-1] // fmt.block_size * fmt.type_size,)


def dequantized_shape(shape: tuple, fmt: Format) -> tuple:
    return shape[:-1] + (shape[-1] // fmt.type_size * fmt.block_size,)
