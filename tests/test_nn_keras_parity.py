"""Training-trajectory parity of fastlstm.nn with Keras 3 (TensorFlow backend, CPU), float32, for
each CPU backend (numba_cpu trains these models with its fused pass).

The models of the tutorial's alphabet experiments start from the same weights (copied with
get_weights/set_weights), get the same batches in the same order and train with Adam; the loss
of every step and every weight after 50 steps must agree within

- LOSS_RTOL: |loss_fastlstm - loss_keras| <= LOSS_RTOL * |loss_keras| at every step;
- WEIGHT_RTOL: max|w_fastlstm - w_keras| <= WEIGHT_RTOL * max|w_keras| for every weight array.

Measured (Keras 3.15.1, TensorFlow 2.21, CPU), numpy: at most 1.5e-7 relative on the loss (every
step, every experiment) and 4.9e-7 on the weights (the Dense bias of the batch-25 model; 2e-7 or
less elsewhere), so the tolerances leave a margin of about 7 and 10; numba_cpu: at most 2.2e-7
on the loss and 3.2e-7 on the weights.
"""
import os

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
keras = pytest.importorskip("keras")

from fastlstm.nn import LSTM, Dense, Sequential, TimeDistributed  # noqa: E402
from support.lstm_testing import CPU_BACKENDS  # noqa: E402  (tests/ is on the path)
from test_nn import alphabet, alphabet_sequences, sequence_model  # noqa: E402  (the tutorial's data and models)

pytestmark = pytest.mark.parity
LOSS_RTOL = 1e-6
WEIGHT_RTOL = 5e-6
STEPS = 50

# The tutorial's experiments: (id, units, window (time steps), batch size, stateful).
EXPERIMENTS = [
    ("1-one-char", 32, 1, 1, False),
    ("3-time-window", 32, 3, 1, False),
    ("4-batch-25", 16, 1, 25, False),
    ("5-stateful", 50, 1, 1, True),
]


def twin_models(units, window, batch, stateful, backend="auto"):
    """A compiled Keras 3 model and the same fastlstm model with the Keras model's weights."""
    if stateful:
        keras_input = keras.Input(batch_shape=(batch, window, 1))
        lstm = LSTM(units, stateful=True, batch_input_shape=(batch, window, 1), backend=backend)
    else:
        keras_input = keras.Input(shape=(window, 1))
        lstm = LSTM(units, input_shape=(window, 1), backend=backend)
    keras.utils.set_random_seed(units)
    keras_model = keras.Sequential([
        keras_input, keras.layers.LSTM(units, stateful=stateful), keras.layers.Dense(26, activation="softmax"),
    ])
    model = Sequential([lstm, Dense(26, activation="softmax")])
    for m in (keras_model, model):
        m.compile(loss="categorical_crossentropy", optimizer="adam", metrics=["accuracy"])
    model.set_weights(keras_model.get_weights())
    return keras_model, model


def reset_keras_states(keras_model):
    for layer in keras_model.layers:
        if getattr(layer, "stateful", False):
            layer.reset_states()


def assert_weights_close(keras_model, model):
    for i, (k, f) in enumerate(zip(keras_model.get_weights(), model.get_weights(), strict=True)):
        assert f.shape == k.shape and f.dtype == np.float32
        assert np.abs(f - k).max() <= WEIGHT_RTOL * np.abs(k).max(), f"weight {i} {k.shape}"


@pytest.mark.parametrize("units, window, batch, stateful", [e[1:] for e in EXPERIMENTS],
                         ids=[e[0] for e in EXPERIMENTS])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_training_trajectory_matches_keras(units, window, batch, stateful, backend):
    """50 train_on_batch steps on both, batches in order; a stateful pair resets after each epoch."""
    x, y = alphabet(window)
    keras_model, model = twin_models(units, window, batch, stateful, backend)
    batches = [slice(i, i + batch) for i in range(0, len(x), batch)]
    step = 0
    while step < STEPS:
        for s in batches[:STEPS - step]:
            keras_loss, keras_accuracy = keras_model.train_on_batch(x[s], y[s])
            loss, accuracy = model.train_on_batch(x[s], y[s])
            assert abs(loss - keras_loss) <= LOSS_RTOL * abs(keras_loss), f"step {step}"
            assert accuracy == pytest.approx(keras_accuracy, rel=1e-6), f"step {step}"  # Keras: float32
            step += 1
        if stateful:
            reset_keras_states(keras_model)
            model.reset_states()
    assert_weights_close(keras_model, model)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_stateful_fit_matches_keras(backend):
    """The tutorial's stateful loop: fit one epoch (batch 1, no shuffling), reset, repeat."""
    x, y = alphabet(1)
    keras_model, model = twin_models(50, 1, 1, stateful=True, backend=backend)
    for _ in range(2):
        keras_history = keras_model.fit(x, y, epochs=1, batch_size=1, shuffle=False, verbose=0)
        history = model.fit(x, y, epochs=1, batch_size=1, shuffle=False, verbose=0)
        np.testing.assert_allclose(history.history["loss"], keras_history.history["loss"], rtol=LOSS_RTOL)
        np.testing.assert_allclose(history.history["accuracy"], keras_history.history["accuracy"], rtol=1e-6)
        reset_keras_states(keras_model)
        model.reset_states()
    assert_weights_close(keras_model, model)
    # The stateful pair also predicts alike while carrying its state over the sequence.
    np.testing.assert_allclose(model.predict(x), keras_model.predict(x, batch_size=1, verbose=0), atol=1e-6)


