"""The numba_cpu backend: the LSTM recurrence as fused loops compiled by Numba, on the CPU.

When a step's work is small (the alphabet's shapes, where a BLAS call per step would cost more than
the step), the whole layer runs in one compiled call: the input projection, the recurrence and the
weight gradients as loops. Otherwise the cores take slices of the samples and run the forward
recurrence as one product ``[x_t, h_{t-1}] @ [kernel; recurrent_kernel]`` per time step, with the
weights packed once for the compiled product (``cpu_matmul.matmul_packed``), and one compiled
pointwise step; the backward one likewise, with each step's dx, then its share of the weight
gradients as a BLAS product over all time steps (single-threaded: one per core). :func:`infer`,
which keeps nothing for a backward pass, runs the stepwise path in a few steps' memory, and its
one call writes only the outputs and the final state. Between the two, from a few samples, the
stepwise path runs on one core (PACKED_INFER, PACKED_WITH_CACHE). The large arrays of either path reuse the memory of
earlier calls' (:data:`MEMORY`). Kernels: ``fastlstm.kernels.cpu_*``, compiled on first use per
dtype and cached on disk.

Of the contract's optional functions it implements :func:`infer`, :func:`all_finite` and
:func:`train_epoch`, the fused training pass of an LSTM + Dense(softmax) model, which
:class:`fastlstm.nn.Sequential` takes through :func:`fastlstm.ops.lstm_train_epoch` where it
applies.
"""
import concurrent.futures
import functools
import itertools
import os
import threading
from typing import NamedTuple

import numba
import numpy as np
from threadpoolctl import ThreadpoolController

from fastlstm.backends import sequence, team
from fastlstm.backends.memory import Pool
from fastlstm.backends.numpy import Saved  # the one-call path's arrays, in the same layout
from fastlstm.kernels import cpu_arithmetic, cpu_lstm, cpu_matmul, cpu_stepwise, cpu_team, cpu_training
from fastlstm.kernels.activation_ids import ACTIVATION_IDS
from fastlstm.utils import usable_cores

# From this many multiply-adds per step (batch * units * 4 * units), and 16 times as many over the
# sequence, a product per step and the samples on every core beat the one compiled call, below it
# starting the threads costs more than they save (bench/test_kernels.py's batch sweep at 32 units).
STEPWISE_WORK = 1 << 18
# Below that, the stepwise path still runs, on one core, from a (samples, sample-steps) pair of
# these on: its packed product over all the samples beats the one call's products of one sample
# at a time, but not the weights' packing where there are few rows. For infer (which keeps nothing
# for a backward pass) from 8 samples and 64 sample-steps (32, 25, 16, 32: 0.20 ms against 0.30;
# 512, 1, 16, 32: 0.14 against 0.19). Where the backward pass follows, its own fixed costs (BLAS
# products over all steps and their thread limit) need more work to pay off: from 128 samples,
# or 16 samples over 512 sample-steps (forward+backward at 64, 1, 16, 32: 0.23 ms against 0.16;
# 512, 1, 16, 32: 0.62 against 0.84; 32, 5, 16, 32: 0.21 against 0.18; 32, 25, 16, 32: 0.85
# against 1.07; 16, 100, 16, 32: 1.4 against 1.8; medians, Zen 4).
PACKED_INFER = ((8, 64),)
PACKED_WITH_CACHE = ((128, 64), (16, 512))

# The large shapes' arrays reuse the memory of earlier calls' (see fastlstm.backends.memory): a
# forward and backward pass at batch 1024, 25 steps, 64 inputs, 128 units takes about 180 MB.
MEMORY = Pool(capacity=256 << 20)

# The one-call path takes its arrays of this size and more from MEMORY too: glibc gave such blocks
# back to the system between calls, depending on what the process had freed before, and the next
# call faulted them in again (forward+backward at 32, 25, 16, 32 took 1.1 ms rather than 0.67 on a
# Zen 4 after a stepwise backward pass had run). Smaller ones come from NumPy, at a fraction of
# the pool's cost per array.
POOLED_BYTES = 1 << 16

