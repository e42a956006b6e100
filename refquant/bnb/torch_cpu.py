"""The pieces of PyTorch's CPU arithmetic that bitsandbytes' results depend on.

bitsandbytes builds its code tables with `torch.linspace` and takes the double-quantization
offset with `Tensor.mean()`; on the CPU both have a fixed evaluation order, reproduced here
in float32 (PyTorch 2.x, aten/src/ATen/native/cpu: RangeFactoriesKernel.cpp, SumKernel.cpp,
TensorIteratorReduce.cpp).
"""
from __future__ import annotations

import numpy as np

from ..numerics import F32, fma_f32

# at::internal::GRAIN_SIZE: below this many elements a reduction runs on one thread.
GRAIN_SIZE = 32768
# Lanes of the float accumulator vector in the sum kernel. PyTorch's CPU sum uses 8 lanes on
# every build tested (DEFAULT, AVX2 and AVX512 dispatch), so the order does not depend on the ISA.
SUM_LANES = 8


def linspace_f32(start: float, end: float, steps: int) -> np.ndarray:
    """torch.linspace(start, end, steps, dtype=torch.float32) on the CPU.

    step = (end - start) / (steps - 1) in float32; the first half counts up from start and the
    second half down from end, each value one fused multiply-add:
        i <  steps // 2:  fma(step, i, start)
        i >= steps // 2:  fma(-step, steps - 1 - i, end)
    """
    s, e = F32(start), F32(end)
    if steps == 1:
        return np.array([s], F32)
    step = F32((e - s) / F32(steps - 1))
    i = np.arange(steps)
    half = steps // 2
    up = fma_f32(np.full(steps, step), i.astype(F32), np.full(steps, s))
    down = fma_f32(np.full(steps, -step), (steps - 1 - i).astype(F32), np.full(steps, e))
    return np.where(i < half, up, down).astype(F32)


def _ceil_log2(x: int) -> int:
    return 0 if x <= 1 else int(x - 1).bit_length()


def _multi_row_sum(rows: np.ndarray) -> np.ndarray:
    """multi_row_sum: rows (size, ...) summed into a 4-level cascade of float32 accumulators.

    Level 0 takes 2**p consecutive rows (p = max(4, ceil(log2 size) / 4)); after each such
    chunk it is added into level 1 and cleared, level 1 into level 2 every 2**p chunks, and so
    on; the leftover rows go into level 0 and the levels are finally added 1, 2, 3 into 0.
    """
    size = rows.shape[0]
    levels = 4
    power = max(4, _ceil_log2(size) // levels)
    step = 1 << power
    mask = step - 1
    acc = np.zeros((levels,) + rows.shape[1:], F32)
    i = 0
    while i + step <= size:
        for _ in range(step):
            acc[0] += rows[i]
            i += 1
        for j in range(1, levels):
            acc[j] += acc[j - 1]
            acc[j - 1] = 0
            if i & (mask << (j * power)):
                break
    while i < size:
        acc[0] += rows[i]
        i += 1
    for j in range(1, levels):
        acc[0] += acc[j]
    return acc[0]


def _row_sum(x: np.ndarray) -> np.ndarray:
    """row_sum: x (size, ...) as 4 interleaved partial sums (x[4k + j] into partial j), the
    leftover rows into partial 0, then partial 0 += partial 1, 2, 3."""
    size = x.shape[0]
    n4 = size // 4
    if n4:
        part = _multi_row_sum(x[:n4 * 4].reshape((n4, 4) + x.shape[1:]))
    else:
        part = np.zeros((4,) + x.shape[1:], F32)
    for i in range(n4 * 4, size):
        part[0] += x[i]
    for k in range(1, 4):
        part[0] += part[k]
    return part[0]


def _chunk_sum(x: np.ndarray) -> F32:
    """One thread's share: vectors of SUM_LANES floats summed lane-wise by row_sum, the tail
    elements added one by one to a scalar, then the lanes added to it in order."""
    n = x.shape[0]
    if n < SUM_LANES:
        return F32(_row_sum(x))
    nvec = n // SUM_LANES
    lanes = _row_sum(x[:nvec * SUM_LANES].reshape(nvec, SUM_LANES) + F32(0))  # load: 0 + x
    acc = F32(0)
    for k in range(nvec * SUM_LANES, n):
        acc = F32(acc + x[k])
    for k in range(SUM_LANES):
        acc = F32(acc + lanes[k])
    return acc


def sum_f32(x: np.ndarray, num_threads: int = 1) -> F32:
    """`x.sum()` of a contiguous 1-D float32 tensor on the CPU with `num_threads` threads.

    Up to GRAIN_SIZE elements (or one thread) the whole vector is one chunk. Beyond, the work is
    split as at::parallel_for splits it over OpenMP threads (t = min(threads, ceil(n / GRAIN)),
    chunks of ceil(n / t)), each chunk summed into its own slot of a zeroed buffer of
    `num_threads` floats, and the buffer summed the same way.
    """
    x = np.ascontiguousarray(x, dtype=F32).reshape(-1)
    n = x.shape[0]
    if n < GRAIN_SIZE or num_threads == 1:
        return F32(F32(0) + _chunk_sum(x))
    nt = min(num_threads, -(-n // GRAIN_SIZE))
    chunk = -(-n // nt)
    buf = np.zeros(num_threads, F32)
    for t in range(nt):
        lo = t * chunk
        if lo < n:
            buf[t] = F32(0) + _chunk_sum(x[lo:min(n, lo + chunk)])
    return F32(F32(0) + _chunk_sum(buf))


def mean_f32(x: np.ndarray, num_threads: int = 1) -> F32:
    """`x.mean()` on the CPU: the sum above divided by the element count, in float32."""
    x = np.asarray(x, dtype=F32).reshape(-1)
    return F32(sum_f32(x, num_threads) / F32(x.shape[0]))
