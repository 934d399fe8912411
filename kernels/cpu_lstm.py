"""The LSTM kernels of the ``numba_cpu`` backend (imported by it alone, never by ``import fastlstm``).

Layout, as the NumPy backend's: ``zx, gates, dz [batch, time, 4*units]`` (gates i, f, c, o),
``h, c [batch, time + 1, units]`` (time index 0: the initial state), ``act_c [batch, time, units]``
(``activation(c_t)``). Activations are ids (kernels/activation_ids.py).

- :func:`forward`, :func:`backward`: a whole layer in one call, the input projection, the
  recurrence (:func:`forward_sequence`, :func:`backward_sequence`) and the weight gradients as
  loops; for the small shapes, where a BLAS call per step, or any call at all, costs more than
  its work. :func:`infer` is forward for a pass that keeps nothing for the backward pass.
- :func:`forward_step`, :func:`infer_step`, :func:`backward_step`: one step's pointwise work for a
  slice of the batch, around one product per step made by the caller; for the large shapes (the
  caller runs a slice of the samples on each core, its arrays time-major: ``[time, n, ...]``).
  infer_step is forward_step for a pass that keeps nothing for the backward pass.

Each operation is done in the arrays' dtype (float32 or float64) in the order the NumPy backend
and ``fastlstm.nn`` write it (no ``fastmath`` but for the sums of :func:`~.cpu_matmul.matvec`), so
only sums of products (another summation order than BLAS's) and exp (see :mod:`.cpu_arithmetic`)
round differently. Compiled on first use for each dtype and cached on disk (``cache=True``).
"""
import numpy as np
from numba import njit

from .activation_ids import SIGMOID, TANH
from .cpu_arithmetic import FLAGS, activate, add_to, copy_to, derivative, sigmoid, tanh
from .cpu_matmul import add_product, matvec


@njit(inline="always")
def _activate_default_gates(i, f, g, o):
    """Activates the four gates' pre-activations [units] in place with Keras's default
    activations, in one loop: four independent chains of arithmetic per unit, and four arrays, few
    enough for LLVM to check at run time that they do not overlap and vectorise."""
    T = i.dtype.type
    for u in range(i.size):
        i[u] = sigmoid(i[u], T)
        f[u] = sigmoid(f[u], T)
        g[u] = tanh(g[u], T)
        o[u] = sigmoid(o[u], T)


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
        activate(recurrent_activation, if_, if_)
        activate(activation, g, g)
        activate(recurrent_activation, o, o)
    for u in range(units):
        c[u] = f[u] * c_prev[u] + i[u] * g[u]
    activate(activation, c, act_c)
    for u in range(units):
        h[u] = o[u] * act_c[u]


@njit(inline="always")
def _cell_infer(z, c_prev, c, h, activation, recurrent_activation):
    """_cell_forward for a pass that keeps nothing for the backward pass: the same c and h, bit
    for bit, z left meaningless and activation(c) not kept. With Keras's default activations
    in two loops, each unit's gates held in registers rather than stored and read again (the
    stepwise inference's pointwise step at 32 units: 2.9 ns a cell rather than 3.6, Zen 4): c,
    then h. One loop for both was slower (2.04 ns a cell rather than 1.82 at 128 units, Zen 4):
    its chain of dependent operations per unit, two activations deep, is longer than the core's
    window of instructions in flight can hide."""
    units = c.size
    if activation == TANH and recurrent_activation == SIGMOID:
        T = z.dtype.type
        for u in range(units):
            c[u] = sigmoid(z[units + u], T) * c_prev[u] + sigmoid(z[u], T) * tanh(z[2 * units + u], T)
        for u in range(units):
            h[u] = sigmoid(z[3 * units + u], T) * tanh(c[u], T)
    else:  # h holds activation(c) until it is multiplied by o
        _cell_forward(z, c_prev, c, h, h, activation, recurrent_activation)


@njit(inline="always")
def _gate_gradient(code, y, a, b, out):
    """out = derivative(y) * (a * b) for vectors: a gate's pre-activation gradient from its
    output y, the gradient w.r.t. the product it enters and the product's other factor."""
    T = y.dtype.type
    for u in range(y.size):
        out[u] = derivative(code, y[u], T) * (a[u] * b[u])


