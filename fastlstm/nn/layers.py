"""Layers: :class:`LSTM` (on :func:`fastlstm.ops.lstm_forward`), :class:`Dense`,
:class:`TimeDistributed` (a layer applied to every time step) and :class:`RepeatVector`.

A layer holds its weights in ``weights``, a list of arrays in Keras 3's order, and after
``backward`` the gradients of the loss with respect to them in ``grads``, arrays of the same
shapes. Both are updated in place, never rebound, so a model may keep them as views into one
flat buffer (see :class:`fastlstm.nn.Sequential`). What a backward pass needs of its forward
pass comes back from ``forward`` as a tape, not kept in the layer, so a layer used twice in a
model backpropagates each use from its own forward.
"""
import collections
import re

import numpy as np

from fastlstm.activations import ACTIVATIONS, activation_name
from fastlstm.nn import initializers
from fastlstm.ops import lstm_backward, lstm_forward

_name_counts = collections.Counter()


def unique_name(prefix):
    """'lstm', then 'lstm_1', 'lstm_2', ... per prefix in this process, as Keras names layers."""
    count = _name_counts[prefix]
    _name_counts[prefix] += 1
    return prefix if count == 0 else f"{prefix}_{count}"


def _check_units(units, argument="units"):
    if isinstance(units, bool) or not isinstance(units, (int, np.integer)) or units < 1:
        raise ValueError(f"{argument} must be a positive integer, got {units!r}")
    return int(units)


