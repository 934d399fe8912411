"""The matrix products of the Numba CPU kernels: vector-matrix products as loops (:func:`add_product`,
:func:`matvec`), for the one-call path's small shapes, and the packed product of the stepwise path
(:func:`pack_columns`, :func:`matmul_packed`), its tiles written in LLVM IR and shaped for the CPU
that Numba compiles for (:data:`TILE`, :func:`describe_target`).
"""
import re
from typing import NamedTuple

import llvmlite.binding as ll
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core.registry import cpu_target
from numba.extending import intrinsic

from .cpu_arithmetic import FLAGS, copy_to


@njit(inline="always")
def add_product(v, m, out):
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
def matvec(m, v, out):
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
# same weights at every step. OpenBLAS copies all of w into its packed layout at every call, a
# large part of a call of few rows; here the weights are packed once per pass (pack_columns) and
# each step only multiplies (matmul_packed), faster than OpenBLAS at these shapes
# (bench/test_kernels.py, 64, 100, 128, 512).
CHUNK_BYTES = 192 << 10  # the rows of a taken at once: within a core's L2 cache, with a panel


class Tile(NamedTuple):
    """The block of out that matmul_packed holds in vector registers: rows of a (float64_rows in
    float64) by vectors of vector_bits bits of columns, one accumulator each."""
    rows: int
    vectors: int
    vector_bits: int
    float64_rows: int

    def rows_of(self, dtype):
        """The rows of a tile in float32 or float64."""
        return self.rows if np.dtype(dtype).itemsize == 4 else self.float64_rows

    def columns(self, dtype):
        """The columns of a tile, and of a panel of packed weights, for float32 or float64."""
        return self.vectors * self.vector_bits // (8 * np.dtype(dtype).itemsize)

    def __str__(self):
        return (f"{self.rows} rows x {self.vectors} vectors of {self.vector_bits} bits "
                f"({self.float64_rows} rows in float64)")


def _probe_target():
    """Numba's CPU name and the vector extensions LLVM uses for it, read from the assembly of a
    probe compiled for Numba's own target (NUMBA_CPU_NAME and NUMBA_CPU_FEATURES, else the host):
    a CPU name alone does not say which of its features Numba leaves on."""
    triple, cpu_name, features = cpu_target.target_context.codegen().magic_tuple()
    module = ir.Module("probe")
    module.triple = triple
    floats8, integers8, floats16 = (ir.VectorType(t, n) for t, n in ((ir.FloatType(), 8), (ir.IntType(32), 8),
                                                                      (ir.FloatType(), 16)))
    function = ir.Function(module, ir.FunctionType(ir.VoidType(), [t.as_pointer() for t in
                                                                   (floats8, integers8, floats16)]), "probe")
    builder = ir.IRBuilder(function.append_basic_block())
    fma = ir.Function(module, ir.FunctionType(floats16, [floats16] * 3), "llvm.fma.v16f32")
    operations = (lambda x: builder.fadd(x, ir.Constant(floats8, [1.0] * 8)),  # vaddps ymm with AVX
                  lambda x: builder.add(x, ir.Constant(integers8, list(range(8)))),  # vpaddd ymm with AVX2
                  lambda x: builder.call(fma, [x, x, x]))  # vfmadd with FMA, on zmm with AVX-512
    for pointer, operation in zip(function.args, operations):
        builder.store(operation(builder.load(pointer)), pointer)
    builder.ret_void()
    machine = ll.Target.from_triple(triple).create_target_machine(cpu=cpu_name, features=features, opt=2)
    assembly = machine.emit_assembly(ll.parse_assembly(str(module)))
    found = {"avx": re.search(r"vaddps\s[^\n]*ymm", assembly) is not None,
             "avx2": re.search(r"vpaddd\s[^\n]*ymm", assembly) is not None,
             "fma": "vfmadd" in assembly, "avx512f": "zmm" in assembly}
    extensions = [name for name, present in found.items() if present]
    vector_bits = 512 if found["avx512f"] else 256 if found["avx"] else 128
    return cpu_name, extensions, vector_bits


