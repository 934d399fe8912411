"""The orchestration shared by the GPU backends: the input projection and the weight gradients
as whole-sequence GEMMs, and the recurrence as the fused kernels of the launch plan.

:class:`FusedLSTM` is written against an array module ``xp`` and a ``launcher``: the CuPy
backend gives it ``cupy`` and a launcher of compiled CUDA kernels; the tests give it ``numpy``
and a launcher that runs the same ``.cu`` sources on the CPU, so this orchestration itself, not
a copy of it, is what the tests check.

A launcher is called as ``launcher(launch, *arguments)`` with a :class:`~fastlstm.backends.plan.Launch`
and the kernel's arguments in order: contiguous ``xp`` arrays and Python ints. An optional array
that is absent (``dy``, the final state's gradients) is an empty array of its rank: a null pointer
for the CUDA C kernels, ``shape[0] == 0`` for the Numba ones.
"""
from typing import Any, NamedTuple

import numpy as np

from fastlstm.backends import sequence
from fastlstm.backends.plan import plan_lstm
from fastlstm.kernels.activation_ids import ACTIVATION_IDS


class Saved(NamedTuple):
    x: Any  # [batch, time, input_dim], in processing order
    kernel: Any
    recurrent_kernel: Any
    has_bias: bool
    h: Any  # [batch, time + 1, units]: h0, h_1 .. h_T
    c: Any  # [batch, time + 1, units]
    gates: Any  # [batch, time, 4*units]: activated i, f, g, o
    options: Any
    plan: Any


class FusedLSTM:
    def __init__(self, xp, launcher, limits):
        self.xp, self.launcher, self.limits = xp, launcher, limits

    def forward(self, x, kernel, recurrent_kernel, bias, h0, c0, options):
        xp = self.xp
        units = recurrent_kernel.shape[0]
        x, zx, h, c, gates = sequence.start(xp, x, kernel, bias, h0, c0, units, options.go_backwards)
        batch, time, _ = x.shape
        plan = plan_lstm(batch, units, x.dtype, self.limits)
        activations = ACTIVATION_IDS[options.activation], ACTIVATION_IDS[options.recurrent_activation]
        recurrent_kernel = recurrent_kernel.copy()  # contiguous, and the cache's own
        if plan.path == "persistent":
            self.launcher(plan.forward, zx, recurrent_kernel, h, c, gates, batch, time, units, plan.rows, *activations)
        else:
            hr = xp.empty((batch, 4 * units), x.dtype)
            for t in range(time):
                xp.matmul(h[:, t], recurrent_kernel, out=hr)
                self.launcher(plan.forward, zx, hr, h, c, gates, batch, time, units, t, *activations)
        outputs = h[:, 1:].copy() if options.return_sequences else h[:, time].copy()
        saved = Saved(x, kernel.copy(), recurrent_kernel, bias is not None, h, c, gates, options, plan)
        return outputs, h[:, time].copy(), c[:, time].copy(), saved

    def backward(self, saved, dy, dhT, dcT):
        xp = self.xp
        x, kernel, recurrent_kernel, has_bias, h, c, gates, options, plan = saved
        batch, time, _ = x.shape
        units = recurrent_kernel.shape[0]
        activations = ACTIVATION_IDS[options.activation], ACTIVATION_IDS[options.recurrent_activation]
        dy = _optional(xp, None if dy is None else dy.reshape(batch, -1, units), 3, x.dtype)
        dy_per_step = int(options.return_sequences)

        dz = xp.empty_like(gates)
        if plan.path == "persistent":
            dh0 = xp.empty((batch, units), x.dtype)
            dc0 = xp.empty_like(dh0)
            self.launcher(plan.backward, recurrent_kernel, c, gates, dy, dy_per_step,
                          _optional(xp, dhT, 2, x.dtype), _optional(xp, dcT, 2, x.dtype), dz, dh0, dc0,
                          batch, time, units, plan.rows, *activations)
        else:
            dh0 = xp.zeros((batch, units), x.dtype) if dhT is None else dhT.copy()
            dc0 = xp.zeros((batch, units), x.dtype) if dcT is None else dcT.copy()
            recurrent_kernel_t = recurrent_kernel.T
            for t in reversed(range(time)):
                self.launcher(plan.backward, c, gates, dy, dy_per_step, dh0, dc0, dz,
                              batch, time, units, t, *activations)
                xp.matmul(dz[:, t], recurrent_kernel_t, out=dh0)
        inputs = sequence.step_inputs(xp, x, h)
        return (*sequence.weight_gradients(xp, inputs, kernel, dz, has_bias, options.go_backwards), dh0, dc0)


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
