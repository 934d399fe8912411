"""Each alphabet experiment at full length, per backend that works here (one round each: the
longest takes minutes). With --benchmark-disable each runs a 2-epoch schedule as a quick test.

Run: pytest bench/test_experiments.py --benchmark-only
"""
import pytest

import fastlstm
from fastlstm import experiments

BACKENDS = [s.name for s in fastlstm.available_backends() if s.available]


@pytest.mark.parametrize("number", sorted(experiments.EXPERIMENTS))
@pytest.mark.parametrize("backend", BACKENDS)
def test_experiment(benchmark, backend, number):
    experiment = experiments.EXPERIMENTS[number]
    epochs = 2 if benchmark.disabled else experiment.epochs
    benchmark.group = f"experiment {number}: {experiment.name}"
    benchmark.extra_info.update(backend=backend, epochs=epochs, seed=experiments.DEFAULT_SEED)
    framework = experiments.FastLSTM(backend)
    result = benchmark.pedantic(experiments.run, args=(number, framework), kwargs=dict(epochs=epochs),
                                rounds=1, iterations=1)
    benchmark.extra_info.update(accuracy=result.accuracy, training_seconds=result.seconds)
    assert result.epochs == epochs and 0 <= result.accuracy <= 100
