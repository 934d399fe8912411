"""The backend registry: lazy probing, honest reports, 'auto' and its warnings."""
import sys
import types
import warnings

import numpy as np
import pytest

import fastlstm
from fastlstm import backends
from support.lstm_testing import run_python


def test_import_needs_numpy_alone_and_probes_nothing():
    code = (
        "import sys, fastlstm\n"
        "heavy = [m for m in sys.modules if m.split('.')[0] in "
        "('tensorflow', 'keras', 'cupy', 'numba', 'torch', 'jax')]\n"
        "probed = [m for m in sys.modules if m.startswith('fastlstm.backends.')]\n"
        "print(heavy, probed)\n"
    )
    out = run_python(code)
    assert out.strip() == "[] []"


def test_without_a_cuda_driver_the_gpu_backends_are_reported_without_importing_them():
    """CuPy and numba.cuda take about 2 s to import; where no driver can be loaded the GPU backends
    say so without. Under Numba's CUDA simulator numba_cuda is imported and tells why it is not
    a GPU, as before."""
    code = (
        "import sys, fastlstm.backends as b\n"
        "b._cuda_driver_missing = lambda: 'libcuda.so.1: cannot open shared object file'\n"
        "status = {s.name: s.detail for s in b.available_backends()}\n"
        "print(status['cupy']); print(status['numba_cuda'])\n"
        "print([m for m in ('cupy', 'numba.cuda') if m in sys.modules])\n"
    )
    lines = run_python(code, env={"NUMBA_ENABLE_CUDASIM": "0"}).splitlines()
    assert lines == ["no CUDA driver (libcuda.so.1: cannot open shared object file)"] * 2 + ["[]"]
    simulated = run_python(code, env={"NUMBA_ENABLE_CUDASIM": "1"}).splitlines()
    assert simulated[0] == lines[0] and "simulator is on" in simulated[1]


def test_numpy_backend_is_available_and_auto_picks_the_best_that_works():
    statuses = {s.name: s for s in fastlstm.available_backends()}
    assert set(statuses) == set(backends.MODULES)
    assert statuses["numpy"].available and "NumPy" in statuses["numpy"].detail
    best = next(name for name in backends.PREFERENCE if statuses[name].available)
    assert backends.get_backend("auto") is backends.get_backend(best)


def test_explicit_numpy_backend_agrees_with_auto():
    rng = np.random.default_rng(1)
    x, k, r = rng.random((2, 3, 1)), rng.random((1, 8)), rng.random((2, 8))
    auto = fastlstm.lstm_forward(x, k, r)
    numpy = fastlstm.lstm_forward(x, k, r, backend="numpy")
    # auto may be another backend (numba_cpu): the same math, rounded in another order.
    np.testing.assert_allclose(auto.outputs, numpy.outputs, rtol=1e-12, atol=1e-14)


@pytest.fixture
def registry(monkeypatch):
    """A registry with two fake backends in front of numpy: one installed but broken (no device),
    one whose library is missing."""
    broken = types.ModuleType("fake_broken")

    def probe():
        raise backends.BackendUnavailable("no CUDA device (cudaErrorInsufficientDriver)")

    broken.probe = probe
    broken.forward = broken.backward = lambda *args: None
    broken.CAPABILITIES = ("forward", "backward")
    monkeypatch.setitem(sys.modules, "fake_broken", broken)
    monkeypatch.setattr(backends, "MODULES", {"broken": "fake_broken", "missing": "fake_module_that_does_not_exist",
                                              "numpy": backends.MODULES["numpy"]})
    monkeypatch.setattr(backends, "PREFERENCE", ("broken", "missing", "numpy"))
    _forget_loaded_backends()
    yield
    _forget_loaded_backends()


def _forget_loaded_backends():
    for cached in (backends._load, backends._auto, backends.get_backend):
        cached.cache_clear()


def test_without_a_gpu_cupy_is_listed_unavailable_with_the_reason_and_never_picked():
    status = next(s for s in fastlstm.available_backends() if s.name == "cupy")
    assert not status.available
    # Without a driver the registry says so; with one but no device, CuPy does; without CuPy, it
    # is not installed.
    assert status.detail.startswith(("no CUDA driver (", "no CUDA device (cudaError",
                                     "not installed (No module named 'cupy')"))
    assert "cupy" not in backends.PREFERENCE and backends.get_backend("auto").__name__ != "fastlstm.backends.cupy"


def test_unavailable_backends_are_listed_with_their_reason(registry):
    report = [str(s) for s in fastlstm.available_backends()]
    assert report[0] == "broken: unavailable (no CUDA device (cudaErrorInsufficientDriver))"
    assert report[1].startswith("missing: unavailable (not installed")
    assert report[2].startswith("numpy: ok")


def test_asking_for_an_unavailable_backend_says_why(registry):
    with pytest.raises(fastlstm.BackendUnavailable, match="broken: unavailable .no CUDA device"):
        backends.get_backend("broken")


def test_resolve_names_the_backend_get_backend_gives(registry):
    with pytest.warns(UserWarning, match="using backend 'numpy'"):
        assert backends.resolve() == "numpy"
    assert backends.resolve("auto") == "numpy"
    assert backends.resolve("numpy") == "numpy"
    assert backends.get_backend(backends.resolve()) is backends.get_backend("auto")


def test_resolve_refuses_as_get_backend_does(registry):
    for refuse in (backends.resolve, backends.get_backend):
        with pytest.raises(ValueError, match=r"backend must be 'auto' or one of \['broken', 'missing', 'numpy'\], got 'nope'"):
            refuse("nope")
        with pytest.raises(fastlstm.BackendUnavailable, match="broken: unavailable .no CUDA device"):
            refuse("broken")
        with pytest.raises(fastlstm.BackendUnavailable, match="missing: unavailable .not installed"):
            refuse("missing")


def test_auto_reports_a_broken_backend_once_and_stays_silent_about_a_missing_one(registry):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            assert backends.get_backend("auto") is backends.get_backend("numpy")
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1
    assert "using backend 'numpy'" in messages[0] and "broken" in messages[0]
    assert "missing" not in messages[0]
