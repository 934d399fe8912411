"""Keras 3 with its own LSTM against Keras 3 with fastlstm.keras.LSTM: the same model (LSTM and
Dense(1), mean squared error, Adam) with the same initial weights, timed for one training step
(``train_on_batch``) and one inference (``predict_on_batch``), on the Keras backend of this
process (KERAS_BACKEND, TensorFlow where unset)::

    pytest bench/test_keras_layer.py --benchmark-only
    KERAS_BACKEND=jax pytest bench/test_keras_layer.py --benchmark-only

Both models take the same steps, so they must end with the same predictions (checked).
"""
import os

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
keras = pytest.importorskip("keras")  # the 'test' extra installs it

from fastlstm.keras import LSTM  # noqa: E402

# (batch, time, input_dim, units): the tutorial's stateful experiment, a small batch, a large one.
SHAPES = [(1, 1, 1, 50), (32, 25, 1, 32), (256, 25, 64, 128)]
LAYERS = {"keras": keras.layers.LSTM, "fastlstm": LSTM}
TOLERANCE = 1e-5  # max|fastlstm - keras| / max(1, max|keras|) of the final predictions


@pytest.fixture(scope="module")
def predictions():
    return {}


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "b{}-t{}-d{}-u{}".format(*s))
@pytest.mark.parametrize("layer", LAYERS)
@pytest.mark.parametrize("step", ["train_on_batch", "predict_on_batch"])
def test_keras_model(benchmark, step, layer, shape, predictions):
    batch, time, input_dim, units = shape
    rng = np.random.default_rng(list(shape))
    x = rng.standard_normal((batch, time, input_dim)).astype("float32")
    y = rng.standard_normal((batch, 1)).astype("float32")
    keras.utils.set_random_seed(0)  # the same initial weights for both layers
    model = keras.Sequential([keras.Input(batch_shape=x.shape), LAYERS[layer](units), keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    benchmark.group = f"Keras ({keras.backend.backend()}) {step} b{batch}-t{time}-d{input_dim}-u{units}"
    benchmark.extra_info.update(implementation=layer, baseline=layer == "keras", keras_backend=keras.backend.backend())
    arguments = (x, y) if step == "train_on_batch" else (x,)
    benchmark.pedantic(getattr(model, step), args=arguments, rounds=3 if batch > 32 else 20, warmup_rounds=1)
    result = model.predict_on_batch(x)
    reference = predictions.setdefault((step, shape), result)
    assert np.abs(result - reference).max() <= TOLERANCE * max(1.0, np.abs(reference).max())
