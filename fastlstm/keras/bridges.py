"""The fused call as an operation of each Keras backend, with its gradient: ``FRAMEWORKS[name](options,
training, x, kernel, recurrent_kernel, bias, h0, c0, mask)`` returns ``(outputs, h, c)`` as the
backend's tensors.

- TensorFlow: ``tf.custom_gradient`` around the compiled operations of :mod:`.tf_lstm` where
  numba_cpu runs the call in one compiled call without a mask (where the batch is known only
  when the step runs, a ``tf.cond`` picks them or the host work then), else around
  ``tf.numpy_function``; so the step stays one graph inside ``fit``'s ``tf.function`` (not under
  XLA, which has no form of either). The compiled forward returns its activations as tensors for
  the gradient; a training call on the host keeps them there for the gradient's callback, which
  finds them by a key the forward returns (:mod:`.fused_call`); a call outside training keeps no
  cache (``lstm_forward(keep_cache=False)``) and runs the forward again if differentiated.
- JAX: ``jax.custom_vjp`` around ``jax.ffi.ffi_call``, under ``jax.jit`` too, so the call is an
  operation of the compiled XLA program, on XLA's own buffers (``jax.pure_callback`` copied every
  array and cost about 0.3 ms more a call). A call without a mask below the shapes numba_cpu runs
  on its threads goes to compiled targets (:mod:`.xla_lstm`), the activations passed as residuals; any other
  runs the host work as a Python target (:mod:`.xla_ffi`), whose forward rule keeps its
  activations as TensorFlow's training call does. Where JAX computes on another device than the
  CPU, the host work is a ``jax.pure_callback`` instead.
- PyTorch: a ``torch.autograd.Function`` holding the call in its context; with gradients off
  (``torch.no_grad()``, as in predict) the call alone, keeping no cache. CPU tensors go to the
  CPU backends; CUDA tensors reach the ``cupy`` (or ``numba_cuda``) backend through DLPack,
  without a copy.

Shapes: ``x [batch, time, features]``, states ``[batch, units]``, ``mask [batch, time]`` or
None; outputs ``[batch, time, units]`` with ``return_sequences``, else ``[batch, units]``.
"""
import functools

import keras
import numpy as np

from fastlstm.keras.fused_call import FusedCall, host_backward, host_forward


def _tensorflow(options, training, x, kernel, recurrent_kernel, bias, h0, c0, mask):
    import tensorflow as tf

    # Variables (the weights, a stateful layer's state) are read here: the custom gradient takes tensors.
    inputs = [tf.convert_to_tensor(a) for a in (x, kernel, recurrent_kernel, bias, h0, c0)]
    masks = [] if mask is None else [tf.cast(mask, tf.bool)]
    dtype, shapes = inputs[0].dtype, _result_shapes(options, inputs[0].shape, inputs[2].shape[0])
    operations, on_host = _tensorflow_route(options, mask, inputs)
    attributes = _coded(options)

    # Both ways give (outputs, h_T, c_T, key, h, c, gates, act_c): the host work's kept call, or
    # the compiled forward's activations, the other's part empty, so that tf.cond can pick either.
    def host_forward_call(inputs):
        *results, key = tf.numpy_function(functools.partial(host_forward, options, bool(training)),
                                          [*inputs, *masks], [dtype] * 3 + [tf.int32], stateful=False)
        for result, shape in zip(results, shapes):
            result.set_shape(shape)
        return (*results, key, *[tf.zeros((0,), dtype)] * 4)

    def compiled_forward_call(inputs):
        outputs, h_final, c_final, *activations = operations.fastlstm_forward(*inputs, **attributes)
        return (outputs, h_final, c_final, tf.zeros((), tf.int32), *activations)

    def host_backward_call(inputs, key, activations, upstream):
        grads = tf.numpy_function(functools.partial(host_backward, options), [key, *inputs, *masks, *upstream],
                                  [dtype] * 6, stateful=False)
        for g, a in zip(grads, inputs):
            g.set_shape(a.shape)
        return tuple(grads)

    def compiled_backward_call(inputs, key, activations, upstream):
        return tuple(operations.fastlstm_backward(*inputs[:3], *activations, *upstream, **attributes))

    @tf.custom_gradient
    def fused(*inputs):
        outputs, h_final, c_final, key, *activations = _either(
            on_host, lambda: host_forward_call(inputs), lambda: compiled_forward_call(inputs))

        def gradient(*upstream):
            return _either(on_host, lambda: host_backward_call(inputs, key, activations, upstream),
                           lambda: compiled_backward_call(inputs, key, activations, upstream))

        return (outputs, h_final, c_final), gradient

    return fused(*inputs)


