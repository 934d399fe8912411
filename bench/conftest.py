"""The benchmark grids and the check that every implementation computes what the reference does.

    pytest bench/ --benchmark-only                      # the default grid, a few minutes
    pytest bench/ --benchmark-only --bench-grid=full    # every shape of the grid
    pytest bench/ --benchmark-disable                   # each once, as a test (CI)
    pytest bench/test_kernels.py --benchmark-only --bench-grid=gpu --bench-device=gpu   # fastlstm against cuDNN

Each kernel benchmark starts once the other implementations' threads have come to rest
(bench/idle.py): each implementation as if alone. bench/test_side_by_side.py times them the
other way, each right after the others; bench/test_in_turn.py alone again, but fastlstm and the
baselines round by round.
"""
import functools
import itertools
import time as clock

import numpy as np
import pytest

from fastlstm import experiments
from fastlstm.bench_report import flops
from idle import wait_for_other_threads
from implementations import cpu_info, gpu_info, implementations, make_inputs, versions

# (batch, time, input_dim, units)
REFERENCE_SHAPES = [(1, 1, 1, 50), (1, 25, 1, 32), (32, 25, 1, 32), (256, 25, 64, 128), (1024, 25, 64, 128),
                    (64, 100, 128, 512)]
BATCH_SWEEP = [(batch, time, 16, 32) for time in (1, 25) for batch in (1, 8, 32, 128, 512)]


def experiment_shape(number):
    """(batch, time, input_dim, units) of alphabet experiment ``number``'s (first) LSTM as it trains."""
    experiment, data, _ = experiments.setup(number)
    _, time, input_dim = data.x.shape
    return experiment.batch_size, time, input_dim, experiment.units


ALPHABET_SHAPES = sorted({experiment_shape(number) for number in experiments.EXPERIMENTS})
GRIDS = {
    "default": REFERENCE_SHAPES + BATCH_SWEEP,
    "full": [(b, t, u, u) for b, t, u in itertools.product((1, 8, 32, 128, 512, 1024), (1, 5, 25, 100),
                                                          (16, 32, 50, 128, 256, 512))],
    # The alphabet experiments' shapes, where a GPU's fixed cost per call decides, then the
    # default grid's, each shape once.
    "gpu": list(dict.fromkeys(ALPHABET_SHAPES + REFERENCE_SHAPES + BATCH_SWEEP)),
}
DEVICES = {"any": lambda implementation: True, "cpu": lambda implementation: not implementation.gpu,
           "gpu": lambda implementation: implementation.gpu}
FLOAT64_SHAPES = REFERENCE_SHAPES  # float64 is timed on these, for the implementations that offer it
# max|result - reference| / max(1, max|reference|), for the outputs and dx: measured at most 6.3e-7
# in float32 and 1.5e-15 in float64 across fastlstm, Keras, raw TensorFlow and PyTorch over the
# default grid. The weight gradients sum batch*time products, whose rounding grows like the square
# root of their number: measured at most 5.6e-6 and 1.1e-14 at batch*time = 25600 (the default
# grid), and 1.4e-5 in float32 at 102400 (the full grid's largest; the bias gradient).
TOLERANCE = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}
WEIGHT_GRADIENTS = ("kernel", "recurrent_kernel", "bias")

# The large shapes, a forward pass of at least this many floating-point operations: their float32
# fastlstm benchmarks, when timed, also record the machine's matrix-product throughput, measured
# beside them.
LARGE_FLOPS = 1e9

def matrix_product_gflops(size=1024, repeats=10):
    """GFLOP/s of NumPy's float32 size x size matrix product with its BLAS's default threads (every
    core), best of ``repeats``: the ceiling of the large shapes (the issue's reference figure).
    Returns once the BLAS threads have stopped spinning, so that they take no core from what runs next:
    a pass timed while they spin ran up to twice as long (256, 25, 64, 128's forward)."""
    a = np.random.default_rng(0).standard_normal((size, size)).astype(np.float32)
    best = float("inf")
    for _ in range(repeats):
        start = clock.perf_counter()
        a @ a
        best = min(best, clock.perf_counter() - start)
    wait_for_other_threads()
    return 2 * size ** 3 / best / 1e9


def pytest_benchmark_update_machine_info(config, machine_info):
    """The CPU as the kernels see it, beside pytest-benchmark's own record: its model, vector
    extensions, and the target and register tile numba_cpu compiles for."""
    machine_info["fastlstm_cpu"] = cpu_info()


