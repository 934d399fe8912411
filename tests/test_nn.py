"""fastlstm.nn and fastlstm.utils on their own: shapes, summary, statefulness, data helpers,
seeding, argument errors, gradients and the Adam step. Parity with Keras is in
test_nn_keras_parity.py."""
import numpy as np
import pytest

import fastlstm.nn.layers
import fastlstm.nn.model
from fastlstm import lstm_forward
from fastlstm.nn import LSTM, Adam, Dense, RepeatVector, Sequential, TimeDistributed, set_random_seed
from fastlstm.utils import pad_sequences, to_categorical
from support.lstm_testing import CPU_BACKENDS  # tests/ is on the path


def alphabet(window=1):
    """The tutorial's data: windows of letters A..Z as integers / 26, ``[samples, window, 1]``,
    and the one-hot next letter, ``[samples, 26]``."""
    codes = np.arange(26)
    n = 26 - window
    x = np.stack([codes[i:i + window] for i in range(n)]).reshape(n, window, 1) / 26
    return x.astype(np.float32), to_categorical(codes[window:], 26).astype(np.float32)


def alphabet_sequences(window=3):
    """Windows of letters as in :func:`alphabet`, ``[samples, window, 1]``, and the one-hot
    ``window`` letters that follow (ABC -> DEF), ``[samples, window, 26]``."""
    codes = np.arange(26)
    n = 26 - 2 * window + 1
    x = np.stack([codes[i:i + window] for i in range(n)]).reshape(n, window, 1) / 26
    y = np.stack([codes[i + window:i + 2 * window] for i in range(n)])
    return x.astype(np.float32), to_categorical(y, 26).astype(np.float32)


def sequence_model(architecture, units=32, classes=26, features=1, dtype="float32", seed=0, backend="auto"):
    """The issue's models on input ``[batch, 3, features]``, compiled: 'a', an LSTM returning
    sequences under a TimeDistributed softmax Dense; 'b', an LSTM's last output repeated 3 times
    by a RepeatVector into a second LSTM, then the same TimeDistributed Dense."""
    set_random_seed(seed)
    first = LSTM(units, return_sequences=architecture == "a", input_shape=(3, features), backend=backend)
    middle = [] if architecture == "a" else [RepeatVector(3), LSTM(units, return_sequences=True, backend=backend)]
    model = Sequential([first, *middle, TimeDistributed(Dense(classes, activation="softmax"))], dtype=dtype)
    model.compile(loss="categorical_crossentropy", optimizer="adam", metrics=["accuracy"])
    return model


def model_for(units=8, window=1, stateful=False, batch=1, dtype="float32", seed=0, **lstm):
    set_random_seed(seed)
    shape = dict(batch_input_shape=(batch, window, 1)) if stateful else dict(input_shape=(window, 1))
    model = Sequential([LSTM(units, stateful=stateful, **shape, **lstm), Dense(26, activation="softmax")], dtype=dtype)
    model.compile(loss="categorical_crossentropy", optimizer="adam", metrics=["accuracy"])
    return model


# -- shapes and summary ------------------------------------------------------------------------

def test_weights_have_keras_shapes_and_order():
    model = model_for(units=32)
    assert [w.shape for w in model.get_weights()] == [(1, 128), (32, 128), (128,), (32, 26), (26,)]
    assert all(w.dtype == np.float32 for w in model.get_weights())
    bias = model.get_weights()[2]
    np.testing.assert_array_equal(bias, np.r_[np.zeros(32), np.ones(32), np.zeros(64)])  # unit_forget_bias
    np.testing.assert_array_equal(model.get_weights()[4], np.zeros(26))
    no_bias = Sequential([LSTM(4, use_bias=False, input_shape=(3, 2)), Dense(5, activation="softmax")])
    assert [w.shape for w in no_bias.get_weights()] == [(2, 16), (4, 16), (4, 5), (5,)]


def test_initializers_follow_keras_definitions():
    model = model_for(units=32)
    kernel, recurrent, _, dense_kernel, _ = model.get_weights()
    assert np.abs(kernel).max() <= np.sqrt(6 / (1 + 128))  # glorot_uniform limit
    assert np.abs(dense_kernel).max() <= np.sqrt(6 / (32 + 26))
    np.testing.assert_allclose(recurrent @ recurrent.T, np.eye(32), atol=1e-5)  # orthogonal rows


