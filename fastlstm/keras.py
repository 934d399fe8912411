"""``fastlstm.keras.LSTM``: Keras 3's ``LSTM`` layer, trained through fastlstm's fused kernels.

A model swaps one import and nothing else::

    from fastlstm.keras import LSTM  # was: from keras.layers import LSTM

The layer subclasses ``keras.layers.LSTM``: the constructor, weights, names, ``get_config``,
``return_state``, ``stateful`` and masks are Keras's own. It replaces only the loop over time
(``inner_loop``) with :func:`fastlstm.lstm_forward`, and its gradient with
:func:`fastlstm.lstm_backward`, on each Keras backend:

- TensorFlow: ``tf.custom_gradient`` around ``tf.numpy_function`` (so it works inside ``fit``'s
  ``tf.function``, not under XLA: the layer reports ``supports_jit = False``, as Keras's cuDNN
  path does). The backward pass runs the forward again rather than keep its activations between
  two graph ops.
- PyTorch: a ``torch.autograd.Function``. CPU tensors go to the CPU backends; CUDA tensors reach
  the ``cupy`` (or ``numba_cuda``) backend through DLPack, without a copy.
- JAX: ``jax.custom_vjp`` around ``jax.pure_callback``, under ``jax.jit`` too; the backward pass
  runs the forward again, as with TensorFlow.

Input dropout is applied to the sequence before the fused call, as Keras's cuDNN path applies it.
Integer and boolean sequences are computed in the layer's compute dtype, as Keras computes them.
Masks of any pattern give Keras's answer (see :class:`FusedCall`). A call that fastlstm cannot run
(``recurrent_dropout`` in training, ``unroll=True``, ``use_cudnn=True``, ``implementation=1``
with dropout in training, an activation it does not have, a compute dtype other than float32 or
float64, another Keras backend) uses Keras's own implementation, after one warning per reason.

Shapes: sequences ``[batch, time, features]``, states ``[batch, units]``, outputs
``[batch, time, units]`` with ``return_sequences``, else ``[batch, units]``.
"""
import functools
import warnings
from typing import NamedTuple

import keras
import numpy as np

from fastlstm.backends import available_backends
from fastlstm.ops import lstm_backward, lstm_forward