def tolerance(name, shape, dtype):
    """The largest error allowed in the result ``name`` of a pass at ``shape``."""
    batch, time, _, _ = shape
    terms = batch * time if name in WEIGHT_GRADIENTS else 1
    return TOLERANCE[dtype] * max(1.0, np.sqrt(terms / 10_000))


def pytest_addoption(parser):
    parser.addoption("--bench-grid", choices=sorted(GRIDS), default="default",
                     help="the shapes of the kernel benchmarks: 'default' (a few minutes), 'full', or 'gpu' "
                          "(the alphabet experiments' shapes, then the default grid's)")
    parser.addoption("--bench-device", choices=sorted(DEVICES), default="any",
                     help="the implementations to time, by where they run: 'any', 'cpu', or 'gpu' (on a CUDA device)")


def shape_id(shape):
    return "b{}-t{}-d{}-u{}".format(*shape)


def pytest_configure(config):
    config.addinivalue_line("markers", "side_by_side: times the CPU implementations one right after another, "
                                       "float32, at the grid's shapes of more than one time step")
    config.addinivalue_line("markers", "in_turn: times fastlstm's CPU backends and the baselines round by round, "
                                       "each call once the others' threads rest")


def side_by_side(implementations):
    """The implementations timed side by side: those on the CPU but the reference (fastlstm-numpy),
    each a contender for a program's CPU."""
    return [impl for impl in implementations if not impl.gpu and impl.name != "fastlstm-numpy"]


def in_turn(implementations):
    """The implementations bench/test_in_turn.py times, each with the CPU baselines in turn:
    fastlstm's CPU backends but the reference."""
    return [impl for impl in side_by_side(implementations) if not impl.baseline]


def pytest_generate_tests(metafunc):
    if {"implementation", "shape", "dtype"} <= set(metafunc.fixturenames):
        shapes = GRIDS[metafunc.config.getoption("--bench-grid")]
        device = metafunc.config.getoption("--bench-device")
        chosen = [impl for impl in _implementations() if DEVICES[device](impl)]
        dtypes = (np.float32, np.float64)
        situation = next((m for m in ("side_by_side", "in_turn") if metafunc.definition.get_closest_marker(m)), None)
        if situation == "side_by_side":
            chosen, dtypes, shapes = side_by_side(chosen), (np.float32,), [s for s in shapes if s[1] > 1]
        elif situation == "in_turn":
            chosen = in_turn(chosen)
        if situation and metafunc.config.getoption("benchmark_disable"):
            # Untimed, one float32 shape runs these paths; test_kernels.py checks every shape's results.
            dtypes, shapes = (np.float32,), shapes[:1]
        # Shape by shape, every implementation one after another: this machine's speed drifts by
        # tens of percent over minutes, so the implementations a ratio compares run seconds apart.
        cases = [(impl, shape, np.dtype(dtype)) for dtype in dtypes
                 for shape in (shapes if dtype == np.float32 else FLOAT64_SHAPES)
                 for impl in chosen if dtype in impl.dtypes]
        ids = [f"{i.name}-{shape_id(s)}-{d.name}" for i, s, d in cases]
        if not cases:  # a skip that says why, rather than pytest's "got empty parameter set"
            cases, ids = [pytest.param(None, None, None, marks=pytest.mark.skip(
                reason=f"no implementation runs here with --bench-device={device}"))], ["none"]
        metafunc.parametrize(("implementation", "shape", "dtype"), cases, ids=ids)


_implementations = functools.cache(implementations)  # built once per session


def as_numpy(runner, pass_name, result):
    """A pass's result as {name: NumPy array}: the outputs, or each gradient."""
    if pass_name == "forward":
        return {"outputs": runner.outputs(result)}
    return runner.gradients(result)._asdict()


@pytest.fixture(scope="session")
def reference():
    """The NumPy reference's result for (pass, shape, dtype), computed once."""
    cache = {}
    numpy_backend = next(i for i in _implementations() if i.name == "fastlstm-numpy")

    def get(pass_name, shape, dtype):
        key = (pass_name, shape, dtype)
        if key not in cache:
            runner = numpy_backend.prepare(make_inputs(*shape, dtype))
            cache[key] = as_numpy(runner, pass_name, getattr(runner, pass_name)())
        return cache[key]

    return get


