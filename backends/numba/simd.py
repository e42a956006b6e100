"""16-lane vector values for Numba kernels whose inner loop the loop vectoriser does not shape
well: a float32 and an int32 vector type (LLVM's <16 x float> and <16 x i32>, one zmm register
with AVX-512, two ymm with AVX2) and the few operations the W4A16 kernel needs, each a plain
LLVM vector instruction (or, for fma, the llvm.fma intrinsic) with no fast-math flag. A kernel
written with them keeps its accumulators in registers across a whole loop, which Numba's
vectorised inner loops cannot (they load and store them at every pass). The arithmetic is lane
by lane; a splat copies one value into every lane.

Loads and stores take an array and an unsigned element offset (no negative-index wraparound,
no bounds check: the caller keeps offset + 16 within the array)."""
from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model

LANES = 16
_F = ir.FloatType()
_I = ir.IntType(32)
_VF = ir.VectorType(_F, LANES)
_VI = ir.VectorType(_I, LANES)


class Vec16(types.Type):
    def __init__(self, kind: str):
        self.kind = kind
        super().__init__(name=f"Vec16({kind})")


F32x16 = Vec16("float32")
I32x16 = Vec16("int32")


@register_model(Vec16)
class _Vec16Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _VF if fe_type.kind == "float32" else _VI)


def _at(context, builder, arrty, arr, offset, elem):
    data = context.make_array(arrty)(context, builder, arr).data
    return builder.bitcast(builder.gep(data, [offset]), ir.VectorType(elem, LANES).as_pointer())


def _splat(builder, x, vt):
    v = builder.insert_element(ir.Constant(vt, ir.Undefined), x, ir.Constant(_I, 0))
    return builder.shuffle_vector(v, ir.Constant(vt, ir.Undefined), ir.Constant(_VI, [0] * LANES))


def _loader(elem, nbytes: int, vty, doc: str):
    """An intrinsic reading arr[offset:offset + 16] (elements of nbytes bytes) as one vector;
    elements narrower than 32 bits are zero-extended."""
    @intrinsic
    def load(typingctx, arr, offset):
        def codegen(context, builder, sig, args):
            v = builder.load(_at(context, builder, sig.args[0], args[0], args[1], elem), align=nbytes)
            return builder.zext(v, _VI) if nbytes < 4 else v
        return vty(arr, offset), codegen
    load.__doc__ = doc
    return load


load_f32 = _loader(_F, 4, F32x16, "arr[offset:offset + 16] of a float32 array.")
load_u32 = _loader(_I, 4, I32x16, "arr[offset:offset + 16] of a uint32 array, as int32 lanes (the same bits).")
load_u8 = _loader(ir.IntType(8), 1, I32x16, "arr[offset:offset + 16] of a uint8 array, zero-extended to int32 lanes.")


@intrinsic
def store_f32(typingctx, arr, offset, v):
    """arr[offset:offset + 16] = v."""
    def codegen(context, builder, sig, args):
        builder.store(args[2], _at(context, builder, sig.args[0], args[0], args[1], _F), align=4)
        return context.get_dummy_value()
    return types.none(arr, offset, v), codegen


@intrinsic
def splat_f32(typingctx, x):
    """x (float32) in every lane."""
    if x != types.float32:
        return None

    def codegen(context, builder, sig, args):
        return _splat(builder, args[0], _VF)
    return F32x16(x), codegen


@intrinsic
def splat_i32(typingctx, x):
    """x (an integer, truncated to 32 bits) in every lane."""
    if not isinstance(x, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        v = args[0]
        v = builder.trunc(v, _I) if v.type.width > 32 else builder.zext(v, _I) if v.type.width < 32 else v
        return _splat(builder, v, _VI)
    return I32x16(x), codegen


def _binary(op: str, vty):
    @intrinsic
    def f(typingctx, a, b):
        if a != vty or b != vty:
            return None

        def codegen(context, builder, sig, args):
            return getattr(builder, op)(args[0], args[1])
        return vty(vty, vty), codegen
    return f


add = _binary("fadd", F32x16)
sub = _binary("fsub", F32x16)
mul = _binary("fmul", F32x16)
and_ = _binary("and_", I32x16)
or_ = _binary("or_", I32x16)
shr = _binary("lshr", I32x16)    # logical shift right, lane by lane
shl = _binary("shl", I32x16)


@intrinsic
def fma(typingctx, a, b, c):
    """a * b + c rounded once, lane by lane (llvm.fma)."""
    if not (a == b == c == F32x16):
        return None

    def codegen(context, builder, sig, args):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_VF, [_VF] * 3), "llvm.fma.v16f32")
        return builder.call(fn, args)
    return F32x16(F32x16, F32x16, F32x16), codegen


@intrinsic
def as_f32(typingctx, v):
    """The int32 lanes' bits read as float32."""
    if v != I32x16:
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], _VF)
    return F32x16(I32x16), codegen
