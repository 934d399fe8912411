"""Training: one epoch of each alphabet experiment's schedule (the stateless batch-1 steps, the
whole-dataset batch, the stateful mode with its state carried and reset) per fastlstm backend and
under Keras 3; and each experiment at full length per backend, in groups of their own.

With --benchmark-disable each runs once, the full-length experiments on a 2-epoch schedule.
"""
import numpy as np
import pytest

import fastlstm
from fastlstm import experiments

BACKENDS = [s.name for s in fastlstm.available_backends() if s.available and s.name not in ("cupy", "numba_cuda")]
FRAMEWORKS = [*(f"fastlstm-{b}" for b in BACKENDS), "keras"]


def _framework(name):
    return experiments.Keras() if name == "keras" else experiments.FastLSTM(name.removeprefix("fastlstm-"))


@pytest.fixture(scope="module")
def first_epoch_losses():
    return {}


@pytest.mark.parametrize("number", sorted(experiments.EXPERIMENTS))
@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_one_epoch(benchmark, framework, number, first_epoch_losses):
    chosen = _framework(framework)
    experiment, data, model, _ = experiments.prepare(number, chosen)
    benchmark.group = f"one epoch of experiment {number}: {experiment.name}"
    benchmark.extra_info.update(implementation=framework, baseline=framework == "keras", experiment=number,
                                samples=len(data.x), batch_size=experiment.batch_size, stateful=experiment.stateful)
    benchmark.pedantic(experiments.train, args=(experiment, chosen, model, data, 1), rounds=5, warmup_rounds=1)
    # Every fastlstm backend trains the same model (same seed) to the same weights.
    loss = float(model.evaluate(data.x, data.y, batch_size=experiment.batch_size, verbose=0)[0])
    if framework != "keras":
        reference = first_epoch_losses.setdefault(number, loss)
        assert loss == pytest.approx(reference, rel=1e-4), f"{framework} trains differently from the first backend"


@pytest.mark.parametrize("number", sorted(experiments.EXPERIMENTS))
@pytest.mark.parametrize("backend", BACKENDS)
def test_full_experiment(benchmark, backend, number):
    experiment = experiments.EXPERIMENTS[number]
    epochs = 2 if benchmark.disabled else experiment.epochs
    benchmark.group = f"experiment {number} at full length: {experiment.name}"
    benchmark.extra_info.update(implementation=f"fastlstm-{backend}", baseline=False, experiment=number,
                                epochs=epochs, seed=experiments.DEFAULT_SEED)
    framework = experiments.FastLSTM(backend)
    experiments.warm_up([number], framework)  # untimed: loading or compiling kernels is no training
    result = benchmark.pedantic(experiments.run, args=(number, framework), kwargs=dict(epochs=epochs), rounds=1,
                                iterations=1)
    benchmark.extra_info.update(accuracy=result.accuracy, training_seconds=result.seconds)
    assert result.epochs == epochs and 0 <= result.accuracy <= 100 and np.isfinite(result.loss)
