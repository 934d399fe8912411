"""The alphabet experiments of the Keras tutorial on stateful LSTMs, and those its readers asked
for, on fastlstm or on Keras 3, on the alphabet or on any sequence of symbols.

Each experiment is data plus a model and a training schedule; :func:`run` trains one on a
framework (:class:`FastLSTM`, or :class:`Keras` for the side-by-side comparison) for one seed and
returns a :class:`Result` with the accuracy of ``evaluate`` on the training data, the loss, the
training time and the tutorial's demonstrations. :func:`run_many` runs many of them on an
executor, e.g. a :class:`fastlstm.workers.WorkerPool`.

A sequence other than the alphabet (``sequence=``) replaces it everywhere: its distinct symbols,
sorted, are the classes (symbol ``i`` is input ``i / len(vocabulary)``), and every sample's target
is what follows it in the sequence.
"""
import dataclasses
import functools
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
SERIES = 4  # the rows of experiments 8 and 10: series trained side by side in one stateful batch
WINDOW = 3  # the symbols in and, for experiments 9 and 11, out


class Data(NamedTuple):
    patterns: list  # the input symbols of each sample, e.g. "ABC"
    targets: list  # the symbols that follow each pattern in the sequence, e.g. "D" (or "DEF")
    x: np.ndarray  # [samples, time, features], symbol codes / vocabulary size
    y: np.ndarray  # [samples, classes] one-hot next symbol; [samples, time, classes] for several
    vocabulary: str  # the sequence's distinct symbols, sorted: symbol i is class i
    encode: Callable  # list of patterns -> x rows [n, time, features]


def vocabulary_of(sequence):
    """The distinct symbols of ``sequence``, sorted: the classes of its experiments."""
    return "".join(sorted(set(sequence)))


def _windows(sequence, length, out=1, starts=None):
    """(patterns, targets): the ``length`` symbols from each start (every one that leaves ``out``
    symbols after it, by default) and the ``out`` symbols that follow them."""
    starts = range(len(sequence) - length - out + 1) if starts is None else starts
    return [sequence[i:i + length] for i in starts], [sequence[i + length:i + length + out] for i in starts]


def _series_rows(sequence):
    """Experiment 8's windows of one symbol, batch by batch: row r of batch k is position r + k,
    so each of the SERIES rows walks its own copy of the sequence, shifted by r."""
    steps = len(sequence) - SERIES
    return _windows(sequence, 1, starts=[r + k for k in range(steps) for r in range(SERIES)])


def _random_runs(rng, sequence, count=1000, max_len=5):
    """The tutorial's variable-length data: runs of 1..5 consecutive symbols and the one after."""
    patterns, targets = [], []
    for _ in range(count):
        start = rng.randint(len(sequence) - 2)
        end = rng.randint(start, min(start + max_len, len(sequence) - 1))
        patterns.append(sequence[start:end + 1])
        targets.append(sequence[end + 1])
    return patterns, targets


def _codes(patterns, vocabulary):
    """Each pattern's symbols as their indices in ``vocabulary``."""
    return [[vocabulary.index(s) for s in p] for p in patterns]


def _as_time_steps(vocabulary):
    def encode(patterns):
        return (np.array(_codes(patterns, vocabulary), np.float32) / len(vocabulary))[:, :, None]
    return encode


def _as_features(vocabulary):
    def encode(patterns):
        return (np.array(_codes(patterns, vocabulary), np.float32) / len(vocabulary))[:, None, :]
    return encode


def _left_padded(maxlen):
    def padded(vocabulary):
        def encode(patterns):
            codes = pad_sequences(_codes(patterns, vocabulary), maxlen=maxlen, dtype="float32")
            return (codes / len(vocabulary))[:, :, None]
        return encode
    return padded


