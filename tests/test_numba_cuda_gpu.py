"""The numba_cuda backend on a real GPU against the NumPy reference, forward and backward, on the
three paths of its launch plan. The simulator tests (test_numba_cuda.py) run the same kernels on
the CPU one thread at a time; these add Numba's CUDA compiler, the driver, real shared memory,
concurrent threads and the cooperative kernels' grid barrier on the device's own memory ordering,
and run wherever Numba finds a device.

The backend plans with at most 48 KB of shared memory per block (Numba cannot opt in to more):
the persistent path up to 50 units in float32 and 35 in float64, whatever the GPU; the
cooperative path beyond, to 396 and 256 units with 132 multiprocessors. The units below choose the
same path on any GPU of 80 multiprocessors or more (V100, A100, H100), and each test checks the
path the backend took from the forward's cache."""
import numpy as np
import pytest

from fastlstm import lstm_backward, lstm_forward
from support.gpu_testing import TOLERANCE, check_against_the_reference, needs_gpu
from support.lstm_testing import random_inputs, relative_error

pytestmark = needs_gpu("numba_cuda")

# [batch, time, input_dim, units] -> the path it takes in (float32, float64).
PATHS = {
    (1, 1, 1, 32): ("persistent", "persistent"),
    (5, 7, 3, 33): ("persistent", "persistent"),
    (301, 20, 8, 16): ("persistent", "persistent"),  # several rows per block, the last block partial
    (300, 20, 8, 35): ("persistent", "persistent"),  # float64's largest persistent units: 48,720 bytes
    (300, 20, 8, 38): ("persistent", "cooperative"),
    (2, 4, 3, 39): ("persistent", "cooperative"),
    (2, 4, 3, 50): ("persistent", "cooperative"),  # float32's largest persistent units: 47,200 bytes
    (2, 4, 3, 51): ("cooperative", "cooperative"),
    (4, 6, 3, 160): ("cooperative", "cooperative"),  # several slices, a row tile each
    (600, 4, 3, 100): ("cooperative", "cooperative"),  # several row tiles, several passes each
    (2, 3, 2, 400): ("stepwise", "stepwise"),
}
DTYPES = [np.float32, np.float64]
SHAPE_OF_EACH_PATH = {"persistent": (3, 4, 2, 8), "cooperative": (3, 4, 2, 64), "stepwise": (3, 4, 2, 400)}  # float32


def taken_path(result):
    """The launch-plan path the forward ran, from its cache."""
    saved, _ = result.cache.saved  # (the engine's Saved, whether the inputs were NumPy arrays)
    return saved.plan.path


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", PATHS, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("options", [
    dict(), dict(return_sequences=True, go_backwards=True),
    dict(recurrent_activation="hard_sigmoid_keras2", activation="relu", return_sequences=True),
], ids=["plain", "sequences-backwards", "hard_sigmoid_keras2-relu"])
def test_numba_cuda_matches_the_reference(shape, dtype, options):
    import cupy

    result = check_against_the_reference("numba_cuda", shape, dtype, options, cupy.asarray)
    assert taken_path(result) == PATHS[shape][DTYPES.index(dtype)]


@pytest.mark.parametrize("shape", SHAPE_OF_EACH_PATH.values(), ids=SHAPE_OF_EACH_PATH)
def test_numba_device_arrays_are_taken(shape):
    from numba import cuda

    check_against_the_reference("numba_cuda", shape, np.float32, {}, cuda.to_device)


def test_the_kernels_run_on_cupys_current_stream():
    """On a stream of its own the stepwise path's GEMMs (CuPy) and kernels (Numba) of every step
    must still run in order, as on the default stream."""
    import cupy

    with cupy.cuda.Stream(non_blocking=True):
        result = check_against_the_reference("numba_cuda", (64, 50, 16, 400), np.float32, {}, cupy.asarray)
    assert taken_path(result) == "stepwise"


def test_numpy_arrays_go_to_the_device_and_back():
    inputs = random_inputs(np.random.default_rng(0), 3, 4, 2, 8, np.float32)
    reference = lstm_forward(**inputs, backend="numpy")
    result = lstm_forward(**inputs, backend="numba_cuda")
    grads = lstm_backward(result.cache, np.ones_like(result.outputs))
    assert all(isinstance(a, np.ndarray) for a in (*result[:3], *grads))
    assert np.abs(result.outputs - reference.outputs).max() <= TOLERANCE[np.float32]


SPIN = r"""
extern "C" __global__ void spin(long long cycles) {
    const long long start = clock64();
    while (clock64() - start < cycles) {}
}
"""


@pytest.mark.parametrize(("path", "shape"), SHAPE_OF_EACH_PATH.items(), ids=SHAPE_OF_EACH_PATH)
def test_a_call_returns_without_waiting_for_the_work_queued_before_it(path, shape):
    """Numba synchronises the host with the stream an imported device array names unless told not
    to: a forward and backward that did would return only once a kernel queued before them on the
    stream has finished. That kernel spins for about a second (2e9 cycles at up to 2 GHz), far longer
    than the calls take once compiled; their results must still be right, computed after it."""
    import cupy

    batch, time, input_dim, units = shape
    inputs = random_inputs(np.random.default_rng(0), batch, time, input_dim, units, np.float32)
    reference = lstm_forward(**inputs, return_sequences=True, backend="numpy")
    expected = lstm_backward(reference.cache, np.ones_like(reference.outputs))
    on_device = {name: cupy.asarray(a) for name, a in inputs.items()}
    options = dict(return_sequences=True, check_finite=False, backend="numba_cuda")  # the check reads back
    warm = lstm_forward(**on_device, **options)  # compiles the kernels, so that the calls below only launch
    lstm_backward(warm.cache, cupy.ones_like(warm.outputs))
    spin = cupy.RawKernel(SPIN, "spin")
    stream = cupy.cuda.Stream(non_blocking=True)
    cupy.cuda.Device().synchronize()
    with stream:
        spin((1,), (1,), (np.int64(2_000_000_000),))
        spun = stream.record()
        result = lstm_forward(**on_device, **options)
        gradients = lstm_backward(result.cache, cupy.ones_like(result.outputs))
        returned_before_the_spin_ended = not spun.done
        stream.synchronize()
    assert returned_before_the_spin_ended
    assert taken_path(result) == path
    assert relative_error(cupy.asnumpy(result.outputs), reference.outputs) <= TOLERANCE[np.float32]
    for mine, want in zip(gradients, expected):
        assert relative_error(cupy.asnumpy(mine), want) <= TOLERANCE[np.float32]
