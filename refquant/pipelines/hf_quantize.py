"""Quantize a Hugging Face safetensors checkpoint's linear layers into a checkpoint a real loader
reads: `refquant quantize MODEL_DIR OUT_DIR --method rtn|gptq|awq|smoothquant --bits B --group-size G
--format gptq|gptq_v2|awq|awq-gemv|compressed-tensors|fp8-block|nvfp4|modelopt-fp8|modelopt-nvfp4`,
or `--scheme PRESET` for any compressed-tensors 0.20.1 preset (preset_tensors; W4A16, FP8_DYNAMIC,
NVFP4, MXFP4, MXFP6A8, ...), with `--transform hadamard|random-hadamard` for SpinQuant's R2
rotation fused offline (rotate_r2).

The layers quantized are those `targets` selects and `ignore` leaves, as llm-compressor names
them (refquant.layouts.targets; default every linear layer but the embeddings and lm_head: any
architecture, BERT's `encoder.layer.N` as Llama's `model.layers.N`); the rest stay as they are.
GPTQ, AWQ and SmoothQuant take their data from a calibration text,
`--calibration TEXT`: the model runs on it block by block and each linear is quantized on the
inputs it receives, blocks before it already quantized (spec/algorithms/calibration.md;
SmoothQuant writes W8A8 compressed-tensors, its scales folded into the RMS norms). GPTQ and AWQ
also read ready-made calibration activations from `--activations DIR`:

    DIR/<module>.npy     the inputs of linear <module> (its weight is <module>.weight), a 2-D
                         float array (n_tokens, in_features) in NumPy's .npy format — any framework
                         can write it (torch: np.save(path, x.float().numpy()) from a forward hook)

AWQ folds its input scales s into the operation before each layer group, as AutoAWQ does for
Llama-style blocks: input_layernorm → q/k/v_proj, post_attention_layernorm → gate/up_proj,
v_proj → o_proj (when their shapes match: not under grouped-query attention), up_proj →
down_proj. Scales are searched on the original weights, folded, then every layer is quantized.

The ModelOpt formats (modelopt-fp8, modelopt-nvfp4: NVIDIA ModelOpt's export_hf_checkpoint
layout, with hf_quant_config.json) take each linear's input amax from `--activations DIR` (its
input_scale). NVFP4 gives layers that share an input (q/k/v, gate/up) one weight amax and one
input amax, the largest of theirs, as ModelOpt 0.47 does for engines that fuse them; its FP8
export does not (each layer keeps its own weight_scale).
The output directory appears complete or not at all (refquant.io.safetensors.save_checkpoint).
"""
from __future__ import annotations

import json
import re
from contextlib import nullcontext
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from .. import affine, fp8_scaling, mx
from ..algorithms.awq import awq as awq_search
from ..algorithms.gptq import gptq as gptq_run
from ..algorithms.rtn import rtn as rtn_run
from ..errors import FileFormatError, FormatError, InputError
from ..io.safetensors import Checkpoint, extra_files, read_config, save_checkpoint
from ..layouts import awq as L_awq
from ..layouts import compressed_tensors as L_ct
from ..layouts import fp8_block as L_fp8
from ..layouts import gptq as L_gptq
from ..layouts import targets as L_targets
from ..layouts.fp8_block import BF16
from .fold import HF_GEMMA3_GROUPS, HF_GROUPS, fold_layer, hf_groups

F32 = np.float32
METHODS = ("rtn", "gptq", "awq", "smoothquant")
FORMATS = ("gptq", "gptq_v2", "awq", "awq-gemv", "compressed-tensors", "fp8-block", "nvfp4", "modelopt-fp8",
           "modelopt-nvfp4")
FLOAT_FORMATS = ("fp8-block", "nvfp4", "modelopt-fp8", "modelopt-nvfp4")
_LAYER = re.compile(r"(model\.layers\.\d+\.)")
# layers that read the same input: ModelOpt shares their amaxes (preprocess_linear_fusion)
SHARED_INPUT = [g for _, g in HF_GROUPS[:2]]


def linear_names(ck, targets=L_targets.DEFAULT_TARGETS, ignore=L_targets.DEFAULT_IGNORE) -> list:
    """The `<module>.weight` names of the layers to quantize: llm-compressor's targets / ignore
    (refquant.layouts.targets; default every linear layer but the embeddings and lm_head)."""
    return L_targets.select({k: ck[k].shape for k in ck}, targets, ignore)


def _check_options(method, bits, group_size, fmt, activations, calibration=None, static_inputs=False):
    if method not in METHODS:
        raise InputError(f"quantize: method must be one of {METHODS}, got {method!r}")
    if fmt not in FORMATS:
        raise FormatError(f"quantize: format must be one of {FORMATS}, got {fmt!r}")
    allowed = {"gptq": (2, 3, 4, 8), "gptq_v2": (2, 3, 4, 8), "awq": (4,), "awq-gemv": (4,), "compressed-tensors": tuple(range(2, 9)),
               "fp8-block": (8,), "nvfp4": (4,), "modelopt-fp8": (8,), "modelopt-nvfp4": (4,)}[fmt]
    if bits not in allowed:
        raise FormatError(f"quantize: format {fmt} holds {allowed}-bit weights, not {bits}")
    if fmt == "awq-gemv" and group_size not in (-1, 32, 64) and group_size < 128:
        raise FormatError(f"quantize: AWQ GEMV takes group size 32, 64 or >= 128, not {group_size}")
    if fmt in FLOAT_FORMATS and method != "rtn":
        raise FormatError(f"quantize: format {fmt} is a float format; only --method rtn applies")
    if activations is not None and calibration is not None:
        raise InputError("quantize: give --activations DIR or --calibration TEXT, not both")
    if method == "rtn" and calibration is not None and not static_inputs:
        raise InputError("quantize: --calibration goes with --method gptq, awq or smoothquant; rtn uses no data")
    if method == "smoothquant":
        if calibration is None:
            raise InputError("quantize: --method smoothquant needs a calibration text (--calibration TEXT)")
        if fmt != "compressed-tensors" or bits != 8:
            raise FormatError(f"quantize: SmoothQuant writes W8A8 compressed-tensors (int-quantized, 8 bits), "
                              f"not {bits}-bit {fmt}")
    if method in ("gptq", "awq") and activations is None and calibration is None:
        raise InputError(f"quantize: --method {method} needs calibration data (--calibration TEXT or "
                         f"--activations DIR)")
    if fmt.startswith("modelopt-") and activations is None:
        raise InputError(f"quantize: format {fmt} stores input scales: it needs calibration activations (--activations DIR)")


def _activations(adir: Path, module: str, K: int) -> np.ndarray:
    p = adir / f"{module}.npy"
    if not p.exists():
        raise InputError(f"quantize: no calibration activations for layer {module} (expected {p})")
    X = np.load(p, mmap_mode="r")
    if X.ndim != 2 or X.shape[1] != K:
        raise InputError(f"quantize: activations {p} have shape {X.shape}; layer {module} needs (n, {K})")
    return np.asarray(X, np.float32)


