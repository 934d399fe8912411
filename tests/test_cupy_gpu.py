"""The CuPy backend on a real GPU against the NumPy reference. Everything here also runs on the CPU
through the emulation harness (test_cuda_emulated.py, test_cupy_backend.py); these tests add the
real compiler, driver and hardware, and run wherever CuPy finds a device."""
import numpy as np
import pytest

from fastlstm import lstm_backward, lstm_forward
from support.gpu_testing import check_against_the_reference, needs_gpu
from support.lstm_testing import random_inputs

pytestmark = needs_gpu("cupy")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "shape", [(1, 1, 1, 32), (1, 3, 1, 32), (25, 1, 1, 16), (1, 5, 1, 50), (5, 7, 3, 33), (300, 20, 8, 64),
              # Past every GPU's persistent limit: the cooperative path, one tile of rows and several;
              # then past its limit too, the stepwise path.
              (4, 6, 3, 160), (300, 5, 8, 160), (2, 3, 2, 2048)],
    ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("options", [
    dict(), dict(return_sequences=True, go_backwards=True), dict(recurrent_activation="hard_sigmoid"),
    dict(recurrent_activation="hard_sigmoid_keras2", return_sequences=True),
], ids=["plain", "sequences-backwards", "hard_sigmoid", "hard_sigmoid_keras2"])
def test_cupy_matches_the_reference(shape, dtype, options):
    import cupy

    check_against_the_reference("cupy", shape, dtype, options, cupy.asarray)


def test_numpy_arrays_go_to_the_device_and_back():
    inputs = random_inputs(np.random.default_rng(0), 3, 4, 2, 8, np.float32)
    result = lstm_forward(**inputs, backend="cupy")
    grads = lstm_backward(result.cache, np.ones_like(result.outputs))
    assert all(isinstance(a, np.ndarray) for a in (*result[:3], *grads))
