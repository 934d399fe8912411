"""Keras 3 with its own LSTM against Keras 3 with fastlstm.keras.LSTM, on the Keras backend of this
process (KERAS_BACKEND, TensorFlow where unset)::

    pytest bench/test_keras_layer.py --benchmark-only
    KERAS_BACKEND=jax pytest bench/test_keras_layer.py --benchmark-only

- one training step (``train_on_batch``) and one inference (``predict_on_batch``) of the same
  model (LSTM and Dense(1), mean squared error, Adam) with the same initial weights, at three shapes;
- one ``fit`` epoch of the tutorial's experiments 1 (one char -> one char: the 25 letter pairs,
  batch 1, shuffled, 32 units) and 5 (the same pairs in order, 50 units, stateful, the state reset
  after each epoch), written in plain Keras 3 as the tutorial is, only the LSTM class differing;
  each round is the next epoch of one model.

Both layers take the same steps, so each pair of models must end with the same predictions (checked).
"""
import importlib
import os

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
keras = pytest.importorskip("keras")  # the 'test' extra installs it

from fastlstm import experiments  # noqa: E402
from fastlstm.keras import LSTM  # noqa: E402

# (batch, time, input_dim, units): the tutorial's stateful experiment, a small batch, a large one.
SHAPES = [(1, 1, 1, 50), (32, 25, 1, 32), (256, 25, 64, 128)]
LAYERS = {"keras": keras.layers.LSTM, "fastlstm": LSTM}
# max|fastlstm - keras| / max(1, max|keras|) of the final predictions: a train_on_batch benchmark
# takes up to 21 steps, a fit epoch benchmark 16 epochs of 25 steps (measured at most 1.5e-7).
TOLERANCE = 1e-5
TUTORIAL_EXPERIMENTS = (1, 5)
# Rounds of a step at the large shape, and of a fit epoch (each after one warm-up round, which
# traces or compiles): a slow moment of this shared machine moved the median of 3 or 5 by up to 40 %.
LARGE_ROUNDS, EPOCH_ROUNDS = 10, 15


@pytest.fixture(scope="module")
def predictions():
    """The first layer's final predictions per benchmark case, for the other layer to match."""
    return {}


def record(benchmark, layer, step, shape, **more):
    """Names the benchmark's group and records what it runs in its extra_info."""
    backend = keras.backend.backend()
    batch, time, input_dim, units = shape
    benchmark.group = f"Keras ({backend}) {step} b{batch}-t{time}-d{input_dim}-u{units}"
    benchmark.extra_info.update(
        implementation=layer, baseline=layer == "keras", keras_backend=backend, step=step, batch=batch, time=time,
        input_dim=input_dim, units=units,
        versions={"keras": keras.__version__, backend: importlib.import_module(backend).__version__}, **more)


def check_same_as_the_other_layer(predictions, case, result):
    reference = predictions.setdefault(case, result)
    error = np.abs(result - reference).max() / max(1.0, np.abs(reference).max())
    assert error <= TOLERANCE, f"{case}: the two layers' predictions differ by {error:.2e}"


@pytest.mark.parametrize("layer", LAYERS)
@pytest.mark.parametrize("step", ["train_on_batch", "predict_on_batch"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "b{}-t{}-d{}-u{}".format(*s))
def test_keras_model(benchmark, layer, shape, step, predictions):
    batch, time, input_dim, units = shape
    rng = np.random.default_rng(list(shape))
    x = rng.standard_normal((batch, time, input_dim)).astype("float32")
    y = rng.standard_normal((batch, 1)).astype("float32")
    keras.utils.set_random_seed(0)  # the same initial weights for both layers
    model = keras.Sequential([keras.Input(batch_shape=x.shape), LAYERS[layer](units), keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    record(benchmark, layer, step, shape)
    arguments = (x, y) if step == "train_on_batch" else (x,)
    benchmark.pedantic(getattr(model, step), args=arguments, rounds=LARGE_ROUNDS if batch > 32 else 20, warmup_rounds=1)
    check_same_as_the_other_layer(predictions, (step, shape), model.predict_on_batch(x))


def layer_options(experiment):
    """The LSTM's arguments beyond its units, the same for both layers; and why, where any is
    not the tutorial's."""
    if experiment.stateful and keras.backend.backend() == "torch":
        return dict(stateful=True, use_cudnn=False), (
            "both layers with use_cudnn=False: Keras's own fused path on PyTorch (taken on a CPU too) "
            "assigns in place the state its backward pass reads, so it cannot train a stateful model")
    return dict(stateful=experiment.stateful), None


def tutorial_model(lstm_class, experiment, input_shape):
    """The tutorial's model of ``experiment`` in plain Keras 3 but for ``lstm_class``: the LSTM and a
    softmax over the 26 letters, categorical cross-entropy, Adam, the tutorial's seed."""
    keras.utils.set_random_seed(experiments.DEFAULT_SEED)
    inputs = keras.Input(batch_shape=(experiment.batch_size, *input_shape)) if experiment.stateful \
        else keras.Input(shape=input_shape)
    model = keras.Sequential([inputs, lstm_class(experiment.units, **layer_options(experiment)[0]),
                              keras.layers.Dense(len(experiments.ALPHABET), activation="softmax")])
    model.compile(loss="categorical_crossentropy", optimizer="adam", metrics=["accuracy"])
    return model


@pytest.mark.parametrize("layer", LAYERS)
@pytest.mark.parametrize("number", TUTORIAL_EXPERIMENTS)
def test_fit_epoch(benchmark, layer, number, predictions):
    experiment, data, _ = experiments.setup(number)
    model = tutorial_model(LAYERS[layer], experiment, data.x.shape[1:])
    samples, time, input_dim = data.x.shape
    record(benchmark, layer, f"fit epoch of experiment {number}", (experiment.batch_size, time, input_dim,
                                                                 experiment.units),
           experiment=number, samples=samples, stateful=experiment.stateful)
    note = layer_options(experiment)[1]
    if note:
        benchmark.extra_info["note"] = note

    def epoch():
        model.fit(data.x, data.y, epochs=1, batch_size=experiment.batch_size, shuffle=experiment.shuffle, verbose=0)
        if experiment.stateful:
            model.layers[0].reset_states()  # the tutorial's loop: the state starts afresh each epoch

    benchmark.pedantic(epoch, rounds=EPOCH_ROUNDS, warmup_rounds=1)
    check_same_as_the_other_layer(predictions, ("fit", number),
                                  model.predict(data.x, batch_size=experiment.batch_size, verbose=0))