def _awq_fold(weights: dict, adir: Path, bits, g, sym, model_type: str, selected=None) -> None:
    """Search each group's AWQ scale on the original weights and the activations in `adir`,
    then fold it (refquant.pipelines.fold). In place on `weights` (float32). Only groups whose
    layers are all `selected` (all when None) are folded; other architectures' layers (no
    Llama-style group) are quantized with no scale."""
    groups = hf_groups(model_type)

    def scale(before: str, names: list) -> Optional[np.ndarray]:
        if selected is not None and not all(n in selected for n in names):
            return None
        K = weights[names[0]].shape[1]
        X = _activations(adir, names[0][:-len(".weight")], K)
        W = np.concatenate([weights[n] for n in names], axis=0)
        return awq_search(W, X, bits=bits, group_size=K if g == -1 else g, sym=sym).input_scale

    for prefix in sorted({m.group(1) for m in map(_LAYER.match, weights) if m}):
        fold_layer(weights, prefix, groups, scale, offset_norm=groups is HF_GEMMA3_GROUPS)


def quantize_checkpoint(model_dir, out_dir, method: str = "rtn", bits: int = 4, group_size: int = 128,
                        fmt: str = "gptq", activations=None, sym: Optional[bool] = None,
                        progress: Optional[Callable] = None, max_shard_bytes: int = 5 * 2**30,
                        calibration: Optional[str] = None, ctx: int = 512, calibration_tokens: Optional[int] = 4096,
                        sequential: bool = True, alpha: float = 0.5, max_rows: int = 4096,
                        record: Optional[dict] = None, targets=L_targets.DEFAULT_TARGETS,
                        ignore=L_targets.DEFAULT_IGNORE, scheme: Optional[str] = None,
                        transform: Optional[str] = None, transform_seed: int = 0,
                        hadamard_table=None, workers: Optional[int] = 1, scheduler: Optional[str] = None,
                        runner=None) -> None:
    """Quantize the checkpoint in `model_dir` into `out_dir` (see the module's docstring).

    calibration      a text: the model runs on it block by block (refquant.model.calibrate) and
                     each linear layer is quantized on the inputs it receives there (the
                     directory needs the GGUF metadata refquant.model.convert writes:
                     tokenizer and architecture); `ctx` tokens a sequence, the first
                     `calibration_tokens` tokens of the text (None: all)
    sequential       block l's inputs come from blocks < l already quantized (False: float)
    alpha            SmoothQuant's migration strength
    max_rows         AWQ's loss runs on at most this many input rows (every stride-th)
    record           when a dict: filled with every linear's calibration inputs (tests)
    targets, ignore  the layers to quantize, as llm-compressor names them (refquant.layouts.targets)
    scheme           a compressed-tensors preset (W4A16, FP8_DYNAMIC, MXFP4, ...; fmt must be
                     compressed-tensors): its weight args replace bits / group_size / sym,
                     its format and activation args go into the config; gptq and awq apply to
                     the integer presets only
    transform        "hadamard" or "random-hadamard" (seed `transform_seed`): SpinQuant's R2
                     rotation fused offline into every v_proj (output side, per head) and
                     o_proj (input side, inverse) before quantizing, as compressed-tensors
                     fuses it (refquant.hadamard); config.json records it in
                     quantization_config.transform_config
    workers, scheduler, runner  where the linear layers are quantized, as independent tasks
                     (refquant.pipelines.scale.Runner; calibrated: a block's layers in
                     parallel, blocks in order); the output is the same"""
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    pw = None
    if scheme is not None:
        if fmt != "compressed-tensors":
            raise FormatError(f"quantize: --scheme {scheme} is a compressed-tensors preset; the format must be "
                              f"compressed-tensors, not {fmt}")
        pfmt, pw, pa = L_ct.preset(scheme)
        if method == "smoothquant":
            raise InputError(f"quantize: --scheme takes --method rtn, gptq or awq")
        if pw["type"] == "float" and method != "rtn":
            raise FormatError(f"quantize: preset {scheme} quantizes weights to floats; only --method rtn applies")
        bits, sym = pw["num_bits"], pw["symmetric"]
        group_size = pw["group_size"] if pw["type"] == "int" and pw["strategy"] == "group" else -1
        if preset_needs_inputs(scheme) and activations is None and calibration is None:
            raise InputError(f"quantize: preset {scheme} stores a static input scale: it needs calibration "
                             f"activations (--activations DIR) or a calibration text (--calibration TEXT)")
    if method == "smoothquant":
        group_size = -1                  # W8A8: one scale per output channel
    _check_options(method, bits, group_size, fmt, activations, calibration,
                   static_inputs=scheme is not None and preset_needs_inputs(scheme))
    if out_dir.exists():
        raise InputError(f"quantize: output directory {out_dir} already exists")
    config = read_config(model_dir)
    ck = Checkpoint(model_dir)
    targets, ignore = list(targets), list(ignore)
    shapes = {k: ck[k].shape for k in ck}
    lin = L_targets.select(shapes, targets, ignore)
    if not lin:
        raise InputError(f"quantize: {model_dir} has no linear layer that --targets {targets} selects and "
                         f"--ignore {ignore} leaves")
    adir = Path(activations) if activations is not None else None
    for k in lin:                      # every check that needs no computation, before any
        K = ck[k].shape[1]
        if fmt in ("gptq", "gptq_v2", "awq", "awq-gemv", "compressed-tensors") and group_size != -1 and K % group_size:
            raise InputError(f"quantize: layer {k[:-len('.weight')]} has {K} inputs, not a multiple of group "
                             f"size {group_size}")
        if fmt in ("nvfp4", "modelopt-nvfp4") and K % 16:
            raise InputError(f"quantize: layer {k[:-len('.weight')]} has {K} inputs, not a multiple of NVFP4's 16")
        if pw is not None and pw["group_size"] and K % pw["group_size"]:
            raise InputError(f"quantize: layer {k[:-len('.weight')]} has {K} inputs, not a multiple of preset "
                             f"{scheme}'s group size {pw['group_size']}")
        if adir is not None and (method != "rtn" or fmt.startswith("modelopt-") or
                                 (scheme is not None and preset_needs_inputs(scheme))):
            _activations(adir, k[:-len(".weight")], K)
    if sym is None:
        sym = fmt not in ("awq", "awq-gemv")
    if transform is not None:
        if transform not in ("hadamard", "random-hadamard"):
            raise InputError(f"quantize: --transform must be hadamard or random-hadamard, not {transform!r}")
        if fmt != "compressed-tensors" or calibration is not None:
            raise InputError("quantize: --transform writes a compressed-tensors transform config: it needs "
                             "--format compressed-tensors (or --scheme) and no --calibration")
        if method != "rtn":
            raise InputError("quantize: --transform rotates o_proj's inputs, which --activations holds unrotated: "
                             "it goes with --method rtn")
    extra = {"config.json": None}
    extra.update(extra_files(model_dir))      # tokenizer files, gguf_metadata.json, ...: as they are
    if calibration is not None:
        from .scale import Runner
        with (nullcontext(runner) if runner is not None else Runner(workers, scheduler)) as rn:
            out = _calibrated(model_dir, config, ck, lin, method, bits, group_size, fmt, sym, calibration, ctx,
                              calibration_tokens, sequential, alpha, max_rows, progress, record, scheme, rn)
        qc = _config(fmt, bits, group_size, sym, targets, ignore, L_targets.ignored_linears(shapes, lin), lin, shapes)
        if scheme is not None:
            qc = L_ct.preset_config(scheme, targets, ignore)
        if method == "smoothquant":
            qc = L_ct.quantization_config("int-quantized", 8, None, True, targets=targets, ignore=ignore)
            qc["config_groups"]["group_0"]["input_activations"] = {
                "num_bits": 8, "type": "int", "symmetric": True, "strategy": "token", "group_size": None,
                "dynamic": True, "observer": None}
        config["quantization_config"] = qc
        extra["config.json"] = json.dumps(config, indent=2, sort_keys=True) + "\n"
        save_checkpoint(out_dir, out, max_shard_bytes=max_shard_bytes, extra_files=extra)
        return
    if PLANNED and method in ("rtn", "gptq") and transform is None:
        _quantize_planned(ck, lin, out_dir, config, extra, method, fmt, bits, group_size, sym, scheme, adir,
                          shapes, targets, ignore, max_shard_bytes, progress, workers, scheduler, runner)
        return
    out = {}
    weights = {k: np.asarray(ck[k]) for k in ck}
    tcfg = None
    if transform is not None:
        tcfg = rotate_r2(weights, config, transform, transform_seed, hadamard_table)
    if fmt.startswith("modelopt-"):
        w_amax, x_amax = _modelopt_amaxes(weights, lin, adir, fuse=fmt == "modelopt-nvfp4")
    if method == "awq":
        quantized = set(lin)                   # a list's `in` per tensor would be quadratic
        floats = {k: weights[k].astype(np.float32) for k in weights if k.startswith("model.layers.") or k in quantized}
        _awq_fold(floats, adir, bits, group_size, sym, config.get("model_type", ""), quantized)
        weights.update({k: v.astype(weights[k].dtype) for k, v in floats.items() if k not in quantized})
        weights.update({k: floats[k] for k in lin})
    from .scale import current_blas_threads
    blas = current_blas_threads()

    def jobs():
        for k in lin:
            module = k[:-len(".weight")]
            wk = weights.pop(k)
            job = dict(module=module, w=wk, fmt=fmt, method=method, bits=bits, group_size=group_size, sym=sym,
                       scheme=scheme, x=None, xa=None, w_amax=None, x_amax=None, blas=blas)
            if fmt in PACKED and method == "gptq":
                job["x"] = _activations(adir, module, wk.shape[1])
            if scheme is not None and preset_needs_inputs(scheme):
                job["xa"] = np.max(np.abs(_activations(adir, module, wk.shape[1])))
            if fmt.startswith("modelopt-"):
                job["w_amax"], job["x_amax"] = w_amax[k], x_amax[k]
            yield job

    from .scale import Runner
    with (nullcontext(runner) if runner is not None else Runner(workers, scheduler)) as rn:
        # each linear layer is a task (the model's weights stay here: a checkpoint is read whole)
        for _, t in rn.imap_unordered(quantize_linear, jobs()):
            out.update(t)
            if progress:
                progress(None)
    out.update(weights)
    _quantization_config(config, extra, fmt, bits, group_size, sym, scheme, targets, ignore, shapes, lin, weights)
    if tcfg is not None:
        config["quantization_config"]["transform_config"] = tcfg
    extra["config.json"] = json.dumps(config, indent=2, sort_keys=True) + "\n"
    save_checkpoint(out_dir, out, max_shard_bytes=max_shard_bytes, extra_files=extra)


