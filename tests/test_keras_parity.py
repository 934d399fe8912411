"""Parity with keras.layers.LSTM (Keras 3, TensorFlow backend, CPU) in float32, for each CPU backend.

The same weights go into both; outputs, final states and the gradients of every input
(via tf.GradientTape) must agree within TOLERANCE, measured as
max|fastlstm - keras| / max(1, max|keras|) per array.
"""
import itertools
import os

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
keras = pytest.importorskip("keras")  # the 'test' extra installs it; CI runs these
tf = pytest.importorskip("tensorflow")

from fastlstm import lstm_backward, lstm_forward  # noqa: E402
from support.lstm_testing import ARGUMENTS, CPU_BACKENDS, random_inputs, relative_error  # noqa: E402

pytestmark = pytest.mark.parity
# Measured over every case below (the worst array of each): numpy median 2.5e-7, worst 6.7e-6;
# numba_cpu median 3.1e-7, worst 5.8e-6. Both worst cases are the [8, 20, 6] input with 32 units,
# where float32 round-off accumulates over 20 steps; there each backend lies within 3.3e-6 of a
# float64 computation, so the gap to Keras is round-off, not a difference in math.
TOLERANCE = 1e-5

KERAS_RECURRENT_ACTIVATIONS = {
    "sigmoid": "sigmoid",
    "hard_sigmoid": "hard_sigmoid",
    # Keras 3 has no slope-0.2 hard sigmoid; give the Keras layer the Keras 2 formula.
    "hard_sigmoid_keras2": lambda z: keras.ops.clip(0.2 * z + 0.5, 0.0, 1.0),
}
ALPHABET_SHAPES = [(1, 1, 1), (1, 3, 1), (1, 1, 3), (25, 1, 1), (1, 5, 1)]
LARGER_SHAPES = [(8, 20, 6), (4, 7, 3)]
OPTIONS = [
    dict(recurrent_activation=r, return_sequences=rs, go_backwards=gb, initial_state=s)
    for r, rs, gb, s in itertools.product(KERAS_RECURRENT_ACTIVATIONS, (False, True), (False, True), (False, True))
]
CASES = [
    (shape, units, options)
    for shape, units in [*itertools.product(ALPHABET_SHAPES, (16, 32, 50)), *itertools.product(LARGER_SHAPES, (5, 32))]
    for options in OPTIONS
]


def _case_id(case):
    (b, t, d), units, o = case
    flags = "".join(k[0] for k in ("return_sequences", "go_backwards", "initial_state") if o[k])
    return f"{b}x{t}x{d}-u{units}-{o['recurrent_activation']}-{flags or 'plain'}"


def _compare(shape, units, backend, activation="tanh", recurrent_activation="sigmoid",
             return_sequences=False, go_backwards=False, initial_state=False):
    batch, time, input_dim = shape
    rng = np.random.default_rng([batch, time, input_dim, units])
    inputs = random_inputs(rng, batch, time, input_dim, units, np.float32, state=initial_state)
    options = dict(activation=activation, recurrent_activation=recurrent_activation,
                   return_sequences=return_sequences, go_backwards=go_backwards, backend=backend)

    layer = keras.layers.LSTM(
        units, activation=activation, recurrent_activation=KERAS_RECURRENT_ACTIVATIONS[recurrent_activation],
        return_sequences=return_sequences, go_backwards=go_backwards, return_state=True,
    )
    layer.build(shape)
    layer.set_weights([inputs["kernel"], inputs["recurrent_kernel"], inputs["bias"]])

    ours = lstm_forward(**inputs, **options)
    dy, dh, dc = (rng.standard_normal(a.shape).astype(np.float32) for a in ours[:3])
    grads = lstm_backward(ours.cache, dy, dh, dc)

    x = tf.Variable(inputs["x"])
    state = [tf.Variable(inputs["h0"]), tf.Variable(inputs["c0"])] if initial_state else []
    with tf.GradientTape() as tape:
        y, h, c = layer(x, initial_state=state or None)
        loss = tf.reduce_sum(y * dy) + tf.reduce_sum(h * dh) + tf.reduce_sum(c * dc)
    theirs = tape.gradient(loss, [x, *layer.trainable_weights, *state])

    pairs = {"outputs": (ours.outputs, y), "h": (ours.h, h), "c": (ours.c, c)}
    names = [n for n in ARGUMENTS if inputs[n] is not None]
    pairs.update({f"d{n}": (getattr(grads, n), g) for n, g in zip(names, theirs)})
    errors = {}
    for name, (mine, reference) in pairs.items():
        reference = np.asarray(reference)
        assert mine.shape == reference.shape and mine.dtype == np.float32, name
        errors[name] = relative_error(mine, reference)
    return errors


@pytest.mark.parametrize("case", CASES, ids=_case_id)
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_matches_keras_lstm(case, backend):
    errors = _compare(*case[:2], backend, **case[2])
    worst = max(errors, key=errors.get)
    assert errors[worst] <= TOLERANCE, f"{worst} differs by {errors[worst]:.2e}: {errors}"


@pytest.mark.parametrize("activation", ["relu", "sigmoid", "hard_sigmoid", "softsign", "linear"])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_matches_keras_lstm_with_other_cell_activations(activation, backend):
    errors = _compare((4, 6, 3), 8, backend, activation=activation, return_sequences=True, initial_state=True)
    worst = max(errors, key=errors.get)
    assert errors[worst] <= TOLERANCE, f"{worst} differs by {errors[worst]:.2e}: {errors}"
