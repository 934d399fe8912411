"""The cache of lstm_forward owns what lstm_backward reads: a caller that changes its arrays between
the two gets the gradients of the forward pass it ran, bit for bit, on every backend."""
import numpy as np
import pytest

from fastlstm import lstm_backward, lstm_forward
from fastlstm.backends import LSTMOptions, numba_cpu
from fastlstm.backends import cupy as cupy_backend
from support.lstm_testing import CPU_BACKENDS, random_inputs
from test_cupy_backend import device  # noqa: F401 (the fixture: the CuPy backend on the CPU)

# batch, time, input_dim, units; over one step, x reversed in time is a view of the caller's x
SHAPES = {"one-call": (3, 4, 2, 5), "one-step": (3, 1, 2, 5), "stepwise": (64, 16, 8, 32)}


def _changed(inputs):
    """Every input overwritten in place, as a caller reusing its arrays would."""
    for a in inputs.values():
        a[...] = 0.25


@pytest.mark.parametrize("go_backwards", [False, True])
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES)
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_changing_the_inputs_after_the_forward_pass_leaves_the_gradients_as_they_were(backend, shape, go_backwards):
    batch, time, _, units = shape
    assert numba_cpu.runs_stepwise(batch, time, units) == (shape == SHAPES["stepwise"])
    inputs = random_inputs(np.random.default_rng(0), *shape)
    dy = np.random.default_rng(1).standard_normal((batch, time, units))
    options = dict(return_sequences=True, go_backwards=go_backwards, backend=backend)
    expected = lstm_backward(lstm_forward(**inputs, **options).cache, dy)
    result = lstm_forward(**inputs, **options)
    _changed(inputs)
    for ours, theirs in zip(lstm_backward(result.cache, dy), expected):
        np.testing.assert_array_equal(ours, theirs)


def test_the_gpu_backends_own_their_cache_too(device):  # noqa: F811
    """FusedLSTM, which both GPU backends run; here on NumPy arrays as it runs on CuPy arrays
    given by the caller (kept on the device without a copy)."""
    inputs = random_inputs(np.random.default_rng(2), 2, 3, 2, 4)
    dy = np.random.default_rng(3).standard_normal((2, 4))
    expected = cupy_backend.backward(cupy_backend.forward(*inputs.values(), LSTMOptions())[3], dy, None, None)
    saved = cupy_backend.forward(*inputs.values(), LSTMOptions())[3]
    _changed(inputs)
    for ours, theirs in zip(cupy_backend.backward(saved, dy, None, None), expected):
        np.testing.assert_array_equal(ours, theirs)
