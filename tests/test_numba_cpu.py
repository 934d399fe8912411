"""The numba_cpu backend on its own: its activations, its two recurrence paths against the NumPy
reference, the fused training pass against the layer-by-layer one, and its absence without numba.
The reference, property and Keras parity tests run on it as well (see CPU_BACKENDS)."""
import contextlib
import functools
import mmap
import os
import pathlib
import re
import threading
import time

import numpy as np
import pytest
import threadpoolctl

pytest.importorskip("numba")  # the 'test' extra installs it; CI runs these

import numba  # noqa: E402
from numba import njit  # noqa: E402

from fastlstm import lstm_backward, lstm_forward  # noqa: E402
from fastlstm.activations import ACTIVATIONS  # noqa: E402
from fastlstm.backends import LSTMOptions, get_backend, numba_cpu, team  # noqa: E402
from fastlstm.kernels import cpu_arithmetic, cpu_lstm, cpu_matmul, cpu_stepwise, cpu_team  # noqa: E402
from fastlstm.kernels.activation_ids import ACTIVATION_IDS, ACTIVATION_NAMES  # noqa: E402
from fastlstm.nn import LSTM, Dense, RepeatVector, Sequential, TimeDistributed, set_random_seed  # noqa: E402
from fastlstm.ops import AdamState, DenseWeights, LSTMWeights, lstm_train_epoch  # noqa: E402
from fastlstm.utils import usable_cores  # noqa: E402
from support.lstm_testing import random_inputs, relative_error, run_python  # noqa: E402
from test_nn import alphabet, alphabet_sequences  # noqa: E402


@njit
def _derivatives(code, y, out):
    for j in range(y.size):
        out[j] = cpu_arithmetic.derivative(code, y[j], y.dtype.type)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", ACTIVATION_NAMES)