def test_output_shapes():
    x = np.random.default_rng(0).random((6, 4, 3))
    last = Sequential([LSTM(5, input_shape=(4, 3)), Dense(2, activation="softmax")])
    assert last.predict(x).shape == (6, 2)
    assert last.layers[0].output_shape == (None, 5)
    seq = Sequential([LSTM(5, return_sequences=True, input_shape=(None, 3)), Dense(7, activation="relu"),
                      Dense(2, activation="softmax")])
    assert seq.predict(x).shape == (6, 4, 2)
    assert seq.layers[1].output_shape == (None, None, 7)
    np.testing.assert_allclose(seq.predict(x).sum(axis=-1), 1, rtol=1e-6)
    lazy = Sequential([LSTM(5), Dense(2, activation="softmax")])  # built by its first call
    assert lazy.predict(x, batch_size=4).shape == (6, 2) and lazy.input_shape == (None, 4, 3)


def test_float64_model_computes_in_float64():
    model = model_for(dtype="float64")
    x, y = alphabet()
    assert all(w.dtype == np.float64 for w in model.get_weights())
    assert model.predict(x).dtype == np.float64
    model.fit(x, y, epochs=1, verbose=0)
    assert all(w.dtype == np.float64 for w in model.get_weights())


def test_summary_lists_layers_shapes_and_params():
    lines = []
    model = Sequential([LSTM(32, input_shape=(1, 1), name="lstm_a"), Dense(26, activation="softmax", name="dense_a")],
                       name="tutorial")
    model.summary(print_fn=lines.append)
    text = "\n".join(lines)
    assert lines[0] == 'Model: "tutorial"'
    assert any("lstm_a (LSTM)" in line and "(None, 32)" in line and "4,352" in line for line in lines)
    assert any("dense_a (Dense)" in line and "(None, 26)" in line and "858" in line for line in lines)
    assert "Total params: 5,210" in text
    stateful = []
    Sequential([LSTM(50, stateful=True, batch_input_shape=(1, 1, 1))]).summary(print_fn=stateful.append)
    assert any("(1, 50)" in line and "10,400" in line for line in stateful)
    with pytest.raises(ValueError, match="not built"):
        Sequential([LSTM(3)]).summary()


def test_layer_names_are_unique():
    a, b = LSTM(2), LSTM(2)
    assert a.name != b.name and a.name.startswith("lstm") and b.name.startswith("lstm")


# -- training ----------------------------------------------------------------------------------

def test_fit_learns_the_alphabet_and_reports_epoch_averages(capsys):
    x, y = alphabet()
    model = model_for(units=32)
    history = model.fit(x, y, epochs=60, batch_size=1, verbose=0)
    assert set(history.history) == {"loss", "accuracy"} and history.epoch == list(range(60))
    assert history.history["loss"][-1] < history.history["loss"][0] - 0.5
    assert capsys.readouterr().out == ""
    loss, accuracy = model.evaluate(x, y)
    p = model.predict(x)
    np.testing.assert_allclose(loss, -np.mean(np.log(p[y == 1])), rtol=1e-5)
    assert accuracy == np.mean(p.argmax(1) == y.argmax(1))


