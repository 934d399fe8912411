"""The drop-in's work on host (or CuPy) arrays: one call of the layer as fastlstm calls
(:class:`FusedCall`), and the two functions that the TensorFlow and JAX callbacks run
(:func:`host_forward`, :func:`host_backward`), with the store that hands a training forward's
activations to its backward, so that the backward does not run the forward again.

Shapes: ``x [batch, time, features]``, the weights in Keras's layout, states ``[batch, units]``,
``mask [batch, time]`` (bool, on the host) or None.
"""
import itertools
import threading
from collections import OrderedDict
from typing import NamedTuple

import numpy as np

from fastlstm.ops import lstm_backward, lstm_forward


class Options(NamedTuple):
    """The static options of one fused call."""

    activation: str
    recurrent_activation: str
    return_sequences: bool
    go_backwards: bool
    zero_output_for_mask: bool
    backend: str


class Run(NamedTuple):
    """A stretch of unmasked steps, ``[start, stop)`` in processing order; ``next_start`` is where
    the following stretch starts (``time`` for the last); ``steps`` indexes it in the input."""

    start: int
    stop: int
    next_start: int
    steps: slice


class FusedCall:
    """One call of the layer on NumPy (or CuPy) arrays, and its gradients.

    Keras's rule for a masked step: the state stays as it was, and the output repeats the
    previous step's (zeros before the first unmasked step), or is zero with
    ``zero_output_for_mask``. So the samples that share one mask run each stretch of unmasked
    steps as one ``lstm_forward`` call, the state carried from one stretch into the next: padding
    on either side is one call per distinct length. Without a mask (or with one that hides
    nothing) the call is one ``lstm_forward`` whose results are returned as they are.
    ``keep_cache=False``: a call that is never differentiated, which keeps nothing for
    :meth:`backward` (``lstm_forward(keep_cache=False)``).
    """

    def __init__(self, options, x, kernel, recurrent_kernel, bias, h0, c0, mask=None, keep_cache=True):
        self.options, self.x, self.kernel, self.recurrent_kernel, self.bias = options, x, kernel, recurrent_kernel, bias
        self.keep_cache = keep_cache
        self.groups = None if mask is None or mask.all() else _groups(mask, options.go_backwards)
        if self.groups is None:
            result = self._forward(x, h0, c0)
            self.outputs, self.h, self.c, self.cache = result.outputs, result.h, result.c, result.cache
            return
        batch, time, _ = x.shape
        units = recurrent_kernel.shape[0]
        self.outputs = np.zeros_like(x, shape=(batch, time, units) if options.return_sequences else (batch, units))
        self.h, self.c = np.zeros_like(h0), np.zeros_like(c0)
        self.caches = []
        for rows, runs in self.groups:
            h, c = h0[rows], c0[rows]
            caches = []
            for run in runs:
                result = self._forward(x[rows, run.steps], h, c)
                h, c = result.h, result.c
                if options.return_sequences:
                    self.outputs[rows, run.start:run.stop] = result.outputs
                    if not options.zero_output_for_mask:
                        self.outputs[rows, run.stop:run.next_start] = h[:, None]
                caches.append(result.cache)
            if not options.return_sequences and self._last_output_is_h(runs, time):
                self.outputs[rows] = h
            self.h[rows], self.c[rows] = h, c
            self.caches.append(caches)

    def _forward(self, x, h0, c0):
        options = self.options
        return lstm_forward(x, self.kernel, self.recurrent_kernel, self.bias, h0, c0,
                            activation=options.activation, recurrent_activation=options.recurrent_activation,
                            return_sequences=options.return_sequences, go_backwards=options.go_backwards,
                            check_finite=False, keep_cache=self.keep_cache,  # NaN propagates, as in Keras
                            backend=options.backend)

    def _last_output_is_h(self, runs, time):
        """Whether the last output of these samples is their final ``h`` (else it is zero)."""
        return bool(runs) and (runs[-1].stop == time or not self.options.zero_output_for_mask)

    def backward(self, dy, dh, dc):
        """Gradients ``(x, kernel, recurrent_kernel, bias, h0, c0)`` from those of the outputs
        and of the final state."""
        if self.groups is None:
            if self.options.return_sequences:
                return tuple(lstm_backward(self.cache, dy, dh, dc))
            return tuple(lstm_backward(self.cache, None, dh + dy, dc))  # the output is the final h
        time = self.x.shape[1]
        dx, dh0, dc0 = np.zeros_like(self.x), np.zeros_like(dh), np.zeros_like(dc)
        dweights = [np.zeros_like(w) for w in (self.kernel, self.recurrent_kernel, self.bias)]
        for (rows, runs), caches in zip(self.groups, self.caches):
            gh, gc = dh[rows], dc[rows]
            if not self.options.return_sequences and self._last_output_is_h(runs, time):
                gh = gh + dy[rows]
            for run, cache in zip(reversed(runs), reversed(caches)):
                dy_run = None
                if self.options.return_sequences:
                    dy_run = dy[rows, run.start:run.stop]
                    if not self.options.zero_output_for_mask and run.next_start > run.stop:
                        dy_run = dy_run.copy()  # the masked steps after it repeat its last output
                        dy_run[:, -1] += dy[rows, run.stop:run.next_start].sum(axis=1)
                grads = lstm_backward(cache, dy_run, gh, gc)
                dx[rows, run.steps] = grads.x
                for total, g in zip(dweights, grads[1:4]):
                    total += g
                gh, gc = grads.h0, grads.c0
            dh0[rows], dc0[rows] = gh, gc
        return (dx, *dweights, dh0, dc0)


