"""Compiling the CPU kernels of training and of the forward pass in two processes at once, for a
first run on a fresh install: :func:`compile_in_two_processes`.

The fused training pass (``cpu_training.train_epoch``) calls ``cpu_lstm.forward_sequence`` and
``cpu_lstm.backward_sequence``. A child process compiles ``forward_sequence``, then the backend's
inference, which evaluate and predict take: ``cpu_lstm.infer`` (for fewer samples) and
``cpu_team.lead``, which runs ``cpu_stepwise.forward_slice`` (for a few samples or more); meanwhile
this process compiles ``backward_sequence`` and, once the child has saved ``forward_sequence`` in
Numba's disk cache, ``train_epoch``, which loads it from there. Numba's cache of a function is not
safe against two processes writing it at once, so no function is compiled by both. For models
that train layer by layer (any but an LSTM and a softmax Dense), the one-call kernels are compiled
too, ``cpu_lstm.forward`` in the child after ``forward_sequence``, ``cpu_lstm.backward`` here after
``train_epoch``: each links a callee compiled in its own process. Each kernel is called once on
arrays of one element or none, with the argument types of the backend's calls, so that Numba
compiles (or loads) the specialisation they use.
"""
import multiprocessing
import threading

import numpy as np

from . import cpu_team
from .activation_ids import SIGMOID, TANH
from .cpu_lstm import backward, backward_sequence, forward, forward_sequence, infer
from .cpu_training import train_epoch

CODES = (TANH, SIGMOID)  # ints: any codes compile the same specialisation


def compile_in_two_processes(dtype, layer_by_layer=False):
    """Compiles, or loads from the disk cache, train_epoch, the inference kernels and their
    callees for dtype (float32 or float64), and with layer_by_layer the one-call forward and
    backward, the child process and this one in parallel. Should the child fail, this process
    compiles what it needs itself."""
    # A fork starts at once, but only a process of one thread forks safely (another thread may
    # hold a lock the child would wait on forever); a spawned child imports Numba first.
    fork = "fork" in multiprocessing.get_all_start_methods() and threading.active_count() == 1
    context = multiprocessing.get_context("fork" if fork else "spawn")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_compile_forward, args=(dtype, send, layer_by_layer), daemon=True)
    child.start()
    send.close()  # so that recv() raises EOFError, rather than waits, if the child dies
    _call_backward_sequence(dtype)
    try:
        receive.recv()  # forward_sequence is in the cache
    except EOFError:
        pass
    _call_train_epoch(dtype)
    if layer_by_layer:
        _call_one_call_backward(dtype)
    child.join()


def _compile_forward(dtype, ready, layer_by_layer):
    """The child's part: forward_sequence, then (once it is saved) the one-call forward with
    layer_by_layer, infer and cpu_team.lead."""
    units = 1
    forward_sequence(np.zeros((1, 1, 4 * units), dtype), np.zeros((units, 4 * units), dtype),
                     np.zeros((1, 2, units), dtype), np.zeros((1, 2, units), dtype), np.zeros((1, 1, units), dtype),
                     *CODES, False, np.zeros(4 * units, dtype))
    ready.send(True)
    ready.close()
    state = np.zeros((1, units), dtype)
    if layer_by_layer:
        sequence = np.zeros((1, 2, units), dtype)
        forward(np.zeros((1, 1, 1), dtype), np.zeros((1, 4 * units), dtype), np.zeros((units, 4 * units), dtype),
                np.zeros(4 * units, dtype), state, state, sequence, sequence.copy(), np.zeros((1, 1, 4 * units), dtype),
                np.zeros((1, 1, units), dtype), *CODES)
    infer(np.zeros((1, 1, 1), dtype), np.zeros((1, 4 * units), dtype), np.zeros((units, 4 * units), dtype),
          np.zeros(4 * units, dtype), state, state, np.zeros((1, 1, units), dtype), state.copy(), state.copy(), *CODES)
    # The types of the backend's calls: the control array (with no job open), an empty array of dtype.
    control = np.zeros(cpu_team.HEADER, np.int64)
    cpu_team.open_job(control)
    cpu_team.lead(control, np.zeros(0, dtype))


def _call_backward_sequence(dtype):
    units = 1
    backward_sequence(np.zeros((1, 1, 4 * units), dtype), np.zeros((1, 2, units), dtype),
                      np.zeros((1, 1, units), dtype), np.zeros((units, 4 * units), dtype),
                      np.zeros((1, 0, units), dtype), np.zeros((1, units), dtype), np.zeros((1, units), dtype),
                      np.zeros((1, 1, 4 * units), dtype), *CODES, False)


def _call_one_call_backward(dtype):
    units = 1
    sequence, step = np.zeros((1, 2, units), dtype), np.zeros((1, 1, units), dtype)
    state = np.zeros((1, units), dtype)
    backward(np.zeros((1, 1, 1), dtype), np.zeros((1, 4 * units), dtype), np.zeros((units, 4 * units), dtype), True,
             sequence, sequence.copy(), np.zeros((1, 1, 4 * units), dtype), step, step.copy(), state, state.copy(),
             np.zeros((1, 1, 4 * units), dtype), *CODES)


def _call_train_epoch(dtype):
    """One sample, one step, one input, one unit, two classes, no state; y [samples, steps,
    classes], as the backend passes it for both models, the last output's and every step's."""
    units, classes = 1, 2
    lstm = (np.zeros((1, 4 * units), dtype), np.zeros((units, 4 * units), dtype), np.zeros(4 * units, dtype))
    dense = (np.zeros((units, classes), dtype), np.zeros(classes, dtype))
    flat = tuple(np.zeros(4 * units * (2 + units) + classes * (units + 1), dtype) for _ in range(4))
    adam = tuple(dtype(value) for value in (0.001, 0.9, 0.999, 1e-7, 0.1, 0.001))
    no_state = (np.empty((0, units), dtype),) * 2
    train_epoch(np.zeros((1, 1, 1), dtype), np.eye(1, classes, dtype=dtype).reshape(1, 1, classes), 1, lstm, dense,
                tuple(np.zeros_like(a) for a in lstm), tuple(np.zeros_like(a) for a in dense), flat, adam, 0,
                no_state, (False, False, *CODES))