def test_epoch_loss_is_the_sample_weighted_mean_of_batch_losses():
    x, y = alphabet()
    x, y = x[:5], y[:5]
    fitted, stepped = model_for(seed=3), model_for(seed=3)
    history = fitted.fit(x, y, batch_size=2, epochs=1, shuffle=False, verbose=0)
    batch_results = []
    for s in (slice(0, 2), slice(2, 4), slice(4, 5)):
        p = stepped.predict(x[s])  # the batch's loss is taken before the step, averaged over it
        batch_results.append(stepped.train_on_batch(x[s], y[s]))
        np.testing.assert_allclose(batch_results[-1][0], -np.mean(np.log(p[y[s] == 1])), rtol=1e-6)
    sizes = np.array([2, 2, 1])
    expected_loss = sum(n * r[0] for n, r in zip(sizes, batch_results)) / 5
    expected_accuracy = sum(n * r[1] for n, r in zip(sizes, batch_results)) / 5
    np.testing.assert_allclose(history.history["loss"][0], expected_loss, rtol=1e-7)
    np.testing.assert_allclose(history.history["accuracy"][0], expected_accuracy, rtol=1e-7)
    for a, b in zip(fitted.get_weights(), stepped.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_verbose_prints_one_line_per_epoch(capsys):
    x, y = alphabet()
    model_for().fit(x, y, epochs=3, verbose=2)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and lines[2].startswith("Epoch 3/3") and "loss: " in lines[2] and "accuracy: " in lines[2]
    model_for().fit(x, y, epochs=2, verbose=1)  # stdout is not a terminal here: plain lines
    assert len(capsys.readouterr().out.splitlines()) == 2


class _Recorder:
    """A fit callback recording each epoch's index, logs and weights at its end."""

    def __init__(self, model):
        self.model, self.epochs = model, []

    def on_epoch_end(self, epoch, logs):
        self.epochs.append((epoch, dict(logs), self.model.get_weights()))


def test_callbacks_see_every_epoch_end_with_its_logs_and_weights():
    x, y = alphabet()
    model, one_at_a_time = model_for(seed=2), model_for(seed=2)
    recorder = _Recorder(model)
    np.random.seed(0)
    history = model.fit(x, y, epochs=3, batch_size=4, verbose=0, callbacks=[recorder])
    assert [epoch for epoch, _, _ in recorder.epochs] == [0, 1, 2]
    assert [logs for _, logs, _ in recorder.epochs] == \
        [{name: values[i] for name, values in history.history.items()} for i in range(3)]
    np.random.seed(0)
    for _, _, weights in recorder.epochs:  # the weights as they are after that epoch, not after fit
        one_at_a_time.fit(x, y, epochs=1, batch_size=4, verbose=0)
        for a, b in zip(weights, one_at_a_time.get_weights()):
            np.testing.assert_array_equal(a, b)


def test_a_callback_without_on_epoch_end_is_refused_before_training():
    x, y = alphabet()
    model = model_for()
    before = model.get_weights()
    with pytest.raises(TypeError, match="callbacks must be objects with an on_epoch_end.*got function"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[lambda epoch, logs: None])
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_backprop_matches_finite_differences():
    """The gradients the model hands to the optimizer, through LSTM (sequences), a tanh Dense
    and softmax + cross-entropy, against central differences in float64."""
    rng = np.random.default_rng(1)
    set_random_seed(1)
    model = Sequential([LSTM(3, return_sequences=True, input_shape=(4, 2)), Dense(5, activation="tanh"),
                        Dense(3, activation="softmax")], dtype="float64")
    model.compile()
    x = rng.standard_normal((2, 4, 2))
    y = to_categorical(rng.integers(0, 3, (2, 4)), 3)
    assert_gradients_match_finite_differences(model, x, y)


def assert_gradients_match_finite_differences(model, x, y):
    """The gradients ``_backprop`` leaves for the optimizer (every weight of a compiled float64
    model) against central differences of the loss on the batch ``x``, ``y``."""
    model._backprop(x, y)
    analytic = model._grads.copy()
    numeric = np.empty_like(analytic)
    for i in range(analytic.size):
        saved = model._weights[i]
        losses = []
        for delta in (1e-6, -1e-6):
            model._weights[i] = saved + delta
            losses.append(model.evaluate(x, y, batch_size=len(x)))
        model._weights[i] = saved
        numeric[i] = (losses[0] - losses[1]) / 2e-6
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-9)


def test_adam_matches_a_hand_written_step():
    rng = np.random.default_rng(0)
    w0 = rng.standard_normal(10).astype(np.float32)
    g1, g2 = rng.standard_normal((2, 10)).astype(np.float32)
    w = w0.copy()
    adam = Adam(learning_rate=0.01, beta_1=0.8, beta_2=0.99, epsilon=1e-3)
    adam.apply_gradients([(g1, w)])
    # Step 1 from m = v = 0: m = 0.2 g, v = 0.01 g^2, alpha = lr * sqrt(1 - 0.99) / (1 - 0.8).
    expected = w0 - (0.2 * g1) * (0.01 * np.sqrt(0.01) / 0.2) / (np.sqrt(0.01 * g1 ** 2) + 1e-3)
    np.testing.assert_allclose(w, expected, rtol=1e-6)
    adam.apply_gradients([(g2, w)])
    m = 0.8 * 0.2 * g1 + 0.2 * g2
    v = 0.99 * 0.01 * g1 ** 2 + 0.01 * g2 ** 2
    expected = expected - m * (0.01 * np.sqrt(1 - 0.99 ** 2) / (1 - 0.8 ** 2)) / (np.sqrt(v) + 1e-3)
    np.testing.assert_allclose(w, expected, rtol=1e-6)
    assert adam.iterations == 2
    with pytest.raises(ValueError, match="built for variables of shapes"):
        adam.apply_gradients([(g1[:3], w[:3])])


