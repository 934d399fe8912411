"""The launch plan of the GPU kernels: a pure function of the shape, the dtype and the device's
limits, shared by the GPU backends and executed on the CPU by the tests.

Three paths (see kernels/lstm_persistent.cu, kernels/lstm_cooperative.cu and kernels/lstm_stepwise.cu):
- persistent: one launch runs the whole recurrence; each block owns ``rows`` batch rows and keeps
  recurrent_kernel in shared memory; a thread computes one unit of ROWS_PER_THREAD rows (register
  blocking: each weight it reads from shared memory serves that many rows), so a block has
  ``ceil(rows / ROWS_PER_THREAD) * units`` threads. Taken whenever that fits the kernels' launch
  bound and the device's (opt-in) shared memory per block.
- cooperative: one launch, whose blocks must all be resident at once, runs the whole recurrence,
  a block per slice of ``slice`` units and tile of ``rows`` batch rows, at most one block per
  multiprocessor, each keeping its slice's part of recurrent_kernel in shared memory, one
  grid-wide barrier per step; where persistent does not fit, or would run in more than one wave
  of blocks, and that part does, for a backend that runs the cooperative kernels.
- stepwise: per time step a GEMM plus one fused pointwise kernel; beyond both.
"""
from typing import NamedTuple

import numpy as np

C_TYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}
KERNELS = {
    "lstm_persistent.cu": ("persistent_forward", "persistent_backward"),
    "lstm_cooperative.cu": ("cooperative::forward", "cooperative::backward"),
    "lstm_stepwise.cu": ("stepwise_forward", "stepwise_backward"),
}
COOPERATIVE_SOURCES = ("lstm_cooperative.cu",)  # their kernels need every block of the grid resident
POINTWISE_THREADS = 256
ROWS_PER_THREAD = 4  # the persistent kernels' register blocking (kernels/lstm_persistent.cu)
# Their launch bound by itemsize: 128 registers a thread in float32 and 255 in float64 (each value
# takes two) hold the blocked rows' sums and the next step's zx.
PERSISTENT_THREADS = {4: 512, 8: 256}
COOPERATIVE_THREADS = PERSISTENT_THREADS  # the cooperative kernels' launch bound, alike
COOPERATIVE_SLICES = (32, 16, 8, 4, 2, 1)  # units per block on the cooperative path, widest first
VECTOR_BYTES = 16  # the backward reads recurrent_kernel's rows and dz in vectors of this many bytes
DEFAULT_SHARED_MEMORY = 48 * 1024  # what a block gets without opting in to more


class DeviceLimits(NamedTuple):
    """What the plan needs to know of a device."""

    max_threads_per_block: int = 1024
    shared_memory_per_block_optin: int = DEFAULT_SHARED_MEMORY
    multiprocessors: int = 1


# Per architecture, for the compile gate and the tests: opt-in shared memory per block of
# V100 (sm_70), A100 (sm_80) and H100 (sm_90).
ARCHITECTURES = {
    "sm_70": DeviceLimits(1024, 96 * 1024, 80),
    "sm_80": DeviceLimits(1024, 163 * 1024, 108),
    "sm_90": DeviceLimits(1024, 227 * 1024, 132),
}


class Launch(NamedTuple):
    kernel: str  # a name expression, e.g. "fastlstm::persistent_forward<float>"
    source: str  # the file in fastlstm.kernels that defines it
    grid: tuple
    block: tuple
    shared_memory: int  # dynamic, in bytes
    cooperative: bool = False  # launched so that every block is resident at once (cuLaunchCooperativeKernel)


class LSTMPlan(NamedTuple):
    path: str  # "persistent", "cooperative" or "stepwise"
    forward: Launch
    backward: Launch
    rows: int  # batch rows per block on the persistent and cooperative paths (0 on the stepwise path)
    slice: int = 0  # units per block on the cooperative path (0 on the others)


def kernel_name(function, dtype):
    return f"fastlstm::{function}<{C_TYPES[np.dtype(dtype)]}>"


def all_instances():
    """Every (source, name expression) a backend can request: the compile gate builds them all."""
    return [(source, kernel_name(function, dtype))
            for source, functions in KERNELS.items() for function in functions for dtype in C_TYPES]


