"""The fused LSTM as two compiled TensorFlow CPU operations, ``FastlstmForward`` and
``FastlstmBackward`` (``tf_lstm.cc``), which run the same compiled targets as JAX's
(:mod:`.xla_lstm`) on TensorFlow's own tensors.

Why: ``tf.numpy_function`` crosses into Python and back on every call, about 0.16 ms on a 2-core
CPU and twice per training step, more than the whole fused LSTM at batch 1; these operations call
the compiled kernels directly, with no Python and no interpreter lock in the step.

The operations are built on first use in a process, once per TensorFlow version: the C++ compiler
(``$CXX``, else ``g++``) compiles ``tf_lstm.cc`` against the installed TensorFlow's headers (about
10 s, while Numba compiles the targets) into ``$FASTLSTM_CACHE_DIR`` (default
``~/.cache/fastlstm``), written under a temporary name and renamed, so that a build cut short
leaves nothing half-written; processes that start together wait for one build. Without a
compiler, or if the build fails, TensorFlow calls fastlstm through ``tf.numpy_function`` after one
warning that says why.

- ``FastlstmForward(x [batch, time, features], kernel, recurrent_kernel, bias [4 * units], h0, c0)
  -> (outputs, h_final, c_final, h [batch, time + 1, units], c, gates [batch, time, 4 * units],
  act_c [batch, time, units])``, the last four what the backward reads;
- ``FastlstmBackward(x, kernel, recurrent_kernel, h, c, gates, act_c, d_outputs, d_h_final,
  d_c_final) -> (dx, dkernel, drecurrent_kernel, dbias, dh0, dc0)``;

each with the attributes ``activation`` and ``recurrent_activation`` (activation ids),
``go_backwards`` and ``return_sequences``.
"""
import contextlib
import ctypes
import functools
import hashlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

SOURCE = Path(__file__).with_name("tf_lstm.cc")
DIRECTIONS = {"forward": 0, "backward": 1}
DTYPES = {"float32": 0, "float64": 1}


class BuildError(RuntimeError):
    """The operations could not be built on this machine."""


@functools.cache
def operations(dtype):
    """The module of the two operations, their targets for ``dtype`` ('float32' or 'float64') set,
    or None where the operations cannot be built here (after one warning naming the reason)."""
    try:
        library = _library()
    except BuildError as error:
        warnings.warn(f"fastlstm.keras.LSTM: {error}; TensorFlow calls fastlstm through tf.numpy_function "
                      "instead, about 0.3 ms more per training step (this warning is shown once per process)",
                      stacklevel=4)
        return None
    module, set_target = library
    from fastlstm.keras import xla_lstm

    for direction, code in DIRECTIONS.items():
        set_target(code, DTYPES[dtype], xla_lstm.compiled(direction, dtype).address)
    return module


@functools.cache
def _library():
    """The loaded operations and their library's ``fastlstm_set_target``, built first if needed,
    while Numba compiles (or loads) the float32 targets that most models call."""
    import tensorflow as tf

    path = library_path()
    if not path.exists():
        _build_once(path)
    try:
        module = tf.load_op_library(str(path))
        set_target = ctypes.CDLL(str(path)).fastlstm_set_target
    except (tf.errors.OpError, OSError, AttributeError) as error:
        raise BuildError(f"its TensorFlow operation {path} did not load ({error}); remove the file to build it "
                         "again") from error
    set_target.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
    return module, set_target


def _build_once(path):
    """Builds the library into ``path`` unless another process did while this one waited for it."""
    try:
        import fcntl
    except ImportError as error:  # Windows, which has neither flock nor TensorFlow's g++ flags
        raise BuildError("its TensorFlow operation is built on Linux and macOS only") from error
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = open(path.with_suffix(".lock"), "w")
    except OSError as error:
        raise BuildError(f"the cache directory {path.parent} is not writable ({error}); set FASTLSTM_CACHE_DIR "
                         "to one that is") from error
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # processes starting together wait for one build
        if not path.exists():
            with _building(path):
                from fastlstm.keras import xla_lstm

                for direction in DIRECTIONS:
                    xla_lstm.compiled(direction, "float32")


def library_path():
    """Where the operations built for this TensorFlow and this source are kept."""
    import tensorflow as tf

    return cache_directory() / f"tf_lstm-{tf.__version__}-{_build_key()}.so"


def cache_directory():
    """Where built operations are kept: ``$FASTLSTM_CACHE_DIR``, else ``$XDG_CACHE_HOME/fastlstm``,
    else ``~/.cache/fastlstm``."""
    if os.environ.get("FASTLSTM_CACHE_DIR"):
        return Path(os.environ["FASTLSTM_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fastlstm"


def _command(output):
    """The compiler's command line that builds the operations into ``output``."""
    import tensorflow as tf

    compiler = os.environ.get("CXX") or "g++"
    return [*shlex.split(compiler), "-shared", "-fPIC", "-O2", "-w", str(SOURCE), "-o", str(output),
            *tf.sysconfig.get_compile_flags(), *tf.sysconfig.get_link_flags()]


def _build_key():
    """What the built library depends on: the source and the command (the compiler, TensorFlow's
    flags), so that a change in either builds it again."""
    digest = hashlib.sha256(SOURCE.read_bytes())
    digest.update(" ".join(_command("")).encode())
    return digest.hexdigest()[:16]


@contextlib.contextmanager
def _building(path):
    """Runs the compiler into a temporary file beside ``path`` while the body of the ``with``
    runs, then waits for it and moves its library to ``path``; raises BuildError with the
    compiler's last lines if it fails. On any error or interrupt, in the body or while waiting,
    the compiler is stopped; the temporary file is removed either way."""
    command = _command("")
    if shutil.which(command[0]) is None:
        raise BuildError(f"no C++ compiler {command[0]!r} was found (set CXX, or install g++) to build its "
                         "TensorFlow operation")
    handle, name = tempfile.mkstemp(prefix=path.name, suffix=".partial", dir=path.parent)
    os.close(handle)
    temporary = Path(name)
    try:
        print(f"fastlstm.keras: building its TensorFlow operation into {path} (once; about 10 s)", file=sys.stderr)
        try:
            # A session of its own, so that stopping it stops the compiler's own children too.
            process = subprocess.Popen(_command(temporary), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, text=True, start_new_session=True)
        except OSError as error:
            raise BuildError(f"the C++ compiler {command[0]!r} could not be started ({error})") from error
        try:
            yield
            output, _ = process.communicate()
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        if process.returncode != 0:
            tail = "\n".join(output.strip().splitlines()[-5:])
            raise BuildError(f"building its TensorFlow operation failed ({command[0]} exited with "
                             f"{process.returncode}):\n{tail}")
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
