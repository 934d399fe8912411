"""Numba CPU kernels of the ``numba_cpu`` backend (imported by it alone, never by ``import fastlstm``).

Layout, as the NumPy backend's: ``zx, gates, dz [batch, time, 4*units]`` (gates i, f, c, o),
``h, c [batch, time + 1, units]`` (time index 0: the initial state), ``act_c [batch, time, units]``
(``activation(c_t)``).

- :func:`forward`, :func:`backward`: a whole layer in one call, the input projection, the
  recurrence (:func:`forward_sequence`, :func:`backward_sequence`) and the weight gradients as
  loops; for the small shapes, where a BLAS call per step, or any call at all, costs more than
  its work.
- :func:`forward_step`, :func:`backward_step`: one step's pointwise work for a slice of the batch,
  around one BLAS product per step made by the caller; for the large shapes (the caller runs a
  slice of the samples on each core, its arrays time-major: ``[time, n, ...]``).
- :func:`train_epoch`: a pass of an LSTM + Dense(softmax) model over its batches, each batch's
  forward, categorical cross-entropy, backward and Adam update in the same call.

Each operation is done in the arrays' dtype (float32 or float64) in the order the NumPy backend
and ``fastlstm.nn`` write it (no ``fastmath`` but for the sums of :func:`_matvec`), so only sums
of products (another summation order than BLAS's) and exp (vectorisable code instead of libm's,
within an ulp) round differently.
Compiled on first use for each dtype and cached on disk (``cache=True``). Numba inlines a function
(``inline="always"``) by copying its whole expanded IR at every site, which is slow to compile, so
only the helpers that loop over rows and the seven-way :func:`_activation` (too large for LLVM to
inline) are inlined that way; exp, tanh, sigmoid and the derivatives are plain calls, which LLVM
inlines into the loops and vectorises all the same. Inlining everything made the first compile
four times slower (measured with an empty cache: a layer's forward and backward, 56 s against
20 s; every kernel the alphabet experiments and a layer in both dtypes use, 337 s against 83 s).
"""
import math
import platform

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

# error_model='numpy': division by zero gives inf/NaN rather than raising, which lets loops vectorise.
FLAGS = dict(cache=True, nogil=True, error_model="numpy")

# Activation codes: the index of each name.
ACTIVATIONS = ("tanh", "sigmoid", "hard_sigmoid", "hard_sigmoid_keras2", "relu", "softsign", "linear")
TANH, SIGMOID, HARD_SIGMOID, HARD_SIGMOID_KERAS2, RELU, SOFTSIGN, LINEAR = range(len(ACTIVATIONS))

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
# inputs as zero. Each subnormal costs a microcode assist of about a hundred cycles otherwise.
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
    k = np.floor(x * T(LOG2_E) + T(0.5))
    r = (x - k * T(LN2_HI)) - k * T(LN2_LO)
    coefficients = _taylor(T)
    p = T(coefficients[0])
    for coefficient in coefficients[1:]:
        p = _fma(p, r, T(coefficient))
    return _pow2(k), _fma(r * r, p, r)


@njit
def _exp(x, T):
    """exp(x) for x <= 0."""
    scale, expm1_r = _exp_split(x, T)
    return scale * (expm1_r + T(1))


@njit
def _tanh(z, T):
    """tanh(z) of float type T, from expm1(-2|z|)."""
    scale, expm1_r = _exp_split(T(-2) * abs(z), T)
    e = scale * expm1_r + (scale - T(1))  # expm1(-2|z|), exact near 0
    return math.copysign(-e / (T(2) + e), z)


@njit
def _sigmoid(z, T):
    """sigmoid(z) of float type T, from exp(-|z|)."""
    e = _exp(-abs(z), T)
    return (T(1) if z >= T(0) else e) / (T(1) + e)


@njit(inline="always")
def _activation(code, z, T):
    """The activation ``code`` of z, as fastlstm.activations defines it."""
    if code == TANH:
        return _tanh(z, T)
    if code == SIGMOID:
        return _sigmoid(z, T)
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
def _derivative(code, y, T):
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


