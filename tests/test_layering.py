"""The layers between fastlstm.nn, the functional core (fastlstm.ops) and the backends: the
backend contract the registry checks, the fused training pass reached through ops with its
NotImplementedError fallback, fastlstm.nn importing nothing from the backends, and Dask imported
for a cluster only."""
import ast
import pathlib
import subprocess
import sys
import types

import numpy as np
import pytest

import fastlstm
from fastlstm import backends, ops
from fastlstm.nn import LSTM, Dense, Sequential, set_random_seed
from fastlstm.utils import to_categorical

NN = pathlib.Path(fastlstm.__file__).parent / "nn"


def test_fastlstm_nn_imports_nothing_from_the_backends():
    imported = set()
    for path in NN.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported.update((path.name, alias.name) for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                imported.add((path.name, node.module))
    assert len(imported) > 10  # the walk found the modules' imports
    assert sorted((file, module) for file, module in imported if module.startswith("fastlstm.backends")) == []


def test_fastlstm_and_its_command_without_scheduler_import_no_dask():
    code = ("import sys; from fastlstm import cli, cluster; "
            "status = cli.main(['alphabet', '--backend', 'numpy', '--experiment', '4', '--epochs', '1', '--jobs', '1']); "
            "print(status, sorted(m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.splitlines()[-1] == "0 []", result.stderr


def _backend(capabilities, defined=("forward", "backward")):
    """A backend module declaring ``capabilities`` and defining the functions ``defined``."""
    module = types.ModuleType("fake_backend")
    module.probe = lambda: "here"
    if capabilities is not None:
        module.CAPABILITIES = capabilities
    for name in defined:
        setattr(module, name, lambda *args: None)
    return module


@pytest.mark.parametrize("capabilities, defined, problem", [
    (None, ("forward", "backward"), "required but not declared: backward, forward"),
    (("forward",), ("forward", "backward"), "required but not declared: backward"),
    (("forward", "backward", "fused"), ("forward", "backward"), "declared but not in the contract: fused"),
    (("forward", "backward", "prepare"), ("forward", "backward"), "declared but not defined: prepare"),
    (("forward", "backward"), ("forward", "backward", "train_epoch"), "defined but not declared: train_epoch"),
])
def test_the_registry_refuses_a_backend_that_breaks_the_contract(monkeypatch, capabilities, defined, problem):
    monkeypatch.setitem(sys.modules, "fake_backend", _backend(capabilities, defined))
    monkeypatch.setitem(backends.MODULES, "fake", "fake_backend")
    backends._load.cache_clear()
    try:
        with pytest.raises(TypeError, match=f"backend 'fake' .fake_backend. breaks the backend contract .*{problem}$"):
            backends.get_backend("fake")
    finally:
        backends._load.cache_clear()


def test_every_backend_that_loads_here_declares_what_it_defines():
    loaded = [name for name in backends.MODULES if backends._load(name)[0] is not None]
    assert "numpy" in loaded
    for name in loaded:
        module = backends.get_backend(name)
        assert backends.REQUIRED <= set(module.CAPABILITIES)
        assert {f for f in backends.OPTIONAL if hasattr(module, f)} == set(module.CAPABILITIES) - backends.REQUIRED
    assert set(backends.get_backend("numpy").CAPABILITIES) == {"forward", "backward"}


def _alphabet_model(backend, seed=0):
    set_random_seed(seed)
    model = Sequential([LSTM(4, input_shape=(1, 1), backend=backend), Dense(26, activation="softmax")])
    model.compile(loss="categorical_crossentropy", optimizer="adam", metrics=["accuracy"])
    return model


def _alphabet():
    codes = np.arange(26)
    return (codes[:-1] / 26).reshape(25, 1, 1).astype(np.float32), to_categorical(codes[1:], 26).astype(np.float32)


def test_lstm_train_epoch_without_a_fused_pass_raises_not_implemented():
    model = _alphabet_model("numpy")
    lstm, dense = model.layers
    x, y = _alphabet()
    before = model.get_weights()
    with pytest.raises(NotImplementedError, match="backend 'numpy' has no fused training pass"):
        ops.lstm_train_epoch(x, y, 5, ops.LSTMWeights(*lstm.weights), ops.DenseWeights(*dense.weights),
                             ops.LSTMWeights(*lstm.grads), ops.DenseWeights(*dense.grads),
                             model.optimizer.state(model._weights, model._grads), backend="numpy")
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_fit_takes_the_general_path_where_the_fused_pass_raises_not_implemented(monkeypatch):
    """A backend whose fused pass raises NotImplementedError trains as one without it: the same
    weights, bit for bit, as the NumPy backend's batch-by-batch steps."""
    numpy = backends.get_backend("numpy")
    declining = types.ModuleType("declining_backend")
    declining.__dict__.update(probe=numpy.probe, forward=numpy.forward, backward=numpy.backward,
                              CAPABILITIES=("forward", "backward", "train_epoch"))
    calls = []

    def train_epoch(*args):
        calls.append(args)
        raise NotImplementedError("not for this model")

    declining.train_epoch = train_epoch
    monkeypatch.setitem(sys.modules, "declining_backend", declining)
    monkeypatch.setitem(backends.MODULES, "declining", "declining_backend")
    x, y = _alphabet()
    declined, general = _alphabet_model("declining"), _alphabet_model("numpy")
    try:
        declined.fit(x, y, epochs=2, batch_size=5, shuffle=False, verbose=0)
    finally:
        backends._load.cache_clear()
        backends.get_backend.cache_clear()
    general.fit(x, y, epochs=2, batch_size=5, shuffle=False, verbose=0)
    assert len(calls) == 2
    assert declined.optimizer.iterations == general.optimizer.iterations == 10
    for a, b in zip(declined.get_weights(), general.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_the_fused_pass_gets_its_arguments_as_named_tuples(monkeypatch):
    numba_cpu = backends.get_backend("numba_cpu")
    received = []
    monkeypatch.setattr(numba_cpu, "train_epoch", lambda *args: received.append(args) or (0.0, 0))
    model = _alphabet_model("numba_cpu")
    model.fit(*_alphabet(), epochs=1, batch_size=5, verbose=0)
    x, y, batch_size, lstm, dense, lstm_grads, dense_grads, adam, state, options = received[0]
    assert (x.shape, y.shape, batch_size, state) == ((25, 1, 1), (25, 26), 5, None)
    kernel, recurrent_kernel, bias, dense_kernel, dense_bias = model.layers[0].weights + model.layers[1].weights
    assert lstm == ops.LSTMWeights(kernel, recurrent_kernel, bias) and type(lstm) is ops.LSTMWeights
    assert dense == ops.DenseWeights(dense_kernel, dense_bias) and type(dense) is ops.DenseWeights
    assert type(lstm_grads) is ops.LSTMWeights and type(dense_grads) is ops.DenseWeights
    assert type(adam) is ops.AdamState and adam.weights is model._weights and adam.gradients is model._grads
    assert adam.iterations == 0 and adam.constants == model.optimizer.constants(np.float32)
    assert options == backends.LSTMOptions("tanh", "sigmoid", False, False)
