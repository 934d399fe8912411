"""``Sequential``: a stack of layers trained with a loss and an optimizer, as ``keras.Sequential``."""
import sys
import time
import warnings

import numpy as np

from fastlstm.nn import losses
from fastlstm.nn.layers import LSTM, Dense, Layer, TimeDistributed, as_shape, unique_name
from fastlstm.nn.optimizers import Adam
from fastlstm.ops import DenseWeights, LSTMWeights, lstm_train_epoch

METRICS = ("accuracy", "acc", "categorical_accuracy")  # all categorical accuracy, as Keras resolves them
DEFAULT_BATCH_SIZE = 32  # Keras's, for batch_size=None


class History:
    """What ``fit`` returns, as ``keras.callbacks.History``: ``history`` maps 'loss' and each
    metric to its value after every epoch; ``epoch`` lists the epochs' indices."""

    def __init__(self):
        self.history = {}
        self.epoch = []

    def _append(self, epoch, logs):
        self.epoch.append(epoch)
        for name, value in logs.items():
            self.history.setdefault(name, []).append(value)


class Sequential:
    """A linear stack of layers, with ``keras.Sequential``'s training API.

    The model is built (its weights created) as soon as its input shape is known: when the
    first layer declares ``input_shape`` (or ``batch_input_shape``), when ``build`` is called, or
    else at the first ``fit``/``evaluate``/``predict``/``train_on_batch``.

    A layer instance may be used more than once, as in Keras (also once as itself and once
    wrapped in a :class:`TimeDistributed`): its uses share its weights (counted, listed and set
    once, at its first use), its gradient is the sum over its uses, and each use must get the
    number of input features the first one got.

    Args:
        layers: a list of layers (:class:`LSTM`, :class:`Dense`, :class:`TimeDistributed`,
            :class:`RepeatVector`) to add in order.
        name: the model's name; 'sequential', 'sequential_1', ... when None.
        dtype: 'float32' (default, as Keras) or 'float64': the dtype of the weights and of the
            computation; inputs are cast to it.

    Example:

    >>> model = Sequential([LSTM(32, input_shape=(1, 1)), Dense(26, activation="softmax")])
    >>> model.compile(loss="categorical_crossentropy", optimizer="adam", metrics=["accuracy"])
    >>> history = model.fit(x, y, epochs=500, batch_size=1, verbose=0)  # x [25, 1, 1], y [25, 26]
    """

    def __init__(self, layers=None, name=None, dtype="float32"):
        self.name = name or unique_name("sequential")
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
            raise TypeError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
        self.layers = []
        self.input_shape = None  # (batch or None, ...) once built
        self._output_shapes = []  # of each entry of layers, once built
        self.optimizer = self.loss = None
        self.metrics = []
        # Every weight (and gradient) lives in one flat buffer, the layers holding views into it,
        # so one optimizer step is a handful of vectorised operations, whatever the layer count.
        self._weights = self._grads = None
        for layer in layers or ():
            self.add(layer)

    # -- building ---------------------------------------------------------------------------

    def add(self, layer):
        """Appends ``layer`` to the stack (before ``compile``)."""
        if not isinstance(layer, Layer):
            raise TypeError(
                "layer must be a fastlstm.nn layer (LSTM, Dense, TimeDistributed, RepeatVector), "
                f"got {type(layer).__name__}"
            )
        if self.optimizer is not None:
            raise ValueError("add every layer before compile(): the optimizer is built for the weights there were")
        if self.layers and layer.batch_input_shape is not None and layer is not self.layers[0]:
            raise ValueError(
                f"only the first layer may declare input_shape/batch_input_shape, but {layer.name!r} "
                f"declares {layer.batch_input_shape} after {len(self.layers)} other layer(s)"
            )
        if self.input_shape is not None:
            used_before = layer.weight_owner in self._weight_owners()
            self._output_shapes.append(self._build_layer(layer, self.output_shape, used_before))
            self.layers.append(layer)
            self._pack()
            return
        self.layers.append(layer)
        if layer.batch_input_shape is not None:
            self.build(layer.batch_input_shape)

    def build(self, input_shape):
        """Creates the weights of every layer for input ``input_shape``, batch first: for example
        ``(None, time, features)``, or ``(batch, time, features)`` for a fixed batch size."""
        if self.input_shape is not None:
            raise ValueError(f"model {self.name!r} is already built, for input shape {self.input_shape}")
        if not self.layers:
            raise ValueError("the model has no layers to build: add() some first")
        declared = as_shape(input_shape, "input_shape")
        if len(declared) < 2 or declared[-1] is None:
            raise ValueError(
                f"input_shape must be (batch, ..., features) with a known feature count, got {input_shape}"
            )
        shapes = [declared]
        owners = self._weight_owners()
        for i, layer in enumerate(self.layers):
            shapes.append(self._build_layer(layer, shapes[-1], owners[i] in owners[:i]))
        self.input_shape = declared
        self._output_shapes = shapes[1:]
        self._pack()

    @property
    def output_shape(self):
        """The shape of the model's output, batch first; None until built."""
        return self._output_shapes[-1] if self._output_shapes else None

    def _build_layer(self, layer, input_shape, used_before):
        """Builds ``layer`` for ``input_shape`` and returns its output shape; a layer ``used_before``
        in this model keeps the weights of its first use, so it must get as many features."""
        if not used_before:
            return layer.build(input_shape, self.dtype)
        output_shape = layer.compute_output_shape(input_shape)
        if not layer.weights:
            return output_shape
        kernel = layer.weights[0]  # [input features, ...] in every layer with weights
        if input_shape[-1] != kernel.shape[0]:
            raise ValueError(
                f"layer {layer.name!r} is used more than once, so every use must get the features its weights "
                f"were built for: it is built for {kernel.shape[0]} input features (its kernel is {kernel.shape}), "
                f"got input shape {input_shape}"
            )
        return output_shape

    def _weight_owners(self):
        """The layer that holds the weights of each entry of ``layers`` (a wrapper's wrapped layer)."""
        return [layer.weight_owner for layer in self.layers]

    def _distinct_layers(self):
        """The layers holding the model's weights, each once (at its first use)."""
        return list(dict.fromkeys(self._weight_owners()))

    def _pack(self):
        layers = self._distinct_layers()
        self._weights = _flatten_into_views(layers, "weights", self.dtype)
        self._grads = _flatten_into_views(layers, "grads", self.dtype)

    def count_params(self):
        """The number of weights, a shared layer's counted once."""
        return sum(layer.count_params() for layer in self._distinct_layers())

    def summary(self, print_fn=None):
        """Prints the layers, their output shapes and parameter counts, as Keras does (a shared
        layer on a row per use, its parameters counted once in the totals).

        Args:
            print_fn: called with each line; ``print`` when None.
        """
        self._require_built("summary")
        print_fn = print_fn or print
        header = ("Layer (type)", "Output Shape", "Param #")
        rows = [(f"{layer.name} ({type(layer).__name__})", str(shape), f"{layer.count_params():,}")
                for layer, shape in zip(self.layers, self._output_shapes)]
        widths = [max(len(row[i]) for row in [header, *rows]) + 4 for i in range(3)]
        width = sum(widths)
        total = self.count_params()
        size = f"{total * self.dtype.itemsize / 1024:.2f} KB"
        print_fn(f'Model: "{self.name}"')
        print_fn("_" * width)
        print_fn(_row(header, widths))
        print_fn("=" * width)
        for row in rows:
            print_fn(_row(row, widths))
        print_fn("=" * width)
        print_fn(f"Total params: {total:,} ({size})")
        print_fn(f"Trainable params: {total:,} ({size})")
        print_fn("Non-trainable params: 0 (0.00 B)")
        print_fn("_" * width)

    # -- weights and state ------------------------------------------------------------------

    def get_weights(self):
        """Copies of every weight, in Keras 3's order: layer by layer (a shared layer once, at its
        first use), each layer's weights in its ``weight_names`` order (LSTM: kernel,
        recurrent_kernel, bias; Dense: kernel, bias)."""
        return [w.copy() for layer in self._distinct_layers() for w in layer.weights]

    def set_weights(self, weights):
        """Sets every weight from a list in ``get_weights``'s order and shapes (for example
        ``keras_model.get_weights()`` of the same architecture), cast to the model's dtype.

        Every array is checked before any is assigned, so a refused list changes nothing: a list
        of another length, an array of another shape, one that is not numeric, and one with NaN
        or inf values (or values beyond the model's dtype's range) are refused, as ``fit``
        refuses such data; neither has an opt-out."""
        self._require_built("set_weights")
        targets = [(f"{layer.name}.{name}", w)
                   for layer in self._distinct_layers() for name, w in zip(layer.weight_names, layer.weights)]
        weights = list(weights)
        if len(weights) != len(targets):
            raise ValueError(
                f"weights must be a list of {len(targets)} arrays "
                f"({', '.join(f'{name} {w.shape}' for name, w in targets)}), got {len(weights)} arrays"
            )
        values = []
        for i, ((name, w), v) in enumerate(zip(targets, weights)):
            argument = f"weights[{i}] ({name})"
            value = _as_dtype(v, argument, self.dtype)
            if value.shape != w.shape:
                raise ValueError(f"{argument} must have shape {w.shape}, got {value.shape}")
            _check_finite(value, v, argument)
            values.append(value)
        for (_, w), value in zip(targets, values):
            w[...] = value

    def reset_states(self):
        """Sets the state of every stateful layer to zeros."""
        for layer in self.layers:
            if layer.stateful:
                layer.reset_states()

    # -- training and inference -------------------------------------------------------------

    def compile(self, optimizer="adam", loss="categorical_crossentropy", metrics=None):
        """Configures the model for training.

        Args:
            optimizer: 'adam' (Keras's defaults) or an :class:`Adam` instance.
            loss: 'categorical_crossentropy' (the last layer must be a softmax ``Dense``, or a
                ``TimeDistributed`` one, whose logits the loss uses).
            metrics: None or a list of 'accuracy' (categorical accuracy, as Keras resolves it
                for this loss; 'acc' and 'categorical_accuracy' also work).
        """
        if isinstance(optimizer, str) and optimizer.lower() == "adam":
            optimizer = Adam()
        if not isinstance(optimizer, Adam):
            raise ValueError(f"optimizer must be 'adam' or an Adam instance, got {optimizer!r}")
        loss = losses.get(loss)
        metrics = list(metrics or [])
        for metric in metrics:
            if metric not in METRICS:
                raise ValueError(f"metrics must be a list of {METRICS}, got {metric!r} in {metrics}")
        if not self.layers or getattr(self.layers[-1], "activation", None) != "softmax":
            raise ValueError(
                f"loss {loss.name!r} needs the last layer to be Dense(..., activation='softmax') "
                "or TimeDistributed(Dense(..., activation='softmax')), "
                f"got {self.layers[-1].name if self.layers else 'no layers'!r}"
            )
        self.optimizer, self.loss, self.metrics = optimizer, loss, metrics

    def fit(self, x, y, batch_size=None, epochs=1, verbose=1, shuffle=True, callbacks=None):
        """Trains the model for ``epochs`` passes over ``x`` and ``y``.

        Args:
            x: inputs ``[samples, time, features]`` (as the first layer expects).
            y: one-hot targets ``[samples, classes]`` (``[samples, time, classes]`` for a
                sequence output).
            batch_size: samples per gradient step; None gives the model's fixed batch size if
                it has one, else 32 (as Keras). The last batch may be smaller, except for a
                stateful model.
            epochs: the number of passes over the data.
            verbose: 0 silent; 1 a line per epoch, rewritten in place when stdout is a
                terminal; 2 a line per epoch. 'auto' is 1.
            shuffle: shuffle the samples before every epoch (with NumPy's global random state).
            callbacks: a list of objects whose ``on_epoch_end(epoch, logs)`` is called after
                every epoch with the epoch's index and its logs (as ``history`` records them),
                as Keras calls a ``keras.callbacks.Callback``'s (its other hooks are not called).

        Returns:
            A :class:`History`: ``history['loss']`` (and ``history['accuracy']``) per epoch,
            each averaged over the epoch's samples.

        ``x`` and ``y`` with NaN or inf values, or values beyond the model's dtype's range, are
        refused (there is no opt-out, as for ``set_weights``). When an epoch's loss is NaN or
        inf, training has diverged: ``fit`` warns (a RuntimeWarning, once per call) and goes on,
        as Keras does.
        """
        self._require_compiled("fit")
        x, y = self._check_data(x, y)
        batches = self._batches(len(x), batch_size)
        epochs = _count(epochs, "epochs")
        verbose = _verbosity(verbose)
        callbacks = _callbacks(callbacks)
        history = History()
        diverged = False
        for epoch in range(epochs):
            start = time.perf_counter()
            order = np.random.permutation(len(x)) if shuffle else slice(None)
            logs = self._run(x[order], y[order], batches, train=True)
            history._append(epoch, logs)
            if not diverged and not np.isfinite(logs["loss"]):
                diverged = True
                warnings.warn(self._divergence(logs["loss"], epoch, epochs), RuntimeWarning, stacklevel=2)
            if verbose:
                seconds = time.perf_counter() - start
                _log(f"Epoch {epoch + 1}/{epochs} - {seconds:.2f}s {1e3 * seconds / len(batches):.2f}ms/step - "
                     + _format(logs), in_place=verbose == 1, last=epoch + 1 == epochs)
            for callback in callbacks:
                callback.on_epoch_end(epoch, logs)
        return history

    def _divergence(self, loss, epoch, epochs):
        """What a warning says of a loss that turned NaN or inf."""
        adam = self.optimizer
        return (
            f"training diverged: the loss is {loss} in epoch {epoch + 1}/{epochs}, and the weights are likely "
            f"no longer finite. With Adam(learning_rate={adam.learning_rate:g}, epsilon={adam.epsilon:g}): "
            "epsilon=0 divides 0 by 0 where a gradient is 0, and too large a learning rate overflows"
        )

    def evaluate(self, x, y, batch_size=None, verbose=0):
        """The loss and metrics over ``x`` and ``y`` (shapes as in ``fit``).

        Returns ``[loss, accuracy]`` (the loss alone when compiled without metrics), averaged
        over the samples. A stateful model starts from, and carries on, its current state.
        """
        self._require_compiled("evaluate")
        x, y = self._check_data(x, y)
        logs = self._run(x, y, self._batches(len(x), batch_size), train=False)
        if _verbosity(verbose):
            _log(_format(logs))
        return _results(logs)

    def predict(self, x, batch_size=None, verbose=0):
        """The model's output for ``x`` ``[samples, time, features]``: ``[samples, units]`` of
        the last layer (``[samples, time, units]`` for a sequence output). A stateful model
        starts from, and carries on, its current state."""
        x = self._check_x(x)
        start = time.perf_counter()
        starts = self._batches(len(x), batch_size)
        outputs = np.concatenate([self._forward(x[i:i + starts.step], training=False)[0] for i in starts])
        if _verbosity(verbose):
            _log(f"predict: {len(x)} samples in {time.perf_counter() - start:.2f}s")
        return outputs

    def train_on_batch(self, x, y):
        """One gradient step on the batch ``x``, ``y``; returns ``[loss, accuracy]`` (the loss
        alone without metrics) of the batch, as computed before the step."""
        self._require_compiled("train_on_batch")
        x, y = self._check_data(x, y)
        return _results(self._run(x, y, self._batches(len(x), len(x)), train=True))

    def _forward(self, x, training):
        """The output for ``x`` and the tape of each entry of ``layers`` (what its backward needs;
        the last one's also has the logits that the loss takes)."""
        tapes = []
        for layer in self.layers:
            x, tape = layer.forward(x, training)
            tapes.append(tape)
        return x, tapes

    def _backprop(self, x, y):
        """Forward and backward on a batch, leaving the gradients in every layer's ``grads``;
        returns (loss, y_pred)."""
        y_pred, tapes = self._forward(x, training=True)
        owners = self._weight_owners()
        last = len(self.layers) - 1
        loss = self.loss(y, tapes[last].logits)
        dx = self.loss.gradient(y, y_pred)
        for i in range(last, -1, -1):
            layer = self.layers[i]
            backward = layer.backward_from_logits if i == last else layer.backward
            # A shared layer's gradient sums over its uses: its last use writes it, earlier ones add.
            dx = backward(tapes[i], dx, accumulate=owners[i] in owners[i + 1:])
        return loss, y_pred

    def _run(self, x, y, batches, train):
        """One pass over the batches (as :meth:`_batches` gives them), training or not; the loss
        and metrics averaged over samples. Training takes the backend's fused pass where there is
        one for this model."""
        fused = self._train_fused(x, y, min(batches.step, len(x))) if train and self._fusable() else None
        total_loss, correct = self._run_batches(x, y, batches, train) if fused is None else fused
        logs = {"loss": total_loss / len(x)}
        for metric in self.metrics:
            logs[metric] = correct / (y.size // y.shape[-1])
        return logs

    def _run_batches(self, x, y, batches, train):
        """One pass, a layer at a time; (the sum of each batch's loss times its size, the number
        of correct predictions)."""
        total_loss = correct = 0
        for start in batches:
            batch = slice(start, start + batches.step)
            xb, yb = x[batch], y[batch]
            if train:
                loss, y_pred = self._backprop(xb, yb)
                self.optimizer.apply_gradients([(self._grads, self._weights)])
            else:
                y_pred, tapes = self._forward(xb, training=False)
                loss = self.loss(yb, tapes[-1].logits)
            total_loss += loss * len(xb)
            if self.metrics:
                correct += int((y_pred.argmax(axis=-1) == yb.argmax(axis=-1)).sum())
        return total_loss, correct

    def _fusable(self):
        """Whether this model is one a fused training pass trains: an LSTM, then the softmax Dense
        on its last output or on every step's (return_sequences; the Dense as it is, applied per
        step, or in a TimeDistributed), with categorical cross-entropy and Adam."""
        if len(self.layers) != 2 or not isinstance(self.optimizer, Adam) \
                or not isinstance(self.loss, losses.CategoricalCrossentropy):
            return False
        lstm, head = self.layers
        dense = head.layer if isinstance(head, TimeDistributed) else head
        return isinstance(lstm, LSTM) and isinstance(dense, Dense)

    def _train_fused(self, x, y, batch_size):
        """The pass of :meth:`_run_batches` in one call of the backend's fused training pass
        (:func:`fastlstm.ops.lstm_train_epoch`): the same steps on the same weights, gradients,
        Adam moments and LSTM state. None where the backend has none."""
        lstm, dense = self.layers
        adam = self.optimizer
        try:
            result = lstm_train_epoch(
                x, y, batch_size, LSTMWeights(*lstm.weights), DenseWeights(*dense.weights),
                LSTMWeights(*lstm.grads), DenseWeights(*dense.grads), adam.state(self._weights, self._grads),
                lstm.states if lstm.stateful else None, activation=lstm.activation,
                recurrent_activation=lstm.recurrent_activation, go_backwards=lstm.go_backwards, backend=lstm.backend,
            )
        except NotImplementedError:
            return None
        adam.iterations += len(range(0, len(x), batch_size))
        return result

    # -- argument checks ----------------------------------------------------------------------

    def _require_built(self, method):
        if self.input_shape is None:
            raise ValueError(
                f"model {self.name!r} is not built yet, so {method}() cannot run: give its first layer "
                "input_shape= (or batch_input_shape=), call build(input_shape), or fit it on data first"
            )

    def _require_compiled(self, method):
        if self.optimizer is None:
            raise ValueError(f"call compile() before {method}(): model {self.name!r} has no loss and optimizer yet")

    def _check_x(self, x):
        x = _float_array(x, "x", self.dtype)
        if self.input_shape is None:
            self.build((None, *x.shape[1:]))
        _check_shape(x, self.input_shape, "x", "input")
        return x

    def _check_data(self, x, y):
        x = self._check_x(x)
        y = _float_array(y, "y", self.dtype)
        if len(y) != len(x):
            raise ValueError(f"x and y must hold the same number of samples, got {len(x)} in x and {len(y)} in y")
        output_shape = self.output_shape
        hint = (f" (one-hot encode integer labels with fastlstm.utils.to_categorical(y, {output_shape[-1]}))"
                if y.ndim == 1 else "")
        _check_shape(y, output_shape, "y", "output", hint)
        return x, y

    def _batches(self, n, batch_size):
        """The batches of ``n`` samples as the range of their first samples, its step the batch
        size (the last batch may be shorter); refuses a batch size a stateful layer cannot take."""
        if batch_size is None:
            batch_size = self.input_shape[0] or DEFAULT_BATCH_SIZE
        batch_size = _count(batch_size, "batch_size", low=1)
        for layer in self.layers:
            if layer.stateful:
                for size in {min(batch_size, n), n % batch_size} - {0}:
                    layer.check_batch_size(size)
        return range(0, n, batch_size)


def _flatten_into_views(layers, attribute, dtype):
    """Copies the arrays of ``layer.<attribute>`` of every layer into one flat array and puts
    views into it in their place; returns the flat array."""
    arrays = [a for layer in layers for a in getattr(layer, attribute)]
    flat = np.concatenate([a.ravel() for a in arrays]) if arrays else np.empty(0, dtype)
    offset = 0
    for layer in layers:
        views = []
        for a in getattr(layer, attribute):
            views.append(flat[offset:offset + a.size].reshape(a.shape))
            offset += a.size
        setattr(layer, attribute, views)
    return flat


def _float_array(a, name, dtype):
    """``a`` as a finite array of ``dtype`` with at least one sample, or an error naming ``name``."""
    array = _as_dtype(a, name, dtype)
    if array.ndim == 0 or len(array) == 0:
        raise ValueError(f"{name} must hold at least one sample, got shape {array.shape}")
    _check_finite(array, a, name)
    return array


def _as_dtype(a, name, dtype):
    try:
        with np.errstate(over="ignore"):  # _check_finite reports an overflow, naming the argument
            return np.asarray(a, dtype=dtype)
    except (TypeError, ValueError, OverflowError) as e:
        raise TypeError(f"{name} must be a numeric array, got {type(a).__name__} ({e})") from e


def _check_finite(array, original, name):
    """Refuses NaN or inf in ``array``, ``original`` cast to the model's dtype: NaN or inf in the
    data, or values beyond the dtype's range, which the cast made inf."""
    if np.isfinite(array).all():
        return
    wide = np.asarray(original, dtype=np.float64)
    overflowed = np.isinf(array) & np.isfinite(wide)
    if overflowed.any():
        raise ValueError(
            f"{name} has values of magnitude up to {np.abs(wide[overflowed]).max():.3g}, beyond {array.dtype}'s "
            f"range ({np.finfo(array.dtype).max:.2g}): the model's dtype is {array.dtype}"
        )
    raise ValueError(
        f"{name} contains {int(np.isnan(array).sum())} NaN and {int(np.isinf(array).sum())} inf values"
    )


def _check_shape(a, expected, name, which, hint=""):
    """Refuses ``a`` unless it is ``[samples, ...]`` matching ``expected`` (None matches any size)."""
    if a.ndim != len(expected) or any(e is not None and e != d for e, d in zip(expected[1:], a.shape[1:])):
        per_sample = ", ".join("any" if e is None else str(e) for e in expected[1:])
        raise ValueError(
            f"{name} must have shape (samples, {per_sample}) to match the model's {which} shape "
            f"{expected}, got shape {a.shape}{hint}"
        )


def _count(value, argument, low=0):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{argument} must be an integer >= {low}, got {value!r}")
    return int(value)


def _callbacks(callbacks):
    callbacks = [] if callbacks is None else list(callbacks)
    for callback in callbacks:
        if not callable(getattr(callback, "on_epoch_end", None)):
            raise TypeError(
                f"callbacks must be objects with an on_epoch_end(epoch, logs) method, got {type(callback).__name__}"
            )
    return callbacks


def _verbosity(verbose):
    if verbose == "auto":
        return 1
    if verbose not in (0, 1, 2):
        raise ValueError(f"verbose must be 0, 1, 2 or 'auto', got {verbose!r}")
    return verbose


def _row(cells, widths):
    return " " + "".join(cell.ljust(width) for cell, width in zip(cells, widths)).rstrip()


def _format(logs):
    return " - ".join(f"{name}: {value:.4f}" for name, value in logs.items())


def _results(logs):
    values = list(logs.values())
    return values if len(values) > 1 else values[0]


def _log(line, in_place=False, last=True):
    """Writes ``line`` to stdout; with ``in_place`` on a terminal, over the previous line."""
    stream = sys.stdout
    if in_place and stream.isatty():
        stream.write(f"\r{line}\x1b[K" + ("\n" if last else ""))
    else:
        stream.write(line + "\n")
    stream.flush()