def _tensorflow_route(options, mask, inputs):
    """``(operations, on_host)``: the compiled operations of :mod:`.tf_lstm` (None where the call
    cannot take them), and whether the call runs as the host work instead: True, False, or, where
    the batch is known only when the step runs (``fit`` traces its step for any batch), a boolean
    tensor, True where numba_cpu would run the call on its stepwise path's threads."""
    import tensorflow as tf

    (batch, time, _), units = inputs[0].shape, inputs[2].shape[0]
    if mask is not None or time is None or not _runs_compiled(options, (batch or 1, time), units):
        return None, True
    from fastlstm.keras import tf_lstm

    operations = tf_lstm.operations(inputs[0].dtype.name)
    if operations is None or batch is not None:
        return operations, operations is None
    from fastlstm.backends.numba_cpu import runs_stepwise

    return operations, runs_stepwise(tf.shape(inputs[0], out_type=tf.int64)[0], time, units)


def _either(on_host, host_call, compiled_call):
    """``host_call()`` or ``compiled_call()``, as ``on_host`` (True, False or a boolean tensor) says."""
    import tensorflow as tf

    if isinstance(on_host, bool):
        return host_call() if on_host else compiled_call()
    return tf.cond(on_host, host_call, compiled_call)


def _coded(options):
    """The options that the compiled targets take: activation ids, go_backwards, return_sequences."""
    from fastlstm.kernels.activation_ids import ACTIVATION_IDS

    return {"activation": ACTIVATION_IDS[options.activation],
            "recurrent_activation": ACTIVATION_IDS[options.recurrent_activation],
            "go_backwards": options.go_backwards, "return_sequences": options.return_sequences}


def _jax(options, training, *inputs):
    *arrays, mask = inputs
    if mask is not None:
        return _jax_function()(options, *arrays, mask.astype(bool))
    if _on_cpu() and _runs_compiled(options, arrays[0].shape, arrays[2].shape[0]):
        return _jax_compiled()(options, *arrays)
    return _jax_function()(options, *arrays)


def _on_cpu():
    """Whether JAX computes on the CPU, where the host work is an FFI target of the XLA program;
    on another device it is a host callback (``jax.pure_callback``), JAX moving the arrays."""
    import jax

    return jax.default_backend() == "cpu"


def _runs_compiled(options, x_shape, units):
    """Whether a call without a mask runs on the compiled targets of :mod:`.xla_lstm`: below the
    shapes the numba_cpu backend runs on its threads. Their one-call kernels, with no Python in
    the call, take too the shapes numba_cpu alone runs stepwise on one core, whose gain (0.22 ms
    at 512, 1, 16, 32's forward+backward) is no more than the host work's crossing costs (about
    0.3 ms a call)."""
    from fastlstm.backends import resolve

    if resolve(options.backend) != "numba_cpu":
        return False
    from fastlstm.backends.numba_cpu import runs_stepwise

    return not runs_stepwise(x_shape[0], x_shape[1], units)


@functools.cache
def _jax_compiled():
    import jax

    from fastlstm.keras import xla_lstm

    def coded(options):
        return np.array(list(_coded(options).values()), np.int32)

    def forward_call(options, inputs):
        """outputs, h_T, c_T, then what the backward reads: h, c, gates and act_c."""
        x, recurrent_kernel = inputs[0], inputs[2]
        (batch, time, _), units = x.shape, recurrent_kernel.shape[0]
        shapes = [*_result_shapes(options, x.shape, units), (batch, time + 1, units), (batch, time + 1, units),
                  (batch, time, 4 * units), (batch, time, units)]
        return jax.ffi.ffi_call(xla_lstm.target("forward", x.dtype.name), [jax.ShapeDtypeStruct(s, x.dtype) for s in shapes])(
            *inputs, coded(options))

    @functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
    def fused(options, *inputs):
        return tuple(forward_call(options, inputs)[:3])

    def forward(options, *inputs):
        results = forward_call(options, inputs)
        return tuple(results[:3]), (inputs, results[3:])

    def backward(options, saved, upstream):
        inputs, activations = saved
        target = xla_lstm.target("backward", inputs[0].dtype.name)
        return tuple(jax.ffi.ffi_call(target, [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in inputs])(
            *inputs[:3], *activations, *upstream, coded(options)))

    fused.defvjp(forward, backward)
    return fused


