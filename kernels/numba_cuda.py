"""The Numba CUDA kernels of the two paths, the same algorithms as lstm_persistent.cu and
lstm_stepwise.cu (read those for the design), one set per dtype.

Every constant is a scalar of the kernel's dtype, so a float32 kernel does no float64
arithmetic (the compile gate looks for ``.f64`` in its PTX). The hot loops and the staging index
with uint32: Numba's int64 indices cost 64-bit arithmetic and a negative-index wrap-around at
every access (at sm_90, 27.8 instructions per multiply-add in the backward's loop against 4.9). An absent optional array (dy, the
final state's gradients) comes as an empty array. Compiled on first launch, never at import.
"""
import functools
import math

import numpy as np
from numba import config, cuda, from_dtype, uint32

from .activation_ids import HARD_SIGMOID, HARD_SIGMOID_KERAS2, RELU, SIGMOID, SOFTSIGN, TANH

# The persistent kernels may run 1024 threads a block: the compiler must fit them (64 registers).
# (The simulator's cuda.jit takes no launch bounds; it has no registers to fit.)
LAUNCH_BOUNDS = {"persistent_forward": 1024, "persistent_backward": 1024}


def _bounds(function):
    return {} if config.ENABLE_CUDASIM else {"launch_bounds": LAUNCH_BOUNDS[function]}


