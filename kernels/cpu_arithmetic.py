"""Floating-point arithmetic of the Numba CPU kernels: exp, tanh and sigmoid as plain arithmetic
that vectorises, the activations and their derivatives, a vector sum, the finiteness check, the
control of subnormal numbers (the x86 MXCSR register), and FLAGS, the compile flags of every
CPU kernel.

exp is vectorisable code instead of libm's, within an ulp of it. Numba inlines a function
(``inline="always"``) by copying its whole expanded IR at every site, which is slow to compile,
so only the helpers that loop over rows and the seven-way :func:`_activation` (too large for
LLVM to inline) are inlined that way; exp, tanh, sigmoid and the derivatives are plain calls,
which LLVM inlines into the loops and vectorises all the same, and so is :func:`activate`,
compiled once for its four call sites in a cell. Inlining everything made the first compile
several times slower (bench/test_training.py times the first compile).
"""
import math
import platform

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

from .activation_ids import HARD_SIGMOID, HARD_SIGMOID_KERAS2, RELU, SIGMOID, SOFTSIGN, TANH

# error_model='numpy': division by zero gives inf/NaN rather than raising, which lets loops vectorise.
FLAGS = dict(cache=True, nogil=True, error_model="numpy")

# exp(x) = 2**k * exp(r), x = k ln2 + r, |r| <= ln2/2. ln2 split so that k * LN2_HI is exact.
LOG2_E = 1.4426950408889634
LN2_HI = 0.693145751953125
LN2_LO = 1.428606820309417232e-06
# expm1(r) = r + r**2 * (1/2! + r/3! + ... + r**(n-2)/n!) for |r| <= ln2/2: the first term left
# out, r**(n+1)/(n+1)!, is below half an ulp with n = 7 in float32 and n = 13 in float64.
TAYLOR = {bits: tuple(1 / math.factorial(n) for n in range(last, 1, -1)) for bits, last in ((32, 7), (64, 13))}


@intrinsic
def _pow2(typingctx, k):
    """2.0**k in k's float type, for a float k holding an integer below the exponent's maximum;
    0 below the smallest normal number (so exp flushes to 0 where it would be subnormal)."""
    if not isinstance(k, types.Float):
        return None
    width, mantissa = (32, 23) if k == types.float32 else (64, 52)
    bias = (1 << (width - mantissa - 2)) - 1

    def codegen(context, builder, signature, args):
        integer = ir.IntType(width)
        n = builder.fptosi(args[0], integer)
        bits = builder.shl(builder.add(n, ir.Constant(integer, bias)), ir.Constant(integer, mantissa))
        bits = builder.select(builder.icmp_signed("<", n, ir.Constant(integer, 1 - bias)), ir.Constant(integer, 0), bits)
        return builder.bitcast(bits, context.get_value_type(k))

    return k(k), codegen


@intrinsic
def _fma(typingctx, a, b, c):
    """a * b + c rounded once (LLVM's fma, a vector instruction where the CPU has one): the
    polynomial of exp with half the operations and a shorter chain of them."""
    if not (isinstance(a, types.Float) and a == b == c):
        return None

    def codegen(context, builder, signature, args):
        return builder.fma(*args)

    return a(a, b, c), codegen


# MXCSR, the x86 SSE/AVX control register: flush subnormal results to zero and read subnormal
# inputs as zero, since each subnormal otherwise costs a slow microcode assist.
FLUSH_SUBNORMALS = 0x8040


