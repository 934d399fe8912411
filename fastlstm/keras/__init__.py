"""``fastlstm.keras.LSTM``: Keras 3's ``LSTM`` layer, trained through fastlstm's fused kernels.

A model swaps one import and nothing else::

    from fastlstm.keras import LSTM  # was: from keras.layers import LSTM

The layer subclasses ``keras.layers.LSTM``: the constructor, weights, names, ``get_config``,
``return_state``, ``stateful`` and masks are Keras's own. It replaces only the loop over time
(``inner_loop``) with :func:`fastlstm.lstm_forward`, and its gradient with
:func:`fastlstm.lstm_backward`: on TensorFlow, PyTorch and JAX, each through a custom-gradient
operation of its own (:mod:`.bridges`) around the work on the host (:mod:`.fused_call`). Where a
training step's time goes on each backend, the kernels against the crossing between the framework
and fastlstm, is measured in the section "Called from Keras" of the kernels' design notes
(``kernels/README.md`` in the source tree).

Input dropout is applied to the sequence before the fused call, as Keras's cuDNN path applies it.
Integer and boolean sequences are computed in the layer's compute dtype, as Keras computes them.
Masks of any pattern give Keras's answer (see :class:`FusedCall`).

Under a 16-bit dtype policy (``mixed_float16``, ``mixed_bfloat16``, ``float16``, ``bfloat16``)
fastlstm computes in float32: the sequence and the initial state are cast from the compute dtype
to float32, the weights are read as their variables hold them (float32 under a mixed policy, not
the 16-bit copies that Keras's autocasting gives a layer's call; cast to float32 where the
variables are 16-bit too), and the outputs and final states are cast back to the compute dtype.
The casts are ``keras.ops.cast``, so each backend's autodiff carries the gradients through them.
The results are the float32 computation rounded once to 16 bits: closer to float32 than Keras's
own 16-bit computation.

A call that fastlstm cannot run (``recurrent_dropout`` in training, ``unroll=True``,
``use_cudnn=True``, ``implementation=1`` with dropout in training, an activation it does not
have, a compute dtype that is not a float, another Keras backend) uses Keras's own
implementation, after one warning per reason.

Shapes: sequences ``[batch, time, features]``, states ``[batch, units]``, outputs
``[batch, time, units]`` with ``return_sequences``, else ``[batch, units]``.
"""
import functools
import warnings

import keras
from keras.src.backend import AutocastScope  # Keras exports no public way to read a variable uncast

from fastlstm.backends import available_backends
from fastlstm.keras.bridges import FRAMEWORKS
from fastlstm.keras.fused_call import FusedCall, Options

__all__ = ["LSTM", "FusedCall", "reset_states", "with_batch_size"]

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
# The dtype that fastlstm computes in, by the layer's compute dtype: its kernels take float32 and
# float64 only, so 16-bit floats are computed in float32 and cast at the layer's boundary.
FUSED_DTYPES = {"float16": "float32", "bfloat16": "float32", "float32": "float32", "float64": "float64"}


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
    ``keras.layers.LSTM`` takes: integer and boolean ones are cast to the compute dtype after
    input dropout, as Keras casts them.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if keras.backend.backend() != "jax":
            # XLA has no form of fastlstm's TensorFlow operations; torch.compile would break its graph.
            self.supports_jit = False

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
        sequences = _cast(sequences, self.compute_dtype)
        dtype = FUSED_DTYPES[self.compute_dtype]
        # Under a mixed policy Keras casts a variable read inside a layer's call to the compute
        # dtype; the fused call takes the variables' own (float32) values instead.
        with AutocastScope(None):
            weights = [cell.kernel.value, cell.recurrent_kernel.value,
                       cell.bias.value if cell.use_bias else keras.ops.zeros((4 * cell.units,), dtype)]
        options = Options(ACTIVATIONS[cell.activation], ACTIVATIONS[cell.recurrent_activation],
                          self.return_sequences, self.go_backwards, self.zero_output_for_mask, backend)
        # keras.ops.cast: each backend's autodiff carries the gradients through these casts.
        inputs = [_cast(a, dtype) for a in (sequences, *weights, *initial_state)]
        results = FRAMEWORKS[keras.backend.backend()](options, training, *inputs, mask)
        outputs, h, c = (_cast(a, self.compute_dtype) for a in results)
        if self.return_sequences:
            return outputs[:, -1], outputs, [h, c]
        return outputs, outputs[:, None], [h, c]  # indexing: keras.ops.expand_dims costs an op call more

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
            ("dtype", self.dtype_policy.name, self.compute_dtype not in FUSED_DTYPES),
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


def _cast(a, dtype):
    """keras.ops.cast(a, dtype), or a itself where it has that dtype already: a cast that changes
    nothing still costs an eager call on PyTorch (about 10 us, nine of them a call)."""
    return a if _dtype_name(a.dtype) == dtype else keras.ops.cast(a, dtype)


@functools.cache
def _dtype_name(dtype):
    """Keras's name of a backend's dtype object, once per dtype: standardize_dtype takes about
    10 us on PyTorch's."""
    return keras.backend.standardize_dtype(dtype)


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