# What this backend implements of the contract in fastlstm.backends.
CAPABILITIES = ("forward", "infer", "backward", "all_finite", "train_epoch")


def _cores():
    """How many threads the large shapes run on: one per core this process may use, and no more
    than Numba's thread count (NUMBA_NUM_THREADS, which ``fastlstm alphabet --jobs`` sets to 1 in
    its worker processes)."""
    return min(usable_cores(), numba.config.NUMBA_NUM_THREADS)


@functools.cache
def _threads():
    """(a pool of one thread per core, a SingleThreadedBlas), made on first use in each process."""
    return concurrent.futures.ThreadPoolExecutor(_cores(), thread_name_prefix="fastlstm"), SingleThreadedBlas()


if hasattr(os, "register_at_fork"):  # not on Windows, which has no fork
    # A forked child has none of the parent's threads: work given to their pool would wait for ever.
    os.register_at_fork(after_in_child=_threads.cache_clear)


class SingleThreadedBlas:
    """A context in which BLAS runs single-threaded: the first thread in limits it, the last one
    out restores the limit that was before. (The limit is the process's, and threads that make
    stepwise calls at once enter and leave it in any order.)"""

    def __init__(self):
        self._controller = ThreadpoolController()
        self._lock = threading.Lock()
        self._inside = 0
        self._limiter = None

    def __enter__(self):
        with self._lock:
            if self._inside == 0:
                self._limiter = self._controller.limit(limits=1, user_api="blas")
            self._inside += 1

    def __exit__(self, *exception):
        with self._lock:
            self._inside -= 1
            if self._inside == 0:
                self._limiter.restore_original_limits()


# A quarter of the samples go to small parts that the threads take last (_slices), each part at
# least this many samples: below that, a part's fixed costs per step (its own product and
# pointwise calls) outweigh the balance it buys (bench/test_kernels.py at 128, 25, 16, 32).
TAIL_SHARE = 4
MIN_TAIL_SAMPLES = 24