def test_activations_match_fastlstm_activations(name, dtype):
    """Within 4 ulps of NumPy's (tanh and sigmoid use a vectorisable exp of the kernels' own;
    measured at most 2.5 ulps from the float64 value in float32, 3 in float64; exp flushes to 0
    below the smallest normal number); derivatives exactly NumPy's."""
    z = np.concatenate([np.linspace(-30, 30, 20001), [-1e4, 1e4, -200, 200, 90, -90, 710, -710, 0, 1e-30]])
    z = z.astype(dtype)
    y = z.copy()
    cpu_arithmetic.activate(ACTIVATION_IDS[name], y, y)
    finfo = np.finfo(dtype)
    np.testing.assert_allclose(y, ACTIVATIONS[name].fn(z), rtol=4 * finfo.eps, atol=finfo.tiny)
    derivative = np.empty_like(y)
    _derivatives(ACTIVATION_IDS[name], y, derivative)
    np.testing.assert_array_equal(derivative, ACTIVATIONS[name].grad_from_output(y))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_all_finite_finds_every_nan_and_inf_wherever_it_is(dtype):
    """The compiled check behind ops' check_finite: vectorised, so each position of a vector
    block (and of the remainder after the last one) is tried; the largest finite values pass."""
    big = np.finfo(dtype).max
    for shape in [(1,), (7,), (64,), (1000,), (3, 50, 17)]:
        a = np.full(shape, big, dtype)
        a.flat[::2] = -big
        assert numba_cpu.all_finite(a) and numba_cpu.all_finite(a.T)  # .T: not contiguous
        for position in sorted({0, 1, a.size // 2, a.size - 2, a.size - 1} & set(range(a.size))):
            for bad in (np.nan, np.inf, -np.inf):
                spoiled = a.copy()
                spoiled.flat[position] = bad
                assert not numba_cpu.all_finite(spoiled) and not numba_cpu.all_finite(spoiled.T)


@pytest.fixture(params=["sequence", "stepwise"])
def path(request, monkeypatch):
    """Runs numba_cpu's layer as one compiled call, or as a BLAS product and a compiled pointwise
    step per time step, whatever the shape; stepwise, in three slices of the samples (on two
    threads or more) wherever the batch has three samples, whatever the machine's cores."""
    monkeypatch.setattr(numba_cpu, "STEPWISE_WORK", 1 << 62 if request.param == "sequence" else 0)
    monkeypatch.setattr(numba_cpu, "_cores", lambda: 3)
    return request.param


OPTIONS = [
    dict(activation=a, recurrent_activation=r, return_sequences=rs, go_backwards=gb)
    for a, r, rs, gb in [
        ("tanh", "sigmoid", False, False), ("tanh", "sigmoid", True, True),
        ("softsign", "hard_sigmoid", True, False), ("relu", "hard_sigmoid_keras2", False, True),
        ("sigmoid", "tanh", True, False), ("linear", "softsign", False, False),
        ("hard_sigmoid_keras2", "relu", True, True), ("hard_sigmoid", "linear", False, True),
    ]
]


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: "-".join(str(v) for v in o.values()))
@pytest.mark.parametrize("shape", [(3, 4, 2, 5), (5, 3, 4, 33), (1, 1, 1, 8), (14, 3, 4, 33), (130, 1, 3, 5),
                                   (16, 32, 2, 3)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_both_paths_match_the_numpy_reference(path, options, shape, dtype):
    """Outputs, states and every gradient against the NumPy backend, both paths, units that are
    and are not a multiple of the vector width, with bias and state or without; stepwise, slices
    of fewer samples than a tile of matmul_packed's and of more (14 in 5, 5 and 4); and 130
    samples of one step and 16 of 32, which the one-call path's shapes run stepwise on one core
    (PACKED_WITH_CACHE). Tolerance, relative to max(1, |reference|): 1e-5 in float32, 1e-12 in
    float64."""
    rng = np.random.default_rng(list(shape))
    inputs = random_inputs(rng, *shape, dtype=dtype, bias=shape[0] != 3, state=shape[0] != 5)
    results = {}
    for backend in ("numpy", "numba_cpu"):
        r = lstm_forward(**inputs, **options, backend=backend)
        dy, dh, dc = (np.random.default_rng(1).standard_normal(a.shape).astype(dtype) for a in r[:3])
        results[backend] = (*r[:3], *lstm_backward(r.cache, dy, dh, dc))
    tolerance = 1e-5 if dtype == np.float32 else 1e-12
    for ours, reference in zip(results["numba_cpu"], results["numpy"]):
        assert (ours is None) == (reference is None)
        if reference is not None:
            assert ours.dtype == dtype and ours.shape == reference.shape
            assert relative_error(ours, reference) <= tolerance


@pytest.mark.parametrize("options", OPTIONS[:4], ids=lambda o: "-".join(str(v) for v in o.values()))
@pytest.mark.parametrize("shape", [(14, 3, 4, 33), (1, 1, 1, 8), (6, 1, 2, 5), (9, 8, 3, 5), (64, 1, 2, 17),
                                   (130, 1, 2, 3), (16, 31, 2, 3), (16, 32, 2, 3)])
def test_keep_cache_false_gives_the_same_results_bit_for_bit_and_no_cache(path, options, shape, monkeypatch):
    """lstm_forward(keep_cache=False) takes the backend's infer, which runs each slice of the
    stepwise path in rings of one step's gates and two steps' states (cpu_stepwise.forward_slice,
    through team.forward_slices),
    and takes that path on one core below the threads' shapes from a (samples, sample-steps)
    pair of PACKED_INFER on (forward from one of PACKED_WITH_CACHE: 128 samples, or 16 over 512
    sample-steps); below those, it runs in one call that writes only the outputs and the final
    state (cpu_lstm.infer), never cpu_lstm.forward's arrays of every step. On every path, with a
    bias or without (9 samples), it gives the outputs and final state that forward does, exactly
    where both take the same path. Its cache is None, which lstm_backward refuses naming
    keep_cache."""
    steps_kept, one_calls = [], []
    run_slices = team.forward_slices

    def recording(*args):
        steps_kept.extend(share.gates.shape[0] for share in args[-2])  # the steps each slice's gates hold
        return run_slices(*args)

    monkeypatch.setattr(team, "forward_slices", recording)

    def recorded(name):
        compiled = getattr(cpu_lstm, name)

        def call(*args):
            one_calls.append(name)
            return compiled(*args)
        return call

    for name in ("forward", "infer"):
        monkeypatch.setattr(cpu_lstm, name, recorded(name))
    inputs = random_inputs(np.random.default_rng(list(shape)), *shape, dtype=np.float64, bias=shape[0] != 9,
                           state=shape[0] != 6)
    kept = lstm_forward(**inputs, **options, backend="numba_cpu")
    forward_slices, forward_calls = list(steps_kept), list(one_calls)
    steps_kept.clear()
    one_calls.clear()
    inferred = lstm_forward(**inputs, **options, keep_cache=False, backend="numba_cpu")
    batch, time = shape[:2]
    if path == "stepwise":
        assert forward_slices == [time] * min(3, batch) and steps_kept == [1] * min(3, batch)
    else:
        with_cache = batch >= 128 or batch >= 16 and batch * time >= 512
        assert forward_slices == ([time] if with_cache else [])
        assert steps_kept == ([1] if batch >= 8 and batch * time >= 64 else [])
    assert forward_calls == ([] if forward_slices else ["forward"])
    assert one_calls == ([] if steps_kept else ["infer"])
    assert inferred.cache is None and kept.cache is not None
    for ours, reference in zip(inferred[:3], kept[:3]):
        if len(steps_kept) != len(forward_slices):  # the packed product sums in another order
            np.testing.assert_allclose(ours, reference, rtol=1e-12, atol=1e-12)
        else:
            np.testing.assert_array_equal(ours, reference)
    with pytest.raises(TypeError, match="keep_cache=False"):
        lstm_backward(inferred.cache, np.ones_like(inferred.outputs))


@njit
def _sums_of_fused_multiply_adds(a, w):
    """a @ w with each element one fused multiply-add after another in the order of k, from 0."""
    out = np.zeros((a.shape[0], w.shape[1]), a.dtype)
    for i in range(a.shape[0]):
        for j in range(w.shape[1]):
            for k in range(a.shape[1]):
                out[i, j] = cpu_arithmetic._fma(a[i, k], w[k, j], out[i, j])
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("m, k, n", [(1, 5, 4), (3, 70, 17), (4, 1, 16), (9, 3, 3), (33, 17, 36), (32, 96, 512),
                                     (700, 300, 40), (6, 0, 8)]
                         + [(m, 7, 19) for m in range(1, 2 * cpu_matmul.TILE.rows + 2)])
def test_the_product_with_packed_weights_matches_numpys(m, k, n, dtype):
    """matmul_packed, the stepwise path's product, on views whose rows lie apart in wider arrays:
    every row count up to two tiles and one more (fewer rows than a tile, a last tile overlapping
    the one before), a last panel that the columns end inside, fewer columns than a panel, rows
    in chunks (700 x 300), no columns to sum; and the product over a's first columns alone
    (depth). Each element bit for bit the fused multiply-adds in the order of k (whatever the
    tile), within k rounding errors of a float64 product, and not an element written outside out."""
    rng = np.random.default_rng([m, k, n])
    a = rng.standard_normal((m, k + 3)).astype(dtype)[:, 1:k + 1]
    w = rng.standard_normal((k, n)).astype(dtype)
    for depth in (k, k // 2):
        wider = np.full((m, n + 5), np.inf, dtype)
        out = wider[:, 2:n + 2]
        cpu_matmul.matmul_packed(a, cpu_matmul.pack_columns(w), out, depth)
        first, top = a[:, :depth], w[:depth]
        assert np.array_equal(out, _sums_of_fused_multiply_adds(first, top))
        exact = first.astype(np.float64) @ top.astype(np.float64)
        magnitude = np.abs(first).astype(np.float64) @ np.abs(top).astype(np.float64)
        bound = max(depth, 1) * np.finfo(dtype).eps * magnitude
        assert np.all(np.abs(out - exact) <= bound)
        assert np.all(np.isinf(wider[:, :2])) and np.all(np.isinf(wider[:, n + 2:]))


def test_the_product_with_packed_weights_wants_rows_that_are_contiguous_and_a_depth_within_them():
    a = np.ones((8, 6), np.float32)
    with pytest.raises(ValueError, match="rows of a and out contiguous"):
        cpu_matmul.matmul_packed(a.T, cpu_matmul.pack_columns(np.ones((8, 4), np.float32)),
                                 np.empty((6, 4), np.float32), 8)
    for depth in (-1, 7):
        with pytest.raises(ValueError, match="a depth from 0 to k"):
            cpu_matmul.matmul_packed(a, cpu_matmul.pack_columns(np.ones((6, 4), np.float32)),
                                     np.empty((8, 4), np.float32), depth)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_from_a_zero_state_the_first_steps_product_leaves_out_the_rows_of_h(dtype):
    """cpu_stepwise.forward_slice from h0 = 0 never reads h's rows of the packed weights at step
    0 (NaN here, so that a read shows), and gives that step's output bit for bit as the whole
    product does where those rows are zeros; the next step reads them. From an h0 with one
    nonzero value, step 0 reads them too."""
    n, steps, input_dim, units = 9, 3, 4, 5
    rng = np.random.default_rng(5)
    x = rng.standard_normal((n, steps, input_dim)).astype(dtype)
    c0 = rng.standard_normal((n, units)).astype(dtype)
    kernel = rng.standard_normal((input_dim, 4 * units)).astype(dtype)

    def first_steps(h0, recurrent_rows):
        packed = cpu_matmul.pack_columns(np.concatenate([kernel, np.full((units, 4 * units), recurrent_rows, dtype)]))
        sequences = np.empty((n, steps, units), dtype)
        cpu_stepwise.forward_slice(x, h0, c0, np.empty((steps + 1, n, input_dim + units), dtype), packed,
                                   np.empty(0, dtype), np.empty((steps, n, 4 * units), dtype),
                                   np.empty((steps + 1, n, units), dtype), np.empty((steps, n, units), dtype),
                                   sequences, ACTIVATION_IDS["tanh"], ACTIVATION_IDS["sigmoid"])
        return sequences[:, 0], sequences[:, 1]

    zero, nearly_zero = np.zeros((n, units), dtype), np.zeros((n, units), dtype)
    nearly_zero[3, 2] = 1
    step_0, step_1 = first_steps(zero, np.nan)
    np.testing.assert_array_equal(step_0, first_steps(nearly_zero, 0)[0])
    assert np.all(np.isnan(step_1))
    assert np.all(np.isnan(first_steps(nearly_zero, np.nan)[0]))


def test_the_samples_are_split_over_no_more_threads_than_numba_may_run(monkeypatch):
    """NUMBA_NUM_THREADS=1 (as in the --jobs workers) keeps the whole batch on one thread."""
    monkeypatch.setattr(numba.config, "NUMBA_NUM_THREADS", 1)
    assert numba_cpu._slices(1000, numba_cpu._cores()) == [slice(0, 1000)]
    monkeypatch.setattr(numba.config, "NUMBA_NUM_THREADS", 64)
    slices = numba_cpu._slices(10, numba_cpu._cores())
    assert len(slices) == min(10, usable_cores())
    assert [s.start for s in slices[1:]] == [s.stop for s in slices[:-1]] and slices[-1].stop == 10


@pytest.mark.parametrize("cores", [2, 3, 4])
def test_each_core_takes_a_large_part_then_a_quarter_part_when_the_quarters_are_large_enough(cores):
    """So that a thread slowed by another framework's spinning threads leaves its small part to the others."""
    for batch in range(1, 2000, 7):
        slices = numba_cpu._slices(batch, cores)
        sizes = [s.stop - s.start for s in slices]
        assert slices[0].start == 0 and slices[-1].stop == batch
        assert all(a.stop == b.start for a, b in zip(slices, slices[1:])), batch
        tail = batch // (numba_cpu.TAIL_SHARE * cores)
        if tail >= numba_cpu.MIN_TAIL_SAMPLES:
            assert len(sizes) == 2 * cores and min(sizes[:cores]) >= max(sizes[cores:]) > 0, (batch, sizes)
            # each core's large part plus a small one: the same work alone
            assert max(sizes[:cores]) - min(sizes[:cores]) <= 1 and max(sizes[cores:]) - tail < cores, (batch, sizes)
        else:
            assert len(sizes) == min(cores, batch) and max(sizes) - min(sizes) <= 1, (batch, sizes)


class _StalledPool:
    """A thread pool whose threads have not started yet (their cores busy elsewhere): what it is
    given waits in a queue until release()."""

    def __init__(self):
        self.waiting = []

    def submit(self, work, *args):
        self.waiting.append(functools.partial(work, *args))

    def release(self):
        for work in self.waiting:
            work()


def test_the_calling_thread_takes_every_part_no_other_thread_has_taken(monkeypatch):
    """The parts are taken as threads come free: with the pool's threads stalled, the calling
    thread runs every part itself, in order, and returns without waiting for them; a thread that
    starts afterwards finds nothing left."""
    pool = _StalledPool()
    monkeypatch.setattr(numba_cpu, "_threads", lambda: (pool, contextlib.nullcontext()))
    monkeypatch.setattr(numba_cpu, "_cores", lambda: 4)
    ran = []

    def work(part):
        ran.append((part, threading.get_ident()))
        return part * part

    assert numba_cpu._on_every_core(work, [1, 2, 3, 4, 5]) == [1, 4, 9, 16, 25]
    assert ran == [(part, threading.get_ident()) for part in (1, 2, 3, 4, 5)]
    assert len(pool.waiting) == 3  # a thread asked for each core but the calling one's
    pool.release()
    assert len(ran) == 5


def test_a_woken_pool_thread_leaves_the_calling_threads_cpu_and_the_caller_stays(monkeypatch):
    """Each pool thread, woken, first moves off the CPU the caller ran on when it gave out the
    parts; the calling thread itself never moves."""
    pool = _StalledPool()
    monkeypatch.setattr(numba_cpu, "_threads", lambda: (pool, contextlib.nullcontext()))
    monkeypatch.setattr(numba_cpu, "_cores", lambda: 3)
    monkeypatch.setattr(cpu_team, "current_cpu", lambda: 5)
    left = []
    monkeypatch.setattr(cpu_team, "leave", lambda cpu, cpus: left.append(cpu))
    numba_cpu._on_every_core(lambda part: part, [1, 2, 3])
    assert left == []
    pool.release()
    assert left == [5, 5]


def test_a_part_that_fails_raises_its_error_in_the_calling_thread_after_every_part_ran():
    """An error in a part is raised where the call was made, once the other parts are done (none
    is left running on the recycled memory of a later call)."""
    done = []

    def work(part):
        if part == 0:
            raise ArithmeticError("part 0")
        time.sleep(0.05)
        done.append(part)

    with pytest.raises(ArithmeticError, match="part 0"):
        numba_cpu._on_every_core(work, [0, 1, 2])
    assert sorted(done) == [1, 2]


def test_the_one_call_paths_large_arrays_come_from_the_memory_pool(monkeypatch):
    """From POOLED_BYTES on, as the stepwise path's, so that glibc does not hand their memory back
    to the system between calls; smaller ones are NumPy's own."""
    monkeypatch.setattr(numba_cpu, "STEPWISE_WORK", 1 << 62)
    rng = np.random.default_rng(0)
    large = lstm_forward(**random_inputs(rng, 12, 50, 16, 32, dtype=np.float32), backend="numba_cpu").cache.saved
    small = lstm_forward(**random_inputs(rng, 2, 3, 4, 5, dtype=np.float32), backend="numba_cpu").cache.saved
    assert large.gates.nbytes >= numba_cpu.POOLED_BYTES > small.gates.nbytes
    assert isinstance(large.gates.base, mmap.mmap) and small.gates.flags.owndata


def test_results_and_caches_outlive_later_calls_whose_memory_is_recycled(path, monkeypatch):
    """Two layers of one shape, both forward before either backward, and every result kept: no
    later call writes over an earlier call's outputs, cache or gradients (both paths make their
    large arrays in recycled memory: here every array, POOLED_BYTES 0)."""
    monkeypatch.setattr(numba_cpu, "POOLED_BYTES", 0)
    shape, options = (6, 4, 3, 5), dict(return_sequences=True)
    inputs = [random_inputs(np.random.default_rng(seed), *shape, dtype=np.float64) for seed in (1, 2)]
    dy = np.random.default_rng(3).standard_normal((6, 4, 5))
    expected = [(*r[:3], *lstm_backward(r.cache, dy)) for r in
                (lstm_forward(**i, **options, backend="numpy") for i in inputs)]
    forwards = [lstm_forward(**i, **options, backend="numba_cpu") for i in inputs]
    gradients = [lstm_backward(r.cache, dy) for r in forwards]
    lstm_backward(forwards[0].cache, -dy)  # once more, results dropped
    for r, g, reference in zip(forwards, gradients, expected):
        for ours, theirs in zip((*r[:3], *g), reference):
            if theirs is not None:
                np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-12)



def test_threads_making_stepwise_calls_at_once_leave_blas_threads_as_they_were():
    """Each stepwise call runs with BLAS single-threaded; the limit is the process's, and threads
    enter and leave it in any order: the last one out must restore what the first one found."""
    def blas_threads():
        return [pool["num_threads"] for pool in threadpoolctl.threadpool_info() if pool["user_api"] == "blas"]

    inputs = random_inputs(np.random.default_rng(0), 64, 16, 8, 32)
    assert numba_cpu.runs_stepwise(64, 16, 32)
    lstm_forward(**inputs, backend="numba_cpu")  # compiled: every BLAS it loads is loaded
    before = blas_threads()

    def calls():
        for _ in range(40):
            lstm_forward(**inputs, backend="numba_cpu")

    for _ in range(3):
        threads = [threading.Thread(target=calls) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert blas_threads() == before


# -- the fused training pass ---------------------------------------------------------------------

def _model(units=6, window=3, stateful=False, batch=1, dtype="float64", **lstm):
    set_random_seed(11)
    shape = dict(batch_input_shape=(batch, window, 1)) if stateful else dict(input_shape=(window, 1))
    model = Sequential([LSTM(units, stateful=stateful, backend="numba_cpu", **shape, **lstm),
                        Dense(26, activation="softmax")], dtype=dtype)
    model.compile(loss="categorical_crossentropy", optimizer="adam", metrics=["accuracy"])
    return model


MODELS = {
    "shuffled-batch-4": (dict(), dict(batch_size=4, shuffle=True)),
    "stateful": (dict(stateful=True, batch=1), dict(batch_size=1, shuffle=False)),
    "stateful-batch-23": (dict(stateful=True, batch=23), dict(batch_size=23, shuffle=False)),
    "backwards-no-bias": (dict(go_backwards=True, use_bias=False), dict(batch_size=5, shuffle=True)),
    "keras2-softsign": (dict(recurrent_activation="hard_sigmoid_keras2", activation="softsign"),
                        dict(batch_size=2, shuffle=False)),
}


@pytest.mark.parametrize("dtype, rtol", [("float64", 1e-12), ("float32", 1e-5)])
@pytest.mark.parametrize("model_options, fit_options", MODELS.values(), ids=MODELS)
def test_fused_training_takes_the_steps_of_the_layer_by_layer_path(model_options, fit_options, dtype, rtol):
    """The same model trained by the fused pass and layer by layer (the fused pass switched off)
    on numba_cpu: the same batches from the same random draws, the same Adam steps and state,
    so the same losses and weights up to round-off. Measured after 3 epochs, relative (weights
    to their largest value): float64 losses equal, weights within 1.1e-15; float32 losses within
    7.3e-8, weights within 7e-7."""
    x, y = alphabet(3)
    runs = []
    for fused in (True, False):
        model = _model(dtype=dtype, **model_options)
        if not fused:
            model._fusable = lambda: False
        np.random.seed(5)
        history = model.fit(x, y, epochs=3, verbose=0, **fit_options)
        runs.append((model, history.history, np.random.get_state()[1].copy()))
    (fused, fused_history, fused_random), (layered, layered_history, layered_random) = runs
    np.testing.assert_array_equal(fused_random, layered_random)  # the same shuffles, nothing more drawn
    assert fused.optimizer.iterations == layered.optimizer.iterations
    np.testing.assert_allclose(fused_history["loss"], layered_history["loss"], rtol=rtol)
    assert fused_history["accuracy"] == layered_history["accuracy"]
    for ours, theirs in zip(fused.get_weights() + list(fused.layers[0].states or ()),
                            layered.get_weights() + list(layered.layers[0].states or ())):
        assert np.abs(ours - theirs).max() <= rtol * np.abs(theirs).max()


def _sequence_model(head, backend, stateful=False, batch=1, dtype="float64", **lstm):
    """Experiment 9's model, smaller: an LSTM's every output under a softmax Dense, as it is
    (``head`` 'dense', applied per step) or in a TimeDistributed ('time-distributed')."""
    set_random_seed(11)
    shape = dict(batch_input_shape=(batch, 3, 1)) if stateful else dict(input_shape=(3, 1))
    dense = Dense(26, activation="softmax")
    model = Sequential([LSTM(6, return_sequences=True, stateful=stateful, backend=backend, **shape, **lstm),
                        TimeDistributed(dense) if head == "time-distributed" else dense], dtype=dtype)
    model.compile(loss="categorical_crossentropy", optimizer="adam", metrics=["accuracy"])
    return model


SEQUENCE_MODELS = {
    "batch-1": (dict(), dict(batch_size=1, shuffle=False)),
    "batch-4-shuffled": (dict(), dict(batch_size=4, shuffle=True)),  # 21 samples: a last batch of 1
    "backwards-batch-1": (dict(go_backwards=True), dict(batch_size=1, shuffle=False)),
    "backwards-batch-4-no-bias": (dict(go_backwards=True, use_bias=False), dict(batch_size=4, shuffle=True)),
    "stateful-batch-3": (dict(stateful=True, batch=3), dict(batch_size=3, shuffle=False)),
}


@pytest.mark.parametrize("dtype, rtol", [("float64", 1e-12), ("float32", 1e-5)])
@pytest.mark.parametrize("head", ["time-distributed", "dense"])
@pytest.mark.parametrize("model_options, fit_options", SEQUENCE_MODELS.values(), ids=SEQUENCE_MODELS)
def test_fused_sequence_training_takes_the_steps_of_numpys_layer_at_a_time(model_options, fit_options, head, dtype,
                                                                            rtol, monkeypatch):
    """A softmax Dense on every step's output, trained by numba_cpu's fused pass (one call per
    epoch) and by the numpy backend a layer at a time: the same batches, the same Adam steps and
    state, so the same losses, accuracies and weights after each of 2 epochs up to round-off.
    Measured, relative (weights to their largest value): float64 losses within 2.8e-16, weights
    within 4.5e-16; float32 losses within 8.1e-8, weights within 3.2e-7."""
    calls = []
    train_epoch = numba_cpu.train_epoch
    monkeypatch.setattr(numba_cpu, "train_epoch", lambda *args: calls.append(1) or train_epoch(*args))
    x, y = alphabet_sequences()
    fused, layered = (_sequence_model(head, backend, dtype=dtype, **model_options) for backend in ("numba_cpu", "numpy"))
    for epoch in range(2):
        for model in (fused, layered):
            np.random.seed(epoch)
            history = model.fit(x, y, epochs=1, verbose=0, **fit_options).history
            states = list(model.layers[0].states or ())
            model.results = history["loss"] + history["accuracy"], model.get_weights() + states
        assert len(calls) == epoch + 1
        (fused_logs, fused_arrays), (layered_logs, layered_arrays) = fused.results, layered.results
        np.testing.assert_allclose(fused_logs[0], layered_logs[0], rtol=rtol)
        assert fused_logs[1] == layered_logs[1]
        assert fused.optimizer.iterations == layered.optimizer.iterations == (epoch + 1) * -(-len(x) // fit_options["batch_size"])
        for ours, theirs in zip(fused_arrays, layered_arrays, strict=True):
            assert np.abs(ours - theirs).max() <= rtol * np.abs(theirs).max()


def test_fit_in_one_call_equals_one_call_per_batch_bit_for_bit():
    """A stateful epoch in one fused call against the same batches one train_on_batch each."""
    x, y = alphabet(1)
    fitted, stepped = _model(window=1, stateful=True, dtype="float32"), _model(window=1, stateful=True, dtype="float32")
    history = fitted.fit(x, y, epochs=1, batch_size=1, shuffle=False, verbose=0)
    losses = [stepped.train_on_batch(x[i:i + 1], y[i:i + 1])[0] for i in range(len(x))]
    assert history.history["loss"][0] == pytest.approx(np.mean(losses), rel=1e-7)
    for a, b in zip(fitted.get_weights() + list(fitted.layers[0].states),
                    stepped.get_weights() + list(stepped.layers[0].states)):
        np.testing.assert_array_equal(a, b)


def test_the_fused_pass_flushes_subnormal_numbers_only_while_it_runs():
    x, y = alphabet(3)
    _model(dtype="float32").fit(x, y, epochs=1, verbose=0)
    assert np.float32(1e-38) * np.float32(0.01) > 0  # NumPy's arithmetic keeps its subnormals


def test_an_exception_inside_the_fused_pass_leaves_subnormal_numbers_as_they_were():
    """A stateful model's state of the wrong shape makes the compiled pass raise at its first
    batch, after it flushed subnormals to zero: they must not stay flushed."""
    units, classes, batch, dtype = 3, 4, 2, np.float32
    x, y = np.zeros((batch, 5, 1), dtype), np.eye(classes, dtype=dtype)[:batch]
    lstm = LSTMWeights(*(np.zeros(shape, dtype) for shape in ((1, 4 * units), (units, 4 * units), (4 * units,))))
    dense = DenseWeights(*(np.zeros(shape, dtype) for shape in ((units, classes), (classes,))))
    flat = (np.zeros(sum(a.size for a in lstm + dense), dtype) for _ in range(4))
    adam = AdamState(*flat, tuple(dtype(value) for value in (0.001, 0.9, 0.999, 1e-7, 0.1, 0.001)), 0)
    wrong_state = (np.zeros((batch + 1, units), dtype),) * 2
    with pytest.raises(ValueError):
        numba_cpu.train_epoch(x, y, batch, lstm, dense, lstm, dense, adam, wrong_state, LSTMOptions())
    assert np.float32(1e-40) * np.float32(1) > 0

@pytest.mark.parametrize("y_shape", [(2, 4, 4), (2,), (2, 5, 4, 1)])
def test_a_y_of_neither_the_last_outputs_nor_every_steps_shape_is_refused_naming_it(y_shape):
    """For x [2, 5, 1]: y must be [2, classes] or [2, 5, classes]."""
    units, classes, dtype = 3, 4, np.float32
    lstm = LSTMWeights(*(np.zeros(shape, dtype) for shape in ((1, 4 * units), (units, 4 * units), (4 * units,))))
    dense = DenseWeights(*(np.zeros(shape, dtype) for shape in ((units, classes), (classes,))))
    adam = AdamState(*(np.zeros(1, dtype) for _ in range(4)), (), 0)
    expected = rf"y must be \[samples, classes\] or \[samples, time, classes\] for x of shape \(2, 5, 1\), " \
               rf"got shape {re.escape(str(y_shape))}"
    with pytest.raises(ValueError, match=expected):
        lstm_train_epoch(np.zeros((2, 5, 1), dtype), np.zeros(y_shape, dtype), 2, lstm, dense, lstm, dense, adam,
                         backend="numba_cpu")


def test_the_fused_pass_is_taken_only_for_an_lstm_then_a_softmax_dense(monkeypatch):
    """On the LSTM's last output, or on every step's (a Dense or a TimeDistributed one); not for
    more layers, another loss's layers or a backend without a fused pass."""
    calls = []
    monkeypatch.setattr(numba_cpu, "train_epoch", lambda *args, **kwargs: calls.append(1) or (0.0, 0))
    last, sequences = alphabet(3), alphabet_sequences()
    _model().fit(*last, epochs=1, verbose=0)
    for head in ("time-distributed", "dense"):
        _sequence_model(head, "numba_cpu").fit(*sequences, epochs=1, verbose=0)
    assert len(calls) == 3
    for layers, data in (
        ([LSTM(4, return_sequences=True, backend="numba_cpu"), LSTM(4, backend="numba_cpu"),
          Dense(26, activation="softmax")], last),
        ([LSTM(4, backend="numba_cpu"), Dense(8, activation="tanh"), Dense(26, activation="softmax")], last),
        ([LSTM(4, backend="numpy"), Dense(26, activation="softmax")], last),
        ([LSTM(4, backend="numba_cpu"), RepeatVector(3), LSTM(4, return_sequences=True, backend="numba_cpu"),
          TimeDistributed(Dense(26, activation="softmax"))], sequences),
        ([LSTM(4, return_sequences=True, backend="numpy"), TimeDistributed(Dense(26, activation="softmax"))],
         sequences),
    ):
        model = Sequential(layers)
        model.compile()
        history = model.fit(*data, epochs=1, verbose=0)
        assert len(calls) == 3 and np.isfinite(history.history["loss"][0])
    assert not hasattr(get_backend("numpy"), "train_epoch")


def test_without_numba_the_backend_is_reported_missing_and_auto_takes_numpy():
    code = (
        "import sys, warnings\n"
        "sys.modules['numba'] = None  # as if numba were not installed\n"
        "warnings.simplefilter('error')\n"
        "import fastlstm\n"
        "from fastlstm.backends import get_backend\n"
        "print([str(s) for s in fastlstm.available_backends() if s.name == 'numba_cpu'][0])\n"
        "print(get_backend('auto').__name__)\n"
    )
    out = run_python(code)
    status, auto = out.splitlines()
    assert status.startswith("numba_cpu: unavailable (not installed")
    assert auto == "fastlstm.backends.numpy"


def test_each_xdist_worker_compiles_into_a_numba_cache_of_its_own(request):
    """tests/conftest.py's pytest_configure, as Numba sees it: the kernels are saved there."""
    if not hasattr(request.config, "workerinput"):
        pytest.skip("not under pytest-xdist (the README's test command runs it)")
    cache = pathlib.Path(numba.config.CACHE_DIR)
    assert cache.name == request.config.workerinput["workerid"]
    cpu_arithmetic.all_finite(np.zeros(3))  # compiled, or loaded from that cache
    assert list(cache.rglob("cpu_arithmetic.all_finite-*.nbi"))
