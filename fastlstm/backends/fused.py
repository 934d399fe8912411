"""The orchestration shared by the GPU backends: the input projection and the weight gradients
as whole-sequence GEMMs, and the recurrence as the fused kernels of the launch plan.

:class:`FusedLSTM` is written against an array module ``xp`` and a ``launcher``: the CuPy
backend gives it ``cupy`` and a launcher of compiled CUDA kernels; the tests give it ``numpy``
and a launcher that runs the same ``.cu`` sources on the CPU, so this orchestration itself, not
a copy of it, is what the tests check.

A launcher is called as ``launcher(launch, *arguments)`` with a :class:`~fastlstm.backends.plan.Launch`
and the kernel's arguments in order: contiguous ``xp`` arrays and Python ints; the CuPy and the
Numba launcher take the same ones. An optional array that is absent (bias, ``dy``, the final
state's gradients) is an empty array of its rank: a null pointer for the CUDA C kernels,
``shape[0] == 0`` for the Numba ones.

The forward kernels take the initial state and the bias and write every array the call returns or
saves, so that on the persistent path a forward is the cache's copies of x and kernel, the input
projection and one launch, and a backward one launch and the GEMMs of the weight gradients and dx;
on the cooperative path each launch follows the zeroing of its grid barrier's two words
(:func:`~fastlstm.backends.plan.launch_count`). zx, the saved ``[x_t, h_{t-1}]`` rows and dz keep
the caller's time order, the kernels processing them from the end for go_backwards, so that
neither x nor dx is copied in reverse.
"""
from typing import Any, NamedTuple

import numpy as np

from fastlstm.backends import sequence
from fastlstm.backends.plan import plan_lstm
from fastlstm.kernels.activation_ids import ACTIVATION_IDS


class Saved(NamedTuple):
    inputs: Any  # [batch, time, input_dim + units (+ 1)]: [x_t, h_{t-1} (, 1 with a bias)], in the caller's order
    kernel: Any
    recurrent_kernel: Any
    has_bias: bool
    c: Any  # [batch, time + 1, units]: c0, c_1 .. c_T, in processing order
    gates: Any  # [batch, time, 4*units]: activated i, f, g, o, in processing order
    options: Any
    plan: Any


