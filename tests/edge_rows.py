"""Rows that exercise the lattice quantizers' zero handling. Private to the tests."""
import numpy as np


def zero_sub_blocks(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Four rows of 512 (two super-blocks) and an importance matrix, drawn from rng: all-zero
    sub-blocks among non-zero ones, a run of -0, a row that is zero but for one value, and a
    zero second half."""
    x = (rng.standard_normal((4, 512)) * 0.1).astype(np.float32)
    x[0, 0:64] = 0
    x[1, 32:48] = 0
    x[1, 300:400] = -0.0
    x[2, :] = 0
    x[2, 40] = 1.0
    x[3, 256:] = 0
    im = rng.random(512).astype(np.float32)
    return x, im
