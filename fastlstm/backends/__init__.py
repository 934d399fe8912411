"""The backend registry, and the contract every backend implements.

A backend is a module with three functions:

- ``probe() -> str``: a one-line description of where it runs (for example the device), or
  raises :class:`BackendUnavailable` with a one-line reason.
- ``forward(x, kernel, recurrent_kernel, bias, h0, c0, options) -> (outputs, hT, cT, saved)``:
  arrays already validated by :mod:`fastlstm.ops` (one float dtype; ``bias`` may be ``None``),
  ``options`` an :class:`LSTMOptions`; ``saved`` is whatever its backward needs, and its own:
  nothing in it may alias the caller's arrays (copy what the forward did not copy already), since
  the caller may change them before the backward, which must still give the forward's gradients.
- ``backward(saved, dy, dhT, dcT) -> (dx, dkernel, drecurrent_kernel, dbias, dh0, dc0)``:
  any of ``dy, dhT, dcT`` may be ``None`` (zero); ``dbias`` is ``None`` when ``bias`` was.

Backends are imported and probed on first use, never when fastlstm is imported, and each probe
runs once per process.
"""
import ctypes
import functools
import importlib
import os
import sys
import warnings
from typing import NamedTuple


class LSTMOptions(NamedTuple):
    """The options of one LSTM call, with activation names already checked."""

    activation: str = "tanh"
    recurrent_activation: str = "sigmoid"
    return_sequences: bool = False
    go_backwards: bool = False


class BackendUnavailable(RuntimeError):
    """A backend cannot run here. ``installed`` tells a missing optional dependency (the
    user's choice, not worth a warning) from one that is installed but cannot run."""

    def __init__(self, reason, installed=True):
        super().__init__(reason)
        self.installed = installed


class BackendStatus(NamedTuple):
    name: str
    available: bool
    detail: str  # where it runs when available, else why not

    def __str__(self):
        return f"{self.name}: {'ok' if self.available else 'unavailable'} ({self.detail})"


# Every backend, and the order in which 'auto' prefers them (fastest first). The GPU backends are
# left out of 'auto' until benchmarks on a GPU show the shapes where they win; ask for them by name.
MODULES = {
    "cupy": "fastlstm.backends.cupy",
    "numba_cuda": "fastlstm.backends.numba_cuda",
    "numba_cpu": "fastlstm.backends.numba_cpu",
    "numpy": "fastlstm.backends.numpy",
}
PREFERENCE = ("numba_cpu", "numpy")
# The GPU backends, each with the environment variable under which it runs without a GPU (Numba's
# CUDA simulator) if there is one. Where no CUDA driver can be loaded they are reported unavailable
# without being imported: importing CuPy and numba.cuda took 2.1 s on a machine without one.
GPU_BACKENDS = {"cupy": None, "numba_cuda": "NUMBA_ENABLE_CUDASIM"}


@functools.cache
def _cuda_driver_missing():
    """Why the CUDA driver library cannot be loaded here, or None when it can."""
    try:
        ctypes.CDLL("nvcuda.dll" if sys.platform == "win32" else "libcuda.so.1")
    except OSError as e:
        return str(e)
    return None


@functools.cache
def _load(name):
    """(module or None, status, installed) of a backend, probed once per process."""
    if name in GPU_BACKENDS and os.environ.get(GPU_BACKENDS[name] or "", "0") in ("", "0"):
        missing = _cuda_driver_missing()
        if missing:
            return None, BackendStatus(name, False, f"no CUDA driver ({missing})"), True
    try:
        module = importlib.import_module(MODULES[name])
        return module, BackendStatus(name, True, module.probe()), True
    except BackendUnavailable as e:
        return None, BackendStatus(name, False, str(e)), e.installed
    except ImportError as e:
        return None, BackendStatus(name, False, f"not installed ({e})"), False


def available_backends():
    """Every backend with whether it works here and, if not, why: a list of BackendStatus."""
    return [_load(name)[1] for name in MODULES]


def resolve(name="auto"):
    """The name of the backend ``name`` stands for: itself, or for 'auto' the best one that works
    here (the first of :data:`PREFERENCE` that does).

    Raises ValueError for an unknown name and BackendUnavailable for one that cannot run here.
    """
    if name == "auto":
        return _auto()
    if name not in MODULES:
        raise ValueError(f"backend must be 'auto' or one of {sorted(MODULES)}, got {name!r}")
    module, status, _ = _load(name)
    if module is None:
        raise BackendUnavailable(f"backend {status}")
    return name


@functools.cache  # lstm_forward asks on every call: a resolved name's module is one look-up away
def get_backend(name="auto"):
    """The backend module :func:`resolve` names (same arguments, same errors)."""
    return _load(resolve(name))[0]


@functools.cache
def _auto():
    skipped = []
    for name in PREFERENCE:
        module, status, installed = _load(name)
        if module is not None:
            if skipped:
                warnings.warn(
                    f"fastlstm: using backend {name!r}; " + "; ".join(skipped), stacklevel=3
                )
            return name
        if installed:
            skipped.append(f"{name} is installed but unavailable: {status.detail}")
    raise BackendUnavailable("no fastlstm backend works here: " + "; ".join(map(str, available_backends())))