def _quantization_config(config, extra, fmt, bits, group_size, sym, scheme, targets, ignore, shapes, lin, rest):
    """config.json's quantization_config (and ModelOpt's hf_quant_config.json) of a one-shot
    run; `rest`: the tensors left as they are (name -> array or spec)."""
    if fmt.startswith("modelopt-"):
        hq = L_fp8.quantization_config_modelopt("FP8" if fmt == "modelopt-fp8" else "NVFP4",
                                                _modelopt_excluded(rest, config))
        config["quantization_config"] = L_fp8.hf_config_modelopt(hq)
        extra["hf_quant_config.json"] = json.dumps(hq, indent=4) + "\n"
    elif scheme is not None:
        config["quantization_config"] = L_ct.preset_config(scheme, targets, ignore)
    else:
        config["quantization_config"] = _config(fmt, bits, group_size, sym, targets, ignore,
                                                L_targets.ignored_linears(shapes, lin), lin, shapes)


class Source:
    """A tensor of the input, read by whichever process runs the task: `shape` of `dtype` at byte
    `offset` of the safetensors file `path` (a shared filesystem for a remote cluster)."""

    def __init__(self, path, offset: int, dtype, shape):
        self.path, self.offset, self.dtype, self.shape = str(path), int(offset), np.dtype(dtype), tuple(shape)

    @staticmethod
    def of(ck, name: str) -> "Source":
        f = ck.file(ck.weight_map[name])
        dt, shape, b = f.entries[name]
        return Source(f.path, f.start + b, dt, shape)

    def rows(self, n: int, start: int = 0) -> "Source":
        """The tensor's n rows from row `start` (default its first n)."""
        row = self.dtype.itemsize * int(np.prod(self.shape[1:], dtype=np.int64))
        return Source(self.path, self.offset + start * row, self.dtype, (n,) + self.shape[1:])

    @property
    def nbytes(self) -> int:
        return self.dtype.itemsize * int(np.prod(self.shape, dtype=np.int64))

    def read(self, start: int = 0, n: Optional[int] = None) -> np.ndarray:
        """The tensor (or n of its bytes from byte `start`, as uint8) read into memory of its own:
        no mapping, whose pages would count in this process's memory and whose faults, from
        several threads, wait on each other."""
        whole = n is None
        n = self.nbytes - start if whole else n
        b = np.empty(n, np.uint8)
        with open(self.path, "rb") as f:
            f.seek(self.offset + start)
            got = f.readinto(memoryview(b)) if n else 0
        if got != n:
            raise FileFormatError(f"{self.path}: truncated at byte {self.offset + start + (got or 0)}")
        return b.view(self.dtype).reshape(self.shape) if whole else b


def plan_linear(job: dict) -> dict:
    """The dtype and shape of each tensor one linear layer's task writes (name -> TensorSpec), a
    task of the plan that comes before any output: the shape rules of the layouts that write the
    tensors (preset_specs, _pack_specs, L_fp8's modelopt_*_specs, as quantize_linear picks
    them), from the layer's (N, K) and dtype and the options; nothing is read or quantized.
    Each task checks its tensors against the plan when it writes them."""
    from ..io.safetensors import TensorSpec
    w, module, fmt, scheme = job["w"], job["module"], job["fmt"], job["scheme"]
    if len(w.shape) != 2:
        raise InputError(f"quantize: layer {module} has a weight of shape {tuple(w.shape)}, not (out, in)")
    N, K = (int(d) for d in w.shape)
    try:
        if scheme is not None:
            t = preset_specs(scheme, N, K, _preset_dtype(w.dtype, job["method"]))
        elif fmt == "modelopt-fp8":
            t = L_fp8.modelopt_fp8_specs(N, K, job["x_amax"] is not None)
        elif fmt == "modelopt-nvfp4":
            t = L_fp8.modelopt_nvfp4_specs(N, K, job["x_amax"] is not None)
        else:
            t = _pack_specs(fmt, module, N, K, job["bits"], job["group_size"], job["sym"], w.dtype)
    except (InputError, FormatError) as e:    # a layout's own check ("awq.pack: ..."): name the layer
        if module in str(e):
            raise
        raise type(e)(f"quantize: layer {module} ({N}x{K}): {e}") from None
    return {f"{module}.{name}": TensorSpec(dt, shape) for name, (dt, shape) in t.items()}


