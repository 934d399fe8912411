"""The NumPy backend: the readable reference every other backend is checked against.

Vectorised over batch and gates; the input projection ``x @ kernel + bias`` and the weight
gradients are single matrix products over all time steps, so only the recurrence loops in Python.
"""
from typing import NamedTuple

import numpy as np

from fastlstm.activations import ACTIVATIONS
from fastlstm.backends import sequence

# What this backend implements of the contract in fastlstm.backends.
CAPABILITIES = ("forward", "backward")


def probe():
    return f"CPU, NumPy {np.__version__}"


class Saved(NamedTuple):
    x: np.ndarray  # [batch, time, input_dim], in processing order (reversed for go_backwards)
    kernel: np.ndarray  # [input_dim, 4*units]
    recurrent_kernel: np.ndarray  # [units, 4*units]
    has_bias: bool
    h: np.ndarray  # [batch, time + 1, units]: h0, h_1 .. h_T
    c: np.ndarray  # [batch, time + 1, units]: c0, c_1 .. c_T
    gates: np.ndarray  # [batch, time, 4*units]: activated i, f, g, o
    act_c: np.ndarray  # [batch, time, units]: activation(c_t)
    options: tuple


def forward(x, kernel, recurrent_kernel, bias, h0, c0, options):
    act = ACTIVATIONS[options.activation].fn
    rec_act = ACTIVATIONS[options.recurrent_activation].fn
    units = recurrent_kernel.shape[0]
    g_ = slice(2 * units, 3 * units)
    x, zx, h, c, gates = sequence.start(np, x, kernel, bias, h0, c0, units, options.go_backwards)
    time = x.shape[1]
    for t in range(time):
        z = zx[:, t] + h[:, t] @ recurrent_kernel
        a = rec_act(z)
        a[:, g_] = act(z[:, g_])
        i, f, g, o = np.split(a, 4, axis=1)
        c[:, t + 1] = f * c[:, t] + i * g
        h[:, t + 1] = o * act(c[:, t + 1])
        gates[:, t] = a
    act_c = act(c[:, 1:])
    outputs = h[:, 1:].copy() if options.return_sequences else h[:, time].copy()
    saved = Saved(x, kernel.copy(), recurrent_kernel.copy(), bias is not None, h, c, gates, act_c, options)
    return outputs, h[:, time].copy(), c[:, time].copy(), saved


def backward(saved, dy, dhT, dcT):
    x, kernel, recurrent_kernel, has_bias, h, c, gates, act_c, options = saved
    act_grad = ACTIVATIONS[options.activation].grad_from_output
    rec_act_grad = ACTIVATIONS[options.recurrent_activation].grad_from_output
    batch, time, _ = x.shape
    units = recurrent_kernel.shape[0]
    g_ = slice(2 * units, 3 * units)

    # Derivative of each gate's activation at every step, computed once for the whole sequence.
    gate_grad = rec_act_grad(gates)
    gate_grad[..., g_] = act_grad(gates[..., g_])
    act_c_grad = act_grad(act_c)

    dh = np.zeros((batch, units), x.dtype) if dhT is None else dhT.copy()
    dc = np.zeros((batch, units), x.dtype) if dcT is None else dcT.copy()
    if dy is not None and not options.return_sequences:
        dh += dy
    dz = np.empty_like(gates)
    recurrent_kernel_t = recurrent_kernel.T
    for t in reversed(range(time)):
        if dy is not None and options.return_sequences:
            dh += dy[:, t]
        i, f, g, o = np.split(gates[:, t], 4, axis=1)
        dc += dh * o * act_c_grad[:, t]
        dgates = np.concatenate([dc * g, dc * c[:, t], dc * i, dh * act_c[:, t]], axis=1)
        dz[:, t] = dgates * gate_grad[:, t]
        dc *= f
        dh = dz[:, t] @ recurrent_kernel_t

    inputs = sequence.step_inputs(np, x, h)
    return (sequence.input_gradient(np, dz, kernel, options.go_backwards),
            *sequence.weight_gradients(np, inputs, kernel, dz, has_bias), dh, dc)
