"""Every LSTM the benchmarks time, behind one interface: fastlstm on each backend that works here,
and the baselines that are installed: Keras 3's ``keras.layers.LSTM`` under ``tf.function``, raw
TensorFlow (``tf.raw_ops.BlockLSTM``, TensorFlow's own fused LSTM op) and PyTorch's ``nn.LSTM``.

Each takes the same Keras-layout weights. ``prepare(inputs)`` builds, outside the timing, a
:class:`Runner` whose ``forward()`` computes the outputs [batch, time, units] and whose
``forward_backward()`` computes every gradient of the loss ``sum(outputs * dy)``: of the inputs
and of the three weights, as a training step needs them (an implementation asked for dx alone
could skip the weight gradients). The runner's ``outputs`` and ``gradients`` turn those results,
outside the timing, into NumPy arrays in Keras's layout, so every implementation's result can be
checked against the reference. Each runner finishes its work before returning (it synchronises a
GPU), so the time is the work.
"""
import functools
import importlib.metadata
import os
import platform
from typing import Callable, NamedTuple

import numpy as np

import fastlstm
from fastlstm import lstm_backward, lstm_forward


class Inputs(NamedTuple):
    x: np.ndarray  # [batch, time, input_dim]
    kernel: np.ndarray  # [input_dim, 4*units]
    recurrent_kernel: np.ndarray  # [units, 4*units]
    bias: np.ndarray  # [4*units]
    dy: np.ndarray  # [batch, time, units]: the loss is sum(outputs * dy)


def make_inputs(batch, time, input_dim, units, dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    scale = 1 / np.sqrt(units)
    return Inputs(
        rng.standard_normal((batch, time, input_dim)).astype(dtype),
        (scale * rng.standard_normal((input_dim, 4 * units))).astype(dtype),
        (scale * rng.standard_normal((units, 4 * units))).astype(dtype),
        (0.1 * rng.standard_normal(4 * units)).astype(dtype),
        rng.standard_normal((batch, time, units)).astype(dtype),
    )


class Gradients(NamedTuple):
    """The gradients of the loss, NumPy arrays in Keras's layout, each shaped like its input."""

    x: np.ndarray  # [batch, time, input_dim]
    kernel: np.ndarray  # [input_dim, 4*units]
    recurrent_kernel: np.ndarray  # [units, 4*units]
    bias: np.ndarray  # [4*units]


class Runner(NamedTuple):
    forward: Callable[[], object]
    forward_backward: Callable[[], object]
    outputs: Callable[[object], np.ndarray]  # forward()'s result as NumPy [batch, time, units]
    gradients: Callable[[object], Gradients]  # forward_backward()'s result as NumPy
    path: str  # the fastlstm kernel path where there is a choice, else "-"


class Implementation(NamedTuple):
    name: str  # "fastlstm-numpy", "keras", "tensorflow", "torch", ...
    baseline: bool
    device: str
    versions: dict
    dtypes: tuple
    prepare: Callable[[Inputs], Runner]


def _version(package):
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _fastlstm(status):
    backend = status.name
    if backend in ("cupy", "numba_cuda"):
        import cupy

        to_device, synchronize, to_numpy = cupy.asarray, cupy.cuda.get_current_stream().synchronize, cupy.asnumpy
        dtypes = (np.float32,)
        path = lambda cache: cache.saved[0].plan.path  # noqa: E731 (the launch plan of FusedLSTM)
    else:
        to_device, synchronize, to_numpy = (lambda a: a), (lambda: None), np.asarray
        dtypes = (np.float32, np.float64)
        path = lambda cache: "-"  # noqa: E731

    def prepare(inputs):
        x, kernel, recurrent_kernel, bias, dy = map(to_device, inputs)
        options = dict(return_sequences=True, backend=backend)

        def forward():
            outputs = lstm_forward(x, kernel, recurrent_kernel, bias, **options).outputs
            synchronize()
            return outputs

        def forward_backward():
            grads = lstm_backward(lstm_forward(x, kernel, recurrent_kernel, bias, **options).cache, dy)
            synchronize()
            return grads

        return Runner(forward, forward_backward, to_numpy,
                      lambda grads: Gradients(*map(to_numpy, grads[:4])),
                      path(lstm_forward(x, kernel, recurrent_kernel, bias, **options).cache))

    return Implementation(f"fastlstm-{backend}", False, status.detail, {"fastlstm": fastlstm.__version__},
                          dtypes, prepare)


def _keras():
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import tensorflow as tf

    def prepare(inputs):
        x, kernel, recurrent_kernel, bias, dy = (tf.constant(a) for a in inputs)
        layer = keras.layers.LSTM(recurrent_kernel.shape[0], return_sequences=True, dtype=inputs.x.dtype.name)
        layer.build(x.shape)
        layer.set_weights([inputs.kernel, inputs.recurrent_kernel, inputs.bias])
        weights = [w.value for w in layer.trainable_weights]  # the tf.Variables of kernel, recurrent_kernel, bias
        return _tf_runner(tf, layer, x, weights, dy, lambda a: a.numpy(),
                          lambda grads: Gradients(*(g.numpy() for g in grads)))

    return Implementation("keras", True, _tf_device(tf), {"keras": keras.__version__, "tensorflow": tf.__version__},
                          (np.float32, np.float64), prepare)


def _tensorflow():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    def prepare(inputs):
        batch, time, input_dim = inputs.x.shape
        units = inputs.recurrent_kernel.shape[0]
        x = tf.constant(np.ascontiguousarray(inputs.x.transpose(1, 0, 2)))  # time-major
        dy = tf.constant(np.ascontiguousarray(inputs.dy.transpose(1, 0, 2)))
        w = tf.constant(_icfo(np.concatenate([inputs.kernel, inputs.recurrent_kernel])))
        b = tf.constant(_icfo(inputs.bias))
        zeros, no_peephole = tf.zeros((batch, units), x.dtype), tf.zeros((units,), x.dtype)

        # BlockLSTM, not BlockLSTMV2 (which takes Keras's gate order): in TensorFlow 2.21 the
        # latter's gradient disagrees with finite differences of its own forward.
        def lstm(x):
            return tf.raw_ops.BlockLSTM(seq_len_max=tf.constant(time, tf.int64), x=x, cs_prev=zeros, h_prev=zeros,
                                        w=w, wci=no_peephole, wcf=no_peephole, wco=no_peephole, b=b,
                                        forget_bias=0.0, cell_clip=-1.0, use_peephole=False)[6]

        def batch_major(a):
            return np.transpose(a.numpy(), (1, 0, 2))

        def gradients(grads):
            dx, dw, db = grads
            dw = _icfo(dw.numpy())
            return Gradients(batch_major(dx), dw[:input_dim], dw[input_dim:], _icfo(db.numpy()))

        return _tf_runner(tf, lstm, x, [w, b], dy, batch_major, gradients)

    return Implementation("tensorflow", True, _tf_device(tf), {"tensorflow": tf.__version__}, (np.float32,), prepare)


def _torch():
    import torch

    def prepare(inputs):
        input_dim, units = inputs.kernel.shape[0], inputs.recurrent_kernel.shape[0]
        dtype = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}[inputs.x.dtype]
        lstm = torch.nn.LSTM(input_dim, units, batch_first=True, dtype=dtype)
        with torch.no_grad():  # PyTorch's gate order i, f, g, o is Keras's; its weights are transposed
            lstm.weight_ih_l0.copy_(torch.from_numpy(inputs.kernel.T.copy()))
            lstm.weight_hh_l0.copy_(torch.from_numpy(inputs.recurrent_kernel.T.copy()))
            lstm.bias_ih_l0.copy_(torch.from_numpy(inputs.bias))
            lstm.bias_hh_l0.zero_()
        x, dy = torch.from_numpy(inputs.x), torch.from_numpy(inputs.dy)

        def forward():
            with torch.no_grad():
                return lstm(x)[0]

        def forward_backward():
            lstm.zero_grad(set_to_none=True)  # as a training step does, else they accumulate
            leaf = x.detach().requires_grad_()
            (lstm(leaf)[0] * dy).sum().backward()
            return leaf.grad, lstm.weight_ih_l0.grad, lstm.weight_hh_l0.grad, lstm.bias_ih_l0.grad

        def gradients(grads):
            dx, dweight_ih, dweight_hh, dbias = (g.numpy() for g in grads)
            return Gradients(dx, dweight_ih.T, dweight_hh.T, dbias)

        return Runner(forward, forward_backward, lambda a: a.detach().numpy(), gradients, "-")

    return Implementation("torch", True, f"CPU, {torch.get_num_threads()} threads", {"torch": torch.__version__},
                          (np.float32, np.float64), prepare)