def put_linear(task):
    """One linear layer quantized and its tensors written at their planned places (a task): `dest`
    maps each output name to (shard path, byte offset, TensorSpec). Without `dest` (a remote
    cluster: the client writes) the tensors are returned."""
    from ..io.safetensors import spec_of, write_at
    job, dest = task
    t = quantize_chunked(job, None if dest is None else {n: d[2] for n, d in dest.items()})
    if dest is None:
        return t
    for name, a in t.items():
        path, at, want = dest[name]
        if spec_of(a) != want:
            raise InputError(f"{name}: planned as {want}, computed as {spec_of(a)}")
        write_at(path, at, a)
    return len(t)


CHUNK_ROWS = 256    # a task quantizes its layer this many output rows at a time (a multiple of every
                    # layout's row block: packs of 32/bits, AWQ's 8, FP8's 128, ModelOpt's 16)


def chunkable(job: dict) -> bool:
    """Whether the layer of `job` quantizes CHUNK_ROWS output rows at a time to the same bytes as
    whole: round to nearest of a Source, in a layout whose scales are per output row, per (row,
    group) or per block of rows dividing CHUNK_ROWS, or whose one per-tensor scale comes from an
    amax known before (ModelOpt's, given; NVFP4's global scale and the FP8 preset's tensor
    scale, from a streaming pass). The others keep the whole-layer path (GPTQ with activations,
    an integer preset with one scale per tensor: none of compressed-tensors' has one)."""
    if job["method"] != "rtn" or not isinstance(job["w"], Source) or len(job["w"].shape) != 2:
        return False
    fmt, scheme = job["fmt"], job["scheme"]
    if scheme is not None:
        pfmt, w, _ = L_ct.preset(scheme)
        st = w.get("strategy")
        if st in ("channel", "group") or pfmt == "nvfp4-pack-quantized" or (st, pfmt) == ("tensor", "float-quantized"):
            return True
        return st == "block" and CHUNK_ROWS % int(w["block_structure"][0]) == 0
    if fmt.startswith("modelopt-"):
        return job["w_amax"] is not None
    return fmt in PACKED or fmt in ("fp8-block", "nvfp4")


def _needs_tensor_amax(job: dict) -> bool:
    if job["scheme"] is None:
        return False
    pfmt, w, _ = L_ct.preset(job["scheme"])
    return (w.get("strategy"), pfmt) == ("tensor", "float-quantized")


def _needs_global_scale(job: dict) -> bool:
    if job["scheme"] is not None:
        return L_ct.preset(job["scheme"])[0] == "nvfp4-pack-quantized"
    return job["fmt"] == "nvfp4"


def _row_chunks(src: "Source"):
    N, n = src.shape[0], CHUNK_ROWS
    for s in range(0, N, n):
        yield s, src.rows(min(n, N - s), s)


_HEAP_KEPT = False


def keep_chunk_heap() -> None:
    """Once a process: glibc's malloc keeps the memory a chunk's arrays free for the next chunk.
    It serves blocks above M_MMAP_THRESHOLD by mmap and hands a free heap top above
    M_TRIM_THRESHOLD back to the system; both start at 128 KiB and grow only as large blocks are
    freed, so a loop whose temporaries are a few MiB a chunk had every page faulted in afresh at
    each chunk (fp8-block and nvfp4: ~0.7 s of system time a 380 MiB checkpoint, more than the
    quantization's own). Fixed at 32 MiB (the dynamic threshold's ceiling) and 64 MiB: freed
    memory is kept, never more than was in use at once. Other C libraries: nothing done.
    A setting of the whole process, for good: the command line makes it for its own process
    (refquant.cli); a library call leaves the caller's malloc as it is, and Dask's workers too."""
    global _HEAP_KEPT
    if _HEAP_KEPT:
        return
    _HEAP_KEPT = True
    try:
        import ctypes
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError, TypeError):
        return
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3            # glibc's malloc.h
    mallopt(M_TRIM_THRESHOLD, 64 << 20)
    mallopt(M_MMAP_THRESHOLD, 32 << 20)


def quantize_chunked(job: dict, specs: Optional[dict] = None) -> dict:
    """quantize_linear(job), the same tensors, computed CHUNK_ROWS output rows at a time when the
    layout allows it (chunkable): the float32 copies, scales, codes and packing intermediates
    exist for one chunk only, and each chunk's part of a tensor is copied into that tensor,
    allocated once from its planned shape (`specs`: name -> TensorSpec; without, plan_linear's).
    A tensor's part is along the one axis where a chunk's shape differs from the whole one
    (GPTQ's and AWQ's columns, the other layouts' rows: AWQ's interleave of 8 columns and the
    packs of 32/bits lie inside a chunk); a tensor that does not grow with the rows (g_idx, a
    global or input scale) must come out the same from every chunk (else the task fails);
    weight_shape is the layer's."""
    src = job["w"]
    if not chunkable(job) or src.shape[0] <= CHUNK_ROWS:
        return quantize_linear(job)
    try:
        with np.errstate(invalid="ignore"):
            return _quantize_chunks(job, specs)
    except InputError:          # the whole layer's own message (a NaN's row is the layer's, not a chunk's)
        return quantize_linear(job)


def _quantize_chunks(job: dict, specs: Optional[dict]) -> dict:
    src = job["w"]
    N, K = src.shape
    if specs is None:                         # no plan at hand (a remote worker): the layouts' rules
        specs = plan_linear(job)
    job = dict(job)
    if _needs_global_scale(job):              # NVFP4: the global scale from the whole layer's amax
        lo, hi = np.float32(np.inf), np.float32(-np.inf)
        for _, c in _row_chunks(src):
            x = c.read().astype(np.float32)
            lo, hi = min(lo, np.float32(x.min())), max(hi, np.float32(x.max()))
            del x
        job["global_scale"] = mx.nvfp4_global_scale(np.array([lo, hi], np.float32))
    if _needs_tensor_amax(job):               # FP8 per tensor: max |W| in W's dtype (exact)
        amax = None
        for _, c in _row_chunks(src):
            x = c.read()
            x = x if x.dtype in (np.float32, np.float16, BF16) else x.astype(np.float32)
            m = np.max(np.abs(x))
            amax = m if amax is None else np.maximum(amax, m)      # a NaN stays (and is refused)
            del x
        job["tensor_amax"] = amax
    out, parts, axis = {}, {}, {}
    for s, c in _row_chunks(src):
        t = quantize_linear(dict(job, w=c))
        for name, a in t.items():
            if name.endswith(".weight_shape"):
                out[name] = np.array([N, K], a.dtype)
                continue
            if name not in axis:
                full = tuple(specs[name].shape)
                axis[name] = _chunk_axis(a.shape, full)
                if axis[name] is not None:
                    out[name] = np.empty(full, a.dtype)
                    parts[name] = 0
            ax = axis[name]
            if ax is None:
                if name not in out:
                    out[name] = a
                elif (out[name].dtype, out[name].shape, out[name].tobytes()) != (a.dtype, a.shape, a.tobytes()):
                    raise InputError(f"{name}: differs between row chunks of the layer; it cannot be "
                                     f"quantized {CHUNK_ROWS} rows at a time")
            else:
                i = parts[name]
                idx = [slice(None)] * a.ndim
                idx[ax] = slice(i, i + a.shape[ax])
                out[name][tuple(idx)] = a
                parts[name] = i + a.shape[ax]
        del t
    for name, a in out.items():
        if name in parts and parts[name] != a.shape[axis[name]]:
            raise InputError(f"{name}: row chunks gave {parts[name]} of its {a.shape[axis[name]]} places "
                             f"along axis {axis[name]}")
    return out


