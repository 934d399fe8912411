"""The numba_cuda backend: its simulator tests (in a process of their own, since the simulator
must be switched on before numba is imported), its launcher's import of device arrays, and its
compile gate.

Compile gate: every kernel signature the backend can request, lowered by Numba as
numba.cuda.compile_ptx does, made into PTX for compute capability 7.0, 8.0 and 9.0
(tests/support/numba_ptx.py) and assembled by ptxas -v. Fails on an error, a spill, local memory,
more registers than the largest block the plan launches allows, shared memory over the 48 KB the
backend plans with, or any float64 instruction in a float32 kernel; and, in the persistent and
cooperative kernels' sm_90 SASS, on a dot-product loop over INSTRUCTIONS_PER_FMA instructions or
over the CUDA C target's shared loads per multiply-add, or a staging loop with fewer loads in
flight than the CUDA C target. CUDA 13 dropped Volta, so sm_70's PTX is made and assembled by a
CUDA 12 Numba stack of the same Numba version, as a Volta user would have, in a virtual
environment of its own that the test makes under build/ (tests/support/numba_ptx.py runs there).
"""
import fcntl
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

import numba
import numba_cuda as numba_cuda_package
import numpy as np
import pytest

from fastlstm.backends import numba_cuda as backend, plan
from fastlstm.backends.plan import ARCHITECTURES, C_TYPES, DEFAULT_SHARED_MEMORY, DeviceLimits, plan_lstm
from fastlstm.kernels import numba_cuda

from support import sass
from support.numba_ptx import lower, write_ptx
from test_compile_gate import FMA_TARGETS, STAGING_TARGET, _dot_product

TESTS = pathlib.Path(__file__).parent
REGISTERS_PER_BLOCK = 65536
INSTRUCTIONS_PER_FMA = 4.0  # in the persistent and cooperative kernels' dot-product loops at sm_90, at most
# The cuda12 fixture's stack runs this environment's Numba, so the IR lowered here is what it would lower.
NUMBA_VERSIONS = (numba.__version__, numba_cuda_package.__version__)
CUDA12_PACKAGES = ["numpy", f"numba=={NUMBA_VERSIONS[0]}", f"numba-cuda[cu12]=={NUMBA_VERSIONS[1]}"]
# Fails unless Numba runs on cuda-bindings 12 in this environment's versions; prints CUDA 12's ptxas.
CUDA12_PROBE = ("import cuda.bindings, numba, numba_cuda, nvidia.cuda_nvcc as nvcc; "
                "assert cuda.bindings.__version__.startswith('12.'), cuda.bindings.__version__; "
                f"assert (numba.__version__, numba_cuda.__version__) == {NUMBA_VERSIONS}; "
                "print(list(nvcc.__path__)[0] + '/bin/ptxas')")


def test_simulator_suite_passes_in_its_own_process():
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", str(TESTS / "simulator"), "-q", "-p", "no:cacheprovider",
         "--rootdir", str(TESTS.parent), "-c", str(TESTS.parent / "pyproject.toml")],
        capture_output=True, text=True, env=env, cwd=tempfile.gettempdir(), timeout=600)
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else result.stderr[-2000:]
    print(summary)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]
    assert re.search(r"\b(\d+) passed\b", summary) and int(re.search(r"(\d+) passed", summary).group(1)) >= 53
    assert "failed" not in summary and "skipped" not in summary


class _DeviceArray:
    """A stand-in for a CuPy array: what Numba takes for a device array is its interface."""

    __cuda_array_interface__ = {"shape": (2, 3), "typestr": "<f4", "data": (1 << 20, False), "version": 3,
                                "strides": None, "stream": 7}


def test_the_launcher_imports_device_arrays_without_synchronising_their_stream(monkeypatch):
    imported, launched = [], []

    def as_cuda_array(a, sync=True):
        imported.append((a, sync))
        return ("imported", a)

    class Kernel:
        def __getitem__(self, configuration):
            return lambda *arguments: launched.append((configuration, arguments))

    monkeypatch.setattr(backend.cuda, "as_cuda_array", as_cuda_array)
    monkeypatch.setattr(backend, "kernels", lambda dtype: {"persistent_forward": Kernel()})
    device, host = _DeviceArray(), np.zeros(3, np.float32)
    launch = plan.Launch("fastlstm::persistent_forward<float>", "lstm_persistent.cu", (2,), (64,), 1024)
    backend.NumbaLauncher(stream=lambda: "the stream")(launch, device, host, 5)
    assert imported == [(device, False)]
    [(configuration, (first, second, third))] = launched
    assert configuration == ((2,), (64,), "the stream", 1024)
    assert first == ("imported", device) and second is host and third == 5


