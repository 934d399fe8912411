"""The alphabet experiments of the Keras tutorial on stateful LSTMs, on fastlstm or on Keras 3.

Each experiment is data plus a training schedule; :func:`run` trains one on a framework
(:class:`FastLSTM`, or :class:`Keras` for the side-by-side comparison) for one seed and returns a
:class:`Result` with the accuracy of ``evaluate`` on the training data, the loss, the training
time and the tutorial's demonstrations. :func:`run_many` runs many of them on an executor, e.g. a
:class:`fastlstm.workers.WorkerPool`.
"""
import dataclasses
import itertools
import math
import multiprocessing
import os
import string
import time
from types import SimpleNamespace
from typing import Callable, NamedTuple

import numpy as np

from fastlstm import nn
from fastlstm.backends import resolve
from fastlstm.utils import pad_sequences, to_categorical
from fastlstm.workers import wait_for

ALPHABET = string.ascii_uppercase
DEFAULT_SEED = 7


class Data(NamedTuple):
    patterns: list  # the input letters of each sample, e.g. "ABC"
    x: np.ndarray  # [samples, time, features], letter codes / 26
    y: np.ndarray  # [samples, 26], one-hot next letter
    encode: Callable  # list of patterns -> x rows [n, time, features]


def _windows(length):
    return [ALPHABET[i:i + length] for i in range(len(ALPHABET) - length)]


def _codes(pattern):
    return [ALPHABET.index(letter) for letter in pattern]


def _data(patterns, encode):
    targets = [ALPHABET[ALPHABET.index(p[-1]) + 1] for p in patterns]
    y = to_categorical(_codes(targets), num_classes=len(ALPHABET)).astype(np.float32)
    return Data(patterns, encode(patterns), y, encode)


def _as_time_steps(patterns):
    codes = np.array([_codes(p) for p in patterns], np.float32)
    return (codes / len(ALPHABET))[:, :, None]


def _as_features(patterns):
    codes = np.array([_codes(p) for p in patterns], np.float32)
    return (codes / len(ALPHABET))[:, None, :]


def _left_padded(maxlen):
    def encode(patterns):
        padded = pad_sequences([_codes(p) for p in patterns], maxlen=maxlen, dtype="float32")
        return (padded / len(ALPHABET))[:, :, None]
    return encode


def _random_runs(rng, count=1000, max_len=5):
    """The tutorial's variable-length data: runs of 1..5 consecutive letters."""
    patterns = []
    for _ in range(count):
        start = rng.randint(len(ALPHABET) - 2)
        end = rng.randint(start, min(start + max_len, len(ALPHABET) - 1))
        patterns.append(ALPHABET[start:end + 1])
    return patterns


@dataclasses.dataclass(frozen=True)
class Experiment:
    number: int
    name: str
    make_data: Callable  # numpy RandomState -> Data
    units: int
    epochs: int
    batch_size: int
    shuffle: bool
    published: float  # the tutorial's accuracy in percent; NaN where it ran none
    stateful: bool = False


EXPERIMENTS = {
    e.number: e
    for e in (
        Experiment(1, "one char -> one char", lambda rng: _data(_windows(1), _as_time_steps), 32, 500, 1, True, 84.00),
        Experiment(2, "3-char window as 3 features", lambda rng: _data(_windows(3), _as_features), 32, 500, 1, True, 86.96),
        Experiment(3, "3-char window as 3 time steps", lambda rng: _data(_windows(3), _as_time_steps), 32, 500, 1, True, 100.00),
        Experiment(4, "all 25 pairs in one batch", lambda rng: _data(_windows(1), _as_time_steps), 16, 5000, 25, False, 100.00),
        Experiment(5, "stateful, one char -> one char", lambda rng: _data(_windows(1), _as_time_steps), 50, 300, 1, False, 100.00, stateful=True),
        Experiment(6, "variable length -> one char", lambda rng: _data(_random_runs(rng), _left_padded(5)), 32, 500, 1, True, 98.90),
        Experiment(7, "stateless: every prefix, padded to 25", lambda rng: _data([ALPHABET[:n] for n in range(1, 26)], _left_padded(25)), 32, 500, 1, True, float("nan")),
    )
}


@dataclasses.dataclass
class Result:
    experiment: int
    name: str
    framework: str  # "fastlstm" or "keras"
    backend: str
    seed: int
    epochs: int
    published: float
    accuracy: float  # percent, of evaluate on the training data
    loss: float
    seconds: float  # training time
    # Each demonstration is a list of (input letters, predicted letter, expected letter).
    demonstrations: dict = dataclasses.field(default_factory=dict)
    # Whether the loss turned NaN or infinite: the run's accuracy then measures nothing learnt.
    diverged: bool = dataclasses.field(init=False)

    def __post_init__(self):
        self.diverged = not math.isfinite(self.loss)

    @property
    def reaches_published(self):
        return round(self.accuracy, 2) >= self.published


