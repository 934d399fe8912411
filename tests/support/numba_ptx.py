"""Writes the PTX of the Numba CUDA kernels (kernels/numba_cuda.py) for one compute capability.

The compile gate (tests/test_numba_cuda.py) calls write_ptx in its own process for cc 8.0 and 9.0,
and runs this file with the Python of a CUDA 12 Numba stack for cc 7.0, which numba-cuda on
CUDA 13 refuses:

    python numba_ptx.py KERNELS_FILE MAJOR.MINOR DTYPE SIGNATURES_JSON DIRECTORY

It loads the kernels file by path, its directory as a package of its own, and imports nothing of
fastlstm (the kernels need only numba and numpy).
"""
import importlib.util
import json
import pathlib
import sys

import numpy as np
from numba import cuda


def write_ptx(module, cc, dtype, signatures, directory):
    """Writes directory/NAME.ptx for each {NAME: Numba signature string} of ``module.kernels(dtype)``,
    with the module's launch bounds."""
    for function, signature in signatures.items():
        ptx, _ = cuda.compile_ptx(module.kernels(dtype)[function].py_func, signature, cc=cc,
                                  launch_bounds=module.launch_bounds(function, dtype))
        (pathlib.Path(directory) / f"{function}.ptx").write_text(ptx)


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
    path, cc, dtype, signatures, directory = sys.argv[1:]
    module = load_kernels(path)
    write_ptx(module, tuple(map(int, cc.split("."))), np.dtype(dtype), json.loads(signatures), directory)