@intrinsic
def _exchange_mxcsr(typingctx, keep, set_bits):
    """Sets the MXCSR register to (MXCSR & keep) | set_bits; returns its value before. Does
    nothing (and returns 0) off x86."""
    if not (isinstance(keep, types.Integer) and isinstance(set_bits, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        if platform.machine().lower() not in ("x86_64", "amd64"):
            return ir.Constant(ir.IntType(64), 0)
        int32 = ir.IntType(32)
        slot = builder.alloca(int32)
        pointer = builder.bitcast(slot, ir.IntType(8).as_pointer())
        access = ir.FunctionType(ir.VoidType(), [ir.IntType(8).as_pointer()])
        builder.call(builder.module.declare_intrinsic("llvm.x86.sse.stmxcsr", fnty=access), [pointer])
        before = builder.load(slot)
        keep_bits, new_bits = (builder.trunc(a, int32) for a in args)
        builder.store(builder.or_(builder.and_(before, keep_bits), new_bits), slot)
        builder.call(builder.module.declare_intrinsic("llvm.x86.sse.ldmxcsr", fnty=access), [pointer])
        return builder.zext(before, ir.IntType(64))

    return types.int64(keep, set_bits), codegen


@njit(**FLAGS)
def exchange_mxcsr(keep, set_bits):
    """:func:`_exchange_mxcsr` for Python, which alone can restore the register on every way out
    of a compiled call (an exception leaves compiled code at once)."""
    return _exchange_mxcsr(keep, set_bits)


def _taylor(T):
    """The coefficients TAYLOR[bits] for the float type T, highest first (picked at compile time)."""


@overload(_taylor, inline="always")
def _taylor_for(T):
    coefficients = TAYLOR[T.instance_type.bitwidth]
    return lambda T: coefficients


@njit
def _exp_split(x, T):
    """(2**k, expm1(r)) with exp(x) = 2**k * (1 + expm1(r)), for x <= 0 of float type T. Plain
    arithmetic, so that loops over it vectorise (libm's exp is one call per element)."""
    x = T(-1e4) if x < T(-1e4) else x  # past underflow in both dtypes; NaN passes
    k = np.rint(x * T(LOG2_E))
    r = _fma(k, T(-LN2_LO), _fma(k, T(-LN2_HI), x))  # k * LN2_HI is exact, so r's first part is too
    coefficients = _taylor(T)
    p = T(coefficients[0])
    for coefficient in coefficients[1:]:
        p = _fma(p, r, T(coefficient))
    return _pow2(k), _fma(r * r, p, r)


@njit
def exp(x, T):
    """exp(x) for x <= 0."""
    scale, expm1_r = _exp_split(x, T)
    return _fma(scale, expm1_r, scale)


@njit
def tanh(z, T):
    """tanh(z) of float type T, from expm1(-2|z|)."""
    scale, expm1_r = _exp_split(T(-2) * abs(z), T)
    e = _fma(scale, expm1_r, scale - T(1))  # expm1(-2|z|), exact near 0
    return math.copysign(-e / (T(2) + e), z)


@njit
def sigmoid(z, T):
    """sigmoid(z) of float type T, from exp(-|z|)."""
    e = exp(-abs(z), T)
    return (T(1) if z >= T(0) else e) / (T(1) + e)


@njit(inline="always")
def _activation(code, z, T):
    """The activation ``code`` of z, as fastlstm.activations defines it."""
    if code == TANH:
        return tanh(z, T)
    if code == SIGMOID:
        return sigmoid(z, T)
    if code == HARD_SIGMOID:
        return min(max(z + T(3), T(0)), T(6)) / T(6)
    if code == HARD_SIGMOID_KERAS2:
        return min(max(T(0.2) * z + T(0.5), T(0)), T(1))
    if code == RELU:
        return max(z, T(0))
    if code == SOFTSIGN:
        return z / (T(1) + abs(z))
    return z


@njit
def derivative(code, y, T):
    """The derivative of the activation ``code`` from its output y."""
    if code == TANH:
        return T(1) - y * y
    if code == SIGMOID:
        return y * (T(1) - y)
    if code == HARD_SIGMOID:
        return T(1 / 6) if T(0) < y < T(1) else T(0)
    if code == HARD_SIGMOID_KERAS2:
        return T(0.2) if T(0) < y < T(1) else T(0)
    if code == RELU:
        return T(1) if y > T(0) else T(0)
    if code == SOFTSIGN:
        return (T(1) - abs(y)) * (T(1) - abs(y))
    return T(1)


@njit
def activate(code, a, out):
    """out[j] = the activation ``code`` of a[j] for vectors a and out. tanh and sigmoid (the
    costly ones) get loops of their own, so that they vectorise: LLVM does not reliably split one
    loop on a choice made at run time. A plain call: its three loops compile once, not at each of
    the cell's four call sites (bench/test_training.py)."""
    T = a.dtype.type
    if code == TANH:
        for j in range(a.size):
            out[j] = tanh(a[j], T)
    elif code == SIGMOID:
        for j in range(a.size):
            out[j] = sigmoid(a[j], T)
    else:
        for j in range(a.size):
            out[j] = _activation(code, a[j], T)


@njit(inline="always")
def add_to(out, a):
    """out += a for vectors, as a loop: Numba's ``+=`` on views of rows builds a broadcast
    expression that is several times slower (bench/test_experiments.py, the batch-1 epochs)."""
    for j in range(out.size):
        out[j] += a[j]


@njit(inline="always")
def copy_to(out, a):
    """out[:] = a for 2-D arrays of one shape (the caller checks), as loops: Numba's slice
    assignment of an array compiles a shape check whose error message (integers formatted and
    joined) takes seconds to compile (bench/test_training.py)."""
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            out[i, j] = a[i, j]


@njit(cache=True, nogil=True, fastmath={"reassoc"})
def all_finite(a):
    """Whether the array a, of any shape, holds no NaN and no inf (one that is not C-contiguous
    is copied first): v - v is NaN for those alone, and one NaN makes the sum NaN, whatever order
    the (vectorised) sum takes. Only 'reassoc': with 'nsz' or 'nnan' LLVM may fold v - v to 0.
    Flattened here rather than by the caller: a reshape from Python cost a quarter of a
    microsecond per array (bench/test_kernels.py at 1, 1, 1, 50, four arrays checked a call)."""
    flat = a.ravel()
    total = flat.dtype.type(0)
    for i in range(flat.size):
        total += flat[i] - flat[i]
    return total == 0
