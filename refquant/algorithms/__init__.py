"""Calibration-based post-training quantization of one linear layer, in readable NumPy.

Every function takes a weight W of shape (N, K) — N outputs, K inputs, torch.nn.Linear's
layout, y = x @ W.T — and, where the method uses data, calibration activations X (n, K) or the
Hessian H = XᵀX (K, K). Each is deterministic: the same inputs give the same codes.

    rtn.rtn            round to nearest on the affine grid (the baseline)
    gptq.gptq          GPTQ (OPTQ): error feedback through the inverse Hessian's Cholesky factor
    awq.awq            AWQ: per-input-channel scale search (and an optional clipping search)
    smoothquant        SmoothQuant: migrate activation outliers into the weights, W8A8
"""
from .rtn import QuantizedLinear, rtn, output_error  # noqa: F401
from .gptq import gptq, hessian  # noqa: F401
from .awq import awq  # noqa: F401
from .smoothquant import smooth_scales, smoothquant  # noqa: F401