def _data(sequence, samples, encoding, several=False):
    """Data of ``samples`` (patterns, targets) of ``sequence``, inputs encoded by ``encoding``
    (vocabulary -> encode); ``several`` targets give y ``[samples, time, classes]``."""
    vocabulary = vocabulary_of(sequence)
    patterns, targets = samples
    labels = np.array(_codes(targets, vocabulary))
    y = to_categorical(labels if several else labels[:, 0], num_classes=len(vocabulary)).astype(np.float32)
    encode = encoding(vocabulary)
    return Data(patterns, targets, encode(patterns), y, vocabulary, encode)


@dataclasses.dataclass(frozen=True)
class Experiment:
    number: int
    name: str
    make_data: Callable  # (numpy RandomState, sequence) -> Data
    min_length: int  # the shortest sequence it takes: every window and the symbols after it
    units: int
    epochs: int
    batch_size: int | None  # None: every sample in one batch
    shuffle: bool
    published: float  # the tutorial's accuracy in percent; NaN where it ran none
    stateful: bool = False
    # "last": LSTM -> Dense; "sequence": LSTM(return_sequences) -> TimeDistributed(Dense);
    # "encoder-decoder": LSTM -> RepeatVector -> LSTM(return_sequences) -> TimeDistributed(Dense).
    model: str = "last"
    variants: tuple = ()  # experiments shown beside this one: the same question, one thing changed


# Each experiment's data, from (numpy RandomState, sequence).
def _pairs(rng, sequence):
    return _data(sequence, _windows(sequence, 1), _as_time_steps)


def _windows_as(encoding):
    return lambda rng, sequence: _data(sequence, _windows(sequence, WINDOW), encoding)


def _runs(rng, sequence):
    return _data(sequence, _random_runs(rng, sequence), _left_padded(5))


def _every_prefix(rng, sequence):
    """Every prefix of the sequence and the symbol after it."""
    lengths = range(1, len(sequence))
    return _data(sequence, ([sequence[:n] for n in lengths], [sequence[n] for n in lengths]),
                 _left_padded(len(sequence) - 1))


def _series(rng, sequence):
    return _data(sequence, _series_rows(sequence), _as_time_steps)


def _three_out(rng, sequence):
    return _data(sequence, _windows(sequence, WINDOW, WINDOW), _as_time_steps, several=True)


EXPERIMENTS = {
    e.number: e
    for e in (
        Experiment(1, "one char -> one char", _pairs, 2, 32, 500, 1, True, 84.00),
        Experiment(2, "3-char window as 3 features", _windows_as(_as_features), WINDOW + 1, 32, 500, 1, True, 86.96),
        Experiment(3, "3-char window as 3 time steps", _windows_as(_as_time_steps), WINDOW + 1, 32, 500, 1, True,
                   100.00),
        Experiment(4, "all pairs in one batch", _pairs, 2, 16, 5000, None, False, 100.00),
        Experiment(5, "stateful, one char -> one char", _pairs, 2, 50, 300, 1, False, 100.00, stateful=True),
        Experiment(6, "variable length -> one char", _runs, 3, 32, 500, 1, True, 98.90),
        Experiment(7, "stateless: every prefix, padded", _every_prefix, 2, 32, 500, 1, True, float("nan")),
        Experiment(8, f"stateful, {SERIES} series side by side", _series, SERIES + 1, 50, 1000, SERIES, False,
                   float("nan"), stateful=True, variants=(10,)),
        Experiment(9, "3 chars -> next 3 chars", _three_out, 2 * WINDOW, 32, 1000, 1, True, float("nan"),
                   model="sequence", variants=(11,)),
        Experiment(10, "as 8, rows shuffled between batches", _series, SERIES + 1, 50, 1000, SERIES, True,
                   float("nan"), stateful=True),
        Experiment(11, "as 9, encoder-decoder", _three_out, 2 * WINDOW, 32, 1000, 1, True, float("nan"),
                   model="encoder-decoder"),
    )
}


