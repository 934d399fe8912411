"""A launcher that runs the CUDA C kernels of fastlstm.kernels on the CPU, for FusedLSTM.

The same ``.cu`` files are compiled with g++ against ``emulation/cuda_emulation.h`` (one thread
per CUDA thread, a barrier for ``__syncthreads``; the cooperative kernels' blocks all at once),
one extern "C" entry per kernel instance that the launch plan can request, and called through
ctypes on NumPy arrays.
"""
import ctypes
import hashlib
import os
import pathlib
import subprocess
import sys
import tempfile

import numpy as np

import fastlstm.kernels
from fastlstm.backends.plan import COOPERATIVE_SOURCES, all_instances

HEADER = pathlib.Path(__file__).parent / "emulation" / "cuda_emulation.h"
BUILD_DIR = pathlib.Path(tempfile.gettempdir()) / "fastlstm-emulation"
KERNELS = pathlib.Path(fastlstm.kernels.__file__).parent  # the installed sources


def _translation_unit():
    lines = ['#include "cuda_emulation.h"']
    lines += [f'#include "{source}"' for source in sorted({source for source, _ in all_instances()})]
    for index, (source, name) in enumerate(all_instances()):
        launch = "launch_cooperative" if source in COOPERATIVE_SOURCES else "launch"
        lines.append(
            f'extern "C" void launch_{index}(unsigned gx, unsigned bx, size_t shared, void** args) '
            f"{{ emulation::{launch}(&{name}, dim3{{gx, 1, 1}}, dim3{{bx, 1, 1}}, shared, args); }}"
        )
    return "\n".join(lines) + "\n"


def build(sanitizer=None, kernels=KERNELS, defines=()):
    """The shared library of every kernel instance in the sources under ``kernels``, built once
    per source version and flags; ``defines``: macros, ``NAME=VALUE``, for the sources."""
    unit = _translation_unit()
    flags = ["-std=c++20", "-O1", "-g", "-fPIC", "-shared", "-pthread", *(f"-D{d}" for d in defines)]
    if sanitizer:
        flags.append(f"-fsanitize={sanitizer}")
    sources = sorted(kernels.glob("*.cu*"))
    contents = unit + HEADER.read_text() + "".join(p.read_text() for p in sources) + " ".join(flags)
    BUILD_DIR.mkdir(exist_ok=True)
    library = BUILD_DIR / f"kernels-{hashlib.sha256(contents.encode()).hexdigest()[:16]}.so"
    if not library.exists():
        # Built under a name of this process's and then renamed, so that a test process running
        # beside this one (pytest-xdist) never loads a half-written library.
        source = library.with_suffix(f".{os.getpid()}.cpp")
        source.write_text(unit)
        partial = source.with_suffix(".so")
        subprocess.run(["g++", *flags, f"-I{HEADER.parent}", f"-I{kernels}", str(source), "-o", str(partial)],
                       check=True, capture_output=True, text=True)
        os.replace(partial, library)
    return library


class EmulatedLauncher:
    """``launcher(launch, *arguments)`` for FusedLSTM, running the kernels on the CPU."""

    def __init__(self, library):
        self.library = ctypes.CDLL(str(library))
        self.entries = {name: getattr(self.library, f"launch_{i}") for i, (_, name) in enumerate(all_instances())}
        self.cooperative = {name for source, name in all_instances() if source in COOPERATIVE_SOURCES}
        self.launched = []  # the kernel names, in launch order

    def __call__(self, launch, *arguments):
        values = [_c_value(a) for a in arguments]
        pointers = (ctypes.c_void_p * len(values))(*[ctypes.addressof(v) for v in values])
        assert len(launch.grid) == 1 and len(launch.block) == 1
        # A grid-wide barrier launched without every block resident could wait for ever on a GPU.
        assert launch.cooperative == (launch.kernel in self.cooperative), f"{launch.kernel}: cooperative launch"
        self.entries[launch.kernel](ctypes.c_uint(launch.grid[0]), ctypes.c_uint(launch.block[0]),
                                    ctypes.c_size_t(launch.shared_memory), pointers)
        self.launched.append(launch.kernel)


def _c_value(argument):
    if argument is None or isinstance(argument, np.ndarray) and argument.size == 0:
        return ctypes.c_void_p(None)  # an absent optional array
    if isinstance(argument, np.ndarray):
        assert argument.flags.c_contiguous, "kernels take contiguous arrays"
        return ctypes.c_void_p(argument.ctypes.data)
    if isinstance(argument, int):
        return ctypes.c_int(argument)
    raise TypeError(f"no kernel argument of type {type(argument).__name__}")


def run_child(code, library, timeout, **environment):
    """Runs ``code`` in a new Python process with ``library`` as its argument, the tests' support
    modules importable and ``environment`` added; returns the completed process. From a neutral
    directory, so that the child imports the installed fastlstm, not the checkout's."""
    tests = str(pathlib.Path(__file__).parent.parent)
    env = dict(os.environ, **environment, PYTHONPATH=os.pathsep.join([tests, os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-c", code, str(library)], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=tempfile.gettempdir())
