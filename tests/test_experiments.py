"""The alphabet experiments: their data, their demonstrations, and two of them at full length."""
import concurrent.futures

import numpy as np
import pytest

from fastlstm import experiments, nn
from fastlstm.experiments import ALPHABET, EXPERIMENTS
from support.lstm_testing import CPU_BACKENDS


def _follows(pattern, count=1):
    """The ``count`` letters after ``pattern``'s last in the alphabet."""
    after = ALPHABET.index(pattern[-1]) + 1
    return ALPHABET[after:after + count]


@pytest.mark.parametrize(
    "number, shape, first, last",
    [(1, (25, 1, 1), "A", "Y"), (2, (23, 1, 3), "ABC", "WXY"), (3, (23, 3, 1), "ABC", "WXY"),
     (4, (25, 1, 1), "A", "Y"), (5, (25, 1, 1), "A", "Y"), (7, (25, 25, 1), "A", ALPHABET[:25]),
     (8, (88, 1, 1), "A", "Y"), (9, (21, 3, 1), "ABC", "UVW"), (10, (88, 1, 1), "A", "Y"),
     (11, (21, 3, 1), "ABC", "UVW")],
)
def test_data_has_the_tutorials_shape_scaling_and_targets(number, shape, first, last):
    experiment, data, _ = experiments.setup(number)
    assert data.x.shape == shape and data.x.dtype == np.float32 and data.vocabulary == ALPHABET
    assert (data.patterns[0], data.patterns[-1]) == (first, last)
    codes = np.round(data.x * 26).astype(int)
    # Patterns read back from x (zero padding on the left is the code of A, as in the tutorial).
    assert "".join(ALPHABET[c] for c in codes[-1].ravel()[-len(last):]) == last
    out = 3 if number in (9, 11) else 1
    assert data.targets == [_follows(p, out) for p in data.patterns]
    targets = ["".join(ALPHABET[i] for i in row) for row in data.y.reshape(len(data.y), -1, 26).argmax(axis=-1)]
    assert targets == data.targets and (data.y.sum(axis=-1) == 1).all()
    assert data.y.shape == ((len(data.x), 3, 26) if out == 3 else (len(data.x), 26))
    assert experiment.batch_size == (25 if number == 4 else 4 if number in (8, 10) else 1)


def test_several_series_walk_shifted_copies_of_the_sequence_row_by_row():
    """Experiment 8's sample k * 4 + r is row r's k-th step: position r + k of the sequence."""
    _, data, _ = experiments.setup(8)
    rows = np.array(data.patterns).reshape(-1, experiments.SERIES)  # [batches, rows]
    for r in range(experiments.SERIES):
        assert "".join(rows[:, r]) == ALPHABET[r:r + len(rows)]


def test_variable_length_data_follows_the_tutorials_draws():
    _, data, _ = experiments.setup(6)
    assert data.x.shape == (1000, 5, 1) and len(data.patterns) == 1000
    for pattern, row in zip(data.patterns, data.x[:, :, 0]):
        start = ALPHABET.index(pattern[0])
        assert 1 <= len(pattern) <= 5 and start <= 23 and pattern == ALPHABET[start:start + len(pattern)]
        assert ALPHABET.index(pattern[-1]) <= 24  # so a next letter exists
        np.testing.assert_allclose(row, [0] * (5 - len(pattern)) + [ALPHABET.index(c) / 26 for c in pattern], rtol=1e-6)
    # The same stream as the tutorial's numpy.random.seed(7) followed by numpy.random.randint.
    np.random.seed(7)
    start = np.random.randint(len(ALPHABET) - 2)
    end = np.random.randint(start, min(start + 5, len(ALPHABET) - 1))
    assert data.patterns[0] == ALPHABET[start:end + 1]


@pytest.mark.parametrize("number", sorted(EXPERIMENTS))
def test_every_experiment_runs_shortened_with_its_demonstrations(number):
    result = experiments.run(number, experiments.FastLSTM("numpy"), epochs=2)
    assert (result.experiment, result.framework, result.backend, result.seed, result.epochs, result.sequence) == \
        (number, "fastlstm", "numpy", 7, 2, ALPHABET)
    assert 0 <= result.accuracy <= 100 and np.isfinite(result.loss) and result.seconds > 0
    expected = {"training patterns": len(experiments.setup(number)[1].patterns)}
    if number in (4, 6):
        expected["20 random patterns"] = 20
    if number == 5:
        expected.update({"generated from A at 0": 25, "generated from K at 10": 5})
    if number in (8, 10):  # every row at once, from its own first letter
        expected.update({f"generated from {ALPHABET[r]} at {r}": 22 for r in range(4)})
    assert {name: len(rows) for name, rows in result.demonstrations.items()} == expected
    out = 3 if number in (9, 11) else 1
    for name, rows in result.demonstrations.items():
        assert all(set(p + q + e) <= set(ALPHABET) and len(q) == len(e) == out for p, q, e in rows)
        if name.startswith("generated from"):  # expected: the alphabet's continuation from the seed
            start = ALPHABET.index(rows[0][0])
            assert "".join(e for _, _, e in rows) == ALPHABET[start + 1:start + 1 + len(rows)]
            assert all(fed == previous for (fed, _, _), (_, previous, _) in zip(rows[1:], rows))  # fed back