class FastLSTM:
    """Builds and trains the experiments' models with fastlstm.nn on a fastlstm backend."""

    name = "fastlstm"

    def __init__(self, backend="auto"):
        self.backend = resolve(backend)

    def model(self, experiment, input_shape, seed, recurrent_activation, epsilon):
        nn.set_random_seed(seed)
        shape = dict(batch_input_shape=(experiment.batch_size, *input_shape)) if experiment.stateful \
            else dict(input_shape=input_shape)
        model = nn.Sequential([
            nn.LSTM(experiment.units, recurrent_activation=recurrent_activation, stateful=experiment.stateful,
                    backend=self.backend, **shape),
            nn.Dense(len(ALPHABET), activation="softmax"),
        ])
        model.compile(loss="categorical_crossentropy", optimizer=nn.Adam(epsilon=epsilon), metrics=["accuracy"])
        return model

    def fit(self, model, data, experiment, epochs, on_epoch_end):
        model.fit(data.x, data.y, epochs=epochs, batch_size=experiment.batch_size, shuffle=experiment.shuffle,
                  verbose=0, callbacks=[SimpleNamespace(on_epoch_end=lambda epoch, logs: on_epoch_end(epoch))])

    def reset_states(self, model):
        model.reset_states()


class Keras:
    """The same models under Keras 3 (imported on first use), for the side-by-side comparison."""

    name = "keras"

    def __init__(self):
        os.environ.setdefault("KERAS_BACKEND", "tensorflow")
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        import keras

        self.keras = keras
        self.backend = keras.backend.backend()

    def model(self, experiment, input_shape, seed, recurrent_activation, epsilon):
        keras = self.keras
        keras.utils.set_random_seed(seed)
        if recurrent_activation == "hard_sigmoid_keras2":
            recurrent_activation = lambda z: keras.ops.clip(0.2 * z + 0.5, 0.0, 1.0)  # noqa: E731
        inputs = keras.Input(batch_shape=(experiment.batch_size, *input_shape)) if experiment.stateful \
            else keras.Input(shape=input_shape)
        model = keras.Sequential([
            inputs,
            keras.layers.LSTM(experiment.units, recurrent_activation=recurrent_activation, stateful=experiment.stateful),
            keras.layers.Dense(len(ALPHABET), activation="softmax"),
        ])
        model.compile(loss="categorical_crossentropy", optimizer=keras.optimizers.Adam(epsilon=epsilon),
                      metrics=["accuracy"])
        return model

    def fit(self, model, data, experiment, epochs, on_epoch_end):
        # One fit call for all epochs: Keras's per-call overhead would dominate otherwise.
        callback = self.keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: on_epoch_end(epoch))
        model.fit(data.x, data.y, epochs=epochs, batch_size=experiment.batch_size, shuffle=experiment.shuffle,
                  verbose=0, callbacks=[callback])

    def reset_states(self, model):
        for layer in model.layers:
            if getattr(layer, "stateful", False):
                layer.reset_states()


def run(number, framework, seed=DEFAULT_SEED, recurrent_activation="sigmoid", epsilon=1e-7, epochs=None,
        progress=None):
    """Train experiment ``number`` on ``framework`` and return its Result.

    ``epochs`` shortens (or lengthens) the tutorial's schedule; ``progress(epoch, epochs)`` is
    called after every epoch.
    """
    experiment, data, model, rng = prepare(number, framework, seed, recurrent_activation, epsilon)
    epochs = experiment.epochs if epochs is None else epochs
    start = time.perf_counter()
    train(experiment, framework, model, data, epochs, progress)
    seconds = time.perf_counter() - start

    loss, accuracy = model.evaluate(data.x, data.y, batch_size=experiment.batch_size, verbose=0)
    framework.reset_states(model)
    result = Result(number, experiment.name, framework.name, framework.backend, seed, epochs,
                    experiment.published, 100 * float(accuracy), float(loss), seconds)
    result.demonstrations = _demonstrations(experiment, framework, model, data, rng)
    return result


class Run(NamedTuple):
    """The arguments of one :func:`run`."""
    number: int
    framework: object  # FastLSTM or Keras
    seed: int = DEFAULT_SEED
    recurrent_activation: str = "sigmoid"
    epsilon: float = 1e-7
    epochs: int | None = None  # None: the experiment's own schedule


def run_many(runs, executor):
    """The Results of ``runs`` (Runs), in their order, run by ``executor``: any
    ``concurrent.futures.Executor``, e.g. a :class:`fastlstm.workers.WorkerPool` whose workers
    :func:`warm_up` first, so that no run's time includes loading the kernels.

    Every run is submitted here, at once, so that the workers stay busy from one experiment to the
    next; the returned iterator gives the Results of an experiment's consecutive runs once all of
    them are done, with 'experiment N: k/n runs done' on a terminal's progress line meanwhile. A
    run's exception is raised as soon as it comes back, with the worker's traceback as its cause.
    """
    runs = list(runs)
    futures = [executor.submit(run, *arguments) for arguments in runs]
    experiments = itertools.groupby(zip(runs, futures), key=lambda pair: pair[0].number)
    return itertools.chain.from_iterable(wait_for([future for _, future in pairs], f"experiment {number}")
                                         for number, pairs in experiments)