@njit(inline="always")
def _cell_backward_with(gates, c_prev, act_c, dh, dc, dz, activation, recurrent_activation):
    units = dc.size
    T = dc.dtype.type
    i, f, g, o = gates[:units], gates[units:2 * units], gates[2 * units:3 * units], gates[3 * units:]
    for u in range(units):
        dc[u] += dh[u] * o[u] * derivative(activation, act_c[u], T)
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
    every step's state on return; fills act_c [batch, time, units]. Activations are ids
    (kernels/activation_ids.py). zero_state: the initial state is zeros, so step 0 skips the
    product with it, which adds nothing. recurrent_part [4*units]: scratch, the caller's, so that
    the fused training pass allocates it once per epoch rather than once per batch
    (bench/test_experiments.py, the batch-1 epochs).
    """
    for b in range(gates.shape[0]):
        for t in range(gates.shape[1]):
            gate = gates[b, t]
            # x_t @ kernel + bias + (h @ recurrent_kernel), as the NumPy backend adds them: the small
            # terms of the product summed first, then the larger rest (closer to float64).
            recurrent_part[:] = 0
            if t > 0 or not zero_state:
                add_product(h[b, t], recurrent_kernel, recurrent_part)
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
            add_to(gate, bias)
        _cell_forward(gate, c_prev[b], c[b], act_c[b], h_rows[b, h_start:], activation, recurrent_activation)


@njit(**FLAGS)
def infer_step(gates, bias, c_prev, c, h_rows, h_start, activation, recurrent_activation):
    """:func:`forward_step` for a pass that keeps nothing for the backward pass: the same c and
    h, gates left meaningless, activation(c) not kept."""
    for b in range(gates.shape[0]):
        gate = gates[b]
        if bias.size:
            add_to(gate, bias)
        _cell_infer(gate, c_prev[b], c[b], h_rows[b, h_start:], activation, recurrent_activation)


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
                add_to(dh[b], dy[b, t])
            _cell_backward(gates[b, t], c[b, t], act_c[b, t], dh[b], dc[b], dz[b, t], activation,
                           recurrent_activation)
            if t > 0 or initial_gradients:
                matvec(recurrent_kernel, dz[b, t], dh[b])


@njit(**FLAGS)
def backward_step(gates, c_prev, act_c, dh, dc, dz, activation, recurrent_activation):
    """One time step of the recurrence backwards for every sample of the arrays [n, ...], as in
    :func:`backward_sequence`: from the step's gates, c_prev and act_c and the gradients dh, dc
    w.r.t. h_t and c_t, fills dz [n, 4*units] and leaves in dc the gradient w.r.t. c_{t-1}; the
    caller sets dh = dz @ recurrent_kernel.T (a BLAS product)."""
    for b in range(gates.shape[0]):
        _cell_backward(gates[b], c_prev[b], act_c[b], dh[b], dc[b], dz[b], activation, recurrent_activation)


@njit(inline="always")
def _project_step(x_t, kernel, bias, z):
    """z = x_t @ kernel + bias for one sample's step: x_t [features], z [4*units]; bias may be
    empty (none)."""
    z[:] = 0
    add_product(x_t, kernel, z)
    if bias.size:
        add_to(z, bias)


@njit(inline="always")
def project(x, kernel, bias, zx):
    """zx[b, t] = x[b, t] @ kernel + bias for x [batch, time, features] (processing order) and
    zx [batch, time, 4*units]; bias may be empty (none)."""
    for b in range(x.shape[0]):
        for t in range(x.shape[1]):
            _project_step(x[b, t], kernel, bias, zx[b, t])


@njit(inline="always")
def add_weight_gradients(x, h, dz, dkernel, drecurrent_kernel, dbias, zero_state):
    """Adds the gradients w.r.t. kernel, recurrent_kernel and bias (if not empty) of every sample
    and step: x [batch, time, features] and h [batch, time + 1, units] as the forward pass read
    them, dz [batch, time, 4*units] from :func:`backward_sequence`. zero_state: the initial
    state was zeros, so step 0 adds nothing to the recurrent kernel's gradient and is skipped."""
    time = dz.shape[1]
    first = 1 if zero_state else 0
    for b in range(dz.shape[0]):
        # Row by row, summed over time: kernel[d] += x[:, d] @ dz, recurrent_kernel[u] += h[:, u] @ dz.
        for d in range(dkernel.shape[0]):
            add_product(x[b, :, d], dz[b], dkernel[d])
        for u in range(drecurrent_kernel.shape[0]):
            add_product(h[b, first:time, u], dz[b, first:], drecurrent_kernel[u])
        if dbias.size:
            for t in range(time):
                add_to(dbias, dz[b, t])