class FusedLSTM:
    """cooperative: whether the launcher runs the plan's cooperative kernels, whose blocks must
    all be resident at once (CuPy's launches them cooperatively; numba_cuda's plainly, one block
    per multiprocessor), so that the plan may take that path."""

    def __init__(self, xp, launcher, limits, cooperative=False):
        self.xp, self.launcher, self.limits, self.cooperative = xp, launcher, limits, cooperative

    def forward(self, x, kernel, recurrent_kernel, bias, h0, c0, options):
        xp = self.xp
        x = xp.ascontiguousarray(x)
        batch, time, input_dim = x.shape
        units = recurrent_kernel.shape[0]
        plan = plan_lstm(batch, units, x.dtype, self.limits, self.cooperative)
        has_bias, bias = bias is not None, _optional(xp, bias, 1, x.dtype)
        # With a bias, a column of ones after [x_t, h_{t-1}] makes dbias a row of the weight gradients' product.
        inputs = xp.empty((batch, time, input_dim + units + int(has_bias)), x.dtype)
        inputs[:, :, :input_dim] = x  # the cache's own x; the kernels write the rest
        zx = xp.matmul(x.reshape(batch * time, input_dim), kernel).reshape(batch, time, 4 * units)
        c = xp.empty((batch, time + 1, units), x.dtype)
        gates = xp.empty_like(zx)
        outputs = xp.empty((batch, time, units) if options.return_sequences else (batch, units), x.dtype)
        h_final, c_final = xp.empty((batch, units), x.dtype), xp.empty((batch, units), x.dtype)
        h0, c0 = xp.ascontiguousarray(h0), xp.ascontiguousarray(c0)
        filled = (inputs, c, gates, outputs.reshape(batch, -1, units), h_final, c_final)
        flags = (int(options.go_backwards), int(options.return_sequences),
                 ACTIVATION_IDS[options.activation], ACTIVATION_IDS[options.recurrent_activation])
        if plan.path != "stepwise":  # one launch, which copies recurrent_kernel as it stages it
            saved_recurrent_kernel = xp.empty((units, 4 * units), x.dtype)
            self.launcher(plan.forward, zx, bias, xp.ascontiguousarray(recurrent_kernel), saved_recurrent_kernel,
                          h0, c0, *filled, *_grid_arguments(xp, plan, (batch, units), x.dtype), batch, time,
                          input_dim, units, *_tiling(plan), *flags)
        else:
            saved_recurrent_kernel = recurrent_kernel.copy()  # contiguous, and the cache's own
            hr = xp.empty((batch, 4 * units), x.dtype)
            # Each step's kernel writes its h into h_step too, whole rows for the next step's product:
            # inputs' h part, a strided slice, CuPy would copy first.
            h_step = xp.empty((batch, units), x.dtype)
            for t in range(time):
                xp.matmul(h0 if t == 0 else h_step, saved_recurrent_kernel, out=hr)
                self.launcher(plan.forward, zx, hr, bias, h0, c0, *filled, h_step, batch, time, input_dim, units, t,
                              *flags)
        saved = Saved(inputs, kernel.copy(), saved_recurrent_kernel, has_bias, c, gates, options, plan)
        return outputs, h_final, c_final, saved

    def backward(self, saved, dy, dhT, dcT):
        xp = self.xp
        inputs, kernel, recurrent_kernel, has_bias, c, gates, options, plan = saved
        batch, time, _ = inputs.shape
        units = recurrent_kernel.shape[0]
        dtype = inputs.dtype
        flags = (int(options.go_backwards), ACTIVATION_IDS[options.activation],
                 ACTIVATION_IDS[options.recurrent_activation])
        dy = _optional(xp, None if dy is None else dy.reshape(batch, -1, units), 3, dtype)
        given = (dy, int(options.return_sequences), _optional(xp, dhT, 2, dtype), _optional(xp, dcT, 2, dtype))
        dz = xp.empty_like(gates)
        dh0, dc0 = xp.empty((batch, units), dtype), xp.empty((batch, units), dtype)
        if plan.path != "stepwise":
            self.launcher(plan.backward, recurrent_kernel, c, gates, *given, dz, dh0, dc0,
                          *_grid_arguments(xp, plan, (batch, 4 * units), dtype), batch, time, units, *_tiling(plan),
                          *flags)
        else:
            recurrent_kernel_t = recurrent_kernel.T
            dz_step = xp.empty((batch, 4 * units), dtype)  # step t's dz, whole rows for the product, as h_step
            for t in reversed(range(time)):
                # dh0 and dc0 carry the gradients reaching the state from step t + 1 to step t.
                self.launcher(plan.backward, c, gates, *given, dh0, dc0, dz, dz_step, batch, time, units, t, *flags)
                xp.matmul(dz_step, recurrent_kernel_t, out=dh0)
        # inputs and dz share the caller's time order, which dx then has too.
        return (sequence.input_gradient(xp, dz, kernel, False),
                *sequence.weight_gradients(xp, inputs, kernel, dz, has_bias), dh0, dc0)


def _grid_arguments(xp, plan, step_shape, dtype):
    """The arguments a cooperative kernel takes beyond a persistent one's: the exchange of each
    step's ``step_shape`` array between the blocks (double-buffered) and the grid barrier's two
    zeroed words; none on the persistent path."""
    if plan.path != "cooperative":
        return ()
    return xp.empty((2, *step_shape), dtype), xp.zeros(2, np.uint32)


def _tiling(plan):
    """How the one-launch kernels split the work: (rows a block) persistent, (units a block, rows a
    block) cooperative."""
    return (plan.slice, plan.rows) if plan.path == "cooperative" else (plan.rows,)


def _optional(xp, a, ndim, dtype):
    return xp.empty((0,) * ndim, dtype) if a is None else xp.ascontiguousarray(a)


def as_cupy(cupy, a):
    """``a`` as a CuPy array without a copy when it is on the device (a CuPy array, a Numba device
    array, anything with ``__cuda_array_interface__`` or ``__dlpack__``); NumPy arrays stay."""
    if isinstance(a, np.ndarray) or isinstance(a, cupy.ndarray):
        return a
    if hasattr(a, "__cuda_array_interface__"):
        return cupy.asarray(a)
    return cupy.from_dlpack(a)


def host_round_trip(engine, to_device, to_host):
    """A GPU backend's ``forward`` and ``backward`` around ``engine()`` (a FusedLSTM): NumPy
    inputs go to the device and their results come back; device arrays stay on the device."""

    def forward(x, kernel, recurrent_kernel, bias, h0, c0, options):
        on_host = isinstance(x, np.ndarray)
        arrays = (None if a is None else to_device(a) for a in (x, kernel, recurrent_kernel, bias, h0, c0))
        outputs, h, c, saved = engine().forward(*arrays, options)
        if on_host:
            outputs, h, c = map(to_host, (outputs, h, c))
        return outputs, h, c, (saved, on_host)

    def backward(saved, dy, dhT, dcT):
        saved, on_host = saved
        gradients = engine().backward(saved, *(None if a is None else to_device(a) for a in (dy, dhT, dcT)))
        return tuple(to_host(g) if on_host and g is not None else g for g in gradients)

    return forward, backward
