"""The `refquant` command line.

    refquant inspect FILE.gguf                          metadata and tensor table
    refquant dequantize IN.gguf OUT.gguf [--type F32|F16|BF16]
    refquant dequantize CHECKPOINT_DIR OUT_DIR [--dtype float32|bfloat16|float16]
                                                        a quantized checkpoint back to float weights
    refquant quantize IN.gguf OUT.gguf --type Q8_0      one type for every quantizable weight
    refquant conformance --backend NAME                 the conformance suite against a backend
    refquant vectors --out DIR                          golden test vectors per format
    refquant verify-vectors < ANSWERS                   an implementation's answers to cases.txt, checked
    refquant formats                                    the registered formats
    refquant quantize MODEL_DIR OUT_DIR --method gptq|awq|smoothquant --calibration TEXT [--ctx N]
                                                        a safetensors checkpoint, calibrated on a text
    refquant perplexity MODEL.gguf --text FILE [--ctx N] [--chunks K] [--base BASE.gguf]
                                                        perplexity as llama-perplexity computes it
    refquant imatrix MODEL.gguf --text FILE -o OUT.gguf [--ctx N] [--chunks K]
                                                        importance matrix as llama-imatrix collects it
    refquant eval MODEL.gguf --text FILE [--ctx N] [--chunks K] [--rows F16,Q4_K_M,GPTQ-W4G128,...]
                 [--markdown OUT.md] [--png OUT.png] the quality table: every format's bits per
                                                        weight, perplexity, KL divergence, top-1

Every expected failure (bad input, I/O errors, permissions, missing paths, memory) gives one line
on stderr and exit status 2; an internal error gives one line asking for a report and exit status 3
(the traceback with --debug or REFQUANT_DEBUG=1). An output that is an input (same path, hard link,
symlink) is refused before any work. An interrupted (Ctrl-C, SIGTERM) or failed write leaves no
output file and no temporary file; see spec/robustness.md.
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from .errors import FormatError, RefquantError


class Progress:
    """Progress on stderr. On a terminal, a bar redrawn in place; elsewhere (a pipe, a log file,
    CI), one line per item, or per `every` seconds when items come faster (REFQUANT_PROGRESS_SECONDS,
    default 0: every item). `enabled` True forces the bar, False silences both. `summary` ends
    every run with one line: what was written, its size, bits per weight, time."""

    def __init__(self, total: int, label: str, enabled: bool | None = None, every: float | None = None):
        import os
        self.total, self.label, self.done = total, label, 0
        self.tty = sys.stderr.isatty() if enabled is None else bool(enabled)
        self.quiet = enabled is False
        if every is None:
            try:
                every = float(os.environ.get("REFQUANT_PROGRESS_SECONDS", "0"))
            except ValueError:
                every = 0.0
        self.every = every
        self.t0 = self.last = time.perf_counter()

    def __call__(self, item=None):
        self.done += 1
        if self.quiet:
            return
        now = time.perf_counter()
        name = getattr(item, "name", "")
        if self.tty:
            width = 30
            fill = int(width * self.done / max(self.total, 1))
            sys.stderr.write(f"\r{self.label} [{'#' * fill}{'.' * (width - fill)}] {self.done}/{self.total} "
                             f"{now - self.t0:6.1f}s {name[:40]:<40}")
            if self.done == self.total:
                sys.stderr.write("\n")
        elif now - self.last >= self.every or self.done == self.total:
            self.last = now
            kind = getattr(item, "dst_type", None) or getattr(item, "type_name", "")
            w = len(str(self.total))
            sys.stderr.write(f"{self.label} [{self.done:{w}d}/{self.total}] {name} {kind} {now - self.t0:.1f}s\n")
        sys.stderr.flush()

    def summary(self, paths, n_elements: int | None = None, data: int | None = None) -> None:
        """One closing line on stderr: the files written, their size, the bits per weight of their
        tensor data (over the input's element count when given, as llama-quantize counts), time.
        `data`: the tensor data's bytes where the caller knows them (else read from the files)."""
        import os
        from .io.gguf import GGUFFile
        from pathlib import Path
        paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
        known, size, data, elements = data, 0, 0, 0
        for p in paths:
            if Path(p).is_dir():  # a checkpoint: its safetensors files' bytes
                files = [q for q in Path(p).rglob("*.safetensors") if q.is_file()]
                size += sum(os.path.getsize(q) for q in Path(p).rglob("*") if q.is_file())
                data += sum(os.path.getsize(q) for q in files)
                continue
            size += os.path.getsize(p)
            if known is None or not n_elements:
                with GGUFFile(p) as f:
                    data += sum(t.nbytes for t in f.tensors)
                    elements += sum(t.n_elements for t in f.tensors)
        data = data if known is None else known
        n = n_elements or elements
        names = str(paths[0]) if len(paths) == 1 else f"{paths[0]} .. ({len(paths)} files)"
        bpw = f"{8 * data / n:.3f} bits per weight, " if n else ""
        sys.stderr.write(f"{self.label}: wrote {names}: {size / 1048576:.2f} MiB, {bpw}"
                         f"{time.perf_counter() - self.t0:.1f} s\n")
        sys.stderr.flush()


def _fmt_value(v, limit=60):
    if isinstance(v, (list, tuple, np.ndarray)) or hasattr(v, "tolist"):   # a StringArray too
        n = len(v)
        head = ", ".join(repr(x) for x in (v[:4].tolist() if isinstance(v, np.ndarray) else list(v[:4])))
        return f"[{head}{', ...' if n > 4 else ''}] ({n} items)"
    s = repr(v)
    return s if len(s) <= limit else s[:limit - 3] + "..."


def cmd_inspect(args) -> int:
    from .io.gguf import block_sizes
    from .io.split import open_gguf
    from .pipelines import recipes
    with open_gguf(args.file) as f:
        paths = getattr(f, "paths", [f.path])
        split = f" ({len(paths)} split files)" if len(paths) > 1 else ""
        print(f"{args.file}: GGUF v3, {len(f.kvs)} metadata keys, {len(f.tensors)} tensors, "
              f"alignment {f.alignment}{split}")
        print("\nmetadata:")
        w = max((len(kv.key) for kv in f.kvs), default=0)
        for kv in f.kvs:
            value = _fmt_value(kv.value)
            if kv.key == "general.file_type":
                try:
                    value += f" ({recipes.file_type(int(kv.value)).name})"  # llama.cpp's LLAMA_FTYPE_MOSTLY_*
                except (FormatError, TypeError, ValueError):
                    value += " (not a llama.cpp file type)"
            print(f"  {kv.key:<{w}}  {kv.vtype.name.lower():<7}  {value}")
        print("\ntensors (shape in NumPy order, outermost first: the reverse of gguf-py's and llama.cpp's ne):")
        nw = max((len(t.name) for t in f.tensors), default=4)
        print(f"  {'name':<{nw}}  {'type':<8} {'shape':<18} {'bytes':>12} {'bpw':>6}")
        total_bytes = total_elems = 0
        for t in f.tensors:
            bs, ts = block_sizes(t.ggml_type)
            total_bytes += t.nbytes
            total_elems += t.n_elements
            print(f"  {t.name:<{nw}}  {t.type_name:<8} {str(list(t.shape)):<18} {t.nbytes:>12,} {8 * ts / bs:>6.2f}")
        bpw = 8 * total_bytes / max(total_elems, 1)
        print(f"\n  {total_elems:,} elements in {total_bytes:,} bytes: {bpw:.3f} bits per weight")
    return 0


def cmd_dequantize(args) -> int:
    from pathlib import Path
    if Path(args.input).is_dir():      # a quantized Hugging Face checkpoint -> float safetensors
        from .pipelines.hf_dequantize import dequantize_checkpoint
        dequantize_checkpoint(args.input, args.output, args.dtype)
        return 0
    from .pipelines import recipes
    from .io.split import open_gguf
    with open_gguf(args.input) as f:
        n = len(f.tensors)
    bar = Progress(n, "dequantize", args.progress)
    # llama.cpp's float file type, as llama-quantize --allow-requantize writes it
    recipes.dequantize_model(args.input, args.output, args.type.upper(), progress=lambda tp, i, total: bar(tp),
                             backend=args.backend)
    bar.summary(args.output)
    return 0


def cmd_quantize(args) -> int:
    from pathlib import Path
    if Path(args.input).is_dir():      # a Hugging Face safetensors checkpoint
        if args.output is None or args.rest:
            raise RefquantError("quantize: a checkpoint directory takes IN_DIR OUT_DIR")
        from .pipelines.hf_quantize import keep_chunk_heap, linear_names, quantize_checkpoint
        from .io.safetensors import Checkpoint
        from .errors import InputError
        ck = Checkpoint(args.input)
        n = len(linear_names(ck, args.targets, args.ignore))
        n_elements = 0
        for k in ck:
            n_elements += int(np.prod(ck[k].shape, dtype=np.int64))
        text = None
        if args.calibration is not None:
            text = _read_text(args.calibration)
        if args.calibration_tokens is not None and args.calibration_tokens < 1:
            raise InputError(f"quantize: --calibration-tokens must be >= 1, got {args.calibration_tokens}")
        sq = args.method == "smoothquant"
        if args.scheme is not None and args.bits is not None:
            raise InputError(f"quantize: --scheme {args.scheme} sets the bits; give --scheme or --bits, not both")
        fmt = args.format or ("compressed-tensors" if sq or args.scheme is not None else "gptq")
        bits = args.bits if args.bits is not None else (8 if sq else 4)
        bar = Progress(n, "quantize", args.progress)
        keep_chunk_heap()                  # the command's own process: malloc keeps the chunks' heap
        quantize_checkpoint(args.input, args.output, args.method, bits, args.group_size, fmt,
                            args.activations, progress=bar,
                            calibration=text, ctx=args.ctx, calibration_tokens=args.calibration_tokens,
                            alpha=args.alpha, targets=args.targets, ignore=args.ignore, scheme=args.scheme,
                            transform=args.transform, transform_seed=args.transform_seed,
                            hadamard_table=args.hadamard_table, workers=args.workers, scheduler=args.scheduler)
        bar.summary(args.output, n_elements)  # bits per weight: every stored byte over the input's weights
        return 0
    from .pipelines import recipes
    out, ftype, nthread = _gguf_quantize_positionals(args)
    if ftype is None:
        from .io.gguf import GGUFFile
        with GGUFFile(args.input):      # an input that is not a GGUF file is named as such first
            pass
        raise RefquantError("quantize: a GGUF input needs a type (--type Q4_K_M, or after the paths as "
                            "llama-quantize takes it)")
    if nthread is not None and args.workers is None:
        # llama-quantize's NTHREADS: how many tensors' rows are quantized at once (<= 0: every core)
        args.workers = nthread if nthread > 0 else None
    args.kernel_threads = _kernel_threads(args.threads)
    copy = ftype.upper() == "COPY"  # llama-quantize's COPY: every tensor copied as it is
    try:
        ft = recipes.file_type("F32" if copy else ftype)
    except FormatError:
        ft = None
    if ft is not None:
        # llama.cpp's file type: its per-tensor mixture, metadata and layout, as llama-quantize writes them
        opts = _llama_quantize_options(args, recipes)
        opts["only_copy"] = copy
        return _quantize_ftype(args, recipes, ft, out, opts, "COPY" if copy else ft.name)
    from .pipelines.convert import quantize_file
    from .registry import get_format
    try:
        fmt = get_format(ftype)
        if fmt.ggml_type is None or not fmt.can_quantize:
            raise FormatError(ftype)
    except FormatError:
        raise FormatError(f"unknown format {ftype!r}: neither a llama.cpp file type nor a ggml type refquant "
                          f"quantizes to; {recipes.suggest(ftype, accepted_types())}") from None
    given = [o for o, v in (("--imatrix", args.imatrix), ("--pure", args.pure),
                            ("--output-tensor-type", args.output_tensor_type),
                            ("--token-embedding-type", args.token_embedding_type),
                            ("--leave-output-tensor", args.leave_output_tensor),
                            ("--allow-requantize", args.allow_requantize), ("--tensor-type", args.tensor_type),
                            ("--tensor-type-file", args.tensor_type_file),
                            ("--include-weights", args.include_weights), ("--exclude-weights", args.exclude_weights),
                            ("--override-kv", args.override_kv), ("--prune-layers", args.prune_layers),
                            ("--keep-split", args.keep_split), ("--dry-run", args.dry_run)) if v]
    if given:
        raise RefquantError(f"quantize: {given[0]} goes with llama.cpp's file types (`refquant formats` lists them); "
                            f"{fmt.name} is a ggml type, written to every quantizable weight")
    if out is None:
        raise RefquantError("quantize: give the output path")
    from .io.split import open_gguf
    with open_gguf(args.input) as f:
        n = len(f.tensors)
    bar = Progress(n, "quantize", args.progress)
    quantize_file(args.input, out, fmt.name, None, args.backend, bar,  # one ggml type everywhere
                  workers=args.workers, scheduler=args.scheduler, threads=args.kernel_threads)
    bar.summary(out)
    return 0


def accepted_types() -> list[str]:
    """Every name `refquant quantize` takes for a GGUF input: llama.cpp's file types (and
    llama-quantize's aliases), then the other ggml types refquant quantizes to."""
    from .pipelines import recipes
    from .registry import all_formats
    names = list(recipes.FILE_TYPES) + list(recipes.FTYPE_ALIASES) + ["COPY"]
    for f in all_formats():
        if f.ggml_type is not None and f.can_quantize and f.name not in names:
            names.append(f.name)
    return names


def _gguf_quantize_positionals(args):
    """llama-quantize's positional arguments after the input: [OUTPUT] TYPE [NTHREADS] (a TYPE
    right after the input means no output path), or refquant's OUTPUT --type TYPE."""
    from .pipelines import recipes
    rest = list(args.rest)
    out = ftype = threads = None
    if args.output is not None:
        rest.insert(0, args.output)
    if rest and args.type is None and _is_ftype(recipes, rest[0]):
        ftype = rest.pop(0)
    elif rest:
        out = rest.pop(0)
    if ftype is None and args.type is None and rest:
        ftype = rest.pop(0)
    if args.type is not None:
        ftype = args.type
    if rest:
        word = rest.pop(0)
        try:
            threads = int(word)
        except ValueError:
            raise RefquantError(f"quantize: invalid thread count {word!r} (after the type)") from None
    if rest:
        raise RefquantError(f"quantize: unexpected argument {rest[0]!r}")
    return out, ftype, threads


def _is_ftype(recipes, name) -> bool:
    if name.upper() == "COPY":
        return True
    try:
        recipes.file_type(name)
        return True
    except FormatError:
        return False


def _kernel_threads(n):
    """--threads: the kernel threads each worker's task runs on (a threaded backend: Numba; at
    most its cores; n <= 0: all of them; default 1, the workers being the parallelism). The bytes
    written do not depend on it, as llama.cpp's do not on its nthread."""
    if n is None:
        return None
    if n <= 0:
        from .pipelines.scale import default_workers
        return default_workers()
    return n


def _llama_quantize_options(args, recipes) -> dict:
    tensor_types = [recipes.parse_tensor_type(t) for t in args.tensor_type]
    for path in args.tensor_type_file:
        tensor_types += recipes.read_tensor_type_file(path)
    prune = []
    if args.prune_layers is not None:
        prune = recipes.parse_prune_layers(args.prune_layers)

    def gtype(name, option):
        if name is None:
            return None
        try:
            return recipes.ggml_type(name).name
        except FormatError:
            raise FormatError(f"{option}: {name!r} is not a ggml type; "
                              f"{recipes.suggest(name, list(recipes.GGML_TYPES))}") from None
    return dict(output_tensor_type=gtype(args.output_tensor_type, "--output-tensor-type"),
                token_embedding_type=gtype(args.token_embedding_type, "--token-embedding-type"),
                pure=args.pure, quantize_output_tensor=not args.leave_output_tensor,
                allow_requantize=args.allow_requantize, tensor_types=tensor_types,
                kv_overrides=[recipes.parse_kv_override(o) for o in args.override_kv],
                prune_layers=prune, keep_split=args.keep_split, dry_run=args.dry_run,
                include_weights=list(args.include_weights), exclude_weights=list(args.exclude_weights))


def _quantize_ftype(args, recipes, ft, out, opts, type_name) -> int:
    from pathlib import Path
    from .io.split import open_gguf
    if out is None and not opts["dry_run"]:
        # llama-quantize's default: ggml-model-TYPE.gguf beside the input (no suffix with --keep-split)
        out = str(Path(args.input).parent / f"ggml-model-{type_name}") + ("" if opts["keep_split"] else ".gguf")
    elif out is not None and opts["keep_split"] and out.endswith(".gguf"):
        out = out[:-len(".gguf")]  # the split files' prefix, as llama-quantize takes it
    with open_gguf(args.input) as f:    # its metadata parsed once, here (a vocabulary takes ~10 ms)
        n_tensors = len(f.tensors)
        n_elements = sum(t.n_elements for t in f.tensors)
        if opts["dry_run"]:
            tps = recipes.quantize_model(f, None, ft, imatrix=args.imatrix, backend=args.backend, **opts)
            for i, tp in enumerate(tps):
                print(recipes.tensor_line(i + 1, n_tensors, tp))
            for line in recipes.size_summary(tps, n_elements):
                print(line)
            if any(tp.requires_imatrix and tp.converted for tp in tps) and not args.imatrix:
                print("warning: this quantization will require an importance matrix (--imatrix)")
            return 0
        bar = Progress(n_tensors, "quantize", args.progress)
        tps = recipes.quantize_model(f, out, ft, imatrix=args.imatrix, backend=args.backend,
                                     progress=lambda tp, i, total: bar(tp), workers=args.workers,
                                     scheduler=args.scheduler, threads=args.kernel_threads, **opts)
    paths = recipes.split_output_paths(out, tps) if opts["keep_split"] else [out]
    bar.summary(paths, n_elements, data=sum(tp.out_nbytes for tp in tps))   # not read back from the output
    return 0


def cmd_formats(args) -> int:
    from . import formats
    from .pipelines import recipes
    from .registry import get_format
    print("block types (refquant.quantize / refquant quantize --type NAME: one type for every weight)\n")
    w = max(len(r["name"]) for r in formats())
    print(f"{'name':<{w}} {'family':<12} {'block':>5} {'bytes':>5} {'bpw':>6}  quantize dequantize imatrix")
    for r in formats():
        print(f"{r['name']:<{w}} {r['family']:<12} {r['block_size']:>5} {r['type_size']:>5} "
              f"{r['bits_per_weight']:>6.3f}  {'yes' if r['quantize'] else 'no':<8} "
              f"{'yes' if r['dequantize'] else 'no':<10} {r['imatrix']}")
    print("\nllama.cpp file types (refquant quantize IN OUT NAME: llama-quantize's mixture and bytes;\n"
          f"{', '.join(f'{a} is {b}' for a, b in recipes.FTYPE_ALIASES.items())}; the number works too)\n")
    print(f"{'name':<10} {'id':>3}  {'default':<8} quantize")
    for ft in recipes.FILE_TYPES.values():
        if ft.default is None:
            note = "no: llama.cpp refuses it as an output file type"
        else:
            try:
                fmt = get_format(ft.default)
                note = "yes" if fmt.can_quantize else f"no: no {ft.default} quantizer yet"
            except FormatError:
                note = f"no: no {ft.default} quantizer yet"
        print(f"{ft.name:<10} {ft.id:>3}  {ft.default or '-':<8} {note}")
    return 0


def cmd_conformance(args) -> int:
    from .conformance.suite import parse_shard, run
    formats = [f.strip() for f in args.formats.split(",")] if args.formats else None
    checks = [c.strip() for c in args.checks.split(",")] if args.checks else None
    kw = dict(max_examples=args.max_examples, seed=args.seed, formats=formats, checks=checks, level=args.level)
    if args.scheduler is not None or (args.workers or 1) > 1:
        if args.shard:
            raise RefquantError("conformance: --shard picks one part; --scheduler and --workers run them all")
        from .pipelines.scale import LOCAL, Runner, conformance
        # shards are whole suites (Hypothesis keeps per-thread state badly): processes, not threads
        with Runner(args.workers or 1, args.scheduler or LOCAL) as rn:
            report = conformance(rn, args.backend, **kw)
    else:
        report = run(args.backend, shard=parse_shard(args.shard) if args.shard else None, **kw)
    print(report.matrix())
    return 0 if report.ok else 1


def cmd_vectors(args) -> int:
    from .conformance.vectors import write_vectors
    formats = [f.strip() for f in args.formats.split(",")] if args.formats else None
    paths = write_vectors(args.out, formats)
    print(f"wrote {len(paths)} files under {args.out}")
    return 0


def cmd_verify_vectors(args) -> int:
    from .conformance.vectors import verify_lines
    if args.cases:
        import gzip
        with (gzip.open(args.cases, "rt") if args.cases.endswith(".gz") else open(args.cases)) as f:
            n, bad = verify_lines(f)
    else:
        n, bad = verify_lines(sys.stdin)
    for line in bad[:args.show]:
        print(f"DIFFERS {line}")
    print(f"{n} cases, {len(bad)} differ from the spec")
    return 0 if n and not bad else 1


def cmd_perplexity(args) -> int:
    from .model.perplexity import model_perplexity
    from .model.threads import blas_threads
    text = _read_text(args.text)
    with blas_threads(args.threads):
        r = model_perplexity(args.model, text, args.ctx, args.chunks, base_path=args.base,
                             llamacpp_numerics=args.llamacpp_numerics,
                             dtype=np.float64 if args.float64 else np.float32, isa=args.isa)
    for i, v in enumerate(r.chunk_ppl):
        print(f"[{i + 1}]{v:.4f}", end="," if i + 1 < len(r.chunk_ppl) else "\n")
    print(r)
    return 0


def _read_text(path) -> str:
    """The file's bytes as UTF-8, as they are (llama-perplexity and llama-imatrix read them so)."""
    from .errors import InputError
    try:
        with open(path, "rb") as fh:
            return fh.read().decode("utf-8")
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise InputError(f"{path} is not UTF-8 text ({e})") from None


def cmd_imatrix(args) -> int:
    import os
    from .model import Model, Weights
    from .model.imatrix import collect_imatrix, write_imatrix_gguf
    from .model.tokenizer import Tokenizer
    text = _read_text(args.text)
    tk = Tokenizer.from_gguf(args.model)
    m = Model(Weights.from_gguf(args.model), args.llamacpp_numerics, args.isa)
    bos = int(tk.bos) if tk.add_bos and tk.bos is not None else None
    from .model.threads import blas_threads
    with blas_threads(args.threads):
        col, n = collect_imatrix(m, tk.encode(text), args.ctx, bos, args.chunks, args.process_output)
    write_imatrix_gguf(args.output, col, [os.path.basename(args.text)], n, args.ctx)
    print(f"wrote {len(col.sums)} entries ({n} chunks of {args.ctx} tokens) to {args.output}")
    return 0


def cmd_eval(args) -> int:
    import json
    from pathlib import Path
    from .pipelines.quality import DEFAULT_ROWS, evaluate
    rows = [r.strip() for r in args.rows.split(",")] if args.rows else list(DEFAULT_ROWS)
    text = _read_text(args.text)
    log = (lambda s: print(s, file=sys.stderr, flush=True)) if not args.quiet else None
    from .model.threads import blas_threads
    with blas_threads(args.threads):
        t = evaluate(args.model, text, rows, n_ctx=args.ctx, n_chunks=args.chunks, calib_chunks=args.calib_chunks,
                     matmul_backend=args.matmul_backend, text_name=Path(args.text).name, log=log)
    print(t.text_table())
    if args.markdown:
        Path(args.markdown).write_text(t.markdown())
    if args.json:
        Path(args.json).write_text(json.dumps(t.to_dict(), indent=1) + "\n")
    if args.png:
        t.plot(args.png)
    return 0


def threads_flag(s) -> None:
    s.add_argument("--threads", type=int, default=None, metavar="N",
                   help="threads for the forward's matrix products (default: the cores not already busy, "
                        "by the load average; see refquant/model/threads.py)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="refquant", description="Bit-exact LLM quantization formats.")
    p.add_argument("--debug", action="store_true", help="on an error, also print the traceback "
                   "(or set REFQUANT_DEBUG=1); accepted anywhere on the command line")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("inspect", help="show a GGUF file's metadata and tensors")
    s.add_argument("file")
    s.set_defaults(func=cmd_inspect)

    def progress_flags(s):
        s.add_argument("--backend", default="numpy", help="backend to run on (default: numpy, the spec)")
        g = s.add_mutually_exclusive_group()
        g.add_argument("--progress", dest="progress", action="store_true", default=None,
                       help="always draw the progress bar")
        g.add_argument("--no-progress", dest="progress", action="store_false")

    s = sub.add_parser("dequantize", help="decode a GGUF model to F32/F16/BF16 as llama-quantize "
                       "--allow-requantize does (norms stay F32), or a quantized Hugging Face checkpoint "
                       "directory (GPTQ, AWQ, compressed-tensors, FP8, ModelOpt, bitsandbytes) into a plain "
                       "safetensors one")
    s.add_argument("input")
    s.add_argument("output")
    s.add_argument("--type", default="F32", type=str.upper, choices=["F32", "F16", "BF16"])
    s.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                   help="checkpoint input: the dtype of every float tensor written (default: each weight as the "
                        "loader's dequantization gives it, the rest unchanged)")
    progress_flags(s)
    s.set_defaults(func=cmd_dequantize)

    s = sub.add_parser("quantize", help="quantize a float GGUF model's weights, or a Hugging Face "
                       "safetensors checkpoint directory's linear layers")
    s.add_argument("input")
    s.add_argument("output", nargs="?", default=None,
                   help="output path (GGUF input: as llama-quantize, `IN [OUT] TYPE [NTHREADS]` works too)")
    s.add_argument("rest", nargs="*", help=argparse.SUPPRESS)
    s.add_argument("--type", default=None,
                   help="GGUF input: a llama.cpp file type (Q4_0 .. Q6_K, Q4_K_M, IQ4_XS, ...; `refquant formats` "
                        "lists them), written as llama-quantize writes it; or any other ggml type refquant has, for "
                        "every quantizable weight")
    s.add_argument("--imatrix", default=None, help="GGUF input: an importance matrix (llama.cpp's GGUF or legacy .dat)")
    # llama-quantize's options, by its names and meaning (llama_model_quantize_params)
    s.add_argument("--pure", action="store_true", help="GGUF input: no mixture, the file type's one type everywhere")
    s.add_argument("--output-tensor-type", metavar="TYPE", help="ggml type of output.weight")
    s.add_argument("--token-embedding-type", metavar="TYPE", help="ggml type of the token embeddings")
    s.add_argument("--leave-output-tensor", action="store_true", help="leave output.weight un(re)quantized")
    s.add_argument("--allow-requantize", action="store_true",
                   help="allow requantizing tensors that are already quantized (they are decoded first)")
    s.add_argument("--tensor-type", action="append", default=[], metavar="PATTERN=TYPE",
                   help="quantize the tensors whose name matches the regular expression PATTERN (lowered; the first "
                        "match wins) to TYPE; repeatable, e.g. attn_v=q8_0")
    s.add_argument("--tensor-type-file", action="append", default=[], metavar="FILE",
                   help="PATTERN=TYPE entries separated by blanks or newlines")
    s.add_argument("--include-weights", action="append", default=[], metavar="NAME",
                   help="with --imatrix: use its entries whose name contains NAME only (repeatable)")
    s.add_argument("--exclude-weights", action="append", default=[], metavar="NAME",
                   help="with --imatrix: do not use its entries whose name contains NAME (repeatable)")
    s.add_argument("--override-kv", action="append", default=[], metavar="KEY=TYPE:VALUE",
                   help="set a metadata key in the output (TYPE: int, float, bool, str); repeatable")
    s.add_argument("--prune-layers", metavar="L0,L1,...", help="drop these layers (the others are renumbered)")
    s.add_argument("--keep-split", action="store_true",
                   help="write a split input as as many files, OUT-00001-of-0000N.gguf, ...")
    s.add_argument("--dry-run", action="store_true",
                   help="print each tensor's type and size, and the totals; write nothing")
    s.add_argument("--threads", type=int, default=None,
                   help="kernel threads of the backend (numba) for each worker (default 1; <= 0: every core); "
                        "the bytes written do not depend on it")
    s.add_argument("--method", default="rtn", choices=["rtn", "gptq", "awq", "smoothquant"],
                   help="checkpoint input: algorithm")
    s.add_argument("--bits", type=int, default=None, help="checkpoint input: bits per weight (default 4; "
                   "smoothquant: 8)")
    s.add_argument("--group-size", type=int, default=128, help="checkpoint input: group size (-1: per channel)")
    s.add_argument("--format", default=None, choices=["gptq", "gptq_v2", "awq", "awq-gemv", "compressed-tensors",
                                                      "fp8-block", "nvfp4", "modelopt-fp8", "modelopt-nvfp4"],
                   help="checkpoint input: output layout (default gptq; smoothquant: compressed-tensors W8A8)")
    cal = s.add_mutually_exclusive_group()
    cal.add_argument("--activations", default=None,
                     help="checkpoint input: directory of <module>.npy calibration activations (gptq, awq, "
                          "modelopt-*: the input scales)")
    cal.add_argument("--calibration", default=None, metavar="TEXT",
                     help="checkpoint input: a UTF-8 text file the model runs on, block by block, to capture "
                          "each linear layer's inputs (gptq, awq, smoothquant)")
    s.add_argument("--calibration-tokens", type=int, default=4096,
                   help="with --calibration: use the text's first N tokens (default 4096)")
    s.add_argument("--ctx", type=int, default=512, help="with --calibration: tokens per sequence (default 512)")
    s.add_argument("--alpha", type=float, default=0.5, help="smoothquant: migration strength (default 0.5)")
    s.add_argument("--scheme", default=None, metavar="PRESET",
                   help="checkpoint input: a compressed-tensors preset, spelled as compressed-tensors spells it "
                        "(W4A16, W8A8, FP8_DYNAMIC, NVFP4, MXFP4, ...; format compressed-tensors)")
    s.add_argument("--transform", default=None, choices=["hadamard", "random-hadamard"],
                   help="checkpoint input: SpinQuant's R2 Hadamard rotation (v_proj / o_proj, per head) fused "
                        "offline as compressed-tensors fuses it, recorded in the transform config")
    s.add_argument("--transform-seed", type=int, default=0, help="with --transform random-hadamard: the seed of "
                   "torch's generator its signs come from (default 0)")
    s.add_argument("--hadamard-table", default=None, metavar="FILE",
                   help="with --transform random-hadamard: a safetensors file of known Hadamard matrices (compressed-"
                        "tensors' hadamards.safetensors), for head sizes of 32 or not a power of two")
    s.add_argument("--targets", nargs="+", default=["Linear"], metavar="TARGET",
                   help="checkpoint input: the layers to quantize, as llm-compressor names them: module names, "
                        "'re:' patterns, or the class Linear (default: Linear, every linear layer)")
    s.add_argument("--ignore", nargs="*", default=["lm_head"], metavar="TARGET",
                   help="checkpoint input: layers the targets select that stay unquantized, spelled as --targets "
                        "(default: lm_head)")
    s.add_argument("--workers", type=int, default=None, metavar="N",
                   help="how many tasks run at once: threads of this process, one core each (default: "
                        "$REFQUANT_WORKERS, or every core; 1: one task after another on one core); with "
                        "--scheduler local, a Dask cluster of N processes on this machine")
    s.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="a running Dask scheduler (tcp://HOST:PORT) to send the work to; its workers read the "
                        "input at the same path (a shared filesystem), this process writes the output. 'local': "
                        "start a Dask cluster of --workers processes here (a worker that dies is restarted)")
    progress_flags(s)
    s.set_defaults(func=cmd_quantize)

    s = sub.add_parser("conformance", help="run the conformance suite against a backend")
    s.add_argument("--backend", default="numpy",
                   help="a registered backend name or a 'module:object' path (default: numpy)")
    s.add_argument("--max-examples", type=int, default=20,
                   help="Hypothesis examples per path, after the fixed cases (default 20)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--formats", help="comma-separated formats or matmul schemes (default: all)")
    s.add_argument("--checks", help="comma-separated paths or operations, e.g. quantize+imatrix,vec_dot "
                                    "(default: all)")
    s.add_argument("--level", type=int, choices=(1, 2), default=1,
                   help="edge catalog and shape budget: 1 (default) or 2 (deep: every float16 input, "
                        "dense sweeps around every boundary, 8x the shapes)")
    s.add_argument("--shard", help="I/N: run only part I (0-based) of N of the cases; the N parts' "
                                   "matrices together are the whole one")
    s.add_argument("--workers", type=int, default=None, metavar="N",
                   help="run the shards on a local Dask cluster of N processes (default: this process)")
    s.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="run the shards on a running Dask cluster (tcp://HOST:PORT); the matrix is the same")
    s.set_defaults(func=cmd_conformance)

    s = sub.add_parser("vectors", help="write golden test vectors (.npy, .json, .gguf) per format")
    s.add_argument("--out", required=True, help="output directory")
    s.add_argument("--formats", help="comma-separated formats or vector sets: GGUF types, element formats, "
                                     "MXFP8_E4M3 (or one rule of it, MXFP8_E4M3.rceil), MXFP6_E2M3, MXINT8, "
                                     "BNB_NF4, BNB_NF4.nested, BNB_DYNAMIC8, NVFP4_CT, NVFP4_TORCHAO, ... "
                                     "(default: all of spec/vectors)")
    s.set_defaults(func=cmd_vectors)

    s = sub.add_parser("verify-vectors", help="check an implementation's answers to cases.txt lines "
                                              "(FORMAT OP INPUT IMATRIX RESULT, on stdin) against the spec")
    s.add_argument("cases", nargs="?", help="a file of case lines, or a gzipped one (.gz) (default: stdin)")
    s.add_argument("--show", type=int, default=10, help="print at most this many differing lines (default 10)")
    s.set_defaults(func=cmd_verify_vectors)

    s = sub.add_parser("formats", help="list the registered formats")
    s.set_defaults(func=cmd_formats)

    s = sub.add_parser("perplexity", help="perplexity of a GGUF model on a text, as llama-perplexity computes it")
    s.add_argument("model", help="GGUF model (llama or gemma3)")
    s.add_argument("--text", required=True, help="UTF-8 text file")
    s.add_argument("--ctx", type=int, default=512, help="tokens per chunk (default 512)")
    s.add_argument("--chunks", type=int, default=None, help="score at most this many chunks")
    s.add_argument("--base", help="base model: also report mean KL divergence and top-1 agreement")
    s.add_argument("--llamacpp-numerics", action="store_true",
                   help="round as llama.cpp's CPU backend does (Q8 activations, F16 KV cache)")
    s.add_argument("--isa", choices=["avx512", "avx2"], default=None,
                   help="with --llamacpp-numerics: whose vector expf (SiLU, softmax) to reproduce; default this "
                        "machine's, as a native llama.cpp build uses (a GGML_NATIVE=OFF x86 build uses avx2)")
    s.add_argument("--float64", action="store_true", help="run the forward in float64")
    threads_flag(s)
    s.set_defaults(func=cmd_perplexity)

    s = sub.add_parser("imatrix", help="importance matrix of a GGUF model on a text, as llama-imatrix collects it")
    s.add_argument("model", help="GGUF model (llama or gemma3)")
    s.add_argument("--text", required=True, help="UTF-8 text file")
    s.add_argument("-o", "--output", required=True, help="imatrix GGUF to write")
    s.add_argument("--ctx", type=int, default=512, help="tokens per chunk (default 512)")
    s.add_argument("--chunks", type=int, default=None, help="evaluate at most this many chunks")
    s.add_argument("--process-output", action="store_true", help="also collect output.weight's inputs")
    s.add_argument("--llamacpp-numerics", action="store_true",
                   help="round as llama.cpp's CPU backend does (the activations llama-imatrix sees)")
    s.add_argument("--isa", choices=["avx512", "avx2"], default=None,
                   help="with --llamacpp-numerics: whose vector expf to reproduce (default this machine's)")
    threads_flag(s)
    s.set_defaults(func=cmd_imatrix)
    s = sub.add_parser("eval", help="the quality table: the model quantized to each format, its perplexity, "
                       "KL divergence and top-1 agreement against the unquantized model")
    s.add_argument("model", help="GGUF model (llama or gemma3); a quantized one is decoded to F32 first")
    s.add_argument("--text", required=True, help="UTF-8 text file")
    s.add_argument("--ctx", type=int, default=256, help="tokens per chunk (default 256)")
    s.add_argument("--chunks", type=int, default=4, help="evaluation chunks, from the text's start (default 4)")
    s.add_argument("--calib-chunks", type=int, default=2,
                   help="GPTQ/AWQ calibration chunks, the ones after the evaluation chunks (default 2)")
    s.add_argument("--rows", help="comma-separated: llama.cpp file types and RTN-W4G128, GPTQ-W4G128, "
                                  "AWQ-W4G128, FP8, MXFP4, NVFP4 (default: all of the table)")
    s.add_argument("--markdown", help="write the table as Markdown here")
    s.add_argument("--png", help="write the perplexity / bits-per-weight chart here (needs matplotlib)")
    s.add_argument("--json", help="write every figure as JSON here")
    s.add_argument("--matmul-backend", default=None,
                   help="run the W4A16 and FP8 rows' products with this backend's matmul (e.g. numba)")
    s.add_argument("--quiet", action="store_true", help="no per-row progress on stderr")
    threads_flag(s)
    s.set_defaults(func=cmd_eval)
    return p


