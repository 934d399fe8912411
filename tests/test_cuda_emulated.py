"""The CuPy backend's orchestration (FusedLSTM) and its CUDA C kernels, run on the CPU through the
emulation harness, against the NumPy reference: the three paths of the launch plan, forward and
backward, float32 and float64.

Tolerance: max|emulated - reference| / max(1, max|reference|) per array below 1e-5 in float32
(measured: at most about 1e-6) and 1e-12 in float64.
"""
import itertools
import signal

import numpy as np
import pytest

from support.cuda_emulation import EmulatedLauncher, build, run_child
from fastlstm import lstm_backward, lstm_forward
from fastlstm.backends import LSTMOptions
from fastlstm.backends.fused import FusedLSTM
from fastlstm.backends.plan import DeviceLimits, plan_lstm
from support.lstm_testing import random_inputs, relative_error

TOLERANCE = {np.float32: 1e-5, np.float64: 1e-12}
# Limits that force each path: 'persistent' with few multiprocessors, so a block holds several
# rows and the last block is only partly filled; 'cooperative' with fewer threads a block than
# units, so that 10 blocks split them, a slice of up to 5 units each, the last slice partly past
# the units and, past 5 samples, a thread taking rows in more than one group; 'stepwise' with too
# little shared memory.
LIMITS = {
    "persistent": DeviceLimits(max_threads_per_block=1024, shared_memory_per_block_optin=96 * 1024, multiprocessors=2),
    "cooperative": DeviceLimits(max_threads_per_block=5, shared_memory_per_block_optin=96 * 1024, multiprocessors=10),
    "stepwise": DeviceLimits(max_threads_per_block=1024, shared_memory_per_block_optin=64, multiprocessors=2),
}
PATHS = list(LIMITS)
# (batch, time, input_dim, units): the alphabet shapes, time 1, batch not a multiple of the rows
# per block, units not a multiple of 32.
SHAPES = [(1, 1, 1, 32), (1, 3, 1, 32), (1, 1, 3, 16), (25, 1, 1, 16), (1, 5, 1, 50), (5, 7, 3, 33), (3, 4, 2, 8)]


@pytest.fixture(scope="module")
def launcher():
    return EmulatedLauncher(build())


def _compare(launcher, path, shape, dtype, state=True, bias=True, **options):
    batch, time, input_dim, units = shape
    rng = np.random.default_rng([batch, time, input_dim, units])
    inputs = random_inputs(rng, batch, time, input_dim, units, dtype, bias=bias, state=state)
    options = LSTMOptions(**options)
    reference = lstm_forward(**inputs, **options._asdict(), backend="numpy")
    grads_in = [rng.standard_normal(a.shape).astype(dtype) for a in reference[:3]]
    expected = [*reference[:3], *lstm_backward(reference.cache, *grads_in)]

    fused = FusedLSTM(np, launcher, LIMITS[path], cooperative=True)
    assert plan_lstm(batch, units, dtype, fused.limits, True).path == path
    zeros = np.zeros((batch, units), dtype)
    h0 = inputs["h0"] if state else zeros
    c0 = inputs["c0"] if state else zeros
    outputs, h, c, saved = fused.forward(inputs["x"], inputs["kernel"], inputs["recurrent_kernel"], inputs["bias"],
                                         h0, c0, options)
    got = [outputs, h, c, *fused.backward(saved, *grads_in)]
    for name, mine, want in zip(["outputs", "h", "c", "dx", "dkernel", "drecurrent_kernel", "dbias", "dh0", "dc0"],
                                got, expected):
        if want is None:
            assert mine is None, name
            continue
        assert mine.shape == want.shape and mine.dtype == dtype, name
        error = relative_error(mine, want)
        assert error <= TOLERANCE[dtype], f"{name}: {error:.2e}"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("path", PATHS)
def test_every_path_matches_the_reference(launcher, path, shape, dtype):
    _compare(launcher, path, shape, dtype, return_sequences=True)


@pytest.mark.parametrize(
    "recurrent_activation, activation, return_sequences, go_backwards, state, bias",
    [(r, "tanh", rs, gb, s, True) for r, (rs, gb, s) in zip(
        ["sigmoid", "hard_sigmoid", "hard_sigmoid_keras2", "tanh", "relu", "softsign", "linear"],
        itertools.cycle(itertools.product((False, True), repeat=3)))]
    + [("sigmoid", a, True, True, True, False) for a in ["sigmoid", "hard_sigmoid", "relu", "softsign", "linear"]]
    + [("sigmoid", "tanh", rs, gb, s, b) for rs, gb, s, b in itertools.product((False, True), repeat=4)],
)
@pytest.mark.parametrize("path", PATHS)
def test_every_option_on_every_path(launcher, path, recurrent_activation, activation, return_sequences,
                                    go_backwards, state, bias):
    _compare(launcher, path, (5, 4, 2, 6), np.float32, state=state, bias=bias, activation=activation,
             recurrent_activation=recurrent_activation, return_sequences=return_sequences, go_backwards=go_backwards)


@pytest.mark.parametrize("path", PATHS)
def test_the_plans_kernels_are_the_ones_launched(launcher, path):
    fused = FusedLSTM(np, launcher, LIMITS[path], cooperative=True)
    inputs = random_inputs(np.random.default_rng(0), 3, 4, 2, 6, np.float64)
    plan = plan_lstm(3, 6, np.float64, fused.limits, True)
    assert plan.path == path
    start = len(launcher.launched)
    saved = fused.forward(*inputs.values(), LSTMOptions())[3]
    fused.backward(saved, None, None, None)
    per_call = 4 if path == "stepwise" else 1  # one launch per time step, or one
    assert launcher.launched[start:] == [plan.forward.kernel] * per_call + [plan.backward.kernel] * per_call


NEVER_RELEASED = """
import sys
import numpy as np
from support.cuda_emulation import EmulatedLauncher
from support.lstm_testing import random_inputs
from fastlstm.backends import LSTMOptions
from fastlstm.backends.fused import FusedLSTM
from fastlstm.backends.plan import DeviceLimits


class NeverReleased:
    \"\"\"NumPy, but the grid barrier's count starts where no block's arrival is the last.\"\"\"

    def zeros(self, shape, dtype):
        return np.full(shape, 1 << 31, dtype) if np.dtype(dtype) == np.uint32 else np.zeros(shape, dtype)

    def __getattr__(self, name):
        return getattr(np, name)


fused = FusedLSTM(NeverReleased(), EmulatedLauncher(sys.argv[1]), DeviceLimits(2, 96 * 1024, 3), cooperative=True)
fused.forward(*random_inputs(np.random.default_rng(0), 3, 2, 2, 5, np.float32).values(), LSTMOptions())
print("returned")
"""


def test_a_grid_barrier_never_released_fails_the_launch_rather_than_hanging():
    # A few thousand looks rather than a GPU's seconds of them: the emulation's polls take longer.
    result = run_child(NEVER_RELEASED, build(defines=["FASTLSTM_GRID_SYNC_POLLS=2000"]), 120)
    assert result.returncode == -signal.SIGABRT and "returned" not in result.stdout, result.stderr[-2000:]
