"""The Numba CUDA kernels of the three paths, the same algorithms as lstm_persistent.cu,
lstm_cooperative.cu and lstm_stepwise.cu (read those for the design), one set per dtype. The
cooperative kernels' grid barrier is their own, as lstm_cooperative.cu's (grid_sync below): see
fastlstm.backends.numba_cuda for how they are launched.

Every constant is a scalar of the kernel's dtype, so a float32 kernel does no float64
arithmetic (the compile gate looks for ``.f64`` in its PTX). Indices are uint32, truncated after
each sum in the loops: Numba types arithmetic on uint32 as uint64, and a signed index costs a
negative-index wrap-around at every access. So the persistent kernels' inner loops are loads and
multiply-adds, about 2 instructions per multiply-add at sm_90 (the compile gate asserts at most
4). A tuple stands for a small array kept in registers (a row's four gates, a vector's lanes). An
absent optional array (bias, dy, the final state's gradients) comes as an empty array. The kernels
take and fill the arrays of the CUDA C ones, in the same layouts and time orders. Compiled on first
launch, never at import.
"""
import functools
import math
import threading
import time as clock

import numpy as np
from numba import config, cuda, from_dtype, uint32

from .activation_ids import HARD_SIGMOID, HARD_SIGMOID_KERAS2, RELU, SIGMOID, SOFTSIGN, TANH

# As fastlstm.backends.plan, which this file does not import (the kernels stay apart from the
# backends' glue): the persistent kernels' most threads a block by itemsize, so that the compiler
# may use 128 registers a thread in float32 and 255 in float64; the rows a thread computes; the
# unit of recurrent_kernel's padded rows in shared memory.
PERSISTENT_THREADS = {4: 512, 8: 256}
ROWS = 4
VECTOR_BYTES = 16
PERSISTENT = ("persistent_forward", "persistent_backward")
COOPERATIVE = ("cooperative_forward", "cooperative_backward")  # their grid must be resident at once
# How often a cooperative kernel's block looks for the grid barrier's release before it gives up
# (seconds of polls, where a step takes at most milliseconds): a barrier that is never released
# fails the launch rather than hanging the GPU.
GRID_SYNC_POLLS = 1 << 26

if config.ENABLE_CUDASIM:
    def _trap():
        raise RuntimeError(f"the grid barrier was not released after {GRID_SYNC_POLLS} looks: "
                           "a block of the cooperative launch never arrived")

    def _nap():
        if getattr(threading.current_thread(), "abort", False):  # the simulator's flag: another thread failed
            raise RuntimeError("the launch was aborted while this block waited at the grid barrier")
        clock.sleep(0)  # lets the simulator's other blocks, Python threads, run
else:
    from llvmlite import ir
    try:
        from numba.cuda import types
        from numba.cuda.extending import intrinsic
    except ImportError:  # a numba-cuda from before its own type system, which extends Numba's
        from numba.core import types
        from numba.core.extending import intrinsic

    @intrinsic
    def _trap(typingctx):
        """Ends the launch with an error (PTX's trap)."""
        def codegen(context, builder, signature, args):
            builder.call(builder.module.declare_intrinsic("llvm.trap", fnty=ir.FunctionType(ir.VoidType(), [])), [])
            return context.get_dummy_value()

        return types.void(), codegen

    @cuda.jit(device=True, inline=True)
    def _nap():
        cuda.nanosleep(uint32(32))


def launch_bounds(function, dtype):
    """Numba's launch bounds of ``function`` in ``dtype``: the most threads a block runs, and one
    block per multiprocessor at least (else ptxas 12 aims at several, and spilled sm_70's float64
    forward at 80 registers); None for the stepwise kernels, which carry none. The cooperative
    kernels' bound is the persistent ones' (COOPERATIVE_THREADS in fastlstm.backends.plan)."""
    return (PERSISTENT_THREADS[np.dtype(dtype).itemsize], 1) if function in PERSISTENT + COOPERATIVE else None


def _bounds(function, dtype):
    # The simulator's cuda.jit takes no launch bounds: it has no registers to fit.
    return {} if config.ENABLE_CUDASIM else {"launch_bounds": launch_bounds(function, dtype)}