@functools.cache
def _jax_function():
    import jax

    def host_call(direction, options, keep, results, *arguments):
        """:func:`_host` on the arguments, with the given result shapes."""
        if _on_cpu():
            return jax.ffi.ffi_call(_ffi_target(direction, options, keep), results)(*arguments)
        return jax.pure_callback(_host(direction, options, keep), results, *arguments)

    def forward_call(options, keep, inputs):
        """outputs, h, c and the key of the kept call."""
        x, recurrent_kernel = inputs[0], inputs[2]
        results = [jax.ShapeDtypeStruct(s, x.dtype) for s in _result_shapes(options, x.shape, recurrent_kernel.shape[0])]
        return host_call("forward", options, keep, [*results, jax.ShapeDtypeStruct((), np.int32)], *inputs)

    @functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
    def fused(options, *inputs):
        return tuple(forward_call(options, False, inputs)[:3])

    def forward(options, *inputs):
        *results, key = forward_call(options, True, inputs)
        return tuple(results), (key, inputs)

    def backward(options, saved, upstream):
        key, inputs = saved
        grads = host_call("backward", options, False, [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in inputs[:6]],
                          key, *inputs, *upstream)
        return (*grads, *[None] * (len(inputs) - 6))  # the mask has no gradient

    fused.defvjp(forward, backward)
    return fused


def _host(direction, options, keep):
    """:func:`host_forward` (with ``keep``) or :func:`host_backward`, for ``options``."""
    if direction == "forward":
        return functools.partial(host_forward, options, keep)
    return functools.partial(host_backward, options)


@functools.cache
def _ffi_target(direction, options, keep=False):
    """The name of the XLA FFI target that runs :func:`host_forward` (with ``keep``) or
    :func:`host_backward` for ``options``, registered on first use: one target per distinct
    call, since a target's function is fixed."""
    from fastlstm.keras import xla_ffi

    name = f"fastlstm_{direction}_{_ffi_target.cache_info().currsize}"
    host = _host(direction, options, keep)

    def run(arguments, results):
        for result, value in zip(results, host(*arguments)):
            np.copyto(result, value)

    xla_ffi.register(name, run)
    return name


def _torch(options, training, x, kernel, recurrent_kernel, bias, h0, c0, mask):
    import torch

    mask = None if mask is None else keras.ops.convert_to_numpy(mask).astype(bool)  # on the host
    inputs = (x, kernel, recurrent_kernel, bias, h0, c0)
    if torch.is_grad_enabled():
        return _torch_function().apply(options, mask, *inputs)
    # No gradient can be asked for (predict runs under torch.no_grad()): the call keeps no cache.
    return _torch_results(FusedCall(options, *map(_torch_array, inputs), mask, keep_cache=False))


def _torch_array(tensor):
    """The tensor's data without a copy: NumPy on the CPU, CuPy on a CUDA device."""
    if tensor.is_cuda:
        import cupy

        return cupy.from_dlpack(tensor.detach())
    return tensor.numpy(force=True)  # force: detached, as a tensor that requires grad must be; no copy on the CPU


def _torch_tensor(a):
    """A NumPy or CuPy array as a PyTorch tensor, without a copy. from_numpy where it can: a
    microsecond less than as_tensor an array, nine arrays a training step (batch 1, 1, 1, 50)."""
    import torch

    return torch.from_numpy(a) if isinstance(a, np.ndarray) else torch.as_tensor(a)


def _torch_results(call):
    """A FusedCall's (outputs, h, c) as PyTorch tensors, without a copy."""
    return tuple(map(_torch_tensor, (call.outputs, call.h, call.c)))


@functools.cache
def _torch_function():
    import torch

    class Fused(torch.autograd.Function):
        @staticmethod
        def forward(ctx, options, mask, *inputs):
            ctx.call = FusedCall(options, *map(_torch_array, inputs), mask)
            return _torch_results(ctx.call)

        @staticmethod
        def backward(ctx, *upstream):
            grads = ctx.call.backward(*map(_torch_array, upstream))
            return (None, None, *map(_torch_tensor, grads))

    return Fused


FRAMEWORKS = {"tensorflow": _tensorflow, "jax": _jax, "torch": _torch}


def _result_shapes(options, x_shape, units):
    batch, time = x_shape[0], x_shape[1]
    return [(batch, time, units) if options.return_sequences else (batch, units), (batch, units), (batch, units)]