def _chunk_axis(chunk_shape, full_shape) -> Optional[int]:
    """The axis along which a tensor grows with the layer's rows (None: it does not): the one
    where a chunk's shape differs from the planned one."""
    diff = [i for i, (c, f) in enumerate(zip(chunk_shape, full_shape)) if c != f]
    if len(chunk_shape) != len(full_shape) or len(diff) > 1:
        raise InputError(f"a chunk's tensor {tuple(chunk_shape)} is no slice of the planned {tuple(full_shape)}")
    return diff[0] if diff else None


def _quantize_planned(ck, lin, out_dir, config, extra, method, fmt, bits, group_size, sym, scheme, adir, shapes,
                      targets, ignore, max_shard_bytes, progress, workers, scheduler, runner) -> None:
    """Round to nearest, every --format, and GPTQ on --activations: plan, then fan out. Each
    output tensor's dtype and shape come from its layout's shape rule (plan_linear: nothing
    quantized; GPTQ writes round to nearest's layout); the shards' headers are written and the
    files sized; the tasks then read their layer from the input by offset (GPTQ's also map their
    activations' .npy), quantize it and write their tensors at the planned offsets, while this
    process copies the other tensors by offset.
    Memory: a worker holds its layer's output tensors and one chunk of CHUNK_ROWS rows in
    quantization (quantize_chunked; GPTQ: the whole layer, its activations and Hessian), nothing
    a model's size; the bytes are save_checkpoint's."""
    from ..io.safetensors import PlannedCheckpoint, TensorSpec, write_at
    from .scale import Runner, current_blas_threads
    blas = current_blas_threads() if method == "gptq" else None     # GPTQ's sums: the client's count
    quantized = set(lin)                       # once: a set built per tensor made this quadratic
    rest = {k: TensorSpec(ck[k].dtype, ck[k].shape) for k in ck if k not in quantized}
    w_amax = x_amax = None
    if fmt.startswith("modelopt-"):
        w_amax, x_amax = _modelopt_amaxes(ck, lin, adir, fuse=fmt == "modelopt-nvfp4")

    def job(k):
        module = k[:-len(".weight")]
        j = dict(module=module, w=Source.of(ck, k), fmt=fmt, method=method, bits=bits, group_size=group_size,
                 sym=sym, scheme=scheme, x=None, xa=None, w_amax=None, x_amax=None, blas=blas)
        if method == "gptq":                # the task maps them itself (_activations)
            j["x"] = adir / f"{module}.npy"
        if scheme is not None and preset_needs_inputs(scheme):
            j["xa"] = np.max(np.abs(_activations(adir, module, ck[k].shape[1])))
        if w_amax is not None:
            j["w_amax"], j["x_amax"] = w_amax[k], x_amax[k]
        return j

    _quantization_config(config, extra, fmt, bits, group_size, sym, scheme, targets, ignore, shapes, lin, rest)
    extra["config.json"] = json.dumps(config, indent=2, sort_keys=True) + "\n"
    jobs = [job(k) for k in lin]
    specs, names = {}, []
    for j in jobs:                             # the plan: shape rules, here
        t = plan_linear(j)
        names.append([n for n in t if n not in rest])      # as save_checkpoint: a kept tensor wins
        specs.update(t)
    specs.update(rest)
    with (nullcontext(runner) if runner is not None else Runner(workers, scheduler)) as rn:
        with PlannedCheckpoint(out_dir, specs, max_shard_bytes, extra_files=extra) as pc:
            local = rn.writes_locally
            tasks = [(j, {n: pc.where[n] + (specs[n],) for n in names[i]} if local else None)
                     for i, j in enumerate(jobs)]
            step = 64 * 2**20
            for k in rest:                     # the tensors kept as they are: copied by offset
                src, (path, at) = Source.of(ck, k), pc.where[k]
                for i in range(0, src.nbytes, step):
                    write_at(path, at + i, src.read(i, min(step, src.nbytes - i)))
            for i, res in rn.imap_unordered(put_linear, tasks):
                if not local:
                    for name in names[i]:
                        write_at(*pc.place(name, res[name]), res[name])
                if progress:
                    progress(None)


def quantize_linear(job: dict) -> dict:
    """One linear layer of the one-shot path (RTN, GPTQ on given activations, the presets,
    ModelOpt): its weight in, its output tensors (named `module.name`) out. Runs on any worker.
    GPTQ's `x`: the activations, or (a planned task) the path of their .npy, which the task maps;
    `blas`: the BLAS thread count its sums run with (the client's)."""
    from .scale import blas_like
    wk, module, fmt, method = job["w"], job["module"], job["fmt"], job["method"]
    if isinstance(wk, Source):
        wk = wk.read()
    bits, group_size, sym, scheme = job["bits"], job["group_size"], job["sym"], job["scheme"]
    W = wk.astype(np.float32)
    q = None
    if fmt in PACKED and (scheme is None or method != "rtn"):
        if method == "gptq":
            X = job["x"]
            where = f"layer {module}"
            if isinstance(X, Path):          # a planned task: the activations' .npy
                where += f" (activations {X})"
                X = _activations(X.parent, module, W.shape[1])
            with blas_like(job["blas"]):
                try:
                    q = gptq_run(W, X=X, bits=bits, group_size=group_size, sym=sym)
                except InputError as e:      # gptq's own check ("activations have non-finite values")
                    raise InputError(f"quantize: {where}: {e}") from None
        else:
            q = rtn_run(W, bits, group_size, sym)
    if scheme is not None:
        Wd = wk if wk.dtype == _preset_dtype(wk.dtype, method) else W
        t = preset_tensors(scheme, Wd, q if method != "rtn" else None, job["xa"], job.get("global_scale"),
                           job.get("tensor_amax"))
    elif fmt == "modelopt-fp8":
        dt = wk.dtype if wk.dtype in (np.float16, BF16) else np.float32
        t = L_fp8.modelopt_fp8(wk.astype(dt), dt, job["w_amax"], job["x_amax"])
    elif fmt == "modelopt-nvfp4":
        t = L_fp8.modelopt_nvfp4(W, job["w_amax"], job["x_amax"])
    else:
        t = _pack(fmt, module, W, q, bits, group_size, sym, wk.dtype, job.get("global_scale"))
    return {f"{module}.{name}": a for name, a in t.items()}


def calibrated_linear(job: dict):
    """One linear layer of a calibrated block: (output tensors, the decoded weight the next
    blocks' inputs are computed with). Runs on any worker."""
    from .scale import blas_like
    with blas_like(job["blas"]):
        return _calibrated_linear(job)


