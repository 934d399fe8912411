"""Every LSTM the benchmarks time, behind one interface: fastlstm on each backend that works here,
and the baselines that are installed: Keras 3's ``keras.layers.LSTM`` on the backend that
KERAS_BACKEND names (tensorflow, the default, under ``tf.function``; or torch, on the GPU where
there is one), raw TensorFlow (``tf.raw_ops.BlockLSTM``, TensorFlow's own fused LSTM op, kept on
the CPU) and PyTorch's ``nn.LSTM`` on the CPU and, where there is a CUDA device, on it (cuDNN).

Each takes the same Keras-layout weights. ``prepare(inputs)`` builds, outside the timing, a
:class:`Runner` whose ``forward()`` computes the outputs [batch, time, units] and whose
``forward_backward()`` computes every gradient of the loss ``sum(outputs * dy)``: of the inputs
and of the three weights, as a training step needs them (an implementation asked for dx alone
could skip the weight gradients). The runner's ``outputs`` and ``gradients`` turn those results,
outside the timing, into NumPy arrays in Keras's layout, so every implementation's result can be
checked against the reference. Each runner finishes its work before returning (it synchronises a
GPU), so the time is the work. The implementations on a GPU run float32 only, as fastlstm's GPU
benchmarks do: GPU time is scarce, and float32 is the comparison that matters there.
"""
import functools
import importlib.metadata
import os
import platform
from typing import Callable, NamedTuple, Optional

import numpy as np

import fastlstm
from fastlstm import lstm_backward, lstm_forward
from fastlstm.backends.plan import launch_count


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
    # Per pass ("forward", "forward_backward"), the device operations of a call by the launch
    # plan's count (fastlstm on a GPU), else None.
    launches: Optional[dict] = None


class Implementation(NamedTuple):
    name: str  # "fastlstm-numpy", "keras", "tensorflow", "torch", "torch-cuda", ...
    baseline: bool
    device: str
    versions: dict
    dtypes: tuple
    prepare: Callable[[Inputs], Runner]
    gpu: bool = False  # runs on a CUDA device


GPU_DTYPES = (np.float32,)


def _version(package):
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _fastlstm(status):
    backend = status.name
    gpu = backend in ("cupy", "numba_cuda")
    if gpu:
        import cupy

        to_device, synchronize, to_numpy = cupy.asarray, cupy.cuda.get_current_stream().synchronize, cupy.asnumpy
        dtypes = GPU_DTYPES
    else:
        to_device, synchronize, to_numpy = (lambda a: a), (lambda: None), np.asarray
        dtypes = (np.float32, np.float64)

    def prepare(inputs):
        x, kernel, recurrent_kernel, bias, dy = map(to_device, inputs)
        options = dict(return_sequences=True, backend=backend)

        def forward():  # inference, as the others' forward: nothing kept for a backward pass
            outputs = lstm_forward(x, kernel, recurrent_kernel, bias, keep_cache=False, **options).outputs
            synchronize()
            return outputs

        def forward_backward():
            grads = lstm_backward(lstm_forward(x, kernel, recurrent_kernel, bias, **options).cache, dy)
            synchronize()
            return grads

        gradients = lambda grads: Gradients(*map(to_numpy, grads[:4]))  # noqa: E731
        cache = lstm_forward(x, kernel, recurrent_kernel, bias, **options).cache  # a first call, untimed
        if not gpu:
            return Runner(forward, forward_backward, to_numpy, gradients, "-")
        plan = cache.saved[0].plan  # FusedLSTM's
        count = launch_count(plan, *inputs.x.shape, inputs.recurrent_kernel.shape[0])
        return Runner(forward, forward_backward, to_numpy, gradients, plan.path,
                      {"forward": count.forward, "forward_backward": count.forward + count.backward})

    return Implementation(f"fastlstm-{backend}", False, status.detail, {"fastlstm": fastlstm.__version__},
                          dtypes, prepare, gpu)


def _keras(has_tensorflow, has_torch):
    """Keras on the backend that KERAS_BACKEND names (tensorflow where it names none), where that
    framework is installed: Keras fixes its backend once per process."""
    backend = os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    frameworks = {"tensorflow": (has_tensorflow, _keras_tensorflow), "torch": (has_torch, _keras_torch)}
    if backend not in frameworks:
        raise ValueError(f"bench/ times Keras on its tensorflow or torch backend, got KERAS_BACKEND={backend!r}")
    installed, make = frameworks[backend]
    return [make()] if installed else []