def _signatures(dtype):
    """The argument types the backend passes, as Numba signature strings: C-contiguous arrays and
    Python ints."""
    T = np.dtype(dtype).name
    a1, a2, a3, i, barrier = f"{T}[::1]", f"{T}[:, ::1]", f"{T}[:, :, ::1]", "int64", "uint32[::1]"
    return {function: ", ".join(types) for function, types in {
        "persistent_forward": (a3, a1, a2, a2, a2, a2, a3, a3, a3, a3, a2, a2, i, i, i, i, i, i, i, i, i),
        "persistent_backward": (a2, a3, a3, a3, i, a2, a2, a3, a2, a2, i, i, i, i, i, i, i),
        "cooperative_forward": (a3, a1, a2, a2, a2, a2, a3, a3, a3, a3, a2, a2, a3, barrier, *(i,) * 10),
        "cooperative_backward": (a2, a3, a3, a3, i, a2, a2, a3, a2, a2, a3, barrier, *(i,) * 8),
        "stepwise_forward": (a3, a2, a1, a2, a2, a3, a3, a3, a3, a2, a2, a2, i, i, i, i, i, i, i, i, i),
        "stepwise_backward": (a3, a3, a3, i, a2, a2, a2, a2, a3, a2, i, i, i, i, i, i, i),
    }.items()}


def _plan_name(function):
    """The plan's name of the Numba kernel ``function``: "cooperative::forward" for
    "cooperative_forward", as NumbaLauncher reads it the other way."""
    return next(name for names in plan.KERNELS.values() for name in names if name.replace("::", "_") == function)


def _largest_block(function, dtype):
    """The most threads per block the backend's plan asks of ``function``, on any number of
    multiprocessors (fewer make bigger blocks)."""
    name = plan.kernel_name(_plan_name(function), dtype)
    return max(launch.block[0] for processors in (1, 132) for units in range(1, 257) for batch in (1, 7, 4096)
               for launch in plan_lstm(batch, units, dtype, DeviceLimits(1024, DEFAULT_SHARED_MEMORY, processors),
                                       cooperative=True)[1:3]
               if launch.kernel == name)


def _run(command, failure):
    """The stdout of ``command``; the test fails with ``failure`` and the output if it fails."""
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        pytest.fail(f"{failure} ({' '.join(command)}):\n{result.stdout[-3000:]}{result.stderr[-3000:]}")
    return result.stdout


@pytest.fixture(scope="session")
def cuda12(request):
    """(python, ptxas) of a CUDA 12 Numba stack in a virtual environment of its own,
    build/numba-cuda12: this environment's Numba, whose numba-cuda[cu12] brings cuda-bindings 12 and
    CUDA 12's NVVM, NVRTC and ptxas, as a Volta user would have. Made on first use (about 15 s and
    0.8 GB) and reused while it works; the test fails, not skips, where it cannot be made."""
    venv = request.config.rootpath / "build" / "numba-cuda12"
    python = str(venv / "bin" / "python")
    probe = [python, "-I", "-c", CUDA12_PROBE]
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another pytest-xdist worker may be making it
        if not (venv.exists() and subprocess.run(probe, capture_output=True).returncode == 0):
            shutil.rmtree(venv, ignore_errors=True)
            _run([sys.executable, "-m", "venv", str(venv)], "could not make the CUDA 12 Numba stack for sm_70")
            _run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check", *CUDA12_PACKAGES],
                 "could not install the CUDA 12 Numba stack for sm_70")
    return python, _run(probe, "the CUDA 12 Numba stack for sm_70 does not work").strip()