@njit(inline="always")
def _activate(code, a, out):
    """out[j] = the activation ``code`` of a[j] for vectors a and out. tanh and sigmoid (the
    costly ones) get loops of their own, so that they vectorise: LLVM does not reliably split one
    loop on a choice made at run time."""
    T = a.dtype.type
    if code == TANH:
        for j in range(a.size):
            out[j] = _tanh(a[j], T)
    elif code == SIGMOID:
        for j in range(a.size):
            out[j] = _sigmoid(a[j], T)
    else:
        for j in range(a.size):
            out[j] = _activation(code, a[j], T)


@njit(inline="always")
def _add_to(out, a):
    """out += a for vectors, as a loop: Numba's ``+=`` on views of rows builds a broadcast
    expression that costs about three times as much (30 ns against 11 for 128 floats)."""
    for j in range(out.size):
        out[j] += a[j]


@njit(inline="always")
def _add_product(v, m, out):
    """out += v @ m for v [n] and m [n, k], each element summed in the order of i. Four rows of
    m per pass over out (the same sums, a quarter of the loads and stores of out); the inner
    loops run along m's rows, with no reduction, so they vectorise."""
    n = v.size
    quad = n - n % 4
    for i in range(0, quad, 4):
        v0, v1, v2, v3 = v[i], v[i + 1], v[i + 2], v[i + 3]
        for j in range(out.size):
            out[j] = (((out[j] + v0 * m[i, j]) + v1 * m[i + 1, j]) + v2 * m[i + 2, j]) + v3 * m[i + 3, j]
    for i in range(quad, n):
        vi = v[i]
        for j in range(out.size):
            out[j] += vi * m[i, j]


@njit(cache=True, nogil=True, fastmath={"reassoc", "nsz"})
def _matvec(m, v, out):
    """out = m @ v for m [n, k] and v [k]: a dot product along each row of m, summed in whatever
    order vectorises (the one place where the order of a sum is left to the compiler). Four rows
    at a time: four independent sums in flight rather than one waiting on its own additions."""
    T = v.dtype.type
    n = out.size
    quad = n - n % 4
    for i in range(0, quad, 4):
        total0 = total1 = total2 = total3 = T(0)
        for j in range(v.size):
            total0 += m[i, j] * v[j]
            total1 += m[i + 1, j] * v[j]
            total2 += m[i + 2, j] * v[j]
            total3 += m[i + 3, j] * v[j]
        out[i], out[i + 1], out[i + 2], out[i + 3] = total0, total1, total2, total3
    for i in range(quad, n):
        total = T(0)
        for j in range(v.size):
            total += m[i, j] * v[j]
        out[i] = total


# The products of the stepwise path: ``a [m, k] @ w [k, n]`` for a few rows a time step, over the
# same weights at every step. OpenBLAS copies all of w into its packed layout at every call, which
# for 32 rows of a [640 x 2048] product took about a fifth of the call; here the weights are
# packed once per pass (pack_columns) and each step only multiplies (matmul_packed).
TILE_ROWS = 4  # rows of a per tile: 4 x 2 vector accumulators, 3 more registers for the operands
TILE_VECTORS = 2  # vectors of columns per tile, of 256 bits each (8 float32, 4 float64)
CHUNK_BYTES = 192 << 10  # the rows of a taken at once: within a core's L2 cache, with a panel


def tile_columns(dtype):
    """The columns of a tile, and of a panel of packed weights, for float32 or float64."""
    return TILE_VECTORS * 256 // (8 * np.dtype(dtype).itemsize)


