"""The CuPy backend's twin modules and CUDA sources, read without CuPy, a GPU or a compiler: what
each module declares is what its tables hold, the layout macros put in front of every source
are the C structs' sizes and offsets, and no kernel writes a block's byte offset or size itself.
(tests/test_cupy_compile.py compiles the sources with the macros; tests/test_cupy_host.py runs
them on the CPU against the spec.)"""
import re

import gguf
import pytest

from refquant.registry import get_format
from refquant_backends.cupy import CupyBackend
from refquant_backends.cupy import _runtime as rt
from test_block_layouts import C_OFFSETS

# the types each source's kernels read
KERNEL_TYPES_OF = {"ggml/legacy.cu": ["Q4_0", "Q8_0"], "ggml/kquants.cu": ["Q4_K", "Q5_K", "Q6_K"],
                   "ggml/iquants.cu": ["IQ4_XS"], "ggml/fp4.cu": ["MXFP4"], "gemm.cu": ["Q4_K"]}
KERNEL_TYPES = {n for names in KERNEL_TYPES_OF.values() for n in names}
DEFINE = re.compile(r"^#define (RQ_\w+) (\d+)$", re.M)


def test_declared_claims_are_the_twin_modules_tables():
    assert set(CupyBackend.modules()) == {"ggml.legacy", "ggml.kquants", "ggml.iquants", "ggml.fp4", "gemm"}
    assert set(CupyBackend.declarations()) == set(CupyBackend.modules())
    assert CupyBackend.declared() == CupyBackend.loaded()


def _macros():
    return {k: int(v) for k, v in DEFINE.findall(rt.layout_defines())}


@pytest.mark.parametrize("name", sorted(C_OFFSETS))
def test_layout_macros_are_the_c_structs(name):
    """RQ_<type>_<FIELD> is the field's offset in ggml-common.h's struct, for every field the C
    declares (tests/test_block_layouts.py reads them off the C declarations); the sizes are gguf-py's GGML_QUANT_SIZES where it has the type."""
    t = name.upper()
    m = _macros()
    fields = {k[len(f"RQ_{t}_"):].lower(): v for k, v in m.items()
              if k.startswith(f"RQ_{t}_") and k not in (f"RQ_{t}_BLOCK_SIZE", f"RQ_{t}_TYPE_SIZE")}
    assert C_OFFSETS[name].items() <= fields.items()   # the layout may name parts of a C array (IQ2_S's signs)
    if name in KERNEL_TYPES:   # (gguf-py's Q8_1 is its older 40-byte block: tests/test_api.py)
        qt = gguf.GGMLQuantizationType[name]
        assert (m[f"RQ_{t}_BLOCK_SIZE"], m[f"RQ_{t}_TYPE_SIZE"]) == gguf.GGML_QUANT_SIZES[qt]


def test_every_layout_macro_a_kernel_names_is_defined():
    assert {s for s in rt.SOURCES if s.startswith("ggml/")} <= set(KERNEL_TYPES_OF)
    m = _macros()
    for rel in rt.SOURCES:
        text = (rt.HERE / rel).read_text()
        for name in set(re.findall(r"\bRQ_[A-Z0-9_]+_(?:BLOCK_SIZE|TYPE_SIZE|[A-Z]+)\b", text)):
            if re.match(r"RQ_(HOST|RUN)\b", name):
                continue
            assert name in m, (rel, name)


def _code(rel):
    """The source without comments."""
    text = (rt.HERE / rel).read_text()
    return re.sub(r"//[^\n]*|/\*.*?\*/", "", text, flags=re.S)


@pytest.mark.parametrize("rel", sorted(KERNEL_TYPES_OF))
def test_no_kernel_writes_a_block_offset_or_size(rel):
    """A block pointer (b, bc: a block; row: a row of blocks) is offset only by a layout macro
    (a field), never by a number; rq_dequantize4's block and type sizes are the macros; and
    the block sizes and type sizes of the kernels' types appear nowhere as numbers."""
    code = _code(rel)
    assert not re.findall(r"\b(?:b|bc)\s*(?:\+|\[)\s*\d", code)
    for args in re.findall(r"rq_dequantize4<[^;]*?>\(", code):
        assert not re.search(r",\s*\d", args), args
    for n in KERNEL_TYPES_OF[rel]:
        f = get_format(n)
        assert f"RQ_{n}_" in code
        sizes = {f.type_size} | ({f.block_size} if f.block_size > 32 else set())   # 32: also a warp
        found = [s for s in sizes if re.search(rf"(?<![\w.]){s}(?![\w.])", code)]
        assert not found, (rel, n, found)
