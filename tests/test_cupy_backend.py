"""The CuPy backend module itself, run on the CPU: a stand-in for ``cupy`` keeps NumPy arrays and
runs each ``RawModule`` kernel through the emulation harness, so the backend's forward and
backward, its launcher (name expressions, NVRTC options, argument marshalling, the shared-memory
opt-in) and its device queries execute here exactly as they would on a GPU."""
import types

import numpy as np
import pytest

import fastlstm
from support.cuda_emulation import EmulatedLauncher, build
from fastlstm.backends import cupy as cupy_backend
from fastlstm.backends.plan import DEFAULT_SHARED_MEMORY, Launch
from support.lstm_testing import random_inputs


class FakeRawModule:
    def __init__(self, device, code, options, name_expressions):
        self.device, self.code, self.options, self.names = device, code, options, list(name_expressions)

    def get_function(self, name):
        assert name in self.names, f"{name} was not among the module's name expressions"
        return FakeRawKernel(self.device, name)


class FakeRawKernel:
    def __init__(self, device, name):
        self.device, self.name = device, name
        self.max_dynamic_shared_size_bytes = DEFAULT_SHARED_MEMORY
        self.kernel = FakeFunction(self)

    def __call__(self, grid, block, args, shared_mem=0):
        self.launch(grid, block, args, shared_mem, False)

    def launch(self, grid, block, args, shared_mem, cooperative):
        # A real device refuses more dynamic shared memory than the kernel opted in to.
        assert shared_mem <= self.max_dynamic_shared_size_bytes
        self.device.launches.append((self.name, shared_mem))
        unpacked = [None if isinstance(a, np.uint64) and a == 0 else int(a) if isinstance(a, np.int32) else a
                    for a in args]
        self.device.launcher(Launch(self.name, "", grid, block, shared_mem, cooperative), *unpacked)


class FakeFunction:
    """RawKernel.kernel, CuPy's compiled function, which can launch cooperatively."""

    def __init__(self, raw_kernel):
        self.raw_kernel = raw_kernel

    def __call__(self, grid, block, args, shared_mem=0, stream=None, enable_cooperative_groups=False):
        self.raw_kernel.launch(grid, block, args, shared_mem, enable_cooperative_groups)


class FakeDevice:
    """What the backend asks of ``cupy``: NumPy for the arrays, the emulator for the kernels."""

    def __init__(self, launcher, attributes):
        self.launcher, self.launches, self.modules = launcher, [], []
        runtime = types.SimpleNamespace(
            cudaDevAttrMaxThreadsPerBlock=1, cudaDevAttrMaxSharedMemoryPerBlockOptin=97,
            cudaDevAttrMultiProcessorCount=16,
            deviceGetAttribute=lambda attribute, device: attributes[attribute],
        )
        self.cuda = types.SimpleNamespace(runtime=runtime, Device=lambda: types.SimpleNamespace(id=0))

    def RawModule(self, code, options, name_expressions):  # noqa: N802 (CuPy's name)
        module = FakeRawModule(self, code, options, name_expressions)
        self.modules.append(module)
        return module

    def asnumpy(self, a):
        return np.asarray(a)

    def __getattr__(self, name):
        return getattr(np, name)


@pytest.fixture(params=[("persistent", 227 * 1024), ("cooperative", 31000), ("stepwise", 64)], ids=lambda p: p[0])
def device(request, monkeypatch):
    """A device with 1024 threads per block and 2 multiprocessors, whose opt-in shared memory
    allows the persistent path at 40 units, or only the cooperative one (a slice's part of
    recurrent_kernel and a pass of four rows' dz: 32 units, 23.0 KB, in float32, 20 units, 30.7 KB,
    in float64; the persistent path takes more than 31 KB), or nothing but the stepwise one."""
    path, shared = request.param
    fake = FakeDevice(EmulatedLauncher(build()), {1: 1024, 97: shared, 16: 2})
    fake.path = path
    monkeypatch.setattr(cupy_backend, "cupy", fake)
    cupy_backend._engine.cache_clear()
    yield fake
    cupy_backend._engine.cache_clear()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_backend_matches_the_reference_through_its_own_launcher(device, dtype):
    inputs = random_inputs(np.random.default_rng(1), 5, 6, 3, 40, dtype)
    options = dict(return_sequences=True, go_backwards=True, recurrent_activation="hard_sigmoid")
    ours = fastlstm.lstm_forward(**inputs, **options, backend="numpy")
    theirs = cupy_backend.forward(*inputs.values(), fastlstm.ops.LSTMOptions(**options, activation="tanh"))
    assert theirs[3][0].plan.path == device.path
    for mine, reference in zip(theirs[:3], ours[:3]):
        np.testing.assert_allclose(mine, reference, rtol=1e-5, atol=1e-5)
    dy = np.ones_like(ours.outputs)
    for mine, reference in zip(cupy_backend.backward(theirs[3], dy, None, ours.c),
                               fastlstm.lstm_backward(ours.cache, dy, None, ours.c)):
        np.testing.assert_allclose(mine, reference, rtol=1e-5, atol=1e-5)

    sources = sorted(m.code.split("\n")[0] for m in device.modules)
    assert len(device.modules) == 1 and all(o in device.modules[0].options for o in cupy_backend.NVRTC_OPTIONS)
    assert sources[0].startswith(f"// The {device.path} path")


def test_a_block_over_48_kb_opts_in_to_more_shared_memory(device):
    units = 60  # recurrent_kernel alone is 60 * 241 * 4 bytes = 57840 > 48 KB
    inputs = random_inputs(np.random.default_rng(2), 2, 3, 1, units, np.float32)
    outputs, h, c, saved = cupy_backend.forward(*inputs.values(), fastlstm.ops.LSTMOptions())
    cupy_backend.backward(saved, np.ones_like(outputs), None, None)
    if device.launches[0][0].startswith("fastlstm::persistent"):
        assert all(shared > DEFAULT_SHARED_MEMORY for _, shared in device.launches)
    else:
        assert all(shared == 0 for _, shared in device.launches)