def test_adam_steps_with_its_hyperparameters_as_they_are_at_each_step():
    """Keras lets a learning rate change between steps; the rounded constants follow it."""
    adam = Adam(learning_rate=0.01)
    assert adam.constants(np.float32) == tuple(np.float32(v) for v in (0.01, 0.9, 0.999, 1e-7, 0.1, 1 - 0.999))
    adam.learning_rate, adam.beta_1 = 0.5, 0.25
    assert adam.constants(np.float32)[:2] == (np.float32(0.5), np.float32(0.25))
    assert adam.constants(np.float32)[4] == np.float32(0.75)
    assert type(adam.constants(np.float64)[0]) is np.float64
    w, g = np.zeros(3), np.ones(3)
    adam.apply_gradients([(g, w)])  # step 1 on g = 1: w -= lr / (1 + epsilon / sqrt(1 - beta_2)), whatever beta_1
    np.testing.assert_allclose(w, -0.5 / (1 + 1e-7 / np.sqrt(0.001)), rtol=1e-13)


# -- TimeDistributed and RepeatVector ---------------------------------------------------------

def test_time_distributed_and_repeat_vector_shapes_names_and_weights():
    x = np.random.default_rng(0).random((5, 3, 1))
    a, b = sequence_model("a"), sequence_model("b")
    assert a.predict(x).shape == b.predict(x).shape == (5, 3, 26)
    assert [layer.output_shape for layer in b.layers] == [(None, 32), (None, 3, 32), (None, 3, 32), (None, 3, 26)]
    wrapper, repeat = b.layers[3], b.layers[1]
    assert wrapper.name.startswith("time_distributed") and repeat.name.startswith("repeat_vector")
    assert TimeDistributed(Dense(2), name="per_step").name == "per_step"
    assert [w.shape for w in a.get_weights()] == [(1, 128), (32, 128), (128,), (32, 26), (26,)]
    assert [w.shape for w in b.get_weights()] == [
        (1, 128), (32, 128), (128,), (32, 128), (32, 128), (128,), (32, 26), (26,)]
    assert a.count_params() == 4352 + 858 and b.count_params() == 4352 + 8320 + 858
    assert wrapper.count_params() == 858 and repeat.count_params() == 0 and len(repeat.weights) == 0
    # The wrapper's weights and gradients are the wrapped Dense's, views into the model's buffers.
    assert wrapper.weights is wrapper.layer.weights and wrapper.grads is wrapper.layer.grads
    assert np.shares_memory(wrapper.weights[0], b._weights) and np.shares_memory(wrapper.grads[1], b._grads)
    lines = []
    b.summary(print_fn=lines.append)
    assert any(f"{wrapper.name} (TimeDistributed)" in line and "(None, 3, 26)" in line and "858" in line
               for line in lines)
    assert any(f"{repeat.name} (RepeatVector)" in line and "(None, 3, 32)" in line for line in lines)
    assert "Total params: 13,530" in "\n".join(lines)


def test_time_distributed_applies_the_layer_to_every_step():
    x = np.random.default_rng(1).random((4, 3, 1))
    model = sequence_model("a", units=5, dtype="float64")
    kernel, recurrent, bias, dense_kernel, dense_bias = model.get_weights()
    z = lstm_forward(x, kernel, recurrent, bias, return_sequences=True).outputs @ dense_kernel + dense_bias
    np.testing.assert_allclose(model.predict(x), np.exp(z) / np.exp(z).sum(axis=-1, keepdims=True), rtol=1e-12)
    # A wrapped layer that adds an axis: every step of [batch, time, features] gets its own.
    repeated = Sequential([LSTM(2, return_sequences=True, input_shape=(3, 1)), TimeDistributed(RepeatVector(4))])
    assert repeated.output_shape == (None, 3, 4, 2)
    out = repeated.predict(x)
    np.testing.assert_array_equal(out, np.repeat(out[:, :, :1], 4, axis=2))
    assert not np.array_equal(out[:, 0], out[:, 1])