@functools.cache
def kernels(dtype):
    """{kernel name: CUDA kernel} for ``dtype`` (float32 or float64)."""
    dtype = np.dtype(dtype)
    T = from_dtype(dtype)
    zero, one, half, three, six, fifth, sixth = (dtype.type(v) for v in (0, 1, 0.5, 3, 6, 0.2, 1 / 6))
    lanes = np.uint32(VECTOR_BYTES // dtype.itemsize)

    @cuda.jit(device=True, inline=True)
    def activate(kind, z):
        if kind == TANH:
            return math.tanh(z)
        if kind == SIGMOID:  # exp of a non-positive number only
            e = math.exp(-abs(z))
            return (one if z >= zero else e) / (one + e)
        if kind == HARD_SIGMOID:
            return min(max(z + three, zero), six) / six
        if kind == HARD_SIGMOID_KERAS2:
            return min(max(fifth * z + half, zero), one)
        if kind == RELU:
            return max(z, zero)
        if kind == SOFTSIGN:
            return z / (one + abs(z))
        return z

    @cuda.jit(device=True, inline=True)
    def activation_grad(kind, y):
        if kind == TANH:
            return one - y * y
        if kind == SIGMOID:
            return y * (one - y)
        if kind == HARD_SIGMOID:
            return sixth if zero < y < one else zero
        if kind == HARD_SIGMOID_KERAS2:
            return fifth if zero < y < one else zero
        if kind == RELU:
            return one if y > zero else zero
        if kind == SOFTSIGN:
            s = one - abs(y)
            return s * s
        return one

    @cuda.jit(device=True, inline=True)
    def stage(shared, recurrent_kernel, units, saved, copy):
        """Copies recurrent_kernel into shared memory with rows padded to ld elements (as
        fastlstm.backends.plan.recurrent_row_length), and as it is into ``saved`` where ``copy``
        (the call's own copy for the backward pass, which a launch of its own would otherwise
        make); returns ld. Read as [4*units][units] rows (row p = 4k + g: gate g's weights from
        h_k), thread (q, j) copies element j of rows q, q + groups, ...: coalesced, and no
        division per element; four loads in flight per thread before their stores (a load at a
        time waits out the latency of each)."""
        u = uint32(units)
        vectors = uint32(uint32(4) * u // lanes + uint32(1))
        ld = uint32((vectors + uint32(1) - vectors % uint32(2)) * lanes)
        rows, groups = uint32(uint32(4) * u), uint32(uint32(cuda.blockDim.x) // u)
        j, p = uint32(uint32(cuda.threadIdx.x) % u), uint32(uint32(cuda.threadIdx.x) // u)
        while uint32(p + uint32(3) * groups) < rows:
            p1, p2, p3 = uint32(p + groups), uint32(p + uint32(2) * groups), uint32(p + uint32(3) * groups)
            k0, k1, k2, k3 = p >> uint32(2), p1 >> uint32(2), p2 >> uint32(2), p3 >> uint32(2)
            c0, c1 = uint32((p & uint32(3)) * u + j), uint32((p1 & uint32(3)) * u + j)
            c2, c3 = uint32((p2 & uint32(3)) * u + j), uint32((p3 & uint32(3)) * u + j)
            a0, a1 = recurrent_kernel[k0, c0], recurrent_kernel[k1, c1]
            a2, a3 = recurrent_kernel[k2, c2], recurrent_kernel[k3, c3]
            shared[uint32(k0 * ld + c0)], shared[uint32(k1 * ld + c1)] = a0, a1
            shared[uint32(k2 * ld + c2)], shared[uint32(k3 * ld + c3)] = a2, a3
            if copy:
                saved[k0, c0], saved[k1, c1], saved[k2, c2], saved[k3, c3] = a0, a1, a2, a3
            p = uint32(p3 + groups)
        while p < rows:
            k0, c0 = p >> uint32(2), uint32((p & uint32(3)) * u + j)
            a0 = recurrent_kernel[k0, c0]
            shared[uint32(k0 * ld + c0)] = a0
            if copy:
                saved[k0, c0] = a0
            p = uint32(p + groups)
        return ld

    @cuda.jit(device=True, inline=True)
    def caller_step(t, time, go_backwards):
        """The caller's time index of processing step t (zx, inputs and dz are in the caller's
        order): go_backwards processes the sequence from its end."""
        return uint32(uint32(time) - uint32(1) - t) if go_backwards != 0 else t

    @cuda.jit(device=True, inline=True)
    def place(batch, units, rows):
        """(first, j, b, count): the thread's first row in the block, q * ROWS, its unit, the batch
        row of its first row, and how many of its ROWS rows exist (the last group and the last
        block may hold fewer: the others compute on zeros and still reach every barrier)."""
        u = uint32(units)
        first, j = uint32(cuda.threadIdx.x) // u * uint32(ROWS), uint32(cuda.threadIdx.x) % u
        b = uint32(cuda.blockIdx.x) * uint32(rows) + first
        return first, j, b, max(0, min(ROWS, rows - int(first), batch - int(b)))

    @cuda.jit(device=True, inline=True)
    def gate_values(a, b, t, j, units, exists):
        """Row b's four gate values of unit j at step t in ``a`` [batch, time, 4*units]; zeros for
        a row that does not exist."""
        if exists:
            return a[b, t, j], a[b, t, units + j], a[b, t, uint32(2) * units + j], a[b, t, uint32(3) * units + j]
        return zero, zero, zero, zero

    @cuda.jit(device=True, inline=True)
    def biases(bias, j, units):
        """The four gates' bias of unit j; zeros for an absent bias."""
        if bias.shape[0] > 0:
            return bias[j], bias[units + j], bias[uint32(2) * units + j], bias[uint32(3) * units + j]
        return zero, zero, zero, zero

    @cuda.jit(device=True, inline=True)
    def step_start(zx, bias_j, b, t, j, units, exists):
        """Row b's zx + bias at step t of zx (bias first, as x @ kernel + bias in the reference);
        zeros for a row that does not exist."""
        z = gate_values(zx, b, t, j, units, exists)
        return z[0] + bias_j[0], z[1] + bias_j[1], z[2] + bias_j[2], z[3] + bias_j[3]

    @cuda.jit(device=True, inline=True)
    def multiply_add(z, hk, w):
        return z[0] + hk * w[0], z[1] + hk * w[1], z[2] + hk * w[2], z[3] + hk * w[3]

    # The backward's dot products, a vector of recurrent_kernel's row against one of dz's row at a time.
    if lanes == 4:
        @cuda.jit(device=True, inline=True)
        def vector(shared, i):
            return shared[i], shared[i + uint32(1)], shared[i + uint32(2)], shared[i + uint32(3)]

        @cuda.jit(device=True, inline=True)
        def strided_vector(shared, i, stride):
            return shared[i], shared[i + stride], shared[i + uint32(2) * stride], shared[i + uint32(3) * stride]

        @cuda.jit(device=True, inline=True)
        def multiply_add_vector(p, shared, i, w):
            """p + shared[i:i + 4] * w, lane by lane."""
            return (p[0] + shared[i] * w[0], p[1] + shared[i + uint32(1)] * w[1],
                    p[2] + shared[i + uint32(2)] * w[2], p[3] + shared[i + uint32(3)] * w[3])

        @cuda.jit(device=True, inline=True)
        def lane_sum(p):
            return (p[0] + p[1]) + (p[2] + p[3])
    else:
        @cuda.jit(device=True, inline=True)
        def vector(shared, i):
            return shared[i], shared[i + uint32(1)]

        @cuda.jit(device=True, inline=True)
        def strided_vector(shared, i, stride):
            return shared[i], shared[i + stride]

        @cuda.jit(device=True, inline=True)
        def multiply_add_vector(p, shared, i, w):
            """p + shared[i:i + 2] * w, lane by lane."""
            return p[0] + shared[i] * w[0], p[1] + shared[i + uint32(1)] * w[1]

        @cuda.jit(device=True, inline=True)
        def lane_sum(p):
            return p[0] + p[1]
    no_sums = (zero,) * lanes

    @cuda.jit(device=True, inline=True)
    def write_ones(inputs, b, j, units, time):
        """With a bias, the 1 that ends each of row b's rows of inputs, so that the weight
        gradients' one product of inputs with dz sums dbias too: unit j's thread writes steps j,
        j + units, ..."""
        last, s, end, stride = uint32(inputs.shape[2] - 1), uint32(j), uint32(time), uint32(units)
        while s < end:
            inputs[b, s, last] = one
            s = uint32(s + stride)

    @cuda.jit(device=True, inline=True)
    def forward_start(h0, c0, inputs, c, shared, slot, b, j, h_column, step, units, time, ones, exists):
        """Row b's initial state: h0 into shared memory at ``slot`` (zero for a row that does not
        exist) and into inputs at the first step, c0 into c; inputs' ones where ``ones``; returns
        c0."""
        h_start = h0[b, j] if exists else zero
        c_start = c0[b, j] if exists else zero
        shared[slot] = h_start
        if exists:
            c[b, 0, j] = c_start
            inputs[b, step, h_column] = h_start
            if ones:
                write_ones(inputs, b, j, units, time)
        return c_start

    @cuda.jit(device=True, inline=True)
    def forward_row(z, c_prev, shared, h_next, inputs, c, gates, outputs, b, t, more, ahead, j, units, h_column,
                    outputs_per_step, exists, activation, recurrent_activation):
        """One row's pointwise step: writes h_t to shared memory (zero for a row that does not
        exist), into inputs at the next step unless this is the last (the caller's index
        ``ahead``) and into outputs (outputs_per_step), and c and the gates to global memory;
        returns c_t."""
        i, f = activate(recurrent_activation, z[0]), activate(recurrent_activation, z[1])
        g, o = activate(activation, z[2]), activate(recurrent_activation, z[3])
        c_t = f * c_prev + i * g
        h_t = o * activate(activation, c_t)
        shared[h_next] = h_t if exists else zero
        if exists:
            c[b, t + uint32(1), j] = c_t
            if more:
                inputs[b, ahead, h_column] = h_t
            if outputs_per_step != 0:
                outputs[b, t, j] = h_t
            gates[b, t, j], gates[b, t, units + j] = i, f
            gates[b, t, uint32(2) * units + j], gates[b, t, uint32(3) * units + j] = g, o
        return c_t

    @cuda.jit(device=True, inline=True)
    def forward_end(shared, slot, c_t, outputs, h_final, c_final, b, j, outputs_per_step, exists):
        """Row b's final state, h from shared memory at ``slot``, which the thread wrote last; and
        its last output unless outputs holds every step's."""
        if exists:
            h_final[b, j], c_final[b, j] = shared[slot], c_t
            if outputs_per_step == 0:
                outputs[b, 0, j] = shared[slot]

    @cuda.jit(**_bounds("persistent_forward", dtype))
    def persistent_forward(zx, bias, recurrent_kernel, saved_recurrent_kernel, h0, c0, inputs, c, gates, outputs,
                           h_final, c_final, batch, time, input_dim, units, rows, go_backwards, outputs_per_step,
                           activation, recurrent_activation):
        shared = cuda.shared.array(0, dtype=T)
        ld = stage(shared, recurrent_kernel, units, saved_recurrent_kernel, cuda.blockIdx.x == 0)
        u = uint32(units)
        first, j, b, count = place(batch, units, rows)
        u2, u3 = uint32(2) * u, uint32(3) * u
        buffer = uint32((rows + ROWS - 1) // ROWS * ROWS) * u  # h [2][padded rows][units], double-buffered
        h_rows = u * ld + first * u  # the thread's first row of h in buffer 0
        h_column = uint32(input_dim) + j  # unit j's column of h in inputs
        bias_j = biases(bias, j, u)
        start, ones = caller_step(uint32(0), time, go_backwards), bias.shape[0] > 0
        c_0 = forward_start(h0, c0, inputs, c, shared, h_rows + j, b, j, h_column, start, units, time, ones,
                            count > 0)
        c_1 = forward_start(h0, c0, inputs, c, shared, h_rows + u + j, b + uint32(1), j, h_column, start, units,
                            time, ones, count > 1)
        c_2 = forward_start(h0, c0, inputs, c, shared, h_rows + u2 + j, b + uint32(2), j, h_column, start, units,
                            time, ones, count > 2)
        c_3 = forward_start(h0, c0, inputs, c, shared, h_rows + u3 + j, b + uint32(3), j, h_column, start, units,
                            time, ones, count > 3)
        cuda.syncthreads()
        # The step's sums, started from its zx, which is loaded a step ahead, so that no load from
        # global memory starts the recurrence's critical path.
        z0 = step_start(zx, bias_j, b, start, j, u, count > 0)
        z1 = step_start(zx, bias_j, b + uint32(1), start, j, u, count > 1)
        z2 = step_start(zx, bias_j, b + uint32(2), start, j, u, count > 2)
        z3 = step_start(zx, bias_j, b + uint32(3), start, j, u, count > 3)
        for step in range(time):
            t = uint32(step)
            now, later = (t & uint32(1)) * buffer, ((t + uint32(1)) & uint32(1)) * buffer
            more = step + 1 < time
            # The caller's index of the next step, where h_t goes in inputs and whose zx starts the
            # next sums (none after the last: zeros, read from nowhere).
            ahead = caller_step(t + uint32(1), time, go_backwards) if more else t
            ahead_count = count if more else 0
            next0 = step_start(zx, bias_j, b, ahead, j, u, ahead_count > 0)
            next1 = step_start(zx, bias_j, b + uint32(1), ahead, j, u, ahead_count > 1)
            next2 = step_start(zx, bias_j, b + uint32(2), ahead, j, u, ahead_count > 2)
            next3 = step_start(zx, bias_j, b + uint32(3), ahead, j, u, ahead_count > 3)
            # Per k, four weights and the rows' four h_prev[k] serve 16 multiply-adds.
            hk, w = uint32(h_rows + now), j
            end = uint32(hk + u)
            while hk < end:
                weights = shared[w], shared[w + u], shared[w + u2], shared[w + u3]
                z0 = multiply_add(z0, shared[hk], weights)
                z1 = multiply_add(z1, shared[hk + u], weights)
                z2 = multiply_add(z2, shared[hk + u2], weights)
                z3 = multiply_add(z3, shared[hk + u3], weights)
                hk = uint32(hk + uint32(1))
                w = uint32(w + ld)
            h_next = h_rows + later + j
            c_0 = forward_row(z0, c_0, shared, h_next, inputs, c, gates, outputs, b, t, more, ahead, j, u,
                              h_column, outputs_per_step, count > 0, activation, recurrent_activation)
            c_1 = forward_row(z1, c_1, shared, h_next + u, inputs, c, gates, outputs, b + uint32(1), t, more, ahead,
                              j, u, h_column, outputs_per_step, count > 1, activation, recurrent_activation)
            c_2 = forward_row(z2, c_2, shared, h_next + u2, inputs, c, gates, outputs, b + uint32(2), t, more, ahead,
                              j, u, h_column, outputs_per_step, count > 2, activation, recurrent_activation)
            c_3 = forward_row(z3, c_3, shared, h_next + u3, inputs, c, gates, outputs, b + uint32(3), t, more, ahead,
                              j, u, h_column, outputs_per_step, count > 3, activation, recurrent_activation)
            z0, z1, z2, z3 = next0, next1, next2, next3
            cuda.syncthreads()
        h_last = h_rows + (uint32(time) & uint32(1)) * buffer + j  # the buffer of the last step's h
        forward_end(shared, h_last, c_0, outputs, h_final, c_final, b, j, outputs_per_step, count > 0)
        forward_end(shared, h_last + u, c_1, outputs, h_final, c_final, b + uint32(1), j, outputs_per_step,
                    count > 1)
        forward_end(shared, h_last + u2, c_2, outputs, h_final, c_final, b + uint32(2), j, outputs_per_step,
                    count > 2)
        forward_end(shared, h_last + u3, c_3, outputs, h_final, c_final, b + uint32(3), j, outputs_per_step,
                    count > 3)

    @cuda.jit(device=True, inline=True)
    def backward_start(dy, dy_per_step, dh_final, dc_final, b, j, exists):
        """(dh, dc) of row b before the last step: the final state's gradients, plus dy when it
        holds only the last output's gradient; zeros for a row that does not exist."""
        dh = dc = zero
        if exists:
            if dh_final.shape[0] > 0:
                dh = dh_final[b, j]
            if dc_final.shape[0] > 0:
                dc = dc_final[b, j]
            if dy.shape[0] > 0 and dy_per_step == 0:
                dh += dy[b, 0, j]
        return dh, dc

    @cuda.jit(device=True, inline=True)
    def backward_row(dh, dc, c, gates, dy, dy_per_step, dz, shared, row, b, t, t_in, j, units, exists,
                     activation, recurrent_activation):
        """One row's pointwise step: writes its dz to shared memory at ``row`` (zeros for a row
        that does not exist) and to global memory at the caller's index ``t_in``; returns dc for
        the step before."""
        d0 = d1 = d2 = d3 = zero
        if exists:
            if dy.shape[0] > 0 and dy_per_step != 0:
                dh += dy[b, t, j]
            i, f, g, o = gate_values(gates, b, t, j, units, exists)
            act_c = activate(activation, c[b, t + uint32(1), j])
            dc += dh * o * activation_grad(activation, act_c)
            d0 = dc * g * activation_grad(recurrent_activation, i)
            d1 = dc * c[b, t, j] * activation_grad(recurrent_activation, f)
            d2 = dc * i * activation_grad(activation, g)
            d3 = dh * act_c * activation_grad(recurrent_activation, o)
            dz[b, t_in, j], dz[b, t_in, units + j] = d0, d1
            dz[b, t_in, uint32(2) * units + j], dz[b, t_in, uint32(3) * units + j] = d2, d3
            dc *= f
        shared[row + j], shared[row + units + j] = d0, d1
        shared[row + uint32(2) * units + j], shared[row + uint32(3) * units + j] = d2, d3
        return dc

    @cuda.jit(**_bounds("persistent_backward", dtype))
    def persistent_backward(recurrent_kernel, c, gates, dy, dy_per_step, dh_final, dc_final, dz, dh0, dc0,
                            batch, time, units, rows, go_backwards, activation, recurrent_activation):
        shared = cuda.shared.array(0, dtype=T)
        ld = stage(shared, recurrent_kernel, units, recurrent_kernel, False)  # no copy to make
        u = uint32(units)
        g4 = uint32(4) * u
        first, j, b, count = place(batch, units, rows)
        buffer = uint32((rows + ROWS - 1) // ROWS * ROWS) * g4  # dz [2][padded rows][4*units], double-buffered
        dz_s = u * ld + first * g4  # the thread's first row of dz in buffer 0
        dh_0, dc_0 = backward_start(dy, dy_per_step, dh_final, dc_final, b, j, count > 0)
        dh_1, dc_1 = backward_start(dy, dy_per_step, dh_final, dc_final, b + uint32(1), j, count > 1)
        dh_2, dc_2 = backward_start(dy, dy_per_step, dh_final, dc_final, b + uint32(2), j, count > 2)
        dh_3, dc_3 = backward_start(dy, dy_per_step, dh_final, dc_final, b + uint32(3), j, count > 3)
        cuda.syncthreads()
        for step in range(time - 1, -1, -1):
            t = uint32(step)
            row = dz_s + (t & uint32(1)) * buffer
            t_in = caller_step(t, time, go_backwards)
            dc_0 = backward_row(dh_0, dc_0, c, gates, dy, dy_per_step, dz, shared, row, b, t, t_in, j, u,
                                count > 0, activation, recurrent_activation)
            dc_1 = backward_row(dh_1, dc_1, c, gates, dy, dy_per_step, dz, shared, row + g4, b + uint32(1), t,
                                t_in, j, u, count > 1, activation, recurrent_activation)
            dc_2 = backward_row(dh_2, dc_2, c, gates, dy, dy_per_step, dz, shared, row + uint32(2) * g4,
                                b + uint32(2), t, t_in, j, u, count > 2, activation, recurrent_activation)
            dc_3 = backward_row(dh_3, dc_3, c, gates, dy, dy_per_step, dz, shared, row + uint32(3) * g4,
                                b + uint32(3), t, t_in, j, u, count > 3, activation, recurrent_activation)
            cuda.syncthreads()
            # dh_{t-1}[j] = sum_m dz_t[m] * recurrent_kernel[j][m] over 16-byte vectors: one weight
            # vector serves the four rows, each row summing its lanes in independent chains (the
            # compiler merges a vector's loads where it proves them aligned: every row starts at a
            # multiple of it).
            p0 = p1 = p2 = p3 = no_sums
            d, w = row, uint32(j * ld)
            g8, g12 = uint32(2) * g4, uint32(3) * g4
            end = uint32(w + g4)
            while w < end:
                weights = vector(shared, w)
                p0 = multiply_add_vector(p0, shared, d, weights)
                p1 = multiply_add_vector(p1, shared, d + g4, weights)
                p2 = multiply_add_vector(p2, shared, d + g8, weights)
                p3 = multiply_add_vector(p3, shared, d + g12, weights)
                d = uint32(d + lanes)
                w = uint32(w + lanes)
            dh_0, dh_1, dh_2, dh_3 = lane_sum(p0), lane_sum(p1), lane_sum(p2), lane_sum(p3)
        if count > 0:
            dh0[b, j], dc0[b, j] = dh_0, dc_0
        if count > 1:
            dh0[b + uint32(1), j], dc0[b + uint32(1), j] = dh_1, dc_1
        if count > 2:
            dh0[b + uint32(2), j], dc0[b + uint32(2), j] = dh_2, dc_2
        if count > 3:
            dh0[b + uint32(3), j], dc0[b + uint32(3), j] = dh_3, dc_3

    @cuda.jit(device=True, inline=True)
    def grid_sync(barrier):
        """Waits until every block of the grid has called it as often as this one (the CUDA C
        kernels' grid_sync, lstm_cooperative.cu): thread 0 of each block counts its block in
        barrier[0], the last to arrive resets the count and moves barrier[1], the generation, on,
        which the others wait for; fences order the blocks' writes before it with their reads
        after it. After GRID_SYNC_POLLS looks a block ends the launch with an error."""
        cuda.syncthreads()
        if cuda.threadIdx.x == 0:
            cuda.threadfence()
            generation = cuda.atomic.add(barrier, 1, uint32(0))
            cuda.threadfence()
            if cuda.atomic.add(barrier, 0, uint32(1)) == uint32(cuda.gridDim.x - 1):
                cuda.atomic.exch(barrier, 0, uint32(0))
                cuda.threadfence()
                cuda.atomic.add(barrier, 1, uint32(1))
            else:
                polls = uint32(0)
                while cuda.atomic.add(barrier, 1, uint32(0)) == generation:
                    if polls == uint32(GRID_SYNC_POLLS):
                        _trap()
                    polls = uint32(polls + uint32(1))
                    _nap()
            cuda.threadfence()
        cuda.syncthreads()

    @cuda.jit(device=True, inline=True)
    def tile(batch, units, slice, rows):
        """(unit_base, jl, j, start, end, offset, stride): the block's first unit (its slice's),
        the thread's unit within the slice and its unit, the block's rows start .. end - 1 (its
        tile's), the thread's first row in a pass, q * ROWS, and the rows of a pass, groups * ROWS
        (lstm_cooperative.cu's Place). A thread of a unit past the last computes on unit
        units - 1's data and writes nothing."""
        s = uint32(slice)
        slices = uint32((uint32(units) + s - uint32(1)) // s)
        unit_base = uint32(cuda.blockIdx.x) % slices * s
        jl = uint32(cuda.threadIdx.x) % s
        start = uint32(cuda.blockIdx.x) // slices * uint32(rows)
        end = min(uint32(start + uint32(rows)), uint32(batch))
        offset = uint32(cuda.threadIdx.x) // s * uint32(ROWS)
        stride = uint32(cuda.blockDim.x) // s * uint32(ROWS)
        return unit_base, jl, uint32(unit_base + jl), start, end, offset, stride

    @cuda.jit(device=True, inline=True)
    def slice_weight(recurrent_kernel, p, j, units, columns):
        """Row p of the block's staged slice for unit j: with ``columns`` (forward) gate p & 3's
        weight from h_{p >> 2}, recurrent_kernel[p >> 2][(p & 3) * units + j]; else (backward)
        recurrent_kernel[j][p]; zero past the last unit."""
        if j >= uint32(units):
            return zero
        if columns:
            return recurrent_kernel[p >> uint32(2), uint32((p & uint32(3)) * uint32(units) + j)]
        return recurrent_kernel[j, p]

    @cuda.jit(device=True, inline=True)
    def stage_slice(shared, recurrent_kernel, saved, copy, units, unit_base, jl, slice, columns):
        """shared[p * slice + jl] = slice_weight(p) for p < 4 * units; thread (q, jl) takes rows q,
        q + groups, ..., four loads in flight before their stores; with ``copy`` (forward) the
        block also writes its columns into ``saved``, the call's own copy of recurrent_kernel."""
        s, j = uint32(slice), uint32(unit_base + jl)
        rows, groups = uint32(uint32(4) * uint32(units)), uint32(uint32(cuda.blockDim.x) // s)
        p = uint32(uint32(cuda.threadIdx.x) // s)
        while uint32(p + uint32(3) * groups) < rows:
            p1, p2, p3 = uint32(p + groups), uint32(p + uint32(2) * groups), uint32(p + uint32(3) * groups)
            a0 = slice_weight(recurrent_kernel, p, j, units, columns)
            a1 = slice_weight(recurrent_kernel, p1, j, units, columns)
            a2 = slice_weight(recurrent_kernel, p2, j, units, columns)
            a3 = slice_weight(recurrent_kernel, p3, j, units, columns)
            shared[p * s + jl], shared[p1 * s + jl], shared[p2 * s + jl], shared[p3 * s + jl] = a0, a1, a2, a3
            p = uint32(p3 + groups)
        while p < rows:
            shared[p * s + jl] = slice_weight(recurrent_kernel, p, j, units, columns)
            p = uint32(p + groups)
        if copy and j < uint32(units):  # the rows this thread staged
            p = uint32(uint32(cuda.threadIdx.x) // s)
            while p < rows:
                saved[p >> uint32(2), uint32((p & uint32(3)) * uint32(units) + j)] = shared[p * s + jl]
                p = uint32(p + groups)

    @cuda.jit(device=True, inline=True)
    def group_rows(base, end):
        """The four rows of a thread's group from row ``base``, each past the tile's last row
        (end - 1) replaced by it: such a row computes on the last row's data and writes nothing."""
        last = uint32(end - uint32(1))
        return base, min(uint32(base + uint32(1)), last), min(uint32(base + uint32(2)), last), \
            min(uint32(base + uint32(3)), last)

    @cuda.jit(device=True, inline=True)
    def stage_pass(shared, at, buffer, pass_start, end, stride, width):
        """Copies the pass's rows pass_start .. (at most stride of them, before end) of ``buffer``
        [batch, width], which other blocks wrote this step, into shared memory from ``at``: a
        row at a time, coalesced, no division per element; then waits for the block."""
        r, last = uint32(0), min(stride, uint32(end - pass_start))
        while r < last:
            k = uint32(cuda.threadIdx.x)
            while k < uint32(width):
                shared[uint32(at + r * uint32(width) + k)] = buffer[pass_start + r, k]
                k = uint32(k + uint32(cuda.blockDim.x))
            r = uint32(r + uint32(1))
        cuda.syncthreads()

    @cuda.jit(device=True, inline=True)
    def cooperative_row(z, h_next, inputs, c, gates, outputs, h_final, c_final, b, t, more, ahead, j, units, h_column,
                        outputs_per_step, activation, recurrent_activation):
        """Row b's pointwise step on the cooperative path: forward_row with its c_{t-1} from c and
        its h_t into the exchange's next buffer; after the last step, the final state and the last
        output."""
        c_t = forward_row(z, c[b, t, j], h_next[b], j, inputs, c, gates, outputs, b, t, more, ahead, j, units,
                          h_column, outputs_per_step, True, activation, recurrent_activation)
        if not more:
            forward_end(h_next[b], j, c_t, outputs, h_final, c_final, b, j, outputs_per_step, True)

    @cuda.jit(**_bounds("cooperative_forward", dtype))
    def cooperative_forward(zx, bias, recurrent_kernel, saved_recurrent_kernel, h0, c0, inputs, c, gates, outputs,
                            h_final, c_final, exchange, barrier, batch, time, input_dim, units, slice, rows,
                            go_backwards, outputs_per_step, activation, recurrent_activation):
        """lstm_cooperative.cu's forward: shared memory holds the slice's columns of
        recurrent_kernel as [units][4][slice], then a pass's h_{t-1} [stride][units];
        exchange[t % 2] holds h_{t-1} of every row and unit at step t."""
        shared = cuda.shared.array(0, dtype=T)
        u, s = uint32(units), uint32(slice)
        unit_base, jl, j, start, end, offset, stride = tile(batch, units, slice, rows)
        active = j < u
        jc = min(j, uint32(u - uint32(1)))  # a unit past the last reads the last one's zx
        first_tile = uint32(cuda.blockIdx.x) < (u + s - uint32(1)) // s  # whose blocks copy recurrent_kernel
        stage_slice(shared, recurrent_kernel, saved_recurrent_kernel, first_tile, units, unit_base, jl, slice, True)
        h_s = uint32(uint32(4) * u * s)
        h_column, ones = uint32(input_dim) + j, bias.shape[0] > 0
        first = caller_step(uint32(0), time, go_backwards)
        bias_j = biases(bias, jc, u)
        for base in range(start + offset, end if active else 0, stride):  # the thread's own rows
            for b in range(base, min(base + uint32(ROWS), end)):
                forward_start(h0, c0, inputs, c, exchange[0, b], j, b, j, h_column, first, units, time, ones, True)
        grid_sync(barrier)
        for step in range(time):
            t = uint32(step)
            h_prev, h_next = exchange[t & uint32(1)], exchange[(t + uint32(1)) & uint32(1)]
            t_in = caller_step(t, time, go_backwards)
            more = step + 1 < time
            ahead = caller_step(t + uint32(1), time, go_backwards) if more else t
            for pass_start in range(start, end, stride):
                stage_pass(shared, h_s, h_prev, pass_start, end, stride, u)
                base = uint32(pass_start + offset)
                if base < end:
                    base, b1, b2, b3 = group_rows(base, end)
                    z0 = step_start(zx, bias_j, base, t_in, jc, u, True)
                    z1 = step_start(zx, bias_j, b1, t_in, jc, u, True)
                    z2 = step_start(zx, bias_j, b2, t_in, jc, u, True)
                    z3 = step_start(zx, bias_j, b3, t_in, jc, u, True)
                    h0_at = uint32(h_s + (base - pass_start) * u)
                    h1_at, h2_at = uint32(h_s + (b1 - pass_start) * u), uint32(h_s + (b2 - pass_start) * u)
                    h3_at = uint32(h_s + (b3 - pass_start) * u)
                    # Per k, four weights and the rows' four h_prev[k] serve 16 multiply-adds.
                    w, k = jl, uint32(0)
                    while k < u:
                        weights = shared[w], shared[w + s], shared[w + uint32(2) * s], shared[w + uint32(3) * s]
                        z0 = multiply_add(z0, shared[h0_at + k], weights)
                        z1 = multiply_add(z1, shared[h1_at + k], weights)
                        z2 = multiply_add(z2, shared[h2_at + k], weights)
                        z3 = multiply_add(z3, shared[h3_at + k], weights)
                        k = uint32(k + uint32(1))
                        w = uint32(w + uint32(4) * s)
                    if active:
                        cooperative_row(z0, h_next, inputs, c, gates, outputs, h_final, c_final, base, t, more, ahead,
                                        j, u, h_column, outputs_per_step, activation, recurrent_activation)
                        if base + uint32(1) < end:
                            cooperative_row(z1, h_next, inputs, c, gates, outputs, h_final, c_final, b1, t, more,
                                            ahead, j, u, h_column, outputs_per_step, activation,
                                            recurrent_activation)
                        if base + uint32(2) < end:
                            cooperative_row(z2, h_next, inputs, c, gates, outputs, h_final, c_final, b2, t, more,
                                            ahead, j, u, h_column, outputs_per_step, activation,
                                            recurrent_activation)
                        if base + uint32(3) < end:
                            cooperative_row(z3, h_next, inputs, c, gates, outputs, h_final, c_final, b3, t, more,
                                            ahead, j, u, h_column, outputs_per_step, activation,
                                            recurrent_activation)
                cuda.syncthreads()  # every thread's reads of this pass's h before the next pass's
            grid_sync(barrier)

    @cuda.jit(**_bounds("cooperative_backward", dtype))
    def cooperative_backward(recurrent_kernel, c, gates, dy, dy_per_step, dh_final, dc_final, dz, dh0, dc0, exchange,
                             barrier, batch, time, units, slice, rows, go_backwards, activation, recurrent_activation):
        """lstm_cooperative.cu's backward, in reverse time: shared memory holds the slice's rows
        of recurrent_kernel as [4*units][slice], then a pass's dz_t [stride][4*units]. Each step
        a thread's pointwise work writes dz of its unit's four gates into exchange[t % 2], and
        after the barrier it sums dh_{t-1} of its unit over vectors of the staged dz. dh and dc
        of a row are carried in dh0 and dc0."""
        shared = cuda.shared.array(0, dtype=T)
        u, s = uint32(units), uint32(slice)
        g4 = uint32(uint32(4) * u)
        unit_base, jl, j, start, end, offset, stride = tile(batch, units, slice, rows)
        active = j < u
        stage_slice(shared, recurrent_kernel, recurrent_kernel, False, units, unit_base, jl, slice, False)
        dz_s = uint32(g4 * s)
        for base in range(start + offset, end if active else 0, stride):  # the thread's own rows
            for b in range(base, min(base + uint32(ROWS), end)):
                dh0[b, j], dc0[b, j] = backward_start(dy, dy_per_step, dh_final, dc_final, b, j, True)
        for step in range(time - 1, -1, -1):
            t = uint32(step)
            dz_all = exchange[t & uint32(1)]
            t_in = caller_step(t, time, go_backwards)
            for base in range(start + offset, end if active else 0, stride):
                for b in range(base, min(base + uint32(ROWS), end)):
                    dc0[b, j] = backward_row(dh0[b, j], dc0[b, j], c, gates, dy, dy_per_step, dz, dz_all[b],
                                             uint32(0), b, t, t_in, j, u, True, activation, recurrent_activation)
            grid_sync(barrier)
            for pass_start in range(start, end, stride):
                stage_pass(shared, dz_s, dz_all, pass_start, end, stride, g4)
                base = uint32(pass_start + offset)
                if base < end:
                    # dh_{t-1}[j] = sum_m dz_t[m] * recurrent_kernel[j][m] over vectors of dz's row:
                    # one weight vector serves the four rows, each row summing its lanes in
                    # independent chains.
                    base, b1, b2, b3 = group_rows(base, end)
                    d0, d1 = uint32(dz_s + (base - pass_start) * g4), uint32(dz_s + (b1 - pass_start) * g4)
                    d2, d3 = uint32(dz_s + (b2 - pass_start) * g4), uint32(dz_s + (b3 - pass_start) * g4)
                    p0 = p1 = p2 = p3 = no_sums
                    w, m = jl, uint32(0)
                    while m < g4:
                        weights = strided_vector(shared, w, s)
                        p0 = multiply_add_vector(p0, shared, d0 + m, weights)
                        p1 = multiply_add_vector(p1, shared, d1 + m, weights)
                        p2 = multiply_add_vector(p2, shared, d2 + m, weights)
                        p3 = multiply_add_vector(p3, shared, d3 + m, weights)
                        m = uint32(m + lanes)
                        w = uint32(w + lanes * s)
                    if active:
                        dh0[base, j] = lane_sum(p0)
                        if base + uint32(1) < end:
                            dh0[base + uint32(1), j] = lane_sum(p1)
                        if base + uint32(2) < end:
                            dh0[base + uint32(2), j] = lane_sum(p2)
                        if base + uint32(3) < end:
                            dh0[base + uint32(3), j] = lane_sum(p3)
                cuda.syncthreads()  # every thread's reads of this pass's dz before the next pass's
            # The next step writes the other buffer, and its barrier comes before this one is written again.

    @cuda.jit
    def stepwise_forward(zx, hr, bias, h0, c0, inputs, c, gates, outputs, h_final, c_final, h_step, batch, time,
                         input_dim, units, t, go_backwards, outputs_per_step, activation, recurrent_activation):
        index = cuda.grid(1)
        if index >= batch * units:
            return
        b, j = index // units, index % units
        t_in = caller_step(uint32(t), time, go_backwards)
        z = step_start(zx, biases(bias, j, units), b, t_in, j, units, True)
        i = activate(recurrent_activation, z[0] + hr[b, j])
        f = activate(recurrent_activation, z[1] + hr[b, units + j])
        g = activate(activation, z[2] + hr[b, 2 * units + j])
        o = activate(recurrent_activation, z[3] + hr[b, 3 * units + j])
        if t == 0:
            c[b, 0, j] = c0[b, j]
            inputs[b, t_in, input_dim + j] = h0[b, j]
            if bias.shape[0] > 0:
                write_ones(inputs, b, j, units, time)
        c_t = f * (c0[b, j] if t == 0 else c[b, t, j]) + i * g
        h_t = o * activate(activation, c_t)
        c[b, t + 1, j] = c_t
        if t + 1 < time:
            inputs[b, caller_step(uint32(t + 1), time, go_backwards), input_dim + j] = h_t
            h_step[b, j] = h_t
        else:
            h_final[b, j], c_final[b, j] = h_t, c_t
        if outputs_per_step != 0:
            outputs[b, t, j] = h_t
        elif t + 1 == time:
            outputs[b, 0, j] = h_t
        gates[b, t, j], gates[b, t, units + j], gates[b, t, 2 * units + j], gates[b, t, 3 * units + j] = i, f, g, o

    @cuda.jit
    def stepwise_backward(c, gates, dy, dy_per_step, dh_final, dc_final, dh, dc, dz, dz_step, batch, time, units,
                          t, go_backwards, activation, recurrent_activation):
        index = cuda.grid(1)
        if index >= batch * units:
            return
        b, j = index // units, index % units
        if t == time - 1:  # the final state's gradients, zeros where absent
            dh_t = dh_final[b, j] if dh_final.shape[0] > 0 else zero
            dc_next = dc_final[b, j] if dc_final.shape[0] > 0 else zero
        else:
            dh_t, dc_next = dh[b, j], dc[b, j]
        if dy.shape[0] > 0:
            if dy_per_step != 0:
                dh_t += dy[b, t, j]
            elif t == time - 1:
                dh_t += dy[b, 0, j]
        i, f = gates[b, t, j], gates[b, t, units + j]
        g, o = gates[b, t, 2 * units + j], gates[b, t, 3 * units + j]
        act_c = activate(activation, c[b, t + 1, j])
        dc_t = dc_next + dh_t * o * activation_grad(activation, act_c)
        t_in = caller_step(uint32(t), time, go_backwards)
        dz_i = dc_t * g * activation_grad(recurrent_activation, i)
        dz_f = dc_t * c[b, t, j] * activation_grad(recurrent_activation, f)
        dz_g = dc_t * i * activation_grad(activation, g)
        dz_o = dh_t * act_c * activation_grad(recurrent_activation, o)
        dz[b, t_in, j], dz[b, t_in, units + j], dz[b, t_in, 2 * units + j], dz[b, t_in, 3 * units + j] = \
            dz_i, dz_f, dz_g, dz_o
        dz_step[b, j], dz_step[b, units + j], dz_step[b, 2 * units + j], dz_step[b, 3 * units + j] = \
            dz_i, dz_f, dz_g, dz_o
        dc[b, j] = dc_t * f

    return {
        "persistent_forward": persistent_forward, "persistent_backward": persistent_backward,
        "cooperative_forward": cooperative_forward, "cooperative_backward": cooperative_backward,
        "stepwise_forward": stepwise_forward, "stepwise_backward": stepwise_backward,
    }
