"""fastlstm.keras.LSTM on CUDA tensors against keras.layers.LSTM (cuDNN), with Keras's PyTorch
backend: outputs, final states and the gradients of the inputs and of every weight, in float32.
The drop-in hands CUDA tensors to a GPU backend through DLPack and its results back to PyTorch
without a copy; each test sets which backend and checks that fastlstm ran on it.

Run by tests/test_keras_layer_gpu.py with KERAS_BACKEND=torch on a machine with a CUDA GPU (its
name keeps the main run from collecting it). Tolerance as layer_suite.py's float32:
max|drop-in - keras| / max(1, max|keras|) per array.
"""
import keras
import numpy as np
import pytest
import torch

import fastlstm.keras
from fastlstm.keras import LSTM
from support.lstm_testing import relative_error

assert keras.backend.backend() == "torch" and torch.cuda.is_available(), "run by tests/test_keras_layer_gpu.py"
# PyTorch lets cuDNN compute float32 in TF32 by default; Keras's cuDNN LSTM would then be the less
# exact of the two by about 1e-3.
torch.backends.cudnn.allow_tf32 = False
TOLERANCE = 1e-5
SHAPE = (6, 7, 3)  # [batch, time, features]
UNITS = 8


def build(layer_class, return_sequences):
    """A functional model: x -> the layer's [outputs, h, c]."""
    x = keras.Input(batch_shape=SHAPE)
    return keras.Model(x, layer_class(UNITS, return_sequences=return_sequences, return_state=True)(x))


def outputs_and_gradients(model, x, probes):
    """The model's outputs and the gradients of sum(probe * output) with respect to ``x`` and each
    trainable weight, as NumPy arrays, computed on CUDA tensors."""
    x = torch.tensor(x, device="cuda", requires_grad=True)
    outputs = model(x)
    assert all(o.is_cuda for o in outputs)
    sum((o * torch.tensor(p, device="cuda")).sum() for o, p in zip(outputs, probes)).backward()
    return [a.detach().cpu().numpy() for a in (*outputs, x.grad, *(w.value.grad for w in model.trainable_weights))]


@pytest.mark.parametrize("return_sequences", [False, True], ids=["last", "sequences"])
@pytest.mark.parametrize("backend", fastlstm.keras.GPU_BACKENDS)
def test_cuda_tensors_match_keras(backend, return_sequences, monkeypatch):
    monkeypatch.setattr(fastlstm.keras, "GPU_BACKENDS", (backend,))  # the one the layer takes for CUDA tensors
    backends_run = []
    original = fastlstm.keras.FusedCall.__init__

    def recording(self, options, *arguments):
        backends_run.append(options.backend)
        original(self, options, *arguments)

    monkeypatch.setattr(fastlstm.keras.FusedCall, "__init__", recording)
    keras.utils.set_random_seed(0)
    theirs, ours = build(keras.layers.LSTM, return_sequences), build(LSTM, return_sequences)
    ours.set_weights(theirs.get_weights())
    rng = np.random.default_rng(1)
    x = rng.standard_normal(SHAPE).astype(np.float32)
    probes = [rng.standard_normal(o.shape).astype(np.float32) for o in theirs.outputs]
    expected = outputs_and_gradients(theirs, x, probes)
    got = outputs_and_gradients(ours, x, probes)
    assert backends_run == [backend]
    names = ["outputs", "h", "c", "dx", *(f"d{w.name}" for w in theirs.trainable_weights)]
    assert len(got) == len(expected) == len(names) == 7
    for name, mine, want in zip(names, got, expected):
        assert mine.shape == want.shape and mine.dtype == want.dtype, name
        error = relative_error(mine, want)
        assert error <= TOLERANCE, f"{name} differs by {error:.2e}"
