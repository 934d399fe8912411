"""The GPU side of bench/, on a machine without a GPU: the GPU grid, the choice of implementations
by device, what a GPU benchmark records of its device, and Keras following KERAS_BACKEND."""
import importlib.util
import os
import pathlib
import subprocess
import sys
import tempfile
import types

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    """bench/conftest.py as a module of its own (its name would clash with tests/conftest.py)."""
    spec = importlib.util.spec_from_file_location("bench_conftest", ROOT / "bench" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _bench_kernels(*arguments, env=None):
    """bench/test_kernels.py run in a process of its own, with ``arguments``; its completed process."""
    # Without pytest-xdist's variables, which a worker's children inherit: pytest-benchmark would
    # take them for a parallel run and refuse to time.
    env = {name: value for name, value in {**os.environ, **(env or {})}.items() if not name.startswith("PYTEST_XDIST_")}
    return subprocess.run(
        [sys.executable, "-m", "pytest", str(ROOT / "bench" / "test_kernels.py"), "-p", "no:cacheprovider",
         "--rootdir", str(ROOT), "-c", str(ROOT / "pyproject.toml"), "-rs", *arguments],
        capture_output=True, text=True, env=env, cwd=tempfile.gettempdir(), timeout=600)


def test_the_gpu_grid_is_the_alphabet_shapes_then_the_default_grid_each_once(bench):
    grid = bench.GRIDS["gpu"]
    alphabet = [(1, 1, 1, 32), (1, 1, 3, 32), (1, 3, 1, 32), (25, 1, 1, 16), (1, 1, 1, 50), (1, 5, 1, 32),
                (4, 1, 1, 50)]
    assert set(alphabet) <= set(grid[:len(bench.ALPHABET_SHAPES)])
    assert set(grid) == set(alphabet + bench.REFERENCE_SHAPES + bench.BATCH_SWEEP)
    assert len(grid) == len(set(grid))


def test_without_a_gpu_every_implementation_is_a_cpu_one(bench):
    implementations = bench.implementations()
    assert [i.name for i in implementations if bench.DEVICES["cpu"](i)] == [i.name for i in implementations]
    assert not [i.name for i in implementations if bench.DEVICES["gpu"](i)]


def test_a_gpu_run_without_a_gpu_skips_saying_why_and_passes(tmp_path):
    result = _bench_kernels("--benchmark-only", "--bench-grid", "gpu", "--bench-device", "gpu",
                            f"--benchmark-json={tmp_path / 'out.json'}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no implementation runs here with --bench-device=gpu" in result.stdout
    assert "2 skipped" in result.stdout and "passed" not in result.stdout


def test_keras_follows_keras_backend_and_matches_the_reference():
    result = _bench_kernels("--benchmark-disable", "-v", "-k", "keras and b1-t1-d1-u50", env={"KERAS_BACKEND": "torch"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("[keras-torch-b1-t1-d1-u50-float") == 4  # two passes, two dtypes
    assert result.stdout.count("PASSED") == 4


def test_keras_on_another_backend_is_refused_naming_it():
    result = _bench_kernels("--collect-only", "-q", env={"KERAS_BACKEND": "jax"})
    assert result.returncode != 0
    assert "bench/ times Keras on its tensorflow or torch backend, got KERAS_BACKEND='jax'" in result.stdout


def test_a_gpu_benchmark_records_its_device_through_cupy(bench, monkeypatch):
    runtime = types.SimpleNamespace(
        getDeviceProperties=lambda device: {"name": b"NVIDIA H100 80GB HBM3", "major": 9, "minor": 0},
        driverGetVersion=lambda: 13000, runtimeGetVersion=lambda: 12080)
    cuda = types.SimpleNamespace(runtime=runtime, Device=lambda: types.SimpleNamespace(id=0))
    monkeypatch.setitem(sys.modules, "cupy", types.SimpleNamespace(cuda=cuda))
    bench.gpu_info.cache_clear()  # read once per process
    try:
        assert bench.gpu_info() == {"gpu": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0",
                                    "cuda_driver": "13.0", "cuda_runtime": "12.8"}
    finally:
        bench.gpu_info.cache_clear()
