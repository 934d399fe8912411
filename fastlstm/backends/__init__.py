"""The backend registry, and the contract every backend implements.

A backend is a module that declares, in ``CAPABILITIES``, which functions of the contract it
defines: always ``forward`` and ``backward``, and any of the optional ``infer``, ``prepare``,
``all_finite`` and ``train_epoch``. The registry checks the declaration when it loads the module. Where a
backend lacks an optional function, :mod:`fastlstm.ops` does the general thing itself, and its
``lstm_train_epoch`` raises NotImplementedError for its caller to take the general path, as
Keras's ``backend.lstm`` does. Every backend also has ``probe``:

- ``probe() -> str``: a one-line description of where it runs (for example the device), or
  raises :class:`BackendUnavailable` with a one-line reason.
- ``forward(x, kernel, recurrent_kernel, bias, h0, c0, options) -> (outputs, hT, cT, saved)``:
  arrays already validated by :mod:`fastlstm.ops` (one float dtype; ``bias`` may be ``None``),
  ``options`` an :class:`LSTMOptions`; ``saved`` is whatever its backward needs, and its own:
  nothing in it may alias the caller's arrays (copy what the forward did not copy already), since
  the caller may change them before the backward, which must still give the forward's gradients.
- ``infer(x, kernel, recurrent_kernel, bias, h0, c0, options) -> (outputs, hT, cT)`` (optional):
  ``forward`` keeping nothing for a backward pass (``lstm_forward(keep_cache=False)``); without
  it, ops calls ``forward`` and drops ``saved``.
- ``backward(saved, dy, dhT, dcT) -> (dx, dkernel, drecurrent_kernel, dbias, dh0, dc0)``:
  any of ``dy, dhT, dcT`` may be ``None`` (zero); ``dbias`` is ``None`` when ``bias`` was.
- ``prepare(a) -> array`` (optional): an argument as the array type the backend works on (a GPU
  backend's view of a device array), before fastlstm.ops checks it; without it, ops reads every
  argument as a NumPy array.
- ``all_finite(a) -> bool`` (optional): whether ``a`` holds no NaN and no inf; without it, ops
  asks NumPy.
- ``train_epoch(x, y, batch_size, lstm, dense, lstm_grads, dense_grads, adam, state, options)
  -> (total_loss, correct)`` (optional): the fused training pass of an LSTM + Dense(softmax)
  model, as :func:`fastlstm.ops.lstm_train_epoch` documents it, the weights an
  :class:`LSTMWeights` and a :class:`DenseWeights`, ``adam`` an :class:`AdamState`.

Backends are imported and probed on first use, never when fastlstm is imported, and each probe
runs once per process.
"""
import ctypes
import functools
import importlib
import os
import sys
import warnings
from typing import Any, NamedTuple


class LSTMOptions(NamedTuple):
    """The options of one LSTM call, with activation names already checked."""

    activation: str = "tanh"
    recurrent_activation: str = "sigmoid"
    return_sequences: bool = False
    go_backwards: bool = False


class LSTMWeights(NamedTuple):
    """An LSTM layer's weights, or their gradients, as Keras 3 stores them: ``kernel
    [input_dim, 4*units]``, ``recurrent_kernel [units, 4*units]``, ``bias [4*units]`` or None."""

    kernel: Any
    recurrent_kernel: Any
    bias: Any = None


class DenseWeights(NamedTuple):
    """A Dense layer's weights, or their gradients: ``kernel [features, units]``, ``bias [units]``."""

    kernel: Any
    bias: Any


class AdamState(NamedTuple):
    """What a fused training pass updates with Adam: the model's ``weights`` and ``gradients``,
    each one flat array that every layer's arrays are views into; Adam's moment estimates ``m``,
    ``v`` for them (shaped alike); its ``constants`` ``(learning_rate, beta_1, beta_2, epsilon,
    1 - beta_1, 1 - beta_2)`` in the weights' dtype; the number of steps taken before, ``iterations``."""

    weights: Any
    gradients: Any
    m: Any
    v: Any
    constants: tuple
    iterations: int


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


# The contract's functions (see above): those every backend defines, and those it may.
REQUIRED = frozenset({"forward", "backward"})
OPTIONAL = frozenset({"infer", "prepare", "all_finite", "train_epoch"})

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
# without being imported: importing CuPy and numba.cuda takes seconds, only to end in that report.
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
        _check_contract(name, module)
        return module, BackendStatus(name, True, module.probe()), True
    except BackendUnavailable as e:
        return None, BackendStatus(name, False, str(e)), e.installed
    except ImportError as e:
        return None, BackendStatus(name, False, f"not installed ({e})"), False


def _check_contract(name, module):
    """Refuses a backend module whose ``CAPABILITIES`` leave out a required function, name one
    outside the contract or one it does not define, or leave out an optional one it defines
    (fastlstm.ops would call it undeclared)."""
    declared = frozenset(getattr(module, "CAPABILITIES", ()))
    defined = {f for f in REQUIRED | OPTIONAL if callable(getattr(module, f, None))}
    problems = [f"{what}: {', '.join(sorted(functions))}" for what, functions in (
        ("required but not declared", REQUIRED - declared),
        ("declared but not in the contract", declared - REQUIRED - OPTIONAL),
        ("declared but not defined", (declared & (REQUIRED | OPTIONAL)) - defined),
        ("defined but not declared", (defined & OPTIONAL) - declared),
    ) if functions]
    if problems:
        raise TypeError(f"backend {name!r} ({module.__name__}) breaks the backend contract of fastlstm.backends: "
                        f"{'; '.join(problems)}")


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