def test_repeat_vector_repeats_forward_and_sums_backward():
    repeat = RepeatVector(3)
    assert repeat.build((None, 2), np.float64) == (None, 3, 2)
    x = np.arange(4.0).reshape(2, 2)
    y, tape = repeat.forward(x)
    np.testing.assert_array_equal(y, [[[0, 1]] * 3, [[2, 3]] * 3])
    dy = np.arange(12.0).reshape(2, 3, 2)
    np.testing.assert_array_equal(repeat.backward(tape, dy), [[6, 9], [24, 27]])


def test_time_distributed_and_repeat_vector_refuse_bad_arguments_and_inputs():
    for layer, got in [("dense", "str"), (LSTM(3), "LSTM"), (TimeDistributed(Dense(2)), "TimeDistributed")]:
        with pytest.raises(ValueError, match=rf"layer must be .* takes \[batch, features\].*got {got}$"):
            TimeDistributed(layer)
    with pytest.raises(ValueError, match=r"expects input \[batch, time, features\] \(3-D\), got shape \(None, 4\)"):
        Sequential([LSTM(4, input_shape=(3, 1)), TimeDistributed(Dense(2))])
    for n in (0, -2, 2.0, True, None):
        with pytest.raises(ValueError, match=rf"n must be a positive integer, got {n!r}"):
            RepeatVector(n)
    with pytest.raises(ValueError, match=r"expects input \[batch, features\] \(2-D\), got shape \(None, 3, 4\)"):
        Sequential([LSTM(4, return_sequences=True, input_shape=(3, 1)), RepeatVector(2)])
    with pytest.raises(ValueError, match=r"TimeDistributed\(Dense\(\.\.\., activation='softmax'\)\)"):
        Sequential([LSTM(4, return_sequences=True, input_shape=(3, 1)), TimeDistributed(Dense(2))]).compile()


@pytest.mark.parametrize("architecture", ["a", "b"])
def test_sequence_models_backprop_matches_finite_differences(architecture):
    """Both of the issue's models, small: the TimeDistributed softmax Dense fed from an LSTM's
    sequence ('a'), and from an LSTM over a RepeatVector of another LSTM's last output ('b')."""
    rng = np.random.default_rng(2)
    model = sequence_model(architecture, units=3, classes=4, features=2, dtype="float64", seed=2)
    model.compile()  # no metrics: evaluate gives the loss alone
    x = rng.standard_normal((2, 3, 2))
    y = to_categorical(rng.integers(0, 4, (2, 3)), 4)
    assert_gradients_match_finite_differences(model, x, y)


def test_a_dense_used_as_itself_and_time_distributed_shares_its_weights():
    set_random_seed(3)
    shared = Dense(3, activation="tanh")
    model = Sequential([LSTM(3, return_sequences=True, input_shape=(3, 2)), shared, TimeDistributed(shared),
                        TimeDistributed(Dense(4, activation="softmax"))], dtype="float64")
    model.compile()
    assert model.count_params() == 4 * 3 * (2 + 3 + 1) + 12 + 16
    assert [w.shape for w in model.get_weights()] == [(2, 12), (3, 12), (12,), (3, 3), (3,), (3, 4), (4,)]
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 2))
    assert_gradients_match_finite_differences(model, x, to_categorical(rng.integers(0, 4, (2, 3)), 4))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_sequence_models_train_on_every_cpu_backend_as_numpy_does_a_layer_at_a_time(backend, monkeypatch):
    """Model (a), an LSTM's sequence under a TimeDistributed softmax Dense, takes numba_cpu's fused
    pass (one call per epoch), numpy's a layer at a time; model (b), the encoder-decoder, trains a
    layer at a time on both. Each backend's losses and weights as the numpy one's."""
    passes = []

    def counted(*args, **kwargs):
        try:
            result = lstm_train_epoch(*args, **kwargs)
        except NotImplementedError:
            passes.append("none")
            raise
        passes.append("fused")
        return result

    lstm_train_epoch = fastlstm.nn.model.lstm_train_epoch
    monkeypatch.setattr(fastlstm.nn.model, "lstm_train_epoch", counted)
    x, y = alphabet_sequences()
    for architecture, fused in (("a", backend == "numba_cpu"), ("b", False)):
        model, reference = sequence_model(architecture, backend=backend), sequence_model(architecture, backend="numpy")
        assert model._fusable() == (architecture == "a")
        passes.clear()
        losses = model.fit(x, y, epochs=5, batch_size=4, shuffle=False, verbose=0).history["loss"]
        assert passes == (["fused"] * 5 if fused else ["none"] * 5 if architecture == "a" else [])
        expected = reference.fit(x, y, epochs=5, batch_size=4, shuffle=False, verbose=0).history["loss"]
        assert losses[-1] < losses[0]
        np.testing.assert_allclose(losses, expected, rtol=1e-5)
        for ours, theirs in zip(model.get_weights(), reference.get_weights()):
            assert np.abs(ours - theirs).max() <= 1e-5 * np.abs(theirs).max()