class Layer:
    """The base class: a name, weights and their gradients, and the declared input shape.

    Subclasses implement ``compute_output_shape(input_shape)`` (refusing an input they cannot
    take), ``build(input_shape, dtype) -> output_shape`` (create ``weights`` and ``grads``),
    ``forward(x, training) -> (y, tape)`` and ``backward(tape, dy, accumulate) -> dx``, which
    fills ``grads`` from the tape of one ``forward`` call, or adds to them with ``accumulate``
    (the gradient of a layer used more than once is the sum over its uses, as in Keras).
    """

    weight_names = ()
    weights = grads = ()  # until build gives the layer its own lists

    def __init__(self, name=None, batch_input_shape=None):
        # Keras's default names: the class name in snake case ('lstm', 'time_distributed').
        self.name = name or unique_name(re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", type(self).__name__).lower())
        self.batch_input_shape = batch_input_shape  # (batch or None, ...) when declared, else None
        self.output_shape = None  # set by build
        self.stateful = False

    @property
    def built(self):
        return self.output_shape is not None

    @property
    def weight_owner(self):
        """The layer whose weights these are: the layer itself, or the layer a wrapper wraps."""
        return self

    def count_params(self):
        return sum(w.size for w in self.weights)

    def _new_weights(self, arrays):
        self.weights = list(arrays)
        self.grads = [np.zeros_like(w) for w in self.weights]

    def _store_grads(self, values, accumulate):
        """Writes ``values`` into ``grads``, or adds them to ``grads`` with ``accumulate``."""
        for grad, value in zip(self.grads, values):
            if accumulate:
                grad += value
            else:
                grad[...] = value


class LSTM(Layer):
    """Long Short-Term Memory layer, with ``keras.layers.LSTM``'s arguments and weights.

    Input ``[batch, time, features]``; output ``[batch, units]`` (the last step), or
    ``[batch, time, units]`` with ``return_sequences``. Weights, in Keras 3's layout and order:
    ``kernel [features, 4*units]``, ``recurrent_kernel [units, 4*units]``, ``bias [4*units]``,
    gates in the order i, f, c, o.

    Args:
        units: the size of the state.
        activation: for the cell input and the cell state (default 'tanh').
        recurrent_activation: for the i, f, o gates (default 'sigmoid'); 'hard_sigmoid_keras2'
            is Keras 2's ``clip(0.2x + 0.5, 0, 1)``. Any name of ``fastlstm.activations``.
        use_bias: whether the layer has a bias.
        unit_forget_bias: start the forget gate's bias at 1 (the rest from bias_initializer).
        kernel_initializer, recurrent_initializer, bias_initializer: names from
            :mod:`fastlstm.nn.initializers` or callables ``(shape, dtype) -> array``.
        return_sequences: return every step's output, not only the last.
        go_backwards: process the sequence in reverse.
        stateful: carry the final state of each batch into the next batch as its initial state
            (sample ``i`` of one batch continues sample ``i`` of the previous one), until
            ``reset_states()``. Needs a fixed batch size: ``batch_input_shape`` or ``batch_size``.
            Gradients do not flow from one batch into the previous one (truncated BPTT).
        input_shape: ``(time, features)`` of the input, without the batch; ``time`` may be None.
        batch_size: the fixed batch size, with ``input_shape``.
        batch_input_shape: ``(batch, time, features)``; instead of the two above.
        backend: the fastlstm backend that runs the layer ('auto' or a name from
            ``fastlstm.available_backends()``).
        name: the layer's name; 'lstm', 'lstm_1', ... when None.
    """

    weight_names = ("kernel", "recurrent_kernel", "bias")

    def __init__(self, units, activation="tanh", recurrent_activation="sigmoid", use_bias=True,
                 unit_forget_bias=True, kernel_initializer="glorot_uniform",
                 recurrent_initializer="orthogonal", bias_initializer="zeros", return_sequences=False,
                 go_backwards=False, stateful=False, input_shape=None, batch_size=None,
                 batch_input_shape=None, backend="auto", name=None):
        super().__init__(name, _batch_input_shape(input_shape, batch_size, batch_input_shape))
        self.units = _check_units(units)
        self.activation = activation_name(activation, "activation")
        self.recurrent_activation = activation_name(recurrent_activation, "recurrent_activation")
        self.use_bias = bool(use_bias)
        self.unit_forget_bias = bool(unit_forget_bias)
        self.kernel_initializer = initializers.get(kernel_initializer, "kernel_initializer")
        self.recurrent_initializer = initializers.get(recurrent_initializer, "recurrent_initializer")
        self.bias_initializer = initializers.get(bias_initializer, "bias_initializer")
        self.return_sequences = bool(return_sequences)
        self.go_backwards = bool(go_backwards)
        self.stateful = bool(stateful)
        self.backend = backend
        self.states = None  # (h, c), each [batch, units], of a stateful layer once built

    def compute_output_shape(self, input_shape):
        """The output shape for input ``[batch, time, features]``."""
        if len(input_shape) != 3:
            raise ValueError(
                f"LSTM {self.name!r} expects input [batch, time, features] (3-D), got shape {input_shape}"
            )
        batch, time, _ = input_shape
        return (batch, time, self.units) if self.return_sequences else (batch, self.units)

    def build(self, input_shape, dtype):
        """Creates the weights for input ``[batch, time, features]``; returns the output shape."""
        output_shape = self.compute_output_shape(input_shape)
        batch, _, features = input_shape
        units = self.units
        weights = [
            self.kernel_initializer((features, 4 * units), dtype),
            self.recurrent_initializer((units, 4 * units), dtype),
        ]
        if self.use_bias:
            if self.unit_forget_bias:
                weights.append(np.concatenate([
                    self.bias_initializer((units,), dtype),
                    initializers.ones((units,), dtype),
                    self.bias_initializer((2 * units,), dtype),
                ]))
            else:
                weights.append(self.bias_initializer((4 * units,), dtype))
        self._new_weights(np.asarray(w, dtype) for w in weights)
        if self.stateful:
            if batch is None:
                raise ValueError(
                    f"LSTM {self.name!r} is stateful and needs a fixed batch size: pass "
                    "batch_input_shape=(batch, time, features), or batch_size= with input_shape=, "
                    "to the model's first layer"
                )
            self.states = (np.zeros((batch, units), dtype), np.zeros((batch, units), dtype))
        self.output_shape = output_shape
        return output_shape

    def check_batch_size(self, batch):
        """Raises ValueError if a stateful layer would get a batch of another size than its state's."""
        if self.stateful and batch != self.states[0].shape[0]:
            raise ValueError(
                f"stateful LSTM {self.name!r} has a fixed batch size of {self.states[0].shape[0]}, but got a "
                f"batch of {batch} samples: every batch must have exactly {self.states[0].shape[0]} samples "
                "(pass that batch_size, with a number of samples divisible by it)"
            )

    def reset_states(self):
        """Sets a stateful layer's state to zeros (does nothing for a non-stateful one)."""
        if self.states is not None:
            for s in self.states:
                s[...] = 0

    def forward(self, x, training=False):
        """``x [batch, time, features]`` -> ``([batch, units], tape)`` (``[batch, time, units]``
        with ``return_sequences``), the tape being what ``backward`` needs (None unless
        ``training``); a stateful layer starts from, and then keeps, its state."""
        h0 = c0 = None
        if self.stateful:
            self.check_batch_size(x.shape[0])
            h0, c0 = self.states
        result = lstm_forward(
            x, *self.weights[:2], self.weights[2] if self.use_bias else None, h0, c0,
            activation=self.activation, recurrent_activation=self.recurrent_activation,
            return_sequences=self.return_sequences, go_backwards=self.go_backwards,
            check_finite=False,  # the model checks its inputs once per call, not once per batch
            keep_cache=training, backend=self.backend,
        )
        if self.stateful:
            self.states = (result.h, result.c)
        return result.outputs, result.cache

    def backward(self, tape, dy, accumulate=False):
        """Fills ``grads`` (adds to them with ``accumulate``) from ``dy``, the gradient w.r.t. the
        output of the training ``forward`` that gave ``tape``; returns the gradient w.r.t. its
        input. Nothing flows into the initial state."""
        g = lstm_backward(tape, dy=dy)
        self._store_grads((g.kernel, g.recurrent_kernel, g.bias), accumulate)  # no bias: zip stops at two
        return g.x


DenseTape = collections.namedtuple("DenseTape", "x y logits")  # a Dense forward's input, output, x @ kernel + bias


def _softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _softmax_grad(dy, y):
    """The softmax's Jacobian (from its output ``y``) applied to ``dy``."""
    return y * (dy - (dy * y).sum(axis=-1, keepdims=True))


class Dense(Layer):
    """Densely-connected layer: ``activation(x @ kernel + bias)``, as ``keras.layers.Dense``.

    Input ``[batch, features]`` (or ``[batch, time, features]``, applied to every step);
    output ``[batch, units]`` (or ``[batch, time, units]``). Weights, in Keras 3's order:
    ``kernel [features, units]``, ``bias [units]``.

    Args:
        units: the number of outputs.
        activation: 'softmax', None or 'linear', 'relu', 'sigmoid', 'tanh' (or another name
            of ``fastlstm.activations``).
        kernel_initializer, bias_initializer: names from :mod:`fastlstm.nn.initializers` or
            callables ``(shape, dtype) -> array``.
        input_shape: ``(features,)`` (or ``(time, features)``) of the input, without the batch,
            when this is the model's first layer.
        batch_size: a fixed batch size, with ``input_shape``.
        batch_input_shape: ``(batch, features)``; instead of the two above.
        name: the layer's name; 'dense', 'dense_1', ... when None.
    """

    weight_names = ("kernel", "bias")

    def __init__(self, units, activation=None, kernel_initializer="glorot_uniform",
                 bias_initializer="zeros", input_shape=None, batch_size=None,
                 batch_input_shape=None, name=None):
        super().__init__(name, _batch_input_shape(input_shape, batch_size, batch_input_shape))
        self.units = _check_units(units)
        if activation == "softmax":
            self.activation, self._fn, self._grad = "softmax", _softmax, _softmax_grad
        else:
            self.activation = activation_name(activation, "activation")
            act = ACTIVATIONS[self.activation]
            self._fn, self._grad = act.fn, lambda dy, y: dy * act.grad_from_output(y)
        self.kernel_initializer = initializers.get(kernel_initializer, "kernel_initializer")
        self.bias_initializer = initializers.get(bias_initializer, "bias_initializer")

    def compute_output_shape(self, input_shape):
        """The output shape for input ``[batch, ..., features]``."""
        if len(input_shape) < 2:
            raise ValueError(f"Dense {self.name!r} expects input [batch, ..., features], got shape {input_shape}")
        return (*input_shape[:-1], self.units)

    def build(self, input_shape, dtype):
        """Creates the weights for input ``[batch, ..., features]``; returns the output shape."""
        output_shape = self.compute_output_shape(input_shape)
        features = input_shape[-1]
        self._new_weights([
            np.asarray(self.kernel_initializer((features, self.units), dtype), dtype),
            np.asarray(self.bias_initializer((self.units,), dtype), dtype),
        ])
        self.output_shape = output_shape
        return output_shape

    def forward(self, x, training=False):
        """``x [batch, ..., features]`` -> ``([batch, ..., units], tape)``, the tape a
        :data:`DenseTape` (with the logits, which a loss fused with the softmax takes)."""
        kernel, bias = self.weights
        logits = x @ kernel + bias
        y = self._fn(logits)
        return y, DenseTape(x, y, logits)

    def backward(self, tape, dy, accumulate=False):
        """Fills ``grads`` (adds to them with ``accumulate``) from ``dy``, the gradient w.r.t. the
        output of the ``forward`` that gave ``tape``; returns the gradient w.r.t. its input."""
        return self.backward_from_logits(tape, self._grad(dy, tape.y), accumulate)

    def backward_from_logits(self, tape, dlogits, accumulate=False):
        """As :meth:`backward`, from the gradient w.r.t. the logits (for a loss fused with the
        softmax)."""
        kernel = self.weights[0]
        x = tape.x.reshape(-1, kernel.shape[0])
        dz = dlogits.reshape(-1, kernel.shape[1])
        self._store_grads((x.T @ dz, dz.sum(axis=0)), accumulate)
        return dlogits @ kernel.T


class TimeDistributedTape(collections.namedtuple("TimeDistributedTape", "tape batch time")):
    """A :class:`TimeDistributed` forward's tape: the wrapped layer's tape of its ``[batch*time,
    ...]`` input, and the batch and time sizes folded into that input's first axis."""

    __slots__ = ()

    @property
    def logits(self):
        """The wrapped layer's logits, ``[batch, time, units]`` (a loss fused with its softmax takes them)."""
        return _unfold(self.tape.logits, self.batch, self.time)


def _unfold(a, batch, time):
    """``a [batch*time, ...]`` as ``[batch, time, ...]``."""
    return a.reshape(batch, time, *a.shape[1:])


class TimeDistributed(Layer):
    """Applies ``layer`` to every time step, as ``keras.layers.TimeDistributed``.

    Input ``[batch, time, features]``; the wrapped layer, which takes ``[batch, features]`` (a
    Dense, say), gets the time steps as more samples, ``[batch*time, features]``, so the output
    is ``[batch, time, units]``. The weights and gradients are the wrapped layer's, as in Keras
    (Dense: ``kernel [features, units]``, ``bias [units]``); so is ``activation``, so that a
    ``TimeDistributed(Dense(..., activation='softmax'))`` can end a model trained with
    categorical cross-entropy. The loss takes the wrapped layer's logits; Keras (TensorFlow
    backend), to which the wrapper hides them, takes the probabilities clipped to [1e-7, 1 - 1e-7]:
    the two agree until a probability reaches the clip.

    Args:
        layer: the layer to apply: not an LSTM (it takes sequences) nor another TimeDistributed.
        name: the layer's name; 'time_distributed', 'time_distributed_1', ... when None.
    """

    def __init__(self, layer, name=None):
        if not isinstance(layer, Layer) or isinstance(layer, (LSTM, TimeDistributed)):
            raise ValueError(
                "layer must be a fastlstm.nn layer that takes [batch, features], such as Dense (not an LSTM or "
                f"a TimeDistributed), got {type(layer).__name__}"
            )
        self.layer = layer
        super().__init__(name)

    # The model replaces a layer's weights and grads with views into its flat buffers, so both
    # reads and writes go to the wrapped layer.
    weights = property(lambda self: self.layer.weights, lambda self, value: setattr(self.layer, "weights", value))
    grads = property(lambda self: self.layer.grads, lambda self, value: setattr(self.layer, "grads", value))

    @property
    def weight_names(self):
        return self.layer.weight_names

    @property
    def weight_owner(self):
        return self.layer

    @property
    def activation(self):
        return getattr(self.layer, "activation", None)

    def compute_output_shape(self, input_shape):
        """The output shape for input ``[batch, time, features]``."""
        return self._shapes(input_shape)[1]

    def _shapes(self, input_shape):
        """The wrapped layer's input shape, ``[batch*time, features]``, and the output shape,
        ``[batch, time, units]``, for input ``[batch, time, features]``."""
        if len(input_shape) != 3:
            raise ValueError(
                f"TimeDistributed {self.name!r} expects input [batch, time, features] (3-D), got shape {input_shape}"
            )
        batch, time, features = input_shape
        inner = (None if batch is None or time is None else batch * time, features)
        return inner, (batch, time, *self.layer.compute_output_shape(inner)[1:])

    def build(self, input_shape, dtype):
        """Builds the wrapped layer for ``[batch*time, features]``; returns the output shape."""
        inner, output_shape = self._shapes(input_shape)
        self.layer.build(inner, dtype)
        self.output_shape = output_shape
        return output_shape

    def forward(self, x, training=False):
        """``x [batch, time, features]`` -> ``([batch, time, units], tape)``, the tape a
        :class:`TimeDistributedTape`."""
        batch, time = x.shape[:2]
        y, tape = self.layer.forward(x.reshape(batch * time, *x.shape[2:]), training)
        return _unfold(y, batch, time), TimeDistributedTape(tape, batch, time)

    def backward(self, tape, dy, accumulate=False):
        """Fills ``grads`` (adds to them with ``accumulate``) from ``dy [batch, time, units]``, the
        gradient w.r.t. the output of the ``forward`` that gave ``tape``; returns the gradient
        w.r.t. its input, ``[batch, time, features]``."""
        return self._fold_through(self.layer.backward, tape, dy, accumulate)

    def backward_from_logits(self, tape, dlogits, accumulate=False):
        """As :meth:`backward`, from the gradient w.r.t. the wrapped layer's logits, ``[batch,
        time, units]`` (for a loss fused with the softmax)."""
        return self._fold_through(self.layer.backward_from_logits, tape, dlogits, accumulate)

    @staticmethod
    def _fold_through(backward, tape, d, accumulate):
        dx = backward(tape.tape, d.reshape(tape.batch * tape.time, *d.shape[2:]), accumulate)
        return _unfold(dx, tape.batch, tape.time)


class RepeatVector(Layer):
    """Repeats its input ``n`` times along a new time axis, as ``keras.layers.RepeatVector``.

    Input ``[batch, features]``; output ``[batch, n, features]``. No weights; the gradient
    w.r.t. the input is the output's gradient summed over time.

    Args:
        n: the number of time steps.
        name: the layer's name; 'repeat_vector', 'repeat_vector_1', ... when None.
    """

    def __init__(self, n, name=None):
        super().__init__(name)
        self.n = _check_units(n, "n")

    def compute_output_shape(self, input_shape):
        """The output shape for input ``[batch, features]``."""
        if len(input_shape) != 2:
            raise ValueError(
                f"RepeatVector {self.name!r} expects input [batch, features] (2-D), got shape {input_shape}"
            )
        batch, features = input_shape
        return batch, self.n, features

    def build(self, input_shape, dtype):
        """Checks the input shape ``[batch, features]``; returns the output shape (no weights to create)."""
        self.output_shape = self.compute_output_shape(input_shape)
        return self.output_shape

    def forward(self, x, training=False):
        """``x [batch, features]`` -> ``([batch, n, features], None)``: the backward pass needs no tape."""
        return np.repeat(x[:, np.newaxis], self.n, axis=1), None

    def backward(self, tape, dy, accumulate=False):
        """The gradient w.r.t. the input, ``[batch, features]``, from ``dy [batch, n, features]``."""
        return dy.sum(axis=1)


def _batch_input_shape(input_shape, batch_size, batch_input_shape):
    """The declared ``(batch, *input_shape)`` of a layer, or None when it declares none."""
    if batch_input_shape is not None:
        if input_shape is not None or batch_size is not None:
            raise ValueError(
                "pass either batch_input_shape=(batch, ...) or input_shape=(...) with an optional "
                f"batch_size, not both: got batch_input_shape={batch_input_shape}, "
                f"input_shape={input_shape}, batch_size={batch_size}"
            )
        return as_shape(batch_input_shape, "batch_input_shape")
    if input_shape is None:
        if batch_size is not None:
            raise ValueError(f"batch_size={batch_size} needs input_shape=(...) as well")
        return None
    return as_shape((batch_size, *as_shape(input_shape, "input_shape")), "batch_size")


def as_shape(shape, argument):
    """``shape`` as a tuple of positive ints and Nones, or a ValueError naming ``argument``."""
    try:
        dims = tuple(shape)
    except TypeError:
        dims = (shape,)
    if not dims or any(d is not None and (isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 1)
                       for d in dims):
        raise ValueError(f"{argument} must be a tuple of positive integers (or None), got {shape!r}")
    return tuple(None if d is None else int(d) for d in dims)