def _keras_tensorflow():
    tf = _tensorflow_on_the_cpu()
    import keras

    def prepare(inputs):
        x, kernel, recurrent_kernel, bias, dy = (tf.constant(a) for a in inputs)
        layer = _keras_layer(keras, inputs)
        weights = [w.value for w in layer.trainable_weights]  # the tf.Variables of kernel, recurrent_kernel, bias
        return _tf_runner(tf, layer, x, weights, dy, lambda a: a.numpy(),
                          lambda grads: Gradients(*(g.numpy() for g in grads)))

    return Implementation("keras", True, _cpu(), {"keras": keras.__version__, "tensorflow": tf.__version__},
                          (np.float32, np.float64), prepare)


def _keras_torch():
    """Keras on PyTorch, on the GPU where there is one (Keras's default device; cuDNN's LSTM)."""
    import keras
    import torch

    gpu = torch.cuda.is_available()
    if gpu:
        _full_float32_cudnn(torch)

    def prepare(inputs):
        layer = _keras_layer(keras, inputs)
        weights = [w.value for w in layer.trainable_weights]  # the torch Parameters of kernel, recurrent_kernel, bias
        x, dy = (torch.from_numpy(a).to(weights[0].device) for a in (inputs.x, inputs.dy))
        return _torch_runner(torch, layer, x, dy, weights, weights, lambda grads: Gradients(*map(_torch_numpy, grads)))

    versions = {"keras": keras.__version__, **_torch_versions(torch, gpu)}
    if gpu:
        return Implementation("keras-torch-cuda", True, _torch_gpu(torch), versions, GPU_DTYPES, prepare, True)
    return Implementation("keras-torch", True, _cpu(), versions, (np.float32, np.float64), prepare)


def _keras_layer(keras, inputs):
    """keras.layers.LSTM built with the inputs' weights, returning sequences."""
    layer = keras.layers.LSTM(inputs.recurrent_kernel.shape[0], return_sequences=True, dtype=inputs.x.dtype.name)
    layer.build(inputs.x.shape)
    layer.set_weights([inputs.kernel, inputs.recurrent_kernel, inputs.bias])
    return layer


def _tensorflow():
    tf = _tensorflow_on_the_cpu()

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

    return Implementation("tensorflow", True, _cpu(), {"tensorflow": tf.__version__}, (np.float32,), prepare)


def _torch(device):
    """PyTorch's nn.LSTM on "cpu" or "cuda" (cuDNN)."""
    import torch

    gpu = device == "cuda"
    if gpu:
        _full_float32_cudnn(torch)

    def prepare(inputs):
        input_dim, units = inputs.kernel.shape[0], inputs.recurrent_kernel.shape[0]
        dtype = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}[inputs.x.dtype]
        lstm = torch.nn.LSTM(input_dim, units, batch_first=True, dtype=dtype, device=device)
        with torch.no_grad():  # PyTorch's gate order i, f, g, o is Keras's; its weights are transposed
            lstm.weight_ih_l0.copy_(torch.from_numpy(inputs.kernel.T.copy()))
            lstm.weight_hh_l0.copy_(torch.from_numpy(inputs.recurrent_kernel.T.copy()))
            lstm.bias_ih_l0.copy_(torch.from_numpy(inputs.bias))
            lstm.bias_hh_l0.zero_()
        x, dy = (torch.from_numpy(a).to(device) for a in (inputs.x, inputs.dy))

        def gradients(grads):
            dx, dweight_ih, dweight_hh, dbias = map(_torch_numpy, grads)
            return Gradients(dx, dweight_ih.T, dweight_hh.T, dbias)

        weights = [lstm.weight_ih_l0, lstm.weight_hh_l0, lstm.bias_ih_l0]  # bias_hh_l0 stays zero: Keras has one bias
        return _torch_runner(torch, lambda a: lstm(a)[0], x, dy, list(lstm.parameters()), weights, gradients)

    if gpu:
        return Implementation("torch-cuda", True, _torch_gpu(torch), _torch_versions(torch, gpu), GPU_DTYPES,
                              prepare, True)
    return Implementation("torch", True, f"CPU, {torch.get_num_threads()} threads", _torch_versions(torch, gpu),
                          (np.float32, np.float64), prepare)


def _torch_runner(torch, lstm, x, dy, parameters, weights, gradients):
    """The two passes of a PyTorch ``lstm(x) -> outputs``; the second clears the gradients of
    ``parameters``, as a training step does (else they accumulate), and differentiates with respect
    to x and then ``weights``. On a GPU each pass waits for the device before it returns."""
    synchronize = torch.cuda.synchronize if x.is_cuda else (lambda: None)

    def forward():
        with torch.no_grad():
            outputs = lstm(x)
        synchronize()
        return outputs

    def forward_backward():
        for p in parameters:
            p.grad = None
        leaf = x.detach().requires_grad_()
        (lstm(leaf) * dy).sum().backward()
        synchronize()
        return leaf.grad, *(w.grad for w in weights)

    return Runner(forward, forward_backward, _torch_numpy, gradients, "-")