def with_variants(numbers):
    """``numbers`` in their order, each followed by its variants (once each)."""
    return list(dict.fromkeys(n for number in numbers for n in (number, *EXPERIMENTS[number].variants)))


def check_sequence(sequence, numbers):
    """Raises ValueError, in one line, unless ``sequence`` can feed experiments ``numbers``."""
    if not isinstance(sequence, str) or len(set(sequence)) < 2:
        raise ValueError(f"sequence must be a string of at least 2 distinct symbols, got {sequence!r}")
    for number in numbers:
        experiment = EXPERIMENTS[number]
        if len(sequence) < experiment.min_length:
            raise ValueError(
                f"sequence {sequence!r} has {len(sequence)} symbols, but experiment {number} "
                f"({experiment.name}) needs at least {experiment.min_length}"
            )


def setup(number, seed=DEFAULT_SEED, sequence=ALPHABET):
    """(experiment, data, random state) of experiment ``number`` on ``sequence``: the experiment with
    its batch size made concrete (and no published accuracy off the alphabet), and the random state
    the tutorial's ``numpy.random.seed(seed)`` stream after the data was drawn from it."""
    check_sequence(sequence, [number])
    experiment = EXPERIMENTS[number]
    rng = np.random.RandomState(seed)
    data = experiment.make_data(rng, sequence)
    experiment = dataclasses.replace(
        experiment, batch_size=experiment.batch_size or len(data.x),
        published=experiment.published if sequence == ALPHABET else float("nan"))
    return experiment, data, rng


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
    # Each demonstration is a list of (input symbols, predicted symbols, expected symbols).
    demonstrations: dict = dataclasses.field(default_factory=dict)
    sequence: str = ALPHABET
    # Whether the loss turned NaN or infinite: the run's accuracy then measures nothing learnt.
    diverged: bool = dataclasses.field(init=False)

    def __post_init__(self):
        self.diverged = not math.isfinite(self.loss)

    @property
    def reaches_published(self):
        return round(self.accuracy, 2) >= self.published


def _stack(layers, experiment, data, recurrent_activation, **lstm_options):
    """The layers of ``experiment``'s model from ``layers``, fastlstm.nn or keras.layers (the same
    names), for ``data``; ``lstm_options`` go to every LSTM."""
    def lstm(**options):
        return layers.LSTM(experiment.units, recurrent_activation=recurrent_activation, **lstm_options, **options)

    classes = data.y.shape[-1]
    if experiment.model == "last":
        return [lstm(stateful=experiment.stateful), layers.Dense(classes, activation="softmax")]
    per_step = layers.TimeDistributed(layers.Dense(classes, activation="softmax"))
    if experiment.model == "sequence":
        return [lstm(return_sequences=True), per_step]
    return [lstm(), layers.RepeatVector(data.y.shape[1]), lstm(return_sequences=True), per_step]


def _input_shape(experiment, data):
    """The model's input shape, batch first: fixed for a stateful model, else None."""
    return (experiment.batch_size if experiment.stateful else None, *data.x.shape[1:])