# the arguments that name files read and files written, by name: an output that is an input is refused
_INPUT_ARGS = ("input", "file", "model", "text", "base", "imatrix", "calibration")
_OUTPUT_ARGS = ("output", "markdown", "json", "png")


def _os_error_line(e: OSError) -> str:
    what = e.strerror or str(e)
    if e.filename is not None:
        return f"{e.filename}: {what}" + (f" -> {e.filename2}" if e.filename2 else "")
    return what


def main(argv=None) -> int:
    """The one error path: every expected failure (bad input, I/O, permissions, missing paths,
    memory) is one line on stderr and exit status 2; anything else is a bug in refquant: one line
    asking for a report and exit status 3, with the traceback under --debug or REFQUANT_DEBUG=1."""
    import os
    import signal
    from .io import files
    from .io.files import Terminated, on_signal, refuse_same_file
    files.pending_signal = 0               # a signal from an earlier call in this process is spent
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("REFQUANT_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    args = build_parser().parse_args(argv)
    old = {}
    for sig in (signal.SIGTERM, signal.SIGHUP):
        try:
            old[sig] = signal.signal(sig, on_signal)
        except (ValueError, OSError):      # not the main thread: leave signals as they are
            pass
    try:
        refuse_same_file({a: getattr(args, a) for a in _INPUT_ARGS if getattr(args, a, None) is not None},
                         {a: getattr(args, a) for a in _OUTPUT_ARGS if getattr(args, a, None) is not None})
        return args.func(args)
    except RefquantError as e:
        if debug:
            import traceback
            traceback.print_exc()
        print(f"refquant: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nrefquant: interrupted; no output written", file=sys.stderr)
        return 130
    except Terminated as e:
        print(f"refquant: terminated by signal {e.args[0]}; no output written", file=sys.stderr)
        return 128 + int(e.args[0])
    except BrokenPipeError:
        return 0
    except (OSError, MemoryError, RecursionError) as e:
        if debug:
            import traceback
            traceback.print_exc()
        line = _os_error_line(e) if isinstance(e, OSError) else (
            "out of memory" if isinstance(e, MemoryError) else "input nested too deeply")
        print(f"refquant: error: {line}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001  (the one place that turns a bug into a report request)
        if debug:
            import traceback
            traceback.print_exc()
        msg = " ".join(str(e).split())[:200]
        print(f"refquant: internal error ({type(e).__name__}: {msg}); this is a bug in refquant {_version()}: "
              f"please report it with the command line (--debug shows the traceback)", file=sys.stderr)
        return 3
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


def run() -> None:
    """The `refquant` console script: main() in a process that ends with it. The start-up leaves
    some 10^6 long-lived objects (NumPy, Numba's typing and target registries, the kernels'
    cache); Python's cyclic collector, at its default of one pass per 700 allocations, walks
    them again and again, and once more at exit: a third of a small model's 0.8 s command. So
    the command collects once per million allocations (cyclic garbage is still freed), and at
    exit moves everything to the permanent generation, which the final pass skips (files are
    closed by then; the operating system takes the memory back)."""
    import gc
    gc.set_threshold(1_000_000, 10, 10)
    try:
        rc = main()
    finally:
        gc.freeze()
    sys.exit(rc)


def _version() -> str:
    try:
        from importlib.metadata import version
        return version("refquant")
    except Exception:  # noqa: BLE001
        return "(version unknown)"


if __name__ == "__main__":
    run()
