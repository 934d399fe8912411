"""The functional core: ``lstm_forward`` and ``lstm_backward`` with Keras 3's conventions, and
``lstm_train_epoch``, a backend's fused training pass of an LSTM + Dense(softmax) model (on the
LSTM's last output, or on every step's).

Shapes: ``x`` is ``[batch, time, input_dim]``; the weights are stored exactly as Keras 3 stores
them, ``kernel [input_dim, 4*units]``, ``recurrent_kernel [units, 4*units]``, ``bias [4*units]``,
gates in the order i, f, c, o::

    z_t = x_t @ kernel + h_{t-1} @ recurrent_kernel + bias
    i, f, o = recurrent_activation(z_i, z_f, z_o);  g = activation(z_c)
    c_t = f * c_{t-1} + i * g;  h_t = o * activation(c_t)

Each function checks its arguments, then hands the work to a backend (:mod:`fastlstm.backends`).
Stateful use is the caller passing one call's ``h, c`` as the next call's ``h0, c0``; gradients
do not flow from one call into the previous one (truncated BPTT, as Keras does).
"""
from typing import Any, NamedTuple

import numpy as np

from fastlstm.activations import activation_name
from fastlstm.backends import AdamState, DenseWeights, LSTMOptions, LSTMWeights, get_backend, resolve

__all__ = ["AdamState", "DenseWeights", "LSTMCache", "LSTMGradients", "LSTMResult", "LSTMWeights",
           "lstm_backward", "lstm_forward", "lstm_train_epoch"]

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
DLPACK_CPU = 1  # kDLCPU: the device type of host memory in DLPack's __dlpack_device__


class LSTMCache(NamedTuple):
    """What ``lstm_backward`` needs from one ``lstm_forward`` call."""

    backend: Any
    options: LSTMOptions
    output_shape: tuple
    state_shape: tuple
    dtype: np.dtype
    saved: Any


class LSTMResult(NamedTuple):
    """``outputs``: ``[batch, time, units]`` with ``return_sequences``, else ``[batch, units]``
    (the last step); ``h``, ``c``: the final state, ``[batch, units]`` each; ``cache``: for
    :func:`lstm_backward`, None from ``lstm_forward(keep_cache=False)``."""

    outputs: Any
    h: Any
    c: Any
    cache: LSTMCache


class LSTMGradients(NamedTuple):
    """Gradients, each shaped like its input; ``bias`` is None when the forward had none."""

    x: Any
    kernel: Any
    recurrent_kernel: Any
    bias: Any
    h0: Any
    c0: Any