@intrinsic
def _multiply_tile(typingctx, a, row, panel, out, out_row, column):
    """out[out_row:out_row + TILE_ROWS, column:column + tile_columns] = a[row:row + TILE_ROWS]
    @ panel, for 2-D float32 or float64 arrays whose rows are contiguous; panel [k, tile_columns],
    contiguous, k = a's columns. The caller checks the bounds. The accumulators stay in vector
    registers for the whole sum: LLVM does not keep Numba's arrays in registers."""
    if not (isinstance(a, types.Array) and a.dtype in (types.float32, types.float64) and a.ndim == 2
            and panel == types.Array(a.dtype, 2, "C") and isinstance(out, types.Array) and out.dtype == a.dtype
            and out.ndim == 2 and all(isinstance(i, types.Integer) for i in (row, out_row, column))):
        return None

    def codegen(context, builder, signature, args):
        a_array, panel_array, out_array = (context.make_array(signature.args[i])(context, builder, args[i])
                                           for i in (0, 2, 3))
        i64 = ir.IntType(64)
        row, out_row, column = (context.cast(builder, args[i], signature.args[i], types.int64) for i in (1, 4, 5))
        float_type = context.get_value_type(a.dtype)
        width = tile_columns(str(a.dtype)) // TILE_VECTORS
        vector = ir.VectorType(float_type, width)
        itemsize = ir.Constant(i64, a.dtype.bitwidth // 8)

        def element(array, r, c):
            """The address of array[r, c], its rows' stride in bytes, as a pointer to the dtype."""
            offset = builder.add(builder.mul(r, builder.extract_value(array.strides, 0)), builder.mul(c, itemsize))
            return builder.bitcast(builder.gep(builder.bitcast(array.data, ir.IntType(8).as_pointer()), [offset]),
                                   float_type.as_pointer())

        depth = builder.extract_value(panel_array.shape, 0)
        fma_name = f"llvm.fma.v{width}f{a.dtype.bitwidth}"
        fma = builder.module.globals.get(fma_name) or ir.Function(
            builder.module, ir.FunctionType(vector, [vector] * 3), fma_name)
        zero = ir.Constant(vector, [0.0] * width)
        splat = ir.Constant(ir.VectorType(ir.IntType(32), width), [0] * width)
        a_rows = [element(a_array, builder.add(row, ir.Constant(i64, r)), ir.Constant(i64, 0)) for r in range(TILE_ROWS)]

        entry = builder.block
        loop = builder.append_basic_block("tile.loop")
        done = builder.append_basic_block("tile.done")
        builder.cbranch(builder.icmp_signed(">", depth, ir.Constant(i64, 0)), loop, done)

        builder.position_at_end(loop)
        k = builder.phi(i64)
        sums = [builder.phi(vector) for _ in range(TILE_ROWS * TILE_VECTORS)]
        panel_row = builder.gep(panel_array.data, [builder.mul(k, ir.Constant(i64, width * TILE_VECTORS))])
        columns = [builder.load(builder.bitcast(builder.gep(panel_row, [ir.Constant(i64, v * width)]),
                                                vector.as_pointer()), align=a.dtype.bitwidth // 8)
                   for v in range(TILE_VECTORS)]
        updated = []
        for r in range(TILE_ROWS):
            broadcast = builder.shuffle_vector(
                builder.insert_element(ir.Constant(vector, ir.Undefined), builder.load(builder.gep(a_rows[r], [k])),
                                       ir.Constant(ir.IntType(32), 0)),
                ir.Constant(vector, ir.Undefined), splat)
            updated += [builder.call(fma, [broadcast, column_, sums[r * TILE_VECTORS + v]])
                        for v, column_ in enumerate(columns)]
        following = builder.add(k, ir.Constant(i64, 1))
        k.add_incoming(ir.Constant(i64, 0), entry)
        k.add_incoming(following, loop)
        for total, new in zip(sums, updated):
            total.add_incoming(zero, entry)
            total.add_incoming(new, loop)
        builder.cbranch(builder.icmp_signed("<", following, depth), loop, done)

        builder.position_at_end(done)
        totals = []
        for new in updated:
            total = builder.phi(vector)
            total.add_incoming(zero, entry)
            total.add_incoming(new, loop)
            totals.append(total)
        for r in range(TILE_ROWS):
            start = element(out_array, builder.add(out_row, ir.Constant(i64, r)), column)
            for v in range(TILE_VECTORS):
                builder.store(totals[r * TILE_VECTORS + v],
                              builder.bitcast(builder.gep(start, [ir.Constant(i64, v * width)]), vector.as_pointer()),
                              align=a.dtype.bitwidth // 8)
        return context.get_dummy_value()

    return types.void(a, row, panel, out, out_row, column), codegen


def pack_columns(w):
    """w [k, n] as panels [ceil(n / columns), k, columns] of tile_columns(w.dtype) columns each,
    each panel contiguous (the last one padded with zeros): the layout matmul_packed reads."""
    k, n = w.shape
    columns = tile_columns(w.dtype)
    full = n // columns
    panels = np.empty((-(-n // columns), k, columns), w.dtype)
    panels[:full] = w[:, :full * columns].reshape(k, full, columns).transpose(1, 0, 2)
    if full < len(panels):
        panels[full] = 0
        panels[full, :, :n - full * columns] = w[:, full * columns:]
    return panels


@njit(**FLAGS)
def matmul_packed(a, panels, out):
    """out [m, n] = a [m, k] @ w [k, n], with w as pack_columns(w) made it; each element summed
    in the order of k. The rows of a and out must be contiguous (any stride between them)."""
    m, k = a.shape
    n = out.shape[1]
    if not (_contiguous_rows(a) and _contiguous_rows(out)) or out.shape[0] != m \
            or panels.shape[1] != k or n > panels.shape[0] * panels.shape[2]:
        raise ValueError("matmul_packed takes a [m, k], panels [>= n / tile columns, k, tile columns] and out "
                         "[m, n], the rows of a and out contiguous")
    if m >= TILE_ROWS:
        _multiply_packed(a, panels, out)
    else:  # too few rows for a tile: through a copy padded with zeros
        padded = np.zeros((TILE_ROWS, k), a.dtype)
        padded[:m] = a
        result = np.empty((TILE_ROWS, n), a.dtype)
        _multiply_packed(padded, panels, result)
        out[:] = result[:m]


@njit(inline="always")
def _contiguous_rows(x):
    return x.shape[1] <= 1 or x.strides[1] == x.itemsize


@njit(inline="always")
def _multiply_packed(a, panels, out):
    """matmul_packed for TILE_ROWS rows or more. Each panel takes the rows TILE_ROWS at a time,
    the last tile overlapping the one before (some rows computed twice, alike), in chunks of rows
    that stay in the core's cache while every panel passes over them."""
    m, k = a.shape
    n = out.shape[1]
    columns = panels.shape[2]
    edge = np.empty((TILE_ROWS, columns), a.dtype)  # a tile of the last panel, when n ends inside it
    chunk = max(TILE_ROWS, CHUNK_BYTES // (k * a.itemsize + 1) // TILE_ROWS * TILE_ROWS)
    for first in range(0, m, chunk):
        for p in range(panels.shape[0]):
            column = p * columns
            for tile in range(first, min(m, first + chunk), TILE_ROWS):
                top = min(tile, m - TILE_ROWS)
                if column + columns <= n:
                    _multiply_tile(a, top, panels[p], out, top, column)
                else:
                    _multiply_tile(a, top, panels[p], edge, 0, 0)
                    out[top:top + TILE_ROWS, column:] = edge[:, :n - column]


@njit(cache=True, nogil=True, fastmath={"reassoc"})
def all_finite(a):
    """Whether the vector a holds no NaN and no inf: v - v is NaN for those alone, and one NaN
    makes the sum NaN, whatever order the (vectorised) sum takes. Only 'reassoc': with 'nsz' or
    'nnan' LLVM may fold v - v to 0."""
    total = a.dtype.type(0)
    for i in range(a.size):
        total += a[i] - a[i]
    return total == 0


@njit(inline="always")
def _activate_default_gates(i, f, g, o):
    """Activates the four gates' pre-activations [units] in place with Keras's default
    activations, in one loop: four independent chains of arithmetic per unit, and four arrays, few
    enough for LLVM to check at run time that they do not overlap and vectorise."""
    T = i.dtype.type
    for u in range(i.size):
        i[u] = _sigmoid(i[u], T)
        f[u] = _sigmoid(f[u], T)
        g[u] = _tanh(g[u], T)
        o[u] = _sigmoid(o[u], T)


@njit(inline="always")
def _cell_forward(z, c_prev, c, act_c, h, activation, recurrent_activation):
    """One step of one sample. z [4*units]: pre-activations, activated in place (the gates);
    c_prev [units]: the previous cell state; fills c, act_c = activation(c) and h [units]."""
    units = c.size
    i, f, g, o = z[:units], z[units:2 * units], z[2 * units:3 * units], z[3 * units:]
    if activation == TANH and recurrent_activation == SIGMOID:  # Keras's default
        _activate_default_gates(i, f, g, o)
    else:
        if_ = z[:2 * units]
        _activate(recurrent_activation, if_, if_)
        _activate(activation, g, g)
        _activate(recurrent_activation, o, o)
    for u in range(units):
        c[u] = f[u] * c_prev[u] + i[u] * g[u]
    _activate(activation, c, act_c)
    for u in range(units):
        h[u] = o[u] * act_c[u]


@njit(inline="always")
def _gate_gradient(code, y, a, b, out):
    """out = derivative(y) * (a * b) for vectors: a gate's pre-activation gradient from its
    output y, the gradient w.r.t. the product it enters and the product's other factor."""
    T = y.dtype.type
    for u in range(y.size):
        out[u] = _derivative(code, y[u], T) * (a[u] * b[u])


@njit(inline="always")
def _cell_backward_with(gates, c_prev, act_c, dh, dc, dz, activation, recurrent_activation):
    units = dc.size
    T = dc.dtype.type
    i, f, g, o = gates[:units], gates[units:2 * units], gates[2 * units:3 * units], gates[3 * units:]
    for u in range(units):
        dc[u] += dh[u] * o[u] * _derivative(activation, act_c[u], T)
    _gate_gradient(recurrent_activation, i, dc, g, dz[:units])
    _gate_gradient(recurrent_activation, f, dc, c_prev, dz[units:2 * units])
    _gate_gradient(activation, g, dc, i, dz[2 * units:3 * units])
    _gate_gradient(recurrent_activation, o, dh, act_c, dz[3 * units:])
    for u in range(units):
        dc[u] *= f[u]


@njit(inline="always")
def _cell_backward(gates, c_prev, act_c, dh, dc, dz, activation, recurrent_activation):
    """One step back for one sample: from dh and dc, the gradients w.r.t. h_t and c_t, fills dz
    [4*units], the gradient w.r.t. the step's pre-activations, and turns dc into the gradient
    w.r.t. c_prev through the forget gate (the caller adds dz @ recurrent_kernel.T to dh). Each
    loop reads and writes few enough arrays for LLVM to vectorise it."""
    if activation == TANH and recurrent_activation == SIGMOID:  # Keras's default, specialised
        _cell_backward_with(gates, c_prev, act_c, dh, dc, dz, TANH, SIGMOID)
    else:
        _cell_backward_with(gates, c_prev, act_c, dh, dc, dz, activation, recurrent_activation)


@njit(**FLAGS)
def forward_sequence(gates, recurrent_kernel, h, c, act_c, activation, recurrent_activation, zero_state,
                     recurrent_part):
    """Every step of the recurrence, one sample after another.

    gates [batch, time, 4*units]: ``x_t @ kernel + bias`` on entry, the activated gates on return,
    in place (as two arrays of the same memory, the sum below had failed LLVM's overlap check and
    run unvectorised); h, c [batch, time + 1, units]: the initial state at time index 0 on entry,
    every step's state on return; fills act_c [batch, time, units]. Activations are codes (indices
    into ACTIVATIONS). zero_state: the initial state is zeros, so step 0 skips the product with
    it, which adds nothing. recurrent_part [4*units]: scratch, the caller's, so that the fused
    training pass allocates it once per epoch rather than once per batch (2 % of a batch-1 step).
    """
    for b in range(gates.shape[0]):
        for t in range(gates.shape[1]):
            gate = gates[b, t]
            # x_t @ kernel + bias + (h @ recurrent_kernel), as the NumPy backend adds them: the small
            # terms of the product summed first, then the larger rest (2x closer to float64).
            recurrent_part[:] = 0
            if t > 0 or not zero_state:
                _add_product(h[b, t], recurrent_kernel, recurrent_part)
            for j in range(gate.size):
                gate[j] += recurrent_part[j]
            _cell_forward(gate, c[b, t], c[b, t + 1], act_c[b, t], h[b, t + 1], activation, recurrent_activation)


@njit(**FLAGS)
def forward_step(gates, bias, c_prev, c, act_c, h_rows, h_start, activation, recurrent_activation):
    """One time step of the recurrence for every sample of the arrays, as in
    :func:`forward_sequence`. gates [n, 4*units]: ``x_t @ kernel + h_{t-1} @ recurrent_kernel``
    (the caller's BLAS product) on entry, the activated gates on return; bias: empty for none;
    c_prev [n, units]: the previous cell state. Fills c, act_c [n, units] and h, written to
    ``h_rows[:, h_start:]`` (the next step's product rows, ``[x_{t+1}, h_t]``)."""
    for b in range(gates.shape[0]):
        gate = gates[b]
        if bias.size:
            _add_to(gate, bias)
        _cell_forward(gate, c_prev[b], c[b], act_c[b], h_rows[b, h_start:], activation, recurrent_activation)


@njit(**FLAGS)
def backward_sequence(gates, c, act_c, recurrent_kernel, dy, dh, dc, dz, activation, recurrent_activation,
                      initial_gradients):
    """Every step of the recurrence backwards, one sample after another.

    gates, c, act_c: as :func:`forward_sequence` left them; recurrent_kernel [units, 4*units];
    dy [batch, time, units]: the gradient w.r.t. every step's output, or [batch, 0, units] when
    only the last step's (which the caller adds to dh); dh, dc [batch, units]: the gradients
    w.r.t. the final state on entry, w.r.t. the initial state on return; fills dz
    [batch, time, 4*units], the gradient w.r.t. every pre-activation. initial_gradients False:
    those w.r.t. the initial state are not wanted, so step 0 skips dz @ recurrent_kernel.T and
    dh, dc are left meaningless.
    """
    for b in range(gates.shape[0]):
        for t in range(gates.shape[1] - 1, -1, -1):
            if dy.shape[1]:
                _add_to(dh[b], dy[b, t])
            _cell_backward(gates[b, t], c[b, t], act_c[b, t], dh[b], dc[b], dz[b, t], activation,
                           recurrent_activation)
            if t > 0 or initial_gradients:
                _matvec(recurrent_kernel, dz[b, t], dh[b])


@njit(**FLAGS)
def backward_step(gates, c_prev, act_c, dh, dc, dz, activation, recurrent_activation):
    """One time step of the recurrence backwards for every sample of the arrays [n, ...], as in
    :func:`backward_sequence`: from the step's gates, c_prev and act_c and the gradients dh, dc
    w.r.t. h_t and c_t, fills dz [n, 4*units] and leaves in dc the gradient w.r.t. c_{t-1}; the
    caller sets dh = dz @ recurrent_kernel.T (a BLAS product)."""
    for b in range(gates.shape[0]):
        _cell_backward(gates[b], c_prev[b], act_c[b], dh[b], dc[b], dz[b], activation, recurrent_activation)


@njit(inline="always")
def _project(x, kernel, bias, zx):
    """zx[b, t] = x[b, t] @ kernel + bias for x [batch, time, features] (processing order) and
    zx [batch, time, 4*units]; bias may be empty (none)."""
    for b in range(x.shape[0]):
        for t in range(x.shape[1]):
            z = zx[b, t]
            z[:] = 0
            _add_product(x[b, t], kernel, z)
            if bias.size:
                _add_to(z, bias)


@njit(inline="always")
def _add_weight_gradients(x, h, dz, dkernel, drecurrent_kernel, dbias, zero_state):
    """Adds the gradients w.r.t. kernel, recurrent_kernel and bias (if not empty) of every sample
    and step: x [batch, time, features] and h [batch, time + 1, units] as the forward pass read
    them, dz [batch, time, 4*units] from :func:`backward_sequence`. zero_state: the initial
    state was zeros, so step 0 adds nothing to the recurrent kernel's gradient and is skipped."""
    time = dz.shape[1]
    first = 1 if zero_state else 0
    for b in range(dz.shape[0]):
        # Row by row, summed over time: kernel[d] += x[:, d] @ dz, recurrent_kernel[u] += h[:, u] @ dz.
        for d in range(dkernel.shape[0]):
            _add_product(x[b, :, d], dz[b], dkernel[d])
        for u in range(drecurrent_kernel.shape[0]):
            _add_product(h[b, first:time, u], dz[b, first:], drecurrent_kernel[u])
        if dbias.size:
            for t in range(time):
                _add_to(dbias, dz[b, t])


@njit(**FLAGS)
def forward(x, kernel, recurrent_kernel, bias, h0, c0, activation, recurrent_activation):
    """A whole LSTM layer forward: x [batch, time, features] in processing order, bias empty for
    none, h0, c0 [batch, units]. Returns h, c [batch, time + 1, units] (h0, c0 at time index 0),
    gates [batch, time, 4*units] (activated) and act_c [batch, time, units]."""
    batch, time, _ = x.shape
    units = recurrent_kernel.shape[0]
    h = np.empty((batch, time + 1, units), x.dtype)
    c = np.empty_like(h)
    gates = np.empty((batch, time, 4 * units), x.dtype)
    act_c = np.empty((batch, time, units), x.dtype)
    h[:, 0] = h0
    c[:, 0] = c0
    _project(x, kernel, bias, gates)
    forward_sequence(gates, recurrent_kernel, h, c, act_c, activation, recurrent_activation, False,
                     np.empty(gates.shape[2], x.dtype))
    return h, c, gates, act_c


@njit(**FLAGS)
def backward(x, kernel, recurrent_kernel, has_bias, h, c, gates, act_c, dy, dh, dc, activation,
             recurrent_activation):
    """A whole LSTM layer backward, from what :func:`forward` made (and x, kernel,
    recurrent_kernel as it had them); dy, dh, dc as :func:`backward_sequence` takes them (dh, dc
    hold the gradients w.r.t. h0, c0 on return). Returns the gradients w.r.t. x [batch, time,
    features] (processing order), kernel, recurrent_kernel and bias (empty when has_bias is
    False)."""
    dz = np.empty_like(gates)
    backward_sequence(gates, c, act_c, recurrent_kernel, dy, dh, dc, dz, activation, recurrent_activation, True)
    dkernel = np.zeros_like(kernel)
    drecurrent_kernel = np.zeros_like(recurrent_kernel)
    dbias = np.zeros(gates.shape[2] if has_bias else 0, x.dtype)
    _add_weight_gradients(x, h, dz, dkernel, drecurrent_kernel, dbias, False)
    dx = np.empty_like(x)
    for b in range(x.shape[0]):
        for t in range(x.shape[1]):
            _matvec(kernel, dz[b, t], dx[b, t])
    return dx, dkernel, drecurrent_kernel, dbias


@njit(inline="always")
def _softmax_cross_entropy(logits, target, exps):
    """Turns logits [classes] into the softmax's probabilities in place, using exps [classes] as
    scratch; returns the categorical cross-entropy ``sum(target * (logsumexp(z) - z))`` with z
    the logits less their maximum, as Keras computes it (and fastlstm.nn.CategoricalCrossentropy)."""
    T = logits.dtype.type
    logits -= logits.max()
    for j in range(logits.size):
        exps[j] = _exp(logits[j], T)
    total = T(0)
    for j in range(logits.size):
        total += exps[j]
    log_sum = T(math.log(total))
    loss = T(0)
    for j in range(logits.size):
        loss += target[j] * (log_sum - logits[j])
    for j in range(logits.size):
        logits[j] = exps[j] / total
    return loss


@njit(inline="always")
def _add_outer(a, b, out):
    """out += outer(a, b) for a [n], b [k] and out [n, k]."""
    for i in range(a.size):
        ai = a[i]
        for j in range(b.size):
            out[i, j] += ai * b[j]


@njit(inline="always")
def _adam(w, g, m, v, step, adam):
    """Adam step number ``step`` on the flat w with gradient g and moments m, v, in Keras 3's
    order of operations (as fastlstm.nn.Adam); adam = (learning_rate, beta_1, beta_2, epsilon,
    1 - beta_1, 1 - beta_2), each rounded to w's dtype."""
    T = w.dtype.type
    learning_rate, beta_1, beta_2, epsilon, one_minus_beta_1, one_minus_beta_2 = adam
    t = T(step)
    alpha = learning_rate * np.sqrt(T(1) - beta_2 ** t) / (T(1) - beta_1 ** t)
    for i in range(w.size):
        m[i] += (g[i] - m[i]) * one_minus_beta_1
        v[i] += (g[i] * g[i] - v[i]) * one_minus_beta_2
        w[i] -= m[i] * alpha / (np.sqrt(v[i]) + epsilon)


@njit(inline="always")
def _carve(scratch, offset, shape):
    """A C-contiguous array of ``shape`` from the flat scratch at offset, and the offset after it."""
    size = 1
    for n in shape:
        size *= n
    return scratch[offset:offset + size].reshape(shape), offset + size


@njit(**FLAGS)
def train_epoch(x, y, batch_size, lstm, dense, lstm_grads, dense_grads, flat, adam, iterations, state, options):
    """Trains an LSTM (last output only) + Dense(softmax) model with categorical cross-entropy
    and Adam on the batches of x [samples, time, features] and y [samples, classes], in order:
    per batch the forward pass, the loss, the backward pass and one Adam step.

    lstm: (kernel, recurrent_kernel, bias) and dense: (kernel, bias), the weights (a bias of
    size 0 for none); lstm_grads and dense_grads shaped alike; all views into flat = (weights,
    gradients, m, v): the model's flat buffers and Adam's moments, updated in place. adam:
    Adam's constants as :func:`_adam` takes them; iterations: the Adam steps taken before. state:
    (h, c) [batch_size, units], the initial state of every batch for a stateful model, which
    carries it on from batch to batch (zeros are used otherwise); options: (stateful,
    go_backwards, activation, recurrent_activation).

    Returns (the sum over batches of each batch's mean loss times its size, in float64, as
    fastlstm.nn sums them; the number of samples whose most probable class is the target's).

    Call it with subnormal numbers (below 1.2e-38 in float32) flushed to zero (:func:`exchange_mxcsr`
    with FLUSH_SUBNORMALS), as TensorFlow does on the CPU: saturated gates make them by the thousand
    late in training, and each is slow.
    """
    stateful, go_backwards, activation, recurrent_activation = options
    zero_state = not stateful  # each batch starts from zeros
    kernel, recurrent_kernel, bias = lstm
    dense_kernel, dense_bias = dense
    dkernel, drecurrent_kernel, dbias = lstm_grads
    ddense_kernel, ddense_bias = dense_grads
    samples, time, _ = x.shape
    units, classes = dense_kernel.shape
    T = x.dtype.type
    scratch = np.empty(batch_size * (time * 9 * units + (time + 1) * 2 * units + classes + 2 * units), x.dtype)
    exps = np.empty(classes, x.dtype)
    recurrent_part = np.empty(4 * units, x.dtype)
    total_loss, correct = 0.0, 0
    for start in range(0, samples, batch_size):
        rows = min(batch_size, samples - start)
        gates, offset = _carve(scratch, 0, (rows, time, 4 * units))
        dz, offset = _carve(scratch, offset, (rows, time, 4 * units))
        h, offset = _carve(scratch, offset, (rows, time + 1, units))
        c, offset = _carve(scratch, offset, (rows, time + 1, units))
        act_c, offset = _carve(scratch, offset, (rows, time, units))
        probs, offset = _carve(scratch, offset, (rows, classes))
        dh, offset = _carve(scratch, offset, (rows, units))
        dc, offset = _carve(scratch, offset, (rows, units))
        # Forward: the input projection, then the recurrence from the state.
        inputs = x[start:start + rows, ::-1] if go_backwards else x[start:start + rows, ::1]  # processing order
        _project(inputs, kernel, bias, gates)
        if stateful:
            h[:, 0] = state[0]
            c[:, 0] = state[1]
        else:
            h[:, 0] = 0
            c[:, 0] = 0
        forward_sequence(gates, recurrent_kernel, h, c, act_c, activation, recurrent_activation, zero_state,
                         recurrent_part)
        if stateful:
            state[0][:] = h[:, time]
            state[1][:] = c[:, time]
        # Dense, softmax and the loss; probs becomes the gradient w.r.t. the logits, (probs - y) / rows.
        batch_loss = T(0)
        for b in range(rows):
            target = y[start + b]
            probs[b] = 0
            _add_product(h[b, time], dense_kernel, probs[b])
            _add_to(probs[b], dense_bias)
            batch_loss += _softmax_cross_entropy(probs[b], target, exps)
            correct += np.argmax(probs[b]) == np.argmax(target)
            for j in range(classes):
                probs[b, j] = (probs[b, j] - target[j]) * T(1 / rows)
        total_loss += float(batch_loss / T(rows)) * rows
        # Backward: Dense, the recurrence, then the LSTM's weight gradients.
        ddense_kernel[:] = 0
        ddense_bias[:] = 0
        dc[:] = 0
        for b in range(rows):
            _add_outer(h[b, time], probs[b], ddense_kernel)
            _add_to(ddense_bias, probs[b])
            _matvec(dense_kernel, probs[b], dh[b])
        backward_sequence(gates, c, act_c, recurrent_kernel, dz[:, :0], dh, dc, dz, activation,
                          recurrent_activation, False)
        dkernel[:] = 0
        drecurrent_kernel[:] = 0
        dbias[:] = 0
        _add_weight_gradients(inputs, h, dz, dkernel, drecurrent_kernel, dbias, zero_state)
        iterations += 1
        _adam(flat[0], flat[1], flat[2], flat[3], iterations, adam)
    return total_loss, correct