def _tf_runner(tf, lstm, x, weights, dy, outputs, gradients):
    """The two passes of a TensorFlow ``lstm(x) -> outputs``, each one ``tf.function``; the second
    differentiates with respect to x and then ``weights``."""

    @tf.function
    def forward():
        return lstm(x)

    @tf.function
    def forward_backward():
        with tf.GradientTape() as tape:
            tape.watch([x, *weights])
            loss = tf.reduce_sum(lstm(x) * dy)
        return tape.gradient(loss, [x, *weights])

    return Runner(forward, forward_backward, outputs, gradients, "-")


def _icfo(a):
    """Keras's gate order i, f, c, o (last axis) as BlockLSTM's i, c, f, o, and back."""
    i, f, c, o = np.split(a, 4, axis=-1)
    return np.concatenate([i, c, f, o], axis=-1)


def _tf_device(tf):
    gpus = tf.config.list_physical_devices("GPU")
    return f"GPU {gpus[0].name}" if gpus else f"CPU {platform.processor() or platform.machine()}"


def implementations():
    """Every implementation that can run here: fastlstm's working backends, then the baselines
    whose framework is installed."""
    found = [_fastlstm(status) for status in fastlstm.available_backends() if status.available]
    if _version("tensorflow-cpu") or _version("tensorflow"):
        found += [_keras(), _tensorflow()]
    if _version("torch"):
        found.append(_torch())
    return found


@functools.cache
def versions():
    return {package: _version(package) for package in ("fastlstm", "numpy", "numba", "cupy-cuda13x", "keras",
                                                       "tensorflow-cpu", "tensorflow", "torch") if _version(package)}
