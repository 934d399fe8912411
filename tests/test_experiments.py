"""The alphabet experiments: their data, their demonstrations, and two of them at full length."""
import concurrent.futures

import numpy as np
import pytest

from fastlstm import experiments
from fastlstm.experiments import ALPHABET, EXPERIMENTS


@pytest.mark.parametrize(
    "number, shape, first, last",
    [(1, (25, 1, 1), "A", "Y"), (2, (23, 1, 3), "ABC", "WXY"), (3, (23, 3, 1), "ABC", "WXY"),
     (4, (25, 1, 1), "A", "Y"), (5, (25, 1, 1), "A", "Y"), (7, (25, 25, 1), "A", ALPHABET[:25])],
)
def test_data_has_the_tutorials_shape_scaling_and_targets(number, shape, first, last):
    data = EXPERIMENTS[number].make_data(np.random.RandomState(7))
    assert data.x.shape == shape and data.x.dtype == np.float32
    assert (data.patterns[0], data.patterns[-1]) == (first, last)
    codes = np.round(data.x * 26).astype(int)
    # Patterns read back from x (zero padding on the left is the code of A, as in the tutorial).
    assert "".join(ALPHABET[c] for c in codes[-1].ravel()[-len(last):]) == last
    targets = [ALPHABET[i] for i in data.y.argmax(axis=1)]
    assert targets == [ALPHABET[ALPHABET.index(p[-1]) + 1] for p in data.patterns]
    assert (data.y.sum(axis=1) == 1).all()


def test_variable_length_data_follows_the_tutorials_draws():
    data = EXPERIMENTS[6].make_data(np.random.RandomState(7))
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
    assert (result.experiment, result.framework, result.backend, result.seed, result.epochs) == \
        (number, "fastlstm", "numpy", 7, 2)
    assert 0 <= result.accuracy <= 100 and np.isfinite(result.loss) and result.seconds > 0
    expected = {"training patterns": len(EXPERIMENTS[number].make_data(np.random.RandomState(7)).patterns)}
    if number in (4, 6):
        expected["20 random patterns"] = 20
    if number == 5:
        expected.update({"generated from A": 25, "generated from K": 5})
    assert {name: len(rows) for name, rows in result.demonstrations.items()} == expected
    for rows in result.demonstrations.values():
        assert all(len(p) >= 1 and q in ALPHABET and e in ALPHABET + "?" for p, q, e in rows)


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
        if name != "generated from K":
            assert all(predicted == expected for _, predicted, expected in rows), name
    if number == 5:
        # The tutorial's point: seeded with K, the model replays the alphabet from its start.
        assert [q for _, q, _ in result.demonstrations["generated from K"]] == list("BCDEF")


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