def _tile_for(vector_bits):
    """Two vectors of columns by as many rows of a as the vector registers hold beside the two
    column vectors and one broadcast element (16 registers below AVX-512, 32 with it), at most 8:
    12 independent accumulators on AVX2, 16 on AVX-512, where two FMA units of 4 cycles' latency
    need 8. Rows beyond 8 would only add rows computed twice at the edge of a thread's few rows;
    a third vector, columns past the end of n = units. Measured on a Zen 3 at the stepwise path's
    per-thread shapes, 6 x 2 beat 4 x 2, 5 x 2, 4 x 3, 8 x 1 and 12 x 1 (geometric mean)."""
    registers = 32 if vector_bits == 512 else 16
    vectors = 2
    return Tile(min(8, (registers - vectors - 1) // vectors), vectors, vector_bits, FLOAT64_ROWS)


# float64 tiles take 4 rows whatever the target (8 accumulators, what two FMA units need): a row of
# a takes twice the bytes, and 6 rows of 640 float64 (30 KB) no longer stayed in a 32 KB L1 cache
# beside the panel; 6 x 2 ran up to 30 % slower than 4 x 2 at 64, 100, 128, 512's forward.
FLOAT64_ROWS = 4


CPU_NAME, VECTOR_EXTENSIONS, _VECTOR_BITS = _probe_target()
TILE = _tile_for(_VECTOR_BITS)


def describe_target():
    """Numba's CPU target and the tile chosen for it, as JSON for benchmark records."""
    return {"cpu_name": CPU_NAME, "vector_extensions": VECTOR_EXTENSIONS, "vector_bits": TILE.vector_bits,
            "tile": str(TILE)}


@intrinsic
def _multiply_tile(typingctx, a, row, panel, out, out_row, column):
    """out[out_row:out_row + rows, column:column + TILE.columns] = a[row:row + rows] @ panel with
    rows = TILE.rows_of(a.dtype), for 2-D float32 or float64 arrays whose rows are contiguous;
    panel [k, TILE.columns], contiguous, k at most a's columns (the first k are summed). The
    caller checks the bounds. The accumulators stay in vector registers for the whole sum: LLVM
    does not keep Numba's arrays in registers."""
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
        width = TILE.vector_bits // a.dtype.bitwidth
        rows = TILE.rows_of(str(a.dtype))
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
        a_rows = [element(a_array, builder.add(row, ir.Constant(i64, r)), ir.Constant(i64, 0))
                  for r in range(rows)]

        entry = builder.block
        loop = builder.append_basic_block("tile.loop")
        done = builder.append_basic_block("tile.done")
        builder.cbranch(builder.icmp_signed(">", depth, ir.Constant(i64, 0)), loop, done)

        builder.position_at_end(loop)
        k = builder.phi(i64)
        sums = [builder.phi(vector) for _ in range(rows * TILE.vectors)]
        panel_row = builder.gep(panel_array.data, [builder.mul(k, ir.Constant(i64, width * TILE.vectors))])
        columns = [builder.load(builder.bitcast(builder.gep(panel_row, [ir.Constant(i64, v * width)]),
                                                vector.as_pointer()), align=a.dtype.bitwidth // 8)
                   for v in range(TILE.vectors)]
        updated = []
        for r in range(rows):
            broadcast = builder.shuffle_vector(
                builder.insert_element(ir.Constant(vector, ir.Undefined), builder.load(builder.gep(a_rows[r], [k])),
                                       ir.Constant(ir.IntType(32), 0)),
                ir.Constant(vector, ir.Undefined), splat)
            updated += [builder.call(fma, [broadcast, column_, sums[r * TILE.vectors + v]])
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
        for r in range(rows):
            start = element(out_array, builder.add(out_row, ir.Constant(i64, r)), column)
            for v in range(TILE.vectors):
                builder.store(totals[r * TILE.vectors + v],
                              builder.bitcast(builder.gep(start, [ir.Constant(i64, v * width)]), vector.as_pointer()),
                              align=a.dtype.bitwidth // 8)
        return context.get_dummy_value()

    return types.void(a, row, panel, out, out_row, column), codegen


def pack_columns(w):
    """w [k, n] as panels [ceil(n / columns), k, columns] of TILE.columns(w.dtype) columns each,
    each panel contiguous (the last one padded with zeros): the layout matmul_packed reads."""
    k, n = w.shape
    columns = TILE.columns(w.dtype)
    full = n // columns
    panels = np.empty((-(-n // columns), k, columns), w.dtype)
    panels[:full] = w[:, :full * columns].reshape(k, full, columns).transpose(1, 0, 2)
    if full < len(panels):
        panels[full] = 0
        panels[full, :, :n - full * columns] = w[:, full * columns:]
    return panels


@njit(**FLAGS)
def matmul_packed(a, panels, out, depth):
    """out [m, n] = a[:, :depth] @ w[:depth] for a [m, k] and w [k, n], with w as pack_columns(w)
    made it; each element summed in the order of k. depth k: the whole product; less: the
    product with the first rows of w alone (a step from a zero state, whose rows of h add
    nothing). The rows of a and out must be contiguous (any stride between them)."""
    m, k = a.shape
    n = out.shape[1]
    if not (_contiguous_rows(a) and _contiguous_rows(out)) or out.shape[0] != m \
            or panels.shape[1] != k or n > panels.shape[0] * panels.shape[2] or not 0 <= depth <= k:
        raise ValueError("matmul_packed takes a [m, k], panels [>= n / tile columns, k, tile columns], out "
                         "[m, n], the rows of a and out contiguous, and a depth from 0 to k")
    rows = _tile_rows(a)
    source, target = a, out
    if m < rows:  # too few rows for a tile: through copies padded with zeros
        source = np.zeros((rows, k), a.dtype)
        copy_to(source[:m], a)
        target = np.empty((rows, n), a.dtype)
    _multiply_packed(source, panels, target, depth)
    if m < rows:
        copy_to(out, target[:m])


@njit(inline="always")
def _contiguous_rows(x):
    return x.shape[1] <= 1 or x.strides[1] == x.itemsize


@njit(inline="always")
def _tile_rows(a):
    """TILE.rows_of(a.dtype), compiled."""
    return TILE.rows if a.itemsize == 4 else TILE.float64_rows


@njit(inline="always")
def _multiply_packed(a, panels, out, depth):
    """matmul_packed for a tile's rows or more. Each panel takes the rows a tile's at a time,
    the last tile overlapping the one before (some rows computed twice, alike), in chunks of rows
    that stay in the core's cache while every panel passes over them."""
    m, k = a.shape
    n = out.shape[1]
    columns = panels.shape[2]
    rows = _tile_rows(a)
    edge = np.empty((rows, columns), a.dtype)  # a tile of the last panel, when n ends inside it
    chunk = max(rows, CHUNK_BYTES // (k * a.itemsize + 1) // rows * rows)
    for first in range(0, m, chunk):
        for p in range(panels.shape[0]):
            column = p * columns
            for tile in range(first, min(m, first + chunk), rows):
                top = min(tile, m - rows)
                inside = column + columns <= n  # else the tile goes through edge
                _multiply_tile(a, top, panels[p, :depth], out if inside else edge, top if inside else 0,
                               column if inside else 0)
                if not inside:
                    copy_to(out[top:top + rows, column:], edge[:, :n - column])
