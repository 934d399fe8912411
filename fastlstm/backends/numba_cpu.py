"""The numba_cpu backend: the LSTM recurrence as fused loops compiled by Numba, on the CPU.

The input projection ``x @ kernel + bias``, the weight gradients and ``dx`` are single BLAS
products over all time steps (NumPy's, on every core). The recurrence runs in one compiled call
for the whole sequence when a step's work is small (the alphabet's shapes: a BLAS call per step
would cost more than the step), else as one BLAS product per step and a compiled pointwise step
with the samples in parallel. Kernels: :mod:`fastlstm.kernels.numba_cpu`, compiled on first use
per dtype and cached on disk.

Beyond the backend contract it offers :func:`train_epoch`, the fused training pass of an LSTM +
Dense(softmax) model that :class:`fastlstm.nn.Sequential` uses where it applies.
"""
import numba
import numpy as np

from fastlstm.backends import sequence
from fastlstm.backends.numpy import Saved  # the same arrays in the same layout
from fastlstm.kernels import numba_cpu as kernels

# From this many multiply-adds per step (batch * units * 4 * units), a BLAS product per step and
# the samples in parallel beat the single-threaded loops (measured: 32 x 32 units is below it).
STEPWISE_WORK = 1 << 18


def probe():
    return f"CPU, Numba {numba.__version__}, {numba.get_num_threads()} threads"


def _codes(activation, recurrent_activation):
    return kernels.ACTIVATIONS.index(activation), kernels.ACTIVATIONS.index(recurrent_activation)


def _stepwise(batch, units):
    return batch * units * 4 * units >= STEPWISE_WORK


def forward(x, kernel, recurrent_kernel, bias, h0, c0, options):
    codes = _codes(options.activation, options.recurrent_activation)
    units = recurrent_kernel.shape[0]
    recurrent_kernel = np.ascontiguousarray(recurrent_kernel)
    x, zx, h, c, gates = sequence.start(np, x, kernel, bias, h0, c0, units, options.go_backwards)
    batch, time, _ = x.shape
    act_c = np.empty((batch, time, units), x.dtype)
    if _stepwise(batch, units):
        recurrent_part = np.empty((batch, 4 * units), x.dtype)
        for t in range(time):
            np.matmul(h[:, t], recurrent_kernel, out=recurrent_part)
            kernels.forward_step(zx, recurrent_part, h, c, gates, act_c, t, *codes)
    else:
        kernels.forward_sequence(zx, recurrent_kernel, h, c, gates, act_c, *codes)
    outputs = h[:, 1:].copy() if options.return_sequences else h[:, time].copy()
    saved = Saved(x, kernel, recurrent_kernel, bias is not None, h, c, gates, act_c, options)
    return outputs, h[:, time].copy(), c[:, time].copy(), saved


def backward(saved, dy, dhT, dcT):
    x, kernel, recurrent_kernel, has_bias, h, c, gates, act_c, options = saved
    codes = _codes(options.activation, options.recurrent_activation)
    batch, time, _ = x.shape
    units = recurrent_kernel.shape[0]

    dh = np.zeros((batch, units), x.dtype) if dhT is None else dhT.copy()
    dc = np.zeros((batch, units), x.dtype) if dcT is None else dcT.copy()
    every_step = dy is not None and options.return_sequences
    if dy is not None and not every_step:
        dh += dy
    dz = np.empty_like(gates)
    if _stepwise(batch, units):
        for t in reversed(range(time)):
            if every_step:
                dh += dy[:, t]
            kernels.backward_step(gates, c, act_c, dh, dc, dz, t, *codes)
            np.matmul(dz[:, t], recurrent_kernel.T, out=dh)
    else:
        dy_steps = np.ascontiguousarray(dy) if every_step else np.empty((batch, 0, units), x.dtype)
        kernels.backward_sequence(gates, c, act_c, recurrent_kernel, dy_steps, dh, dc, dz, *codes)
    return (*sequence.weight_gradients(np, x, kernel, h, dz, has_bias, options.go_backwards), dh, dc)


def train_epoch(x, y, batch_size, lstm_weights, dense_weights, lstm_grads, dense_grads, flat, adam, state,
                activation, recurrent_activation, go_backwards):
    """One training pass of an LSTM (last output only) + Dense(softmax) model with categorical
    cross-entropy and Adam, all of it in one compiled call (see ``kernels.train_epoch``).

    Args:
        x: [samples, time, features] and y: [samples, classes], in the epoch's order; the
            batches are consecutive runs of ``batch_size`` samples (the last may be shorter).
        lstm_weights, lstm_grads: [kernel, recurrent_kernel, bias] (no bias without one);
            dense_weights, dense_grads: [kernel, bias]; every one a view into flat.
        flat: (weights, gradients, m, v), the model's flat buffers and Adam's moments for them.
        adam: (learning_rate, beta_1, beta_2, epsilon, 1 - beta_1, 1 - beta_2) in the weights'
            dtype, and the number of steps taken before.
        state: (h, c) [batch_size, units] of a stateful LSTM, carried on in place; None for a
            stateless one (zeros).
        activation, recurrent_activation, go_backwards: the LSTM's options.

    Returns:
        (the sum over batches of the batch's mean loss times its size, the number of samples
        whose most probable class is the target's). Weights, gradients, moments and the state
        are updated in place, one Adam step per batch.
    """
    constants, iterations = adam
    empty = np.empty(0, x.dtype)
    lstm_weights, lstm_grads = (tuple(arrays) + (empty,) * (3 - len(arrays)) for arrays in (lstm_weights, lstm_grads))
    options = (state is not None, go_backwards, *_codes(activation, recurrent_activation))
    if state is None:
        state = (np.empty((0, lstm_weights[1].shape[0]), x.dtype),) * 2
    return kernels.train_epoch(np.ascontiguousarray(x), np.ascontiguousarray(y), batch_size, lstm_weights,
                               tuple(dense_weights), lstm_grads, tuple(dense_grads), tuple(flat), constants,
                               iterations, tuple(state), options)