def _slices(batch, cores):
    """The parts of the batch the threads take, largest first: on each core a part of three
    quarters of its share, then a part of the last quarter. A thread that another thread slows
    (a framework's pool spinning on its core after that framework's call) thus ends its large part
    late, and the others take the small ones (bench/test_side_by_side.py at 256, 25, 64, 128's
    forward: 14.5 ms rather than 16.7; the same alone). Smaller parts, or more of them, ran
    slower alone: each step's product has fewer rows. With quarters under MIN_TAIL_SAMPLES, one
    part a core; as many parts as samples if fewer."""
    cores = min(cores, batch)
    tail = batch // (TAIL_SHARE * cores)
    if cores > 1 and tail >= MIN_TAIL_SAMPLES:
        head = (batch - tail * cores) // cores
        sizes = [head] * cores + [tail] * (cores - 1) + [batch - head * cores - tail * (cores - 1)]
    else:
        sizes = [batch * (k + 1) // cores - batch * k // cores for k in range(cores)]
    bounds = list(itertools.accumulate(sizes, initial=0))  # plain integers: NumPy's take longer for a few
    return [slice(a, b) for a, b in zip(bounds, bounds[1:])]


def _on_every_core(work, parts):
    """Runs ``work(part)`` for every part (a slice of the samples) and returns their results in
    order. This thread and the pool's take the parts one at a time until none is left: this thread
    runs every part no pool thread has started, so it waits only for parts other threads have
    taken, never for a thread still waking up (its core busy with another process or another
    framework's spinning threads; on a virtual machine a wake-up alone costs about 0.1 ms), and a
    pool thread woken on this thread's CPU first moves off it (cpu_team.leave). The slices'
    recurrences are independent, so they need no synchronisation. A caller whose work runs BLAS
    products runs this inside ``_threads()[1]``, a single-threaded BLAS: BLAS threads would fight
    the parts for the cores, and OpenBLAS's keep spinning after a product and slow the next
    recurrence down (bench/test_kernels.py at 256, 25, 64, 128)."""
    pool, _ = _threads()
    outcomes = [None] * len(parts)
    taken = itertools.count()  # next() on it is atomic: each part is taken once
    finished = threading.Semaphore(0)
    helpers = min(_cores(), len(parts)) - 1  # pool threads to wake
    caller_cpu = cpu_team.current_cpu() if helpers else -1  # for them to leave (no look at the CPU on one core)

    def take_parts(woken=False):
        if woken:
            cpu_team.leave(caller_cpu, np.empty(cpu_team.CPU_SET_WORDS, np.int64))
        while (i := next(taken)) < len(parts):
            try:
                outcomes[i] = (True, work(parts[i]))
            except BaseException as error:  # raised again in the calling thread
                outcomes[i] = (False, error)
            finally:
                finished.release()

    for _ in range(helpers):
        pool.submit(take_parts, True)
    take_parts()
    for _ in parts:
        finished.acquire()
    for succeeded, value in outcomes:
        if not succeeded:
            raise value
    return [value for _, value in outcomes]


def probe():
    return f"CPU, Numba {numba.__version__}, {_cores()} cores"


# The contract's all_finite: whether an array holds no NaN and no inf, in one compiled pass.
all_finite = cpu_arithmetic.all_finite


def _allocator(nbytes):
    """What makes the one-call path's arrays, the largest of nbytes: MEMORY.empty from
    POOLED_BYTES on, else np.empty."""
    return MEMORY.empty if nbytes >= POOLED_BYTES else np.empty


def _codes(activation, recurrent_activation):
    return ACTIVATION_IDS[activation], ACTIVATION_IDS[recurrent_activation]


def runs_stepwise(batch, time, units):
    """Whether a layer of this shape runs on the stepwise path (a product per step, slices of the
    samples over the cores) rather than in one compiled call."""
    step = batch * units * 4 * units
    # & rather than and: the drop-in asks with TensorFlow's batch size, a tensor, when fit's step runs.
    return (step >= STEPWISE_WORK) & (step * time >= 16 * STEPWISE_WORK)


def _stepwise_cores(batch, time, units, keep):
    """On how many cores the stepwise path runs a forward pass of this shape (keep: one whose
    backward follows): every core from STEPWISE_WORK, one from a pair of PACKED_INFER (or
    PACKED_WITH_CACHE) on, else none (0: the one-call path)."""
    if runs_stepwise(batch, time, units):
        return _cores()
    # A loop: any() over a generator costs more than the rest of this at batch 1.
    for samples, sample_steps in PACKED_WITH_CACHE if keep else PACKED_INFER:
        if batch >= samples and batch * time >= sample_steps:
            return 1
    return 0


class Share(NamedTuple):
    """One slice of the samples (see _slices) in a stepwise forward pass, what its backward pass reads.
    Time-major, so that a step's rows lie together in memory: the pointwise steps are slower over
    rows a whole sequence apart, as [batch, time, ...] has them (bench/test_kernels.py's
    forward_backward at 1024, 25, 64, 128)."""

    samples: slice
    # [time + 1, n, input_dim + units]: the rows [x_t, h_{t-1}] of each step's product, then h_T
    # in inputs[time, :, input_dim:] (its first columns unused)
    inputs: np.ndarray
    gates: np.ndarray  # [time, n, 4*units]: activated i, f, g, o
    c: np.ndarray  # [time + 1, n, units]: c0, c_1 .. c_T
    act_c: np.ndarray  # [time, n, units]: activation(c_t); [0, n, units] for infer, which keeps none


class Stepwise(NamedTuple):
    """What the stepwise forward pass saves for its backward pass."""

    x_shape: tuple  # [batch, time, input_dim]: x itself is in the shares' inputs
    kernel: np.ndarray
    recurrent_kernel: np.ndarray
    has_bias: bool
    options: tuple
    shares: list  # a Share per slice


def forward(x, kernel, recurrent_kernel, bias, h0, c0, options):
    """The backend contract's forward. What it saves is its own: x is copied into the shares'
    inputs (stepwise) or into a new array in processing order (one call), the weights copied."""
    batch, time, _ = x.shape
    units = recurrent_kernel.shape[0]
    cores = _stepwise_cores(batch, time, units, True)
    if cores:
        return _stepwise(x, kernel, recurrent_kernel, bias, h0, c0, options, True, cores)
    codes = _codes(options.activation, options.recurrent_activation)
    x = sequence.owned_in_processing_order(np, x, options.go_backwards)
    kernel, recurrent_kernel = kernel.copy(), recurrent_kernel.copy()  # contiguous
    empty = _allocator(batch * time * 4 * units * x.itemsize)  # gates, the largest
    h, c = empty((batch, time + 1, units), x.dtype), empty((batch, time + 1, units), x.dtype)
    gates, act_c = empty((batch, time, 4 * units), x.dtype), empty((batch, time, units), x.dtype)
    cpu_lstm.forward(x, kernel, recurrent_kernel, _bias_or_empty(bias, x.dtype), h0, c0, h, c, gates, act_c, *codes)
    outputs = h[:, 1:].copy() if options.return_sequences else h[:, time].copy()
    saved = Saved(x, kernel, recurrent_kernel, bias is not None, h, c, gates, act_c, options)
    return outputs, h[:, time].copy(), c[:, time].copy(), saved


def infer(x, kernel, recurrent_kernel, bias, h0, c0, options):
    """The backend contract's infer: the forward pass keeping nothing for a backward pass, so
    copying no input, on the stepwise path overwriting each step's gates and states, and in
    one call (cpu_lstm.infer) writing only the outputs and the final state."""
    batch, time, _ = x.shape
    units = recurrent_kernel.shape[0]
    cores = _stepwise_cores(batch, time, units, False)
    if cores:
        return _stepwise(x, kernel, recurrent_kernel, bias, h0, c0, options, False, cores)[:3]
    x = sequence.in_processing_order(np, x, options.go_backwards)
    sequences = np.empty((batch, time if options.return_sequences else 0, units), x.dtype)
    h, c = np.empty((batch, units), x.dtype), np.empty((batch, units), x.dtype)
    cpu_lstm.infer(x, np.ascontiguousarray(kernel), np.ascontiguousarray(recurrent_kernel),
                   _bias_or_empty(bias, x.dtype), h0, c0, sequences, h, c,
                   *_codes(options.activation, options.recurrent_activation))
    return (sequences if options.return_sequences else h.copy()), h, c


def _bias_or_empty(bias, dtype):
    """The bias as the kernels take it: an empty array for none."""
    return np.empty(0, dtype) if bias is None else bias


def _stepwise(x, kernel, recurrent_kernel, bias, h0, c0, options, keep, cores):
    """forward (keep) or infer on the stepwise path: the results, and what forward saves (None
    for infer)."""
    batch, time, input_dim = x.shape
    weights = np.concatenate([kernel, recurrent_kernel])
    units = recurrent_kernel.shape[0]
    sequences = MEMORY.empty((batch, time, units), x.dtype) if options.return_sequences else None
    x_in_order = sequence.in_processing_order(np, x, options.go_backwards)
    h0, c0 = np.ascontiguousarray(h0), np.ascontiguousarray(c0)  # one compiled specialisation
    shares = _forward_stepwise(x_in_order, weights, _bias_or_empty(bias, x.dtype), h0, c0, sequences,
                               _codes(options.activation, options.recurrent_activation), keep, cores)
    hT = np.concatenate([share.inputs[time % len(share.inputs), :, input_dim:] for share in shares])
    cT = np.concatenate([share.c[time % len(share.c)] for share in shares])
    saved = Stepwise(x.shape, weights[:input_dim], weights[input_dim:], bias is not None, options,
                     shares) if keep else None
    return (hT.copy() if sequences is None else sequences), hT, cT, saved


def _forward_stepwise(x, weights, bias, h0, c0, sequences, codes, keep, cores):
    """The forward recurrence as one product and one compiled step per time step, slices of the
    samples over the cores. Each step's product is ``[x_t, h_{t-1}] @ [kernel; recurrent_kernel]``:
    one product with the inputs' and the state's rows together runs faster than the input
    projection over all steps and a product per step apart, whose few inputs make a thin product
    (bench/test_kernels.py at 256, 25, 64, 128). The weights are packed once for
    cpu_matmul.matmul_packed, faster at a core's few rows than OpenBLAS, which packs them at every
    call (bench/test_kernels.py at 64, 100, 128, 512). The product is made in the step's gates,
    which the compiled step activates in place.
    weights: [kernel; recurrent_kernel], [input_dim + units, 4*units]. Fills sequences
    [batch, time, units] (every step's output) unless None; returns a Share per slice, whose
    arrays hold every step with keep, else the rings of cpu_stepwise.forward_slice (the last
    step's state alone); the slices are spread over as many cores as ``cores``: this thread and
    the team's (fastlstm.backends.team), whose threads take them in compiled code without the
    interpreter's lock."""
    batch, time, input_dim = x.shape
    units = weights.shape[1] // 4
    steps = time if keep else 1  # the steps the slices' gates hold (and, one more, their inputs and c)

    def share(samples):
        n = samples.stop - samples.start
        return Share(samples, MEMORY.empty((steps + 1, n, input_dim + units), x.dtype),
                     MEMORY.empty((steps, n, 4 * units), x.dtype), MEMORY.empty((steps + 1, n, units), x.dtype),
                     MEMORY.empty((time if keep else 0, n, units), x.dtype))

    shares = [share(samples) for samples in _slices(batch, cores)]
    packed = cpu_matmul.pack_columns(weights)
    if cores == 1 or cpu_team.AVAILABLE:
        team.forward_slices(x, h0, c0, packed, bias, sequences, codes, shares, cores - 1)
    else:  # no team where threads cannot sleep in compiled code: each share on a thread of the pool
        _on_every_core(lambda share: team.forward_slices(x, h0, c0, packed, bias, sequences, codes, [share], 0), shares)
    return shares


def backward(saved, dy, dhT, dcT):
    stepwise = isinstance(saved, Stepwise)
    batch, time, _ = saved.x_shape if stepwise else saved.x.shape
    units, dtype = saved.recurrent_kernel.shape[0], saved.kernel.dtype
    dh = np.zeros((batch, units), dtype) if dhT is None else dhT.copy()
    dc = np.zeros((batch, units), dtype) if dcT is None else dcT.copy()
    every_step = dy is not None and saved.options.return_sequences
    if dy is not None and not every_step:
        dh += dy
    dy_steps = np.ascontiguousarray(dy) if every_step else None
    if stepwise:
        dx, dkernel, drecurrent_kernel, dbias = _backward_stepwise(saved, dy_steps, dh, dc)
    else:
        x, kernel, recurrent_kernel, has_bias, h, c, gates, act_c, options = saved
        dz = _allocator(gates.nbytes)(gates.shape, x.dtype)
        dx, dkernel, drecurrent_kernel, dbias = cpu_lstm.backward(
            x, kernel, recurrent_kernel, has_bias, h, c, gates, act_c,
            np.empty((batch, 0, units), x.dtype) if dy_steps is None else dy_steps, dh, dc, dz,
            *_codes(options.activation, options.recurrent_activation))
        dbias = dbias if has_bias else None
    dx = sequence.in_processing_order(np, dx, saved.options.go_backwards)  # reversing again restores the order
    return dx, dkernel, drecurrent_kernel, dbias, dh, dc


def _backward_stepwise(saved, dy, dh, dc):
    """The stepwise pass backwards, a Share at a time on each core: the recurrence, a
    compiled pointwise step and two packed products per step (dh's and dx's), then the slice's
    share of the weight gradients as one product over all its steps. dy: [batch, time, units] or
    None; dh, dc [batch, units]: the gradients w.r.t. the final state, turned into those w.r.t.
    the initial state. Returns dx (processing order) and the gradients w.r.t. the weights."""
    x_shape, kernel, recurrent_kernel, has_bias, options, shares = saved
    codes = _codes(options.activation, options.recurrent_activation)
    time = x_shape[1]
    recurrent_kernel_t, kernel_t = cpu_matmul.pack_columns(recurrent_kernel.T), cpu_matmul.pack_columns(kernel.T)
    dx = MEMORY.empty(x_shape, kernel.dtype)
    no_dy = np.empty((0, 0, recurrent_kernel.shape[0]), kernel.dtype)

    def recurrence(share):
        samples = share.samples
        dh_share, dc_share = dh[samples], dc[samples]  # views: dh and dc are updated in place
        dz = MEMORY.empty(share.gates.shape, kernel.dtype)
        cpu_stepwise.backward_slice(share.gates, share.c, share.act_c, recurrent_kernel_t, kernel_t,
                                    no_dy if dy is None else dy[samples], dh_share, dc_share, dz, dx[samples], *codes)
        # The product over all steps takes the rows in (time, sample) order.
        return sequence.weight_gradients(np, share.inputs[:time], kernel, dz, has_bias)

    with _threads()[1]:  # a single-threaded BLAS (see _on_every_core)
        parts = _on_every_core(recurrence, shares)
    dkernel, drecurrent_kernel = (sum(part[i] for part in parts) for i in (0, 1))
    return dx, dkernel, drecurrent_kernel, sum(part[2] for part in parts) if has_bias else None


def train_epoch(x, y, batch_size, lstm, dense, lstm_grads, dense_grads, adam, state, options):
    """The backend contract's fused training pass, as :func:`fastlstm.ops.lstm_train_epoch`
    documents it, all of it in one compiled call (``cpu_training.train_epoch``), which takes y as
    ``[samples, steps, classes]``: the targets of every step with ``options.return_sequences``,
    else of the last step alone (steps 1), so that one compiled specialisation trains both.

    Subnormal numbers are flushed to zero while it runs, and only then: the calling thread's
    floating-point control is restored however the pass ends, an exception included.
    """
    # The compiled boundary: the named tuples become the plain tuples of arrays the kernel takes.
    empty = np.empty(0, x.dtype)
    lstm, lstm_grads = _plain_lstm(lstm, empty), _plain_lstm(lstm_grads, empty)
    flat = adam.weights, adam.gradients, adam.m, adam.v
    flags = (state is not None, options.go_backwards, *_codes(options.activation, options.recurrent_activation))
    if state is None:
        state = (np.empty((0, lstm[1].shape[0]), x.dtype),) * 2
    x, y = np.ascontiguousarray(x), np.ascontiguousarray(y)
    if not options.return_sequences:
        y = y.reshape(len(y), 1, y.shape[-1])
    control = cpu_arithmetic.exchange_mxcsr(-1, cpu_arithmetic.FLUSH_SUBNORMALS)
    try:
        return cpu_training.train_epoch(x, y, batch_size, lstm, tuple(dense), lstm_grads, tuple(dense_grads), flat,
                                        adam.constants, adam.iterations, tuple(state), flags)
    finally:
        cpu_arithmetic.exchange_mxcsr(0, control)  # on every way out: an exception must not leave subnormals flushed


def _plain_lstm(weights, empty):
    """LSTMWeights as the compiled pass takes them: a plain tuple, ``empty`` for no bias."""
    return weights.kernel, weights.recurrent_kernel, empty if weights.bias is None else weights.bias
