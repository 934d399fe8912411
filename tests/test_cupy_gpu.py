"""The CuPy backend on a real GPU against the NumPy reference. Everything here also runs on the CPU
through the emulation harness (test_cuda_emulated.py, test_cupy_backend.py); these tests add the
real compiler, driver and hardware, and run wherever CuPy finds a device."""
import numpy as np
import pytest

import fastlstm
from fastlstm import lstm_backward, lstm_forward
from lstm_testing import random_inputs

GPU = next(s for s in fastlstm.available_backends() if s.name == "cupy")
pytestmark = pytest.mark.skipif(not GPU.available, reason=f"needs a CUDA GPU: {GPU.detail}")
TOLERANCE = {np.float32: 1e-5, np.float64: 1e-12}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "shape", [(1, 1, 1, 32), (1, 3, 1, 32), (25, 1, 1, 16), (1, 5, 1, 50), (5, 7, 3, 33), (300, 20, 8, 64),
              (4, 6, 3, 160)],  # the last is past every GPU's persistent limit: the stepwise path
    ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("options", [
    dict(), dict(return_sequences=True, go_backwards=True), dict(recurrent_activation="hard_sigmoid"),
    dict(recurrent_activation="hard_sigmoid_keras2", return_sequences=True),
], ids=["plain", "sequences-backwards", "hard_sigmoid", "hard_sigmoid_keras2"])
def test_cupy_matches_the_reference(shape, dtype, options):
    import cupy

    batch, time, input_dim, units = shape
    rng = np.random.default_rng(list(shape))
    inputs = random_inputs(rng, batch, time, input_dim, units, dtype)
    reference = lstm_forward(**inputs, **options, backend="numpy")
    grads_in = [rng.standard_normal(a.shape).astype(dtype) for a in reference[:3]]
    expected = [*reference[:3], *lstm_backward(reference.cache, *grads_in)]

    on_device = {k: cupy.asarray(v) for k, v in inputs.items()}
    result = lstm_forward(**on_device, **options, backend="cupy")
    got = [*result[:3], *lstm_backward(result.cache, *map(cupy.asarray, grads_in))]
    for mine, want in zip(got, expected):
        assert isinstance(mine, cupy.ndarray)
        mine = cupy.asnumpy(mine)
        assert np.abs(mine - want).max() / max(1.0, np.abs(want).max()) <= TOLERANCE[dtype]


def test_numpy_arrays_go_to_the_device_and_back():
    inputs = random_inputs(np.random.default_rng(0), 3, 4, 2, 8, np.float32)
    result = lstm_forward(**inputs, backend="cupy")
    grads = lstm_backward(result.cache, np.ones_like(result.outputs))
    assert all(isinstance(a, np.ndarray) for a in (*result[:3], *grads))
