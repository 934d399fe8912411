"""Writes the PTX of the Numba CUDA kernels (kernels/numba_cuda.py) for some compute capabilities.

The compile gate (tests/test_numba_cuda.py) calls write_ptx in its own process for cc 8.0 and 9.0,
and runs this file with the Python of a CUDA 12 Numba stack for cc 7.0, which numba-cuda on
CUDA 13 refuses:

    python numba_ptx.py KERNELS_FILE MAJOR.MINOR[,MAJOR.MINOR...] DTYPE SIGNATURES_JSON DIRECTORY

Each kernel is lowered to NVVM IR once, which is nearly all of the time (Numba inlines the device
functions in its own IR), and NVVM makes each capability's PTX from it. Numba's lowering depends on
the capability only through thresholds (6.0 for float64 atomics, 7.5 for a fast-math tanh) that
7.0, 8.0 and 9.0 each pass, so the IR is what Numba makes on each of these GPUs.

It loads the kernels file by path, its directory as a package of its own, and imports nothing of
fastlstm (the kernels need only numba and numpy).
"""
import importlib.util
import json
import pathlib
import sys

import numpy as np
from numba.cuda import compiler


def write_ptx(module, ccs, dtype, signatures, directory):
    """Writes directory/NAME.smXY.ptx for each {NAME: Numba signature string} of
    ``module.kernels(dtype)`` and each compute capability (X, Y) of ``ccs``, with the module's launch
    bounds, as numba.cuda.compile_ptx would (whose internals it calls, to lower each kernel once)."""
    for function, signature in signatures.items():
        library, _ = compiler._compile_pyfunc_with_fixup(
            module.kernels(dtype)[function].py_func, signature, device=False, cc=max(ccs), abi="numba",
            launch_bounds=module.launch_bounds(function, dtype))
        for cc in ccs:
            (ptx,) = library.get_asm_strs(cc=cc)
            (pathlib.Path(directory) / f"{function}.sm{cc[0]}{cc[1]}.ptx").write_text(ptx)


def load_kernels(path):
    """The module at ``path`` (kernels/numba_cuda.py) imported from its directory as a package, so
    that its relative imports (kernels/activation_ids.py) resolve without fastlstm installed."""
    path = pathlib.Path(path)
    spec = importlib.util.spec_from_file_location("kernels", path.parent / "__init__.py",
                                                  submodule_search_locations=[str(path.parent)])
    package = importlib.util.module_from_spec(spec)
    sys.modules["kernels"] = package
    spec.loader.exec_module(package)
    return importlib.import_module(f"kernels.{path.stem}")


if __name__ == "__main__":
    path, ccs, dtype, signatures, directory = sys.argv[1:]
    module = load_kernels(path)
    write_ptx(module, [tuple(map(int, cc.split("."))) for cc in ccs.split(",")], np.dtype(dtype),
              json.loads(signatures), directory)
