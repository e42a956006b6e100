"""Input checking shared by the public functions and every backend: shapes, dtypes, lengths,
non-finite values. Errors name the offending value and what was expected."""
from __future__ import annotations

import numpy as np

from .errors import InputError
from .registry import IMATRIX_REQUIRED, Format


def all_finite(x: np.ndarray) -> bool:
    """Whether every value of a float array is finite, in two vectorised reductions and no
    temporary array: NaN propagates through min and max, and an infinity is the max or the min."""
    if x.size == 0:
        return True
    return bool(np.isfinite(x.min()) and np.isfinite(x.max()))


def check_floats(x, fmt: Format, what: str = "x") -> np.ndarray:
    """x: float32 array (..., n) with n a multiple of the block size, all finite."""
    if not isinstance(x, np.ndarray):
        raise InputError(f"{fmt.name}: {what} must be a numpy.ndarray of float32, got {type(x).__name__}")
    if x.dtype != np.float32:
        raise InputError(f"{fmt.name}: {what} must have dtype float32, got {x.dtype} "
                         f"(convert explicitly, e.g. {what}.astype(np.float32))")
    if x.ndim == 0:
        raise InputError(f"{fmt.name}: {what} must have at least one dimension, got a scalar")
    n = x.shape[-1]
    if n == 0 or n % fmt.block_size:
        raise InputError(f"{fmt.name}: the last dimension of {what} is {n}; it must be a positive "
                         f"multiple of the block size {fmt.block_size}")
    if not all_finite(x):
        idx = tuple(int(i) for i in np.argwhere(~np.isfinite(x))[0])
        row, col = idx[:-1], idx[-1]
        raise InputError(f"{fmt.name}: {what} has a non-finite value {float(x[idx])} at row {row if len(row) != 1 else row[0]}, "
                         f"column {col}; ggml's output for NaN and Inf is undefined, so refquant refuses it")
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
