"""A layer instance used more than once in one Sequential shares its weights, as in Keras 3:
its weights counted, listed and set once, its gradient the sum over its uses. The comparison
with Keras itself is in test_nn_keras_parity.py."""
import numpy as np
import pytest

from fastlstm import lstm_forward
from fastlstm.nn import LSTM, Dense, Sequential, set_random_seed
from fastlstm.utils import to_categorical
from test_nn import assert_gradients_match_finite_differences  # tests/ is on the path


def issue_model():
    """The model of issue 21: a tanh Dense used twice between an LSTM and the softmax."""
    set_random_seed(1)
    shared = Dense(4, activation="tanh")
    return Sequential([LSTM(4, input_shape=(3, 2)), shared, shared, Dense(5, activation="softmax")], dtype="float64")


def shared_lstm_model():
    set_random_seed(2)
    shared = LSTM(3, return_sequences=True)
    return Sequential([LSTM(3, return_sequences=True, input_shape=(4, 2)), shared, shared,
                       Dense(3, activation="softmax")], dtype="float64")


def shared_first_and_last_model():
    """The softmax Dense first on [batch, time, 2], then, after an LSTM, on [batch, 2]."""
    set_random_seed(3)
    shared = Dense(2, activation="softmax", input_shape=(4, 2))
    return Sequential([shared, LSTM(2), shared], dtype="float64")


def test_a_shared_layer_is_counted_once_as_keras_counts_it():
    """Keras 3.15.1 gives this model 157 parameters in 7 arrays; its summary lists the shared
    layer on two rows, with its parameters on each, and counts them once in the total."""
    model = issue_model()
    lstm, shared, _, dense = model.layers
    assert model.count_params() == 157
    assert [w.shape for w in model.get_weights()] == [(2, 16), (4, 16), (16,), (4, 4), (4,), (4, 5), (5,)]
    lines = []
    model.summary(print_fn=lines.append)
    assert sum(f"{shared.name} (Dense)" in line and "20" in line for line in lines) == 2
    assert "Total params: 157 (1.23 KB)" in lines


def test_weights_set_on_a_shared_layer_are_used_at_each_of_its_uses():
    model = issue_model()
    x = np.random.default_rng(0).standard_normal((6, 3, 2))
    weights = model.get_weights()
    weights[3] = 2 * weights[3]
    model.set_weights(weights)
    h = lstm_forward(x, *weights[:3]).outputs
    for _ in range(2):
        h = np.tanh(h @ weights[3] + weights[4])
    z = h @ weights[5] + weights[6]
    np.testing.assert_allclose(model.predict(x), np.exp(z) / np.exp(z).sum(axis=1, keepdims=True), rtol=1e-12)


@pytest.mark.parametrize("make_model", [issue_model, shared_lstm_model, shared_first_and_last_model])
def test_a_shared_layer_gets_the_sum_of_its_gradients(make_model):
    """Every gradient the model hands to the optimizer against central differences, in float64."""
    model = make_model()
    model.compile()
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, *model.input_shape[1:]))
    shape = model.predict(x).shape
    y = to_categorical(rng.integers(0, shape[-1], shape[:-1]), shape[-1])
    assert_gradients_match_finite_differences(model, x, y)


def test_a_shared_layer_keeps_its_output_shape_at_each_use():
    model = shared_first_and_last_model()
    assert model.output_shape == (None, 2)
    lines = []
    model.summary(print_fn=lines.append)
    shared = model.layers[0].name
    first, second = [line for line in lines if f"{shared} (Dense)" in line]
    assert "(None, 4, 2)" in first and "(None, 2)" in second
    model.compile()
    x = np.random.default_rng(0).random((5, 4, 2))
    assert model.predict(x).shape == (5, 2)
    history = model.fit(x, to_categorical([0, 1, 1, 0, 1], 2), epochs=2, verbose=0)
    assert np.isfinite(history.history["loss"]).all()


def test_a_shared_layer_given_another_feature_count_is_refused():
    shared = Dense(4, activation="tanh")
    with pytest.raises(ValueError, match=rf"{shared.name!r} is used more than once.*built for 3 input features "
                                         r"\(its kernel is \(3, 4\)\).*input shape \(None, 4\)"):
        Sequential([Dense(3, input_shape=(5,)), shared, shared])
    model = Sequential([Dense(3, input_shape=(5,)), shared])
    with pytest.raises(ValueError, match="is used more than once"):
        model.add(shared)
    assert model.layers == [model.layers[0], shared] and model.output_shape == (None, 4)
