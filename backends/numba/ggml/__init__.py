"""Numba twins of refquant/ggml/*: same module names, same functions, same results."""
