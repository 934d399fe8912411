"""Bad input is refused with an error that names the argument, what was expected and what came."""
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from fastlstm import lstm_backward, lstm_forward
from fastlstm.backends.plan import DeviceLimits, plan_lstm
from support.lstm_testing import CPU_BACKENDS, random_inputs


@pytest.fixture
def inputs():
    return random_inputs(np.random.default_rng(0), batch=2, time=3, input_dim=4, units=5, dtype=np.float32)


def replaced(inputs, **changes):
    return {**inputs, **changes}


@pytest.mark.parametrize(
    "change, error, words",
    [
        (lambda a: dict(x=a["x"][0]), ValueError, ["x", "3-D", "(3, 4)"]),
        (lambda a: dict(x=a["x"][:, :0]), ValueError, ["x", "time step", "(2, 0, 4)"]),
        (lambda a: dict(x=a["x"][:0]), ValueError, ["x", "sample", "(0, 3, 4)"]),
        (lambda a: dict(kernel=a["kernel"][:3]), ValueError, ["kernel", "(4, 20)", "(3, 20)"]),
        (lambda a: dict(kernel=a["kernel"][None]), ValueError, ["kernel", "2-D", "(1, 4, 20)"]),
        (lambda a: dict(recurrent_kernel=a["recurrent_kernel"][:4]), ValueError, ["recurrent_kernel", "(4, 20)"]),
        (lambda a: dict(bias=a["bias"][:19]), ValueError, ["bias", "(20,)", "(19,)"]),
        (lambda a: dict(h0=a["h0"][:1]), ValueError, ["h0", "(2, 5)", "(1, 5)"]),
        (lambda a: dict(c0=a["c0"].T), ValueError, ["c0", "(2, 5)", "(5, 2)"]),
        (lambda a: dict(x=a["x"].astype(np.int64)), TypeError, ["x", "float32 or float64", "int64"]),
        (lambda a: dict(kernel=a["kernel"].astype(np.float64)), TypeError, ["kernel", "float64", "float32"]),
        (lambda a: dict(h0=a["h0"].astype(np.float16)), TypeError, ["h0", "float16"]),
        (lambda a: dict(x=a["x"].tolist()), TypeError, ["kernel", "float32", "float64"]),
    ],
    ids=["x-rank", "no-time-steps", "no-samples", "input-dim", "kernel-rank", "units", "bias",
         "h0", "c0", "int-x", "mixed-dtypes", "half-h0", "list-x-is-float64"],
)
def test_bad_arrays_name_the_argument_and_what_came(inputs, change, error, words):
    with pytest.raises(error) as info:
        lstm_forward(**replaced(inputs, **change(inputs)))
    for word in words:
        assert word in str(info.value)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize(
    "change, words",
    [
        (lambda a: dict(kernel=a["kernel"][:, :0], recurrent_kernel=a["recurrent_kernel"][:0, :0], bias=None,
                        h0=a["h0"][:, :0], c0=a["c0"][:, :0]), ["recurrent_kernel", "one unit", "(0, 0)"]),
        (lambda a: dict(x=a["x"][:, :, :0], kernel=a["kernel"][:0]), ["x", "one feature", "(2, 3, 0)"]),
    ],
    ids=["no-units", "no-features"],
)
def test_a_layer_without_units_or_inputs_without_features_is_refused(inputs, change, words, backend):
    """As Keras refuses units=0; the GPU launch plan divides by the units."""
    with pytest.raises(ValueError) as info:
        lstm_forward(**replaced(inputs, **change(inputs)), backend=backend)
    for word in words:
        assert word in str(info.value)


@pytest.mark.parametrize("batch, units", [(2, 0), (0, 5)])
def test_the_gpu_launch_plan_refuses_no_units_or_no_samples(batch, units):
    with pytest.raises(ValueError, match=f"batch >= 1 and units >= 1, got batch {batch}, units {units}"):
        plan_lstm(batch, units, np.float32, DeviceLimits())

@pytest.mark.parametrize(
    "change, error, words",
    [
        (lambda a: dict(x=None), TypeError, ["x must be an array", "got NoneType"]),
        (lambda a: dict(recurrent_kernel=None), TypeError, ["recurrent_kernel must be an array", "got NoneType"]),
        (lambda a: dict(kernel=object()), TypeError, ["kernel must be an array", "got object"]),
        (lambda a: dict(x=[[[1.0], [2.0]], [[3.0]]]), ValueError, ["x cannot be read as an array", "inhomogeneous"]),
        (lambda a: dict(h0=torch.zeros((2, 5), requires_grad=True)), ValueError, ["h0 cannot be read", "detach"]),
    ],
    ids=["none-x", "none-recurrent-kernel", "object-kernel", "ragged-x", "torch-requires-grad"],
)
def test_what_is_not_an_array_is_refused_by_name(inputs, change, error, words):
    with pytest.raises(error) as info:
        lstm_forward(**replaced(inputs, **change(inputs)))
    for word in words:
        assert word in str(info.value)