def _calibrated_linear(job: dict):
    W, module, fmt, method = job["w"], job["module"], job["fmt"], job["method"]
    bits, group_size, sym, scheme, H = job["bits"], job["group_size"], job["sym"], job["scheme"], job["h"]
    if method == "smoothquant":
        t, w_hat = _int8_channel(W)
    elif scheme is not None:
        pfmt, pw, _ = L_ct.preset(scheme)
        q = None
        if method != "rtn":
            q = (gptq_run(W, H=H, bits=bits, group_size=group_size, sym=sym) if method == "gptq"
                 else rtn_run(W, bits, group_size, sym))
        t = preset_tensors(scheme, W, q, job["xa"])
        w_hat = np.asarray(L_ct.dequantize(t, pfmt, pw)).astype(np.float32)
    else:
        q = None
        if fmt in PACKED:
            q = (gptq_run(W, H=H, bits=bits, group_size=group_size, sym=sym) if method == "gptq"
                 else rtn_run(W, bits, group_size, sym))
        t = _pack(fmt, module, W, q, bits, group_size, sym, job["dtype"])
        w_hat = q.dequantize() if q is not None else W
    return {f"{module}.{name}": a for name, a in t.items()}, w_hat


def _int8_channel(W: np.ndarray):
    """W8 of W8A8: symmetric INT8 per output channel on compressed-tensors' grid (scale =
    absmax / 127.5, codes clamped to [-128, 127]); the tensors and the decoded weight."""
    block = (1, W.shape[1])
    scale, zp = affine.choose_qparams_compressed_tensors(W, block, 8, symmetric=True)
    q = affine.quantize_compressed_tensors(W, scale, zp, block, 8)
    w_hat = affine.dequantize_compressed_tensors(q, scale, zp, block).astype(np.float32)
    return L_ct.int_quantized(q, scale.astype(np.float32)), w_hat


def _calibrated(model_dir: Path, config, ck, lin, method, bits, group_size, fmt, sym, text, ctx, n_tokens,
                sequential, alpha, max_rows, progress, record, scheme=None, rn=None) -> dict:
    """The --calibration path: block by block, capture the inputs (refquant.model.calibrate),
    search and fold AWQ / SmoothQuant scales, quantize the block's linears, hand the decoded
    weights back to the model for the next block's inputs. Returns the output tensors."""
    from ..algorithms.smoothquant import smooth_scales
    from ..model.calibrate import run_blocks, tokenize
    from ..model.convert import _from_hf, gguf_name, hf_name, load_safetensors
    from ..model.forward import Model
    if not (model_dir / "gguf_metadata.json").is_file():
        raise InputError(f"quantize: --calibration runs the model, which needs its architecture and tokenizer: "
                         f"{model_dir} has no gguf_metadata.json (write the directory with refquant.model.convert."
                         f"gguf_to_safetensors, or give --activations DIR)")
    if not isinstance(ctx, (int, np.integer)) or ctx < 2:
        raise InputError(f"quantize: --ctx (tokens of context a sequence) must be an integer >= 2, got {ctx!r}")
    model = Model(load_safetensors(model_dir))
    md = model.w.metadata
    arch = md["general.architecture"]
    chunks = tokenize(model, text, ctx, n_tokens)
    weights = {k: np.asarray(ck[k]) for k in ck}
    kinds = {"gptq": {"hessian"}, "awq": {"mean_abs", "sample"}, "smoothquant": {"absmax"}, "rtn": set()}[method]
    if record is not None:
        kinds = kinds | {"all"}
    if scheme is not None and preset_needs_inputs(scheme):
        kinds = kinds | {"absmax"}                  # the static input scale: max |x| per layer
    groups = HF_GEMMA3_GROUPS if arch == "gemma3" else HF_GROUPS
    out: dict = {}
    from .scale import current_blas_threads
    blas = current_blas_threads()

    def on_block(il, stats):
        p = f"model.layers.{il}."
        hs = {hf_name(n, arch): st for n, st in stats.items()}
        layer_lin = [k for k in lin if k.startswith(p)]
        for k in layer_lin:
            if k not in hs:
                raise InputError(f"quantize: the forward never fed layer {k[:-len('.weight')]}")
            if record is not None:
                record[k] = hs[k].inputs()
        f = {k: weights[k].astype(np.float32) for k in weights if k.startswith(p)}
        changed = set()
        if method in ("awq", "smoothquant"):
            def scale(before: str, names: list) -> Optional[np.ndarray]:
                if not all(n in layer_lin for n in names):    # as _awq_fold: selected layers only
                    return None
                st = hs[names[0]]
                if method == "awq":
                    K = f[names[0]].shape[1]
                    return awq_search(np.concatenate([f[n] for n in names], axis=0), st.inputs(), bits=bits,
                                      group_size=K if group_size == -1 else group_size, sym=sym,
                                      x_mean=st.mean_abs()).input_scale
                if f[before].ndim == 1:                     # SmoothQuant: norm -> linears only
                    return smooth_scales(st.absmax(), [f[n] for n in names], alpha).astype(np.float32)
                return None

            changed = fold_layer(f, p, groups, scale, offset_norm=arch == "gemma3")
        jobs = [dict(module=k[:-len(".weight")], w=f[k], fmt=fmt, method=method, bits=bits, group_size=group_size,
                     sym=sym, scheme=scheme, dtype=weights[k].dtype, blas=blas,
                     h=hs[k].hessian() if method == "gptq" else None,
                     xa=np.max(hs[k].absmax()) if scheme is not None and preset_needs_inputs(scheme) else None)
                for k in layer_lin]
        # the block's linear layers are independent tasks; blocks stay in order
        for i, (t, w_hat) in rn.imap_unordered(calibrated_linear, jobs):
            k = layer_lin[i]
            out.update(t)
            f[k] = w_hat
            changed.add(k)
            del weights[k]
            if progress:
                progress(None)
        for k in changed - set(layer_lin):
            weights[k] = f[k].astype(weights[k].dtype)
        return {gguf_name(k, arch): _from_hf(gguf_name(k, arch), f[k], md) for k in changed}

    run_blocks(model, chunks, kinds, on_block, sequential=sequential, max_rows=max_rows)
    left = [k for k in lin if k in weights]
    if left:
        raise InputError(f"quantize: the model's forward never reached layer {left[0][:-len('.weight')]} "
                         f"(config.json and gguf_metadata.json disagree on the layers?)")
    out.update(weights)
    return out


PACKED = ("gptq", "gptq_v2", "awq", "awq-gemv", "compressed-tensors")
# round to nearest and GPTQ on --activations write their output from a plan, at offsets
# (_quantize_planned); False: the whole output in memory, then save_checkpoint (as AWQ, --transform
# and --calibration still do). GPTQ's bytes depend on its inputs' values and the BLAS thread count
# only (refquant.algorithms.gptq: a worker's activations received at an odd address once made its
# XᵀX a gemm instead of a syrk), and its tasks run with the client's count: the directory is the
# one the whole-in-memory writer writes, on threads, on a Dask cluster, or written by the client.
PLANNED = True


def _preset_dtype(dtype, method: str) -> np.dtype:
    """The dtype a layer's weight goes to preset_tensors in: the checkpoint's own float dtype
    (llm-compressor observes a model in its dtype), float32 for any other and after AWQ's
    scaling (done in float32)."""
    dtype = np.dtype(dtype)
    return dtype if dtype in (np.float32, np.float16, BF16) and method != "awq" else np.dtype(F32)


