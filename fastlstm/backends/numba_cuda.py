"""The Numba CUDA backend: the Numba kernels of fastlstm.kernels.numba_cuda, the GEMMs through
CuPy's cuBLAS, orchestrated by :class:`~fastlstm.backends.fused.FusedLSTM` with the launch plan
the CuPy backend uses.

The input projection and the weight gradients are cuBLAS GEMMs through CuPy rather than a tiled
Numba kernel: cuBLAS is tuned for every GPU, and the 'cuda' extra installs CuPy beside Numba.
Numba has no public way to raise a kernel's dynamic shared memory past 48 KB
(NVIDIA/numba-cuda#94), so the plan keeps to that: the persistent path up to 50 units in float32
and 35 in float64, the cooperative path beyond (to 396 and 256 units with 132 multiprocessors).

The cooperative kernels synchronise their blocks with a grid barrier of their own (atomics and
fences, as lstm_cooperative.cu's) and are launched plainly: Numba launches a kernel cooperatively
only when it uses Numba's grid group, whose barrier links the CUDA toolkit's cudadevrt, which a
pip-installed stack may lack. The plan launches at most one block per multiprocessor, each
within one multiprocessor's threads and shared memory, so every block is resident on a device
that runs nothing else beside; should one not be, the barrier gives up after
``fastlstm.kernels.numba_cuda.GRID_SYNC_POLLS`` looks and the launch fails with an error rather
than hanging.

Accepts NumPy arrays (moved to the device and back), and CuPy arrays, Numba device arrays and
anything with ``__cuda_array_interface__`` or ``__dlpack__`` without copying (results come back as
CuPy arrays, which Numba and DLPack consumers take without a copy). Under Numba's CUDA simulator
(``NUMBA_ENABLE_CUDASIM=1``) it runs on NumPy arrays and reports itself unavailable: the
simulator is for tests, not a GPU.
"""
import functools
import re

import numba
import numpy as np
from numba import cuda
from numba.cuda.cudadrv.error import CudaSupportError

from fastlstm.backends import BackendUnavailable
from fastlstm.backends.fused import FusedLSTM, as_cupy, host_round_trip
from fastlstm.backends.plan import C_TYPES, DEFAULT_SHARED_MEMORY, DeviceLimits
from fastlstm.kernels.numba_cuda import kernels

SIMULATOR = bool(numba.config.ENABLE_CUDASIM)
DTYPES = {c_type: dtype for dtype, c_type in C_TYPES.items()}
_NAME = re.compile(r"fastlstm::([\w:]+)<(\w+)>")  # "cooperative::forward" is the kernel cooperative_forward
# What this backend implements of the contract in fastlstm.backends.
CAPABILITIES = ("forward", "backward", "prepare")


def probe():
    if SIMULATOR:
        raise BackendUnavailable("the Numba CUDA simulator is on (NUMBA_ENABLE_CUDASIM=1): it is not a GPU")
    try:
        import cupy  # noqa: F401
    except ImportError as e:
        raise BackendUnavailable(f"needs CuPy for its cuBLAS GEMMs: pip install 'fastlstm[cuda]' ({e})",
                                 installed=False) from e
    try:
        device = cuda.get_current_device()
    except CudaSupportError as e:
        reason = next((line for line in str(e).splitlines() if line.strip() and "driver init" not in line), str(e))
        raise BackendUnavailable(f"no CUDA device ({reason.strip()})") from e
    return f"{device.name.decode() if isinstance(device.name, bytes) else device.name}, Numba {numba.__version__}"


class NumbaLauncher:
    """Launches the plan's kernels, by name, on the current CuPy stream (stream 0 in the simulator),
    never waiting on the host: see :func:`_kernel_argument`."""

    def __init__(self, stream=lambda: 0):
        self.stream = stream

    def __call__(self, launch, *arguments):
        self.kernel(launch)[launch.grid, launch.block, self.stream(), launch.shared_memory](
            *map(_kernel_argument, arguments))

    @staticmethod
    def kernel(launch):
        """The Numba kernel that ``launch`` names."""
        function, c_type = _NAME.fullmatch(launch.kernel).groups()
        return kernels(DTYPES[c_type])[function.replace("::", "_")]


def _kernel_argument(argument):
    """A device array (anything exposing ``__cuda_array_interface__``, as CuPy's arrays) as a Numba
    device array imported with ``sync=False``; NumPy arrays (the simulator's) and ints as they are.
    Numba would otherwise synchronise the host with the stream the array names at every launch,
    though the kernel runs on that stream, after the work that made the array, anyway."""
    if hasattr(argument, "__cuda_array_interface__"):
        return cuda.as_cuda_array(argument, sync=False)
    return argument


def _device_module():
    """CuPy on a GPU; NumPy under the simulator."""
    if SIMULATOR:
        return np
    import cupy

    return cupy


@functools.cache
def _engine():
    xp = _device_module()
    if SIMULATOR:
        return FusedLSTM(np, NumbaLauncher(), DeviceLimits())
    device = cuda.get_current_device()
    limits = DeviceLimits(device.MAX_THREADS_PER_BLOCK,
                          min(device.MAX_SHARED_MEMORY_PER_BLOCK_OPTIN, DEFAULT_SHARED_MEMORY),
                          device.MULTIPROCESSOR_COUNT)
    return FusedLSTM(xp, NumbaLauncher(lambda: cuda.external_stream(xp.cuda.get_current_stream().ptr)), limits,
                     cooperative=True)


def prepare(a):
    """Device arrays of any kind as CuPy arrays, before fastlstm.ops checks them."""
    xp = _device_module()
    return a if xp is np else as_cupy(xp, a)


forward, backward = host_round_trip(
    lambda: _engine(), lambda a: _device_module().asarray(a), lambda a: a if SIMULATOR else _device_module().asnumpy(a))