# Keras's activation functions that fastlstm computes, by fastlstm's name for them.
ACTIVATIONS = {
    keras.activations.tanh: "tanh",
    keras.activations.sigmoid: "sigmoid",
    keras.activations.hard_sigmoid: "hard_sigmoid",
    keras.activations.relu: "relu",
    keras.activations.softsign: "softsign",
    keras.activations.linear: "linear",
}
GPU_BACKENDS = ("cupy", "numba_cuda")  # for CUDA tensors, in order of preference


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

    ``x`` ``[batch, time, features]``, the weights in Keras's layout, ``h0, c0`` ``[batch, units]``
    and ``mask`` ``[batch, time]`` (bool, on the host) or None. Keras's rule for a masked step:
    the state stays as it was, and the output repeats the previous step's (zeros before the first
    unmasked step), or is zero with ``zero_output_for_mask``. So the samples that share one mask
    run each stretch of unmasked steps as one ``lstm_forward`` call, the state carried from one
    stretch into the next: padding on either side is one call per distinct length, and no mask
    is a single call.
    """

    def __init__(self, options, x, kernel, recurrent_kernel, bias, h0, c0, mask=None):
        self.options, self.x, self.kernel, self.recurrent_kernel, self.bias = options, x, kernel, recurrent_kernel, bias
        batch, time, _ = x.shape
        units = recurrent_kernel.shape[0]
        self.outputs = np.zeros_like(x, shape=(batch, time, units) if options.return_sequences else (batch, units))
        self.h, self.c = np.zeros_like(h0), np.zeros_like(c0)
        self.groups = _groups(mask, time, options.go_backwards)
        self.caches = []
        for rows, runs in self.groups:
            h, c = h0[rows], c0[rows]
            caches = []
            for run in runs:
                result = lstm_forward(
                    x[rows, run.steps], kernel, recurrent_kernel, bias, h, c,
                    activation=options.activation, recurrent_activation=options.recurrent_activation,
                    return_sequences=options.return_sequences, go_backwards=options.go_backwards,
                    check_finite=False, backend=options.backend)  # NaN propagates, as in Keras
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

    def _last_output_is_h(self, runs, time):
        """Whether the last output of these samples is their final ``h`` (else it is zero)."""
        return bool(runs) and (runs[-1].stop == time or not self.options.zero_output_for_mask)

    def backward(self, dy, dh, dc):
        """Gradients ``(x, kernel, recurrent_kernel, bias, h0, c0)`` from those of the outputs
        and of the final state."""
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


def _groups(mask, time, go_backwards):
    """``(rows, runs)`` for each set of samples that share a mask: ``rows`` indexes the batch,
    ``runs`` lists their :class:`Run` s in processing order."""
    if mask is None or mask.all():
        return [(slice(None), _runs(np.ones(time, bool), go_backwards))]
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


def _host_forward(options, *inputs):
    """The fused call on the seven inputs, as writeable NumPy arrays."""
    call = FusedCall(options, *map(_host_array, inputs))
    return call.outputs, call.h, call.c


def _host_backward(options, *arrays):
    """The forward again on the seven inputs, then the backward from the three upstream gradients."""
    arrays = list(map(_host_array, arrays))
    return FusedCall(options, *arrays[:7]).backward(*arrays[7:])


def _tensorflow(options, x, kernel, recurrent_kernel, bias, h0, c0, mask):
    import tensorflow as tf

    mask = tf.ones(tf.shape(x)[:2], tf.bool) if mask is None else tf.cast(mask, tf.bool)
    # Variables (the weights, a stateful layer's state) are read here: the custom gradient takes tensors.
    x, kernel, recurrent_kernel, bias, h0, c0 = map(tf.convert_to_tensor, (x, kernel, recurrent_kernel, bias, h0, c0))
    shapes = _result_shapes(options, x.shape, recurrent_kernel.shape[0])

    @tf.custom_gradient
    def fused(x, kernel, recurrent_kernel, bias, h0, c0):
        inputs = [x, kernel, recurrent_kernel, bias, h0, c0, mask]
        results = tf.numpy_function(functools.partial(_host_forward, options), inputs, [x.dtype] * 3, stateful=False)
        for result, shape in zip(results, shapes):
            result.set_shape(shape)

        def gradient(*upstream):
            grads = tf.numpy_function(functools.partial(_host_backward, options), [*inputs, *upstream],
                                      [x.dtype] * 6, stateful=False)
            for g, a in zip(grads, inputs):
                g.set_shape(a.shape)
            return grads

        return results, gradient

    return fused(x, kernel, recurrent_kernel, bias, h0, c0)


def _jax(options, x, kernel, recurrent_kernel, bias, h0, c0, mask):
    import jax.numpy as jnp

    mask = jnp.ones(x.shape[:2], bool) if mask is None else mask.astype(bool)
    return _jax_function()(options, x, kernel, recurrent_kernel, bias, h0, c0, mask)


@functools.cache
def _jax_function():
    import jax

    def results(options, x, recurrent_kernel):
        return [jax.ShapeDtypeStruct(s, x.dtype) for s in _result_shapes(options, x.shape, recurrent_kernel.shape[0])]

    @functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
    def fused(options, *inputs):
        return tuple(jax.pure_callback(functools.partial(_host_forward, options),
                                       results(options, inputs[0], inputs[2]), *inputs))

    def forward(options, *inputs):
        return fused(options, *inputs), inputs

    def backward(options, inputs, upstream):
        grads = jax.pure_callback(functools.partial(_host_backward, options),
                                  [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in inputs[:6]], *inputs, *upstream)
        return (*grads, None)  # the mask has no gradient

    fused.defvjp(forward, backward)
    return fused


def _torch(options, x, kernel, recurrent_kernel, bias, h0, c0, mask):
    mask = None if mask is None else keras.ops.convert_to_numpy(mask).astype(bool)  # on the host
    return _torch_function().apply(options, mask, x, kernel, recurrent_kernel, bias, h0, c0)


@functools.cache
def _torch_function():
    import torch

    def array(tensor):
        """The tensor's data without a copy: NumPy on the CPU, CuPy on a CUDA device."""
        if tensor.is_cuda:
            import cupy

            return cupy.from_dlpack(tensor.detach())
        return tensor.detach().numpy()

    class Fused(torch.autograd.Function):
        @staticmethod
        def forward(ctx, options, mask, *inputs):
            ctx.call = FusedCall(options, *map(array, inputs), mask)
            return tuple(torch.as_tensor(a) for a in (ctx.call.outputs, ctx.call.h, ctx.call.c))

        @staticmethod
        def backward(ctx, *upstream):
            grads = ctx.call.backward(*map(array, upstream))
            return (None, None, *(torch.as_tensor(g) for g in grads))

    return Fused


FRAMEWORKS = {"tensorflow": _tensorflow, "jax": _jax, "torch": _torch}


def _result_shapes(options, x_shape, units):
    batch, time = x_shape[0], x_shape[1]
    return [(batch, time, units) if options.return_sequences else (batch, units), (batch, units), (batch, units)]


_warned = set()


