"""The numba_cuda backend: its simulator tests (in a process of their own, since the simulator
must be switched on before numba is imported) and its compile gate.

Compile gate: every kernel signature the backend can request, compiled by numba.cuda.compile_ptx
for compute capability 8.0 and 9.0 and assembled by ptxas -v. Fails on an error, a spill, local
memory, more registers than the largest block the plan launches allows, shared memory over the
48 KB the backend plans with, or any float64 instruction in a float32 kernel. Compute capability
7.0 is not gated: numba-cuda on CUDA 13 refuses it (CUDA 13 dropped Volta), and a CUDA 12 Numba
stack cannot share this environment.
"""
import os
import pathlib
import re
import subprocess
import sys
import tempfile

import numpy as np
import pytest
from numba import cuda, float32, float64, int64

from fastlstm.backends.plan import ARCHITECTURES, C_TYPES, DEFAULT_SHARED_MEMORY, DeviceLimits, plan_lstm
from fastlstm.kernels.numba_cuda import LAUNCH_BOUNDS, kernels

TESTS = pathlib.Path(__file__).parent
REGISTERS_PER_BLOCK = 65536


def test_simulator_suite_passes_in_its_own_process():
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", str(TESTS / "simulator"), "-q", "-p", "no:cacheprovider",
         "--rootdir", str(TESTS.parent), "-c", str(TESTS.parent / "pyproject.toml")],
        capture_output=True, text=True, env=env, cwd=tempfile.gettempdir(), timeout=600)
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else result.stderr[-2000:]
    print(summary)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]
    assert re.search(r"\b(\d+) passed\b", summary) and int(re.search(r"(\d+) passed", summary).group(1)) >= 49
    assert "failed" not in summary and "skipped" not in summary


def _signatures(dtype):
    """The argument types the backend passes: C-contiguous arrays and Python ints."""
    T = {np.float32: float32, np.float64: float64}[dtype]
    a2, a3, i = T[:, ::1], T[:, :, ::1], int64
    return {
        "persistent_forward": (a3, a2, a3, a3, a3, i, i, i, i, i, i),
        "persistent_backward": (a2, a3, a3, a3, i, a2, a2, a3, a2, a2, i, i, i, i, i, i),
        "stepwise_forward": (a3, a2, a3, a3, a3, i, i, i, i, i, i),
        "stepwise_backward": (a3, a3, a3, i, a2, a2, a3, i, i, i, i, i, i),
    }


def _largest_block(function, dtype):
    """The most threads per block the backend's plan asks of ``function``, on any number of
    multiprocessors (fewer make bigger blocks)."""
    name = f"{function}<{C_TYPES[np.dtype(dtype)]}>"
    return max(launch.block[0] for processors in (1, 132) for units in range(1, 257) for batch in (1, 7, 4096)
               for launch in plan_lstm(batch, units, dtype, DeviceLimits(1024, DEFAULT_SHARED_MEMORY, processors))[1:3]
               if launch.kernel.endswith(name))


GATED = {"sm_80": (8, 0), "sm_90": (9, 0)}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("arch", sorted(GATED))
def test_every_kernel_compiles_without_spills_or_float64_in_float32(arch, dtype, tmp_path):
    for function, signature in _signatures(dtype).items():
        ptx, _ = cuda.compile_ptx(kernels(dtype)[function].py_func, signature, cc=GATED[arch],
                                  launch_bounds=LAUNCH_BOUNDS.get(function))
        if dtype == np.float32:
            assert ".f64" not in ptx, f"{function}: float64 arithmetic in a float32 kernel"
        source = tmp_path / f"{function}.ptx"
        source.write_text(ptx)
        result = subprocess.run(["ptxas", f"-arch={arch}", "-v", "-warn-spills", "-warn-lmem-usage", str(source),
                                 "-o", str(source.with_suffix(".cubin"))], capture_output=True, text=True)
        log = result.stdout + result.stderr
        assert result.returncode == 0 and "warning" not in log, f"{function} {arch}:\n{log}"
        spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
        assert spills and spills.groups() == ("0", "0"), log
        registers = int(re.search(r"Used (\d+) registers", log).group(1))
        static_shared = re.search(r"(\d+) bytes smem", log)
        threads = _largest_block(function, dtype)
        assert -(-registers // 8) * 8 * -(-threads // 32) * 32 <= REGISTERS_PER_BLOCK, f"{function}: {registers} x {threads}"
        assert (int(static_shared.group(1)) if static_shared else 0) + DEFAULT_SHARED_MEMORY <= \
            ARCHITECTURES[arch].shared_memory_per_block_optin
        print(f"{arch} {function}<{C_TYPES[np.dtype(dtype)]}>: {registers} registers, block up to {threads}")