def lstm_forward(
    x,
    kernel,
    recurrent_kernel,
    bias=None,
    h0=None,
    c0=None,
    *,
    activation="tanh",
    recurrent_activation="sigmoid",
    return_sequences=False,
    go_backwards=False,
    check_finite=True,
    keep_cache=True,
    backend="auto",
):
    """Run an LSTM layer over ``x`` ``[batch, time, input_dim]``.

    Args:
        kernel: ``[input_dim, 4*units]``; recurrent_kernel: ``[units, 4*units]``;
            bias: ``[4*units]`` or None (Keras's ``use_bias=False``).
        h0, c0: initial state ``[batch, units]``; zeros where None.
        activation: for the cell input and the cell state: 'tanh' (default), 'sigmoid',
            'hard_sigmoid', 'hard_sigmoid_keras2', 'relu', 'softsign', 'linear' (or None).
        recurrent_activation: for the i, f, o gates, from the same list; default 'sigmoid'.
            'hard_sigmoid' is Keras 3's ``clip(x/6 + 1/2, 0, 1)``; 'hard_sigmoid_keras2' is
            Keras 2's ``clip(0.2x + 1/2, 0, 1)``, the tutorial's 2017 default.
        return_sequences: return every step's output, not only the last.
        go_backwards: process the time steps in reverse; outputs come in processing order,
            as Keras returns them.
        check_finite: refuse NaN or inf in any input with a ValueError (default). Pass False to
            skip the check (and its cost) and let NaN propagate.
        keep_cache: keep what :func:`lstm_backward` needs (default). False, for inference: the
            result's ``cache`` is None, and a backend that can saves the work of keeping it
            (numba_cpu writes only the outputs and the final state).
        backend: 'auto' (the best backend that works here) or a name from
            ``fastlstm.available_backends()``.

    Returns:
        LSTMResult ``(outputs, h, c, cache)``; pass ``cache`` to :func:`lstm_backward` (None
        with ``keep_cache=False``).

    Arrays: NumPy arrays, or anything on the CPU with ``__dlpack__`` or ``__array__`` (PyTorch
    tensors, JAX arrays, ..., read without a copy where they allow it), or nested lists of numbers;
    the GPU backends also take device arrays as they are. Results are NumPy arrays (device arrays
    from device arrays). Anything else (None for x, a ragged list) is refused naming the argument.
    All arrays must share one dtype, float32 or float64, and the work is done in it. A sequence
    must have at least one time step: with none there is no last output to return. ``x`` needs
    at least one sample and one feature, and the layer at least one unit (as Keras requires).
    """
    impl = get_backend(backend)
    prepare = _preparer(impl)
    x, kernel, recurrent_kernel = prepare(x, "x"), prepare(kernel, "kernel"), prepare(recurrent_kernel, "recurrent_kernel")
    bias = None if bias is None else prepare(bias, "bias")  # apart, not in a loop: a batch-1 call is all overhead
    h0 = None if h0 is None else prepare(h0, "h0")
    c0 = None if c0 is None else prepare(c0, "c0")
    if x.ndim != 3:
        raise ValueError(f"x must be [batch, time, input_dim] (3-D), got shape {x.shape}")
    batch, time, input_dim = x.shape
    if batch < 1 or time < 1 or input_dim < 1:
        raise ValueError(
            f"x must hold at least one sample, one time step and one feature, got shape {x.shape} "
            "(an LSTM over zero time steps has no output)"
        )
    _check_float(x, "x")
    kernel = _checked(kernel, "kernel", x.dtype, ndim=2)
    recurrent_kernel = _checked(recurrent_kernel, "recurrent_kernel", x.dtype, ndim=2)
    units = recurrent_kernel.shape[0]
    if units < 1 or recurrent_kernel.shape != (units, 4 * units):
        raise ValueError(
            f"recurrent_kernel must be [units, 4*units] with at least one unit, got shape {recurrent_kernel.shape}"
        )
    if kernel.shape != (input_dim, 4 * units):
        raise ValueError(
            f"kernel must be [input_dim, 4*units] = ({input_dim}, {4 * units}) for x of shape "
            f"{x.shape} and {units} units, got shape {kernel.shape}"
        )
    if bias is not None:
        bias = _checked(bias, "bias", x.dtype, shape=(4 * units,))
    state_shape = (batch, units)
    if h0 is not None:
        h0 = _checked(h0, "h0", x.dtype, shape=state_shape)
    if c0 is not None:
        c0 = _checked(c0, "c0", x.dtype, shape=state_shape)
    options = _options(activation, recurrent_activation, return_sequences, go_backwards)
    if check_finite:
        all_finite = _hook(impl, "all_finite", _all_finite)  # a backend may check faster
        if not (all_finite(x) and all_finite(kernel) and all_finite(recurrent_kernel)  # no loop: see above
                and (bias is None or all_finite(bias)) and (h0 is None or all_finite(h0))
                and (c0 is None or all_finite(c0))):
            _refuse_non_finite(all_finite, x=x, kernel=kernel, recurrent_kernel=recurrent_kernel, bias=bias,
                               h0=h0, c0=c0)
    if h0 is None or c0 is None:
        zeros = _zeros_like(x, state_shape)  # one array for both: backends only read states
        h0 = zeros if h0 is None else h0
        c0 = zeros if c0 is None else c0

    if not keep_cache:
        infer = _hook(impl, "infer", None)
        if infer is not None:
            return LSTMResult(*infer(x, kernel, recurrent_kernel, bias, h0, c0, options), None)
    outputs, h, c, saved = impl.forward(x, kernel, recurrent_kernel, bias, h0, c0, options)
    cache = LSTMCache(impl, options, tuple(outputs.shape), state_shape, x.dtype, saved) if keep_cache else None
    return LSTMResult(outputs, h, c, cache)