def _torch_numpy(tensor):
    return tensor.detach().cpu().numpy()


def _torch_versions(torch, gpu):
    return {"torch": torch.__version__, **({"cudnn": torch.backends.cudnn.version()} if gpu else {})}


def _torch_gpu(torch):
    return f"GPU {torch.cuda.get_device_name()}"


def _full_float32_cudnn(torch):
    # PyTorch lets cuDNN compute float32 in TF32 by default (on sm_80 and later), about 1e-3
    # relative error: fastlstm and the reference compute in full float32, so cuDNN does too.
    torch.backends.cudnn.allow_tf32 = False


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


@functools.cache
def _tensorflow_on_the_cpu():
    """TensorFlow, kept off any GPU: its baselines are CPU baselines, timed without a synchronise,
    and TensorFlow would otherwise take most of the GPU's memory from the GPU implementations."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    tf.config.set_visible_devices([], "GPU")
    return tf


def _cpu():
    return f"CPU {platform.processor() or platform.machine()}"


def implementations():
    """Every implementation that can run here: fastlstm's working backends, then the baselines
    whose framework is installed; those on a GPU only where PyTorch sees a CUDA device."""
    found = [_fastlstm(status) for status in fastlstm.available_backends() if status.available]
    has_tensorflow, has_torch = bool(_version("tensorflow-cpu") or _version("tensorflow")), bool(_version("torch"))
    if _version("keras"):
        found += _keras(has_tensorflow, has_torch)
    if has_tensorflow:
        found.append(_tensorflow())
    if has_torch:
        import torch

        found += [_torch(device) for device in ("cpu", "cuda") if device == "cpu" or torch.cuda.is_available()]
    return found


@functools.cache
def gpu_info():
    """What a GPU benchmark records of its device: ``gpu`` (the name), ``compute_capability``
    ("9.0"), and the versions of the ``cuda_driver`` and of the ``cuda_runtime`` ("13.0"), read
    through CuPy (both GPU backends need it); through PyTorch where CuPy is missing, which gives
    the runtime it was built with and no driver version (None)."""
    try:
        import cupy
    except ImportError:
        import torch

        major, minor = torch.cuda.get_device_capability()
        return {"gpu": torch.cuda.get_device_name(), "compute_capability": f"{major}.{minor}", "cuda_driver": None,
                "cuda_runtime": torch.version.cuda}
    runtime = cupy.cuda.runtime
    properties = runtime.getDeviceProperties(cupy.cuda.Device().id)
    return {"gpu": properties["name"].decode(), "compute_capability": f"{properties['major']}.{properties['minor']}",
            "cuda_driver": _cuda_version(runtime.driverGetVersion()),
            "cuda_runtime": _cuda_version(runtime.runtimeGetVersion())}


def _cuda_version(number):
    """CUDA's version number (13020) as "13.2"."""
    return f"{number // 1000}.{number % 1000 // 10}"


# The vector extensions a CPU's flags name (as Linux's /proc/cpuinfo spells them) that decide the
# kernels' speed: 256-bit vectors and fused multiply-adds, then AVX-512's foundation and extensions.
VECTOR_EXTENSIONS = ("avx", "avx2", "fma", "avx512f", "avx512dq", "avx512bw", "avx512vl", "avx512_bf16",
                     "avx512_fp16")


def cpu_info():
    """What the CPU benchmarks record of the CPU: ``model`` (its name, family and model numbers),
    ``vector_extensions`` (those of VECTOR_EXTENSIONS it has) and ``numba_target`` (the target and
    register tile numba_cpu's kernels are compiled for; None without Numba)."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:  # not Linux
        pass
    model = fields.get("model name") or platform.processor() or platform.machine()
    if "cpu family" in fields:
        model += f" (family {fields['cpu family']}, model {fields.get('model', '?')})"
    flags = set(fields.get("flags", "").split())
    try:
        from fastlstm.kernels import cpu_matmul
    except ImportError:  # no Numba
        target = None
    else:
        target = cpu_matmul.describe_target()
    return {"model": model, "vector_extensions": [x for x in VECTOR_EXTENSIONS if x in flags], "numba_target": target}


@functools.cache
def versions():
    return {package: _version(package) for package in ("fastlstm", "numpy", "numba", "numba-cuda", "cupy-cuda13x",
                                                       "keras", "tensorflow-cpu", "tensorflow", "torch")
            if _version(package)}
