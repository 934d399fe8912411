"""The CuPy backend: the CUDA C kernels of fastlstm.kernels through ``cupy.RawModule``, the
GEMMs through ``cupy.matmul`` (cuBLAS), orchestrated by :class:`~fastlstm.backends.fused.FusedLSTM`.

Accepts and returns CuPy arrays; NumPy arrays are moved to the current device and their results
back. Kernels compile on first use (NVRTC, cached by CuPy on disk) and launch on the current
stream.
"""
import functools
import pathlib

import cupy
import numpy as np

import fastlstm.kernels
from fastlstm.backends import BackendUnavailable
from fastlstm.backends.fused import FusedLSTM
from fastlstm.backends.plan import DEFAULT_SHARED_MEMORY, DeviceLimits, all_instances

KERNELS = pathlib.Path(fastlstm.kernels.__file__).parent
NVRTC_OPTIONS = ("--std=c++17", f"-I{KERNELS}")


def probe():
    runtime = cupy.cuda.runtime
    try:
        count = runtime.getDeviceCount()
    except runtime.CUDARuntimeError as e:
        raise BackendUnavailable(f"no CUDA device ({str(e).split(':')[0]})") from e
    if count == 0:
        raise BackendUnavailable("no CUDA device")
    try:
        cupy.cuda.nvrtc.getVersion()
    except Exception as e:  # the library is missing or broken: say which, whatever CuPy raised
        raise BackendUnavailable(f"NVRTC cannot be loaded ({e}); pip install 'fastlstm[cuda]'") from e
    properties = runtime.getDeviceProperties(cupy.cuda.Device().id)
    return (f"{properties['name'].decode()}, sm_{properties['major']}{properties['minor']}, "
            f"CuPy {cupy.__version__}")


def device_limits(device_id):
    attribute = functools.partial(cupy.cuda.runtime.deviceGetAttribute, device=device_id)
    runtime = cupy.cuda.runtime
    return DeviceLimits(
        attribute(runtime.cudaDevAttrMaxThreadsPerBlock),
        attribute(runtime.cudaDevAttrMaxSharedMemoryPerBlockOptin),
        attribute(runtime.cudaDevAttrMultiProcessorCount),
    )


class CupyLauncher:
    """Launches the plan's kernels: one RawModule per source file, compiled on first use."""

    def __init__(self):
        self._modules = {}

    def __call__(self, launch, *arguments):
        function = self._module(launch.source).get_function(launch.kernel)
        if launch.shared_memory > DEFAULT_SHARED_MEMORY:
            function.max_dynamic_shared_size_bytes = launch.shared_memory  # opt in, as the plan allowed
        function(launch.grid, launch.block, tuple(map(_kernel_argument, arguments)), shared_mem=launch.shared_memory)

    def _module(self, source):
        if source not in self._modules:
            self._modules[source] = cupy.RawModule(
                code=(KERNELS / source).read_text(), options=NVRTC_OPTIONS,
                name_expressions=[name for s, name in all_instances() if s == source],
            )
        return self._modules[source]


def _kernel_argument(argument):
    if argument is None:
        return np.uint64(0)  # a null pointer
    if isinstance(argument, int):
        return np.int32(argument)  # the kernels' int parameters
    return argument


@functools.cache
def _engine(device_id):
    return FusedLSTM(cupy, CupyLauncher(), device_limits(device_id))


def forward(x, kernel, recurrent_kernel, bias, h0, c0, options):
    on_host = isinstance(x, np.ndarray)
    arrays = [None if a is None else cupy.asarray(a) for a in (x, kernel, recurrent_kernel, bias, h0, c0)]
    outputs, h, c, saved = _engine(cupy.cuda.Device().id).forward(*arrays, options)
    if on_host:
        outputs, h, c = (cupy.asnumpy(a) for a in (outputs, h, c))
    return outputs, h, c, (saved, on_host)


def backward(saved, dy, dhT, dcT):
    saved, on_host = saved
    gradients = _engine(cupy.cuda.Device().id).backward(
        saved, *(None if a is None else cupy.asarray(a) for a in (dy, dhT, dcT)))
    return tuple(cupy.asnumpy(g) if on_host and g is not None else g for g in gradients)