def test_backward_refuses_a_gradient_that_is_not_an_array_by_name(inputs):
    cache = lstm_forward(**inputs).cache
    with pytest.raises(ValueError, match="dhT cannot be read as an array"):
        lstm_backward(cache, dhT=[[0.0] * 5, [0.0]])


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("convert", [torch.from_numpy, jnp.asarray], ids=["torch", "jax"])
def test_cpu_arrays_of_other_libraries_are_taken_as_they_are(inputs, convert, backend):
    """PyTorch tensors and JAX arrays on the CPU, read through DLPack without a copy, in the
    forward and the backward pass alike."""
    expected = lstm_forward(**inputs, backend=backend)
    dy = np.ones_like(expected.outputs)
    expected_gradients = lstm_backward(expected.cache, dy, expected.h)
    result = lstm_forward(**{name: convert(a) for name, a in inputs.items()}, backend=backend)
    for ours, theirs in zip(result[:3], expected[:3]):
        np.testing.assert_array_equal(ours, theirs)
    for ours, theirs in zip(lstm_backward(result.cache, convert(dy), convert(expected.h)), expected_gradients):
        np.testing.assert_array_equal(ours, theirs)

@pytest.mark.parametrize(
    "option, value, words",
    [
        ("activation", "gelu", ["activation", "'gelu'", "tanh"]),
        ("activation", ["tanh"], ["activation", "['tanh']"]),  # unhashable: no look-up in the options made
        ("recurrent_activation", "hard_sigmoid_v2", ["recurrent_activation", "hard_sigmoid_keras2"]),
        ("backend", "cuda", ["backend", "'cuda'", "numpy"]),
    ],
)
def test_unknown_names_are_refused_with_the_choices(inputs, option, value, words):
    with pytest.raises(ValueError) as info:
        lstm_forward(**inputs, **{option: value})
    for word in words:
        assert word in str(info.value)


@pytest.mark.parametrize("backend", CPU_BACKENDS)  # numba_cpu checks in a compiled pass of its own
@pytest.mark.parametrize("name", ["x", "kernel", "recurrent_kernel", "bias", "h0", "c0"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_input_is_refused_unless_the_check_is_off(inputs, name, bad, backend):
    inputs[name].flat[1] = bad
    with pytest.raises(ValueError) as info:
        lstm_forward(**inputs, backend=backend)
    message = str(info.value)
    assert message.startswith(f"{name} contains") and "check_finite=False" in message
    assert ("1 NaN" if np.isnan(bad) else "1 inf") in message


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("name", ["x", "kernel", "recurrent_kernel", "bias", "h0", "c0"])
def test_check_finite_false_lets_nan_through(inputs, name, backend):
    inputs[name].flat[1] = np.nan
    with np.errstate(invalid="ignore"):
        result = lstm_forward(**inputs, check_finite=False, backend=backend)
    assert np.isnan(result.c).any()


def test_activation_none_means_linear(inputs):
    none = lstm_forward(**inputs, activation=None, recurrent_activation=None)
    linear = lstm_forward(**inputs, activation="linear", recurrent_activation="linear")
    np.testing.assert_array_equal(none.outputs, linear.outputs)


@pytest.mark.parametrize(
    "gradient, value, words",
    [
        ("dy", np.zeros((2, 3, 5), np.float32), ["dy", "(2, 5)", "(2, 3, 5)"]),
        ("dhT", np.zeros((2, 5), np.float64), ["dhT", "float64", "float32"]),
        ("dcT", np.zeros((5,), np.float32), ["dcT", "(2, 5)", "(5,)"]),
    ],
)
def test_backward_refuses_gradients_of_the_wrong_shape_or_dtype(inputs, gradient, value, words):
    cache = lstm_forward(**inputs).cache
    with pytest.raises((ValueError, TypeError)) as info:
        lstm_backward(cache, **{gradient: value})
    for word in words:
        assert word in str(info.value)


def test_backward_refuses_something_that_is_not_a_cache(inputs):
    result = lstm_forward(**inputs)
    with pytest.raises(TypeError, match="cache must be the LSTMCache"):
        lstm_backward(result)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_a_forward_that_keeps_no_cache_gives_none_which_backward_refuses(inputs, backend):
    """keep_cache=False: the same results, and no cache, on every backend (those without an
    infer of their own run forward and drop what it saved)."""
    kept = lstm_forward(**inputs, return_sequences=True, backend=backend)
    inferred = lstm_forward(**inputs, return_sequences=True, keep_cache=False, backend=backend)
    assert inferred.cache is None
    for ours, reference in zip(inferred[:3], kept[:3]):
        np.testing.assert_array_equal(ours, reference)
    with pytest.raises(TypeError, match=r"got None \(the cache of lstm_forward\(keep_cache=False\)"):
        lstm_backward(inferred.cache)
