"""The CPU backends (the NumPy reference, and numba_cpu where numba is installed) against first
principles: finite differences, a plain loop, stateful chunking, and numerical stability."""
import itertools
import warnings

import numpy as np
import pytest

from fastlstm import lstm_backward, lstm_forward
from fastlstm.activations import ACTIVATIONS
from support.lstm_testing import ARGUMENTS, CPU_BACKENDS, ProbeLoss, loop_reference, random_inputs

OPTION_COMBINATIONS = [
    dict(activation=a, recurrent_activation=r, return_sequences=rs, go_backwards=gb, bias=bias, state=state)
    for a, r, rs, gb, bias, state in itertools.product(
        sorted(ACTIVATIONS), sorted(ACTIVATIONS), (False, True), (False, True), (False, True), (False, True)
    )
]


def _split(combination):
    combination = dict(combination)
    make = {"bias": combination.pop("bias"), "state": combination.pop("state")}
    return make, combination


def _central_differences(loss, inputs, eps=1e-6):
    grads = {}
    for name in ARGUMENTS:
        if inputs[name] is None:
            continue
        a = inputs[name]
        g = np.empty_like(a)
        for index in np.ndindex(a.shape):
            saved = a[index]
            a[index] = saved + eps
            plus = loss.value(inputs)
            a[index] = saved - eps
            minus = loss.value(inputs)
            a[index] = saved
            g[index] = (plus - minus) / (2 * eps)
        grads[name] = g
    return grads


@pytest.mark.parametrize(
    "combination", OPTION_COMBINATIONS,
    ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()),
)
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_float64_gradients_match_central_differences(combination, backend):
    make, options = _split(combination)
    options["backend"] = backend
    rng = np.random.default_rng(len(repr(combination)))
    inputs = random_inputs(rng, batch=2, time=3, input_dim=2, units=2, **make)
    loss = ProbeLoss(rng, inputs, options)
    analytic = loss.gradients(inputs)._asdict()
    numeric = _central_differences(loss, inputs)
    for name in ARGUMENTS:
        if inputs[name] is None:
            # Missing bias has no gradient; missing h0/c0 were zeros and still get one.
            assert (analytic[name] is None) == (name == "bias")
            continue
        error = np.linalg.norm(analytic[name] - numeric[name])
        # Floored so that a gradient that is truly zero must match to 1e-9, above the ~1e-12
        # noise of the differences themselves.
        scale = max(np.linalg.norm(numeric[name]), np.linalg.norm(analytic[name]), 1e-3)
        assert error / scale < 1e-6, f"{name}: relative error {error / scale:.2e}"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("combination", OPTION_COMBINATIONS[::7], ids=str)
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_forward_matches_plain_loop(combination, dtype, backend):
    make, options = _split(combination)
    inputs = random_inputs(np.random.default_rng(3), batch=3, time=4, input_dim=2, units=3, dtype=dtype, **make)
    result = lstm_forward(**inputs, **options, backend=backend)
    expected = loop_reference(inputs, **options)
    tolerance = 1e-6 if dtype == np.float32 else 1e-12
    for got, want in zip(result[:3], expected):
        assert got.dtype == dtype
        np.testing.assert_allclose(got, want, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("chunks", [[1] * 12, [5, 7], [3, 3, 3, 3], [11, 1], [12]])
@pytest.mark.parametrize("recurrent_activation", ["sigmoid", "hard_sigmoid_keras2"])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_stateful_chunks_equal_the_whole_sequence(chunks, recurrent_activation, backend):
    inputs = random_inputs(np.random.default_rng(5), batch=3, time=12, input_dim=2, units=4)
    options = dict(recurrent_activation=recurrent_activation, return_sequences=True, backend=backend)
    whole = lstm_forward(**inputs, **options)
    h, c, outputs, start = inputs["h0"], inputs["c0"], [], 0
    for length in chunks:
        part = dict(inputs, x=inputs["x"][:, start:start + length], h0=h, c0=c)
        result = lstm_forward(**part, **options)
        outputs.append(result.outputs)
        h, c, start = result.h, result.c, start + length
    np.testing.assert_allclose(np.concatenate(outputs, axis=1), whole.outputs, rtol=0, atol=1e-14)
    np.testing.assert_allclose(h, whole.h, rtol=0, atol=1e-14)
    np.testing.assert_allclose(c, whole.c, rtol=0, atol=1e-14)


# Unbounded activations (relu, linear) grow with their input by definition; the promise is that
# the saturating ones neither overflow nor warn, however large the pre-activation.
SATURATING = ["hard_sigmoid", "hard_sigmoid_keras2", "sigmoid", "softsign", "tanh"]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("activation", SATURATING)
@pytest.mark.parametrize("recurrent_activation", SATURATING)
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_huge_preactivations_raise_no_warning_and_stay_finite(activation, recurrent_activation, dtype, backend):
    rng = np.random.default_rng(11)
    inputs = random_inputs(rng, batch=2, time=3, input_dim=1, units=2, dtype=dtype)
    inputs["x"] = np.array([1e4, -1e4, 1e4], dtype)[None, :, None].repeat(2, axis=0)
    inputs["kernel"] = np.sign(inputs["kernel"]).astype(dtype)  # so |z| is about 1e4
    options = dict(activation=activation, recurrent_activation=recurrent_activation, return_sequences=True,
                   backend=backend)
    # Underflow (exp(-1e4) -> 0) is exact for these functions; anything else is an error.
    with warnings.catch_warnings(), np.errstate(over="raise", invalid="raise", divide="raise", under="ignore"):
        warnings.simplefilter("error")
        result = lstm_forward(**inputs, **options)
        grads = lstm_backward(result.cache, np.ones_like(result.outputs))
    assert all(np.isfinite(a).all() for a in (*result[:3], *grads))
    # Every saturating activation maps into [-1, 1], so gates and outputs must stay there.
    assert (np.abs(result.cache.saved.gates) <= 1).all()
    assert (np.abs(result.outputs) <= 1).all()


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_backward_with_no_incoming_gradient_is_zero(backend):
    inputs = random_inputs(np.random.default_rng(2), batch=2, time=3, input_dim=2, units=3)
    grads = lstm_backward(lstm_forward(**inputs, backend=backend).cache)
    assert all(not g.any() for g in grads)
    assert [g.shape for g in grads] == [inputs[name].shape for name in ARGUMENTS]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_results_keep_the_input_dtype(dtype, backend):
    inputs = random_inputs(np.random.default_rng(4), batch=2, time=3, input_dim=2, units=3, dtype=dtype)
    result = lstm_forward(**inputs, return_sequences=True, backend=backend)
    grads = lstm_backward(result.cache, np.ones_like(result.outputs), np.ones_like(result.h))
    assert {a.dtype for a in (*result[:3], *grads)} == {np.dtype(dtype)}


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_outputs_do_not_alias_the_cache(backend):
    inputs = random_inputs(np.random.default_rng(6), batch=2, time=3, input_dim=2, units=3)
    result = lstm_forward(**inputs, return_sequences=True, backend=backend)
    dy = np.ones_like(result.outputs)
    before = lstm_backward(result.cache, dy)
    result.outputs[...] = 0
    result.h[...] = 0
    result.c[...] = 0
    after = lstm_backward(result.cache, dy)
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)
