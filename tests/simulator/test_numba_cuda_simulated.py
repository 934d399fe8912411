"""The numba_cuda backend itself in Numba's CUDA simulator, against the NumPy reference: the three
paths of the launch plan, forward and backward, the cooperative one with every block of its grid
at once (tests/support/simulator_grid.py). Run by tests/test_numba_cuda.py in its own process
with NUMBA_ENABLE_CUDASIM=1 (set before numba is imported). The simulator runs one thread per
CUDA thread, so the cases are small.

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
from fastlstm.backends.plan import ROWS_PER_THREAD, DeviceLimits, plan_lstm, thread_groups
from fastlstm.kernels import numba_cuda as numba_cuda_kernels
from support.lstm_testing import random_inputs, relative_error
from support.simulator_grid import CooperativeLauncher

assert numba_cuda.SIMULATOR, "run with NUMBA_ENABLE_CUDASIM=1"
TOLERANCE = {np.float32: 1e-5, np.float64: 1e-12}
# Two multiprocessors, over which the plan spreads the rows; 64 bytes of shared memory, so that
# nothing fits the persistent path or a cooperative block; two threads a block, fewer than the
# cases' units, so that the cooperative path takes every case, in slices of two units over four
# multiprocessors.
LIMITS = {"persistent": DeviceLimits(1024, 48 * 1024, 2), "stepwise": DeviceLimits(1024, 64, 2),
          "cooperative": DeviceLimits(2, 48 * 1024, 4)}


def _use_engine(monkeypatch, limits, launcher=None):
    """Makes the backend run on a FusedLSTM with ``limits`` and ``launcher`` (by default one that
    runs cooperative launches with every block at once), planning cooperatively as on a GPU;
    returns the launcher."""
    launcher = launcher or CooperativeLauncher()
    monkeypatch.setattr(numba_cuda, "_engine", lambda: FusedLSTM(np, launcher, limits, cooperative=True))
    return launcher


@pytest.fixture(params=sorted(LIMITS))
def path(request, monkeypatch):
    _use_engine(monkeypatch, LIMITS[request.param])
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


# Persistent blocks of several groups of ROWS_PER_THREAD rows, a group holding rows that do not
# exist: {name: (limits, [batch, time, input_dim, units])}.
ROW_GROUPS = {
    # One block of 7 rows: its second group's fourth row is none of the block's.
    "rows-not-whole-groups": (DeviceLimits(1024, 48 * 1024, 1), (7, 3, 2, 3)),
    # Blocks of 8 rows over 11: the last block's first group holds 3 rows, its second none.
    "last-block-partial": (DeviceLimits(1024, 48 * 1024, 2), (11, 3, 2, 3)),
}


def _check_against_the_reference(case, dtype):
    """Runs ``case`` forward and backward on the backend and the NumPy reference; returns the
    forward's plan."""
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
    got = [outputs, h, c, *numba_cuda.backward(saved, *grads_in)]
    for mine, want in zip(got, expected):
        if want is None:
            assert mine is None
            continue
        assert mine.dtype == dtype and mine.shape == want.shape
        assert relative_error(mine, want) <= TOLERANCE[dtype]
    return saved[0].plan


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_the_backend_matches_the_reference(path, case, dtype):
    # The path the backend took, not only the one the limits imply.
    assert _check_against_the_reference(case, dtype).path == path


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", sorted(ROW_GROUPS))
def test_row_groups_with_rows_that_do_not_exist_match_the_reference(name, dtype, monkeypatch):
    limits, shape = ROW_GROUPS[name]
    batch, units = shape[0], shape[3]
    rows = plan_lstm(batch, units, dtype, limits).rows
    last_block = batch - (-(-batch // rows) - 1) * rows
    assert thread_groups(rows) > 1 and (rows % ROWS_PER_THREAD or last_block % ROWS_PER_THREAD), \
        f"{name}: the plan makes blocks of {rows} rows of {batch}, no group holding rows that do not exist"
    _use_engine(monkeypatch, limits)
    taken = _check_against_the_reference(dict(shape=shape, return_sequences=True), dtype)
    assert (taken.path, taken.rows) == ("persistent", rows)


# Cooperative grids of several slices and tiles: {name: (limits, [batch, time, input_dim, units])}.
COOPERATIVE_TILINGS = {
    # Slices of 16 units over 20 (the second holds 4), tiles of 4 rows over 5 (the second holds 1).
    "partial-slice-and-tile": (DeviceLimits(16, 48 * 1024, 4), (5, 3, 2, 20)),
    # One tile of 12 rows in passes of 4 over 9 rows (the third pass holds 1), slices of 32 over 40.
    "several-passes": (DeviceLimits(32, 48 * 1024, 2), (9, 3, 2, 40)),
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", sorted(COOPERATIVE_TILINGS))
def test_cooperative_grids_of_several_slices_tiles_and_passes_match_the_reference(name, dtype, monkeypatch):
    limits, shape = COOPERATIVE_TILINGS[name]
    batch, units = shape[0], shape[3]
    plan = plan_lstm(batch, units, dtype, limits, cooperative=True)
    slices, tiles = -(-units // plan.slice), -(-batch // plan.rows)
    passes = -(-plan.rows // (plan.forward.block[0] // plan.slice * ROWS_PER_THREAD))
    assert plan.path == "cooperative" and units % plan.slice and (batch % plan.rows if tiles > 1 else passes > 1), \
        f"{name}: {plan}"
    launcher = _use_engine(monkeypatch, limits)
    taken = _check_against_the_reference(dict(shape=shape, return_sequences=True), dtype)
    assert taken == plan and slices * tiles == plan.forward.grid[0] > 1
    assert launcher.cooperative_launches == [plan.forward.kernel, plan.backward.kernel]


def test_a_cooperative_kernel_launched_one_block_at_a_time_fails_rather_than_hangs(monkeypatch):
    """The simulator's own launch runs the blocks one after another, as a GPU might a grid that is
    not all resident: the first block waits at the grid barrier for the others, gives up after
    GRID_SYNC_POLLS looks and fails the launch."""
    monkeypatch.setattr(numba_cuda_kernels, "GRID_SYNC_POLLS", 200)
    _use_engine(monkeypatch, LIMITS["cooperative"], numba_cuda.NumbaLauncher())
    with pytest.raises(RuntimeError, match="grid barrier was not released after 200 looks"):
        _check_against_the_reference(dict(shape=(3, 2, 1, 5)), np.float32)


def test_a_block_that_fails_stops_the_blocks_that_wait_for_it_at_the_grid_barrier(monkeypatch):
    """The second tile's blocks index a row of h0 that is not there and fail; the first tile's,
    waiting at the grid barrier for them, stop too, and the launch raises the failure."""
    monkeypatch.setattr(numba_cuda_kernels, "GRID_SYNC_POLLS", 1000)  # a bound, should they wait on
    trapped = []

    def trap():
        trapped.append(True)
        raise RuntimeError("trapped")

    monkeypatch.setattr(numba_cuda_kernels, "_trap", trap)
    limits, (batch, time, input_dim, units) = COOPERATIVE_TILINGS["partial-slice-and-tile"]
    inputs = random_inputs(np.random.default_rng(0), batch, time, input_dim, units, np.float32)
    state = inputs["h0"][:-1]  # the second tile's one row is missing
    engine = FusedLSTM(np, CooperativeLauncher(), limits, cooperative=True)
    with pytest.raises(IndexError, match="out of bounds"):
        engine.forward(inputs["x"], inputs["kernel"], inputs["recurrent_kernel"], inputs["bias"], state, state,
                       LSTMOptions())
    assert not trapped, "the waiting blocks gave up on the barrier rather than stopping with the failed ones"


def test_the_simulator_is_not_mistaken_for_a_gpu():
    status = next(s for s in fastlstm.available_backends() if s.name == "numba_cuda")
    assert not status.available and "simulator" in status.detail
    assert fastlstm.backends.get_backend("auto").__name__ != "fastlstm.backends.numba_cuda"
