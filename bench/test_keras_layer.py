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

Each benchmark builds both models and times them alternately, a round of Keras's own layer right
before each round of the drop-in: timed one layer after the other, this machine's drift from one
minute to the next moved their ratio by as much as they differ where their times are close.
pytest-benchmark times the drop-in's rounds; Keras's, timed alike, are recorded in ``extra_info``
(``keras_median``, ``keras_min``, in seconds). Both models take the same steps, so they must end
with the same predictions (checked).
"""
import importlib
import os
import statistics
import time

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


def record(benchmark, step, shape, **more):
    """Names the benchmark's group and records what it runs in its extra_info."""
    backend = keras.backend.backend()
    batch, time, input_dim, units = shape
    benchmark.group = f"Keras ({backend}) {step} b{batch}-t{time}-d{input_dim}-u{units}"
    benchmark.extra_info.update(
        implementation="fastlstm", baseline=False, keras_backend=backend, step=step, batch=batch, time=time,
        input_dim=input_dim, units=units,
        versions={"keras": keras.__version__, backend: importlib.import_module(backend).__version__}, **more)


def alternately(benchmark, keras_round, drop_in_round, rounds):
    """Times ``drop_in_round`` with pytest-benchmark and ``keras_round`` right before each of its
    rounds (the warm-up's too), recording Keras's median and minimum in extra_info."""
    keras_times = []

    def timed_keras_round():
        start = time.perf_counter()
        keras_round()
        keras_times.append(time.perf_counter() - start)

    benchmark.pedantic(drop_in_round, setup=timed_keras_round, rounds=rounds, warmup_rounds=1)
    if not benchmark.disabled:  # disabled (the tests' run), each layer runs once, untimed
        timed = keras_times[1:]  # the warm-up round traces or compiles
        benchmark.extra_info.update(keras_median=statistics.median(timed), keras_min=min(timed))


def check_same_predictions(case, keras_result, drop_in_result):
    error = np.abs(drop_in_result - keras_result).max() / max(1.0, np.abs(keras_result).max())
    assert error <= TOLERANCE, f"{case}: the two layers' predictions differ by {error:.2e}"


@pytest.mark.parametrize("step", ["train_on_batch", "predict_on_batch"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "b{}-t{}-d{}-u{}".format(*s))
def test_keras_model(benchmark, shape, step):
    batch, time_steps, input_dim, units = shape
    rng = np.random.default_rng(list(shape))
    x = rng.standard_normal((batch, time_steps, input_dim)).astype("float32")
    y = rng.standard_normal((batch, 1)).astype("float32")
    models = {}
    for layer, lstm_class in LAYERS.items():
        keras.utils.set_random_seed(0)  # the same initial weights for both layers
        models[layer] = keras.Sequential([keras.Input(batch_shape=x.shape), lstm_class(units), keras.layers.Dense(1)])
        models[layer].compile(optimizer="adam", loss="mse")
    record(benchmark, step, shape)
    arguments = (x, y) if step == "train_on_batch" else (x,)
    alternately(benchmark, lambda: getattr(models["keras"], step)(*arguments),
                lambda: getattr(models["fastlstm"], step)(*arguments), LARGE_ROUNDS if batch > 32 else 20)
    check_same_predictions((step, shape), *(models[layer].predict_on_batch(x) for layer in LAYERS))


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


@pytest.mark.parametrize("number", TUTORIAL_EXPERIMENTS)
def test_fit_epoch(benchmark, number):
    experiment, data, _ = experiments.setup(number)
    models = {layer: tutorial_model(lstm_class, experiment, data.x.shape[1:]) for layer, lstm_class in LAYERS.items()}
    samples, time_steps, input_dim = data.x.shape
    record(benchmark, f"fit epoch of experiment {number}", (experiment.batch_size, time_steps, input_dim,
                                                          experiment.units),
           experiment=number, samples=samples, stateful=experiment.stateful)
    note = layer_options(experiment)[1]
    if note:
        benchmark.extra_info["note"] = note

    epochs_run = dict.fromkeys(models, 0)

    def epoch(layer):
        # fit shuffles with the global random state: each layer's k-th epoch from the same seed takes
        # the samples in the same order (on PyTorch and JAX the two layers' orders differed, and so
        # did their predictions, by 1e-3)
        keras.utils.set_random_seed(experiments.DEFAULT_SEED + epochs_run[layer])
        epochs_run[layer] += 1
        models[layer].fit(data.x, data.y, epochs=1, batch_size=experiment.batch_size, shuffle=experiment.shuffle,
                          verbose=0)
        if experiment.stateful:
            models[layer].layers[0].reset_states()  # the tutorial's loop: the state starts afresh each epoch

    alternately(benchmark, lambda: epoch("keras"), lambda: epoch("fastlstm"), EPOCH_ROUNDS)
    check_same_predictions(("fit", number), *(models[layer].predict(data.x, batch_size=experiment.batch_size,
                                                                    verbose=0) for layer in LAYERS))