def recurrent_row_length(units, itemsize):
    """The padded row length, in elements, of recurrent_kernel staged in shared memory: whole
    16-byte vectors, an odd number of them, so that a row starts 16-byte aligned and the
    backward's threads, each reading its own row a vector at a time, fall in distinct banks."""
    vector = VECTOR_BYTES // itemsize
    vectors = 4 * units // vector + 1
    return (vectors + 1 - vectors % 2) * vector


def thread_groups(rows):
    """The row groups of a block of ``rows`` batch rows: ROWS_PER_THREAD rows each, the last padded."""
    return -(-rows // ROWS_PER_THREAD)


def persistent_shared_memory(units, rows, itemsize):
    """Bytes of (forward, backward) dynamic shared memory on the persistent path: recurrent_kernel
    with padded rows, then the double-buffered h (forward) or dz (backward) of the block's rows,
    padded to whole row groups."""
    weights = units * recurrent_row_length(units, itemsize)
    padded_rows = thread_groups(rows) * ROWS_PER_THREAD
    return (weights + 2 * padded_rows * units) * itemsize, (weights + 2 * padded_rows * 4 * units) * itemsize


def cooperative_shared_memory(units, slice, pass_rows, itemsize):
    """Bytes of (forward, backward) dynamic shared memory on the cooperative path: a slice of
    units' part of recurrent_kernel, their columns (forward) or rows (backward), 4 * units * slice
    elements, then a pass's rows of h (units each) or of dz (4 * units each)."""
    weights = 4 * units * slice
    return (weights + pass_rows * units) * itemsize, (weights + pass_rows * 4 * units) * itemsize


def plan_lstm(batch, units, dtype, limits, cooperative=False):
    """The launches for an LSTM of ``units`` over ``batch`` rows in ``dtype`` on a device with
    ``limits``: the persistent path where it fits, else (if the backend launches ``cooperative``
    kernels) the cooperative one where its part of recurrent_kernel fits a block, else the
    stepwise one; and where the persistent path would launch more blocks than multiprocessors,
    the cooperative one if it fits. Refuses a batch or units below 1 (fastlstm.ops does too):
    there is nothing to launch."""
    if batch < 1 or units < 1:
        raise ValueError(f"an LSTM launch plan needs batch >= 1 and units >= 1, got batch {batch}, units {units}")
    itemsize = np.dtype(dtype).itemsize
    threads = min(limits.max_threads_per_block, PERSISTENT_THREADS[itemsize])
    if units <= threads:
        # Spread the rows over the multiprocessors in whole row groups, since a thread computes all
        # of its group's rows whether they exist or not; a block holds as many groups as its
        # threads and shared memory allow.
        groups = min(thread_groups(-(-batch // limits.multiprocessors)), threads // units)
        forward_bytes, backward_bytes = persistent_shared_memory(units, groups * ROWS_PER_THREAD, itemsize)
        while groups > 1 and backward_bytes > limits.shared_memory_per_block_optin:
            groups -= 1
            forward_bytes, backward_bytes = persistent_shared_memory(units, groups * ROWS_PER_THREAD, itemsize)
        if backward_bytes <= limits.shared_memory_per_block_optin:
            rows = min(groups * ROWS_PER_THREAD, batch)
            grid, block = (-(-batch // rows),), (thread_groups(rows) * units,)
            # More blocks than multiprocessors run the whole sequence in waves, one after another:
            # the cooperative path, where it fits, runs every row in one.
            plan = cooperative and grid[0] > limits.multiprocessors and _cooperative_plan(batch, units, dtype, limits)
            return plan or LSTMPlan(
                "persistent",
                Launch(kernel_name("persistent_forward", dtype), "lstm_persistent.cu", grid, block, forward_bytes),
                Launch(kernel_name("persistent_backward", dtype), "lstm_persistent.cu", grid, block, backward_bytes),
                rows,
            )
    plan = cooperative and _cooperative_plan(batch, units, dtype, limits)
    if plan:
        return plan
    grid, block = (-(-batch * units // POINTWISE_THREADS),), (POINTWISE_THREADS,)
    return LSTMPlan(
        "stepwise",
        Launch(kernel_name("stepwise_forward", dtype), "lstm_stepwise.cu", grid, block, 0),
        Launch(kernel_name("stepwise_backward", dtype), "lstm_stepwise.cu", grid, block, 0),
        0,
    )


def _cooperative_plan(batch, units, dtype, limits):
    """The cooperative path's plan, or None where no slice of recurrent_kernel fits a block.

    The widest slice of COOPERATIVE_SLICES, else the narrowest that leaves a block per
    multiprocessor, whose part of recurrent_kernel fits a block's shared memory beside a pass of
    at least one row group's dz: in a slice of 32 units a warp's threads read one row's h or dz,
    one value for all. Then as many tiles of rows as the multiprocessors left hold a block of each
    slice, each tile whole row groups, and as many row groups a pass as the threads and the shared
    memory left allow."""
    itemsize = np.dtype(dtype).itemsize
    threads = min(limits.max_threads_per_block, COOPERATIVE_THREADS[itemsize])
    narrowest = -(-units // limits.multiprocessors)
    for slice in (*(width for width in COOPERATIVE_SLICES if width >= narrowest), narrowest):
        weights = cooperative_shared_memory(units, slice, 0, itemsize)[1]
        row_group = cooperative_shared_memory(units, 0, ROWS_PER_THREAD, itemsize)[1]  # a group's dz
        if slice > threads or weights + row_group > limits.shared_memory_per_block_optin:
            continue
        slices = -(-units // slice)
        tiles = max(1, min(limits.multiprocessors // slices, thread_groups(batch)))
        rows = thread_groups(-(-batch // tiles)) * ROWS_PER_THREAD
        groups = min(thread_groups(rows), threads // slice,
                     (limits.shared_memory_per_block_optin - weights) // row_group)
        grid, block = (slices * -(-batch // rows),), (groups * slice,)
        forward_bytes, backward_bytes = cooperative_shared_memory(units, slice, groups * ROWS_PER_THREAD, itemsize)
        return LSTMPlan(
            "cooperative",
            Launch(kernel_name("cooperative::forward", dtype), "lstm_cooperative.cu", grid, block, forward_bytes, True),
            Launch(kernel_name("cooperative::backward", dtype), "lstm_cooperative.cu", grid, block, backward_bytes,
                   True),
            rows, slice,
        )
    return None


class LaunchCount(NamedTuple):
    """What one call of :class:`~fastlstm.backends.fused.FusedLSTM` puts on the CuPy stream: each
    kernel of the plan, cuBLAS call, copy, fill, and CuPy elementwise or reduction kernel counts one."""

    forward: int
    backward: int  # the backward pass of that forward


def launch_count(plan, batch, time, input_dim, units):
    """The device operations of FusedLSTM's forward and backward for ``plan`` over ``x`` [batch,
    time, input_dim], with contiguous device arrays as arguments (lstm_forward's finite check, its
    zero initial state and any transfer from the host come on top). Neither a bias nor go_backwards
    changes them: the weight gradients' product sums dbias too, and the kernels read x's projection
    and write dz in the caller's time order."""
    if plan.path == "persistent":
        # The forward kernel copies recurrent_kernel for the cache as it stages it.
        forward_recurrence = backward_recurrence = 1
    elif plan.path == "cooperative":
        # As persistent, after zeroing the grid barrier's two words.
        forward_recurrence = backward_recurrence = 2
    else:
        # recurrent_kernel copied for the cache, then per step a product and the pointwise kernel,
        # which writes the next product's operand (h, or dz backward) in whole rows of its own.
        forward_recurrence = 1 + time * (_product(batch, 4 * units) + 1)
        backward_recurrence = time * (_product(batch, units) + 1)
    # x copied into the saved inputs, x @ kernel, kernel copied for the cache; the kernels write the
    # initial state, the outputs and the final state themselves.
    forward = 1 + _product(batch * time, 4 * units) + 1 + forward_recurrence
    # The weights' gradients as one product of the saved [x_t, h_{t-1}] with dz (a column of ones
    # after them sums dbias), dz @ kernel.T.
    backward = backward_recurrence + _product(input_dim + units, 4 * units) + _product(batch * time, input_dim)
    return LaunchCount(forward, backward)


def _product(rows, columns):
    """The device operations of CuPy's matmul of a [rows, k] by a [k, columns] matrix of C- or
    F-contiguous operands: one cuBLAS call, but an elementwise product and its sum where both are 1."""
    return 2 if rows == columns == 1 else 1