def _ct_scale_dtype(dtype) -> np.dtype:
    """The scales' dtype of --format compressed-tensors: float16 from a float16 checkpoint, else
    float32."""
    return np.dtype(np.float16) if np.dtype(dtype) == np.float16 else np.dtype(F32)


def _check_inputs(fmt, module, K, group_size) -> None:
    """A layer's K inputs as `fmt` groups them (_pack and _pack_specs): whole groups of the
    integer formats, NVFP4's blocks of 16."""
    if fmt in PACKED and group_size != -1 and K % group_size:
        raise InputError(f"quantize: layer {module} has {K} inputs, not a multiple of group size {group_size}")
    if fmt == "nvfp4" and K % 16:
        raise InputError(f"quantize: layer {module} has {K} inputs, not a multiple of NVFP4's 16")


def _pack_specs(fmt, module, N, K, bits, group_size, sym, dtype) -> dict:
    """The (dtype, shape) of each tensor _pack writes for a layer of N outputs and K inputs held
    in `dtype`: its layout's rule (L_gptq.pack_specs, ...), with G = K / group_size groups (one
    with -1) as RTN and GPTQ make them."""
    _check_inputs(fmt, module, K, group_size)
    if fmt in PACKED:
        G = 1 if group_size == -1 else K // group_size
        if fmt in ("gptq", "gptq_v2"):
            return L_gptq.pack_specs(N, K, G, bits, "v1" if fmt == "gptq" else "v2")
        if fmt == "awq":
            return L_awq.pack_specs(N, K, G)
        if fmt == "awq-gemv":
            return L_awq.pack_gemv_specs(N, K, group_size)
        return L_ct.pack_quantized_specs(N, K, G, bits, _ct_scale_dtype(dtype), sym)
    if fmt == "fp8-block":
        return L_fp8.block_fp8_specs(N, K)
    t = L_ct.nvfp4_pack_quantized_specs(N, K)
    t["weight_shape"] = (np.dtype(np.int64), (2,))
    return t


def _pack(fmt, module, W, q, bits, group_size, sym, dtype, global_scale=None) -> dict:
    """The tensors of linear `module` in `fmt`: from q (QuantizedLinear) for the integer formats,
    from the float weight W for fp8-block and nvfp4 (global_scale: NVFP4's, default W's own)."""
    N, K = W.shape
    _check_inputs(fmt, module, K, group_size)
    if fmt in PACKED:
        if fmt in ("gptq", "gptq_v2"):
            return L_gptq.pack(q.codes, q.scales, q.zeros, q.g_idx, bits, "v1" if fmt == "gptq" else "v2")
        if fmt == "awq":
            return L_awq.pack(q.codes, q.scales, q.zeros)
        if fmt == "awq-gemv":
            return L_awq.pack_gemv(q.codes, q.scales, q.zeros, group_size)
        off = 2 ** (bits - 1)
        codes = (q.codes.astype(np.int16) - off).astype(np.int8)
        z = None if sym else (q.zeros - off).astype(np.int8)
        return L_ct.pack_quantized(codes, q.scales.astype(_ct_scale_dtype(dtype)), z, bits)
    if fmt == "fp8-block":
        return L_fp8.block_fp8(W)
    packed, scales, gs = mx.quantize_nvfp4(W, global_scale)
    t = L_ct.nvfp4_pack_quantized(packed, scales, gs)
    t["weight_shape"] = np.array(W.shape, np.int64)
    return t


def _modelopt_amaxes(weights: dict, lin: list, adir: Path, fuse: bool):
    """Each linear's weight amax (max |W|) and input amax (max |X| over its activations); with
    `fuse`, then the largest of each within a group of layers that share an input (q/k/v, gate/up).
    ModelOpt 0.47 fuses every format but per-tensor FP8 (_fuse_shared_input_modules)."""
    def amax(w):                       # CHUNK_ROWS rows at a time: no float32 copy of the layer
        w = np.asarray(w)
        return max(np.float32(np.max(np.abs(w[i:i + CHUNK_ROWS].astype(np.float32))))
                   for i in range(0, max(w.shape[0], 1), CHUNK_ROWS))
    w_amax = {k: amax(weights[k]) for k in lin}
    x_amax = {k: np.float32(np.max(np.abs(_activations(adir, k[:-len(".weight")], weights[k].shape[1])))) for k in lin}
    prefixes = sorted({k.rsplit(".", 3)[0] for k in lin}) if fuse else []
    for p in prefixes:
        for members in SHARED_INPUT:
            names = [f"{p}.{m}.weight" for m in members]
            if all(n in w_amax for n in names):
                wa = max(w_amax[n] for n in names)
                xa = max(x_amax[n] for n in names)
                for n in names:
                    w_amax[n], x_amax[n] = wa, xa
    return w_amax, x_amax


def _modelopt_excluded(rest: dict, config: dict) -> list:
    """The modules left unquantized that ModelOpt lists in exclude_modules: the other 2-D weights'
    modules (embeddings, lm_head) and lm_head itself when tied to the embeddings."""
    mods = {k[:-len(".weight")] for k, a in rest.items() if k.endswith(".weight") and a.ndim == 2}
    mods.add("lm_head")
    return sorted(mods)


def _config(fmt, bits, group_size, sym, targets=L_targets.DEFAULT_TARGETS, ignore=L_targets.DEFAULT_IGNORE,
            unconverted=(), quantized=(), names=()) -> dict:
    """config.json's quantization_config; compressed-tensors records targets and ignore as given,
    AWQ lists the linear layers it left (`unconverted`) in modules_to_not_convert, GPTQ names the
    block of the `quantized` weights where the loader's block patterns miss it (`names`: every
    tensor of the checkpoint; L_gptq.block_fields)."""
    if fmt in ("gptq", "gptq_v2"):
        qc = L_gptq.quantization_config(bits, group_size, sym, False, "v1" if fmt == "gptq" else "v2")
        qc.update(L_gptq.block_fields([k[:-len(".weight")] for k in quantized], names, unconverted))
        return qc
    if fmt in ("awq", "awq-gemv"):
        qc = L_awq.quantization_config(group_size, zero_point=not sym, version="gemv" if fmt == "awq-gemv" else "gemm")
        if unconverted:
            qc["modules_to_not_convert"] = list(unconverted)
        return qc
    if fmt == "compressed-tensors":
        return L_ct.quantization_config("pack-quantized", bits, None if group_size == -1 else group_size, sym,
                                        targets=targets, ignore=ignore)
    if fmt == "fp8-block":
        return L_fp8.quantization_config_block_fp8()
    return L_ct.quantization_config("nvfp4-pack-quantized", targets=targets, ignore=ignore)


# ---- compressed-tensors presets (--scheme) ------------------------------------------------------

