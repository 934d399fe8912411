"""The recurrence of the ``numba_cpu`` backend's stepwise path over one slice of the samples: every
time step's packed product and pointwise step in one compiled call per slice, forward
(:func:`forward_slice`) and backward (:func:`backward_slice`).

One call per slice rather than two per step from Python: a step of a core's few rows takes tens
of microseconds, about what calling two compiled functions from Python costs with their arrays,
and the threads of the other slices then wait on each other for the interpreter's lock
(bench/test_kernels.py at 128, 25, 16, 32). Arrays are time-major, ``[time, n, ...]``, so that a
step's rows lie together.
"""
from numba import njit

from .cpu_arithmetic import FLAGS, add_to, copy_to
from .cpu_lstm import backward_step, forward_step, infer_step
from .cpu_matmul import matmul_packed


@njit(**FLAGS)
def forward_slice(x, h0, c0, inputs, packed_weights, bias, gates, c, act_c, sequences, activation,
                  recurrent_activation):
    """The forward recurrence of n samples over time steps.

    x [n, time, input_dim], h0, c0 [n, units]: the slice's inputs and initial state, copied in here
    rather than by NumPy from Python, where the threads of the other slices would wait for the
    interpreter's lock. packed_weights: ``[kernel; recurrent_kernel]`` as
    ``cpu_matmul.pack_columns`` packs it; bias [4*units], empty for none. Fills sequences
    [n, time, units] (every step's h), unless it is empty, and:

    - inputs [time + 1, n, input_dim + units]: each step's product rows ``[x_t, h_{t-1}]``, h_T
      in ``inputs[time, :, input_dim:]``;
    - gates [time, n, 4*units]: the activated gates;
    - c [time + 1, n, units]: c0, c_1 .. c_T; act_c [time, n, units]: ``activation(c_t)``.

    Or, for a pass that keeps nothing for the backward pass, act_c is [0, n, units] and the
    others are rings of 2, 1 and 2 rows along time, which step t uses at t modulo their length:
    a step's rows then stay in the core's cache (bench/test_kernels.py's forward at 256, 25, 64,
    128), and the gates are not kept (``cpu_lstm.infer_step``). h_T is then in
    ``inputs[time % 2, :, input_dim:]`` and c_T in ``c[time % 2]``.
    """
    input_dim = x.shape[2]
    copy_to(inputs[0, :, input_dim:], h0)
    copy_to(c[0], c0)
    for t in range(x.shape[1]):
        rows = inputs[t % inputs.shape[0]]
        next_rows = inputs[(t + 1) % inputs.shape[0]]
        step_gates = gates[t % gates.shape[0]]
        copy_to(rows[:, :input_dim], x[:, t])
        # From a zero state the first step's product leaves out the rows of h, which add nothing.
        depth = input_dim if t == 0 and not h0.any() else rows.shape[1]
        matmul_packed(rows, packed_weights, step_gates, depth)
        c_prev, c_next = c[t % c.shape[0]], c[(t + 1) % c.shape[0]]
        if act_c.shape[0]:
            forward_step(step_gates, bias, c_prev, c_next, act_c[t % act_c.shape[0]], next_rows, input_dim,
                         activation, recurrent_activation)
        else:
            infer_step(step_gates, bias, c_prev, c_next, next_rows, input_dim, activation, recurrent_activation)
        if sequences.shape[0]:
            copy_to(sequences[:, t], next_rows[:, input_dim:])


@njit(**FLAGS)
def backward_slice(gates, c, act_c, packed_recurrent_kernel_t, packed_kernel_t, dy, dh, dc, dz, dx, activation,
                   recurrent_activation):
    """The backward recurrence of n samples, from what :func:`forward_slice` saved (gates, c,
    act_c). packed_recurrent_kernel_t, packed_kernel_t: ``recurrent_kernel.T`` and ``kernel.T``
    as ``cpu_matmul.pack_columns`` packs them; dy [n, time, units]: the gradient w.r.t. every
    step's output, or [n, 0, units] when none; dh, dc [n, units]: the gradients w.r.t. the final
    state on entry, w.r.t. the initial state on return. Fills dz [time, n, 4*units], the gradient
    w.r.t. every pre-activation, and dx [n, time, input_dim], w.r.t. every input: each step's
    ``dz_t @ kernel.T`` while dz_t is in the core's cache, rather than one product over all steps
    after the recurrence.
    """
    for t in range(gates.shape[0] - 1, -1, -1):
        if dy.shape[1]:
            for b in range(dh.shape[0]):
                add_to(dh[b], dy[b, t])
        backward_step(gates[t], c[t], act_c[t], dh, dc, dz[t], activation, recurrent_activation)
        matmul_packed(dz[t], packed_recurrent_kernel_t, dh, dz.shape[2])
        matmul_packed(dz[t], packed_kernel_t, dx[:, t], dz.shape[2])