def lstm_backward(cache, dy=None, dhT=None, dcT=None):
    """Gradients of a loss with respect to every input of the ``lstm_forward`` that made ``cache``.

    Args:
        dy: gradient of the loss w.r.t. ``outputs`` (same shape), or None for zero.
        dhT, dcT: gradients w.r.t. the final state ``h``, ``c`` ``[batch, units]``, or None.

    Returns:
        LSTMGradients ``(x, kernel, recurrent_kernel, bias, h0, c0)``.
    """
    if cache is None:
        raise TypeError("cache must be the LSTMCache of an lstm_forward result, got None (the cache of "
                        "lstm_forward(keep_cache=False), which keeps nothing to differentiate)")
    if not isinstance(cache, LSTMCache):
        raise TypeError(f"cache must be the LSTMCache of an lstm_forward result, got {type(cache).__name__}")
    prepare = _preparer(cache.backend)
    dy, dhT, dcT = [None if a is None else prepare(a, name) for a, name in ((dy, "dy"), (dhT, "dhT"), (dcT, "dcT"))]
    if dy is not None:
        dy = _checked(dy, "dy", cache.dtype, shape=cache.output_shape)
    if dhT is not None:
        dhT = _checked(dhT, "dhT", cache.dtype, shape=cache.state_shape)
    if dcT is not None:
        dcT = _checked(dcT, "dcT", cache.dtype, shape=cache.state_shape)
    return LSTMGradients(*cache.backend.backward(cache.saved, dy, dhT, dcT))


def lstm_train_epoch(x, y, batch_size, lstm, dense, lstm_grads, dense_grads, adam, state=None, *,
                     activation="tanh", recurrent_activation="sigmoid", go_backwards=False, backend="auto"):
    """One training epoch of an LSTM, then a Dense layer with softmax on its last output or on
    every step's output, with categorical cross-entropy and Adam, in the backend's fused training
    pass: per batch the forward pass, the loss, the backward pass and one Adam step, with Keras 3's
    rules.

    Args:
        x: ``[samples, time, features]`` and y, in the epoch's order: one-hot ``[samples,
            classes]``, the targets of the LSTM's last output, or ``[samples, time, classes]``,
            those of every step's output (``return_sequences``, the outputs in processing order
            as :func:`lstm_forward` returns them; the loss averaged over samples and steps). The
            batches are consecutive runs of ``batch_size`` samples (the last may be shorter).
        lstm: the LSTM's :class:`LSTMWeights`, ``kernel [features, 4*units]``, ``recurrent_kernel
            [units, 4*units]``, ``bias [4*units]`` or None; dense: the Dense layer's
            :class:`DenseWeights`, ``kernel [units, classes]``, ``bias [classes]``;
            lstm_grads, dense_grads: where their gradients go, shaped alike.
        adam: the :class:`AdamState`; every array of the four above is a view into its
            ``weights`` or ``gradients``, so that the Adam step on those updates them.
        state: ``(h, c)``, each ``[batch_size, units]``, the state of a stateful LSTM, which every
            batch starts from and carries on in place; None for a stateless one (zeros).
        activation, recurrent_activation, go_backwards, backend: as for :func:`lstm_forward`.

    Returns:
        ``(total_loss, correct)``: the sum over batches of the batch's mean loss times its size,
        and the number of outputs (samples, or samples times steps) whose most probable class is
        the target's. The weights, gradients, ``m``, ``v`` and the state are updated in place, one
        Adam step per batch; the caller adds the steps to its count of ``iterations``.

    Raises:
        ValueError: y is neither ``[samples, classes]`` nor ``[samples, time, classes]``.
        NotImplementedError: the backend has no fused training pass. The caller then trains a
            batch at a time with :func:`lstm_forward` and :func:`lstm_backward`, as Keras's LSTM
            layer takes its general path when ``backend.lstm`` raises it.

    The arrays are the backend's to check (a stateful state of another batch size is refused
    with a ValueError); the model that owns them (``fastlstm.nn.Sequential``) checked its data.
    """
    train_epoch = _hook(get_backend(backend), "train_epoch", None)
    if train_epoch is None:
        raise NotImplementedError(f"backend {resolve(backend)!r} has no fused training pass")
    if not (np.ndim(y) == 2 or np.ndim(y) == 3 and np.shape(y)[1] == np.shape(x)[1]):
        raise ValueError(f"y must be [samples, classes] or [samples, time, classes] for x of shape "
                         f"{np.shape(x)}, got shape {np.shape(y)}")
    options = _options(activation, recurrent_activation, np.ndim(y) == 3, go_backwards)
    return train_epoch(x, y, batch_size, lstm, dense, lstm_grads, dense_grads, adam, state, options)


_OPTIONS = {}  # (activation, recurrent_activation, return_sequences, go_backwards): LSTMOptions


