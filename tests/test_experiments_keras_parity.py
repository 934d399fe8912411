"""Training-trajectory parity with Keras 3 (TensorFlow backend, CPU), float32, of the models of the
experiments the tutorial's readers asked for, built as ``fastlstm alphabet`` builds them on each
framework: 8 (a stateful LSTM with a batch of 4 series; 10 trains the same model) and 9 and 11
(three characters out, per step and encoder-decoder).

Both start from the same weights (Keras's, copied with get_weights/set_weights), take the same
batches in order for 50 Adam steps (the stateful pair resetting its state after each pass over
the data, as the experiment does) and must agree within the tolerances of the tutorial's models
(tests/test_nn_keras_parity.py): LOSS_RTOL (1e-6) relative on the loss of every step,
WEIGHT_RTOL (5e-6) relative to each weight array's largest value.

Measured (Keras 3.15.1, TensorFlow 2.21, AMD EPYC Zen 3), on numpy and numba_cpu alike: at most
1.5e-7 relative on the loss and 2.5e-7 on the weights (experiment 11's): margins of about 7 and 20.
"""
import os

import pytest

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
pytest.importorskip("keras")

from fastlstm import experiments  # noqa: E402
from support.lstm_testing import CPU_BACKENDS  # noqa: E402  (tests/ is on the path)
from test_nn_keras_parity import LOSS_RTOL, STEPS, assert_weights_close  # noqa: E402

pytestmark = pytest.mark.parity


@pytest.mark.parametrize("number", [8, 9, 11])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_training_trajectory_matches_keras(number, backend):
    experiment, data, _ = experiments.setup(number)
    keras_framework, fastlstm_framework = experiments.Keras(), experiments.FastLSTM(backend)
    keras_model = keras_framework.model(experiment, data, 7, "sigmoid", 1e-7)
    model = fastlstm_framework.model(experiment, data, 7, "sigmoid", 1e-7)
    model.set_weights(keras_model.get_weights())
    batch = experiment.batch_size
    batches = [slice(i, i + batch) for i in range(0, len(data.x), batch)]
    for step in range(STEPS):
        s = batches[step % len(batches)]
        keras_loss, keras_accuracy = keras_model.train_on_batch(data.x[s], data.y[s])
        loss, accuracy = model.train_on_batch(data.x[s], data.y[s])
        assert abs(loss - keras_loss) <= LOSS_RTOL * abs(keras_loss), f"step {step}"
        assert accuracy == pytest.approx(keras_accuracy, rel=1e-6), f"step {step}"  # Keras: float32
        if experiment.stateful and s == batches[-1]:
            keras_framework.reset_states(keras_model)
            fastlstm_framework.reset_states(model)
    assert_weights_close(keras_model, model)