class FastLSTM:
    """Builds and trains the experiments' models with fastlstm.nn on a fastlstm backend."""

    name = "fastlstm"

    def __init__(self, backend="auto"):
        self.backend = resolve(backend)

    def model(self, experiment, data, seed, recurrent_activation, epsilon):
        nn.set_random_seed(seed)
        model = nn.Sequential(_stack(nn, experiment, data, recurrent_activation, backend=self.backend))
        model.build(_input_shape(experiment, data))
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

    def model(self, experiment, data, seed, recurrent_activation, epsilon):
        keras = self.keras
        keras.utils.set_random_seed(seed)
        if recurrent_activation == "hard_sigmoid_keras2":
            recurrent_activation = lambda z: keras.ops.clip(0.2 * z + 0.5, 0.0, 1.0)  # noqa: E731
        model = keras.Sequential([keras.Input(batch_shape=_input_shape(experiment, data)),
                                  *_stack(keras.layers, experiment, data, recurrent_activation)])
        model.compile(loss="categorical_crossentropy", optimizer=keras.optimizers.Adam(epsilon=epsilon),
                      metrics=["accuracy"])
        return model

    def fit(self, model, data, experiment, epochs, on_epoch_end):
        # One fit call for all epochs: Keras's per-call overhead would dominate otherwise.
        callback = self.keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: on_epoch_end(epoch))
        if experiment.shuffle:
            model.fit(self.reshuffled(data, experiment.batch_size), epochs=epochs, verbose=0, callbacks=[callback])
        else:
            model.fit(data.x, data.y, epochs=epochs, batch_size=experiment.batch_size, shuffle=False, verbose=0,
                      callbacks=[callback])

    def reshuffled(self, data, batch_size):
        """``data``'s samples as a ``keras.utils.PyDataset`` of batches, in a new order every
        epoch, drawn from NumPy's global random state (which ``keras.utils.set_random_seed``
        seeds), as Keras 2 and fastlstm.nn shuffle: on TensorFlow under a global seed, Keras 3's
        own ``shuffle=True`` repeats one order every epoch and every fit call."""
        return _reshuffling_dataset(self.keras)(data, batch_size)

    def reset_states(self, model):
        for layer in model.layers:
            if getattr(layer, "stateful", False):
                layer.reset_states()