def preset_tensors(name: str, W: np.ndarray, q=None, x_amax=None, global_scale=None, tensor_amax=None) -> dict:
    """One linear's tensors under compressed-tensors preset `name`, as its compressor writes them:
    W the weight (float32, float16 or bfloat16: integer and FP8 scales are computed in its dtype,
    as llm-compressor's min-max observer does on a model of that dtype; MX and NVFP4 in float32);
    q a QuantizedLinear from GPTQ/AWQ for the integer presets (None: round to nearest on
    compressed-tensors' own grid); x_amax the layer's input amax for the presets with static
    input scales (FP8, NVFP4); global_scale NVFP4's (default W's own); tensor_amax the max |W|
    of the whole tensor, in W's dtype, a per-tensor FP8 scale is computed from (default W's)."""
    fmt, w, a = L_ct.preset(name)
    N, K = W.shape
    out: dict
    if fmt in ("pack-quantized", "int-quantized"):
        bits, sym = w["num_bits"], w["symmetric"]
        block = L_ct.weight_block(w, W.shape)
        if q is not None:
            off = 2 ** (bits - 1)
            codes = (q.codes.astype(np.int16) - off).astype(np.int8)
            dt = W.dtype if W.dtype in (np.float16, BF16) else np.float32
            s, z = q.scales.astype(dt), (q.zeros - off).astype(np.int8)
        else:
            s, z = affine.choose_qparams_compressed_tensors(W, block, bits, symmetric=sym)
            codes = affine.quantize_compressed_tensors(W, s, z, block, bits)
        z = None if sym else z
        out = (L_ct.pack_quantized(codes, s, z, bits) if fmt == "pack-quantized"
               else L_ct.int_quantized(codes.astype(np.int8), s, z))
    elif fmt == "float-quantized":
        block = L_ct.weight_block(w, W.shape)
        if w["strategy"] == "tensor" and tensor_amax is not None:     # W: rows of the tensor
            s = fp8_scaling.choose_scale(np.full((1, 1), tensor_amax, W.dtype), (1, 1))
        else:
            s = fp8_scaling.choose_scale(W, block)
        out = L_ct.float_quantized(fp8_scaling.quantize(W, s, block), s)
        out["weight_scale"] = s.reshape((1,) if w["strategy"] == "tensor" else s.shape)
    elif fmt == "nvfp4-pack-quantized":
        packed, scales, gs = mx.quantize_nvfp4(W.astype(np.float32), global_scale)
        out = L_ct.nvfp4_pack_quantized(packed, scales, gs)
    else:
        element = {"mxfp4-pack-quantized": "MXFP4_E2M1", "mxfp6-pack-quantized": "MXFP6_E2M3",
                   "mxfp8-quantized": "MXFP8_E4M3"}[fmt]
        scales, data = mx.quantize_mx(W.astype(np.float32), element, rule="compressed-tensors")
        out = (L_ct.mxfp4_pack_quantized(data, scales) if fmt == "mxfp4-pack-quantized"
               else L_ct.mxfp6_pack_quantized(data, scales) if fmt == "mxfp6-pack-quantized"
               else L_ct.mxfp8_quantized(data, scales))
    if a is not None and not a["dynamic"]:          # FP8: a static per-tensor input scale
        out["input_scale"] = np.array([np.float32(x_amax) / np.float32(448.0)], np.float32)
    elif a is not None and a["dynamic"] == "local":  # NVFP4: a static global input scale
        out["input_global_scale"] = np.array([np.float32(448.0 * 6.0) / np.float32(x_amax)], np.float32)
    return out


def preset_specs(name: str, N: int, K: int, dtype) -> dict:
    """The (dtype, shape) of each tensor preset_tensors writes for a layer of N outputs and K
    inputs given to it in `dtype` (float32, float16 or bfloat16): the format's rule in
    refquant.layouts.compressed_tensors, with the scales preset_tensors computes (one per
    weight_block of the preset's weight args, in the weight's dtype; FP8's per tensor (1,)) and
    the static input scale a preset stores."""
    fmt, w, a = L_ct.preset(name)
    dtype = np.dtype(dtype)
    if fmt in ("pack-quantized", "int-quantized"):
        scale = affine.scale_shape((N, K), L_ct.weight_block(w, (N, K)))
        out = (L_ct.pack_quantized_specs(N, K, scale[1], w["num_bits"], dtype, w["symmetric"])
               if fmt == "pack-quantized" else L_ct.int_quantized_specs(N, K, scale, dtype, w["symmetric"]))
    elif fmt == "float-quantized":
        scale = (1,) if w["strategy"] == "tensor" else affine.scale_shape((N, K), L_ct.weight_block(w, (N, K)))
        out = L_ct.float_quantized_specs(N, K, scale)
        out["weight_scale"] = (dtype, scale)        # preset_tensors keeps the scale s in W's dtype
    elif fmt == "nvfp4-pack-quantized":
        out = L_ct.nvfp4_pack_quantized_specs(N, K)
    else:
        out = L_ct.mx_specs(fmt, N, K)
    if a is not None and not a["dynamic"]:          # FP8: a static per-tensor input scale
        out["input_scale"] = (np.dtype(F32), (1,))
    elif a is not None and a["dynamic"] == "local":  # NVFP4: a static global input scale
        out["input_global_scale"] = (np.dtype(F32), (1,))
    return out


def preset_needs_inputs(name: str) -> bool:
    """Whether preset `name` stores a static input scale (it needs calibration activations)."""
    _, _, a = L_ct.preset(name)
    return a is not None and a["dynamic"] in (False, "local")


# ---- rotations (--transform) ---------------------------------------------------------------------

def rotate_r2(weights: dict, config: dict, transform: str, seed: int = 0, table=None) -> dict:
    """SpinQuant's R2 as llm-compressor applies it through compressed-tensors: a head_dim-sized
    Hadamard fused offline into every `<p>.self_attn.v_proj` (weight_output, its bias too) and
    `<p>.self_attn.o_proj` (weight_input, inverse), in place on `weights` (float64, cast back to
    each tensor's dtype). Returns the transform_config. The product o_proj · attention · v_proj
    is unchanged: attention mixes tokens, not the head_dim coordinates. `table`: a safetensors file
    of known Hadamard matrices (compressed-tensors' hadamards.safetensors), needed by
    random-hadamard when head_dim is 32 or not a power of two."""
    from .. import hadamard as H
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    head_dim = int(head_dim)
    had_k = None
    if table is not None and transform == "random-hadamard":
        from ..io.safetensors import SafetensorsFile
        had_k = {head_dim: H.known_hadamard(SafetensorsFile(table), head_dim)}
    R = (H.deterministic_hadamard(head_dim) if transform == "hadamard"
         else H.random_hadamards([head_dim], seed, had_k)[head_dim])
    pairs = [k[:-len(".v_proj.weight")] for k in weights if k.endswith(".self_attn.v_proj.weight")
             and k.replace(".v_proj.", ".o_proj.") in weights]
    if not pairs:
        raise InputError("quantize: --transform rotates v_proj / o_proj pairs, and the checkpoint has none")
    for p in pairs:
        v, o = f"{p}.v_proj.weight", f"{p}.o_proj.weight"
        weights[v] = H.fuse(weights[v], R, "weight_output")
        if f"{p}.v_proj.bias" in weights:
            b = weights[f"{p}.v_proj.bias"]
            weights[f"{p}.v_proj.bias"] = H.fuse(b.reshape(-1, 1), R, "weight_output").reshape(b.shape)
        weights[o] = H.fuse(weights[o], R, "weight_input", inverse=True)
    return L_ct.transform_config({"R2": (transform, [(["re:.*v_proj$"], "weight_output", False),
                                                     (["re:.*o_proj$"], "weight_input", True)], head_dim)})