def _assemble_and_check(ptx, arch, ptxas, function, dtype):
    """Assembles the PTX file ``ptx`` of ``function`` with ``ptxas -v`` for ``arch`` and checks
    what the module docstring says."""
    if dtype == np.float32:
        assert ".f64" not in ptx.read_text(), f"{function}: float64 arithmetic in a float32 kernel"
    result = subprocess.run([ptxas, f"-arch={arch}", "-v", "-warn-spills", "-warn-lmem-usage", str(ptx),
                             "-o", str(ptx.with_suffix(".cubin"))], capture_output=True, text=True)
    log = result.stdout + result.stderr
    assert result.returncode == 0 and "warning" not in log, f"{function} {arch}:\n{log}"
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    assert spills and spills.groups() == ("0", "0"), log
    registers = int(re.search(r"Used (\d+) registers", log).group(1))
    static_shared = re.search(r"(\d+) bytes smem", log)
    static_shared = int(static_shared.group(1)) if static_shared else 0
    threads = _largest_block(function, dtype)
    assert -(-registers // 8) * 8 * -(-threads // 32) * 32 <= REGISTERS_PER_BLOCK, f"{function}: {registers} x {threads}"
    assert static_shared + DEFAULT_SHARED_MEMORY <= ARCHITECTURES[arch].shared_memory_per_block_optin
    print(f"{arch} {function}<{C_TYPES[np.dtype(dtype)]}>: {registers} registers, block up to {threads}, "
          f"{static_shared} bytes static shared memory")
    if arch == "sm_90" and function in numba_cuda.PERSISTENT + numba_cuda.COOPERATIVE:  # as the CUDA C gate's
        (loops,) = sass.cubin_loops(ptx.with_suffix(".cubin")).values()
        in_flight = max(loop.loads_in_flight for loop in loops if loop.staging)
        assert in_flight >= STAGING_TARGET, f"{function}: staging keeps {in_flight} loads in flight"
        fma_loops = [loop for loop in loops if _dot_product(loop)]
        print("  inner loops: " + "; ".join(
            f"{loop.fma_count} FMAs, {loop.instructions_per_fma():.2f} instructions and "
            f"{loop.shared_loads_per_fma():.2f} shared loads per FMA" for loop in fma_loops)
              + "; staging: " + ", ".join(f"{loop.global_loads} loads ({loop.loads_in_flight} in flight) in "
                                          f"{loop.instructions} instructions" for loop in loops if loop.staging))
        assert fma_loops, f"{function}: no multiply-add loop in its SASS"
        for loop in fma_loops:
            assert loop.instructions_per_fma() <= INSTRUCTIONS_PER_FMA, \
                f"{function}: {loop.instructions_per_fma():.2f} instructions per multiply-add"
            assert loop.shared_loads_per_fma() <= FMA_TARGETS[_plan_name(function)][0], \
                f"{function}: {loop.shared_loads_per_fma():.2f} shared loads per multiply-add"


GATED = {"sm_70": (7, 0), "sm_80": (8, 0), "sm_90": (9, 0)}
# CUDA 13, this environment's, no longer targets Volta: sm_70's PTX is made by the NVVM of the
# cuda12 fixture's stack and assembled by its ptxas.
CUDA12_ARCHITECTURES = {"sm_70"}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_kernel_compiles_without_spills_or_float64_in_float32(dtype, tmp_path, request):
    signatures = _signatures(dtype)
    lower(numba_cuda, dtype, signatures, tmp_path)
    for arch, cc in GATED.items():
        if arch in CUDA12_ARCHITECTURES:
            python, ptxas = request.getfixturevalue("cuda12")
            _run([python, "-I", str(TESTS / "support" / "numba_ptx.py"), "%d.%d" % cc, str(tmp_path)],
                 f"CUDA 12's NVVM failed for {arch}")
        else:
            ptxas = "ptxas"
            write_ptx(cc, tmp_path)
        for function in signatures:
            _assemble_and_check(tmp_path / f"{function}.{arch.replace('_', '')}.ptx", arch, ptxas, function, dtype)


def test_the_kernels_keep_the_plans_constants():
    """The kernels file does not import the plan (the kernels stay apart from the backends' glue),
    so it repeats what it must agree with."""
    assert numba_cuda.PERSISTENT_THREADS == plan.PERSISTENT_THREADS
    assert numba_cuda.ROWS == plan.ROWS_PER_THREAD
    assert numba_cuda.VECTOR_BYTES == plan.VECTOR_BYTES


def test_the_backend_states_the_largest_units_of_its_one_launch_paths():
    stated = re.search(r"persistent path up to (\d+) units in float32\s+and (\d+) in float64, the\s+cooperative "
                       r"path beyond \(to (\d+) and (\d+) units with (\d+) multiprocessors\)", backend.__doc__)
    assert stated, backend.__doc__
    *units, processors = [int(n) for n in stated.groups()]
    limits = DeviceLimits(1024, DEFAULT_SHARED_MEMORY, processors)
    largest = [max(units for units in range(1, 1025) if plan_lstm(1, units, dtype, limits, True).path == path)
               for path in ("persistent", "cooperative") for dtype in (np.float32, np.float64)]
    assert units == largest, (stated.group(0), largest)