def warm_up(numbers, framework, recurrent_activation="sigmoid", epsilon=1e-7):
    """Runs experiments ``numbers`` for one epoch each, untimed, so that the backend compiles its
    kernels, or loads them from its on-disk cache, for every path their runs take (training,
    evaluate and predict, stateful or not) before a run is timed. Returns the seconds it took.
    numba_cpu compiles its two kernels, training's and the forward pass's, in two processes at once
    first (see kernels/cpu_compile.py), but for a worker process, which loads what its parent
    compiled from the cache."""
    start = time.perf_counter()
    if getattr(framework, "backend", None) == "numba_cpu" and multiprocessing.parent_process() is None:
        from fastlstm.kernels import cpu_compile  # imports Numba: only for this backend

        cpu_compile.compile_in_two_processes(np.float32)  # the models' dtype
    for number in numbers:
        run(number, framework, DEFAULT_SEED, recurrent_activation, epsilon, epochs=1)
    return time.perf_counter() - start


def prepare(number, framework, seed=DEFAULT_SEED, recurrent_activation="sigmoid", epsilon=1e-7):
    """(experiment, data, compiled model, random state) of experiment ``number`` on ``framework``,
    before training. The random state is the tutorial's ``numpy.random.seed(seed)`` stream after the
    data was drawn from it; the demonstrations draw from it next."""
    experiment = EXPERIMENTS[number]
    rng = np.random.RandomState(seed)
    data = experiment.make_data(rng)
    return experiment, data, framework.model(experiment, data.x.shape[1:], seed, recurrent_activation, epsilon), rng


def train(experiment, framework, model, data, epochs, progress=None):
    """Trains ``model`` for ``epochs`` of ``experiment``'s schedule; ``progress(epoch, epochs)``
    after each."""
    def on_epoch_end(epoch):
        if progress:
            progress(epoch + 1, epochs)

    if experiment.stateful:
        # The tutorial's loop: one epoch at a time over the ordered pairs, state reset after each.
        for epoch in range(epochs):
            framework.fit(model, data, experiment, 1, lambda _: on_epoch_end(epoch))
            framework.reset_states(model)
    else:
        framework.fit(model, data, experiment, epochs, on_epoch_end)


def _predict(model, data, patterns, batch_size):
    probabilities = model.predict(data.encode(patterns), batch_size=batch_size, verbose=0)
    return [ALPHABET[i] for i in np.argmax(probabilities, axis=-1)]


def _next(letter):
    return ALPHABET[ALPHABET.index(letter) + 1] if letter != ALPHABET[-1] else "?"


def _demonstrations(experiment, framework, model, data, rng):
    demos = {}
    if experiment.stateful:
        # Predictions on the training pairs in order, the state carried from one to the next.
        predicted = _predict(model, data, data.patterns, experiment.batch_size)
        demos["training patterns"] = [(p, q, _next(p[-1])) for p, q in zip(data.patterns, predicted)]
        framework.reset_states(model)
        for seed_letter, steps in (("A", len(ALPHABET) - 1), ("K", 5)):
            letter, chain = seed_letter, []
            for _ in range(steps):  # each prediction is fed back as the next input, state carried
                predicted = _predict(model, data, [letter], experiment.batch_size)[0]
                chain.append((letter, predicted, _next(letter)))
                letter = predicted
            framework.reset_states(model)
            demos[f"generated from {seed_letter}"] = chain
        return demos
    predicted = _predict(model, data, data.patterns, None)
    demos["training patterns"] = [(p, q, _next(p[-1])) for p, q in zip(data.patterns, predicted)]
    if experiment.number in (4, 6):  # the tutorial also predicts 20 randomly drawn patterns
        picks = [data.patterns[rng.randint(len(data.patterns))] for _ in range(20)]
        demos["20 random patterns"] = [(p, q, _next(p[-1])) for p, q in zip(picks, _predict(model, data, picks, None))]
    return demos


def summarize(results):
    """Mean, min and max accuracy, how many runs reach the published accuracy and how many
    diverged, of the results of one experiment on one framework; the accuracies are those of
    every run, diverged ones included."""
    accuracies = np.array([r.accuracy for r in results])
    return dict(
        runs=len(results),
        mean=float(accuracies.mean()),
        min=float(accuracies.min()),
        max=float(accuracies.max()),
        reaching_published=sum(r.reaches_published for r in results),
        diverged=sum(r.diverged for r in results),
        seconds=float(np.mean([r.seconds for r in results])),
    )
