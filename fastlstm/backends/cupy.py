"""The CuPy backend: the CUDA C kernels of fastlstm.kernels through ``cupy.RawModule``, the
GEMMs through ``cupy.matmul`` (cuBLAS), orchestrated by :class:`~fastlstm.backends.fused.FusedLSTM`.

Accepts CuPy arrays, and Numba device arrays or anything with ``__cuda_array_interface__`` or
``__dlpack__`` without copying (results come back as CuPy arrays); NumPy arrays are moved to the
current device and their results back. Kernels compile on first use (NVRTC, cached by CuPy on
disk) and launch on the current stream.
"""
import functools
import pathlib

import cupy
import numpy as np

import fastlstm.kernels
from fastlstm.backends import BackendUnavailable
from fastlstm.backends.fused import FusedLSTM, as_cupy, host_round_trip
from fastlstm.backends.plan import DEFAULT_SHARED_MEMORY, DeviceLimits, all_instances

KERNELS = pathlib.Path(fastlstm.kernels.__file__).parent
NVRTC_OPTIONS = ("--std=c++17", f"-I{KERNELS}")
# What this backend implements of the contract in fastlstm.backends.
CAPABILITIES = ("forward", "backward", "prepare")


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
    """Launches the plan's kernels: one RawModule per source file, compiled on first use; the
    cooperative path's launched cooperatively."""

    def __init__(self):
        self._modules = {}

    def __call__(self, launch, *arguments):
        function = self._module(launch.source).get_function(launch.kernel)
        if launch.shared_memory > DEFAULT_SHARED_MEMORY:
            function.max_dynamic_shared_size_bytes = launch.shared_memory  # opt in, as the plan allowed
        arguments = tuple(map(_kernel_argument, arguments))
        if launch.cooperative:
            # cuLaunchCooperativeKernel through the compiled function: it refuses a grid whose blocks
            # cannot all be resident. The kernels use no cooperative_groups, so the module needs no -rdc.
            function.kernel(launch.grid, launch.block, arguments, shared_mem=launch.shared_memory,
                            enable_cooperative_groups=True)
        else:
            function(launch.grid, launch.block, arguments, shared_mem=launch.shared_memory)

    def _module(self, source):
        if source not in self._modules:
            self._modules[source] = cupy.RawModule(
                code=(KERNELS / source).read_text(), options=NVRTC_OPTIONS,
                name_expressions=[name for s, name in all_instances() if s == source],
            )
        return self._modules[source]


def _kernel_argument(argument):
    if isinstance(argument, int):
        return np.int32(argument)  # the kernels' int parameters
    if argument.size == 0:
        return np.uint64(0)  # an absent optional array: a null pointer
    return argument


@functools.cache
def _engine(device_id):
    return FusedLSTM(cupy, CupyLauncher(), device_limits(device_id), cooperative=True)


def prepare(a):
    """Device arrays of any kind as CuPy arrays, before fastlstm.ops checks them."""
    return as_cupy(cupy, a)


forward, backward = host_round_trip(lambda: _engine(cupy.cuda.Device().id),
                                    lambda a: cupy.asarray(a), lambda a: cupy.asnumpy(a))