@functools.cache
def _reshuffling_dataset(keras):
    """The PyDataset class of :meth:`Keras.reshuffled`, made once: its base comes with Keras,
    which is imported on first use."""
    class Reshuffled(keras.utils.PyDataset):
        def __init__(self, data, batch_size):
            super().__init__()
            self.data, self.batch_size = data, batch_size
            self.on_epoch_end()

        def __len__(self):
            return -(-len(self.data.x) // self.batch_size)

        def __getitem__(self, index):
            rows = self.order[index * self.batch_size:(index + 1) * self.batch_size]
            return self.data.x[rows], self.data.y[rows]

        def on_epoch_end(self):
            self.order = np.random.permutation(len(self.data.x))

    return Reshuffled


def run(number, framework, seed=DEFAULT_SEED, recurrent_activation="sigmoid", epsilon=1e-7, epochs=None,
        sequence=ALPHABET, progress=None):
    """Train experiment ``number`` on ``framework`` and return its Result.

    ``epochs`` shortens (or lengthens) the tutorial's schedule; ``sequence`` replaces the
    alphabet; ``progress(epoch, epochs)`` is called after every epoch.
    """
    experiment, data, model, rng = prepare(number, framework, seed, recurrent_activation, epsilon, sequence)
    epochs = experiment.epochs if epochs is None else epochs
    start = time.perf_counter()
    train(experiment, framework, model, data, epochs, progress)
    seconds = time.perf_counter() - start

    loss, accuracy = model.evaluate(data.x, data.y, batch_size=experiment.batch_size, verbose=0)
    framework.reset_states(model)
    result = Result(number, experiment.name, framework.name, framework.backend, seed, epochs,
                    experiment.published, 100 * float(accuracy), float(loss), seconds, sequence=sequence)
    result.demonstrations = _demonstrations(experiment, framework, model, data, rng, sequence)
    return result


class Run(NamedTuple):
    """The arguments of one :func:`run`."""
    number: int
    framework: object  # FastLSTM or Keras
    seed: int = DEFAULT_SEED
    recurrent_activation: str = "sigmoid"
    epsilon: float = 1e-7
    epochs: int | None = None  # None: the experiment's own schedule
    sequence: str = ALPHABET


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


def warm_up(numbers, framework, recurrent_activation="sigmoid", epsilon=1e-7, sequence=ALPHABET):
    """Runs experiments ``numbers`` for one epoch each, untimed, so that the backend compiles its
    kernels, or loads them from its on-disk cache, for every path their runs take (training,
    evaluate and predict, stateful or not) before a run is timed. Returns the seconds it took.
    numba_cpu compiles its two kernels, training's and the forward pass's, in two processes at once
    first (see kernels/cpu_compile.py), but for a worker process, which loads what its parent
    compiled from the cache."""
    start = time.perf_counter()
    if getattr(framework, "backend", None) == "numba_cpu" and multiprocessing.parent_process() is None:
        from fastlstm.kernels import cpu_compile  # imports Numba: only for this backend

        # An encoder-decoder's two LSTMs train layer by layer, on the one-call kernels.
        layer_by_layer = any(EXPERIMENTS[number].model == "encoder-decoder" for number in numbers)
        cpu_compile.compile_in_two_processes(np.float32, layer_by_layer)  # the models' dtype
    for number in numbers:
        run(number, framework, DEFAULT_SEED, recurrent_activation, epsilon, epochs=1, sequence=sequence)
    return time.perf_counter() - start


def prepare(number, framework, seed=DEFAULT_SEED, recurrent_activation="sigmoid", epsilon=1e-7, sequence=ALPHABET):
    """(experiment, data, compiled model, random state) of experiment ``number`` on ``framework``,
    before training, as :func:`setup` gives them and the model."""
    experiment, data, rng = setup(number, seed, sequence)
    return experiment, data, framework.model(experiment, data, seed, recurrent_activation, epsilon), rng


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
    """The predicted symbols of each pattern: one, or one per step of a sequence output."""
    probabilities = model.predict(data.encode(patterns), batch_size=batch_size, verbose=0)
    codes = np.argmax(probabilities, axis=-1).reshape(len(patterns), -1)
    return ["".join(data.vocabulary[c] for c in row) for row in codes]


def _generate(model, data, sequence, starts, steps, batch_size):
    """Generates from positions ``starts`` of ``sequence`` at once, a batch row each, each
    prediction fed back as that row's next input, the state carried: per start, the rows
    (input, predicted, expected), the expected being the sequence's continuation."""
    symbols = [sequence[p] for p in starts]
    chains = [[] for _ in starts]
    for step in range(steps):
        predicted = _predict(model, data, symbols, batch_size)
        for chain, p, symbol, guess in zip(chains, starts, symbols, predicted):
            chain.append((symbol, guess, sequence[p + step + 1]))
        symbols = predicted
    return chains


def _demonstrations(experiment, framework, model, data, rng, sequence):
    rows = lambda indices, predicted: [(data.patterns[i], q, data.targets[i]) for i, q in zip(indices, predicted)]  # noqa: E731
    if not experiment.stateful:
        demos = {"training patterns": rows(range(len(data.patterns)), _predict(model, data, data.patterns, None))}
        if experiment.number in (4, 6):  # the tutorial also predicts 20 randomly drawn patterns
            picks = [rng.randint(len(data.patterns)) for _ in range(20)]
            demos["20 random patterns"] = rows(picks, _predict(model, data, [data.patterns[i] for i in picks], None))
        return demos
    # Predictions on the training samples in order, the state carried from one batch to the next.
    demos = {"training patterns": rows(range(len(data.patterns)),
                                       _predict(model, data, data.patterns, experiment.batch_size))}
    framework.reset_states(model)
    if experiment.batch_size == 1:
        # The tutorial's: from the first symbol to the end, then from position 10 (K) for 5 steps.
        later = min(10, len(sequence) - 2)
        runs = [([0], len(sequence) - 1), ([later], min(5, len(sequence) - 1 - later))]
    else:
        runs = [(list(range(SERIES)), len(sequence) - SERIES)]  # every row from its own first symbol at once
    for starts, steps in runs:
        for p, chain in zip(starts, _generate(model, data, sequence, starts, steps, experiment.batch_size)):
            demos[f"generated from {sequence[p]} at {p}"] = chain
        framework.reset_states(model)
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