@functools.cache
def kernels(dtype):
    """{kernel name: CUDA kernel} for ``dtype`` (float32 or float64)."""
    dtype = np.dtype(dtype)
    T = from_dtype(dtype)
    zero, one, half, three, six, fifth, sixth = (dtype.type(v) for v in (0, 1, 0.5, 3, 6, 0.2, 1 / 6))

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
    def stage(shared, recurrent_kernel, units):
        """Copies recurrent_kernel into shared memory with rows padded to 4*units + 1, four loads
        in flight per thread before their stores (a load at a time waits out the latency of each)."""
        gates = uint32(4 * units)
        padded = gates + uint32(1)
        elements, stride = uint32(units) * gates, uint32(cuda.blockDim.x)
        i = uint32(cuda.threadIdx.x)
        while i + uint32(3) * stride < elements:
            e1, e2, e3 = i + stride, i + uint32(2) * stride, i + uint32(3) * stride
            a0, a1 = recurrent_kernel[i // gates, i % gates], recurrent_kernel[e1 // gates, e1 % gates]
            a2, a3 = recurrent_kernel[e2 // gates, e2 % gates], recurrent_kernel[e3 // gates, e3 % gates]
            shared[(i // gates) * padded + i % gates] = a0
            shared[(e1 // gates) * padded + e1 % gates] = a1
            shared[(e2 // gates) * padded + e2 % gates] = a2
            shared[(e3 // gates) * padded + e3 % gates] = a3
            i = e3 + stride
        while i < elements:
            shared[(i // gates) * padded + i % gates] = recurrent_kernel[i // gates, i % gates]
            i += stride

    @cuda.jit(**_bounds("persistent_forward"))
    def persistent_forward(zx, recurrent_kernel, h, c, gates, batch, time, units, rows, activation,
                           recurrent_activation):
        shared = cuda.shared.array(0, dtype=T)
        ld = 4 * units + 1
        h_s = units * ld  # offset of h [2][rows][units], double-buffered
        r, j = cuda.threadIdx.x // units, cuda.threadIdx.x % units
        b = cuda.blockIdx.x * rows + r
        active = b < batch  # idle threads of the last block still reach every barrier
        stage(shared, recurrent_kernel, units)
        c_t = c[b, 0, j] if active else zero
        shared[h_s + r * units + j] = h[b, 0, j] if active else zero
        cuda.syncthreads()
        for t in range(time):
            h_prev = h_s + (t & 1) * rows * units + r * units
            z0 = z1 = z2 = z3 = zero
            if active:
                z0, z1 = zx[b, t, j], zx[b, t, units + j]
                z2, z3 = zx[b, t, 2 * units + j], zx[b, t, 3 * units + j]
            h_k, w, u, step = uint32(h_prev), uint32(j), uint32(units), uint32(ld)
            u2, u3 = uint32(2) * u, uint32(3) * u
            for _ in range(u):
                hk = shared[h_k]
                z0 += hk * shared[w]
                z1 += hk * shared[w + u]
                z2 += hk * shared[w + u2]
                z3 += hk * shared[w + u3]
                h_k += uint32(1)
                w += step
            i, f = activate(recurrent_activation, z0), activate(recurrent_activation, z1)
            g, o = activate(activation, z2), activate(recurrent_activation, z3)
            c_t = f * c_t + i * g
            h_t = o * activate(activation, c_t)
            shared[h_s + ((t + 1) & 1) * rows * units + r * units + j] = h_t
            if active:
                h[b, t + 1, j] = h_t
                c[b, t + 1, j] = c_t
                gates[b, t, j], gates[b, t, units + j] = i, f
                gates[b, t, 2 * units + j], gates[b, t, 3 * units + j] = g, o
            cuda.syncthreads()

    @cuda.jit(**_bounds("persistent_backward"))
    def persistent_backward(recurrent_kernel, c, gates, dy, dy_per_step, dh_final, dc_final, dz, dh0, dc0,
                            batch, time, units, rows, activation, recurrent_activation):
        shared = cuda.shared.array(0, dtype=T)
        ld = 4 * units + 1
        dz_s = units * ld  # offset of dz [2][rows][4*units], double-buffered
        r, j = cuda.threadIdx.x // units, cuda.threadIdx.x % units
        b = cuda.blockIdx.x * rows + r
        active = b < batch
        stage(shared, recurrent_kernel, units)
        dh = dc = zero
        if active:
            if dh_final.shape[0] > 0:
                dh = dh_final[b, j]
            if dc_final.shape[0] > 0:
                dc = dc_final[b, j]
            if dy.shape[0] > 0 and dy_per_step == 0:
                dh += dy[b, 0, j]
        cuda.syncthreads()
        for t in range(time - 1, -1, -1):
            row = dz_s + (t & 1) * rows * 4 * units + r * 4 * units
            if active:
                if dy.shape[0] > 0 and dy_per_step != 0:
                    dh += dy[b, t, j]
                i, f = gates[b, t, j], gates[b, t, units + j]
                g, o = gates[b, t, 2 * units + j], gates[b, t, 3 * units + j]
                act_c = activate(activation, c[b, t + 1, j])
                dc += dh * o * activation_grad(activation, act_c)
                d0 = dc * g * activation_grad(recurrent_activation, i)
                d1 = dc * c[b, t, j] * activation_grad(recurrent_activation, f)
                d2 = dc * i * activation_grad(activation, g)
                d3 = dh * act_c * activation_grad(recurrent_activation, o)
                shared[row + j], shared[row + units + j] = d0, d1
                shared[row + 2 * units + j], shared[row + 3 * units + j] = d2, d3
                dz[b, t, j], dz[b, t, units + j], dz[b, t, 2 * units + j], dz[b, t, 3 * units + j] = d0, d1, d2, d3
                dc *= f
            else:
                for q in range(4):
                    shared[row + q * units + j] = zero
            cuda.syncthreads()
            # One independent chain per gate, summed at the end, rather than one chain of 4 * units.
            p0 = p1 = p2 = p3 = zero
            d, w, u = uint32(row), uint32(j * ld), uint32(units)
            u2, u3 = uint32(2) * u, uint32(3) * u
            for _ in range(u):
                p0 += shared[d] * shared[w]
                p1 += shared[d + u] * shared[w + u]
                p2 += shared[d + u2] * shared[w + u2]
                p3 += shared[d + u3] * shared[w + u3]
                d += uint32(1)
                w += uint32(1)
            dh = (p0 + p1) + (p2 + p3)
        if active:
            dh0[b, j] = dh
            dc0[b, j] = dc

    @cuda.jit
    def stepwise_forward(zx, hr, h, c, gates, batch, time, units, t, activation, recurrent_activation):
        index = cuda.grid(1)
        if index >= batch * units:
            return
        b, j = index // units, index % units
        i = activate(recurrent_activation, zx[b, t, j] + hr[b, j])
        f = activate(recurrent_activation, zx[b, t, units + j] + hr[b, units + j])
        g = activate(activation, zx[b, t, 2 * units + j] + hr[b, 2 * units + j])
        o = activate(recurrent_activation, zx[b, t, 3 * units + j] + hr[b, 3 * units + j])
        c_t = f * c[b, t, j] + i * g
        c[b, t + 1, j] = c_t
        h[b, t + 1, j] = o * activate(activation, c_t)
        gates[b, t, j], gates[b, t, units + j], gates[b, t, 2 * units + j], gates[b, t, 3 * units + j] = i, f, g, o

    @cuda.jit
    def stepwise_backward(c, gates, dy, dy_per_step, dh, dc, dz, batch, time, units, t, activation,
                          recurrent_activation):
        index = cuda.grid(1)
        if index >= batch * units:
            return
        b, j = index // units, index % units
        dh_t = dh[b, j]
        if dy.shape[0] > 0:
            if dy_per_step != 0:
                dh_t += dy[b, t, j]
            elif t == time - 1:
                dh_t += dy[b, 0, j]
        i, f = gates[b, t, j], gates[b, t, units + j]
        g, o = gates[b, t, 2 * units + j], gates[b, t, 3 * units + j]
        act_c = activate(activation, c[b, t + 1, j])
        dc_t = dc[b, j] + dh_t * o * activation_grad(activation, act_c)
        dz[b, t, j] = dc_t * g * activation_grad(recurrent_activation, i)
        dz[b, t, units + j] = dc_t * c[b, t, j] * activation_grad(recurrent_activation, f)
        dz[b, t, 2 * units + j] = dc_t * i * activation_grad(activation, g)
        dz[b, t, 3 * units + j] = dh_t * act_c * activation_grad(recurrent_activation, o)
        dc[b, j] = dc_t * f

    return {
        "persistent_forward": persistent_forward, "persistent_backward": persistent_backward,
        "stepwise_forward": stepwise_forward, "stepwise_backward": stepwise_backward,
    }