def _groups(mask, go_backwards):
    """``(rows, runs)`` for each set of samples that share a mask ``[batch, time]``: ``rows``
    indexes the batch, ``runs`` lists their :class:`Run` s in processing order."""
    masks, inverse = np.unique(mask[:, ::-1] if go_backwards else mask, axis=0, return_inverse=True)
    inverse = inverse.ravel()
    return [(np.flatnonzero(inverse == k), _runs(m, go_backwards)) for k, m in enumerate(masks)]


def _runs(mask, go_backwards):
    """The stretches of True in one sample's ``mask`` [time], in processing order."""
    time = len(mask)
    edges = np.flatnonzero(np.diff(mask.astype(np.int8), prepend=0, append=0))
    starts, stops = edges[0::2].tolist(), edges[1::2].tolist()
    return [Run(start, stop, following, slice(time - stop, time - start) if go_backwards else slice(start, stop))
            for start, stop, following in zip(starts, stops, starts[1:] + [time])]


def _host_array(a):
    """a as a writeable NumPy array. JAX's callbacks pass jax.Arrays, whose NumPy views (like some
    that TensorFlow passes) are read-only, and numba_cpu would compile its kernels once more for
    each mix of read-only and writeable arguments (seven more compilations in the test suite)."""
    a = np.asarray(a)
    return a if a.flags.writeable else a.copy()


# The forward calls kept for their backward, by key, oldest first. A forward whose backward never
# comes (a training call outside any gradient) stays only until KEPT_CALLS newer ones push it out;
# a backward that finds no call under its key runs the forward again.
KEPT_CALLS = 16
_kept = OrderedDict()
_keys = itertools.count(1)
_kept_lock = threading.Lock()


def host_forward(options, keep, *inputs):
    """The fused call on the inputs ``x, kernel, recurrent_kernel, bias, h0, c0 (, mask)``:
    ``(outputs, h, c, key)``. With ``keep``, the call is kept under ``key`` (an int32 scalar, 0
    when not kept) for :func:`host_backward`; without, it keeps no cache either."""
    call = FusedCall(options, *map(_host_array, inputs), keep_cache=keep)
    key = 0
    if keep:
        with _kept_lock:
            key = next(_keys) % 2**31 or next(_keys)
            _kept[key] = call
            while len(_kept) > KEPT_CALLS:
                _kept.popitem(last=False)
    return call.outputs, call.h, call.c, np.int32(key)


def host_backward(options, key, *arrays):
    """The gradients of the six inputs, from the ``key`` of :func:`host_forward`, the inputs
    ``x, kernel, recurrent_kernel, bias, h0, c0 (, mask)`` (run again if the call was not kept)
    and the three upstream gradients (of the outputs, h and c), last."""
    arrays = list(map(_host_array, arrays))
    with _kept_lock:
        call = _kept.pop(int(key), None)
    if call is None:
        call = FusedCall(options, *arrays[:-3])
    return call.backward(*arrays[-3:])