def test_predict_and_evaluate_keep_no_cache_and_training_a_layer_at_a_time_does(monkeypatch):
    """Only a training forward keeps what the backward reads (lstm_forward(keep_cache=False)
    otherwise); the encoder-decoder trains a layer at a time, so both LSTMs' forwards are seen."""
    kept = []

    def recording(*args, keep_cache=True, **kwargs):
        kept.append(keep_cache)
        return lstm_forward(*args, keep_cache=keep_cache, **kwargs)

    monkeypatch.setattr(fastlstm.nn.layers, "lstm_forward", recording)
    x, y = alphabet_sequences()
    model = sequence_model("b")
    model.predict(x, batch_size=8)
    model.evaluate(x, y, batch_size=8)
    assert kept and not any(kept)
    kept.clear()
    model.fit(x, y, epochs=1, batch_size=8, verbose=0)
    assert kept and all(kept)


def test_time_distributed_model_learns_most_of_the_next_three_letters():
    """ABC -> DEF over the alphabet's windows: in 200 epochs (a second on numpy) model (a) gets
    most of the 63 following letters right, from the chance of 1 in 26 (every letter takes far
    longer)."""
    x, y = alphabet_sequences()
    model = sequence_model("a", backend="numpy")
    model.compile(optimizer=Adam(learning_rate=0.01), metrics=["accuracy"])
    first = model.evaluate(x, y)[0]
    model.fit(x, y, epochs=200, batch_size=4, verbose=0)
    loss, accuracy = model.evaluate(x, y)
    assert first > 3 and loss < 1 and accuracy >= 0.75, (first, loss, accuracy)


# -- stateful ----------------------------------------------------------------------------------

def test_stateful_needs_a_fixed_batch_size():
    with pytest.raises(ValueError, match="fixed batch size"):
        Sequential([LSTM(4, stateful=True, input_shape=(1, 1)), Dense(26, activation="softmax")])
    model = Sequential([LSTM(4, stateful=True), Dense(26, activation="softmax")])
    model.compile()
    x, y = alphabet()
    with pytest.raises(ValueError, match="fixed batch size"):
        model.fit(x, y, verbose=0)
    assert Sequential([LSTM(4, stateful=True, batch_size=5, input_shape=(1, 1))]).input_shape == (5, 1, 1)


def test_stateful_refuses_another_batch_size_naming_both():
    x, y = alphabet()
    model = model_for(stateful=True, batch=1)
    with pytest.raises(ValueError, match=r"fixed batch size of 1, but got a batch of 5 samples"):
        model.fit(x, y, batch_size=5, verbose=0)
    with pytest.raises(ValueError, match=r"fixed batch size of 1, but got a batch of 2 samples"):
        model.train_on_batch(x[:2], y[:2])
    five = model_for(stateful=True, batch=5)
    with pytest.raises(ValueError, match=r"fixed batch size of 5, but got a batch of 3 samples"):
        five.predict(x[:8])  # batches of 5 and 3
    assert five.predict(x[:10]).shape == (10, 26)  # batch_size None: the fixed one
    assert model.fit(x, y, epochs=1, verbose=0).history["loss"]  # batch_size None -> 1


def test_stateful_prediction_continues_the_sequence():
    """Feeding a stateful model one step at a time equals running the whole sequence at once."""
    x, _ = alphabet()
    stateful = model_for(units=6, stateful=True)
    sequence = Sequential([LSTM(6, return_sequences=True, input_shape=(25, 1)), Dense(26, activation="softmax")])
    sequence.set_weights(stateful.get_weights())
    expected = sequence.predict(x.reshape(1, 25, 1))[0]
    np.testing.assert_allclose(stateful.predict(x), expected, rtol=1e-5, atol=1e-7)
    step_by_step = [stateful.predict(x[i:i + 1])[0] for i in range(25)]  # separate calls
    assert not np.allclose(step_by_step, expected)  # the state carried on from the first pass
    stateful.reset_states()
    step_by_step = [stateful.predict(x[i:i + 1])[0] for i in range(25)]
    np.testing.assert_allclose(step_by_step, expected, rtol=1e-5, atol=1e-7)