class _CountingEpochs(experiments.FastLSTM):
    def __init__(self):
        super().__init__("numpy")
        self.fits = []

    def fit(self, model, data, experiment, epochs, on_epoch_end):
        self.fits.append((experiment.number, epochs))
        super().fit(model, data, experiment, epochs, on_epoch_end)


def test_warm_up_runs_one_epoch_of_each_experiment_asked_for():
    framework = _CountingEpochs()
    assert experiments.warm_up([4, 5, 7], framework) > 0
    assert framework.fits == [(4, 1), (5, 1), (7, 1)]


def test_a_seed_reproduces_its_run_exactly():
    first, second = (experiments.run(1, experiments.FastLSTM("numpy"), seed=3, epochs=5) for _ in range(2))
    assert (first.loss, first.accuracy, first.demonstrations) == (second.loss, second.accuracy, second.demonstrations)
    other = experiments.run(1, experiments.FastLSTM("numpy"), seed=4, epochs=5)
    assert other.loss != first.loss


@pytest.mark.parametrize("number", [3, 5])
def test_full_length_experiment_reaches_the_published_accuracy(number):
    result = experiments.run(number, experiments.FastLSTM("numpy"))
    assert result.epochs == EXPERIMENTS[number].epochs
    assert result.reaches_published and result.accuracy == 100.0
    for name, rows in result.demonstrations.items():
        if name != "generated from K at 10":
            assert all(predicted == expected for _, predicted, expected in rows), name
    if number == 5:
        # The tutorial's point: seeded with K, the model replays the alphabet from its start.
        assert [q for _, q, _ in result.demonstrations["generated from K at 10"]] == list("BCDEF")


def test_summary_counts_runs_that_reach_the_published_accuracy():
    results = [experiments.Result(3, "x", "fastlstm", "numpy", s, 1, 100.0, a, 0.1, 1.0)
               for s, a in enumerate([100.0, 95.65, 100.0])]
    summary = experiments.summarize(results)
    assert summary["runs"] == 3 and summary["reaching_published"] == 2
    assert summary["min"] == 95.65 and summary["max"] == 100.0
    assert summary["mean"] == pytest.approx((200 + 95.65) / 3)


def test_a_run_whose_loss_turns_nan_or_infinite_is_marked_diverged_and_counted():
    # Adam with epsilon 0 divides 0 by 0 where a gradient is 0: the loss turns NaN in an epoch.
    diverged = experiments.run(4, experiments.FastLSTM("numpy"), epsilon=0.0, epochs=2)
    assert np.isnan(diverged.loss) and diverged.diverged
    finite, infinite = (experiments.Result(4, "x", "fastlstm", "numpy", 8, 1, 100.0, 100.0, loss, 1.0)
                        for loss in (0.1, np.inf))
    assert not finite.diverged and infinite.diverged
    summary = experiments.summarize([diverged, finite, infinite])
    assert summary["diverged"] == 2 and summary["runs"] == 3
    assert experiments.summarize([finite])["diverged"] == 0


def test_run_many_gives_each_runs_result_in_order_through_any_executor():
    framework = experiments.FastLSTM("numpy")
    runs = [experiments.Run(number, framework, seed, epochs=2) for number in (3, 1) for seed in (7, 8)]
    with concurrent.futures.ThreadPoolExecutor(1) as executor:
        results = list(experiments.run_many(runs, executor))
    assert [(r.experiment, r.seed, r.epochs) for r in results] == [(3, 7, 2), (3, 8, 2), (1, 7, 2), (1, 8, 2)]
    alone = experiments.run(1, framework, 8, epochs=2)
    assert (results[3].loss, results[3].demonstrations) == (alone.loss, alone.demonstrations)


PATTERN = "aaaabbbccd" * 2  # a repeating pattern, as the tutorial's readers asked for


