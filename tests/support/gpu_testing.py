"""Helpers shared by the real-device tests of the GPU backends (test_cupy_gpu.py,
test_numba_cuda_gpu.py): each runs wherever its backend finds a CUDA device, and skips with the
backend's reason elsewhere. Nothing here imports CuPy or Numba's CUDA support before a test runs,
so that collection works on a machine without a CUDA driver.

Tolerance: max|device - reference| / max(1, max|reference|) below 1e-5 in float32, 1e-12 in
float64, as the emulated and simulated tests of the same kernels."""
import numpy as np
import pytest

import fastlstm
from fastlstm import lstm_backward, lstm_forward
from .lstm_testing import random_inputs, relative_error

TOLERANCE = {np.float32: 1e-5, np.float64: 1e-12}


def needs_gpu(backend):
    """A mark that skips a test, with the backend's reason, where ``backend`` does not run."""
    status = next(s for s in fastlstm.available_backends() if s.name == backend)
    return pytest.mark.skipif(not status.available, reason=f"needs a CUDA GPU: {status.detail}")


def check_against_the_reference(backend, shape, dtype, options, to_device):
    """Runs lstm_forward and lstm_backward on ``backend`` with the inputs of ``shape`` ([batch,
    time, input_dim, units]) passed through ``to_device``, and asserts that every result is a CuPy
    array within TOLERANCE of the NumPy reference. Returns the forward's LSTMResult."""
    import cupy

    batch, time, input_dim, units = shape
    rng = np.random.default_rng(list(shape))
    inputs = random_inputs(rng, batch, time, input_dim, units, dtype)
    reference = lstm_forward(**inputs, **options, backend="numpy")
    grads_in = [rng.standard_normal(a.shape).astype(dtype) for a in reference[:3]]
    expected = [*reference[:3], *lstm_backward(reference.cache, *grads_in)]

    result = lstm_forward(**{k: to_device(v) for k, v in inputs.items()}, **options, backend=backend)
    got = [*result[:3], *lstm_backward(result.cache, *map(to_device, grads_in))]
    for mine, want in zip(got, expected):
        assert isinstance(mine, cupy.ndarray)
        mine = cupy.asnumpy(mine)
        assert mine.dtype == want.dtype and mine.shape == want.shape
        assert relative_error(mine, want) <= TOLERANCE[dtype]
    return result
