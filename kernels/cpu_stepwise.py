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

from .cpu_arithmetic import FLAGS, add_to
from .cpu_lstm import backward_step, forward_step
from .cpu_matmul import matmul_packed


@njit(**FLAGS)
def forward_slice(inputs, packed_weights, bias, gates, c, act_c, activation, recurrent_activation):
    """The forward recurrence of n samples over time steps.

    inputs [time + 1, n, input_dim + units]: each step's product rows ``[x_t, h_{t-1}]``, with x
    and h0 (in ``inputs[0, :, input_dim:]``) on entry; every h_t is written into the next step's
    rows, h_T into ``inputs[time, :, input_dim:]``. packed_weights: ``[kernel; recurrent_kernel]``
    as ``cpu_matmul.pack_columns`` packs it; bias [4*units], empty for none; c [time + 1, n,
    units]: c0 in c[0] on entry, c_t in c[t] on return. Fills gates [time, n, 4*units] (the
    activated gates) and act_c [time, n, units] (``activation(c_t)``).
    """
    input_dim = inputs.shape[2] - c.shape[2]
    for t in range(gates.shape[0]):
        matmul_packed(inputs[t], packed_weights, gates[t])
        forward_step(gates[t], bias, c[t], c[t + 1], act_c[t], inputs[t + 1], input_dim, activation,
                     recurrent_activation)


@njit(**FLAGS)
def backward_slice(gates, c, act_c, packed_recurrent_kernel_t, dy, dh, dc, dz, activation, recurrent_activation):
    """The backward recurrence of n samples, from what :func:`forward_slice` saved (gates, c,
    act_c). packed_recurrent_kernel_t: ``recurrent_kernel.T`` as ``cpu_matmul.pack_columns``
    packs it; dy [n, time, units]: the gradient w.r.t. every step's output, or [n, 0, units] when
    none; dh, dc [n, units]: the gradients w.r.t. the final state on entry, w.r.t. the initial
    state on return. Fills dz [time, n, 4*units], the gradient w.r.t. every pre-activation.
    """
    for t in range(gates.shape[0] - 1, -1, -1):
        if dy.shape[1]:
            for b in range(dh.shape[0]):
                add_to(dh[b], dy[b, t])
        backward_step(gates[t], c[t], act_c[t], dh, dc, dz[t], activation, recurrent_activation)
        matmul_packed(dz[t], packed_recurrent_kernel_t, dh)