def test_state_carries_through_fit_and_evaluate_until_reset():
    x, y = alphabet()
    model = model_for(units=6, stateful=True)
    first = model.evaluate(x, y)
    assert model.evaluate(x, y) != first  # started from the state the first call left
    model.reset_states()
    assert model.evaluate(x, y) == first
    model.reset_states()
    assert all(np.all(s == 0) for s in model.layers[0].states)

    carried, reset_each_batch = model_for(units=6, stateful=True, seed=5), model_for(units=6, stateful=True, seed=5)
    carried.fit(x, y, epochs=1, shuffle=False, verbose=0)
    for i in range(25):
        reset_each_batch.train_on_batch(x[i:i + 1], y[i:i + 1])
        reset_each_batch.reset_states()
    assert np.any(carried.layers[0].states[0] != 0)
    assert not np.allclose(carried.get_weights()[0], reset_each_batch.get_weights()[0])  # training saw the state
    after_fit = carried.predict(x[:1])
    carried.reset_states()
    assert not np.allclose(carried.predict(x[:1]), after_fit)


def test_non_stateful_starts_every_batch_from_zero():
    x, _ = alphabet()
    model = model_for(units=6)
    np.testing.assert_array_equal(model.predict(x[:1]), model.predict(x[:1]))
    kernel, recurrent, bias = model.get_weights()[:3]
    h = lstm_forward(x[3:4], kernel, recurrent, bias).outputs
    dense_kernel, dense_bias = model.get_weights()[3:]
    z = h @ dense_kernel + dense_bias
    np.testing.assert_allclose(model.predict(x)[3], np.exp(z[0]) / np.exp(z[0]).sum(), rtol=1e-5)


# -- data helpers and seeding ------------------------------------------------------------------

def test_to_categorical():
    np.testing.assert_array_equal(to_categorical([0, 2, 1]), [[1, 0, 0], [0, 0, 1], [0, 1, 0]])
    assert to_categorical([1, 0], num_classes=4).tolist() == [[0, 1, 0, 0], [1, 0, 0, 0]]
    assert to_categorical([[1], [3]], 4).shape == (2, 4)  # a trailing axis of 1 is dropped
    assert to_categorical([[1, 2], [0, 3]]).shape == (2, 2, 4)
    assert to_categorical(np.array([2.0, 1.0])).dtype == np.float64
    with pytest.raises(ValueError, match=r"labels in \[0, 3\)"):
        to_categorical([0, 3], 3)
    with pytest.raises(ValueError, match="integer class labels"):
        to_categorical([0.5, 1])


def test_pad_sequences():
    seqs = [[1, 2, 3], [4], [5, 6, 7, 8, 9], []]
    assert pad_sequences(seqs).tolist() == [[0, 0, 1, 2, 3], [0, 0, 0, 0, 4], [5, 6, 7, 8, 9], [0, 0, 0, 0, 0]]
    assert pad_sequences(seqs).dtype == np.int32
    assert pad_sequences(seqs, maxlen=3).tolist() == [[1, 2, 3], [0, 0, 4], [7, 8, 9], [0, 0, 0]]
    assert pad_sequences(seqs, maxlen=3, padding="post", truncating="post", value=-1).tolist() == [
        [1, 2, 3], [4, -1, -1], [5, 6, 7], [-1, -1, -1]]
    padded = pad_sequences([[0.5, 0.25], [1.0]], dtype="float32", maxlen=3)
    np.testing.assert_array_equal(padded, [[0, 0.5, 0.25], [0, 0, 1.0]])
    assert pad_sequences([[[1, 2]], [[3, 4], [5, 6]]]).shape == (2, 2, 2)
    with pytest.raises(ValueError, match="padding must be 'pre' or 'post'"):
        pad_sequences(seqs, padding="middle")