@pytest.mark.parametrize("window", [1, 3])
def test_weights_copied_both_ways_give_the_same_predictions(window):
    x, y = alphabet(window)
    keras_model, model = twin_models(32, window, 1, stateful=False)
    np.testing.assert_allclose(model.predict(x), keras_model.predict(x, verbose=0), atol=1e-6)

    model.fit(x, y, epochs=3, batch_size=1, verbose=0)  # fastlstm weights Keras has never seen
    keras_model.set_weights(model.get_weights())
    np.testing.assert_allclose(keras_model.predict(x, verbose=0), model.predict(x), atol=1e-6)
    assert not np.allclose(model.predict(x), twin_models(32, window, 1, stateful=False)[1].predict(x))


def test_a_layer_used_twice_shares_its_weights_as_in_keras():
    """The model of issue 21, its tanh Dense used twice: as many parameters as Keras counts, Keras's
    weights in get_weights's order, and after 10 Adam steps (whose gradient sums the shared
    layer's uses) the same weights."""
    keras.utils.set_random_seed(1)
    keras_shared, shared = keras.layers.Dense(4, activation="tanh"), Dense(4, activation="tanh")
    keras_model = keras.Sequential([keras.Input((3, 2)), keras.layers.LSTM(4), keras_shared, keras_shared,
                                    keras.layers.Dense(5, activation="softmax")])
    model = Sequential([LSTM(4, input_shape=(3, 2)), shared, shared, Dense(5, activation="softmax")])
    for m in (keras_model, model):
        m.compile(loss="categorical_crossentropy", optimizer="adam")
    assert model.count_params() == keras_model.count_params()
    model.set_weights(keras_model.get_weights())
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 3, 2)).astype(np.float32)
    y = np.eye(5, dtype=np.float32)[rng.integers(0, 5, 8)]
    np.testing.assert_allclose(model.predict(x), keras_model.predict(x, verbose=0), atol=1e-6)
    for step in range(10):
        assert model.train_on_batch(x, y) == pytest.approx(keras_model.train_on_batch(x, y), rel=LOSS_RTOL), step
    assert_weights_close(keras_model, model)


def keras_sequence_model(architecture):
    """The Keras 3 twin of ``test_nn.sequence_model(architecture)``: 'a', LSTM(32) returning
    sequences under TimeDistributed(Dense(26, softmax)); 'b', LSTM(32), RepeatVector(3),
    LSTM(32) returning sequences, then the same TimeDistributed Dense."""
    keras.utils.set_random_seed(26)
    first = keras.layers.LSTM(32, return_sequences=architecture == "a")
    middle = [] if architecture == "a" else [
        keras.layers.RepeatVector(3), keras.layers.LSTM(32, return_sequences=True)]
    return keras.Sequential([keras.Input((3, 1)), first, *middle,
                             keras.layers.TimeDistributed(keras.layers.Dense(26, activation="softmax"))])


@pytest.mark.parametrize("architecture", ["a", "b"])
def test_sequence_models_copy_weights_both_ways_as_keras(architecture):
    """Issue 26's models: as many parameters as Keras counts, Keras's weights give Keras's
    predictions, and weights fastlstm trained give Keras fastlstm's predictions."""
    x, y = alphabet_sequences()
    keras_model, model = keras_sequence_model(architecture), sequence_model(architecture)
    assert model.count_params() == keras_model.count_params()
    assert [w.shape for w in model.get_weights()] == [w.shape for w in keras_model.get_weights()]
    model.set_weights(keras_model.get_weights())
    np.testing.assert_allclose(model.predict(x), keras_model.predict(x, verbose=0), atol=1e-6)

    model.fit(x, y, epochs=3, batch_size=4, verbose=0)  # fastlstm weights Keras has never seen
    assert not np.allclose(model.predict(x), keras_model.predict(x, verbose=0), atol=1e-4)
    keras_model.set_weights(model.get_weights())
    np.testing.assert_allclose(keras_model.predict(x, verbose=0), model.predict(x), atol=1e-6)


def test_a_dense_used_as_itself_and_time_distributed_shares_its_weights_as_in_keras():
    """A tanh Dense applied to an LSTM's sequence, then again through a TimeDistributed: Keras
    keeps the weights the first use built, and counts them once."""
    keras.utils.set_random_seed(2)
    keras_shared, shared = keras.layers.Dense(4, activation="tanh"), Dense(4, activation="tanh")
    keras_model = keras.Sequential([
        keras.Input((3, 2)), keras.layers.LSTM(4, return_sequences=True), keras_shared,
        keras.layers.TimeDistributed(keras_shared),
        keras.layers.TimeDistributed(keras.layers.Dense(5, activation="softmax")),
    ])
    model = Sequential([LSTM(4, return_sequences=True, input_shape=(3, 2)), shared, TimeDistributed(shared),
                        TimeDistributed(Dense(5, activation="softmax"))])
    assert model.count_params() == keras_model.count_params()
    model.set_weights(keras_model.get_weights())
    x = np.random.default_rng(0).standard_normal((8, 3, 2)).astype(np.float32)
    np.testing.assert_allclose(model.predict(x), keras_model.predict(x, verbose=0), atol=1e-6)
