"""The format record: what one quantization format is, as data. This module imports nothing.

A format module builds one `Format` per format it defines and exports them in a list named
FORMATS; `refquant.registry` reads those lists (it imports the format modules, never the other
way round). A record holds the facts every other part reads:

    name, family, block_size, type_size    as the field spells them; bytes per block of values
    quantize_rows, dequantize_rows         the row functions that define the format:
        quantize(x, imatrix) -> bytes      x: float32 (nrows, n); imatrix: float32 (n,) or None;
                                           returns uint8 (nrows, n // block_size * type_size)
        dequantize(data) -> floats         data: uint8 (nrows, nbytes); returns float32 (nrows, n)
    imatrix                                IMATRIX_NONE / _OPTIONAL / _REQUIRED
    ggml_type, file_type                   gguf.GGMLQuantizationType and llama.cpp's
                                           LLAMA_FTYPE_MOSTLY_<name>, the file type whose
                                           default type is this one (the whole-file pipeline's
                                           tables, refquant.pipelines.recipes, read both)
    spec_page                              its page under spec/
    layout                                 the block's fields (refquant.ggml.layout.Layout)
    vec_dot                                a VecDot: how ggml's CPU mul_mat multiplies it
"""

IMATRIX_NONE = "none"          # an importance matrix is ignored
IMATRIX_OPTIONAL = "optional"  # with one, a different (weighted) search is taken
IMATRIX_REQUIRED = "required"  # refused without one


class _Record:
    """A frozen record: the fields in _FIELDS (name -> default), keyword or positional; equality
    and hashing over the fields in _KEY."""

    _FIELDS: dict = {}
    _KEY: tuple = ()

    def __init__(self, *args, **kw):
        names = list(self._FIELDS)
        if len(args) > len(names):
            raise TypeError(f"{type(self).__name__} takes at most {len(names)} fields")
        values = dict(self._FIELDS)
        for n, v in zip(names, args):
            values[n] = v
        for n, v in kw.items():
            if n not in values:
                raise TypeError(f"{type(self).__name__} has no field {n!r}")
            if n in names[:len(args)]:
                raise TypeError(f"{type(self).__name__}: {n} given twice")
            values[n] = v
        for n, v in values.items():
            if v is _REQUIRED:
                raise TypeError(f"{type(self).__name__}: {n} is required")
            object.__setattr__(self, n, v)

    def __setattr__(self, name, value):
        raise AttributeError(f"{type(self).__name__} is frozen")

    def _key(self):
        return tuple(getattr(self, n) for n in self._KEY)

    def __eq__(self, other):
        return type(other) is type(self) and other._key() == self._key()

    def __hash__(self):
        return hash(self._key())

    def __repr__(self):
        return f"{type(self).__name__}(" + ", ".join(f"{n}={getattr(self, n)!r}" for n in self._KEY) + ")"


_REQUIRED = object()


class VecDot(_Record):
    """How ggml's CPU backend multiplies a weight type by float32 activations (refquant.ggml.dot):

    activation   the type every activation row is quantized to (type_traits_cpu[].vec_dot_type):
                 "Q8_0", "Q8_1" or "Q8_K"
    decode       weight rows (N, row bytes) -> the operands dot.py's `combine` rule reads: "q"
                 int32 codes (N, nb, U) per unit of U values, "d" float32 scales, and whatever
                 else the rule names (see refquant.ggml.dot.COMBINE)
    combine      the name of the rule that sums the units' integer dots in float32, in the
                 generic kernel's order (a key of refquant.ggml.dot.COMBINE)
    """
    _FIELDS = {"activation": _REQUIRED, "decode": _REQUIRED, "combine": _REQUIRED}
    _KEY = ("activation", "combine")


class Format(_Record):
    _FIELDS = {
        "name": _REQUIRED,          # as the field spells it: "Q4_0", "Q4_K", "IQ4_XS", ...
        "family": _REQUIRED,        # "ggml-float", "ggml-legacy", "ggml-k", ...
        "block_size": _REQUIRED,    # elements per block
        "type_size": _REQUIRED,     # bytes per block
        "quantize_rows": None,
        "dequantize_rows": None,
        "imatrix": IMATRIX_NONE,
        "ggml_type": None,          # gguf.GGMLQuantizationType value, for GGUF types
        "spec_page": None,          # path under spec/, relative
        "layout": None,             # refquant.ggml.layout.Layout, for block types
        "vec_dot": None,            # VecDot, for weight types ggml's CPU mul_mat takes
        "file_type": None,          # llama.cpp's LLAMA_FTYPE_MOSTLY_* id whose default type is this one
        # llama-quant.cpp's rules that name this type:
        "fallback": None,           # tensor_type_fallback: the type a row that is not whole blocks gets
        "token_embd": None,         # llama_tensor_get_type: token_embd.weight's type in this type's file type
    }
    _KEY = ("name", "family", "block_size", "type_size", "imatrix", "ggml_type", "spec_page")

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        lay = self.layout
        if lay is not None and (lay.block_size, lay.type_size) != (self.block_size, self.type_size):
            raise ValueError(f"{self.name}: block {self.block_size} x {self.type_size} bytes, "
                             f"its layout {lay.block_size} x {lay.type_size}")

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.type_size / self.block_size

    @property
    def can_quantize(self) -> bool:
        return self.quantize_rows is not None

    @property
    def can_dequantize(self) -> bool:
        return self.dequantize_rows is not None

    @property
    def needs_imatrix(self) -> bool:
        return self.imatrix == IMATRIX_REQUIRED

    def record(self) -> dict:
        """The public description returned by refquant.formats()."""
        return {
            "name": self.name,
            "family": self.family,
            "block_size": self.block_size,
            "type_size": self.type_size,
            "bits_per_weight": self.bits_per_weight,
            "quantize": self.can_quantize,
            "dequantize": self.can_dequantize,
            "imatrix": self.imatrix,
            "needs_imatrix": self.needs_imatrix,
            "ggml_type": self.ggml_type,
            "spec_page": self.spec_page,
        }


def block_format(layout, family, quantize_rows, dequantize_rows, imatrix=IMATRIX_NONE, ggml_type=None,
                 spec_page=None, vec_dot=None, file_type=None, fallback=None, token_embd=None) -> Format:
    """A ggml block type's record, its block and type size read from its layout."""
    return Format(layout.name, family, layout.block_size, layout.type_size, quantize_rows, dequantize_rows,
                  imatrix, ggml_type, spec_page, layout=layout, vec_dot=vec_dot, file_type=file_type,
                  fallback=fallback, token_embd=token_embd)