def _options(activation, recurrent_activation, return_sequences, go_backwards):
    """The call's LSTMOptions, the activations' names checked, made once for each set of arguments
    (a few hundred sets at most: only known names and None are kept, the rest refused), as a
    batch-1 call is all overhead."""
    key = (activation, recurrent_activation, bool(return_sequences), bool(go_backwards))
    try:
        return _OPTIONS[key]
    except (KeyError, TypeError):  # not made yet, or an unhashable activation, which activation_name refuses
        options = _OPTIONS[key] = LSTMOptions(activation_name(activation, "activation"),
                                              activation_name(recurrent_activation, "recurrent_activation"),
                                              *key[2:])
        return options


def _as_array(a, name):
    """``a`` as a NumPy array, without a copy where it can be: a NumPy array as it is, an array on
    the CPU that exposes ``__dlpack__`` (PyTorch, JAX, ...) through ``np.from_dlpack``, anything
    else with ``__array__``, and nested lists of numbers, through ``np.asarray``. Refuses, naming
    the argument, what is none of these (None, a ragged list, a PyTorch tensor that requires grad)."""
    if type(a) is np.ndarray:
        return a
    try:
        array = np.from_dlpack(a) if hasattr(a, "__dlpack__") else np.asarray(a)
    except (TypeError, ValueError, RuntimeError, BufferError) as e:  # what the producer or NumPy raises
        raise ValueError(f"{name} cannot be read as an array on the CPU: {e}") from e
    if array.dtype == object:
        raise TypeError(f"{name} must be an array (NumPy, or anything with __array__ or __dlpack__, or nested "
                        f"lists of numbers), got {type(a).__name__}")
    return array


def _on_device(a):
    """Whether ``a`` is an array in GPU memory (CuPy, Numba, PyTorch, JAX, ... on a GPU)."""
    return hasattr(a, "__cuda_array_interface__") or (
        hasattr(a, "__dlpack_device__") and a.__dlpack_device__()[0] != DLPACK_CPU)


def _hook(impl, name, default):
    """The backend module's optional function ``name``, else ``default``. Not getattr(impl, name,
    default), which raises and catches an AttributeError for a module without it, a cost that
    shows in the per-call overhead (bench/test_kernels.py at 1, 1, 1, 50)."""
    return vars(impl).get(name, default)


def _preparer(impl):
    """What makes an argument ``(a, name)`` the array the backend ``impl`` works on: :func:`_as_array`;
    for a GPU backend (one with its own ``prepare``, which views device arrays as its own), device
    arrays go to ``prepare`` as they are and the others through :func:`_as_array` first."""
    backend_prepare = _hook(impl, "prepare", None)
    if backend_prepare is None:
        return _as_array
    return lambda a, name: backend_prepare(a if _on_device(a) else _as_array(a, name))


def _zeros_like(a, shape):
    """Zeros of ``a``'s array type (NumPy, CuPy, ...) and dtype."""
    if type(a) is np.ndarray:
        return np.zeros(shape, a.dtype)  # the same as below, without the cost of zeros_like's dispatch
    return np.zeros_like(a, shape=shape)


def _check_float(a, name):
    if np.dtype(a.dtype) not in FLOAT_DTYPES:
        raise TypeError(f"{name} must have dtype float32 or float64, got {a.dtype}")


def _checked(a, name, dtype, ndim=None, shape=None):
    if a.dtype is not dtype and np.dtype(a.dtype) != dtype:  # `is`: the common case, at no cost
        _check_float(a, name)
        raise TypeError(
            f"{name} has dtype {a.dtype} but x has {dtype}: all arrays must share one dtype "
            f"(cast with .astype(np.{dtype}))"
        )
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {a.shape}")
    if shape is not None and tuple(a.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(a.shape)}")
    return a


def _all_finite(a):
    return bool(np.isfinite(a).all())


def _refuse_non_finite(all_finite, **arrays):
    """Raises the ValueError for the first of ``arrays`` (None for an absent one) that is not
    ``all_finite``."""
    name, a = next((name, a) for name, a in arrays.items() if a is not None and not all_finite(a))
    n_nan, n_inf = int(np.isnan(a).sum()), int(np.isinf(a).sum())
    raise ValueError(
        f"{name} contains {n_nan} NaN and {n_inf} inf values; an LSTM cannot continue from "
        "them (pass check_finite=False to skip this check)"
    )