# Rounds of a side-by-side or in-turn benchmark: each runs every other implementation first, so it is long.
SIDE_BY_SIDE_ROUNDS = 9
IN_TURN_ROUNDS = 15
# In turn, each implementation's calls run this long (at least one call), untimed, before its
# timed one: a core that rested runs its first milliseconds slow on a virtual machine (a Zen 4's
# forward at 128, 25, 16, 32 took 1.7 ms right after 5 ms of rest, 0.7 back to back).
WARM_SECONDS = 0.005


def warm_up(call):
    """Calls ``call`` for WARM_SECONDS, at least once."""
    start = clock.perf_counter()
    call()
    while clock.perf_counter() - start < WARM_SECONDS:
        call()


@pytest.fixture
def timed(benchmark, reference):
    """timed(pass_name, implementation, shape, dtype, situation="alone"): times one pass, records
    what it ran, and checks its result against the reference. "alone": once the other
    implementations' threads rest; "side by side": each call right after every other
    implementation of side_by_side() made the same pass, their threads still spinning; "in turn":
    each round every CPU baseline's call, then this one's, each once the others' threads rest and
    after warm_up(), the baselines' median times in ``extra_info["in_turn_with"]`` (ms): the
    machine's speed drifts within seconds, and a ratio of calls made in turn shows less of it than
    one of benchmarks that ran a minute apart."""

    def run(pass_name, implementation, shape, dtype, situation="alone"):
        inputs = make_inputs(*shape, dtype)
        runner = implementation.prepare(inputs)
        beside = implementation.name.startswith("fastlstm") and not implementation.gpu and dtype == np.float32 and \
            flops("forward", *shape) >= LARGE_FLOPS and situation == "alone" and not benchmark.disabled
        throughput_before = matrix_product_gflops() if beside else None
        batch, time, input_dim, units = shape
        benchmark.group = f"{pass_name} {shape_id(shape)} {dtype.name}"
        benchmark.extra_info.update(
            implementation=implementation.name, baseline=implementation.baseline, device=implementation.device,
            pass_name=pass_name, batch=batch, time=time, input_dim=input_dim, units=units, dtype=dtype.name,
            situation=situation,
            path=runner.path, versions={**versions(), **implementation.versions},
        )
        if implementation.gpu:
            benchmark.extra_info.update(gpu_info())
            getattr(runner, pass_name)()  # compilation and the device's first use, outside the timing
        if runner.launches:
            benchmark.extra_info["launches"] = runner.launches[pass_name]
        if situation == "side by side":
            others = [getattr(other.prepare(inputs), pass_name) for other in side_by_side(_implementations())
                      if other.name != implementation.name and dtype in other.dtypes]

            def others_first():
                for other in others:
                    other()

            result = benchmark.pedantic(getattr(runner, pass_name), setup=others_first, rounds=SIDE_BY_SIDE_ROUNDS,
                                        warmup_rounds=1)
        elif situation == "in turn":
            baselines = {other.name: getattr(other.prepare(inputs), pass_name)
                         for other in side_by_side(_implementations()) if other.baseline and dtype in other.dtypes}
            times = {name: [] for name in baselines}

            def baselines_first():
                for name, call in baselines.items():
                    wait_for_other_threads()
                    warm_up(call)
                    start = clock.perf_counter()
                    call()
                    times[name].append(clock.perf_counter() - start)
                wait_for_other_threads()
                warm_up(getattr(runner, pass_name))

            result = benchmark.pedantic(getattr(runner, pass_name), setup=baselines_first, rounds=IN_TURN_ROUNDS,
                                        warmup_rounds=1)
            benchmark.extra_info["in_turn_with"] = {name: 1e3 * float(np.median(t[-IN_TURN_ROUNDS:]))
                                                    for name, t in times.items()}
        else:
            wait_for_other_threads()
            result = benchmark(getattr(runner, pass_name))
        results = as_numpy(runner, pass_name, result)
        expected = reference(pass_name, shape, dtype)
        assert {name: a.shape for name, a in results.items()} == {name: a.shape for name, a in expected.items()}
        errors = {name: np.abs(results[name] - a).max() / max(1.0, np.abs(a).max()) for name, a in expected.items()}
        benchmark.extra_info["error"] = float(max(errors.values()))
        for name, error in errors.items():
            assert error <= tolerance(name, shape, dtype), \
                f"{implementation.name}'s {name} differs from the reference by {error:.2e}"
        if beside:
            # Measured just before and after the pass, since this machine's speed drifts over minutes.
            benchmark.extra_info["matrix_product_gflops"] = (throughput_before + matrix_product_gflops()) / 2

    return run
