"""Which layers of a checkpoint a quantization scheme covers: llm-compressor's `targets` and
`ignore`, matched as compressed-tensors matches them (compressed_tensors.utils.match).

Each entry of `targets` or `ignore` is one of

    re:PATTERN      a regular expression, re.match against the module name (anchored at its
                    start, not its end: `re:.*mlp.gate$` names every router, `re:.*q_proj`
                    every q_proj)
    Linear          a class name: every linear layer (also `Embedding`)
    NAME            anything else: the module whose name is exactly NAME

A module is selected when some target matches it and no ignore entry does. The checkpoint
is read without building the model, so a class is told by its tensors, as compressed-tensors'
own checkpoint-only matcher (match_quantizable_tensors) does it: a linear layer is a module
with a 2-D `weight`, except the embeddings (a module whose last name part is one of
EMBEDDINGS) and norms (a name ending in `norm`). The default, every linear layer but lm_head,
is llm-compressor's usual recipe: `targets=["Linear"], ignore=["lm_head"]`. Modules outside
`model.layers.` count like any other (a BERT encoder's `encoder.layer.N.attention.self.query`,
its `pooler.dense`); Mixtral-style experts (`block_sparse_moe.experts.E.w1`) are linear
layers one expert at a time, and so is the router (`block_sparse_moe.gate`) unless ignored.
"""
from __future__ import annotations

import re
from typing import Iterable, Mapping, Sequence

from ..errors import InputError

DEFAULT_TARGETS = ("Linear",)
DEFAULT_IGNORE = ("lm_head",)
# the embedding modules of transformers' architectures (nn.Embedding and its subclasses)
EMBEDDINGS = frozenset({"embed_tokens", "word_embeddings", "position_embeddings", "token_type_embeddings",
                        "wte", "wpe", "embed_positions", "shared", "embeddings", "tok_embeddings",
                        "embed_in", "rel_attn_embed"})
CLASSES = ("Linear", "Embedding")


def _module_class(module: str) -> str:
    """'Embedding' or 'Linear': the class a module holding a 2-D weight has."""
    return "Embedding" if module.rsplit(".", 1)[-1] in EMBEDDINGS else "Linear"


def compile_entries(entries: Sequence[str], option: str) -> list:
    out = []
    for e in entries:
        if not isinstance(e, str) or not e:
            raise InputError(f"quantize: {option} entries are module names, class names or re: patterns, got {e!r}")
        if e.startswith("re:"):
            try:
                out.append(("re", re.compile(e[3:]), e))
            except re.error as err:
                raise InputError(f"quantize: {option} {e!r} is not a regular expression ({err})") from None
        elif e in CLASSES:
            out.append(("class", e, e))
        else:
            out.append(("name", e, e))
    return out


def matches(module: str, cls: str, entry) -> bool:
    kind, pat, _ = entry
    if kind == "re":
        return pat.match(module) is not None          # compressed-tensors' match_name: re.match
    if kind == "class":
        return pat == cls
    return pat == module


def select(shapes: Mapping[str, Sequence[int]], targets: Iterable[str] = DEFAULT_TARGETS,
           ignore: Iterable[str] = DEFAULT_IGNORE) -> list:
    """The `<module>.weight` names in `shapes` (tensor name -> shape) that `targets` select and
    `ignore` leaves, in the checkpoint's order. Every target must select at least one module."""
    targets, ignore = list(targets), list(ignore)
    if not targets:
        raise InputError("quantize: --targets is empty: it names the layers to quantize")
    t, ig = compile_entries(targets, "--targets"), compile_entries(ignore, "--ignore")
    hit = set()
    out = []
    for name, shape in shapes.items():
        if not name.endswith(".weight") or len(shape) != 2:
            continue
        module = name[:-len(".weight")]
        if module.endswith("norm"):                   # match_quantizable_tensors skips norms
            continue
        cls = _module_class(module)
        matched = [e for e in t if matches(module, cls, e)]
        if not matched:
            continue
        hit.update(e[2] for e in matched)
        if any(matches(module, cls, e) for e in ig):
            continue
        out.append(name)
    missing = [e for e in targets if e not in hit]
    if missing:
        raise InputError(f"quantize: --targets {missing[0]!r} matches no layer with a 2-D weight")
    return out


def ignored_linears(shapes: Mapping[str, Sequence[int]], selected: Iterable[str]) -> list:
    """The linear layers (modules, as `select` tells them) left unquantized: what AWQ's
    modules_to_not_convert lists."""
    sel = set(selected)
    return [n[:-len(".weight")] for n, s in shapes.items()
            if n.endswith(".weight") and len(s) == 2 and n not in sel and not n[:-len(".weight")].endswith("norm")
            and _module_class(n[:-len(".weight")]) == "Linear"]