def _warn_once(argument, value):
    if argument not in _warned:
        _warned.add(argument)
        warnings.warn(
            f"fastlstm.keras.LSTM: fastlstm does not implement {argument}={value!r}, so calls with it "
            "use keras.layers.LSTM's own implementation (this warning is shown once per process)",
            stacklevel=3)


@keras.saving.register_keras_serializable(package="fastlstm")
class LSTM(keras.layers.LSTM):
    """``keras.layers.LSTM`` with its forward and backward on fastlstm's fused kernels.

    Same arguments, weights, names and config as ``keras.layers.LSTM``; see the module's
    docstring for what runs where. Inputs ``[batch, time, features]``, of any dtype that
    ``keras.layers.LSTM`` takes: integer and boolean ones are cast to the compute dtype (float32
    or float64) after input dropout, as Keras casts them.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if keras.backend.backend() != "jax":
            self.supports_jit = False  # tf.numpy_function has no XLA form; torch.compile would break the graph

    def inner_loop(self, sequences, initial_state, mask, training=False):
        if keras.tree.is_nested(mask):
            mask = mask[0]
        backend, reason = self._fastlstm_backend(sequences, training)
        if reason is not None:
            _warn_once(*reason)
            return super().inner_loop(sequences, initial_state, mask, training=training)
        cell = self.cell
        if training and 0.0 < cell.dropout < 1.0:  # as Keras's cuDNN path applies it
            sequences = sequences * keras.ops.expand_dims(cell.get_dropout_mask(sequences[:, 0, :]), 1)
        # Integer and boolean sequences reach the loop uncast: Keras computes them in the compute dtype.
        sequences = keras.ops.cast(sequences, self.compute_dtype)
        bias = cell.bias if cell.use_bias else keras.ops.zeros((4 * cell.units,), sequences.dtype)
        options = Options(ACTIVATIONS[cell.activation], ACTIVATIONS[cell.recurrent_activation],
                          self.return_sequences, self.go_backwards, self.zero_output_for_mask, backend)
        weights = [keras.ops.convert_to_tensor(w) for w in (cell.kernel, cell.recurrent_kernel, bias)]
        outputs, h, c = FRAMEWORKS[keras.backend.backend()](options, sequences, *weights, *initial_state, mask)
        if self.return_sequences:
            return outputs[:, -1], outputs, [h, c]
        return outputs, keras.ops.expand_dims(outputs, 1), [h, c]

    def _fastlstm_backend(self, sequences, training):
        """``(backend, None)``: the fastlstm backend for this call; or ``(None, (argument, value))``
        naming what makes it fall back to Keras's implementation."""
        cell = self.cell
        dropout_in_training = bool(training) and 0.0 < cell.dropout < 1.0
        unsupported = [
            ("KERAS_BACKEND", keras.backend.backend(), keras.backend.backend() not in FRAMEWORKS),
            ("unroll", self.unroll, self.unroll),
            ("use_cudnn", self.use_cudnn, self.use_cudnn is True),
            ("recurrent_dropout", cell.recurrent_dropout, bool(training) and 0.0 < cell.recurrent_dropout < 1.0),
            ("implementation", cell.implementation, cell.implementation == 1 and dropout_in_training),
            ("activation", cell.activation, cell.activation not in ACTIVATIONS),
            ("recurrent_activation", cell.recurrent_activation, cell.recurrent_activation not in ACTIVATIONS),
            ("dtype", self.dtype_policy.name, self.compute_dtype not in ("float32", "float64")),
        ]
        for argument, value, applies in unsupported:
            if applies:
                return None, (argument, value)
        if keras.backend.backend() == "torch" and sequences.is_cuda:
            working = [s.name for s in available_backends() if s.available and s.name in GPU_BACKENDS]
            if not working:
                return None, ("device", str(sequences.device))
            return working[0], None
        return "auto", None


def reset_states(model):
    """Reset the state of every stateful layer in ``model``, nested models included, as Keras 2's
    ``model.reset_states()`` did (Keras 3 models have no such method)."""
    for layer in _layers(model):
        if getattr(layer, "stateful", False) and hasattr(layer, "reset_state"):
            layer.reset_state()


def _layers(model):
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from _layers(layer)


def with_batch_size(model, batch_size):
    """A copy of a Sequential or functional ``model`` whose inputs have the fixed batch size
    ``batch_size``, with the same weights and a fresh (zero) state: for instance to predict one
    sample at a time with a stateful model trained in batches. Compiled the same way if
    ``model`` was."""
    inputs = [keras.Input(batch_shape=(batch_size, *t.shape[1:]), dtype=t.dtype) for t in model.inputs]
    copy = keras.models.clone_model(model, input_tensors=inputs[0] if len(inputs) == 1 else inputs)
    copy.set_weights(model.get_weights())
    return copy
