"""The numba_cuda backend itself in Numba's CUDA simulator, against the NumPy reference: both
paths of the launch plan, forward and backward. Run by tests/test_numba_cuda.py in its own
process with NUMBA_ENABLE_CUDASIM=1 (set before numba is imported). The simulator runs one
thread per CUDA thread, so the cases are small.

Tolerance: max|simulated - reference| / max(1, max|reference|) below 1e-5 in float32, 1e-12 in
float64.
"""
import numpy as np
import pytest

import fastlstm
from fastlstm import lstm_backward, lstm_forward
from fastlstm.backends import LSTMOptions
from fastlstm.backends import numba_cuda
from fastlstm.backends.fused import FusedLSTM
from fastlstm.backends.plan import DeviceLimits
from support.lstm_testing import random_inputs, relative_error

assert numba_cuda.SIMULATOR, "run with NUMBA_ENABLE_CUDASIM=1"
TOLERANCE = {np.float32: 1e-5, np.float64: 1e-12}
# Two multiprocessors, so that 3 rows make a full block and a partial one; 64 bytes of shared
# memory, so that nothing fits the persistent path.
LIMITS = {"persistent": DeviceLimits(1024, 48 * 1024, 2), "stepwise": DeviceLimits(1024, 64, 2)}


@pytest.fixture(params=sorted(LIMITS))
def path(request, monkeypatch):
    monkeypatch.setattr(numba_cuda, "_engine", lambda: FusedLSTM(np, numba_cuda.NumbaLauncher(), LIMITS[request.param]))
    return request.param


CASES = [
    dict(shape=(3, 4, 2, 5)),
    dict(shape=(1, 1, 1, 4)),  # time 1
    dict(shape=(3, 4, 2, 5), state=False, return_sequences=True),
    dict(shape=(3, 4, 2, 5), go_backwards=True, return_sequences=True),
    dict(shape=(2, 3, 1, 6), bias=False),
    *(dict(shape=(3, 3, 2, 4), recurrent_activation=r, activation=a) for r, a in [
        ("hard_sigmoid", "tanh"), ("hard_sigmoid_keras2", "tanh"), ("tanh", "relu"), ("relu", "softsign"),
        ("softsign", "linear"), ("linear", "sigmoid"), ("sigmoid", "hard_sigmoid")]),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_the_backend_matches_the_reference(path, case, dtype):
    case = dict(case)
    batch, time, input_dim, units = case.pop("shape")
    make = {k: case.pop(k) for k in ("state", "bias") if k in case}
    rng = np.random.default_rng([batch, time, input_dim, units])
    inputs = random_inputs(rng, batch, time, input_dim, units, dtype, **make)
    options = LSTMOptions(**case)

    reference = lstm_forward(**inputs, **options._asdict(), backend="numpy")
    grads_in = [rng.standard_normal(a.shape).astype(dtype) for a in reference[:3]]
    expected = [*reference[:3], *lstm_backward(reference.cache, *grads_in)]
    zeros = np.zeros((batch, units), dtype)
    arrays = {**inputs, "h0": zeros if inputs["h0"] is None else inputs["h0"],
              "c0": zeros if inputs["c0"] is None else inputs["c0"]}
    outputs, h, c, saved = numba_cuda.forward(*arrays.values(), options)
    assert saved[0].plan.path == path  # the path the backend took, not only the one the limits imply
    got = [outputs, h, c, *numba_cuda.backward(saved, *grads_in)]
    for mine, want in zip(got, expected):
        if want is None:
            assert mine is None
            continue
        assert mine.dtype == dtype and mine.shape == want.shape
        assert relative_error(mine, want) <= TOLERANCE[dtype]


def test_the_simulator_is_not_mistaken_for_a_gpu():
    status = next(s for s in fastlstm.available_backends() if s.name == "numba_cuda")
    assert not status.available and "simulator" in status.detail
    assert fastlstm.backends.get_backend("auto").__name__ != "fastlstm.backends.numba_cuda"