def test_a_sequence_replaces_the_alphabet_with_the_same_structure():
    """Windows, vocabulary and targets follow the sequence: its distinct symbols sorted are the
    classes, each window's target is what follows it there (here not always the same)."""
    counts = {1: 19, 2: 17, 3: 17, 4: 19, 5: 19, 7: 19, 8: 16 * 4, 9: 15, 10: 16 * 4, 11: 15}
    for number, samples in counts.items():
        experiment, data, _ = experiments.setup(number, sequence=PATTERN)
        assert data.vocabulary == "abcd" and len(data.x) == len(data.patterns) == samples, number
        assert data.y.shape[-1] == 4 and np.isnan(experiment.published)
        alphabet_data = experiments.setup(number)[1]
        assert data.x.shape[1:] == alphabet_data.x.shape[1:] or number == 7  # 7 pads to the sequence's length
        codes = np.round(data.x * 4).astype(int)
        for pattern, target, row in zip(data.patterns, data.targets, codes):
            assert "".join("abcd"[c] for c in row.ravel()[-len(pattern):]) == pattern
            assert target in [PATTERN[i + len(pattern):i + len(pattern) + len(target)]
                              for i in range(len(PATTERN)) if PATTERN.startswith(pattern, i)]
    assert experiments.setup(4, sequence=PATTERN)[0].batch_size == 19  # every pair in one batch
    # Where a window of one symbol does not decide what follows: a->a three times, then a->b.
    data = experiments.setup(1, sequence=PATTERN)[1]
    assert list(zip(data.patterns, data.targets))[:4] == [("a", "a")] * 3 + [("a", "b")]


def test_a_run_on_a_sequence_reports_its_symbols_and_the_sequences_continuation():
    result = experiments.run(5, experiments.FastLSTM("numpy"), epochs=2, sequence=PATTERN)
    assert result.sequence == PATTERN and np.isnan(result.published)
    chain = result.demonstrations["generated from a at 0"]
    assert "".join(e for _, _, e in chain) == PATTERN[1:]
    assert all(set(p + q + e) <= set("abcd") for rows in result.demonstrations.values() for p, q, e in rows)


@pytest.mark.parametrize("sequence, number, message", [
    ("ABC", 3, "sequence 'ABC' has 3 symbols, but experiment 3 (3-char window as 3 time steps) needs at least 4"),
    ("ABCDE", 9, "sequence 'ABCDE' has 5 symbols, but experiment 9 (3 chars -> next 3 chars) needs at least 6"),
    ("ABCD", 8, "sequence 'ABCD' has 4 symbols, but experiment 8 (stateful, 4 series side by side) needs at least 5"),
    ("aaaa", 1, "sequence must be a string of at least 2 distinct symbols, got 'aaaa'"),
])
def test_a_sequence_too_short_for_an_experiment_is_refused_in_one_line(sequence, number, message):
    with pytest.raises(ValueError) as refused:
        experiments.run(number, experiments.FastLSTM("numpy"), epochs=1, sequence=sequence)
    assert str(refused.value) == message
    shortest = EXPERIMENTS[number].min_length
    if len(set(sequence)) > 1:  # one symbol more is enough
        experiments.check_sequence(ALPHABET[:shortest], [number])
        assert len(experiments.setup(number, sequence=ALPHABET[:shortest])[1].x) >= 1


def test_variants_run_beside_the_experiment_they_vary():
    assert experiments.with_variants([9, 1, 8]) == [9, 11, 1, 8, 10]
    assert experiments.with_variants([10, 8]) == [10, 8]
    assert experiments.with_variants(sorted(EXPERIMENTS)) == [1, 2, 3, 4, 5, 6, 7, 8, 10, 9, 11]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_each_row_of_a_stateful_batch_carries_its_own_series_state(backend):
    """Experiment 8: after k batches, row r's state is the state of row r's series run alone."""
    experiment, data, _ = experiments.setup(8)
    model = experiments.FastLSTM(backend).model(experiment, data, 7, "sigmoid", 1e-7)
    model.fit(data.x, data.y, epochs=3, batch_size=4, shuffle=False, verbose=0)  # weights that are not the initial
    model.reset_states()
    batches = 5
    model.predict(data.x[:4 * batches], batch_size=4)
    together = [s.copy() for s in model.layers[0].states]
    alone = nn.Sequential([nn.LSTM(50, stateful=True, batch_input_shape=(1, 1, 1), backend=backend),
                           nn.Dense(26, activation="softmax")])
    alone.set_weights(model.get_weights())
    for r in range(4):
        alone.reset_states()
        alone.predict(data.x[r:4 * batches:4], batch_size=1)  # row r's samples only
        for state, single in zip(together, alone.layers[0].states):
            np.testing.assert_allclose(state[r], single[0], atol=2e-6)
    assert not np.allclose(together[0][0], together[0][1])  # the rows' states differ


def test_run_many_carries_each_runs_sequence():
    framework = experiments.FastLSTM("numpy")
    runs = [experiments.Run(8, framework, 7, epochs=1, sequence=PATTERN), experiments.Run(8, framework, 7, epochs=1)]
    with concurrent.futures.ThreadPoolExecutor(1) as executor:
        on_pattern, on_alphabet = experiments.run_many(runs, executor)
    assert (on_pattern.sequence, on_alphabet.sequence) == (PATTERN, ALPHABET)
    assert on_pattern.loss == experiments.run(8, framework, 7, epochs=1, sequence=PATTERN).loss != on_alphabet.loss