@njit(**FLAGS)
def forward(x, kernel, recurrent_kernel, bias, h0, c0, h, c, gates, act_c, activation, recurrent_activation):
    """A whole LSTM layer forward, into the caller's arrays (a memory pool's, or an XLA program's
    buffers: fastlstm/keras/xla_lstm.py): x [batch, time, features] in processing order, bias
    empty for none, h0, c0 [batch, units]. Fills h, c [batch, time + 1, units] (h0, c0 at time
    index 0), gates [batch, time, 4*units] (activated) and act_c [batch, time, units]."""
    copy_to(h[:, 0], h0)
    copy_to(c[:, 0], c0)
    project(x, kernel, bias, gates)
    # bool(False), not the literal False: a literal argument compiles forward_sequence apart from
    # cpu_training.train_epoch's call.
    forward_sequence(gates, recurrent_kernel, h, c, act_c, activation, recurrent_activation, bool(False),
                     np.empty(gates.shape[2], x.dtype))


@njit(**FLAGS)
def infer(x, kernel, recurrent_kernel, bias, h0, c0, sequences, h, c, activation, recurrent_activation):
    """:func:`forward` keeping nothing for a backward pass, into the caller's arrays: x, bias, h0
    and c0 as forward takes them. Fills h, c [batch, units] with the final state and sequences
    [batch, time, units] with every step's output, unless it has no steps ([batch, 0, units]).
    Each step's pre-activations are summed as forward_sequence sums them and its state is
    _cell_infer's, so h and c are forward's, bit for bit; no array of every step's gates and
    states is made (a batch-1 call's arrays and copies cost more than its work:
    bench/test_kernels.py at 1, 1, 1, 50)."""
    units = h.shape[1]
    z, recurrent_part = np.empty(4 * units, x.dtype), np.empty(4 * units, x.dtype)
    c_prev = np.empty(units, x.dtype)  # apart from c, so that the cell's loops vectorise
    copy_to(h, h0)
    copy_to(c, c0)
    for b in range(x.shape[0]):
        h_b, c_b = h[b], c[b]
        for t in range(x.shape[1]):
            _project_step(x[b, t], kernel, bias, z)
            recurrent_part[:] = 0
            add_product(h_b, recurrent_kernel, recurrent_part)
            add_to(z, recurrent_part)
            for u in range(units):  # loops rather than slice assignments, as copy_to says
                c_prev[u] = c_b[u]
            _cell_infer(z, c_prev, c_b, h_b, activation, recurrent_activation)
            if sequences.shape[1]:
                for u in range(units):
                    sequences[b, t, u] = h_b[u]


@njit(**FLAGS)
def backward(x, kernel, recurrent_kernel, has_bias, h, c, gates, act_c, dy, dh, dc, dz, activation,
             recurrent_activation):
    """A whole LSTM layer backward, from what :func:`forward` made (and x, kernel,
    recurrent_kernel as it had them); dy, dh, dc as :func:`backward_sequence` takes them (dh, dc
    hold the gradients w.r.t. h0, c0 on return); dz [batch, time, 4*units]: scratch, the
    caller's. Returns the gradients w.r.t. x [batch, time, features] (processing order), kernel,
    recurrent_kernel and bias (empty when has_bias is False)."""
    backward_sequence(gates, c, act_c, recurrent_kernel, dy, dh, dc, dz, activation, recurrent_activation,
                      bool(True))  # not a literal, as train_epoch's call
    dkernel = np.zeros_like(kernel)
    drecurrent_kernel = np.zeros_like(recurrent_kernel)
    dbias = np.zeros(gates.shape[2] if has_bias else 0, x.dtype)
    add_weight_gradients(x, h, dz, dkernel, drecurrent_kernel, dbias, False)
    dx = np.empty_like(x)
    for b in range(x.shape[0]):
        for t in range(x.shape[1]):
            matvec(kernel, dz[b, t], dx[b, t])
    return dx, dkernel, drecurrent_kernel, dbias