def test_same_seed_same_model_and_training():
    x, y = alphabet()
    runs = []
    for _ in range(2):
        model = model_for(units=8, seed=42)
        runs.append((model.get_weights(), model.fit(x, y, epochs=2, shuffle=True, verbose=0).history["loss"]))
    for a, b in zip(runs[0][0], runs[1][0]):
        np.testing.assert_array_equal(a, b)
    assert runs[0][1] == runs[1][1]
    assert not np.array_equal(model_for(units=8, seed=43).get_weights()[0], runs[0][0][0])


# -- argument errors ---------------------------------------------------------------------------

def test_bad_data_is_refused_with_what_was_expected():
    x, y = alphabet()
    model = model_for()
    with pytest.raises(ValueError, match="same number of samples, got 25 in x and 24 in y"):
        model.fit(x, y[:24], verbose=0)
    with pytest.raises(ValueError, match=r"y must have shape \(samples, 26\).*got shape \(25, 10\)"):
        model.fit(x, y[:, :10], verbose=0)
    with pytest.raises(ValueError, match="to_categorical"):
        model.fit(x, y.argmax(1), verbose=0)
    with pytest.raises(ValueError, match=r"x must have shape \(samples, 1, 1\).*got shape \(25, 1, 3\)"):
        model.predict(np.repeat(x, 3, axis=2))
    with pytest.raises(ValueError, match=r"x must have shape .*got shape \(25, 1\)"):
        model.predict(x[:, :, 0])
    with pytest.raises(TypeError, match="x must be a numeric array"):
        model.predict([["a"]])
    with pytest.raises(ValueError, match="x contains 1 NaN"):
        model.predict(np.where(np.arange(25).reshape(25, 1, 1) == 3, np.nan, x))
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1, got 0"):
        model.fit(x, y, batch_size=0)
    with pytest.raises(ValueError, match="epochs must be an integer >= 0"):
        model.fit(x, y, epochs=1.5)


def test_misuse_of_the_model_is_refused():
    x, y = alphabet()
    model = Sequential([LSTM(4, input_shape=(1, 1)), Dense(26, activation="softmax")])
    with pytest.raises(ValueError, match=r"call compile\(\) before fit\(\)"):
        model.fit(x, y)
    with pytest.raises(ValueError, match="Dense.*softmax"):
        Sequential([LSTM(4, input_shape=(1, 1)), Dense(26)]).compile()
    with pytest.raises(ValueError, match="optimizer must be 'adam'"):
        model.compile(optimizer="sgd")
    with pytest.raises(ValueError, match="metrics must be"):
        model.compile(metrics=["mse"])
    with pytest.raises(ValueError, match="loss must be one of"):
        model.compile(loss="mse")
    with pytest.raises(ValueError, match=r"weights must be a list of 5 arrays .*got 4"):
        model.set_weights(model.get_weights()[:4])
    with pytest.raises(ValueError, match=r"weights\[1\] \(lstm.*recurrent_kernel\) must have shape \(4, 16\)"):
        model.set_weights([w if i != 1 else w[:2] for i, w in enumerate(model.get_weights())])
    with pytest.raises(ValueError, match="only the first layer may declare"):
        model.add(Dense(3, input_shape=(4,)))
    with pytest.raises(TypeError, match=r"must be a fastlstm.nn layer \(LSTM, Dense, TimeDistributed, RepeatVector\)"):
        model.add("dense")
    model.compile()
    with pytest.raises(ValueError, match=r"before compile\(\)"):
        model.add(Dense(3))


def test_bad_layer_arguments_are_refused():
    with pytest.raises(ValueError, match="units must be a positive integer, got 0"):
        LSTM(0)
    with pytest.raises(ValueError, match="recurrent_activation must be one of"):
        LSTM(4, recurrent_activation="swish")
    with pytest.raises(ValueError, match="activation must be one of"):
        Dense(4, activation="gelu")
    with pytest.raises(ValueError, match="kernel_initializer must be one of"):
        LSTM(4, kernel_initializer="he_normal")
    with pytest.raises(ValueError, match="either batch_input_shape"):
        LSTM(4, input_shape=(1, 1), batch_input_shape=(1, 1, 1))
    with pytest.raises(ValueError, match="input_shape must be a tuple of positive integers"):
        LSTM(4, input_shape=(1, -1))
    with pytest.raises(TypeError, match="dtype must be 'float32' or 'float64'"):
        Sequential(dtype="int32")
    with pytest.raises(ValueError, match="beta_1 must be a number in"):
        Adam(beta_1=1.0)
